//! A 3-node cluster inside the test process: topic creation, produce and consume through every node.

use std::time::Duration;

use weir_proto::batch::{decode, BatchBuilder, HEADER_LEN};
use weir_proto::v1::{Acks, CreateTopicRequest, FetchRequest, ListOffsetsRequest, ProduceRequest};
use weir_tests::{log_client, wait_until, InProcessCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_produce_and_consume() {
    let cluster = InProcessCluster::start(3).await;
    let mut c = log_client(&cluster.addr(1)).await;
    let info = c
        .create_topic(CreateTopicRequest {
            name: "events".into(),
            partitions: 3,
            replicas: 3,
            retention_ms: 0,
            retention_bytes: 0,
            format: None,
        })
        .await
        .expect("topic created")
        .into_inner();
    assert_eq!(info.partition_info.len(), 3);
    for p in &info.partition_info {
        assert_eq!(
            p.replicas.len(),
            3,
            "partition {} replicas {:?}",
            p.partition,
            p.replicas
        );
    }

    // 20 batches of 50 records per partition, sent to node 1, which forwards to the leaders.
    for partition in 0..3u32 {
        let mut next = 0u64;
        for b in 0..20 {
            let mut builder = BatchBuilder::new();
            for r in 0..50 {
                builder.push(
                    None,
                    format!("p{partition}-{}", b * 50 + r).as_bytes(),
                    1_000 + r,
                );
            }
            let resp = c
                .produce(ProduceRequest {
                    topic: "events".into(),
                    partition,
                    batch: builder.finish(),
                    acks: Acks::All as i32,
                    ..Default::default()
                })
                .await
                .expect("produce acknowledged")
                .into_inner();
            assert_eq!(resp.base_offset, next, "offsets are dense");
            assert_eq!(resp.count, 50);
            next += 50;
        }
    }

    // Every node serves every partition, in offset order, with nothing missing.
    for node in 0..3 {
        let mut c = log_client(&cluster.addr(node)).await;
        for partition in 0..3u32 {
            let offs = c
                .list_offsets(ListOffsetsRequest {
                    topic: "events".into(),
                    partition,
                    epoch: None,
                })
                .await
                .expect("offsets")
                .into_inner();
            assert_eq!((offs.earliest, offs.latest), (0, 1000));
            let mut offset = 0u64;
            let mut values = Vec::new();
            while offset < 1000 {
                let r = c
                    .fetch(FetchRequest {
                        topic: "events".into(),
                        partition,
                        offset,
                        max_bytes: 4096,
                        max_wait_ms: 100,
                    })
                    .await
                    .expect("fetch")
                    .into_inner();
                for b in r.batches {
                    let records = decode(&b.batch).expect("batch decodes");
                    for (i, rec) in records.into_iter().enumerate() {
                        let o = b.base_offset + i as u64;
                        if o >= offset {
                            values.push(String::from_utf8(rec.value.to_vec()).unwrap());
                        }
                    }
                    offset = offset.max(b.base_offset + 50);
                }
            }
            let expected: Vec<String> = (0..1000).map(|i| format!("p{partition}-{i}")).collect();
            assert_eq!(values, expected, "node {node} partition {partition}");
        }
    }

    // Bad input is refused with the right status and changes nothing.
    let err = c
        .produce(ProduceRequest {
            topic: "nope".into(),
            partition: 0,
            batch: BatchBuilder::new().finish(),
            acks: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    let err = c
        .produce(ProduceRequest {
            topic: "events".into(),
            partition: 0,
            batch: bytes::Bytes::from_static(b"garbage"),
            acks: 0,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .fetch(FetchRequest {
            topic: "events".into(),
            partition: 0,
            offset: 5000,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange);
    let err = c
        .create_topic(CreateTopicRequest {
            name: "events".into(),
            partitions: 1,
            replicas: 1,
            retention_ms: 0,
            retention_bytes: 0,
            format: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::AlreadyExists);
    let latest = wait_until("offsets unchanged", Duration::from_secs(5), || {
        let mut c = c.clone();
        async move {
            c.list_offsets(ListOffsetsRequest {
                topic: "events".into(),
                partition: 0,
                epoch: None,
            })
            .await
            .ok()
            .map(|r| r.into_inner().latest)
        }
    })
    .await;
    assert_eq!(latest, 1000);
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_ingest_health_metrics_and_retention() {
    let cluster = InProcessCluster::start(1).await;
    let http = cluster.nodes[0].http_addr.expect("HTTP served").to_string();
    let mut c = log_client(&cluster.addr(0)).await;
    c.create_topic(CreateTopicRequest {
        name: "clicks".into(),
        partitions: 2,
        replicas: 1,
        retention_ms: 0,
        retention_bytes: 2_000,
        format: None,
    })
    .await
    .expect("topic created");

    assert_eq!(
        weir_tests::http(&http, "GET", "/health", "text/plain", b"")
            .await
            .0,
        200
    );
    let ready = wait_until("node ready", Duration::from_secs(10), || {
        let http = http.clone();
        async move {
            let (s, _) = weir_tests::http(&http, "GET", "/ready", "text/plain", b"").await;
            (s == 200).then_some(())
        }
    })
    .await;
    assert_eq!(ready, ());

    // A JSON array: one record per element, all to the partition of the key.
    let (status, body) = weir_tests::http(
        &http,
        "POST",
        "/v1/topics/clicks/records?key=user-1",
        "application/json",
        br#"[{"page": "/"}, {"page": "/cart"}, "plain text"]"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON answer");
    assert_eq!(v["count"], 3);
    assert_eq!(v["offsets"], serde_json::json!([0, 1, 2]));
    let partition = v["partition"].as_u64().expect("partition") as u32;

    // NDJSON to an explicit partition.
    let (status, body) = weir_tests::http(
        &http,
        "POST",
        &format!("/v1/topics/clicks/records?partition={partition}"),
        "application/x-ndjson",
        b"{\"n\":1}\n{\"n\":2}\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("[3,4]"), "{body}");

    // Bad input: a clear 4xx and nothing written.
    let (status, body) = weir_tests::http(
        &http,
        "POST",
        "/v1/topics/clicks/records",
        "application/json",
        b"[1, 2",
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a JSON array"), "{body}");
    let (status, _) = weir_tests::http(
        &http,
        "POST",
        "/v1/topics/nope/records",
        "application/json",
        b"[1]",
    )
    .await;
    assert_eq!(status, 404);
    let offs = c
        .list_offsets(ListOffsetsRequest {
            topic: "clicks".into(),
            partition,
            epoch: None,
        })
        .await
        .expect("offsets")
        .into_inner();
    assert_eq!(offs.latest, 5, "the malformed body wrote nothing");

    let (status, metrics) = weir_tests::http(&http, "GET", "/metrics", "text/plain", b"").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("weir_produce_records_total"), "{metrics}");
    assert!(metrics.contains("weir_raft_groups_led"), "{metrics}");

    // Size retention: write well past 2,000 bytes; the earliest offset moves forward.
    for i in 0..20 {
        let body = format!("[\"{}\"]", "x".repeat(200 + i));
        let (status, _) = weir_tests::http(
            &http,
            "POST",
            &format!("/v1/topics/clicks/records?partition={partition}"),
            "application/json",
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200);
    }
    let earliest = wait_until(
        "retention drops old batches",
        Duration::from_secs(30),
        || {
            let mut c = c.clone();
            async move {
                let o = c
                    .list_offsets(ListOffsetsRequest {
                        topic: "clicks".into(),
                        partition,
                        epoch: None,
                    })
                    .await
                    .ok()?
                    .into_inner();
                (o.earliest > 0).then_some(o.earliest)
            }
        },
    )
    .await;
    assert!(earliest <= 25);
    let err = c
        .fetch(FetchRequest {
            topic: "clicks".into(),
            partition,
            offset: 0,
            max_bytes: 0,
            max_wait_ms: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        tonic::Code::OutOfRange,
        "dropped offsets are out of range"
    );
    cluster.shutdown().await;
}

/// A replica created after the leader purged its log can only catch up from a snapshot streamed
/// over the network: the records must all be there after the move.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_replica_catches_up_from_a_streamed_snapshot() {
    use openraft::async_runtime::WatchReceiver;

    let mut cluster = InProcessCluster::start(1).await;
    let mut c = log_client(&cluster.addr(0)).await;
    c.create_topic(CreateTopicRequest {
        name: "moved".into(),
        partitions: 4,
        replicas: 1,
        retention_ms: 0,
        retention_bytes: 0,
        format: None,
    })
    .await
    .expect("topic created");
    for partition in 0..4u32 {
        for b in 0..10 {
            let mut builder = BatchBuilder::new();
            for r in 0..100 {
                builder.push(None, format!("p{partition}-{}", b * 100 + r).as_bytes(), 7);
            }
            c.produce(ProduceRequest {
                topic: "moved".into(),
                partition,
                batch: builder.finish(),
                acks: Acks::All as i32,
                ..Default::default()
            })
            .await
            .expect("produce");
        }
    }
    // A describe right after the produce counts every record stored, from the leaders.
    let info = c
        .describe_topic(weir_proto::v1::DescribeTopicRequest {
            name: "moved".into(),
        })
        .await
        .expect("describe")
        .into_inner();
    let latest: Vec<u64> = info
        .partition_info
        .iter()
        .map(|p| p.latest_offset)
        .collect();
    assert_eq!(latest, [1000, 1000, 1000, 1000]);
    // Snapshot every partition and purge its whole log.
    let groups = cluster.nodes[0].ctx.registry.all();
    for h in groups
        .values()
        .filter(|h| matches!(h.kind, weir_storage::catalog::GroupKind::Partition { .. }))
    {
        h.raft.trigger().snapshot().await.expect("snapshot");
        let applied = wait_until("snapshot built", Duration::from_secs(20), || {
            let raft = h.raft.clone();
            async move {
                let m = raft.metrics().borrow_watched().clone();
                let applied = m.last_applied?.index;
                (m.snapshot?.index >= applied).then_some(applied)
            }
        })
        .await;
        h.raft.trigger().purge_log(applied).await.expect("purge");
        wait_until("log purged", Duration::from_secs(20), || {
            let raft = h.raft.clone();
            async move { (raft.metrics().borrow_watched().purged?.index >= applied).then_some(()) }
        })
        .await;
    }

    // A second node joins; placement moves partitions onto it.
    let added = cluster.add_node().await;
    let new_id = cluster.nodes[added].node_id;
    wait_until(
        "partitions moved to the new node",
        Duration::from_secs(60),
        || {
            let mut c = c.clone();
            async move {
                let info = c
                    .describe_topic(weir_proto::v1::DescribeTopicRequest {
                        name: "moved".into(),
                    })
                    .await
                    .ok()?
                    .into_inner();
                let moved = info
                    .partition_info
                    .iter()
                    .filter(|p| p.replicas == vec![new_id] && p.leader == new_id)
                    .count();
                (moved >= 1).then_some(())
            }
        },
    )
    .await;

    // Every record of every partition is still there, in order, wherever it now lives.
    let c2 = log_client(&cluster.addr(added)).await;
    for partition in 0..4u32 {
        let mut values = Vec::new();
        let mut offset = 0u64;
        while offset < 1000 {
            // Partitions still moving have no leader for a moment: fetch again, as clients do.
            let r = wait_until("fetch answered", Duration::from_secs(30), || {
                let mut c2 = c2.clone();
                async move {
                    match c2
                        .fetch(FetchRequest {
                            topic: "moved".into(),
                            partition,
                            offset,
                            max_bytes: 1 << 20,
                            max_wait_ms: 100,
                        })
                        .await
                    {
                        Ok(r) => Some(r.into_inner()),
                        Err(s) if s.code() == tonic::Code::Unavailable => None,
                        Err(s) => panic!("fetch: {s}"),
                    }
                }
            })
            .await;
            for b in r.batches {
                for rec in decode(&b.batch).expect("batch") {
                    values.push(String::from_utf8(rec.value.to_vec()).unwrap());
                }
                offset = b.base_offset + 100;
            }
        }
        let expected: Vec<String> = (0..1000).map(|i| format!("p{partition}-{i}")).collect();
        assert_eq!(values, expected, "partition {partition}");
    }
    cluster.shutdown().await;
}

/// What the members of a group delivered to the application: (member, partition, offset).
type Deliveries = std::sync::Arc<std::sync::Mutex<Vec<(String, u32, u64)>>>;

/// How a group member reads.
#[derive(Clone, Copy)]
enum Reading {
    /// A batch per fetch and a few records per poll: a member is mid-read whenever the group
    /// changes under it.
    Slow,
    /// Ordinary fetches, for reading what is left quickly.
    Fast,
}

/// One member of group `g` on topic `orders`: polls records (as `reading` says), records what it was
/// handed, takes a moment to "process" them, commits, until `stop` turns true; then commits what
/// it was handed and returns, still a member.
async fn group_member(
    client: weir_client::Client,
    name: &'static str,
    deliveries: Deliveries,
    mut stop: tokio::sync::watch::Receiver<bool>,
    reading: Reading,
) -> weir_client::Consumer {
    use weir_client::{Consumer, ConsumerConfig};
    let (max_bytes, per_poll) = match reading {
        // Small fetches, so a member moves between its partitions often.
        Reading::Slow => (1, 5),
        Reading::Fast => (ConsumerConfig::default().max_bytes, 500),
    };
    let config = ConsumerConfig {
        group: Some("g".into()),
        // A full second between heartbeats, so a member would go on reading a partition given to
        // another.
        max_bytes,
        heartbeat_interval: Duration::from_secs(1),
        session_timeout: Duration::from_secs(5),
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, "orders", config)
        .await
        .expect("member joins");
    while !*stop.borrow_and_update() {
        let records = consumer
            .poll_at_most(Duration::from_millis(100), per_poll)
            .await
            .expect("poll");
        {
            let mut d = deliveries.lock().expect("lock");
            for r in &records {
                d.push((name.to_string(), r.partition, r.offset));
            }
        }
        if records.is_empty() {
            continue;
        }
        // Processing takes a while, so a member is busy reading when the group changes under it.
        tokio::time::sleep(Duration::from_millis(5)).await;
        match consumer.commit().await {
            Ok(()) => {}
            // The group moved on meanwhile: the member rejoins and commits on a later round.
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {}
            Err(e) => panic!("{name}: commit failed: {e}"),
        }
    }
    // The last commit must land, or the next reader re-reads: when the group has moved on, the
    // member polls (recording what it is handed) until it has taken the new generation up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match consumer.commit().await {
            Ok(()) => break,
            Err(e) if e.code() == tonic::Code::FailedPrecondition => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{name}: never rejoined"
                );
                let records = consumer
                    .poll_at_most(Duration::from_millis(50), 5)
                    .await
                    .expect("poll");
                let mut d = deliveries.lock().expect("lock");
                for r in &records {
                    d.push((name.to_string(), r.partition, r.offset));
                }
            }
            Err(e) => panic!("{name}: commit failed: {e}"),
        }
    }
    consumer
}

/// Two members share a 4-partition topic that keeps receiving records; a third joins. Across the
/// rebalance a partition is read by one member at a time: no record is handed to two members, and
/// every record is handed to one.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebalance_never_hands_a_record_to_two_members() {
    use weir_client::{Client, NewTopic, Producer, ProducerConfig};

    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    client
        .create_topic(&NewTopic::new("orders", 4, 3))
        .await
        .expect("topic created");
    let producer = Producer::new(client.clone(), "orders", ProducerConfig::default())
        .await
        .expect("producer");
    for i in 0..400u32 {
        drop(
            producer
                .send_to(i % 4, None, format!("{i}").as_bytes(), None)
                .await
                .expect("send"),
        );
    }
    producer.flush().await.expect("flush");

    // Records keep arriving during the whole test, so partitions change hands mid-stream.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let writer = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut i = 0u32;
            while !*stop.borrow_and_update() {
                for p in 0..4 {
                    drop(
                        producer
                            .send_to(p, None, format!("late-{i}").as_bytes(), None)
                            .await
                            .expect("send"),
                    );
                }
                i += 1;
                if i.is_multiple_of(10) {
                    producer.flush().await.expect("flush");
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            producer.flush().await.expect("flush");
        })
    };

    let deliveries: Deliveries = Default::default();
    let count = |d: &Deliveries, who: &str| {
        d.lock()
            .expect("lock")
            .iter()
            .filter(|(m, _, _)| m == who)
            .count()
    };
    let a = tokio::spawn(group_member(
        client.clone(),
        "a",
        deliveries.clone(),
        stop_rx.clone(),
        Reading::Slow,
    ));
    let b = tokio::spawn(group_member(
        client.clone(),
        "b",
        deliveries.clone(),
        stop_rx.clone(),
        Reading::Slow,
    ));
    wait_until("a and b both read", Duration::from_secs(90), || {
        let d = deliveries.clone();
        async move { (count(&d, "a") >= 50 && count(&d, "b") >= 50).then_some(()) }
    })
    .await;
    let c = tokio::spawn(group_member(
        client.clone(),
        "c",
        deliveries.clone(),
        stop_rx.clone(),
        Reading::Slow,
    ));
    wait_until("c reads", Duration::from_secs(90), || {
        let d = deliveries.clone();
        async move { (count(&d, "c") >= 100).then_some(()) }
    })
    .await;
    stop_tx.send(true).expect("writer running");
    writer.await.expect("writer");

    // Every record written is handed out; the members keep reading until they all are.
    let mut ends = Vec::new();
    for p in 0..4u32 {
        ends.push(
            client
                .list_offsets("orders", p)
                .await
                .expect("offsets")
                .latest,
        );
    }
    let (more_tx, more_rx) = tokio::sync::watch::channel(false);
    drop(stop_rx);
    // The members stopped with the writer and committed; they leave only now, so no commit was
    // made stale by another member leaving. The rest of the records are read by a fresh member.
    let mut stopped = Vec::new();
    for m in [a, b, c] {
        stopped.push(m.await.expect("member"));
    }
    for m in stopped {
        m.close().await.expect("leave");
    }
    let d = tokio::spawn(group_member(
        client.clone(),
        "d",
        deliveries.clone(),
        more_rx.clone(),
        Reading::Fast,
    ));
    let missing = || {
        let seen: std::collections::BTreeSet<(u32, u64)> = deliveries
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, p, o)| (*p, *o))
            .collect();
        (0..4u32)
            .flat_map(|p| (0..ends[p as usize]).map(move |o| (p, o)))
            .filter(|r| !seen.contains(r))
            .collect::<Vec<_>>()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let left = missing();
        if left.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} records never handed out (partition, offset), first {:?}; partition ends {ends:?}",
            left.len(),
            &left[..left.len().min(10)]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    more_tx.send(true).expect("member d running");
    d.await.expect("member d").close().await.expect("leave");

    let mut by_record: std::collections::BTreeMap<(u32, u64), std::collections::BTreeSet<String>> =
        Default::default();
    for (m, p, o) in deliveries.lock().expect("lock").iter() {
        by_record.entry((*p, *o)).or_default().insert(m.clone());
    }
    let shared: Vec<_> = by_record
        .iter()
        .filter(|(_, members)| members.len() > 1)
        .collect();
    assert!(
        shared.is_empty(),
        "{} records were handed to more than one member, e.g. {:?}",
        shared.len(),
        shared.iter().take(5).collect::<Vec<_>>()
    );
    cluster.shutdown().await;
}

/// A member's commit carries its generation: once the group has moved on, a commit at the old
/// generation, or for a partition the member gave up, is refused and stores nothing, while a
/// standalone client (no member, no generation) still commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_commit_with_a_stale_generation_is_refused() {
    use weir_client::{Client, ClientError, Consumer, ConsumerConfig, NewTopic};
    use weir_client::{Producer, ProducerConfig};

    let cluster = InProcessCluster::start(3).await;
    let client = Client::connect(cluster.addr(1)).await.expect("client");
    client
        .create_topic(&NewTopic::new("ledger", 4, 3))
        .await
        .expect("topic created");
    let producer = Producer::new(client.clone(), "ledger", ProducerConfig::default())
        .await
        .expect("producer");
    for i in 0..40u32 {
        drop(
            producer
                .send_to(i % 4, None, format!("{i}").as_bytes(), None)
                .await
                .expect("send"),
        );
    }
    producer.flush().await.expect("flush");
    let config = ConsumerConfig {
        group: Some("h".into()),
        heartbeat_interval: Duration::from_millis(100),
        session_timeout: Duration::from_secs(5),
        max_wait: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };

    let mut a = Consumer::new(client.clone(), "ledger", config.clone())
        .await
        .expect("a joins");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut read = 0;
    while read < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a read {read} of 40"
        );
        read += a
            .poll(Duration::from_millis(100))
            .await
            .expect("poll")
            .len();
    }
    a.commit().await.expect("a commits");
    let all_read: std::collections::BTreeMap<u32, u64> = (0..4).map(|p| (p, 10)).collect();
    assert_eq!(
        client
            .fetch_committed("h", "ledger")
            .await
            .expect("committed"),
        all_read
    );
    let old = a.generation().expect("a is a member");
    let member_a = a.member_id().expect("a is a member").to_string();

    // "b" joins; the partitions are shared once "a" has given half of them up.
    let mut b = Consumer::new(client.clone(), "ledger", config)
        .await
        .expect("b joins");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while a.assignment().len() != 2 || b.assignment().len() != 2 || a.generation() == Some(old) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no rebalance: a {:?} b {:?}",
            a.assignment(),
            b.assignment()
        );
        a.poll(Duration::from_millis(50)).await.expect("poll a");
        b.poll(Duration::from_millis(50)).await.expect("poll b");
    }

    // "a" at its old generation may not move any offset, not even of a partition it still reads.
    let kept = a.assignment()[0];
    let err = client
        .commit_member_offsets("h", "ledger", &member_a, old, &[(kept, 0)])
        .await
        .expect_err("stale commit refused");
    assert!(matches!(err, ClientError::Fenced(_)), "{err:?}");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    assert!(err.to_string().contains("stale generation"), "{err}");
    // Nor, at the current generation, of a partition that is b's now.
    let current = a.generation().expect("a is a member");
    let lost = b.assignment()[0];
    let err = client
        .commit_member_offsets("h", "ledger", &member_a, current, &[(lost, 0)])
        .await
        .expect_err("commit of another's partition refused");
    assert!(matches!(err, ClientError::Fenced(_)), "{err:?}");
    assert_eq!(
        client
            .fetch_committed("h", "ledger")
            .await
            .expect("committed"),
        all_read,
        "refused commits stored nothing"
    );
    // Its own partition at the current generation is fine, as is a standalone commit.
    client
        .commit_member_offsets("h", "ledger", &member_a, current, &[(kept, 10)])
        .await
        .expect("member commit");
    client
        .commit_offsets("h", "ledger", &[(lost, 7)])
        .await
        .expect("standalone commit");
    assert_eq!(
        client
            .fetch_committed("h", "ledger")
            .await
            .expect("committed")[&lost],
        7
    );
    a.close().await.expect("a leaves");
    b.close().await.expect("b leaves");
    cluster.shutdown().await;
}

/// A batch whose header does not match its records is refused by every node before it reaches the
/// log: its count would otherwise become offsets, and its body would stop every consumer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_batches_are_refused_and_change_nothing() {
    let cluster = InProcessCluster::start(3).await;
    let mut c = log_client(&cluster.addr(0)).await;
    c.create_topic(CreateTopicRequest {
        name: "guarded".into(),
        partitions: 1,
        replicas: 3,
        retention_ms: 0,
        retention_bytes: 0,
        format: None,
    })
    .await
    .expect("topic created");
    let good = |from: u32| {
        let mut b = BatchBuilder::new();
        for i in from..from + 5 {
            b.push(None, format!("r{i}").as_bytes(), 1_000);
        }
        b.finish()
    };
    let produce = |batch: bytes::Bytes| ProduceRequest {
        topic: "guarded".into(),
        partition: 0,
        batch,
        acks: Acks::All as i32,
        ..Default::default()
    };
    let first = c
        .produce(produce(good(0)))
        .await
        .expect("good batch")
        .into_inner();
    assert_eq!((first.base_offset, first.count), (0, 5));

    // The count is outside the checksum: patching it leaves a batch whose checksum still holds.
    let mut huge = good(5).to_vec();
    huge[2..6].copy_from_slice(&1_000_000_000u32.to_le_bytes());
    // Trailing and truncated bodies, their checksums recomputed so only the structure is wrong.
    let reseal = |mut blob: Vec<u8>| {
        let crc = crc32fast::hash(&blob[HEADER_LEN..]);
        blob[22..26].copy_from_slice(&crc.to_le_bytes());
        bytes::Bytes::from(blob)
    };
    let mut trailing = good(5).to_vec();
    trailing.push(0);
    let mut truncated = good(5).to_vec();
    truncated.truncate(truncated.len() - 2);
    let crafted = [
        (bytes::Bytes::from(huge), "1000000000"),
        (reseal(trailing), "after the last"),
        (reseal(truncated), "record 4"),
    ];
    for node in 0..3 {
        let mut c = log_client(&cluster.addr(node)).await;
        for (batch, says) in &crafted {
            let err = c
                .produce(produce(batch.clone()))
                .await
                .expect_err("a malformed batch is refused");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
            assert!(err.message().contains(says), "node {node}: {err:?}");
        }
    }

    // Offsets did not move, and the partition goes on taking and serving good batches.
    let offs = c
        .list_offsets(ListOffsetsRequest {
            topic: "guarded".into(),
            partition: 0,
            epoch: None,
        })
        .await
        .expect("offsets")
        .into_inner();
    assert_eq!((offs.earliest, offs.latest), (0, 5));
    let second = c
        .produce(produce(good(5)))
        .await
        .expect("good batch")
        .into_inner();
    assert_eq!((second.base_offset, second.count), (5, 5));
    let mut values = Vec::new();
    let mut offset = 0;
    while offset < 10 {
        let r = c
            .fetch(FetchRequest {
                topic: "guarded".into(),
                partition: 0,
                offset,
                max_bytes: 1 << 20,
                max_wait_ms: 100,
            })
            .await
            .expect("fetch")
            .into_inner();
        for b in r.batches {
            let records = decode(&b.batch).expect("stored batches decode");
            offset = b.base_offset + records.len() as u64;
            values.extend(
                records
                    .into_iter()
                    .map(|r| String::from_utf8_lossy(&r.value).into_owned()),
            );
        }
    }
    let expected: Vec<String> = (0..10).map(|i| format!("r{i}")).collect();
    assert_eq!(values, expected);
    cluster.shutdown().await;
}

/// A topic created through one node takes records through every other node at once: a node that
/// has not applied the creation yet catches its catalog up through the metadata leader instead
/// of answering that the topic does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_topic_created_through_one_node_is_found_at_once_through_the_others() {
    let cluster = InProcessCluster::start(3).await;
    let mut creator = log_client(&cluster.addr(0)).await;
    let others = [
        log_client(&cluster.addr(1)).await,
        log_client(&cluster.addr(2)).await,
    ];
    for t in 0..10 {
        let name = format!("fresh-{t}");
        creator
            .create_topic(CreateTopicRequest {
                name: name.clone(),
                partitions: 1,
                replicas: 3,
                retention_ms: 0,
                retention_bytes: 0,
                format: None,
            })
            .await
            .expect("topic created");
        let sends = others.iter().map(|c| {
            let mut c = c.clone();
            let mut b = BatchBuilder::new();
            b.push(None, b"first", 1_000);
            let req = ProduceRequest {
                topic: name.clone(),
                partition: 0,
                batch: b.finish(),
                acks: Acks::All as i32,
                ..Default::default()
            };
            async move { c.produce(req).await }
        });
        for (i, sent) in futures::future::join_all(sends)
            .await
            .into_iter()
            .enumerate()
        {
            let r = sent.unwrap_or_else(|e| panic!("topic {name} through node {}: {e:?}", i + 1));
            assert_eq!(r.into_inner().count, 1);
        }
    }
    cluster.shutdown().await;
}
