//! Real `weir-node` processes: a replica that was down catches up with a snapshot that starts
//! where its own copy ends, and stays whole when it is killed while installing one.

use std::cell::Cell;
use std::collections::HashSet;
use std::time::Duration;

use weir_client::{Client, NewTopic, Producer, ProducerConfig};
use weir_tests::topic_data::{assert_dense, fill, read_all};
use weir_tests::{wait_until, ProcessCluster};

const SETTLE: Duration = Duration::from_secs(90);
const TOPIC: &str = "catchup";

/// Waits until the partition has three voters and its leader (HTTP `http`) sees no replica behind,
/// judged on metrics fresher than the call.
async fn wait_caught_up(client: &Client, http: &str, what: &str) {
    wait_until(what, SETTLE, || async {
        let info = client.describe_topic(TOPIC).await.ok()?;
        let m = weir_tests::fresh_metrics(http, SETTLE).await;
        (info.partition_info[0].voters.len() == 3
            && weir_tests::metric(&m, "weir_raft_replication_lag_entries") == 0.0)
            .then_some(())
    })
    .await;
}

/// A gauge of Raft group `group` in fresh metrics of the node at `http`.
async fn raft_log_index(http: &str, name: &str, group: u64) -> f64 {
    let m = weir_tests::fresh_metrics(http, SETTLE).await;
    weir_tests::metric(&m, &format!("{name}{{group=\"{group}\"}}"))
}

/// Kills node `down`, runs `write`, and waits until the leader (HTTP `leader_http`) has purged its
/// Raft log of `group` past everything the killed node held: back, it can only catch up with a
/// snapshot. Returns what `write` returned.
async fn miss_more_than_the_log_keeps<T>(
    cluster: &mut ProcessCluster,
    down: usize,
    leader_http: &str,
    group: u64,
    write: impl std::future::Future<Output = T>,
) -> T {
    let held = raft_log_index(&cluster.nodes[down].http, "weir_raft_log_last_index", group).await;
    cluster.kill(down);
    let written = write.await;
    wait_until(
        "the leader to purge past the stopped follower",
        SETTLE,
        || async {
            let purged = raft_log_index(leader_http, "weir_raft_log_purged_index", group).await;
            (purged > held).then_some(())
        },
    )
    .await;
    // Snapshots are triggered by bytes appended and built a moment later: one still being built
    // would reach the returning node as a second transfer. Wait until the leader's purged index
    // stays put over three heartbeat ticks, so the node comes back to the leader's last snapshot.
    let (last, same) = (&Cell::new(f64::NAN), &Cell::new(0));
    wait_until("the leader to finish snapshotting", SETTLE, || async move {
        let purged = raft_log_index(leader_http, "weir_raft_log_purged_index", group).await;
        same.set(if purged == last.get() {
            same.get() + 1
        } else {
            0
        });
        last.set(purged);
        (same.get() >= 3).then_some(())
    })
    .await;
    written
}

/// A cluster of three nodes holding one partition.
struct Setup {
    cluster: ProcessCluster,
    client: Client,
    producer: Producer,
    /// Index of the partition's leader.
    leader: usize,
    /// Index of a follower other than node 0 (the client's seed).
    follower: usize,
    /// The partition's Raft group.
    group: u64,
}

/// Three nodes and a one-partition topic holding `records` records of 1,000 bytes ("a…") on every
/// replica. Leader balance is off: the tests watch one leader send to one follower, and a leader
/// with a follower down may otherwise hand the partition to the other.
async fn three_replicas_filled(records: u64) -> Setup {
    let cluster = ProcessCluster::start(3, &["--leader-balance", "false"]);
    cluster.wait_members_up(3, SETTLE).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    client
        .create_topic(&NewTopic::new(TOPIC, 1, 3))
        .await
        .expect("topic");
    let producer = Producer::new(client.clone(), TOPIC, ProducerConfig::default())
        .await
        .expect("producer");
    fill(&producer, "a", records, 1_000).await;
    let info = client.describe_topic(TOPIC).await.expect("describe");
    let leader_id = info.partition_info[0].leader;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(weir_tests::node_id_of(&client, &cluster.addr(i)).await);
    }
    let leader = ids.iter().position(|id| *id == leader_id).expect("leader");
    let follower = (1..3).rev().find(|i| *i != leader).expect("a follower");
    wait_caught_up(
        &client,
        &cluster.nodes[leader].http,
        "every replica holding the first records",
    )
    .await;
    Setup {
        cluster,
        client,
        producer,
        leader,
        follower,
        group: info.partition_info[0].group_id,
    }
}

/// Checks no node panicked, kills the leader and reads the partition from the survivors: every one
/// of `expected` records is there once, in dense offsets.
async fn survivors_serve_everything(cluster: &mut ProcessCluster, leader: usize, expected: usize) {
    for i in 0..3 {
        assert!(
            !cluster.log_text(i).contains("panicked at"),
            "node {i} panicked"
        );
    }
    cluster.kill(leader);
    let survivor = (0..3).find(|i| *i != leader).expect("survivor");
    let client = Client::connect(cluster.addr(survivor))
        .await
        .expect("client");
    let data = read_all(&client, TOPIC, SETTLE).await;
    assert_dense(&data);
    let values: HashSet<&str> = data
        .values()
        .flatten()
        .map(|(_, v)| v.trim_end_matches('.'))
        .collect();
    assert_eq!(
        values.len(),
        expected,
        "every acknowledged record is there once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_back_from_downtime_gets_only_what_it_missed() {
    let Setup {
        mut cluster,
        client,
        producer,
        leader,
        follower: down,
        group,
    } = three_replicas_filled(5_000).await;
    let before = 5_000 * 1_000;
    let http = cluster.nodes[leader].http.clone();
    let write = fill(&producer, "b", 10_000, 1_000);
    let missed = miss_more_than_the_log_keeps(&mut cluster, down, &http, group, write).await;
    // Only what is sent from now on is the catch-up's cost (the other follower may have been sent
    // a snapshot while the load ran).
    let m = weir_tests::fresh_metrics(&http, SETTLE).await;
    let sent_before = weir_tests::metric(&m, "weir_snapshot_bytes_sent_total");
    let snapshots_before =
        weir_tests::metric(&m, "weir_snapshots_sent_total{incremental=\"true\"}");
    cluster.restart(down);

    // The leader sends a snapshot that starts where the follower's copy ends.
    let sent = wait_until("a snapshot from the follower's own offset", SETTLE, || {
        let http = http.clone();
        async move {
            let m = weir_tests::try_http_get(&http, "/metrics").await?;
            (weir_tests::metric(&m, "weir_snapshots_sent_total{incremental=\"true\"}")
                > snapshots_before)
                .then(|| weir_tests::metric(&m, "weir_snapshot_bytes_sent_total") - sent_before)
        }
    })
    .await;
    eprintln!(
        "sent {sent} bytes to a follower that missed {missed} of {} bytes",
        before + missed
    );
    assert!(
        sent < (missed + before / 2) as f64,
        "sent {sent} bytes to a follower that missed {missed} of {} bytes",
        before + missed
    );
    wait_caught_up(&client, &http, "the follower caught up").await;
    survivors_serve_everything(&mut cluster, leader, 15_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_follower_killed_while_installing_snapshots_recovers_whole() {
    let Setup {
        mut cluster,
        client,
        producer,
        leader,
        follower: down,
        group,
    } = three_replicas_filled(2_000).await;
    let http = cluster.nodes[leader].http.clone();
    let mut written = 2_000 * 1_000;
    // Each round the follower misses more than the leader keeps of its log, comes back, and is
    // killed at a point of the install (checking the received file, dropping the old data,
    // writing the rows, committing: a few hundred milliseconds for this much on a debug build).
    // A killed install leaves a marked, half-written replica that must come back empty, get the
    // whole snapshot again, and never serve the half.
    for (round, delay_ms) in [0u64, 40, 100, 200].into_iter().enumerate() {
        let tag = format!("r{round}-");
        let write = fill(&producer, &tag, 12_000, 1_000);
        written += miss_more_than_the_log_keeps(&mut cluster, down, &http, group, write).await;
        let installs = cluster
            .log_text(down)
            .matches("installing snapshot")
            .count();
        cluster.restart(down);
        // Polled tightly (not with `wait_until`'s 50 ms): the kill is timed from here.
        let deadline = std::time::Instant::now() + SETTLE;
        while cluster
            .log_text(down)
            .matches("installing snapshot")
            .count()
            <= installs
        {
            assert!(std::time::Instant::now() < deadline, "no install started");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        cluster.kill(down);
        cluster.restart(down);
        wait_caught_up(&client, &http, "the follower caught up").await;
    }
    eprintln!(
        "{} of 4 kills cut an install short",
        cluster
            .log_text(down)
            .matches("install was cut short")
            .count()
    );
    survivors_serve_everything(&mut cluster, leader, (written / 1_000) as usize).await;
}
