-- The cars pipeline (seed 003): the sales app posts transactions to a topic that keeps them all
-- (the seed's Kafka topic and Flume's copy to HDFS); a stream job keeps a time series of sales
-- (the seed's Spark job writing to InfluxDB); a schedule raises alerts on a threshold (the
-- seed's Grafana alert rule).
CREATE TOPIC car_transactions (transaction_id VARCHAR NOT NULL, buyer_id VARCHAR,
    buyer_name VARCHAR, car_brand VARCHAR, car_model VARCHAR, year INT, color VARCHAR,
    country VARCHAR, branch VARCHAR, transaction_price DOUBLE, ts TIMESTAMP)
  WITH (partitions = 3, format = 'json');
-- Free-form log messages from the app, one line each.
CREATE TOPIC app_logs (message VARCHAR) WITH (partitions = 1, format = 'text');

-- Per minute, per brand, country and branch: sales and revenue.
CREATE TABLE sales_per_minute (minute TIMESTAMP, car_brand VARCHAR, country VARCHAR,
  branch VARCHAR, sales BIGINT, revenue DOUBLE,
  PRIMARY KEY (minute, car_brand, country, branch));
CREATE JOB sales_series AS INSERT INTO sales_per_minute
  SELECT tumble(ts, INTERVAL '1 minute'), car_brand, country, branch, count(*),
         sum(transaction_price)
  FROM car_transactions
  GROUP BY tumble(ts, INTERVAL '1 minute'), car_brand, country, branch;

-- The alert rule: a branch that sold for more than 500,000 in one minute.
CREATE TABLE sales_alerts (minute TIMESTAMP, branch VARCHAR, revenue DOUBLE,
  PRIMARY KEY (minute, branch));
CREATE SCHEDULE revenue_alert EVERY '5 seconds' AS
  INSERT INTO sales_alerts
  SELECT minute, branch, sum(revenue) FROM sales_per_minute
  GROUP BY minute, branch HAVING sum(revenue) > 500000;
