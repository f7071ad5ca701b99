#!/usr/bin/env python3
"""A Czech bank's accounts, clients and transactions, shaped like the Berka data set (seed 001).

Writes, into DIR, the dimension tables as CSV files with their foreign keys respected:
  district.csv  district_id, name, region, inhabitants
  account.csv   account_id, district_id, frequency, opened
  client.csv    client_id, birth_number, district_id   (Berka's birth number: YYMMDD, with 50
                                                        added to the month for women)
  disp.csv      disp_id, client_id, account_id, type    (each account one OWNER, some a DISPONENT)
and the transactions, one JSON object per line, for the topic:
  trans.ndjson  trans_id, account_id, date, type (PRIJEM credit / VYDAJ debit), operation, amount,
                balance, k_symbol

usage: python3 gen.py DIR [--accounts N] [--trans N] [--seed S]
The same --seed gives the same files. Needs nothing but Python 3.
"""
import argparse
import datetime
import json
import os
import random

REGIONS = ["Prague", "central Bohemia", "south Bohemia", "west Bohemia", "north Bohemia",
           "east Bohemia", "south Moravia", "north Moravia"]
OPERATIONS = {"PRIJEM": ["VKLAD", "PREVOD Z UCTU"], "VYDAJ": ["VYBER", "PREVOD NA UCET",
                                                             "VYBER KARTOU"]}
K_SYMBOLS = ["", "POJISTNE", "SLUZBY", "UROK", "SIPO", "DUCHOD", "UVER"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir")
    p.add_argument("--accounts", type=int, default=4500, help="accounts (default 4,500)")
    p.add_argument("--trans", type=int, default=100000, help="transactions (default 100,000)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    a = p.parse_args()
    if a.accounts < 1 or a.trans < 0:
        p.error("--accounts must be at least 1 and --trans not negative")
    rng = random.Random(a.seed)
    os.makedirs(a.dir, exist_ok=True)
    path = lambda name: os.path.join(a.dir, name)

    districts = range(1, 78)
    with open(path("district.csv"), "w") as f:
        f.write("district_id,name,region,inhabitants\n")
        for d in districts:
            region = REGIONS[0] if d == 1 else REGIONS[1 + (d - 2) % 7]
            f.write(f"{d},district {d},{region},{rng.randint(40000, 1200000)}\n")

    accounts = range(1, a.accounts + 1)
    with open(path("account.csv"), "w") as f:
        f.write("account_id,district_id,frequency,opened\n")
        for acc in accounts:
            opened = datetime.date(1993, 1, 1) + datetime.timedelta(days=rng.randrange(1800))
            freq = rng.choices(["POPLATEK MESICNE", "POPLATEK TYDNE", "POPLATEK PO OBRATU"],
                               [90, 6, 4])[0]
            f.write(f"{acc},{rng.choice(districts)},{freq},{opened}\n")

    client_id = 0
    disp_id = 0
    with open(path("client.csv"), "w") as clients, open(path("disp.csv"), "w") as disps:
        clients.write("client_id,birth_number,district_id\n")
        disps.write("disp_id,client_id,account_id,type\n")
        for acc in accounts:
            for kind in ["OWNER"] + (["DISPONENT"] if rng.random() < 0.2 else []):
                client_id += 1
                disp_id += 1
                year, month, day = rng.randint(1911, 1987), rng.randint(1, 12), rng.randint(1, 28)
                if rng.random() < 0.5:
                    month += 50  # a woman, as Berka writes it
                clients.write(f"{client_id},{year % 100:02d}{month:02d}{day:02d},"
                              f"{rng.choice(districts)}\n")
                disps.write(f"{disp_id},{client_id},{acc},{kind}\n")

    balances = {}
    with open(path("trans.ndjson"), "w") as f:
        for t in range(1, a.trans + 1):
            acc = rng.choice(accounts)
            date = datetime.date(1993, 1, 1) + datetime.timedelta(days=rng.randrange(2191))
            kind = rng.choices(["PRIJEM", "VYDAJ"], [40, 60])[0]
            amount = round(rng.uniform(10, 60000) if kind == "PRIJEM" else rng.uniform(10, 20000),
                           1)
            balance = balances.get(acc, 1000.0) + (amount if kind == "PRIJEM" else -amount)
            balances[acc] = balance
            f.write(json.dumps({
                "trans_id": t, "account_id": acc, "date": date.isoformat(), "type": kind,
                "operation": rng.choice(OPERATIONS[kind]), "amount": amount,
                "balance": round(balance, 1), "k_symbol": rng.choice(K_SYMBOLS) or None,
            }, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
