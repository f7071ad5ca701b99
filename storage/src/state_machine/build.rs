//! Building a snapshot of a group: what each kind captured is written to one snapshot file (off
//! the async runtime) and promoted to the group's current snapshot; a region's snapshot is its
//! rows pinned in the engine, with no file.

use std::io;

use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::storage::RaftSnapshotBuilder;

use super::transfer::batches_ref_key;
use super::{header_key, Capture, Header};
use crate::snapshot::{PinnedRows, SnapshotData, SnapshotDir, SnapshotWriter};
use crate::{encode, StorageError, TypeConfig};

/// The snapshot metadata of a state machine whose header is `header`.
pub(super) fn snapshot_meta(header: &Header) -> SnapshotMetaOf<TypeConfig> {
    SnapshotMetaOf::<TypeConfig> {
        last_log_id: header.applied,
        last_membership: header.membership.clone(),
    }
}

/// What the builder copies, as captured when it was made.
pub(super) enum CapturedRows {
    /// Captured rows (see [`Capture`]), written when the snapshot is built.
    Captured(Capture),
    /// Rows that change in place, pinned when the builder was made: the snapshot is the pin.
    Pinned(Box<PinnedRows>),
    /// The state could not be captured: building fails with this error rather than writing a
    /// snapshot that silently lacks part of the state (an empty catalog, a missing producer).
    Failed(StorageError),
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct SnapshotBuilder {
    pub(super) group: u64,
    pub(super) header: Header,
    pub(super) rows: CapturedRows,
    pub(super) snapshots: SnapshotDir,
}

impl SnapshotBuilder {
    /// Writes the captured state to a snapshot file and makes it the group's current snapshot.
    fn build(
        group: u64,
        header: &Header,
        rows: CapturedRows,
        snapshots: &SnapshotDir,
    ) -> Result<SnapshotOf<TypeConfig, SnapshotData>, StorageError> {
        let meta = snapshot_meta(header);
        let path = match rows {
            CapturedRows::Failed(e) => return Err(e),
            CapturedRows::Pinned(pinned) => {
                return Ok(SnapshotOf::<TypeConfig, SnapshotData> {
                    meta,
                    snapshot: SnapshotData::Pinned(pinned),
                })
            }
            CapturedRows::Captured(Capture::Pinned(..)) => {
                return Err(StorageError::Io(format!(
                    "group {group}: rows that change in place were not pinned"
                )))
            }
            CapturedRows::Captured(Capture::Rows(rows)) => {
                let mut w = SnapshotWriter::create(snapshots.temp_path()?, &meta)?;
                for (k, v) in &rows {
                    w.row(k, v)?;
                }
                w.row(&header_key(group), &encode(header)?)?;
                w.finish()?
            }
            CapturedRows::Captured(Capture::PartitionBelow(end, producers)) => {
                // The batches themselves stay in the engine (they never change): the file refers
                // to them, and they are read when the snapshot is sent (see `transfer`).
                let mut w = SnapshotWriter::create(snapshots.temp_path()?, &meta)?;
                w.row(&batches_ref_key(group), &end.to_be_bytes())?;
                for (k, v) in &producers {
                    w.row(k, v)?;
                }
                w.row(&header_key(group), &encode(header)?)?;
                w.finish()?
            }
        };
        let snapshot = snapshots.promote(&path)?;
        Ok(SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let rows = std::mem::replace(
            &mut self.rows,
            CapturedRows::Failed(StorageError::Io("snapshot builder already used".into())),
        );
        let (group, header, snapshots) = (self.group, self.header.clone(), self.snapshots.clone());
        Ok(crate::engine::on_blocking_thread(move || {
            SnapshotBuilder::build(group, &header, rows, &snapshots)
        })
        .await?)
    }
}
