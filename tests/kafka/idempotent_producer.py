"""An idempotent librdkafka producer (confluent-kafka) writing COUNT records, values 0..COUNT-1,
keys spread over the partitions. Every acknowledged record is written to ACKED as
"partition offset value"; progress goes to stdout as "acked N" lines.

Usage: idempotent_producer.py BROKER TOPIC COUNT ACKED
"""
import sys

from confluent_kafka import Producer

broker, topic, count, acked_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
acked = open(acked_path, "w")
state = {"acked": 0, "failed": 0, "reported": 0}


def delivered(err, msg):
    if err is not None:
        state["failed"] += 1
        print(f"failed {msg.value().decode()} {err}", flush=True)
        return
    acked.write(f"{msg.partition()} {msg.offset()} {msg.value().decode()}\n")
    state["acked"] += 1
    if state["acked"] - state["reported"] >= 2000:
        state["reported"] = state["acked"]
        print(f"acked {state['acked']}", flush=True)


p = Producer({
    "bootstrap.servers": broker,
    "enable.idempotence": True,
    "linger.ms": 5,
    "message.timeout.ms": 180000,
})
for i in range(count):
    while True:
        try:
            p.produce(topic, value=str(i).encode(), key=f"k{i % 101}".encode(), on_delivery=delivered)
            break
        except BufferError:
            p.poll(0.1)
    p.poll(0)
left = p.flush(240)
acked.close()
print(f"done acked={state['acked']} failed={state['failed']} unflushed={left}", flush=True)
