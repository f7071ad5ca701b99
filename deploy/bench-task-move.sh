#!/usr/bin/env bash
# Task move benchmark (BENCHMARKS.md, "Stream jobs"): how long after a SIGKILL the tasks of the
# killed node serve again elsewhere. Three fresh nodes, a 6-partition topic fed every 100 ms with
# records stamped with their production time, and a job keeping per partition the latest stamp it
# has seen. Each round kills the non-seed node running the most tasks and measures, from the kill:
#   moved    the tasks no longer assigned to the killed node (SHOW JOBS), which includes the
#            5 s it takes the cluster to call a silent node down;
#   serving  every partition's latest stamp in the sink is from after the kill: records produced
#            after the kill have gone through the moved tasks (and any moved partition leader).
#
# usage: deploy/bench-task-move.sh [BIN_DIR] [ROUNDS]
# Ports 19801-19803 (HTTP 19811-19813, Postgres 19821-19823).
set -euo pipefail
B=${1:-target/release}
ROUNDS=${2:-3}
P=198
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=deploy/three-nodes.sh
source "$HERE/three-nodes.sh"
W() { "$B/weir" --format csv "$@"; }
now_ms() { date +%s%3N; }

W sql "CREATE TOPIC events (id BIGINT NOT NULL, produced BIGINT NOT NULL)
    WITH (partitions = 6, replicas = 3, format = 'json');
  CREATE TABLE fresh (part INT, latest BIGINT, n BIGINT, PRIMARY KEY (part));
  CREATE JOB fresh_job AS INSERT INTO fresh
    SELECT _partition, max(produced), count(*) FROM events GROUP BY _partition" >/dev/null

# The feeder: 60 records every 100 ms, 10 to each partition, through whichever node answers.
(
  id=0
  while :; do
    for port in "${P}01" "${P}02" "${P}03"; do
      if "$B/weir" --server "127.0.0.1:$port" --retry-for-ms 2000 sql "INSERT INTO events (id, produced, _partition)
          SELECT value, $(now_ms), value % 6 FROM generate_series($id, $((id + 59)))" >/dev/null 2>&1; then
        break
      fi
    done
    id=$((id + 60))
    sleep 0.1
  done
) &
FEEDER=$!
trap 'kill $FEEDER 2>/dev/null || true; cleanup' EXIT

# Node id -> index (1..3) from the cluster's member list.
index_of() {
  W cluster status | awk -F, -v id="$1" -v p="$P" '$1 == id { n = split($2, a, ":"); print a[n] - p * 100 }'
}
# The nodes of the job's tasks, one per line.
job_nodes() {
  W sql "SHOW JOBS" | python3 -c 'import csv, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
for row in list(csv.reader(sys.stdin))[1:]:
    print("\n".join(row[5].split(",")))'
}

until [ "$(W sql "SELECT count(*) FROM fresh" | tail -1)" = 6 ]; do sleep 0.2; done
echo "round,killed_node,tasks_on_it,moved_ms,serving_ms"
for round in $(seq 1 "$ROUNDS"); do
  # The non-seed node with the most tasks.
  victim_id=$(job_nodes | sort | uniq -c | sort -rn | awk '{ print $2 }' |
    while read -r id; do [ "$(index_of "$id")" != 1 ] && { echo "$id"; break; }; done)
  if [ -z "$victim_id" ]; then
    echo "round $round: only the seed node runs tasks (returned nodes get none back); stopping"
    break
  fi
  tasks=$(job_nodes | grep -cx "$victim_id" || true)
  i=$(index_of "$victim_id")
  t0=$(now_ms)
  kill -9 "${PIDS[$i]}"
  wait "${PIDS[$i]}" 2>/dev/null || true
  until ! job_nodes | grep -x "$victim_id" >/dev/null; do sleep 0.05; done
  moved=$(($(now_ms) - t0))
  until [ "$(W sql "SELECT min(latest) > $t0 FROM fresh" | tail -1)" = true ]; do sleep 0.05; done
  serving=$(($(now_ms) - t0))
  echo "$round,$victim_id,$tasks,$moved,$serving"
  start "$i" --join "127.0.0.1:${P}01"
  for _ in $(seq 1 120); do
    [ "$(W cluster status 2>/dev/null | grep -c ',up' || true)" = 3 ] && break
    sleep 1
  done
  # Let placement give the returned node tasks again before the next round.
  sleep 10
done
