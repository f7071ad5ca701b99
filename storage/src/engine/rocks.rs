//! The RocksDB engine of a node: one database, its column families, and group commit.
//!
//! Group commit: Raft log appends are written without `sync`, then handed to the [`GroupCommit`]
//! thread, which fsyncs the write-ahead log once for everything written before the fsync started and
//! then completes all their callbacks. Many appends, from many groups, share one fsync.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::sync::Arc;

use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBCompressionType, Direction, IteratorMode, Options,
    ReadOptions, WriteOptions, DB,
};

use super::{
    Backend, EngineStats, KeyValue, PinnedView, ReadView, SyncCallback, Visit, WriteBatch, WriteOp,
    CF_DATA, CF_LOG, CF_META, COLUMN_FAMILIES,
};
use crate::StorageError;

/// The most bytes of write-ahead log kept before the column families holding the oldest WAL file
/// are flushed (so disk use after a load does not stay at every WAL file written during it).
const MAX_TOTAL_WAL_BYTES: u64 = 64 << 20;

/// Compression by level, L0 first, then the level L0 is compacted into, then the levels below it
/// (RocksDB counts from the base level with dynamic level sizes). The two upper levels are
/// rewritten by almost every flush and compaction of a table being written, so compressing them
/// costs CPU on every rewrite for bytes that soon move down; the levels below hold the bulk and
/// change rarely, so they are compressed (the split TiKV makes).
const LEVEL_COMPRESSION: [DBCompressionType; 7] = {
    use DBCompressionType::{Lz4, None as Plain};
    [Plain, Plain, Lz4, Lz4, Lz4, Lz4, Lz4]
};

/// The RocksDB backend.
pub struct RocksBackend {
    db: Arc<DB>,
    commit: GroupCommit,
}

impl RocksBackend {
    /// Opens (or creates) the database under `dir` and starts its group-commit and idle-compaction
    /// threads.
    pub fn open(dir: &Path, stats: Arc<EngineStats>) -> Result<RocksBackend, StorageError> {
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
        // Flushes and compactions write tens of megabytes at once. Through the page cache, that
        // data becomes ordered data of the file system's running journal transaction (ext4's
        // default), and the next WAL fsync, which commits that transaction, waits until all of it
        // is on disk: every acknowledged write then stalls for the length of a flush, on every
        // replica at once since they flush the same bytes. Written directly, it is on disk before
        // its metadata is journaled, and WAL fsyncs stay short (see BENCHMARKS.md, "Latency at a
        // paced rate").
        let direct = direct_io_supported(dir);
        if !direct {
            tracing::info!(
                dir = %dir.display(),
                "the data directory's file system refuses direct I/O: flushes and compactions go through the page cache"
            );
        }
        opts.set_use_direct_io_for_flush_and_compaction(direct);
        let mut log_opts = Options::default();
        log_opts.set_write_buffer_size(64 << 20);
        // Entries still held when the memtable is flushed (a partition's recent batches, a
        // region's last few dozen writes) are compressed like data.
        log_opts.set_compression_per_level(&LEVEL_COMPRESSION);
        // Point reads (a row by key, a vote, a header) skip the files that cannot hold the key.
        let mut with_bloom = rocksdb::BlockBasedOptions::default();
        with_bloom.set_bloom_filter(10.0, false);
        let mut data_opts = Options::default();
        data_opts.set_write_buffer_size(64 << 20);
        data_opts.set_compression_per_level(&LEVEL_COMPRESSION);
        data_opts.set_block_based_table_factory(&with_bloom);
        let mut meta_opts = Options::default();
        meta_opts.set_block_based_table_factory(&with_bloom);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_META, meta_opts),
            ColumnFamilyDescriptor::new(CF_DATA, data_opts),
        ];
        let db = Arc::new(DB::open_cf_descriptors(&opts, dir.join("db"), cfs)?);
        let commit = GroupCommit::start(Arc::downgrade(&db), stats);
        start_idle_compaction(Arc::downgrade(&db));
        Ok(RocksBackend { db, commit })
    }

    fn cf(&self, name: &str) -> Result<&ColumnFamily, StorageError> {
        cf(&self.db, name)
    }

    fn to_rocks(&self, batch: WriteBatch) -> Result<rocksdb::WriteBatch, StorageError> {
        // Room for the keys, values and RocksDB's few bytes of framing per change, so the batch
        // is not grown (and copied) again and again as changes are added.
        let mut b =
            rocksdb::WriteBatch::with_capacity_bytes(batch.bytes() + 16 * batch.ops().len() + 12);
        for op in batch.ops() {
            match op {
                WriteOp::Put { cf, key, value } => b.put_cf(self.cf(cf)?, key, value),
                WriteOp::Delete { cf, key } => b.delete_cf(self.cf(cf)?, key),
                WriteOp::DeleteRange { cf, from, to } => b.delete_range_cf(self.cf(cf)?, from, to),
            }
        }
        Ok(b)
    }
}

/// Whether files under `dir` can be opened for direct I/O (`O_DIRECT`); some file systems (tmpfs
/// before Linux 6.6, for one) refuse it, and RocksDB would then fail every flush.
fn direct_io_supported(dir: &Path) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        let probe = dir.join(".direct-io-probe");
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_DIRECT)
            .open(&probe)
            .is_ok();
        // The probe may not even have been created; nothing to report if removing it fails.
        let _ = std::fs::remove_file(&probe);
        opened
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = dir;
        false
    }
}

fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a ColumnFamily, StorageError> {
    db.cf_handle(name)
        .ok_or_else(|| StorageError::Corrupt(format!("column family {name} is missing")))
}

impl Backend for RocksBackend {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.db.get_cf(self.cf(cf)?, key)?)
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let b = self.to_rocks(batch)?;
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        Ok(self.db.write_opt(b, &wo)?)
    }

    fn sync(&self, done: SyncCallback) {
        self.commit.submit(done);
    }

    fn sync_now(&self) -> Result<(), StorageError> {
        Ok(self.db.flush_wal(true)?)
    }

    fn scan(&self, cf: &str, from: &[u8], to: &[u8], visit: Visit<'_>) -> Result<(), StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(to.to_vec());
        let iter = self.db.iterator_cf_opt(
            self.cf(cf)?,
            ro,
            IteratorMode::From(from, Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }

    fn last_in(&self, cf: &str, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(from.to_vec());
        let iter =
            self.db
                .iterator_cf_opt(self.cf(cf)?, ro, IteratorMode::From(to, Direction::Reverse));
        for item in iter {
            let (k, v) = item?;
            if k.as_ref() < to {
                return Ok(Some((k.to_vec(), v.to_vec())));
            }
        }
        Ok(None)
    }

    fn group_ids(&self, cf: &str) -> Result<Vec<u64>, StorageError> {
        let mut ids = Vec::new();
        let mut iter = self.db.raw_iterator_cf(self.cf(cf)?);
        iter.seek_to_first();
        while iter.valid() {
            let Some(id) = iter
                .key()
                .and_then(|k| k.get(..8))
                .and_then(|k| <[u8; 8]>::try_from(k).ok())
                .map(u64::from_be_bytes)
            else {
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

    fn consistent(
        &self,
        read: &mut dyn FnMut(&dyn ReadView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let snap = self.db.snapshot();
        read(&RocksView {
            db: &self.db,
            snap: &snap,
        })
    }

    fn pin(&self, _cf: &'static str, _from: &[u8], _to: &[u8]) -> Result<PinnedView, StorageError> {
        Ok(Arc::new(PinnedRocks::new(self.db.clone(), |db| {
            db.snapshot()
        })))
    }

    fn describe(&self) -> String {
        self.db.path().display().to_string()
    }
}

/// A RocksDB snapshot of the database it keeps open.
type Snapshot<'a> = rocksdb::SnapshotWithThreadMode<'a, DB>;

self_cell::self_cell!(
    /// A RocksDB snapshot held past the call that took it, with the database it reads.
    struct PinnedRocks {
        owner: Arc<DB>,
        #[covariant]
        dependent: Snapshot,
    }
);

impl PinnedRocks {
    fn view(&self) -> RocksView<'_> {
        RocksView {
            db: self.borrow_owner(),
            snap: self.borrow_dependent(),
        }
    }
}

impl ReadView for PinnedRocks {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.view().get(cf, key)
    }

    fn multi_get(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        self.view().multi_get(cf, keys)
    }

    fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        self.view().scan(cf, from, to, reverse, visit)
    }
}

/// Reads of one RocksDB snapshot.
struct RocksView<'a> {
    db: &'a DB,
    snap: &'a rocksdb::SnapshotWithThreadMode<'a, DB>,
}

impl RocksView<'_> {
    fn options(&self) -> ReadOptions {
        let mut ro = ReadOptions::default();
        ro.set_snapshot(self.snap);
        ro
    }
}

impl ReadView for RocksView<'_> {
    fn get(&self, cf_name: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.snap.get_cf(cf(self.db, cf_name)?, key)?)
    }

    fn multi_get(
        &self,
        cf_name: &str,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let got =
            self.db
                .batched_multi_get_cf_opt(cf(self.db, cf_name)?, keys, false, &self.options());
        got.into_iter()
            .map(|r| Ok(r?.map(|v| v.to_vec())))
            .collect()
    }

    fn scan(
        &self,
        cf_name: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        let mut ro = self.options();
        ro.set_iterate_lower_bound(from.to_vec());
        ro.set_iterate_upper_bound(to.to_vec());
        let mode = if reverse {
            IteratorMode::End
        } else {
            IteratorMode::Start
        };
        for item in self.db.iterator_cf_opt(cf(self.db, cf_name)?, ro, mode) {
            let (k, v) = item?;
            if !visit(&k, &v)? {
                break;
            }
        }
        Ok(())
    }
}

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
    COLUMN_FAMILIES
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
    let cfs: Vec<_> = COLUMN_FAMILIES
        .iter()
        .filter_map(|name| db.cf_handle(name))
        .collect();
    db.flush_cfs_opt(&cfs, &rocksdb::FlushOptions::default())?;
    if let Some(cf) = db.cf_handle(CF_LOG) {
        db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
    }
    Ok(())
}

/// A WAL fsync at least this long is logged (as etcd warns of a slow fdatasync): on a healthy disk
/// it takes a millisecond or two, and every acknowledged write waits for one.
const SLOW_FSYNC: std::time::Duration = std::time::Duration::from_secs(1);

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
                    let took = started.elapsed();
                    metrics::histogram!("weir_group_commit_fsync_seconds")
                        .record(took.as_secs_f64());
                    if took >= SLOW_FSYNC {
                        tracing::warn!(
                            ms = took.as_millis() as u64,
                            writes = waiting.len(),
                            "slow fdatasync of the write-ahead log: acknowledgements waited for it"
                        );
                    }
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

    /// Writes rows, flushes them to a table file (with direct I/O where the file system allows
    /// it) and reads them back after reopening.
    fn flushed_rows_survive_a_reopen(parent: &Path) {
        let dir = tempfile::tempdir_in(parent).expect("temp dir");
        {
            let engine = RocksBackend::open(dir.path(), Arc::default()).expect("open");
            let mut batch = WriteBatch::default();
            for i in 0..1_000u32 {
                batch.put(CF_DATA, i.to_be_bytes(), vec![i as u8; 300]);
            }
            engine.write(batch, true).expect("write");
            tidy(&engine.db).expect("flush");
            let tables = engine
                .db
                .property_int_value_cf(
                    engine.cf(CF_DATA).expect("cf"),
                    "rocksdb.num-files-at-level0",
                )
                .expect("property")
                .unwrap_or(0);
            assert!(tables > 0, "the flush wrote no table file");
        }
        let engine = RocksBackend::open(dir.path(), Arc::default()).expect("reopen");
        for i in [0u32, 500, 999] {
            assert_eq!(
                engine.get(CF_DATA, &i.to_be_bytes()).expect("get"),
                Some(vec![i as u8; 300])
            );
        }
    }

    #[test]
    fn flushes_work_in_the_temp_dir() {
        flushed_rows_survive_a_reopen(&std::env::temp_dir());
    }

    #[test]
    fn flushes_work_on_tmpfs_whether_or_not_it_takes_direct_io() {
        let shm = Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("no /dev/shm here: nothing to check");
            return;
        }
        flushed_rows_survive_a_reopen(shm);
    }
}
