"""Input of the loyalty batch job (seed 000), the same shape as the seed's: a messy `customer.csv`
(names in any case with stray blanks, dates of birth in two formats or not dates at all, emails with
blanks and capitals, phones in several formats or missing) and a day of orders, `orders.csv`
(customer_id, item, price, ts), some from unknown customers and some without a price.

Made by DuckDB from hashes of the row number, so the same arguments give the same files.

usage: python3 gen.py DIR CUSTOMERS ORDERS [SEED]
"""
import os
import sys

import duckdb

d, customers, orders = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
seed = int(sys.argv[4]) if len(sys.argv) > 4 else 0
os.makedirs(d, exist_ok=True)
con = duckdb.connect()
con.sql("SET threads = 2")


def h(salt):
    """A pseudo-random unsigned number per row and salt."""
    return f"CAST(hash(i, {seed * 100 + salt}) % 1000000007 AS BIGINT)"


con.sql(f"""
COPY (
  WITH r AS (
    SELECT i,
      ['anna', 'BOB', 'Chai', 'dao', 'ELLA', 'fah', 'Gus', 'hana', 'IVAN', 'jun'][1 + {h(1)} % 10] AS f,
      ['smith', 'NGUYEN', 'Tanaka', 'kim', 'Lopez', 'OKAFOR', 'patel', 'Rossi'][1 + {h(2)} % 8] AS l,
      1950 + {h(3)} % 55 AS y, 1 + {h(4)} % 12 AS m, 1 + {h(5)} % 28 AS dd,
      {h(6)} % 5 AS dob_kind, {h(7)} % 4 AS phone_kind,
      lpad(CAST({h(8)} % 10000000 AS VARCHAR), 7, '0') AS digits
    FROM range(1, {customers} + 1) t(i)
  )
  SELECT i AS customer_id,
    CASE {h(9)} % 3 WHEN 0 THEN '  ' || f || ' ' || l || ' ' WHEN 1 THEN f || '  ' || l ELSE f || ' ' || l END AS name,
    CASE dob_kind
      WHEN 0 THEN printf('%04d-%02d-%02d', y, m, dd)
      WHEN 1 THEN printf('%02d/%02d/%04d', dd, m, y)
      WHEN 2 THEN printf('%04d-%02d-%02d', y, m, dd)
      WHEN 3 THEN 'unknown'
      ELSE '' END AS date_of_birth,
    CASE WHEN {h(10)} % 20 = 0 THEN '' ELSE ' ' || f || '.' || l || i || '@Example.COM' END AS email,
    CASE phone_kind
      WHEN 0 THEN '(555) ' || substr(digits, 1, 3) || '-' || substr(digits, 4)
      WHEN 1 THEN '555.' || substr(digits, 1, 3) || '.' || substr(digits, 4)
      WHEN 2 THEN '+1 555 ' || digits
      ELSE '' END AS phone
  FROM r ORDER BY i
) TO '{d}/customer.csv' (HEADER, QUOTE '"', FORCE_QUOTE (name, email, phone))
""")

con.sql(f"""
COPY (
  SELECT 1 + {h(11)} % ({customers} + {customers} // 20) AS customer_id,
    [' Latte', 'MOCHA ', 'green Tea', 'espresso', 'Thai tea ', 'cocoa'][1 + {h(12)} % 6] AS item,
    CASE WHEN {h(13)} % 10 = 0 THEN 0.0 ELSE round(({h(14)} % 20000) / 100.0, 2) END AS price,
    TIMESTAMP '2024-06-01 00:00:00' + to_seconds(CAST({h(15)} % 86400 AS BIGINT)) AS ts
  FROM range({orders}) t(i)
) TO '{d}/orders.csv' (HEADER, TIMESTAMPFORMAT '%Y-%m-%d %H:%M:%S')
""")
print(f"{d}/customer.csv: {customers} rows, {d}/orders.csv: {orders} rows")
