//! Where the tasks of a table scan run: one task per node leading some of the scanned regions,
//! each task reading the regions its node leads, and sent to that node, so rows are filtered,
//! projected and partially aggregated where they are stored.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::{
    DesiredTaskCountEvent, DesiredTaskCountEventResponse, DesiredTaskCountHandler,
    DistributedLeafExec, NetworkBoundaryExt, RouteTasksEvent, RouteTasksEventResponse,
    RouteTasksHandler, ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse, ScaleUpLeafNodeHandler,
};
use url::Url;

use super::WeirOptions;
use crate::cluster::Cluster;
use crate::scan::{RegionPart, RegionScanExec};

/// The parts of a scan that read something, grouped by the node leading their region (none:
/// not known here), in a stable order.
fn by_leader(cluster: &dyn Cluster, parts: &[RegionPart]) -> Vec<Vec<RegionPart>> {
    let mut groups: BTreeMap<Option<String>, Vec<RegionPart>> = BTreeMap::new();
    for p in parts.iter().filter(|p| !p.ranges.is_empty()) {
        groups
            .entry(cluster.region_leader_url(p.region))
            .or_default()
            .push(p.clone());
    }
    groups.into_values().collect()
}

/// Deals `groups` out to `tasks` buckets (several leaders may share a task when there are
/// fewer tasks than leaders), then splits the largest buckets into the empty ones, so a stage
/// with more tasks than leaders still spreads the regions.
fn deal(groups: Vec<Vec<RegionPart>>, tasks: usize) -> Vec<Vec<RegionPart>> {
    let mut buckets: Vec<Vec<RegionPart>> = vec![Vec::new(); tasks.max(1)];
    let n = buckets.len();
    for (i, g) in groups.into_iter().enumerate() {
        buckets[i % n].extend(g);
    }
    while let Some(empty) = buckets.iter().position(Vec::is_empty) {
        let Some((largest, len)) = buckets
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.len()))
            .max_by_key(|(_, len)| *len)
        else {
            break;
        };
        if len < 2 {
            break;
        }
        let moved = buckets[largest].split_off(len / 2);
        buckets[empty] = moved;
    }
    buckets
}

/// Stored bytes of the regions `scan` reads, as this node knows them (0: not known).
fn scan_bytes(scan: &RegionScanExec) -> u64 {
    scan.parts()
        .iter()
        .filter(|p| !p.ranges.is_empty())
        .filter_map(|p| scan.table().regions.iter().find(|r| r.id == p.region))
        .map(|r| r.approx_bytes)
        .sum()
}

/// Tasks for a scan of `bytes` (0: unknown) over regions led by `leaders` nodes: one per
/// leader, fewer when the scan is small (at least `per_task` bytes each).
fn task_count(leaders: usize, bytes: u64, per_task: u64) -> usize {
    let by_size = match bytes {
        0 => leaders,
        b => usize::try_from(b.div_ceil(per_task.max(1))).unwrap_or(usize::MAX),
    };
    leaders.min(by_size).max(1)
}

/// The task handlers of region scans, by leaders as `cluster` knows them: how many tasks a
/// scan asks for (one per node leading some of its regions, fewer for a small scan), how it is
/// cut into the scans those tasks run, and where each task is sent (asked when the stage starts,
/// so a leader that moved since planning is followed).
#[derive(Debug, Clone)]
pub struct ScanTasks {
    cluster: Arc<dyn Cluster>,
}

impl ScanTasks {
    /// Handlers reading leaders from `cluster`.
    pub fn new(cluster: Arc<dyn Cluster>) -> ScanTasks {
        ScanTasks { cluster }
    }
}

#[async_trait]
impl DesiredTaskCountHandler for ScanTasks {
    async fn handle(
        &self,
        ev: DesiredTaskCountEvent<'_>,
    ) -> Option<Result<DesiredTaskCountEventResponse>> {
        let scan = ev.plan.downcast_ref::<RegionScanExec>()?;
        let leaders = by_leader(self.cluster.as_ref(), scan.parts()).len();
        let per_task = ev
            .session_config
            .options()
            .extensions
            .get::<WeirOptions>()
            .map_or(WeirOptions::default().bytes_per_task, |o| o.bytes_per_task);
        Some(Ok(DesiredTaskCountEventResponse::desired(task_count(
            leaders,
            scan_bytes(scan),
            per_task,
        ))))
    }
}

impl ScaleUpLeafNodeHandler for ScanTasks {
    fn handle(&self, ev: ScaleUpLeafNodeEvent) -> Option<Result<ScaleUpLeafNodeEventResponse>> {
        let scan = ev.plan.downcast_ref::<RegionScanExec>()?;
        if ev.task_count <= 1 {
            return None;
        }
        let buckets = deal(
            by_leader(self.cluster.as_ref(), scan.parts()),
            ev.task_count,
        );
        let partitions = buckets.iter().map(Vec::len).max().unwrap_or(0).max(1);
        let variants = buckets
            .into_iter()
            .map(|b| Arc::new(scan.with_parts(b, partitions)) as Arc<dyn ExecutionPlan>);
        Some(
            DistributedLeafExec::try_new(ev.plan.clone(), variants)
                .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf))),
        )
    }
}

/// The split region scan of a stage's plan, if it has one (stages below it are not looked at).
fn split_scan(plan: &Arc<dyn ExecutionPlan>) -> Option<Arc<dyn ExecutionPlan>> {
    let mut found = None;
    let _ = plan.apply(|p| {
        if p.is_network_boundary() {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(leaf) = p.downcast_ref::<DistributedLeafExec>() {
            if leaf.original().is::<RegionScanExec>() {
                found = Some(p.clone());
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

fn parse(url: &str) -> Result<Url> {
    Url::parse(url)
        .map_err(|e| DataFusionError::Internal(format!("worker address '{url}' is no URL: {e}")))
}

impl RouteTasksHandler for ScanTasks {
    fn handle(&self, ev: RouteTasksEvent) -> Option<Result<RouteTasksEventResponse>> {
        let leaf = split_scan(ev.plan)?;
        let leaf = leaf.downcast_ref::<DistributedLeafExec>()?;
        if leaf.variants().len() != ev.task_count {
            return None;
        }
        let workers = self.cluster.worker_urls();
        let mut spare = workers.iter().cycle();
        let urls = leaf
            .variants()
            .iter()
            .map(|v| {
                let leader = v.downcast_ref::<RegionScanExec>().and_then(|s| {
                    s.parts()
                        .iter()
                        .filter(|p| !p.ranges.is_empty())
                        .find_map(|p| self.cluster.region_leader_url(p.region))
                });
                match leader.or_else(|| spare.next().cloned()) {
                    Some(u) => parse(&u),
                    None => Err(DataFusionError::Execution(
                        "no node can run this query's tasks".into(),
                    )),
                }
            })
            .collect::<Result<Vec<_>>>();
        Some(urls.map(RouteTasksEventResponse::new))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyrange::KeyRange;

    fn part(region: u64) -> RegionPart {
        RegionPart {
            region,
            ranges: vec![KeyRange::all()],
        }
    }

    fn regions(b: &[RegionPart]) -> Vec<u64> {
        b.iter().map(|p| p.region).collect()
    }

    #[test]
    fn small_scans_take_fewer_tasks() {
        let mib = 1024 * 1024;
        assert_eq!(task_count(3, 500 * mib, 64 * mib), 3);
        assert_eq!(task_count(3, 100 * mib, 64 * mib), 2);
        assert_eq!(task_count(3, 10 * mib, 64 * mib), 1);
        // Sizes unknown here: one task per leader.
        assert_eq!(task_count(3, 0, 64 * mib), 3);
        assert_eq!(task_count(0, 0, 64 * mib), 1);
    }

    #[test]
    fn leaders_share_tasks_and_spare_tasks_take_regions_from_the_largest() {
        // Three leaders, two tasks: the third leader's regions join the first task.
        let b = deal(
            vec![vec![part(1), part(2)], vec![part(3)], vec![part(4)]],
            2,
        );
        assert_eq!(regions(&b[0]), vec![1, 2, 4]);
        assert_eq!(regions(&b[1]), vec![3]);
        // One leader, three tasks: its four regions are split over the three.
        let b = deal(vec![vec![part(1), part(2), part(3), part(4)]], 3);
        let mut all: Vec<u64> = b.iter().flat_map(|b| regions(b)).collect();
        all.sort_unstable();
        assert_eq!(all, vec![1, 2, 3, 4]);
        assert!(b.iter().all(|b| !b.is_empty()));
        // More tasks than regions: the rest stay empty.
        let b = deal(vec![vec![part(1)]], 2);
        assert_eq!(regions(&b[0]), vec![1]);
        assert!(b[1].is_empty());
    }
}
