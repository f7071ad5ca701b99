"""Producer throughput through the Kafka protocol with librdkafka (confluent-kafka): COUNT records
of SIZE bytes, acks=all, idempotence on, keyless (librdkafka spreads them over the partitions).

Usage: kafka_produce.py BROKERS TOPIC COUNT SIZE
"""
import sys
import time

from confluent_kafka import Producer

brokers, topic, count, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
p = Producer({
    "bootstrap.servers": brokers,
    "acks": "all",
    "enable.idempotence": True,
    "linger.ms": 5,
    "batch.size": 1 << 20,
    "queue.buffering.max.messages": 1_000_000,
})
errors = [0]


def delivered(err, _msg):
    if err is not None:
        errors[0] += 1


value = b"x" * size
start = time.time()
for _ in range(count):
    while True:
        try:
            p.produce(topic, value, on_delivery=delivered)
            break
        except BufferError:
            p.poll(0.01)
    p.poll(0)
p.flush(600)
took = time.time() - start
print(f"kafka produce: {count} records of {size} B in {took:.2f} s = {count / took:,.0f} records/s, "
      f"{count * size / took / 1e6:.1f} MB/s, {errors[0]} failed")
