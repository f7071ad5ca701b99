#!/usr/bin/env bash
# The hot paths on three fresh nodes (BENCHMARKS.md, "Hot paths re-measured"): produce saturated and
# paced, then puts and gets on a one-region table, each as the earlier sections of BENCHMARKS.md ran
# them.
#
# usage: deploy/bench-hot-paths.sh [BIN_DIR]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#
# Starts three fresh nodes on 127.0.0.1:19501-19503 (HTTP 19511-19513) in a temporary directory and
# removes it when done.
set -euo pipefail
B=${1:-target/release}
P=195
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
"$B/weir" topic create bench --partitions 6 --replicas 3 >/dev/null
echo "== produce, saturated: 1,000,000 x 100 B, 2 producers, acks=all"
"$B/weir" bench produce --topic bench --records 1000000 --record-size 100 --producers 2
echo "== produce, paced at 100,000/s: 1,000,000 x 100 B, acks=all"
"$B/weir" bench produce --topic bench --records 1000000 --record-size 100 --producers 1 \
  --throughput 100000
"$B/weir" table create kv --schema 'key VARCHAR, value VARCHAR' --primary-key key --replicas 3 \
  >/dev/null
echo "== puts: 50,000 x 256 B, 16 clients"
"$B/weir" bench kv --table kv --ops 50000 --value-size 256 --clients 16
echo "== gets: 200,000, 16 clients, 50,000 keys"
"$B/weir" bench kv --table kv --ops 200000 --value-size 256 --clients 16 --mix 0:1 --keys 50000
