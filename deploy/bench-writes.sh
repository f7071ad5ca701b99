#!/usr/bin/env bash
# Table writes (BENCHMARKS.md, "Region store: writes"): on three fresh nodes, a 1,000,000-row
# `INSERT ... SELECT` through `weir sql` (five columns, upserts into a three-replica table), then
# `weir load csv` of the first 1,000,000 rows of TPC-H `lineitem` (sixteen columns). Prints the
# wall time of each, the CPU seconds the loader and each node used for the load, and the bytes of
# Raft log and table data each node's RocksDB flushed (from its LOG).
#
# usage: deploy/bench-writes.sh [BIN_DIR] [LINEITEM_CSV]
#   BIN_DIR       where weir-node and weir are (default: target/release)
#   LINEITEM_CSV  TPC-H lineitem.csv with its header (default: the one deploy/bench-tpch.sh
#                 generates, ~/.cache/weir/tpch-sf1/csv/lineitem.csv); skipped when absent
set -euo pipefail
B=${1:-target/release}
CSV=${2:-${XDG_CACHE_HOME:-$HOME/.cache}/weir/tpch-sf1/csv/lineitem.csv}
HERE="$(cd "$(dirname "$0")" && pwd)"
P=198
# shellcheck source=deploy/three-nodes.sh
source "$HERE/three-nodes.sh"
cpu() { awk '{printf "%.2f", ($14 + $15) / 100}' "/proc/$1/stat"; }
"$B/weir" sql "CREATE TABLE c (id BIGINT, name VARCHAR, email VARCHAR, born DATE, pts BIGINT, PRIMARY KEY (id))" >/dev/null
insert() {
  "$B/weir" sql "INSERT INTO c SELECT value, concat('name ', value), concat('e', value, '@example.com'), \
    DATE '2000-01-01' + CAST(value % 9000 AS INT), value * 7 FROM generate_series($1, $2)" >/dev/null
}
insert 1 200000 # warms the table: its first splits
start=$(date +%s.%N)
insert 200001 1200000
end=$(date +%s.%N)
python3 -c "import sys; s=float(sys.argv[2]) - float(sys.argv[1]); print(f'insert: 1,000,000 rows in {s:.2f} s, {int(1e6 / s):,} rows/s')" "$start" "$end"
if [ -f "$CSV" ]; then
  quiet 120 # the insert's flushes and compactions end before the load is timed
  grep -i "create table lineitem" "$HERE/tpch/schema.sql" | "$B/weir" sql -f /dev/stdin >/dev/null
  head -n 1000001 "$CSV" >"$R/lineitem.csv"
  before=(); for i in 1 2 3; do before[$i]=$(cpu "${PIDS[$i]}"); done
  /usr/bin/time -f "load: 1,000,000 lineitem rows in %e s (loader: %U s user, %S s system)" \
    "$B/weir" load csv "$R/lineitem.csv" --table lineitem --header >/dev/null
  for i in 1 2 3; do
    python3 -c "import sys; print(f'node $i: {float(sys.argv[2]) - float(sys.argv[1]):.1f} CPU s')" "${before[$i]}" "$(cpu "${PIDS[$i]}")"
  done
fi
for i in 1 2 3; do
  python3 - "$R/n$i/db/LOG" "$i" <<'PY'
import json, re, sys
flushed = {}
for line in open(sys.argv[1], errors="replace"):
    m = re.search(r"EVENT_LOG_v1 (\{.*\})", line)
    if m:
        e = json.loads(m.group(1))
        if e.get("event") == "table_file_creation" and e.get("cf_name") in ("raft_log", "data"):
            flushed[e["cf_name"]] = flushed.get(e["cf_name"], 0) + e["file_size"]
print(f"node {sys.argv[2]} files written: " + ", ".join(f"{k} {v >> 20} MiB" for k, v in sorted(flushed.items())))
PY
done
