#!/usr/bin/env bash
# The Kafka protocol against the native path on three fresh nodes (BENCHMARKS.md, "Kafka
# protocol"): 1,000,000 records of 100 B per run into topics of 6 partitions with 3 replicas,
# acks=all. Three rounds alternate `weir bench produce` (native) and kcat's producer (librdkafka,
# idempotence on), so neither always runs on the fresher cluster; then confluent-kafka's producer;
# then the first Kafka-produced topic read back by confluent-kafka's consumer, kcat and
# `weir consume`, with the CPU each client used.
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
LINES="$R/records.txt"
python3 -c "import sys; sys.stdout.buffer.write((b'x' * 100 + b'\n') * $N)" >"$LINES"
for i in 1 2 3 4; do
  "$B/weir" topic create "k$i" --partitions 6 --replicas 3 >/dev/null
  "$B/weir" topic create "n$i" --partitions 6 --replicas 3 >/dev/null
done
native() {
  echo "round $1 native (weir bench produce): $("$B/weir" bench produce --topic "n$1" --records "$N" \
    --record-size 100 --producers 1 --format csv | tail -1 | cut -d, -f5) records/s"
}
kcat_produce() {
  local s e
  s=$(date +%s.%N)
  kcat -P -b "$BROKERS" -t "k$1" -X enable.idempotence=true -X acks=all -X linger.ms=5 \
    -X batch.size=1048576 -X queue.buffering.max.messages=1000000 <"$LINES"
  e=$(date +%s.%N)
  echo "round $1 kafka (kcat -P, idempotent): $(python3 -c "print(f'{$N / ($e - $s):.0f}')") records/s"
}
for i in 1 2 3; do
  if [ "$i" = 2 ]; then kcat_produce "$i"; native "$i"; else native "$i"; kcat_produce "$i"; fi
done
echo "confluent-kafka producer: $("$PY" "$HERE/tests/bench/kafka_produce.py" "$BROKERS" k4 "$N" 100)"
echo "leaders of k1: $("$B/weir" topic describe k1 --format csv | tail -n +2 | cut -d, -f2 | tr '\n' ' ')"
/usr/bin/time -f "  (client: %e s wall, %U s user, %S s sys)" \
  "$PY" "$HERE/tests/bench/kafka_consume.py" "$BROKERS" k1 6 "$N"
/usr/bin/time -f "  (client: %e s wall, %U s user, %S s sys)" \
  "$PY" "$HERE/tests/bench/kafka_consume.py" "$BROKERS" k1 6 "$N" --defaults
/usr/bin/time -f "kcat -C: %e s wall for the records above (client: %U s user, %S s sys)" \
  sh -c "kcat -C -b $BROKERS -t k1 -o beginning -e -q -f '%o\n' -X fetch.max.bytes=67108864 \
    -X max.partition.fetch.bytes=8388608 | wc -l"
/usr/bin/time -f "weir consume: %e s wall for the records above (client: %U s user, %S s sys)" \
  sh -c "$B/weir consume k1 --from earliest -n $N --format csv | wc -l"
