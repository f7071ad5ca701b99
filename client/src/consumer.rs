//! [`Consumer`]: reads a topic's partitions, alone or as a member of a consumer group.
//!
//! Each assigned partition has at most one long-polling fetch in flight; fetches that complete are
//! decoded into records and handed out by [`Consumer::poll`] in offset order per partition. Fetches
//! outlive a `poll` that timed out, so nothing fetched is thrown away.
//!
//! In a group, a background task sends `GroupHeartbeat` every second; the answer is the generation
//! and the set of partitions this member may read, and `poll` takes changes up. A partition taken
//! away is committed and dropped by `poll` before the next heartbeat reports the new generation,
//! which is what lets the coordinator give the partition to its next reader: one member reads a
//! partition at a time. A member that cannot reach the coordinator for its session timeout drops
//! all its partitions, as the coordinator gives them away by then. A newly assigned partition starts
//! at the group's committed offset, or where [`StartFrom`] says when nothing was committed. Offsets
//! are committed only by [`Consumer::commit`] (and for partitions taken away by a rebalance), so a
//! record is committed only after the application has seen it; commits carry the member's
//! generation, and one the group refuses makes the member rejoin at once without moving anything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::future::{join_all, BoxFuture};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::Code;
use weir_proto::v1::FetchResponse;

use crate::client::Client;
use crate::error::{ClientError, Result};

/// How long a partition whose fetch offset is past the end waits before it is fetched again.
const PAST_THE_END_RETRY: Duration = Duration::from_millis(200);

/// Where a consumer starts reading a partition that has no committed offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// The oldest record still stored.
    #[default]
    Earliest,
    /// The next record to be written: only new records are read.
    Latest,
    /// A fixed offset.
    Offset(u64),
}

impl FromStr for StartFrom {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "earliest" | "beginning" => Ok(StartFrom::Earliest),
            "latest" | "end" => Ok(StartFrom::Latest),
            other => other
                .parse::<u64>()
                .map(StartFrom::Offset)
                .map_err(|_| format!("expected earliest, latest or an offset, not {s:?}")),
        }
    }
}

impl fmt::Display for StartFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartFrom::Earliest => f.write_str("earliest"),
            StartFrom::Latest => f.write_str("latest"),
            StartFrom::Offset(n) => write!(f, "{n}"),
        }
    }
}

/// How a [`Consumer`] reads.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Consumer group to join; `None` reads without a group (and cannot commit).
    pub group: Option<String>,
    /// Partitions to read without a group; `None` means all of them.
    pub partitions: Option<Vec<u32>>,
    /// Where to start in partitions without a committed offset.
    pub from: StartFrom,
    /// Upper bound on the bytes one fetch returns (whole batches may exceed it slightly).
    pub max_bytes: u32,
    /// How long the server holds a fetch open waiting for new records.
    pub max_wait: Duration,
    /// Most records one [`Consumer::poll`] returns.
    pub max_poll_records: usize,
    /// A member not heard from for this long loses its partitions.
    pub session_timeout: Duration,
    /// How often the member tells the group it is alive.
    pub heartbeat_interval: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            group: None,
            partitions: None,
            from: StartFrom::Earliest,
            max_bytes: 1024 * 1024,
            max_wait: Duration::from_millis(500),
            max_poll_records: 10_000,
            session_timeout: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(1),
        }
    }
}

/// One record as read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// Partition the record was read from.
    pub partition: u32,
    /// Its offset in the partition.
    pub offset: u64,
    /// Optional key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Headers as the producer set them.
    pub headers: Vec<(Bytes, Bytes)>,
}

/// Reads records of one topic.
#[derive(Debug)]
pub struct Consumer {
    client: Client,
    topic: String,
    config: ConsumerConfig,
    membership: Option<Membership>,
    parts: BTreeMap<u32, PartitionState>,
    buffered: VecDeque<ConsumedRecord>,
    in_flight: FuturesUnordered<BoxFuture<'static, Fetched>>,
    next_fetch_id: u64,
}

/// Partitions a member may read at a generation of its group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Grant {
    /// The group's generation; 0 when the member has no place in the group.
    generation: u64,
    /// Sorted partitions.
    partitions: Vec<u32>,
}

/// This process's seat in a consumer group.
#[derive(Debug)]
struct Membership {
    group: String,
    member_id: String,
    /// The latest grant of the coordinator.
    assignment: watch::Receiver<Grant>,
    /// Generation whose grant `poll` has taken up: what commits carry.
    generation: u64,
    /// What `poll` has taken up, reported by the heartbeats.
    adopted: Arc<Mutex<Grant>>,
    /// Asks the heartbeat task for a heartbeat now.
    rejoin: Arc<Notify>,
    /// Dropping it stops the heartbeat task after its current heartbeat.
    stop: oneshot::Sender<()>,
    heartbeats: JoinHandle<()>,
}

impl Membership {
    /// Stops heartbeating, then leaves the group. The order matters: a heartbeat still in flight
    /// after LeaveGroup would put the member back into the group until its session expires.
    async fn leave(self, client: &Client, topic: &str) -> Result<()> {
        drop(self.stop);
        let mut heartbeats = self.heartbeats;
        let grace = client.config().request_timeout;
        if tokio::time::timeout(grace, &mut heartbeats).await.is_err() {
            heartbeats.abort();
        }
        client
            .leave_group(&self.group, topic, &self.member_id)
            .await
    }
}

#[derive(Debug, Clone)]
struct PartitionState {
    /// Next offset to fetch.
    fetch_at: u64,
    /// Next offset after the last record handed out by `poll`.
    consumed: u64,
    /// Last offset committed for the group.
    committed: Option<u64>,
    /// Id of the fetch in flight; answers of older fetches are ignored.
    fetching: Option<u64>,
    /// The next fetch waits until then (the offset was past the end of the partition).
    retry_at: Option<Instant>,
}

/// A spawned task that is aborted when its handle is dropped (a consumer dropped, or a fetch no
/// longer wanted), so fetches never outlive their consumer.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> std::future::Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Fetched {
    partition: u32,
    id: u64,
    result: Result<FetchResponse>,
}

enum Woke {
    Fetched(Fetched),
    Reassigned,
    TimedOut,
}

impl Consumer {
    /// A consumer of `topic`; joins the group and waits for the first assignment when
    /// `config.group` is set. Fails with `NOT_FOUND` if the topic does not exist.
    pub async fn new(client: Client, topic: &str, config: ConsumerConfig) -> Result<Consumer> {
        let total = client.describe_topic(topic).await?.partitions;
        let mut consumer = Consumer {
            client: client.clone(),
            topic: topic.to_string(),
            config: config.clone(),
            membership: None,
            parts: BTreeMap::new(),
            buffered: VecDeque::new(),
            in_flight: FuturesUnordered::new(),
            next_fetch_id: 0,
        };
        let initial =
            match (&config.group, &config.partitions) {
                (Some(_), Some(_)) => return Err(ClientError::InvalidArgument(
                    "a consumer reads either explicit partitions or as a group member, not both"
                        .into(),
                )),
                (Some(group), None) => {
                    if group.is_empty() {
                        return Err(ClientError::InvalidArgument(
                            "group name must not be empty".into(),
                        ));
                    }
                    let member_id =
                        format!("{}-{:016x}", std::process::id(), weir_proto::random::u64());
                    let sent = Instant::now();
                    let resp = client
                        .group_heartbeat(group, topic, &member_id, config.session_timeout, 0, &[])
                        .await?;
                    let grant = Grant {
                        generation: resp.generation,
                        partitions: normalize(resp.partitions),
                    };
                    let (tx, rx) = watch::channel(grant.clone());
                    let (stop, stopped) = oneshot::channel();
                    let adopted = Arc::new(Mutex::new(Grant::default()));
                    let rejoin = Arc::new(Notify::new());
                    let heartbeats = tokio::spawn(heartbeat(
                        Heartbeats {
                            client,
                            group: group.clone(),
                            topic: topic.to_string(),
                            member_id: member_id.clone(),
                            config: config.clone(),
                            assignment: tx,
                            adopted: adopted.clone(),
                            rejoin: rejoin.clone(),
                        },
                        stopped,
                        sent,
                    ));
                    consumer.membership = Some(Membership {
                        group: group.clone(),
                        member_id,
                        assignment: rx,
                        generation: 0,
                        adopted,
                        rejoin,
                        stop,
                        heartbeats,
                    });
                    consumer.adopt(grant).await?;
                    return Ok(consumer);
                }
                (None, Some(parts)) => {
                    if let Some(bad) = parts.iter().find(|p| **p >= total) {
                        return Err(ClientError::InvalidArgument(format!(
                            "topic {topic} has {total} partitions; there is no partition {bad}"
                        )));
                    }
                    normalize(parts.clone())
                }
                (None, None) => (0..total).collect(),
            };
        consumer.assign(initial, 0).await?;
        Ok(consumer)
    }

    /// The topic being read.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The consumer group's member id of this consumer, when it is in a group.
    pub fn member_id(&self) -> Option<&str> {
        self.membership.as_ref().map(|m| m.member_id.as_str())
    }

    /// The group generation whose assignment this consumer reads (0 after it lost its place in the
    /// group, until it rejoins), when it is in a group.
    pub fn generation(&self) -> Option<u64> {
        self.membership.as_ref().map(|m| m.generation)
    }

    /// The partitions currently read.
    pub fn assignment(&self) -> Vec<u32> {
        self.parts.keys().copied().collect()
    }

    /// The offset after the last record `poll` returned from `partition` (what `commit` would store).
    pub fn position(&self, partition: u32) -> Option<u64> {
        self.parts.get(&partition).map(|s| s.consumed)
    }

    /// Waits up to `timeout` for records and returns those that arrived (possibly none), at most
    /// [`ConsumerConfig::max_poll_records`].
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumedRecord>> {
        let max = self.config.max_poll_records;
        self.poll_at_most(timeout, max).await
    }

    /// Like [`Consumer::poll`], but returns at most `max` records; the rest stay buffered.
    pub async fn poll_at_most(
        &mut self,
        timeout: Duration,
        max: usize,
    ) -> Result<Vec<ConsumedRecord>> {
        let deadline = Instant::now() + timeout;
        loop {
            // Compared by value: `changed()` below marks a new assignment as seen before it is
            // adopted here.
            if let Some(m) = &mut self.membership {
                let next = m.assignment.borrow_and_update().clone();
                if next.generation != m.generation
                    || !next
                        .partitions
                        .iter()
                        .copied()
                        .eq(self.parts.keys().copied())
                {
                    self.adopt(next).await?;
                }
            }
            if !self.buffered.is_empty() {
                return Ok(self.drain(max.max(1)));
            }
            self.start_fetches();
            let reassigned = async {
                match &mut self.membership {
                    Some(m) => {
                        if m.assignment.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            let woke = tokio::select! {
                Some(fetched) = self.in_flight.next(), if !self.in_flight.is_empty() => {
                    Woke::Fetched(fetched)
                }
                () = reassigned => Woke::Reassigned,
                () = tokio::time::sleep_until(deadline) => Woke::TimedOut,
            };
            match woke {
                Woke::Fetched(fetched) => self.absorb(fetched).await?,
                Woke::Reassigned => {}
                Woke::TimedOut => return Ok(Vec::new()),
            }
        }
    }

    /// Moves the read position of a partition, e.g. to re-read it.
    pub fn seek(&mut self, partition: u32, offset: u64) -> Result<()> {
        let Some(state) = self.parts.get_mut(&partition) else {
            return Err(ClientError::InvalidArgument(format!(
                "partition {partition} is not assigned to this consumer"
            )));
        };
        state.fetch_at = offset;
        state.consumed = offset;
        state.fetching = None;
        state.retry_at = None;
        self.buffered.retain(|r| r.partition != partition);
        Ok(())
    }

    /// Commits, for every partition read, the offset after the last record `poll` returned.
    pub async fn commit(&mut self) -> Result<()> {
        let Some(m) = &self.membership else {
            return Err(ClientError::InvalidArgument(
                "offsets can only be committed by a consumer in a group".into(),
            ));
        };
        let offsets: Vec<(u32, u64)> = self
            .parts
            .iter()
            .filter(|(_, s)| s.committed != Some(s.consumed))
            .map(|(p, s)| (*p, s.consumed))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        if m.generation == 0 {
            m.rejoin.notify_one();
            return Err(ClientError::Fenced(format!(
                "member '{}' has no place in group '{}' now; it rejoins, commit again after the \
                 next poll",
                m.member_id, m.group
            )));
        }
        let committed = self
            .client
            .commit_member_offsets(&m.group, &self.topic, &m.member_id, m.generation, &offsets)
            .await;
        if let Err(err) = committed {
            // The group moved on (or the partition moved away): positions stay as they are, the
            // member rejoins now and the next poll takes up what the group gives it.
            if matches!(err, ClientError::Fenced(_)) {
                m.rejoin.notify_one();
            }
            return Err(err);
        }
        for (p, offset) in offsets {
            if let Some(s) = self.parts.get_mut(&p) {
                s.committed = Some(offset);
            }
        }
        Ok(())
    }

    /// Leaves the consumer group (so its partitions move to other members at once) and stops.
    ///
    /// Offsets are not committed here; call [`Consumer::commit`] first to keep progress.
    pub async fn close(mut self) -> Result<()> {
        match self.membership.take() {
            Some(m) => m.leave(&self.client, &self.topic).await,
            None => Ok(()),
        }
    }

    /// Takes up a grant of the group: reads its partitions from now on, and tells the heartbeats
    /// so, which lets the coordinator hand the partitions given up to their next readers.
    async fn adopt(&mut self, grant: Grant) -> Result<()> {
        self.assign(grant.partitions.clone(), grant.generation)
            .await?;
        if let Some(m) = &mut self.membership {
            m.generation = grant.generation;
            let reading = Grant {
                generation: grant.generation,
                partitions: self.parts.keys().copied().collect(),
            };
            if let Ok(mut adopted) = m.adopted.lock() {
                *adopted = reading;
            }
        }
        Ok(())
    }

    /// Adopts a new set of partitions: commits (as a member at `generation`, when it has one) and
    /// forgets the ones taken away, finds the starting offsets of the new ones.
    async fn assign(&mut self, next: Vec<u32>, generation: u64) -> Result<()> {
        let next: BTreeSet<u32> = next.into_iter().collect();
        let revoked: Vec<u32> = self
            .parts
            .keys()
            .filter(|p| !next.contains(p))
            .copied()
            .collect();
        let added: Vec<u32> = next
            .iter()
            .filter(|p| !self.parts.contains_key(p))
            .copied()
            .collect();
        if !revoked.is_empty() {
            if let Some(m) = &self.membership {
                let progress: Vec<(u32, u64)> = revoked
                    .iter()
                    .filter_map(|p| self.parts.get(p).map(|s| (*p, s)))
                    .filter(|(_, s)| s.committed != Some(s.consumed))
                    .map(|(p, s)| (p, s.consumed))
                    .collect();
                // The new owner starts from the last commit; handing over progress saves it from
                // re-reading, but failing to do so only causes duplicates, not loss. The member
                // still owns these partitions at the new generation until its next heartbeat says
                // it took that generation up. A member without a place (generation 0) commits
                // nothing: the partitions may be another's already.
                if !progress.is_empty() && generation != 0 {
                    if let Err(err) = self
                        .client
                        .commit_member_offsets(
                            &m.group,
                            &self.topic,
                            &m.member_id,
                            generation,
                            &progress,
                        )
                        .await
                    {
                        tracing::warn!(error = %err, "could not commit revoked partitions");
                    }
                }
            }
            for p in &revoked {
                self.parts.remove(p);
            }
            self.buffered.retain(|r| next.contains(&r.partition));
        }
        if !added.is_empty() {
            let group = self.membership.as_ref().map(|m| m.group.as_str());
            let starts =
                start_offsets(&self.client, &self.topic, group, self.config.from, &added).await?;
            for (p, (start, committed)) in added.into_iter().zip(starts) {
                self.parts.insert(
                    p,
                    PartitionState {
                        fetch_at: start,
                        consumed: start,
                        committed,
                        fetching: None,
                        retry_at: None,
                    },
                );
            }
        }
        Ok(())
    }

    /// Issues a long-polling fetch for every partition that has none in flight.
    fn start_fetches(&mut self) {
        for (&partition, state) in self.parts.iter_mut() {
            if state.fetching.is_some() {
                continue;
            }
            self.next_fetch_id += 1;
            let id = self.next_fetch_id;
            state.fetching = Some(id);
            let client = self.client.clone();
            let topic = self.topic.clone();
            let offset = state.fetch_at;
            let max_bytes = self.config.max_bytes;
            let max_wait = self.config.max_wait;
            let wait_ms = u32::try_from(max_wait.as_millis()).unwrap_or(u32::MAX);
            let retry_at = state.retry_at.take();
            // Each fetch runs as its own task, which reads the whole answer as it arrives whether
            // or not `poll` is running: an answer left unread would hold the flow-control window
            // of the HTTP/2 connection this client shares for every call to that node, and a
            // commit or heartbeat waiting behind it would never complete.
            let task = AbortOnDrop(tokio::spawn(async move {
                if let Some(at) = retry_at {
                    tokio::time::sleep_until(at).await;
                }
                let started = Instant::now();
                let result = client
                    .fetch(&topic, partition, offset, max_bytes, wait_ms)
                    .await;
                // A server that answers an empty fetch at once would otherwise be polled in a
                // tight loop.
                let floor = max_wait.min(Duration::from_millis(100));
                if matches!(&result, Ok(r) if r.batches.is_empty()) && started.elapsed() < floor {
                    tokio::time::sleep_until(started + floor).await;
                }
                result
            }));
            self.in_flight.push(
                async move {
                    let result = task.await.unwrap_or_else(|e| {
                        Err(ClientError::Status {
                            code: Code::Cancelled,
                            message: format!("fetch of partition {partition} ended: {e}"),
                        })
                    });
                    Fetched {
                        partition,
                        id,
                        result,
                    }
                }
                .boxed(),
            );
        }
    }

    /// Turns a completed fetch into buffered records and advances the partition's fetch position.
    async fn absorb(&mut self, fetched: Fetched) -> Result<()> {
        let Some(state) = self.parts.get_mut(&fetched.partition) else {
            return Ok(());
        };
        if state.fetching != Some(fetched.id) {
            return Ok(());
        }
        state.fetching = None;
        let resp = match fetched.result {
            Ok(resp) => resp,
            Err(err) if err.code() == Code::OutOfRange => {
                return self.reset_out_of_range(fetched.partition, err).await;
            }
            Err(err) => return Err(err),
        };
        for stored in resp.batches {
            let records = weir_proto::batch::decode(&stored.batch).map_err(|e| {
                ClientError::CorruptBatch {
                    topic: self.topic.clone(),
                    partition: fetched.partition,
                    base_offset: stored.base_offset,
                    reason: e.to_string(),
                }
            })?;
            for (i, record) in records.into_iter().enumerate() {
                let offset = stored.base_offset + i as u64;
                // A batch may begin before the offset asked for.
                if offset < state.fetch_at {
                    continue;
                }
                state.fetch_at = offset + 1;
                self.buffered.push_back(ConsumedRecord {
                    partition: fetched.partition,
                    offset,
                    key: record.key,
                    value: record.value,
                    timestamp_ms: record.timestamp_ms,
                    headers: record.headers,
                });
            }
        }
        Ok(())
    }

    /// Handles a fetch offset outside the stored range. Below the earliest offset the records are
    /// gone (retention deleted them) and reading resumes at the earliest one. Past the end the
    /// position stays and the fetch is retried shortly: a leader that has just taken over may not
    /// have caught up yet, and moving back would re-read records (and later commit an offset below
    /// one already committed).
    async fn reset_out_of_range(&mut self, partition: u32, err: ClientError) -> Result<()> {
        let range = self.client.list_offsets(&self.topic, partition).await?;
        let Some(state) = self.parts.get_mut(&partition) else {
            return Ok(());
        };
        if state.fetch_at < range.earliest {
            tracing::warn!(
                topic = %self.topic,
                partition,
                from = state.fetch_at,
                to = range.earliest,
                error = %err,
                "offset below the earliest stored, skipping to it"
            );
            state.fetch_at = range.earliest;
            state.consumed = state.consumed.max(range.earliest);
        } else {
            tracing::debug!(
                topic = %self.topic,
                partition,
                at = state.fetch_at,
                latest = range.latest,
                error = %err,
                "offset past the end of the partition, fetching again"
            );
            state.retry_at = Some(Instant::now() + PAST_THE_END_RETRY);
        }
        Ok(())
    }

    /// Hands out up to `max` buffered records, moving the consumed positions past them.
    fn drain(&mut self, max: usize) -> Vec<ConsumedRecord> {
        let n = max.min(self.buffered.len());
        let out: Vec<ConsumedRecord> = self.buffered.drain(..n).collect();
        for r in &out {
            if let Some(state) = self.parts.get_mut(&r.partition) {
                // Never backwards: records buffered before a skip past deleted ones come first.
                state.consumed = state.consumed.max(r.offset + 1);
            }
        }
        out
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        // A consumer dropped without `close` still leaves its group, so its partitions do not wait
        // out the session timeout; this needs a runtime to run on.
        if let Some(m) = self.membership.take() {
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let client = self.client.clone();
                let topic = self.topic.clone();
                handle.spawn(async move {
                    let _ = m.leave(&client, &topic).await;
                });
            }
        }
    }
}

/// Starting offset (and committed offset, if any) of each newly read partition.
async fn start_offsets(
    client: &Client,
    topic: &str,
    group: Option<&str>,
    from: StartFrom,
    partitions: &[u32],
) -> Result<Vec<(u64, Option<u64>)>> {
    let committed = match group {
        Some(group) => client.fetch_committed(group, topic).await?,
        None => BTreeMap::new(),
    };
    let lookups = partitions.iter().map(|&p| {
        let committed = committed.get(&p).copied();
        async move {
            let start = match (committed, from) {
                (Some(offset), _) => offset,
                (None, StartFrom::Offset(n)) => n,
                (None, StartFrom::Earliest) => client.list_offsets(topic, p).await?.earliest,
                (None, StartFrom::Latest) => client.list_offsets(topic, p).await?.latest,
            };
            Ok((start, committed))
        }
    });
    join_all(lookups).await.into_iter().collect()
}

/// Sorted, deduplicated partition list, so equal assignments compare equal.
fn normalize(mut parts: Vec<u32>) -> Vec<u32> {
    parts.sort_unstable();
    parts.dedup();
    parts
}

/// What the heartbeat task of a member works with.
struct Heartbeats {
    client: Client,
    group: String,
    topic: String,
    member_id: String,
    config: ConsumerConfig,
    /// Where grants of the coordinator are published for `poll`.
    assignment: watch::Sender<Grant>,
    /// What `poll` has taken up, reported to the coordinator.
    adopted: Arc<Mutex<Grant>>,
    /// Asks for a heartbeat before the next tick.
    rejoin: Arc<Notify>,
}

/// Keeps the member in its group and publishes grant changes until stopped. `last_ok` is when
/// the last heartbeat the coordinator answered was sent.
async fn heartbeat(hb: Heartbeats, mut stop: oneshot::Receiver<()>, mut last_ok: Instant) {
    let session = hb.config.session_timeout;
    let mut ticker = tokio::time::interval(hb.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; the consumer already sent its first heartbeat.
    ticker.tick().await;
    let mut fenced = false;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => {}
            () = hb.rejoin.notified() => {}
        }
        let report = hb.adopted.lock().map(|g| g.clone()).unwrap_or_default();
        let sent = Instant::now();
        // Not interrupted by `stop`: the request may already be on its way, and leaving must wait
        // until it has been answered. It is bounded by the session, though: the coordinator gives
        // this member's partitions away once it has not heard from it for that long (counted from
        // when it received the last heartbeat, which was sent after `last_ok`).
        let deadline = if fenced {
            sent + session
        } else {
            last_ok + session
        };
        let call = hb.client.group_heartbeat(
            &hb.group,
            &hb.topic,
            &hb.member_id,
            session,
            report.generation,
            &report.partitions,
        );
        let resp = tokio::time::timeout_at(deadline, call).await;
        match resp {
            Ok(Ok(resp)) => {
                last_ok = sent;
                fenced = false;
                publish(
                    &hb.assignment,
                    Grant {
                        generation: resp.generation,
                        partitions: normalize(resp.partitions),
                    },
                );
            }
            Ok(Err(err)) if Instant::now() < deadline => {
                tracing::warn!(group = %hb.group, topic = %hb.topic, error = %err, "group heartbeat failed");
            }
            _ => {
                if !fenced {
                    tracing::warn!(
                        group = %hb.group,
                        topic = %hb.topic,
                        "no heartbeat answered for the session timeout: dropping every partition"
                    );
                }
                fenced = true;
                publish(&hb.assignment, Grant::default());
            }
        }
    }
}

/// Publishes `next` to `poll` when it differs from the current grant.
fn publish(assignment: &watch::Sender<Grant>, next: Grant) {
    assignment.send_if_modified(|current| {
        if *current == next {
            false
        } else {
            *current = next;
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_positions_parse() {
        assert_eq!("earliest".parse(), Ok(StartFrom::Earliest));
        assert_eq!("LATEST".parse(), Ok(StartFrom::Latest));
        assert_eq!("42".parse(), Ok(StartFrom::Offset(42)));
        assert!("-1".parse::<StartFrom>().is_err());
        assert!("soon".parse::<StartFrom>().is_err());
        assert_eq!(StartFrom::Offset(7).to_string(), "7");
    }

    proptest::proptest! {
        #[test]
        fn start_positions_print_and_parse_back(n in proptest::prelude::any::<u64>(), text in ".{0,24}") {
            for s in [StartFrom::Earliest, StartFrom::Latest, StartFrom::Offset(n)] {
                proptest::prop_assert_eq!(s.to_string().parse::<StartFrom>(), Ok(s));
            }
            // Any other text is an offset, a name, or an error that quotes it.
            if let Err(e) = text.parse::<StartFrom>() {
                proptest::prop_assert!(e.contains(&format!("{text:?}")), "{}", e);
            }
        }
    }
}
