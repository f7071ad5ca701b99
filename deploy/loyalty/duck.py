"""The loyalty batch job (seed 000) in DuckDB, for the benchmark beside Weir: the same cleaning and
points as deploy/loyalty/job.sql, over the same CSV files, into in-memory tables, on 2 threads.
DuckDB has no initcap: each blank-separated word gets a capital first letter and lower-case rest,
as Weir's and Spark's initcap do.

Prints the time of the job alone, then the answers of deploy/loyalty/check.sql.

usage: python3 duck.py DIR
"""
import os
import sys
import time

import duckdb

d = sys.argv[1]
con = duckdb.connect()
con.sql("SET threads = 2")
start = time.time()
con.sql(f"""
CREATE TABLE customers_cln AS
SELECT customer_id,
  array_to_string(list_transform(string_split(lower(trim(name)), ' '),
                                 lambda w: upper(w[1]) || w[2:]), ' ') AS name,
  CAST(coalesce(try_strptime(date_of_birth, '%Y-%m-%d'), try_strptime(date_of_birth, '%d/%m/%Y'))
       AS DATE) AS date_of_birth,
  nullif(lower(trim(email)), '') AS email,
  nullif(regexp_replace(phone, '[^0-9]', '', 'g'), '') AS phone
FROM read_csv('{d}/customer.csv', header = true,
              columns = {{'customer_id': 'BIGINT', 'name': 'VARCHAR', 'date_of_birth': 'VARCHAR',
                          'email': 'VARCHAR', 'phone': 'VARCHAR'}})
""")
con.sql(f"""
CREATE TABLE loyalty AS
SELECT c.customer_id, CAST(date_trunc('day', t.ts) AS DATE) AS data_dt, count(*) AS orders,
  sum(CAST(floor(t.price / 10) AS BIGINT)) AS points
FROM read_csv('{d}/orders.csv', header = true,
              columns = {{'customer_id': 'BIGINT', 'item': 'VARCHAR', 'price': 'DOUBLE',
                          'ts': 'TIMESTAMP'}}) t
JOIN customers_cln c ON t.customer_id = c.customer_id
WHERE t.price > 0
GROUP BY c.customer_id, CAST(date_trunc('day', t.ts) AS DATE)
""")
elapsed = time.time() - start
print(f"duckdb: {elapsed:.2f} s")
checks = open(os.path.join(os.path.dirname(__file__), "check.sql")).read().split(";")
for q in (q.strip() for q in checks):
    if q:
        print(",".join(str(v) for v in con.sql(q).fetchall()[0]))
