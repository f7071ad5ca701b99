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
P=194
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
"$B/weir" topic create paced --partitions 3 --replicas 3 >/dev/null
"$B/weir" bench produce --topic paced --records "$RECORDS" --throughput "$RATE" \
  --record-size 100 --acks all
if [ -n "${WEIR_BENCH_METRICS:-}" ]; then
  curl -s "127.0.0.1:${P}11/metrics" | grep "^${WEIR_BENCH_METRICS}" || true
fi
