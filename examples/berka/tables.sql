-- The Berka pipeline (seed 001): the bank's dimension tables (MySQL in the seed), the topic the
-- transactions arrive on (Kafka), and the tables the stream jobs keep up to date (Hive).
CREATE TABLE district (district_id INT, name VARCHAR, region VARCHAR, inhabitants BIGINT,
  PRIMARY KEY (district_id));
CREATE TABLE account (account_id BIGINT, district_id INT, frequency VARCHAR, opened DATE,
  PRIMARY KEY (account_id));
-- birth_number as Berka writes it: YYMMDD, with 50 added to the month for women.
CREATE TABLE client (client_id BIGINT, birth_number VARCHAR, district_id INT,
  PRIMARY KEY (client_id));
CREATE TABLE disp (disp_id BIGINT, client_id BIGINT, account_id BIGINT, type VARCHAR,
  PRIMARY KEY (disp_id));

CREATE TOPIC trans (trans_id BIGINT NOT NULL, account_id BIGINT, date DATE, type VARCHAR,
    operation VARCHAR, amount DOUBLE, balance DOUBLE, k_symbol VARCHAR)
  WITH (partitions = 3, format = 'json');

CREATE TABLE monthly_trend (transaction_month INT, transaction_count BIGINT,
  transaction_amount DOUBLE, PRIMARY KEY (transaction_month));
CREATE TABLE yearly_trend (transaction_year INT, transaction_count BIGINT,
  transaction_amount DOUBLE, PRIMARY KEY (transaction_year));
CREATE TABLE trans_by_region (region VARCHAR, transaction_count BIGINT, transaction_amount DOUBLE,
  PRIMARY KEY (region));
-- Transactions of accounts by their owner's age (at the transaction) and gender, and how many
-- owners made them: avg_transactions is one divided by the other.
CREATE TABLE trans_by_age_gender (age_level VARCHAR, gender VARCHAR, transactions BIGINT,
  clients BIGINT, PRIMARY KEY (age_level, gender));
