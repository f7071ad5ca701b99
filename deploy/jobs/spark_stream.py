"""The seed-001 stream job in PySpark Structured Streaming, for the benchmark beside Weir: the
transactions (JSON lines in DIR/trans) joined with account and district (CSV) and aggregated per
month, run once over everything present (trigger availableNow) on local[2].

Prints the records per second of the streaming query alone (the JVM's start is not counted).

usage: python3 spark_stream.py DIR RECORDS
"""
import sys
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (DateType, DoubleType, LongType, StringType, StructField,
                               StructType)

d, n = sys.argv[1], int(sys.argv[2])
spark = (SparkSession.builder.master("local[2]").appName("seed001")
         .config("spark.sql.shuffle.partitions", "2")
         .config("spark.ui.enabled", "false").getOrCreate())
spark.sparkContext.setLogLevel("ERROR")
schema = StructType([
    StructField("trans_id", LongType()), StructField("account_id", LongType()),
    StructField("date", DateType()), StructField("type", StringType()),
    StructField("operation", StringType()), StructField("amount", DoubleType()),
    StructField("balance", DoubleType()), StructField("k_symbol", StringType()),
])
account = spark.read.option("header", True).option("inferSchema", True).csv(f"{d}/account.csv")
district = spark.read.option("header", True).option("inferSchema", True).csv(f"{d}/district.csv")
trans = spark.readStream.schema(schema).json(f"{d}/trans")
monthly = (trans.join(account, "account_id").join(district, "district_id")
           .groupBy(F.month("date").alias("transaction_month"))
           .agg(F.count("*").alias("transaction_count"),
                F.sum("amount").alias("transaction_amount")))
start = time.time()
q = (monthly.writeStream.outputMode("complete").format("memory").queryName("monthly_trend")
     .trigger(availableNow=True).start())
q.awaitTermination()
elapsed = time.time() - start
rows = spark.sql("SELECT sum(transaction_count) FROM monthly_trend").collect()[0][0]
assert rows == n, f"PySpark counted {rows} of {n} records"
print(f"pyspark: {n} records in {elapsed:.2f} s = {n / elapsed:,.0f} records/s")
spark.stop()
