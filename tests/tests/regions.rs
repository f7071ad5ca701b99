//! The region store on an in-process 3-node cluster: splits under load, scans across regions,
//! compare-and-set, and bad input.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::Code;
use weir_client::{CasAction, Client, Expectation, ScanOptions, Table, TableSchema, Value};
use weir_tests::{wait_until, InProcessCluster};

/// Every key of `table` by a full scan, failing on a key that is not larger than the one before.
async fn scan_keys(table: &Table, reverse: bool) -> Vec<i64> {
    let mut keys = Vec::new();
    let opts = ScanOptions {
        reverse,
        columns: vec!["k".into()],
        ..ScanOptions::default()
    };
    table
        .scan(&opts, |page| {
            for (_, row) in page {
                match row.values.first() {
                    Some(Value::Int(k)) => keys.push(*k),
                    other => panic!("unexpected key {other:?}"),
                }
            }
            true
        })
        .await
        .expect("scan");
    keys
}

fn strictly_increasing(keys: &[i64]) -> bool {
    keys.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_under_load_keep_every_key_once_and_scans_ordered() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    let schema =
        TableSchema::parse("k BIGINT, writer INT, payload VARCHAR", &["k".into()]).unwrap();
    client
        .create_table("split", &schema, 3, 16 * 1024)
        .await
        .unwrap();

    const WRITERS: i64 = 4;
    const PER_WRITER: i64 = 1500;
    let acked: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let table = Client::connect(cluster.addr(w as usize % 3))
            .await
            .unwrap()
            .table("split")
            .await
            .unwrap();
        let acked = acked.clone();
        writers.push(tokio::spawn(async move {
            let payload = "x".repeat(100);
            for chunk in (0..PER_WRITER).collect::<Vec<_>>().chunks(25) {
                let rows: Vec<Vec<Value>> = chunk
                    .iter()
                    .map(|i| {
                        vec![
                            Value::Int(w + WRITERS * i),
                            Value::Int(w),
                            Value::Str(payload.clone()),
                        ]
                    })
                    .collect();
                let keys: Vec<i64> = chunk.iter().map(|i| w + WRITERS * i).collect();
                table.put(rows).await.expect("put acknowledged");
                acked.lock().unwrap().extend(keys);
            }
        }));
    }

    // Scan while the writers run and the table splits: each scan must be strictly ordered and
    // hold every key acknowledged before it started.
    let scanner_table = Client::connect(cluster.addr(1))
        .await
        .unwrap()
        .table("split")
        .await
        .unwrap();
    let mut scans = 0;
    while writers.iter().any(|w| !w.is_finished()) {
        let before: BTreeSet<i64> = acked.lock().unwrap().clone();
        let reverse = scans % 2 == 1;
        let mut keys = scan_keys(&scanner_table, reverse).await;
        if reverse {
            keys.reverse();
        }
        assert!(
            strictly_increasing(&keys),
            "scan {scans} repeated or reordered a key"
        );
        let seen: BTreeSet<i64> = keys.into_iter().collect();
        let missing: Vec<_> = before.difference(&seen).take(5).collect();
        assert!(
            missing.is_empty(),
            "scan {scans} skipped acknowledged keys {missing:?}"
        );
        scans += 1;
    }
    for w in writers {
        w.await.unwrap();
    }
    assert!(scans >= 2, "the scanner ran during the load");

    let info = wait_until(
        "the table to split into many regions",
        Duration::from_secs(60),
        || {
            let client = client.clone();
            async move {
                let info = client.describe_table("split").await.ok()?;
                (info.regions.len() >= 6).then_some(info)
            }
        },
    )
    .await;
    // Regions tile the key space in order.
    for pair in info.regions.windows(2) {
        assert_eq!(pair[0].end_key, pair[1].start_key);
    }
    assert!(info.regions.first().unwrap().start_key.is_empty());
    assert!(info.regions.last().unwrap().end_key.is_empty());

    let table = client.table("split").await.unwrap();
    let keys = scan_keys(&table, false).await;
    let want: Vec<i64> = (0..WRITERS * PER_WRITER).collect();
    assert_eq!(keys, want, "every written key exactly once, in order");
    let mut back = scan_keys(&table, true).await;
    back.reverse();
    assert_eq!(back, want);

    // A bounded scan and a limit cross region boundaries too.
    let mut some = Vec::new();
    table
        .scan(
            &ScanOptions {
                start: Some(vec![Value::Int(1000)]),
                end: Some(vec![Value::Int(5000)]),
                limit: 3500,
                columns: vec!["k".into()],
                ..ScanOptions::default()
            },
            |page| {
                some.extend(page.into_iter().map(|(_, r)| r.values[0].clone()));
                true
            },
        )
        .await
        .unwrap();
    assert_eq!(some.len(), 3500);
    assert_eq!(some.first(), Some(&Value::Int(1000)));
    assert_eq!(some.last(), Some(&Value::Int(4499)));

    // Multi-get across regions answers in request order; absent keys are None.
    let got = table
        .get(
            &[
                vec![Value::Int(5999)],
                vec![Value::Int(7)],
                vec![Value::Int(-1)],
            ],
            &["writer".into()],
            false,
        )
        .await
        .unwrap();
    assert_eq!(got[0].as_ref().unwrap().values, vec![Value::Int(3)]);
    assert_eq!(got[1].as_ref().unwrap().values, vec![Value::Int(3)]);
    assert!(got[2].is_none());

    // An atomic write spanning regions is refused and writes nothing.
    let first = i64::from_be_bytes(
        info.regions[1].start_key[..8]
            .try_into()
            .map(|b: [u8; 8]| (u64::from_be_bytes(b) ^ (1 << 63)).to_be_bytes())
            .unwrap(),
    );
    let err = table
        .write_atomic(
            vec![
                vec![Value::Int(first - 1), Value::Int(9), Value::Str("a".into())],
                vec![Value::Int(first), Value::Int(9), Value::Str("a".into())],
            ],
            vec![],
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("one region"), "{err}");
    let after = table
        .get(&[vec![Value::Int(first - 1)]], &["writer".into()], false)
        .await
        .unwrap();
    assert_eq!(
        after[0].as_ref().unwrap().values,
        vec![Value::Int(((first - 1) % 4) as i32 as i64)]
    );

    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn compare_and_set_and_bad_input() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(2)).await.unwrap();
    let schema = TableSchema::parse(
        "id VARCHAR, n BIGINT, price DECIMAL(10,2), at TIMESTAMP",
        &["id".into()],
    )
    .unwrap();
    client.create_table("acct", &schema, 3, 0).await.unwrap();
    let t = client.table("acct").await.unwrap();
    let row = |n: i64| {
        vec![
            Value::Str("a".into()),
            Value::Int(n),
            Value::Decimal(1999),
            Value::Null,
        ]
    };
    let key = vec![Value::Str("a".into())];

    // Version 0 means "must not exist": the first create wins, the second loses.
    let first = t
        .compare_and_set(&key, Expectation::Version(0), CasAction::Put(row(1)))
        .await
        .unwrap();
    assert!(first.succeeded);
    let v1 = first.current.as_ref().unwrap().version;
    assert!(v1 > 0);
    let again = t
        .compare_and_set(&key, Expectation::Version(0), CasAction::Put(row(2)))
        .await
        .unwrap();
    assert!(!again.succeeded);
    assert_eq!(again.current.unwrap().values[1], Value::Int(1));
    // On a column value.
    let by_col = t
        .compare_and_set(
            &key,
            Expectation::Column("n".into(), Value::Int(1)),
            CasAction::Put(row(5)),
        )
        .await
        .unwrap();
    assert!(by_col.succeeded);
    let stale = t
        .compare_and_set(&key, Expectation::Version(v1), CasAction::Delete)
        .await
        .unwrap();
    assert!(!stale.succeeded, "the version moved on");
    let v2 = stale.current.unwrap().version;
    let del = t
        .compare_and_set(&key, Expectation::Version(v2), CasAction::Delete)
        .await
        .unwrap();
    assert!(del.succeeded);
    assert!(t.get(std::slice::from_ref(&key), &[], false).await.unwrap()[0].is_none());

    // Bad input: a clear status, nothing written.
    let err = client.table("nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = t
        .put(vec![vec![
            Value::Str("b".into()),
            Value::Str("many".into()),
            Value::Null,
            Value::Null,
        ]])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.to_string().contains("column 'n'"), "{err}");
    let err = t
        .put(vec![vec![
            Value::Str("b".into()),
            Value::Int(1),
            Value::Str("123.456".into()),
            Value::Null,
        ]])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("price"), "{err}");
    let huge = Value::Str("k".repeat(20_000));
    let err = t
        .put(vec![vec![huge, Value::Int(1), Value::Null, Value::Null]])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("bytes"), "{err}");
    // A row its writer encoded is checked where it is stored: bytes no encoder writes (here a
    // string where `n` holds integers) are refused with the column named, and nothing is written.
    let mut raw = weir_proto::v1::kv_client::KvClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.addr(0)))
            .expect("address")
            .connect_lazy(),
    );
    let forged = weir_proto::v1::WriteRequest {
        table: "acct".into(),
        mutations: vec![weir_proto::v1::Mutation {
            op: Some(weir_proto::v1::mutation::Op::PutEncoded(
                weir_proto::v1::EncodedRow {
                    key: t.encode_key(&[Value::Str("b".into())]).unwrap().into(),
                    value: weir_proto::table::row::encode_cells(&[
                        Value::Str("many".into()),
                        Value::Null,
                        Value::Null,
                    ])
                    .into(),
                },
            )),
        }],
        atomic: false,
        fence: None,
    };
    let err = raw.write(forged).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("column 'n'"), "{err:?}");
    assert!(t
        .get(&[vec![Value::Str("b".into())]], &[], false)
        .await
        .unwrap()[0]
        .is_none());
    let err = t
        .get(std::slice::from_ref(&key), &["nope".into()], false)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.to_string().contains("unknown column 'nope'"), "{err}");
    let bad_schema = TableSchema::parse("a INT", &["a".into()]).unwrap();
    let err = client
        .create_table("acct", &bad_schema, 1, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let err = client
        .create_table("bad name!", &bad_schema, 1, 0)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);

    // Stale reads are served by any replica and see the row once it has replicated.
    t.put(vec![row(7)]).await.unwrap();
    for i in 0..3 {
        let replica = Client::connect(cluster.addr(i))
            .await
            .unwrap()
            .table("acct")
            .await
            .unwrap();
        wait_until(
            "a stale read to see the row",
            Duration::from_secs(10),
            || {
                let replica = replica.clone();
                let key = key.clone();
                async move {
                    let got = replica.get(&[key], &["n".into()], true).await.ok()?;
                    (got[0].as_ref()?.values == vec![Value::Int(7)]).then_some(())
                }
            },
        )
        .await;
    }
    // The node the client talked to counts its table requests.
    let (status, body) = weir_tests::http(
        &cluster.nodes[2].http_addr.expect("HTTP served").to_string(),
        "GET",
        "/metrics",
        "text/plain",
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("weir_kv_requests_total{op=\"write\"}"),
        "{body}"
    );
    assert!(
        body.contains("weir_kv_latency_seconds_bucket{op=\"get\""),
        "{body}"
    );
    client.drop_table("acct").await.unwrap();
    assert_eq!(
        client.table("acct").await.unwrap_err().code(),
        Code::NotFound
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn regions_move_onto_joining_nodes_and_keep_their_rows() {
    let mut cluster = InProcessCluster::start(1).await;
    let client = Client::connect(cluster.addr(0)).await.unwrap();
    let schema = TableSchema::parse("k BIGINT, payload VARCHAR", &["k".into()]).unwrap();
    client
        .create_table("moved", &schema, 1, 8 * 1024)
        .await
        .unwrap();
    let table = client.table("moved").await.unwrap();
    const ROWS: i64 = 3000;
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(100) {
        let rows = chunk
            .iter()
            .map(|k| vec![Value::Int(*k), Value::Str(format!("{k:0>60}"))])
            .collect();
        table.put(rows).await.unwrap();
    }
    wait_until("the table to split", Duration::from_secs(60), || {
        let client = client.clone();
        async move {
            let info = client.describe_table("moved").await.ok()?;
            (info.regions.len() >= 4).then_some(())
        }
    })
    .await;

    // Two nodes join; placement moves regions (made by splits, so their logs start after a
    // purged prefix and the new replicas must be sent snapshots) onto them.
    cluster.add_node().await;
    cluster.add_node().await;
    let addrs: Vec<String> = (1..3).map(|i| cluster.addr(i)).collect();
    wait_until(
        "the joined nodes to lead regions",
        Duration::from_secs(120),
        || {
            let client = client.clone();
            let addrs = addrs.clone();
            async move {
                let info = client.describe_table("moved").await.ok()?;
                addrs
                    .iter()
                    .all(|a| info.regions.iter().any(|r| &r.leader_addr == a))
                    .then_some(())
            }
        },
    )
    .await;
    let table = client.table("moved").await.unwrap();
    let keys = scan_keys(&table, false).await;
    let got: BTreeSet<i64> = keys.iter().copied().collect();
    let missing: Vec<i64> = (0..ROWS).filter(|k| !got.contains(k)).collect();
    let info = client.describe_table("moved").await.unwrap();
    assert!(
        missing.is_empty() && keys.len() == ROWS as usize,
        "{} keys, missing {} (first {:?}); regions {:?}",
        keys.len(),
        missing.len(),
        missing.iter().take(10).collect::<Vec<_>>(),
        info.regions
            .iter()
            .map(|r| (r.id, r.epoch, r.leader, r.replicas.clone()))
            .collect::<Vec<_>>()
    );
    let got = table
        .get(&[vec![Value::Int(ROWS - 1)]], &["payload".into()], false)
        .await
        .unwrap();
    assert_eq!(
        got[0].as_ref().unwrap().values,
        vec![Value::Str(format!("{:0>60}", ROWS - 1))]
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_can_start_split_at_given_keys() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.unwrap();
    let schema = TableSchema::parse(
        "day DATE, id BIGINT, v VARCHAR",
        &["day".into(), "id".into()],
    )
    .unwrap();
    let day = |d: &str| Value::parse_text(d, &schema.columns[0]).unwrap();
    let info = client
        .create_table_split_at(
            "events",
            &schema,
            3,
            0,
            &[vec![day("2024-03-01")], vec![day("2024-02-01")]],
        )
        .await
        .unwrap();
    assert_eq!(info.regions.len(), 3, "two split points make three regions");
    // Regions are ordered and tile the key space whatever the order the points were given in.
    assert!(info.regions[0].start_key.is_empty() && info.regions[2].end_key.is_empty());
    assert_eq!(info.regions[0].end_key, info.regions[1].start_key);
    assert!(info.regions[0].end_key < info.regions[1].end_key);

    let table = client.table("events").await.unwrap();
    let rows: Vec<Vec<Value>> = ["2024-01-15", "2024-02-15", "2024-03-15"]
        .iter()
        .flat_map(|d| (0..10).map(move |i| (d, i)))
        .map(|(d, i)| vec![day(d), Value::Int(i), Value::Str(format!("{d}/{i}"))])
        .collect();
    assert_eq!(table.put(rows).await.unwrap(), 30);
    // A prefix bound selects one month, across the boundary-free middle region.
    let mut got = Vec::new();
    table
        .scan(
            &ScanOptions {
                start: Some(vec![day("2024-02-01")]),
                end: Some(vec![day("2024-03-01")]),
                columns: vec!["v".into()],
                ..ScanOptions::default()
            },
            |page| {
                got.extend(page.into_iter().map(|(_, r)| r.values[0].clone()));
                true
            },
        )
        .await
        .unwrap();
    assert_eq!(got.len(), 10);
    assert_eq!(got[0], Value::Str("2024-02-15/0".into()));

    // A split point that does not fit the key is refused and creates nothing.
    let err = client
        .create_table_split_at("bad", &schema, 1, 0, &[vec![Value::Str("x".into())]])
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(
        client.table("bad").await.unwrap_err().code(),
        Code::NotFound
    );
    cluster.shutdown().await;
}

/// Whether a write was refused because a newer instance of its writer replaced it.
fn is_fenced(r: &weir_client::Result<u64>) -> bool {
    matches!(r, Err(weir_client::ClientError::Fenced(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_writer_is_fenced_out_of_every_region_even_those_split_off_later() {
    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(2)).await.unwrap();
    let schema = TableSchema::parse("k BIGINT, v VARCHAR", &["k".into()]).unwrap();
    client
        .create_table_split_at(
            "fenced",
            &schema,
            3,
            16 * 1024,
            &[vec![Value::Int(1000)], vec![Value::Int(2000)]],
        )
        .await
        .unwrap();
    let table = client.table("fenced").await.unwrap();
    let row = |k: i64, v: &str| vec![Value::Int(k), Value::Str(v.to_string())];
    let old = table.fenced("schedule 1", 1);
    let spread: Vec<i64> = (0..3000).step_by(100).collect();
    let first: Vec<Vec<Value>> = spread.iter().map(|k| row(*k, "old")).collect();
    assert_eq!(old.put(first).await.unwrap(), spread.len() as u64);

    // The successor raises its token everywhere before writing: the old instance can write no
    // more, while other writers (no token, another holder) are not concerned.
    let new = table.fenced("schedule 1", 2);
    assert_eq!(new.fence_all().await.unwrap(), 3, "one fence per region");
    for k in &spread {
        let r = old.put(vec![row(*k, "late")]).await;
        assert!(is_fenced(&r), "key {k}: {r:?}");
    }
    let r = old.delete(&[vec![Value::Int(5)]]).await;
    assert!(is_fenced(&r), "{r:?}");
    assert!(matches!(
        old.fence_all().await,
        Err(weir_client::ClientError::Fenced(_))
    ));
    assert_eq!(table.put(vec![row(1, "plain")]).await.unwrap(), 1);
    let other = table.fenced("schedule 2", 1);
    assert_eq!(other.put(vec![row(2, "other")]).await.unwrap(), 1);

    // The table splits under the successor's writes; the regions split off keep the token.
    let payload = "x".repeat(200);
    for chunk in (0..3000i64).collect::<Vec<_>>().chunks(100) {
        let rows = chunk.iter().map(|k| row(*k, &payload)).collect();
        new.put(rows).await.unwrap();
    }
    let regions = wait_until("the table to split", Duration::from_secs(60), || async {
        let n = client.describe_table("fenced").await.ok()?.regions.len();
        (n > 4).then_some(n)
    })
    .await;
    for k in (50..3000).step_by(100) {
        let r = old.put(vec![row(k, "late")]).await;
        assert!(
            is_fenced(&r),
            "key {k} after the split into {regions} regions: {r:?}"
        );
    }
    // Nothing the old instance sent after it was replaced was written.
    let got = table
        .get(
            &spread
                .iter()
                .map(|k| vec![Value::Int(*k)])
                .collect::<Vec<_>>(),
            &[],
            false,
        )
        .await
        .unwrap();
    for (k, r) in spread.iter().zip(got) {
        let v = r.map(|r| r.values[1].clone());
        assert_eq!(v, Some(Value::Str(payload.clone())), "key {k}");
    }
    cluster.shutdown().await;
}
