#!/usr/bin/env bash
# The Kafka protocol against the native path on three fresh nodes (BENCHMARKS.md, "Kafka
# protocol"): librdkafka's producer (confluent-kafka; acks=all, idempotence on) and `weir bench
# produce`, each 1,000,000 records of 100 B into its own topic of 6 partitions with 3 replicas, then
# librdkafka's consumer reading the Kafka-produced topic back.
#
# usage: deploy/bench-kafka.sh [BIN_DIR [PYTHON]]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   PYTHON   a Python with confluent-kafka (default: the virtualenv `make deps` creates)
set -euo pipefail
B=${1:-target/release}
PY=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/py/bin/python}
P=196
HERE=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
BROKERS="127.0.0.1:${P}31,127.0.0.1:${P}32,127.0.0.1:${P}33"
N=${N:-1000000}
"$B/weir" topic create kbench --partitions 6 --replicas 3 >/dev/null
"$B/weir" topic create nbench --partitions 6 --replicas 3 >/dev/null
echo "== native: weir bench produce, $N x 100 B, acks=all"
"$B/weir" bench produce --topic nbench --records "$N" --record-size 100 --producers 1
echo "== kafka: confluent-kafka producer, $N x 100 B, acks=all, idempotent"
"$PY" "$HERE/tests/bench/kafka_produce.py" "$BROKERS" kbench "$N" 100
echo "== kafka: confluent-kafka consumer, the $N records from offset 0"
"$PY" "$HERE/tests/bench/kafka_consume.py" "$BROKERS" kbench 6 "$N"
