//! Stream jobs on a three-node cluster: a `GROUP BY` job with a lookup join and a plain job, each
//! checked against the same `SELECT` run as a batch over the records consumed; stop and start;
//! bad statements refused at `CREATE JOB`.

use std::time::Duration;

use weir_client::{Client, Producer, ProducerConfig};
use weir_tests::{sql_lines as rows, wait_until, Gen, InProcessCluster};

/// Columns of `DESCRIBE JOB`.
const LAG: usize = 5;
const READ: usize = 6;
const FAILED: usize = 9;
const LAST_ERROR: usize = 11;
const LATE: usize = 12;

/// Column `i` of a `|`-separated result line.
fn column(line: &str, i: usize) -> &str {
    line.split('|').nth(i).unwrap_or("")
}

async fn exec(client: &Client, sql: &str) {
    rows(client, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Checks that `sql` is refused with an error that says `reason`.
async fn refused(client: &Client, sql: &str, reason: &str) {
    let e = rows(client, sql).await.expect_err(sql);
    assert!(
        e.to_string().contains(reason),
        "{sql}: expected an error about {reason}, got: {e}"
    );
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
            "CREATE JOB j AS INSERT INTO claen SELECT trans_id FROM trans",
            "table or topic 'claen' does not exist; did you mean 'clean'?",
        ),
        (
            "CREATE JOB j AS INSERT INTO clean SELECT trans_id FROM tarns",
            "table or topic 'tarns' does not exist; did you mean 'trans'?",
        ),
        (
            "CREATE JOB j AS INSERT INTO clean (trans_id, amount) SELECT trans_id, make_array(amount) \
             FROM trans",
            "cannot be written",
        ),
    ] {
        refused(&client, bad, reason).await;
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
           SELECT trans_id, account_id, amount * 2 FROM trans WHERE amount IS NOT NULL;
         CREATE TABLE ratios (trans_id BIGINT, r BIGINT, PRIMARY KEY (trans_id));
         CREATE JOB divider AS INSERT INTO ratios
           SELECT trans_id, 1000 / (trans_id % 500) FROM trans",
    )
    .await;
    // Another node lists both once it has applied the catalog.
    let shown = wait_until("both jobs listed", Duration::from_secs(30), || {
        let other = other.clone();
        async move {
            let shown = rows(&other, "SHOW JOBS").await.ok()?;
            (shown.len() == 3).then_some(shown)
        }
    })
    .await;
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

    // Each job sent the three bad records, once each (letters are numbered by source offset).
    let letters = wait_until("dead letters", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let l = rows(
                &client,
                "SELECT job, source_partition, reason FROM \"trans.dlq\" WHERE job <> 'divider' \
                 ORDER BY job, source_partition",
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

    // A record whose value does not compute (a division by zero) goes to the dead-letter topic
    // with the error, found by retrying its batch record by record; the others land.
    wait_equal(
        &client,
        "divider",
        "SELECT count(*), sum(r) FROM ratios",
        "SELECT count(*), sum(1000 / (trans_id % 500)) FROM trans WHERE trans_id % 500 <> 0",
        1,
    )
    .await;
    let divided = wait_until("division letters", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let l = rows(
                &client,
                "SELECT source_offset, reason FROM \"trans.dlq\" WHERE job = 'divider' \
                 AND reason LIKE '%zero%'",
            )
            .await
            .ok()?;
            (l.len() >= 6).then_some(l)
        }
    })
    .await;
    assert_eq!(
        divided.len(),
        6,
        "trans_id 500, 1000, ... 3000: {divided:?}"
    );

    // Stopped, the job keeps its place; started again, it catches up from there.
    exec(&client, "STOP JOB trend").await;
    // STOP JOB returns once the tasks have stopped: no node reports one running.
    let d = rows(&client, "DESCRIBE JOB trend").await.expect("describe");
    assert!(
        d.len() == 3 && d.iter().all(|l| column(l, READ).is_empty()),
        "{d:?}"
    );
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
            d.iter().all(|l| column(l, LAG) == "0").then_some(d)
        }
    })
    .await;
    assert_eq!(described.len(), 3, "{described:?}");

    // A job's topic and table cannot be dropped under it; a dropped job is gone.
    let e = rows(&client, "DROP TABLE by_district")
        .await
        .expect_err("in use");
    assert!(e.to_string().contains("drop the job first"), "{e}");
    let e = rows(&client, "STOP JOB trnd").await.expect_err("misspelt");
    assert!(
        e.to_string()
            .contains("job 'trnd' does not exist; did you mean 'trend'?"),
        "{e}"
    );
    exec(&client, "DROP JOB trend; DROP JOB IF EXISTS trend").await;
    let e = rows(&client, "DROP JOB trend").await.expect_err("gone");
    assert!(e.to_string().contains("does not exist"), "{e}");
    // Dropped and created again under its name, a job is a new one: it starts from the topic's
    // beginning and its upserts leave the table equal to the batch query.
    exec(
        &client,
        "DROP JOB cleaner;
         CREATE JOB cleaner AS INSERT INTO clean (trans_id, account_id, amount)
           SELECT trans_id, account_id, amount * 2 FROM trans WHERE amount IS NOT NULL",
    )
    .await;
    exec(&client, &produce(4001, 4500)).await;
    wait_equal(
        &client,
        "clean after re-creation",
        CLEAN_SINK,
        CLEAN_BATCH,
        4000,
    )
    .await;
    exec(
        &client,
        "DROP JOB cleaner; DROP JOB divider; DROP TABLE by_district",
    )
    .await;
    cluster.shutdown().await;
}

fn age_level(age: i64) -> &'static str {
    if age < 30 {
        "under 30"
    } else if age < 50 {
        "30 to 49"
    } else {
        "50 and over"
    }
}

/// Parses `a|b|c` lines into fields.
fn fields(lines: &[String]) -> Vec<Vec<String>> {
    lines
        .iter()
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// Seed 001 (berka): transactions streamed into topic `trans` while jobs join them with the
/// dimension tables and keep `monthly_trend`, `yearly_trend` and `trans_by_age_gender`; the three
/// tables are compared with the same aggregates computed here in Rust from the generated input.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_001_berka_trends_equal_an_independent_computation() {
    use std::collections::BTreeMap;

    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.expect("connects");
    exec(
        &client,
        "CREATE TABLE district (district_id INT, a2 VARCHAR, a3 VARCHAR, PRIMARY KEY (district_id));
         CREATE TABLE account (account_id BIGINT, district_id INT, frequency VARCHAR, PRIMARY KEY (account_id));
         CREATE TABLE client (client_id BIGINT, gender VARCHAR, birth_date DATE, district_id INT, PRIMARY KEY (client_id));
         CREATE TABLE disp (disp_id BIGINT, client_id BIGINT, account_id BIGINT, type VARCHAR, PRIMARY KEY (disp_id));
         CREATE TOPIC trans (trans_id BIGINT NOT NULL, account_id BIGINT NOT NULL, date DATE,
           type VARCHAR, operation VARCHAR, amount DOUBLE, balance DOUBLE, k_symbol VARCHAR)
           WITH (partitions = 4, replicas = 3, format = 'json');
         CREATE TABLE monthly_trend (transaction_month INT, transaction_count BIGINT,
           transaction_amount DOUBLE, PRIMARY KEY (transaction_month));
         CREATE TABLE yearly_trend (transaction_year INT, transaction_count BIGINT,
           transaction_amount DOUBLE, PRIMARY KEY (transaction_year));
         CREATE TABLE trans_by_age_gender (age_level VARCHAR, gender VARCHAR,
           avg_transactions DOUBLE, PRIMARY KEY (age_level, gender))",
    )
    .await;

    let mut g = Gen(0x9E37_79B9_7F4A_7C15);
    let districts: Vec<String> = (1..=8)
        .map(|d| format!("({d}, 'district {d}', 'region {}')", d % 3))
        .collect();
    exec(
        &client,
        &format!("INSERT INTO district VALUES {}", districts.join(", ")),
    )
    .await;
    let accounts = 50i64;
    let mut account_district = BTreeMap::new();
    let mut values = Vec::new();
    for a in 1..=accounts {
        let d = 1 + g.next(8) as i64;
        account_district.insert(a, d);
        values.push(format!("({a}, {d}, 'POPLATEK MESICNE')"));
    }
    exec(
        &client,
        &format!("INSERT INTO account VALUES {}", values.join(", ")),
    )
    .await;
    // One owner per account, some accounts with a second (disponent) client.
    let mut owner = BTreeMap::new(); // account -> (gender, birth year)
    let (mut clients, mut disps) = (Vec::new(), Vec::new());
    let mut client_id = 0i64;
    for a in 1..=accounts {
        for kind in ["OWNER", "DISPONENT"] {
            if kind == "DISPONENT" && g.next(3) != 0 {
                continue;
            }
            client_id += 1;
            let gender = if g.next(2) == 0 { "F" } else { "M" };
            let year = 1930 + g.next(50) as i64;
            let (m, d) = (1 + g.next(12) as i64, 1 + g.next(28) as i64);
            clients.push(format!(
                "({client_id}, '{gender}', DATE '{year}-{m:02}-{d:02}', {})",
                1 + g.next(8)
            ));
            disps.push(format!("({client_id}, {client_id}, {a}, '{kind}')"));
            if kind == "OWNER" {
                owner.insert(a, (gender, year));
            }
        }
    }
    exec(
        &client,
        &format!("INSERT INTO client VALUES {}", clients.join(", ")),
    )
    .await;
    exec(
        &client,
        &format!("INSERT INTO disp VALUES {}", disps.join(", ")),
    )
    .await;

    exec(
        &client,
        "CREATE JOB monthly AS INSERT INTO monthly_trend
           SELECT CAST(date_part('month', t.date) AS INT), count(*), sum(t.amount)
           FROM trans t JOIN account a ON t.account_id = a.account_id
             JOIN district d ON a.district_id = d.district_id
           GROUP BY CAST(date_part('month', t.date) AS INT);
         CREATE JOB yearly AS INSERT INTO yearly_trend
           SELECT CAST(date_part('year', t.date) AS INT), count(*), sum(t.amount)
           FROM trans t JOIN account a ON t.account_id = a.account_id
             JOIN district d ON a.district_id = d.district_id
           GROUP BY CAST(date_part('year', t.date) AS INT);
         CREATE JOB by_age_gender AS INSERT INTO trans_by_age_gender
           SELECT CASE WHEN date_part('year', t.date) - date_part('year', c.birth_date) < 30 THEN 'under 30'
                       WHEN date_part('year', t.date) - date_part('year', c.birth_date) < 50 THEN '30 to 49'
                       ELSE '50 and over' END AS age_level,
                  c.gender, avg(t.amount)
           FROM trans t JOIN disp dp ON t.account_id = dp.account_id
             JOIN client c ON dp.client_id = c.client_id
           WHERE dp.type = 'OWNER'
           GROUP BY 1, 2",
    )
    .await;

    // The producer replays transactions in bursts while the jobs run.
    let mut monthly: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
    let mut yearly: BTreeMap<i64, (i64, f64)> = BTreeMap::new();
    let mut by_age: BTreeMap<(String, String), (i64, f64)> = BTreeMap::new();
    let mut trans_id = 0i64;
    for _burst in 0..6 {
        let mut values = Vec::new();
        for _ in 0..500 {
            trans_id += 1;
            let account = 1 + g.next(accounts as u64) as i64;
            let (y, m, d) = (
                1993 + g.next(6) as i64,
                1 + g.next(12) as i64,
                1 + g.next(28) as i64,
            );
            let amount = (1 + g.next(50_000)) as f64;
            let credit = g.next(2) == 0;
            values.push(format!(
                "({trans_id}, {account}, DATE '{y}-{m:02}-{d:02}', '{}', 'VKLAD', {amount}, {}, NULL)",
                if credit { "PRIJEM" } else { "VYDAJ" },
                amount * 3.0
            ));
            let e = monthly.entry(m).or_default();
            e.0 += 1;
            e.1 += amount;
            let e = yearly.entry(y).or_default();
            e.0 += 1;
            e.1 += amount;
            let (gender, birth) = owner[&account];
            let e = by_age
                .entry((age_level(y - birth).to_string(), gender.to_string()))
                .or_default();
            e.0 += 1;
            e.1 += amount;
        }
        exec(
            &client,
            &format!(
                "INSERT INTO trans (trans_id, account_id, date, type, operation, amount, balance, k_symbol) VALUES {}",
                values.join(", ")
            ),
        )
        .await;
    }

    let expect_monthly: Vec<String> = monthly
        .iter()
        .map(|(m, (n, s))| format!("{m}|{n}|{s}"))
        .collect();
    let expect_yearly: Vec<String> = yearly
        .iter()
        .map(|(y, (n, s))| format!("{y}|{n}|{s}"))
        .collect();
    let expect_age: Vec<(String, String, f64)> = by_age
        .iter()
        .map(|((a, g), (n, s))| (a.clone(), g.clone(), s / *n as f64))
        .collect();
    let query = |sql: &'static str| {
        let client = client.clone();
        async move { rows(&client, sql).await.ok() }
    };
    let mut seen = (Vec::new(), Vec::new(), Vec::new());
    let done = tokio::time::timeout(Duration::from_secs(120), async {
        loop {
            let m = query("SELECT transaction_month, transaction_count, CAST(transaction_amount AS BIGINT) FROM monthly_trend ORDER BY 1").await;
            let y = query("SELECT transaction_year, transaction_count, CAST(transaction_amount AS BIGINT) FROM yearly_trend ORDER BY 1").await;
            let a = query("SELECT age_level, gender, avg_transactions FROM trans_by_age_gender ORDER BY 1, 2").await;
            if let (Some(m), Some(y), Some(a)) = (m, y, a) {
                let age_ok = a.len() == expect_age.len()
                    && fields(&a).iter().zip(&expect_age).all(|(got, want)| {
                        got[0] == want.0
                            && got[1] == want.1
                            && got[2]
                                .parse::<f64>()
                                .is_ok_and(|v| (v - want.2).abs() <= 1e-9 * want.2.abs())
                    });
                if m == expect_monthly && y == expect_yearly && age_ok {
                    return;
                }
                seen = (m, y, a);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "the trends never equalled the independent computation:\nmonthly {:?}\n want {:?}\nyearly {:?}\n want {:?}\nby age {:?}\n want {:?}",
        seen.0,
        expect_monthly,
        seen.1,
        expect_yearly,
        seen.2,
        expect_age
    );
    cluster.shutdown().await;
}

/// A job writing a topic, replayed from an earlier offset as after a crash between its writes and
/// its commit: the topic still holds each record once, and the job reading that topic keeps a
/// table equal to the batch query over the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_writing_a_topic_replayed_from_an_earlier_offset_writes_each_record_once() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC raw (id BIGINT NOT NULL, v BIGINT NOT NULL)
           WITH (partitions = 3, replicas = 3, format = 'json');
         CREATE TOPIC cleaned (id BIGINT NOT NULL, v BIGINT NOT NULL)
           WITH (partitions = 2, replicas = 3, format = 'json');
         CREATE TABLE sums (bucket BIGINT, n BIGINT, total BIGINT, PRIMARY KEY (bucket));
         CREATE JOB clean AS INSERT INTO cleaned (id, v, _key)
           SELECT id, v * 2, CAST(id % 17 AS VARCHAR) FROM raw WHERE v % 5 <> 0;
         CREATE JOB sum AS INSERT INTO sums
           SELECT id % 10, count(*), sum(v) FROM cleaned GROUP BY id % 10",
    )
    .await;
    let feed = |from: i64, to: i64| {
        format!(
            "INSERT INTO raw (id, v) SELECT value, (value * 7919) % 1000 \
             FROM generate_series({from}, {to})"
        )
    };
    exec(&client, &feed(1, 3000)).await;
    const CLEANED: &str = "SELECT count(*), count(DISTINCT id) FROM cleaned";
    const WANT: &str = "SELECT count(*) AS a, count(*) AS b FROM raw WHERE v % 5 <> 0";
    wait_equal(&client, "the middle topic", CLEANED, WANT, 1).await;

    // As after a crash before any commit: the first job (id 1, the first job of this cluster)
    // goes back to offset 0 of every partition and runs again, alongside new records.
    exec(&client, "STOP JOB clean").await;
    client
        .commit_offsets("__job.1", "raw", &[(0, 0), (1, 0), (2, 0)])
        .await
        .expect("rewound");
    exec(&client, &feed(3001, 4000)).await;
    exec(&client, "START JOB clean").await;
    wait_until("the job to catch up", Duration::from_secs(60), || async {
        let d = rows(&client, "DESCRIBE JOB clean").await.ok()?;
        (d.len() == 3 && d.iter().all(|l| column(l, LAG) == "0")).then_some(())
    })
    .await;
    wait_equal(
        &client,
        "the middle topic after the replay",
        CLEANED,
        WANT,
        1,
    )
    .await;
    let sums = "SELECT bucket, n, total FROM sums ORDER BY bucket";
    let batch = "SELECT id % 10, count(*), sum(v * 2) FROM raw WHERE v % 5 <> 0 \
                 GROUP BY id % 10 ORDER BY 1";
    // Buckets 0 and 5 have no rows: v % 5 = 0 whenever id % 5 = 0.
    wait_equal(&client, "the table at the end of the chain", sums, batch, 8).await;
    // Keyed records went where their key hashes, the same on the replay.
    let keys = rows(
        &client,
        "SELECT count(*) FROM (SELECT _key FROM cleaned GROUP BY _key \
         HAVING count(DISTINCT _partition) > 1)",
    )
    .await
    .expect("keys");
    assert_eq!(keys, vec!["0"], "a key in two partitions");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_that_joins_takes_over_tasks_and_the_sink_stays_exact() {
    let mut cluster = InProcessCluster::start(2).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC events (id BIGINT NOT NULL, v BIGINT NOT NULL)
           WITH (partitions = 6, replicas = 2, format = 'json');
         CREATE TABLE totals (bucket BIGINT, n BIGINT, total BIGINT, PRIMARY KEY (bucket));
         CREATE JOB totals AS INSERT INTO totals
           SELECT id % 7, count(*), sum(v) FROM events GROUP BY id % 7",
    )
    .await;
    let feed = |from: i64, to: i64| {
        format!(
            "INSERT INTO events (id, v) SELECT value, (value * 7919) % 1000 \
             FROM generate_series({from}, {to})"
        )
    };
    const SINK: &str = "SELECT bucket, n, total FROM totals ORDER BY bucket";
    const BATCH: &str = "SELECT id % 7, count(*), sum(v) FROM events GROUP BY id % 7 ORDER BY 1";
    exec(&client, &feed(1, 2000)).await;
    wait_equal(&client, "the sink on two nodes", SINK, BATCH, 7).await;

    // The new node gets tasks (two of the six, as even as three nodes allow) while records
    // keep coming; the moved tasks go on where their old instances stopped.
    let added = cluster.add_node().await;
    let new_id = weir_tests::node_id_of(&client, &cluster.addr(added)).await;
    exec(&client, &feed(2001, 4000)).await;
    wait_until("tasks on the new node", Duration::from_secs(90), || {
        let client = client.clone();
        async move {
            let d = rows(&client, "DESCRIBE JOB totals").await.ok()?;
            let on_new = d
                .iter()
                .filter(|l| column(l, 1) == new_id.to_string())
                .count();
            (on_new == 2).then_some(())
        }
    })
    .await;
    exec(&client, &feed(4001, 6000)).await;
    wait_equal(&client, "the sink after the move", SINK, BATCH, 7).await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn windows_stop_taking_records_once_closed_and_count_the_late_ones() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC readings (sensor BIGINT NOT NULL, ts TIMESTAMP NOT NULL, v BIGINT)
           WITH (partitions = 1, replicas = 3, format = 'json');
         CREATE TABLE per_minute (minute TIMESTAMP, n BIGINT, total BIGINT,
           PRIMARY KEY (minute));
         CREATE JOB windows AS INSERT INTO per_minute
           SELECT tumble(ts, INTERVAL '1 minute', INTERVAL '2 minutes'), count(*), sum(v)
           FROM readings GROUP BY 1",
    )
    .await;
    // Event times in seconds, in offset order: 30 comes after 200 was seen (its window [0, 60)
    // closed at 60 + 120 = 180), 130 is within the lateness of its window, 120 comes after 400.
    let events = [10, 70, 200, 30, 130, 400, 120];
    for (i, e) in events.iter().enumerate() {
        exec(
            &client,
            &format!(
                "INSERT INTO readings (sensor, ts, v) VALUES \
                 (1, TIMESTAMP '1970-01-01 00:00:00' + INTERVAL '{e} seconds', {})",
                i + 1
            ),
        )
        .await;
    }
    let described = wait_until("every record taken", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let d = rows(&client, "DESCRIBE JOB windows").await.ok()?;
            (d.len() == 1 && column(&d[0], LAG) == "0").then_some(d)
        }
    })
    .await;
    assert_eq!(column(&described[0], LATE), "2", "{described:?}");
    let got = rows(
        &client,
        "SELECT CAST(date_part('epoch', minute) AS BIGINT), n, total FROM per_minute ORDER BY 1",
    )
    .await
    .expect("the windows");
    assert_eq!(got, ["0|1|1", "60|1|2", "120|1|5", "180|1|3", "360|1|6"]);
    // In a query over the stored records every one is on time.
    let all = rows(
        &client,
        "SELECT count(*) FROM readings \
         WHERE tumble(ts, INTERVAL '1 minute', INTERVAL '2 minutes') IS NOT NULL",
    )
    .await
    .expect("query");
    assert_eq!(all, ["7"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn closed_windows_let_go_of_their_distinct_values_and_still_count_exactly() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC hits (visitor BIGINT NOT NULL, ts TIMESTAMP NOT NULL)
           WITH (partitions = 2, replicas = 3, format = 'json');
         CREATE TABLE reach (minute TIMESTAMP, visitors BIGINT, hits BIGINT,
           PRIMARY KEY (minute));
         CREATE JOB reach AS INSERT INTO reach
           SELECT tumble(ts, INTERVAL '1 minute', INTERVAL '1 minute'), count(DISTINCT visitor),
             count(*)
           FROM hits GROUP BY 1",
    )
    .await;
    // Seconds 0 to 239 in both partitions, five visitors a minute: minutes 0 and 1 close (at
    // 120 and 180 s) before the watermarks (238 and 239 s), minutes 2 and 3 stay open.
    exec(
        &client,
        "INSERT INTO hits (_partition, visitor, ts) \
         SELECT value % 2, value % 5, to_timestamp(value) FROM generate_series(0, 239)",
    )
    .await;
    const SINK: &str =
        "SELECT CAST(date_part('epoch', minute) AS BIGINT), visitors, hits FROM reach ORDER BY 1";
    const PAIRS: &str = "SELECT CAST(date_part('epoch', minute) AS BIGINT), count(*) \
                         FROM \"reach.distinct.visitors\" GROUP BY 1 ORDER BY 1";
    let pairs_of_open_windows = |client: Client| async move {
        let pairs = rows(&client, PAIRS).await.ok()?;
        (pairs == ["120|5", "180|5"]).then_some(())
    };
    wait_until(
        "the pairs of closed windows gone",
        Duration::from_secs(90),
        || pairs_of_open_windows(client.clone()),
    )
    .await;
    let all_minutes = ["0|5|60", "60|5|60", "120|5|60", "180|5|60"];
    assert_eq!(rows(&client, SINK).await.expect("sink"), all_minutes);

    // A record of a swept minute is late, whatever visitor it brings; one of an open minute
    // counts a new visitor once and an old one not at all.
    exec(
        &client,
        "INSERT INTO hits (_partition, visitor, ts) VALUES \
           (0, 99, to_timestamp(10)), (1, 77, to_timestamp(230)), (0, 77, to_timestamp(231)), \
           (1, 3, to_timestamp(232))",
    )
    .await;
    let want = ["0|5|60", "60|5|60", "120|5|60", "180|6|63"];
    wait_until("the open minute counted", Duration::from_secs(60), || {
        let client = client.clone();
        async move { (rows(&client, SINK).await.ok()? == want).then_some(()) }
    })
    .await;

    // Replayed from the start (as after a crash before any commit): the swept minutes' records
    // are late now, the open ones' are counted already; nothing changes, nothing comes back.
    exec(&client, "STOP JOB reach").await;
    client
        .commit_offsets("__job.1", "hits", &[(0, 0), (1, 0)])
        .await
        .expect("rewound");
    exec(&client, "START JOB reach").await;
    wait_until("the job to catch up", Duration::from_secs(60), || async {
        let d = rows(&client, "DESCRIBE JOB reach").await.ok()?;
        (d.len() == 2 && d.iter().all(|l| column(l, LAG) == "0")).then_some(())
    })
    .await;
    assert_eq!(rows(&client, SINK).await.expect("sink"), want);
    let pairs = rows(&client, PAIRS).await.expect("pairs");
    assert_eq!(pairs, ["120|5", "180|6"]);

    // An older watermark committed for partition 0 (as by an instance replaced before it
    // stopped) does not reopen the swept minutes: a visitor minute 0 counted already stays
    // counted once.
    exec(&client, "STOP JOB reach").await;
    client
        .commit_offsets("__job.1.watermark", "hits", &[(0, 0)])
        .await
        .expect("watermark lowered");
    exec(&client, "START JOB reach").await;
    exec(
        &client,
        "INSERT INTO hits (_partition, visitor, ts) VALUES (0, 1, to_timestamp(20))",
    )
    .await;
    wait_until("the late record taken", Duration::from_secs(60), || async {
        let d = rows(&client, "DESCRIBE JOB reach").await.ok()?;
        (d.len() == 2 && d.iter().all(|l| column(l, LAG) == "0")).then_some(())
    })
    .await;
    assert_eq!(rows(&client, SINK).await.expect("sink"), want);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn describe_job_shows_what_each_task_read_and_its_last_error() {
    // One node: the tasks never move, so their counters cover the whole run.
    let cluster = InProcessCluster::start(1).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC raw (id BIGINT NOT NULL, v BIGINT NOT NULL)
           WITH (partitions = 3, replicas = 1, format = 'json');
         CREATE TABLE copy (id BIGINT, v BIGINT, PRIMARY KEY (id));
         CREATE JOB copier AS INSERT INTO copy SELECT id, v FROM raw",
    )
    .await;
    exec(
        &client,
        "INSERT INTO raw (id, v) SELECT value, value * 2 FROM generate_series(1, 300)",
    )
    .await;
    let producer = Producer::new(client.clone(), "raw", ProducerConfig::default())
        .await
        .expect("producer");
    for p in 0..3 {
        drop(
            producer
                .send_to(p, None, b"not json", None)
                .await
                .expect("send"),
        );
    }
    producer.flush().await.expect("flush");
    let described = wait_until("task counters", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let d = rows(&client, "DESCRIBE JOB copier").await.ok()?;
            (d.len() == 3
                && d.iter()
                    .all(|l| column(l, FAILED) == "1" && column(l, LAG) == "0"))
            .then_some(d)
        }
    })
    .await;
    let mut read = 0;
    for l in &described {
        read += column(l, READ).parse::<u64>().expect("records_in");
        let error = column(l, LAST_ERROR);
        assert!(error.contains("record at offset"), "{l}");
        assert!(error.contains("JSON"), "{l}");
        assert_eq!(column(l, LATE), "0", "{l}");
    }
    assert_eq!(read, 303, "{described:?}");
    // Each bad record has one letter, whatever replays happened.
    let letters = rows(&client, "SELECT count(*) FROM \"raw.dlq\"")
        .await
        .expect("letters");
    assert_eq!(letters, ["3"]);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn count_distinct_counts_each_value_once_across_partitions_and_replays() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    exec(
        &client,
        "CREATE TOPIC visits (visitor BIGINT, page VARCHAR NOT NULL)
           WITH (partitions = 3, replicas = 3, format = 'json');
         CREATE TABLE reach (page VARCHAR, visitors BIGINT, visits BIGINT, first_visitor BIGINT,
           PRIMARY KEY (page))",
    )
    .await;
    // What a job cannot keep exactly is refused with the reason.
    for (bad, reason) in [
        (
            "CREATE JOB r AS INSERT INTO reach (page, visits) SELECT page, sum(DISTINCT visitor) \
             FROM visits GROUP BY page",
            "sum or average of distinct",
        ),
        (
            "CREATE JOB r AS INSERT INTO reach (page, visits) SELECT page, count(DISTINCT *) \
             FROM visits GROUP BY page",
            "one expression",
        ),
    ] {
        refused(&client, bad, reason).await;
    }
    exec(
        &client,
        "CREATE JOB reach AS INSERT INTO reach
           SELECT page, count(DISTINCT visitor), count(*), min(DISTINCT visitor)
           FROM visits GROUP BY page",
    )
    .await;
    // The same (page, visitor) pairs come through every partition, and some visitors are NULL.
    let feed = |from: i64, to: i64| {
        format!(
            "INSERT INTO visits (visitor, page) SELECT CASE WHEN value % 11 = 0 THEN NULL \
             ELSE (value * 7919) % 53 END, 'p' || CAST(value % 6 AS VARCHAR) \
             FROM generate_series({from}, {to})"
        )
    };
    const SINK: &str = "SELECT page, visitors, visits, first_visitor FROM reach ORDER BY page";
    const BATCH: &str = "SELECT page, count(DISTINCT visitor), count(*), min(visitor) \
                         FROM visits GROUP BY page ORDER BY page";
    const PAIRS: &str = "SELECT count(*) FROM \"reach.distinct.visitors\"";
    const DISTINCT_PAIRS: &str =
        "SELECT count(*) FROM (SELECT DISTINCT page, visitor FROM visits WHERE visitor IS NOT NULL)";
    exec(&client, &feed(1, 1500)).await;
    exec(&client, &feed(1501, 3000)).await;
    wait_equal(&client, "distinct counts", SINK, BATCH, 6).await;
    // The pairs are a table anyone can read, kept while the job exists.
    wait_equal(&client, "the pairs", PAIRS, DISTINCT_PAIRS, 1).await;
    let e = rows(&client, "DROP TABLE \"reach.distinct.visitors\"")
        .await
        .expect_err("in use");
    assert!(e.to_string().contains("drop the job first"), "{e}");

    // As after a crash before any commit: the job (id 1) goes back to offset 0 of every
    // partition and reads everything again, alongside new records; nothing counts twice.
    exec(&client, "STOP JOB reach").await;
    client
        .commit_offsets("__job.1", "visits", &[(0, 0), (1, 0), (2, 0)])
        .await
        .expect("rewound");
    exec(&client, &feed(3001, 4000)).await;
    exec(&client, "START JOB reach").await;
    wait_until("the job to catch up", Duration::from_secs(60), || async {
        let d = rows(&client, "DESCRIBE JOB reach").await.ok()?;
        (d.len() == 3 && d.iter().all(|l| column(l, LAG) == "0")).then_some(())
    })
    .await;
    wait_equal(&client, "distinct counts after the replay", SINK, BATCH, 6).await;

    // Dropped with its job.
    exec(&client, "DROP JOB reach").await;
    let tables = rows(&client, "SHOW TABLES").await.expect("tables");
    assert!(!tables.iter().any(|t| t.contains("distinct")), "{tables:?}");
    cluster.shutdown().await;
}
