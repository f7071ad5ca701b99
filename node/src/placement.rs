//! Placement (the PD of TiKV): where replicas of groups live.
//!
//! [`place_new`] spreads the replicas of new groups over the live nodes holding the fewest. The
//! placement loop runs on the metadata leader and keeps the cluster in shape: it creates the
//! offsets group, re-creates the replicas of nodes that have been gone longer than the down timeout,
//! and moves replicas onto nodes that hold fewer (a node that just joined), one move at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use weir_storage::catalog::{Catalog, GroupKind, MetaCommand, METADATA_GROUP};

use crate::cluster::NodeContext;
use crate::error::{NodeError, NodeResult};
use crate::liveness::Liveness;

/// Replication factor of the offsets group (capped by the cluster size).
const OFFSETS_REPLICAS: usize = 3;

/// Replicas held per node, over every group in the catalog.
fn load(catalog: &Catalog) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = catalog.nodes.keys().map(|n| (*n, 0)).collect();
    for g in catalog.groups.values() {
        for n in &g.replicas {
            *load.entry(*n).or_default() += 1;
        }
    }
    load
}

/// Groups whose first replica (where a new group's first leader is elected) is each node.
fn first_load(catalog: &Catalog) -> BTreeMap<u64, usize> {
    let mut load: BTreeMap<u64, usize> = catalog.nodes.keys().map(|n| (*n, 0)).collect();
    for g in catalog.groups.values() {
        if let Some(n) = g.replicas.first() {
            *load.entry(*n).or_default() += 1;
        }
    }
    load
}

/// Most replicas a group gets when its creator does not say how many.
pub const DEFAULT_REPLICAS: u32 = 3;

/// Replicas of a topic or table created without a count: three, or as many as there are live
/// nodes on a smaller cluster (a one-node cluster creates what it can hold).
pub fn default_replicas(catalog: &Catalog, liveness: &Liveness) -> u32 {
    (liveness.up_members(catalog).len() as u32).clamp(1, DEFAULT_REPLICAS)
}

/// Replica sets for `groups` new groups of `replicas` replicas each.
pub fn place_new(
    catalog: &Catalog,
    liveness: &Liveness,
    groups: u32,
    replicas: u32,
) -> NodeResult<Vec<Vec<u64>>> {
    if catalog.nodes.is_empty() {
        // Right after a node starts, before its own membership is applied: worth a retry.
        return Err(NodeError::Unavailable(
            "the cluster is still starting: no member is in the catalog yet".into(),
        ));
    }
    let nodes = liveness.up_members(catalog);
    if (replicas as usize) > nodes.len() {
        return Err(NodeError::InvalidArgument(format!(
            "replicas {replicas} is more than the {} live node(s) of the cluster",
            nodes.len()
        )));
    }
    let mut load = load(catalog);
    let mut firsts = first_load(catalog);
    let mut out = Vec::with_capacity(groups as usize);
    for i in 0..groups as usize {
        // The least loaded nodes hold the replicas; ties rotate with the group index.
        let mut order = nodes.clone();
        order.rotate_left(i % nodes.len());
        order.sort_by_key(|n| load.get(n).copied().unwrap_or(0));
        let mut set: Vec<u64> = order.into_iter().take(replicas as usize).collect();
        // The first replica (the likely first leader) is the one of them leading the fewest
        // groups: when every node gets a replica anyway, total load alone would put the first
        // replica of every new group on the same node, and one node would lead them all.
        if let Some(pos) = (0..set.len()).min_by_key(|&j| firsts.get(&set[j]).copied().unwrap_or(0))
        {
            set.swap(0, pos);
        }
        for n in &set {
            *load.entry(*n).or_default() += 1;
        }
        *firsts.entry(set[0]).or_default() += 1;
        out.push(set);
    }
    Ok(out)
}

/// The live node holding the fewest replicas among those not in `replicas`.
fn least_loaded_spare(live: &[u64], load: &BTreeMap<u64, usize>, replicas: &[u64]) -> Option<u64> {
    live.iter()
        .filter(|n| !replicas.contains(n))
        .min_by_key(|n| (load.get(n).copied().unwrap_or(0), **n))
        .copied()
}

/// The replication factor a group should have.
fn wanted_replicas(catalog: &Catalog, g: &weir_storage::catalog::GroupInfo) -> usize {
    match &g.kind {
        GroupKind::Partition { topic, .. } => catalog
            .topics
            .get(topic)
            .map(|t| t.replicas as usize)
            .unwrap_or(g.replicas.len()),
        GroupKind::Region { table, .. } => catalog
            .tables
            .get(table)
            .map(|t| t.replicas as usize)
            .unwrap_or(g.replicas.len()),
        GroupKind::Offsets => OFFSETS_REPLICAS.min(catalog.nodes.len()),
        GroupKind::Metadata => g.replicas.len(),
    }
}

/// One placement decision: re-replicate a lost replica or move one replica to a lighter node.
fn next_move(
    catalog: &Catalog,
    liveness: &Liveness,
    healthy: &dyn Fn(u64, &[u64]) -> bool,
) -> Option<MetaCommand> {
    if catalog.nodes.is_empty() {
        return None;
    }
    let live = liveness.up_members(catalog);
    if catalog.offsets_group.is_none() && !live.is_empty() {
        let mut by_load: Vec<u64> = live.clone();
        let l = load(catalog);
        by_load.sort_by_key(|n| l.get(n).copied().unwrap_or(0));
        by_load.truncate(OFFSETS_REPLICAS);
        return Some(MetaCommand::CreateOffsetsGroup { replicas: by_load });
    }
    let l = load(catalog);
    // 1. Replicas on nodes gone for longer than the down timeout are re-created elsewhere. With no
    // spare node the replica stays listed, so the group gets it back if the node returns.
    for g in catalog.groups.values() {
        let Some(gone) = g.replicas.iter().find(|n| liveness.is_gone(**n)) else {
            continue;
        };
        let Some(spare) = least_loaded_spare(&live, &l, &g.replicas) else {
            continue;
        };
        let replicas = g
            .replicas
            .iter()
            .map(|n| if n == gone { spare } else { *n })
            .collect();
        return Some(MetaCommand::SetReplicas {
            group: g.id,
            replicas,
        });
    }
    // Groups below their replication factor (created while nodes were missing) get replicas back.
    for g in catalog.groups.values() {
        if g.replicas.len() >= wanted_replicas(catalog, g) {
            continue;
        }
        if let Some(spare) = least_loaded_spare(&live, &l, &g.replicas) {
            let mut replicas = g.replicas.clone();
            replicas.push(spare);
            return Some(MetaCommand::SetReplicas {
                group: g.id,
                replicas,
            });
        }
    }
    // 2. Balance: move one replica from the most to the least loaded live node, when that narrows
    // the gap and the group is not in the middle of another change.
    let live_load: Vec<(u64, usize)> = live
        .iter()
        .map(|n| (*n, l.get(n).copied().unwrap_or(0)))
        .collect();
    let (min_node, min) = *live_load.iter().min_by_key(|(n, c)| (*c, *n))?;
    let (max_node, max) = *live_load.iter().max_by_key(|(n, c)| (*c, u64::MAX - n))?;
    if max < min + 2 {
        return None;
    }
    let g = catalog.groups.values().find(|g| {
        g.replicas.contains(&max_node)
            && !g.replicas.contains(&min_node)
            && healthy(g.id, &g.replicas)
    })?;
    let replicas = g
        .replicas
        .iter()
        .map(|n| if *n == max_node { min_node } else { *n })
        .collect();
    Some(MetaCommand::SetReplicas {
        group: g.id,
        replicas,
    })
}

/// Proposes the next assignment of stream tasks, if one is due. At a change of the catalog
/// (`changed`) an assignment just proposed is not proposed again: it did not change the catalog,
/// and each try would wake the loop for the next one; the tick tries it again.
async fn place_tasks(
    ctx: &NodeContext,
    catalog: &Catalog,
    last: &mut Option<MetaCommand>,
    changed: bool,
) {
    let leaders: BTreeMap<u64, u64> = ctx
        .liveness
        .reports()
        .iter()
        .flat_map(|(node, rs)| rs.iter().filter(|r| r.leader).map(|r| (r.group_id, *node)))
        .collect();
    let Some(cmd) = crate::compute::assign::next_assignment(catalog, &ctx.liveness, &leaders)
        .filter(|cmd| !changed || last.as_ref() != Some(cmd))
    else {
        return;
    };
    *last = Some(cmd.clone());
    tracing::info!(?cmd, "task placement");
    if let Err(e) = ctx.propose_meta(cmd).await {
        tracing::warn!(error = %e, "task placement proposal failed");
    }
}

/// Runs placement while this node leads the metadata group.
pub async fn placement_loop(ctx: Arc<NodeContext>, interval: Duration) {
    let mut was_leader = false;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = None;
    // The last task assignment proposed.
    let mut last: Option<MetaCommand> = None;
    loop {
        // Tasks are placed as soon as a change of the catalog asks for it (a job created or
        // started); replicas move only at the ticks.
        let changed = tokio::select! {
            _ = tick.tick() => false,
            _ = ctx.registry.catalog_changed(&mut seen) => true,
        };
        if changed {
            // Only tasks, and only by a leader already in charge: what happens at a change of
            // leadership waits for the tick.
            if was_leader && ctx.is_metadata_leader() {
                if let Ok(catalog) = ctx.registry.catalog() {
                    place_tasks(&ctx, &catalog, &mut last, true).await;
                }
            }
            continue;
        }
        let leader = ctx.is_metadata_leader();
        if leader && !was_leader {
            // Give every member a fresh window to report in to the new leader.
            ctx.liveness.reset();
        } else if !leader && was_leader {
            ctx.liveness.disarm();
        }
        was_leader = leader;
        if !leader {
            continue;
        }
        let Ok(catalog) = ctx.registry.catalog() else {
            continue;
        };
        let reports = ctx.liveness.reports();
        let mut led_voters: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
        for rs in reports.values() {
            for r in rs
                .iter()
                .filter(|r| r.leader && r.group_id != METADATA_GROUP)
            {
                led_voters.insert(r.group_id, r.voters.iter().copied().collect());
            }
        }
        place_tasks(&ctx, &catalog, &mut last, false).await;
        let healthy = |g: u64, replicas: &[u64]| {
            led_voters
                .get(&g)
                .is_some_and(|v| *v == replicas.iter().copied().collect::<BTreeSet<_>>())
        };
        // A move is only started once every previous move has completed.
        let settled = catalog.groups.values().all(|g| healthy(g.id, &g.replicas));
        let Some(cmd) = next_move(&catalog, &ctx.liveness, &healthy) else {
            continue;
        };
        if matches!(cmd, MetaCommand::SetReplicas { .. })
            && !settled
            && !is_repair(&cmd, &catalog, &ctx.liveness)
        {
            continue;
        }
        tracing::info!(?cmd, "placement");
        if let Err(e) = ctx.propose_meta(cmd).await {
            tracing::warn!(error = %e, "placement proposal failed");
        }
    }
}

/// True when `cmd` replaces a replica on a gone node (repairs are not held back by moves).
fn is_repair(cmd: &MetaCommand, catalog: &Catalog, liveness: &Liveness) -> bool {
    match cmd {
        MetaCommand::SetReplicas { group, .. } => catalog.groups.get(group).is_some_and(|g| {
            g.replicas.iter().any(|n| liveness.is_gone(*n))
                || g.replicas.len() < wanted_replicas(catalog, g)
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_storage::catalog::NodeInfo;

    fn catalog(nodes: u64) -> Catalog {
        let mut c = Catalog::default();
        for id in 1..=nodes {
            c.nodes.insert(
                id,
                NodeInfo {
                    id,
                    addr: format!("n{id}"),
                    http_addr: String::new(),
                    kafka_addr: String::new(),
                },
            );
        }
        c.next_node_id = nodes + 1;
        c.offsets_group = Some(999);
        c
    }

    #[test]
    fn new_replicas_spread_evenly_with_rotating_first_replica() {
        let c = catalog(3);
        let live = Liveness::new(Duration::from_secs(30));
        let p = place_new(&c, &live, 6, 3).unwrap();
        for set in &p {
            assert_eq!(set.iter().collect::<BTreeSet<_>>().len(), 3);
        }
        let firsts: BTreeSet<u64> = p.iter().map(|s| s[0]).collect();
        assert_eq!(firsts.len(), 3, "first replicas {p:?}");
        assert!(place_new(&c, &live, 1, 4).is_err());
    }

    #[test]
    fn first_replicas_spread_when_one_node_holds_fewer_replicas() {
        let mut c = catalog(3);
        // Nodes 1 and 2 already hold a group that node 3 does not.
        c.groups.insert(
            7,
            weir_storage::catalog::GroupInfo {
                id: 7,
                kind: weir_storage::catalog::GroupKind::Offsets,
                replicas: vec![1, 2],
                epoch: 0,
            },
        );
        let live = Liveness::new(Duration::from_secs(30));
        let p = place_new(&c, &live, 6, 3).unwrap();
        let mut firsts: BTreeMap<u64, usize> = BTreeMap::new();
        for set in &p {
            *firsts.entry(set[0]).or_default() += 1;
        }
        assert_eq!(firsts.len(), 3, "first replicas {p:?}");
        // With group 7's first replica on node 1, the seven first replicas split 3/2/2.
        let (lo, hi) = (firsts.values().min(), firsts.values().max());
        assert!(
            hi.zip(lo).is_some_and(|(h, l)| h - l <= 2),
            "first replicas {p:?}"
        );
    }

    #[test]
    fn under_replicated_groups_get_replicas_back() {
        let mut c = catalog(2);
        let live = Liveness::new(Duration::from_secs(30));
        c.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            replicas: 3,
            retention_ms: 0,
            retention_bytes: 0,
            placement: vec![vec![1, 2]],
            format: None,
        });
        let healthy = |_: u64, _: &[u64]| true;
        assert_eq!(next_move(&c, &live, &healthy), None, "no spare node yet");
        c.apply(&MetaCommand::AddNode {
            addr: "n3".into(),
            http_addr: String::new(),
            kafka_addr: String::new(),
        });
        let cmd = next_move(&c, &live, &healthy).expect("a repair");
        assert!(is_repair(&cmd, &c, &live));
        c.apply(&cmd);
        assert_eq!(c.groups.values().next().unwrap().replicas, vec![1, 2, 3]);
    }

    #[test]
    fn a_joined_node_receives_replicas() {
        let mut c = catalog(1);
        let live = Liveness::new(Duration::from_secs(30));
        let placement = place_new(&c, &live, 6, 1).unwrap();
        c.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            replicas: 1,
            retention_ms: 0,
            retention_bytes: 0,
            placement,
            format: None,
        });
        c.apply(&MetaCommand::AddNode {
            addr: "n2".into(),
            http_addr: String::new(),
            kafka_addr: String::new(),
        });
        let all_healthy = |_: u64, _: &[u64]| true;
        let mut moves = 0;
        while let Some(cmd) = next_move(&c, &live, &all_healthy) {
            c.apply(&cmd);
            moves += 1;
            assert!(moves < 10);
        }
        let l = load(&c);
        assert_eq!(l[&1], 3);
        assert_eq!(l[&2], 3);
    }
}
