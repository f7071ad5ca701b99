-- The loyalty batch job's tables in Weir (seed 000). The inputs are the CSV files as external
-- tables (Hive's tables over HDFS files); the outputs are Weir tables. @DIR@ is the data directory.
CREATE EXTERNAL TABLE customer_csv (customer_id BIGINT, name VARCHAR, date_of_birth VARCHAR,
  email VARCHAR, phone VARCHAR)
  STORED AS CSV LOCATION '@DIR@/customer.csv' OPTIONS ('format.has_header' 'true');
CREATE EXTERNAL TABLE orders_csv (customer_id BIGINT, item VARCHAR, price DOUBLE, ts TIMESTAMP)
  STORED AS CSV LOCATION '@DIR@/orders.csv' OPTIONS ('format.has_header' 'true');
CREATE TABLE customers_cln (customer_id BIGINT, name VARCHAR, date_of_birth DATE, email VARCHAR,
  phone VARCHAR, PRIMARY KEY (customer_id));
CREATE TABLE loyalty (customer_id BIGINT, data_dt DATE, orders BIGINT, points BIGINT,
  PRIMARY KEY (customer_id, data_dt));
