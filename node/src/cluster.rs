//! The `Cluster` gRPC service (join, status, heartbeats) and the heartbeat each node sends.

use openraft::async_runtime::WatchReceiver;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;
use tonic::{Request, Response, Status};
use weir_proto::v1::cluster_client::ClusterClient;
use weir_proto::v1::cluster_server::Cluster;

use weir_proto::v1::{
    AllocateGroupRequest, AllocateGroupResponse, GroupReport, HeartbeatAck, JoinRequest,
    JoinResponse, Member, NodeHeartbeat, ReportSplitRequest, ReportSplitResponse, StatusRequest,
    StatusResponse,
};
use weir_storage::catalog::{Catalog, MetaCommand, MetaResponse};
use weir_storage::{Request as Cmd, Response as Resp};

use crate::error::{NodeError, NodeResult};
use crate::groups::Registry;
use crate::leader::{self, forwarded, was_forwarded};
use crate::liveness::Liveness;
use crate::peers::Peers;

/// Shared context of the node's services.
#[derive(Clone)]
pub struct NodeContext {
    /// This node's id.
    pub node_id: u64,
    /// The running groups.
    pub registry: Registry,
    /// Channels to other nodes.
    pub peers: Peers,
    /// Member liveness (meaningful on the metadata leader).
    pub liveness: Liveness,
    /// The node's storage engine (partition reads go straight to it).
    pub engine: weir_storage::Engine,
    /// What the stream tasks this node runs have done.
    pub tasks: weir_sql::job::TaskBoard,
}

impl NodeContext {
    /// Address of the metadata leader, or `Unavailable` while there is none.
    pub fn metadata_leader_addr(&self) -> NodeResult<String> {
        leader::metadata_leader_addr(&self.registry)
    }

    /// The catalog, first brought up to date through the metadata leader when it does not know
    /// `topic`: a topic created through another node a moment ago is found, not refused. The
    /// catch-up is best effort: while the metadata group has no leader, the local catalog answers
    /// (a topic that does not exist is then reported missing at once, not unavailable).
    pub async fn catalog_knowing_topic(&self, topic: &str) -> NodeResult<Arc<Catalog>> {
        let catalog = self.registry.catalog()?;
        if catalog.topics.contains_key(topic) {
            return Ok(catalog);
        }
        if let Err(e) = leader::catalog_caught_up(&self.registry, &self.peers).await {
            tracing::debug!(topic, error = %e, "catalog catch-up failed; answering from the local catalog");
        }
        self.registry.catalog()
    }

    /// Applies a catalog change through the metadata leader, which must be this node.
    pub async fn propose_meta(&self, cmd: MetaCommand) -> NodeResult<MetaResponse> {
        let meta = self.registry.metadata()?;
        let catalog = self.registry.catalog()?;
        match leader::write(&meta, &catalog, Cmd::Meta(cmd)).await? {
            Resp::Meta(r) => Ok(r),
            other => Err(NodeError::Internal(format!("unexpected answer {other:?}"))),
        }
    }

    /// A client of the metadata leader's Cluster service (for forwarding).
    pub fn cluster_client_of_leader(&self) -> NodeResult<ClusterClient<tonic::transport::Channel>> {
        Ok(ClusterClient::new(
            self.peers.channel(&self.metadata_leader_addr()?)?,
        ))
    }

    /// Where a request for `group` is served; see [`leader::target`].
    pub fn target(
        &self,
        catalog: &weir_storage::catalog::Catalog,
        group: &weir_storage::catalog::GroupInfo,
        was_forwarded: bool,
        any_replica: bool,
    ) -> NodeResult<leader::Target> {
        leader::target(
            self.node_id,
            &self.registry,
            catalog,
            group,
            was_forwarded,
            any_replica,
        )
    }

    /// True when this node leads the metadata group.
    pub fn is_metadata_leader(&self) -> bool {
        leader::is_metadata_leader(&self.registry)
    }
}

/// The `Cluster` service.
pub struct ClusterService {
    ctx: NodeContext,
}

impl ClusterService {
    /// The service over `ctx`.
    pub fn new(ctx: NodeContext) -> ClusterService {
        ClusterService { ctx }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        if !self.ctx.is_metadata_leader() {
            if was_forwarded(&request) {
                return Err(NodeError::Unavailable("metadata leader moved; retry".into()).into());
            }
            let mut c = self.ctx.cluster_client_of_leader()?;
            return c
                .join(forwarded(request.into_inner()))
                .await
                .map_err(crate::error::relay);
        }
        let req = request.into_inner();
        if req.advertise_addr.trim().is_empty() {
            return Err(Status::invalid_argument("advertise_addr is empty"));
        }
        let cmd = if req.node_id != 0 {
            MetaCommand::UpdateNode {
                node: weir_storage::catalog::NodeInfo {
                    id: req.node_id,
                    addr: req.advertise_addr.clone(),
                    http_addr: req.http_addr.clone(),
                    kafka_addr: req.kafka_addr.clone(),
                },
            }
        } else {
            MetaCommand::AddNode {
                addr: req.advertise_addr.clone(),
                http_addr: req.http_addr.clone(),
                kafka_addr: req.kafka_addr.clone(),
            }
        };
        let resp = self.ctx.propose_meta(cmd).await?;
        let node_id = match resp {
            MetaResponse::NodeId(node_id) => {
                tracing::info!(node = node_id, addr = %req.advertise_addr, "node joined");
                node_id
            }
            // Not bootstrapped yet, or a race with it: the joiner retries.
            MetaResponse::Rejected(_, m) => return Err(Status::unavailable(m)),
            MetaResponse::Ok | MetaResponse::GroupId(_) | MetaResponse::JobId(_) => req.node_id,
        };
        // A node that just (re)joined was heard now: it must not count as gone before its first
        // heartbeat, or it is never made a learner of the metadata group and never learns whom to
        // send heartbeats to.
        self.ctx.liveness.record(node_id, Vec::new());
        Ok(Response::new(JoinResponse { node_id }))
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusResponse>, Status> {
        if !self.ctx.is_metadata_leader() {
            if was_forwarded(&request) {
                return Err(NodeError::Unavailable("metadata leader moved; retry".into()).into());
            }
            let mut c = self.ctx.cluster_client_of_leader()?;
            return c
                .status(forwarded(request.into_inner()))
                .await
                .map_err(crate::error::relay);
        }
        let catalog = self.ctx.registry.catalog()?;
        let meta = self.ctx.registry.metadata()?;
        let m = meta.raft.metrics().borrow_watched().clone();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let reports = self.ctx.liveness.reports();
        let mut members = Vec::new();
        for n in catalog.nodes.values() {
            let mine = reports.get(&n.id);
            let held = mine.map(|r| r.len()).unwrap_or(0) as u32;
            let led = mine
                .map(|r| r.iter().filter(|g| g.leader).count())
                .unwrap_or(0) as u32;
            let up = n.id == self.ctx.node_id || self.ctx.liveness.was_heard(n.id);
            members.push(Member {
                id: n.id,
                addr: n.addr.clone(),
                state: if up { "up" } else { "down" }.into(),
                groups_held: held,
                groups_led: led,
                metadata_role: if voters.contains(&n.id) {
                    "voter"
                } else {
                    "learner"
                }
                .into(),
                http_addr: n.http_addr.clone(),
                kafka_addr: n.kafka_addr.clone(),
                last_seen_ms: self.ctx.liveness.silence(n.id).as_millis() as u64,
            });
        }
        Ok(Response::new(StatusResponse {
            members,
            metadata_leader: self.ctx.node_id,
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<NodeHeartbeat>,
    ) -> Result<Response<HeartbeatAck>, Status> {
        // A node that does not know the metadata leader yet (it joined but is not a learner of
        // the metadata group, or it is back after a long absence) reports to any member it knows.
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { ClusterClient::new(ch).heartbeat(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let hb = request.into_inner();
        self.ctx.liveness.record(hb.node_id, hb.groups);
        Ok(Response::new(HeartbeatAck {}))
    }

    async fn allocate_group(
        &self,
        request: Request<AllocateGroupRequest>,
    ) -> Result<Response<AllocateGroupResponse>, Status> {
        if let Ok(answer) = leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { ClusterClient::new(ch).allocate_group(r).await },
        )
        .await?
        {
            return Ok(answer);
        }
        match self.ctx.propose_meta(MetaCommand::AllocateGroup).await? {
            MetaResponse::GroupId(group_id) => {
                Ok(Response::new(AllocateGroupResponse { group_id }))
            }
            other => {
                Err(NodeError::Internal(format!("allocating a group answered {other:?}")).into())
            }
        }
    }

    async fn report_split(
        &self,
        request: Request<ReportSplitRequest>,
    ) -> Result<Response<ReportSplitResponse>, Status> {
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { ClusterClient::new(ch).report_split(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let r = request.into_inner();
        match self
            .ctx
            .propose_meta(MetaCommand::SplitRegion {
                parent: r.parent,
                epoch: r.epoch,
                split_key: r.split_key.to_vec(),
                child: r.child,
            })
            .await?
        {
            MetaResponse::Rejected(_, m) => Err(NodeError::FailedPrecondition(m).into()),
            _ => Ok(Response::new(ReportSplitResponse {})),
        }
    }
}

/// The groups some live node reports leading, with that node and its report (meaningful on the
/// metadata leader, which receives the heartbeats).
pub fn led_groups(ctx: &NodeContext) -> BTreeMap<u64, (u64, GroupReport)> {
    let mut out: BTreeMap<u64, (u64, GroupReport)> = BTreeMap::new();
    for (n, reports) in ctx.liveness.reports() {
        // Reports of nodes that went silent may still claim leadership: skip them.
        if n != ctx.node_id && !ctx.liveness.is_up(n) {
            continue;
        }
        for r in reports.into_iter().filter(|r| r.leader) {
            // A deposed leader may not know yet: the later term is the leader.
            match out.get(&r.group_id) {
                Some((_, known)) if known.term >= r.term => {}
                _ => {
                    out.insert(r.group_id, (n, r));
                }
            }
        }
    }
    out
}

/// What this node reports about the groups it holds.
pub fn group_reports(registry: &Registry) -> Vec<GroupReport> {
    let groups = registry.all();
    let mut out = Vec::with_capacity(groups.len());
    for h in groups.values() {
        let m = h.raft.metrics().borrow_watched().clone();
        let leader = crate::groups::leads(&m);
        let (earliest_offset, latest_offset, region_bytes) = match (&h.watch, leader) {
            (weir_storage::GroupWatch::Partition(rx), true) => {
                let st = *rx.borrow();
                (st.earliest, st.next_offset, 0)
            }
            (weir_storage::GroupWatch::Region(rx), true) => (0, 0, rx.borrow().approx_bytes),
            _ => (0, 0, 0),
        };
        let (voters, max_lag) = if leader {
            let last = m.last_log_index.unwrap_or(0);
            let lag = m
                .replication
                .as_ref()
                .map(|r| {
                    r.values()
                        .map(|l| last.saturating_sub(l.map(|l| l.index).unwrap_or(0)))
                        .max()
                        .unwrap_or(0)
                })
                .unwrap_or(0);
            (m.membership_config.membership().voter_ids().collect(), lag)
        } else {
            (Vec::new(), 0)
        };
        out.push(GroupReport {
            group_id: h.id,
            leader,
            voters,
            max_lag,
            earliest_offset,
            latest_offset,
            region_bytes,
            term: if leader { m.current_term } else { 0 },
        });
    }
    out
}

/// Sends this node's heartbeat to the metadata leader every second, and at once when it won the
/// first election of a group it founded (a new topic or table is described, and usable, as soon
/// as its groups' leaders are reported), forever (through any member it knows while it does not
/// know the leader).
pub async fn heartbeat_loop(ctx: Arc<NodeContext>, seeds: Vec<String>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut fallback = 0usize;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ctx.registry.first_leadership() => {}
        }
        let hb = NodeHeartbeat {
            node_id: ctx.node_id,
            groups: group_reports(&ctx.registry),
        };
        for h in ctx.registry.all().values() {
            let m = h.raft.metrics();
            let m = m.borrow_watched();
            crate::metrics::record_raft_log(
                h.id,
                m.purged.as_ref().map_or(0, |l| l.index),
                m.last_log_index.unwrap_or(0),
            );
        }
        // Last, so a reader that sees the count move sees every gauge above as of this tick.
        crate::metrics::record_groups(&hb.groups);
        if ctx.is_metadata_leader() {
            ctx.liveness.record(ctx.node_id, hb.groups);
            continue;
        }
        let channel = match ctx.metadata_leader_addr() {
            Ok(addr) => ctx.peers.channel(&addr),
            // No leader known here: any member forwards the heartbeat to it, one after another.
            Err(_) => {
                let members = known_members(&ctx, &seeds);
                if members.is_empty() {
                    continue;
                }
                fallback = fallback.wrapping_add(1);
                ctx.peers.channel(&members[fallback % members.len()])
            }
        };
        let Ok(channel) = channel else {
            continue;
        };
        let mut req = Request::new(hb);
        req.set_timeout(Duration::from_secs(2));
        if let Err(e) = ClusterClient::new(channel).heartbeat(req).await {
            tracing::debug!(error = %e, "heartbeat to the metadata leader failed");
        }
    }
}

/// Addresses of the other members this node knows: from its catalog, and the node it joined
/// through.
fn known_members(ctx: &NodeContext, seeds: &[String]) -> Vec<String> {
    let mut out: Vec<String> = seeds.to_vec();
    if let Ok(catalog) = ctx.registry.catalog() {
        for (id, n) in &catalog.nodes {
            if *id != ctx.node_id && !out.contains(&n.addr) {
                out.push(n.addr.clone());
            }
        }
    }
    out
}
