//! The group manager: the actor that owns every Raft group running on this node.
//!
//! It starts a group when the catalog places a replica here, drops it (and its data) when the group
//! is deleted or moved away, and, for the groups this node leads, reconciles the group's Raft
//! membership with the replica set the catalog asks for. A replica the catalog moved away keeps
//! running, and so keeps its data and its vote, until the group's leader has committed a
//! membership without it. Other parts of the node read the running
//! groups through a [`Registry`], a published immutable map, so nobody locks the manager's state.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use futures::FutureExt;
use openraft::{BasicNode, ChangeMembers, Membership};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use weir_proto::v1::raft_transport_client::RaftTransportClient;
use weir_proto::v1::{MembershipReply, MembershipRequest};
use weir_storage::catalog::{Catalog, GroupInfo, GroupKind, METADATA_GROUP};
use weir_storage::snapshot::SnapshotDir;
use weir_storage::types::Raft;
use weir_storage::{Engine, GroupWatch, LogStore, StateMachine};

use crate::error::{NodeError, NodeResult};
use crate::liveness::Liveness;
use crate::peers::{Lane, Peers};
use crate::raft::{config, network::GroupNetwork};

/// How often a replica the catalog moved away asks its group's leader whether the membership
/// change removing it has committed.
const REMOVAL_CHECK_EVERY: Duration = Duration::from_secs(2);
/// How long one such question may take.
const REMOVAL_CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// How long founders other than the first wait before initializing a new group themselves.
const FOUNDER_INIT_DELAY: Duration = Duration::from_secs(5);
/// A learner is promoted to voter once it is this close to the leader's log.
const CAUGHT_UP_ENTRIES: u64 = 1_000;

/// One Raft group running on this node.
pub struct GroupHandle {
    /// Group id.
    pub id: u64,
    /// What the group holds.
    pub kind: GroupKind,
    /// The group's Raft handle.
    pub raft: Raft,
    /// The group's applied state.
    pub watch: GroupWatch,
    /// Where the group's snapshots live.
    pub snapshots: SnapshotDir,
    /// Until when this replica grants no votes: one lease after it restarted, since before the
    /// restart it may have promised a leader not to vote for anyone else within its lease.
    pub no_votes_until: Instant,
    /// True when this replica is one the group was created with (a founder of a new group, or a
    /// replica a split gave a new region) and the group has dropped none since. Any other
    /// replica joined a running group, possibly on a node the group once dropped: until the
    /// group's log has told it that it is a member, it grants no votes, since a candidate still
    /// holding a configuration from before the drop would count this fresh, empty replica as the
    /// old member that had voted and stored entries there.
    pub founder: bool,
    /// The term in which this replica, leading, last began handing its group over. openraft
    /// keeps a leader that began one in that state for the rest of its term, and the voters that
    /// heard of it vote for anyone at once: for the rest of that term this replica answers no read
    /// on the lease it kept in its metrics (see `leader::handing_over`).
    pub handover_term: std::sync::Mutex<Option<u64>>,
}

/// True when a quorum acknowledged the leader these metrics describe less than `within` ago
/// (openraft records when it sent what was acknowledged).
pub fn acked_within(m: &openraft::RaftMetrics<weir_storage::TypeConfig>, within: Duration) -> bool {
    m.last_quorum_acked
        .as_ref()
        .is_some_and(|t| openraft::Instant::elapsed(std::ops::Deref::deref(t)) < within)
}

/// True when the replica these metrics describe leads its group. openraft keeps naming a leader
/// that was removed from its group (it is then a learner) as the current leader, so the state
/// must say so too.
pub fn leads(m: &openraft::RaftMetrics<weir_storage::TypeConfig>) -> bool {
    m.state == openraft::ServerState::Leader && m.current_leader == Some(m.id)
}

/// The leader these metrics know of, leaving out this replica itself once it stepped down.
pub fn known_leader(m: &openraft::RaftMetrics<weir_storage::TypeConfig>) -> Option<u64> {
    match m.current_leader {
        Some(l) if l == m.id && !leads(m) => None,
        other => other,
    }
}

/// How long the first founder of a new group waits for the votes it asked for before asking
/// again (doubled at each attempt, so that a slow round trip is not cut short forever).
const NEW_GROUP_FIRST_WAIT: Duration = Duration::from_millis(100);
/// How long it keeps asking; after that the group elects as any group does.
const NEW_GROUP_CAMPAIGN_FOR: Duration = Duration::from_secs(3);

/// Makes the first founder of a group it just initialized stand for election at once, and again
/// after a wait that doubles until the group has a leader: left to itself it would wait out an
/// election timeout (one to two seconds) first, and a topic or table is of no use until its
/// groups have leaders. The other founders may not have created the group yet when the first
/// votes are asked for, hence the retries. Nobody is deposed: a new group has no leader before.
/// Returns true when this node won.
async fn campaign_new(id: u64, raft: &Raft) -> bool {
    let until = Instant::now() + NEW_GROUP_CAMPAIGN_FOR;
    let mut wait = NEW_GROUP_FIRST_WAIT;
    while Instant::now() < until {
        if known_leader(&raft.metrics().borrow_watched()).is_some() {
            break;
        }
        if let Err(e) = raft.trigger().elect(false).await {
            tracing::debug!(group = id, error = %e, "standing for election");
            return false;
        }
        let led = raft
            .wait(Some(wait))
            .metrics(|m| known_leader(m).is_some(), "a leader")
            .await;
        if led.is_ok() {
            break;
        }
        wait *= 2;
    }
    leads(&raft.metrics().borrow_watched())
}

impl GroupHandle {
    /// The current leader's node id, if any.
    pub fn leader(&self) -> Option<u64> {
        known_leader(&self.raft.metrics().borrow_watched())
    }

    /// True when this replica may grant votes: it is not within a lease of its restart, and it
    /// is a founder or its log names it a member (see [`GroupHandle::founder`]).
    pub fn may_vote(&self) -> bool {
        if Instant::now() < self.no_votes_until {
            return false;
        }
        if self.founder {
            return true;
        }
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.membership_config.membership().get_node(&m.id).is_some()
    }

    /// True when this node leads the group.
    pub fn is_leader(&self) -> bool {
        leads(&self.raft.metrics().borrow_watched())
    }

    /// True when this node leads the group and a quorum acknowledged it within an election
    /// timeout (or it is the group's only voter). A leader that heard nothing that long may have
    /// been deposed without knowing: openraft keeps a leader that began a handover leading and
    /// silent, and a successor that then removes it from the group never tells it. Such a
    /// replica must not act for the group (change its membership) nor keep it as the leader.
    pub fn leads_acknowledged(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if !leads(&m) {
            return false;
        }
        let alone = m
            .membership_config
            .membership()
            .voter_ids()
            .all(|v| v == m.id);
        let timeout = Duration::from_millis(self.raft.config().election_timeout_max);
        alone || acked_within(&m, timeout)
    }
}

/// Read access to the groups running on this node.
#[derive(Clone)]
pub struct Registry {
    rx: watch::Receiver<Arc<BTreeMap<u64, Arc<GroupHandle>>>>,
    /// Rung when this node won the first election of a group it founded.
    first_leaderships: Arc<Notify>,
}

impl Registry {
    /// A registry of exactly `groups`, for running groups without a [`GroupManager`] (simulations,
    /// tools); it never changes.
    pub fn fixed(groups: impl IntoIterator<Item = Arc<GroupHandle>>) -> Registry {
        let groups: BTreeMap<u64, Arc<GroupHandle>> =
            groups.into_iter().map(|g| (g.id, g)).collect();
        // A receiver keeps the last value after its sender is gone.
        let (_, rx) = watch::channel(Arc::new(groups));
        Registry {
            rx,
            first_leaderships: Arc::default(),
        }
    }

    /// Waits until this node wins the first election of a group it founded (a new topic's or
    /// table's), which its next heartbeat should report without waiting for its tick: the
    /// statement that created the group waits for the report.
    pub async fn first_leadership(&self) {
        self.first_leaderships.notified().await;
    }

    /// The group `id`, if it runs here.
    pub fn get(&self, id: u64) -> Option<Arc<GroupHandle>> {
        self.rx.borrow().get(&id).cloned()
    }

    /// Every group running here.
    pub fn all(&self) -> Arc<BTreeMap<u64, Arc<GroupHandle>>> {
        self.rx.borrow().clone()
    }

    /// The metadata group (always running once the node has started).
    pub fn metadata(&self) -> NodeResult<Arc<GroupHandle>> {
        self.get(METADATA_GROUP)
            .ok_or_else(|| NodeError::Unavailable("node is starting".into()))
    }

    /// A receiver that sees each catalog this node applies, for loops that act on changes.
    pub fn catalog_changes(&self) -> NodeResult<watch::Receiver<Arc<Catalog>>> {
        match &self.metadata()?.watch {
            GroupWatch::Catalog(rx) => Ok(rx.clone()),
            _ => Err(NodeError::Internal(
                "group 0 is not the metadata group".into(),
            )),
        }
    }

    /// Waits until the catalog changes after `seen` (a receiver from
    /// [`Registry::catalog_changes`], taken when there is none yet); never returns while the
    /// node has no metadata group, nor once it stopped.
    pub async fn catalog_changed(&self, seen: &mut Option<watch::Receiver<Arc<Catalog>>>) {
        if seen.is_none() {
            *seen = self.catalog_changes().ok();
        }
        match seen {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    *seen = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }

    /// The catalog as this node last applied it.
    pub fn catalog(&self) -> NodeResult<Arc<Catalog>> {
        match &self.metadata()?.watch {
            GroupWatch::Catalog(rx) => Ok(rx.borrow().clone()),
            _ => Err(NodeError::Internal(
                "group 0 is not the metadata group".into(),
            )),
        }
    }
}

/// What the manager needs to run groups.
pub struct GroupManagerConfig {
    /// This node's id.
    pub node_id: u64,
    /// This node's advertised address.
    pub advertise: String,
    /// The shared engine.
    pub engine: Engine,
    /// Shared peer channels.
    pub peers: Peers,
    /// Root of the snapshot directories.
    pub snapshot_root: PathBuf,
    /// Liveness of the members (filled on the metadata leader).
    pub liveness: Liveness,
    /// Bootstrap a new cluster with this node as its only member.
    pub bootstrap: bool,
}

/// The actor owning the groups of this node.
pub struct GroupManager {
    cfg: GroupManagerConfig,
    groups: BTreeMap<u64, Arc<GroupHandle>>,
    tx: watch::Sender<Arc<BTreeMap<u64, Arc<GroupHandle>>>>,
    /// Rung when this node won the first election of a group it founded.
    first_leaderships: Arc<Notify>,
    changes: BTreeMap<u64, JoinHandle<()>>,
    moved_away: BTreeMap<u64, RemovalCheck>,
    /// Groups with state on disk that the catalog did not place here when the node started (they
    /// moved away while it was down): they run until their removal is confirmed, then are deleted.
    leftovers: BTreeSet<u64>,
}

/// The state of asking whether a moved-away replica has left its group's membership.
struct RemovalCheck {
    /// The question in flight: resolves to true once the leader confirmed the removal.
    asking: Option<JoinHandle<bool>>,
    /// When the last question was sent.
    asked: Option<Instant>,
}

impl GroupManager {
    /// Starts group 0 and the manager task; returns the registry.
    pub async fn start(cfg: GroupManagerConfig) -> NodeResult<Registry> {
        let (tx, rx) = watch::channel(Arc::new(BTreeMap::new()));
        let first_leaderships = Arc::new(Notify::new());
        let mut mgr = GroupManager {
            cfg,
            groups: BTreeMap::new(),
            tx,
            first_leaderships: first_leaderships.clone(),
            changes: BTreeMap::new(),
            moved_away: BTreeMap::new(),
            leftovers: BTreeSet::new(),
        };
        mgr.leftovers = mgr.local_groups()?;
        let init = if mgr.cfg.bootstrap {
            Some((
                mgr.cfg.node_id,
                BTreeMap::from([(mgr.cfg.node_id, BasicNode::new(mgr.cfg.advertise.clone()))]),
            ))
        } else {
            None
        };
        let meta = mgr
            .open_group(METADATA_GROUP, GroupKind::Metadata, init, mgr.cfg.bootstrap)
            .await?;
        let catalog_rx = match &meta.watch {
            GroupWatch::Catalog(rx) => rx.clone(),
            _ => return Err(NodeError::Internal("group 0 must hold the catalog".into())),
        };
        mgr.groups.insert(METADATA_GROUP, meta);
        mgr.publish();
        tokio::spawn(mgr.run(catalog_rx));
        Ok(Registry {
            rx,
            first_leaderships,
        })
    }

    /// Every group with Raft state in this node's engine, except the metadata group.
    fn local_groups(&self) -> NodeResult<BTreeSet<u64>> {
        let mut ids = BTreeSet::new();
        for cf in [weir_storage::engine::CF_META, weir_storage::engine::CF_LOG] {
            let found = self
                .cfg
                .engine
                .group_ids(cf)
                .map_err(|e| NodeError::Internal(format!("listing local groups: {e}")))?;
            ids.extend(found);
        }
        ids.remove(&METADATA_GROUP);
        Ok(ids)
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.groups.clone()));
    }

    async fn open_group(
        &self,
        id: u64,
        kind: GroupKind,
        init: Option<(u64, BTreeMap<u64, BasicNode>)>,
        founder: bool,
    ) -> NodeResult<Arc<GroupHandle>> {
        let engine = self.cfg.engine.clone();
        // Recovery may clear an install a crash cut short or reset a replica behind its purged
        // log (keeping its vote): disk work, kept off the async worker threads.
        let sm = {
            let (engine, kind, root) =
                (engine.clone(), kind.clone(), self.cfg.snapshot_root.clone());
            weir_storage::engine::on_blocking_thread(move || {
                StateMachine::recover(engine, id, &kind, &root)
            })
            .await?
        };
        let watch = sm.watch();
        let raft_config = match &kind {
            GroupKind::Metadata => config::metadata(),
            GroupKind::Partition { .. } => config::partition(),
            GroupKind::Offsets => config::data(),
            GroupKind::Region { .. } => config::region(),
        };
        // Read from disk: Raft's metrics show the stored vote only once its core has started,
        // which may be after the check below.
        let stored_vote = {
            use openraft::storage::RaftLogReader;
            LogStore::new(engine.clone(), id)
                .read_vote()
                .await
                .map_err(|e| NodeError::Internal(format!("reading the vote of group {id}: {e}")))?
        };
        let raft = Raft::new(
            self.cfg.node_id,
            raft_config,
            GroupNetwork::new(id, self.cfg.peers.clone(), engine.clone()),
            LogStore::new(engine, id),
            sm,
        )
        .await
        .map_err(|e| NodeError::Internal(format!("starting group {id}: {e}")))?;
        // A replica with a vote on disk may have acknowledged a leader just before it stopped;
        // that leader serves lease reads counting on this replica not to vote for another one
        // within the lease, so it neither grants votes nor stands for election until the lease
        // has passed.
        let restarted = stored_vote.is_some_and(|v| v.leader_id.term > 0);
        let lease = Duration::from_millis(raft.config().election_timeout_max);
        let no_votes_until = if restarted {
            Instant::now() + lease
        } else {
            Instant::now()
        };
        match &watch {
            GroupWatch::Partition(state) => {
                crate::raft::compaction::spawn(id, raft.clone(), state.clone())
            }
            GroupWatch::Region(_) => crate::raft::log_gc::spawn(id, raft.clone()),
            GroupWatch::Catalog(_) | GroupWatch::Offsets(_) => {}
        }
        if restarted {
            raft.runtime_config().elect(false);
            let raft = raft.clone();
            tokio::spawn(async move {
                tokio::time::sleep(lease).await;
                raft.runtime_config().elect(true);
            });
        }
        if let Some((first_founder, members)) = init {
            // The first founder initializes at once and so usually becomes the leader (placement
            // rotates first replicas, so leaders spread). The other founders initialize, with the
            // same membership, only if the group still has not reached them later: a group whose
            // first founder is down still forms, and founders do not split the first votes.
            let first = first_founder == self.cfg.node_id;
            let delay = if first {
                Duration::ZERO
            } else {
                FOUNDER_INIT_DELAY
            };
            let raft = raft.clone();
            let won = self.first_leaderships.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(false) = raft.is_initialized().await {
                    tracing::info!(group = id, members = ?members.keys(), "initializing group");
                    if let Err(e) = raft.initialize(members).await {
                        tracing::warn!(group = id, error = %e, "initialize refused");
                        return;
                    }
                    if first && campaign_new(id, &raft).await {
                        won.notify_one();
                    }
                }
            });
        }
        Ok(Arc::new(GroupHandle {
            id,
            kind,
            raft,
            watch,
            snapshots: SnapshotDir::new(&self.cfg.snapshot_root, id),
            no_votes_until,
            founder,
            handover_term: Default::default(),
        }))
    }

    async fn run(mut self, mut catalog_rx: watch::Receiver<Arc<Catalog>>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = catalog_rx.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tick.tick() => {}
            }
            let catalog = catalog_rx.borrow_and_update().clone();
            self.sync_groups(&catalog).await;
            self.reconcile(&catalog);
        }
    }

    /// Starts the groups the catalog places here and drops those it no longer does.
    async fn sync_groups(&mut self, catalog: &Catalog) {
        let me = self.cfg.node_id;
        let mut changed = false;
        // Regions a local parent's split started here although the catalog placed them
        // elsewhere (the parent's replicas were changing): they run like replicas moved away, so
        // the voters of their first membership are there to elect a leader, which then moves
        // the region to its catalog replicas; the moved-away path drops them afterwards.
        let stray: Vec<&GroupInfo> = catalog
            .groups
            .values()
            .filter(|g| {
                matches!(&g.kind, GroupKind::Region { parent: Some(p), .. } if self.groups.contains_key(p))
                    && !g.replicas.contains(&me)
                    && !self.groups.contains_key(&g.id)
                    && matches!(weir_storage::region::load_state(&self.cfg.engine, g.id), Ok(Some(_)))
            })
            .collect();
        // Groups that moved away while this node was down: run them again so that they leave
        // through the same confirmed path as any moved-away replica (a group the catalog no
        // longer has at all is dropped below as deleted).
        let leftover: Vec<&GroupInfo> = self
            .leftovers
            .iter()
            .filter_map(|id| catalog.groups.get(id))
            .filter(|g| !g.replicas.contains(&me) && !self.groups.contains_key(&g.id))
            .collect();
        self.leftovers.clear();
        for g in catalog.groups_of(me).chain(stray).chain(leftover) {
            if g.replicas.contains(&me) {
                self.moved_away.remove(&g.id);
            }
            if self.groups.contains_key(&g.id) {
                continue;
            }
            if let GroupKind::Region {
                parent: Some(parent),
                origin,
                ..
            } = &g.kind
            {
                // A region made by a split starts here once the local replica of its parent has
                // applied the split, which wrote the new region's first state. Where its parent
                // does not run, or got past the split by a snapshot (so never applied it), it
                // starts empty and gets a snapshot from its leader.
                let engine = &self.cfg.engine;
                let seeded = matches!(weir_storage::region::load_state(engine, g.id), Ok(Some(_)));
                let parent_past_split = matches!(
                    weir_storage::region::load_state(engine, *parent),
                    Ok(Some(p)) if p.epoch >= origin.2
                );
                if self.groups.contains_key(parent) && !seeded && !parent_past_split {
                    continue;
                }
            }
            let init = (g.epoch == 0).then(|| {
                let members = g
                    .replicas
                    .iter()
                    .filter_map(|n| {
                        catalog
                            .nodes
                            .get(n)
                            .map(|info| (*n, BasicNode::new(info.addr.clone())))
                    })
                    .collect::<BTreeMap<_, _>>();
                (g.replicas.first().copied().unwrap_or(me), members)
            });
            // A group is created at epoch 0 (a split's region at 1) and every replica move bumps
            // it: at its first epoch no replica has been dropped yet.
            let first_epoch = match &g.kind {
                GroupKind::Region {
                    parent: Some(_), ..
                } => 1,
                _ => 0,
            };
            let founder = g.epoch == first_epoch && g.replicas.contains(&me);
            match self.open_group(g.id, g.kind.clone(), init, founder).await {
                Ok(h) => {
                    tracing::info!(group = g.id, kind = ?g.kind, "started replica");
                    self.groups.insert(g.id, h);
                    changed = true;
                }
                Err(e) => tracing::error!(group = g.id, error = %e, "cannot start replica"),
            }
        }
        let running: Vec<u64> = self.groups.keys().copied().collect();
        for id in running {
            if id == METADATA_GROUP {
                continue;
            }
            let drop_now = match catalog.groups.get(&id) {
                None => true,
                Some(g) if !g.replicas.contains(&me) => self.removal_confirmed(id, catalog),
                Some(_) => false,
            };
            if drop_now {
                if let Some(h) = self.groups.remove(&id) {
                    changed = true;
                    self.moved_away.remove(&id);
                    if let Err(e) = h.raft.shutdown().await {
                        tracing::warn!(group = id, error = %e, "raft shutdown failed");
                    }
                    let dropped =
                        StateMachine::destroy(&self.cfg.engine, id, &self.cfg.snapshot_root);
                    match dropped {
                        Ok(()) => {
                            crate::metrics::replica_dropped();
                            tracing::info!(group = id, "dropped replica");
                        }
                        Err(e) => tracing::error!(group = id, error = %e, "dropping replica"),
                    }
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    /// True once the membership change that removes this node from group `id` has committed, so
    /// its replica can be deleted without leaving the group short of a voter. Asks the group's
    /// leader in the background (a removed replica may never hear of its own removal) and answers
    /// false until it has confirmed.
    fn removal_confirmed(&mut self, id: u64, catalog: &Catalog) -> bool {
        let me = self.cfg.node_id;
        let Some(h) = self.groups.get(&id) else {
            return false;
        };
        if h.leads_acknowledged() {
            // Its own reconciliation moves the group off this node and hands leadership over.
            return false;
        }
        if removed(&membership_view(h), me) {
            return true;
        }
        let check = self.moved_away.entry(id).or_insert(RemovalCheck {
            asking: None,
            asked: None,
        });
        if let Some(task) = check.asking.take_if(|t| t.is_finished()) {
            if let Some(Ok(true)) = task.now_or_never() {
                return true;
            }
        }
        if check.asking.is_none()
            && check
                .asked
                .is_none_or(|t| t.elapsed() >= REMOVAL_CHECK_EVERY)
        {
            let m = h.raft.metrics().borrow_watched().clone();
            let mut addrs: BTreeSet<String> = m
                .membership_config
                .membership()
                .nodes()
                .filter(|(n, _)| **n != me)
                .map(|(_, node)| node.addr.clone())
                .collect();
            if let Some(g) = catalog.groups.get(&id) {
                addrs.extend(
                    g.replicas
                        .iter()
                        .filter(|n| **n != me)
                        .filter_map(|n| catalog.nodes.get(n).map(|i| i.addr.clone())),
                );
            }
            let peers = self.cfg.peers.clone();
            check.asked = Some(Instant::now());
            check.asking = Some(tokio::spawn(leader_confirms_removal(id, me, addrs, peers)));
        }
        false
    }

    /// For every group led here, moves its Raft membership towards the catalog's replica set.
    fn reconcile(&mut self, catalog: &Catalog) {
        self.changes.retain(|_, h| !h.is_finished());
        for (id, h) in &self.groups {
            if !h.leads_acknowledged() || self.changes.contains_key(id) {
                continue;
            }
            let (voters, learners) = if *id == METADATA_GROUP {
                metadata_members(catalog, h, &self.cfg.liveness)
            } else {
                match catalog.groups.get(id) {
                    Some(g) => (g.replicas.iter().copied().collect(), BTreeSet::new()),
                    None => continue,
                }
            };
            if voters.is_empty() {
                continue;
            }
            if let Some(task) = membership_step(h, catalog, voters, learners) {
                self.changes.insert(*id, tokio::spawn(task));
            }
        }
    }
}

/// A group's membership as replica `h` sees it, in the form the `Membership` RPC answers.
pub fn membership_view(h: &GroupHandle) -> MembershipReply {
    let m = h.raft.metrics().borrow_watched().clone();
    let stored = &m.membership_config;
    let membership = stored.membership();
    let members: BTreeSet<u64> = membership
        .voter_ids()
        .chain(membership.learner_ids())
        .collect();
    MembershipReply {
        leader: leads(&m),
        leader_id: known_leader(&m).unwrap_or(0),
        members: members.into_iter().collect(),
        committed: stored.log_id().is_some() && *stored.log_id() <= m.last_applied,
    }
}

/// True when `view` is a committed membership that no longer has `node`.
fn removed(view: &MembershipReply, node: u64) -> bool {
    view.committed && !view.members.contains(&node)
}

/// Asks the replicas at `addrs` for group `group`'s membership and answers true once one that
/// leads it reports a committed membership without `me`.
async fn leader_confirms_removal(
    group: u64,
    me: u64,
    addrs: BTreeSet<String>,
    peers: Peers,
) -> bool {
    for addr in addrs {
        let Ok(channel) = peers.lane(&addr, Lane::Control) else {
            continue;
        };
        let mut client = RaftTransportClient::new(channel);
        let ask = client.membership(MembershipRequest { group_id: group });
        match tokio::time::timeout(REMOVAL_CHECK_TIMEOUT, ask).await {
            Ok(Ok(reply)) => {
                let view = reply.into_inner();
                if view.leader {
                    let gone = removed(&view, me);
                    tracing::debug!(group, leader = %addr, gone, "asked the leader about removal");
                    return gone;
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(group, peer = %addr, error = %e, "membership query failed")
            }
            Err(_) => tracing::debug!(group, peer = %addr, "membership query timed out"),
        }
    }
    false
}

/// The metadata group's target: up to three voters that are not long gone, everyone else a learner.
fn metadata_members(
    catalog: &Catalog,
    h: &GroupHandle,
    liveness: &Liveness,
) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let m = h.raft.metrics().borrow_watched().clone();
    let me = m.id;
    let present: BTreeSet<u64> = catalog
        .nodes
        .keys()
        .copied()
        .filter(|n| *n == me || !liveness.is_gone(*n))
        .collect();
    let mut voters: BTreeSet<u64> = m
        .membership_config
        .membership()
        .voter_ids()
        .filter(|n| present.contains(n))
        .collect();
    for n in &present {
        if voters.len() >= 3 {
            break;
        }
        if liveness.is_up(*n) || *n == me {
            voters.insert(*n);
        }
    }
    let learners = present.difference(&voters).copied().collect();
    (voters, learners)
}

/// One step that moves a group's Raft membership towards its target.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MembershipPlan {
    /// Leave a joint configuration that an interrupted change left behind (a leader that crashed
    /// or lost leadership between the two steps, or a region that inherited it at a split) by
    /// committing its newest configuration; openraft never finishes one by itself.
    FinishJoint(BTreeSet<u64>),
    /// Add nodes that must hold the data as learners, so they catch up before they vote.
    AddLearners(Vec<u64>),
    /// Make the voters exactly these (the new ones have caught up).
    ChangeVoters(BTreeSet<u64>),
    /// Drop learners that are no longer wanted.
    RemoveLearners(BTreeSet<u64>),
}

/// The next step from `membership` towards `voters` + `learners`, if any; `caught_up` says
/// whether a node's log is close enough to the leader's for it to become a voter.
fn plan_membership(
    membership: &Membership<u64, BasicNode>,
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    caught_up: impl Fn(&u64) -> bool,
) -> Option<MembershipPlan> {
    let configs = membership.get_joint_config();
    if configs.len() > 1 {
        return configs.last().cloned().map(MembershipPlan::FinishJoint);
    }
    let cur_voters: BTreeSet<u64> = membership.voter_ids().collect();
    let cur_learners: BTreeSet<u64> = membership.learner_ids().collect();
    if &cur_voters == voters && &cur_learners == learners {
        return None;
    }
    let to_add: Vec<u64> = voters
        .union(learners)
        .filter(|n| !cur_voters.contains(n) && !cur_learners.contains(n))
        .copied()
        .collect();
    if !to_add.is_empty() {
        return Some(MembershipPlan::AddLearners(to_add));
    }
    if &cur_voters != voters {
        let new_ready = voters
            .iter()
            .filter(|n| !cur_voters.contains(n))
            .all(caught_up);
        return new_ready.then(|| MembershipPlan::ChangeVoters(voters.clone()));
    }
    let extra: BTreeSet<u64> = cur_learners.difference(learners).copied().collect();
    (!extra.is_empty()).then_some(MembershipPlan::RemoveLearners(extra))
}

/// The next membership change that moves `h` towards `voters` + `learners`, as a task, if any.
fn membership_step(
    h: &GroupHandle,
    catalog: &Catalog,
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let m = h.raft.metrics().borrow_watched().clone();
    let last = m.last_log_index.unwrap_or(0);
    let caught_up = |n: &u64| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(n).cloned().flatten())
            .is_some_and(|l| l.index + CAUGHT_UP_ENTRIES >= last)
    };
    let plan = plan_membership(
        m.membership_config.membership(),
        &voters,
        &learners,
        caught_up,
    )?;
    let raft = h.raft.clone();
    let group = h.id;
    let nodes: Vec<(u64, BasicNode)> = match &plan {
        MembershipPlan::AddLearners(ids) => ids
            .iter()
            .filter_map(|n| {
                catalog
                    .nodes
                    .get(n)
                    .map(|i| (*n, BasicNode::new(i.addr.clone())))
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(async move {
        match plan {
            MembershipPlan::FinishJoint(target) => {
                tracing::info!(group, voters = ?target, "finishing a joint membership");
                if let Err(e) = raft.change_membership(target, false).await {
                    tracing::warn!(group, error = %e, "finishing the joint membership failed");
                }
            }
            MembershipPlan::AddLearners(_) => {
                for (n, node) in nodes {
                    tracing::info!(group, node = n, "adding learner");
                    if let Err(e) = raft.add_learner(n, node, false).await {
                        tracing::warn!(group, node = n, error = %e, "add learner failed");
                    }
                }
            }
            MembershipPlan::ChangeVoters(voters) => {
                tracing::info!(group, ?voters, "changing voters");
                if let Err(e) = raft.change_membership(voters, false).await {
                    tracing::warn!(group, error = %e, "membership change failed");
                }
            }
            MembershipPlan::RemoveLearners(extra) => {
                tracing::info!(group, ?extra, "removing learners");
                if let Err(e) = raft
                    .change_membership(ChangeMembers::RemoveNodes(extra), false)
                    .await
                {
                    tracing::warn!(group, error = %e, "removing learners failed");
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    fn membership(configs: &[&[u64]], learners: &[u64]) -> Membership<u64, BasicNode> {
        let all: BTreeSet<u64> = configs
            .iter()
            .flat_map(|c| c.iter().copied())
            .chain(learners.iter().copied())
            .collect();
        let nodes: BTreeMap<u64, BasicNode> = all
            .into_iter()
            .map(|n| (n, BasicNode::new(format!("127.0.0.1:{}", 7000 + n))))
            .collect();
        Membership::new(configs.iter().map(|c| ids(c)).collect(), nodes).expect("valid membership")
    }

    #[test]
    fn a_joint_membership_is_finished_at_its_newest_configuration() {
        // A leader that crashed between the two steps of {1,2,3} -> {2,3,4} left both configs.
        let joint = membership(&[&[1, 2, 3], &[2, 3, 4]], &[]);
        let plan = plan_membership(&joint, &ids(&[2, 3, 4]), &BTreeSet::new(), |_| true);
        assert_eq!(plan, Some(MembershipPlan::FinishJoint(ids(&[2, 3, 4]))));
        // Even when the catalog has since moved on to yet another replica set.
        let plan = plan_membership(&joint, &ids(&[3, 4, 5]), &BTreeSet::new(), |_| true);
        assert_eq!(plan, Some(MembershipPlan::FinishJoint(ids(&[2, 3, 4]))));
    }

    #[test]
    fn a_move_adds_a_learner_then_swaps_voters_once_it_caught_up_then_drops_learners() {
        let start = membership(&[&[1, 2, 3]], &[]);
        let target = ids(&[2, 3, 4]);
        let none = BTreeSet::new();
        assert_eq!(
            plan_membership(&start, &target, &none, |_| true),
            Some(MembershipPlan::AddLearners(vec![4]))
        );
        let with_learner = membership(&[&[1, 2, 3]], &[4]);
        assert_eq!(
            plan_membership(&with_learner, &target, &none, |_| false),
            None
        );
        assert_eq!(
            plan_membership(&with_learner, &target, &none, |n| *n == 4),
            Some(MembershipPlan::ChangeVoters(target.clone()))
        );
        let done = membership(&[&[2, 3, 4]], &[]);
        assert_eq!(plan_membership(&done, &target, &none, |_| true), None);
        let extra_learner = membership(&[&[2, 3, 4]], &[1]);
        assert_eq!(
            plan_membership(&extra_learner, &target, &none, |_| true),
            Some(MembershipPlan::RemoveLearners(ids(&[1])))
        );
    }

    #[test]
    fn only_a_committed_membership_without_the_node_counts_as_its_removal() {
        let view = |members: &[u64], committed| MembershipReply {
            leader: true,
            leader_id: 1,
            members: members.to_vec(),
            committed,
        };
        assert!(removed(&view(&[1, 2, 4], true), 3));
        assert!(!removed(&view(&[1, 2, 4], false), 3));
        assert!(!removed(&view(&[1, 2, 3, 4], true), 3));
    }
}
