//! Leader balance: every table's regions and every topic's partitions led evenly by the nodes
//! that hold their replicas.
//!
//! Placement spreads replicas, but a region that splits keeps its leader on both sides, so a
//! table loaded through one node ends up led, and therefore scanned and written, by that node
//! alone. The placement loop (on the metadata leader) picks hand-overs from the leaders the
//! members report; an instruction rides on the leading node's next heartbeat answer, and that
//! node hands the group to the chosen voter if it still leads it in the reported term (see
//! `GroupHandle::hand_over`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use weir_proto::v1::{GroupReport, LeaderTransfer};
use weir_storage::catalog::{Catalog, GroupKind};

/// How long a hand-over counts as done before the leaders reported show it: reports lag the
/// instruction by a heartbeat or two, and counting it as done keeps the next picks from
/// overshooting.
const SETTLE_AFTER_TRANSFER: Duration = Duration::from_secs(10);
/// A group is handed over only while its followers are at most this many entries behind: the
/// new leader must hold the old one's last entry before it stands, and the group takes no writes
/// until it does.
const MAX_LAG: u64 = 32;
/// Most hand-overs started per placement tick.
pub const TRANSFERS_PER_TICK: usize = 4;

/// A group's leader as reported: node, term and voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Led {
    /// The node leading.
    pub node: u64,
    /// The term it leads in.
    pub term: u64,
    /// The group's voters as that leader sees them.
    pub voters: Vec<u64>,
    /// How many entries the furthest follower is behind.
    pub lag: u64,
}

/// The leader of every group some member reports leading (the highest term wins when a deposed
/// leader has not noticed yet).
pub fn reported_leaders(reports: &BTreeMap<u64, Vec<GroupReport>>) -> BTreeMap<u64, Led> {
    let mut out: BTreeMap<u64, Led> = BTreeMap::new();
    for (node, rs) in reports {
        for r in rs.iter().filter(|r| r.leader) {
            if out.get(&r.group_id).is_some_and(|l| l.term >= r.term) {
                continue;
            }
            out.insert(
                r.group_id,
                Led {
                    node: *node,
                    term: r.term,
                    voters: r.voters.clone(),
                    lag: r.max_lag,
                },
            );
        }
    }
    out
}

/// The table or topic a group belongs to; other groups are not balanced.
fn owner(kind: &GroupKind) -> Option<(bool, &str)> {
    match kind {
        GroupKind::Region { table, .. } => Some((true, table)),
        GroupKind::Partition { topic, .. } => Some((false, topic)),
        _ => None,
    }
}

/// The next hand-over that evens out the leaders of one table or topic: from the node leading
/// the most of its groups to one leading at least two fewer that holds a voter of the group.
/// `moved` are hand-overs already instructed (group to node), counted as done.
pub fn next_transfer(
    catalog: &Catalog,
    leaders: &BTreeMap<u64, Led>,
    up: &BTreeSet<u64>,
    moved: &BTreeMap<u64, u64>,
) -> Option<LeaderTransfer> {
    // Per owner: the groups each node leads (with the hand-overs counted as done).
    let mut owners: BTreeMap<(bool, &str), BTreeMap<u64, Vec<u64>>> = BTreeMap::new();
    for g in catalog.groups.values() {
        let (Some(key), Some(led)) = (owner(&g.kind), leaders.get(&g.id)) else {
            continue;
        };
        let by_node = owners.entry(key).or_default();
        for v in led.voters.iter().filter(|v| up.contains(v)) {
            by_node.entry(*v).or_default();
        }
        let node = moved.get(&g.id).copied().unwrap_or(led.node);
        by_node.entry(node).or_default().push(g.id);
    }
    for by_node in owners.values() {
        let Some((_, groups)) = by_node
            .iter()
            .max_by_key(|(node, groups)| (groups.len(), std::cmp::Reverse(**node)))
        else {
            continue;
        };
        // Nodes leading at least two fewer, fewest first.
        let mut takers: Vec<(usize, u64)> = by_node
            .iter()
            .filter(|(n, gs)| up.contains(n) && gs.len() + 2 <= groups.len())
            .map(|(n, gs)| (gs.len(), *n))
            .collect();
        takers.sort();
        for (_, to) in takers {
            let pick = groups.iter().find(|g| {
                !moved.contains_key(g)
                    && leaders
                        .get(g)
                        .is_some_and(|l| l.lag <= MAX_LAG && l.voters.contains(&to))
            });
            if let Some(g) = pick {
                return Some(LeaderTransfer {
                    group_id: *g,
                    to_node: to,
                    term: leaders[g].term,
                });
            }
        }
    }
    None
}

#[derive(Default)]
struct State {
    /// Instructions waiting for their node's next heartbeat, by node.
    pending: BTreeMap<u64, Vec<LeaderTransfer>>,
    /// Hand-overs instructed lately: group to (node, when).
    recent: BTreeMap<u64, (u64, Instant)>,
}

/// The metadata leader's hand-overs: instructed by the placement loop, collected by the
/// heartbeat answers. Soft state, like liveness.
#[derive(Clone, Default)]
pub struct LeaderBalance {
    state: Arc<Mutex<State>>,
}

impl LeaderBalance {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Picks up to [`TRANSFERS_PER_TICK`] hand-overs and queues each for the node leading the
    /// group; returns how many.
    pub fn plan(
        &self,
        catalog: &Catalog,
        reports: &BTreeMap<u64, Vec<GroupReport>>,
        up: &BTreeSet<u64>,
    ) -> usize {
        let leaders = reported_leaders(reports);
        self.with(|s| {
            let now = Instant::now();
            s.recent
                .retain(|_, (_, at)| now.duration_since(*at) < SETTLE_AFTER_TRANSFER);
            let mut moved: BTreeMap<u64, u64> =
                s.recent.iter().map(|(g, (to, _))| (*g, *to)).collect();
            let mut planned = 0;
            while planned < TRANSFERS_PER_TICK {
                let Some(t) = next_transfer(catalog, &leaders, up, &moved) else {
                    break;
                };
                tracing::info!(group = t.group_id, to = t.to_node, "leader balance");
                moved.insert(t.group_id, t.to_node);
                s.recent.insert(t.group_id, (t.to_node, now));
                let from = leaders[&t.group_id].node;
                s.pending.entry(from).or_default().push(t);
                planned += 1;
            }
            planned
        })
    }

    /// The hand-overs waiting for `node` (taken: each is sent once).
    pub fn take(&self, node: u64) -> Vec<LeaderTransfer> {
        self.with(|s| s.pending.remove(&node).unwrap_or_default())
    }

    /// Forgets everything (this node no longer leads the metadata group).
    pub fn clear(&self) {
        self.with(|s| *s = State::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_storage::catalog::GroupInfo;

    fn catalog(regions: u64) -> Catalog {
        let mut c = Catalog::default();
        for id in 1..=regions {
            c.groups.insert(
                id,
                GroupInfo {
                    id,
                    kind: GroupKind::Region {
                        table: "t".into(),
                        start: Vec::new(),
                        end: Vec::new(),
                        epoch: 0,
                        parent: None,
                        origin: (Vec::new(), Vec::new(), 0),
                    },
                    replicas: vec![1, 2, 3],
                    epoch: 0,
                },
            );
        }
        c
    }

    fn led_by(node: u64) -> Led {
        Led {
            node,
            term: 5,
            voters: vec![1, 2, 3],
            lag: 0,
        }
    }

    #[test]
    fn a_table_led_by_one_node_spreads_over_its_replicas() {
        let c = catalog(9);
        let mut leaders: BTreeMap<u64, Led> = (1..=9).map(|g| (g, led_by(1))).collect();
        let up: BTreeSet<u64> = [1, 2, 3].into();
        let mut moved = BTreeMap::new();
        while let Some(t) = next_transfer(&c, &leaders, &up, &moved) {
            assert_eq!(t.term, 5);
            assert_ne!(t.to_node, leaders[&t.group_id].node);
            moved.insert(t.group_id, t.to_node);
            assert!(moved.len() <= 6, "too many hand-overs: {moved:?}");
        }
        for (g, to) in &moved {
            leaders.get_mut(g).unwrap().node = *to;
        }
        let mut count: BTreeMap<u64, usize> = BTreeMap::new();
        for l in leaders.values() {
            *count.entry(l.node).or_default() += 1;
        }
        assert_eq!(count, [(1, 3), (2, 3), (3, 3)].into());
        assert_eq!(next_transfer(&c, &leaders, &up, &BTreeMap::new()), None);
    }

    #[test]
    fn a_down_node_or_one_without_a_voter_takes_nothing() {
        let c = catalog(4);
        let mut leaders: BTreeMap<u64, Led> = (1..=4).map(|g| (g, led_by(1))).collect();
        for l in leaders.values_mut() {
            l.voters = vec![1, 2];
        }
        let up: BTreeSet<u64> = [1, 3].into();
        assert_eq!(next_transfer(&c, &leaders, &up, &BTreeMap::new()), None);
        let up: BTreeSet<u64> = [1, 2, 3].into();
        let t = next_transfer(&c, &leaders, &up, &BTreeMap::new()).unwrap();
        assert_eq!(t.to_node, 2);
        // Nor is a group whose followers lag handed over.
        for l in leaders.values_mut() {
            l.lag = 1000;
        }
        assert_eq!(next_transfer(&c, &leaders, &up, &BTreeMap::new()), None);
    }

    #[test]
    fn the_newest_term_names_the_leader() {
        let report = |g, leader, term| GroupReport {
            group_id: g,
            leader,
            term,
            voters: vec![1, 2],
            ..Default::default()
        };
        let reports: BTreeMap<u64, Vec<GroupReport>> =
            [(1, vec![report(7, true, 3)]), (2, vec![report(7, true, 4)])].into();
        assert_eq!(reported_leaders(&reports)[&7].node, 2);
    }
}
