#!/usr/bin/env python3
"""Sends status events to Weir's Kafka listener, as the servers' agents did to Kafka in the seed:
each keyed by its server_id, so a server's reports stay in order in one partition.

usage: python3 emit.py FILE [--bootstrap 127.0.0.1:9092] [--topic server_status] [--rate N]
  FILE   gen.py's output (one JSON event per line); - for stdin
  --rate events per second (default 0: as fast as the cluster acknowledges them)
Needs kafka-python (`pip install kafka-python`; `make deps` installs it in ~/.cache/weir/py).
"""
import argparse
import json
import sys
import time

from kafka import KafkaProducer


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file")
    p.add_argument("--bootstrap", default="127.0.0.1:9092")
    p.add_argument("--topic", default="server_status")
    p.add_argument("--rate", type=float, default=0)
    a = p.parse_args()
    producer = KafkaProducer(bootstrap_servers=[a.bootstrap], acks="all", linger_ms=20)
    src = sys.stdin if a.file == "-" else open(a.file)
    sent = 0
    began = time.monotonic()
    for line in src:
        line = line.strip()
        if not line:
            continue
        key = json.loads(line)["server_id"].encode()
        producer.send(a.topic, key=key, value=line.encode())
        sent += 1
        if a.rate > 0:
            ahead = sent / a.rate - (time.monotonic() - began)
            if ahead > 0:
                time.sleep(ahead)
    producer.flush()
    producer.close()
    print(f"sent {sent} events in {time.monotonic() - began:.1f} s")


if __name__ == "__main__":
    main()
