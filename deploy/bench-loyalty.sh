#!/usr/bin/env bash
# The loyalty batch job of seed 000 (BENCHMARKS.md, "SQL: the loyalty batch job"): clean CUSTOMERS
# messy customers from a CSV file into `customers_cln`, join ORDERS orders from another CSV file
# with them and write loyalty points per customer per day into `loyalty`, on three fresh nodes,
# beside DuckDB (2 threads, in-memory tables) and PySpark (local[2], Parquet output) over the
# same files. All three print the same check figures (deploy/loyalty/check.sql); the script
# stops if they differ.
#
# usage: deploy/bench-loyalty.sh [BIN_DIR] [CUSTOMERS] [ORDERS] [PYTHON]
#   BIN_DIR    where weir-node and weir are (default: target/release)
#   CUSTOMERS  rows of customer.csv (default 1,000,000)
#   ORDERS     rows of orders.csv (default 10,000,000)
#   PYTHON     a python3 with duckdb and pyspark (default: python3)
#
# Needs farm-bench and Java 17 for PySpark. Starts three fresh nodes on 127.0.0.1:19701-19703
# (HTTP 19711-19713, Postgres 19721-19723) in a temporary directory and removes it when done.
set -euo pipefail
B=${1:-target/release}
CUSTOMERS=${2:-1000000}
ORDERS=${3:-10000000}
PY=${4:-python3}
L=$(cd "$(dirname "$0")/loyalty" && pwd)
P=197
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
D="$R/data"
echo "== input: $CUSTOMERS customers, $ORDERS orders"
"$PY" "$L/gen.py" "$D" "$CUSTOMERS" "$ORDERS"
ls -l "$D"
sed "s|@DIR@|$D|g" "$L/tables.sql" >"$R/tables.sql"
"$B/weir" sql -f "$R/tables.sql" >/dev/null

echo "== Weir: deploy/loyalty/job.sql, 3 nodes (first run, tables empty)"
/usr/bin/time -f "weir first run: %e s" "$B/weir" sql -f "$L/job.sql"
"$B/weir" --format csv sql -f "$L/check.sql" | grep -v '^n,' >"$R/weir.check"
cat "$R/weir.check"

echo "== DuckDB: deploy/loyalty/duck.py"
"$PY" "$L/duck.py" "$D" | tee "$R/duck.out"
tail -n 2 "$R/duck.out" >"$R/duck.check"
echo "== PySpark: deploy/loyalty/spark.py"
# Spark's log and progress bars go to stderr, kept apart from the figures on stdout.
/usr/bin/time -f "pyspark process: %e s" -o "$R/spark.time" "$PY" "$L/spark.py" "$D" "$R/spark" \
  2>"$R/spark.err" | tee "$R/spark.out"
cat "$R/spark.time"
grep -E '^[0-9]' "$R/spark.out" | tail -n 2 >"$R/spark.check"
for peer in duck spark; do
  if ! diff "$R/weir.check" "$R/$peer.check"; then
    echo "answers differ: Weir (<) and $peer (>)" >&2
    exit 1
  fi
done
echo "== answers equal: Weir, DuckDB, PySpark"

echo "== re-runs (upserts of the same rows): weir sql -f job.sql (A) vs DuckDB (B)"
farm-bench -n 3 --timeout 1800 --vs "$PY $L/duck.py $D" -- "$B/weir" sql -f "$L/job.sql"
