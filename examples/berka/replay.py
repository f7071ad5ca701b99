#!/usr/bin/env python3
"""Replays transactions into a Weir topic at random intervals, as the seed's Kafka producer did:
a few lines at a time, posted to a node's HTTP ingest endpoint, with a random pause between posts.

usage: python3 replay.py FILE [--url http://127.0.0.1:7480] [--topic trans] [--batch N]
                         [--max-pause SECONDS] [--seed S]
Prints a line per post. Needs nothing but Python 3.
"""
import argparse
import random
import sys
import time
import urllib.error
import urllib.request


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("file", help="NDJSON records, one per line (gen.py's trans.ndjson)")
    p.add_argument("--url", default="http://127.0.0.1:7480", help="a node's HTTP address")
    p.add_argument("--topic", default="trans")
    p.add_argument("--batch", type=int, default=50, help="most records per post (default 50)")
    p.add_argument("--max-pause", type=float, default=1.0,
                   help="longest pause between posts in seconds (default 1)")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    if a.batch < 1 or a.max_pause < 0:
        p.error("--batch must be at least 1 and --max-pause not negative")
    rng = random.Random(a.seed)
    url = f"{a.url.rstrip('/')}/v1/topics/{a.topic}/records"
    with open(a.file) as f:
        lines = [line for line in f if line.strip()]
    sent = 0
    while sent < len(lines):
        chunk = lines[sent:sent + rng.randint(1, a.batch)]
        req = urllib.request.Request(url, data="".join(chunk).encode(), method="POST",
                                     headers={"Content-Type": "application/x-ndjson"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                r.read()
        except urllib.error.HTTPError as e:
            sys.exit(f"post to {url} failed: {e.code} {e.read().decode(errors='replace')}")
        except urllib.error.URLError as e:
            sys.exit(f"post to {url} failed: {e.reason}")
        sent += len(chunk)
        print(f"sent {len(chunk)} transactions ({sent} of {len(lines)})", flush=True)
        time.sleep(rng.uniform(0, a.max_pause))


if __name__ == "__main__":
    main()
