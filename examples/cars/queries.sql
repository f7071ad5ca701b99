-- What the seed's Grafana dashboard showed, as SQL, at any moment while sales arrive.

-- Sales and revenue per brand.
SELECT car_brand, sum(sales) AS sales, round(sum(revenue), 2) AS revenue
FROM sales_per_minute GROUP BY car_brand ORDER BY car_brand;

-- Per country and branch.
SELECT country, branch, sum(sales) AS sales, round(sum(revenue), 2) AS revenue
FROM sales_per_minute GROUP BY country, branch ORDER BY country, branch;

-- The time series: sales and revenue per minute.
SELECT minute, sum(sales) AS sales, round(sum(revenue), 2) AS revenue
FROM sales_per_minute GROUP BY minute ORDER BY minute;

-- Alerts raised.
SELECT minute, branch, round(revenue, 2) AS revenue FROM sales_alerts ORDER BY minute, branch;
