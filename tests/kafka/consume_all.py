"""Reads every partition of TOPIC from offset 0 with a librdkafka consumer (confluent-kafka) until
it has EXPECTED records or nothing new came for a while; writes "partition offset value" lines to OUT.

Usage: consume_all.py BROKER TOPIC PARTITIONS EXPECTED OUT
"""
import sys
import time

from confluent_kafka import Consumer, TopicPartition

broker, topic, parts, expected, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
c = Consumer({"bootstrap.servers": broker, "group.id": "check", "enable.auto.commit": False})
c.assign([TopicPartition(topic, p, 0) for p in range(parts)])
got = []
last_new = time.time()
while len(got) < expected and time.time() - last_new < 60:
    m = c.poll(1.0)
    if m is None:
        continue
    if m.error():
        print(f"error {m.error()}", flush=True)
        continue
    got.append(f"{m.partition()} {m.offset()} {m.value().decode()}")
    last_new = time.time()
c.close()
with open(out, "w") as f:
    f.write("\n".join(got) + "\n")
print(f"consumed {len(got)}", flush=True)
