//! Where the tasks of stream jobs run: placement's half for compute.
//!
//! A task without a node, or on a node that stopped heartbeating (down, not yet gone: tasks hold no
//! data, so they move as soon as a node is missed), is assigned to the node leading its source
//! partition when that node is up (its fetches are then local), else to the up node running the
//! fewest tasks. When every task has a live node but one node runs at least two tasks more than
//! another (a node joined or came back), one task moves from the busiest node to the least busy
//! one per round, preferring a task whose source partition the receiving node leads, and never one
//! running where its partition is led when another will do; each move narrows the gap, so the
//! rounds settle. The instance on the old node stops once that node applies the new assignment;
//! until then both may write, which the sink's offset marks and producer epochs make harmless (see
//! `weir_sql::job`).

use std::collections::BTreeMap;

use weir_storage::catalog::{Catalog, MetaCommand};

use crate::liveness::Liveness;

/// The next assignment placement should propose, for the first job (by name) with a task that
/// needs a node. `leaders` maps a group to the node that reported leading it.
pub fn next_assignment(
    catalog: &Catalog,
    liveness: &Liveness,
    leaders: &BTreeMap<u64, u64>,
) -> Option<MetaCommand> {
    let up = liveness.up_members(catalog);
    if up.is_empty() {
        return None;
    }
    let mut load: BTreeMap<u64, usize> = up.iter().map(|n| (*n, 0)).collect();
    for j in catalog.jobs.values().filter(|j| j.running) {
        for t in &j.tasks {
            if let Some(n) = t.node.and_then(|n| load.get_mut(&n)) {
                *n += 1;
            }
        }
    }
    for job in catalog.jobs.values().filter(|j| j.running) {
        let mut assignments = Vec::new();
        for (i, task) in job.tasks.iter().enumerate() {
            if task.node.is_some_and(|n| liveness.is_up(n)) {
                continue;
            }
            let leader = catalog
                .partition_group(&job.source, i as u32)
                .and_then(|g| leaders.get(&g.id))
                .copied()
                .filter(|n| load.contains_key(n));
            let Some(node) =
                leader.or_else(|| load.iter().min_by_key(|(n, c)| (**c, **n)).map(|(n, _)| *n))
            else {
                continue;
            };
            *load.entry(node).or_default() += 1;
            assignments.push((i as u32, node));
        }
        if !assignments.is_empty() {
            return Some(MetaCommand::AssignTasks {
                name: job.name.clone(),
                id: job.id,
                assignments,
            });
        }
    }
    rebalance(catalog, leaders, &load)
}

/// One task moved from the busiest up node to the least busy one, if they differ by two or more.
fn rebalance(
    catalog: &Catalog,
    leaders: &BTreeMap<u64, u64>,
    load: &BTreeMap<u64, usize>,
) -> Option<MetaCommand> {
    let (&busiest, &most) = load
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))?;
    let (&idlest, &least) = load.iter().min_by_key(|(n, c)| (**c, **n))?;
    if most < least + 2 {
        return None;
    }
    // Candidates on the busiest node, best first: led by the receiving node, then not led by
    // the node it runs on, then the rest.
    let mut best: Option<(u8, &str, u64, u32)> = None;
    for job in catalog.jobs.values().filter(|j| j.running) {
        for (i, task) in job.tasks.iter().enumerate() {
            if task.node != Some(busiest) {
                continue;
            }
            let leader = catalog
                .partition_group(&job.source, i as u32)
                .and_then(|g| leaders.get(&g.id))
                .copied();
            let rank = match leader {
                Some(l) if l == idlest => 0,
                Some(l) if l == busiest => 2,
                _ => 1,
            };
            if best.is_none_or(|(r, ..)| rank < r) {
                best = Some((rank, job.name.as_str(), job.id, i as u32));
            }
        }
    }
    let (_, name, id, partition) = best?;
    Some(MetaCommand::AssignTasks {
        name: name.to_string(),
        id,
        assignments: vec![(partition, idlest)],
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use weir_storage::catalog::{JobInfo, NodeInfo, TaskInfo};

    use super::*;

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        for id in 1..=3 {
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
        c.apply(&MetaCommand::CreateTopic {
            name: "t".into(),
            replicas: 3,
            retention_ms: 0,
            retention_bytes: 0,
            placement: vec![vec![1, 2, 3]; 4],
            format: None,
        });
        c.apply(&MetaCommand::CreateTable {
            name: "s".into(),
            schema: weir_proto::table::TableSchema {
                columns: vec![weir_proto::table::Column {
                    name: "k".into(),
                    ty: weir_proto::table::ColumnType::Int64,
                    nullable: false,
                }],
                primary_key: vec![0],
            },
            replicas: 3,
            split_bytes: 1 << 20,
            split_keys: Vec::new(),
            placement: vec![vec![1, 2, 3]],
        });
        c.apply(&MetaCommand::CreateJob {
            job: JobInfo {
                name: "j".into(),
                id: 0,
                definition: "INSERT INTO s SELECT 1 FROM t".into(),
                source: "t".into(),
                sink: "s".into(),
                start_latest: false,
                running: true,
                tasks: vec![
                    TaskInfo {
                        node: None,
                        epoch: 0
                    };
                    4
                ],
            },
        });
        c
    }

    #[test]
    fn tasks_go_to_partition_leaders_then_to_the_least_busy_node() {
        let mut c = catalog();
        let live = Liveness::new(Duration::from_secs(30));
        let groups = c.topics["t"].groups.clone();
        // Partition 0 and 1 are led by node 2; the others have no known leader.
        let leaders = BTreeMap::from([(groups[0], 2), (groups[1], 2)]);
        let cmd = next_assignment(&c, &live, &leaders).expect("an assignment");
        let MetaCommand::AssignTasks { assignments, .. } = &cmd else {
            panic!("{cmd:?}");
        };
        assert_eq!(assignments[0], (0, 2));
        assert_eq!(assignments[1], (1, 2));
        assert_eq!(assignments[2].1, 1);
        assert_eq!(assignments[3].1, 3);
        assert_eq!(c.apply(&cmd), weir_storage::catalog::MetaResponse::Ok);
        assert!(c.jobs["j"].tasks.iter().all(|t| t.epoch == 1));
        assert_eq!(next_assignment(&c, &live, &leaders), None, "all placed");
        c.apply(&MetaCommand::SetJobRunning {
            name: "j".into(),
            running: false,
        });
        if let Some(j) = c.jobs.get_mut("j") {
            j.tasks[0].node = None;
        }
        assert_eq!(
            next_assignment(&c, &live, &leaders),
            None,
            "stopped jobs wait"
        );
    }

    #[test]
    fn a_node_that_joins_takes_tasks_until_the_load_is_even() {
        let mut c = catalog();
        let live = Liveness::new(Duration::from_secs(30));
        let groups = c.topics["t"].groups.clone();
        // Node 4 is not a member yet: the four tasks land on 1, 2 and 3 (two on node 1).
        let leaders = BTreeMap::from([(groups[0], 1), (groups[1], 1), (groups[3], 4)]);
        while let Some(cmd) = next_assignment(&c, &live, &leaders) {
            c.apply(&cmd);
        }
        let nodes = |c: &Catalog| c.jobs["j"].tasks.iter().map(|t| t.node).collect::<Vec<_>>();
        assert_eq!(nodes(&c), [Some(1), Some(1), Some(2), Some(3)]);
        // Two on one node and one on another is as even as three nodes allow: nothing moves.
        assert_eq!(next_assignment(&c, &live, &leaders), None);
        c.nodes.insert(
            4,
            NodeInfo {
                id: 4,
                addr: "n4".into(),
                http_addr: String::new(),
                kafka_addr: String::new(),
            },
        );
        // Node 4 joined with nothing: it takes one task of the busiest node, and only one.
        let cmd = next_assignment(&c, &live, &leaders).expect("a move");
        let MetaCommand::AssignTasks { assignments, .. } = &cmd else {
            panic!("{cmd:?}");
        };
        assert_eq!(assignments.len(), 1);
        assert_eq!(assignments[0].1, 4);
        assert_eq!(c.apply(&cmd), weir_storage::catalog::MetaResponse::Ok);
        assert_eq!(nodes(&c).iter().filter(|n| **n == Some(4)).count(), 1);
        assert_eq!(next_assignment(&c, &live, &leaders), None, "one task each");
        // The moved task's assignment epoch went up, so its old instance is fenced.
        let moved = c.jobs["j"]
            .tasks
            .iter()
            .find(|t| t.node == Some(4))
            .expect("moved");
        assert_eq!(moved.epoch, 2);
    }

    #[test]
    fn moves_keep_tasks_beside_their_partition_leaders() {
        let mut c = catalog();
        let live = Liveness::new(Duration::from_secs(30));
        let groups = c.topics["t"].groups.clone();
        // Node 1 leads partitions 0 and 1 and runs all four tasks; node 2 leads partition 3.
        let leaders = BTreeMap::from([(groups[0], 1), (groups[1], 1), (groups[3], 2)]);
        let all_on_1 = MetaCommand::AssignTasks {
            name: "j".into(),
            id: c.jobs["j"].id,
            assignments: (0..4).map(|p| (p, 1)).collect(),
        };
        c.apply(&all_on_1);
        // The first move takes the task node 2 leads the partition of; the next one a task whose
        // partition node 1 does not lead, so both tasks beside their leader on node 1 stay.
        let mut moved = Vec::new();
        while let Some(MetaCommand::AssignTasks { assignments, .. }) =
            next_assignment(&c, &live, &leaders).inspect(|cmd| {
                c.apply(cmd);
            })
        {
            moved.extend(assignments);
        }
        assert_eq!(moved[0], (3, 2));
        assert_eq!(moved[1], (2, 3));
        assert_eq!(moved.len(), 2, "{moved:?}");
        let nodes: Vec<_> = c.jobs["j"].tasks.iter().map(|t| t.node).collect();
        assert_eq!(nodes, [Some(1), Some(1), Some(3), Some(2)]);
    }
}
