//! Installing a snapshot file as a group's whole state, all or nothing across a crash.
//!
//! Step 1 drops the group's data and writes an "install in progress" mark in one synced write;
//! step 2 copies the rows in bounded, unsynced batches; step 3 fsyncs them, then writes the header
//! and removes the mark in one synced write. A crash anywhere leaves either the old state (before
//! step 1), the new one (after step 3), or a marked group that start-up empties: a replica with no
//! data that gets a fresh snapshot, its Raft log and vote untouched.
//!
//! A partition snapshot sent to a replica may leave it its own batches below an offset (see
//! `transfer`): those are kept through every step, and only the rest is replaced.

use std::path::Path;

use crate::engine::WriteBatch;
use openraft::alias::SnapshotMetaOf;

use super::{header_key, transfer, Header};
use crate::engine::{group_key, CF_DATA};
use crate::partition;
use crate::snapshot::{read_rows, verify};
use crate::{decode, encode, Engine, StorageError, TypeConfig};

/// Marks a snapshot install under way: written (synced) before the first row and removed in the
/// synced write of the header, so finding it at start-up means a crash cut an install short.
const TAG_INSTALLING: u8 = 0xFE;
/// Rows per write batch when a snapshot is installed.
const INSTALL_BATCH_BYTES: usize = 4 << 20;

fn installing_key(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_INSTALLING])
}

/// If an install of `group` was cut short, deletes the part of it that was written (in one synced
/// write, which also removes the mark), leaving the group with no data and no header: an empty
/// replica that gets a fresh snapshot. Its Raft log and vote are left alone.
pub(super) fn clear_interrupted_install(engine: &Engine, group: u64) -> Result<bool, StorageError> {
    if engine.get(CF_DATA, &installing_key(group))?.is_none() {
        return Ok(false);
    }
    let mut b = WriteBatch::default();
    b.delete_group(CF_DATA, group);
    engine.write_sync(b)?;
    Ok(true)
}

/// Install step 1: in one synced write, drops the group's data (except a partition's batches below
/// `keep_below`) and marks an install as under way, so that from here on a crash leaves a marked,
/// clearable group rather than a header over partial data.
pub(super) fn begin_install(
    engine: &Engine,
    group: u64,
    keep_below: u64,
) -> Result<(), StorageError> {
    let mut b = WriteBatch::default();
    if keep_below == 0 {
        b.delete_group(CF_DATA, group);
    } else {
        let cf = CF_DATA;
        b.delete_range(cf, group.to_be_bytes(), partition::batch_key(group, 0));
        b.delete_range(
            cf,
            partition::batch_key(group, keep_below),
            (group + 1).to_be_bytes(),
        );
    }
    // After the range deletion in the same batch, so the mark survives it.
    b.put(CF_DATA, installing_key(group), []);
    engine.write_sync(b)
}

/// Install step 2: copies the rows of the snapshot file at `path` into the engine in bounded,
/// unsynced write batches (step 3 makes them durable), and returns the header the file holds.
pub(super) fn write_install_rows(
    engine: &Engine,
    group: u64,
    path: &Path,
) -> Result<Option<Header>, StorageError> {
    let cf = CF_DATA;
    let header_key = header_key(group);
    let mut header = None;
    let mut b = WriteBatch::default();
    let mut pending = 0usize;
    read_rows(path, |k, v| {
        if k.get(..8) != Some(&group.to_be_bytes()[..]) {
            return Err(StorageError::Corrupt(
                "snapshot row belongs to another group".into(),
            ));
        }
        if k == header_key {
            header = Some(decode(&v)?);
            return Ok(());
        }
        if transfer::is_keep_row(group, &k) {
            return Ok(());
        }
        if k == installing_key(group) || transfer::is_local_only(group, &k) {
            return Err(StorageError::Corrupt(
                "snapshot holds a row no sent snapshot may hold".into(),
            ));
        }
        pending += k.len() + v.len();
        b.put(cf, k, v);
        if pending >= INSTALL_BATCH_BYTES {
            engine.write(std::mem::take(&mut b))?;
            pending = 0;
        }
        Ok(())
    })?;
    engine.write(b)?;
    Ok(header)
}

/// Install step 3: fsyncs the rows written so far, then writes the header and removes the install
/// mark in one synced write. The header is what makes the group hold data at all, so it only lands
/// once everything it stands for is durable. Batches a replica kept that the snapshot's state no
/// longer holds (retention moved on) go in the same write.
fn commit_install(engine: &Engine, group: u64, header: &Header) -> Result<(), StorageError> {
    engine.sync_now()?;
    let mut b = WriteBatch::default();
    let cf = CF_DATA;
    if header.partition.earliest > 0 {
        b.delete_range(
            cf,
            partition::batch_key(group, 0),
            partition::batch_key(group, header.partition.earliest),
        );
    }
    b.put(cf, header_key(group), encode(header)?);
    b.delete(cf, installing_key(group));
    engine.write_sync(b)
}

/// Installs the snapshot file at `path` as the whole state of `group`, all or nothing across a
/// crash, and returns the new header. `held` is where the replica's own copy of a partition ends:
/// a snapshot that leaves the replica more batches than it holds is refused. A torn or corrupt
/// file, or one holding other metadata than `meta`, is refused before anything is changed.
pub(super) fn install_file(
    engine: &Engine,
    group: u64,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &Path,
    held: u64,
) -> Result<Header, StorageError> {
    let found = verify(path)
        .map_err(|e| StorageError::Corrupt(format!("refusing snapshot {}: {e}", path.display())))?;
    if &found != meta {
        return Err(StorageError::Corrupt(format!(
            "refusing snapshot {}: it holds {:?}, expected {:?}",
            path.display(),
            found.last_log_id,
            meta.last_log_id
        )));
    }
    let keep_below = transfer::kept_below(group, path)?;
    if keep_below > held {
        return Err(StorageError::Corrupt(format!(
            "refusing snapshot {}: it leaves the replica its batches below offset {keep_below}, \
             but the replica holds them only below {held}",
            path.display()
        )));
    }
    begin_install(engine, group, keep_below)?;
    let installed = (|| {
        let mut header = write_install_rows(engine, group, path)?.unwrap_or_default();
        header.applied = meta.last_log_id;
        header.membership = meta.last_membership.clone();
        if keep_below > 0 {
            // The replica's own front may be past the sender's (it applied a later trim).
            let first = partition::first_batch_below(engine, group, header.partition.next_offset)?
                .unwrap_or(header.partition.next_offset);
            header.partition.earliest = header.partition.earliest.max(first);
        }
        commit_install(engine, group, &header)?;
        Ok(header)
    })();
    if installed.is_err() {
        // Leave an empty replica rather than partial data; if even that fails, the install mark
        // is still there and the next start clears the group.
        if let Err(e) = clear_interrupted_install(engine, group) {
            tracing::error!(group, error = %e, "clearing a failed snapshot install");
        }
    }
    installed
}
