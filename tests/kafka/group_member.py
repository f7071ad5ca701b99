"""One member of a Kafka consumer group (confluent-kafka, subscribe()), writing what it does to
OUT: "assign T p,p,..." and "revoke T p,p,..." as partitions come and go (T: Unix seconds), and
"rec P O" for every record it reads. It commits after every batch it read, and on SIGTERM leaves
the group cleanly.

Usage: group_member.py BROKERS GROUP TOPIC OUT
"""
import signal
import sys
import time

from confluent_kafka import Consumer, KafkaException

brokers, group, topic, out_path = sys.argv[1:5]
out = open(out_path, "a", buffering=1)
running = [True]
signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))


def parts(ps):
    return ",".join(str(p.partition) for p in ps)


def on_assign(consumer, ps):
    out.write(f"assign {time.time():.6f} {parts(ps)}\n")


def on_revoke(consumer, ps):
    out.write(f"revoke {time.time():.6f} {parts(ps)}\n")


c = Consumer({
    "bootstrap.servers": brokers,
    "group.id": group,
    "enable.auto.commit": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 500,
})
c.subscribe([topic], on_assign=on_assign, on_revoke=on_revoke)
while running[0]:
    msgs = c.consume(num_messages=500, timeout=0.5)
    read = [m for m in msgs if m.error() is None]
    for m in read:
        out.write(f"rec {m.partition()} {m.offset()}\n")
    if read:
        try:
            c.commit(asynchronous=False)
        except KafkaException:
            # Rebalanced meanwhile: the next owner reads these again from the last commit.
            pass
c.close()
out.write(f"closed {time.time():.6f}\n")
out.close()
