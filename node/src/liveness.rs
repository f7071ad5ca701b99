//! Liveness of the members, as the metadata leader hears their heartbeats.
//!
//! Soft state: it lives only on the metadata leader and starts afresh when leadership moves, giving
//! every member a full window to report in before it is counted down. Until this node has become
//! the metadata leader (and armed it), it knows nothing, and then it counts every member as alive:
//! a follower must never conclude that its peers are gone just because nobody reported to it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use weir_proto::v1::GroupReport;

/// A member is shown "down" after this long without a heartbeat.
pub const DOWN_AFTER: Duration = Duration::from_secs(5);

#[derive(Default)]
struct State {
    since: Option<Instant>,
    seen: BTreeMap<u64, (Instant, Vec<GroupReport>)>,
}

/// Heartbeat bookkeeping shared by the cluster service and the placement loop.
#[derive(Clone)]
pub struct Liveness {
    state: Arc<Mutex<State>>,
    gone_after: Duration,
}

impl Liveness {
    /// Members that may receive new replicas or tasks: every node of `catalog` not known to be
    /// down.
    pub fn up_members(&self, catalog: &weir_storage::catalog::Catalog) -> Vec<u64> {
        catalog
            .nodes
            .keys()
            .copied()
            .filter(|n| self.is_up(*n))
            .collect()
    }

    /// Liveness where a member silent for `gone_after` has its replicas re-created elsewhere.
    pub fn new(gone_after: Duration) -> Liveness {
        Liveness {
            state: Arc::new(Mutex::new(State::default())),
            gone_after,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut s)
    }

    /// Stops judging liveness (this node no longer leads the metadata group).
    pub fn disarm(&self) {
        self.with(|s| {
            s.since = None;
            s.seen.clear();
        })
    }

    /// Forgets everything and starts judging afresh (this node just became the metadata leader).
    pub fn reset(&self) {
        self.with(|s| {
            s.since = Some(Instant::now());
            s.seen.clear();
        })
    }

    /// Records a heartbeat.
    pub fn record(&self, node: u64, reports: Vec<GroupReport>) {
        self.with(|s| {
            s.seen.insert(node, (Instant::now(), reports));
        })
    }

    /// Time since `node` was last heard from (or since bookkeeping began; zero while disarmed).
    pub fn silence(&self, node: u64) -> Duration {
        self.with(|s| match s.seen.get(&node) {
            Some((t, _)) => t.elapsed(),
            None => s.since.map(|t| t.elapsed()).unwrap_or_default(),
        })
    }

    /// True when `node` reported recently, or may still report in (for placement decisions).
    pub fn is_up(&self, node: u64) -> bool {
        self.silence(node) < DOWN_AFTER
    }

    /// True only when `node` actually reported within the liveness window (for display).
    pub fn was_heard(&self, node: u64) -> bool {
        self.with(|s| {
            s.seen
                .get(&node)
                .is_some_and(|(t, _)| t.elapsed() < DOWN_AFTER)
        })
    }

    /// True when `node` has been silent long enough to re-create its replicas elsewhere.
    pub fn is_gone(&self, node: u64) -> bool {
        self.silence(node) >= self.gone_after
    }

    /// The latest group reports of every member.
    pub fn reports(&self) -> BTreeMap<u64, Vec<GroupReport>> {
        self.with(|s| s.seen.iter().map(|(n, (_, r))| (*n, r.clone())).collect())
    }
}
