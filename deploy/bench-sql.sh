#!/usr/bin/env bash
# SQL benchmarks (BENCHMARKS.md, "SQL"): a GROUP BY over a loaded table and a primary-key lookup
# through `weir sql` on three fresh nodes, beside DuckDB over the same rows as CSV.
#
# usage: deploy/bench-sql.sh [BIN_DIR] [ROWS]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   ROWS     rows of the table (default 1,000,000; 1,000 distinct keys k)
#
# Needs farm-bench and python3 with duckdb (pip install duckdb). Starts three fresh nodes on
# 127.0.0.1:19601-19603 (HTTP 19611-19613, Postgres 19621-19623) in a temporary directory and removes
# it when done.
set -euo pipefail
B=${1:-target/release}
ROWS=${2:-1000000}
P=196
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
CSV="$R/t.csv"
python3 - "$CSV" "$ROWS" <<'PY'
import random, sys
random.seed(7)
with open(sys.argv[1], "w") as f:
    f.write("id,k,v\n")
    for i in range(int(sys.argv[2])):
        f.write(f"{i},{i % 1000},{random.randint(0, 1000000)}\n")
PY
"$B/weir" table create t --schema 'id BIGINT, k INT, v BIGINT' --primary-key id --replicas 3 >/dev/null
echo "== load: $ROWS rows"
"$B/weir" load csv "$CSV" --table t --header
Q="SELECT k, count(*), sum(v), avg(v) FROM t GROUP BY k ORDER BY k"
cat >"$R/duck.py" <<PY
import duckdb
duckdb.sql("SET threads = 2")
print(len(duckdb.sql("SELECT k, count(*), sum(v), avg(v) FROM read_csv('$CSV') GROUP BY k ORDER BY k").fetchall()))
PY
echo "== $Q: weir sql (A) vs DuckDB 2 threads over the CSV (B)"
farm-bench -n 5 --timeout 900 --vs "python3 $R/duck.py" -- "$B/weir" sql "$Q"
echo "== a primary-key lookup: weir sql"
farm-bench -n 20 -- "$B/weir" sql "SELECT * FROM t WHERE id = 424242"
