#!/usr/bin/env bash
# Creating topics and tables (BENCHMARKS.md, "Stream jobs"): on three fresh nodes, six rounds of
# `weir topic create` (3 partitions x 3 replicas) and `CREATE TABLE` through `weir sql`, each timed
# from the command's start until it returned, which is once every group of the new topic or table
# has a leader the cluster knows of. Prints one line per round.
#
# usage: deploy/bench-create.sh [BIN_DIR]
#   BIN_DIR  where weir-node and weir are (default: target/release)
set -euo pipefail
B=${1:-target/release}
HERE="$(cd "$(dirname "$0")" && pwd)"
P=191
# shellcheck source=deploy/three-nodes.sh
source "$HERE/three-nodes.sh"
now() { date +%s.%N; }
for i in 1 2 3 4 5 6; do
  a=$(now)
  "$B/weir" topic create "t$i" --partitions 3 --replicas 3 >/dev/null
  b=$(now)
  "$B/weir" sql "CREATE TABLE k$i (id BIGINT PRIMARY KEY, v TEXT)" >/dev/null
  c=$(now)
  awk -v a="$a" -v b="$b" -v c="$c" 'BEGIN { printf "topic %.3f s   table %.3f s\n", b - a, c - b }'
done
