#!/usr/bin/env bash
# Produce latency at a paced rate on three fresh nodes (BENCHMARKS.md, "Latency at a paced rate").
#
# usage: deploy/bench-paced.sh [BIN_DIR] [RATE] [RECORDS]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   RATE     records of 100 bytes per second (default: 25000)
#   RECORDS  records to send (default: 1000000)
#
# Starts three fresh nodes on 127.0.0.1:19401-19403 (HTTP 19411-19413) in a temporary directory,
# creates a topic of 3 partitions x 3 replicas, produces at RATE with acks=all, prints the bench
# result (send-to-ack latency per record), then stops the nodes and removes the directory. With
# WEIR_BENCH_METRICS=PREFIX it also prints node 1's metrics whose names start with PREFIX.
set -euo pipefail
B=${1:-target/release}
RATE=${2:-25000}
RECORDS=${3:-1000000}
R=$(mktemp -d -t weir-paced-XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$R"
}
trap cleanup EXIT

start() { # id [join]
  local i=$1
  shift
  "$B/weir-node" --data-dir "$R/n$i" --listen "127.0.0.1:1940$i" --http "127.0.0.1:1941$i" "$@" \
    >"$R/n$i.out" 2>&1 &
  PIDS+=($!)
}

start 1
sleep 2
start 2 --join 127.0.0.1:19401
start 3 --join 127.0.0.1:19401
export WEIR_SERVER=127.0.0.1:19401
for _ in $(seq 1 120); do
  up=$("$B/weir" --format csv cluster status 2>/dev/null | grep -c ',up' || true)
  [ "$up" = 3 ] && break
  sleep 1
done
"$B/weir" topic create paced --partitions 3 --replicas 3 >/dev/null
"$B/weir" bench produce --topic paced --records "$RECORDS" --throughput "$RATE" \
  --record-size 100 --acks all
if [ -n "${WEIR_BENCH_METRICS:-}" ]; then
  curl -s 127.0.0.1:19411/metrics | grep "^${WEIR_BENCH_METRICS}" || true
fi
