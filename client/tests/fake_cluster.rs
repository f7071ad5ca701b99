//! The client library and the `weir` binary against an in-process fake of the `Log` and `Cluster`
//! services, with injectable faults (not-leader answers, unavailability, dead leaders). The fake
//! keeps the wire contract of weir.proto, including the de-duplication of idempotent producers'
//! batches by (producer id, sequence), but none of the replication: it exists to check routing,
//! retries, batching and consumer groups on the client side.

// Messages are built with `..Default::default()` even when every field is set, so the fake keeps
// compiling as weir.proto gains fields.
#![allow(clippy::needless_update)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use weir_client::{
    Acks, Client, ClientConfig, ClientError, ConsumedRecord, Consumer, ConsumerConfig, NewTopic,
    Producer, ProducerConfig, StartFrom,
};
use weir_proto::batch::{self, BatchBuilder, BatchHeader};
use weir_proto::v1::cluster_server::{Cluster, ClusterServer};
use weir_proto::v1::log_server::{Log, LogServer};
use weir_proto::v1::*;

// ---------------------------------------------------------------- the fake

/// One partition's batches: (base offset, record count, blob).
type PartitionLog = Vec<(u64, u32, Bytes)>;

/// Batches an idempotent producer may retry and still be answered as duplicates, as on the server.
const PRODUCER_WINDOW: usize = 5;

/// (sequence, base offset, count) of an idempotent producer's last batches, oldest first.
type ProducerWindow = VecDeque<(u64, u64, u32)>;

#[derive(Default)]
struct Store {
    topics: BTreeMap<String, CreateTopicRequest>,
    logs: HashMap<(String, u32), PartitionLog>,
    /// The last batches of each (topic, partition, producer id).
    producers: HashMap<(String, u32, u64), ProducerWindow>,
    committed: HashMap<(String, String), BTreeMap<u32, u64>>,
    members: HashMap<(String, String), BTreeMap<String, Instant>>,
    generation: u64,
}

/// How the fake answers a batch of an idempotent producer that it already holds.
enum Held {
    /// A duplicate of a batch in the window: its base offset and count.
    At(u64, u32),
    /// Older than the window: stored, its offsets no longer known.
    Earlier,
}

impl Store {
    fn high_watermark(&self, topic: &str, partition: u32) -> u64 {
        self.logs
            .get(&(topic.to_string(), partition))
            .and_then(|l| l.last())
            .map_or(0, |(base, count, _)| base + u64::from(*count))
    }

    /// The server's rule for an idempotent producer's batch: `Ok(Some(..))` answers a batch it
    /// holds (a duplicate in the window with its offsets, or an older one without them), `Ok(None)`
    /// means append it; a batch ahead of its predecessors is ABORTED (the client retries).
    fn sequence(
        &mut self,
        topic: &str,
        partition: u32,
        req: &ProduceRequest,
        count: u32,
    ) -> Result<Option<Held>, Status> {
        if req.producer_id == 0 {
            return Ok(None);
        }
        let base = self.high_watermark(topic, partition);
        let window = self
            .producers
            .entry((topic.to_string(), partition, req.producer_id))
            .or_default();
        if let Some(&(_, base, count)) = window.iter().find(|(seq, _, _)| *seq == req.sequence) {
            return Ok(Some(Held::At(base, count)));
        }
        let expected = window.back().map_or(0, |(seq, _, _)| seq + 1);
        if req.sequence > expected {
            return Err(Status::aborted(format!(
                "batch {} of producer {} arrived before batch {expected}",
                req.sequence, req.producer_id
            )));
        }
        if req.sequence < expected {
            // Batches are stored only in unbroken order, so one numbered below the next expected
            // is stored, even if it is older than the window remembers.
            return Ok(Some(Held::Earlier));
        }
        window.push_back((req.sequence, base, count));
        if window.len() > PRODUCER_WINDOW {
            window.pop_front();
        }
        Ok(None)
    }

    /// The values of the records stored in a partition, by offset.
    fn values(&self, topic: &str, partition: u32) -> BTreeMap<u64, Bytes> {
        let mut values = BTreeMap::new();
        for (base, _, blob) in self
            .logs
            .get(&(topic.to_string(), partition))
            .into_iter()
            .flatten()
        {
            for (offset, record) in (*base..).zip(batch::decode(blob).unwrap()) {
                values.insert(offset, record.value);
            }
        }
        values
    }

    fn check(&self, topic: &str, partition: u32) -> Result<(), Status> {
        match self.topics.get(topic) {
            None => Err(Status::not_found(format!("topic '{topic}' does not exist"))),
            Some(t) if partition >= t.partitions => Err(Status::not_found(format!(
                "topic '{topic}' has no partition {partition}"
            ))),
            Some(_) => Ok(()),
        }
    }
}

#[derive(Default)]
struct Shared {
    store: Mutex<Store>,
    appended: Notify,
}

/// Per-node fault switches and call counters.
#[derive(Default)]
struct Faults {
    /// Partition requests are refused as "not leader", pointing here.
    not_leader_hint: Mutex<Option<String>>,
    /// The leader address this node reports in DescribeTopic (default: itself).
    advertised_leader: Mutex<Option<String>>,
    /// This many Produce calls fail with UNAVAILABLE before one is served.
    unavailable_produces: AtomicU32,
    produce_calls: AtomicU32,
    /// A batch holding a record with one of these values fails with INVALID_ARGUMENT, which the
    /// client does not retry: the batch fails for good.
    rejected_values: Mutex<HashSet<Vec<u8>>>,
    /// A Produce call whose batch holds a record with one of these values is answered only once
    /// its gate opens.
    gates: Mutex<HashMap<Vec<u8>, watch::Receiver<bool>>>,
    /// Produce calls that have waited at a closed gate.
    held_calls: AtomicU32,
    /// A Fetch of one of these partitions is answered only once its gate opens.
    fetch_gates: Mutex<HashMap<u32, watch::Receiver<bool>>>,
    /// Fetch calls answered.
    fetches_answered: AtomicU32,
}

impl Faults {
    /// Holds Produce calls of batches with a record of `value` until the returned sender sends
    /// `true`.
    fn gate(&self, value: &[u8]) -> watch::Sender<bool> {
        let (open, gate) = watch::channel(false);
        self.gates.lock().unwrap().insert(value.to_vec(), gate);
        open
    }

    /// Holds Fetch calls of `partition` until the returned sender sends `true`.
    fn gate_fetches(&self, partition: u32) -> watch::Sender<bool> {
        let (open, gate) = watch::channel(false);
        self.fetch_gates.lock().unwrap().insert(partition, gate);
        open
    }

    /// Waits until `n` Produce calls have been held at a gate.
    async fn wait_held(&self, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.held_calls.load(Ordering::SeqCst) < n {
            assert!(Instant::now() < deadline, "fewer than {n} calls were held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

#[derive(Clone)]
struct Node {
    addr: String,
    shared: Arc<Shared>,
    faults: Arc<Faults>,
}

impl Node {
    fn refuse_if_not_leader(&self) -> Result<(), Status> {
        let hint = self.faults.not_leader_hint.lock().unwrap().clone();
        match hint {
            Some(leader) => {
                let mut status = Status::failed_precondition("not the leader of this partition");
                status.metadata_mut().insert(
                    weir_proto::LEADER_METADATA_KEY,
                    MetadataValue::try_from(leader.as_str()).unwrap(),
                );
                Err(status)
            }
            None => Ok(()),
        }
    }

    /// Answers a fetch as a leader does: the batches from `offset` on, waiting up to `max_wait_ms`
    /// for some to arrive.
    async fn fetch_now(&self, req: FetchRequest) -> Result<Response<FetchResponse>, Status> {
        let deadline = Instant::now() + Duration::from_millis(req.max_wait_ms.into());
        loop {
            let appended = self.shared.appended.notified();
            {
                let store = self.shared.store.lock().unwrap();
                store.check(&req.topic, req.partition)?;
                let hw = store.high_watermark(&req.topic, req.partition);
                if req.offset > hw {
                    return Err(Status::out_of_range(format!(
                        "offset {} is past the end ({hw})",
                        req.offset
                    )));
                }
                let mut batches = Vec::new();
                let mut bytes = 0usize;
                for (base, count, blob) in store
                    .logs
                    .get(&(req.topic.clone(), req.partition))
                    .into_iter()
                    .flatten()
                {
                    if base + u64::from(*count) <= req.offset {
                        continue;
                    }
                    if !batches.is_empty() && bytes + blob.len() > req.max_bytes as usize {
                        break;
                    }
                    bytes += blob.len();
                    batches.push(StoredBatch {
                        base_offset: *base,
                        batch: blob.clone(),
                    });
                }
                if !batches.is_empty() || Instant::now() >= deadline {
                    return Ok(Response::new(FetchResponse {
                        batches,
                        high_watermark: hw,
                        earliest_offset: 0,
                        ..Default::default()
                    }));
                }
            }
            let _ = tokio::time::timeout_at(deadline, appended).await;
        }
    }

    fn topic_info(&self, store: &Store, name: &str) -> Option<TopicInfo> {
        let t = store.topics.get(name)?;
        let leader = self
            .faults
            .advertised_leader
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| self.addr.clone());
        Some(TopicInfo {
            name: t.name.clone(),
            partitions: t.partitions,
            replicas: t.replicas,
            retention_ms: t.retention_ms,
            retention_bytes: t.retention_bytes,
            partition_info: (0..t.partitions)
                .map(|p| PartitionInfo {
                    partition: p,
                    group_id: 100 + u64::from(p),
                    leader: 1,
                    leader_addr: leader.clone(),
                    replicas: vec![1],
                    earliest_offset: 0,
                    latest_offset: store.high_watermark(name, p),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl Log for Node {
    async fn create_topic(
        &self,
        req: Request<CreateTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let req = req.into_inner();
        if req.partitions == 0 {
            return Err(Status::invalid_argument(
                "a topic needs at least one partition",
            ));
        }
        let mut store = self.shared.store.lock().unwrap();
        if store.topics.contains_key(&req.name) {
            return Err(Status::already_exists(format!(
                "topic '{}' already exists",
                req.name
            )));
        }
        store.topics.insert(req.name.clone(), req.clone());
        Ok(Response::new(self.topic_info(&store, &req.name).unwrap()))
    }

    async fn delete_topic(
        &self,
        req: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let name = req.into_inner().name;
        let mut store = self.shared.store.lock().unwrap();
        if store.topics.remove(&name).is_none() {
            return Err(Status::not_found(format!("topic '{name}' does not exist")));
        }
        store.logs.retain(|(t, _), _| *t != name);
        Ok(Response::new(DeleteTopicResponse {}))
    }

    async fn list_topics(
        &self,
        _req: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        let store = self.shared.store.lock().unwrap();
        let topics = store
            .topics
            .keys()
            .filter_map(|n| self.topic_info(&store, n))
            .collect();
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        req: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let name = req.into_inner().name;
        let store = self.shared.store.lock().unwrap();
        self.topic_info(&store, &name)
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("topic '{name}' does not exist")))
    }

    async fn produce(
        &self,
        req: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        self.faults.produce_calls.fetch_add(1, Ordering::SeqCst);
        self.refuse_if_not_leader()?;
        if self
            .faults
            .unavailable_produces
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Status::unavailable("partition is electing a leader"));
        }
        let req = req.into_inner();
        let header = BatchHeader::parse(&req.batch)
            .map_err(|e| Status::invalid_argument(format!("bad batch: {e}")))?;
        let values: Vec<Bytes> = batch::decode(&req.batch)
            .map(|records| records.into_iter().map(|r| r.value).collect())
            .unwrap_or_default();
        let gate = {
            let gates = self.faults.gates.lock().unwrap();
            values.iter().find_map(|v| gates.get(&v[..]).cloned())
        };
        if let Some(mut gate) = gate {
            self.faults.held_calls.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|open| *open).await;
        }
        if values
            .iter()
            .any(|v| self.faults.rejected_values.lock().unwrap().contains(&v[..]))
        {
            return Err(Status::invalid_argument(
                "the batch holds a rejected record",
            ));
        }
        let mut store = self.shared.store.lock().unwrap();
        store.check(&req.topic, req.partition)?;
        // Like the real server, a leader-only acknowledgement comes before offsets are assigned.
        let pending = req.acks == Acks::Leader as i32;
        let (base, count, pending) =
            match store.sequence(&req.topic, req.partition, &req, header.count)? {
                Some(Held::At(base, count)) => (base, count, pending),
                Some(Held::Earlier) => (0, header.count, true),
                None => {
                    let base = store.high_watermark(&req.topic, req.partition);
                    store
                        .logs
                        .entry((req.topic.clone(), req.partition))
                        .or_default()
                        .push((base, header.count, req.batch));
                    (base, header.count, pending)
                }
            };
        drop(store);
        self.shared.appended.notify_waiters();
        Ok(Response::new(ProduceResponse {
            base_offset: if pending { 0 } else { base },
            count,
            offsets_pending: pending,
            ..Default::default()
        }))
    }

    async fn fetch(&self, req: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        self.refuse_if_not_leader()?;
        let req = req.into_inner();
        let gate = self
            .faults
            .fetch_gates
            .lock()
            .unwrap()
            .get(&req.partition)
            .cloned();
        if let Some(mut gate) = gate {
            let _ = gate.wait_for(|open| *open).await;
        }
        let answer = self.fetch_now(req).await;
        self.faults.fetches_answered.fetch_add(1, Ordering::SeqCst);
        answer
    }
    async fn list_offsets(
        &self,
        req: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        self.refuse_if_not_leader()?;
        let req = req.into_inner();
        let store = self.shared.store.lock().unwrap();
        store.check(&req.topic, req.partition)?;
        Ok(Response::new(ListOffsetsResponse {
            earliest: 0,
            latest: store.high_watermark(&req.topic, req.partition),
            ..Default::default()
        }))
    }

    async fn commit_offsets(
        &self,
        req: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let req = req.into_inner();
        let mut store = self.shared.store.lock().unwrap();
        // A member commits only at the current generation; a standalone client at any time.
        if !req.member_id.is_empty() && req.generation != store.generation {
            let mut status = Status::failed_precondition(format!(
                "stale generation {} (the group is at {})",
                req.generation, store.generation
            ));
            status.metadata_mut().insert(
                weir_proto::FENCED_METADATA_KEY,
                MetadataValue::from_static("1"),
            );
            return Err(status);
        }
        let committed = store.committed.entry((req.group, req.topic)).or_default();
        for o in req.offsets {
            committed.insert(o.partition, o.offset);
        }
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_committed(
        &self,
        req: Request<FetchCommittedRequest>,
    ) -> Result<Response<FetchCommittedResponse>, Status> {
        let req = req.into_inner();
        let store = self.shared.store.lock().unwrap();
        let offsets = store
            .committed
            .get(&(req.group, req.topic))
            .into_iter()
            .flatten()
            .map(|(p, o)| PartitionOffset {
                partition: *p,
                offset: *o,
            })
            .collect();
        Ok(Response::new(FetchCommittedResponse { offsets }))
    }

    async fn group_heartbeat(
        &self,
        req: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        let req = req.into_inner();
        let mut store = self.shared.store.lock().unwrap();
        let partitions = store
            .topics
            .get(&req.topic)
            .map(|t| t.partitions)
            .ok_or_else(|| Status::not_found("no such topic"))?;
        let session = Duration::from_millis(req.session_timeout_ms.into());
        let key = (req.group.clone(), req.topic.clone());
        let members = store.members.entry(key).or_default();
        let before = members.len();
        members.retain(|_, seen| seen.elapsed() < session);
        let joined = members
            .insert(req.member_id.clone(), Instant::now())
            .is_none();
        let changed = joined || members.len() != before;
        let ids: Vec<String> = members.keys().cloned().collect();
        if changed {
            store.generation += 1;
        }
        let me = ids.iter().position(|m| *m == req.member_id).unwrap_or(0);
        let assigned = (0..partitions)
            .filter(|p| (*p as usize) % ids.len() == me)
            .collect();
        Ok(Response::new(GroupHeartbeatResponse {
            generation: store.generation,
            partitions: assigned,
            members: ids.len() as u32,
            ..Default::default()
        }))
    }

    async fn leave_group(
        &self,
        req: Request<LeaveGroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        let req = req.into_inner();
        let mut store = self.shared.store.lock().unwrap();
        if let Some(members) = store.members.get_mut(&(req.group, req.topic)) {
            members.remove(&req.member_id);
        }
        Ok(Response::new(LeaveGroupResponse {}))
    }
}

#[tonic::async_trait]
impl Cluster for Node {
    async fn join(&self, _req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        Err(Status::unimplemented("the fake has a fixed membership"))
    }

    async fn status(
        &self,
        _req: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(StatusResponse {
            members: vec![Member {
                id: 1,
                addr: self.addr.clone(),
                state: "up".into(),
                groups_held: 3,
                groups_led: 2,
                metadata_role: "voter".into(),
                http_addr: "127.0.0.1:7480".into(),
                last_seen_ms: 5,
                ..Default::default()
            }],
            metadata_leader: 1,
            ..Default::default()
        }))
    }

    async fn heartbeat(
        &self,
        _req: Request<NodeHeartbeat>,
    ) -> Result<Response<HeartbeatAck>, Status> {
        Ok(Response::new(HeartbeatAck {}))
    }

    async fn allocate_group(
        &self,
        _req: Request<weir_proto::v1::AllocateGroupRequest>,
    ) -> Result<Response<weir_proto::v1::AllocateGroupResponse>, Status> {
        Err(Status::unimplemented("the fake has no regions"))
    }

    async fn report_split(
        &self,
        _req: Request<weir_proto::v1::ReportSplitRequest>,
    ) -> Result<Response<weir_proto::v1::ReportSplitResponse>, Status> {
        Err(Status::unimplemented("the fake has no regions"))
    }
}

/// Starts a fake node sharing `shared` with the others; returns it once it accepts connections.
async fn start_node(shared: Arc<Shared>) -> Node {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let node = Node {
        addr,
        shared,
        faults: Arc::new(Faults::default()),
    };
    let service = node.clone();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(LogServer::new(service.clone()))
            .add_service(ClusterServer::new(service))
            .serve_with_incoming(TcpListenerStream::new(listener))
            .await
            .unwrap();
    });
    node
}

/// An address nothing listens on.
async fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

fn quick(retry_for_ms: u64) -> ClientConfig {
    ClientConfig {
        retry_for: Duration::from_millis(retry_for_ms),
        ..ClientConfig::default()
    }
}

async fn drain(consumer: &mut Consumer, want: usize) -> Vec<ConsumedRecord> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < want && Instant::now() < deadline {
        got.extend(consumer.poll(Duration::from_millis(200)).await.unwrap());
    }
    got
}

// ---------------------------------------------------------------- library

#[tokio::test]
async fn records_round_trip_in_order_per_partition() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect(&node.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("events", 3, 1))
        .await
        .unwrap();
    let config = ProducerConfig {
        batch_bytes: 512,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client.clone(), "events", config)
        .await
        .unwrap();
    let mut acks = Vec::new();
    for i in 0..300u32 {
        let key = (i % 2 == 0).then(|| format!("user-{}", i % 17));
        let value = format!("v{i}");
        let ack = producer
            .send(
                key.as_deref().map(str::as_bytes),
                value.as_bytes(),
                Some(i64::from(i)),
            )
            .await
            .unwrap();
        acks.push((key, value, ack));
    }
    producer.flush().await.unwrap();
    assert_eq!(producer.stats().records_acked, 300);
    assert!(
        producer.stats().batches_acked > 3,
        "small batches were not split"
    );

    let mut expected: BTreeMap<(u32, u64), (Option<String>, String)> = BTreeMap::new();
    for (key, value, ack) in acks {
        let partition = ack.partition();
        if let Some(k) = &key {
            assert_eq!(partition, crc32fast::hash(k.as_bytes()) % 3, "key {k}");
        }
        let offset = ack.await.unwrap().expect("acks=all assigns offsets");
        assert!(expected.insert((partition, offset), (key, value)).is_none());
    }

    let mut consumer = Consumer::new(client, "events", ConsumerConfig::default())
        .await
        .unwrap();
    let records = drain(&mut consumer, 300).await;
    assert_eq!(records.len(), 300);
    let mut next = BTreeMap::new();
    for r in &records {
        let expect_offset = next.entry(r.partition).or_insert(0u64);
        assert_eq!(
            r.offset, *expect_offset,
            "partition {} out of order",
            r.partition
        );
        *expect_offset += 1;
        let (key, value) = &expected[&(r.partition, r.offset)];
        assert_eq!(r.key.as_deref(), key.as_deref().map(str::as_bytes));
        assert_eq!(&r.value[..], value.as_bytes());
    }
    // Everything was read: nothing more arrives.
    assert!(consumer
        .poll(Duration::from_millis(100))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn not_leader_answers_redirect_to_the_hinted_leader() {
    let shared: Arc<Shared> = Arc::default();
    let seed = start_node(shared.clone()).await;
    let leader = start_node(shared).await;
    *seed.faults.not_leader_hint.lock().unwrap() = Some(leader.addr.clone());
    let client = Client::connect(&seed.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 1, 1))
        .await
        .unwrap();

    let mut b = BatchBuilder::new();
    b.push(None, b"x", 1);
    let (base, count) = client.produce("t", 0, b.finish(), Acks::All).await.unwrap();
    assert_eq!((base, count), (Some(0), 1));
    assert_eq!(seed.faults.produce_calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader.faults.produce_calls.load(Ordering::SeqCst), 1);

    // The hint is remembered: the next batch goes straight to the leader.
    let mut b = BatchBuilder::new();
    b.push(None, b"y", 2);
    let (base, _) = client.produce("t", 0, b.finish(), Acks::All).await.unwrap();
    assert_eq!(base, Some(1));
    assert_eq!(seed.faults.produce_calls.load(Ordering::SeqCst), 1);
    assert_eq!(leader.faults.produce_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn unavailable_is_retried_and_permanent_errors_are_not() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect(&node.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 2, 1))
        .await
        .unwrap();
    node.faults.unavailable_produces.store(3, Ordering::SeqCst);
    let mut b = BatchBuilder::new();
    b.push(Some(b"k"), b"v", 1);
    let blob = b.finish();
    client
        .produce("t", 1, blob.clone(), Acks::Leader)
        .await
        .unwrap();
    assert_eq!(node.faults.produce_calls.load(Ordering::SeqCst), 4);

    let err = client.produce("t", 9, blob, Acks::All).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(node.faults.produce_calls.load(Ordering::SeqCst), 5);

    let err = client
        .produce("t", 0, Bytes::from_static(b"garbage"), Acks::All)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert_eq!(node.faults.produce_calls.load(Ordering::SeqCst), 6);

    let err = client
        .create_topic(&NewTopic::new("t", 1, 1))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    assert!(
        err.to_string().contains("already exists (ALREADY_EXISTS)"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dead_leader_is_bypassed_through_the_seed() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect(&node.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 1, 1))
        .await
        .unwrap();
    *node.faults.advertised_leader.lock().unwrap() = Some(dead_address().await);
    let producer = Producer::new(client.clone(), "t", ProducerConfig::default())
        .await
        .unwrap();
    let started = Instant::now();
    let ack = producer.send(None, b"survives", None).await.unwrap();
    assert_eq!(ack.await.unwrap(), Some(0));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(node.faults.produce_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn retries_give_up_at_the_deadline() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect_with(&node.addr, quick(300)).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 1, 1))
        .await
        .unwrap();
    node.faults
        .unavailable_produces
        .store(u32::MAX, Ordering::SeqCst);
    let mut b = BatchBuilder::new();
    b.push(None, b"v", 1);
    let started = Instant::now();
    let err = client
        .produce("t", 0, b.finish(), Acks::All)
        .await
        .unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    assert!(
        matches!(err, ClientError::RetriesExhausted { .. }),
        "{err:?}"
    );
    assert_eq!(err.code(), Code::Unavailable);

    // A server that is not there at all fails the same way, naming the address.
    let nowhere = dead_address().await;
    let client = Client::connect_with(&nowhere, quick(200)).await.unwrap();
    let err = client.list_topics().await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.to_string().contains(&nowhere), "{err}");
}

/// A producer of one-record batches to partition 0 of a new one-partition topic "t", with
/// `max_in_flight` batches in flight and 3 s of retries.
async fn one_record_batches(node: &Node, max_in_flight: usize) -> Producer {
    let client = Client::connect_with(&node.addr, quick(3000)).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 1, 1))
        .await
        .unwrap();
    let config = ProducerConfig {
        batch_bytes: 1,
        max_in_flight,
        ..ProducerConfig::default()
    };
    Producer::new(client, "t", config).await.unwrap()
}

/// Checks that every acknowledged record is stored at the offset of its ack, and that the
/// partition holds exactly the records in `stored`.
fn assert_acks_are_stored(node: &Node, acked: &[(&str, Option<u64>)], stored: &[&str]) {
    let values = node.shared.store.lock().unwrap().values("t", 0);
    for (value, offset) in acked {
        let offset = offset.expect("acks=all assigns offsets");
        assert_eq!(
            values.get(&offset).map(|v| &v[..]),
            Some(value.as_bytes()),
            "{value} was acknowledged at offset {offset}; the partition holds {values:?}"
        );
    }
    let mut held: Vec<&[u8]> = values.values().map(|v| &v[..]).collect();
    let mut want: Vec<&[u8]> = stored.iter().map(|v| v.as_bytes()).collect();
    held.sort_unstable();
    want.sort_unstable();
    assert_eq!(held, want);
}

#[tokio::test]
async fn batches_sealed_before_a_failed_batch_are_not_acknowledged_as_duplicates() {
    let node = start_node(Arc::default()).await;
    let producer = one_record_batches(&node, 2).await;
    node.faults
        .rejected_values
        .lock()
        .unwrap()
        .insert(b"poison".to_vec());
    let open_first = node.faults.gate(b"first");
    let open_poison = node.faults.gate(b"poison");

    // "first" and "poison" take both slots; "third" is sealed and waits for one.
    let first = producer.send_to(0, None, b"first", None).await.unwrap();
    let poison = producer.send_to(0, None, b"poison", None).await.unwrap();
    let third = producer.send_to(0, None, b"third", None).await.unwrap();
    node.faults.wait_held(2).await;
    open_poison.send(true).unwrap();
    let err = poison.await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    open_first.send(true).unwrap();

    // Batches sealed after the failure must not reuse the sequence numbers "third" was given.
    let mut acks = vec![("first", first), ("third", third)];
    for value in ["a", "b", "c", "d"] {
        let ack = producer.send_to(0, None, value.as_bytes(), None).await;
        acks.push((value, ack.unwrap()));
    }
    producer.flush().await.unwrap();
    let mut acked = Vec::new();
    for (value, ack) in acks {
        acked.push((value, ack.await.unwrap()));
    }
    assert_acks_are_stored(&node, &acked, &["first", "third", "a", "b", "c", "d"]);
    assert_eq!(producer.stats().records_failed, 1);
}

#[tokio::test]
async fn batches_in_flight_behind_a_failed_batch_are_sent_again_and_stored() {
    let node = start_node(Arc::default()).await;
    let producer = one_record_batches(&node, 2).await;
    node.faults
        .rejected_values
        .lock()
        .unwrap()
        .insert(b"poison".to_vec());
    let open_poison = node.faults.gate(b"poison");
    let open_second = node.faults.gate(b"second");

    // "second" is in flight behind "poison", so the server can never store it under the sequence
    // it was sent with.
    let poison = producer.send_to(0, None, b"poison", None).await.unwrap();
    let second = producer.send_to(0, None, b"second", None).await.unwrap();
    node.faults.wait_held(2).await;
    open_poison.send(true).unwrap();
    let err = poison.await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    open_second.send(true).unwrap();

    let third = producer.send_to(0, None, b"third", None).await.unwrap();
    producer.flush().await.unwrap();
    let acked = [
        ("second", second.await.unwrap()),
        ("third", third.await.unwrap()),
    ];
    assert_acks_are_stored(&node, &acked, &["second", "third"]);
}

#[tokio::test]
async fn group_members_resume_from_commits_and_share_partitions() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect(&node.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 4, 1))
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), "t", ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..40u32 {
        drop(
            producer
                .send_to(i % 4, None, format!("{i}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();

    let group_config = ConsumerConfig {
        group: Some("g".into()),
        heartbeat_interval: Duration::from_millis(100),
        ..ConsumerConfig::default()
    };
    let mut first = Consumer::new(client.clone(), "t", group_config.clone())
        .await
        .unwrap();
    assert_eq!(first.assignment(), vec![0, 1, 2, 3]);
    assert_eq!(drain(&mut first, 40).await.len(), 40);
    first.commit().await.unwrap();
    first.close().await.unwrap();

    let mut second = Consumer::new(client.clone(), "t", group_config.clone())
        .await
        .unwrap();
    assert!(second
        .poll(Duration::from_millis(300))
        .await
        .unwrap()
        .is_empty());
    for p in 0..4 {
        drop(producer.send_to(p, None, b"late", None).await.unwrap());
    }
    producer.flush().await.unwrap();
    let late = drain(&mut second, 4).await;
    assert_eq!(late.len(), 4);
    assert!(late
        .iter()
        .all(|r| r.offset == 10 && &r.value[..] == b"late"));
    second.commit().await.unwrap();

    // A third member joins: the partitions are split between the two.
    let third = Consumer::new(client.clone(), "t", group_config)
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while second.assignment().len() != 2 && Instant::now() < deadline {
        second.poll(Duration::from_millis(100)).await.unwrap();
    }
    let mut all: Vec<u32> = second.assignment();
    all.extend(third.assignment());
    all.sort_unstable();
    assert_eq!(all, vec![0, 1, 2, 3]);

    // Without a group there is nothing to commit to.
    let mut plain = Consumer::new(
        client,
        "t",
        ConsumerConfig {
            partitions: Some(vec![2]),
            from: StartFrom::Latest,
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(plain.position(2), Some(11));
    assert!(plain.commit().await.is_err());
}

#[tokio::test]
async fn an_offset_past_the_end_waits_for_records_instead_of_moving_back() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect(&node.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 1, 1))
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), "t", ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..10u32 {
        drop(
            producer
                .send_to(0, None, format!("{i}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();

    // Offset 20 is past the end (10), as on a new leader that has not caught up yet: the consumer
    // keeps its position rather than jumping back to 10 and re-reading.
    let mut consumer = Consumer::new(
        client.clone(),
        "t",
        ConsumerConfig {
            partitions: Some(vec![0]),
            from: StartFrom::Offset(20),
            max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    assert!(consumer
        .poll(Duration::from_millis(500))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(consumer.position(0), Some(20));

    for i in 10..25u32 {
        drop(
            producer
                .send_to(0, None, format!("{i}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();
    let got = drain(&mut consumer, 5).await;
    let offsets: Vec<u64> = got.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (20..25).collect::<Vec<_>>());
    assert_eq!(consumer.position(0), Some(25));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_answer_nobody_polls_for_does_not_stall_other_calls() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect(&node.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 2, 1))
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), "t", ProducerConfig::default())
        .await
        .unwrap();
    // Partition 0 holds far more than HTTP/2's initial 64 KiB window; partition 1 one record.
    let value = vec![b'x'; 200];
    for _ in 0..2_000 {
        drop(producer.send_to(0, None, &value, None).await.unwrap());
    }
    drop(producer.send_to(1, None, b"one", None).await.unwrap());
    producer.flush().await.unwrap();

    let open = node.faults.gate_fetches(0);
    let mut consumer = Consumer::new(
        client.clone(),
        "t",
        ConsumerConfig {
            partitions: Some(vec![0, 1]),
            max_wait: Duration::from_millis(50),
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    let got = drain(&mut consumer, 1).await;
    assert_eq!(got.len(), 1, "partition 1's record");

    // Partition 0's answer is sent while nobody polls the consumer: the connection it shares with
    // every other call of this client must keep working.
    let answered = node.faults.fetches_answered.load(Ordering::SeqCst);
    open.send(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.faults.fetches_answered.load(Ordering::SeqCst) == answered {
        assert!(
            Instant::now() < deadline,
            "partition 0's fetch was never answered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let offsets = tokio::time::timeout(Duration::from_secs(10), client.list_offsets("t", 1)).await;
    assert!(
        matches!(offsets, Ok(Ok(_))),
        "a call behind an unread fetch answer: {offsets:?}"
    );
    let got = drain(&mut consumer, 2_000).await;
    assert_eq!(got.len(), 2_000, "partition 0's records");
}

#[tokio::test]
async fn a_commit_at_a_stale_generation_makes_the_member_rejoin_and_moves_nothing() {
    let node = start_node(Arc::default()).await;
    let client = Client::connect(&node.addr).await.unwrap();
    client
        .create_topic(&NewTopic::new("t", 2, 1))
        .await
        .unwrap();
    let producer = Producer::new(client.clone(), "t", ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..20u32 {
        drop(
            producer
                .send_to(i % 2, None, format!("{i}").as_bytes(), None)
                .await
                .unwrap(),
        );
    }
    producer.flush().await.unwrap();

    // Heartbeats are rare, so only the refused commit can make the member rejoin in time.
    let mut member = Consumer::new(
        client.clone(),
        "t",
        ConsumerConfig {
            group: Some("g".into()),
            heartbeat_interval: Duration::from_secs(60),
            session_timeout: Duration::from_secs(120),
            ..ConsumerConfig::default()
        },
    )
    .await
    .unwrap();
    let first = member.generation().unwrap();
    assert_eq!(member.assignment(), vec![0, 1]);
    assert_eq!(drain(&mut member, 20).await.len(), 20);

    // Another member joins: the group moves to a new generation the member has not heard of.
    client
        .group_heartbeat("g", "t", "other", Duration::from_secs(120), 0, &[])
        .await
        .unwrap();
    let err = member.commit().await.unwrap_err();
    assert!(matches!(err, ClientError::Fenced(_)), "{err:?}");
    assert!(err.to_string().contains("stale generation"), "{err}");
    // Nothing moved: no commit stored, positions as they were.
    assert!(client.fetch_committed("g", "t").await.unwrap().is_empty());
    assert_eq!(
        (member.position(0), member.position(1)),
        (Some(10), Some(10))
    );

    // The member rejoined at once; its next poll takes the new generation up (handing over the
    // partition it lost with its progress) and its commit goes through.
    let deadline = Instant::now() + Duration::from_secs(5);
    while member.generation() == Some(first) {
        assert!(Instant::now() < deadline, "the member never rejoined");
        member.poll(Duration::from_millis(50)).await.unwrap();
    }
    assert_eq!(member.assignment().len(), 1);
    member.commit().await.unwrap();
    let committed = client.fetch_committed("g", "t").await.unwrap();
    assert_eq!(committed, BTreeMap::from([(0, 10), (1, 10)]));

    // A standalone client commits outside the membership, as a tool would.
    client.commit_offsets("g", "t", &[(0, 3)]).await.unwrap();
    assert_eq!(client.fetch_committed("g", "t").await.unwrap()[&0], 3);
}

// ---------------------------------------------------------------- the binary

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn weir(server: &str, args: &[&str], stdin: &str) -> Run {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_weir"))
        .arg("--server")
        .arg(server)
        .arg("--retry-for-ms")
        .arg("1000")
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_topics_produce_and_consume() {
    let node = start_node(Arc::default()).await;
    let s = node.addr.as_str();

    let run = weir(
        s,
        &[
            "topic",
            "create",
            "logs",
            "--partitions",
            "2",
            "--replicas",
            "1",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("created topic logs with 2 partitions"),
        "{}",
        run.stdout
    );

    let run = weir(
        s,
        &["produce", "logs", "--partition", "1"],
        "first\nsecond\r\nthird",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout.trim(), "3 records acknowledged");

    let run = weir(s, &["consume", "logs", "--timeout-ms", "500"], "").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.stdout, "first\nsecond\nthird\n");

    let run = weir(s, &["consume", "logs", "--group", "g", "--max", "2"], "").await;
    assert_eq!(run.stdout, "first\nsecond\n");
    let run = weir(
        s,
        &["consume", "logs", "--group", "g", "--timeout-ms", "500"],
        "",
    )
    .await;
    assert_eq!(
        run.stdout, "third\n",
        "the group resumes after what it printed"
    );

    let run = weir(s, &["--format", "json", "topic", "describe", "logs"], "").await;
    let parts: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(parts[1]["partition"], 1);
    assert_eq!(parts[1]["latest"], 3);
    assert_eq!(parts[1]["replicas"], serde_json::json!([1]));

    let run = weir(s, &["topic", "list", "--format", "csv"], "").await;
    assert_eq!(
        run.stdout,
        "name,partitions,replicas,retention_ms,retention_bytes\nlogs,2,1,,\n"
    );

    let run = weir(s, &["cluster", "status", "--format", "csv"], "").await;
    assert!(run
        .stdout
        .starts_with("id,address,state,groups_held,groups_led,metadata_role"));
    assert!(
        run.stdout.contains(&format!("1,{s},up,3,2,voter,true")),
        "{}",
        run.stdout
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_errors_are_one_line_with_status_1() {
    let node = start_node(Arc::default()).await;
    let s = node.addr.as_str();

    let run = weir(s, &["topic", "describe", "missing"], "").await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.starts_with("error: "), "{}", run.stderr);
    assert!(run.stderr.contains("NOT_FOUND"), "{}", run.stderr);

    let run = weir(
        s,
        &[
            "bench",
            "produce",
            "--topic",
            "nope",
            "--records",
            "10",
            "--record-size",
            "10",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("topic nope does not exist"),
        "{}",
        run.stderr
    );

    let run = weir(s, &["produce", "nope"], "x\n").await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);

    let run = weir(
        s,
        &[
            "topic",
            "create",
            "x",
            "--partitions",
            "0",
            "--replicas",
            "1",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 2);

    let run = weir(&dead_address().await, &["topic", "list"], "").await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(run.stderr.contains("cannot reach"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread")]
async fn cli_bench_reports_throughput_and_latency() {
    let node = start_node(Arc::default()).await;
    let s = node.addr.as_str();
    let run = weir(
        s,
        &[
            "topic",
            "create",
            "b",
            "--partitions",
            "3",
            "--replicas",
            "1",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let run = weir(
        s,
        &[
            "bench",
            "produce",
            "--topic",
            "b",
            "--records",
            "5000",
            "--record-size",
            "100",
            "--producers",
            "2",
            "--format",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report[0]["records"], 5000);
    assert!(report[0]["records_per_sec"].as_f64().unwrap() > 0.0);
    let p50 = report[0]["p50_ms"].as_f64().unwrap();
    let max = report[0]["max_ms"].as_f64().unwrap();
    assert!(p50 > 0.0 && p50 <= max, "{report}");

    let run = weir(
        s,
        &[
            "bench",
            "consume",
            "--topic",
            "b",
            "--records",
            "5000",
            "--consumers",
            "2",
            "--format",
            "json",
        ],
        "",
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(report[0]["records"], 5000);
    assert_eq!(report[0]["consumers"], 2);
}
