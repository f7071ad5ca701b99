//! SQL across a three-node cluster: results compared with DataFusion over an in-memory copy of
//! the same rows, key-range pruning, inserts, deletes, catalog statements and bad input.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::prelude::SessionContext;
use tonic::Code;
use weir_client::{Client, SqlEvent, SqlSession, Value};
use weir_tests::{psql_with_notices, wait_until, InProcessCluster};

/// The rows of every statement of `sql`, per statement.
async fn weir_rows(
    client: &Client,
    sql: &str,
) -> Result<Vec<Vec<RecordBatch>>, weir_client::ClientError> {
    Ok(weir_rows_and_warnings(client, sql).await?.0)
}

/// The rows of every statement of `sql`, and the warnings the statements reported.
async fn weir_rows_and_warnings(
    client: &Client,
    sql: &str,
) -> Result<(Vec<Vec<RecordBatch>>, Vec<String>), weir_client::ClientError> {
    rows_and_warnings_in(client, &SqlSession::default(), sql).await
}

/// The rows of every statement of `sql` run in `session`.
async fn weir_rows_in(
    client: &Client,
    session: &SqlSession,
    sql: &str,
) -> Result<Vec<Vec<RecordBatch>>, weir_client::ClientError> {
    Ok(rows_and_warnings_in(client, session, sql).await?.0)
}

/// The rows of every statement of `sql` run in `session`, and the warnings they reported.
async fn rows_and_warnings_in(
    client: &Client,
    session: &SqlSession,
    sql: &str,
) -> Result<(Vec<Vec<RecordBatch>>, Vec<String>), weir_client::ClientError> {
    let mut stream = client.sql_in(sql, session).await?;
    let mut out: Vec<Vec<RecordBatch>> = Vec::new();
    let mut all_warnings = Vec::new();
    while let Some(e) = stream.next().await? {
        match e {
            SqlEvent::Schema { .. } => {}
            SqlEvent::Batch { statement, batch } => {
                while out.len() <= statement as usize {
                    out.push(Vec::new());
                }
                out[statement as usize].push(batch);
            }
            SqlEvent::Done {
                statement,
                warnings,
                ..
            } => {
                while out.len() <= statement as usize {
                    out.push(Vec::new());
                }
                all_warnings.extend(warnings);
            }
        }
    }
    Ok((out, all_warnings))
}

/// The column names of a statement's result.
fn column_names(batches: &[RecordBatch]) -> Vec<String> {
    let schema = batches.first().expect("a batch").schema();
    schema.fields().iter().map(|f| f.name().clone()).collect()
}

/// Text lines of batches without the table frame, sorted unless `ordered`.
fn lines(batches: &[RecordBatch], ordered: bool) -> Vec<String> {
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Vec::new();
    }
    let text = pretty_format_batches(batches)
        .expect("printable")
        .to_string();
    let mut rows: Vec<String> = text
        .lines()
        .skip(3) // border, header, border
        .filter(|l| !l.starts_with('+'))
        .map(|l| l.split('|').map(str::trim).collect::<Vec<_>>().join("|"))
        .collect();
    if !ordered {
        rows.sort();
    }
    rows
}

async fn reference_rows(ctx: &SessionContext, sql: &str) -> Vec<RecordBatch> {
    ctx.sql(sql)
        .await
        .unwrap_or_else(|e| panic!("reference plans {sql}: {e}"))
        .collect()
        .await
        .unwrap_or_else(|e| panic!("reference runs {sql}: {e}"))
}

const SETUP: &str = "
CREATE TABLE customers (id BIGINT, name VARCHAR, city VARCHAR, joined DATE, PRIMARY KEY (id));
CREATE TABLE orders (customer BIGINT, seq INT, amount DECIMAL(10,2), note VARCHAR, PRIMARY KEY (customer, seq));
";

fn insert_statements() -> Vec<String> {
    let cities = ["Oslo", "Lima", "Pune", "Kyiv"];
    let mut customers = Vec::new();
    for id in 1..=60i64 {
        let city = if id % 7 == 0 {
            "NULL".to_string()
        } else {
            format!("'{}'", cities[(id % 4) as usize])
        };
        customers.push(format!(
            "({id}, 'c{id:03}', {city}, DATE '2024-01-01' + INTERVAL '{} days')",
            id * 3
        ));
    }
    let mut orders = Vec::new();
    for c in 1..=60i64 {
        for s in 0..(c % 5) {
            let note = if s == 1 {
                "NULL".to_string()
            } else {
                format!("'n{c}-{s}'")
            };
            orders.push(format!(
                "({c}, {s}, {}.{:02}, {note})",
                c * 10 + s,
                (c * 7 + s) % 100
            ));
        }
    }
    vec![
        format!("INSERT INTO customers VALUES {}", customers.join(", ")),
        format!("INSERT INTO orders VALUES {}", orders.join(", ")),
    ]
}

/// Queries compared with the reference engine, with whether their order is part of the answer.
const QUERIES: &[(&str, bool)] = &[
    ("SELECT * FROM customers", false),
    ("SELECT id, name FROM customers WHERE id = 17", false),
    ("SELECT id FROM customers WHERE id BETWEEN 10 AND 25 AND city = 'Lima'", false),
    ("SELECT id, city FROM customers WHERE id IN (3, 30, 59, 1000)", false),
    ("SELECT id FROM customers WHERE id > 55 OR id < 3", false),
    ("SELECT * FROM customers WHERE id > 1000", false),
    ("SELECT city, count(*) AS n, min(joined) AS first FROM customers GROUP BY city", false),
    ("SELECT * FROM orders WHERE customer = 24", false),
    ("SELECT customer, seq FROM orders WHERE customer = 33 AND seq >= 1", false),
    ("SELECT customer, sum(amount) AS total, count(note) AS notes FROM orders GROUP BY customer HAVING sum(amount) > 500", false),
    (
        "SELECT c.name, o.seq, o.amount FROM customers c JOIN orders o ON o.customer = c.id \
         WHERE c.city = 'Pune' AND o.amount > 100",
        false,
    ),
    (
        "SELECT c.city, sum(o.amount) AS total FROM customers c LEFT JOIN orders o ON o.customer = c.id \
         GROUP BY c.city ORDER BY total DESC NULLS LAST, c.city",
        true,
    ),
    ("SELECT id, name FROM customers ORDER BY joined DESC LIMIT 5", true),
    (
        "SELECT customer, seq, amount, rank() OVER (PARTITION BY customer ORDER BY amount DESC) AS r \
         FROM orders WHERE customer < 20",
        false,
    ),
    (
        "WITH big AS (SELECT customer, sum(amount) AS t FROM orders GROUP BY customer) \
         SELECT name FROM customers WHERE id IN (SELECT customer FROM big WHERE t > 400)",
        false,
    ),
    ("SELECT count(*) FROM orders WHERE note IS NULL", false),
    // Conditions on other columns, evaluated where the rows are stored: dates, decimals,
    // strings, NULLs (which match no comparison), lists and their negation.
    (
        "SELECT id, name FROM customers WHERE joined >= DATE '2024-02-01' AND joined < DATE '2024-04-01'",
        false,
    ),
    (
        "SELECT customer, seq FROM orders WHERE amount BETWEEN 100.5 AND 300 AND note IS NOT NULL",
        false,
    ),
    ("SELECT customer, seq FROM orders WHERE amount > CAST(250.25 AS DECIMAL(10,2))", false),
    (
        "SELECT customer, seq, note FROM orders WHERE note <> 'n7-0' \
         AND note IN ('n7-0', 'n7-2', 'n9-3', 'zz')",
        false,
    ),
    ("SELECT id, city FROM customers WHERE city NOT IN ('Lima', 'Pune')", false),
    ("SELECT id FROM customers WHERE city = 'Oslo' AND name > 'c030' AND id < 50", false),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queries_match_an_independent_engine_across_regions() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.unwrap();
    let reference = SessionContext::new();

    weir_rows(&client, SETUP).await.expect("tables created");
    for stmt in SETUP.split(';').filter(|s| !s.trim().is_empty()) {
        reference_rows(&reference, stmt).await;
    }
    // Several regions per table, so scans fan out and key ranges prune.
    let customers = client.describe_table("customers").await.unwrap();
    assert_eq!(customers.regions.len(), 1);
    client.drop_table("customers").await.unwrap();
    let schema = weir_client::table::schema_of(&customers).unwrap();
    client
        .create_table_split_at(
            "customers",
            &schema,
            3,
            0,
            &[vec![Value::Int(20)], vec![Value::Int(40)]],
        )
        .await
        .unwrap();

    for stmt in insert_statements() {
        let got = weir_rows(&client, &stmt).await.expect("insert runs");
        reference_rows(&reference, &stmt).await;
        assert_eq!(got.len(), 1, "an insert answers its row count");
    }
    let all = weir_rows(&client, "SELECT * FROM customers").await.unwrap();
    assert_eq!(
        lines(&all[0], false).len(),
        60,
        "every inserted row is read back once"
    );
    // Every query over tables runs across the nodes leading their regions (however small the
    // tables: a setting of this session), once the leaders are spread.
    let mut set = client
        .sql("SET weir.bytes_per_task = 1")
        .await
        .expect("SET runs");
    let mut session = SqlSession::default();
    while let Some(e) = set.next().await.expect("SET runs") {
        if let SqlEvent::Done { settings, .. } = e {
            session.settings = settings;
        }
    }
    assert_eq!(
        session
            .settings
            .get("weir.bytes_per_task")
            .map(String::as_str),
        Some("1"),
        "a SET is answered with the session's settings"
    );
    wait_until(
        "customers' regions led by two nodes or more",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            async move {
                let t = client.describe_table("customers").await.ok()?;
                let leaders: BTreeSet<String> = t
                    .regions
                    .iter()
                    .map(|r| r.leader_addr.clone())
                    .filter(|a| !a.is_empty())
                    .collect();
                (leaders.len() >= 2).then_some(())
            }
        },
    )
    .await;
    let plan = weir_rows_in(
        &client,
        &session,
        "EXPLAIN ANALYZE SELECT city, count(*) FROM customers GROUP BY city",
    )
    .await
    .unwrap();
    let text = pretty_format_batches(&plan[0]).unwrap().to_string();
    assert!(
        text.contains("DistributedExec") && text.contains("Stage 1 ── tasks="),
        "a scan of regions led by several nodes runs in stages: {text}"
    );
    let tasks: usize = text
        .split("Stage 1 ── tasks=")
        .nth(1)
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(tasks >= 2, "one task per leader: {text}");
    for (sql, ordered) in QUERIES {
        let got = weir_rows_in(&client, &session, sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let want = reference_rows(&reference, sql).await;
        assert_eq!(
            lines(&got[0], *ordered),
            lines(&want, *ordered),
            "results differ for: {sql}"
        );
    }

    // The session's DataFusion settings hold in the tasks other nodes run: its time zone is
    // the one `to_unixtime` reads dates in, where the partial aggregates run too.
    let sql = "SELECT city, min(to_unixtime(concat(CAST(joined AS VARCHAR), 'T00:00:00'))) \
               AS first FROM customers GROUP BY city";
    let in_utc = weir_rows_in(&client, &session, sql).await.unwrap();
    let mut zoned = session.clone();
    zoned.settings.insert(
        "datafusion.execution.time_zone".into(),
        "+05:00".to_string(),
    );
    let plan = weir_rows_in(&client, &zoned, &format!("EXPLAIN {sql}"))
        .await
        .unwrap();
    let text = pretty_format_batches(&plan[0]).unwrap().to_string();
    assert!(text.contains("DistributedExec"), "{text}");
    let across = weir_rows_in(&client, &zoned, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut here = zoned.clone();
    here.settings
        .insert("weir.distribute".into(), "false".to_string());
    let local = weir_rows_in(&client, &here, sql).await.unwrap();
    let seconds = |batches: &[RecordBatch]| -> BTreeMap<String, i64> {
        lines(batches, false)
            .iter()
            .filter_map(|l| {
                // `|city|seconds|`, the city empty for NULL.
                let f: Vec<&str> = l.split('|').collect();
                Some((f.get(1)?.to_string(), f.get(2)?.parse().ok()?))
            })
            .collect()
    };
    let (in_utc, across, local) = (seconds(&in_utc[0]), seconds(&across[0]), seconds(&local[0]));
    assert_eq!(across, local, "the same on every node");
    assert_eq!(across.len(), 5, "{across:?}");
    for (city, utc) in &in_utc {
        assert_eq!(
            across[city],
            utc - 5 * 3600,
            "{city}: {across:?} against {in_utc:?}"
        );
    }
    // `to_timestamp` over a column answers in the session's zone (DataFusion 55 alone fails it).
    let sql = "SELECT city, CAST(min(to_timestamp(concat(CAST(joined AS VARCHAR), 'T00:00:00'))) \
               AS VARCHAR) AS first FROM customers GROUP BY city";
    let across = weir_rows_in(&client, &zoned, sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let local = weir_rows_in(&client, &here, sql).await.unwrap();
    let across = lines(&across[0], false);
    assert_eq!(across, lines(&local[0], false));
    assert!(
        across.len() == 5 && across.iter().all(|l| l.contains("T00:00:00+05:00")),
        "{across:?}"
    );

    // Conditions on other columns go to the regions' nodes with the scan.
    let plan = weir_rows_in(
        &client,
        &session,
        "EXPLAIN SELECT id FROM customers WHERE city = 'Oslo' AND joined < DATE '2024-03-01'",
    )
    .await
    .unwrap();
    let text = pretty_format_batches(&plan[0]).unwrap().to_string();
    assert!(text.contains("filters=[city = "), "{text}");

    // A key-range query reads only the regions holding its keys.
    let plan = weir_rows_in(
        &client,
        &session,
        "EXPLAIN SELECT name FROM customers WHERE id = 25",
    )
    .await
    .unwrap();
    let text = pretty_format_batches(&plan[0]).unwrap().to_string();
    assert!(
        text.contains("RegionScanExec: table=customers, regions=["),
        "{text}"
    );
    let regions = text
        .split("regions=[")
        .nth(1)
        .and_then(|r| r.split(']').next())
        .unwrap_or_default();
    assert_eq!(
        regions.split(", ").count(),
        1,
        "one region for one key: {text}"
    );

    // EXPLAIN ANALYZE says which node read each region, and whether from the region's image
    // (a quiet region scanned twice is read from its image from then on), in the scan's
    // metrics (`region_R_node_N_rows|pages|image_pages`), which come back from every node a
    // task of the query ran on.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let plan = weir_rows_in(
            &client,
            &session,
            "EXPLAIN ANALYZE SELECT count(*) FROM customers",
        )
        .await
        .unwrap();
        let text = pretty_format_batches(&plan[0]).unwrap().to_string();
        // (region, node) -> [rows, pages, image pages]
        let mut read: BTreeMap<(u64, u64), [u64; 3]> = BTreeMap::new();
        for metric in text.split("region_").skip(1) {
            let (name, value) = metric.split_once('=').unwrap_or_default();
            let Some((region, rest)) = name.split_once("_node_") else {
                continue;
            };
            let Some((node, what)) = rest.split_once('_') else {
                continue;
            };
            let (Ok(region), Ok(node)) = (region.parse::<u64>(), node.parse::<u64>()) else {
                continue;
            };
            let value: u64 = value
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("metric {metric} in {text}"));
            let slot = match what {
                "rows" => 0,
                "pages" => 1,
                "image_pages" => 2,
                other => panic!("metric {other} in {text}"),
            };
            read.entry((region, node)).or_default()[slot] += value;
        }
        let regions: BTreeSet<u64> = read.keys().map(|(r, _)| *r).collect();
        assert_eq!(regions.len(), 3, "three regions read: {text}");
        assert!(read.keys().all(|(_, n)| (1..=3).contains(n)), "{text}");
        let rows: u64 = read.values().map(|v| v[0]).sum();
        assert_eq!(rows, 60, "every row read once: {text}");
        assert!(text.contains("output_rows=60"), "{text}");
        if read.values().all(|[_, pages, image]| pages == image) {
            break;
        }
        assert!(Instant::now() < deadline, "never read from images: {text}");
    }

    // Deletes by a filter, through any node.
    let other = Client::connect(cluster.addr(2)).await.unwrap();
    weir_rows(&other, "DELETE FROM orders WHERE amount < 100")
        .await
        .unwrap();
    reference_rows(&reference, "DELETE FROM orders WHERE amount < 100").await;
    let sql = "SELECT customer, seq, amount FROM orders";
    let got = weir_rows_in(&client, &session, sql).await.unwrap();
    assert_eq!(
        lines(&got[0], false),
        lines(&reference_rows(&reference, sql).await, false)
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_statements_are_refused_clearly_and_write_nothing() {
    let cluster = InProcessCluster::start(1).await;
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    weir_rows(
        &client,
        "CREATE TABLE t (k INT, v VARCHAR NOT NULL, PRIMARY KEY (k)) WITH (replicas = 1)",
    )
    .await
    .expect("created");

    let err = weir_rows(&client, "SELEC * FROM t").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("Line: 1, Column: 1"), "{err}");
    // A syntax error inside Weir's own statements reads as DataFusion's do.
    let err = weir_rows(&client, "CREATE JOB j AS SELEC 1")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(
        err.to_string().matches("sql parser error").count(),
        1,
        "{err}"
    );

    // Settings: an unknown one, or one that is the node's (its memory pool), is refused by name;
    // one a request sets lasts for that request, or for the session that sends it back.
    for (sql, named) in [
        ("SET weir.nonsense = 1", "nonsense"),
        (
            "SET datafusion.runtime.memory_limit = '100G'",
            "datafusion.runtime.memory_limit",
        ),
    ] {
        let err = weir_rows(&client, sql).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.to_string().contains(named), "{sql}: {err}");
    }
    let setting = "SELECT value FROM information_schema.df_settings \
                   WHERE name = 'datafusion.execution.batch_size'";
    let node_default = weir_rows(&client, setting).await.unwrap();
    let set = weir_rows(
        &client,
        &format!("SET datafusion.execution.batch_size = 77; {setting}"),
    )
    .await
    .unwrap();
    assert_eq!(lines(&set[1], false), vec!["|77|"]);
    assert_eq!(
        lines(&weir_rows(&client, setting).await.unwrap()[0], false),
        lines(&node_default[0], false),
        "another request starts from the node's settings"
    );
    let session = SqlSession {
        settings: [(
            "datafusion.execution.batch_size".to_string(),
            "77".to_string(),
        )]
        .into(),
        ..SqlSession::default()
    };
    let resent = weir_rows_in(&client, &session, setting).await.unwrap();
    assert_eq!(lines(&resent[0], false), vec!["|77|"]);
    let bad = SqlSession {
        settings: [("weir.nonsense".to_string(), "1".to_string())].into(),
        ..SqlSession::default()
    };
    let err = weir_rows_in(&client, &bad, "SELECT 1").await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("weir.nonsense"), "{err}");
    // SHOW names Weir's settings in full, as SET does.
    let shown = weir_rows(&client, "SET weir.distribute = false; SHOW weir.distribute")
        .await
        .unwrap();
    assert_eq!(lines(&shown[1], false), vec!["|weir.distribute|false|"]);
    // SHOW ALL lists every setting by the name SET takes; the time zone set in Postgres's form
    // holds for the session's queries (2024-01-02 00:00 in Kolkata is 18:30 UTC the day before).
    let shown = weir_rows(
        &client,
        "SET weir.distribute = false; SET TIME ZONE 'Asia/Kolkata'; SHOW ALL; SHOW TIME ZONE; \
         SELECT to_unixtime('2024-01-02T00:00:00')",
    )
    .await
    .unwrap();
    let all = lines(&shown[2], false);
    assert!(
        all.iter().any(|l| l.starts_with("|weir.distribute|false|")),
        "{all:?}"
    );
    assert!(
        all.iter()
            .any(|l| l.starts_with("|datafusion.execution.time_zone|Asia/Kolkata|")),
        "{all:?}"
    );
    assert_eq!(lines(&shown[3], false), vec!["|TimeZone|Asia/Kolkata|"]);
    assert_eq!(lines(&shown[4], false), vec!["|1704133800|"]);
    let err = weir_rows(&client, "SET TIME ZONE 'Mars/Olympus'")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("Mars/Olympus"), "{err}");

    // A misspelt table is named with the closest that exists, wherever it is named.
    let err = weir_rows(&client, "SELECT * FROM tt").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert!(
        err.to_string()
            .contains("table or topic 'tt' does not exist; did you mean 't'?"),
        "{err}"
    );
    for sql in [
        "INSERT INTO tt VALUES (1, 'a')",
        "SELECT count(*) FROM t JOIN tt ON t.k = tt.k",
        "DROP TABLE tt",
        "DESCRIBE tt",
    ] {
        let err = weir_rows(&client, sql).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{sql}: {err}");
        assert!(
            err.to_string().contains("did you mean 't'?"),
            "{sql}: {err}"
        );
    }
    let err = weir_rows(&client, "SELECT * FROM elsewhere")
        .await
        .unwrap_err();
    assert!(!err.to_string().contains("did you mean"), "{err}");
    // A function given arguments none of its signatures takes says so, without DataFusion's
    // "internal error, please file a bug report" preamble.
    let err = weir_rows(&client, "SELECT sum(v) FROM t")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string()
            .contains("No function matches the given name and argument types 'sum(VARCHAR)'")
            && !err.to_string().contains("bug"),
        "{err}"
    );

    let err = weir_rows(&client, "SELECT kk FROM t").await.unwrap_err();
    assert!(err.to_string().contains("kk"), "{err}");

    let err = weir_rows(&client, "CREATE TABLE nokey (a INT)")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("primary key"), "{err}");

    let err = weir_rows(
        &client,
        "CREATE TABLE t2 (a INT, PRIMARY KEY (a)) WITH (shards = 3)",
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("shards"), "{err}");

    // The third row breaks the table's types: nothing of the batch is written.
    let err = weir_rows(
        &client,
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, NULL)",
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(
        err.to_string()
            .contains("row 3: column 'v': NULL is not allowed"),
        "{err}"
    );
    let got = weir_rows(&client, "SELECT count(*) AS n FROM t")
        .await
        .unwrap();
    assert_eq!(lines(&got[0], false), vec!["|0|".to_string()]);

    // Upserts by key; IF EXISTS / IF NOT EXISTS.
    weir_rows(
        &client,
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'); INSERT INTO t VALUES (1, 'z')",
    )
    .await
    .unwrap();
    let got = weir_rows(&client, "SELECT k, v FROM t ORDER BY k")
        .await
        .unwrap();
    assert_eq!(lines(&got[0], true), vec!["|1|z|", "|2|b|"]);
    weir_rows(
        &client,
        "CREATE TABLE IF NOT EXISTS t (k INT, PRIMARY KEY (k))",
    )
    .await
    .unwrap();
    let err = weir_rows(&client, "CREATE TABLE t (k INT, PRIMARY KEY (k))")
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    assert!(
        err.to_string().contains("table 't' already exists"),
        "{err}"
    );
    weir_rows(&client, "DROP TABLE t; DROP TABLE IF EXISTS t")
        .await
        .unwrap();
    let err = weir_rows(&client, "DROP TABLE t").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    wait_until("the table is gone", Duration::from_secs(10), || {
        let client = client.clone();
        async move { client.describe_table("t").await.is_err().then_some(()) }
    })
    .await;
    cluster.shutdown().await;
}

/// Runs `psql` against `addr` with `args`, returning its stdout (stderr on failure).
async fn psql(port: u16, args: &[&str]) -> Result<String, String> {
    psql_with_notices(port, args).await.map(|(out, _)| out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_clients_create_list_and_query_tables() {
    let cluster = InProcessCluster::start(1).await;
    let port = cluster.nodes[0]
        .pg_addr
        .expect("the node serves Postgres")
        .port();

    // psql: catalog statements, \dt, and every column type read back as text.
    let out = psql(
        port,
        &[
            "-c",
            "CREATE TABLE kinds (id BIGINT, i INT, s SMALLINT, f DOUBLE, r REAL, d DECIMAL(12,3), \
             b BOOLEAN, t VARCHAR, day DATE, at TIMESTAMP, raw BYTEA, PRIMARY KEY (id)) WITH (replicas = 1)",
            "-c",
            "INSERT INTO kinds VALUES (1, -7, 3, 2.5, 0.25, 1234.567, true, 'héllo', DATE '2024-02-29', \
             TIMESTAMP '2024-02-29 12:34:56.789', X'00ff'), \
             (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
        ],
    )
    .await
    .unwrap();
    assert!(
        out.contains("CREATE TABLE") && out.contains("INSERT 0 2"),
        "{out}"
    );
    let out = psql(port, &["-c", "\\dt"]).await.unwrap();
    assert!(out.contains("kinds"), "\\dt lists the table: {out}");
    let out = psql(
        port,
        &["-At", "-F", ",", "-c", "SELECT * FROM kinds ORDER BY id"],
    )
    .await
    .unwrap();
    let rows: Vec<&str> = out.lines().collect();
    assert_eq!(rows.len(), 2, "{out}");
    let first: Vec<&str> = rows[0].split(',').collect();
    assert_eq!(
        &first[..9],
        [
            "1",
            "-7",
            "3",
            "2.5",
            "0.25",
            "1234.567",
            "t",
            "héllo",
            "2024-02-29"
        ],
        "{out}"
    );
    assert!(first[9].starts_with("2024-02-29 12:34:56.789"), "{out}");
    assert_eq!(first[10], "\\x00ff", "{out}");
    assert_eq!(rows[1], "2,,,,,,,,,,", "NULLs read back as NULL: {out}");
    let err = psql(port, &["-c", "SELECT * FROM missing"])
        .await
        .unwrap_err();
    assert!(err.contains("missing"), "{err}");
    // A misspelt table: Postgres's SQLSTATE for an undefined table, and the closest name.
    let err = psql(
        port,
        &["-v", "VERBOSITY=verbose", "-c", "SELECT * FROM kind"],
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("42P01") && err.contains("did you mean 'kinds'?"),
        "{err}"
    );
    let err = psql(
        port,
        &["-v", "VERBOSITY=verbose", "-c", "SELECT sum(t) FROM kinds"],
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("42883") && err.contains("No function matches") && !err.contains("bug"),
        "{err}"
    );

    // Weir's own statements through psql: topics, external tables, jobs, mixed with plain SQL.
    let out = psql(
        port,
        &[
            "-c",
            "CREATE TOPIC clicks (user_id BIGINT NOT NULL, page VARCHAR) \
             WITH (partitions = 2, replicas = 1, format = 'json')",
            "-c",
            "INSERT INTO clicks (user_id, page) VALUES (1, '/a'), (2, '/b'), (1, '/c')",
            "-At",
            "-c",
            "SHOW TOPICS; SELECT user_id, count(*) FROM clicks GROUP BY user_id ORDER BY user_id",
            "-c",
            "SHOW JOBS",
        ],
    )
    .await
    .unwrap();
    assert!(out.contains("CREATE TOPIC"), "{out}");
    assert!(out.contains("clicks"), "SHOW TOPICS lists it: {out}");
    assert!(out.contains("1|2") && out.contains("2|1"), "{out}");
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("points.csv");
    std::fs::write(&csv, "id,label\n1,one\n2,two\n3,three\n").expect("csv written");
    let out = psql(
        port,
        &[
            "-At",
            "-c",
            &format!(
                "CREATE EXTERNAL TABLE points (id BIGINT, label VARCHAR) STORED AS CSV \
                 LOCATION '{}' OPTIONS ('format.has_header' 'true')",
                csv.display()
            ),
            "-c",
            "SELECT sum(id), max(label) FROM points",
        ],
    )
    .await
    .unwrap();
    assert!(out.contains("6|two"), "{out}");
    // Weir's refusals carry the SQLSTATE Postgres gives the same error, and their own words.
    let err = psql(
        port,
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "CREATE TOPIC clicks (x BIGINT) WITH (partitions = 1, replicas = 1)",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("42P07") && err.contains("topic 'clicks' already exists"),
        "a clash names the topic: {err}"
    );
    assert!(!err.contains("External error"), "{err}");
    let err = psql(port, &["-v", "VERBOSITY=verbose", "-c", "STOP JOB clickz"])
        .await
        .unwrap_err();
    assert!(
        err.contains("42704") && err.contains("job 'clickz' does not exist"),
        "{err}"
    );
    let err = psql(
        port,
        &["-v", "VERBOSITY=verbose", "-c", "SELECT id / 0 FROM kinds"],
    )
    .await
    .unwrap_err();
    assert!(err.contains("22012"), "division by zero: {err}");
    let err = psql(
        port,
        &[
            "-v",
            "VERBOSITY=verbose",
            "-c",
            "CREATE TOPC nope (x BIGINT)",
        ],
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("42601") && err.to_lowercase().contains("topc"),
        "{err}"
    );
    // Text neither parser reads is answered with Weir's parser's words, which know its statements.
    let err = psql(port, &["-c", "CREATE SCHEDULE s EVERY 'bogus' AS SELECT 1"])
        .await
        .unwrap_err();
    assert!(err.contains("EVERY 'bogus'"), "{err}");

    // The extended protocol, with parameters and typed results.
    let (pg, conn) = pg_connect(port).await;
    let rows = pg
        .query("SELECT id, i, t, b FROM kinds WHERE id = $1", &[&1i64])
        .await
        .expect("parameterised query");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i64>(0), 1);
    assert_eq!(rows[0].get::<_, Option<i32>>(1), Some(-7));
    assert_eq!(
        rows[0].get::<_, Option<String>>(2).as_deref(),
        Some("héllo")
    );
    assert_eq!(rows[0].get::<_, Option<bool>>(3), Some(true));
    let e = pg
        .query("SELECT id FROM kinsd WHERE id = $1", &[&1i64])
        .await
        .expect_err("a misspelt table");
    let db = e.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "42P01", "{db:?}");
    assert!(db.message().contains("did you mean 'kinds'?"), "{db:?}");
    // An insert's select list may name a column twice, as in Postgres (columns are matched by
    // position), over both protocols and through `weir sql`.
    pg.batch_execute(
        "CREATE TABLE pairs (a BIGINT, b BIGINT, PRIMARY KEY (a)) WITH (replicas = 1); \
         INSERT INTO pairs SELECT value, value FROM generate_series(1, 3)",
    )
    .await
    .expect("a repeated column over the simple protocol");
    pg.execute(
        "INSERT INTO pairs SELECT value + $1, value + $1 FROM generate_series(1, 3)",
        &[&10i64],
    )
    .await
    .expect("a repeated column over the extended protocol");
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    weir_rows(
        &client,
        "INSERT INTO pairs SELECT value + 20, value + 20 FROM generate_series(1, 3)",
    )
    .await
    .expect("a repeated column through weir sql");
    let got = weir_rows(&client, "SELECT count(*) FROM pairs WHERE a = b")
        .await
        .unwrap();
    assert_eq!(lines(&got[0], false), vec!["|9|"]);
    // A query's select list may name a column twice too: every column comes back, under the
    // name it was given, over both protocols and through `weir sql` (`count(*)` and `COUNT(*)`
    // are told apart only by DataFusion's refusal, which the statement is planned again after).
    let repeated = "SELECT a, a, count(*), COUNT(*), b AS a FROM pairs WHERE a = 1 GROUP BY a, b";
    let simple = pg.simple_query(repeated).await.expect("simple protocol");
    let row = simple
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .expect("a row");
    let names: Vec<&str> = row.columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["a", "a", "count(*)", "count(*)", "a"]);
    let values: Vec<Option<&str>> = (0..5).map(|i| row.get(i)).collect();
    assert_eq!(
        values,
        [Some("1"), Some("1"), Some("1"), Some("1"), Some("1")]
    );
    let extended = pg
        .query("SELECT a, a + $1 AS a FROM pairs WHERE a = 2", &[&100i64])
        .await
        .expect("extended protocol");
    let names: Vec<&str> = extended[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["a", "a"]);
    assert_eq!(
        (extended[0].get::<_, i64>(0), extended[0].get::<_, i64>(1)),
        (2, 102)
    );
    let counted = pg
        .query(
            "SELECT count(*), COUNT(*) FROM pairs WHERE a = $1",
            &[&3i64],
        )
        .await
        .expect("extended protocol, names equal only once planned");
    let names: Vec<&str> = counted[0].columns().iter().map(|c| c.name()).collect();
    assert_eq!(names, ["count(*)", "count(*)"]);
    assert_eq!(
        (counted[0].get::<_, i64>(0), counted[0].get::<_, i64>(1)),
        (1, 1)
    );
    let got = weir_rows(&client, repeated).await.unwrap();
    assert_eq!(
        column_names(&got[0]),
        ["a", "a", "count(*)", "count(*)", "a"]
    );
    assert_eq!(lines(&got[0], false), vec!["|1|1|1|1|1|"]);
    let got = weir_rows(&client, "SELECT CAST(NULL AS BIGINT), 'x', NULL")
        .await
        .expect("a cast NULL and a NULL, one name");
    let names = column_names(&got[0]);
    assert_eq!(names[0], names[2], "{names:?}");
    assert_eq!(lines(&got[0], false), vec!["||x||"]);
    // A list inside the query that names a column twice keeps DataFusion's refusal.
    let e = weir_rows(
        &client,
        "SELECT * FROM (SELECT count(*), COUNT(*) FROM pairs) t",
    )
    .await
    .expect_err("a subquery naming a column twice");
    assert!(e.to_string().contains("unique expression names"), "{e}");
    // Settings are the connection's own: another connection keeps the node's; an unknown one
    // is refused by name, not answered `SET` and ignored.
    pg.batch_execute("SET datafusion.execution.batch_size = 77")
        .await
        .expect("SET of a setting");
    let (other, other_conn) = pg_connect(port).await;
    let setting = "SELECT value FROM information_schema.df_settings \
                   WHERE name = 'datafusion.execution.batch_size'";
    pg.batch_execute("SET weir.bytes_per_task = 5")
        .await
        .expect("SET of Weir's setting");
    let shown = |messages: Vec<tokio_postgres::SimpleQueryMessage>| {
        messages.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
    };
    assert_eq!(
        shown(pg.simple_query("SHOW weir.bytes_per_task").await.unwrap()).as_deref(),
        Some("5")
    );
    assert_eq!(
        shown(
            other
                .simple_query("SHOW weir.bytes_per_task")
                .await
                .unwrap()
        )
        .as_deref(),
        Some("67108864")
    );
    // information_schema.df_settings lists Weir's settings under the names SET and SHOW take.
    let weir_setting = "SELECT value FROM information_schema.df_settings \
                        WHERE name = 'weir.bytes_per_task'";
    let listed: Option<String> = pg.query_one(weir_setting, &[]).await.unwrap().get(0);
    assert_eq!(listed.as_deref(), Some("5"));
    let mine: Option<String> = pg.query_one(setting, &[]).await.unwrap().get(0);
    let theirs: Option<String> = other.query_one(setting, &[]).await.unwrap().get(0);
    assert_eq!(mine.as_deref(), Some("77"));
    assert_ne!(theirs.as_deref(), Some("77"), "another connection's SET");
    drop(other);
    let _ = other_conn.await;
    // Postgres's forms of the time zone change the zone the session's queries run in, and SHOW
    // reads it back; a zone that does not exist is refused and the session keeps its own.
    let unix = "SELECT to_unixtime('2024-01-02T00:00:00')";
    assert_eq!(
        shown(pg.simple_query("SHOW TIME ZONE").await.unwrap()).as_deref(),
        Some("UTC")
    );
    for (set, zone, unix_then) in [
        ("SET TIME ZONE 'Europe/Paris'", "Europe/Paris", "1704150000"),
        ("SET timezone TO '+05:30'", "+05:30", "1704133800"),
        ("SET TIME ZONE -2", "-02:00", "1704160800"),
        ("SET TIME ZONE DEFAULT", "UTC", "1704153600"),
    ] {
        pg.batch_execute(set).await.expect(set);
        assert_eq!(
            shown(pg.simple_query("SHOW timezone").await.unwrap()).as_deref(),
            Some(zone),
            "{set}"
        );
        assert_eq!(
            shown(pg.simple_query(unix).await.unwrap()).as_deref(),
            Some(unix_then),
            "{set}"
        );
    }
    pg.batch_execute("SET TIME ZONE 'Asia/Tokyo'")
        .await
        .unwrap();
    let e = pg
        .batch_execute("SET TIME ZONE 'Mars/Olympus'")
        .await
        .expect_err("a zone that does not exist");
    let db = e.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.message().contains("Mars/Olympus"), "{db:?}");
    assert_eq!(
        shown(
            pg.simple_query("SHOW datafusion.execution.time_zone")
                .await
                .unwrap()
        )
        .as_deref(),
        Some("Asia/Tokyo")
    );
    let all = pg.simple_query("SHOW ALL").await.unwrap();
    assert!(
        all.iter()
            .any(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(r)
            if r.get(0) == Some("weir.bytes_per_task") && r.get(1) == Some("5"))),
        "SHOW ALL lists Weir's settings by their full names"
    );
    pg.batch_execute("SET TIME ZONE DEFAULT").await.unwrap();
    let e = pg
        .batch_execute("SET weir.nonsense = 1")
        .await
        .expect_err("an unknown setting");
    let db = e.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "22023", "{db:?}");
    assert!(db.message().contains("nonsense"), "{db:?}");
    let e = pg
        .execute("INSERT INTO kinds (id, t) VALUES (NULL, 'no key')", &[])
        .await
        .expect_err("a NULL key");
    let db = e.as_db_error().expect("an error from the server");
    assert_eq!(db.code().code(), "23502", "{db:?}");
    assert!(
        db.message() == "row 1: column 'id': NULL is not allowed",
        "{db:?}"
    );
    let n = pg
        .execute(
            "INSERT INTO kinds (id, t) VALUES ($1, $2)",
            &[&3i64, &"via bind"],
        )
        .await
        .expect("parameterised insert");
    assert_eq!(n, 1);
    let rows = pg
        .query("SELECT t FROM kinds WHERE id >= $1 ORDER BY id", &[&2i64])
        .await
        .unwrap();
    let texts: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(texts, vec![None, Some("via bind".to_string())]);
    // Weir's own statements over the extended protocol too (drivers such as psycopg prepare
    // every statement): a topic created (without a replica count: as many as this one-node
    // cluster holds), then listed with its columns described.
    pg.execute(
        "CREATE TOPIC prepared_clicks (page VARCHAR) WITH (partitions = 2, format = 'json')",
        &[],
    )
    .await
    .expect("CREATE TOPIC over the extended protocol");
    let topics = pg.query("SHOW TOPICS", &[]).await.expect("SHOW TOPICS");
    let name_at = topics
        .first()
        .and_then(|r| r.columns().iter().position(|c| c.name() == "topic"))
        .expect("SHOW TOPICS names its columns");
    assert!(
        topics
            .iter()
            .any(|r| r.get::<_, Option<String>>(name_at).as_deref() == Some("prepared_clicks")),
        "{topics:?}"
    );
    // A parameterised INSERT into the topic without a column list fills its own column.
    let written = pg
        .execute("INSERT INTO prepared_clicks VALUES ($1)", &[&"bound page"])
        .await
        .expect("INSERT INTO a topic without a column list, with a parameter");
    assert_eq!(written, 1);
    let rows = pg
        .query("SELECT page FROM prepared_clicks", &[])
        .await
        .unwrap();
    let pages: Vec<Option<String>> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(pages, vec![Some("bound page".to_string())]);
    let e = pg
        .execute("DROP TOPIC prepared_clicks; DROP TOPIC clicks", &[])
        .await
        .expect_err("one statement per prepared statement");
    assert!(
        e.to_string().contains("one statement") || format!("{e:?}").contains("one statement"),
        "{e:?}"
    );
    drop(pg);
    let _ = conn.await;
    cluster.shutdown().await;
}

/// Appends `values` (with keys) to a partition of `topic`.
async fn produce(client: &Client, topic: &str, partition: u32, values: &[(&str, &str)]) {
    let mut b = weir_proto::batch::BatchBuilder::new();
    for (key, value) in values {
        let key = (!key.is_empty()).then_some(key.as_bytes());
        b.push(key, value.as_bytes(), 1_700_000_000_000);
    }
    client
        .produce(topic, partition, b.finish(), weir_client::Acks::All)
        .await
        .expect("records produced");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn topics_read_as_tables_and_records_that_do_not_decode_are_reported() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.unwrap();

    weir_rows(
        &client,
        "CREATE TOPIC clicks (user_id BIGINT NOT NULL, page VARCHAR, ms INT) \
         WITH (partitions = 2, replicas = 3, format = 'json');
         CREATE TOPIC lines (n INT, word VARCHAR) WITH (format = 'csv');
         CREATE TABLE users (id BIGINT, name VARCHAR, PRIMARY KEY (id));
         INSERT INTO users VALUES (1, 'ann'), (2, 'bob')",
    )
    .await
    .expect("topics and table created");
    produce(
        &client,
        "clicks",
        0,
        &[
            ("u1", r#"{"user_id": 1, "page": "/home", "ms": 12}"#),
            ("u1", "not json at all"),
            ("u2", r#"{"user_id": 2, "page": "/cart"}"#),
            (
                "",
                r#"{"user_id": 1, "page": "/cart", "ms": 40, "extra": true}"#,
            ),
        ],
    )
    .await;
    produce(
        &client,
        "clicks",
        1,
        &[
            ("u2", r#"{"user_id": "two", "page": "/home"}"#),
            ("u2", r#"{"page": "/home", "ms": 3, "USER_ID": 2}"#),
        ],
    )
    .await;
    produce(
        &client,
        "lines",
        0,
        &[("", "1,alpha"), ("", "2,\"be, ta\"")],
    )
    .await;

    // Metadata columns, declared columns, NULLs for missing fields; bad records skipped and
    // reported with the first one's place and reason.
    let (got, warnings) = weir_rows_and_warnings(
        &client,
        "SELECT _partition, _offset, _key, user_id, page, ms FROM clicks ORDER BY _partition, _offset",
    )
    .await
    .unwrap();
    assert_eq!(
        lines(&got[0], true),
        vec![
            "|0|0|u1|1|/home|12|",
            "|0|2|u2|2|/cart||",
            "|0|3||1|/cart|40|",
            "|1|1|u2|2|/home|3|",
        ]
    );
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    // Partitions are read in parallel, so either bad record may be the first one met.
    assert!(
        warnings[0].starts_with("2 records of topic 'clicks' did not decode")
            && (warnings[0].contains("partition 0, offset 1: bad encoding: record is not JSON")
                || warnings[0].contains("partition 1, offset 0: column 'user_id'")),
        "{warnings:?}"
    );

    // Over the Postgres protocol the same count and first reason come as a WARNING notice after
    // the rows, which psql prints; a query that skips nothing sends none.
    let port = cluster.nodes[0]
        .pg_addr
        .expect("the node serves Postgres")
        .port();
    let (out, notices) = psql_with_notices(
        port,
        &[
            "-At",
            "-c",
            "SELECT _partition, _offset, user_id FROM clicks ORDER BY _partition, _offset",
        ],
    )
    .await
    .expect("psql reads the topic");
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        ["0|0|1", "0|2|2", "0|3|1", "1|1|2"]
    );
    assert!(
        notices.contains("WARNING:  2 records of topic 'clicks' did not decode"),
        "{notices:?}"
    );
    let (out, notices) = psql_with_notices(port, &["-At", "-c", "SELECT n FROM lines ORDER BY n"])
        .await
        .expect("psql reads the topic");
    assert_eq!((out.as_str(), notices.as_str()), ("1\n2\n", ""));
    let (out, notices) = psql_with_notices(
        port,
        &[
            "-c",
            "CREATE TABLE seen (id BIGINT, PRIMARY KEY (id))",
            "-c",
            "INSERT INTO seen SELECT DISTINCT user_id FROM clicks",
            "-c",
            "DROP TABLE seen",
        ],
    )
    .await
    .expect("psql copies from the topic");
    assert!(out.contains("INSERT 0 2"), "{out:?}");
    assert_eq!(
        notices.matches("did not decode").count(),
        1,
        "one notice, after the INSERT: {notices:?}"
    );

    // Drivers (psycopg, JDBC, Grafana's) send the extended protocol: the notice comes after the
    // rows there too, with bound parameters, after the last part of a portal read in parts, and
    // after an INSERT ... SELECT that skipped records.
    let (mut pg, notices, _) = pg_connect_with_notices(port).await;
    let skipped = "2 records of topic 'clicks' did not decode";
    let rows = pg
        .query(
            "SELECT user_id FROM clicks WHERE _offset >= $1 ORDER BY _partition, _offset",
            &[&0i64],
        )
        .await
        .expect("a prepared topic query runs");
    assert_eq!(rows.len(), 4);
    wait_for_notices(&notices, 1).await;
    assert!(notices.lock().unwrap()[0].contains(skipped), "{notices:?}");
    let tx = pg.transaction().await.expect("BEGIN");
    let portal = tx
        .bind("SELECT user_id FROM clicks", &[])
        .await
        .expect("the portal binds");
    let mut read = 0;
    loop {
        let part = tx
            .query_portal(&portal, 1)
            .await
            .expect("a part of the portal");
        if part.is_empty() {
            break;
        }
        read += part.len();
        if read < 4 {
            assert_eq!(
                notices.lock().unwrap().len(),
                1,
                "no notice before the last rows"
            );
        }
    }
    assert_eq!(read, 4);
    tx.commit().await.expect("COMMIT");
    wait_for_notices(&notices, 2).await;
    assert!(notices.lock().unwrap()[1].contains(skipped), "{notices:?}");
    pg.execute(
        "CREATE TABLE click_users (id BIGINT, PRIMARY KEY (id))",
        &[],
    )
    .await
    .expect("table created");
    let copied = pg
        .execute(
            "INSERT INTO click_users SELECT DISTINCT user_id FROM clicks",
            &[],
        )
        .await
        .expect("INSERT ... SELECT from a topic");
    assert_eq!(copied, 2);
    wait_for_notices(&notices, 3).await;
    assert!(notices.lock().unwrap()[2].contains(skipped), "{notices:?}");
    pg.query("SELECT n FROM lines", &[])
        .await
        .expect("reads lines");
    pg.execute("DROP TABLE click_users", &[])
        .await
        .expect("dropped");
    assert_eq!(notices.lock().unwrap().len(), 3, "{notices:?}");

    // Filters on partition and offset bound what is fetched.
    let sql = "SELECT count(*) FROM clicks WHERE _partition = 0 AND _offset >= 2";
    let got = weir_rows(&client, sql).await.unwrap();
    assert_eq!(lines(&got[0], false), vec!["|2|"]);
    let plan = weir_rows(&client, &format!("EXPLAIN {sql}")).await.unwrap();
    let text = pretty_format_batches(&plan[0]).unwrap().to_string();
    assert!(
        text.contains("TopicScanExec: topic=clicks, format=json, offsets=[0:2..4]"),
        "{text}"
    );

    // Topics join tables and aggregate like any table.
    let sql = "SELECT u.name, count(*) AS clicks FROM clicks c JOIN users u ON c.user_id = u.id \
               GROUP BY u.name";
    let got = weir_rows(&client, sql).await.unwrap();
    assert_eq!(lines(&got[0], false), vec!["|ann|2|", "|bob|2|"]);

    // Fixed windows over the record time, and the cleaning functions the pipelines use.
    let got = weir_rows(
        &client,
        "SELECT tumble(_timestamp, INTERVAL '1 hour') AS w, count(*) FROM clicks GROUP BY w;
         SELECT initcap('aNN  o''neil'), to_date('03/01/2024', '%m/%d/%Y'), \
                regexp_replace(' a-b ', '[^a-z]', '', 'g')",
    )
    .await
    .unwrap();
    // A record counts where the columns a query reads decode: this one reads no declared column,
    // so the record whose user_id is "two" counts (the one that is not JSON does not).
    assert_eq!(lines(&got[0], false), vec!["|2023-11-14T22:00:00Z|5|"]);
    assert_eq!(lines(&got[1], false), vec!["|Ann  O'Neil|2024-03-01|ab|"]);
    let e = weir_rows(
        &client,
        "SELECT tumble(page, INTERVAL '1 hour') FROM clicks",
    )
    .await
    .expect_err("not a timestamp");
    assert!(e.to_string().contains("not a timestamp"), "{e}");

    // CSV records, quoted fields included; SHOW TOPICS lists both with their formats.
    let got = weir_rows(&client, "SELECT n, word FROM lines")
        .await
        .unwrap();
    assert_eq!(lines(&got[0], false), vec!["|1|alpha|", "|2|be, ta|"]);
    let got = weir_rows(&client, "SHOW TOPICS").await.unwrap();
    let shown = lines(&got[0], false);
    assert!(
        shown.contains(&"|clicks|2|json|user_id BIGINT, page VARCHAR, ms INT|".to_string())
            && shown.contains(&"|lines|1|csv|n INT, word VARCHAR|".to_string()),
        "{shown:?}"
    );

    // A topic created without a format reads as bytes.
    client
        .create_topic(&weir_client::NewTopic::new("raw", 1, 3))
        .await
        .unwrap();
    produce(&client, "raw", 0, &[("k", "hi")]).await;
    let got = weir_rows(&client, "SELECT value, _key FROM raw")
        .await
        .unwrap();
    assert_eq!(lines(&got[0], false), vec!["|6869|k|"]);

    // Bad topic statements name what is wrong and create nothing.
    for (sql, says) in [
        (
            "CREATE TOPIC t1 (_offset INT) WITH (format = 'json')",
            "metadata columns",
        ),
        (
            "CREATE TOPIC t2 (a INT) WITH (format = 'avro')",
            "known: json, csv, text",
        ),
        (
            "CREATE TOPIC t3 (a INT) WITH (colour = 'red')",
            "unknown topic option 'colour'",
        ),
        (
            "CREATE TOPIC users (a INT)",
            "a table named 'users' already exists",
        ),
        (
            "CREATE TOPIC clicks (a INT)",
            "topic 'clicks' already exists",
        ),
    ] {
        let e = weir_rows(&client, sql).await.expect_err(sql);
        assert!(e.to_string().contains(says), "{sql}: {e}");
    }
    let listed = client.list_topics().await.unwrap();
    assert_eq!(listed.len(), 3, "{listed:?}");

    // INSERT INTO a topic appends records in its format: to the partition named, or by key.
    let got = weir_rows(
        &client,
        "INSERT INTO clicks (user_id, page, _partition) SELECT id, 'from-sql', 1 FROM users;
         INSERT INTO lines (n, word, _key) VALUES (3, 'with, comma', 'k3'), (4, NULL, NULL)",
    )
    .await
    .unwrap();
    assert_eq!(
        lines(&got[0], false),
        vec!["|2|"],
        "rows written are counted"
    );
    let got = weir_rows(
        &client,
        "SELECT _partition, _offset, user_id, page, ms FROM clicks WHERE page = 'from-sql'",
    )
    .await
    .unwrap();
    assert_eq!(
        lines(&got[0], false),
        vec!["|1|2|1|from-sql||", "|1|3|2|from-sql||"]
    );
    let got = weir_rows(&client, "SELECT n, word, _key FROM lines WHERE n > 2")
        .await
        .unwrap();
    assert_eq!(lines(&got[0], false), vec!["|3|with, comma|k3|", "|4|||"]);
    // Without a column list, VALUES and SELECT fill the topic's own columns, not its metadata.
    weir_rows(
        &client,
        "INSERT INTO lines VALUES (5, 'no list'); INSERT INTO lines SELECT 6, 'selected'",
    )
    .await
    .unwrap();
    let got = weir_rows(
        &client,
        "SELECT n, word, _key FROM lines WHERE n > 4 ORDER BY n",
    )
    .await
    .unwrap();
    assert_eq!(lines(&got[0], false), vec!["|5|no list||", "|6|selected||"]);
    let e = weir_rows(
        &client,
        "INSERT INTO clicks (user_id, page) VALUES (5, 'a'), (NULL, 'b')",
    )
    .await
    .expect_err("NULL into a NOT NULL column");
    assert!(
        e.to_string().contains("row 2") && e.to_string().contains("user_id"),
        "{e}"
    );
    let got = weir_rows(
        &client,
        "SELECT count(*) FROM clicks WHERE page IN ('a', 'b')",
    )
    .await
    .unwrap();
    assert_eq!(
        lines(&got[0], false),
        vec!["|0|"],
        "a refused batch writes nothing"
    );

    weir_rows(&client, "DROP TOPIC clicks; DROP TOPIC IF EXISTS nothing")
        .await
        .unwrap();
    let e = weir_rows(&client, "SELECT * FROM clicks")
        .await
        .expect_err("dropped");
    assert!(e.to_string().contains("clicks"), "{e}");
    cluster.shutdown().await;
}

/// One generated customer of the loyalty pipeline's batch layer: the messy CSV fields, and what
/// cleaning must make of them (computed here, independently of SQL).
struct Customer {
    csv: String,
    clean: String,
}

/// `initcap` as the cleaning means it: words (runs of letters and digits) capitalised, the rest
/// of each word lower case.
fn capitalised(s: &str) -> String {
    let mut out = String::new();
    let mut in_word = false;
    for c in s.chars() {
        if c.is_alphanumeric() {
            if in_word {
                out.extend(c.to_lowercase());
            } else {
                out.extend(c.to_uppercase());
            }
            in_word = true;
        } else {
            out.push(c);
            in_word = false;
        }
    }
    out
}

fn customer(id: i64, rng: &mut rand::rngs::StdRng) -> Customer {
    use rand::Rng;
    let first = ["john", "MARY", "o'neil", "Ana-lucia", "li"][rng.random_range(0..5)];
    let last = ["SMITH", "garcia", "Van der Berg", "ng"][rng.random_range(0..4)];
    let pad = " ".repeat(rng.random_range(0..3));
    let name = format!("{pad}{first} {last}{pad}");
    let (y, m, d) = (
        rng.random_range(1950..2006),
        rng.random_range(1..13),
        rng.random_range(1..29),
    );
    let (dob, dob_clean) = match rng.random_range(0..5) {
        0 | 1 => (format!("{y}-{m:02}-{d:02}"), format!("{y}-{m:02}-{d:02}")),
        2 => (format!("{d:02}/{m:02}/{y}"), format!("{y}-{m:02}-{d:02}")),
        3 => (format!("31/02/{y}"), String::new()),
        _ => (String::new(), String::new()),
    };
    let user = format!("{}.{}{id}", first.replace('\'', ""), last.replace(' ', ""));
    let (email, email_clean) = match rng.random_range(0..4) {
        0 => (String::new(), String::new()),
        1 => (
            format!("  {}@Example.COM ", user.to_uppercase()),
            format!("{}@example.com", user.to_lowercase()),
        ),
        _ => (
            format!("{user}@example.com"),
            format!("{}@example.com", user.to_lowercase()),
        ),
    };
    let digits = format!("555{:07}", rng.random_range(0..10_000_000));
    let (phone, phone_clean) = match rng.random_range(0..4) {
        0 => (String::new(), String::new()),
        1 => (
            format!("({}) {}-{}", &digits[..3], &digits[3..6], &digits[6..]),
            digits.clone(),
        ),
        2 => (
            format!("{}.{}.{}", &digits[..3], &digits[3..6], &digits[6..]),
            digits.clone(),
        ),
        _ => (digits.clone(), digits.clone()),
    };
    Customer {
        csv: format!("{id},\"{name}\",{dob},\"{email}\",\"{phone}\""),
        clean: format!(
            "|{id}|{}|{dob_clean}|{email_clean}|{phone_clean}|",
            capitalised(name.trim())
        ),
    }
}

/// The batch layer of the loyalty pipeline: a messy `customer.csv` read as an external table,
/// loaded into `customers`, cleaned into `customers_cln` by one `INSERT ... SELECT`, and every
/// row checked against cleaning computed independently.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn loyalty_batch_layer_cleans_messy_customers() {
    use rand::SeedableRng;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("customer.csv");
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let customers: Vec<Customer> = (1..=500).map(|id| customer(id, &mut rng)).collect();
    let mut csv = String::from("customer_id,name,date_of_birth,email,phone\n");
    for c in &customers {
        csv.push_str(&c.csv);
        csv.push('\n');
    }
    std::fs::write(&path, csv).unwrap();

    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.unwrap();
    let script = format!(
        "CREATE EXTERNAL TABLE customer_csv (customer_id BIGINT, name VARCHAR, \
           date_of_birth VARCHAR, email VARCHAR, phone VARCHAR) \
         STORED AS CSV LOCATION '{}' OPTIONS ('format.has_header' 'true');
         CREATE TABLE customers (customer_id BIGINT, name VARCHAR, date_of_birth VARCHAR, \
           email VARCHAR, phone VARCHAR, PRIMARY KEY (customer_id));
         INSERT INTO customers SELECT * FROM customer_csv;
         CREATE TABLE customers_cln (customer_id BIGINT, name VARCHAR, date_of_birth DATE, \
           email VARCHAR, phone VARCHAR, PRIMARY KEY (customer_id));
         INSERT INTO customers_cln
           SELECT customer_id,
                  initcap(trim(name)),
                  try_to_date(date_of_birth, '%Y-%m-%d', '%d/%m/%Y'),
                  nullif(lower(trim(email)), ''),
                  nullif(regexp_replace(phone, '[^0-9]', '', 'g'), '')
           FROM customers;
         SELECT * FROM customers_cln ORDER BY customer_id",
        path.display()
    );
    let got = weir_rows(&client, &script)
        .await
        .expect("the batch job runs");
    assert_eq!(lines(&got[2], false), vec!["|500|"], "every row loaded");
    assert_eq!(lines(&got[4], false), vec!["|500|"], "every row cleaned");
    let want: Vec<String> = customers.iter().map(|c| c.clean.clone()).collect();
    let cleaned = lines(&got[5], true);
    assert_eq!(cleaned.len(), want.len());
    for (got, want) in cleaned.iter().zip(&want) {
        assert_eq!(got, want);
    }
    cluster.shutdown().await;
}

/// An insert's rows go out in several requests in flight at once; a key given again in a later
/// request must still end with its last row, as if the requests had gone one by one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_inserted_twice_in_one_statement_keeps_its_last_row() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.unwrap();
    // 60,000 rows over 100 keys: every request holds every key, each later than the one before.
    let got = weir_rows(
        &client,
        "CREATE TABLE last (k BIGINT, v BIGINT, PRIMARY KEY (k));
         INSERT INTO last SELECT value % 100, value FROM generate_series(0, 59999) ORDER BY value;
         SELECT count(*), sum(CASE WHEN v = 59900 + k THEN 1 ELSE 0 END) FROM last",
    )
    .await
    .expect("the statements run");
    assert_eq!(lines(&got[1], false), vec!["|60000|"], "every row written");
    assert_eq!(
        lines(&got[2], false),
        vec!["|100|100|"],
        "every key holds its last row"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn external_tables_are_kept_by_the_cluster_and_copy_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("sales.csv");
    let mut csv = String::from("id,region,amount,day\n");
    for id in 1..=200i64 {
        let region = ["north", "south", "", "east"][(id % 4) as usize];
        let amount = if id % 9 == 0 {
            String::new()
        } else {
            format!("{}.{:02}", id * 3, id % 100)
        };
        csv.push_str(&format!(
            "{id},{region},{amount},2024-03-{:02}\n",
            1 + id % 28
        ));
    }
    std::fs::write(&csv_path, &csv).unwrap();
    let parquet_path = dir.path().join("sales.parquet");
    let json_path = dir.path().join("sales.json");
    let columns = "id BIGINT NOT NULL, region VARCHAR, amount DOUBLE, day DATE";

    let cluster = InProcessCluster::start(3).await;
    let one = Client::connect(cluster.addr(0)).await.unwrap();
    let two = Client::connect(cluster.addr(1)).await.unwrap();
    let three = Client::connect(cluster.addr(2)).await.unwrap();
    let create_csv = format!(
        "CREATE EXTERNAL TABLE sales_csv ({columns}) STORED AS CSV LOCATION '{}' \
         OPTIONS ('format.has_header' 'true')",
        csv_path.display()
    );
    weir_rows(&one, &create_csv)
        .await
        .expect("external table over CSV");
    let copied = weir_rows(
        &one,
        &format!(
            "COPY (SELECT * FROM sales_csv) TO '{}' STORED AS PARQUET;
             COPY (SELECT * FROM sales_csv WHERE region = 'north') TO '{}' STORED AS JSON",
            parquet_path.display(),
            json_path.display()
        ),
    )
    .await
    .expect("COPY TO parquet and json");
    assert_eq!(lines(&copied[0], false), vec!["|200|"]);
    assert_eq!(lines(&copied[1], false), vec!["|50|"]);

    // Another node reads the table created on the first, and creates its own over the copies.
    let on_two = wait_until("node 2 sees sales_csv", Duration::from_secs(30), || async {
        weir_rows(&two, "SELECT count(*), count(amount) FROM sales_csv")
            .await
            .ok()
    })
    .await;
    assert_eq!(lines(&on_two[0], false), vec!["|200|178|"]);
    weir_rows(
        &two,
        &format!(
            "CREATE EXTERNAL TABLE sales_pq STORED AS PARQUET LOCATION '{}';
             CREATE EXTERNAL TABLE sales_json ({columns}) STORED AS JSON LOCATION '{}'",
            parquet_path.display(),
            json_path.display()
        ),
    )
    .await
    .expect("external tables over the copies");

    let reference = SessionContext::new();
    reference
        .sql(&create_csv.replace("sales_csv", "sales"))
        .await
        .expect("reference table");
    let queries = [
        (
            "SELECT region, count(*), round(sum(amount), 2), min(day), max(day) FROM {t} GROUP BY region",
            false,
        ),
        (
            "SELECT * FROM {t} WHERE amount IS NULL OR id > 190 ORDER BY id",
            true,
        ),
        ("SELECT id, amount FROM {t} WHERE region = 'north'", false),
    ];
    for (query, ordered) in queries {
        let want = lines(
            &reference_rows(&reference, &query.replace("{t}", "sales")).await,
            ordered,
        );
        for (client, table) in [(&three, "sales_pq"), (&one, "sales_csv")] {
            let sql = query.replace("{t}", table);
            let got = wait_until(&format!("{sql} runs"), Duration::from_secs(30), || async {
                weir_rows(client, &sql).await.ok()
            })
            .await;
            assert_eq!(lines(&got[0], ordered), want, "{sql}");
        }
    }
    let north = query_lines(&three, "SELECT count(*), sum(id) FROM sales_json").await;
    let want = lines(
        &reference_rows(
            &reference,
            "SELECT count(*), sum(id) FROM sales WHERE region = 'north'",
        )
        .await,
        false,
    );
    assert_eq!(north, want);

    // The names are the cluster's: taken names, missing files and drops are seen everywhere.
    let again = weir_rows(&three, &create_csv)
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        again
            .as_deref()
            .is_some_and(|e| e.contains("already exists")),
        "{again:?}"
    );
    weir_rows(&three, &create_csv.replace("TABLE", "TABLE IF NOT EXISTS"))
        .await
        .expect("IF NOT EXISTS");
    weir_rows(&one, "CREATE TABLE kept (k BIGINT, PRIMARY KEY (k))")
        .await
        .expect("region table");
    let clash = weir_rows(&one, &create_csv.replace("sales_csv", "kept"))
        .await
        .err()
        .map(|e| e.to_string());
    assert!(
        clash
            .as_deref()
            .is_some_and(|e| e.contains("'kept' already exists")),
        "{clash:?}"
    );
    let missing = dir.path().join("nowhere.csv");
    let err = weir_rows(
        &one,
        &format!(
            "CREATE EXTERNAL TABLE lost STORED AS CSV LOCATION '{}'",
            missing.display()
        ),
    )
    .await
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("nowhere.csv"), "{err}");
    let tables = query_lines(&two, "SHOW TABLES").await.join("\n");
    assert!(!tables.contains("lost"), "nothing recorded: {tables}");
    weir_rows(&two, "DROP TABLE sales_csv").await.expect("drop");
    wait_until(
        "node 1 forgets sales_csv",
        Duration::from_secs(30),
        || async {
            let err = weir_rows(&one, "SELECT count(*) FROM sales_csv")
                .await
                .err()?;
            err.to_string().contains("sales_csv").then_some(())
        },
    )
    .await;
    assert!(
        csv_path.exists(),
        "dropping an external table keeps its files"
    );
    cluster.shutdown().await;
}

/// The lines of the first statement's result, sorted.
async fn query_lines(client: &Client, sql: &str) -> Vec<String> {
    let got = wait_until(&format!("{sql} runs"), Duration::from_secs(30), || async {
        weir_rows(client, sql).await.ok()
    })
    .await;
    lines(&got[0], false)
}

/// A tokio-postgres client of the node serving Postgres on `port`, and its connection's task.
async fn pg_connect(port: u16) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (pg, _, connection) = pg_connect_with_notices(port).await;
    (pg, connection)
}

/// Notices the server sent a connection, in order.
type Notices = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A tokio-postgres client of the node serving Postgres on `port`, with the notices it receives
/// and the task driving its connection (it ends when the client is dropped).
async fn pg_connect_with_notices(
    port: u16,
) -> (tokio_postgres::Client, Notices, tokio::task::JoinHandle<()>) {
    let (pg, mut conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=weir"),
        tokio_postgres::NoTls,
    )
    .await
    .expect("tokio-postgres connects");
    let notices = Notices::default();
    let kept = notices.clone();
    let connection = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(message)) = futures::StreamExt::next(&mut messages).await {
            if let tokio_postgres::AsyncMessage::Notice(n) = message {
                kept.lock().unwrap().push(n.message().to_string());
            }
        }
    });
    (pg, notices, connection)
}

/// Waits until a connection has received `count` notices.
async fn wait_for_notices(notices: &Notices, count: usize) {
    wait_until("the notice", Duration::from_secs(30), || async {
        (notices.lock().unwrap().len() >= count).then_some(())
    })
    .await;
}

/// A query that runs for hours: a sum (not answerable from statistics) over 10^11 rows.
const ENDLESS: &str = "SELECT sum(value % 7) FROM generate_series(1, 100000000000)";

/// The error a statement ended with, waiting a minute at most.
async fn error_of(
    client: &Client,
    sql: &str,
    timeout: Option<Duration>,
) -> weir_client::ClientError {
    tokio::time::timeout(Duration::from_secs(60), async {
        let mut stream = client.sql_with_timeout(sql, timeout).await?;
        while stream.next().await?.is_some() {}
        Ok::<_, weir_client::ClientError>(())
    })
    .await
    .expect("the statement stopped within a minute")
    .expect_err("the statement failed")
}

/// Sends cancel requests for `pg`'s running statement until `running` ends (one sent before the
/// statement starts cancels nothing); its error.
async fn cancel_until_done(
    pg: &tokio_postgres::Client,
    running: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) -> tokio_postgres::Error {
    let token = pg.cancel_token();
    wait_until("the query to be cancelled", Duration::from_secs(60), || {
        let token = token.clone();
        let done = running.is_finished();
        async move {
            if done {
                return Some(());
            }
            let _ = token.cancel_query(tokio_postgres::NoTls).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
            None
        }
    })
    .await;
    running
        .await
        .expect("joined")
        .expect_err("the query was cancelled")
}

/// As in Postgres, a session's `SET statement_timeout = 0` runs its statements without a limit,
/// the node's `--sql-timeout-secs` included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_timeout_of_zero_lifts_the_nodes_timeout() {
    let cluster = InProcessCluster::start_with(1, |cfg| {
        cfg.sql_timeout = Some(Duration::from_millis(300));
    })
    .await;
    let port = cluster.nodes[0]
        .pg_addr
        .expect("the node serves Postgres")
        .port();
    let (pg, conn) = pg_connect(port).await;
    let canceled = |e: &tokio_postgres::Error| {
        e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    };
    let e = pg
        .simple_query(ENDLESS)
        .await
        .expect_err("the node's timeout");
    assert!(canceled(&e), "{e:?}");
    assert!(format!("{e:?}").contains("statement timeout"), "{e:?}");

    pg.batch_execute("SET statement_timeout = 0")
        .await
        .expect("set");
    let pg = std::sync::Arc::new(pg);
    let running = tokio::spawn({
        let pg = pg.clone();
        async move { pg.simple_query(ENDLESS).await.map(|_| ()) }
    });
    // Many times the node's timeout later, the statement still runs (with the node's timeout
    // still in force it would have ended after 300 ms); only a cancel ends it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!running.is_finished(), "the statement stopped by itself");
    let e = cancel_until_done(&pg, running).await;
    assert!(format!("{e:?}").contains("user request"), "{e:?}");

    // A session timeout set again applies.
    pg.batch_execute("SET statement_timeout = '200ms'")
        .await
        .expect("set");
    let e = pg.simple_query(ENDLESS).await.expect_err("timed out");
    assert!(format!("{e:?}").contains("statement timeout"), "{e:?}");
    drop(pg);
    let _ = conn.await;
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn long_statements_stop_at_their_timeout_or_when_the_client_cancels() {
    let cluster = InProcessCluster::start(1).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");

    // gRPC: the request's timeout stops the statement with DEADLINE_EXCEEDED.
    let e = error_of(&client, ENDLESS, Some(Duration::from_millis(300))).await;
    assert_eq!(e.code(), Code::DeadlineExceeded, "{e}");
    assert!(e.to_string().contains("statement timeout (300 ms)"), "{e}");

    let port = cluster.nodes[0]
        .pg_addr
        .expect("the node serves Postgres")
        .port();
    let (pg, conn) = pg_connect(port).await;
    let canceled = |e: &tokio_postgres::Error| {
        e.code() == Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    };

    // Postgres: the session's statement_timeout, over the simple and the extended protocol.
    pg.batch_execute("SET statement_timeout = '300ms'")
        .await
        .expect("set");
    let e = pg.simple_query(ENDLESS).await.expect_err("timed out");
    assert!(canceled(&e), "{e:?}");
    let e = pg
        .query(
            "SELECT sum(value % $1) FROM generate_series(1, 100000000000)",
            &[&7i64],
        )
        .await
        .expect_err("timed out");
    assert!(canceled(&e), "{e:?}");
    assert!(format!("{e:?}").contains("statement timeout"), "{e:?}");
    pg.batch_execute("SET statement_timeout = 0")
        .await
        .expect("reset");

    // A cancel request (psql's Ctrl-C) stops the running statement.
    let pg = std::sync::Arc::new(pg);
    let running = tokio::spawn({
        let pg = pg.clone();
        async move { pg.simple_query(ENDLESS).await.map(|_| ()) }
    });
    let e = cancel_until_done(&pg, running).await;
    assert!(canceled(&e), "{e:?}");
    assert!(format!("{e:?}").contains("user request"), "{e:?}");

    // The connection and the node go on.
    let rows = pg
        .simple_query("SELECT 41 + 1")
        .await
        .expect("a query after the cancel");
    assert!(
        rows.iter().any(|m| matches!(m,
            tokio_postgres::SimpleQueryMessage::Row(r) if r.get(0) == Some("42"))),
        "{rows:?}"
    );
    drop(pg);
    let _ = conn.await;
    let e = weir_rows(&client, "SELECT 1").await;
    assert!(e.is_ok(), "{e:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_insert_writes_the_rows_of_one_key_in_the_order_it_read_them() {
    // A statement's rows go out in requests of 2,000; rows of one key in different requests
    // must land in the order they were read, so the last one read is the one the table keeps
    // (a sink that sends requests side by side must keep this).
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("connects");
    weir_rows(
        &client,
        "CREATE TABLE last_seen (k BIGINT, v BIGINT, PRIMARY KEY (k)) WITH (replicas = 3)",
    )
    .await
    .expect("create");
    // 20,000 rows in order of v, ten requests of 2,000, each holding every one of the 100 keys.
    let out = weir_rows(
        &client,
        "INSERT INTO last_seen SELECT value % 100, value FROM generate_series(1, 20000) \
         ORDER BY value;
         SELECT count(*), sum(v), min(v) FROM last_seen",
    )
    .await
    .expect("insert and read");
    // Key k keeps 19,900 + k (key 0 keeps 20,000): the sum is 99 × 19,900 + 4,950 + 20,000.
    assert_eq!(lines(&out[1], true), vec!["|100|1995050|19901|"]);
    cluster.shutdown().await;
}

/// A table or topic created through one node is usable at once through every other: each node
/// applies the catalog a little after the metadata leader, and a statement naming something its
/// node has not applied yet brings that node's catalog up to date first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn what_one_node_creates_the_others_use_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let csv = dir.path().join("points.csv");
    std::fs::write(&csv, "id,label\n1,a\n2,b\n3,c\n").expect("written");
    let cluster = InProcessCluster::start(3).await;
    let mut clients = Vec::new();
    for i in 0..3 {
        clients.push(Client::connect(cluster.addr(i)).await.expect("connects"));
    }
    for round in 0..3 {
        let (a, b, c) = (
            &clients[round % 3],
            &clients[(round + 1) % 3],
            &clients[(round + 2) % 3],
        );
        weir_rows(
            a,
            &format!(
                "CREATE TABLE t{round} (k BIGINT, v VARCHAR, PRIMARY KEY (k));
                 CREATE TOPIC e{round} (id BIGINT NOT NULL)
                   WITH (partitions = 1, replicas = 3, format = 'json');
                 CREATE EXTERNAL TABLE f{round} (id BIGINT, label VARCHAR) STORED AS CSV
                   LOCATION '{}' OPTIONS ('format.has_header' 'true')",
                csv.display()
            ),
        )
        .await
        .expect("created");
        weir_rows(
            b,
            &format!(
                "INSERT INTO t{round} VALUES (1, 'x'), (2, 'y');
                 INSERT INTO e{round} (id) VALUES (7)"
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: the next node did not find them: {e}"));
        let read = weir_rows(b, &format!("SELECT label FROM f{round} WHERE id = 2"))
            .await
            .unwrap_or_else(|e| panic!("round {round}: the next node did not find f{round}: {e}"));
        assert_eq!(lines(&read[0], false), ["|b|"], "round {round}");
        let out = weir_rows(
            c,
            &format!(
                "SELECT k, v FROM t{round} ORDER BY k; SELECT count(*) FROM e{round};
                 SELECT count(*) FROM f{round}"
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("round {round}: the third node did not find them: {e}"));
        assert_eq!(lines(&out[0], false), ["|1|x|", "|2|y|"], "round {round}");
        assert_eq!(lines(&out[1], false), ["|1|"], "round {round}");
        assert_eq!(lines(&out[2], false), ["|3|"], "round {round}");
    }
    cluster.shutdown().await;
}
