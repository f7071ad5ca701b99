//! The group manager: the actor that owns every Raft group running on this node.
//!
//! It starts a group when the catalog places a replica here, drops it (and its data) when the group
//! is deleted or moved away, and, for the groups this node leads, reconciles the group's Raft
//! membership with the replica set the catalog asks for. Other parts of the node read the running
//! groups through a [`Registry`], a published immutable map, so nobody locks the manager's state.

use openraft::async_runtime::WatchReceiver;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{BasicNode, ChangeMembers};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_storage::catalog::{Catalog, GroupInfo, GroupKind, METADATA_GROUP};
use weir_storage::snapshot::SnapshotDir;
use weir_storage::types::Raft;
use weir_storage::{Engine, GroupWatch, LogStore, StateMachine};

use crate::error::{NodeError, NodeResult};
use crate::liveness::Liveness;
use crate::peers::Peers;
use crate::raft::{config, network::GroupNetwork};

/// How long a replica the catalog moved away keeps running before it is dropped, so the leader
/// can finish the membership change that removes it.
const MOVED_AWAY_GRACE: Duration = Duration::from_secs(20);
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
}

impl GroupHandle {
    /// The current leader's node id, if any.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow_watched().current_leader
    }

    /// True when this node leads the group.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.current_leader == Some(m.id)
    }
}

/// Read access to the groups running on this node.
#[derive(Clone)]
pub struct Registry {
    rx: watch::Receiver<Arc<HashMap<u64, Arc<GroupHandle>>>>,
}

impl Registry {
    /// A registry of exactly `groups`, for running groups without a [`GroupManager`] (simulations,
    /// tools); it never changes.
    pub fn fixed(groups: impl IntoIterator<Item = Arc<GroupHandle>>) -> Registry {
        let groups: HashMap<u64, Arc<GroupHandle>> =
            groups.into_iter().map(|g| (g.id, g)).collect();
        // A receiver keeps the last value after its sender is gone.
        let (_, rx) = watch::channel(Arc::new(groups));
        Registry { rx }
    }

    /// The group `id`, if it runs here.
    pub fn get(&self, id: u64) -> Option<Arc<GroupHandle>> {
        self.rx.borrow().get(&id).cloned()
    }

    /// Every group running here.
    pub fn all(&self) -> Arc<HashMap<u64, Arc<GroupHandle>>> {
        self.rx.borrow().clone()
    }

    /// The metadata group (always running once the node has started).
    pub fn metadata(&self) -> NodeResult<Arc<GroupHandle>> {
        self.get(METADATA_GROUP)
            .ok_or_else(|| NodeError::Unavailable("node is starting".into()))
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
    groups: HashMap<u64, Arc<GroupHandle>>,
    tx: watch::Sender<Arc<HashMap<u64, Arc<GroupHandle>>>>,
    changes: HashMap<u64, JoinHandle<()>>,
    moved_away: HashMap<u64, Instant>,
}

impl GroupManager {
    /// Starts group 0 and the manager task; returns the registry.
    pub async fn start(cfg: GroupManagerConfig) -> NodeResult<Registry> {
        let (tx, rx) = watch::channel(Arc::new(HashMap::new()));
        let mut mgr = GroupManager {
            cfg,
            groups: HashMap::new(),
            tx,
            changes: HashMap::new(),
            moved_away: HashMap::new(),
        };
        let init = if mgr.cfg.bootstrap {
            Some((
                mgr.cfg.node_id,
                BTreeMap::from([(mgr.cfg.node_id, BasicNode::new(mgr.cfg.advertise.clone()))]),
            ))
        } else {
            None
        };
        let meta = mgr
            .open_group(METADATA_GROUP, GroupKind::Metadata, init)
            .await?;
        let catalog_rx = match &meta.watch {
            GroupWatch::Catalog(rx) => rx.clone(),
            _ => return Err(NodeError::Internal("group 0 must hold the catalog".into())),
        };
        mgr.groups.insert(METADATA_GROUP, meta);
        mgr.publish();
        tokio::spawn(mgr.run(catalog_rx));
        Ok(Registry { rx })
    }

    fn publish(&self) {
        self.tx.send_replace(Arc::new(self.groups.clone()));
    }

    async fn open_group(
        &self,
        id: u64,
        kind: GroupKind,
        init: Option<(u64, BTreeMap<u64, BasicNode>)>,
    ) -> NodeResult<Arc<GroupHandle>> {
        let engine = self.cfg.engine.clone();
        // Recovery may clear an install a crash cut short or reset a replica behind its purged
        // log (keeping its vote): disk work, kept off the async worker threads.
        let sm = {
            let (engine, kind, root) =
                (engine.clone(), kind.clone(), self.cfg.snapshot_root.clone());
            tokio::task::spawn_blocking(move || StateMachine::recover(engine, id, &kind, &root))
                .await
                .map_err(|e| NodeError::Internal(format!("group {id}: recovery task: {e}")))??
        };
        let watch = sm.watch();
        let raft_config = if id == METADATA_GROUP {
            config::metadata()
        } else {
            config::data()
        };
        let raft = Raft::new(
            self.cfg.node_id,
            raft_config,
            GroupNetwork::new(id, self.cfg.peers.clone()),
            LogStore::new(engine, id),
            sm,
        )
        .await
        .map_err(|e| NodeError::Internal(format!("starting group {id}: {e}")))?;
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
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                if let Ok(false) = raft.is_initialized().await {
                    tracing::info!(group = id, members = ?members.keys(), "initializing group");
                    if let Err(e) = raft.initialize(members).await {
                        tracing::warn!(group = id, error = %e, "initialize refused");
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
        for g in catalog.groups_of(me).chain(stray) {
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
            match self.open_group(g.id, g.kind.clone(), init).await {
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
                Some(g) if !g.replicas.contains(&me) => {
                    let since = *self.moved_away.entry(id).or_insert_with(Instant::now);
                    let leading = self.groups.get(&id).is_some_and(|h| h.is_leader());
                    !leading && since.elapsed() > MOVED_AWAY_GRACE
                }
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
                        Ok(()) => tracing::info!(group = id, "dropped replica"),
                        Err(e) => tracing::error!(group = id, error = %e, "dropping replica"),
                    }
                }
            }
        }
        if changed {
            self.publish();
        }
    }

    /// For every group led here, moves its Raft membership towards the catalog's replica set.
    fn reconcile(&mut self, catalog: &Catalog) {
        self.changes.retain(|_, h| !h.is_finished());
        for (id, h) in &self.groups {
            if !h.is_leader() || self.changes.contains_key(id) {
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

/// The next membership change that moves `h` towards `voters` + `learners`, if any.
fn membership_step(
    h: &GroupHandle,
    catalog: &Catalog,
    voters: BTreeSet<u64>,
    learners: BTreeSet<u64>,
) -> Option<impl std::future::Future<Output = ()> + Send + 'static> {
    let m = h.raft.metrics().borrow_watched().clone();
    let membership = m.membership_config.membership();
    if membership.get_joint_config().len() > 1 {
        return None;
    }
    let cur_voters: BTreeSet<u64> = membership.voter_ids().collect();
    let cur_learners: BTreeSet<u64> = membership.learner_ids().collect();
    if cur_voters == voters && cur_learners == learners {
        return None;
    }
    let raft = h.raft.clone();
    let group = h.id;
    let addr = |n: u64| {
        catalog
            .nodes
            .get(&n)
            .map(|i| BasicNode::new(i.addr.clone()))
    };
    // Everyone who must hold the data but is not in the group yet joins as a learner first.
    let to_add: Vec<(u64, BasicNode)> = voters
        .union(&learners)
        .filter(|n| !cur_voters.contains(n) && !cur_learners.contains(n))
        .filter_map(|n| Some((*n, addr(*n)?)))
        .collect();
    if !to_add.is_empty() {
        return Some(Box::pin(async move {
            for (n, node) in to_add {
                tracing::info!(group, node = n, "adding learner");
                if let Err(e) = raft.add_learner(n, node, false).await {
                    tracing::warn!(group, node = n, error = %e, "add learner failed");
                }
            }
        })
            as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);
    }
    let last = m.last_log_index.unwrap_or(0);
    let caught_up = |n: &u64| {
        m.replication
            .as_ref()
            .and_then(|r| r.get(n).cloned().flatten())
            .is_some_and(|l| l.index + CAUGHT_UP_ENTRIES >= last)
    };
    if cur_voters != voters {
        if !voters
            .iter()
            .filter(|n| !cur_voters.contains(n))
            .all(caught_up)
        {
            return None;
        }
        return Some(Box::pin(async move {
            tracing::info!(group, ?voters, "changing voters");
            if let Err(e) = raft.change_membership(voters, false).await {
                tracing::warn!(group, error = %e, "membership change failed");
            }
        }));
    }
    let extra: BTreeSet<u64> = cur_learners.difference(&learners).copied().collect();
    if extra.is_empty() {
        return None;
    }
    Some(Box::pin(async move {
        tracing::info!(group, ?extra, "removing learners");
        if let Err(e) = raft
            .change_membership(ChangeMembers::RemoveNodes(extra), false)
            .await
        {
            tracing::warn!(group, error = %e, "removing learners failed");
        }
    }))
}
