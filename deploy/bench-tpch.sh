#!/usr/bin/env bash
# TPC-H (BENCHMARKS.md, "TPC-H"): the eight tables loaded into Weir tables on three fresh nodes
# with `weir load csv`, the 22 queries run through `weir sql`, each answer compared with DuckDB's,
# and DuckDB (2 threads) timed over the same data as Parquet files and as its own tables.
#
# usage: deploy/bench-tpch.sh [BIN_DIR] [SCALE]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   SCALE    TPC-H scale factor (default 1)
#
# Needs python3 with duckdb and tpchgen-cli (pip install duckdb tpchgen-cli). The data is generated
# once into ~/.cache/weir/tpch-sfSCALE. Starts three fresh nodes on 127.0.0.1:19701-19703 in a
# temporary directory and removes it when done. Answers go to $WEIR_TPCH_OUT (default
# /tmp/weir-tpch) for a look afterwards.
set -euo pipefail
B=${1:-target/release}
SF=${2:-1}
P=197
HERE="$(cd "$(dirname "$0")" && pwd)"
DATA="${XDG_CACHE_HOME:-$HOME/.cache}/weir/tpch-sf$SF"
OUT="${WEIR_TPCH_OUT:-/tmp/weir-tpch}"
if [ ! -f "$DATA/csv/lineitem.csv" ] || [ ! -f "$DATA/parquet/lineitem.parquet" ]; then
  tpchgen-cli csv -s "$SF" --output-dir "$DATA/csv"
  tpchgen-cli parquet -s "$SF" --output-dir "$DATA/parquet"
fi
rm -rf "$OUT" && mkdir -p "$OUT"
# shellcheck source=deploy/three-nodes.sh
source "$HERE/three-nodes.sh"
"$B/weir" sql -f "$HERE/tpch/schema.sql" >/dev/null
echo "== load (weir load csv, 3 replicas)"
for t in nation region part supplier partsupp customer orders lineitem; do
  start=$(date +%s.%N)
  "$B/weir" load csv "$DATA/csv/$t.csv" --table "$t" --header >"$OUT/load-$t.txt" 2>&1
  end=$(date +%s.%N)
  rows=$(($(wc -l <"$DATA/csv/$t.csv") - 1))
  python3 -c "import sys; s=float(sys.argv[2]) - float(sys.argv[1]); print(f'$t: $rows rows in {s:.1f} s, {int($rows / s):,} rows/s')" "$start" "$end"
done
# The timed rounds start once the load's flushes, compactions and splits are done.
quiet 300
# Two rounds across the cluster: the first reads the stored rows and leaves the regions' leaders
# with columnar images of them (--scan-cache), which the second reads. A third round runs every
# query on the node that received it (`SET weir.distribute = false` ahead of it in the same
# request: a setting lasts for its session), reading the same images.
# WEIR_TPCH_ROUNDS adds rounds after these, each across the cluster with one planner setting
# changed: `reduce` (distributed.partial_reduce = true: partial aggregates below the shuffles) and
# `plain` (distributed.compression = 'none': rows cross loopback uncompressed).
ROUNDS="1 2 local ${WEIR_TPCH_ROUNDS:-}"
for round in $ROUNDS; do
  case "$round" in
    local) session="SET weir.distribute = false;" ;;
    reduce) session="SET distributed.partial_reduce = true;" ;;
    plain) session="SET distributed.compression = 'none';" ;;
    *) session="" ;;
  esac
  echo "== 22 queries through weir sql, round $round"
  mkdir -p "$OUT/weir-r$round"
  total=0
  for q in $(seq 1 22); do
    start=$(date +%s.%N)
    if { echo "$session"; cat "$HERE/tpch/q$q.sql"; } | "$B/weir" --format csv sql >"$OUT/weir-r$round/q$q.csv" 2>"$OUT/weir-r$round/q$q.err"; then status=ok; else status=FAILED; fi
    end=$(date +%s.%N)
    took=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.3f}')" "$start" "$end")
    total=$(python3 -c "import sys; print(f'{float(sys.argv[1]) + float(sys.argv[2]):.3f}')" "$total" "$took")
    echo "q$q $took $status"
  done
  echo "total $total"
done
echo "== DuckDB 2 threads over the Parquet files"
python3 "$HERE/tpch/duck.py" "$DATA" "$OUT/duck-parquet" parquet
echo "== DuckDB 2 threads over its tables (loaded from the CSV files)"
python3 "$HERE/tpch/duck.py" "$DATA" "$OUT/duck-tables" tables
echo "== Weir's answers against DuckDB's"
for round in $ROUNDS; do
  python3 "$HERE/tpch/compare.py" "$OUT/duck-parquet" "$OUT/weir-r$round" --skip-header
done
