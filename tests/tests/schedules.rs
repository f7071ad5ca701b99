//! Schedules on a three-node cluster: a schedule that runs `AFTER` another runs each tick only
//! once the other has finished it; pause and resume; a failing statement retried with its error
//! kept; a run asked for now; bad definitions refused at `CREATE SCHEDULE`; and seed 000, the
//! loyalty pipeline, end to end.

use std::time::Duration;

use weir_client::{Client, Value};
use weir_tests::{sql_lines as rows, wait_until, Gen, InProcessCluster};

const WAIT: Duration = Duration::from_secs(90);

async fn exec(client: &Client, sql: &str) {
    rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The single value `sql` returns, as text.
async fn value(client: &Client, sql: &str) -> String {
    let r = rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    assert_eq!(r.len(), 1, "{sql} returned {r:?}");
    r[0].clone()
}

/// Waits until `sql` (one row, one value) returns a number at least `n`; returns it.
async fn wait_count(client: &Client, what: &str, sql: &str, n: i64) -> i64 {
    wait_until(what, WAIT, || async {
        let r = rows(client, sql).await.ok()?;
        let v: i64 = r.first()?.parse().ok()?;
        (v >= n).then_some(v)
    })
    .await
}

/// The succeeded runs of `schedule`: (tick, started, ended) in milliseconds.
async fn succeeded_runs(client: &Client, schedule: &str) -> Vec<(i64, i64, i64)> {
    let sql = format!(
        "SELECT CAST(tick AS BIGINT), CAST(started AS BIGINT), CAST(ended AS BIGINT) \
         FROM \"__schedule_runs\" WHERE schedule = '{schedule}' AND status = 'succeeded'"
    );
    rows(client, &sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| {
            let f: Vec<i64> = r
                .split('|')
                .map(|v| v.parse().unwrap_or_else(|_| panic!("{sql} returned {r}")))
                .collect();
            (f[0], f[1], f[2])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schedules_run_after_their_dependencies_and_keep_their_history() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    let other = Client::connect(cluster.addr(2)).await.expect("connects");
    exec(
        &client,
        "CREATE TABLE src (id BIGINT, v BIGINT, PRIMARY KEY (id));
         INSERT INTO src SELECT value, value * 10 FROM generate_series(1, 100);
         CREATE TABLE stage (id BIGINT, v BIGINT, PRIMARY KEY (id));
         CREATE TABLE summary (id BIGINT, n BIGINT, total BIGINT, PRIMARY KEY (id));
         CREATE SCHEDULE load EVERY '2 seconds' AS INSERT INTO stage SELECT id, v FROM src",
    )
    .await;
    // Created through another node, which forwards to the metadata leader.
    exec(
        &other,
        "CREATE SCHEDULE sumup EVERY '2 seconds' AFTER load AS
           INSERT INTO summary SELECT 1, count(*), sum(v) FROM stage",
    )
    .await;
    let shown = rows(&client, "SHOW SCHEDULES")
        .await
        .expect("SHOW SCHEDULES");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown[1].starts_with("sumup|2 seconds|load|false|"),
        "{shown:?}"
    );

    // Three ticks of sumup, each after load finished the same tick.
    wait_count(
        &client,
        "three succeeded runs of sumup",
        "SELECT count(*) FROM \"__schedule_runs\" WHERE schedule = 'sumup' AND status = 'succeeded'",
        3,
    )
    .await;
    // Each run of sumup began after a run of load for its tick or a later one had succeeded (a
    // tick load skipped, its run of the tick before lasting past it, is covered by the next).
    let (sumups, loads) = (
        succeeded_runs(&client, "sumup").await,
        succeeded_runs(&client, "load").await,
    );
    for &(tick, started, _) in &sumups {
        assert!(
            loads
                .iter()
                .any(|&(t, _, ended)| t >= tick && ended <= started),
            "sumup's run of tick {tick} started at {started} before load had succeeded for \
             that tick: sumup's runs {sumups:?}, load's {loads:?}"
        );
    }
    assert_eq!(
        value(&client, "SELECT n, total FROM summary").await,
        "100|50500"
    );
    // Each run of sumup took the schedule's next fencing token and wrote `summary` under it: a
    // write under the first run's token (an instance that outlived its lease) is refused there.
    let id = value(
        &client,
        "SELECT DISTINCT schedule_id FROM \"__schedule_runs\" WHERE schedule = 'sumup'",
    )
    .await;
    let token: u64 = value(
        &client,
        &format!("SELECT token FROM \"__schedule_leases\" WHERE schedule_id = {id}"),
    )
    .await
    .parse()
    .expect("a token");
    assert!(token >= 3, "a token per run: {token}");
    let stale = client
        .table("summary")
        .await
        .expect("summary")
        .fenced(&format!("schedule {id}"), 1)
        .put(vec![vec![Value::Int(9), Value::Int(0), Value::Int(0)]])
        .await;
    assert!(
        matches!(stale, Err(weir_client::ClientError::Fenced(_))),
        "{stale:?}"
    );
    // Exactly one row per tick and every run wrote what its statement reported.
    let runs = rows(&client, "SHOW RUNS FOR sumup")
        .await
        .expect("SHOW RUNS");
    assert!(runs.len() >= 3, "{runs:?}");
    for r in &runs {
        // schedule | tick | status | attempt | node | started | ended | rows | error | manual
        let f: Vec<&str> = r.split('|').collect();
        assert_eq!(f[0], "sumup");
        if f[2] == "succeeded" {
            assert_eq!((f[7], f[8], f[9]), ("1", "", "false"), "{r}");
        }
    }

    // Paused: load goes on, sumup takes no new tick.
    exec(&client, "ALTER SCHEDULE sumup PAUSE").await;
    let last: i64 = value(
        &client,
        "SELECT CAST(max(tick) AS BIGINT) FROM \"__schedule_runs\" WHERE schedule = 'sumup'",
    )
    .await
    .parse()
    .expect("a tick");
    let load_after = format!(
        "SELECT count(*) FROM \"__schedule_runs\" WHERE schedule = 'load' \
         AND status = 'succeeded' AND CAST(tick AS BIGINT) > {last}"
    );
    wait_count(&client, "load to run three more ticks", &load_after, 3).await;
    let sumup_after = format!(
        "SELECT count(*) FROM \"__schedule_runs\" WHERE schedule = 'sumup' \
         AND CAST(tick AS BIGINT) > {last} + 2000000"
    );
    assert_eq!(
        value(&client, &sumup_after).await,
        "0",
        "sumup ran while paused"
    );
    exec(&client, "ALTER SCHEDULE sumup RESUME").await;
    wait_count(&client, "sumup to run again once resumed", &sumup_after, 1).await;

    // A statement that fails at run time: retried with back-off, its error kept. Paused, so only
    // the run asked for runs (a test crossing the hour would otherwise see the hour's tick too).
    exec(
        &client,
        "CREATE SCHEDULE broken EVERY '1 hour' AS
           INSERT INTO summary SELECT 2, count(*), sum(v) / (min(v) - 10) FROM src;
         ALTER SCHEDULE broken PAUSE",
    )
    .await;
    exec(&client, "RUN SCHEDULE broken").await;
    let failed = wait_until("broken to fail twice", WAIT, || async {
        let r = rows(&client, "SHOW RUNS FOR broken").await.ok()?;
        let line = r.first()?.clone();
        let f: Vec<&str> = line.split('|').collect();
        let attempts: i64 = f.get(3)?.parse().ok()?;
        (f[2] == "failed" && attempts >= 2).then_some(line)
    })
    .await;
    let f: Vec<&str> = failed.split('|').collect();
    assert!(f[8].to_lowercase().contains("divide by zero"), "{failed}");
    assert_eq!(f[9], "true", "a run asked for is marked manual: {failed}");
    assert_eq!(
        value(&client, "SELECT count(*) FROM summary WHERE id = 2").await,
        "0",
        "a failed run wrote nothing"
    );

    // A cron timetable (here with seconds: every second second).
    exec(
        &client,
        "CREATE SCHEDULE by_cron CRON '*/2 * * * * *' AS
           INSERT INTO summary SELECT 3, count(*), 0 FROM src",
    )
    .await;
    wait_count(
        &client,
        "a run of the cron schedule",
        "SELECT count(*) FROM \"__schedule_runs\" WHERE schedule = 'by_cron' AND status = 'succeeded'",
        1,
    )
    .await;
    assert_eq!(
        value(&client, "SELECT n FROM summary WHERE id = 3").await,
        "100"
    );
    let shown = rows(&client, "SHOW SCHEDULES")
        .await
        .expect("SHOW SCHEDULES");
    assert!(
        shown
            .iter()
            .any(|l| l.starts_with("by_cron|cron */2 * * * * *||false|")),
        "{shown:?}"
    );
    exec(&client, "DROP SCHEDULE by_cron").await;

    // Bad definitions are refused, naming what is wrong; nothing is recorded.
    for (sql, words) in [
        (
            "CREATE SCHEDULE x EVERY '1 hour' AFTER nope AS SELECT 1",
            "'nope' does not exist",
        ),
        (
            "CREATE SCHEDULE x EVERY '1 hour' AFTER x AS SELECT 1",
            "cannot run after itself",
        ),
        (
            "CREATE SCHEDULE x EVERY 'often' AS SELECT 1",
            "EVERY 'often'",
        ),
        (
            "CREATE SCHEDULE x EVERY '10 ms' AS SELECT 1",
            "at most every second",
        ),
        (
            "CREATE SCHEDULE x EVERY '1 hour' AS INSERT INTO missing SELECT 1",
            "missing",
        ),
        (
            "CREATE SCHEDULE load EVERY '1 hour' AS SELECT 1",
            "already exists",
        ),
        ("DROP SCHEDULE load", "'sumup' runs after 'load'"),
        ("DROP SCHEDULE nope", "'nope' does not exist"),
        ("ALTER SCHEDULE nope PAUSE", "'nope' does not exist"),
    ] {
        let started = std::time::Instant::now();
        let e = rows(&client, sql).await.expect_err(sql).to_string();
        assert!(e.contains(words), "{sql}: {e}");
        // Refusals are final, not retried as if the cluster were unavailable.
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{sql} took {:?}",
            started.elapsed()
        );
    }
    exec(&client, "DROP SCHEDULE IF EXISTS nope").await;
    let names = rows(&client, "SHOW SCHEDULES")
        .await
        .expect("SHOW SCHEDULES");
    assert_eq!(names.len(), 3, "{names:?}");

    // Dropped in dependency order; the history stays queryable.
    exec(
        &client,
        "DROP SCHEDULE sumup; DROP SCHEDULE load; DROP SCHEDULE broken",
    )
    .await;
    assert!(rows(&client, "SHOW SCHEDULES")
        .await
        .expect("SHOW")
        .is_empty());
    assert!(!rows(&client, "SHOW RUNS")
        .await
        .expect("SHOW RUNS")
        .is_empty());
    cluster.shutdown().await;
}

/// Seed 000 (loyalty, the lambda architecture): messy customers cleaned by a schedule (the batch
/// layer), orders streamed into a topic and cleaned by a stream job (the speed layer), and a
/// schedule that runs after the cleaning to join both into loyalty points per customer per day
/// (the serving layer, Oozie's coordinator). The tables are compared with the same cleaning and
/// points computed here in Rust from the generated input.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_000_loyalty_points_equal_an_independent_computation() {
    use std::collections::BTreeMap;

    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.expect("connects");
    exec(
        &client,
        "CREATE TABLE customers (customer_id BIGINT, name VARCHAR, date_of_birth VARCHAR,
           email VARCHAR, PRIMARY KEY (customer_id));
         CREATE TABLE customers_cln (customer_id BIGINT, name VARCHAR, date_of_birth DATE,
           email VARCHAR, PRIMARY KEY (customer_id));
         CREATE TOPIC orders (customer_id BIGINT NOT NULL, item VARCHAR, price DOUBLE, ts TIMESTAMP)
           WITH (partitions = 3, replicas = 3, format = 'json');
         CREATE TABLE transactions_cln (part BIGINT, off BIGINT, customer_id BIGINT, item VARCHAR,
           price DOUBLE, ts TIMESTAMP, PRIMARY KEY (part, off));
         CREATE TABLE loyalty (customer_id BIGINT, data_dt DATE, orders BIGINT, points BIGINT,
           PRIMARY KEY (customer_id, data_dt))",
    )
    .await;

    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    let first = ["anna", "BOB", "Chai", "dao", "ELLA", "fah"];
    let last = ["smith", "NGUYEN", "Tanaka", "kim"];
    let mut clean_customers = BTreeMap::new(); // id -> "name|dob|email"
    let mut values = Vec::new();
    for id in 1..=40i64 {
        let (f, l) = (first[g.next(6) as usize], last[g.next(4) as usize]);
        let name = format!("  {f} {l} ");
        let (y, m, d) = (1960 + g.next(40), 1 + g.next(12), 1 + g.next(28));
        let (dob, clean_dob) = match g.next(4) {
            0 => (format!("{y}-{m:02}-{d:02}"), format!("{y}-{m:02}-{d:02}")),
            1 => (format!("{d:02}/{m:02}/{y}"), format!("{y}-{m:02}-{d:02}")),
            2 => ("not a date".to_string(), String::new()),
            _ => (String::new(), String::new()),
        };
        let email = format!(" {}.{}@Example.COM", f, l);
        let cap = |w: &str| {
            let w = w.to_lowercase();
            let mut c = w.chars();
            c.next()
                .map(|h| h.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        };
        clean_customers.insert(
            id,
            format!(
                "{} {}|{clean_dob}|{}",
                cap(f),
                cap(l),
                email.trim().to_lowercase()
            ),
        );
        values.push(format!("({id}, '{name}', '{dob}', '{email}')"));
    }
    exec(
        &client,
        &format!("INSERT INTO customers VALUES {}", values.join(", ")),
    )
    .await;

    // The batch and serving layers: cleaning, then the points, each tick.
    exec(
        &client,
        "CREATE SCHEDULE clean_customers EVERY '2 seconds' AS
           INSERT INTO customers_cln SELECT customer_id, initcap(trim(name)),
             try_to_date(trim(date_of_birth), '%Y-%m-%d', '%d/%m/%Y'), lower(trim(email))
           FROM customers;
         CREATE SCHEDULE loyalty_points EVERY '2 seconds' AFTER clean_customers AS
           INSERT INTO loyalty SELECT c.customer_id, CAST(date_trunc('day', t.ts) AS DATE),
             count(*), sum(CAST(floor(t.price / 10) AS BIGINT))
           FROM transactions_cln t JOIN customers_cln c ON t.customer_id = c.customer_id
           GROUP BY c.customer_id, CAST(date_trunc('day', t.ts) AS DATE);
         CREATE JOB clean_orders AS INSERT INTO transactions_cln
           SELECT _partition, _offset, customer_id, lower(trim(item)), price, ts FROM orders
           WHERE price > 0",
    )
    .await;

    // The speed layer: orders of known and unknown customers over three days, some without a
    // price, sent while the schedules run.
    let items = [" Latte", "MOCHA ", "green Tea", "espresso"];
    let mut points: BTreeMap<(i64, String), (i64, i64)> = BTreeMap::new();
    let day0 = 1_717_200_000i64; // 2024-06-01T00:00:00Z
    for _ in 0..4 {
        let mut values = Vec::new();
        for _ in 0..150 {
            let customer = 1 + g.next(45) as i64;
            let cents = g.next(20_000) as i64;
            let price = if g.next(10) == 0 {
                0.0
            } else {
                cents as f64 / 100.0
            };
            let ts = day0 + g.next(3 * 86_400) as i64;
            let item = items[g.next(4) as usize];
            values.push(format!(
                "({customer}, '{item}', {price:.2}, to_timestamp_seconds({ts}))"
            ));
            if price > 0.0 && customer <= 40 {
                let day = (ts - day0) / 86_400 + 1;
                let e = points
                    .entry((customer, format!("2024-06-{day:02}")))
                    .or_default();
                e.0 += 1;
                e.1 += (price / 10.0).floor() as i64;
            }
        }
        exec(
            &client,
            &format!(
                "INSERT INTO orders (customer_id, item, price, ts) VALUES {}",
                values.join(", ")
            ),
        )
        .await;
    }

    let want_customers: Vec<String> = clean_customers
        .iter()
        .map(|(id, rest)| format!("{id}|{rest}"))
        .collect();
    let want_loyalty: Vec<String> = points
        .iter()
        .map(|((c, d), (n, p))| format!("{c}|{d}|{n}|{p}"))
        .collect();
    let mut last = (Vec::new(), Vec::new());
    let done = tokio::time::timeout(WAIT, async {
        loop {
            let c = rows(
                &client,
                "SELECT customer_id, name, date_of_birth, email FROM customers_cln ORDER BY 1",
            )
            .await;
            let l = rows(
                &client,
                "SELECT customer_id, data_dt, orders, points FROM loyalty ORDER BY 1, 2",
            )
            .await;
            if let (Ok(c), Ok(l)) = (c, l) {
                if c == want_customers && l == want_loyalty {
                    return;
                }
                last = (c, l);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    if done.is_err() {
        let diff = |got: &[String], want: &[String]| -> Vec<String> {
            got.iter()
                .zip(want)
                .filter(|(a, b)| a != b)
                .take(5)
                .map(|(a, b)| format!("got {a} / want {b}"))
                .collect()
        };
        panic!(
            "seed 000 never matched: customers_cln {} rows (want {}) {:?}; loyalty {} rows \
             (want {}) {:?}",
            last.0.len(),
            want_customers.len(),
            diff(&last.0, &want_customers),
            last.1.len(),
            want_loyalty.len(),
            diff(&last.1, &want_loyalty)
        );
    }
    // The questions: top customers by points, a customer's history.
    let top = rows(
        &client,
        "SELECT customer_id, sum(points) FROM loyalty GROUP BY customer_id ORDER BY 2 DESC, 1 LIMIT 3",
    )
    .await
    .expect("top customers");
    assert_eq!(top.len(), 3, "{top:?}");
    let ok_runs = value(
        &client,
        "SELECT count(*) FROM \"__schedule_runs\" WHERE schedule = 'loyalty_points' \
         AND status = 'succeeded'",
    )
    .await;
    assert!(ok_runs.parse::<i64>().expect("a count") >= 1);
    cluster.shutdown().await;
}
