"""One member of a Kafka consumer group written with kafka-python (KafkaConsumer, subscribe()),
writing what it does to OUT as group_member.py does: "assign T p,p,..." and "revoke T p,p,..." as
partitions come and go (T: Unix seconds), and "rec P O" for every record it reads. It commits after
every batch it read, and on SIGTERM leaves the group cleanly.

Usage: group_member_kp.py BROKERS GROUP TOPIC OUT
"""
import signal
import sys
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer
from kafka.errors import CommitFailedError, KafkaError

brokers, group, topic, out_path = sys.argv[1:5]
out = open(out_path, "a", buffering=1)
running = [True]
signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))


def parts(ps):
    return ",".join(str(p.partition) for p in sorted(ps, key=lambda p: p.partition))


class Listener(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        out.write(f"revoke {time.time():.6f} {parts(revoked)}\n")

    def on_partitions_assigned(self, assigned):
        out.write(f"assign {time.time():.6f} {parts(assigned)}\n")


c = KafkaConsumer(
    bootstrap_servers=brokers.split(","),
    group_id=group,
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    session_timeout_ms=6000,
    heartbeat_interval_ms=500,
)
c.subscribe([topic], listener=Listener())
while running[0]:
    batches = c.poll(timeout_ms=500, max_records=500)
    read = [m for records in batches.values() for m in records]
    for m in read:
        out.write(f"rec {m.partition} {m.offset}\n")
    if read:
        try:
            c.commit()
        except (CommitFailedError, KafkaError):
            # Rebalanced meanwhile: the next owner reads these again from the last commit.
            pass
c.close()
out.write(f"closed {time.time():.6f}\n")
out.close()
