-- The restaurant pipeline (seed 004): one topic the app posts its events to, and two stream jobs
-- that split it by kind of event into tables, as the seed's two Spark Streaming jobs did into
-- Hive. Each row is keyed by where its event sits in the topic, so every posted event is a row,
-- even identical ones (Apache Bench posts the same body again and again).
CREATE TOPIC menu_app (event_type VARCHAR NOT NULL, user_id VARCHAR, event_ts TIMESTAMP,
    menu VARCHAR, price DOUBLE, coupon BOOLEAN, stars INT)
  WITH (partitions = 3, format = 'json');

CREATE TABLE menu_app_events (part INT, off BIGINT, event_type VARCHAR, user_id VARCHAR,
  event_ts TIMESTAMP, menu VARCHAR, stars INT, PRIMARY KEY (part, off));

CREATE TABLE menu_app_orders (part INT, off BIGINT, user_id VARCHAR, event_ts TIMESTAMP,
  cuisine VARCHAR, price DOUBLE, coupon BOOLEAN, PRIMARY KEY (part, off));

-- An event without a time of its own (one Apache Bench posts) took place when it was stored.
CREATE JOB split_events AS INSERT INTO menu_app_events
  SELECT _partition, _offset, event_type, user_id, coalesce(event_ts, _timestamp), menu, stars
  FROM menu_app WHERE event_type <> 'order';

CREATE JOB split_orders AS INSERT INTO menu_app_orders
  SELECT _partition, _offset, user_id, coalesce(event_ts, _timestamp), menu, price,
         coalesce(coupon, false)
  FROM menu_app WHERE event_type = 'order';
