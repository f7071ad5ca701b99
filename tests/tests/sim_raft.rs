//! One partition group of three replicas, its Raft traffic on turmoil's simulated network.
//!
//! The scenario, per seed and twice over: a leader commits writes; it is then cut off from both
//! followers, and a write submitted to it must not commit while the majority elects a new leader
//! that keeps committing; once the partition heals, every replica must hold the same batches, each
//! acknowledged write exactly once and in acknowledgement order, and nothing else. Another test
//! starts a fourth replica that joins the running group empty, and checks when it may vote.
//!
//! Replicas are built as the group manager builds them (engine, state machine, log store, the
//! real Raft network and gRPC service), only the TCP underneath is turmoil's and the disk is an
//! in-memory one; Raft's randomness is drawn from the seed, so a run replays exactly. The client reaches
//! the replicas' Raft handles through a shared map, so its own calls never cross the network.
//! Every wait is a poll against a deadline in simulated time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::raft::VoteRequest;
use openraft::{BasicNode, ServerState};
use tokio::time::Instant;
use weir_node::groups::{leads, GroupHandle, Registry};
use weir_node::leader::{self, ReadConfirmation};
use weir_node::raft::network::GroupNetwork;
use weir_node::raft::{config, service::RaftService};
use weir_proto::v1::raft_transport_client::RaftTransportClient;
use weir_proto::v1::raft_transport_server::RaftTransportServer;
use weir_proto::v1::RaftRequest;
use weir_storage::catalog::{Catalog, GroupKind};
use weir_storage::engine::memory::MemoryDisk;
use weir_storage::partition::{read_batches, PartitionState};
use weir_storage::snapshot::SnapshotDir;
use weir_storage::types::Raft;
use weir_storage::{Engine, GroupWatch, LogStore, Request, Response, StateMachine, TypeConfig};
use weir_tests::sim::{self, PORT};

const GROUP: u64 = 7;
const NODES: [u64; 3] = [1, 2, 3];
/// The replica that joins the running group in the voting test.
const JOINER: u64 = 4;
const RECORDS_PER_BATCH: u32 = 3;
const BATCHES_PER_PHASE: usize = 5;
/// Partition rounds per seed: the second cuts off a leader the first one elected, with connections
/// left over from the first.
const ROUNDS: usize = 2;
/// Long enough for a few election timeouts of the data-group timing.
const ELECTION_DEADLINE: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the isolated leader is watched for a commit it must never make, after the majority
/// has already moved on.
const ISOLATED_WATCH: Duration = Duration::from_secs(10);
/// Turmoil drops the segments sent across a partition and never retransmits them, so a connection
/// open at the cut delivers nothing after the repair; the replicas have to get past such
/// connections (request timeouts, new connections, HTTP/2 keep-alive), hence a generous deadline.
const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(120);

fn host(id: u64) -> String {
    format!("n{id}")
}

/// A replica as the client sees it, past the network.
#[derive(Clone)]
struct Replica {
    group: Arc<GroupHandle>,
    engine: Engine,
}

type Replicas = Arc<Mutex<BTreeMap<u64, Replica>>>;

/// A write the group acknowledged.
#[derive(Debug, Clone)]
struct Acked {
    base_offset: u64,
    batch: Bytes,
}

/// The software of host `nX`: one replica of the group, served until the simulation ends.
async fn run_replica(
    id: u64,
    disk: MemoryDisk,
    dir: PathBuf,
    replicas: Replicas,
    founder: bool,
) -> turmoil::Result {
    let engine = Engine::in_memory(&disk);
    let snapshot_root = dir.join("snapshots");
    let kind = GroupKind::Partition {
        topic: "sim".into(),
        partition: 0,
    };
    let sm = StateMachine::open(engine.clone(), GROUP, &kind, &snapshot_root)?;
    let watch = sm.watch();
    let network = GroupNetwork::new(GROUP, sim::peers(), engine.clone());
    let raft = Raft::new(
        id,
        config::partition(),
        network,
        LogStore::new(engine.clone(), GROUP),
        sm,
    )
    .await?;
    if id == NODES[0] {
        let members: BTreeMap<u64, BasicNode> = NODES
            .iter()
            .map(|n| (*n, BasicNode::new(format!("{}:{PORT}", host(*n)))))
            .collect();
        raft.initialize(members).await?;
    }
    let group = Arc::new(GroupHandle {
        id: GROUP,
        kind,
        raft,
        watch,
        snapshots: SnapshotDir::new(&snapshot_root, GROUP),
        no_votes_until: Instant::now(),
        founder,
        handover_term: Default::default(),
    });
    replicas.lock().expect("replica map").insert(
        id,
        Replica {
            group: group.clone(),
            engine,
        },
    );
    let incoming = sim::incoming(PORT).await?;
    tonic::transport::Server::builder()
        .add_service(
            RaftTransportServer::new(RaftService::new(id, Registry::fixed([group])))
                .max_decoding_message_size(256 << 20)
                .max_encoding_message_size(256 << 20),
        )
        .serve_with_incoming(incoming)
        .await?;
    Ok(())
}

fn replica(replicas: &Replicas, id: u64) -> Replica {
    replicas.lock().expect("replica map")[&id].clone()
}

fn partition_state(r: &Replica) -> PartitionState {
    match &r.group.watch {
        GroupWatch::Partition(rx) => *rx.borrow(),
        _ => unreachable!("group {GROUP} is a partition"),
    }
}

fn append(batch: Bytes) -> Request {
    Request::Append {
        batch,
        count: RECORDS_PER_BATCH,
        max_timestamp_ms: 0,
        producer: None,
    }
}

/// What each replica believes and holds, for failure messages.
fn describe(replicas: &Replicas) -> String {
    let replicas = replicas.lock().expect("replica map");
    let mut out = String::new();
    for (id, r) in replicas.iter() {
        let m = r.group.raft.metrics().borrow_watched().clone();
        out.push_str(&format!(
            "\n  n{id}: {:?} term {} leader {:?} last log {:?} applied {:?} {:?}",
            m.state,
            m.current_term,
            m.current_leader,
            m.last_log_index,
            m.last_applied,
            partition_state(r)
        ));
    }
    out
}

/// Polls `check` every 20 ms of simulated time until it answers, panicking with `what` and the
/// replicas' state after `timeout`.
async fn wait_for<T>(
    replicas: &Replicas,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}:{}",
                describe(replicas)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The leader of a term above `above_term` that every node of `among` follows, and its term.
///
/// The leader must also have applied an entry of its own term: until a quorum has acknowledged it,
/// openraft refuses writes (its leader lease is not yet established).
async fn agreed_leader(replicas: &Replicas, among: &[u64], above_term: u64) -> (u64, u64) {
    wait_for(
        replicas,
        "a ready leader every reachable replica follows",
        ELECTION_DEADLINE,
        || {
            let metrics: Vec<_> = among
                .iter()
                .map(|n| {
                    replica(replicas, *n)
                        .group
                        .raft
                        .metrics()
                        .borrow_watched()
                        .clone()
                })
                .collect();
            let leader = metrics[0].current_leader?;
            let lm = metrics.iter().find(|m| m.id == leader)?;
            let agreed = metrics.iter().all(|m| m.current_leader == Some(leader));
            let ready = lm
                .last_applied
                .is_some_and(|l| l.committed_leader_id().term == lm.current_term);
            (agreed && ready && lm.state == ServerState::Leader && lm.current_term > above_term)
                .then_some((leader, lm.current_term))
        },
    )
    .await
}

/// Writes `batch` through node `via`, which must acknowledge it.
async fn write(replicas: &Replicas, via: u64, batch: &str, seed: u64) -> Acked {
    let batch = Bytes::from(batch.to_owned());
    let raft = replica(replicas, via).group.raft.clone();
    let resp = tokio::time::timeout(WRITE_TIMEOUT, raft.client_write(append(batch.clone())))
        .await
        .unwrap_or_else(|_| panic!("seed {seed}: write {batch:?} via n{via} timed out"))
        .unwrap_or_else(|e| panic!("seed {seed}: write {batch:?} via n{via} failed: {e}"));
    match resp.data {
        Response::Appended { base_offset, count } => {
            assert_eq!(count, RECORDS_PER_BATCH, "seed {seed}");
            Acked { base_offset, batch }
        }
        other => panic!("seed {seed}: write {batch:?} answered {other:?}"),
    }
}

/// The write handed to an isolated leader may fail, never succeed.
fn assert_not_acknowledged(
    seed: u64,
    leader: u64,
    outcome: &Result<
        ClientWriteResponse<TypeConfig>,
        RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
    >,
) {
    assert!(
        outcome.is_err(),
        "seed {seed}: the isolated leader n{leader} acknowledged a write: {outcome:?}"
    );
}

/// Waits until all replicas hold the same log and exactly the `acked` batches, in order.
async fn assert_converged(seed: u64, replicas: &Replicas, acked: &[Acked]) -> turmoil::Result {
    let expected = PartitionState {
        next_offset: acked.len() as u64 * u64::from(RECORDS_PER_BATCH),
        earliest: 0,
        bytes: acked.iter().map(|a| a.batch.len() as u64).sum(),
    };
    wait_for(
        replicas,
        "every replica to converge",
        CONVERGENCE_DEADLINE,
        || {
            let rs: Vec<Replica> = NODES.iter().map(|n| replica(replicas, *n)).collect();
            let logs: Vec<_> = rs
                .iter()
                .map(|r| {
                    let m = r.group.raft.metrics().borrow_watched().clone();
                    (m.last_log_index, m.last_applied)
                })
                .collect();
            let same_log = logs.iter().all(|l| *l == logs[0]);
            (same_log && rs.iter().all(|r| partition_state(r) == expected)).then_some(())
        },
    )
    .await;
    let want: Vec<(u64, Bytes)> = acked
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let dense = i as u64 * u64::from(RECORDS_PER_BATCH);
            assert_eq!(a.base_offset, dense, "seed {seed}: offsets are dense");
            (a.base_offset, a.batch.clone())
        })
        .collect();
    for n in NODES {
        let r = replica(replicas, n);
        let stored = read_batches(&r.engine, GROUP, 0, expected.next_offset, usize::MAX)?;
        assert!(
            stored.iter().all(|b| b.count == RECORDS_PER_BATCH),
            "seed {seed}: n{n} holds a batch of the wrong size"
        );
        let got: Vec<(u64, Bytes)> = stored
            .into_iter()
            .map(|b| (b.base_offset, b.batch))
            .collect();
        assert_eq!(got, want, "seed {seed}: batches of n{n}");
    }
    Ok(())
}

/// The whole scenario, driven from the client host.
async fn scenario(seed: u64, replicas: Replicas) -> turmoil::Result {
    wait_for(
        &replicas,
        "every replica to start",
        ELECTION_DEADLINE,
        || (replicas.lock().expect("replica map").len() == NODES.len()).then_some(()),
    )
    .await;
    let mut acked = Vec::new();
    for round in 0..ROUNDS {
        let (leader, term) = agreed_leader(&replicas, &NODES, 0).await;
        for i in 0..BATCHES_PER_PHASE {
            let batch = format!("round-{round}-before-{i}");
            acked.push(write(&replicas, leader, &batch, seed).await);
        }

        // Cut the leader off from both followers and hand it a write.
        let majority: Vec<u64> = NODES.iter().copied().filter(|n| *n != leader).collect();
        for f in &majority {
            turmoil::partition(host(leader), host(*f));
        }
        let old = replica(&replicas, leader);
        let state_at_cut = partition_state(&old);
        let mut isolated = {
            let raft = old.group.raft.clone();
            let req = append(Bytes::from(format!("round-{round}-isolated")));
            tokio::spawn(async move { raft.client_write(req).await })
        };

        // The majority elects a leader of a newer term and keeps committing, while the old leader
        // applies nothing and acknowledges nothing.
        let (new_leader, _) = agreed_leader(&replicas, &majority, term).await;
        for i in 0..BATCHES_PER_PHASE {
            let batch = format!("round-{round}-during-{i}");
            acked.push(write(&replicas, new_leader, &batch, seed).await);
        }
        let watch_until = Instant::now() + ISOLATED_WATCH;
        while Instant::now() < watch_until && !isolated.is_finished() {
            assert_eq!(
                partition_state(&old),
                state_at_cut,
                "seed {seed}: the isolated leader n{leader} applied a write"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let answered_while_cut = isolated.is_finished();
        if answered_while_cut {
            assert_not_acknowledged(seed, leader, &(&mut isolated).await?);
        }

        // Heal the partition: every replica converges on the majority's history, which does not
        // hold the isolated write, and the old leader answers that write with an error.
        for f in &majority {
            turmoil::repair(host(leader), host(*f));
        }
        assert_converged(seed, &replicas, &acked).await?;
        if !answered_while_cut {
            // Its entry is gone, so a caller still waiting on it (a produce request) must be told.
            let outcome = tokio::time::timeout(WRITE_TIMEOUT, isolated)
                .await
                .unwrap_or_else(|_| {
                    panic!("seed {seed}: the write taken by n{leader} is never answered")
                })?;
            assert_not_acknowledged(seed, leader, &outcome);
        }
    }
    Ok(())
}

/// Runs the scenario under `seed`.
fn simulate(seed: u64) {
    run(seed, &[], scenario);
}

/// Runs `scenario` against the group's founders and, started empty and not a founder, a replica
/// on each node of `joiners`.
fn run<F, Fut>(seed: u64, joiners: &[u64], scenario: F)
where
    F: FnOnce(u64, Replicas) -> Fut,
    Fut: std::future::Future<Output = turmoil::Result> + 'static,
{
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_test_writer()
        .try_init();
    let nodes: Vec<(u64, bool)> = NODES
        .iter()
        .map(|n| (*n, true))
        .chain(joiners.iter().map(|n| (*n, false)))
        .collect();
    let dirs: Vec<tempfile::TempDir> = nodes
        .iter()
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let replicas: Replicas = Arc::default();
    weir_proto::random::seed_this_thread(Some(seed));
    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .simulation_duration(Duration::from_secs(600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(5))
        .build();
    for ((id, founder), dir) in nodes.iter().copied().zip(&dirs) {
        let dir = dir.path().to_path_buf();
        let replicas = replicas.clone();
        let disk = MemoryDisk::new(seed.wrapping_add(id));
        sim.host(host(id), move || {
            run_replica(id, disk.clone(), dir.clone(), replicas.clone(), founder)
        });
    }
    sim.client("client", scenario(seed, replicas.clone()));
    let result = sim.run();
    drop(sim);
    replicas.lock().expect("replica map").clear();
    if let Err(e) = result {
        panic!("seed {seed}: {e}");
    }
}

/// Waits until the founders and the joiner have started and the founders agree on a ready
/// leader, has it acknowledge `batch`, and returns the leader and its term.
async fn led_with_joiner(replicas: &Replicas, batch: &str, seed: u64) -> (u64, u64) {
    wait_for(
        replicas,
        "every replica to start",
        ELECTION_DEADLINE,
        || (replicas.lock().expect("replica map").len() == NODES.len() + 1).then_some(()),
    )
    .await;
    let (leader, term) = agreed_leader(replicas, &NODES, 0).await;
    write(replicas, leader, batch, seed).await;
    (leader, term)
}

/// A replica that joins a running group empty (as on a node the group once dropped and took
/// back) grants no vote until the group's log has told it that it is a member: a candidate still
/// holding a configuration from before the drop would otherwise count it as the old member,
/// which had voted and stored entries there, and could lead without the entries a quorum holds.
#[test]
fn a_joining_replica_votes_only_once_the_log_names_it_a_member() {
    run(11, &[JOINER], |seed, replicas| async move {
        let (leader, _) = led_with_joiner(&replicas, "before the joiner", seed).await;
        let leading = replica(&replicas, leader).group;
        let m = leading.raft.metrics().borrow_watched().clone();
        let ask = RaftRequest {
            group_id: GROUP,
            payload: bincode::serialize(&VoteRequest::<TypeConfig>::new(m.vote, m.last_applied))?
                .into(),
        };
        let joiner_addr = format!("{}:{PORT}", host(JOINER));
        let mut joiner = RaftTransportClient::new(sim::peers().channel(&joiner_addr)?);
        let refused = joiner
            .vote(ask.clone())
            .await
            .expect_err("an empty replica that joined refuses to vote");
        assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused}");
        assert!(refused.message().contains("not voting yet"), "{refused}");

        leading
            .raft
            .add_learner(JOINER, BasicNode::new(joiner_addr), true)
            .await?;
        wait_for(
            &replicas,
            "the joiner to learn it is a member",
            ELECTION_DEADLINE,
            || {
                let m = replica(&replicas, JOINER).group.raft.metrics();
                let m = m.borrow_watched();
                m.membership_config
                    .membership()
                    .get_node(&JOINER)
                    .is_some()
                    .then_some(())
            },
        )
        .await;
        let answered = joiner.vote(ask).await;
        assert!(answered.is_ok(), "the member votes again: {answered:?}");
        Ok(())
    });
}

/// A leader that moves its group off itself answers no read on its lease once the membership
/// that removes it is its newest: when that change commits, openraft hands the group to a voter
/// that is elected at once, without waiting out the lease the voters granted, while the removed
/// leader still says it leads, with a quorum acknowledgement within the lease, until it steps
/// down. A read on that lease would miss what the successor commits.
#[test]
fn a_leader_that_removed_itself_reads_nothing_on_its_lease() {
    run(12, &[JOINER], |seed, replicas| async move {
        let (leader, term) = led_with_joiner(&replicas, "before the move", seed).await;
        let old = replica(&replicas, leader).group;
        let joiner_addr = format!("{}:{PORT}", host(JOINER));
        old.raft
            .add_learner(JOINER, BasicNode::new(joiner_addr), true)
            .await?;
        let voters: BTreeSet<u64> = NODES
            .iter()
            .copied()
            .filter(|n| *n != leader)
            .chain([JOINER])
            .collect();
        old.raft.change_membership(voters.clone(), false).await?;
        let successor = wait_for(&replicas, "a successor", ELECTION_DEADLINE, || {
            voters.iter().copied().find(|n| {
                let m = replica(&replicas, *n).group.raft.metrics();
                let m = m.borrow_watched();
                m.state == ServerState::Leader && m.current_term > term
            })
        })
        .await;
        assert!(
            leads(&old.raft.metrics().borrow_watched()),
            "seed {seed}: node {leader} no longer says it leads once node {successor} was \
             elected, so this run checks nothing"
        );
        let read = leader::linearizable(&old, &Catalog::default()).await;
        assert!(
            !matches!(read, Ok(ReadConfirmation::Lease)),
            "seed {seed}: node {leader}, removed from its group and succeeded by node \
             {successor}, still reads on its lease"
        );
        Ok(())
    });
}

#[test]
fn partitioned_leader_seed_1() {
    simulate(1);
}

#[test]
fn partitioned_leader_seed_2() {
    simulate(2);
}

#[test]
fn partitioned_leader_seed_3() {
    simulate(3);
}

#[test]
fn partitioned_leader_seed_4() {
    simulate(4);
}

#[test]
fn partitioned_leader_seed_5() {
    simulate(5);
}
