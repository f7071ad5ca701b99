//! Leader balance: a node leading more of the groups it shares with another voter than that voter
//! does hands some of them over, so reads, writes and the memory they take (region images, job
//! tasks) spread over the cluster instead of staying where elections left them.
//!
//! Elections pick leaders by who timed out first: after a start, a load, or a node's return, one
//! node often leads most groups while the others idle. Each node looks at the groups it holds a
//! replica of (their leaders are known to every replica) and, for groups it leads, hands one to
//! the voter leading the fewest when it leads at least two more than that voter. A group is handed
//! over only when nothing about it is in motion: its membership is the catalog's replica set with
//! no joint configuration or learner, this leader has applied an entry of its own term, and the
//! successor's log matches the leader's last entry (openraft's transfer makes the successor elect
//! itself at once only then; a successor behind would leave the group to its election timeout).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use weir_storage::catalog::{Catalog, METADATA_GROUP};

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
        .map(|g| {
            let m = g.raft.metrics().borrow_watched().clone();
            let ready = match catalog.groups.get(&g.id) {
                Some(info) => ready(me, &m, &info.replicas),
                None => Vec::new(),
            };
            Seen {
                group: g.id,
                leader: known_leader(&m),
                voters: m.membership_config.membership().voter_ids().collect(),
                ready,
            }
        })
        .collect();
    plan(me, &seen)
        .into_iter()
        .filter_map(|(group, to)| groups.get(&group).map(|g| (g.clone(), to)))
        .collect()
}

/// Which of the groups this node leads go to whom: each to the ready voter leading fewest, while
/// this node leads at least two more than that voter, at most [`MOST_PER_ROUND`] of them.
fn plan(me: u64, seen: &[Seen]) -> Vec<(u64, u64)> {
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for s in seen {
        for v in &s.voters {
            led.entry(*v).or_default();
        }
        if let Some(leader) = s.leader {
            *led.entry(leader).or_default() += 1;
        }
    }
    let mut out = Vec::new();
    for s in seen.iter().filter(|s| s.leader == Some(me)) {
        if out.len() == MOST_PER_ROUND {
            break;
        }
        let count = |n: &u64| led.get(n).copied().unwrap_or(0);
        let Some(to) = s.ready.iter().copied().min_by_key(|v| (count(v), *v)) else {
            continue;
        };
        if count(&me) < count(&to) + 2 {
            continue;
        }
        *led.entry(me).or_default() -= 1;
        *led.entry(to).or_default() += 1;
        out.push((s.group, to));
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

/// Starts handing `group` to `to`. Lease reads on this replica stop first: the successor is
/// elected without waiting for this leader's lease to run out.
async fn hand_over(group: &GroupHandle, to: u64) {
    *group
        .handover_started
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(tokio::time::Instant::now());
    tracing::info!(group = group.id, to, "handing leadership over");
    crate::metrics::leader_handover();
    if let Err(e) = group.raft.trigger().transfer_leader(to).await {
        tracing::warn!(group = group.id, error = %e, "leadership handover not started");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(group: u64, leader: u64, ready: &[u64]) -> Seen {
        Seen {
            group,
            leader: Some(leader),
            voters: vec![1, 2, 3],
            ready: ready.to_vec(),
        }
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
}
