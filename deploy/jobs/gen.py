"""Generates the seed-001 (berka) benchmark input: dimension tables as CSV and transactions as
JSON lines, the same files for Weir and for PySpark.

usage: python3 gen.py DIR RECORDS
"""
import json
import os
import random
import sys

out, n = sys.argv[1], int(sys.argv[2])
random.seed(1)
os.makedirs(os.path.join(out, "trans"), exist_ok=True)
with open(os.path.join(out, "district.csv"), "w") as f:
    f.write("district_id,a2,a3\n")
    for d in range(1, 78):
        f.write(f"{d},district {d},region {d % 8}\n")
with open(os.path.join(out, "account.csv"), "w") as f:
    f.write("account_id,district_id,frequency\n")
    for a in range(1, 4501):
        f.write(f"{a},{random.randint(1, 77)},POPLATEK MESICNE\n")
with open(os.path.join(out, "trans", "trans.json"), "w") as f:
    for i in range(1, n + 1):
        y, m, d = random.randint(1993, 1998), random.randint(1, 12), random.randint(1, 28)
        amount = random.randint(1, 50000)
        f.write(json.dumps({
            "trans_id": i,
            "account_id": random.randint(1, 4500),
            "date": f"{y}-{m:02d}-{d:02d}",
            "type": random.choice(["PRIJEM", "VYDAJ"]),
            "operation": "VKLAD",
            "amount": float(amount),
            "balance": float(amount * 3),
            "k_symbol": None,
        }) + "\n")
