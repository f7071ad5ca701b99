//! Where the tasks of stream jobs run: placement's half for compute.
//!
//! A task without a node, or on a node that stopped heartbeating (down, not yet gone: tasks hold no
//! data, so they move as soon as a node is missed), is assigned to the node leading its source
//! partition when that node is up (its fetches are then local), else to the up node running the
//! fewest tasks. The instance on the old node stops once that node applies the new assignment; until
//! then both may write, which the sink's offset marks make harmless (see `weir_sql::job`).

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
    None
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
}
