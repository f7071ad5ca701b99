//! Region splits: each region leader checks its size and splits a region that outgrew its table's
//! threshold.
//!
//! A split takes three steps, each safe to repeat after a crash:
//! 1. the leader reserves a group id for the new region in the catalog;
//! 2. it proposes `Split { split_key, child }` through the region's own Raft log: applying it moves
//!    the rows from the split key on to the new region and shrinks the range (epoch + 1), atomically,
//!    on every replica; a split that was not committed never happened;
//! 3. it records the split in the catalog, which places the new region on the same replicas. A
//!    leader whose applied epoch is ahead of the catalog repeats this step until it lands, so a
//!    split interrupted between 2 and 3 still completes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use weir_proto::v1::{AllocateGroupRequest, ReportSplitRequest};
use weir_storage::catalog::{Catalog, GroupKind};
use weir_storage::region::{self, RegionState, SplitRecord};
use weir_storage::{GroupWatch, Request as Cmd, Response as Resp};

use crate::cluster::NodeContext;
use crate::error::{NodeError, NodeResult};
use crate::groups::GroupHandle;
use crate::leader;

/// A region is measured again only after at least this fraction of its threshold was written to it
/// since its last measurement (overwrites and deletes make the running estimate larger than the
/// region, so the estimate alone would have it measured again and again).
const REMEASURE_FRACTION: u64 = 8;

/// What the split check remembers of a region's last measurement.
#[derive(Debug, Clone, Copy)]
struct Measured {
    /// The region's running size estimate when it was measured.
    estimate: u64,
    /// The bytes its rows held then.
    size: u64,
}

impl Measured {
    /// Whether the region may have reached `threshold` since: its rows can only have grown by
    /// what was written to it (the estimate's growth), so until that covers the gap to the
    /// threshold a new measurement cannot find it there.
    fn due(&self, estimate: u64, threshold: u64) -> bool {
        let written = estimate.saturating_sub(self.estimate);
        let gap = threshold.saturating_sub(self.size);
        written >= gap.max(threshold / REMEASURE_FRACTION)
    }
}

/// Runs the split check of the regions this node leads every `interval`, forever.
pub async fn split_loop(ctx: Arc<NodeContext>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut measured: BTreeMap<u64, Measured> = BTreeMap::new();
    loop {
        tick.tick().await;
        let Ok(catalog) = ctx.registry.catalog() else {
            continue;
        };
        let groups = ctx.registry.all();
        measured.retain(|g, _| groups.contains_key(g));
        for h in groups.values() {
            let GroupWatch::Region(rx) = &h.watch else {
                continue;
            };
            if !h.is_leader() {
                continue;
            }
            let st = rx.borrow().clone();
            if let Err(e) = check(&ctx, &catalog, h, &st, &mut measured).await {
                tracing::warn!(region = h.id, error = %e, "split check failed");
            }
        }
    }
}

/// Reports an unrecorded split, or splits the region if it is too large.
async fn check(
    ctx: &NodeContext,
    catalog: &Catalog,
    h: &Arc<GroupHandle>,
    st: &RegionState,
    measured: &mut BTreeMap<u64, Measured>,
) -> NodeResult<()> {
    let Some(GroupKind::Region { table, epoch, .. }) = catalog.groups.get(&h.id).map(|g| &g.kind)
    else {
        return Ok(());
    };
    if st.epoch > *epoch {
        if let Some(rec) = &st.last_split {
            report(ctx, h.id, rec).await?;
        }
        return Ok(());
    }
    let Some(t) = catalog.tables.get(table) else {
        return Ok(());
    };
    if st.approx_bytes < t.split_bytes {
        return Ok(());
    }
    if let Some(last) = measured.get(&h.id) {
        if !last.due(st.approx_bytes, t.split_bytes) {
            return Ok(());
        }
    }
    let engine = ctx.engine.clone();
    let (id, threshold) = (h.id, t.split_bytes);
    let (mid, size) = weir_storage::engine::on_blocking_thread(move || {
        region::middle_key(&engine, id, threshold)
    })
    .await?;
    measured.insert(
        h.id,
        Measured {
            estimate: st.approx_bytes,
            size,
        },
    );
    let Some(split_key) = mid else {
        return Ok(());
    };
    split(ctx, catalog, h, split_key, st.epoch, size).await?;
    // What is left of the region may still be over the threshold (it grew faster than it was
    // checked): the next check measures it again.
    measured.remove(&h.id);
    Ok(())
}

async fn split(
    ctx: &NodeContext,
    catalog: &Catalog,
    h: &Arc<GroupHandle>,
    split_key: Vec<u8>,
    epoch: u64,
    size: u64,
) -> NodeResult<()> {
    let child = ctx
        .cluster_client_of_leader()?
        .allocate_group(AllocateGroupRequest {})
        .await?
        .into_inner()
        .group_id;
    let started = Instant::now();
    match leader::write(
        h,
        catalog,
        Cmd::Split {
            split_key: split_key.clone(),
            child,
            epoch,
        },
    )
    .await?
    {
        Resp::Ok => {}
        other => {
            return Err(NodeError::Internal(format!(
                "region {} refused the split: {other:?}",
                h.id
            )))
        }
    }
    let GroupWatch::Region(rx) = &h.watch else {
        return Ok(());
    };
    let rec = rx.borrow().last_split.clone();
    tracing::info!(region = h.id, child, bytes = size, "region split");
    crate::metrics::region_split();
    if let Some(rec) = rec {
        report(ctx, h.id, &rec).await?;
    }
    // The new region's replicas start with a full log of their own and elect after a timeout;
    // this node applied the split and can stand for election right away.
    let registry = ctx.registry.clone();
    tokio::spawn(async move {
        let deadline = started + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(c) = registry.get(child) {
                if c.leader().is_none() {
                    let _ = c.raft.trigger().elect(false).await;
                }
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    Ok(())
}

async fn report(ctx: &NodeContext, parent: u64, rec: &SplitRecord) -> NodeResult<()> {
    ctx.cluster_client_of_leader()?
        .report_split(ReportSplitRequest {
            parent,
            epoch: rec.epoch,
            split_key: rec.split_key.clone().into(),
            child: rec.child,
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Measured;

    #[test]
    fn a_region_is_measured_again_only_once_enough_was_written_to_reach_the_threshold() {
        let t = 64 << 20;
        // Measured at half the threshold: rewriting the same rows cannot bring it there before
        // half the threshold was written.
        let half = Measured {
            estimate: 100 << 20,
            size: 32 << 20,
        };
        assert!(!half.due((100 << 20) + (31 << 20), t));
        assert!(half.due((100 << 20) + (32 << 20), t));
        // Measured just below it: not before an eighth of the threshold was written.
        let near = Measured {
            estimate: 100 << 20,
            size: (64 << 20) - 1,
        };
        assert!(!near.due((100 << 20) + (7 << 20), t));
        assert!(near.due((100 << 20) + (8 << 20), t));
        // An estimate that shrank (a split moved rows away) is not a write.
        assert!(!near.due(10 << 20, t));
    }
}
