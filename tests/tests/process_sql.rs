//! SQL with real `weir-node` processes: a node SIGKILLed while a query runs — the node running it,
//! or one leading regions it reads — makes the query fail with an error or answer whole, never
//! hand over part of a result as if it were complete; and the cluster answers again once the
//! regions have moved. A query running across the nodes that its client cancels stops on every
//! one of them.

use std::time::{Duration, Instant};

use weir_client::{Client, ClientError, SqlEvent, SqlSession, TableSchema, Value};
use weir_tests::{members_up, wait_until, ProcessCluster};

const ROWS: i64 = 60_000;

/// What a query's stream delivered before it ended.
#[derive(Debug)]
struct Outcome {
    /// Rows received.
    rows: usize,
    /// The values of the first row, as text (the answer of an aggregate).
    values: Vec<String>,
    /// Whether the statement's end was reported.
    done: bool,
    /// The error that ended the stream, if one did.
    error: Option<ClientError>,
}

/// Reads `stream` to its end, calling `first_batch` once when the first rows arrive.
async fn drain(mut stream: weir_client::SqlStream, mut first_batch: impl FnMut()) -> Outcome {
    let mut out = Outcome {
        rows: 0,
        values: Vec::new(),
        done: false,
        error: None,
    };
    let mut called = false;
    loop {
        match stream.next().await {
            Ok(Some(SqlEvent::Batch { batch, .. })) => {
                out.rows += batch.num_rows();
                if out.values.is_empty() && batch.num_rows() > 0 {
                    out.values = (0..batch.num_columns())
                        .map(|c| value_text(batch.column(c).as_ref()))
                        .collect();
                }
                if !called {
                    called = true;
                    first_batch();
                }
            }
            Ok(Some(SqlEvent::Done { .. })) => out.done = true,
            Ok(Some(SqlEvent::Schema { .. })) => {}
            Ok(None) => return out,
            Err(e) => {
                out.error = Some(e);
                return out;
            }
        }
    }
}

/// The first value of a column as text.
fn value_text(array: &dyn datafusion::arrow::array::Array) -> String {
    datafusion::arrow::util::display::array_value_to_string(array, 0).unwrap_or_default()
}

/// Table `t (id BIGINT, k INT, v BIGINT)` keyed by `id`, 3 replicas, split at `splits`, with the
/// rows `insert` writes.
async fn table_t(client: &Client, splits: &[i64], insert: &str) {
    let schema = TableSchema::parse("id BIGINT, k INT, v BIGINT", &["id".into()]).unwrap();
    let splits: Vec<Vec<Value>> = splits.iter().map(|k| vec![Value::Int(*k)]).collect();
    client
        .create_table_split_at("t", &schema, 3, 0, &splits)
        .await
        .expect("table split");
    let mut rows = client.sql(insert).await.expect("insert starts");
    while rows.next().await.expect("insert runs").is_some() {}
}

/// A session whose queries run across the nodes leading the regions they read, however small
/// the tables (a setting sent with each request).
fn distributed() -> SqlSession {
    SqlSession {
        settings: [("weir.bytes_per_task".to_string(), "1".to_string())].into(),
        ..SqlSession::default()
    }
}

/// The port node `i` serves Postgres on.
fn pg_port(cluster: &ProcessCluster, i: usize) -> u16 {
    cluster.nodes[i]
        .pg
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a Postgres port")
}

async fn all_up(cluster: &ProcessCluster) {
    let first = cluster.addr(0);
    wait_until("3 members up", Duration::from_secs(120), || {
        let first = first.clone();
        async move { (members_up(&first).await == 3).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_killed_during_a_query_fails_it_or_answers_whole() {
    let mut cluster = ProcessCluster::start(3, &[]);
    all_up(&cluster).await;
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    table_t(
        &client,
        &[15_000, 30_000, 45_000],
        &format!(
            "INSERT INTO t SELECT value, CAST(value % 100 AS INT), value * 7 \
             FROM generate_series(1, {ROWS})"
        ),
    )
    .await;
    let want_sum = 7 * ROWS * (ROWS + 1) / 2;
    let want = vec![ROWS.to_string(), want_sum.to_string()];
    let aggregate = "SELECT count(*), sum(v) FROM t";
    let distributed = distributed();

    // 1. The node running the query dies while the rows stream back.
    let runner = Client::connect(cluster.addr(2)).await.unwrap();
    let stream = runner
        .sql_in("SELECT id, v FROM t ORDER BY id", &distributed)
        .await
        .expect("query starts");
    let mut victim = Some(2usize);
    let cluster_ref = &mut cluster;
    let out = drain(stream, || {
        if let Some(i) = victim.take() {
            cluster_ref.kill(i);
        }
    })
    .await;
    assert!(
        out.error.is_some() || (out.done && out.rows == ROWS as usize),
        "a cut-off result must end in an error: {out:?}"
    );
    if let Some(e) = &out.error {
        eprintln!("query on the killed node: {} rows, then: {e}", out.rows);
    }
    cluster.restart(2);
    all_up(&cluster).await;

    // 2. A node leading regions dies while another node runs aggregates over every region.
    let answered = wait_until("a whole answer", Duration::from_secs(120), || async {
        let out = drain(client.sql_in(aggregate, &distributed).await.ok()?, || {}).await;
        (out.done && out.error.is_none()).then_some(out)
    })
    .await;
    assert_eq!(answered.values, want);
    // The same over Postgres, whose statements datafusion-postgres runs: the same plans across
    // the cluster, the same fall-back to the planning node.
    let (pg, pg_conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=weir", pg_port(&cluster, 0)),
        tokio_postgres::NoTls,
    )
    .await
    .expect("a Postgres connection");
    let pg_conn = tokio::spawn(pg_conn);
    pg.batch_execute("SET weir.bytes_per_task = 1")
        .await
        .expect("SET over Postgres");
    let mut killed = false;
    let mut errors = 0;
    let mut pg_errors = 0;
    for round in 0..8 {
        match pg.simple_query(aggregate).await {
            Ok(messages) => {
                let values: Vec<String> = messages
                    .iter()
                    .find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                            (0..r.len())
                                .map(|i| r.get(i).unwrap_or_default().to_string())
                                .collect(),
                        ),
                        _ => None,
                    })
                    .unwrap_or_default();
                assert_eq!(values, want, "round {round}: a wrong answer over Postgres");
            }
            Err(e) => {
                pg_errors += 1;
                eprintln!("round {round}: failed over Postgres: {e:?}");
            }
        }
        let stream = match client.sql_in(aggregate, &distributed).await {
            Ok(s) => s,
            Err(e) => {
                errors += 1;
                eprintln!("round {round}: not started: {e}");
                continue;
            }
        };
        let out = drain(stream, || {}).await;
        match &out.error {
            Some(e) => {
                errors += 1;
                eprintln!("round {round}: failed: {e}");
            }
            None => {
                assert!(out.done, "round {round}: no end reported: {out:?}");
                assert_eq!(out.values, want, "round {round}: a wrong answer");
            }
        }
        if !killed {
            cluster.kill(1);
            killed = true;
        }
    }
    eprintln!(
        "{errors} of 8 queries failed while node 1 was killed ({pg_errors} of 8 over Postgres)"
    );
    eprintln!(
        "queries run again on the planning node: {}",
        cluster
            .log_text(0)
            .matches("a node of the query is unreachable")
            .count()
    );
    drop(pg);
    let _ = pg_conn.await;
    let after = wait_until(
        "answers after the failover",
        Duration::from_secs(120),
        || async {
            let out = drain(client.sql_in(aggregate, &distributed).await.ok()?, || {}).await;
            (out.done && out.error.is_none()).then_some(out)
        },
    )
    .await;
    assert_eq!(after.values, want, "the answer after the failover");
}

/// CPU time (user and system) process `pid` has used, in clock ticks (1/100 s on Linux).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    Some(user + system)
}

/// The share of one core each node used over the next second.
async fn cpu_use(cluster: &ProcessCluster) -> Vec<f64> {
    let pids: Vec<u32> = cluster.nodes.iter().filter_map(|n| n.pid()).collect();
    let before: Vec<u64> = pids.iter().map(|p| cpu_ticks(*p).unwrap_or(0)).collect();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seconds = started.elapsed().as_secs_f64();
    pids.iter()
        .zip(before)
        .map(|(p, b)| cpu_ticks(*p).unwrap_or(b).saturating_sub(b) as f64 / 100.0 / seconds)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_query_stops_on_every_node_it_runs_on() {
    let cluster = ProcessCluster::start(3, &[]);
    all_up(&cluster).await;
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    table_t(
        &client,
        &[5_000, 10_000],
        "INSERT INTO t SELECT value, CAST(value % 20 AS INT), value + 0 \
         FROM generate_series(1, 15000)",
    )
    .await;
    let distributed = distributed();
    // Three joins on a key of 20 values: 15,000 × 750 × 750 matches per key, hours of work
    // spread over the nodes by hash shuffles.
    let endless = "SELECT count(*) FROM t a JOIN t b ON a.k = b.k JOIN t c ON b.k = c.k \
                   WHERE a.v + b.v + c.v < 0";
    let mut explain = client
        .sql_in(&format!("EXPLAIN {endless}"), &distributed)
        .await
        .expect("EXPLAIN runs");
    let mut plan = String::new();
    while let Some(e) = explain.next().await.expect("EXPLAIN runs") {
        if let SqlEvent::Batch { batch, .. } = e {
            plan.push_str(
                &datafusion::arrow::util::pretty::pretty_format_batches(&[batch])
                    .expect("printable")
                    .to_string(),
            );
        }
    }
    assert!(
        plan.contains("DistributedExec"),
        "planned across the nodes: {plan}"
    );
    let mut stream = client
        .sql_in(endless, &distributed)
        .await
        .expect("the query starts");
    let running = tokio::spawn(async move {
        let mut events = Vec::new();
        loop {
            match stream.next().await {
                Ok(Some(e)) => events.push(format!("{e:?}")),
                Ok(None) => return Ok(events),
                Err(e) => return Err(e),
            }
        }
    });
    // Work on a node other than the planning node: tasks were sent there.
    let busy = wait_until(
        "the query's tasks busy on another node",
        Duration::from_secs(120),
        || async {
            let used = cpu_use(&cluster).await;
            (used.iter().skip(1).any(|u| *u > 0.3)).then_some(used)
        },
    )
    .await;
    eprintln!("CPU per node while the query runs: {busy:?}");
    if running.is_finished() {
        let outcome = running.await.expect("the query's task");
        panic!("the endless query ended: {outcome:?}");
    }
    // The client cancels: its stream is dropped (what Ctrl-C in `weir sql` does).
    running.abort();
    let _ = running.await;
    let used = wait_until(
        "every node idle again after the cancel",
        Duration::from_secs(60),
        || async {
            let used = cpu_use(&cluster).await;
            used.iter().all(|u| *u < 0.15).then_some(used)
        },
    )
    .await;
    eprintln!("CPU per node after the cancel: {used:?}");
    // And the cluster answers the next query.
    let out = drain(
        client
            .sql_in("SELECT count(*) FROM t", &distributed)
            .await
            .unwrap(),
        || {},
    )
    .await;
    assert_eq!(out.values, vec!["15000".to_string()], "{out:?}");
}
