#!/usr/bin/env python3
"""Status events of servers in several data centers (seed 002), one JSON object per line.

Every server reports every 15 seconds (at its own phase): server_id, datacenter, rack, status
(ok, warning, critical, down), cpu_pct, mem_pct, disk_pct and ts. A server's status drifts: it
mostly stays where it is, degrades now and then and recovers; its load follows its status. Lines
come in time order. The same --seed gives the same events.

usage: python3 gen.py [--servers-per-rack N] [--minutes M] [--start ISO] [--seed S] [--out FILE]
Needs nothing but Python 3.
"""
import argparse
import datetime
import json
import random
import sys

DATACENTERS = ["ams1", "fra1", "nyc1"]
RACKS_PER_DC = 2
STATUSES = ["ok", "warning", "critical", "down"]
# Chance of moving from a status (row) to each status (column) at a report.
DRIFT = {
    "ok": [0.95, 0.04, 0.008, 0.002],
    "warning": [0.30, 0.60, 0.09, 0.01],
    "critical": [0.10, 0.30, 0.55, 0.05],
    "down": [0.40, 0.0, 0.0, 0.60],
}
# cpu_pct range per status.
CPU = {"ok": (5, 60), "warning": (60, 85), "critical": (85, 100), "down": (0, 0)}
PERIOD = 15


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--servers-per-rack", type=int, default=10)
    p.add_argument("--minutes", type=int, default=60, help="minutes of reports (default 60)")
    p.add_argument("--start", default="2026-11-30T10:00:00",
                   help="time of the first report, UTC (default 2026-11-30T10:00:00)")
    p.add_argument("--seed", type=int, default=2)
    p.add_argument("--out", help="file to write (default stdout)")
    a = p.parse_args()
    if a.servers_per_rack < 1 or a.minutes < 1:
        p.error("--servers-per-rack and --minutes must be at least 1")
    start = datetime.datetime.fromisoformat(a.start)
    rng = random.Random(a.seed)
    servers = []
    for dc in DATACENTERS:
        for r in range(1, RACKS_PER_DC + 1):
            for s in range(1, a.servers_per_rack + 1):
                servers.append({"server_id": f"{dc}-r{r}-s{s:02d}", "datacenter": dc,
                                "rack": f"{dc}-r{r}", "status": "ok",
                                "phase": rng.randrange(PERIOD), "disk": rng.uniform(20, 70)})
    out = open(a.out, "w") if a.out else sys.stdout
    for tick in range(a.minutes * 60 // PERIOD):
        reports = []
        for s in servers:
            s["status"] = rng.choices(STATUSES, DRIFT[s["status"]])[0]
            s["disk"] = min(100.0, s["disk"] + rng.uniform(0, 0.05))
            low, high = CPU[s["status"]]
            down = s["status"] == "down"
            at = start + datetime.timedelta(seconds=tick * PERIOD + s["phase"])
            reports.append((at, {
                "server_id": s["server_id"], "datacenter": s["datacenter"], "rack": s["rack"],
                "status": s["status"], "cpu_pct": round(rng.uniform(low, high), 1),
                "mem_pct": 0.0 if down else round(rng.uniform(20, 95), 1),
                "disk_pct": round(s["disk"], 1),
                "ts": at.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }))
        for _, r in sorted(reports, key=lambda x: (x[0], x[1]["server_id"])):
            out.write(json.dumps(r, separators=(",", ":")) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
