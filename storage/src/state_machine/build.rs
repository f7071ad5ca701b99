//! Building a snapshot of a group: what each kind captured is written to one snapshot file (off
//! the async runtime) and promoted to the group's current snapshot.

use std::io;
use std::path::PathBuf;

use openraft::alias::{SnapshotMetaOf, SnapshotOf};
use openraft::storage::RaftSnapshotBuilder;

use super::transfer::batches_ref_key;
use super::{header_key, Capture, Header};
use crate::engine::CF_DATA;
use crate::snapshot::{SnapshotData, SnapshotDir, SnapshotWriter};
use crate::{encode, Engine, StorageError, TypeConfig};

/// The snapshot metadata of a state machine whose header is `header`.
pub(super) fn snapshot_meta(header: &Header) -> SnapshotMetaOf<TypeConfig> {
    SnapshotMetaOf::<TypeConfig> {
        last_log_id: header.applied,
        last_membership: header.membership.clone(),
    }
}

/// Writes the rows of `group` in `[from, to)` and its header to a snapshot file, as they are now.
pub(super) fn write_range_now(
    engine: &Engine,
    group: u64,
    header: &Header,
    (from, to): (&[u8], &[u8]),
    snapshots: &SnapshotDir,
) -> Result<PathBuf, StorageError> {
    let mut w = SnapshotWriter::create(snapshots.temp_path()?, &snapshot_meta(header))?;
    engine.scan(CF_DATA, from, to, |k, v| {
        w.row(k, v)?;
        Ok(true)
    })?;
    w.row(&header_key(group), &encode(header)?)?;
    w.finish()
}

/// What the builder copies, as captured when it was made.
pub(super) enum CapturedRows {
    /// Captured rows (see [`Capture`]), written when the snapshot is built.
    Captured(Capture),
    /// A snapshot file written when the builder was made (states changed in place).
    File(Result<PathBuf, StorageError>),
    /// The state could not be captured: building fails with this error rather than writing a
    /// snapshot that silently lacks part of the state (an empty catalog, a missing producer).
    Failed(StorageError),
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct SnapshotBuilder {
    pub(super) engine: Engine,
    pub(super) group: u64,
    pub(super) header: Header,
    pub(super) rows: CapturedRows,
    pub(super) snapshots: SnapshotDir,
}

impl SnapshotBuilder {
    /// Writes the captured state to a snapshot file and makes it the group's current snapshot.
    fn build(
        engine: &Engine,
        group: u64,
        header: &Header,
        rows: CapturedRows,
        snapshots: &SnapshotDir,
    ) -> Result<SnapshotOf<TypeConfig, SnapshotData>, StorageError> {
        let meta = snapshot_meta(header);
        let path = match rows {
            CapturedRows::File(written) => written?,
            CapturedRows::Failed(e) => return Err(e),
            CapturedRows::Captured(Capture::RangeNow(from, to)) => {
                write_range_now(engine, group, header, (&from, &to), snapshots)?
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
        let (engine, group, header, snapshots) = (
            self.engine.clone(),
            self.group,
            self.header.clone(),
            self.snapshots.clone(),
        );
        Ok(crate::engine::on_blocking_thread(move || {
            SnapshotBuilder::build(&engine, group, &header, rows, &snapshots)
        })
        .await?)
    }
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        // A file written when the builder was made must not linger unused.
        if let CapturedRows::File(Ok(path)) = &self.rows {
            let _ = std::fs::remove_file(path);
        }
    }
}
