#!/usr/bin/env python3
"""Closed-loop put/get load generator for etcd v3 (peer benchmark).

No third-party packages are needed: by default requests go over a minimal
built-in HTTP/2 + gRPC framing (see RawConn). `--transport grpc` uses the
official gRPC library instead, as a cross-check; that needs

    python3 -m venv ~/.cache/weir/etcd-venv
    ~/.cache/weir/etcd-venv/bin/pip install grpcio

and then running this script with ~/.cache/weir/etcd-venv/bin/python.

Usage:

    tests/bench/etcd_cluster.sh start
    python3 tests/bench/etcd_kv.py \
        --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
        --op put --ops 30000 --value-size 256 --clients 16
    python3 tests/bench/etcd_kv.py \
        --endpoints 127.0.0.1:23791,127.0.0.1:23792,127.0.0.1:23793 \
        --op get --ops 60000 --value-size 256 --clients 16
    tests/bench/etcd_cluster.sh stop

Prints one summary line on stdout, e.g.
    put: 30000 ops in 8.5 s = 3549 ops/s, p50 4.0 ms, p99 13.4 ms, p99.9 24.6 ms
and CPU accounting (client processes, etcd processes, whole machine) on
stderr, so it is visible whether the client or etcd was the bottleneck.

Model (mirrors etcd's `tools/benchmark --clients 16 --conns 16`, which Debian
does not package):
  * --clients synchronous clients; each sends one request and waits for the
    response before sending the next (closed loop, no pipelining).
  * every client has its own gRPC channel / TCP connection, and clients are
    spread round-robin over the endpoints, so a 3-member cluster sees
    followers forwarding puts to the leader and serving read-index gets
    just like a real multi-endpoint client deployment.
  * puts write --value-size random bytes to a key drawn uniformly from
    --keys distinct keys.
  * gets are linearizable (the etcd default, serializable=false) single-key
    Range requests against keys that exist: before timing, the key space is
    filled (untimed) if it is not already fully populated.
  * clients are threads, optionally spread over --procs OS processes. The
    client shares the machine's cores with etcd, so what matters is its CPU
    cost per request, not only that it is not pegged: the default transport
    costs ~60-80 us of CPU per request, the grpcio library ~200-230 us
    (enough to cut etcd's measured throughput by 40-50% on 2 cores). One
    process keeps 16 clients going at well under one core (the summary on
    stderr reports the busiest client process); more processes give the
    same numbers on 2 cores, so the default is 1.
    Each process takes a share of the ops proportional to its clients;
    inside a process clients pull ops from a shared counter so nobody idles
    while others still have work.

Wire format: requests and responses are hand-encoded protobuf (only a few
fields of etcdserverpb.PutRequest / RangeRequest / RangeResponse are needed),
sent as gRPC messages over HTTP/2 by RawConn. This avoids both the protobuf
version pinning of the PyPI etcd clients and most of the per-call CPU of the
Python gRPC runtime, so the client takes as little CPU as possible away from
the three etcd members it shares the cores with.
"""

import argparse
import array
import itertools
import multiprocessing as mp
import os
import random
import sys
import threading
import time

PUT_METHOD = "/etcdserverpb.KV/Put"
RANGE_METHOD = "/etcdserverpb.KV/Range"
KEY_FMT = "%08d"


def now_ns():
    # CLOCK_MONOTONIC is shared by all processes on Linux, so start/end
    # stamps from different worker processes can be compared directly.
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


# ---------------------------------------------------------------------------
# Minimal protobuf wire encoding for the etcd KV messages used here.
#   PutRequest   { bytes key = 1; bytes value = 2; ... }
#   RangeRequest { bytes key = 1; bytes range_end = 2; ... bool serializable = 7;
#                  ... bool count_only = 9; }
#   RangeResponse{ ResponseHeader header = 1; repeated KeyValue kvs = 2;
#                  bool more = 3; int64 count = 4; }
# ---------------------------------------------------------------------------

def _varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _len_field(num, data):
    return _varint((num << 3) | 2) + _varint(len(data)) + data


def _read_varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        i += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, i
        shift += 7


def _range_response_fields(buf):
    """Return (has_kvs, count) from a serialized RangeResponse."""
    i, n = 0, len(buf)
    has_kvs, count = False, 0
    while i < n:
        tag, i = _read_varint(buf, i)
        field, wt = tag >> 3, tag & 7
        if wt == 0:
            v, i = _read_varint(buf, i)
            if field == 4:
                count = v
        elif wt == 2:
            ln, i = _read_varint(buf, i)
            if field == 2:
                has_kvs = True
            i += ln
        elif wt == 1:
            i += 8
        elif wt == 5:
            i += 4
        else:
            raise ValueError("unexpected wire type %d" % wt)
    return has_kvs, count


# ---------------------------------------------------------------------------
# Transports. Both expose call(method, request_bytes) -> response_bytes and
# raise on any gRPC error.
# ---------------------------------------------------------------------------

class RawConn:
    """One HTTP/2 connection carrying unary gRPC calls, one at a time.

    Just enough of RFC 7540 for a closed-loop client talking to etcd's
    (grpc-go) server over cleartext h2c with prior knowledge:
      * request headers are HPACK literals that never touch the dynamic
        table, so they can be precomputed per method;
      * response headers are never decoded (we need nothing from them);
        a call succeeded iff a DATA frame arrived before END_STREAM: grpc-go
        answers every failed unary call with a trailers-only response
        (a single HEADERS frame carrying grpc-status), never with data;
      * our receive windows are raised to the maximum up front, so the
        server never waits for WINDOW_UPDATEs from us; send-side flow
        control is not tracked because at most one ~300-byte request per
        connection is in flight and the server keeps replenishing;
      * SETTINGS and PING from the server are acknowledged (grpc-go sends
        BDP-estimation pings), GOAWAY / RST_STREAM are errors.
    """

    PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    MAX_WINDOW = 0x7FFFFFFF

    def __init__(self, endpoint, timeout):
        import socket
        import struct

        self._pack_u32 = struct.Struct(">I").pack
        host, port = endpoint.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        # Requests are tiny and latency-bound: never let Nagle hold them.
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rfile = self.sock.makefile("rb", buffering=1 << 16)
        self.stream_id = 1
        self.authority = endpoint.encode()
        self.headers = {}
        # SETTINGS: ENABLE_PUSH=0, INITIAL_WINDOW_SIZE=max; then raise the
        # connection-level window (starts at 65535) to the max as well.
        settings = (struct.pack(">HI", 2, 0)
                    + struct.pack(">HI", 4, self.MAX_WINDOW))
        self.sock.sendall(
            self.PREFACE
            + self._frame(4, 0, 0, settings)
            + self._frame(8, 0, 0, self._pack_u32(self.MAX_WINDOW - 65535)))

    def _frame(self, ftype, flags, stream_id, payload):
        return (self._pack_u32(len(payload))[1:] + bytes((ftype, flags))
                + self._pack_u32(stream_id) + payload)

    def _header_block(self, method):
        blk = self.headers.get(method)
        if blk is None:
            def lit(b):  # HPACK string literal, no Huffman (short strings)
                assert len(b) < 127
                return bytes((len(b),)) + b
            blk = (b"\x83"                      # :method POST (static 3)
                   b"\x86"                      # :scheme http (static 6)
                   + b"\x04" + lit(method.encode())    # :path, name idx 4
                   + b"\x01" + lit(self.authority)     # :authority, idx 1
                   + b"\x0f\x10" + lit(b"application/grpc")  # content-type 31
                   + b"\x00" + lit(b"te") + lit(b"trailers"))
            self.headers[method] = blk
        return blk

    def call(self, method, msg):
        sid = self.stream_id
        self.stream_id += 2
        body = b"\x00" + self._pack_u32(len(msg)) + msg  # gRPC length prefix
        self.sock.sendall(self._frame(1, 0x4, sid, self._header_block(method))
                          + self._frame(0, 0x1, sid, body))
        read = self.rfile.read
        data = b""
        while True:
            h = read(9)
            if len(h) < 9:
                raise ConnectionError("connection closed by server")
            ln = (h[0] << 16) | (h[1] << 8) | h[2]
            ftype, flags = h[3], h[4]
            fsid = int.from_bytes(h[5:9], "big") & 0x7FFFFFFF
            payload = read(ln) if ln else b""
            if fsid == sid:
                if ftype == 0:
                    data += payload
                elif ftype == 3:
                    raise ConnectionError("RST_STREAM on stream %d" % sid)
                if flags & 0x1 and ftype in (0, 1):  # END_STREAM
                    if len(data) < 5:
                        raise RuntimeError("gRPC error (trailers-only reply)")
                    n = int.from_bytes(data[1:5], "big")
                    if data[0] != 0 or len(data) != 5 + n:
                        raise RuntimeError("unexpected gRPC message framing")
                    return data[5:]
            elif ftype == 4 and not flags & 0x1:   # SETTINGS -> ACK
                self.sock.sendall(self._frame(4, 0x1, 0, b""))
            elif ftype == 6 and not flags & 0x1:   # PING -> PING ACK
                self.sock.sendall(self._frame(6, 0x1, 0, payload))
            elif ftype == 7:                       # GOAWAY
                raise ConnectionError("GOAWAY from server: %r" % payload[8:])
            # WINDOW_UPDATE, CONTINUATION of already-finished streams, and
            # anything else connection-level: nothing to do.

    def close(self):
        self.rfile.close()
        self.sock.close()


class GrpcConn:
    """Same interface on top of the grpcio library (pip install grpcio)."""

    def __init__(self, endpoint, timeout):
        import grpc

        # A local subchannel pool gives every client its own TCP connection
        # (gRPC otherwise shares one connection between channels to the
        # same target), matching etcd benchmark's --conns == --clients.
        self.channel = grpc.insecure_channel(
            endpoint, options=[("grpc.use_local_subchannel_pool", 1)])
        self.timeout = timeout
        # No (de)serializers: requests are pre-encoded, responses raw bytes.
        self.stubs = {m: self.channel.unary_unary(m)
                      for m in (PUT_METHOD, RANGE_METHOD)}

    def call(self, method, msg):
        return self.stubs[method](msg, timeout=self.timeout)

    def close(self):
        self.channel.close()


TRANSPORTS = {"raw": RawConn, "grpc": GrpcConn}


# ---------------------------------------------------------------------------
# Worker process
# ---------------------------------------------------------------------------

def _cpu_ns():
    t = os.times()
    return int((t.user + t.system) * 1e9)


def worker(spec, barrier, results):
    """Run one closed-loop client thread per entry of spec["endpoints"]."""
    prefix = spec["prefix"]
    op = spec["op"]
    keys = spec["keys"]
    total = spec["ops"]
    timeout = spec["timeout"]
    seq_keys = spec["seq_keys"]  # preload: explicit key per op, else random
    conn_cls = TRANSPORTS[spec["transport"]]
    endpoints = spec["endpoints"]

    conns = [conn_cls(ep, timeout) for ep in endpoints]
    value_field = _len_field(2, os.urandom(spec["value_size"]))
    key_fields = [_len_field(1, prefix + (KEY_FMT % k).encode())
                  for k in range(keys)]
    method = PUT_METHOD if op == "put" else RANGE_METHOD

    # One untimed request per client so connection setup and first-call
    # costs are not part of the measurement.
    for c in conns:
        c.call(RANGE_METHOD, key_fields[0])

    counter = itertools.count()  # next() on it is atomic under the GIL
    lat = [array.array("q") for _ in conns]
    errors = [0] * len(conns)
    missing = [0] * len(conns)

    def run(ci):
        out = lat[ci]
        rnd = random.Random(spec["seed"] * 1000 + ci)
        nxt = counter.__next__
        while True:
            n = nxt()
            if n >= total:
                return
            k = seq_keys[n] if seq_keys is not None else rnd.randrange(keys)
            # A RangeRequest with only `key` set is a linearizable
            # (serializable=false) single-key get.
            req = key_fields[k] + value_field if op == "put" else key_fields[k]
            t0 = now_ns()
            try:
                resp = conns[ci].call(method, req)
            except Exception as e:  # noqa: BLE001 - count, reconnect, go on
                errors[ci] += 1
                if errors[ci] <= 3:
                    print("%s error: %r" % (op, e), file=sys.stderr)
                conns[ci].close()
                conns[ci] = conn_cls(endpoints[ci], timeout)
                continue
            out.append(now_ns() - t0)
            if op == "get" and not _range_response_fields(resp)[0]:
                missing[ci] += 1

    threads = [threading.Thread(target=run, args=(ci,), daemon=True)
               for ci in range(len(conns))]
    barrier.wait()
    cpu0 = _cpu_ns()
    start = now_ns()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = now_ns()
    cpu1 = _cpu_ns()
    for c in conns:
        c.close()
    merged = array.array("q")
    for a in lat:
        merged.extend(a)
    results.put({
        "lat": merged.tobytes(),
        "start": start,
        "end": end,
        "cpu_ns": cpu1 - cpu0,
        "errors": sum(errors),
        "missing": sum(missing),
    })


# ---------------------------------------------------------------------------
# CPU accounting of etcd and the whole machine (read-only /proc sampling)
# ---------------------------------------------------------------------------

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _etcd_cpu_ticks():
    # Sums every process named "etcd" (the benchmark cluster is assumed to
    # be the only one running).
    total = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % pid) as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.index("(") + 1:s.rindex(")")]
        if comm != "etcd":
            continue
        fields = s[s.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total


def _machine_ticks():
    with open("/proc/stat") as f:
        parts = f.readline().split()[1:]
    vals = [int(x) for x in parts]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals[:8]), idle


# ---------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------

def run_phase(args, op, total_ops, prefix, seq_keys=None):
    """Run one closed-loop phase across processes; return merged stats."""
    nproc = max(1, min(args.procs, args.clients))
    # Client i talks to endpoint i % len(endpoints); clients are then dealt
    # to processes in contiguous groups.
    client_eps = [args.endpoints[i % len(args.endpoints)]
                  for i in range(args.clients)]
    per_proc = [args.clients // nproc + (1 if p < args.clients % nproc else 0)
                for p in range(nproc)]
    ctx = mp.get_context("spawn")  # fresh interpreters: gRPC and fork don't mix
    barrier = ctx.Barrier(nproc + 1)
    results = ctx.Queue()
    procs = []
    c0 = 0
    o0 = 0
    for p in range(nproc):
        eps = client_eps[c0:c0 + per_proc[p]]
        c0 += per_proc[p]
        # Share of ops proportional to the number of clients in the process.
        ops = (total_ops * c0) // args.clients - o0
        spec = {
            "op": op, "endpoints": eps, "ops": ops, "keys": args.keys,
            "value_size": args.value_size, "prefix": prefix,
            "timeout": args.timeout, "seed": args.seed * 100 + p,
            "transport": args.transport,
            "seq_keys": seq_keys[o0:o0 + ops] if seq_keys is not None else None,
        }
        o0 += ops
        pr = ctx.Process(target=worker, args=(spec, barrier, results),
                         daemon=True)
        pr.start()
        procs.append(pr)

    barrier.wait()
    etcd0 = _etcd_cpu_ticks()
    m_total0, m_idle0 = _machine_ticks()
    outs = [results.get() for _ in procs]
    etcd1 = _etcd_cpu_ticks()
    m_total1, m_idle1 = _machine_ticks()
    for pr in procs:
        pr.join()
        if pr.exitcode != 0:
            sys.exit("worker exited with %s" % pr.exitcode)

    lat = array.array("q")
    for o in outs:
        lat.frombytes(o["lat"])
    start = min(o["start"] for o in outs)
    end = max(o["end"] for o in outs)
    wall = (end - start) / 1e9
    client_cpu = sum(o["cpu_ns"] for o in outs) / 1e9
    per_proc_cpu = [o["cpu_ns"] / 1e9 / wall for o in outs]
    m_total = m_total1 - m_total0
    busy = (m_total - (m_idle1 - m_idle0)) / m_total if m_total else 0.0
    return {
        "lat": lat, "wall": wall,
        "errors": sum(o["errors"] for o in outs),
        "missing": sum(o["missing"] for o in outs),
        "client_cores": client_cpu / wall,
        "proc_cores_max": max(per_proc_cpu),
        "nproc": nproc,
        "etcd_cores": (etcd1 - etcd0) / _CLK_TCK / wall,
        "machine_busy": busy,
        "ncpu": os.cpu_count(),
    }


def count_keys(args, prefix):
    """How many of the keys PREFIX00000000 .. PREFIX%08d(keys-1) exist."""
    conn = TRANSPORTS[args.transport](args.endpoints[0], args.timeout)
    try:
        # Fixed-width decimal keys sort numerically, so [key 0, key N) is
        # exactly the benchmark's key space.
        req = (_len_field(1, prefix + (KEY_FMT % 0).encode())
               + _len_field(2, prefix + (KEY_FMT % args.keys).encode())
               + _varint((9 << 3) | 0) + _varint(1))  # count_only = true
        return _range_response_fields(conn.call(RANGE_METHOD, req))[1]
    finally:
        conn.close()


def pct(sorted_lat, q):
    # Nearest-rank percentile, in ms.
    if not sorted_lat:
        return float("nan")
    idx = min(len(sorted_lat) - 1, max(0, int(q * len(sorted_lat) + 0.5) - 1))
    return sorted_lat[idx] / 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--endpoints", required=True,
                    help="comma-separated host:port list (gRPC client URLs)")
    ap.add_argument("--op", choices=["put", "get"], required=True)
    ap.add_argument("--ops", type=int, required=True,
                    help="number of timed requests")
    ap.add_argument("--value-size", type=int, default=256)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--keys", type=int, default=100000,
                    help="distinct keys the requests are spread over")
    ap.add_argument("--procs", type=int, default=1,
                    help="client OS processes the clients are spread over")
    ap.add_argument("--transport", choices=sorted(TRANSPORTS), default="raw",
                    help="raw: built-in HTTP/2 framing (no dependencies); "
                         "grpc: the grpcio library (cross-check)")
    ap.add_argument("--prefix", default="weirbench/",
                    help="key prefix (keys are PREFIX%%08d)")
    ap.add_argument("--timeout", type=float, default=10.0,
                    help="per-request timeout in seconds")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    args.endpoints = [e.strip().removeprefix("http://")
                      for e in args.endpoints.split(",") if e.strip()]
    prefix = args.prefix.encode()

    if args.op == "get":
        have = count_keys(args, prefix)
        if have < args.keys:
            # Fill the whole key space (untimed) so every get hits a key.
            t0 = time.monotonic()
            st = run_phase(args, "put", args.keys, prefix,
                           seq_keys=list(range(args.keys)))
            if st["errors"]:
                sys.exit("preload failed: %d errors" % st["errors"])
            print("preload: wrote %d keys (%d existed) in %.1f s"
                  % (args.keys, have, time.monotonic() - t0), file=sys.stderr)

    st = run_phase(args, args.op, args.ops, prefix)
    lat = sorted(st["lat"])
    n = len(lat)
    print("%s: %d ops in %.1f s = %.0f ops/s, p50 %.1f ms, p99 %.1f ms, "
          "p99.9 %.1f ms" % (args.op, n, st["wall"], n / st["wall"],
                             pct(lat, 0.50), pct(lat, 0.99), pct(lat, 0.999)))
    print("  %d clients over %d endpoints in %d procs, transport %s; "
          "errors %d%s"
          % (args.clients, len(args.endpoints), st["nproc"], args.transport,
             st["errors"],
             ", gets without a value %d" % st["missing"]
             if args.op == "get" else ""), file=sys.stderr)
    # "other" is whatever else ran meanwhile (builds, editors, ...): if it
    # is not near 0 the run shared the CPUs and its numbers are suspect.
    other = max(0.0, st["machine_busy"] * st["ncpu"] - st["client_cores"]
                - st["etcd_cores"])
    print("  cpu (cores, of %d): client %.2f (busiest proc %.2f), etcd %.2f, "
          "other %.2f; machine %.0f%% busy"
          % (st["ncpu"], st["client_cores"], st["proc_cores_max"],
             st["etcd_cores"], other, 100 * st["machine_busy"]),
          file=sys.stderr)
    if st["errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
