//! Schedules on a three-node cluster: a schedule that runs `AFTER` another runs each tick only
//! once the other has finished it; pause and resume; a failing statement retried with its error
//! kept; a run asked for now; bad definitions refused at `CREATE SCHEDULE`.

use std::time::Duration;

use weir_client::Client;
use weir_tests::{sql_lines as rows, wait_until, InProcessCluster};

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

const ORDERED: &str = "SELECT count(*), \
     sum(CASE WHEN l.status = 'succeeded' AND l.ended <= s.started THEN 1 ELSE 0 END) \
     FROM \"__schedule_runs\" s LEFT JOIN \"__schedule_runs\" l \
       ON l.schedule = 'load' AND l.tick = s.tick \
     WHERE s.schedule = 'sumup' AND s.status = 'succeeded'";

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
    let ordered = value(&client, ORDERED).await;
    let (runs, in_order) = ordered.split_once('|').expect("two values");
    assert_eq!(
        runs, in_order,
        "runs of sumup that did not follow load's: {ordered}"
    );
    assert_eq!(
        value(&client, "SELECT n, total FROM summary").await,
        "100|50500"
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

    // A statement that fails at run time: retried with back-off, its error kept.
    exec(
        &client,
        "CREATE SCHEDULE broken EVERY '1 hour' AS
           INSERT INTO summary SELECT 2, count(*), sum(v) / (min(v) - 10) FROM src",
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
