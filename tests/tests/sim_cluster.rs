//! The cluster under a seeded nemesis, in deterministic simulation.
//!
//! Per seed: three nodes start (a fourth joins during the run), clients produce to a topic with an
//! idempotent producer, consume it in a consumer group, run gets/puts/compare-and-sets on
//! registers in a table that keeps splitting, while a nemesis drawn from the seed partitions nodes
//! (both ways and one way), holds a node's traffic longer than a lease, slows links, and crashes
//! machines whose disks lose what was not synced (some long enough for their replicas to be moved
//! elsewhere). Then everything heals and the run is judged:
//!
//! - every acknowledged record is in the log exactly once, at the offset it was acknowledged
//!   with, and no record is in it twice;
//! - the consumer group read every partition in offset order without skipping an offset, and
//!   what it read is what the log holds;
//! - the register histories are linearizable;
//! - every group has a leader, no group is left in a joint configuration, every group's voters
//!   are the replicas placement chose (placement has settled), and the replicas of every group
//!   hold the same data.
//!
//! A run depends only on its seed: `WEIR_SIM_SEED=N` replays one, `WEIR_SIM_SEEDS=A..B` runs a
//! range (`deploy/sim-seeds.sh` runs thousands in release builds). The tests run each seed in a
//! process of its own, as a replay does.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use weir_client::consumer::{Consumer, ConsumerConfig, StartFrom};
use weir_client::{Client, NewTopic, Producer, ProducerConfig, TableSchema, Value};
use weir_proto::v1::kv_client::KvClient;
use weir_storage::catalog::GroupKind;
use weir_storage::partition::{self, PartitionState};
use weir_storage::GroupWatch;
use weir_tests::kv_register::{self, run_client};
use weir_tests::linearizability::{check, History, Outcome, Verdict};
use weir_tests::sim::{addr, client_config, Machine, Running};

/// How long the nemesis acts in a full run.
const CHAOS: Duration = Duration::from_secs(60);
/// How long it acts in a short run: fewer faults per seed, so CI can afford many more seeds.
const SHORT_CHAOS: Duration = Duration::from_secs(20);
/// How long, after the heal, the cluster has to settle and the checks to pass.
const SETTLE: Duration = Duration::from_secs(180);
/// The node that joins during the run.
const LATE_NODE: &str = "n4";
const FIRST_NODES: [&str; 3] = ["n1", "n2", "n3"];
const TOPIC: &str = "events";
const PARTITIONS: u32 = 2;
const GROUP: &str = "readers";
/// Regions of the register table split past this many bytes, so splits happen during the run.
const SPLIT_BYTES: u64 = 16 << 10;

/// What happened in a run, in order: the nemesis's actions and the clients' observations. Two
/// runs of one seed must produce the same trace.
#[derive(Clone, Default)]
struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    fn note(&self, line: String) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(line);
    }

    fn lines(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn digest(&self) -> u64 {
        let mut h = std::hash::DefaultHasher::new();
        self.lines().hash(&mut h);
        h.finish()
    }
}

/// A fault the nemesis injects, and how it is undone.
#[derive(Debug, Clone)]
enum Fault {
    /// No traffic between two nodes.
    Partition(String, String),
    /// No traffic from the first node to the second; the other way works.
    OneWay(String, String),
    /// Everything a node sends or receives is held back, then delivered at once: to the rest of
    /// the cluster the node stops for longer than its lease, then resumes.
    Hold(String),
    /// The node's links get slow.
    Slow(String),
    /// The machine crashes; it restarts when the fault ends.
    Crash(String),
}

/// One step of the nemesis's schedule.
#[derive(Debug, Clone)]
struct Step {
    at: Duration,
    fault: Fault,
    lasts: Duration,
}

/// The schedule a seed draws: a fault every few seconds, one at a time, each lasting a few
/// seconds (some crashes outlast the down timeout, so their replicas move).
fn schedule(rng: &mut StdRng, chaos: Duration) -> Vec<Step> {
    let nodes: Vec<String> = FIRST_NODES
        .iter()
        .chain([&LATE_NODE])
        .map(|n| n.to_string())
        .collect();
    let mut steps = Vec::new();
    let mut at = Duration::from_secs(rng.random_range(5..10));
    while at < chaos {
        let a = nodes[rng.random_range(0..nodes.len())].clone();
        let mut b = nodes[rng.random_range(0..nodes.len())].clone();
        while b == a {
            b = nodes[rng.random_range(0..nodes.len())].clone();
        }
        let (fault, lasts) = match rng.random_range(0..10) {
            0..=1 => (Fault::Partition(a, b), rng.random_range(1_000..8_000)),
            2..=3 => (Fault::OneWay(a, b), rng.random_range(1_000..8_000)),
            4 => (Fault::Hold(a), rng.random_range(2_000..6_000)),
            5 => (Fault::Slow(a), rng.random_range(2_000..8_000)),
            _ => (Fault::Crash(a), rng.random_range(500..16_000)),
        };
        let lasts = Duration::from_millis(lasts);
        steps.push(Step { at, fault, lasts });
        at += lasts + Duration::from_millis(rng.random_range(500..4_000));
    }
    steps
}

/// Applies or undoes faults on the simulation.
struct Nemesis {
    machines: BTreeMap<String, Machine>,
    running: Running,
    trace: Trace,
    /// Hosts added to the simulation so far.
    started: BTreeSet<String>,
}

impl Nemesis {
    fn others(&self, name: &str) -> Vec<String> {
        self.started
            .iter()
            .filter(|n| n.as_str() != name)
            .cloned()
            .chain(["client".to_string()])
            .collect()
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        self.trace
            .note(format!("{:?} start {fault:?}", sim.elapsed()));
        match fault {
            Fault::Partition(a, b) if self.both_started(a, b) => {
                sim.partition(a.as_str(), b.as_str())
            }
            Fault::OneWay(a, b) if self.both_started(a, b) => {
                sim.partition_oneway(a.as_str(), b.as_str())
            }
            Fault::Hold(a) if self.started.contains(a) => {
                for o in self.others(a) {
                    sim.hold(a.as_str(), o.as_str());
                }
            }
            Fault::Slow(a) if self.started.contains(a) => {
                for o in self.others(a) {
                    sim.set_link_latency(a.as_str(), o.as_str(), Duration::from_millis(150));
                }
            }
            Fault::Crash(a) if self.started.contains(a) => {
                self.machines[a].crash(sim, &self.running);
            }
            _ => {}
        }
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, fault: &Fault) {
        self.trace
            .note(format!("{:?} end {fault:?}", sim.elapsed()));
        match fault {
            Fault::Partition(a, b) if self.both_started(a, b) => sim.repair(a.as_str(), b.as_str()),
            Fault::OneWay(a, b) if self.both_started(a, b) => {
                sim.repair_oneway(a.as_str(), b.as_str())
            }
            Fault::Hold(a) if self.started.contains(a) => {
                for o in self.others(a) {
                    sim.release(a.as_str(), o.as_str());
                }
            }
            Fault::Slow(a) if self.started.contains(a) => {
                for o in self.others(a) {
                    sim.set_link_latency(a.as_str(), o.as_str(), Duration::from_millis(1));
                }
            }
            Fault::Crash(a) if self.started.contains(a) => sim.bounce(a.as_str()),
            _ => {}
        }
    }

    fn both_started(&self, a: &str, b: &str) -> bool {
        self.started.contains(a) && self.started.contains(b)
    }
}

/// What the clients observed, for the checks.
#[derive(Default)]
struct Observed {
    /// Acknowledged records: value → (partition, offset).
    acked: BTreeMap<String, (u32, u64)>,
    /// What the consumer group read, per partition, in the order it read it.
    consumed: BTreeMap<u32, Vec<(u64, String)>>,
    /// The consumer's generation, assignment and positions after its last poll, and its last
    /// error, for failure reports.
    consumer: String,
}

type Shared<T> = Arc<Mutex<T>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Sim time since the run started, in milliseconds (record timestamps, so runs replay exactly).
fn sim_ms() -> i64 {
    turmoil::elapsed().as_millis() as i64
}

/// Runs one seed with `chaos` of faults: Ok(trace digest), or what went wrong and the trace that
/// led there.
fn run_seed(seed: u64, chaos: Duration) -> Result<u64, String> {
    if std::env::var_os("WEIR_LOG").is_some() {
        weir_tests::init_tracing();
    }
    weir_proto::random::seed_this_thread(Some(seed));
    let mut rng = StdRng::seed_from_u64(seed);
    let root = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut sim = turmoil::Builder::new()
        .simulation_duration(chaos + SETTLE + Duration::from_secs(60))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(rng.random_range(1..10)))
        .rng_seed(seed)
        .build();
    let running = Running::default();
    let trace = Trace::default();
    let mut machines = BTreeMap::new();
    for (i, name) in FIRST_NODES.iter().chain([&LATE_NODE]).enumerate() {
        let join = (i > 0).then(|| addr(FIRST_NODES[0]));
        let m = Machine::new(name, seed.wrapping_add(i as u64), root.path(), join);
        machines.insert(name.to_string(), m);
    }
    let mut nemesis = Nemesis {
        machines,
        running: running.clone(),
        trace: trace.clone(),
        started: BTreeSet::new(),
    };
    for name in FIRST_NODES {
        nemesis.machines[name].add_to(&mut sim, &running);
        nemesis.started.insert(name.to_string());
    }
    // The late node joins while the nemesis acts.
    let late_at = Duration::from_secs(rng.random_range(10..10 + chaos.as_secs().max(1) / 2));
    let steps = schedule(&mut rng, chaos);
    let client_seed = rng.random::<u64>();

    let verdict: Shared<Option<Result<(), String>>> = Arc::default();
    {
        let (running, trace, verdict) = (running.clone(), trace.clone(), verdict.clone());
        sim.client("client", async move {
            let result = workload_and_checks(client_seed, chaos, running, trace).await;
            *lock(&verdict) = Some(result);
            Ok(())
        });
    }

    let mut pending: Vec<Step> = steps;
    pending.reverse();
    let mut ending: Vec<(Duration, Fault)> = Vec::new();
    let mut healed = false;
    loop {
        let now = sim.elapsed();
        if !nemesis.started.contains(LATE_NODE) && now >= late_at {
            trace.note(format!("{now:?} {LATE_NODE} joins"));
            nemesis.machines[LATE_NODE].add_to(&mut sim, &running);
            nemesis.started.insert(LATE_NODE.to_string());
        }
        if !healed {
            while pending.last().is_some_and(|s| s.at <= now) && ending.is_empty() {
                let Some(step) = pending.pop() else { break };
                nemesis.start(&mut sim, &step.fault);
                ending.push((now + step.lasts, step.fault));
            }
            ending.retain(|(until, fault)| {
                if *until <= now {
                    nemesis.end(&mut sim, fault);
                    false
                } else {
                    true
                }
            });
            if now >= chaos {
                for (_, fault) in std::mem::take(&mut ending) {
                    nemesis.end(&mut sim, &fault);
                }
                trace.note(format!("{now:?} healed"));
                healed = true;
            }
        }
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return Err(format!("simulation failed: {e}")),
        }
    }
    let result = lock(&verdict)
        .take()
        .unwrap_or_else(|| Err("the client never finished".into()));
    match result {
        Ok(()) => {
            if std::env::var_os("WEIR_SIM_TRACE").is_some() {
                println!("seed {seed} trace:\n  {}", trace.lines().join("\n  "));
            }
            Ok(trace.digest())
        }
        Err(e) => {
            let lines = trace.lines();
            // WEIR_SIM_TRACE=1 prints the whole trace of a failing seed, not just its end (and that of
            // a passing one, with --nocapture).
            let keep = if std::env::var_os("WEIR_SIM_TRACE").is_some() {
                lines.len()
            } else {
                40
            };
            let tail = lines[lines.len().saturating_sub(keep)..].join("\n  ");
            Err(format!("{e}\n last of the trace:\n  {tail}"))
        }
    }
}

/// The clients during the chaos, then the checks once it is over.
async fn workload_and_checks(
    seed: u64,
    chaos: Duration,
    running: Running,
    trace: Trace,
) -> Result<(), String> {
    let started = Instant::now();
    let client = Client::connect_with(addr(FIRST_NODES[0]), client_config())
        .await
        .map_err(|e| e.to_string())?;
    wait_for("three members", Duration::from_secs(60), || async {
        let s = client.cluster_status().await.ok()?;
        (s.members.len() >= 3).then_some(())
    })
    .await?;
    client
        .create_topic(&NewTopic::new(TOPIC, PARTITIONS, 3))
        .await
        .map_err(|e| format!("creating the topic: {e}"))?;
    let schema =
        TableSchema::parse("k VARCHAR, v BIGINT", &["k".into()]).map_err(|e| e.to_string())?;
    client
        .create_table(kv_register::TABLE, &schema, 3, SPLIT_BYTES)
        .await
        .map_err(|e| format!("creating the table: {e}"))?;
    trace.note(format!("{:?} topic and table created", turmoil::elapsed()));

    let observed: Shared<Observed> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(History::new());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tasks = Vec::new();
    let producer = tokio::spawn(produce(
        client.clone(),
        observed.clone(),
        stop.clone(),
        trace.clone(),
    ));
    let consumer_stop = Arc::new(AtomicBool::new(false));
    tasks.push(tokio::spawn(consume(
        client.clone(),
        observed.clone(),
        consumer_stop.clone(),
    )));
    tasks.push(tokio::spawn(fill_table(client.clone(), stop.clone())));
    for (i, node) in FIRST_NODES.iter().enumerate() {
        let kv = KvClient::new(
            weir_tests::sim::peers()
                .channel(&addr(node))
                .map_err(|e| e.to_string())?,
        );
        tasks.push(tokio::spawn(run_client(
            i,
            kv,
            history.clone(),
            stop.clone(),
            rng.random(),
        )));
    }
    while started.elapsed() < chaos + Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    trace.note(format!("{:?} workload stopped", turmoil::elapsed()));
    // The producer flushes what it has sent and notes every answer: only then is the set of
    // acknowledged records final, and the checks below can judge it.
    if tokio::time::timeout(SETTLE, producer).await.is_err() {
        return Err("the producer still waits for answers to what it sent".into());
    }
    trace.note(format!("{:?} producer flushed", turmoil::elapsed()));

    // Every acknowledged record must be read by the consumer group.
    let acked = lock(&observed).acked.len();
    let all_read = wait_for(
        "the consumer group to read every acknowledged record",
        SETTLE,
        || {
            let observed = observed.clone();
            async move {
                let o = lock(&observed);
                let read: BTreeSet<&String> =
                    o.consumed.values().flatten().map(|(_, v)| v).collect();
                o.acked.keys().all(|v| read.contains(v)).then_some(())
            }
        },
    )
    .await;
    if let Err(e) = all_read {
        let (first_missing, last_read, consumer) = unread(&lock(&observed));
        let mut probe = Vec::new();
        for n in FIRST_NODES.iter().chain([&LATE_NODE]) {
            let Ok(c) = Client::connect_with(addr(n), client_config()).await else {
                continue;
            };
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                c.group_heartbeat(GROUP, TOPIC, "probe", Duration::from_secs(10), 0, &[]),
            )
            .await;
            probe.push(format!("via {n}: {:?}", r.map(|r| r.map(|r| r.generation))));
            let status = tokio::time::timeout(Duration::from_secs(20), c.cluster_status()).await;
            probe.push(format!(
                "status via {n}: {:?}",
                status.map(|r| r.map(|r| r.metadata_leader))
            ));
            let offs =
                tokio::time::timeout(Duration::from_secs(20), c.list_offsets(TOPIC, 0)).await;
            probe.push(format!(
                "offsets via {n}: {:?}",
                offs.map(|r| r.map(|r| r.latest))
            ));
        }
        let nodes = running.all();
        let offsets = nodes
            .values()
            .next()
            .and_then(|c| c.registry.catalog().ok())
            .and_then(|c| c.offsets_group)
            .map(|g| replica_states(&nodes, g))
            .unwrap_or_default();
        return Err(format!(
            "{e}: unread (partition → first offset, count) {first_missing:?}, last read \
             {last_read:?}, consumer {consumer}; a heartbeat now: {probe:?}; offsets group: \
             {offsets}"
        ));
    }
    consumer_stop.store(true, Ordering::Relaxed);
    for t in &tasks {
        t.abort();
    }
    trace.note(format!(
        "{:?} {acked} records acknowledged",
        turmoil::elapsed()
    ));

    settled(&client, &running).await?;
    trace.note(format!("{:?} placement settled", turmoil::elapsed()));
    check_log(&client, &observed, &running).await?;
    converged(&running).await?;
    trace.note(format!("{:?} replicas converged", turmoil::elapsed()));

    let events = history.events();
    let known = events
        .iter()
        .filter(|e| e.outcome != Outcome::Unknown)
        .count();
    trace.note(format!(
        "{} register operations, {known} answered",
        events.len()
    ));
    match check(&events, None) {
        Verdict::Linearizable => Ok(()),
        other => Err(format!("register history: {other:?}")),
    }
}

/// What the consumer group has not read, for a failure report: per partition the first unread
/// acknowledged offset and how many are unread, the last offset read, and the consumer's state.
#[allow(clippy::type_complexity)]
fn unread(
    o: &Observed,
) -> (
    BTreeMap<u32, (u64, usize)>,
    BTreeMap<u32, Option<u64>>,
    String,
) {
    let read: BTreeSet<&String> = o.consumed.values().flatten().map(|(_, v)| v).collect();
    let mut first_missing: BTreeMap<u32, (u64, usize)> = BTreeMap::new();
    for (v, (p, off)) in &o.acked {
        if !read.contains(v) {
            let e = first_missing.entry(*p).or_insert((*off, 0));
            e.0 = e.0.min(*off);
            e.1 += 1;
        }
    }
    let last_read = o
        .consumed
        .iter()
        .map(|(p, r)| (*p, r.last().map(|(off, _)| *off)))
        .collect();
    (first_missing, last_read, o.consumer.clone())
}

/// Polls `probe` every 100 ms of simulated time until it answers, or fails after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            return Err(format!("timed out after {timeout:?} waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An idempotent producer sending unique values until `stop`, noting every acknowledgement.
async fn produce(client: Client, observed: Shared<Observed>, stop: Arc<AtomicBool>, trace: Trace) {
    let config = ProducerConfig {
        linger: Duration::from_millis(5),
        ..ProducerConfig::default()
    };
    let producer = match Producer::new(client, TOPIC, config).await {
        Ok(p) => p,
        Err(e) => {
            trace.note(format!("no producer: {e}"));
            return;
        }
    };
    let mut i = 0u64;
    let mut acks = futures::stream::FuturesUnordered::new();
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..5 {
            let value = format!("r{i}");
            i += 1;
            match producer
                .send_to(
                    (i % PARTITIONS as u64) as u32,
                    None,
                    value.as_bytes(),
                    Some(sim_ms()),
                )
                .await
            {
                Ok(ack) => acks.push(async move { (value, ack.partition(), ack.await) }),
                Err(e) => trace.note(format!("{:?} send refused: {e}", turmoil::elapsed())),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drain_acks(&mut acks, &observed, &trace, false).await;
    }
    let _ = producer.flush().await;
    drain_acks(&mut acks, &observed, &trace, true).await;
}

type Ack = (String, u32, weir_client::Result<Option<u64>>);

async fn drain_acks(
    acks: &mut futures::stream::FuturesUnordered<impl std::future::Future<Output = Ack>>,
    observed: &Shared<Observed>,
    trace: &Trace,
    all: bool,
) {
    use futures::StreamExt;
    loop {
        let next = if all {
            acks.next().await
        } else {
            match futures::FutureExt::now_or_never(acks.next()) {
                Some(n) => n,
                None => return,
            }
        };
        let Some((value, partition, result)) = next else {
            return;
        };
        match result {
            Ok(Some(offset)) => {
                trace.note(format!("ack {value} p{partition}@{offset}"));
                lock(observed).acked.insert(value, (partition, offset));
            }
            Ok(None) => {}
            Err(e) => trace.note(format!("nack {value}: {e}")),
        }
    }
}

/// One consumer-group member reading from the start until `stop`.
async fn consume(client: Client, observed: Shared<Observed>, stop: Arc<AtomicBool>) {
    let config = ConsumerConfig {
        group: Some(GROUP.into()),
        from: StartFrom::Earliest,
        ..ConsumerConfig::default()
    };
    let mut consumer = loop {
        match Consumer::new(client.clone(), TOPIC, config.clone()).await {
            Ok(c) => break c,
            Err(_) if !stop.load(Ordering::Relaxed) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(_) => return,
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let polled = consumer.poll(Duration::from_millis(200)).await;
        let state = |consumer: &Consumer, last: &str| {
            let positions: Vec<_> = consumer
                .assignment()
                .into_iter()
                .map(|p| (p, consumer.position(p)))
                .collect();
            format!(
                "{:?} generation {:?} positions {positions:?} {last}",
                turmoil::elapsed(),
                consumer.generation()
            )
        };
        match polled {
            Ok(records) => {
                let mut o = lock(&observed);
                for r in records {
                    o.consumed
                        .entry(r.partition)
                        .or_default()
                        .push((r.offset, String::from_utf8_lossy(&r.value).into_owned()));
                }
                o.consumer = state(&consumer, "");
            }
            Err(e) => {
                lock(&observed).consumer = state(&consumer, &format!("poll failed: {e}"));
                tokio::time::sleep(Duration::from_millis(50)).await
            }
        }
        if let Err(e) = consumer.commit().await {
            lock(&observed).consumer = state(&consumer, &format!("commit failed: {e}"));
        }
    }
}

/// Rows written to the register table beside the registers, so its regions keep splitting.
async fn fill_table(client: Client, stop: Arc<AtomicBool>) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(table) = client.table(kv_register::TABLE).await {
            let rows = (0..4)
                .map(|j| {
                    vec![
                        Value::Str(format!("f{:06}-{j}-{}", n, "x".repeat(64))),
                        Value::Int(n as i64),
                    ]
                })
                .collect();
            let _ = table.put(rows).await;
            n += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every group has a leader, none is in a joint configuration, and each group's
/// voters are the replicas the catalog names.
async fn settled(client: &Client, running: &Running) -> Result<(), String> {
    let _ = client;
    let mut last = String::new();
    let result = wait_for("placement to settle", SETTLE, || {
        let nodes = running.all();
        let problem = unsettled(&nodes);
        if let Some(p) = &problem {
            last = p.clone();
        }
        async move { problem.is_none().then_some(()) }
    })
    .await;
    result.map_err(|e| format!("{e}: {last}"))
}

/// What keeps the cluster from being settled, if anything.
fn unsettled(nodes: &BTreeMap<String, Arc<weir_node::cluster::NodeContext>>) -> Option<String> {
    if nodes.len() < FIRST_NODES.len() + 1 {
        return Some(format!("only {} nodes running", nodes.len()));
    }
    let any = nodes.values().next()?;
    let catalog = any.registry.catalog().ok()?;
    let mut groups: Vec<(u64, Vec<u64>)> = vec![(0, catalog.nodes.keys().copied().collect())];
    groups.extend(catalog.groups.values().map(|g| (g.id, g.replicas.clone())));
    for (id, replicas) in groups {
        let mut leaders = 0;
        for ctx in nodes.values() {
            let Some(h) = ctx.registry.get(id) else {
                continue;
            };
            let m = h.raft.metrics().borrow_watched().clone();
            let membership = m.membership_config.membership();
            if membership.get_joint_config().len() > 1 {
                return Some(format!("group {id} is in a joint configuration"));
            }
            if weir_node::groups::leads(&m) {
                leaders += 1;
                let voters: BTreeSet<u64> = membership.voter_ids().collect();
                let wanted: BTreeSet<u64> = replicas.iter().copied().collect();
                if id != 0 && voters != wanted {
                    return Some(format!(
                        "group {id}: voters {voters:?}, placement wants {wanted:?}"
                    ));
                }
            }
        }
        if leaders != 1 {
            return Some(format!(
                "group {id} has {leaders} leaders: {}",
                replica_states(nodes, id)
            ));
        }
    }
    None
}

/// How each node's replica of group `id` sees the group, for failure reports.
fn replica_states(
    nodes: &BTreeMap<String, Arc<weir_node::cluster::NodeContext>>,
    id: u64,
) -> String {
    let mut out = Vec::new();
    for (name, ctx) in nodes {
        let Some(h) = ctx.registry.get(id) else {
            continue;
        };
        let m = h.raft.metrics().borrow_watched().clone();
        out.push(format!(
            "{name} (node {}): {:?} term {} vote {} leader {:?} applied {:?} membership {:?}",
            ctx.node_id,
            m.state,
            m.current_term,
            m.vote,
            m.current_leader,
            m.last_applied.map(|l| l.index),
            m.membership_config.membership()
        ));
    }
    out.join("; ")
}

/// Checks the log against what was acknowledged and what the consumer group read.
async fn check_log(
    client: &Client,
    observed: &Shared<Observed>,
    running: &Running,
) -> Result<(), String> {
    let mut log: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    let mut answers = Vec::new();
    for p in 0..PARTITIONS {
        let listed = wait_for("partition offsets", SETTLE, || async {
            client.list_offsets(TOPIC, p).await.ok()
        })
        .await?;
        let latest = listed.latest;
        answers.push(format!(
            "partition {p}: latest {latest} in term {}",
            listed.leader_epoch
        ));
        let mut offset = 0u64;
        while offset < latest {
            let batches = wait_for("a fetch", SETTLE, || async {
                client.fetch(TOPIC, p, offset, 1 << 20, 0).await.ok()
            })
            .await?;
            for b in batches.batches {
                let records = weir_proto::batch::decode(&b.batch).map_err(|e| e.to_string())?;
                for (i, r) in records.into_iter().enumerate() {
                    let at = b.base_offset + i as u64;
                    if at >= offset {
                        log.entry(p)
                            .or_default()
                            .push((at, String::from_utf8_lossy(&r.value).into_owned()));
                        offset = at + 1;
                    }
                }
            }
        }
    }
    let mut seen = BTreeMap::new();
    for (p, records) in &log {
        for (i, (offset, value)) in records.iter().enumerate() {
            if *offset != i as u64 {
                return Err(format!("partition {p}: offset {offset} at position {i}"));
            }
            if let Some(first) = seen.insert(value.clone(), (*p, *offset)) {
                return Err(format!(
                    "{value} is in the log twice: {first:?} and ({p}, {offset})"
                ));
            }
        }
    }
    let o = lock(observed);
    for (value, at) in &o.acked {
        match seen.get(value) {
            Some(found) if found == at => {}
            Some(found) => {
                return Err(format!(
                    "{value} acknowledged at {at:?} but stored at {found:?}"
                ))
            }
            None => {
                let held = log.get(&at.0).map_or(0, Vec::len);
                return Err(format!(
                    "{value} acknowledged at {at:?} but lost (partition {} holds {held} records; listed {answers:?}); \
                     its replicas: {}",
                    at.0,
                    partition_replicas(&running.all(), at.0)
                ));
            }
        }
    }
    for (p, read) in &o.consumed {
        let mut next = None::<u64>;
        for (offset, value) in read {
            if let Some(n) = next {
                if *offset > n {
                    return Err(format!(
                        "the consumer skipped partition {p} from {n} to {offset}"
                    ));
                }
            }
            next = Some(offset + 1);
            let stored = log.get(p).and_then(|r| r.get(*offset as usize));
            if stored.map(|(_, v)| v) != Some(value) {
                return Err(format!(
                    "the consumer read {value} at {p}@{offset}, the log holds {stored:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Each replica of partition `p` of the topic, for a failure report: its Raft state and the
/// offsets it holds.
fn partition_replicas(
    nodes: &BTreeMap<String, Arc<weir_node::cluster::NodeContext>>,
    p: u32,
) -> String {
    let Some(catalog) = nodes.values().find_map(|c| c.registry.catalog().ok()) else {
        return "no catalog".into();
    };
    let Some(g) = catalog.groups.values().find(|g| {
        matches!(&g.kind, GroupKind::Partition { topic, partition } if topic == TOPIC && *partition == p)
    }) else {
        return "no such group".into();
    };
    let mut out = vec![format!("group {} on {:?}", g.id, g.replicas)];
    out.push(replica_states(nodes, g.id));
    for (name, ctx) in nodes {
        if let Some(GroupWatch::Partition(rx)) = ctx.registry.get(g.id).map(|h| h.watch.clone()) {
            let st: PartitionState = *rx.borrow();
            out.push(format!("{name} holds {}..{}", st.earliest, st.next_offset));
        }
    }
    out.join("; ")
}

/// Waits until the replicas of every group hold the same data.
async fn converged(running: &Running) -> Result<(), String> {
    let mut last = String::new();
    let result = wait_for("replicas to converge", SETTLE, || {
        let problem = diverged(&running.all());
        if let Some(p) = &problem {
            last = p.clone();
        }
        async move { problem.is_none().then_some(()) }
    })
    .await;
    result.map_err(|e| format!("{e}: {last}"))
}

/// A group whose replicas differ, if any.
fn diverged(nodes: &BTreeMap<String, Arc<weir_node::cluster::NodeContext>>) -> Option<String> {
    let any = nodes.values().next()?;
    let catalog = any.registry.catalog().ok()?;
    for (name, ctx) in nodes {
        match ctx.registry.catalog() {
            Ok(c) if *c == *catalog => {}
            _ => {
                let state: Vec<String> = nodes
                    .iter()
                    .filter_map(|(n, c)| Some((n, c.registry.metadata().ok()?)))
                    .map(|(n, h)| {
                        let m = h.raft.metrics().borrow_watched().clone();
                        format!(
                            "{n}: {:?} leader {:?} applied {:?} membership {:?}",
                            m.state,
                            m.current_leader,
                            m.last_applied,
                            m.membership_config.membership()
                        )
                    })
                    .collect();
                return Some(format!("{name} holds another catalog; group 0: {state:?}"));
            }
        }
    }
    for g in catalog.groups.values() {
        // Partitions and regions are compared row by row; the offsets group's content is what
        // the consumer check already judged.
        if !matches!(
            g.kind,
            GroupKind::Partition { .. } | GroupKind::Region { .. }
        ) {
            continue;
        }
        let mut copies: Vec<(u64, Vec<String>)> = Vec::new();
        for ctx in nodes.values() {
            let Some(h) = ctx.registry.get(g.id) else {
                continue;
            };
            let applied = h
                .raft
                .metrics()
                .borrow_watched()
                .last_applied
                .map(|l| l.index);
            let content = match (&g.kind, &h.watch) {
                (GroupKind::Partition { .. }, GroupWatch::Partition(rx)) => {
                    let st: PartitionState = *rx.borrow();
                    match partition::read_batches(
                        &ctx.engine,
                        g.id,
                        st.earliest,
                        st.next_offset,
                        usize::MAX,
                    ) {
                        Ok(b) => b
                            .iter()
                            .map(|b| format!("{}:{:?}", b.base_offset, b.batch))
                            .collect(),
                        Err(e) => return Some(format!("group {}: {e}", g.id)),
                    }
                }
                (GroupKind::Region { .. }, _) => {
                    let start = match weir_storage::region::load_state(&ctx.engine, g.id) {
                        Ok(st) => st.unwrap_or_default().start,
                        Err(e) => return Some(format!("group {}: {e}", g.id)),
                    };
                    match weir_storage::region::scan_rows(
                        &ctx.engine,
                        g.id,
                        &start,
                        &[],
                        usize::MAX,
                        usize::MAX,
                        false,
                    ) {
                        Ok(Ok(page)) => page
                            .rows
                            .iter()
                            .map(|r| format!("{:?}={:?}", r.key, r.value))
                            .collect(),
                        Ok(Err(_)) => vec!["outside".into()],
                        Err(e) => return Some(format!("group {}: {e}", g.id)),
                    }
                }
                _ => continue,
            };
            copies.push((applied.unwrap_or(0), content));
        }
        if copies.len() != g.replicas.len() {
            return Some(format!(
                "group {}: {} of {} replicas open",
                g.id,
                copies.len(),
                g.replicas.len()
            ));
        }
        if copies.windows(2).any(|w| w[0].1 != w[1].1) {
            let applied: Vec<u64> = copies.iter().map(|c| c.0).collect();
            return Some(format!(
                "group {}: replicas differ (applied {applied:?})",
                g.id
            ));
        }
    }
    None
}

/// The seeds the environment names: `WEIR_SIM_SEED=N` (one) or `WEIR_SIM_SEEDS=A..B`.
fn env_seeds() -> Vec<u64> {
    if let Ok(one) = std::env::var("WEIR_SIM_SEED") {
        let seed = one
            .parse()
            .unwrap_or_else(|_| panic!("WEIR_SIM_SEED={one:?} is not a number"));
        return vec![seed];
    }
    let range = std::env::var("WEIR_SIM_SEEDS").unwrap_or_default();
    match range
        .split_once("..")
        .map(|(a, b)| (a.parse::<u64>(), b.parse::<u64>()))
    {
        Some((Ok(a), Ok(b))) => (a..b).collect(),
        _ => panic!("WEIR_SIM_SEEDS={range:?} is not a range like 100..200"),
    }
}

/// How long the nemesis acts in runs whose seeds come from the environment:
/// `WEIR_SIM_CHAOS_SECS`, else a full run.
fn chaos_from_env() -> Duration {
    match std::env::var("WEIR_SIM_CHAOS_SECS") {
        Ok(secs) => Duration::from_secs(
            secs.parse()
                .unwrap_or_else(|_| panic!("WEIR_SIM_CHAOS_SECS={secs:?} is not a number")),
        ),
        Err(_) => CHAOS,
    }
}

fn run_seeds(seeds: &[u64], chaos: Duration) {
    let mut failed = Vec::new();
    for &seed in seeds {
        if let Err(report) = run_seed_in_child(seed, chaos) {
            eprintln!("{report}");
            failed.push(seed);
        }
    }
    assert!(
        failed.is_empty(),
        "seeds failed: {failed:?} with {}s of chaos (replay one with WEIR_SIM_SEED=<seed> \
         WEIR_SIM_CHAOS_SECS={})",
        chaos.as_secs(),
        chaos.as_secs()
    );
}

/// Runs the seeds in this process, one after another, printing each one's verdict: what a
/// replay (`WEIR_SIM_SEED`) does, and what each child of [`run_seed_in_child`] does.
fn run_seeds_here(seeds: &[u64], chaos: Duration) {
    let mut failed = Vec::new();
    for &seed in seeds {
        let t = std::time::Instant::now();
        match run_seed(seed, chaos) {
            Ok(digest) => eprintln!(
                "seed {seed}: ok in {:.1?} (trace {digest:016x})",
                t.elapsed()
            ),
            Err(e) => {
                eprintln!("seed {seed}: FAILED in {:.1?}: {e}", t.elapsed());
                failed.push(seed);
            }
        }
    }
    assert!(
        failed.is_empty(),
        "seeds failed: {failed:?} with {}s of chaos (replay one with WEIR_SIM_SEED=<seed> \
         WEIR_SIM_CHAOS_SECS={})",
        chaos.as_secs(),
        chaos.as_secs()
    );
}

/// Runs one seed in a child process of this test binary, as a replay would, and returns its
/// trace digest or its report. A simulation shares its process with nothing else: tokio numbers
/// tasks process-wide and a crashed host's tasks are dropped in an order taken from those numbers
/// (which decides the order its connections close), so a seed run after, or beside, another in one
/// process runs differently from its replay.
fn run_seed_in_child(seed: u64, chaos: Duration) -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("seed {seed}: no test binary: {e}"))?;
    let out = std::process::Command::new(exe)
        .args([
            "seeds_survive_the_nemesis",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WEIR_SIM_SEED", seed.to_string())
        .env("WEIR_SIM_CHAOS_SECS", chaos.as_secs().to_string())
        .env_remove("WEIR_SIM_SEEDS")
        .output()
        .map_err(|e| format!("seed {seed}: could not start its run: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let verdict = stderr
        .lines()
        .find(|l| l.starts_with(&format!("seed {seed}: ")))
        .unwrap_or("");
    if out.status.success() && verdict.contains(": ok in ") {
        eprintln!("{verdict}");
        let digest = verdict
            .rsplit("(trace ")
            .next()
            .map(|d| d.trim_end_matches(')').to_string())
            .unwrap_or_default();
        return Ok(digest);
    }
    // The verdict and the trace's tail follow "seed N: FAILED"; a panic prints elsewhere.
    let report = match stderr.find(&format!("seed {seed}: FAILED")) {
        Some(at) => {
            let rest = &stderr[at..];
            rest[..rest.find("\nthread '").unwrap_or(rest.len())].to_string()
        }
        None => format!(
            "seed {seed}: FAILED ({}): {}",
            out.status,
            stderr
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    };
    Err(report)
}

/// True when the seeds come from the environment (a replay or a long run), which
/// [`seeds_survive_the_nemesis`] alone runs.
fn seeds_from_env() -> bool {
    std::env::var_os("WEIR_SIM_SEED").is_some() || std::env::var_os("WEIR_SIM_SEEDS").is_some()
}

/// Full runs (a minute of faults) of a few seeds, or of the seeds the environment names.
#[test]
fn seeds_survive_the_nemesis() {
    if std::env::var_os("WEIR_SIM_SEED").is_some() {
        run_seeds_here(&env_seeds(), chaos_from_env());
    } else if seeds_from_env() {
        // A range: each seed in its own process, so each replays alone exactly as it ran here
        // (tokio numbers tasks process-wide, and a crash drops a host's tasks in that order).
        run_seeds(&env_seeds(), chaos_from_env());
    } else {
        run_seeds(&[0, 1, 2], CHAOS);
    }
}

/// Seed 4 once stalled its consumer group for good: heartbeats sent to a node without a replica
/// of the offsets group went to a follower, whose "not leader" answer the client did not follow.
#[test]
fn more_seeds_survive_the_nemesis() {
    if !seeds_from_env() {
        run_seeds(&[3, 4, 5], CHAOS);
    }
}

/// Many short runs: each seed draws a different cluster history, so breadth finds what length
/// does not. Two tests so the two halves run on two threads.
const SHORT_SEEDS: std::ops::Range<u64> = 1000..1000 + 2 * SHORT_SEEDS_PER_TEST;
const SHORT_SEEDS_PER_TEST: u64 = 125;

#[test]
fn short_seeds_survive_the_nemesis_first_half() {
    if !seeds_from_env() {
        let a = SHORT_SEEDS.start;
        run_seeds(
            &(a..a + SHORT_SEEDS_PER_TEST).collect::<Vec<_>>(),
            SHORT_CHAOS,
        );
    }
}

#[test]
fn short_seeds_survive_the_nemesis_second_half() {
    if !seeds_from_env() {
        let a = SHORT_SEEDS.start + SHORT_SEEDS_PER_TEST;
        run_seeds(&(a..SHORT_SEEDS.end).collect::<Vec<_>>(), SHORT_CHAOS);
    }
}

/// A seed runs the same in two processes: what lets a failure found in CI be replayed from its
/// seed alone.
#[test]
fn a_seed_replays_exactly() {
    if seeds_from_env() {
        return;
    }
    let seed = 7;
    let first = run_seed_in_child(seed, SHORT_CHAOS);
    let second = run_seed_in_child(seed, SHORT_CHAOS);
    assert!(first.is_ok(), "seed {seed}: {first:?}");
    assert_eq!(
        first, second,
        "seed {seed} ran differently in two processes"
    );
}
