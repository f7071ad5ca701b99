//! Installing a snapshot file as a group's whole state, all or nothing across a crash.
//!
//! Step 1 drops the group's data and writes an "install in progress" mark in one synced write;
//! step 2 copies the rows in bounded, unsynced batches; step 3 fsyncs them, then writes the header
//! and removes the mark in one synced write. A crash anywhere leaves either the old state (before
//! step 1), the new one (after step 3), or a marked group that start-up empties: a replica with no
//! data that gets a fresh snapshot, its Raft log and vote untouched.

use std::path::Path;

use openraft::alias::SnapshotMetaOf;
use rocksdb::WriteBatch;

use super::{header_key, Header};
use crate::engine::{group_key, CF_DATA};
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
    engine.delete_group_range(&mut b, CF_DATA, group)?;
    engine.write_sync(b)?;
    Ok(true)
}

/// Install step 1: in one synced write, drops the group's data and marks an install as under way,
/// so that from here on a crash leaves a marked, clearable group rather than a header over partial
/// data.
pub(super) fn begin_install(engine: &Engine, group: u64) -> Result<(), StorageError> {
    let mut b = WriteBatch::default();
    engine.delete_group_range(&mut b, CF_DATA, group)?;
    // After the range deletion in the same batch, so the mark survives it.
    b.put_cf(engine.cf(CF_DATA)?, installing_key(group), []);
    engine.write_sync(b)
}

/// Install step 2: copies the rows of the snapshot file at `path` into the engine in bounded,
/// unsynced write batches (step 3 makes them durable), and returns the header the file holds.
pub(super) fn write_install_rows(
    engine: &Engine,
    group: u64,
    path: &Path,
) -> Result<Option<Header>, StorageError> {
    let cf = engine.cf(CF_DATA)?;
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
        if k == installing_key(group) {
            return Err(StorageError::Corrupt(
                "snapshot holds an install mark".into(),
            ));
        }
        pending += k.len() + v.len();
        b.put_cf(cf, k, v);
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
/// once everything it stands for is durable.
fn commit_install(engine: &Engine, group: u64, header: &Header) -> Result<(), StorageError> {
    engine.db().flush_wal(true)?;
    let mut b = WriteBatch::default();
    let cf = engine.cf(CF_DATA)?;
    b.put_cf(cf, header_key(group), encode(header)?);
    b.delete_cf(cf, installing_key(group));
    engine.write_sync(b)
}

/// Installs the snapshot file at `path` as the whole state of `group`, all or nothing across a
/// crash, and returns the new header. A torn or corrupt file, or one holding other metadata than
/// `meta`, is refused before anything is changed.
pub(super) fn install_file(
    engine: &Engine,
    group: u64,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &Path,
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
    begin_install(engine, group)?;
    let installed = (|| {
        let mut header = write_install_rows(engine, group, path)?.unwrap_or_default();
        header.applied = meta.last_log_id;
        header.membership = meta.last_membership.clone();
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
