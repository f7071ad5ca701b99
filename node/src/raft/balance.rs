//! Leader balance: a node leading more of a table's regions (or a topic's partitions) than another
//! voter does hands some of them over, and then more groups in all, so reads, writes and the
//! memory they take (region images, job tasks) spread over the cluster instead of staying where
//! elections and splits left them.
//!
//! Elections pick leaders by who timed out first, and both halves of a split stay with the
//! splitting leader: after a start, a load, or a node's return, one node often leads most groups
//! while the others idle. Evening the total alone is not enough: every region of one table can sit
//! with one node while the totals are even, and a scan of that table then runs on one node. Each
//! node looks at the groups it holds a replica of (their leaders are known to every replica) and,
//! for groups it leads, plans two kinds of handover to a ready voter:
//!
//! - *per owner*: when this node leads at least two more of the group's table (or topic) than
//!   the voter does;
//! - *in all*: when this node leads at least two more groups than the voter and at least one more
//!   of the group's owner (so the move does not unbalance that table).
//!
//! Each move lowers, in this order, the sum over owners and nodes of the squared number of groups
//! led, then the sum over nodes of the squared totals; neither can fall forever, so rounds settle
//! and never hand a group back and forth. A group is handed over only when nothing about it is in
//! motion: its membership is the catalog's replica set with no joint configuration or learner,
//! this leader has applied an entry of its own term, and the successor's log matches the leader's
//! last entry (openraft's transfer makes the successor elect itself at once only then; a successor
//! behind would leave the group to its election timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use weir_storage::catalog::{Catalog, GroupKind, METADATA_GROUP};

use crate::groups::{known_leader, GroupHandle, Registry};

/// Pause between balance rounds (jittered by ±20%).
pub const BALANCE_EVERY: Duration = Duration::from_secs(5);
/// At most this many groups handed over by one node per round, so a node coming back takes its
/// share over a few rounds rather than in one burst of elections.
const MOST_PER_ROUND: usize = 4;

/// Hands over, forever, the groups this node leads beyond its share.
pub async fn balance_loop(me: u64, registry: Registry) {
    loop {
        let jitter = weir_storage::runtime::jitter(0.8, 1.2);
        tokio::time::sleep(BALANCE_EVERY.mul_f64(jitter)).await;
        let Ok(catalog) = registry.catalog() else {
            continue;
        };
        for (group, to) in handovers(me, &registry, &catalog) {
            hand_over(&group, to).await;
        }
    }
}

/// One group as this node sees it, for planning a round.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    /// Group id.
    group: u64,
    /// What the group is part of (`table:<name>`, `topic:<name>`, `offsets`): groups of one owner
    /// are spread over their voters.
    owner: String,
    /// Its known leader.
    leader: Option<u64>,
    /// Its voters.
    voters: Vec<u64>,
    /// Voters that could take the group over from this node now (none unless this node leads a
    /// settled group).
    ready: Vec<u64>,
}

/// The groups this node should hand over this round, and to whom.
fn handovers(me: u64, registry: &Registry, catalog: &Catalog) -> Vec<(Arc<GroupHandle>, u64)> {
    let groups = registry.all();
    let seen: Vec<Seen> = groups
        .values()
        .filter(|g| g.id != METADATA_GROUP)
        .filter_map(|g| {
            // A group the catalog no longer has (dropped, or merged away) is not balanced.
            let info = catalog.groups.get(&g.id)?;
            let m = g.raft.metrics().borrow_watched().clone();
            Some(Seen {
                group: g.id,
                owner: owner(&info.kind),
                leader: known_leader(&m),
                voters: m.membership_config.membership().voter_ids().collect(),
                ready: ready(me, &m, &info.replicas),
            })
        })
        .collect();
    plan(me, &seen)
        .into_iter()
        .filter_map(|(group, to)| groups.get(&group).map(|g| (g.clone(), to)))
        .collect()
}

/// The name of what a group is part of, for balancing its leaders together.
fn owner(kind: &GroupKind) -> String {
    match kind {
        GroupKind::Metadata => "metadata".to_string(),
        GroupKind::Partition { topic, .. } => format!("topic:{topic}"),
        GroupKind::Offsets => "offsets".to_string(),
        GroupKind::Region { table, .. } => format!("table:{table}"),
    }
}

/// How many groups each node leads, in all and per owner, as a round's moves change them.
#[derive(Default)]
struct Led<'a> {
    /// Groups led by node.
    total: BTreeMap<u64, usize>,
    /// Groups led by owner and node.
    by_owner: BTreeMap<(&'a str, u64), usize>,
}

impl<'a> Led<'a> {
    /// Counts the leaders of `seen` (every voter counted, leading none or more).
    fn of(seen: &'a [Seen]) -> Self {
        let mut led = Led::default();
        for s in seen {
            for v in &s.voters {
                led.total.entry(*v).or_default();
                led.by_owner.entry((&s.owner, *v)).or_default();
            }
            if let Some(leader) = s.leader {
                *led.total.entry(leader).or_default() += 1;
                *led.by_owner.entry((&s.owner, leader)).or_default() += 1;
            }
        }
        led
    }

    /// Groups `node` leads in all.
    fn total(&self, node: u64) -> usize {
        self.total.get(&node).copied().unwrap_or(0)
    }

    /// Groups of `owner` that `node` leads.
    fn of_owner(&self, owner: &str, node: u64) -> usize {
        self.by_owner.get(&(owner, node)).copied().unwrap_or(0)
    }

    /// Records a group of `owner` moving from `from` to `to`.
    fn moved(&mut self, owner: &'a str, from: u64, to: u64) {
        for (n, up) in [(from, false), (to, true)] {
            for c in [
                self.total.entry(n).or_default(),
                self.by_owner.entry((owner, n)).or_default(),
            ] {
                *c = if up { *c + 1 } else { c.saturating_sub(1) };
            }
        }
    }
}

/// Which of the groups this node leads go to whom, at most [`MOST_PER_ROUND`] of them: first
/// those of owners this node leads at least two more of than a ready voter (to the voter leading
/// fewest of that owner), then, while this node leads at least two more groups in all than a
/// ready voter that leads fewer of the group's owner, to the one leading fewest in all.
fn plan(me: u64, seen: &[Seen]) -> Vec<(u64, u64)> {
    let mut led = Led::of(seen);
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mine: Vec<&Seen> = seen.iter().filter(|s| s.leader == Some(me)).collect();
    for &s in &mine {
        if out.len() == MOST_PER_ROUND {
            return out;
        }
        let owner = s.owner.as_str();
        let to = s
            .ready
            .iter()
            .copied()
            .min_by_key(|v| (led.of_owner(owner, *v), led.total(*v), *v));
        if let Some(to) = to {
            if led.of_owner(owner, me) >= led.of_owner(owner, to) + 2 {
                led.moved(owner, me, to);
                out.push((s.group, to));
            }
        }
    }
    for &s in &mine {
        if out.len() == MOST_PER_ROUND {
            break;
        }
        if out.iter().any(|(g, _)| *g == s.group) {
            continue;
        }
        let owner = s.owner.as_str();
        let to = s
            .ready
            .iter()
            .copied()
            .filter(|v| led.of_owner(owner, me) > led.of_owner(owner, *v))
            .min_by_key(|v| (led.total(*v), led.of_owner(owner, *v), *v));
        if let Some(to) = to {
            if led.total(me) >= led.total(to) + 2 {
                led.moved(owner, me, to);
                out.push((s.group, to));
            }
        }
    }
    out
}

/// The voters that may take over the group these metrics describe from this node now: none
/// unless this node leads it, has applied an entry of its term, and the group's membership is
/// settled at the catalog's replicas; then those holding the leader's last entry.
fn ready(
    me: u64,
    m: &openraft::RaftMetrics<weir_storage::TypeConfig>,
    replicas: &[u64],
) -> Vec<u64> {
    let membership = m.membership_config.membership();
    let settled = membership.get_joint_config().len() == 1
        && membership.learner_ids().next().is_none()
        && membership.voter_ids().collect::<BTreeSet<u64>>()
            == replicas.iter().copied().collect::<BTreeSet<u64>>();
    let Some(replication) = m.replication.as_ref() else {
        return Vec::new();
    };
    if !settled || !crate::leader::term_applied(m) {
        return Vec::new();
    }
    membership
        .voter_ids()
        .filter(|v| *v != me)
        .filter(|v| {
            replication
                .get(v)
                .and_then(|matched| matched.as_ref())
                .is_some_and(|l| Some(l.index) == m.last_log_index)
        })
        .collect()
}

/// Starts handing `group` to `to`. Lease reads on this replica stop first, for the rest of its
/// term: the successor is elected without waiting out this leader's lease.
async fn hand_over(group: &GroupHandle, to: u64) {
    let term = group.raft.metrics().borrow_watched().current_term;
    *group
        .handover_term
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(term);
    tracing::info!(group = group.id, to, term, "handing leadership over");
    crate::metrics::leader_handover();
    if let Err(e) = group.raft.trigger().transfer_leader(to).await {
        tracing::warn!(group = group.id, error = %e, "leadership handover not started");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn seen(group: u64, leader: u64, ready: &[u64]) -> Seen {
        owned("table:t", group, leader, ready)
    }

    fn owned(owner: &str, group: u64, leader: u64, ready: &[u64]) -> Seen {
        Seen {
            group,
            owner: owner.to_string(),
            leader: Some(leader),
            voters: vec![1, 2, 3],
            ready: ready.to_vec(),
        }
    }

    /// Runs rounds on every node in turn (each seeing the others' moves, every voter always
    /// ready) until none moves anything; returns the groups as they end and the rounds taken.
    fn settle(mut groups: Vec<Seen>, nodes: &[u64]) -> (Vec<Seen>, usize) {
        for round in 0..1000 {
            let mut moved = false;
            for &me in nodes {
                for s in groups.iter_mut() {
                    s.ready = if s.leader == Some(me) {
                        s.voters.iter().copied().filter(|v| *v != me).collect()
                    } else {
                        Vec::new()
                    };
                }
                for (group, to) in plan(me, &groups) {
                    moved = true;
                    if let Some(s) = groups.iter_mut().find(|s| s.group == group) {
                        s.leader = Some(to);
                    }
                }
            }
            if !moved {
                return (groups, round);
            }
        }
        panic!("leader balance did not settle in 1000 rounds");
    }

    #[test]
    fn a_node_leading_everything_hands_over_until_even_a_few_per_round() {
        let all: Vec<Seen> = (0..6).map(|g| seen(g, 1, &[2, 3])).collect();
        let round = plan(1, &all);
        assert_eq!(round, vec![(0, 2), (1, 3), (2, 2), (3, 3)]);
        // The next round sees the result: two each, nothing more to do.
        let after: Vec<Seen> = all
            .iter()
            .map(|s| match round.iter().find(|(g, _)| *g == s.group) {
                Some((_, to)) => seen(s.group, *to, &[]),
                None => s.clone(),
            })
            .collect();
        assert_eq!(plan(1, &after), vec![]);
        assert_eq!(plan(2, &after), vec![]);
    }

    #[test]
    fn one_more_than_a_peer_is_even_enough() {
        let groups = vec![seen(0, 1, &[2, 3]), seen(1, 1, &[2, 3]), seen(2, 2, &[])];
        // Node 1 leads 2, node 2 leads 1, node 3 none: one goes to node 3.
        assert_eq!(plan(1, &groups), vec![(0, 3)]);
        let groups = vec![seen(0, 1, &[2, 3]), seen(1, 2, &[]), seen(2, 3, &[])];
        assert_eq!(plan(1, &groups), vec![]);
    }

    #[test]
    fn only_voters_that_are_ready_take_a_group_over() {
        // Node 3 leads nothing but is behind in every group node 1 leads: node 2 takes them
        // while node 1 leads two more than it.
        let groups: Vec<Seen> = (0..4).map(|g| seen(g, 1, &[2])).collect();
        assert_eq!(plan(1, &groups), vec![(0, 2), (1, 2)]);
        // Nothing is ready (a membership change under way, a successor behind): nothing moves.
        let groups: Vec<Seen> = (0..4).map(|g| seen(g, 1, &[])).collect();
        assert_eq!(plan(1, &groups), vec![]);
    }

    #[test]
    fn a_table_led_by_one_node_is_spread_though_the_totals_are_even() {
        // Each node leads three groups, all of one table each: every scan would run on one node.
        let groups: Vec<Seen> = (0..9)
            .map(|g| {
                let node = g / 3 + 1;
                owned(&format!("table:t{node}"), g, node, &[])
            })
            .collect();
        let (after, _) = settle(groups, &[1, 2, 3]);
        for t in 1..=3u64 {
            let mut leaders: Vec<u64> = after
                .iter()
                .filter(|s| s.owner == format!("table:t{t}"))
                .filter_map(|s| s.leader)
                .collect();
            leaders.sort();
            assert_eq!(leaders, vec![1, 2, 3], "table t{t}");
        }
    }

    proptest! {
        /// From any leaders, rounds settle with each owner's groups and the totals even within
        /// one over the nodes.
        #[test]
        fn any_leaders_settle_even_per_owner_and_in_all(
            leaders in proptest::collection::vec((0u8..4, 1u64..=3), 0..40)
        ) {
            let groups: Vec<Seen> = leaders
                .iter()
                .enumerate()
                .map(|(g, (owner, leader))| owned(&format!("table:t{owner}"), g as u64, *leader, &[]))
                .collect();
            let (after, rounds) = settle(groups, &[1, 2, 3]);
            prop_assert!(rounds < 40, "took {rounds} rounds");
            let led = Led::of(&after);
            let spread = |counts: Vec<usize>| {
                counts.iter().max().copied().unwrap_or(0) - counts.iter().min().copied().unwrap_or(0)
            };
            prop_assert!(spread((1..=3).map(|n| led.total(n)).collect()) <= 1);
            for owner in 0..4 {
                let name = format!("table:t{owner}");
                prop_assert!(spread((1..=3).map(|n| led.of_owner(&name, n)).collect()) <= 1, "{name}");
            }
        }
    }
}
