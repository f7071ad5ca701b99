//! When a log partition snapshots itself: after every few megabytes appended, so its Raft log
//! (which holds each batch until a snapshot lets it be purged) stays small whatever the batch
//! size. openraft's own policy counts entries, which says little when an entry is one record or a
//! quarter of a megabyte; it stays on as a fallback for streams of tiny entries.

use tokio::sync::watch;
use weir_storage::partition::PartitionState;
use weir_storage::types::Raft;

/// Bytes appended to a partition between two snapshots of it.
pub const SNAPSHOT_EVERY_BYTES: u64 = 4 << 20;

/// Snapshots the partition `group` of `raft` after every [`SNAPSHOT_EVERY_BYTES`] appended to it,
/// as its applied state (`state`) shows; ends when the group closes.
pub fn spawn(group: u64, raft: Raft, mut state: watch::Receiver<PartitionState>) {
    tokio::spawn(async move {
        let mut last = state.borrow_and_update().bytes;
        let mut appended = 0u64;
        while state.changed().await.is_ok() {
            let bytes = state.borrow_and_update().bytes;
            // Retention makes the stored size shrink; only growth is appended data.
            appended += bytes.saturating_sub(last);
            last = bytes;
            if appended >= SNAPSHOT_EVERY_BYTES {
                appended = 0;
                if let Err(e) = raft.trigger().snapshot().await {
                    tracing::debug!(group, error = %e, "snapshot trigger refused");
                    return;
                }
            }
        }
    });
}
