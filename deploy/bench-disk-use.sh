#!/usr/bin/env bash
# Disk use per replica after a load (BENCHMARKS.md, "Disk use per replica after a load").
#
# usage: deploy/bench-disk-use.sh [BIN_DIR] [RECORDS]
#   BIN_DIR  where weir-node and weir are (default: target/release)
#   RECORDS  records of 100 bytes to produce (default: 1000000)
#
# Starts three fresh nodes on 127.0.0.1:19201-19203 (HTTP 19211-19213) in a temporary directory,
# creates a topic of 3 partitions x 3 replicas, produces, prints the bench result and the bytes
# each node's data directory holds, then stops the nodes and removes the directory.
set -euo pipefail
B=${1:-target/release}
RECORDS=${2:-1000000}
P=192
# shellcheck source=deploy/three-nodes.sh
source "$(dirname "$0")/three-nodes.sh"
"$B/weir" topic create disk --partitions 3 --replicas 3 >/dev/null
"$B/weir" bench produce --topic disk --records "$RECORDS" --record-size 100 --acks all
# Bytes of the files under $1 whose names match the glob $2.
sum() { find "$1" -name "$2" -type f -printf '%s\n' 2>/dev/null | awk '{s+=$1} END {print s+0}'; }
report() {
  for i in 1 2 3; do
    echo "node$i: $(du -sb "$R/n$i" | cut -f1) bytes" \
      "(WAL $(sum "$R/n$i" '*.log'), tables $(sum "$R/n$i" '*.sst'), snapshots $(sum "$R/n$i" '*.snap'))"
  done
}
report
# Disk use once the load has settled (memtables flushed, compactions run): WEIR_DISK_SETTLE seconds.
if [ "${WEIR_DISK_SETTLE:-0}" -gt 0 ]; then
  sleep "$WEIR_DISK_SETTLE"
  echo "after ${WEIR_DISK_SETTLE} s:"
  report
fi
