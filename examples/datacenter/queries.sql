-- What the seed's dashboard showed, as SQL (psql, or any Postgres client such as Grafana's
-- PostgreSQL data source), at any moment while reports arrive.

-- The pivot: servers per data center by their current status.
SELECT datacenter,
       count(*) FILTER (WHERE status = 'ok') AS ok,
       count(*) FILTER (WHERE status = 'warning') AS warning,
       count(*) FILTER (WHERE status = 'critical') AS critical,
       count(*) FILTER (WHERE status = 'down') AS down
FROM server_latest GROUP BY datacenter ORDER BY datacenter;

-- The time chart: reports of servers in trouble per minute and data center.
SELECT minute, datacenter, sum(reports) AS reports
FROM status_by_minute WHERE status IN ('critical', 'down')
GROUP BY minute, datacenter ORDER BY minute, datacenter;

-- Load per data center over the whole period (averages weighted by their reports).
SELECT datacenter, sum(reports) AS reports,
       round(sum(avg_cpu * reports) / sum(reports), 2) AS avg_cpu,
       round(sum(avg_mem * reports) / sum(reports), 2) AS avg_mem
FROM status_by_minute GROUP BY datacenter ORDER BY datacenter;

-- Servers running hot right now.
SELECT server_id, status, cpu_pct FROM server_latest WHERE cpu_pct >= 90 ORDER BY server_id;
