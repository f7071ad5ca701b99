//! Snapshot files: a group's state-machine rows written to disk, streamed to a replica in chunks,
//! and loaded back into the engine.
//!
//! A snapshot of any size never sits in memory: rows are written as they are scanned, sent in chunks
//! read from the file, received into a file, and installed in bounded write batches.
//!
//! A snapshot is one file holding its metadata and its rows, so the two can never disagree. Layout
//! (integers big endian):
//!
//! ```text
//! WSNP2 | u32 meta_len | meta                      (bincode of the openraft snapshot meta)
//!       | u32 key_len | key | u32 value_len | value  (once per row, key_len < END)
//!       | u32 END | u64 rows | u32 crc32             (crc32 of every byte before it)
//! ```
//!
//! A file is written under a temporary name, fsynced, and made the group's `current.snap` by one
//! rename followed by an fsync of the directory: a crash leaves the old snapshot or the new one,
//! never a mix. Readers check the end marker and the checksum and refuse a torn or corrupt file, so
//! a damaged snapshot is never applied; the group then builds or receives a fresh one.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use openraft::alias::SnapshotMetaOf;

use crate::engine::PinnedRange;
use crate::{decode, encode, StorageError, TypeConfig};

const MAGIC: &[u8; 5] = b"WSNP2";
/// Length prefix that ends the rows; no key is this long.
const END: u32 = u32::MAX;
/// Largest metadata a snapshot file may announce (a membership is a few kilobytes at most); bounds
/// the allocation made for a file that came over the network.
const MAX_META_LEN: u32 = 16 << 20;
/// Prefix of the names of snapshots being built or received.
const TEMP_PREFIX: &str = "tmp-";
/// Name of the group's current snapshot.
const CURRENT: &str = "current.snap";
/// Size of the chunks a snapshot is streamed in.
pub const CHUNK_SIZE: usize = 1 << 20;

/// A snapshot as openraft hands it between the state machine and the network.
#[derive(Debug, Clone)]
pub enum SnapshotData {
    /// A snapshot file: a group's own, or one received from a leader.
    File(PathBuf),
    /// A region's rows as they were at the snapshot's log id, pinned in the engine and written
    /// out only when the snapshot is sent (a region has no snapshot file of its own).
    Pinned(Box<PinnedRows>),
}

impl SnapshotData {
    /// The snapshot's file, for a snapshot that is one.
    pub fn file(&self) -> Option<&Path> {
        match self {
            SnapshotData::File(path) => Some(path),
            SnapshotData::Pinned(_) => None,
        }
    }
}

/// The rows of a region's snapshot, held as the engine had them when the snapshot was taken.
#[derive(Debug, Clone)]
pub struct PinnedRows {
    /// The snapshot's metadata: the log id applied and the membership, as the header says.
    pub(crate) meta: SnapshotMetaOf<TypeConfig>,
    /// The engine's view, from the group's header key to the end of its rows.
    pub(crate) view: PinnedRange,
    /// The header's key, read last (the replica takes it as the end of the rows).
    pub(crate) header_key: Vec<u8>,
    /// The rows the snapshot copies: `[from, to)`.
    pub(crate) rows: (Vec<u8>, Vec<u8>),
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

    fn data_path(&self) -> PathBuf {
        self.dir.join(CURRENT)
    }

    /// A fresh path for a snapshot being built or received; unique within the process, and
    /// removed by [`SnapshotDir::remove_temp_files`] if the process dies before promoting it.
    pub fn temp_path(&self) -> Result<PathBuf, StorageError> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        std::fs::create_dir_all(&self.dir)?;
        let n: u64 = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        Ok(self.dir.join(format!("{TEMP_PREFIX}{n}-{seq}.snap")))
    }

    /// Deletes snapshots left half-built or half-received by a crash or a failed transfer; call
    /// only while nothing builds or receives a snapshot of the group.
    pub fn remove_temp_files(&self) -> Result<usize, StorageError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut removed = 0;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            // `current.meta` was written next to the data by an older layout; the metadata now
            // lives inside the snapshot file.
            if name.starts_with(TEMP_PREFIX) || name.ends_with(".tmp") || name == "current.meta" {
                remove_if_exists(&entry.path())?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// The current snapshot, if the group has a whole and intact one.
    ///
    /// A torn or corrupt file (or one of an older layout) is deleted and reported as no snapshot,
    /// so that a fresh one is built or received instead of a damaged one being applied or sent.
    /// Reads the whole file to check it: call from a blocking context.
    pub fn current(
        &self,
    ) -> Result<Option<(SnapshotMetaOf<TypeConfig>, SnapshotData)>, StorageError> {
        let path = self.data_path();
        match verify(&path) {
            Ok(meta) => Ok(Some((meta, SnapshotData::File(path)))),
            Err(SnapshotError::Missing) => Ok(None),
            Err(SnapshotError::Io(e)) => Err(StorageError::Io(e)),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "discarding unusable snapshot");
                remove_if_exists(&path)?;
                Ok(None)
            }
        }
    }

    /// Makes the finished snapshot file at `path` (written by [`SnapshotWriter`], or received and
    /// [`verify`]-ed) the group's current snapshot, durably and in one step: one rename, then an
    /// fsync of the directory.
    pub fn promote(&self, path: &Path) -> Result<SnapshotData, StorageError> {
        let target = self.data_path();
        if path == target {
            return Ok(SnapshotData::File(target));
        }
        let promoted = (|| {
            std::fs::create_dir_all(&self.dir)?;
            std::fs::rename(path, &target)?;
            // The rename is only durable once the directory entry is.
            File::open(&self.dir)?.sync_all()?;
            Ok(SnapshotData::File(target.clone()))
        })();
        if promoted.is_err() {
            // A snapshot that cannot become current is of no use; do not leave it behind.
            let _ = remove_if_exists(path);
        }
        promoted
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

fn remove_if_exists(path: &Path) -> Result<(), StorageError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Why a snapshot file cannot be used.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SnapshotError {
    /// There is no file.
    #[error("snapshot file is missing")]
    Missing,
    /// Reading the file failed.
    #[error("reading snapshot: {0}")]
    Io(String),
    /// The file does not start as a snapshot of this layout.
    #[error("not a snapshot file of this version")]
    BadMagic,
    /// The file ends before its end marker: a write or a transfer was cut short.
    #[error("snapshot file is torn: it ends before its end marker")]
    Torn,
    /// The bytes do not match the checksum the writer recorded.
    #[error("snapshot checksum mismatch: file says {stored:08x}, contents give {computed:08x}")]
    Checksum {
        /// Checksum stored in the file.
        stored: u32,
        /// Checksum of the bytes read.
        computed: u32,
    },
    /// The structure is inconsistent (bad lengths, bytes after the end marker, wrong row count).
    #[error("malformed snapshot: {0}")]
    Malformed(String),
}

impl SnapshotError {
    fn at(self, path: &Path) -> StorageError {
        match self {
            SnapshotError::Io(e) => StorageError::Io(format!("{}: {e}", path.display())),
            e => StorageError::Corrupt(format!("snapshot {}: {e}", path.display())),
        }
    }
}

impl From<SnapshotError> for StorageError {
    fn from(e: SnapshotError) -> Self {
        match e {
            SnapshotError::Io(e) => StorageError::Io(e),
            e => StorageError::Corrupt(e.to_string()),
        }
    }
}

impl From<std::io::Error> for SnapshotError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            SnapshotError::Torn
        } else {
            SnapshotError::Io(e.to_string())
        }
    }
}

/// Encodes a snapshot (metadata, rows, end marker, checksum) into any writer: a file being built,
/// or the stream a leader sends to a replica.
pub struct SnapshotEncoder<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    rows: u64,
}

impl<W: Write> SnapshotEncoder<W> {
    /// Starts a snapshot holding `meta` in `out`.
    pub fn start(
        out: W,
        meta: &SnapshotMetaOf<TypeConfig>,
    ) -> Result<SnapshotEncoder<W>, StorageError> {
        let mut e = SnapshotEncoder {
            out,
            crc: crc32fast::Hasher::new(),
            rows: 0,
        };
        let meta = encode(meta)?;
        e.put(MAGIC)?;
        e.put(&len_u32(meta.len())?.to_be_bytes())?;
        e.put(&meta)?;
        Ok(e)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), StorageError> {
        self.crc.update(bytes);
        Ok(self.out.write_all(bytes)?)
    }

    /// Adds one row.
    pub fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.put(&len_u32(key.len())?.to_be_bytes())?;
        self.put(key)?;
        self.put(&len_u32(value.len())?.to_be_bytes())?;
        self.put(value)?;
        self.rows += 1;
        Ok(())
    }

    /// Writes the end marker and checksum and returns the writer (not flushed).
    pub fn finish(mut self) -> Result<W, StorageError> {
        self.put(&END.to_be_bytes())?;
        let rows = self.rows.to_be_bytes();
        self.put(&rows)?;
        let crc = self.crc.clone().finalize().to_be_bytes();
        self.out.write_all(&crc)?;
        Ok(self.out)
    }
}

/// Writes a snapshot file under a temporary name; the file is deleted unless it is finished.
pub struct SnapshotWriter {
    enc: Option<SnapshotEncoder<BufWriter<File>>>,
    path: PathBuf,
}

impl SnapshotWriter {
    /// Starts a snapshot file at `path` (a [`SnapshotDir::temp_path`]) holding `meta`.
    pub fn create(
        path: PathBuf,
        meta: &SnapshotMetaOf<TypeConfig>,
    ) -> Result<SnapshotWriter, StorageError> {
        let file = File::options().write(true).create_new(true).open(&path)?;
        // From here on Drop removes the file if the writer is not finished.
        let mut w = SnapshotWriter { enc: None, path };
        w.enc = Some(SnapshotEncoder::start(
            BufWriter::with_capacity(CHUNK_SIZE, file),
            meta,
        )?);
        Ok(w)
    }

    /// Adds one row.
    pub fn row(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        match self.enc.as_mut() {
            Some(enc) => enc.row(key, value),
            None => Err(StorageError::Io("snapshot writer is closed".into())),
        }
    }

    /// Writes the end marker and checksum, flushes and fsyncs the file, and returns its path.
    pub fn finish(mut self) -> Result<PathBuf, StorageError> {
        let enc = self
            .enc
            .take()
            .ok_or_else(|| StorageError::Io("snapshot writer is closed".into()))?;
        let done = (|| {
            let f = enc
                .finish()?
                .into_inner()
                .map_err(|e| StorageError::Io(e.to_string()))?;
            f.sync_all()?;
            Ok(())
        })();
        match done {
            Ok(()) => Ok(std::mem::take(&mut self.path)),
            // Drop removes the file.
            Err(e) => Err(e),
        }
    }
}

impl Drop for SnapshotWriter {
    fn drop(&mut self) {
        // Unfinished (an error, or the build was abandoned): the partial file must not linger.
        if !self.path.as_os_str().is_empty() {
            self.enc.take();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn len_u32(n: usize) -> Result<u32, StorageError> {
    match u32::try_from(n) {
        Ok(n) if n < END => Ok(n),
        _ => Err(StorageError::Corrupt(format!(
            "{n} bytes is too long for a snapshot field"
        ))),
    }
}

/// A reader that feeds every byte it returns into a checksum.
struct Checked<R> {
    inner: R,
    crc: crc32fast::Hasher,
}

impl<R: Read> Checked<R> {
    fn exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotError> {
        self.inner.read_exact(buf)?;
        self.crc.update(buf);
        Ok(())
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        let mut b = [0u8; 4];
        self.exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    /// Reads `len` bytes without trusting `len` for one up-front allocation: a corrupt length must
    /// fail at the end of the file, not exhaust memory.
    fn bytes(&mut self, len: u32) -> Result<Vec<u8>, SnapshotError> {
        let mut v = Vec::new();
        (&mut self.inner)
            .take(u64::from(len))
            .read_to_end(&mut v)
            .map_err(SnapshotError::from)?;
        if v.len() != len as usize {
            return Err(SnapshotError::Torn);
        }
        self.crc.update(&v);
        Ok(v)
    }
}

/// Opens the snapshot file at `path` and reads its header: a reader at the first row, and the
/// metadata.
fn open_rows(
    path: &Path,
) -> Result<(Checked<BufReader<File>>, SnapshotMetaOf<TypeConfig>), SnapshotError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(SnapshotError::Missing),
        Err(e) => return Err(SnapshotError::from(e)),
    };
    let mut r = Checked {
        inner: BufReader::with_capacity(CHUNK_SIZE, file),
        crc: crc32fast::Hasher::new(),
    };
    let mut magic = [0u8; 5];
    r.exact(&mut magic).map_err(|e| match e {
        SnapshotError::Torn => SnapshotError::BadMagic,
        e => e,
    })?;
    if &magic != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let meta_len = r.u32()?;
    if meta_len > MAX_META_LEN {
        return Err(SnapshotError::Malformed(format!(
            "metadata of {meta_len} bytes"
        )));
    }
    let meta = r.bytes(meta_len)?;
    let meta = decode(&meta).map_err(|e| SnapshotError::Malformed(format!("metadata: {e}")))?;
    Ok((r, meta))
}

impl<R: Read> Checked<R> {
    /// The next row, or `None` at the end marker.
    fn next_row(&mut self) -> Result<Option<Row>, SnapshotError> {
        let key_len = self.u32()?;
        if key_len == END {
            return Ok(None);
        }
        let key = self.bytes(key_len)?;
        let value_len = self.u32()?;
        if value_len == END {
            return Err(SnapshotError::Malformed("row without a value".into()));
        }
        Ok(Some((key, self.bytes(value_len)?)))
    }
}

/// Reads a snapshot file from start to end, calling `visit` for every row, and checks its end
/// marker, row count and checksum. `visit` sees rows before the checksum is known: callers that
/// act on rows must [`verify`] the file first.
fn walk(
    path: &Path,
    mut visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StorageError>,
) -> Result<SnapshotMetaOf<TypeConfig>, WalkError> {
    let (mut r, meta) = open_rows(path)?;
    let mut rows = 0u64;
    while let Some((key, value)) = r.next_row()? {
        rows += 1;
        visit(key, value).map_err(WalkError::Visit)?;
    }
    let mut count = [0u8; 8];
    r.exact(&mut count)?;
    let computed = r.crc.clone().finalize();
    let mut stored = [0u8; 4];
    r.inner
        .read_exact(&mut stored)
        .map_err(SnapshotError::from)?;
    let stored = u32::from_be_bytes(stored);
    if stored != computed {
        return Err(SnapshotError::Checksum { stored, computed }.into());
    }
    if u64::from_be_bytes(count) != rows {
        return Err(SnapshotError::Malformed(format!(
            "{rows} rows, end marker says {}",
            u64::from_be_bytes(count)
        ))
        .into());
    }
    let mut extra = [0u8; 1];
    match r.inner.read(&mut extra) {
        Ok(0) => Ok(meta),
        Ok(_) => Err(SnapshotError::Malformed("bytes after the end marker".into()).into()),
        Err(e) => Err(SnapshotError::from(e).into()),
    }
}

enum WalkError {
    File(SnapshotError),
    Visit(StorageError),
}

impl From<SnapshotError> for WalkError {
    fn from(e: SnapshotError) -> Self {
        WalkError::File(e)
    }
}

/// Checks that the snapshot file at `path` is whole and intact, and returns the metadata it holds.
pub fn verify(path: &Path) -> Result<SnapshotMetaOf<TypeConfig>, SnapshotError> {
    match walk(path, |_, _| Ok(())) {
        Ok(meta) => Ok(meta),
        Err(WalkError::File(e)) => Err(e),
        Err(WalkError::Visit(e)) => Err(SnapshotError::Io(e.to_string())),
    }
}

/// One row of a snapshot: key and value.
pub type Row = (Vec<u8>, Vec<u8>);

/// The first row of a snapshot file, read without checking the rest of the file ([`verify`] it
/// first): how an install learns, before it changes anything, which rows the sender left to the
/// replica.
pub fn first_row(path: &Path) -> Result<Option<Row>, StorageError> {
    let first = open_rows(path).and_then(|(mut r, _)| r.next_row());
    first.map_err(|e| e.at(path))
}

/// Reads the rows of a snapshot file, one at a time; fails if the file turns out torn or corrupt,
/// which may be after some rows were visited (so [`verify`] it first before acting on rows).
pub fn read_rows(
    path: &Path,
    visit: impl FnMut(Vec<u8>, Vec<u8>) -> Result<(), StorageError>,
) -> Result<SnapshotMetaOf<TypeConfig>, StorageError> {
    match walk(path, visit) {
        Ok(meta) => Ok(meta),
        Err(WalkError::File(e)) => Err(e.at(path)),
        Err(WalkError::Visit(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::vote::RaftLeaderId;

    fn meta(index: u64) -> SnapshotMetaOf<TypeConfig> {
        let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
        SnapshotMetaOf::<TypeConfig> {
            last_log_id: Some(openraft::LogId::new(lid, index)),
            ..Default::default()
        }
    }

    fn write(sd: &SnapshotDir, meta: &SnapshotMetaOf<TypeConfig>, rows: u32) -> PathBuf {
        let mut w = SnapshotWriter::create(sd.temp_path().unwrap(), meta).unwrap();
        for i in 0..rows {
            w.row(&i.to_be_bytes(), &vec![i as u8; (i % 300) as usize])
                .unwrap();
        }
        w.finish().unwrap()
    }

    #[test]
    fn rows_round_trip_through_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let sd = SnapshotDir::new(dir.path(), 9);
        let meta = meta(12);
        let path = write(&sd, &meta, 1000);
        let data = sd.promote(&path).unwrap();
        let mut n = 0u32;
        let read = read_rows(data.file().expect("a file"), |k, v| {
            assert_eq!(k, n.to_be_bytes());
            assert_eq!(v.len(), (n % 300) as usize);
            n += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(n, 1000);
        assert_eq!(read, meta);
        assert_eq!(sd.current().unwrap().unwrap().0, meta);
        assert!(!path.exists(), "promoted by renaming the temporary file");
    }

    #[test]
    fn torn_or_corrupt_snapshots_are_refused_and_treated_as_missing() {
        let dir = tempfile::tempdir().unwrap();
        let sd = SnapshotDir::new(dir.path(), 3);
        let meta = meta(40);
        let good = std::fs::read(write(&sd, &meta, 200)).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("cut before the end marker", good[..good.len() / 2].to_vec()),
            ("cut inside the trailer", good[..good.len() - 3].to_vec()),
            ("one flipped byte", {
                let mut b = good.clone();
                let i = b.len() / 2;
                b[i] ^= 0x40;
                b
            }),
            ("bytes after the end", {
                let mut b = good.clone();
                b.push(0);
                b
            }),
            ("empty", Vec::new()),
        ];
        for (what, bytes) in cases {
            let path = sd.temp_path().unwrap();
            std::fs::write(&path, &bytes).unwrap();
            assert!(verify(&path).is_err(), "{what}: verified");
            assert!(
                read_rows(&path, |_, _| Ok(())).is_err(),
                "{what}: rows read without error"
            );
            std::fs::remove_file(&path).unwrap();
            // The same damage to the current snapshot: refused, removed, reported as none.
            std::fs::write(sd.data_path(), &bytes).unwrap();
            assert!(sd.current().unwrap().is_none(), "{what}: served as current");
            assert!(!sd.data_path().exists(), "{what}: damaged current kept");
        }
        // The intact bytes pass.
        let path = sd.temp_path().unwrap();
        std::fs::write(&path, &good).unwrap();
        assert_eq!(verify(&path).unwrap(), meta);
        sd.promote(&path).unwrap();
        assert_eq!(sd.current().unwrap().unwrap().0, meta);
    }

    #[test]
    fn leftover_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let sd = SnapshotDir::new(dir.path(), 4);
        let meta = meta(7);
        let current = write(&sd, &meta, 10);
        sd.promote(&current).unwrap();
        // A build that died half-way and a transfer that was cut off.
        let mut half = SnapshotWriter::create(sd.temp_path().unwrap(), &meta).unwrap();
        half.row(b"k", b"v").unwrap();
        std::mem::forget(half);
        std::fs::write(sd.temp_path().unwrap(), b"WSNP2partial").unwrap();
        assert_eq!(sd.remove_temp_files().unwrap(), 2);
        let left: Vec<_> = std::fs::read_dir(&sd.dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from(CURRENT)]);
        assert_eq!(sd.current().unwrap().unwrap().0, meta);
        // An abandoned writer removes its own file.
        let p = sd.temp_path().unwrap();
        drop(SnapshotWriter::create(p.clone(), &meta).unwrap());
        assert!(!p.exists());
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        type Rows = Vec<(Vec<u8>, Vec<u8>)>;

        fn rows() -> impl Strategy<Value = Rows> {
            proptest::collection::vec(
                (
                    proptest::collection::vec(any::<u8>(), 0..40),
                    proptest::collection::vec(any::<u8>(), 0..300),
                ),
                0..30,
            )
        }

        /// Writes `rows` to a snapshot file and returns its bytes.
        fn file_bytes(dir: &Path, rows: &Rows) -> Vec<u8> {
            let sd = SnapshotDir::new(dir, 1);
            let mut w = SnapshotWriter::create(sd.temp_path().unwrap(), &meta(3)).unwrap();
            for (k, v) in rows {
                w.row(k, v).unwrap();
            }
            let path = w.finish().unwrap();
            std::fs::read(path).unwrap()
        }

        /// The rows a file at `path` holding `bytes` yields, or the error reading it.
        fn read_back(path: &Path, bytes: &[u8]) -> Result<Rows, StorageError> {
            std::fs::write(path, bytes).unwrap();
            let mut got = Vec::new();
            read_rows(path, |k, v| {
                got.push((k, v));
                Ok(())
            })?;
            Ok(got)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn rows_round_trip(rows in rows()) {
                let dir = tempfile::tempdir().unwrap();
                let bytes = file_bytes(dir.path(), &rows);
                let got = read_back(&dir.path().join("copy"), &bytes).unwrap();
                prop_assert_eq!(got, rows);
            }

            #[test]
            fn a_changed_byte_is_refused(rows in rows(), at in any::<prop::sample::Index>(), flip in 1u8..=255) {
                let dir = tempfile::tempdir().unwrap();
                let mut bytes = file_bytes(dir.path(), &rows);
                let i = at.index(bytes.len());
                bytes[i] ^= flip;
                let path = dir.path().join("copy");
                prop_assert!(read_back(&path, &bytes).is_err(), "byte {} changed, file accepted", i);
                prop_assert!(verify(&path).is_err());
            }

            #[test]
            fn a_torn_file_is_refused(rows in rows(), at in any::<prop::sample::Index>()) {
                let dir = tempfile::tempdir().unwrap();
                let bytes = file_bytes(dir.path(), &rows);
                let cut = at.index(bytes.len());
                let path = dir.path().join("copy");
                prop_assert!(read_back(&path, &bytes[..cut]).is_err(), "cut at {}, file accepted", cut);
            }

            #[test]
            fn arbitrary_bytes_are_refused_without_panic(tail in proptest::collection::vec(any::<u8>(), 0..400), magic in any::<bool>()) {
                // With the right magic the reader gets past the first check and parses lengths.
                let mut bytes = if magic { MAGIC.to_vec() } else { Vec::new() };
                bytes.extend_from_slice(&tail);
                let dir = tempfile::tempdir().unwrap();
                let path = dir.path().join("junk");
                prop_assert!(read_back(&path, &bytes).is_err());
            }
        }
    }
}
