//! An in-memory engine for simulations: a machine's "disk" that keeps what was synced and, when
//! the machine crashes, loses some of what was not.
//!
//! A [`MemoryDisk`] outlives the node that runs on it, as a disk outlives a process: the
//! simulation keeps it, crashes it ([`MemoryDisk::crash`]) and opens a new engine on it when the
//! node restarts. Writes become visible at once and durable at the next sync; a crash keeps a
//! prefix of the unsynced writes (as a write-ahead log whose tail did not reach the disk) chosen
//! by the disk's seeded generator, and every engine opened before the crash fails from then on.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::{
    Backend, EngineStats, KeyValue, PinnedView, ReadView, SyncCallback, Visit, WriteBatch, WriteOp,
    COLUMN_FAMILIES,
};
use crate::StorageError;

type Table = BTreeMap<Vec<u8>, Vec<u8>>;
type Tables = BTreeMap<&'static str, Table>;

/// Entries copied out per step of a scan, so a visitor never runs while the disk is locked.
const SCAN_STEP: usize = 256;

/// A simulated machine's disk.
#[derive(Clone)]
pub struct MemoryDisk {
    state: Arc<Mutex<DiskState>>,
}

struct DiskState {
    /// What survives a crash.
    durable: Tables,
    /// What reads see.
    live: Tables,
    /// Batches written since the last sync, oldest first.
    unsynced: Vec<WriteBatch>,
    /// Bumped by each crash; engines of an earlier epoch are dead.
    epoch: u64,
    /// Draws which unsynced writes a crash keeps and how long fsyncs take.
    rng: u64,
    /// Longest simulated fsync; zero completes syncs at once.
    max_fsync: Duration,
}

fn empty_tables() -> Tables {
    COLUMN_FAMILIES
        .iter()
        .map(|cf| (*cf, Table::new()))
        .collect()
}

impl DiskState {
    /// SplitMix64: small, fast and fully determined by the seed.
    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn flush_unsynced(&mut self) -> usize {
        let batches = std::mem::take(&mut self.unsynced);
        let n = batches.len();
        for b in &batches {
            apply(&mut self.durable, b);
        }
        n
    }
}

fn apply(tables: &mut Tables, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            WriteOp::Put { cf, key, value } => {
                tables
                    .entry(cf)
                    .or_default()
                    .insert(key.to_vec(), value.to_vec());
            }
            WriteOp::Delete { cf, key } => {
                if let Some(t) = tables.get_mut(cf) {
                    t.remove(key);
                }
            }
            WriteOp::DeleteRange { cf, from, to } => {
                if let Some(t) = tables.get_mut(cf) {
                    let doomed: Vec<Vec<u8>> = t
                        .range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
                        .map(|(k, _)| k.clone())
                        .collect();
                    for k in doomed {
                        t.remove(&k);
                    }
                }
            }
        }
    }
}

impl MemoryDisk {
    /// An empty disk whose crashes and fsync times are drawn from `seed`.
    pub fn new(seed: u64) -> MemoryDisk {
        MemoryDisk {
            state: Arc::new(Mutex::new(DiskState {
                durable: empty_tables(),
                live: empty_tables(),
                unsynced: Vec::new(),
                epoch: 0,
                rng: seed,
                max_fsync: Duration::ZERO,
            })),
        }
    }

    /// Makes fsyncs take a drawn time up to `max` (simulated time: they complete on a timer of
    /// the runtime they were asked from), so a crash can land between a write and its sync.
    pub fn with_fsync_up_to(self, max: Duration) -> MemoryDisk {
        self.lock().max_fsync = max;
        self
    }

    fn lock(&self) -> MutexGuard<'_, DiskState> {
        // A panic while the disk was locked leaves it as consistent as any crash would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The machine crashes: a drawn prefix of the unsynced writes reaches the disk, the rest is
    /// lost, and every engine opened on it so far stops working. Returns how many unsynced batches
    /// were lost.
    pub fn crash(&self) -> usize {
        let mut st = self.lock();
        let n = st.unsynced.len();
        let kept = (st.next_random() % (n as u64 + 1)) as usize;
        let unsynced = std::mem::take(&mut st.unsynced);
        for b in &unsynced[..kept] {
            apply(&mut st.durable, b);
        }
        st.live = st.durable.clone();
        st.epoch += 1;
        n - kept
    }

    /// Keys held (live) in column family `cf`, for checks that compare replicas.
    pub fn live_len(&self, cf: &str) -> usize {
        self.lock().live.get(cf).map_or(0, |t| t.len())
    }

    pub(super) fn open(&self, stats: Arc<EngineStats>) -> MemoryBackend {
        MemoryBackend {
            disk: self.clone(),
            epoch: self.lock().epoch,
            stats,
        }
    }
}

/// An engine opened on a [`MemoryDisk`].
pub struct MemoryBackend {
    disk: MemoryDisk,
    epoch: u64,
    stats: Arc<EngineStats>,
}

impl MemoryBackend {
    /// The disk, locked, if this engine's machine has not crashed since it was opened.
    fn state(&self) -> Result<MutexGuard<'_, DiskState>, StorageError> {
        let st = self.disk.lock();
        if st.epoch != self.epoch {
            return Err(StorageError::Io("the machine crashed".into()));
        }
        Ok(st)
    }

    fn table<'a>(st: &'a DiskState, cf: &str) -> Result<&'a Table, StorageError> {
        st.live
            .get(cf)
            .ok_or_else(|| StorageError::Corrupt(format!("column family {cf} is missing")))
    }

    /// Makes the unsynced writes durable now, if the engine is still alive.
    fn sync_unsynced(&self) -> Result<(), StorageError> {
        self.state()?.flush_unsynced();
        self.stats.fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

fn range_of<'a>(
    t: &'a Table,
    from: &'a [u8],
    to: &'a [u8],
) -> std::collections::btree_map::Range<'a, Vec<u8>, Vec<u8>> {
    if from >= to {
        return t.range::<[u8], _>((Bound::Included(to), Bound::Excluded(to)));
    }
    t.range::<[u8], _>((Bound::Included(from), Bound::Excluded(to)))
}

impl Backend for MemoryBackend {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        let st = self.state()?;
        Ok(Self::table(&st, cf)?.get(key).cloned())
    }

    fn write(&self, batch: WriteBatch, sync: bool) -> Result<(), StorageError> {
        let mut st = self.state()?;
        for op in batch.ops() {
            let cf = match op {
                WriteOp::Put { cf, .. } | WriteOp::Delete { cf, .. } => cf,
                WriteOp::DeleteRange { cf, .. } => cf,
            };
            Self::table(&st, cf)?;
        }
        apply(&mut st.live, &batch);
        if sync {
            st.flush_unsynced();
            apply(&mut st.durable, &batch);
        } else {
            st.unsynced.push(batch);
        }
        Ok(())
    }

    fn sync(&self, done: SyncCallback) {
        let delay = match self.state() {
            Ok(mut st) if !st.max_fsync.is_zero() => {
                let nanos = st.max_fsync.as_nanos().max(1) as u64;
                Some(Duration::from_nanos(st.next_random() % nanos))
            }
            Ok(_) => None,
            Err(e) => return done(Err(e)),
        };
        let stats = self.stats.clone();
        let finish = {
            let disk = self.disk.clone();
            let epoch = self.epoch;
            move || {
                let res = {
                    let mut st = disk.lock();
                    if st.epoch == epoch {
                        st.flush_unsynced();
                        Ok(())
                    } else {
                        Err(StorageError::Io("the machine crashed".into()))
                    }
                };
                stats.fsyncs.fetch_add(1, Ordering::Relaxed);
                stats.synced_appends.fetch_add(1, Ordering::Relaxed);
                done(res);
            }
        };
        match (delay, tokio::runtime::Handle::try_current()) {
            (Some(delay), Ok(rt)) => {
                // On a crash the machine's runtime goes with it, and so does this fsync.
                rt.spawn(async move {
                    tokio::time::sleep(delay).await;
                    finish();
                });
            }
            _ => finish(),
        }
    }

    fn sync_now(&self) -> Result<(), StorageError> {
        self.sync_unsynced()
    }

    fn scan(&self, cf: &str, from: &[u8], to: &[u8], visit: Visit<'_>) -> Result<(), StorageError> {
        let mut next: Vec<u8> = from.to_vec();
        let mut first = true;
        loop {
            let step: Vec<KeyValue> = {
                let st = self.state()?;
                let t = Self::table(&st, cf)?;
                let lower = if first {
                    Bound::Included(&next[..])
                } else {
                    Bound::Excluded(&next[..])
                };
                if next.as_slice() >= to {
                    return Ok(());
                }
                t.range::<[u8], _>((lower, Bound::Excluded(to)))
                    .take(SCAN_STEP)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect()
            };
            first = false;
            let Some(last) = step.last().map(|(k, _)| k.clone()) else {
                return Ok(());
            };
            let full = step.len() == SCAN_STEP;
            for (k, v) in &step {
                if !visit(k, v)? {
                    return Ok(());
                }
            }
            if !full {
                return Ok(());
            }
            next = last;
        }
    }

    fn last_in(&self, cf: &str, from: &[u8], to: &[u8]) -> Result<Option<KeyValue>, StorageError> {
        let st = self.state()?;
        let t = Self::table(&st, cf)?;
        Ok(range_of(t, from, to)
            .next_back()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn group_ids(&self, cf: &str) -> Result<Vec<u64>, StorageError> {
        let st = self.state()?;
        let t = Self::table(&st, cf)?;
        let mut ids = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        while let Some((k, _)) = t
            .range::<[u8], _>((Bound::Included(&from[..]), Bound::Unbounded))
            .next()
        {
            let Some(id) = k
                .get(..8)
                .and_then(|p| <[u8; 8]>::try_from(p).ok())
                .map(u64::from_be_bytes)
            else {
                break;
            };
            ids.push(id);
            match id.checked_add(1) {
                Some(next) => from = next.to_be_bytes().to_vec(),
                None => break,
            }
        }
        Ok(ids)
    }

    fn consistent(
        &self,
        read: &mut dyn FnMut(&dyn ReadView) -> Result<(), StorageError>,
    ) -> Result<(), StorageError> {
        let st = self.state()?;
        read(&MemoryView { live: &st.live })
    }

    fn pin(&self, cf: &'static str, from: &[u8], to: &[u8]) -> Result<PinnedView, StorageError> {
        let st = self.state()?;
        let rows: Table = range_of(MemoryView { live: &st.live }.table(cf)?, from, to)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Arc::new(PinnedMemory {
            live: std::iter::once((cf, rows)).collect(),
        }))
    }

    fn describe(&self) -> String {
        format!("in-memory disk (epoch {})", self.epoch)
    }
}

/// Reads of the live tables, the disk held locked for the duration.
struct MemoryView<'a> {
    live: &'a Tables,
}

impl MemoryView<'_> {
    fn table(&self, cf: &str) -> Result<&Table, StorageError> {
        self.live
            .get(cf)
            .ok_or_else(|| StorageError::Corrupt(format!("column family {cf} is missing")))
    }
}

/// A copy of one range of the live tables, as [`Backend::pin`] took it.
struct PinnedMemory {
    live: Tables,
}

impl ReadView for PinnedMemory {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        MemoryView { live: &self.live }.get(cf, key)
    }

    fn multi_get(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        MemoryView { live: &self.live }.multi_get(cf, keys)
    }

    fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        MemoryView { live: &self.live }.scan(cf, from, to, reverse, visit)
    }
}

impl ReadView for MemoryView<'_> {
    fn get(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self.table(cf)?.get(key).cloned())
    }

    fn multi_get(&self, cf: &str, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let t = self.table(cf)?;
        Ok(keys.iter().map(|k| t.get(k).cloned()).collect())
    }

    fn scan(
        &self,
        cf: &str,
        from: &[u8],
        to: &[u8],
        reverse: bool,
        visit: Visit<'_>,
    ) -> Result<(), StorageError> {
        let range = range_of(self.table(cf)?, from, to);
        if reverse {
            for (k, v) in range.rev() {
                if !visit(k, v)? {
                    break;
                }
            }
        } else {
            for (k, v) in range {
                if !visit(k, v)? {
                    break;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Engine, CF_DATA};
    use super::*;

    fn put(engine: &Engine, key: &[u8], sync: bool) {
        let mut b = WriteBatch::default();
        b.put(CF_DATA, key, b"v");
        if sync {
            engine.write_sync(b).unwrap();
        } else {
            engine.write(b).unwrap();
        }
    }

    #[test]
    fn a_crash_keeps_what_was_synced_and_a_prefix_of_the_rest() {
        for seed in 0..20 {
            let disk = MemoryDisk::new(seed);
            let engine = Engine::in_memory(&disk);
            put(&engine, b"a", true);
            put(&engine, b"b", false);
            engine.sync_now().unwrap();
            for k in [b"c", b"d", b"e"] {
                put(&engine, k, false);
            }
            let lost = disk.crash();
            assert!(
                engine.get(CF_DATA, b"a").is_err(),
                "a crashed engine must fail"
            );
            let after = Engine::in_memory(&disk);
            for k in [b"a", b"b"] {
                assert!(
                    after.get(CF_DATA, k).unwrap().is_some(),
                    "seed {seed}: synced lost"
                );
            }
            let kept: Vec<bool> = [b"c", b"d", b"e"]
                .iter()
                .map(|k| after.get(CF_DATA, *k).unwrap().is_some())
                .collect();
            // Kept writes are a prefix: once one is lost, every later one is too.
            assert!(
                kept.windows(2).all(|w| w[0] || !w[1]),
                "seed {seed}: {kept:?}"
            );
            assert_eq!(kept.iter().filter(|k| !**k).count(), lost);
        }
    }
}
