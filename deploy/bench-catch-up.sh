#!/usr/bin/env bash
# Catch-up of a follower that was down under load (BENCHMARKS.md, "Catch-up after downtime").
#
# usage: deploy/bench-catch-up.sh [BIN_DIR] [RATE] [DOWN_SECS]
#   BIN_DIR    where weir-node and weir are (default: target/release)
#   RATE       records of 100 bytes per second produced throughout (default: 20000)
#   DOWN_SECS  how long one follower stays down (default: 10)
#
# Starts three fresh nodes on 127.0.0.1:19301-19303 (HTTP 19311-19313) in a temporary directory,
# creates a topic of 3 partitions x 3 replicas, produces at RATE for DOWN_SECS + 20 seconds,
# SIGKILLs node 3 after 5 seconds and restarts it DOWN_SECS later, waits until every partition's
# replicas have caught up, then prints what the leaders sent node 3 as snapshots beside the bytes
# produced while it was down, and stops the nodes.
set -euo pipefail
B=${1:-target/release}
RATE=${2:-20000}
DOWN=${3:-10}
P=193
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
metric() { # node name -> value summed over label sets (0 when absent)
  curl -s "127.0.0.1:${P}1$1/metrics" | awk -v n="$2" 'index($0, n) == 1 {s += $NF} END {print s + 0}'
}
"$B/weir" topic create catchup --partitions 3 --replicas 3 >/dev/null
SECS=$((DOWN + 20))
"$B/weir" bench produce --topic catchup --records $((RATE * SECS)) --throughput "$RATE" \
  --record-size 100 --acks all >"$R/bench.out" 2>&1 &
BENCH=$!
sleep 5
kill -9 "${PIDS[3]}"
echo "node 3 killed; down for $DOWN s while $RATE records/s are produced"
sleep "$DOWN"
start 3 --join "127.0.0.1:${P}01"
wait "$BENCH"
tail -3 "$R/bench.out"
# Every partition's replicas on node 3 hold what the leaders hold: lag 0 on every leader.
for _ in $(seq 1 120); do
  lag=0
  for i in 1 2 3; do lag=$((lag + $(metric "$i" weir_raft_replication_lag_entries | cut -d. -f1))); done
  [ "$lag" = 0 ] && break
  sleep 1
done
missed=$((RATE * DOWN * 100))
sent=0
full=0
incr=0
for i in 1 2; do
  sent=$((sent + $(metric "$i" weir_snapshot_bytes_sent_total | cut -d. -f1)))
  full=$((full + $(metric "$i" 'weir_snapshots_sent_total{incremental="false"}' | cut -d. -f1)))
  incr=$((incr + $(metric "$i" 'weir_snapshots_sent_total{incremental="true"}' | cut -d. -f1)))
done
echo "payload produced while node 3 was down: ~$missed bytes"
echo "snapshots sent to node 3: $incr from its own offset, $full whole; $sent bytes"
