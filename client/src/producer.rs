//! [`Producer`]: batches records per partition and keeps several batches in flight.
//!
//! Records are appended to an open batch of their partition (see [`crate::partitioner`]). A batch is
//! sealed when it reaches [`ProducerConfig::batch_bytes`], or taken as it is once it has waited
//! [`ProducerConfig::linger`] and its partition has a free in-flight slot; while all slots are busy
//! the open batch keeps growing, so batches get bigger exactly when the cluster is the bottleneck.
//! One sender task per partition sends up to [`ProducerConfig::max_in_flight`] batches at a time.
//!
//! # Ordering
//!
//! Batches of a partition are sent in order and, without failures, are appended in order. As in
//! Kafka with `max.in.flight.requests.per.connection > 1`, a batch that has to be retried (its leader
//! died) can land after a batch sent later. Set `max_in_flight` to 1 for strict per-partition order
//! at the cost of one round trip per batch.
//!
//! # Delivery
//!
//! A batch whose answer was lost is sent again, so records are delivered at least once. Memory is
//! bounded by [`ProducerConfig::buffer_bytes`]: `send` waits while that many bytes of records are
//! not yet acknowledged.
//!
//! Each batch is sent under a (producer id, sequence) pair, with which the broker answers a retry
//! of a stored batch with its offsets instead of storing it twice. Pairs are given as batches are
//! sent and never given twice, so an acknowledgement always stands for the batch it answers. A
//! batch that fails for good leaves a gap the broker would wait on forever: the partition then
//! takes a new id, and the batches sent after the failed one are sent again, numbered from 0.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::future::{join_all, AbortHandle, Abortable, BoxFuture, Shared};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::Instant;
use weir_proto::batch::BatchBuilder;
use weir_proto::v1::Acks;

use crate::client::Client;
use crate::error::{ClientError, Result};
use crate::partitioner::Partitioner;

/// Per-record bytes of framing (varints) counted on top of key, value and headers when sizing
/// batches and the buffer.
const RECORD_OVERHEAD: usize = 16;

/// How a [`Producer`] batches and sends records.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// A batch is sealed once its records take this many bytes.
    pub batch_bytes: usize,
    /// How long a batch may wait for more records before it is sent.
    pub linger: Duration,
    /// Batches per partition that may be awaiting their acknowledgement at once (1 = strict order).
    pub max_in_flight: usize,
    /// What the cluster must have done before it acknowledges a batch.
    pub acks: Acks,
    /// Bytes of records that may be waiting for acknowledgement before `send` waits.
    pub buffer_bytes: usize,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            batch_bytes: 256 * 1024,
            linger: Duration::from_millis(5),
            max_in_flight: 4,
            acks: Acks::All,
            buffer_bytes: 32 * 1024 * 1024,
        }
    }
}

/// Counters of what a producer has done so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Records the cluster acknowledged.
    pub records_acked: u64,
    /// Records whose batch failed for good.
    pub records_failed: u64,
    /// Batches acknowledged.
    pub batches_acked: u64,
    /// Bytes of acknowledged batches, headers included.
    pub bytes_acked: u64,
}

/// Sends records to one topic, batching them per partition.
///
/// Cloning is cheap and clones share batches; the records buffered when the last clone is dropped
/// are still sent, but only [`Producer::flush`] waits for them.
#[derive(Debug, Clone)]
pub struct Producer {
    handle: Arc<Handle>,
}

/// Resolves to a record's offset once its batch is acknowledged.
///
/// The offset is `None` with [`Acks::Leader`] when the leader acknowledged before the batch
/// committed, since offsets are only assigned at commit.
#[must_use = "the record is sent either way; await the ack to learn its offset or its failure"]
#[derive(Debug, Clone)]
pub struct RecordAck {
    batch: BatchAck,
    partition: u32,
    index: u32,
}

type BatchAck = Shared<BoxFuture<'static, Result<Option<u64>>>>;

impl RecordAck {
    /// The partition the record was sent to.
    pub fn partition(&self) -> u32 {
        self.partition
    }
}

impl Future for RecordAck {
    type Output = Result<Option<u64>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let index = u64::from(self.index);
        Pin::new(&mut self.batch)
            .poll(cx)
            .map(|r| r.map(|base| base.map(|b| b + index)))
    }
}

/// Dropping the last handle tells the sender tasks to send what is left and stop.
#[derive(Debug)]
struct Handle {
    core: Arc<Core>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.core.lock().closed = true;
        for wake in &self.core.wake {
            wake.notify_one();
        }
    }
}

/// State shared by the producer handles and the per-partition sender tasks.
#[derive(Debug)]
struct Core {
    client: Client,
    topic: String,
    config: ProducerConfig,
    partitions: u32,
    state: Mutex<Accumulator>,
    /// One per partition: wakes its sender task when a batch may be ready.
    wake: Vec<Notify>,
    /// Bytes of the buffer still free; `send` takes, acknowledgement gives back.
    memory: Semaphore,
    records_acked: AtomicU64,
    records_failed: AtomicU64,
    batches_acked: AtomicU64,
    bytes_acked: AtomicU64,
}

#[derive(Debug)]
struct Accumulator {
    partitioner: Partitioner,
    parts: Vec<PartitionQueue>,
    /// Every batch not yet acknowledged, by sequence number, for `flush`.
    pending: BTreeMap<u64, BatchAck>,
    next_seq: u64,
    closed: bool,
}

#[derive(Debug, Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    ready: VecDeque<Sealed>,
}

#[derive(Debug)]
struct OpenBatch {
    builder: BatchBuilder,
    opened: Instant,
    done: oneshot::Sender<Result<Option<u64>>>,
    ack: BatchAck,
    permits: usize,
    seq: u64,
}

#[derive(Debug)]
struct Sealed {
    blob: Bytes,
    records: u32,
    done: oneshot::Sender<Result<Option<u64>>>,
    permits: usize,
    seq: u64,
}

/// What a sender task should do next.
enum Next {
    Send(Sealed),
    WaitUntil(Instant),
    Idle,
    Finished,
}

impl Producer {
    /// A producer for `topic`; fails with `NOT_FOUND` if the topic does not exist.
    pub async fn new(client: Client, topic: &str, config: ProducerConfig) -> Result<Producer> {
        if config.batch_bytes == 0 || config.max_in_flight == 0 || config.buffer_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "batch_bytes, max_in_flight and buffer_bytes must be positive".into(),
            ));
        }
        let partitions = client.describe_topic(topic).await?.partitions;
        if partitions == 0 {
            return Err(ClientError::InvalidArgument(format!(
                "topic {topic} has no partitions"
            )));
        }
        let buffer = config.buffer_bytes.min(Semaphore::MAX_PERMITS);
        let core = Arc::new(Core {
            client,
            topic: topic.to_string(),
            partitions,
            state: Mutex::new(Accumulator {
                partitioner: Partitioner::new(partitions, config.batch_bytes),
                parts: (0..partitions).map(|_| PartitionQueue::default()).collect(),
                pending: BTreeMap::new(),
                next_seq: 0,
                closed: false,
            }),
            wake: (0..partitions).map(|_| Notify::new()).collect(),
            memory: Semaphore::new(buffer),
            records_acked: AtomicU64::new(0),
            records_failed: AtomicU64::new(0),
            batches_acked: AtomicU64::new(0),
            bytes_acked: AtomicU64::new(0),
            config,
        });
        for partition in 0..partitions {
            tokio::spawn(run_sender(core.clone(), partition));
        }
        Ok(Producer {
            handle: Arc::new(Handle { core }),
        })
    }

    /// The topic records are sent to.
    pub fn topic(&self) -> &str {
        &self.handle.core.topic
    }

    /// Number of partitions of the topic.
    pub fn partitions(&self) -> u32 {
        self.handle.core.partitions
    }

    /// Counters of acknowledged and failed records so far.
    pub fn stats(&self) -> ProducerStats {
        let core = &self.handle.core;
        ProducerStats {
            records_acked: core.records_acked.load(Ordering::Relaxed),
            records_failed: core.records_failed.load(Ordering::Relaxed),
            batches_acked: core.batches_acked.load(Ordering::Relaxed),
            bytes_acked: core.bytes_acked.load(Ordering::Relaxed),
        }
    }

    /// Queues a record for the partition chosen by its key; `timestamp_ms` defaults to now.
    ///
    /// Waits only when the buffer is full. The returned [`RecordAck`] resolves once the cluster has
    /// acknowledged the record, to its offset when known.
    pub async fn send(
        &self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<RecordAck> {
        self.send_with_headers(None, key, value, timestamp_ms, &[])
            .await
    }

    /// Queues a record for an explicit partition.
    pub async fn send_to(
        &self,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: Option<i64>,
    ) -> Result<RecordAck> {
        self.send_with_headers(Some(partition), key, value, timestamp_ms, &[])
            .await
    }

    /// Queues a record with headers, to `partition` or (for `None`) the partition of its key.
    pub async fn send_with_headers(
        &self,
        partition: Option<u32>,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: Option<i64>,
        headers: &[(&[u8], &[u8])],
    ) -> Result<RecordAck> {
        let core = &self.handle.core;
        if let Some(p) = partition {
            if p >= core.partitions {
                return Err(ClientError::InvalidArgument(format!(
                    "topic {} has {} partitions; there is no partition {p}",
                    core.topic, core.partitions
                )));
            }
        }
        let size = key.map_or(0, <[u8]>::len)
            + value.len()
            + headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>()
            + RECORD_OVERHEAD;
        // A record larger than the whole buffer takes the whole buffer rather than waiting forever.
        let permits = size
            .min(core.config.buffer_bytes)
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        core.memory
            .acquire_many(permits as u32)
            .await
            .map_err(|_| ClientError::Closed)?
            .forget();
        let timestamp_ms = timestamp_ms.unwrap_or_else(now_ms);

        let mut st = core.lock();
        let p = partition.unwrap_or_else(|| st.partitioner.partition(key));
        if partition.is_none() && key.is_none() {
            st.partitioner.keyless_taken(size);
        }
        let batch_bytes = core.config.batch_bytes;
        let full = st.parts[p as usize]
            .open
            .as_ref()
            .is_some_and(|b| !b.builder.is_empty() && b.builder.body_len() + size > batch_bytes);
        if full {
            st.seal(p);
        }
        let (ack, opened) = st.append(p, key, value, timestamp_ms, headers, permits);
        let complete = st.parts[p as usize]
            .open
            .as_ref()
            .is_some_and(|b| b.builder.body_len() >= batch_bytes);
        if complete {
            st.seal(p);
        }
        drop(st);
        // The sender only needs waking when it has something new to time or to send.
        if opened || full || complete {
            core.wake[p as usize].notify_one();
        }
        Ok(ack)
    }

    /// Sends every buffered record now and waits until all records sent before the call are
    /// acknowledged; returns the first failure, if any.
    pub async fn flush(&self) -> Result<()> {
        let core = &self.handle.core;
        let acks: Vec<BatchAck> = {
            let mut st = core.lock();
            for p in 0..core.partitions {
                st.seal(p);
            }
            st.pending.values().cloned().collect()
        };
        for wake in &core.wake {
            wake.notify_one();
        }
        let mut first_err = None;
        for result in join_all(acks).await {
            if let Err(e) = result {
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Core {
    fn lock(&self) -> MutexGuard<'_, Accumulator> {
        // The accumulator stays consistent across a panic elsewhere: every update is one call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Picks the next batch for a partition's sender, or says how long to wait for one.
    fn next_batch(&self, partition: u32) -> Next {
        let mut st = self.lock();
        let closed = st.closed;
        let queue = &mut st.parts[partition as usize];
        if let Some(sealed) = queue.ready.pop_front() {
            return Next::Send(sealed);
        }
        match &queue.open {
            Some(open) => {
                let due = open.opened + self.config.linger;
                if closed || Instant::now() >= due {
                    st.seal(partition);
                    match st.parts[partition as usize].ready.pop_front() {
                        Some(sealed) => Next::Send(sealed),
                        None => Next::Idle,
                    }
                } else {
                    Next::WaitUntil(due)
                }
            }
            None if closed => Next::Finished,
            None => Next::Idle,
        }
    }

    /// Settles a batch: counts it, frees its buffer space and wakes whoever awaits its records.
    fn settle(&self, sealed: Sealed, result: Result<Option<u64>>) {
        let records = u64::from(sealed.records);
        match &result {
            Ok(_) => {
                self.records_acked.fetch_add(records, Ordering::Relaxed);
                self.batches_acked.fetch_add(1, Ordering::Relaxed);
                self.bytes_acked
                    .fetch_add(sealed.blob.len() as u64, Ordering::Relaxed);
            }
            Err(err) => {
                self.records_failed.fetch_add(records, Ordering::Relaxed);
                tracing::warn!(topic = %self.topic, records, error = %err, "batch failed");
            }
        }
        self.memory.add_permits(sealed.permits);
        self.lock().pending.remove(&sealed.seq);
        // Nobody may be waiting for this batch any more; that is fine.
        let _ = sealed.done.send(result);
    }
}

impl Accumulator {
    /// Appends a record to the partition's open batch, opening one if needed; also says whether a
    /// batch was opened (its sender must start the linger clock).
    fn append(
        &mut self,
        partition: u32,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        headers: &[(&[u8], &[u8])],
        permits: usize,
    ) -> (RecordAck, bool) {
        let Accumulator {
            parts,
            pending,
            next_seq,
            ..
        } = self;
        let mut opened = false;
        let open = parts[partition as usize].open.get_or_insert_with(|| {
            opened = true;
            let (done, rx) = oneshot::channel();
            let ack: BatchAck = async move { rx.await.unwrap_or(Err(ClientError::Closed)) }
                .boxed()
                .shared();
            let seq = *next_seq;
            *next_seq += 1;
            pending.insert(seq, ack.clone());
            OpenBatch {
                builder: BatchBuilder::new(),
                opened: Instant::now(),
                done,
                ack,
                permits: 0,
                seq,
            }
        });
        let index = open.builder.len();
        open.builder
            .push_with_headers(key, value, timestamp_ms, headers);
        open.permits += permits;
        let ack = RecordAck {
            batch: open.ack.clone(),
            partition,
            index,
        };
        (ack, opened)
    }

    /// Moves the partition's open batch, if any, to its send queue.
    fn seal(&mut self, partition: u32) {
        let queue = &mut self.parts[partition as usize];
        let Some(open) = queue.open.take() else {
            return;
        };
        let records = open.builder.len();
        queue.ready.push_back(Sealed {
            blob: open.builder.finish(),
            records,
            done: open.done,
            permits: open.permits,
            seq: open.seq,
        });
    }
}

/// (producer id, sequence) under which a batch is sent.
type BatchName = (u64, u64);

/// Names one partition's batches as they are sent.
///
/// The broker answers a name it has stored with the offsets of the batch stored under it, so a
/// name given to two batches would acknowledge one of them without storing it. Names are
/// therefore given at send time, in send order, and a new id never reuses a name of an old one.
#[derive(Debug)]
struct Sequencer {
    producer_id: u64,
    next: u64,
}

impl Sequencer {
    /// A sequencer under a fresh random id, counting from 0.
    fn new() -> Self {
        Sequencer {
            // 0 tells the broker the producer is not idempotent.
            producer_id: weir_proto::random::u64().max(1),
            next: 0,
        }
    }

    /// The name of the next batch sent.
    fn assign(&mut self) -> BatchName {
        let name = (self.producer_id, self.next);
        self.next += 1;
        name
    }
}

/// A batch awaiting its answer, and the handle that stops waiting for it.
#[derive(Debug)]
struct InFlight {
    sealed: Sealed,
    abort: AbortHandle,
}

/// Sends one partition's batches, keeping up to `max_in_flight` of them awaiting acknowledgement.
async fn run_sender(core: Arc<Core>, partition: u32) {
    let mut names = Sequencer::new();
    // Ordered by name, so the batches sent under one id after a given one are a range.
    let mut in_flight: BTreeMap<BatchName, InFlight> = BTreeMap::new();
    // One answer per batch sent; `None` for a batch taken back to be sent again.
    let mut answers = FuturesUnordered::new();
    loop {
        let mut wait_until = None;
        let mut finished = false;
        while in_flight.len() < core.config.max_in_flight {
            match core.next_batch(partition) {
                Next::Send(sealed) => {
                    let name = names.assign();
                    let (abort, registration) = AbortHandle::new_pair();
                    let answer = Abortable::new(
                        produce(
                            core.clone(),
                            partition,
                            sealed.blob.clone(),
                            sealed.records,
                            name,
                        ),
                        registration,
                    );
                    answers.push(answer.map(move |answer| (name, answer.ok())));
                    in_flight.insert(name, InFlight { sealed, abort });
                }
                Next::WaitUntil(due) => {
                    wait_until = Some(due);
                    break;
                }
                Next::Idle => break,
                Next::Finished => {
                    finished = true;
                    break;
                }
            }
        }
        if finished && in_flight.is_empty() {
            return;
        }
        let has_slot = in_flight.len() < core.config.max_in_flight;
        let linger = async {
            match wait_until {
                Some(due) => tokio::time::sleep_until(due).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some((name, answer)) = answers.next(), if !answers.is_empty() => {
                // A batch taken back has no entry any more: its answer, if any, is not waited for.
                if let (Some(result), Some(batch)) = (answer, in_flight.remove(&name)) {
                    // A failure under an old id needs nothing: the batches sent after it under
                    // that id were taken back when the id was dropped.
                    if result.is_err() && name.0 == names.producer_id {
                        // Dropping the id also retires the failed batch's name: were it stored
                        // after all, no other batch can be answered with its offsets.
                        names = Sequencer::new();
                        take_back(&core, partition, &mut in_flight, name);
                    }
                    core.settle(batch.sealed, result);
                }
            }
            () = core.wake[partition as usize].notified(), if has_slot && !finished => {}
            () = linger, if has_slot => {}
        }
    }
}

/// Stops waiting for the batches sent under the id of the `failed` batch after it, which the
/// broker will never store, and queues them first, in their order, to be named again.
///
/// A request stopped here may still have been stored (when the failed batch was in fact stored
/// and only its answer was lost); it is then stored twice, which at-least-once delivery allows.
fn take_back(
    core: &Core,
    partition: u32,
    in_flight: &mut BTreeMap<BatchName, InFlight>,
    failed: BatchName,
) {
    let (id, sequence) = failed;
    let later: Vec<BatchName> = in_flight
        .range((id, sequence.saturating_add(1))..=(id, u64::MAX))
        .map(|(name, _)| *name)
        .collect();
    let mut st = core.lock();
    let ready = &mut st.parts[partition as usize].ready;
    for name in later.into_iter().rev() {
        if let Some(batch) = in_flight.remove(&name) {
            batch.abort.abort();
            ready.push_front(batch.sealed);
        }
    }
}

/// Produces one batch under `name`, with the client's retries; resolves to its base offset.
async fn produce(
    core: Arc<Core>,
    partition: u32,
    blob: Bytes,
    records: u32,
    name: BatchName,
) -> Result<Option<u64>> {
    core.client
        .produce_idempotent(&core.topic, partition, blob, core.config.acks, Some(name))
        .await
        .map(|(base, count)| {
            if count != records {
                tracing::warn!(
                    topic = %core.topic,
                    partition,
                    sent = records,
                    stored = count,
                    "the broker stored a different record count than was sent"
                );
            }
            base
        })
}

/// Milliseconds since the Unix epoch, the timestamp of records sent without one.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
