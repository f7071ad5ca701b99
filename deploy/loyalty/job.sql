-- The loyalty batch job (seed 000) in Weir: clean the customers, then one loyalty row per customer
-- per day of orders (a point per 10 of price). Written as upserts: a re-run rewrites the same rows.
INSERT INTO customers_cln
  SELECT customer_id, initcap(trim(name)), try_to_date(date_of_birth, '%Y-%m-%d', '%d/%m/%Y'),
         nullif(lower(trim(email)), ''), nullif(regexp_replace(phone, '[^0-9]', '', 'g'), '')
  FROM customer_csv;
INSERT INTO loyalty
  SELECT c.customer_id, CAST(date_trunc('day', t.ts) AS DATE), count(*),
         sum(CAST(floor(t.price / 10) AS BIGINT))
  FROM orders_csv t JOIN customers_cln c ON t.customer_id = c.customer_id
  WHERE t.price > 0
  GROUP BY c.customer_id, CAST(date_trunc('day', t.ts) AS DATE);
