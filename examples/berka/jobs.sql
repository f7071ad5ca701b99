-- The stream jobs (the seed's Spark Streaming transformer), created once the dimension tables are
-- loaded: each enriches every transaction as it arrives and keeps its table up to date.
CREATE JOB monthly AS INSERT INTO monthly_trend
  SELECT CAST(date_part('month', date) AS INT), count(*), sum(amount)
  FROM trans GROUP BY 1;

CREATE JOB yearly AS INSERT INTO yearly_trend
  SELECT CAST(date_part('year', date) AS INT), count(*), sum(amount)
  FROM trans GROUP BY 1;

-- transaction → account → district
CREATE JOB by_region AS INSERT INTO trans_by_region
  SELECT d.region, count(*), sum(t.amount)
  FROM trans t JOIN account a ON t.account_id = a.account_id
    JOIN district d ON a.district_id = d.district_id
  GROUP BY d.region;

-- transaction → disposition (the account's owner) → client, whose birth number gives age and
-- gender
CREATE JOB by_age_gender AS INSERT INTO trans_by_age_gender
  SELECT
    CASE
      WHEN CAST(date_part('year', t.date) AS INT) - 1900
           - CAST(substr(c.birth_number, 1, 2) AS INT) < 30 THEN 'under 30'
      WHEN CAST(date_part('year', t.date) AS INT) - 1900
           - CAST(substr(c.birth_number, 1, 2) AS INT) < 45 THEN '30 to 44'
      WHEN CAST(date_part('year', t.date) AS INT) - 1900
           - CAST(substr(c.birth_number, 1, 2) AS INT) < 60 THEN '45 to 59'
      ELSE '60 and over'
    END,
    CASE WHEN CAST(substr(c.birth_number, 3, 2) AS INT) > 50 THEN 'F' ELSE 'M' END,
    count(*), count(DISTINCT c.client_id)
  FROM trans t JOIN disp p ON t.account_id = p.account_id
    JOIN client c ON p.client_id = c.client_id
  WHERE p.type = 'OWNER'
  GROUP BY 1, 2;
