"""Consumer throughput through the Kafka protocol with librdkafka (confluent-kafka): reads COUNT
records from every partition of TOPIC, starting at offset 0.

Usage: kafka_consume.py BROKERS TOPIC PARTITIONS COUNT
"""
import sys
import time

from confluent_kafka import Consumer, TopicPartition

brokers, topic, parts, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = Consumer({
    "bootstrap.servers": brokers,
    "group.id": "bench",
    "enable.auto.commit": False,
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 8 << 20,
})
c.assign([TopicPartition(topic, p, 0) for p in range(parts)])
got = 0
start = time.time()
while got < count:
    msgs = c.consume(num_messages=10000, timeout=5.0)
    if not msgs:
        break
    got += sum(1 for m in msgs if m.error() is None)
took = time.time() - start
c.close()
print(f"kafka consume: {got} records in {took:.2f} s = {got / took:,.0f} records/s")
