#!/usr/bin/env python3
"""Peer benchmark: NATS JetStream, 3 servers on loopback, a stream with 3 replicas on file storage.

Publishes N messages of B bytes asynchronously with acks (a window of in-flight publishes), and
prints throughput and ack latency percentiles, the same figures `weir bench produce` prints.

    pip install nats-py; apt-get install nats-server
    python3 tests/bench/nats_jetstream.py --messages 200000 --size 100 --window 1024
"""
import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_cluster(tmp):
    client_ports = [free_port() for _ in range(3)]
    route_ports = [free_port() for _ in range(3)]
    procs = []
    for i in range(3):
        routes = ",".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(route_ports) if j != i)
        conf = os.path.join(tmp, f"n{i}.conf")
        with open(conf, "w") as f:
            f.write(f"""
server_name: n{i}
listen: 127.0.0.1:{client_ports[i]}
jetstream {{ store_dir: "{tmp}/js{i}" }}
cluster {{ name: bench, listen: 127.0.0.1:{route_ports[i]}, routes: [{routes}] }}
""")
        procs.append(subprocess.Popen(["nats-server", "-c", conf],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    return procs, client_ports


async def run(args):
    import nats
    tmp = tempfile.mkdtemp(prefix="nats-bench-")
    procs, ports = start_cluster(tmp)
    try:
        nc = None
        deadline = time.time() + 30
        while True:
            try:
                nc = await nats.connect(servers=[f"nats://127.0.0.1:{p}" for p in ports])
                js = nc.jetstream()
                await js.add_stream(name="bench", subjects=["bench"], num_replicas=3, storage="file")
                break
            except Exception as e:  # the cluster needs a moment to elect its meta leader
                if time.time() > deadline:
                    raise
                if nc is not None:
                    await nc.close()
                    nc = None
                await asyncio.sleep(0.5)
        payload = b"x" * args.size
        sem = asyncio.Semaphore(args.window)
        lat = []

        async def one():
            t0 = time.perf_counter()
            await js.publish("bench", payload)
            lat.append(time.perf_counter() - t0)
            sem.release()

        tasks = []
        start = time.perf_counter()
        for _ in range(args.messages):
            await sem.acquire()
            tasks.append(asyncio.ensure_future(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
        lat.sort()
        pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
        print(f"nats-jetstream records={args.messages} size={args.size} window={args.window}")
        print(f"  {args.messages / elapsed:,.0f} msgs/s  {args.messages * args.size / elapsed / 1e6:.1f} MB/s")
        print(f"  latency ms p50={pct(0.5):.2f} p99={pct(0.99):.2f} p999={pct(0.999):.2f} max={lat[-1]*1000:.2f}")
        await nc.close()
    finally:
        for p in procs:
            p.kill()
            p.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=200000)
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--window", type=int, default=1024)
    asyncio.run(run(ap.parse_args()))
