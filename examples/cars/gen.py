#!/usr/bin/env python3
"""Car sales of a dealer network (seed 003), one JSON transaction per line, as its sales app
posts them.

Fields as the seed's generator made them — transaction_id, buyer_id, buyer_name, car_brand,
car_model, year, color, country, branch, transaction_price — plus ts, the time of the sale. Sales
come in bursts: each minute has between 5 and 40 of them. The same --seed gives the same sales.

usage: python3 gen.py [--minutes M] [--start ISO] [--seed S] [--out FILE]
Needs nothing but Python 3.
"""
import argparse
import datetime
import json
import random
import sys
import uuid

BUYERS = ["John Doe", "Jane Smith", "Alice Johnson", "Michael Brown", "Emily Davis"]
MODELS = {"Toyota": ["Camry", "Corolla"], "Ford": ["F-150", "Mustang"],
          "BMW": ["X5", "330i"], "Tesla": ["Model 3", "Model Y"]}
COLORS = ["Red", "Blue", "Black", "White"]
BRANCHES = {"USA": ["New York", "Chicago"], "Canada": ["Toronto"], "Germany": ["Berlin", "Munich"]}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=int, default=60)
    p.add_argument("--start", default="2026-11-30T09:00:00", help="UTC (default 2026-11-30T09:00:00)")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", help="file to write (default stdout)")
    a = p.parse_args()
    if a.minutes < 1:
        p.error("--minutes must be at least 1")
    rng = random.Random(a.seed)
    start = datetime.datetime.fromisoformat(a.start)
    out = open(a.out, "w") if a.out else sys.stdout
    for minute in range(a.minutes):
        times = sorted(rng.randrange(60) for _ in range(rng.randint(5, 40)))
        for second in times:
            brand = rng.choice(sorted(MODELS))
            country = rng.choice(sorted(BRANCHES))
            ts = start + datetime.timedelta(minutes=minute, seconds=second)
            out.write(json.dumps({
                "transaction_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "buyer_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                "buyer_name": rng.choice(BUYERS),
                "car_brand": brand,
                "car_model": rng.choice(MODELS[brand]),
                "year": rng.randint(2015, 2025),
                "color": rng.choice(COLORS),
                "country": country,
                "branch": rng.choice(BRANCHES[country]),
                "transaction_price": round(rng.uniform(20000, 80000), 2),
                "ts": ts.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }, separators=(",", ":")) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
