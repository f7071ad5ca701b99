//! Raft log GC for regions, as TiKV does it: a region's log is purged as soon as every replica
//! holds its entries, not only long after a snapshot.
//!
//! A row written to a region is stored twice on each replica, in the region's Raft log and in
//! its data. The log's copy is only needed until every replica has it; purged within a second or
//! so, it is deleted while still in the log's memtable and never flushed, compressed or
//! compacted. openraft purges only up to its last snapshot, so regions snapshot often (taking one
//! pins the rows in the engine, see `config::region`), and this task moves the purge point up to
//! the slowest replica. A replica further behind than openraft's own `max_in_snapshot_log_to_keep`
//! is given up on, and gets a snapshot of the region when it comes back.

use std::time::Duration;

use openraft::alias::LogIdOf;
use openraft::async_runtime::WatchReceiver;
use openraft::metrics::RaftDataMetrics;
use weir_storage::types::Raft;
use weir_storage::TypeConfig;

/// How often, at most, a region's purge point is moved.
const GC_EVERY: Duration = Duration::from_millis(200);
/// Fewest entries purged at once.
const GC_BATCH: u64 = 8;
/// Entries a follower keeps behind its snapshot, for replicas slightly behind it should it lead.
const FOLLOWER_KEEP: u64 = 32;

/// Purges the log of region `group` run by `raft` as its replicas catch up; ends when the group
/// closes.
pub fn spawn(group: u64, raft: Raft) {
    tokio::spawn(async move {
        let mut metrics = raft.data_metrics();
        loop {
            if metrics.changed().await.is_err() {
                return;
            }
            let upto = purge_point(&metrics.borrow_watched());
            if let Some(upto) = upto {
                if let Err(e) = raft.trigger().purge_log(upto).await {
                    tracing::debug!(group, error = %e, "log purge refused");
                    return;
                }
            }
            tokio::time::sleep(GC_EVERY).await;
        }
    });
}

fn index(id: &Option<LogIdOf<TypeConfig>>) -> Option<u64> {
    id.as_ref().map(|l| l.index)
}

/// The index up to which a region with progress `m` can purge its log now, if at least
/// [`GC_BATCH`] entries past its last purge: on a leader, what every replica holds; on a
/// follower, all but the last [`FOLLOWER_KEEP`] entries. Never past the last snapshot (openraft
/// would refuse it).
fn purge_point(m: &RaftDataMetrics<TypeConfig>) -> Option<u64> {
    let snapshot = index(&m.snapshot)?;
    let upto = match &m.replication {
        Some(replicas) => replicas
            .values()
            .map(|matched| index(matched).unwrap_or(0))
            .min()
            .unwrap_or(snapshot)
            .min(snapshot),
        None => snapshot.saturating_sub(FOLLOWER_KEEP),
    };
    let next = index(&m.purged).map_or(0, |p| p + 1);
    (upto >= next + GC_BATCH).then_some(upto)
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::vote::RaftLeaderId;

    fn id(index: u64) -> Option<LogIdOf<TypeConfig>> {
        let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
        Some(openraft::LogId::new(lid, index))
    }

    fn metrics(
        snapshot: u64,
        purged: Option<u64>,
        replicas: Option<&[Option<u64>]>,
    ) -> RaftDataMetrics<TypeConfig> {
        RaftDataMetrics::<TypeConfig> {
            snapshot: id(snapshot),
            purged: purged.and_then(id),
            replication: replicas.map(|r| {
                r.iter()
                    .enumerate()
                    .map(|(n, matched)| (n as u64 + 1, matched.and_then(id)))
                    .collect()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_leader_purges_what_every_replica_holds_up_to_its_snapshot() {
        // Every replica past the snapshot: purge up to it.
        let m = metrics(100, Some(50), Some(&[Some(120), Some(110), Some(130)]));
        assert_eq!(purge_point(&m), Some(100));
        // The slowest replica holds up to 70: purge up to 70, not past it.
        let m = metrics(100, Some(50), Some(&[Some(120), Some(70), Some(130)]));
        assert_eq!(purge_point(&m), Some(70));
        // Too few entries past the last purge: wait.
        let m = metrics(100, Some(95), Some(&[Some(120), Some(100), Some(130)]));
        assert_eq!(purge_point(&m), None);
        // A replica that holds nothing yet keeps everything (openraft's own limit applies).
        let m = metrics(100, None, Some(&[Some(120), None]));
        assert_eq!(purge_point(&m), None);
        // No snapshot, no purge.
        let mut m = metrics(100, None, Some(&[Some(120)]));
        m.snapshot = None;
        assert_eq!(purge_point(&m), None);
    }

    #[test]
    fn a_follower_keeps_a_few_entries_behind_its_snapshot() {
        let m = metrics(100, Some(10), None);
        assert_eq!(purge_point(&m), Some(100 - FOLLOWER_KEEP));
        let m = metrics(100, Some(60), None);
        assert_eq!(purge_point(&m), None);
    }
}
