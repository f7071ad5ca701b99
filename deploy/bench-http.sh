#!/usr/bin/env bash
# HTTP ingest under Apache Bench on three fresh nodes (BENCHMARKS.md, "HTTP ingest").
#
# usage: deploy/bench-http.sh [BIN_DIR] [REQUESTS] [CONCURRENCY] [RECORDS_PER_BODY]
#   BIN_DIR           where weir-node and weir are (default: target/release)
#   REQUESTS          POSTs to send (default: 20000)
#   CONCURRENCY       requests in flight (default: 8)
#   RECORDS_PER_BODY  JSON lines in each body, about 100 bytes each (default: 1)
#
# Starts three fresh nodes on 127.0.0.1:19501-19503 (HTTP 19511-19513) in a temporary directory,
# creates a topic of 3 partitions x 3 replicas, posts the same body REQUESTS times to node 2's
# /v1/topics/events/records with ab (every request is acknowledged once fsynced on a quorum),
# prints ab's summary, the topic's partitions and the records it then holds, then stops the
# nodes and removes the directory. With etcd installed, the same ab run against three etcd
# members follows (the peer).
set -euo pipefail
B=${1:-target/release}
REQUESTS=${2:-20000}
CONCURRENCY=${3:-8}
PER_BODY=${4:-1}
P=195
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
"$B/weir" topic create events --partitions 3 --replicas 3 >/dev/null
body="$R/body.json"
for i in $(seq 1 "$PER_BODY"); do
  printf '{"user":"u%05d","kind":"login","ts":"2026-12-06T00:00:00Z","pad":"%040d"}\n' "$i" 0
done >"$body"
body_bytes=$(wc -c <"$body")
# Answers name the offsets they stored, so their lengths differ: ab counts those as "Length"
# failures, which are not failures.
ab -q -n "$REQUESTS" -c "$CONCURRENCY" -p "$body" -T application/x-ndjson \
  "http://127.0.0.1:${P}12/v1/topics/events/records" |
  grep -E '^(Complete|Failed|Non-2xx|Requests per|Time per request|  50%|  90%|  99%| 100%)|Exceptions'
"$B/weir" --format csv topic describe events
"$B/weir" --format csv sql "SELECT count(*) AS records_stored FROM events"

# The peer, when etcd is installed (Debian's etcd-server): three members on loopback, default
# settings (every put fsynced on a quorum before it is answered), the same ab run against its
# JSON gateway's /v3/kv/put with a body of the same size, after Weir's nodes are stopped.
if command -v etcd >/dev/null; then
  cleanup
  E=$(mktemp -d -t etcd-bench-XXXXXX)
  EPIDS=()
  stop_etcd() {
    for p in "${EPIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$E"
  }
  trap stop_etcd EXIT
  cluster="e1=http://127.0.0.1:${P}41,e2=http://127.0.0.1:${P}42,e3=http://127.0.0.1:${P}43"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$E/e$i" \
      --listen-peer-urls "http://127.0.0.1:${P}4$i" --initial-advertise-peer-urls "http://127.0.0.1:${P}4$i" \
      --listen-client-urls "http://127.0.0.1:${P}5$i" --advertise-client-urls "http://127.0.0.1:${P}5$i" \
      --initial-cluster "$cluster" --initial-cluster-state new >"$E/e$i.out" 2>&1 &
    EPIDS+=($!)
  done
  for _ in $(seq 1 60); do
    curl -sf -X POST -d '{"key":"a2V5"}' "http://127.0.0.1:${P}52/v3/kv/range" >/dev/null && break
    sleep 1
  done
  value=$(head -c "$body_bytes" /dev/zero | tr '\0' 'x' | base64 -w0)
  printf '{"key":"ZXZlbnRz","value":"%s"}' "$value" >"$E/put.json"
  echo "== etcd $(etcd --version | head -1 | awk '{print $3}'), 3 members: the same ab run on /v3/kv/put"
  ab -q -n "$REQUESTS" -c "$CONCURRENCY" -p "$E/put.json" -T application/json \
    "http://127.0.0.1:${P}52/v3/kv/put" |
    grep -E '^(Complete|Failed|Non-2xx|Requests per|Time per request|  50%|  90%|  99%| 100%)|Exceptions'
fi
