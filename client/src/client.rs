//! [`Client`]: one handle to a Weir cluster.
//!
//! Catalog and consumer-group calls go to any node (the seed first, then other nodes the client has
//! learned about when the seed is down). Produce, fetch and offset lookups go to the partition's
//! leader, found through the [`crate::routing`] cache. Every call retries transient failures (no
//! leader, node down, leadership moved) until [`ClientConfig::retry_for`] has passed, which is what
//! lets a producer ride through the loss of a leader.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};
use weir_proto::v1::cluster_client::ClusterClient;
use weir_proto::v1::log_client::LogClient;
use weir_proto::v1::{
    Acks, CommitOffsetsRequest, CreateTopicRequest, DeleteTopicRequest, DescribeTopicRequest,
    FetchCommittedRequest, FetchRequest, FetchResponse, GroupHeartbeatRequest,
    GroupHeartbeatResponse, LeaveGroupRequest, ListOffsetsRequest, ListOffsetsResponse,
    ListTopicsRequest, PartitionOffset, ProduceRequest, StatusRequest, StatusResponse, TopicInfo,
};

use crate::error::{is_transport, ClientError, Result};
use crate::pool::{endpoint, normalize, Pool};
use crate::retry::{classify, is_ambiguous, Attempts, Verdict};
use crate::routing::{Route, Routes};

/// Largest gRPC message the client sends or accepts; fetch responses carry whole batches and can be
/// far larger than tonic's 4 MiB default.
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 * 1024 * 1024;

/// How a [`Client`] talks to the cluster.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// How long a request is retried after transient failures before the error is returned.
    pub retry_for: Duration,
    /// How long to wait for a TCP connection to a node.
    pub connect_timeout: Duration,
    /// How long one attempt may take before it is abandoned and retried (fetches get their long-poll
    /// wait on top).
    pub request_timeout: Duration,
    /// How channels to nodes are made; None connects over the OS's TCP.
    pub connector: Option<crate::pool::Connector>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            retry_for: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            connector: None,
        }
    }
}

/// What a new topic should look like; see [`Client::create_topic`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTopic {
    /// Topic name.
    pub name: String,
    /// Number of partitions (each its own Raft group).
    pub partitions: u32,
    /// Replicas per partition.
    pub replicas: u32,
    /// Records older than this are deleted; `None` keeps them forever.
    pub retention_ms: Option<u64>,
    /// Each partition is trimmed to about this size; `None` means no limit.
    pub retention_bytes: Option<u64>,
    /// How SQL reads the records as rows; `None` reads each record as bytes.
    pub format: Option<weir_proto::format::TopicFormat>,
}

impl NewTopic {
    /// A topic kept forever, with the given partition and replica counts.
    pub fn new(name: impl Into<String>, partitions: u32, replicas: u32) -> Self {
        NewTopic {
            name: name.into(),
            partitions,
            replicas,
            retention_ms: None,
            retention_bytes: None,
            format: None,
        }
    }

    /// Deletes records older than `ms` milliseconds.
    pub fn retention_ms(mut self, ms: u64) -> Self {
        self.retention_ms = Some(ms);
        self
    }

    /// Trims each partition to about `bytes`.
    pub fn retention_bytes(mut self, bytes: u64) -> Self {
        self.retention_bytes = Some(bytes);
        self
    }

    /// Declares how SQL reads the records as rows.
    pub fn format(mut self, format: weir_proto::format::TopicFormat) -> Self {
        self.format = Some(format);
        self
    }
}

/// A cheap-to-clone handle to a Weir cluster, shared by producers and consumers.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    seed: String,
    config: ClientConfig,
    pool: Pool,
    routes: Routes,
}

impl Client {
    /// A client for the cluster that `addr` (`HOST:PORT`) belongs to, with default settings.
    ///
    /// Connections are made lazily: an unreachable server shows up as the error of the first call.
    pub async fn connect(addr: impl AsRef<str>) -> Result<Client> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// A client for the cluster that `addr` belongs to, with explicit settings.
    pub async fn connect_with(addr: impl AsRef<str>, config: ClientConfig) -> Result<Client> {
        let seed = normalize(addr.as_ref());
        endpoint(&seed)?;
        let pool = Pool::new(&seed, config.connect_timeout, config.connector.clone());
        // Creating the seed's channel up front checks the address once, here.
        pool.channel(&seed)?;
        Ok(Client {
            inner: Arc::new(Inner {
                seed,
                config,
                pool,
                routes: Routes::default(),
            }),
        })
    }

    /// The address the client was created with.
    pub fn seed(&self) -> &str {
        &self.inner.seed
    }

    /// The node channels shared by every request of this client.
    pub(crate) fn pool(&self) -> &Pool {
        &self.inner.pool
    }

    /// The settings the client was created with.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Members of the cluster with their liveness and the Raft groups they hold and lead.
    pub async fn cluster_status(&self) -> Result<StatusResponse> {
        let timeout = self.inner.config.request_timeout;
        let status = self
            .call_any(|ch| async move {
                ClusterClient::new(ch)
                    .status(request(StatusRequest {}, timeout))
                    .await
            })
            .await?;
        for m in &status.members {
            self.inner.pool.learn(&normalize(&m.addr));
        }
        Ok(status)
    }

    /// Creates a topic and returns its metadata; `ALREADY_EXISTS` if the name is taken.
    pub async fn create_topic(&self, topic: &NewTopic) -> Result<TopicInfo> {
        if topic.name.is_empty() {
            return Err(ClientError::InvalidArgument(
                "topic name must not be empty".into(),
            ));
        }
        let req = CreateTopicRequest {
            name: topic.name.clone(),
            partitions: topic.partitions,
            replicas: topic.replicas,
            retention_ms: topic.retention_ms.unwrap_or(0),
            retention_bytes: topic.retention_bytes.unwrap_or(0),
            format: topic.format.as_ref().map(|f| f.to_proto()),
        };
        let timeout = self.inner.config.request_timeout;
        // A retry after a lost answer may find the topic created by the first attempt.
        let created = self
            .call_any_tolerating(Some(Code::AlreadyExists), |ch| {
                let req = req.clone();
                async move { log(ch).create_topic(request(req, timeout)).await }
            })
            .await?;
        let info = match created {
            Some(info) => info,
            None => self.describe_topic(&topic.name).await?,
        };
        self.remember(&info);
        Ok(info)
    }

    /// Deletes a topic and its records; `NOT_FOUND` if there is no such topic.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let timeout = self.inner.config.request_timeout;
        // A retry after a lost answer may find the topic already deleted by the first attempt.
        self.call_any_tolerating(Some(Code::NotFound), |ch| {
            let req = DeleteTopicRequest {
                name: name.to_string(),
            };
            async move { log(ch).delete_topic(request(req, timeout)).await }
        })
        .await?;
        self.inner.routes.forget(name);
        Ok(())
    }

    /// Every topic of the cluster.
    pub async fn list_topics(&self) -> Result<Vec<TopicInfo>> {
        let timeout = self.inner.config.request_timeout;
        let resp = self
            .call_any(|ch| async move {
                log(ch)
                    .list_topics(request(ListTopicsRequest {}, timeout))
                    .await
            })
            .await?;
        Ok(resp.topics)
    }

    /// A topic's configuration and, per partition, its leader, replicas and offsets.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let timeout = self.inner.config.request_timeout;
        let info = self
            .call_any(|ch| {
                let req = DescribeTopicRequest {
                    name: name.to_string(),
                };
                async move { log(ch).describe_topic(request(req, timeout)).await }
            })
            .await?;
        self.remember(&info);
        Ok(info)
    }

    /// Number of partitions of a topic, from the cache or the cluster.
    pub async fn partition_count(&self, topic: &str) -> Result<u32> {
        match self.inner.routes.partitions(topic) {
            Some(n) => Ok(n),
            None => Ok(self.describe_topic(topic).await?.partitions),
        }
    }

    /// Appends one encoded record batch (see [`weir_proto::batch::BatchBuilder`]) to a partition;
    /// returns the offset of its first record and its record count.
    ///
    /// The offset is `None` when, with [`Acks::Leader`], the leader acknowledged the batch before
    /// the offsets were assigned (they are assigned when the batch commits).
    ///
    /// A batch whose answer was lost in a failure is sent again, so a record may be stored twice
    /// (at-least-once delivery).
    pub async fn produce(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
    ) -> Result<(Option<u64>, u32)> {
        self.produce_idempotent(topic, partition, batch, acks, None)
            .await
    }

    /// Like [`Client::produce`], naming the batch as `(producer_id, sequence)` so that a retry of a
    /// batch the cluster already stored is answered with its original offsets, not stored twice.
    pub async fn produce_idempotent(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        acks: Acks,
        producer: Option<(u64, u64)>,
    ) -> Result<(Option<u64>, u32)> {
        let timeout = self.inner.config.request_timeout;
        let (producer_id, sequence) = producer.unwrap_or((0, 0));
        let req = ProduceRequest {
            topic: topic.to_string(),
            partition,
            batch,
            acks: acks as i32,
            producer_id,
            sequence,
            jumping: false,
            producer_epoch: 0,
        };
        let resp = self
            .call_leader(topic, partition, |ch| {
                let req = req.clone();
                async move { log(ch).produce(request(req, timeout)).await }
            })
            .await?;
        let base = (!resp.offsets_pending).then_some(resp.base_offset);
        Ok((base, resp.count))
    }

    /// Appends one encoded batch as batch `sequence` of the deterministic producer `producer_id`
    /// (see `ProduceRequest.jumping`) at `epoch`: written only when `sequence` is above the last
    /// number that producer wrote to the partition, refused ([`ClientError::Fenced`]) when the
    /// partition has seen a later epoch of the producer. Returns `None` when written, else that last number. An
    /// empty `batch` only asks for it. Retries are safe: a batch written before a lost answer is
    /// answered as a duplicate.
    pub async fn produce_numbered(
        &self,
        topic: &str,
        partition: u32,
        batch: Bytes,
        (producer_id, epoch): (u64, u64),
        sequence: u64,
    ) -> Result<Option<u64>> {
        let timeout = self.inner.config.request_timeout;
        let req = ProduceRequest {
            topic: topic.to_string(),
            partition,
            batch,
            acks: Acks::All as i32,
            producer_id,
            sequence,
            jumping: true,
            producer_epoch: epoch,
        };
        let resp = self
            .call_leader(topic, partition, |ch| {
                let req = req.clone();
                async move { log(ch).produce(request(req, timeout)).await }
            })
            .await?;
        Ok(resp.duplicate.then_some(resp.last_sequence))
    }

    /// Reads whole batches of a partition from `offset`, waiting up to `max_wait_ms` for records
    /// when there are none yet.
    pub async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
        max_wait_ms: u32,
    ) -> Result<FetchResponse> {
        let timeout = self.inner.config.request_timeout + Duration::from_millis(max_wait_ms.into());
        let req = FetchRequest {
            topic: topic.to_string(),
            partition,
            offset,
            max_bytes,
            max_wait_ms,
        };
        self.call_leader(topic, partition, |ch| {
            let req = req.clone();
            async move { log(ch).fetch(request(req, timeout)).await }
        })
        .await
    }

    /// The earliest offset still stored and the next offset to be written (the high watermark).
    pub async fn list_offsets(&self, topic: &str, partition: u32) -> Result<ListOffsetsResponse> {
        let timeout = self.inner.config.request_timeout;
        let req = ListOffsetsRequest {
            topic: topic.to_string(),
            partition,
            epoch: None,
        };
        self.call_leader(topic, partition, |ch| {
            let req = req.clone();
            async move { log(ch).list_offsets(request(req, timeout)).await }
        })
        .await
    }

    /// Stores a consumer group's positions: for each partition, the next offset to read.
    ///
    /// This commits as a standalone client, outside the group's membership (as Kafka's simple
    /// consumer does); members of the group commit with [`Client::commit_member_offsets`].
    pub async fn commit_offsets(
        &self,
        group: &str,
        topic: &str,
        offsets: &[(u32, u64)],
    ) -> Result<()> {
        self.commit(group, topic, "", 0, offsets).await
    }

    /// Stores positions as `member_id` of the group at `generation`; refused with
    /// [`ClientError::Fenced`] when that generation is no longer the group's or a partition is not
    /// the member's.
    pub async fn commit_member_offsets(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        generation: u64,
        offsets: &[(u32, u64)],
    ) -> Result<()> {
        if member_id.is_empty() || generation == 0 {
            return Err(ClientError::InvalidArgument(
                "a member's commit needs its member id and a generation".into(),
            ));
        }
        self.commit(group, topic, member_id, generation, offsets)
            .await
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        generation: u64,
        offsets: &[(u32, u64)],
    ) -> Result<()> {
        let timeout = self.inner.config.request_timeout;
        let req = CommitOffsetsRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            offsets: offsets
                .iter()
                .map(|&(partition, offset)| PartitionOffset { partition, offset })
                .collect(),
            member_id: member_id.to_string(),
            generation,
        };
        self.call_any(|ch| {
            let req = req.clone();
            async move { log(ch).commit_offsets(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }

    /// A consumer group's committed positions by partition; partitions never committed are absent.
    pub async fn fetch_committed(&self, group: &str, topic: &str) -> Result<BTreeMap<u32, u64>> {
        let timeout = self.inner.config.request_timeout;
        let req = FetchCommittedRequest {
            group: group.to_string(),
            topic: topic.to_string(),
        };
        let resp = self
            .call_any(|ch| {
                let req = req.clone();
                async move { log(ch).fetch_committed(request(req, timeout)).await }
            })
            .await?;
        Ok(resp
            .offsets
            .into_iter()
            .map(|p| (p.partition, p.offset))
            .collect())
    }

    /// Keeps `member_id` in the consumer group and returns the partitions it may read.
    ///
    /// `generation` is the generation whose assignment the member has taken up (0 when joining)
    /// and `owned` the partitions it reads now: a partition moves to another member only once its
    /// reader has reported taking up a generation without it.
    pub async fn group_heartbeat(
        &self,
        group: &str,
        topic: &str,
        member_id: &str,
        session_timeout: Duration,
        generation: u64,
        owned: &[u32],
    ) -> Result<GroupHeartbeatResponse> {
        let timeout = self.inner.config.request_timeout;
        let req = GroupHeartbeatRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            member_id: member_id.to_string(),
            session_timeout_ms: u32::try_from(session_timeout.as_millis()).unwrap_or(u32::MAX),
            generation,
            owned: owned.to_vec(),
        };
        self.call_any(|ch| {
            let req = req.clone();
            async move { log(ch).group_heartbeat(request(req, timeout)).await }
        })
        .await
    }

    /// Removes `member_id` from the group so its partitions move to other members at once.
    pub async fn leave_group(&self, group: &str, topic: &str, member_id: &str) -> Result<()> {
        let timeout = self.inner.config.request_timeout;
        let req = LeaveGroupRequest {
            group: group.to_string(),
            topic: topic.to_string(),
            member_id: member_id.to_string(),
        };
        self.call_any(|ch| {
            let req = req.clone();
            async move { log(ch).leave_group(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }

    /// Caches a topic's metadata and learns the addresses of its leaders.
    fn remember(&self, info: &TopicInfo) {
        for p in &info.partition_info {
            self.inner.pool.learn(&normalize(&p.leader_addr));
        }
        self.inner.routes.update(info.clone());
    }

    /// Sends a request any node can answer, retrying transient failures.
    pub(crate) async fn call_any<T, F, Fut>(&self, call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        match self.call_any_tolerating(None, call).await? {
            Some(resp) => Ok(resp),
            // Nothing is tolerated here, so every failure already came back as an error.
            None => Err(ClientError::Status {
                code: Code::Internal,
                message: "request was neither answered nor failed".into(),
            }),
        }
    }

    /// Like [`Client::call_any`], but answers `Ok(None)` when an attempt fails with `tolerate`
    /// after an earlier attempt failed in a way that may have applied it — the non-idempotent
    /// catalog calls use this to recognise their own earlier success.
    pub(crate) async fn call_any_tolerating<T, F, Fut>(
        &self,
        tolerate: Option<Code>,
        mut call: F,
    ) -> Result<Option<T>>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let mut attempts = Attempts::new(self.inner.config.retry_for);
        // The node a "not leader" answer named: the next attempt goes there rather than back to
        // a node that would forward it to the same follower again.
        let mut hinted: Option<String> = None;
        loop {
            let addr = hinted.take().unwrap_or_else(|| self.inner.pool.any_node());
            attempts.begin();
            let status = match call(self.inner.pool.channel(&addr)?).await {
                Ok(resp) => return Ok(Some(resp.into_inner())),
                Err(status) => status,
            };
            if attempts.ambiguous && Some(status.code()) == tolerate && !is_transport(&status) {
                return Ok(None);
            }
            let err = ClientError::from_status(&addr, &status);
            match classify(&status) {
                Verdict::Fail => return Err(err),
                Verdict::NotLeader(hint) => {
                    if let Some(leader) = hint {
                        let leader = normalize(&leader);
                        self.inner.pool.learn(&leader);
                        hinted = Some(leader);
                    }
                }
                Verdict::Unavailable => {
                    if is_transport(&status) {
                        self.inner.pool.suspect(&addr);
                    }
                    attempts.ambiguous |= is_ambiguous(&status);
                }
            }
            attempts.pause(err).await?;
        }
    }

    /// Sends a partition request to the partition's leader, following leadership as it moves.
    async fn call_leader<T, F, Fut>(&self, topic: &str, partition: u32, mut call: F) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let mut attempts = Attempts::new(self.inner.config.retry_for);
        loop {
            let addr = self.leader_or_any(topic, partition).await?;
            attempts.begin();
            let status = match call(self.inner.pool.channel(&addr)?).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => status,
            };
            let err = ClientError::from_status(&addr, &status);
            match classify(&status) {
                Verdict::Fail => return Err(err),
                Verdict::NotLeader(Some(leader)) => {
                    let leader = normalize(&leader);
                    self.inner.pool.learn(&leader);
                    self.inner.routes.set_leader(topic, partition, &leader);
                }
                Verdict::NotLeader(None) => self.inner.routes.mark_stale(topic),
                Verdict::Unavailable => {
                    if is_transport(&status) {
                        self.inner.pool.suspect(&addr);
                    }
                    self.inner.routes.mark_stale(topic);
                }
            }
            attempts.pause(err).await?;
        }
    }

    /// The partition's leader if it is known and not recently failed, otherwise any node (which
    /// forwards to the leader).
    async fn leader_or_any(&self, topic: &str, partition: u32) -> Result<String> {
        let mut route = self.inner.routes.route(topic, partition);
        if route == Route::Refresh {
            match self.describe_once(topic).await {
                Ok(info) => {
                    self.remember(&info);
                    route = self.inner.routes.route(topic, partition);
                }
                // The topic is gone: no retry can help.
                Err(err) if err.code() == Code::NotFound => return Err(err),
                // Metadata is only an optimisation; any node can take the request itself.
                Err(err) => {
                    tracing::debug!(topic, error = %err, "metadata refresh failed");
                    route = Route::NoLeader;
                }
            }
        }
        Ok(match route {
            Route::Leader(addr) if !self.inner.pool.is_suspect(&addr) => addr,
            _ => self.inner.pool.any_node(),
        })
    }

    /// One `DescribeTopic` attempt, without retries: the caller's own retry loop covers failures.
    async fn describe_once(&self, topic: &str) -> Result<TopicInfo> {
        let addr = self.inner.pool.any_node();
        let req = DescribeTopicRequest {
            name: topic.to_string(),
        };
        let timeout = self.inner.config.request_timeout;
        match log(self.inner.pool.channel(&addr)?)
            .describe_topic(request(req, timeout))
            .await
        {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) => {
                if is_transport(&status) {
                    self.inner.pool.suspect(&addr);
                }
                Err(ClientError::from_status(&addr, &status))
            }
        }
    }
}

/// A `Log` stub on a channel, with the message size limits raised for whole-batch fetches.
fn log(channel: Channel) -> LogClient<Channel> {
    LogClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Wraps a message with a per-attempt deadline, so a node that accepted the connection but hangs
/// does not stall the retry loop.
pub(crate) fn request<T>(message: T, timeout: Duration) -> Request<T> {
    let mut req = Request::new(message);
    req.set_timeout(timeout);
    req
}
