#!/usr/bin/env bash
# Produce latency while a node joins and replicas move to it (BENCHMARKS.md, "Availability while
# replicas move to a joining node"). Three fresh nodes, a topic of 6 partitions x 3 replicas, a
# producer paced at RATE records/s (100 bytes, acks=all) for SECONDS; JOIN_AFTER seconds in, a
# fourth node joins and the placement moves replicas (leaders among them) to it. The bench's
# max and p99.9 send-to-ack latency show how long a partition was without a leader during the
# moves; the script then prints how many replicas node 4 holds.
#
# usage: deploy/bench-join.sh [BIN_DIR] [RATE] [SECONDS] [JOIN_AFTER]
# Ports 19501-19504 (HTTP 19511-19514, Postgres 19521-19524, Kafka 19531-19534).
set -euo pipefail
B=${1:-target/release}
RATE=${2:-5000}
SECONDS_RUN=${3:-60}
JOIN_AFTER=${4:-10}
P=195
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
"$B/weir" topic create moving --partitions 6 --replicas 3 >/dev/null
"$B/weir" bench produce --topic moving --records $((RATE * SECONDS_RUN)) --throughput "$RATE" \
  --record-size 100 --acks all >"$R/bench.out" 2>&1 &
BENCH=$!
sleep "$JOIN_AFTER"
echo "== node 4 joins at $(date +%T)"
start 4 --join "127.0.0.1:${P}01"
wait "$BENCH"
cat "$R/bench.out"
echo "== node 4 at the end: Raft groups held and led"
curl -s "127.0.0.1:${P}14/metrics" | grep -E '^weir_raft_groups' || true
"$B/weir" --format csv cluster status
