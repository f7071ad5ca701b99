#!/usr/bin/env python3
"""A spool-directory source (Flume's spooldir): sends every line of each finished file in a
directory to a Weir topic over HTTP, then marks the file done by renaming it to NAME.COMPLETED.

Files whose names start with '.' or end with .COMPLETED are left alone, so a writer can write a
file aside and rename it in. A file is marked only after all its lines were acknowledged; if the
source stops in between, the file is sent again when it restarts (at-least-once, as Flume).

usage: python3 spool.py DIR [--url http://127.0.0.1:7480] [--topic orders] [--every SECONDS]
                        [--once]
  --once   send what is there and stop (default: watch the directory every --every seconds)
Needs nothing but Python 3.
"""
import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

# Lines per request: a request body is at most 2 MiB.
CHUNK = 5000


def post(url, lines):
    body = json.dumps(lines).encode()
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
    except urllib.error.HTTPError as e:
        sys.exit(f"post to {url} failed: {e.code} {e.read().decode(errors='replace')}")
    except urllib.error.URLError as e:
        sys.exit(f"post to {url} failed: {e.reason}")


def sweep(a, url):
    for name in sorted(os.listdir(a.dir)):
        path = os.path.join(a.dir, name)
        if name.startswith(".") or name.endswith(".COMPLETED") or not os.path.isfile(path):
            continue
        with open(path) as f:
            lines = [line.rstrip("\r\n") for line in f if line.strip()]
        for i in range(0, len(lines), CHUNK):
            post(url, lines[i:i + CHUNK])
        os.rename(path, path + ".COMPLETED")
        print(f"{name}: {len(lines)} lines sent", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir")
    p.add_argument("--url", default="http://127.0.0.1:7480", help="a node's HTTP address")
    p.add_argument("--topic", default="orders")
    p.add_argument("--every", type=float, default=2.0)
    p.add_argument("--once", action="store_true")
    a = p.parse_args()
    url = f"{a.url.rstrip('/')}/v1/topics/{a.topic}/records"
    while True:
        sweep(a, url)
        if a.once:
            return
        time.sleep(a.every)


if __name__ == "__main__":
    main()
