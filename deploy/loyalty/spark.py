"""The loyalty batch job (seed 000) in PySpark, for the benchmark beside Weir: the same cleaning and
points as deploy/loyalty/job.sql, over the same CSV files, on local[2], writing customers_cln and
loyalty as Parquet under OUT (Hive's tables over files), the join reading customers_cln back.

Prints the time of the job alone (the JVM's start is not counted), then the answers of
deploy/loyalty/check.sql.

usage: python3 spark.py DIR OUT
"""
import os
import sys
import time

from pyspark.sql import SparkSession

d, out = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local[2]").appName("loyalty")
         .config("spark.sql.shuffle.partitions", "2")
         .config("spark.sql.ansi.enabled", "false")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
start = time.time()
(spark.read.option("header", True)
 .schema("customer_id BIGINT, name STRING, date_of_birth STRING, email STRING, phone STRING")
 .csv(f"{d}/customer.csv").createOrReplaceTempView("customer_csv"))
(spark.read.option("header", True)
 .schema("customer_id BIGINT, item STRING, price DOUBLE, ts TIMESTAMP")
 .csv(f"{d}/orders.csv").createOrReplaceTempView("orders_csv"))
spark.sql("""
SELECT customer_id, initcap(trim(name)) AS name,
  coalesce(to_date(date_of_birth, 'yyyy-MM-dd'), to_date(date_of_birth, 'dd/MM/yyyy'))
    AS date_of_birth,
  nullif(lower(trim(email)), '') AS email,
  nullif(regexp_replace(phone, '[^0-9]', ''), '') AS phone
FROM customer_csv
""").write.mode("overwrite").parquet(f"{out}/customers_cln")
spark.read.parquet(f"{out}/customers_cln").createOrReplaceTempView("customers_cln")
spark.sql("""
SELECT c.customer_id, CAST(date_trunc('day', t.ts) AS DATE) AS data_dt, count(*) AS orders,
  sum(CAST(floor(t.price / 10) AS BIGINT)) AS points
FROM orders_csv t JOIN customers_cln c ON t.customer_id = c.customer_id
WHERE t.price > 0
GROUP BY c.customer_id, CAST(date_trunc('day', t.ts) AS DATE)
""").write.mode("overwrite").parquet(f"{out}/loyalty")
elapsed = time.time() - start
print(f"pyspark: {elapsed:.2f} s")
spark.read.parquet(f"{out}/loyalty").createOrReplaceTempView("loyalty")
checks = open(os.path.join(os.path.dirname(__file__), "check.sql")).read().split(";")
for q in (q.strip() for q in checks):
    if q:
        print(",".join(str(v) for v in spark.sql(q).collect()[0]))
spark.stop()
