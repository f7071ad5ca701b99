-- What the seed asked Presto, asked of Weir while the events arrive (or after).

-- How many events of each kind (orders are in their own table).
SELECT event_type, count(*) AS events FROM menu_app_events GROUP BY event_type
UNION ALL SELECT 'order', count(*) FROM menu_app_orders
ORDER BY event_type;

-- What people search for, and what they order.
SELECT menu, count(*) AS searches FROM menu_app_events WHERE event_type = 'menu_search'
GROUP BY menu ORDER BY menu;
SELECT cuisine, count(*) AS orders, round(sum(price), 2) AS revenue,
       round(avg(price), 2) AS average_price
FROM menu_app_orders GROUP BY cuisine ORDER BY cuisine;

-- Coupon use.
SELECT coupon, count(*) AS orders, round(sum(price), 2) AS revenue
FROM menu_app_orders GROUP BY coupon ORDER BY coupon;

-- Reviews: how many of each rating, and the average.
SELECT stars, count(*) AS reviews FROM menu_app_events WHERE event_type = 'review'
GROUP BY stars ORDER BY stars;
SELECT round(avg(stars), 3) AS average_stars FROM menu_app_events WHERE event_type = 'review';

-- When the app is used: events per day of the week (0 = Sunday) and the busiest hours.
SELECT CAST(date_part('dow', event_ts) AS INT) AS weekday, count(*) AS events
FROM menu_app_events GROUP BY 1 ORDER BY 1;
SELECT CAST(date_part('hour', event_ts) AS INT) AS hour, count(*) AS events
FROM menu_app_events GROUP BY 1 ORDER BY events DESC, hour LIMIT 5;
