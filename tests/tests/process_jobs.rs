//! A stream job under SIGKILL with real `weir-node` processes: 200,000 records produced into a
//! six-partition topic while the node running most of the job's tasks is killed and later
//! restarted, and the sink's regions split; at the end the sink equals the job's `SELECT` run as
//! a batch over the topic, exactly. Also a chain of jobs through a topic (its last job keeping a
//! `count(DISTINCT)`) under a kill, a scheduled run whose node is killed mid-run, and job
//! statements sent while the metadata group elects a new leader.

use std::collections::BTreeMap;
use std::time::Duration;

use weir_client::Client;
use weir_tests::{members_up, node_id_of, sql_lines as rows, wait_until, ProcessCluster};

const RECORDS: i64 = 200_000;
const CHUNK: i64 = 10_000;

/// Runs `sql`, retrying while the cluster fails over (a statement that failed wrote nothing that
/// matters here: record inserts are retried only when they failed before reaching the topic).
async fn exec(client: &Client, sql: &str) {
    wait_until(sql, Duration::from_secs(120), || async {
        match rows(client, sql).await {
            Ok(_) => Some(()),
            Err(e) => {
                eprintln!("retrying {sql}: {e}");
                None
            }
        }
    })
    .await;
}

/// The node running the most of these tasks (the lowest id among equals).
fn busiest(nodes: &[u64]) -> u64 {
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for n in nodes {
        *per_node.entry(*n).or_default() += 1;
    }
    per_node
        .iter()
        .max_by_key(|(n, c)| (**c, u64::MAX - **n))
        .map(|(n, _)| *n)
        .expect("a node")
}

const SINK: &str = "SELECT bucket, n, total, smallest, biggest FROM totals ORDER BY bucket";
const BATCH: &str = "SELECT id % 5000, count(*), sum(v), min(v), max(v) FROM events \
                     WHERE v % 7 <> 0 GROUP BY id % 5000 ORDER BY 1";

/// The process index of the node with id `id` (ids follow the order joins reached the metadata
/// leader, which need not be the order the processes started in).
async fn index_of(cluster: &ProcessCluster, client: &Client, id: u64) -> usize {
    for i in 0..cluster.nodes.len() {
        if node_id_of(client, &cluster.addr(i)).await == id {
            return i;
        }
    }
    panic!("node {id} is not one of the cluster's processes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_by_job_is_exact_after_a_kill_and_a_sink_split() {
    let mut cluster = ProcessCluster::start(3, &[]);
    cluster.wait_members_up(3, Duration::from_secs(120)).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC events (id BIGINT NOT NULL, v BIGINT NOT NULL)
           WITH (partitions = 6, replicas = 3, format = 'json');
         CREATE TABLE totals (bucket BIGINT, n BIGINT, total BIGINT, smallest BIGINT,
           biggest BIGINT, PRIMARY KEY (bucket)) WITH (split_bytes = 65536);
         CREATE JOB totals_job AS INSERT INTO totals
           SELECT id % 5000, count(*), sum(v), min(v), max(v) FROM events
           WHERE v % 7 <> 0 GROUP BY id % 5000",
    )
    .await;
    // Every task placed; the node with the most is the one to kill.
    let nodes: Vec<u64> = wait_until("tasks placed", Duration::from_secs(60), || async {
        let shown = rows(&client, "SHOW JOBS").await.ok()?;
        let line = shown.first()?;
        // job | running | source | sink | tasks | nodes | statement
        let field = line.split('|').nth(5)?;
        let ids: Vec<u64> = field.split(',').filter_map(|n| n.parse().ok()).collect();
        (ids.len() == 6).then_some(ids)
    })
    .await;
    let busiest = busiest(&nodes);
    let victim = index_of(&cluster, &client, busiest).await;
    let producer_node = (victim + 1) % 3;
    let producer = Client::connect(cluster.addr(producer_node))
        .await
        .expect("connects");

    let mut from = 1;
    let mut killed = false;
    while from <= RECORDS {
        let to = from + CHUNK - 1;
        exec(
            &producer,
            &format!(
                "INSERT INTO events (id, v) SELECT value, (value * 7919) % 1000 FROM generate_series({from}, {to})"
            ),
        )
        .await;
        from = to + 1;
        if !killed && from > RECORDS / 3 {
            cluster.kill(victim);
            killed = true;
            // Its tasks move to the live nodes once it is missed.
            wait_until(
                "tasks moved off the killed node",
                Duration::from_secs(120),
                || {
                    let producer = producer.clone();
                    async move {
                        let shown = rows(&producer, "SHOW JOBS").await.ok()?;
                        let field = shown.first()?.split('|').nth(5)?.to_string();
                        let moved = field.split(',').all(|n| n != busiest.to_string());
                        moved.then_some(())
                    }
                },
            )
            .await;
        }
        if killed && from > 2 * RECORDS / 3 && !cluster.nodes[victim].is_running() {
            cluster.restart(victim);
        }
    }
    let produced = rows(&producer, "SELECT count(*) FROM events")
        .await
        .expect("count");
    assert_eq!(
        produced,
        vec![RECORDS.to_string()],
        "each chunk appended once"
    );

    let addr = cluster.addr(producer_node);
    wait_until("the restarted node up", Duration::from_secs(120), || {
        let addr = addr.clone();
        async move { (members_up(&addr).await == 3).then_some(()) }
    })
    .await;
    let mut last = (Vec::new(), Vec::new());
    let equal = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            if let (Ok(s), Ok(b)) = (rows(&producer, SINK).await, rows(&producer, BATCH).await) {
                if s == b && !b.is_empty() {
                    return;
                }
                last = (s, b);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if equal.is_err() {
        let diff: Vec<String> = last
            .0
            .iter()
            .zip(&last.1)
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("sink {a} / batch {b}"))
            .collect();
        panic!(
            "the sink never equalled the batch ({} vs {} rows); first differences:\n{}",
            last.0.len(),
            last.1.len(),
            diff.join("\n")
        );
    }
    let regions = producer
        .describe_table("totals")
        .await
        .expect("describe")
        .regions
        .len();
    assert!(regions > 1, "the sink split ({regions} region)");
}

/// A scheduled run whose node is killed mid-run is claimed again by another node once its lease
/// has passed, and the history shows exactly one successful run for the tick.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_run_whose_node_dies_is_retried_elsewhere_once() {
    let mut cluster = ProcessCluster::start(3, &[]);
    cluster.wait_members_up(3, Duration::from_secs(120)).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    // Paused, so only the run asked for runs: a test crossing the hour would see the hour's tick.
    exec(
        &client,
        "CREATE TABLE marks (id BIGINT, n BIGINT, PRIMARY KEY (id));
         CREATE SCHEDULE slow EVERY '1 hour' AS
           INSERT INTO marks SELECT 1, count(*) FROM generate_series(1, 10)
           WHERE pg_sleep(4) IS NULL;
         ALTER SCHEDULE slow PAUSE;
         RUN SCHEDULE slow",
    )
    .await;
    // schedule | tick | status | attempt | node | started | ended | rows | error | manual
    let running = wait_until("the run to start", Duration::from_secs(60), || async {
        let r = rows(&client, "SHOW RUNS FOR slow").await.ok()?;
        let f: Vec<String> = r.first()?.split('|').map(str::to_string).collect();
        (f[2] == "running").then_some(f)
    })
    .await;
    let (tick, first_node): (String, u64) = (running[1].clone(), running[4].parse().expect("node"));
    let victim = index_of(&cluster, &client, first_node).await;
    cluster.kill(victim);
    let survivor = Client::connect(cluster.addr((victim + 1) % 3))
        .await
        .expect("connects");
    let done = wait_until(
        "the run to succeed on another node",
        Duration::from_secs(120),
        || async {
            let r = rows(&survivor, "SHOW RUNS FOR slow").await.ok()?;
            let f: Vec<String> = r.first()?.split('|').map(str::to_string).collect();
            (f[2] == "succeeded").then_some(f)
        },
    )
    .await;
    assert_eq!(done[1], tick, "the same tick was finished: {done:?}");
    let attempt: i64 = done[3].parse().expect("attempt");
    assert!(attempt >= 2, "a second attempt ran it: {done:?}");
    assert_ne!(
        done[4],
        first_node.to_string(),
        "another node ran it: {done:?}"
    );
    assert_eq!(done[7], "1", "{done:?}");
    assert_eq!(
        rows(&survivor, "SELECT id, n FROM marks")
            .await
            .expect("marks"),
        vec!["1|10"]
    );
    // The killed node comes back: it does not run or record the tick again.
    cluster.restart(victim);
    cluster.wait_members_up(3, Duration::from_secs(120)).await;
    let history = rows(
        &survivor,
        "SELECT status, attempt FROM \"__schedule_runs\" WHERE schedule = 'slow'",
    )
    .await
    .expect("history");
    assert_eq!(history, vec![format!("succeeded|{attempt}")]);
    // Each claim took the schedule's lease with the next fencing token (a claim that lost its
    // tick's row to another writer took one too, so the last attempt's token is at least its
    // number); the last attempt gives the lease back once its outcome is recorded (which the
    // history may show first).
    let freed = format!("{attempt}|{}|free", done[4]);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let token: i64 = loop {
        let lease = rows(
            &survivor,
            "SELECT token, attempt, node, \
               CASE WHEN lease_until IS NULL THEN 'free' ELSE 'held' END \
             FROM \"__schedule_leases\"",
        )
        .await;
        if let Ok([row]) = lease.as_deref() {
            if let Some((token, rest)) = row.split_once('|') {
                if rest == freed {
                    break token.parse().expect("token");
                }
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease was not given back ({freed} expected after the token): {lease:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(token >= attempt, "token {token} below attempt {attempt}");
}

/// A chain of jobs, topic → job → topic → job → table, under SIGKILL: the middle topic holds each
/// cleaned record exactly once (the first job's batches are numbered by the source offsets they
/// reach, so a replay's batches are refused as duplicates), and the table equals the batch
/// query over the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_of_jobs_through_a_topic_is_exact_after_a_kill() {
    const N: i64 = 60_000;
    const STEP: i64 = 5_000;
    let mut cluster = ProcessCluster::start(3, &[]);
    cluster.wait_members_up(3, Duration::from_secs(120)).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC raw (id BIGINT NOT NULL, v BIGINT NOT NULL)
           WITH (partitions = 4, replicas = 3, format = 'json');
         CREATE TOPIC cleaned (id BIGINT NOT NULL, v BIGINT NOT NULL)
           WITH (partitions = 3, replicas = 3, format = 'json');
         CREATE TABLE sums (bucket BIGINT, n BIGINT, total BIGINT, kinds BIGINT,
           PRIMARY KEY (bucket));
         CREATE JOB clean AS INSERT INTO cleaned SELECT id, v * 2 FROM raw WHERE v % 5 <> 0;
         CREATE JOB sum AS INSERT INTO sums
           SELECT id % 100, count(*), sum(v), count(DISTINCT v % 7) FROM cleaned
           GROUP BY id % 100",
    )
    .await;
    // The node running most of the first job's tasks is the one to kill.
    let nodes: Vec<u64> = wait_until("tasks placed", Duration::from_secs(60), || async {
        let shown = rows(&client, "SHOW JOBS").await.ok()?;
        let line = shown.iter().find(|l| l.starts_with("clean|"))?;
        let field = line.split('|').nth(5)?;
        let ids: Vec<u64> = field.split(',').filter_map(|n| n.parse().ok()).collect();
        (ids.len() == 4).then_some(ids)
    })
    .await;
    let busiest = busiest(&nodes);
    let victim = index_of(&cluster, &client, busiest).await;
    let producer = Client::connect(cluster.addr((victim + 1) % 3))
        .await
        .expect("connects");
    // Records go in while the kill lands, so the killed tasks die with batches appended to the
    // middle topic but not yet committed.
    let feeding = tokio::spawn({
        let producer = producer.clone();
        async move {
            let mut from = 1;
            while from <= N {
                let to = from + STEP - 1;
                exec(
                    &producer,
                    &format!(
                        "INSERT INTO raw (id, v) SELECT value, (value * 7919) % 1000 \
                         FROM generate_series({from}, {to})"
                    ),
                )
                .await;
                from = to + 1;
            }
        }
    });
    let count_of = |sql: &'static str, at_least: i64| {
        let producer = producer.clone();
        async move {
            wait_until(sql, Duration::from_secs(300), || async {
                let n: i64 = rows(&producer, sql).await.ok()?.first()?.parse().ok()?;
                (n >= at_least).then_some(())
            })
            .await
        }
    };
    count_of("SELECT count(*) FROM cleaned", N / 4).await;
    cluster.kill(victim);
    count_of("SELECT count(*) FROM raw", 3 * N / 4).await;
    cluster.restart(victim);
    feeding.await.expect("records produced");
    let expected_rows = rows(&producer, "SELECT count(*) FROM raw WHERE v % 5 <> 0")
        .await
        .expect("count")[0]
        .clone();
    // Every cleaned record once: as many records as distinct ids, as many as the source has.
    let counted = wait_until(
        "the middle topic to hold every cleaned record",
        Duration::from_secs(300),
        || async {
            let c = rows(
                &producer,
                "SELECT count(*), count(DISTINCT id) FROM cleaned",
            )
            .await
            .ok()?;
            let (all, distinct) = c.first()?.split_once('|')?;
            (distinct == expected_rows || all != distinct)
                .then(|| (all.to_string(), distinct.to_string()))
        },
    )
    .await;
    assert_eq!(
        counted,
        (expected_rows.clone(), expected_rows.clone()),
        "records of the middle topic (all, distinct)"
    );
    const SINK: &str = "SELECT bucket, n, total, kinds FROM sums ORDER BY bucket";
    const BATCH: &str = "SELECT id % 100, count(*), sum(v * 2), count(DISTINCT (v * 2) % 7) \
                         FROM raw WHERE v % 5 <> 0 GROUP BY id % 100 ORDER BY 1";
    let want = rows(&producer, BATCH).await.expect("batch");
    let mut last = Vec::new();
    let equal = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            if let Ok(s) = rows(&producer, SINK).await {
                if s == want {
                    return;
                }
                last = s;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if equal.is_err() {
        let diff: Vec<String> = last
            .iter()
            .zip(&want)
            .filter(|(a, b)| a != b)
            .take(10)
            .map(|(a, b)| format!("sink {a} / batch {b}"))
            .collect();
        panic!(
            "the table never equalled the batch ({} vs {} rows); first differences:\n{}",
            last.len(),
            want.len(),
            diff.join("\n")
        );
    }
}

/// Job statements read the catalog as the cluster has it: sent to a surviving node right after
/// the metadata group's leader was killed, they wait for the new leader instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn job_statements_ride_out_an_election_of_the_metadata_group() {
    let mut cluster = ProcessCluster::start(3, &[]);
    // Also waits for three voters in the metadata group, so it can lose its leader.
    cluster.wait_members_up(3, Duration::from_secs(120)).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    let leader = client
        .cluster_status()
        .await
        .expect("status")
        .metadata_leader;
    let dead = index_of(&cluster, &client, leader).await;
    let survivor = Client::connect(cluster.addr((dead + 1) % 3))
        .await
        .expect("client of a survivor");
    rows(&survivor, "SHOW JOBS")
        .await
        .expect("SHOW JOBS before the kill");

    cluster.kill(dead);
    for statement in ["SHOW JOBS", "SHOW SCHEDULES"] {
        let answer = rows(&survivor, statement).await;
        assert!(
            answer.is_ok(),
            "{statement} while the metadata group elects a leader: {answer:?}"
        );
    }
    let now = survivor
        .cluster_status()
        .await
        .expect("status")
        .metadata_leader;
    assert_ne!(now, leader, "a new metadata leader answered");
}
