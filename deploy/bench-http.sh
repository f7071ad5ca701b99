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
# prints ab's summary, the topic's partitions and the records it then holds, then stops the nodes and removes the
# directory.
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
# Answers name the offsets they stored, so their lengths differ: ab counts those as "Length"
# failures, which are not failures.
ab -q -n "$REQUESTS" -c "$CONCURRENCY" -p "$body" -T application/x-ndjson \
  "http://127.0.0.1:${P}12/v1/topics/events/records" |
  grep -E '^(Complete|Failed|Non-2xx|Requests per|Time per request|  50%|  90%|  99%| 100%)|Exceptions'
"$B/weir" --format csv topic describe events
"$B/weir" --format csv sql "SELECT count(*) AS records_stored FROM events"
