"""Runs the 22 TPC-H queries in DuckDB (2 threads) over the Parquet files or over tables loaded
from the CSV files; prints the time of each and writes each result as CSV for comparison.

usage: python3 duck.py DATA_DIR OUT_DIR parquet|tables
"""
import csv
import os
import sys
import time

import duckdb

TABLES = ["nation", "region", "part", "supplier", "partsupp", "customer", "orders", "lineitem"]


def main():
    data, out, mode = sys.argv[1], sys.argv[2], sys.argv[3]
    here = os.path.dirname(os.path.abspath(__file__))
    os.makedirs(out, exist_ok=True)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    start = time.time()
    for t in TABLES:
        if mode == "parquet":
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{data}/parquet/{t}.parquet')")
        else:
            con.execute(f"CREATE TABLE {t} AS SELECT * FROM read_csv('{data}/csv/{t}.csv')")
    print(f"setup {time.time() - start:.3f}")
    total = 0.0
    for q in range(1, 23):
        sql = open(os.path.join(here, f"q{q}.sql")).read()
        start = time.time()
        rel = con.sql(sql)
        rows = rel.fetchall()
        took = time.time() - start
        total += took
        with open(os.path.join(out, f"q{q}.csv"), "w", newline="") as f:
            w = csv.writer(f)
            for r in rows:
                w.writerow("" if v is None else str(v) for v in r)
        print(f"q{q} {took:.3f} {len(rows)}")
    print(f"total {total:.3f}")


main()
