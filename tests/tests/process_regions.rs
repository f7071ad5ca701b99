//! The region store with real `weir-node` processes: a 1,000,000-row CSV load survives a node
//! SIGKILLed in the middle of it (and regions splitting under it), and concurrent put / get /
//! compare-and-set stay linearizable while leaders are killed and nodes partitioned.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use weir_client::{Client, ScanOptions, Value};
use weir_tests::process::binary;
use weir_tests::{members_up, wait_until, ProcessCluster};

/// An order-independent checksum of rows given as their CSV text.
fn row_sum(line: &str) -> u64 {
    u64::from(crc32fast::hash(line.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn csv_load_of_a_million_rows_survives_a_killed_node() {
    const ROWS: u64 = 1_000_000;
    let mut cluster = ProcessCluster::start(3, &[]);
    let first = cluster.addr(0);
    wait_until("3 members up", Duration::from_secs(60), || {
        let first = first.clone();
        async move { (members_up(&first).await == 3).then_some(()) }
    })
    .await;

    // The file, and the checksum of what it holds.
    let path = cluster.dir().join("rows.csv");
    let mut want_sum = 0u64;
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(f, "id,name,amount,day").unwrap();
        for i in 0..ROWS {
            let line = format!(
                "{i},user{},{}.{:02},2024-{:02}-{:02}",
                i % 9973,
                i % 100_000,
                i % 100,
                1 + i % 12,
                1 + i % 28
            );
            want_sum = want_sum.wrapping_add(row_sum(&line));
            writeln!(f, "{line}").unwrap();
        }
    }

    // Load through node 0 with the CLI, splitting regions at 8 MiB so splits happen under the load.
    let mut load = Command::new(binary("weir"))
        .args([
            "--server",
            &cluster.addr(0),
            "--retry-for-ms",
            "120000",
            "load",
            "csv",
        ])
        .arg(&path)
        .args([
            "--table",
            "big",
            "--create",
            "--header",
            "--split-bytes",
            "8388608",
        ])
        .args(["--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weir load starts");

    // Once rows are flowing and the table has split, SIGKILL a node other than the one the
    // loader talks to (the leader of the first region when that is not node 0), then restart it.
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    let victim = wait_until("the load to be under way", Duration::from_secs(120), || {
        let client = client.clone();
        let addrs: Vec<String> = (0..3).map(|i| cluster.addr(i)).collect();
        async move {
            let info = client.describe_table("big").await.ok()?;
            let bytes: u64 = info.regions.iter().map(|r| r.approx_bytes).sum();
            if info.regions.len() < 2 || bytes < 10 << 20 {
                return None;
            }
            let leader = info.regions.first()?.leader_addr.clone();
            Some(
                addrs
                    .iter()
                    .position(|a| *a == leader)
                    .filter(|i| *i != 0)
                    .unwrap_or(1),
            )
        }
    })
    .await;
    cluster.kill(victim);
    let survivor = cluster.addr(0);
    wait_until(
        "the others to serve the table",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            let gone = cluster.addr(victim);
            let _ = &survivor;
            async move {
                let info = client.describe_table("big").await.ok()?;
                info.regions
                    .iter()
                    .all(|r| r.leader != 0 && r.leader_addr != gone)
                    .then_some(())
            }
        },
    )
    .await;
    cluster.restart(victim);

    let out = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(600);
        loop {
            if let Some(status) = load.try_wait().expect("wait for weir load") {
                let mut stdout = String::new();
                let mut stderr = String::new();
                use std::io::Read;
                if let Some(mut s) = load.stdout.take() {
                    let _ = s.read_to_string(&mut stdout);
                }
                if let Some(mut s) = load.stderr.take() {
                    let _ = s.read_to_string(&mut stderr);
                }
                return (status, stdout, stderr);
            }
            if std::time::Instant::now() > deadline {
                let _ = load.kill();
                panic!("weir load did not finish in 10 minutes");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .unwrap();
    assert!(out.0.success(), "weir load failed: {}\n{}", out.1, out.2);
    let summary: serde_json::Value = serde_json::from_str(&out.1).expect("JSON summary");
    assert_eq!(summary["rows"], ROWS, "{summary}");

    // Every row once, as in the file.
    let table = client.table("big").await.unwrap();
    let schema = table.schema().clone();
    let mut count = 0u64;
    let mut sum = 0u64;
    let mut last: Option<i64> = None;
    table
        .scan(&ScanOptions::default(), |page| {
            for (_, row) in page {
                let text: Vec<String> = row
                    .values
                    .iter()
                    .zip(&schema.columns)
                    .map(|(v, c)| match v {
                        // The file writes two decimals; DOUBLE renders its shortest form.
                        Value::Float(f) => format!("{f:.2}"),
                        other => other.render(c.ty),
                    })
                    .collect();
                let Value::Int(id) = row.values[0] else {
                    panic!("id is an integer")
                };
                assert!(last.is_none_or(|l| l < id), "keys in order, once");
                last = Some(id);
                sum = sum.wrapping_add(row_sum(&text.join(",")));
                count += 1;
            }
            true
        })
        .await
        .unwrap();
    assert_eq!(count, ROWS);
    assert_eq!(sum, want_sum, "checksum over all rows");
    let info = client.describe_table("big").await.unwrap();
    assert!(info.regions.len() >= 2, "the table split during the load");
    for pair in info.regions.windows(2) {
        assert_eq!(pair[0].end_key, pair[1].start_key, "regions tile the keys");
    }
}
