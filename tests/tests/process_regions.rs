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
    wait_until("3 members up", Duration::from_secs(120), || {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_of_a_lost_node_are_recreated_elsewhere() {
    let mut cluster = ProcessCluster::start(4, &["--down-timeout-secs", "4"]);
    let first = cluster.addr(0);
    wait_until("4 members up", Duration::from_secs(120), || {
        let first = first.clone();
        async move { (members_up(&first).await == 4).then_some(()) }
    })
    .await;
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    let schema = weir_client::TableSchema::parse("k BIGINT, v VARCHAR", &["k".into()]).unwrap();
    client
        .create_table("kept", &schema, 3, 16 * 1024)
        .await
        .unwrap();
    let table = client.table("kept").await.unwrap();
    const ROWS: i64 = 2000;
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(200) {
        let rows = chunk
            .iter()
            .map(|k| vec![Value::Int(*k), Value::Str(format!("{k:0>40}"))])
            .collect();
        table.put(rows).await.unwrap();
    }
    wait_until("the table to split", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let info = client.describe_table("kept").await.ok()?;
            (info.regions.len() >= 3).then_some(())
        }
    })
    .await;

    // Kill the last node for good; after the down timeout every region has three replicas on
    // live nodes again, and a leader among them.
    let lost = 3usize;
    let lost_id = weir_tests::node_id_of(&client, &cluster.addr(lost)).await;
    cluster.kill(lost);
    wait_until(
        "every region back to 3 live replicas",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            async move {
                let info = client.describe_table("kept").await.ok()?;
                info.regions
                    .iter()
                    .all(|r| {
                        r.replicas.len() == 3
                            && !r.replicas.contains(&lost_id)
                            && r.leader != 0
                            && r.leader != lost_id
                    })
                    .then_some(())
            }
        },
    )
    .await;
    let table = client.table("kept").await.unwrap();
    let mut keys = Vec::new();
    table
        .scan(&ScanOptions::default(), |page| {
            keys.extend(page.into_iter().map(|(_, r)| r.values[0].clone()));
            true
        })
        .await
        .unwrap();
    assert_eq!(keys, (0..ROWS).map(Value::Int).collect::<Vec<_>>());
    // And the table still takes writes.
    table
        .put(vec![vec![Value::Int(ROWS), Value::Str("after".into())]])
        .await
        .unwrap();
}

mod linearizable {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use weir_proto::v1::kv_client::KvClient;
    use weir_tests::kv_register::run_client;
    use weir_tests::linearizability::{check, History, Outcome, Verdict};
    use weir_tests::{members_up, metadata_voters, wait_until, ProcessCluster};

    fn channel(addr: &str) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("address")
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy()
    }

    /// Index of the node leading the table's region, as the cluster reports it.
    async fn region_leader(cluster: &ProcessCluster, via: usize) -> Option<usize> {
        let client = weir_client::Client::connect(cluster.addr(via)).await.ok()?;
        let info = client.describe_table("reg").await.ok()?;
        let leader = info.regions.first()?.leader_addr.clone();
        (0..cluster.nodes.len()).find(|i| cluster.addr(*i) == leader)
    }

    fn cas_ok(h: &History) -> usize {
        h.events()
            .iter()
            .filter(|e| e.outcome == Outcome::CasResult(true))
            .count()
    }

    fn ok_ops(h: &History) -> usize {
        h.events()
            .iter()
            .filter(|e| e.outcome != Outcome::Unknown)
            .count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn put_get_cas_stay_linearizable_through_kills_and_partitions() {
        // Short Raft timeouts so that failovers fit the test.
        let mut cluster =
            ProcessCluster::start_with_env(3, &[], &[("WEIR_RAFT_HEARTBEAT_MS", "100")]);
        let first = cluster.addr(0);
        wait_until("3 members up", Duration::from_secs(120), || {
            let first = first.clone();
            async move { (members_up(&first).await == 3).then_some(()) }
        })
        .await;
        // The first node is killed below: the metadata group must have all three as voters by
        // then (they join as learners), or the cluster cannot answer without it.
        wait_until("3 metadata voters", Duration::from_secs(120), || {
            let first = first.clone();
            async move { (metadata_voters(&first).await == 3).then_some(()) }
        })
        .await;
        let client = weir_client::Client::connect(cluster.addr(0)).await.unwrap();
        let schema = weir_client::TableSchema::parse("k VARCHAR, v BIGINT", &["k".into()]).unwrap();
        client.create_table("reg", &schema, 3, 0).await.unwrap();

        let history = Arc::new(History::new());
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..6)
            .map(|i| {
                tokio::spawn(run_client(
                    i,
                    KvClient::new(channel(&cluster.addr(i % 3))),
                    history.clone(),
                    stop.clone(),
                    rand::random(),
                ))
            })
            .collect();
        wait_until("ops to flow", Duration::from_secs(30), || {
            let n = ok_ops(&history);
            async move { (n > 200).then_some(()) }
        })
        .await;

        // Kill the region's leader, let the others elect, bring it back.
        let leader = wait_until("a region leader", Duration::from_secs(30), || {
            let c = &cluster;
            async move { region_leader(c, 0).await }
        })
        .await;
        cluster.kill(leader);
        let via = (leader + 1) % 3;
        let before = ok_ops(&history);
        wait_until("a new leader serving ops", Duration::from_secs(60), || {
            let c = &cluster;
            let h = history.clone();
            async move {
                let l = region_leader(c, via).await?;
                (l != leader && ok_ops(&h) > before + 100).then_some(())
            }
        })
        .await;
        cluster.restart(leader);

        // Partition the new leader away (SIGSTOP) until the others serve ops, then heal.
        let leader = wait_until("the current leader", Duration::from_secs(30), || {
            let c = &cluster;
            async move { region_leader(c, via).await }
        })
        .await;
        cluster.pause(leader);
        let before = ok_ops(&history);
        wait_until(
            "ops to flow without the partitioned node",
            Duration::from_secs(60),
            || {
                let h = history.clone();
                async move { (ok_ops(&h) > before + 100).then_some(()) }
            },
        )
        .await;
        cluster.resume(leader);
        let before = ok_ops(&history);
        // The history is judged once it holds enough of every kind of operation: how long that
        // takes depends on the machine, not on the cluster's correctness.
        wait_until(
            "ops and successful compare-and-sets after healing",
            Duration::from_secs(120),
            || {
                let h = history.clone();
                async move { (ok_ops(&h) > before + 200 && cas_ok(&h) > 10).then_some(()) }
            },
        )
        .await;
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            c.await.unwrap();
        }

        let events = history.events();
        match check(&events, None) {
            Verdict::Linearizable => {}
            other => panic!("{} events: {other:?}", events.len()),
        }
    }
}
