//! Stream jobs on a three-node cluster: a `GROUP BY` job with a lookup join and a plain job, each
//! checked against the same `SELECT` run as a batch over the records consumed; stop and start;
//! bad statements refused at `CREATE JOB`.

use std::time::Duration;

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use weir_client::{Client, Producer, ProducerConfig, SqlEvent};
use weir_tests::{wait_until, InProcessCluster};

/// The rows of the last statement of `sql`, as text lines without the table frame.
async fn rows(client: &Client, sql: &str) -> Result<Vec<String>, weir_client::ClientError> {
    let mut stream = client.sql(sql).await?;
    let mut batches: Vec<RecordBatch> = Vec::new();
    let mut last = 0;
    while let Some(e) = stream.next().await? {
        if let SqlEvent::Batch { statement, batch } = e {
            if statement != last {
                batches.clear();
                last = statement;
            }
            batches.push(batch);
        }
    }
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(Vec::new());
    }
    let text = pretty_format_batches(&batches)
        .expect("printable")
        .to_string();
    Ok(text
        .lines()
        .skip(3)
        .filter(|l| !l.starts_with('+'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect())
}

async fn exec(client: &Client, sql: &str) {
    rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Waits until `job_query` (the sink) and `batch_query` (the same SELECT as a batch) agree and
/// the batch has `min_rows` rows at least.
async fn wait_equal(client: &Client, what: &str, sink: &str, batch: &str, min_rows: usize) {
    let mut last = (Vec::new(), Vec::new());
    let result = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let (s, b) = (rows(client, sink).await, rows(client, batch).await);
            if let (Ok(s), Ok(b)) = (s, b) {
                if s == b && b.len() >= min_rows {
                    return;
                }
                last = (s, b);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    if result.is_err() {
        panic!(
            "{what}: the sink never equalled the batch query\nsink:\n{}\nbatch:\n{}",
            last.0.join("\n"),
            last.1.join("\n")
        );
    }
}

const SINK: &str = "SELECT district, month, n, total, biggest, smallest, round(mean, 6), \
                    with_amount FROM by_district ORDER BY district, month";
const BATCH: &str = "SELECT a.district, date_trunc('month', t.ts), count(*), sum(t.amount), \
                     max(t.amount), min(t.amount), round(avg(t.amount), 6), count(t.amount) \
                     FROM trans t JOIN account a ON t.account_id = a.account_id \
                     WHERE t.trans_id % 10 <> 3 \
                     GROUP BY a.district, date_trunc('month', t.ts) ORDER BY 1, 2";
const CLEAN_SINK: &str = "SELECT trans_id, account_id, amount FROM clean ORDER BY trans_id";
const CLEAN_BATCH: &str = "SELECT trans_id, account_id, amount * 2 FROM trans \
                           WHERE amount IS NOT NULL ORDER BY trans_id";

fn produce(from: i64, to: i64) -> String {
    format!(
        "INSERT INTO trans (trans_id, account_id, amount, ts) SELECT value, value % 5, \
         CASE WHEN value % 13 = 0 THEN NULL ELSE CAST(value % 97 AS DOUBLE) - 3.0 END, \
         to_timestamp_seconds(1704067200 + value * 3600) \
         FROM generate_series({from}, {to})"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_jobs_keep_their_sinks_equal_to_the_batch_query() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    let other = Client::connect(cluster.addr(2)).await.expect("connects");
    exec(
        &client,
        "CREATE TABLE account (account_id BIGINT, district VARCHAR, PRIMARY KEY (account_id));
         INSERT INTO account VALUES (1, 'north'), (2, 'south'), (3, 'north'), (4, 'east');
         CREATE TOPIC trans (trans_id BIGINT NOT NULL, account_id BIGINT, amount DOUBLE, ts TIMESTAMP)
           WITH (partitions = 3, replicas = 3, format = 'json');
         CREATE TABLE by_district (district VARCHAR, month TIMESTAMP, n BIGINT, total DOUBLE,
           biggest DOUBLE, smallest DOUBLE, mean DOUBLE, with_amount BIGINT,
           PRIMARY KEY (district, month));
         CREATE TABLE clean (trans_id BIGINT, account_id BIGINT, amount DOUBLE, note VARCHAR,
           PRIMARY KEY (trans_id))",
    )
    .await;
    exec(&client, &produce(1, 1500)).await;

    // Refused at CREATE JOB, with the reason.
    for (bad, reason) in [
        (
            "CREATE JOB j AS INSERT INTO by_district SELECT a.district, count(*) FROM trans t \
             JOIN account a ON t.account_id = a.account_id GROUP BY a.district",
            "columns",
        ),
        (
            "CREATE JOB j AS INSERT INTO clean (account_id, trans_id) SELECT account_id, count(*) \
             FROM trans GROUP BY account_id",
            "key column",
        ),
        (
            "CREATE JOB j AS INSERT INTO clean SELECT * FROM account",
            "exactly one topic",
        ),
        (
            "CREATE JOB j AS INSERT INTO nowhere SELECT trans_id FROM trans",
            "does not exist",
        ),
        (
            "CREATE JOB j AS INSERT INTO clean (trans_id, amount) SELECT trans_id, make_array(amount) \
             FROM trans",
            "cannot be written",
        ),
    ] {
        let e = rows(&client, bad).await.expect_err(bad);
        assert!(
            e.to_string().contains(reason),
            "{bad}: expected an error about {reason}, got: {e}"
        );
    }

    exec(
        &client,
        "CREATE JOB trend AS INSERT INTO by_district
           SELECT a.district, date_trunc('month', t.ts) AS month, count(*), sum(t.amount),
                  max(t.amount), min(t.amount), avg(t.amount), count(t.amount)
           FROM trans t JOIN account a ON t.account_id = a.account_id
           WHERE t.trans_id % 10 <> 3
           GROUP BY a.district, date_trunc('month', t.ts);
         CREATE JOB cleaner AS INSERT INTO clean (trans_id, account_id, amount)
           SELECT trans_id, account_id, amount * 2 FROM trans WHERE amount IS NOT NULL",
    )
    .await;
    let shown = rows(&other, "SHOW JOBS").await.expect("show jobs");
    assert_eq!(shown.len(), 2, "{shown:?}");
    assert!(
        shown
            .iter()
            .any(|l| l.starts_with("cleaner|true|trans|clean|3|")),
        "{shown:?}"
    );
    // Records produced while the jobs run, among them some that are not JSON rows of the topic:
    // they go to the dead-letter topic with the reason, and the jobs go on.
    let producer = Producer::new(client.clone(), "trans", ProducerConfig::default())
        .await
        .expect("producer");
    for (i, bad) in ["not json", "{\"trans_id\": \"x\"}", "{\"amount\": 1}"]
        .iter()
        .enumerate()
    {
        drop(
            producer
                .send_to(i as u32, None, bad.as_bytes(), None)
                .await
                .expect("send"),
        );
    }
    producer.flush().await.expect("flush");
    exec(&other, &produce(1501, 3000)).await;
    wait_equal(&client, "trend", SINK, BATCH, 10).await;
    wait_equal(&client, "cleaner", CLEAN_SINK, CLEAN_BATCH, 2000).await;

    // Each job sent the three bad records (no replay happened here, so once each).
    let letters = wait_until("dead letters", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let l = rows(
                &client,
                "SELECT job, source_partition, reason FROM \"trans.dlq\" ORDER BY job, source_partition",
            )
            .await
            .ok()?;
            (l.len() >= 6).then_some(l)
        }
    })
    .await;
    assert_eq!(letters.len(), 6, "{letters:?}");
    assert!(letters[0].starts_with("cleaner|0|"), "{letters:?}");
    assert!(letters[5].starts_with("trend|2|"), "{letters:?}");

    // Stopped, the job keeps its place; started again, it catches up from there.
    exec(&client, "STOP JOB trend").await;
    let shown = rows(&client, "SHOW JOBS").await.expect("show jobs");
    assert!(
        shown.iter().any(|l| l.starts_with("trend|false|")),
        "{shown:?}"
    );
    exec(&client, &produce(3001, 4000)).await;
    exec(&client, "START JOB trend").await;
    wait_equal(&client, "trend after a restart", SINK, BATCH, 10).await;
    let described = wait_until("no lag", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let d = rows(&client, "DESCRIBE JOB trend").await.ok()?;
            d.iter().all(|l| l.ends_with("|0")).then_some(d)
        }
    })
    .await;
    assert_eq!(described.len(), 3, "{described:?}");

    // A job's topic and table cannot be dropped under it; a dropped job is gone.
    let e = rows(&client, "DROP TABLE by_district")
        .await
        .expect_err("in use");
    assert!(e.to_string().contains("drop the job first"), "{e}");
    exec(&client, "DROP JOB trend; DROP JOB IF EXISTS trend").await;
    let e = rows(&client, "DROP JOB trend").await.expect_err("gone");
    assert!(e.to_string().contains("does not exist"), "{e}");
    exec(&client, "DROP JOB cleaner; DROP TABLE by_district").await;
    cluster.shutdown().await;
}
