#!/usr/bin/env python3
"""Input of the loyalty pipeline (seed 000), the same shape as the seed's.

  python3 gen.py customers FILE [--rows N] [--seed S]
      customer.csv: customer_id, name, date_of_birth, email, phone, messy as people type them
      (names in any case with stray blanks, dates of birth in two formats or none, emails with
      blanks and capitals, phones in several formats or missing)
  python3 gen.py orders DIR [--files F] [--lines L] [--customers N] [--seed S] [--day YYYY-MM-DD]
      F order log files in DIR, as the shop's order generator writes them every few seconds:
      one order per line, `customer_id,item,price,timestamp`; about one in ten has no price (0.0),
      and now and then a line is cut short (the source reports it, the job sets it aside)

The same arguments give the same files. Needs nothing but Python 3.
"""
import argparse
import datetime
import os
import random

FIRST = ["anna", "BOB", "Chai", "dao", "ELLA", "fah", "Gus", "hana", "IVAN", "jun"]
LAST = ["smith", "NGUYEN", "Tanaka", "kim", "Lopez", "OKAFOR", "patel", "Rossi"]
ITEMS = [" Latte", "MOCHA ", "green Tea", "espresso", "Thai tea ", "cocoa"]


def customers(a):
    rng = random.Random(a.seed)
    os.makedirs(os.path.dirname(os.path.abspath(a.path)), exist_ok=True)
    with open(a.path, "w") as f:
        f.write("customer_id,name,date_of_birth,email,phone\n")
        for i in range(1, a.rows + 1):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            name = rng.choice([f"  {first} {last} ", f"{first}  {last}", f"{first} {last}"])
            y, m, d = rng.randint(1950, 2004), rng.randint(1, 12), rng.randint(1, 28)
            dob = rng.choice([f"{y:04d}-{m:02d}-{d:02d}", f"{d:02d}/{m:02d}/{y:04d}",
                              f"{y:04d}-{m:02d}-{d:02d}", "unknown", ""])
            email = "" if rng.random() < 0.05 else f" {first}.{last}{i}@Example.COM"
            digits = f"{rng.randrange(10**7):07d}"
            phone = rng.choice([f"(555) {digits[:3]}-{digits[3:]}", f"555.{digits[:3]}.{digits[3:]}",
                                f"+1 555 {digits}", ""])
            f.write(f'{i},"{name}",{dob},"{email}","{phone}"\n')


def orders(a):
    rng = random.Random(a.seed)
    os.makedirs(a.path, exist_ok=True)
    day = datetime.datetime.fromisoformat(a.day)
    for n in range(1, a.files + 1):
        lines = []
        for _ in range(a.lines):
            customer = rng.randint(1, a.customers)
            price = 0.0 if rng.random() < 0.1 else rng.randrange(100, 20000) / 100
            ts = day + datetime.timedelta(seconds=rng.randrange(86400))
            line = f"{customer},{rng.choice(ITEMS)},{price},{ts:%Y-%m-%d %H:%M:%S}"
            if rng.random() < 0.005:
                line = ",".join(line.split(",")[: rng.randint(1, 2)])  # a line cut short
            lines.append(line + "\n")
        # Written aside and renamed, as a log roller does: the spool source never sees half a file.
        tmp = os.path.join(a.path, f".orders-{n:05d}.log.tmp")
        with open(tmp, "w") as f:
            f.writelines(lines)
        os.rename(tmp, os.path.join(a.path, f"orders-{n:05d}.log"))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("customers", help="write customer.csv")
    c.add_argument("path")
    c.add_argument("--rows", type=int, default=1000)
    c.add_argument("--seed", type=int, default=0)
    o = sub.add_parser("orders", help="write order log files into a spool directory")
    o.add_argument("path")
    o.add_argument("--files", type=int, default=5)
    o.add_argument("--lines", type=int, default=1000)
    o.add_argument("--customers", type=int, default=1000, help="customer ids to draw from")
    o.add_argument("--day", default="2024-06-01", help="day of the orders")
    o.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    if a.what == "customers":
        customers(a)
    else:
        orders(a)


if __name__ == "__main__":
    main()
