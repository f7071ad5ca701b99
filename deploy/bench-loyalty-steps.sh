#!/usr/bin/env bash
# The loyalty batch job's two statements (deploy/loyalty/job.sql) timed one by one on three fresh
# nodes, with the CPU the nodes used for each: where the job's time goes, and a quick A/B of two
# builds (run it for each, alternated). Input files from deploy/loyalty/gen.py must already be in
# DATA_DIR (customer.csv, orders.csv).
#
# usage: deploy/bench-loyalty-steps.sh BIN_DIR DATA_DIR [RUNS] [REPLICAS]
#   BIN_DIR   where weir-node and weir are
#   DATA_DIR  the directory holding customer.csv and orders.csv
#   RUNS      how many times the job runs on the cluster (default 3; later runs are upserts of the
#             same rows)
#   REPLICAS  replicas of the two output tables (default 3)
#
# Starts three nodes on 127.0.0.1:19601-19603 (HTTP 19611-19613, Postgres 19621-19623) in a
# temporary directory and removes it when done.
set -euo pipefail
B=$1
DATA=$(cd "$2" && pwd)
RUNS=${3:-3}
REPLICAS=${4:-3}
L=$(cd "$(dirname "$0")/loyalty" && pwd)
P=196
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
sed -e "s|@DIR@|$DATA|g" \
  -e "s|PRIMARY KEY (customer_id));|PRIMARY KEY (customer_id)) WITH (replicas = $REPLICAS);|" \
  -e "s|PRIMARY KEY (customer_id, data_dt));|PRIMARY KEY (customer_id, data_dt)) WITH (replicas = $REPLICAS);|" \
  "$L/tables.sql" >"$R/tables.sql"
"$B/weir" sql -f "$R/tables.sql" >/dev/null
# One file per INSERT of the job (each statement runs to its closing semicolon).
awk -v out="$R/step" '/^INSERT/ { n++ } n > 0 { print > (out n ".sql") }' "$L/job.sql"
for run in $(seq 1 "$RUNS"); do
  line="run $run:"
  total=0
  for step in 1 2; do
    t0=$(cpu_ticks)
    a=$(date +%s%N)
    "$B/weir" sql -f "$R/step$step.sql" >/dev/null
    b=$(date +%s%N)
    t1=$(cpu_ticks)
    ms=$(((b - a) / 1000000))
    total=$((total + ms))
    line="$line step $step $ms ms (node CPU $(((t1 - t0) * 10)) ms);"
  done
  echo "$line job $total ms"
done
"$B/weir" --format csv sql -f "$L/check.sql"
