-- The questions, asked at any moment while transactions arrive (the seed read them from Hive).
SELECT transaction_month, transaction_count, round(transaction_amount, 1) AS transaction_amount
FROM monthly_trend ORDER BY transaction_month;

SELECT transaction_year, transaction_count, round(transaction_amount, 1) AS transaction_amount
FROM yearly_trend ORDER BY transaction_year;

SELECT region, transaction_count, round(transaction_amount, 1) AS transaction_amount
FROM trans_by_region ORDER BY region;

SELECT age_level, gender, transactions, clients,
       round(CAST(transactions AS DOUBLE) / clients, 2) AS avg_transactions
FROM trans_by_age_gender ORDER BY age_level, gender;
