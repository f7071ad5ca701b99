//! Real `weir-node` processes: a partition whose leader's node is SIGKILLed serves again once the
//! dead leader's lease has run out, because the followers probe the node and start a pre-vote;
//! once the node is back, the survivors hand some of its leadership back to it.
//!
//! `failover_times_over_repeated_kills` is the failover benchmark of BENCHMARKS.md (ignored in the
//! suite): `cargo test -p weir-tests --test process_failover -- --ignored --nocapture`.

use std::time::{Duration, Instant};

use weir_client::{Client, NewTopic, Producer, ProducerConfig};
use weir_tests::{try_http_get, wait_until, ProcessCluster};

const SETTLE: Duration = Duration::from_secs(90);
const TOPIC: &str = "failover";
const PARTITIONS: u32 = 3;

async fn cluster_up(c: &ProcessCluster, n: usize) {
    c.wait_members_up(n, SETTLE).await;
}

/// A partition of [`TOPIC`], led by a node other than node 0 (the client's seed) if there is one,
/// with its leader's node id and process index; waits until every partition reports a leader.
async fn partition_led_elsewhere(client: &Client, cluster: &ProcessCluster) -> (u32, u64, usize) {
    let seed_id = weir_tests::node_id_of(client, &cluster.addr(0)).await;
    let status = client.cluster_status().await.expect("status");
    let (p, leader) = wait_until("every partition led", SETTLE, || {
        let client = client.clone();
        async move {
            let info = client.describe_topic(TOPIC).await.ok()?;
            if info.partition_info.iter().any(|p| p.leader == 0) {
                return None;
            }
            // The client finds other nodes when its seed is down, but prefers to keep it.
            info.partition_info
                .iter()
                .find(|p| p.leader != seed_id)
                .or_else(|| info.partition_info.first())
                .map(|p| (p.partition, p.leader))
        }
    })
    .await;
    let addr = &status
        .members
        .iter()
        .find(|m| m.id == leader)
        .expect("leader is a member")
        .addr;
    let victim = (0..cluster.nodes.len())
        .find(|i| &cluster.addr(*i) == addr)
        .expect("leader is one of ours");
    (p, leader, victim)
}

/// Acknowledged records on `partition`: the first proves the partition serves.
async fn produce_one(producer: &Producer, partition: u32) {
    producer
        .send_to(partition, None, b"ping", None)
        .await
        .expect("queued")
        .await
        .expect("acknowledged");
}

/// Kills the leader of a partition and returns how long it took until a record produced to that
/// partition was acknowledged again, and the killed process.
async fn kill_and_time(
    client: &Client,
    cluster: &mut ProcessCluster,
    producer: &Producer,
) -> (Duration, usize, u64) {
    let (p, leader, victim) = partition_led_elsewhere(client, cluster).await;
    // The producer knows the current leader, as a long-running one would.
    produce_one(producer, p).await;
    let killed_at = Instant::now();
    cluster.kill(victim);
    produce_one(producer, p).await;
    (killed_at.elapsed(), victim, leader)
}

/// Three nodes, [`TOPIC`] on them, a client seeded with node 0 and a producer.
async fn three_nodes_with_topic() -> (ProcessCluster, Client, Producer) {
    let cluster = ProcessCluster::start(3, &[]);
    cluster_up(&cluster, 3).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    client
        .create_topic(&NewTopic::new(TOPIC, PARTITIONS, 3))
        .await
        .expect("topic");
    let producer = Producer::new(client.clone(), TOPIC, ProducerConfig::default())
        .await
        .expect("producer");
    (cluster, client, producer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_serves_again_after_its_leader_is_killed() {
    let (mut cluster, client, producer) = three_nodes_with_topic().await;

    let (took, victim, old_leader) = kill_and_time(&client, &mut cluster, &producer).await;
    eprintln!("partition served again {took:?} after its leader was killed");

    wait_until("no partition led by the killed node", SETTLE, || {
        let client = client.clone();
        async move {
            let info = client.describe_topic(TOPIC).await.ok()?;
            info.partition_info
                .iter()
                .all(|p| p.leader != 0 && p.leader != old_leader)
                .then_some(())
        }
    })
    .await;
    // The survivors noticed the dead node by probing it (rather than waiting out their own election
    // timeouts) and asked for pre-votes.
    let mut prevotes = 0.0;
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i != victim {
            let m = try_http_get(&n.http, "/metrics").await.unwrap_or_default();
            prevotes += weir_tests::metric(&m, "weir_failover_prevotes_total");
        }
    }
    assert!(
        prevotes > 0.0,
        "the survivors started pre-votes on their own"
    );
}

/// Records posted over HTTP to a node that does not lead their partition, while its leader is
/// killed: every post is answered 200 once a new leader serves (the node sends the batch again
/// through the election instead of answering 503), and each record is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_ingest_rides_out_a_killed_leader() {
    let (mut cluster, client, _) = three_nodes_with_topic().await;
    let (p, _, victim) = partition_led_elsewhere(&client, &cluster).await;
    let via = (0..cluster.nodes.len())
        .find(|i| *i != victim)
        .expect("a survivor");
    let http = cluster.nodes[via].http.clone();
    let post = |n: u32| {
        let http = http.clone();
        async move {
            let body = format!("{{\"n\":{n}}}\n");
            weir_tests::http(
                &http,
                "POST",
                &format!("/v1/topics/{TOPIC}/records?partition={p}"),
                "application/x-ndjson",
                body.as_bytes(),
            )
            .await
        }
    };
    let (status, body) = post(0).await;
    assert_eq!(status, 200, "{body}");
    cluster.kill(victim);
    for n in 1..=5 {
        let (status, body) = post(n).await;
        assert_eq!(status, 200, "record {n}, posted after the kill: {body}");
    }
    let mut stored = Vec::new();
    let mut offset = 0;
    while stored.len() < 6 {
        let page = client
            .fetch(TOPIC, p, offset, 1 << 20, 1000)
            .await
            .expect("fetch");
        for b in &page.batches {
            let records = weir_proto::batch::decode(&b.batch).expect("a stored batch decodes");
            for (at, r) in (b.base_offset..).zip(records) {
                if at >= offset {
                    stored.push(String::from_utf8_lossy(&r.value).into_owned());
                    offset = at + 1;
                }
            }
        }
        if page.batches.is_empty() {
            break;
        }
    }
    let want: Vec<String> = (0..=5).map(|n| format!("{{\"n\":{n}}}")).collect();
    assert_eq!(stored, want, "each posted record once, in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leadership_spreads_back_to_a_restarted_node() {
    let (mut cluster, client, _) = three_nodes_with_topic().await;
    // Enough partitions that the restarted node's share is some of them, whatever other groups
    // (consumer offsets, system tables) it is also handed.
    const SPREAD: &str = "spread";
    const SPREAD_PARTITIONS: u32 = 12;
    client
        .create_topic(&NewTopic::new(SPREAD, SPREAD_PARTITIONS, 3))
        .await
        .expect("topic");
    let (_, leader, victim) = partition_led_elsewhere(&client, &cluster).await;
    cluster.kill(victim);
    let led_by = |node: u64| {
        let client = client.clone();
        async move {
            let info = client.describe_topic(SPREAD).await.ok()?;
            if info.partition_info.iter().any(|p| p.leader == 0) {
                return None;
            }
            Some(
                info.partition_info
                    .iter()
                    .filter(|p| p.leader == node)
                    .count(),
            )
        }
    };
    wait_until("the survivors to lead every partition", SETTLE, || async {
        (led_by(leader).await? == 0).then_some(())
    })
    .await;
    cluster.restart(victim);
    cluster_up(&cluster, 3).await;
    // Nothing elects the restarted node by itself: the survivors hand groups over to it.
    wait_until(
        "the restarted node to lead a partition again",
        SETTLE,
        || async { (led_by(leader).await? > 0).then_some(()) },
    )
    .await;
    // Every partition serves on its new leader.
    let producer = Producer::new(client.clone(), SPREAD, ProducerConfig::default())
        .await
        .expect("producer");
    for p in 0..SPREAD_PARTITIONS {
        produce_one(&producer, p).await;
    }
    let mut handovers = 0.0;
    for n in &cluster.nodes {
        let m = try_http_get(&n.http, "/metrics").await.unwrap_or_default();
        handovers += weir_tests::metric(&m, "weir_leader_handovers_total");
    }
    assert!(handovers > 0.0, "a survivor handed a group over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_restarted_within_a_lease_refuses_votes_until_it_has_passed() {
    let (mut cluster, client, producer) = three_nodes_with_topic().await;
    let (p, _, leader) = partition_led_elsewhere(&client, &cluster).await;
    // The followers acknowledge the leader, promising it a lease of no other votes.
    produce_one(&producer, p).await;
    let others: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (restarted, voter) = (others[0], others[1]);

    // The restarted replica comes back while the leader is dead, so the other follower keeps
    // asking it for its vote. It restarts with a longer lease (4 × a 2 s heartbeat) than the
    // other follower's election timeouts (1–2 s), so it is asked several times within it
    // whatever the machine's speed.
    cluster.kill(restarted);
    cluster.kill(leader);
    cluster.restart_with_env(restarted, &[("WEIR_RAFT_HEARTBEAT_MS", "2000")]);

    // Within its lease the restarted replica refuses, however often it is asked ...
    wait_until("a refused vote", SETTLE, || {
        let refused = cluster.log_text(voter).contains("not voting yet");
        async move { refused.then_some(()) }
    })
    .await;
    // ... and once the lease has passed it votes, and the partition serves again.
    produce_one(&producer, p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "benchmark: run explicitly, see BENCHMARKS.md"]
async fn failover_times_over_repeated_kills() {
    let kills: usize = std::env::var("WEIR_FAILOVER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let (mut cluster, client, producer) = three_nodes_with_topic().await;
    let mut times = Vec::new();
    for k in 0..kills {
        let (took, victim, _) = kill_and_time(&client, &mut cluster, &producer).await;
        eprintln!("kill {}: served again after {took:?}", k + 1);
        times.push(took);
        cluster.restart(victim);
        cluster_up(&cluster, 3).await;
        // Let the restarted node catch up and its no-vote period pass before the next kill.
        wait_until("every partition led and replicated", SETTLE, || {
            let client = client.clone();
            async move {
                let info = client.describe_topic(TOPIC).await.ok()?;
                info.partition_info
                    .iter()
                    .all(|p| p.leader != 0 && p.voters.len() == 3)
                    .then_some(())
            }
        })
        .await;
        // Pacing only: the restarted node leaves its no-vote period (one lease) before the next kill.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    times.sort();
    let p50 = times[times.len() / 2];
    let max = times[times.len() - 1];
    eprintln!(
        "failover over {kills} kills: min {:?}, p50 {p50:?}, max {max:?}",
        times[0]
    );
}
