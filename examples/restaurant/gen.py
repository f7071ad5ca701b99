#!/usr/bin/env python3
"""Events of a restaurant menu app (seed 004), as the app would post them to Weir's HTTP ingest.

Each line of the output is one JSON event: `login`, `create_profile`, `menu_search` (with the menu
searched for), `order` (cuisine, price, whether a coupon was used) or `review` (stars), from a fixed
pool of users, at times weighted towards evenings and weekends. The same --seed gives the same
events, so a test can compute the answers independently from the file.

usage:
  python3 gen.py [--rows N] [--seed S] [--out FILE]   NDJSON events (stdout by default)
  python3 gen.py --ab DIR                             one event of each kind, a request body
                                                      per file, for Apache Bench (ab -p FILE)
Needs nothing but Python 3.
"""
import argparse
import datetime
import json
import os
import random
import sys

# How often each kind of event happens: mostly logins and searches, few new profiles.
KINDS = [("login", 35), ("create_profile", 2), ("menu_search", 30), ("order", 20),
         ("review", 13)]
MENUS = ["Chinese", "Indian", "Italian", "Lebanese", "Mexican", "Thai"]
MENU_WEIGHTS = [20, 15, 25, 5, 25, 10]
# Orders: (cuisine, lowest price, highest price), prices in cents.
PRICES = {"Chinese": (1200, 3500), "Indian": (1400, 3800), "Italian": (1500, 4500),
          "Lebanese": (1300, 3200), "Mexican": (1000, 3000), "Thai": (1300, 3400)}
# More middling reviews than glowing or scathing ones.
STARS = [1, 2, 3, 4, 5]
STAR_WEIGHTS = [8, 14, 38, 25, 15]
USERS = 500
# A week of events from Monday 2026-11-23 (UTC).
WEEK_START = datetime.datetime(2026, 11, 23)
# Weekends count twice, evenings (17:00-22:59) four times.
DAY_WEIGHTS = [1, 1, 1, 1, 1.5, 2, 2]
HOUR_WEIGHTS = [0.2] * 7 + [1] * 10 + [4] * 6 + [1]


def user_id(rng):
    return "user%03d" % rng.randrange(USERS)


def event_time(rng):
    day = rng.choices(range(7), DAY_WEIGHTS)[0]
    hour = rng.choices(range(24), HOUR_WEIGHTS)[0]
    t = WEEK_START + datetime.timedelta(days=day, hours=hour, seconds=rng.randrange(3600))
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def event(rng, kind):
    e = {"event_type": kind, "user_id": user_id(rng), "event_ts": event_time(rng)}
    if kind == "menu_search":
        e["menu"] = rng.choices(MENUS, MENU_WEIGHTS)[0]
    elif kind == "order":
        cuisine = rng.choices(MENUS, MENU_WEIGHTS)[0]
        low, high = PRICES[cuisine]
        e["menu"] = cuisine
        e["price"] = rng.randrange(low, high + 1) / 100
        e["coupon"] = rng.random() < 0.2
    elif kind == "review":
        e["stars"] = rng.choices(STARS, STAR_WEIGHTS)[0]
    return e


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=42000, help="events to write (default 42,000)")
    p.add_argument("--seed", type=int, default=4, help="random seed (default 4)")
    p.add_argument("--out", help="file to write (default stdout)")
    p.add_argument("--ab", metavar="DIR", help="write one request body per kind of event to DIR")
    args = p.parse_args()
    if args.rows < 0:
        p.error("--rows must not be negative")
    rng = random.Random(args.seed)
    if args.ab:
        os.makedirs(args.ab, exist_ok=True)
        for kind, _ in KINDS:
            with open(os.path.join(args.ab, kind + ".json"), "w") as f:
                e = event(rng, kind)
                # Without a time the event takes the moment it is stored (_timestamp).
                del e["event_ts"]
                json.dump(e, f)
        return
    out = open(args.out, "w") if args.out else sys.stdout
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    for _ in range(args.rows):
        out.write(json.dumps(event(rng, rng.choices(kinds, weights)[0]),
                             separators=(",", ":")) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
