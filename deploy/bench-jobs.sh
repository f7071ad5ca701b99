#!/usr/bin/env bash
# Stream job benchmark (BENCHMARKS.md, "Stream jobs"): the seed-001 enrichment + aggregation job
# (transactions joined with account and district, kept per month) on three fresh nodes, beside
# PySpark Structured Streaming (local[2], a file source over the same records) doing the same.
#
# usage: deploy/bench-jobs.sh [BIN_DIR] [RECORDS]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   RECORDS  transactions (default 1,000,000)
#   NO_SPARK=1 skips the PySpark half; PROBES=N sets the freshness probes (default 40)
#
# Weir's throughput is measured on a backlog: the records are produced first, then the job is
# created (start = 'earliest') and timed until every task's lag is 0. Needs python3 with pyspark
# and Java 17 for the PySpark side. Ports 19701-19703 (HTTP 19711-19713, Postgres 19721-19723).
set -euo pipefail
B=${1:-target/release}
N=${2:-1000000}
P=197
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/three-nodes.sh
source "$HERE/three-nodes.sh"
python3 "$HERE/jobs/gen.py" "$R/data" "$N"
"$B/weir" sql "
  CREATE TABLE district (district_id INT, a2 VARCHAR, a3 VARCHAR, PRIMARY KEY (district_id));
  CREATE TABLE account (account_id BIGINT, district_id INT, frequency VARCHAR, PRIMARY KEY (account_id));
  CREATE TOPIC trans (trans_id BIGINT NOT NULL, account_id BIGINT, date DATE, type VARCHAR,
    operation VARCHAR, amount DOUBLE, balance DOUBLE, k_symbol VARCHAR)
    WITH (partitions = 6, replicas = 3, format = 'json');
  CREATE TABLE monthly_trend (transaction_month INT, transaction_count BIGINT,
    transaction_amount DOUBLE, PRIMARY KEY (transaction_month))" >/dev/null
"$B/weir" load csv "$R/data/district.csv" --table district --header >/dev/null
"$B/weir" load csv "$R/data/account.csv" --table account --header >/dev/null
echo "== produce $N records into trans"
t=$(date +%s.%N)
"$B/weir" produce trans --max-in-flight 8 <"$R/data/trans/trans.json"
echo "produced in $(echo "$(date +%s.%N) - $t" | bc) s"
echo "== weir: the job over the backlog"
c0=$(cpu_ticks)
t0=$(date +%s.%N)
"$B/weir" sql "CREATE JOB monthly AS INSERT INTO monthly_trend
  SELECT CAST(date_part('month', t.date) AS INT), count(*), sum(t.amount)
  FROM trans t JOIN account a ON t.account_id = a.account_id
    JOIN district d ON a.district_id = d.district_id
  GROUP BY CAST(date_part('month', t.date) AS INT)" >/dev/null
while :; do
  done_count=$("$B/weir" --format csv sql "SELECT coalesce(sum(transaction_count), 0) FROM monthly_trend" | tail -1)
  [ "$done_count" = "$N" ] && break
  sleep 0.05
done
t1=$(date +%s.%N)
c1=$(cpu_ticks)
el=$(echo "$t1 - $t0" | bc)
echo "weir: $N records in $el s = $(echo "$N / $el" | bc) records/s"
echo "weir: the nodes used $(echo "scale=2; ($c1 - $c0) / 100" | bc) CPU-seconds during the job"
"$B/weir" job describe monthly
echo "== weir: freshness, from a record's acknowledgement to its row visible to SQL (${PROBES:=40} probes)"
"$B/weir" sql "CREATE TABLE fresh (trans_id BIGINT, amount DOUBLE, PRIMARY KEY (trans_id));
  CREATE JOB fresh_job WITH (start = 'latest') AS INSERT INTO fresh SELECT trans_id, amount FROM trans" >/dev/null
# The job starts at the end of the topic once its tasks run: wait until every task has its place.
until [ "$("$B/weir" --format csv job describe fresh_job | awk -F, 'NR > 1 && $4 != ""' | wc -l)" = 6 ]; do
  sleep 0.2
done
for i in $(seq 1 "$PROBES"); do
  id=$((N + i))
  echo "{\"trans_id\": $id, \"account_id\": 1, \"date\": \"1995-01-01\", \"amount\": 1.0}" | "$B/weir" produce trans >/dev/null
  a=$(date +%s%N)
  until [ "$("$B/weir" --format csv sql "SELECT count(*) FROM fresh WHERE trans_id = $id" | tail -1)" = 1 ]; do
    [ $(( ($(date +%s%N) - a) / 1000000000 )) -lt 30 ] || { echo "probe $id not visible after 30 s" >&2; exit 1; }
  done
  echo $(( ($(date +%s%N) - a) / 1000000 ))
done >"$R/fresh.ms"
python3 - "$R/fresh.ms" <<'PY'
import sys
v = sorted(int(x) for x in open(sys.argv[1]))
pick = lambda q: v[min(len(v) - 1, int(q * len(v)))]
print(f"freshness over {len(v)} probes: p50 {pick(0.5)} ms, p99 {pick(0.99)} ms, max {v[-1]} ms")
PY
echo "== pyspark local[2], file source, trigger availableNow"
[ -n "${NO_SPARK:-}" ] || python3 "$HERE/jobs/spark_stream.py" "$R/data" "$N"
