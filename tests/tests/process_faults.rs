//! Real `weir-node` processes: SIGKILL during produce, join with rebalancing, and node loss.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use weir_client::{Client, NewTopic, Producer, ProducerConfig};
use weir_tests::topic_data::{assert_dense, read_all};
use weir_tests::{wait_until, ProcessCluster};

const SETTLE: Duration = Duration::from_secs(90);

async fn cluster_up(c: &ProcessCluster, n: usize) {
    c.wait_members_up(n, SETTLE).await;
}

/// Creates a topic and writes `records` records `v0..` into it, all acknowledged.
async fn create_and_fill(
    client: &Client,
    topic: &str,
    partitions: u32,
    replicas: u32,
    records: u64,
) {
    client
        .create_topic(&NewTopic::new(topic, partitions, replicas))
        .await
        .expect("topic");
    let producer = Producer::new(client.clone(), topic, ProducerConfig::default())
        .await
        .expect("producer");
    let mut acks = Vec::new();
    for i in 0..records {
        acks.push(
            producer
                .send(None, format!("v{i}").as_bytes(), None)
                .await
                .expect("queued"),
        );
    }
    producer.flush().await.expect("flush");
    for a in acks {
        a.await.expect("acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_of_a_partition_leader_loses_no_acknowledged_record() {
    let mut cluster = ProcessCluster::start(3, &[]);
    cluster_up(&cluster, 3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    client
        .create_topic(&NewTopic::new("durable", 3, 3))
        .await
        .expect("topic");
    let leader = client
        .describe_topic("durable")
        .await
        .expect("describe")
        .partition_info[0]
        .leader;
    assert!(leader > 0, "partition 0 has a leader");
    let status = client.cluster_status().await.expect("status");
    let leader_addr = &status
        .members
        .iter()
        .find(|m| m.id == leader)
        .expect("leader is a member")
        .addr;
    let victim = (0..3)
        .find(|i| &cluster.addr(*i) == leader_addr)
        .expect("leader is one of ours");

    let producer = Producer::new(client.clone(), "durable", ProducerConfig::default())
        .await
        .expect("producer");
    let total = 20_000u64;
    let sender = {
        let producer = producer.clone();
        tokio::spawn(async move {
            let mut acks = Vec::with_capacity(total as usize);
            for i in 0..total {
                let value = format!("record-{i}");
                let key = format!("k{}", i % 97);
                let ack = producer
                    .send(Some(key.as_bytes()), value.as_bytes(), None)
                    .await
                    .expect("queued");
                acks.push((value, ack));
                if i % 500 == 0 {
                    // Pace the producer so the kill lands in the middle of the stream.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            producer.flush().await.expect("flush");
            let mut acked = Vec::new();
            for (value, ack) in acks {
                let p = ack.partition();
                if let Ok(Some(offset)) = ack.await {
                    acked.push((p, offset, value));
                }
            }
            acked
        })
    };

    // Kill the leader of partition 0 once a quarter of the records are acknowledged, then restart it.
    wait_until("a quarter acknowledged", SETTLE, || {
        let producer = producer.clone();
        async move { (producer.stats().records_acked >= total / 4).then_some(()) }
    })
    .await;
    cluster.kill(victim);
    wait_until("a new leader for partition 0", SETTLE, || {
        let client = client.clone();
        async move {
            let info = client.describe_topic("durable").await.ok()?;
            let l = info.partition_info[0].leader;
            (l != 0 && l != leader).then_some(())
        }
    })
    .await;
    cluster.restart(victim);

    let acked = sender.await.expect("producer task");
    assert_eq!(
        acked.len() as u64,
        total,
        "every record was acknowledged (retries ride over the kill)"
    );
    cluster_up(&cluster, 3).await;

    let data = read_all(&client, "durable", SETTLE).await;
    assert_dense(&data);
    let mut at: HashMap<(u32, u64), &str> = HashMap::new();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (p, recs) in &data {
        for (o, v) in recs {
            at.insert((*p, *o), v);
            *seen.entry(v.as_str()).or_default() += 1;
        }
    }
    for (p, o, v) in &acked {
        assert_eq!(
            at.get(&(*p, *o)).copied(),
            Some(v.as_str()),
            "acked record {v} at {p}/{o}"
        );
        assert_eq!(
            seen.get(v.as_str()),
            Some(&1),
            "acked record {v} stored exactly once"
        );
    }
    // Records of one key keep their order within their partition.
    let mut last: HashMap<String, u64> = HashMap::new();
    for recs in data.values() {
        for (_, v) in recs {
            let i: u64 = v
                .trim_start_matches("record-")
                .parse()
                .expect("record number");
            let key = format!("k{}", i % 97);
            if let Some(prev) = last.insert(key.clone(), i) {
                assert!(prev < i, "key {key}: record {i} after {prev}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joining_nodes_receive_partitions_without_losing_records() {
    let mut cluster = ProcessCluster::start(1, &[]);
    cluster_up(&cluster, 1).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    create_and_fill(&client, "spread", 6, 1, 3000).await;

    cluster.add_node();
    cluster.add_node();
    cluster_up(&cluster, 3).await;
    // Every node ends up holding and leading at least one partition.
    wait_until("partitions spread over the three nodes", SETTLE, || {
        let client = client.clone();
        async move {
            let info = client.describe_topic("spread").await.ok()?;
            let mut holders = HashSet::new();
            for p in &info.partition_info {
                if p.replicas.len() != 1 || p.leader != p.replicas[0] {
                    return None;
                }
                holders.insert(p.leader);
            }
            (holders.len() == 3).then_some(())
        }
    })
    .await;

    let data = read_all(&client, "spread", SETTLE).await;
    assert_dense(&data);
    let values: HashSet<String> = data.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 3000, "no record lost in the moves");
    for (p, recs) in &data {
        assert_eq!(
            recs.first().map(|r| r.0),
            Some(0),
            "partition {p} starts at 0"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_of_a_lost_node_are_recreated_elsewhere() {
    let mut cluster = ProcessCluster::start(4, &["--down-timeout-secs", "4"]);
    cluster_up(&cluster, 4).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    create_and_fill(&client, "resilient", 4, 3, 2000).await;

    // Kill the last node for good (never node 0, the client's seed). Ids follow join order, so
    // look the node up by address.
    let lost = 3usize;
    let lost_id = weir_tests::node_id_of(&client, &cluster.addr(lost)).await;
    let info = client.describe_topic("resilient").await.expect("describe");
    let moved: Vec<u64> = info
        .partition_info
        .iter()
        .filter(|p| p.replicas.contains(&lost_id))
        .map(|p| p.group_id)
        .collect();
    assert!(!moved.is_empty(), "the lost node holds partitions");
    cluster.kill(lost);
    wait_until("every partition back to 3 live replicas", SETTLE, || {
        let client = client.clone();
        async move {
            let info = client.describe_topic("resilient").await.ok()?;
            let ok = info.partition_info.iter().all(|p| {
                let mut voters = p.voters.clone();
                voters.sort();
                let mut replicas = p.replicas.clone();
                replicas.sort();
                replicas.len() == 3 && !replicas.contains(&lost_id) && voters == replicas
            });
            ok.then_some(())
        }
    })
    .await;
    let status = client.cluster_status().await.expect("status");
    let lost_member = status
        .members
        .iter()
        .find(|m| m.id == lost_id)
        .expect("member listed");
    assert_eq!(lost_member.state, "down");

    let data = read_all(&client, "resilient", SETTLE).await;
    assert_dense(&data);
    let values: HashSet<String> = data.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(values.len(), 2000, "all records still readable");

    // The lost node comes back after its replicas were re-created elsewhere: it deletes the
    // data of the groups it no longer belongs to (once their leaders confirm the removal).
    // Rebalancing may place some of them on it again meanwhile; those it keeps.
    cluster.restart(lost);
    let http = cluster.nodes[lost].http.clone();
    let gone = wait_until(
        "the returning node to drop its moved replicas",
        SETTLE,
        || {
            let (http, client, moved) = (http.clone(), client.clone(), moved.clone());
            async move {
                let info = client.describe_topic("resilient").await.ok()?;
                let gone: Vec<u64> = moved
                    .iter()
                    .copied()
                    .filter(|g| {
                        info.partition_info
                            .iter()
                            .any(|p| p.group_id == *g && !p.replicas.contains(&lost_id))
                    })
                    .collect();
                let body = weir_tests::try_http_get(&http, "/metrics").await?;
                let dropped = weir_tests::metric(&body, "weir_replicas_dropped_total");
                (dropped >= gone.len() as f64).then_some(gone)
            }
        },
    )
    .await;
    cluster.kill(lost);
    let engine = weir_storage::Engine::open(&cluster.nodes[lost].data_dir).expect("open engine");
    for cf in [
        weir_storage::engine::CF_LOG,
        weir_storage::engine::CF_META,
        weir_storage::engine::CF_DATA,
    ] {
        let left: Vec<u64> = engine
            .group_ids(cf)
            .expect("list groups")
            .into_iter()
            .filter(|g| gone.contains(g))
            .collect();
        assert!(left.is_empty(), "{cf} still holds moved groups {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn membership_changes_finish_when_their_leader_is_killed_midway() {
    let mut cluster = ProcessCluster::start(3, &[]);
    cluster_up(&cluster, 3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    create_and_fill(&client, "moving", 6, 3, 3000).await;

    // A fourth node joins: the placement loop moves replicas onto it one at a time. Whenever a
    // partition is caught mid-move (its voters differ from its replicas), SIGKILL its leader and
    // bring it back; the new leader must finish the change.
    cluster.add_node();
    cluster_up(&cluster, 4).await;
    let addr_of: HashMap<String, usize> = (0..4).map(|i| (cluster.addr(i), i)).collect();
    let mut kills = 0;
    let deadline = std::time::Instant::now() + SETTLE;
    while kills < 3 && std::time::Instant::now() < deadline {
        let Ok(info) = client.describe_topic("moving").await else {
            continue;
        };
        let moving = info.partition_info.iter().find(|p| {
            let mut voters = p.voters.clone();
            voters.sort();
            let mut replicas = p.replicas.clone();
            replicas.sort();
            voters != replicas && p.leader != 0
        });
        let target = moving.and_then(|p| Some((p.partition, *addr_of.get(&p.leader_addr)?)));
        match target {
            // Never node 0: the client's seed.
            Some((partition, i)) if i != 0 => {
                cluster.kill(i);
                kills += 1;
                let killed = cluster.addr(i);
                wait_until("another node to lead the partition", SETTLE, || {
                    let client = client.clone();
                    let killed = killed.clone();
                    async move {
                        let info = client.describe_topic("moving").await.ok()?;
                        let p = info.partition_info.get(partition as usize)?;
                        (p.leader != 0 && p.leader_addr != killed).then_some(())
                    }
                })
                .await;
                cluster.restart(i);
            }
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    // Whether or not a kill landed mid-change, every group settles on its catalog replicas, and
    // the new node holds replicas.
    let new_id = weir_tests::node_id_of(&client, &cluster.addr(3)).await;
    wait_until(
        "every partition's voters to equal its replicas",
        SETTLE,
        || {
            let client = client.clone();
            async move {
                let info = client.describe_topic("moving").await.ok()?;
                let settled = info.partition_info.iter().all(|p| {
                    let mut voters = p.voters.clone();
                    voters.sort();
                    let mut replicas = p.replicas.clone();
                    replicas.sort();
                    p.leader != 0 && voters == replicas && replicas.len() == 3
                });
                let on_new = info
                    .partition_info
                    .iter()
                    .any(|p| p.replicas.contains(&new_id));
                (settled && on_new).then_some(())
            }
        },
    )
    .await;
    let data = read_all(&client, "moving", SETTLE).await;
    assert_dense(&data);
    let values: HashSet<String> = data.values().flatten().map(|(_, v)| v.clone()).collect();
    assert_eq!(
        values.len(),
        3000,
        "no record lost across the moves and kills"
    );
}
