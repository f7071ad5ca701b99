//! SQL with real `weir-node` processes: a node SIGKILLed while a query runs — the node running it,
//! or one leading regions it reads — makes the query fail with an error or answer whole, never
//! hand over part of a result as if it were complete; and the cluster answers again once the
//! regions have moved.

use std::time::Duration;

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
    let schema = TableSchema::parse("id BIGINT, k INT, v BIGINT", &["id".into()]).unwrap();
    let splits: Vec<Vec<Value>> = [15_000, 30_000, 45_000]
        .iter()
        .map(|k| vec![Value::Int(*k)])
        .collect();
    client
        .create_table_split_at("t", &schema, 3, 0, &splits)
        .await
        .expect("table split in four regions");
    let mut insert = client
        .sql(&format!(
            "INSERT INTO t SELECT value, CAST(value % 100 AS INT), value * 7 \
             FROM generate_series(1, {ROWS})"
        ))
        .await
        .expect("insert starts");
    while insert.next().await.expect("insert runs").is_some() {}
    let want_sum = 7 * ROWS * (ROWS + 1) / 2;
    let want = vec![ROWS.to_string(), want_sum.to_string()];
    let aggregate = "SELECT count(*), sum(v) FROM t";
    // However small the table, queries run across the nodes leading its regions (a setting of
    // the session, sent with each request).
    let distributed = SqlSession {
        settings: [("weir.bytes_per_task".to_string(), "1".to_string())].into(),
        ..SqlSession::default()
    };

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
