//! Joins concurrent HTTP ingest requests to one partition into one batch.
//!
//! Each node keeps a lane per partition it receives ingest requests for: a task that sends one
//! batch at a time under its own idempotent producer id, and puts everything that arrived for the
//! partition while that batch was being stored into the next one. Under load one Raft entry (one
//! forward to the leader, one producer-state write, one apply) then carries many requests instead
//! of one each, as a Kafka producer's batching does for one client; a request that finds the lane
//! idle is sent at once (no linger). A batch is sent again through elections and leader moves for
//! up to [`INGEST_RETRY_FOR`] and, being idempotent, stored once.

use std::collections::{HashMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::{Code, Status};
use weir_client::retry::{worth_retrying, Backoff};
use weir_proto::batch::BatchBuilder;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::{Acks, ProduceRequest, ProduceResponse};

use super::service::{LogService, MAX_BATCH_BYTES};

/// How long a batch is sent again through an election or a leader move before its requests are
/// answered with the failure: about what a Kafka producer's retries cover, well above an
/// election here.
pub const INGEST_RETRY_FOR: Duration = Duration::from_secs(10);

/// Most bytes of records one batch carries; a request larger than this is split over several.
const LANE_BATCH_BYTES: usize = MAX_BATCH_BYTES / 2;
/// Requests that may wait for a lane before a new one waits to be queued.
const LANE_QUEUE: usize = 1024;
/// A lane with nothing to send for this long stops (the next request starts a new one).
const LANE_IDLE: Duration = Duration::from_secs(60);

/// Records of one ingest request, as they are to be stored.
#[derive(Debug)]
pub struct IngestRecords {
    /// The key every record gets.
    pub key: Option<Vec<u8>>,
    /// The record values, in order.
    pub values: Vec<Vec<u8>>,
    /// The timestamp every record gets (ms since the epoch).
    pub timestamp_ms: i64,
}

/// Where a request's records were stored, or how far it got.
#[derive(Debug)]
pub enum Stored {
    /// Every record was stored; the offsets they got, in order, when known (a batch sent again
    /// after its first answer was lost may be known only as stored).
    All(Option<Vec<u64>>),
    /// A batch failed for good after `written` of the request's records had been stored.
    Failed {
        /// Why.
        status: Status,
        /// Records of the request stored before the failure.
        written: usize,
    },
}

/// One request in a lane: its records, how many were sent, the offsets they got.
struct Waiting {
    records: IngestRecords,
    sent: usize,
    offsets: Option<Vec<u64>>,
    reply: oneshot::Sender<Stored>,
}

type LaneKey = (String, u32);

/// Where lanes send their batches.
pub trait BatchSink: Send + Sync + 'static {
    /// Stores `req`, sending it again as long as that may still succeed.
    fn send(
        &self,
        req: &ProduceRequest,
    ) -> impl std::future::Future<Output = Result<ProduceResponse, Status>> + Send;
}

/// The node's log service, which forwards each batch to its partition's leader.
pub struct ToLeaders(pub Arc<LogService>);

impl BatchSink for ToLeaders {
    async fn send(&self, req: &ProduceRequest) -> Result<ProduceResponse, Status> {
        produce_through_leader_changes(&self.0, req).await
    }
}

/// The ingest lanes of this node, one per partition; cloning shares them.
pub struct IngestLanes<S = ToLeaders> {
    sink: Arc<S>,
    lanes: Arc<Mutex<HashMap<LaneKey, mpsc::Sender<Waiting>>>>,
}

impl<S> Clone for IngestLanes<S> {
    fn clone(&self) -> Self {
        IngestLanes {
            sink: self.sink.clone(),
            lanes: self.lanes.clone(),
        }
    }
}

impl IngestLanes<ToLeaders> {
    /// Lanes producing through `log` (which forwards to each partition's leader).
    pub fn new(log: Arc<LogService>) -> IngestLanes {
        IngestLanes::with_sink(ToLeaders(log))
    }
}

impl<S: BatchSink> IngestLanes<S> {
    /// Lanes sending their batches to `sink`.
    pub fn with_sink(sink: S) -> IngestLanes<S> {
        IngestLanes {
            sink: Arc::new(sink),
            lanes: Arc::default(),
        }
    }

    /// Stores `records` in `partition` of `topic`, in one batch with the other requests to that
    /// partition that arrive meanwhile, and answers once they are stored on a quorum.
    pub async fn produce(&self, topic: &str, partition: u32, records: IngestRecords) -> Stored {
        let (reply, answer) = oneshot::channel();
        let mut waiting = Waiting {
            offsets: Some(Vec::with_capacity(records.values.len())),
            records,
            sent: 0,
            reply,
        };
        let key = (topic.to_string(), partition);
        loop {
            let lane = self.lane(&key);
            match lane.send(waiting).await {
                Ok(()) => break,
                // The lane stopped for being idle just now: start another.
                Err(mpsc::error::SendError(back)) => {
                    waiting = back;
                    self.forget(&key, &lane);
                }
            }
        }
        answer.await.unwrap_or_else(|_| Stored::Failed {
            status: Status::internal("the ingest lane stopped"),
            written: 0,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LaneKey, mpsc::Sender<Waiting>>> {
        self.lanes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running lane of `key`, started if there is none.
    fn lane(&self, key: &LaneKey) -> mpsc::Sender<Waiting> {
        let mut lanes = self.lock();
        if let Some(tx) = lanes.get(key).filter(|tx| !tx.is_closed()) {
            return tx.clone();
        }
        let (tx, rx) = mpsc::channel(LANE_QUEUE);
        let span = tracing::info_span!("ingest lane", topic = %key.0, partition = key.1);
        tokio::spawn(tracing::Instrument::instrument(
            run_lane(self.sink.clone(), key.0.clone(), key.1, rx),
            span,
        ));
        lanes.insert(key.clone(), tx.clone());
        tx
    }

    /// Requests waiting in the lane of `partition` of `topic` to be taken into a batch.
    #[cfg(test)]
    fn queued(&self, topic: &str, partition: u32) -> usize {
        self.lock()
            .get(&(topic.to_string(), partition))
            .map_or(0, |tx| LANE_QUEUE - tx.capacity())
    }

    /// Drops `lane` from the map if it is still the one there.
    fn forget(&self, key: &LaneKey, lane: &mpsc::Sender<Waiting>) {
        let mut lanes = self.lock();
        if lanes.get(key).is_some_and(|tx| tx.same_channel(lane)) {
            lanes.remove(key);
        }
    }
}

/// The (producer id, next sequence) a lane sends its batches under.
struct Names {
    producer_id: u64,
    next: u64,
}

impl Names {
    fn fresh() -> Names {
        Names {
            // 0 tells the broker the producer is not idempotent.
            producer_id: weir_proto::random::u64().max(1),
            next: 0,
        }
    }
}

/// One lane: takes what is queued, sends it as one batch, answers its requests, repeats.
async fn run_lane<S: BatchSink>(
    sink: Arc<S>,
    topic: String,
    partition: u32,
    mut rx: mpsc::Receiver<Waiting>,
) {
    let mut names = Names::fresh();
    let mut queue: VecDeque<Waiting> = VecDeque::new();
    loop {
        if queue.is_empty() {
            match tokio::time::timeout(LANE_IDLE, rx.recv()).await {
                Ok(Some(w)) => queue.push_back(w),
                Ok(None) => return,
                Err(_) => {
                    // Refuse new requests (they start a new lane), then send what got in.
                    rx.close();
                    while let Some(w) = rx.recv().await {
                        queue.push_back(w);
                    }
                    if queue.is_empty() {
                        return;
                    }
                }
            }
        }
        while let Ok(w) = rx.try_recv() {
            queue.push_back(w);
        }
        let (batch, taken) = next_batch(&queue);
        let req = ProduceRequest {
            topic: topic.clone(),
            partition,
            batch,
            acks: Acks::All as i32,
            producer_id: names.producer_id,
            sequence: names.next,
            jumping: false,
            producer_epoch: 0,
        };
        names.next += 1;
        let mut result = sink.send(&req).await;
        if matches!(&result, Err(s) if s.code() == Code::Aborted) && req.sequence > 0 {
            // The partition forgot this producer (it evicts the least recently active ones): the
            // batch was refused, not stored, so it is sent again as a new producer's first.
            names = Names::fresh();
            let again = ProduceRequest {
                producer_id: names.producer_id,
                sequence: 0,
                ..req
            };
            names.next = 1;
            result = sink.send(&again).await;
        }
        match result {
            Ok(resp) => {
                let base = (!resp.offsets_pending && !resp.duplicate).then_some(resp.base_offset);
                settle_stored(&mut queue, &taken, base);
            }
            Err(status) => {
                // Whether the failed batch was stored is unknown: its name is not used again.
                names = Names::fresh();
                for _ in 0..taken.len() {
                    if let Some(w) = queue.pop_front() {
                        let _ = w.reply.send(Stored::Failed {
                            status: status.clone(),
                            written: w.sent,
                        });
                    }
                }
            }
        }
    }
}

/// The next batch from the front of `queue`: whole requests while they fit in
/// [`LANE_BATCH_BYTES`] (at least one record), the last one possibly in part; and how many
/// records of each request, from the front, it holds.
fn next_batch(queue: &VecDeque<Waiting>) -> (bytes::Bytes, Vec<usize>) {
    let mut builder = BatchBuilder::new();
    let mut taken = Vec::new();
    'requests: for w in queue {
        let key = w.records.key.as_deref();
        let mut n = 0;
        for value in &w.records.values[w.sent..] {
            let size = value.len() + key.map_or(0, <[u8]>::len);
            if !builder.is_empty() && builder.body_len() + size > LANE_BATCH_BYTES {
                if n > 0 {
                    taken.push(n);
                }
                break 'requests;
            }
            builder.push(key, value, w.records.timestamp_ms);
            n += 1;
        }
        taken.push(n);
    }
    (builder.finish(), taken)
}

/// Notes the offsets a stored batch gave the requests at the front of `queue` (`taken[i]`
/// records of the i-th, from `base` on; `None`: stored, offsets unknown) and answers those whose
/// records are now all stored.
fn settle_stored(queue: &mut VecDeque<Waiting>, taken: &[usize], base: Option<u64>) {
    let mut at = 0u64;
    for (w, &n) in queue.iter_mut().zip(taken) {
        w.sent += n;
        match (base, &mut w.offsets) {
            (Some(b), Some(offsets)) => offsets.extend(offsets_of(b, at, n)),
            _ => w.offsets = None,
        }
        at += n as u64;
    }
    while queue
        .front()
        .is_some_and(|w| w.sent == w.records.values.len())
    {
        if let Some(w) = queue.pop_front() {
            let _ = w.reply.send(Stored::All(w.offsets));
        }
    }
}

fn offsets_of(base: u64, at: u64, n: usize) -> Range<u64> {
    base + at..base + at + n as u64
}

/// Produces `req`, sent again with back-off while the partition is between leaders (no leader
/// yet, a leader that cannot take writes yet, a node that just lost leadership, an answer lost on
/// the way); any other refusal is answered at once. Safe to repeat: `req` is idempotent.
async fn produce_through_leader_changes(
    log: &LogService,
    req: &ProduceRequest,
) -> Result<ProduceResponse, Status> {
    let deadline = tokio::time::Instant::now() + INGEST_RETRY_FOR;
    let mut backoff = Backoff::default();
    loop {
        let status = match log.produce(tonic::Request::new(req.clone())).await {
            Ok(resp) => return Ok(resp.into_inner()),
            Err(status) => status,
        };
        let pause = backoff.next_delay();
        if !worth_retrying(&status) || tokio::time::Instant::now() + pause >= deadline {
            return Err(status);
        }
        tracing::debug!(error = %status.message(), "ingest batch refused for now; sending it again");
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiting(values: &[&str], sent: usize) -> (Waiting, oneshot::Receiver<Stored>) {
        let (reply, rx) = oneshot::channel();
        let w = Waiting {
            records: IngestRecords {
                key: None,
                values: values.iter().map(|v| v.as_bytes().to_vec()).collect(),
                timestamp_ms: 1,
            },
            sent,
            offsets: Some(Vec::new()),
            reply,
        };
        (w, rx)
    }

    #[test]
    fn a_batch_joins_whole_requests_in_order() {
        let mut queue = VecDeque::new();
        let (a, _ra) = waiting(&["a1", "a2"], 0);
        let (b, _rb) = waiting(&["b1"], 0);
        queue.extend([a, b]);
        let (batch, taken) = next_batch(&queue);
        assert_eq!(taken, vec![2, 1]);
        let values: Vec<Vec<u8>> = weir_proto::batch::decode(&batch)
            .expect("decodes")
            .into_iter()
            .map(|r| r.value.to_vec())
            .collect();
        assert_eq!(values, vec![b"a1".to_vec(), b"a2".to_vec(), b"b1".to_vec()]);
    }

    #[test]
    fn a_request_over_the_batch_size_is_split_and_answered_once_whole() {
        let big = "x".repeat(LANE_BATCH_BYTES / 2 + 1);
        let mut queue = VecDeque::new();
        let (a, mut ra) = waiting(&[&big, &big, "a3"], 0);
        let (b, mut rb) = waiting(&["b1"], 0);
        queue.extend([a, b]);
        // The first batch holds one of the two large records only.
        let (_, taken) = next_batch(&queue);
        assert_eq!(taken, vec![1]);
        settle_stored(&mut queue, &taken, Some(10));
        assert!(
            ra.try_recv().is_err(),
            "answered before all its records are stored"
        );
        // The second: the rest of the first request and the whole second one.
        let (_, taken) = next_batch(&queue);
        assert_eq!(taken, vec![2, 1]);
        settle_stored(&mut queue, &taken, Some(20));
        assert!(queue.is_empty());
        match ra.try_recv() {
            Ok(Stored::All(Some(offsets))) => assert_eq!(offsets, vec![10, 20, 21]),
            other => panic!("first request answered {other:?}"),
        }
        match rb.try_recv() {
            Ok(Stored::All(Some(offsets))) => assert_eq!(offsets, vec![22]),
            other => panic!("second request answered {other:?}"),
        }
    }

    #[test]
    fn offsets_known_only_as_stored_are_not_made_up() {
        let mut queue = VecDeque::new();
        let (a, mut ra) = waiting(&["a1"], 0);
        queue.push_back(a);
        let (_, taken) = next_batch(&queue);
        settle_stored(&mut queue, &taken, None);
        assert!(matches!(ra.try_recv(), Ok(Stored::All(None))));
    }

    type Handed = (
        ProduceRequest,
        oneshot::Sender<Result<ProduceResponse, Status>>,
    );

    /// Hands each batch to the test, which answers it when it chooses.
    struct Held(mpsc::UnboundedSender<Handed>);

    impl BatchSink for Held {
        async fn send(&self, req: &ProduceRequest) -> Result<ProduceResponse, Status> {
            let (tx, rx) = oneshot::channel();
            let _ = self.0.send((req.clone(), tx));
            rx.await
                .unwrap_or_else(|_| Err(Status::cancelled("the test ended")))
        }
    }

    fn values(req: &ProduceRequest) -> Vec<String> {
        weir_proto::batch::decode(&req.batch)
            .expect("decodes")
            .into_iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect()
    }

    fn appended(base_offset: u64, req: &ProduceRequest) -> Result<ProduceResponse, Status> {
        Ok(ProduceResponse {
            base_offset,
            count: values(req).len() as u32,
            offsets_pending: false,
            duplicate: false,
            last_sequence: 0,
        })
    }

    fn one(value: &str) -> IngestRecords {
        IngestRecords {
            key: None,
            values: vec![value.as_bytes().to_vec()],
            timestamp_ms: 1,
        }
    }

    fn start(lanes: &IngestLanes<Held>, value: &str) -> tokio::task::JoinHandle<Stored> {
        let (lanes, value) = (lanes.clone(), value.to_string());
        tokio::spawn(async move { lanes.produce("t", 0, one(&value)).await })
    }

    async fn until_queued(lanes: &IngestLanes<Held>, n: usize) {
        tokio::time::timeout(Duration::from_secs(30), async {
            while lanes.queued("t", 0) < n {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("requests queued in the lane");
    }

    #[tokio::test]
    async fn requests_arriving_while_a_batch_is_stored_go_in_the_next_one() {
        let (tx, mut handed) = mpsc::unbounded_channel();
        let lanes = IngestLanes::with_sink(Held(tx));
        let first = start(&lanes, "a");
        let (req1, answer1) = handed.recv().await.expect("the first batch");
        assert_eq!(values(&req1), vec!["a"]);
        let rest: Vec<_> = ["b", "c", "d"].iter().map(|v| start(&lanes, v)).collect();
        until_queued(&lanes, 3).await;
        let _ = answer1.send(appended(0, &req1));
        let (req2, answer2) = handed.recv().await.expect("the second batch");
        let mut joined = values(&req2);
        let order = joined.clone();
        joined.sort();
        assert_eq!(
            joined,
            vec!["b", "c", "d"],
            "the three waiting requests in one batch"
        );
        assert_eq!((req2.producer_id, req2.sequence), (req1.producer_id, 1));
        let _ = answer2.send(appended(1, &req2));
        assert!(matches!(first.await.expect("answered"), Stored::All(Some(o)) if o == vec![0]));
        for (v, task) in ["b", "c", "d"].iter().zip(rest) {
            let at = order.iter().position(|o| o == v).expect("in the batch") as u64;
            match task.await.expect("answered") {
                Stored::All(Some(o)) => assert_eq!(o, vec![1 + at], "offset of {v}"),
                other => panic!("{v} answered {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn a_failed_batch_fails_its_requests_only_and_retires_its_producer_id() {
        let (tx, mut handed) = mpsc::unbounded_channel();
        let lanes = IngestLanes::with_sink(Held(tx));
        let first = start(&lanes, "a");
        let (req1, answer1) = handed.recv().await.expect("the first batch");
        let second = start(&lanes, "b");
        until_queued(&lanes, 1).await;
        let _ = answer1.send(Err(Status::unavailable("no leader")));
        match first.await.expect("answered") {
            Stored::Failed { status, written } => {
                assert_eq!((status.code(), written), (Code::Unavailable, 0))
            }
            other => panic!("the failed request answered {other:?}"),
        }
        let (req2, answer2) = handed.recv().await.expect("the next batch");
        assert_eq!(values(&req2), vec!["b"]);
        assert_ne!(
            req2.producer_id, req1.producer_id,
            "a new id after a failure"
        );
        assert_eq!(req2.sequence, 0);
        let _ = answer2.send(appended(7, &req2));
        assert!(matches!(second.await.expect("answered"), Stored::All(Some(o)) if o == vec![7]));
    }

    #[tokio::test]
    async fn a_batch_of_a_forgotten_producer_is_sent_again_as_a_new_ones_first() {
        let (tx, mut handed) = mpsc::unbounded_channel();
        let lanes = IngestLanes::with_sink(Held(tx));
        let first = start(&lanes, "a");
        let (req1, answer1) = handed.recv().await.expect("the first batch");
        let _ = answer1.send(appended(0, &req1));
        assert!(matches!(first.await.expect("answered"), Stored::All(_)));
        let second = start(&lanes, "b");
        let (req2, answer2) = handed.recv().await.expect("the second batch");
        assert_eq!(req2.sequence, 1);
        let _ = answer2.send(Err(Status::aborted("batch 1 arrived before its batch 0")));
        let (again, answer) = handed.recv().await.expect("sent again");
        assert_eq!(values(&again), vec!["b"]);
        assert_ne!(again.producer_id, req2.producer_id);
        assert_eq!(again.sequence, 0);
        let _ = answer.send(appended(1, &again));
        assert!(matches!(second.await.expect("answered"), Stored::All(Some(o)) if o == vec![1]));
    }
}
