//! The node's storage engine: three column families shared by every Raft group on the node, their
//! key layout, write batches, and group commit.
//!
//! Every key starts with the 8-byte big-endian id of the Raft group it belongs to, so one group's
//! data is one contiguous range that can be scanned, snapshotted or dropped on its own.
//!
//! The engine is a narrow [`Backend`]: RocksDB on disk ([`rocks`]) in a node, or an in-memory
//! store that loses what was not synced when its simulated machine crashes ([`memory`]) in a
//! simulation. Everything above it (log stores, state machines, snapshots) is the same code.

pub mod memory;
pub mod rocks;

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use crate::StorageError;

/// Column family of Raft log entries: `group | index` → entry.
pub const CF_LOG: &str = "raft_log";
/// Column family of Raft metadata: `group | tag` → vote, committed, purged, node identity.
pub const CF_META: &str = "raft_meta";
/// Column family of state-machine data: `group | ...` → partition batches, catalog, offsets.
pub const CF_DATA: &str = "data";
/// Every column family, in the order backends create them.
pub const COLUMN_FAMILIES: [&str; 3] = [CF_LOG, CF_META, CF_DATA];

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

/// One change of a [`WriteBatch`], its keys and value borrowed from the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp<'a> {
    /// Sets `key` to `value`.
    Put {
        /// Column family.
        cf: &'static str,
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
    },
    /// Removes `key`.
    Delete {
        /// Column family.
        cf: &'static str,
        /// Key.
        key: &'a [u8],
    },
    /// Removes every key in `[from, to)`.
    DeleteRange {
        /// Column family.
        cf: &'static str,
        /// First key removed.
        from: &'a [u8],
        /// First key kept after the range.
        to: &'a [u8],
    },
}

/// What one change of a [`WriteBatch`] does; its bytes are in the batch's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpKind {
    Put,
    Delete,
    DeleteRange,
}

/// One change of a [`WriteBatch`]: its first byte string (key, or start of a range) ends at
/// `first_end` in the buffer, its second (value, or end of a range) at `end`; it starts where the
/// change before it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Op {
    kind: OpKind,
    cf: &'static str,
    first_end: usize,
    end: usize,
}

/// Changes applied together: all of them or (after a crash) none. Keys and values are packed in
/// one buffer, so a batch of many small rows costs no allocation per row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<Op>,
    buf: Vec<u8>,
}

impl WriteBatch {
    /// Sets `key` to `value` in column family `cf`.
    pub fn put(&mut self, cf: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        self.put_parts(cf, &[key.as_ref()], &[value.as_ref()]);
    }

    /// Sets the key made of `key` (its parts one after another) to the value made of `value`,
    /// in column family `cf`, without building either first.
    pub fn put_parts(&mut self, cf: &'static str, key: &[&[u8]], value: &[&[u8]]) {
        self.push(OpKind::Put, cf, key, value);
    }

    /// Removes `key` from column family `cf`.
    pub fn delete(&mut self, cf: &'static str, key: impl AsRef<[u8]>) {
        self.push(OpKind::Delete, cf, &[key.as_ref()], &[]);
    }

    /// Removes every key of column family `cf` in `[from, to)`.
    pub fn delete_range(&mut self, cf: &'static str, from: impl AsRef<[u8]>, to: impl AsRef<[u8]>) {
        self.push(OpKind::DeleteRange, cf, &[from.as_ref()], &[to.as_ref()]);
    }

    fn push(&mut self, kind: OpKind, cf: &'static str, first: &[&[u8]], second: &[&[u8]]) {
        for part in first {
            self.buf.extend_from_slice(part);
        }
        let first_end = self.buf.len();
        for part in second {
            self.buf.extend_from_slice(part);
        }
        self.ops.push(Op {
            kind,
            cf,
            first_end,
            end: self.buf.len(),
        });
    }

    /// Removes every key of `group` in column family `cf`.
    pub fn delete_group(&mut self, cf: &'static str, group: u64) {
        let end = match group.checked_add(1) {
            Some(next) => next.to_be_bytes().to_vec(),
            // The last group id: its keys end where 8-byte prefixes do.
            None => vec![0xff; 9],
        };
        self.delete_range(cf, group.to_be_bytes(), end);
    }

    /// The changes, in order.
    pub fn ops(&self) -> impl ExactSizeIterator<Item = WriteOp<'_>> + '_ {
        let mut start = 0;
        self.ops.iter().map(move |op| {
            let (first, second) = (
                &self.buf[start..op.first_end],
                &self.buf[op.first_end..op.end],
            );
            start = op.end;
            match op.kind {
                OpKind::Put => WriteOp::Put {
                    cf: op.cf,
                    key: first,
                    value: second,
                },
                OpKind::Delete => WriteOp::Delete {
                    cf: op.cf,
                    key: first,
                },
                OpKind::DeleteRange => WriteOp::DeleteRange {
                    cf: op.cf,
                    from: first,
                    to: second,
                },
            }
        })
    }

    /// How many bytes the batch's keys and values take together.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// True when the batch changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// An owned key and value.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// Completion of a group-commit fsync.
pub type SyncCallback = Box<dyn FnOnce(Result<(), StorageError>) + Send>;

/// Visits key/value pairs in order; returns false to stop.
pub type Visit<'a> = &'a mut dyn FnMut(&[u8], &[u8]) -> Result<bool, StorageError>;

/// Reads from one consistent point in time (a RocksDB snapshot, or the in-memory store held
/// still): what several reads see together was all true at once.
pub trait ReadView {
    /// Reads one value.
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Reads several values of one column family.
    fn multi_get(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError>;
    /// Visits the keys of `cf` in `[from, to)`, in key order or (`reverse`) backwards.
    fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: Visit<'_>,
    ) -> Result<(), StorageError>;
}

/// A read view that stays at the point in time it was taken for as long as it is held.
pub type PinnedView = Arc<dyn ReadView + Send + Sync>;

/// One key range of a column family as it was when [`Engine::pin`] took it, readable for as long
/// as it is held: a snapshot of rows that change in place, taken in the time of a RocksDB
/// snapshot and read (or sent) later.
#[derive(Clone)]
pub struct PinnedRange {
    view: PinnedView,
    cf: &'static str,
    from: Vec<u8>,
    to: Vec<u8>,
}

impl std::fmt::Debug for PinnedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PinnedRange")
            .field("cf", &self.cf)
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

impl PinnedRange {
    fn check(&self, key: &[u8]) -> Result<(), StorageError> {
        if key < self.from.as_slice() || key >= self.to.as_slice() {
            return Err(StorageError::Io(format!(
                "key {key:?} read outside the pinned range {:?}..{:?}",
                self.from, self.to
            )));
        }
        Ok(())
    }

    /// Reads one value of the range as it was pinned.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.check(key)?;
        self.view.get(self.cf, key)
    }

    /// Visits the keys of `[from, to)`, clamped to the pinned range, in key order.
    pub fn scan(
        &self,
        from: &[u8],
        to: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        let from = from.max(self.from.as_slice());
        let to = to.min(self.to.as_slice());
        if from >= to {
            return Ok(());
        }
        self.view.scan(self.cf, from, to, false, &mut visit)
    }
}

/// What a storage engine must do; everything else is built on these.
pub trait Backend: Send + Sync + 'static {
    /// Reads one value.
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError>;
    /// Applies a batch atomically; with `sync`, it (and everything written before it) is durable
    /// when this returns.
    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError>;
    /// Calls `done` once everything written before this call is durable.
    fn sync(&self, done: SyncCallback);
    /// Makes everything written so far durable before returning.
    fn sync_now(&self) -> Result<(), StorageError>;
    /// Visits the keys of `cf` in `[from, to)` in key order.
    fn scan(&self, cf: &str, from: &[u8], to: &[u8], visit: Visit<'_>) -> Result<(), StorageError>;
    /// The last key/value of `cf` in `[from, to)`.
    fn last_in(&self, cf: &str, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StorageError>;
    /// The ids of the groups with at least one key in `cf`, in order.
    fn group_ids(&self, cf: &str) -> Result<Vec<u64>, StorageError>;
    /// Runs `read` against one consistent view.
    fn consistent(
        &self,
        read: &mut dyn FnMut(&dyn ReadView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError>;
    /// A view of the engine as it is now that stays so for as long as it is held; only `cf`
    /// within `[from, to)` is read through it (RocksDB holds a snapshot of everything, the
    /// in-memory store copies just that range).
    fn pin(&self, cf: &'static str, from: &[u8], to: &[u8]) -> Result<PinnedView, StorageError>;
    /// Where the engine keeps its data, for logs.
    fn describe(&self) -> String;
}

/// Runs `work`, disk-heavy work that owns its inputs (a snapshot build or install), on tokio's
/// blocking threads so the async workers keep serving heartbeats and votes meanwhile. On a
/// single-threaded runtime (a simulation, whose every step must happen on its one thread in
/// order) it runs in place.
pub async fn on_blocking_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    start_on_blocking_thread(work).await
}

/// Like [`on_blocking_thread`], but the work starts now, not when the returned future is first
/// polled: for work that feeds something awaited before it (a snapshot written into the stream
/// that sends it).
pub fn start_on_blocking_thread<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StorageError> + Send + 'static,
) -> impl std::future::Future<Output = Result<T, StorageError>> + Send {
    let started = if multi_threaded() {
        Err(tokio::task::spawn_blocking(work))
    } else {
        Ok(work())
    };
    async move {
        match started {
            Ok(done) => done,
            Err(running) => running
                .await
                .map_err(|e| StorageError::Io(format!("disk task failed: {e}")))?,
        }
    }
}

/// True on a multi-threaded tokio runtime, where blocking work can move off the async workers.
pub fn multi_threaded() -> bool {
    matches!(
        tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()),
        Ok(tokio::runtime::RuntimeFlavor::MultiThread)
    )
}

/// Runs `f`, a long piece of disk work (copying half a region at a split, writing a snapshot),
/// without holding up the other tasks of the runtime's worker thread it is called on: on a
/// multi-threaded tokio runtime the worker's other tasks (heartbeats, votes of other groups) move
/// to another thread meanwhile. Elsewhere (a single-threaded runtime, no runtime) it just runs `f`.
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    if multi_threaded() {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// The node's storage engine: one store shared by every Raft group on the node.
#[derive(Clone)]
pub struct Engine {
    backend: Arc<dyn Backend>,
    stats: Arc<EngineStats>,
    /// Bytes of Raft entries the node's log stores keep decoded ([`crate::log_cache`]).
    log_cache: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("store", &self.backend.describe())
            .finish()
    }
}

impl Engine {
    /// Opens (or creates) a RocksDB engine under `dir`.
    pub fn open(dir: &std::path::Path) -> Result<Engine, StorageError> {
        let stats = Arc::new(EngineStats::default());
        let backend = rocks::RocksBackend::open(dir, stats.clone())?;
        Ok(Engine {
            backend: Arc::new(backend),
            stats,
            log_cache: Arc::default(),
        })
    }

    /// Opens an engine on a simulated machine's in-memory disk.
    pub fn in_memory(disk: &memory::MemoryDisk) -> Engine {
        let stats = Arc::new(EngineStats::default());
        Engine {
            backend: Arc::new(disk.open(stats.clone())),
            stats,
            log_cache: Arc::default(),
        }
    }

    /// Group-commit statistics.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The count of bytes of Raft entries kept decoded, shared by the node's log stores.
    pub fn log_cache_bytes(&self) -> Arc<AtomicUsize> {
        self.log_cache.clone()
    }

    /// Reads one value.
    pub fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        self.backend.get(cf, key)
    }

    /// Writes a batch without waiting for an fsync; durability comes from [`Engine::sync`] or from
    /// replaying the Raft log.
    pub fn write(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.backend.write(batch, false)
    }

    /// Writes a batch and fsyncs it before returning (for rare writes such as votes).
    pub fn write_sync(&self, batch: WriteBatch) -> Result<(), StorageError> {
        self.backend.write(batch, true)
    }

    /// Calls `done` once everything written before this call is on disk; shares the fsync with
    /// every other caller waiting at the same time.
    pub fn sync(&self, done: SyncCallback) {
        self.backend.sync(done)
    }

    /// Makes everything written so far durable before returning.
    pub fn sync_now(&self) -> Result<(), StorageError> {
        self.backend.sync_now()
    }

    /// The ids of the groups that have at least one key in column family `cf`, in order; one seek
    /// per group, so it is cheap however much data each group holds.
    pub fn group_ids(&self, cf: &str) -> Result<Vec<u64>, StorageError> {
        self.backend.group_ids(cf)
    }

    /// Iterates the keys of column family `cf` in `[from, to)` in key order.
    pub fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<bool, StorageError>,
    ) -> Result<(), StorageError> {
        self.backend.scan(cf, from, to, &mut visit)
    }

    /// The last key/value of column family `cf` in `[from, to)`.
    pub fn last_in(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
    ) -> Result<Option<KeyValue>, StorageError> {
        self.backend.last_in(cf, from, to)
    }

    /// Pins `cf`'s keys in `[from, to)` as they are now: later writes do not show through the
    /// returned range. Cheap to take; RocksDB keeps the versions it needs until it is dropped.
    pub fn pin(
        &self,
        cf: &'static str,
        from: &[u8],
        to: &[u8],
    ) -> Result<PinnedRange, StorageError> {
        Ok(PinnedRange {
            view: self.backend.pin(cf, from, to)?,
            cf,
            from: from.to_vec(),
            to: to.to_vec(),
        })
    }

    /// Runs `read` against one consistent view of the engine and returns what it returns.
    pub fn consistent<T>(
        &self,
        read: impl FnOnce(&dyn ReadView) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut read = Some(read);
        let mut out = None;
        self.backend.consistent(&mut |view| {
            if let Some(read) = read.take() {
                out = Some(read(view)?);
            }
            Ok(())
        })?;
        out.ok_or_else(|| StorageError::Io("the engine gave no consistent view".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn keys_of_a_group_sort_by_suffix_and_stay_contiguous() {
        let a = group_key_u64(7, 1, 5);
        let b = group_key_u64(7, 1, 300);
        let c = group_key_u64(8, 0, 0);
        assert!(a < b && b < c);
        assert_eq!(key_suffix_u64(&b), Some(300));
    }

    /// Both engines, so every behaviour below is checked on each.
    fn engines() -> Vec<(Engine, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let rocks = Engine::open(dir.path()).unwrap();
        let memory = Engine::in_memory(&memory::MemoryDisk::new(1));
        vec![(rocks, Some(dir)), (memory, None)]
    }

    #[test]
    fn group_commit_covers_concurrent_writers() {
        for (engine, _dir) in engines() {
            let (tx, rx) = std::sync::mpsc::channel();
            for i in 0..100u64 {
                let mut b = WriteBatch::default();
                b.put(CF_LOG, group_key_u64(1, 0, i), b"x");
                engine.write(b).unwrap();
                let tx = tx.clone();
                engine.sync(Box::new(move |r| tx.send(r.is_ok()).unwrap()));
            }
            for _ in 0..100 {
                assert!(rx.recv().unwrap());
            }
            let fsyncs = engine.stats().fsyncs.load(Ordering::Relaxed);
            assert!((1..=100).contains(&fsyncs), "{engine:?}: {fsyncs}");
            assert_eq!(engine.stats().synced_appends.load(Ordering::Relaxed), 100);
        }
    }

    #[test]
    fn both_engines_read_back_the_same_answers() {
        for (engine, _dir) in engines() {
            let mut b = WriteBatch::default();
            for g in [3u64, 5, 9] {
                for i in 0..10u64 {
                    b.put(CF_DATA, group_key_u64(g, 1, i), i.to_be_bytes());
                }
            }
            b.delete(CF_DATA, group_key_u64(3, 1, 4));
            b.delete_range(CF_DATA, group_key_u64(5, 1, 2), group_key_u64(5, 1, 8));
            b.delete_group(CF_DATA, 9);
            engine.write(b).unwrap();
            assert_eq!(engine.group_ids(CF_DATA).unwrap(), vec![3, 5], "{engine:?}");
            let mut seen = Vec::new();
            engine
                .scan(CF_DATA, &group_key(5, &[]), &group_key(6, &[]), |k, _| {
                    seen.push(key_suffix_u64(k).unwrap());
                    Ok(true)
                })
                .unwrap();
            assert_eq!(seen, vec![0, 1, 8, 9], "{engine:?}");
            let last = engine
                .last_in(CF_DATA, &group_key(3, &[]), &group_key_u64(3, 1, 5))
                .unwrap()
                .unwrap();
            assert_eq!(key_suffix_u64(&last.0), Some(3), "{engine:?}");
            let (got, backwards) = engine
                .consistent(|view| {
                    let got =
                        view.multi_get(CF_DATA, &[group_key_u64(3, 1, 4), group_key_u64(3, 1, 5)])?;
                    let mut backwards = Vec::new();
                    view.scan(
                        CF_DATA,
                        &group_key_u64(3, 1, 6),
                        &group_key(4, &[]),
                        true,
                        &mut |k, _| {
                            backwards.push(key_suffix_u64(k).unwrap());
                            Ok(backwards.len() < 3)
                        },
                    )?;
                    Ok((got, backwards))
                })
                .unwrap();
            assert_eq!(got, vec![None, Some(5u64.to_be_bytes().to_vec())]);
            assert_eq!(backwards, vec![9, 8, 7], "{engine:?}");
        }
    }
}
