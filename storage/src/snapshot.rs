//! Snapshot files: a group's state-machine rows written to disk, streamed to a replica in chunks,
//! and loaded back into the engine.
//!
//! A snapshot of any size never sits in memory: rows are written as they are scanned, sent in chunks
//! read from the file, received into a file, and installed in bounded write batches.
//!
//! File layout: `WSNP1` then rows of `u32 key_len | key | u32 value_len | value` (big endian).
//! Each group keeps its current snapshot as `current.snap` + `current.meta` in its own directory.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use openraft::alias::SnapshotMetaOf;

use crate::{decode, encode, StorageError, TypeConfig};

const MAGIC: &[u8; 5] = b"WSNP1";
/// Size of the chunks a snapshot is streamed in.
pub const CHUNK_SIZE: usize = 1 << 20;

/// A snapshot on disk: what openraft hands between the state machine and the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotData {
    /// The snapshot file.
    pub path: PathBuf,
}

/// The snapshot directory of one group.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    dir: PathBuf,
}

impl SnapshotDir {
    /// The directory of `group` under the node's snapshot root.
    pub fn new(root: &Path, group: u64) -> SnapshotDir {
        SnapshotDir {
            dir: root.join(format!("g{group}")),
        }
    }

    fn meta_path(&self) -> PathBuf {
        self.dir.join("current.meta")
    }

    fn data_path(&self) -> PathBuf {
        self.dir.join("current.snap")
    }

    /// A fresh path for a snapshot being built or received.
    pub fn temp_path(&self) -> Result<PathBuf, StorageError> {
        std::fs::create_dir_all(&self.dir)?;
        let n: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        Ok(self.dir.join(format!("tmp-{n}.snap")))
    }

    /// The current snapshot, if the group has one.
    pub fn current(
        &self,
    ) -> Result<Option<(SnapshotMetaOf<TypeConfig>, SnapshotData)>, StorageError> {
        let meta = match std::fs::read(self.meta_path()) {
            Ok(b) => decode(&b)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(Some((
            meta,
            SnapshotData {
                path: self.data_path(),
            },
        )))
    }

    /// Makes the snapshot file at `path` the group's current snapshot, durably.
    pub fn promote(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        path: &Path,
    ) -> Result<SnapshotData, StorageError> {
        std::fs::create_dir_all(&self.dir)?;
        if path != self.data_path() {
            std::fs::rename(path, self.data_path())?;
        }
        let tmp = self.dir.join("current.meta.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(meta)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, self.meta_path())?;
        File::open(&self.dir)?.sync_all()?;
        Ok(SnapshotData {
            path: self.data_path(),
        })
    }

    /// Deletes the group's snapshots (the replica is being dropped).
    pub fn destroy(&self) -> Result<(), StorageError> {
        match std::fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Writes rows into a snapshot file.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    path: PathBuf,
}

impl SnapshotWriter {
    /// Starts a snapshot file at `path`.
    pub fn create(path: PathBuf) -> Result<SnapshotWriter, StorageError> {
        let mut out = BufWriter::with_capacity(CHUNK_SIZE, File::create(&path)?);
        out.write_all(MAGIC)?;
        Ok(SnapshotWriter { out, path })
    }

    /// Adds one row.
    pub fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.out.write_all(&(key.len() as u32).to_be_bytes())?;
        self.out.write_all(key)?;
        self.out.write_all(&(value.len() as u32).to_be_bytes())?;
        self.out.write_all(value)?;
        Ok(())
    }

    /// Flushes and fsyncs the file.
    pub fn finish(self) -> Result<PathBuf, StorageError> {
        let f = self
            .out
            .into_inner()
            .map_err(|e| StorageError::Io(e.to_string()))?;
        f.sync_all()?;
        Ok(self.path)
    }
}

/// Reads the rows of a snapshot file, one at a time.
pub fn read_rows(
    path: &Path,
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut r = BufReader::with_capacity(CHUNK_SIZE, File::open(path)?);
    let mut magic = [0u8; 5];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(StorageError::Corrupt(format!(
            "{} is not a snapshot file",
            path.display()
        )));
    }
    loop {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        let mut key = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut key)?;
        r.read_exact(&mut len)?;
        let mut value = vec![0u8; u32::from_be_bytes(len) as usize];
        r.read_exact(&mut value)?;
        visit(key, value)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sd = SnapshotDir::new(dir.path(), 9);
        let mut w = SnapshotWriter::create(sd.temp_path().unwrap()).unwrap();
        for i in 0..1000u32 {
            w.row(&i.to_be_bytes(), &vec![i as u8; (i % 300) as usize])
                .unwrap();
        }
        let path = w.finish().unwrap();
        let meta = SnapshotMetaOf::<TypeConfig>::default();
        let data = sd.promote(&meta, &path).unwrap();
        let mut n = 0u32;
        read_rows(&data.path, |k, v| {
            assert_eq!(k, n.to_be_bytes());
            assert_eq!(v.len(), (n % 300) as usize);
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1000);
        assert_eq!(sd.current().unwrap().unwrap().0, meta);
    }
}
