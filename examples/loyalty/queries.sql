-- The questions of the loyalty pipeline.

-- Top customers by points.
SELECT l.customer_id, c.name, sum(l.points) AS points, sum(l.orders) AS orders
FROM loyalty l JOIN customers_cln c ON l.customer_id = c.customer_id
GROUP BY l.customer_id, c.name ORDER BY points DESC, l.customer_id LIMIT 10;

-- One customer's points, day by day.
SELECT data_dt, orders, points FROM loyalty WHERE customer_id = 42 ORDER BY data_dt;

-- The cleaned customers: how many, and how many have a usable date of birth, email and phone.
SELECT count(*) AS customers, count(date_of_birth) AS with_birth_date, count(email) AS with_email,
       count(phone) AS with_phone
FROM customers_cln;

-- What the speed layer took in: orders kept, orders without a price, lines that were not orders.
SELECT (SELECT count(*) FROM transactions_cln) AS orders,
       (SELECT count(*) FROM spooled_table WHERE price <= 0) AS without_price,
       (SELECT count(*) FROM "orders.dlq" WHERE job = 'clean_orders') AS not_orders;

-- A random read of one spooled row by its key (partition-offset).
SELECT row_key, customer_id, item, price FROM spooled_table WHERE row_key = '0-0000000000';
