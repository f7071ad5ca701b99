#!/usr/bin/env bash
# Produce latency at a paced rate on three fresh nodes (BENCHMARKS.md, "Latency at a paced rate").
#
# usage: deploy/bench-paced.sh [BIN_DIR] [RATE] [RECORDS] [OPTIONS...]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   RATE     records of 100 bytes per second (default: 25000)
#   RECORDS  records to send (default: 1000000)
#   OPTIONS  more options of `weir bench produce` (`--linger-ms 2`, say)
#
# Starts three fresh nodes on 127.0.0.1:19401-19403 (HTTP 19411-19413) in a temporary directory,
# creates a topic of 3 partitions x 3 replicas, produces at RATE with acks=all, prints the bench
# result (send-to-ack latency per record) and what the run cost the machine (the nodes' CPU, the
# whole machine's busy share of its cores, and how long the nodes' threads waited for a CPU each
# time they became runnable), then stops the nodes and removes the directory. With
# WEIR_BENCH_METRICS=PREFIX it also prints each node's metrics whose names start with PREFIX.
# ACKS=leader measures answers given once a batch is proposed (default: all).
set -euo pipefail
B=${1:-target/release}
RATE=${2:-25000}
RECORDS=${3:-1000000}
shift $(($# < 3 ? $# : 3))
P=194
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
"$B/weir" topic create paced --partitions 3 --replicas 3 >/dev/null
read -r t0 <<<"$(cpu_ticks)"
read -r w0 n0 <<<"$(run_queue)"
read -r b0 a0 <<<"$(machine_busy)"
"$B/weir" bench produce --topic paced --records "$RECORDS" --throughput "$RATE" \
  --record-size 100 --acks "${ACKS:-all}" "$@"
read -r t1 <<<"$(cpu_ticks)"
read -r w1 n1 <<<"$(run_queue)"
read -r b1 a1 <<<"$(machine_busy)"
awk -v t="$((t1 - t0))" -v b="$((b1 - b0))" -v a="$((a1 - a0))" -v w="$((w1 - w0))" -v n="$((n1 - n0))" \
  -v cores="$(nproc)" 'BEGIN {
    printf "nodes: %.2f CPU-s; machine busy %.0f %% of %d cores; node threads waited %.1f s for a CPU, %.0f us per run (%d runs)\n",
      t / 100, 100 * b / a, cores, w / 1e9, (n > 0 ? w / n / 1000 : 0), n }'
if [ -n "${WEIR_BENCH_METRICS:-}" ]; then
  for i in 1 2 3; do
    echo "# node $i"
    curl -s "127.0.0.1:${P}1$i/metrics" | grep "^${WEIR_BENCH_METRICS}" || true
  done
fi
