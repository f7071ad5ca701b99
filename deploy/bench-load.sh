#!/usr/bin/env bash
# CSV load benchmark (BENCHMARKS.md, "Allocators"): `weir load csv` of TPC-H `lineitem` (16
# columns, keyed by order and line number) into three fresh nodes, 3 replicas; prints rows/s and
# each node's resident memory after the load.
#
# usage: deploy/bench-load.sh [BIN_DIR] [SF]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   SF       TPC-H scale factor (default 0.2: 1,199,969 rows, 151 MB)
#
# Needs tpchgen-cli (pip install tpchgen-cli); the CSV is generated once into
# ~/.cache/weir/tpch-lineitem-SF. Ports 19501-19503 (HTTP 19511-19513, Postgres 19521-19523).
set -euo pipefail
B=${1:-target/release}
SF=${2:-0.2}
P=195
HERE=$(cd "$(dirname "$0")" && pwd)
DATA="${XDG_CACHE_HOME:-$HOME/.cache}/weir/tpch-lineitem-$SF"
if [ ! -f "$DATA/lineitem.csv" ]; then
  mkdir -p "$DATA"
  tpchgen-cli csv -s "$SF" -T lineitem -o "$DATA"
fi
ROWS=$(($(wc -l <"$DATA/lineitem.csv") - 1))
# shellcheck source=deploy/three-nodes.sh
source "$HERE/three-nodes.sh"
"$B/weir" sql "$(grep -i 'CREATE TABLE lineitem' "$HERE/tpch/schema.sql")" >/dev/null
t=$(date +%s.%N)
"$B/weir" load csv "$DATA/lineitem.csv" --table lineitem --header
el=$(echo "$(date +%s.%N) - $t" | bc)
echo "load: $ROWS rows in $el s = $(echo "$ROWS / $el" | bc) rows/s"
for i in 1 2 3; do echo "node $i resident: $(ps -o rss= -p "${PIDS[$i]}") KiB"; done
