//! Writing through a group's leader and telling clients where the leader is.

use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::error::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::impls::ProgressResponder;
use openraft::raft::ClientWriteResult;
use openraft::type_config::alias::OneshotReceiverOf;
use openraft::LinearizerOption;
use openraft::ReadPolicy;
use weir_proto::v1::raft_transport_client::RaftTransportClient;
use weir_proto::v1::ReadIndexRequest;
use weir_storage::catalog::{Catalog, GroupInfo, METADATA_GROUP};
use weir_storage::{Request, Response, TypeConfig};

use crate::error::{NodeError, NodeResult};
use crate::groups::{GroupHandle, Registry};
use crate::peers::{Lane, Peers};

/// Where a request for a group is served.
pub enum Target {
    /// Here: this node leads the group (or holds a replica, for reads that may be stale).
    Local(Arc<GroupHandle>),
    /// On the node at this address, which leads the group or knows who does.
    Forward(String),
}

/// Decides where a request for `group` is served: here when this node leads it (or, with
/// `any_replica`, holds it), else forwarded once to the leader this node knows or to a replica. A
/// request that was already forwarded is not forwarded again: the leader moved and the client
/// retries.
pub fn target(
    node_id: u64,
    registry: &Registry,
    catalog: &Catalog,
    group: &GroupInfo,
    was_forwarded: bool,
    any_replica: bool,
) -> NodeResult<Target> {
    let local = registry.get(group.id);
    if let Some(h) = local.as_ref().filter(|h| any_replica || h.is_leader()) {
        return Ok(Target::Local(h.clone()));
    }
    if was_forwarded {
        return Err(NodeError::NotLeader {
            group: group.id,
            leader: local.and_then(|h| leader_addr(&h, catalog)),
        });
    }
    if let Some(h) = local {
        return match leader_addr(&h, catalog) {
            Some(addr) => Ok(Target::Forward(addr)),
            None => Err(NodeError::Unavailable(format!(
                "group {} has no leader yet; retry",
                group.id
            ))),
        };
    }
    group
        .replicas
        .iter()
        .filter(|n| **n != node_id)
        .find_map(|n| {
            catalog
                .nodes
                .get(n)
                .map(|i| Target::Forward(i.addr.clone()))
        })
        .ok_or_else(|| NodeError::Unavailable(format!("group {} has no replica", group.id)))
}

/// How long after a quorum acknowledged this leader it still serves reads on its lease.
///
/// Followers refuse to vote for a full `election_timeout_max` after they last heard from the
/// leader, counted from when they received its message, while the leader counts from when it sent
/// it; reading on only half of that leaves the other half as the bound on clock drift between
/// nodes (and a restarted node does not vote for one lease either: see `GroupHandle::may_vote`).
pub fn read_lease(h: &GroupHandle) -> Duration {
    Duration::from_millis(h.raft.config().election_timeout_max / 2)
}

/// The lease check made on the metrics openraft publishes instead of a round trip through the
/// group's Raft task: this node leads, a quorum acknowledged it within the read lease (so no other
/// leader can have been elected since), an entry of its own term is committed (so everything
/// earlier leaders committed is too), its state machine has applied everything committed, and no
/// handover may be under way (openraft's own lease check knows of one by itself; the metrics do
/// not show it). A handover makes the voters that hear of it vote for a successor at once,
/// whatever lease they granted: it is under way once this node began one in this term, and as soon
/// as this node is not a voter of its newest membership (openraft hands the group over by itself
/// when the change that removes its leader commits, and the new voters acknowledged this leader
/// until then).
fn lease_is_fresh(h: &GroupHandle) -> bool {
    let m = h.raft.metrics();
    let m = m.borrow_watched();
    let fresh = crate::groups::acked_within(&m, read_lease(h));
    let voter = m
        .membership_config
        .membership()
        .voter_ids()
        .any(|v| v == m.id);
    fresh && voter && !handing_over(h, m.current_term) && term_applied(&m)
}

/// True when this node began handing the group over in `term`, the term it leads in. The voters
/// that heard of the handover vote for any candidate at once, without waiting for this leader's
/// lease, and openraft keeps this leader handing over (taking no writes, sending no heartbeats)
/// until a leader of a later term deposes it, even when the successor never stood: quorum
/// acknowledgements of entries it still replicates then prove nothing.
fn handing_over(h: &GroupHandle, term: u64) -> bool {
    let began = h.handover_term.lock().unwrap_or_else(|p| p.into_inner());
    *began == Some(term)
}

/// True when this node leads the group and its state machine has applied an entry of its own
/// term, so its state holds everything any earlier leader committed.
pub(crate) fn term_applied(m: &openraft::RaftMetrics<TypeConfig>) -> bool {
    let own_term_committed = m
        .cluster_committed
        .as_ref()
        .is_some_and(|c| c.leader_id.term == m.vote.leader_id.term && m.vote.committed);
    m.current_leader == Some(m.id)
        && m.state == openraft::ServerState::Leader
        && own_term_committed
        && m.last_applied >= m.cluster_committed
}

/// Waits (up to `timeout`) until this leader has applied an entry of its own term. A leader just
/// elected may not have applied what its predecessor committed: answering from its state then
/// would show offsets going backwards (a fetch past its end refused as out of range).
pub async fn term_applied_within(h: &GroupHandle, timeout: Duration) -> NodeResult<()> {
    // The usual case, checked without cloning the metrics as a wait does: every fetch passes here.
    if term_applied(&h.raft.metrics().borrow_watched()) {
        return Ok(());
    }
    h.raft
        .wait(Some(timeout))
        .metrics(term_applied, "leader applied its term")
        .await
        .map(|_| ())
        .map_err(|_| {
            NodeError::Unavailable(format!(
                "group {}: the new leader has not caught up with its term yet; retry",
                h.id
            ))
        })
}

/// The Raft term `h`'s node is in: a leader's term is Kafka's leader epoch of its partition.
pub fn term_of(h: &GroupHandle) -> u64 {
    h.raft.metrics().borrow_watched().current_term
}

/// How a read was found linearizable; re-checked once the data has been read.
#[must_use = "a lease read must be confirmed after reading"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadConfirmation {
    /// On the leader lease: valid only if the lease still holds when the read has finished.
    Lease,
    /// By a quorum round after the read began (read index): nothing to re-check.
    Quorum,
}

impl ReadConfirmation {
    /// Confirms, after reading, that a lease the read relied on still held: a leader paused
    /// between its check and its read (a stalled thread, a SIGSTOP) may have been deposed and its
    /// successor may have accepted writes the read does not show.
    pub async fn confirm(self, h: &GroupHandle) -> NodeResult<()> {
        match self {
            ReadConfirmation::Quorum => Ok(()),
            ReadConfirmation::Lease if lease_is_fresh(h) || raft_lease_is_valid(h).await => Ok(()),
            ReadConfirmation::Lease => Err(NodeError::Unavailable(format!(
                "group {}: the leader lease lapsed during the read; retry",
                h.id
            ))),
        }
    }
}

/// The lease check made by openraft itself, on the read lease: it also holds for a group whose
/// only voter is this node, where no quorum acknowledgement ever shows in the metrics.
async fn raft_lease_is_valid(h: &GroupHandle) -> bool {
    let on_lease =
        LinearizerOption::new(Some(read_lease(h)), false).with_wait_timeout(Duration::ZERO);
    h.raft.ensure_linearizable(on_lease).await.is_ok()
}

/// Waits until a read on this leader's state machine is linearizable: by leader lease when it is
/// valid, else by confirming leadership with a quorum (read index). A lease read must be
/// confirmed with [`ReadConfirmation::confirm`] after reading.
pub async fn linearizable(h: &GroupHandle, catalog: &Catalog) -> NodeResult<ReadConfirmation> {
    if lease_is_fresh(h) {
        return Ok(ReadConfirmation::Lease);
    }
    if raft_lease_is_valid(h).await {
        return Ok(ReadConfirmation::Lease);
    }
    confirmed_and_applied(h, catalog).await?;
    Ok(ReadConfirmation::Quorum)
}

/// Waits until a quorum has confirmed that this node still leads `h`'s group and its state
/// machine has applied everything committed before: then a read of it is linearizable, with
/// nothing to check afterwards.
pub async fn confirmed_and_applied(h: &GroupHandle, catalog: &Catalog) -> NodeResult<()> {
    h.raft
        .ensure_linearizable(ReadPolicy::ReadIndex)
        .await
        .map_err(|e| not_leading(h, catalog, e))?;
    Ok(())
}

/// What a failed leadership check tells the caller: which node leads, when this one knows, else
/// to retry.
fn not_leading(
    h: &GroupHandle,
    catalog: &Catalog,
    e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>,
) -> NodeError {
    match e.forward_to_leader() {
        Some(f) => NodeError::NotLeader {
            group: h.id,
            leader: f.leader_id.and_then(|id| addr_of(catalog, id)),
        },
        None => NodeError::Unavailable(format!(
            "group {} cannot confirm its leadership: {e}; retry",
            h.id
        )),
    }
}

/// How long a follower read waits for its leader's read index, and then for its own copy.
const FOLLOWER_READ_WAIT: Duration = Duration::from_secs(5);

/// The log index a replica must have applied for a read of it to be linearizable, once a quorum
/// has confirmed that this node still leads `h`'s group.
pub async fn read_index(h: &GroupHandle, catalog: &Catalog) -> NodeResult<u64> {
    let linearizer = h
        .raft
        .get_read_linearizer(ReadPolicy::ReadIndex)
        .await
        .map_err(|e| not_leading(h, catalog, e))?;
    Ok(linearizer.read_log_id().log_id().index())
}

/// How long a follower read rides out its group's leader election (a dead leader is replaced
/// within about two seconds) before it gives up.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Waits until this node's replica of `h`'s group has applied every entry its leader had
/// committed when this was called, so that what it then reads from its own copy is current (a
/// follower read): a follower learns that an entry committed only from the leader's next
/// message, so without this a statement sent to it right after a change made through another
/// node could miss the change. While the group elects a leader (the old one died or was
/// deposed) it asks again until one confirms: a read changes nothing, so asking twice is safe.
pub async fn caught_up(h: &GroupHandle, catalog: &Catalog, peers: &Peers) -> NodeResult<()> {
    let deadline = tokio::time::Instant::now() + LEADER_WAIT;
    let mut backoff = weir_client::retry::Backoff::default();
    let index = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match committed_index(h, catalog, peers, left.min(FOLLOWER_READ_WAIT)).await {
            Ok(index) => break index,
            Err(e) => {
                let pause = backoff.next_delay();
                if left <= pause {
                    return Err(e);
                }
                tracing::debug!(group = h.id, error = %e, "no leader confirmed a read yet; asking again");
                tokio::time::sleep(pause).await;
            }
        }
    };
    h.raft
        .wait(Some(FOLLOWER_READ_WAIT))
        .applied_index_at_least(Some(index), "follower read")
        .await
        .map_err(|e| {
            NodeError::Unavailable(format!(
                "group {}: this replica did not catch up with its leader: {e}; retry",
                h.id
            ))
        })?;
    Ok(())
}

/// Brings this node's catalog up to date with every change committed before the call (see
/// [`caught_up`]): for a name this node does not know yet, which may have been created a moment
/// ago through another node.
pub async fn catalog_caught_up(registry: &Registry, peers: &Peers) -> NodeResult<()> {
    let h = registry.metadata()?;
    caught_up(&h, &*registry.catalog()?, peers).await
}

/// The index the group's leader had committed, confirmed by a quorum: asked of this node when it
/// leads, else of the leader it knows, waiting at most `wait` for the answer.
async fn committed_index(
    h: &GroupHandle,
    catalog: &Catalog,
    peers: &Peers,
    wait: Duration,
) -> NodeResult<u64> {
    if h.is_leader() {
        return read_index(h, catalog).await;
    }
    let addr = leader_addr(h, catalog).ok_or_else(|| {
        NodeError::Unavailable(format!("group {} has no leader yet; retry", h.id))
    })?;
    let mut client = RaftTransportClient::new(peers.lane(&addr, Lane::Requests)?);
    let mut ask = tonic::Request::new(ReadIndexRequest { group_id: h.id });
    ask.set_timeout(wait);
    let reply = client.read_index(ask).await.map_err(|e| {
        NodeError::Unavailable(format!(
            "group {}: its leader at {addr} did not confirm a read: {}",
            h.id,
            e.message()
        ))
    })?;
    Ok(reply.into_inner().index)
}

/// Address of the group's leader, if known.
pub fn leader_addr(h: &GroupHandle, catalog: &Catalog) -> Option<String> {
    addr_of(catalog, h.leader()?)
}

/// Address of node `id`, when the catalog knows the node.
fn addr_of(catalog: &Catalog, id: u64) -> Option<String> {
    catalog.nodes.get(&id).map(|n| n.addr.clone())
}

/// Replicates `req` through `h` and returns what applying it answered (after quorum commit).
pub async fn write(h: &Arc<GroupHandle>, catalog: &Catalog, req: Request) -> NodeResult<Response> {
    outcome(h, catalog, submit(h, req).await?).await
}

/// A write queued in a group's log, its outcome still to come.
pub struct Submitted(OneshotReceiverOf<TypeConfig, ClientWriteResult<TypeConfig>>);

/// Queues `req` in the group's log without waiting for it to commit: once this returns, the entry
/// comes after every entry queued before it (so callers can order entries they submit).
pub async fn submit(h: &GroupHandle, req: Request) -> NodeResult<Submitted> {
    let (responder, rx) = ProgressResponder::complete_only();
    h.raft
        .client_write_ff(req, Some(responder))
        .await
        .map_err(|e| NodeError::Unavailable(format!("group {}: {e}", h.id)))?;
    Ok(Submitted(rx))
}

/// Waits for the outcome of a write queued with [`submit`].
pub async fn outcome(h: &GroupHandle, catalog: &Catalog, s: Submitted) -> NodeResult<Response> {
    match s.0.await {
        Ok(Ok(r)) => Ok(r.data),
        Ok(Err(e)) => Err(write_error(h, catalog, RaftError::APIError(e))),
        // The group stopped with the entry queued: it may have been appended and may commit.
        Err(_) => Err(NodeError::OutcomeUnknown(format!(
            "group {}: stopped before the write's outcome was known",
            h.id
        ))),
    }
}

fn write_error(
    h: &GroupHandle,
    catalog: &Catalog,
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> NodeError {
    if let Some(ClientWriteError::LogEntryDiscarded(_)) = e.api_error() {
        // The entry was appended but its leader lost office before it committed; a later leader
        // may still commit it. Retrying blindly could apply it twice.
        return NodeError::OutcomeUnknown(format!(
            "group {}: the leader changed before the write committed; it may or may not have been applied",
            h.id
        ));
    }
    if let Some(f) = e.forward_to_leader() {
        return match f.leader_id.and_then(|id| addr_of(catalog, id)) {
            Some(addr) => NodeError::NotLeader {
                group: h.id,
                leader: Some(addr),
            },
            // A just-elected leader refuses writes until a quorum has acknowledged it.
            None => NodeError::Unavailable(format!(
                "group {} cannot take writes yet ({:?}); retry",
                h.id, f.reason
            )),
        };
    }
    NodeError::Unavailable(format!("group {}: {e}", h.id))
}

/// True when this node leads the metadata group.
pub fn is_metadata_leader(registry: &Registry) -> bool {
    registry.get(METADATA_GROUP).is_some_and(|h| h.is_leader())
}

/// Address of the metadata leader, or `Unavailable` while there is none.
pub fn metadata_leader_addr(registry: &Registry) -> NodeResult<String> {
    let meta = registry.metadata()?;
    let catalog = registry.catalog()?;
    leader_addr(&meta, &catalog)
        .ok_or_else(|| NodeError::Unavailable("the metadata group has no leader yet".into()))
}

/// Catalog changes are made by the metadata leader: returns the request to serve it here when this
/// node leads group 0, or the leader's answer after forwarding it there with `forward` (once: a
/// request that was already forwarded finds the leader moved and the client retries).
pub async fn on_metadata_leader<T, R, F, Fut>(
    registry: &Registry,
    peers: &Peers,
    request: tonic::Request<T>,
    forward: F,
) -> Result<Result<tonic::Response<R>, tonic::Request<T>>, tonic::Status>
where
    F: FnOnce(tonic::transport::Channel, tonic::Request<T>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<R>, tonic::Status>>,
{
    if is_metadata_leader(registry) {
        return Ok(Err(request));
    }
    if was_forwarded(&request) {
        return Err(NodeError::Unavailable("metadata leader moved; retry".into()).into());
    }
    let channel = peers.channel(&metadata_leader_addr(registry)?)?;
    forward(channel, forwarded(request.into_inner()))
        .await
        .map(Ok)
}

/// After a topic or table was created: describes it with `describe` until `led` says every group
/// has a leader, so the caller can use it right away. Bounded well below clients' request
/// timeouts; after a slow election the description simply shows no leader yet.
pub async fn describe_once_led<T>(
    describe: impl Fn() -> NodeResult<T>,
    led: impl Fn(&T) -> bool,
) -> NodeResult<T> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(6);
    loop {
        let info = describe()?;
        if led(&info) || tokio::time::Instant::now() > deadline {
            return Ok(info);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Header marking a request one node forwarded to another, so it is not forwarded again.
pub const FORWARDED: &str = "weir-forwarded";

/// True when the request was already forwarded once.
pub fn was_forwarded<T>(req: &tonic::Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

/// Wraps `msg` for forwarding to another node.
pub fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}
