-- The datacenter pipeline (seed 002): servers report their status to a topic (Kafka in the
-- seed); two stream jobs (Spark Streaming) keep the tables a dashboard reads.
CREATE TOPIC server_status (server_id VARCHAR NOT NULL, datacenter VARCHAR, rack VARCHAR,
    status VARCHAR, cpu_pct DOUBLE, mem_pct DOUBLE, disk_pct DOUBLE, ts TIMESTAMP)
  WITH (partitions = 3, format = 'json');

-- Per minute of event time, per data center and status: how many reports and the average load.
-- A minute closes 2 minutes after its end (by the reports' own times); a report for a closed
-- minute is counted as late (DESCRIBE JOB) and not added.
CREATE TABLE status_by_minute (minute TIMESTAMP, datacenter VARCHAR, status VARCHAR,
  reports BIGINT, avg_cpu DOUBLE, avg_mem DOUBLE, avg_disk DOUBLE,
  PRIMARY KEY (minute, datacenter, status));
CREATE JOB by_minute AS INSERT INTO status_by_minute
  SELECT tumble(ts, INTERVAL '1 minute', INTERVAL '2 minutes'), datacenter, status, count(*),
         avg(cpu_pct), avg(mem_pct), avg(disk_pct)
  FROM server_status
  GROUP BY tumble(ts, INTERVAL '1 minute', INTERVAL '2 minutes'), datacenter, status;

-- The latest report of every server (its reports are keyed by server_id, so they stay in order).
CREATE TABLE server_latest (server_id VARCHAR, datacenter VARCHAR, rack VARCHAR, status VARCHAR,
  cpu_pct DOUBLE, mem_pct DOUBLE, disk_pct DOUBLE, ts TIMESTAMP, PRIMARY KEY (server_id));
CREATE JOB latest AS INSERT INTO server_latest
  SELECT server_id, datacenter, rack, status, cpu_pct, mem_pct, disk_pct, ts FROM server_status;
