//! The `Log` gRPC service: topics, produce, fetch, offsets and consumer groups.
//!
//! Any node answers any request. Topic changes go through the metadata leader, partition reads
//! and writes through the partition's leader, offsets and group membership through the leader of the
//! offsets group; a node that does not lead forwards the call once.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

use openraft::async_runtime::WatchReceiver;

use tonic::{Request, Response, Status};
use weir_proto::batch;
use weir_proto::kafka_batch;
use weir_proto::v1::log_client::LogClient;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::*;
use weir_storage::catalog::{Catalog, GroupInfo, MetaCommand, MetaResponse};
use weir_storage::engine::on_blocking_thread;
use weir_storage::partition::{self, PartitionState};
use weir_storage::types::ProducerSeq;
use weir_storage::{GroupWatch, Request as Cmd, Response as Resp};

use crate::cluster::NodeContext;
use crate::error::{NodeError, NodeResult};
use crate::groups::GroupHandle;
use crate::leader::{self, forwarded, was_forwarded};
use crate::log::coordinator::{Coordinator, Heartbeat, Leadership};
use crate::log::produce_order::ProduceOrder;
use crate::log::read;
use crate::metrics;
use crate::placement;

/// How long `DescribeTopic` waits for a partition's leader to tell its offsets.
const DESCRIBE_OFFSETS_WAIT: Duration = Duration::from_secs(2);

/// Largest batch a producer may send (Kafka's `message.max.bytes` applies per batch too).
pub const MAX_BATCH_BYTES: usize = 8 << 20;
/// Most partitions a topic may have.
const MAX_PARTITIONS: u32 = 4096;
/// Session timeout of a group member that asks for none.
const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest session timeout a member may ask for. A coordinator that takes over waits this long
/// before handing out partitions, since a member of its predecessor may read that long without
/// reaching it (like Kafka's `group.max.session.timeout.ms`).
pub const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the node looks whether it has become the offsets group's leader.
const TAKEOVER_POLL: Duration = Duration::from_millis(100);

/// Where a request for a group is served.
enum Serve {
    /// This node leads the group.
    Local(Arc<GroupHandle>),
    /// Forward to this node, which leads the group or knows who does.
    Forward(LogClient<tonic::transport::Channel>),
}

/// This node's current leadership of the offsets group, as (term, from when its coordinator may
/// hand out partitions nobody reports owning): worked out once per term.
type Takeover = Arc<Mutex<Option<(u64, Instant)>>>;

/// The `Log` service.
pub struct LogService {
    ctx: NodeContext,
    coordinator: Coordinator,
    takeover: Takeover,
    order: ProduceOrder,
}

impl LogService {
    /// The service over `ctx`.
    pub fn new(ctx: NodeContext) -> LogService {
        let takeover = Takeover::default();
        tokio::spawn(watch_takeover(ctx.clone(), Arc::downgrade(&takeover)));
        LogService {
            ctx,
            coordinator: Coordinator::start(),
            takeover,
            order: ProduceOrder::default(),
        }
    }

    /// Confirms that this node leads the offsets group (by lease or with a quorum), so that a
    /// deposed leader's coordinator never answers: its members retry at the new leader.
    async fn leadership(&self, h: &GroupHandle, catalog: &Catalog) -> NodeResult<Leadership> {
        let confirmation = leader::linearizable(h, catalog).await?;
        let term = h.raft.metrics().borrow_watched().current_term;
        // The term read must still be this leader's: re-check the lease it relied on.
        confirmation.confirm(h).await?;
        let known = self
            .takeover
            .lock()
            .map_err(|_| NodeError::Internal("takeover lock poisoned".into()))?
            .filter(|(seen, _)| *seen == term);
        let assign_after = match known {
            Some((_, at)) => at,
            // The watcher has not seen this term yet: counting from now only waits longer.
            None => {
                let at = hold_until(h, term, Instant::now()).await?;
                let mut t = self
                    .takeover
                    .lock()
                    .map_err(|_| NodeError::Internal("takeover lock poisoned".into()))?;
                match *t {
                    Some((seen, earlier)) if seen == term => earlier,
                    _ => t.insert((term, at)).1,
                }
            }
        };
        Ok(Leadership { term, assign_after })
    }

    /// Seeds the order of producer `p`'s batches on the partition led through `h`, at the first
    /// batch of it this leader sees in `term`: where the producer stands is in the applied state
    /// once the leader has applied everything before its term (a leader just elected takes no
    /// write before that anyway).
    async fn seed_order(&self, h: &GroupHandle, p: ProducerSeq, term: u64) -> NodeResult<()> {
        leader::term_applied_within(h, read::TERM_APPLIED_WAIT).await?;
        let engine = self.ctx.engine.clone();
        let group = h.id;
        let next = on_blocking_thread(move || {
            weir_storage::state_machine::next_sequence(
                &engine,
                group,
                p.producer_id,
                p.epoch,
                p.counted,
            )
        })
        .await?;
        self.order.seed(group, p.producer_id, term, next);
        Ok(())
    }

    fn catalog(&self) -> NodeResult<Arc<Catalog>> {
        self.ctx.registry.catalog()
    }

    fn leader_client(&self) -> NodeResult<LogClient<tonic::transport::Channel>> {
        Ok(LogClient::new(
            self.ctx.peers.channel(&self.ctx.metadata_leader_addr()?)?,
        ))
    }

    /// A client of `addr` for forwarding.
    fn client(&self, addr: &str) -> NodeResult<LogClient<tonic::transport::Channel>> {
        Ok(LogClient::new(self.ctx.peers.channel(addr)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    /// The partition's group, or `NotFound`.
    fn partition(&self, catalog: &Catalog, topic: &str, p: u32) -> NodeResult<GroupInfo> {
        let t = catalog
            .topics
            .get(topic)
            .ok_or_else(|| NodeError::NotFound(catalog.no_topic(topic)))?;
        if p as usize >= t.groups.len() {
            return Err(NodeError::NotFound(format!(
                "topic '{topic}' has {} partitions; partition {p} does not exist",
                t.groups.len()
            )));
        }
        catalog
            .partition_group(topic, p)
            .cloned()
            .ok_or_else(|| NodeError::Internal(format!("partition {p} of '{topic}' has no group")))
    }

    /// Serves locally when this node leads `group`; otherwise a client of the node to forward to.
    fn serve(
        &self,
        catalog: &Catalog,
        group: &GroupInfo,
        was_forwarded: bool,
    ) -> NodeResult<Serve> {
        Ok(
            match self.ctx.target(catalog, group, was_forwarded, false)? {
                leader::Target::Local(h) => Serve::Local(h),
                leader::Target::Forward(addr) => Serve::Forward(self.client(&addr)?),
            },
        )
    }

    fn topic_info(&self, catalog: &Catalog, name: &str) -> NodeResult<TopicInfo> {
        let t = catalog
            .topics
            .get(name)
            .ok_or_else(|| NodeError::NotFound(catalog.no_topic(name)))?;
        let led_groups = crate::cluster::led_groups(&self.ctx);
        let mut parts = Vec::new();
        for (i, g) in t.groups.iter().enumerate() {
            let info = catalog.groups.get(g);
            let led = led_groups.get(g).map(|(n, r)| (*n, r));
            let (leader, earliest, latest, voters, max_lag, leader_epoch) = match led {
                Some((n, r)) => (
                    n,
                    r.earliest_offset,
                    r.latest_offset,
                    r.voters.clone(),
                    r.max_lag,
                    r.term,
                ),
                None => (0, 0, 0, Vec::new(), 0, 0),
            };
            parts.push(PartitionInfo {
                partition: i as u32,
                group_id: *g,
                leader,
                leader_addr: catalog
                    .nodes
                    .get(&leader)
                    .map(|n| n.addr.clone())
                    .unwrap_or_default(),
                replicas: info.map(|i| i.replicas.clone()).unwrap_or_default(),
                earliest_offset: earliest,
                latest_offset: latest,
                voters,
                max_lag,
                leader_epoch,
            });
        }
        Ok(TopicInfo {
            name: t.name.clone(),
            partitions: t.groups.len() as u32,
            replicas: t.replicas,
            retention_ms: t.retention_ms,
            retention_bytes: t.retention_bytes,
            partition_info: parts,
            format: t.format.as_ref().map(|f| f.to_proto()),
        })
    }

    fn offsets_group(&self, catalog: &Catalog) -> NodeResult<GroupInfo> {
        catalog
            .offsets_group
            .and_then(|g| catalog.groups.get(&g))
            .cloned()
            .ok_or_else(|| NodeError::Unavailable("the offsets group is not created yet".into()))
    }
}

/// From when a coordinator that began leading the offsets group in `term` at `since` may hand out
/// partitions nobody reports owning. The group's first leader follows no coordinator, so nobody
/// can still be reading partitions it does not know of: at once. Any later one waits a maximum
/// session, so members of the previous coordinator report or expire first. The first leader
/// wrote the entry after the initial membership (index 1); elections that found no leader wrote
/// nothing, so a term above 1 alone does not mean a leader came before.
async fn hold_until(h: &GroupHandle, term: u64, since: Instant) -> NodeResult<Instant> {
    let first_leader_term = h
        .raft
        .with_raft_state(|st| st.log_ids.get(1).map(|l| l.leader_id.term))
        .await
        .map_err(|e| NodeError::Unavailable(format!("group {}: {e}", h.id)))?;
    Ok(if first_leader_term == Some(term) {
        since
    } else {
        since + MAX_SESSION_TIMEOUT
    })
}

/// Notes when this node becomes the offsets group's leader in a new term, until the service is
/// dropped; a coordinator that takes over counts its hold from then rather than from its first
/// heartbeat.
async fn watch_takeover(ctx: NodeContext, takeover: Weak<Mutex<Option<(u64, Instant)>>>) {
    let mut tick = tokio::time::interval(TAKEOVER_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(takeover) = takeover.upgrade() else {
            return;
        };
        let Some(h) = ctx
            .registry
            .catalog()
            .ok()
            .and_then(|c| c.offsets_group)
            .and_then(|g| ctx.registry.get(g))
        else {
            continue;
        };
        let term = {
            let m = h.raft.metrics();
            let m = m.borrow_watched();
            crate::groups::leads(&m).then_some(m.current_term)
        };
        let Some(term) = term else {
            continue;
        };
        let seen = takeover.lock().ok().and_then(|t| *t).map(|(seen, _)| seen);
        if seen == Some(term) {
            continue;
        }
        let at = match hold_until(&h, term, Instant::now()).await {
            Ok(at) => at,
            Err(e) => {
                tracing::warn!(term, error = %e, "offsets group leadership");
                continue;
            }
        };
        if let Ok(mut t) = takeover.lock() {
            if t.is_none_or(|(seen, _)| seen != term) {
                tracing::info!(
                    term,
                    "this node now leads the offsets group: consumer groups start over"
                );
                *t = Some((term, at));
            }
        };
    }
}

fn partition_state(h: &GroupHandle) -> NodeResult<PartitionState> {
    match &h.watch {
        GroupWatch::Partition(rx) => Ok(*rx.borrow()),
        _ => Err(NodeError::Internal(format!(
            "group {} is not a partition",
            h.id
        ))),
    }
}

/// Checks a topic name the way Kafka does.
fn validate_topic_name(name: &str) -> NodeResult<()> {
    crate::names::validate("topic", name)
}

#[tonic::async_trait]
impl Log for LogService {
    async fn create_topic(
        &self,
        request: Request<CreateTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        let req = request.get_ref();
        validate_topic_name(&req.name)?;
        if req.partitions == 0 || req.partitions > MAX_PARTITIONS {
            return Err(NodeError::InvalidArgument(format!(
                "partitions must be between 1 and {MAX_PARTITIONS}, got {}",
                req.partitions
            ))
            .into());
        }
        let format = req
            .format
            .as_ref()
            .map(weir_proto::format::TopicFormat::from_proto)
            .transpose()
            .map_err(|e| NodeError::InvalidArgument(format!("topic '{}' format: {e}", req.name)))?;
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { LogClient::new(ch).create_topic(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let req = request.into_inner();
        let catalog = self.catalog()?;
        if catalog.topics.contains_key(&req.name) {
            return Err(
                NodeError::AlreadyExists(format!("topic '{}' already exists", req.name)).into(),
            );
        }
        let replicas = match req.replicas {
            0 => placement::default_replicas(&catalog, &self.ctx.liveness),
            r => r,
        };
        let placement =
            placement::place_new(&catalog, &self.ctx.liveness, req.partitions, replicas)?;
        let resp = self
            .ctx
            .propose_meta(MetaCommand::CreateTopic {
                name: req.name.clone(),
                replicas,
                retention_ms: req.retention_ms,
                retention_bytes: req.retention_bytes,
                placement,
                format,
            })
            .await?;
        if let MetaResponse::Rejected(kind, m) = resp {
            return Err(NodeError::refused(kind, m).into());
        }
        let info = leader::describe_once_led(
            || self.topic_info(&*self.catalog()?, &req.name),
            |info| info.partition_info.iter().all(|p| p.leader != 0),
        )
        .await?;
        Ok(Response::new(info))
    }

    async fn delete_topic(
        &self,
        request: Request<DeleteTopicRequest>,
    ) -> Result<Response<DeleteTopicResponse>, Status> {
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { LogClient::new(ch).delete_topic(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let name = request.into_inner().name;
        match self
            .ctx
            .propose_meta(MetaCommand::DeleteTopic { name })
            .await?
        {
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
            _ => Ok(Response::new(DeleteTopicResponse {})),
        }
    }

    async fn list_topics(
        &self,
        request: Request<ListTopicsRequest>,
    ) -> Result<Response<ListTopicsResponse>, Status> {
        if !self.ctx.is_metadata_leader() && !was_forwarded(&request) {
            if let Ok(mut c) = self.leader_client() {
                return c
                    .list_topics(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay);
            }
        }
        let catalog = self.catalog()?;
        let topics = catalog
            .topics
            .keys()
            .map(|n| self.topic_info(&catalog, n))
            .collect::<NodeResult<Vec<_>>>()?;
        Ok(Response::new(ListTopicsResponse { topics }))
    }

    async fn describe_topic(
        &self,
        request: Request<DescribeTopicRequest>,
    ) -> Result<Response<TopicInfo>, Status> {
        // Leaders and offsets come from the heartbeats only the metadata leader collects.
        if !self.ctx.is_metadata_leader() && !was_forwarded(&request) {
            if let Ok(mut c) = self.leader_client() {
                return c
                    .describe_topic(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay);
            }
        }
        let catalog = self
            .ctx
            .catalog_knowing_topic(&request.get_ref().name)
            .await?;
        let mut info = self.topic_info(&catalog, &request.get_ref().name)?;
        // The heartbeats' offsets are a few hundred milliseconds old: a describe right after a
        // produce should count what it stored, so each partition's leader is asked (a partition
        // without an answer keeps the heartbeat's figures).
        let asked = info.partition_info.iter().map(|p| {
            tokio::time::timeout(
                DESCRIBE_OFFSETS_WAIT,
                self.list_offsets(Request::new(ListOffsetsRequest {
                    topic: info.name.clone(),
                    partition: p.partition,
                    epoch: None,
                })),
            )
        });
        let answers = futures::future::join_all(asked).await;
        for (p, answer) in info.partition_info.iter_mut().zip(answers) {
            if let Ok(Ok(a)) = answer {
                let a = a.into_inner();
                p.earliest_offset = a.earliest;
                p.latest_offset = a.latest;
            }
        }
        Ok(Response::new(info))
    }

    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let started = Instant::now();
        let catalog = self
            .ctx
            .catalog_knowing_topic(&request.get_ref().topic)
            .await?;
        let req = request.get_ref();
        let group = self.partition(&catalog, &req.topic, req.partition)?;
        if req.batch.len() > MAX_BATCH_BYTES {
            return Err(NodeError::InvalidArgument(format!(
                "batch of {} bytes is over the {MAX_BATCH_BYTES}-byte limit",
                req.batch.len()
            ))
            .into());
        }
        if req.jumping && req.producer_id == 0 {
            return Err(
                NodeError::InvalidArgument("a jumping producer needs its id".into()).into(),
            );
        }
        // The whole batch is checked here, once: it is stored untouched, its count becomes offsets
        // and its largest timestamp drives retention, and every consumer of the partition must be
        // able to read it. A jumping producer's empty batch only asks for its last number.
        let header = if req.jumping && req.batch.is_empty() {
            batch::BatchHeader {
                count: 0,
                first_timestamp_ms: 0,
                max_timestamp_ms: 0,
                crc: 0,
            }
        } else {
            batch::validate(&req.batch)
                .map_err(|e| NodeError::InvalidArgument(format!("rejected batch: {e}")))?
        };
        let h = match self.serve(&catalog, &group, was_forwarded(&request))? {
            Serve::Local(h) => h,
            Serve::Forward(mut c) => {
                return c
                    .produce(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let req = request.into_inner();
        // A Kafka producer's id, epoch and sequence travel in its batch's header; its sequence
        // numbers count records.
        let producer = match kafka_batch::producer(&req.batch) {
            Some(k) => Some(ProducerSeq {
                producer_id: k.producer_id,
                sequence: k.base_sequence,
                jumping: false,
                epoch: k.epoch,
                counted: true,
            }),
            None => (req.producer_id != 0).then_some(ProducerSeq {
                producer_id: req.producer_id,
                sequence: req.sequence,
                jumping: req.jumping,
                epoch: req.producer_epoch,
                counted: false,
            }),
        };
        let cmd = Cmd::Append {
            batch: req.batch,
            count: header.count,
            max_timestamp_ms: header.max_timestamp_ms,
            producer,
        };
        let span = tracing::debug_span!("produce", group = group.id, topic = %req.topic, partition = req.partition);
        let _e = span.enter();
        // A jumping producer sends one batch at a time: no order to keep among its batches.
        let turn = match producer {
            None => None,
            Some(p) if p.jumping => None,
            Some(p) => {
                let term = h.raft.metrics().borrow_watched().current_term;
                let step = if p.counted {
                    u64::from(header.count)
                } else {
                    1
                };
                if !self.order.knows(group.id, p.producer_id, term) {
                    self.seed_order(&h, p, term).await?;
                }
                let turn = self
                    .order
                    .turn(group.id, p.producer_id, p.sequence, step, term);
                let waiting = std::time::Instant::now();
                let turn = turn.await?;
                metrics::produce_stage("order", waiting.elapsed());
                Some(turn)
            }
        };
        if req.acks == Acks::Leader as i32 && !req.jumping {
            h.raft
                .client_write_ff(cmd, None)
                .await
                .map_err(|e| NodeError::Unavailable(e.to_string()))?;
            if let Some(turn) = turn {
                turn.proposed();
            }
            metrics::produced(header.count, started.elapsed());
            return Ok(Response::new(ProduceResponse {
                base_offset: 0,
                count: header.count,
                offsets_pending: true,
                duplicate: false,
                last_sequence: 0,
            }));
        }
        let writing = std::time::Instant::now();
        let submitted = leader::submit(&h, cmd).await?;
        if let Some(turn) = turn {
            turn.proposed();
        }
        let outcome = leader::outcome(&h, &catalog, submitted).await?;
        metrics::produce_stage("commit", writing.elapsed());
        match outcome {
            Resp::Appended { base_offset, count } => {
                metrics::produced(count, started.elapsed());
                Ok(Response::new(ProduceResponse {
                    base_offset,
                    count,
                    offsets_pending: false,
                    duplicate: false,
                    last_sequence: 0,
                }))
            }
            Resp::StaleProducer { current_epoch } => Err(NodeError::ProducerFenced(format!(
                "producer {} of epoch {} was replaced by epoch {current_epoch}",
                producer.map_or(0, |p| p.producer_id),
                producer.map_or(0, |p| p.epoch)
            ))
            .into()),
            Resp::Duplicate { last_sequence } => Ok(Response::new(ProduceResponse {
                base_offset: 0,
                count: 0,
                offsets_pending: false,
                duplicate: true,
                last_sequence,
            })),
            // Acknowledged as stored; its offsets are no longer known (as acks=leader's are not).
            Resp::StoredEarlier => Ok(Response::new(ProduceResponse {
                base_offset: 0,
                count: header.count,
                offsets_pending: true,
                duplicate: false,
                last_sequence: 0,
            })),
            Resp::Rejected(m) => Err(NodeError::InvalidArgument(m).into()),
            Resp::OutOfOrder(m) => Err(NodeError::Aborted(m).into()),
            other => Err(NodeError::Internal(format!("unexpected answer {other:?}")).into()),
        }
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let catalog = self
            .ctx
            .catalog_knowing_topic(&request.get_ref().topic)
            .await?;
        let req = request.get_ref();
        let group = self.partition(&catalog, &req.topic, req.partition)?;
        let h = match self.serve(&catalog, &group, was_forwarded(&request))? {
            Serve::Local(h) => h,
            Serve::Forward(mut c) => {
                return c
                    .fetch(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let req = request.into_inner();
        let f = read::Fetch {
            topic: &req.topic,
            partition: req.partition,
            offset: req.offset,
            max_bytes: req.max_bytes,
            max_wait_ms: req.max_wait_ms,
        };
        Ok(Response::new(read::fetch(&self.ctx.engine, &h, f).await?))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let catalog = self
            .ctx
            .catalog_knowing_topic(&request.get_ref().topic)
            .await?;
        let req = request.get_ref();
        let group = self.partition(&catalog, &req.topic, req.partition)?;
        let h = match self.serve(&catalog, &group, was_forwarded(&request))? {
            Serve::Local(h) => h,
            Serve::Forward(mut c) => {
                return c
                    .list_offsets(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        leader::term_applied_within(&h, read::TERM_APPLIED_WAIT).await?;
        let st = partition_state(&h)?;
        let (epoch_found, epoch_end_offset) = match request.get_ref().epoch {
            Some(epoch) => {
                let engine = self.ctx.engine.clone();
                let (group_id, hw) = (h.id, st.next_offset);
                on_blocking_thread(move || partition::epoch_end(&engine, group_id, epoch, hw))
                    .await
                    .map_err(NodeError::from)?
            }
            None => (None, 0),
        };
        tracing::debug!(
            group = h.id,
            node = self.ctx.node_id,
            term = leader::term_of(&h),
            earliest = st.earliest,
            latest = st.next_offset,
            "offsets listed"
        );
        Ok(Response::new(ListOffsetsResponse {
            earliest: st.earliest,
            latest: st.next_offset,
            leader_epoch: leader::term_of(&h),
            epoch_found,
            epoch_end_offset,
        }))
    }

    async fn commit_offsets(
        &self,
        request: Request<CommitOffsetsRequest>,
    ) -> Result<Response<CommitOffsetsResponse>, Status> {
        let catalog = self
            .ctx
            .catalog_knowing_topic(&request.get_ref().topic)
            .await?;
        let req = request.get_ref();
        let topic = catalog
            .topics
            .get(&req.topic)
            .ok_or_else(|| NodeError::NotFound(catalog.no_topic(&req.topic)))?;
        if req.group.is_empty() {
            return Err(NodeError::InvalidArgument("consumer group name is empty".into()).into());
        }
        if req.member_id.is_empty() != (req.generation == 0) {
            return Err(NodeError::InvalidArgument(
                "a member's commit carries both its member id and its generation; a standalone \
                 commit carries neither"
                    .into(),
            )
            .into());
        }
        if let Some(bad) = req
            .offsets
            .iter()
            .find(|o| o.partition as usize >= topic.groups.len())
        {
            return Err(NodeError::NotFound(format!(
                "topic '{}' has no partition {}",
                req.topic, bad.partition
            ))
            .into());
        }
        let og = self.offsets_group(&catalog)?;
        let h = match self.serve(&catalog, &og, was_forwarded(&request))? {
            Serve::Local(h) => h,
            Serve::Forward(mut c) => {
                return c
                    .commit_offsets(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let req = request.into_inner();
        if !req.member_id.is_empty() {
            let leadership = self.leadership(&h, &catalog).await?;
            self.coordinator
                .check_commit(
                    req.group.clone(),
                    req.topic.clone(),
                    req.member_id.clone(),
                    req.generation,
                    req.offsets.iter().map(|o| o.partition).collect(),
                    leadership,
                )
                .await
                .ok_or_else(|| NodeError::Internal("coordinator stopped".into()))?
                .map_err(NodeError::from)?;
        }
        let cmd = Cmd::CommitOffsets {
            group: req.group,
            topic: req.topic,
            offsets: req
                .offsets
                .iter()
                .map(|o| (o.partition, o.offset))
                .collect(),
        };
        leader::write(&h, &catalog, cmd).await?;
        Ok(Response::new(CommitOffsetsResponse {}))
    }

    async fn fetch_committed(
        &self,
        request: Request<FetchCommittedRequest>,
    ) -> Result<Response<FetchCommittedResponse>, Status> {
        let catalog = self.catalog()?;
        let og = self.offsets_group(&catalog)?;
        let h = match self.serve(&catalog, &og, was_forwarded(&request))? {
            Serve::Local(h) => h,
            Serve::Forward(mut c) => {
                return c
                    .fetch_committed(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let req = request.into_inner();
        // A read index makes sure a commit acknowledged by a previous leader is visible.
        leader::confirmed_and_applied(&h, &catalog).await?;
        let GroupWatch::Offsets(rx) = &h.watch else {
            return Err(NodeError::Internal("offsets group has the wrong kind".into()).into());
        };
        let map = rx.borrow().clone();
        let offsets = map
            .range(
                (req.group.clone(), req.topic.clone(), 0)
                    ..=(req.group.clone(), req.topic.clone(), u32::MAX),
            )
            .map(|((_, _, p), o)| PartitionOffset {
                partition: *p,
                offset: *o,
            })
            .collect();
        Ok(Response::new(FetchCommittedResponse { offsets }))
    }

    async fn group_heartbeat(
        &self,
        request: Request<GroupHeartbeatRequest>,
    ) -> Result<Response<GroupHeartbeatResponse>, Status> {
        let catalog = self
            .ctx
            .catalog_knowing_topic(&request.get_ref().topic)
            .await?;
        let req = request.get_ref();
        let topic = catalog
            .topics
            .get(&req.topic)
            .ok_or_else(|| NodeError::NotFound(catalog.no_topic(&req.topic)))?;
        let partitions = topic.groups.len() as u32;
        if req.group.is_empty() || req.member_id.is_empty() {
            return Err(
                NodeError::InvalidArgument("group and member id are required".into()).into(),
            );
        }
        let session_timeout = match req.session_timeout_ms {
            0 => DEFAULT_SESSION_TIMEOUT,
            ms => Duration::from_millis(u64::from(ms)),
        };
        if session_timeout > MAX_SESSION_TIMEOUT {
            return Err(NodeError::InvalidArgument(format!(
                "session timeout {} ms is over the {} ms limit",
                session_timeout.as_millis(),
                MAX_SESSION_TIMEOUT.as_millis()
            ))
            .into());
        }
        let og = self.offsets_group(&catalog)?;
        let h = match self.serve(&catalog, &og, was_forwarded(&request))? {
            Serve::Local(h) => h,
            Serve::Forward(mut c) => {
                return c
                    .group_heartbeat(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let leadership = self.leadership(&h, &catalog).await?;
        let req = request.into_inner();
        let hb = Heartbeat {
            group: req.group,
            topic: req.topic,
            member: req.member_id,
            session_timeout,
            partitions,
            generation: req.generation,
            owned: req.owned,
        };
        let a = self
            .coordinator
            .heartbeat(hb, leadership)
            .await
            .ok_or_else(|| NodeError::Internal("coordinator stopped".into()))?;
        Ok(Response::new(GroupHeartbeatResponse {
            generation: a.generation,
            partitions: a.partitions,
            members: a.members,
        }))
    }

    async fn leave_group(
        &self,
        request: Request<LeaveGroupRequest>,
    ) -> Result<Response<LeaveGroupResponse>, Status> {
        let catalog = self.catalog()?;
        let og = self.offsets_group(&catalog)?;
        let h = match self.serve(&catalog, &og, was_forwarded(&request))? {
            Serve::Local(h) => h,
            Serve::Forward(mut c) => {
                return c
                    .leave_group(forwarded(request.into_inner()))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let leadership = self.leadership(&h, &catalog).await?;
        let req = request.into_inner();
        self.coordinator
            .leave(req.group, req.topic, req.member_id, leadership)
            .await;
        Ok(Response::new(LeaveGroupResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_raw-2").is_ok());
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "__consumer_offsets",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?} accepted");
        }
    }
}
