"""Consumer throughput through the Kafka protocol with librdkafka (confluent-kafka): reads COUNT
records from every partition of TOPIC, starting at offset 0.

librdkafka stops fetching a partition once it holds `queued.min.messages` (100,000) records of it
locally and then waits `fetch.queue.backoff.ms` before asking again; read as fast as possible, its
defaults leave the consumer idle between fetches. The benchmark lets it prefetch (as Kafka consumer
benchmarks do); pass `--defaults` to measure librdkafka's defaults instead.

Usage: kafka_consume.py BROKERS TOPIC PARTITIONS COUNT [--defaults]
"""
import sys
import time

from confluent_kafka import Consumer, TopicPartition

brokers, topic, parts, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
defaults = "--defaults" in sys.argv[5:]
conf = {
    "bootstrap.servers": brokers,
    "group.id": "bench",
    "enable.auto.commit": False,
    "fetch.max.bytes": 64 << 20,
    "max.partition.fetch.bytes": 8 << 20,
}
if not defaults:
    conf.update({"queued.min.messages": 2_000_000, "queued.max.messages.kbytes": 2_000_000})
c = Consumer(conf)
c.assign([TopicPartition(topic, p, 0) for p in range(parts)])
got = 0
first = None
start = time.time()
while got < count:
    msgs = c.consume(num_messages=10000, timeout=5.0)
    if not msgs:
        break
    if first is None:
        first = time.time()
    got += sum(1 for m in msgs if m.error() is None)
end = time.time()
c.close()
label = "librdkafka defaults" if defaults else "prefetching"
print(f"kafka consume ({label}): {got} records in {end - start:.2f} s = {got / (end - start):,.0f} "
      f"records/s ({got / (end - first):,.0f} records/s from the first records on)")
