-- The loyalty pipeline (seed 000), a lambda architecture in one cluster.

-- Batch layer: customers as the shop's system exports them (loaded with `weir load csv`), and
-- the same customers cleaned.
CREATE TABLE customers (customer_id BIGINT, name VARCHAR, date_of_birth VARCHAR, email VARCHAR,
  phone VARCHAR, PRIMARY KEY (customer_id));
CREATE TABLE customers_cln (customer_id BIGINT, name VARCHAR, date_of_birth DATE, email VARCHAR,
  phone VARCHAR, PRIMARY KEY (customer_id));

-- Speed layer: the order lines the spool-directory source sends (spool.py), as CSV records.
CREATE TOPIC orders (customer_id BIGINT, item VARCHAR, price DOUBLE, ts TIMESTAMP)
  WITH (partitions = 3, format = 'csv');
-- The raw orders by row key, for random reads (the seed's HBase sink).
CREATE TABLE spooled_table (row_key VARCHAR, customer_id BIGINT, item VARCHAR, price DOUBLE,
  ts TIMESTAMP, PRIMARY KEY (row_key));
CREATE JOB spool_to_table AS INSERT INTO spooled_table
  SELECT concat(CAST(_partition AS VARCHAR), '-', lpad(CAST(_offset AS VARCHAR), 10, '0')),
         customer_id, item, price, ts
  FROM orders;
-- Orders cleaned as they arrive: item names tidied, orders without a price left out. A line that
-- is not an order goes to the dead-letter topic "orders.dlq".
CREATE TABLE transactions_cln (part INT, off BIGINT, customer_id BIGINT, item VARCHAR,
  price DOUBLE, ts TIMESTAMP, PRIMARY KEY (part, off));
CREATE JOB clean_orders AS INSERT INTO transactions_cln
  SELECT _partition, _offset, customer_id, lower(trim(item)), price, ts
  FROM orders WHERE price > 0;

-- Serving layer: loyalty points per customer per day (a point per 10 spent), recomputed by a
-- schedule after the customers are cleaned (the seed's Oozie coordinator). Each run rewrites
-- the rows it computes, so a run that is repeated changes nothing.
CREATE TABLE loyalty (customer_id BIGINT, data_dt DATE, orders BIGINT, points BIGINT,
  PRIMARY KEY (customer_id, data_dt));
CREATE SCHEDULE clean_customers EVERY '10 seconds' AS
  INSERT INTO customers_cln
  SELECT customer_id, initcap(regexp_replace(trim(name), '\s+', ' ', 'g')),
         try_to_date(date_of_birth, '%Y-%m-%d', '%d/%m/%Y'),
         nullif(lower(trim(email)), ''), nullif(regexp_replace(phone, '[^0-9]', '', 'g'), '')
  FROM customers;
CREATE SCHEDULE loyalty_points EVERY '10 seconds' AFTER clean_customers AS
  INSERT INTO loyalty
  SELECT c.customer_id, CAST(date_trunc('day', t.ts) AS DATE), count(*),
         sum(CAST(floor(t.price / 10) AS BIGINT))
  FROM transactions_cln t JOIN customers_cln c ON t.customer_id = c.customer_id
  GROUP BY c.customer_id, CAST(date_trunc('day', t.ts) AS DATE);
