//! Retention: the leader of each partition drops batches past the topic's time or size limit.
//!
//! The cut is decided by the leader and replicated as a `Trim` command, so every replica drops the
//! same batches and the earliest offset moves forward the same way everywhere.

use std::sync::Arc;
use std::time::Duration;

use weir_storage::catalog::GroupKind;
use weir_storage::partition;
use weir_storage::{GroupWatch, Request};

use crate::cluster::NodeContext;
use crate::leader;

/// Checks every led partition every `interval` and trims what retention no longer keeps.
pub async fn retention_loop(ctx: Arc<NodeContext>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Ok(catalog) = ctx.registry.catalog() else {
            continue;
        };
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        for h in ctx.registry.all().values() {
            let GroupKind::Partition { topic, .. } = &h.kind else {
                continue;
            };
            let (Some(t), GroupWatch::Partition(rx)) = (catalog.topics.get(topic), &h.watch) else {
                continue;
            };
            if !h.is_leader() || (t.retention_ms == 0 && t.retention_bytes == 0) {
                continue;
            }
            let state = *rx.borrow();
            let (engine, group) = (ctx.engine.clone(), h.id);
            let (ms, bytes) = (t.retention_ms, t.retention_bytes);
            let cut = weir_storage::engine::on_blocking_thread(move || {
                partition::retention_cut(&engine, group, &state, ms, bytes, now_ms)
            })
            .await;
            if let Ok(Some(before)) = cut {
                tracing::info!(group = h.id, topic = %topic, before, "retention drops batches");
                if let Err(e) = leader::write(h, &catalog, Request::Trim { before }).await {
                    tracing::warn!(group = h.id, error = %e, "retention trim failed");
                }
            }
        }
    }
}
