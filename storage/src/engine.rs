//! The node's one RocksDB instance, its column families and key layout, and group commit.
//!
//! Every key starts with the 8-byte big-endian id of the Raft group it belongs to, so one group's
//! data is one contiguous range that can be scanned, snapshotted or dropped on its own.
//!
//! Group commit: Raft log appends are written without `sync`, then handed to the [`GroupCommit`]
//! thread, which fsyncs the write-ahead log once for everything written before the fsync started and
//! then completes all their callbacks. Many appends, from many groups, share one fsync.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch,
    WriteOptions, DB,
};

use crate::StorageError;

/// Column family of Raft log entries: `group | index` → entry.
pub const CF_LOG: &str = "raft_log";
/// Column family of Raft metadata: `group | tag` → vote, committed, purged, node identity.
pub const CF_META: &str = "raft_meta";
/// Column family of state-machine data: `group | ...` → partition batches, catalog, offsets.
pub const CF_DATA: &str = "data";

/// Builds `group | suffix`.
pub fn group_key(group: u64, suffix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + suffix.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.extend_from_slice(suffix);
    k
}

/// Builds `group | tag | n` with `n` big-endian so keys sort by `n`.
pub fn group_key_u64(group: u64, tag: u8, n: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.extend_from_slice(&group.to_be_bytes());
    k.push(tag);
    k.extend_from_slice(&n.to_be_bytes());
    k
}

/// Reads the trailing big-endian u64 of a key built by [`group_key_u64`].
pub fn key_suffix_u64(key: &[u8]) -> Option<u64> {
    let tail = key.get(key.len().checked_sub(8)?..)?;
    Some(u64::from_be_bytes(tail.try_into().ok()?))
}

/// Statistics of the engine, exported as metrics.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// fsyncs of the write-ahead log done by group commit.
    pub fsyncs: AtomicU64,
    /// Appends whose durability those fsyncs covered.
    pub synced_appends: AtomicU64,
}

/// The most bytes of write-ahead log kept before the column families holding the oldest WAL file
/// are flushed (so disk use after a load does not stay at every WAL file written during it).
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

/// Runs `work`, disk-heavy work that owns its inputs (a snapshot build or install), on tokio's
/// blocking threads so the async workers keep serving heartbeats and votes meanwhile.
pub async fn on_blocking_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StorageError::Io(format!("disk task failed: {e}")))?
}

/// Runs `f`, a long piece of disk work (copying half a region at a split, writing a snapshot),
/// without holding up the other tasks of the runtime's worker thread it is called on: on a
/// multi-threaded tokio runtime the worker's other tasks (heartbeats, votes of other groups) move
/// to another thread meanwhile. Elsewhere (a single-threaded runtime, no runtime) it just runs `f`.
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The node's storage engine: one RocksDB shared by every Raft group on the node.
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    commit: GroupCommit,
    stats: Arc<EngineStats>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("path", &self.db.path())
            .finish()
    }
}

impl Engine {
    /// Opens (or creates) the engine under `dir`.
    pub fn open(dir: &Path) -> Result<Engine, StorageError> {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Io(e.to_string()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        opts.set_keep_log_file_num(4);
        // A WAL file can only be deleted once every column family has flushed what it holds; a
        // family written rarely (Raft metadata) would otherwise pin every WAL file written since
        // its last flush. Past this total RocksDB flushes the families holding the oldest file.
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        let mut log_opts = Options::default();
        log_opts.set_write_buffer_size(64 << 20);
        // Point reads (a row by key, a vote, a header) skip the files that cannot hold the key.
        let mut with_bloom = rocksdb::BlockBasedOptions::default();
        with_bloom.set_bloom_filter(10.0, false);
        let mut data_opts = Options::default();
        data_opts.set_write_buffer_size(64 << 20);
        data_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        data_opts.set_block_based_table_factory(&with_bloom);
        let mut meta_opts = Options::default();
        meta_opts.set_block_based_table_factory(&with_bloom);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_META, meta_opts),
            ColumnFamilyDescriptor::new(CF_DATA, data_opts),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?);
        let stats = Arc::new(EngineStats::default());
        let commit = GroupCommit::start(Arc::downgrade(&db), stats.clone());
        start_idle_compaction(Arc::downgrade(&db));
        Ok(Engine { db, commit, stats })
    }

    /// The RocksDB handle, for readers that scan state-machine data directly.
    pub fn db(&self) -> &Arc<DB> {
        &self.db
    }

    /// Group-commit statistics.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Handle of a column family.
    pub fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| StorageError::Corrupt(format!("column family {name} is missing")))
    }

    /// Reads one value.
    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    /// Writes a batch without waiting for an fsync; durability comes from [`Engine::sync`] or from
    /// replaying the Raft log.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Writes a batch and fsyncs it before returning (for rare writes such as votes).
    pub fn write_sync(&self, batch: WriteBatch) -> Result<(), StorageError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        Ok(self.db.write_opt(batch, &wo)?)
    }

    /// Calls `done` once everything written before this call is on disk; shares the fsync with
    /// every other caller waiting at the same time.
    pub fn sync(&self, done: SyncCallback) {
        self.commit.submit(done);
    }

    /// Deletes every key of `group` in column family `cf`.
    pub fn delete_group_range(
        &self,
        batch: &mut WriteBatch,
        cf: &str,
        group: u64,
    ) -> Result<(), StorageError> {
        let cf = self.cf(cf)?;
        let start = group.to_be_bytes();
        let end = (group + 1).to_be_bytes();
        batch.delete_range_cf(cf, start, end);
        Ok(())
    }

    /// The ids of the groups that have at least one key in column family `cf`, in order; one seek
    /// per group, so it is cheap however much data each group holds.
    pub fn group_ids(&self, cf: &str) -> Result<Vec<u64>, StorageError> {
        let cf = self.cf(cf)?;
        let mut ids = Vec::new();
        let mut iter = self.db.raw_iterator_cf(cf);
        iter.seek_to_first();
        while iter.valid() {
            let Some(id) = iter.key().and_then(|k| k.get(..8)).map(|k| {
                let mut b = [0u8; 8];
                b.copy_from_slice(k);
                u64::from_be_bytes(b)
            }) else {
                break;
            };
            ids.push(id);
            match id.checked_add(1) {
                Some(next) => iter.seek(next.to_be_bytes()),
                None => break,
            }
        }
        iter.status()?;
        Ok(ids)
    }

    /// Iterates the keys of column family `cf` in `[from, to)` in key order.
    pub fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let cf = self.cf(cf)?;
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        let iter = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(from, Direction::Forward));
        for item in iter {
            let (k, v) = item?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    /// The last key/value of column family `cf` in `[from, to)`.
    pub fn last_in(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<KeyValue>, StorageError> {
        let cf = self.cf(cf)?;
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        let iter = self
            .db
            .iterator_cf_opt(cf, ro, IteratorMode::From(to, Direction::Reverse));
        for item in iter {
            let (k, v) = item?;
            if k.as_ref() < to {
                return Ok(Some((k.to_vec(), v.to_vec())));
            }
        }
        Ok(None)
    }
}

/// An owned key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Completion of a group-commit fsync.
pub type SyncCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// How long the engine must see no write before it tidies up after a load.
const IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(5);

/// Starts the thread that, once writes stop for [`IDLE_AFTER`], flushes every column family (so
/// no write-ahead log file is kept for what memtables held) and compacts the Raft log (whose
/// entries were mostly purged once applied and snapshotted, but stay in table files until a
/// compaction drops them): disk use after a load comes down to the data itself. Under a steady
/// load RocksDB's own compactions do the same.
fn start_idle_compaction(db: std::sync::Weak<DB>) {
    let spawned = std::thread::Builder::new()
        .name("weir-idle-compaction".into())
        .spawn(move || {
            let mut seen = None;
            // Raft-log table bytes after the last tidy: unchanged, a compaction finds nothing new.
            let mut log_tables_tidied = None;
            loop {
                std::thread::sleep(IDLE_AFTER);
                // Ends with the engine; holds the database only while working.
                let Some(db) = db.upgrade() else { return };
                let seq = db.latest_sequence_number();
                // A trickle of small writes (offset commits every few seconds) is left alone.
                let worth_it =
                    unflushed(&db) >= TIDY_MIN_BYTES || log_tables(&db) != log_tables_tidied;
                if seen == Some(seq) && worth_it {
                    if let Err(e) = tidy(&db) {
                        tracing::warn!(error = %e, "compacting after a load");
                    }
                    log_tables_tidied = log_tables(&db);
                }
                seen = Some(db.latest_sequence_number());
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "no idle-compaction thread: disk use stays higher after loads");
    }
}

/// Memtable bytes below which an idle engine does not flush.
const TIDY_MIN_BYTES: u64 = 4 << 20;

/// Bytes held in memtables (and so in WAL files) across the column families.
fn unflushed(db: &DB) -> u64 {
    [CF_LOG, CF_META, CF_DATA]
        .iter()
        .filter_map(|name| db.cf_handle(name))
        .filter_map(|cf| {
            db.property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                .ok()
                .flatten()
        })
        .sum()
}

/// Bytes of the Raft log's table files.
fn log_tables(db: &DB) -> Option<u64> {
    let cf = db.cf_handle(CF_LOG)?;
    db.property_int_value_cf(cf, "rocksdb.total-sst-files-size")
        .ok()
        .flatten()
}

fn tidy(db: &DB) -> Result<(), rocksdb::Error> {
    let mut cfs = Vec::new();
    for name in [CF_LOG, CF_META, CF_DATA] {
        if let Some(cf) = db.cf_handle(name) {
            cfs.push(cf);
        }
    }
    db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
    if let Some(cf) = db.cf_handle(CF_LOG) {
        db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    }
    Ok(())
}

/// The group-commit thread: batches fsync requests of all groups into single WAL fsyncs.
#[derive(Clone)]
struct GroupCommit {
    tx: mpsc::Sender<SyncCallback>,
}

impl GroupCommit {
    fn start(db: std::sync::Weak<DB>, stats: Arc<EngineStats>) -> GroupCommit {
        let (tx, rx) = mpsc::channel::<SyncCallback>();
        std::thread::Builder::new()
            .name("weir-group-commit".into())
            .spawn(move || {
                // Ends when every Engine clone (and so every sender) is gone.
                while let Ok(first) = rx.recv() {
                    let mut waiting = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    // The engine may be closing; hold the database only for the fsync itself so
                    // that it closes as soon as the last engine handle is dropped.
                    let started = std::time::Instant::now();
                    let res = match db.upgrade() {
                        Some(db) => db.flush_wal(true).map_err(StorageError::from),
                        None => Err(StorageError::Io("storage engine is shut down".into())),
                    };
                    // Every acknowledged write waits for one of these: its time is the floor of
                    // produce and put latency.
                    metrics::histogram!("weir_group_commit_fsync_seconds")
                        .record(started.elapsed().as_secs_f64());
                    stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                    stats
                        .synced_appends
                        .fetch_add(waiting.len() as u64, Ordering::Relaxed);
                    for cb in waiting {
                        cb(res.clone());
                    }
                }
            })
            .expect("spawning the group-commit thread");
        GroupCommit { tx }
    }

    fn submit(&self, cb: SyncCallback) {
        if let Err(mpsc::SendError(cb)) = self.tx.send(cb) {
            cb(Err(StorageError::Io("storage engine is shut down".into())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_of_a_group_sort_by_suffix_and_stay_contiguous() {
        let a = group_key_u64(7, 1, 5);
        let b = group_key_u64(7, 1, 300);
        let c = group_key_u64(8, 0, 0);
        assert!(a < b && b < c);
        assert_eq!(key_suffix_u64(&b), Some(300));
    }

    #[test]
    fn group_commit_covers_concurrent_writers() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        for i in 0..100u64 {
            let mut b = WriteBatch::default();
            b.put_cf(&engine.cf(CF_LOG).unwrap(), group_key_u64(1, 0, i), b"x");
            engine.write(b).unwrap();
            let tx = tx.clone();
            engine.sync(Box::new(move |r| tx.send(r.is_ok()).unwrap()));
        }
        for _ in 0..100 {
            assert!(rx.recv().unwrap());
        }
        let fsyncs = engine.stats().fsyncs.load(Ordering::Relaxed);
        assert!((1..=100).contains(&fsyncs));
        assert_eq!(engine.stats().synced_appends.load(Ordering::Relaxed), 100);
    }
}
