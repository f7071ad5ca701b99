//! What a leader sends a replica that needs a snapshot, and what that replica keeps of its own.
//!
//! A partition's batches never change once written, so a partition's snapshot file does not copy
//! them: it holds a reference row ("the batches below offset `end`"), the producer rows and the
//! header, and is built in time independent of the partition's size. When the snapshot is sent, the
//! reference is replaced by the batches themselves, read from the engine starting where the
//! replica's own copy ends (it says where, see `SnapshotFrom`); the stream's first row tells the
//! replica to keep its batches below that offset. A replica that was down for ten seconds gets ten
//! seconds of batches, not the partition.
//!
//! A region's snapshot is its rows pinned in the engine (they change in place): they are written
//! out as they were at the snapshot's log id while it is sent. Snapshots of the catalog and of
//! offsets are sent as their files are.

use std::io::Write;
use std::path::Path;

use super::{header_key, Header};
use crate::engine::{group_key, CF_DATA};
use crate::partition;
use crate::snapshot::{first_row, read_rows, verify, PinnedRows, SnapshotData, SnapshotEncoder};
use crate::{decode, encode, Engine, StorageError};

/// Tag of the reference row in a partition's own snapshot file: the batches below the row's
/// offset are read from the engine when the snapshot is sent.
const TAG_BATCHES_REF: u8 = 7;
/// Tag of the first row of a partition snapshot sent to a replica: the replica keeps its own
/// batches below the row's offset, the snapshot holds the rest.
const TAG_BATCHES_FROM: u8 = 8;

/// Key of the reference row of partition `group`'s own snapshot file.
pub(super) fn batches_ref_key(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_BATCHES_REF])
}

fn batches_from_key(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_BATCHES_FROM])
}

fn offset_value(what: &str, v: &[u8]) -> Result<u64, StorageError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| StorageError::Corrupt(format!("{what} row of {} bytes", v.len())))?;
    Ok(u64::from_be_bytes(b))
}

/// True when `key` is a row only a group's own snapshot file may hold (never one received).
pub(super) fn is_local_only(group: u64, key: &[u8]) -> bool {
    key == batches_ref_key(group)
}

/// True when `key` is the row telling a replica which batches it keeps (not data to store).
pub(super) fn is_keep_row(group: u64, key: &[u8]) -> bool {
    key == batches_from_key(group)
}

/// The offset below which a replica installing the received snapshot file at `path` keeps its own
/// batches (0: the snapshot holds the whole state). Reads only the file's first row.
pub fn kept_below(group: u64, path: &Path) -> Result<u64, StorageError> {
    match first_row(path)? {
        Some((k, v)) if k == batches_from_key(group) => offset_value("batches-from", &v),
        _ => Ok(0),
    }
}

/// Writes the snapshot `snapshot` of `group` into `out` as it is sent to a replica whose copy of
/// the partition ends at offset `replica_end` (0 for an empty replica, and ignored for other kinds
/// of groups), and returns `out`. Runs on a blocking thread: it reads the engine and the file.
pub fn write_transfer<W: Write>(
    engine: &Engine,
    group: u64,
    snapshot: &SnapshotData,
    replica_end: u64,
    mut out: W,
) -> Result<W, StorageError> {
    let path = match snapshot {
        SnapshotData::Pinned(pinned) => return write_pinned(pinned, out),
        SnapshotData::File(path) => path,
    };
    let end = match first_row(path)? {
        Some((k, v)) if k == batches_ref_key(group) => offset_value("batches-ref", &v)?,
        _ => {
            // Not a partition: the file is sent as it is (the replica checks it whole).
            std::io::copy(&mut std::fs::File::open(path)?, &mut out)?;
            return Ok(out);
        }
    };
    // The file is small (producers and a header): check it whole before sending anything of it.
    let meta = verify(path).map_err(|e| StorageError::Corrupt(e.to_string()))?;
    let from = replica_end.min(end);
    let mut enc = SnapshotEncoder::start(out, &meta)?;
    enc.row(&batches_from_key(group), &from.to_be_bytes())?;
    engine.scan(
        CF_DATA,
        &partition::batch_key(group, from),
        &partition::batch_key(group, end),
        |k, v| {
            enc.row(k, v)?;
            Ok(true)
        },
    )?;
    // Retention may have dropped batches at the front since the snapshot was taken: the state
    // sent starts at the first batch still there.
    let first = partition::first_batch_below(engine, group, end)?.unwrap_or(end);
    let header_key = header_key(group);
    read_rows(path, |k, v| {
        if k == batches_ref_key(group) {
            return Ok(());
        }
        if k == header_key {
            let mut header: Header = decode(&v)?;
            header.partition.earliest = header.partition.earliest.max(first);
            return enc.row(&k, &encode(&header)?);
        }
        enc.row(&k, &v)
    })?;
    enc.finish()
}

/// Writes a region's pinned rows and then its header as one snapshot: what the region held at
/// the snapshot's log id, however much was applied since.
fn write_pinned<W: Write>(pinned: &PinnedRows, out: W) -> Result<W, StorageError> {
    let mut enc = SnapshotEncoder::start(out, &pinned.meta)?;
    let (from, to) = &pinned.rows;
    pinned.view.scan(from, to, |k, v| {
        enc.row(k, v)?;
        Ok(true)
    })?;
    let header = pinned
        .view
        .get(&pinned.header_key)?
        .ok_or_else(|| StorageError::Corrupt("a pinned snapshot has no header".into()))?;
    let applied = decode::<Header>(&header)?.applied;
    if applied != pinned.meta.last_log_id {
        return Err(StorageError::Corrupt(format!(
            "pinned rows are at {applied:?}, the snapshot says {:?}",
            pinned.meta.last_log_id
        )));
    }
    enc.row(&pinned.header_key, &header)?;
    enc.finish()
}
