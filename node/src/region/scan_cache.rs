//! Columnar images of whole regions, kept in memory by the node that scans them, so that analytic
//! scans of a table that is not changing read Arrow arrays instead of iterating RocksDB and
//! decoding every stored row again.
//!
//! An image is labelled with the index of the last log entry applied to its region when it was
//! read (in one snapshot with the rows). A scan page is served from an image only when that label
//! is still the region's applied index on this node, so the image is exactly the rows a direct
//! read would see, and any write, split or other entry applied since makes it unusable (it is then
//! dropped). A region is imaged only when a scan finds it at the same index as the scan before it
//! (it has been quiet since), so a table under steady writes never pays for images it cannot
//! use. Images are evicted least recently used first to keep within the node's budget
//! (`--scan-cache-bytes`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, ArrayBuilder, BinaryArray, BinaryBuilder};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::record_batch::RecordBatch;
use weir_proto::table::{Column, TableSchema};
use weir_sql::columnar::StoredRows;
use weir_sql::scan_filter::{self, ScanFilter};
use weir_storage::region::{self, RegionState, ScanEnd};

use crate::error::{NodeError, NodeResult};

/// Rows per chunk of an image (string arrays stay far below Arrow's 2 GiB offsets).
const CHUNK_ROWS: usize = 65_536;

/// One stretch of an image: its rows' stored keys, in order, and their columns.
struct Chunk {
    keys: BinaryArray,
    batch: RecordBatch,
}

/// A region's rows as Arrow arrays, every column of the table, at one applied index.
pub struct Image {
    /// The region's applied index the rows are of.
    applied: u64,
    /// The region's range when it was read.
    range: RegionState,
    /// The table's columns, in schema order (the columns of every chunk's batch).
    columns: Vec<Column>,
    chunks: Vec<Chunk>,
    bytes: usize,
    last_used: AtomicU64,
}

/// What one page served from an image is asked for.
pub struct PageRequest<'a> {
    /// First stored key to visit (inside the region).
    pub start: &'a [u8],
    /// Key to stop before (empty: unbounded).
    pub end: &'a [u8],
    /// Most rows to visit.
    pub limit: usize,
    /// About the most bytes of the columns read to visit.
    pub max_bytes: usize,
    /// The table columns read: those asked for, then those only the filters need.
    pub read: &'a [usize],
    /// How many of `read` are answered (the rest are the filters' own).
    pub answered: usize,
    /// Conditions a row must meet to be sent.
    pub filters: &'a [ScanFilter],
}

impl Image {
    /// Reads the whole of region `group` of `table` from `engine` in one snapshot; None when the
    /// region has no rows worth an image.
    pub fn build(
        engine: &weir_storage::Engine,
        group: u64,
        table: &TableSchema,
    ) -> NodeResult<Option<Image>> {
        let failed = |e: datafusion::error::DataFusionError| {
            NodeError::Internal(format!("imaging region {group}: {e}"))
        };
        let Some(range) = region::load_state(engine, group)? else {
            return Ok(None);
        };
        let all: Vec<usize> = (0..table.columns.len()).collect();
        let mut rows = StoredRows::new(table, &all, CHUNK_ROWS).map_err(failed)?;
        let mut keys = BinaryBuilder::new();
        let mut chunks = Vec::new();
        let (end, broken) = region::try_scan_each(
            engine,
            group,
            (&range.start, &range.end),
            (usize::MAX, usize::MAX),
            &mut |key, cells| {
                rows.push(key, cells)?;
                keys.append_value(key);
                if keys.len() < CHUNK_ROWS {
                    return Ok(());
                }
                chunks.push(Chunk {
                    keys: keys.finish(),
                    batch: rows.finish()?,
                });
                Ok(())
            },
        )?;
        if let Some(e) = broken {
            return Err(failed(e));
        }
        // The range moved between the two reads (a split): no image this time.
        let Ok(end) = end else { return Ok(None) };
        if !keys.is_empty() {
            chunks.push(Chunk {
                keys: keys.finish(),
                batch: rows.finish().map_err(failed)?,
            });
        }
        if chunks.is_empty() {
            return Ok(None);
        }
        let bytes = chunks
            .iter()
            .map(|c| c.keys.get_array_memory_size() + c.batch.get_array_memory_size())
            .sum();
        Ok(Some(Image {
            applied: end.applied,
            range,
            columns: table.columns.clone(),
            chunks,
            bytes,
            last_used: AtomicU64::new(0),
        }))
    }

    /// The region's applied index the image holds.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Memory the image takes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Whether a forward scan starting at `start` is one this region answers (else the direct
    /// read says where the key went).
    pub fn holds(&self, start: &[u8]) -> bool {
        self.range.contains(start) || (start.is_empty() && self.range.start.is_empty())
    }

    /// One page of a forward scan, as the direct read would give it: the rows of `[start, end)`
    /// in key order, at most `limit` visited, those passing every filter sent, with where the
    /// scan continues.
    pub fn page(&self, req: &PageRequest<'_>) -> NodeResult<(RecordBatch, ScanEnd)> {
        let failed =
            |e: datafusion::error::DataFusionError| NodeError::Internal(format!("scan page: {e}"));
        let arrow = |e: datafusion::arrow::error::ArrowError| failed(e.into());
        let read_columns: Vec<Column> = req.read.iter().map(|i| self.columns[*i].clone()).collect();
        // The end of this scan within the region: the request's end or the region's.
        let stop: Option<&[u8]> = match (req.end.is_empty(), self.range.end.is_empty()) {
            (true, true) => None,
            (true, false) => Some(&self.range.end),
            (false, true) => Some(req.end),
            (false, false) => Some(req.end.min(self.range.end.as_slice())),
        };
        let before_stop = |k: &[u8]| stop.is_none_or(|s| k < s);
        // The first chunk whose last key is at or after the start.
        let mut ci = self
            .chunks
            .partition_point(|c| c.keys.value(c.keys.len() - 1) < req.start);
        let mut ri = match self.chunks.get(ci) {
            Some(c) => first_at_or_after(&c.keys, req.start),
            None => 0,
        };
        let mut parts = Vec::new();
        let mut end = ScanEnd {
            applied: self.applied,
            ..ScanEnd::default()
        };
        let mut bytes = 0usize;
        while let Some(c) = self.chunks.get(ci) {
            if end.rows >= req.limit || bytes >= req.max_bytes {
                // Stopped by the page's limits with rows left before the stop.
                if ri < c.keys.len() && before_stop(c.keys.value(ri)) {
                    end.more = true;
                    end.resume = c.keys.value(ri).to_vec();
                    return self.finish(parts, &read_columns, req, end);
                }
                break;
            }
            let upto = match stop {
                None => c.keys.len(),
                Some(s) => first_at_or_after(&c.keys, s),
            };
            let per_row = row_bytes(&c.batch, req.read);
            let room = (req.max_bytes - bytes).div_ceil(per_row.max(1));
            let n = (upto.saturating_sub(ri))
                .min(req.limit - end.rows)
                .min(room.max(1));
            if n > 0 {
                let slice = c.batch.project(req.read).map_err(arrow)?.slice(ri, n);
                parts.push(scan_filter::apply(&slice, &read_columns, req.filters).map_err(failed)?);
                end.rows += n;
                bytes += n * per_row;
                ri += n;
            }
            if ri < upto {
                continue;
            }
            if upto < c.keys.len() {
                // The stop falls inside this chunk.
                break;
            }
            ci += 1;
            ri = 0;
        }
        // The scan reached its stop inside the region: it goes on only past the region's end.
        if !self.range.end.is_empty() && (req.end.is_empty() || req.end > self.range.end.as_slice())
        {
            end.more = true;
            end.resume = self.range.end.clone();
        }
        self.finish(parts, &read_columns, req, end)
    }

    fn finish(
        &self,
        parts: Vec<RecordBatch>,
        read_columns: &[Column],
        req: &PageRequest<'_>,
        end: ScanEnd,
    ) -> NodeResult<(RecordBatch, ScanEnd)> {
        let failed = |e: datafusion::arrow::error::ArrowError| {
            NodeError::Internal(format!("scan page: {e}"))
        };
        let schema = weir_sql::types::arrow_schema(&TableSchema {
            columns: read_columns.to_vec(),
            primary_key: Vec::new(),
        });
        let all = concat_batches(&schema, &parts).map_err(failed)?;
        let page = all
            .project(&(0..req.answered).collect::<Vec<_>>())
            .map_err(failed)?;
        Ok((page, end))
    }
}

/// Index of the first key at or after `key` in sorted `keys`.
fn first_at_or_after(keys: &BinaryArray, key: &[u8]) -> usize {
    let (mut lo, mut hi) = (0usize, keys.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if keys.value(mid) < key {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    lo
}

/// About how many bytes one row of `columns` of `batch` takes.
fn row_bytes(batch: &RecordBatch, columns: &[usize]) -> usize {
    let rows = batch.num_rows().max(1);
    columns
        .iter()
        .map(|i| batch.column(*i).get_array_memory_size())
        .sum::<usize>()
        / rows
}

/// How long an image may go unread before it gives way to another region's.
const IDLE: Duration = Duration::from_secs(60);

/// The images this node keeps, by region group, within a memory budget.
///
/// An image is dropped when its region changes, and otherwise only once it has gone unread for a
/// while: when the budget is full of images in use, further regions are read from their stored
/// rows rather than imaged, so scans of more data than the budget holds never evict each other's
/// images in turn (each would cost a whole region's read to build and be gone before its next
/// use).
#[derive(Clone)]
pub struct ScanCache {
    budget: usize,
    idle: Duration,
    started: Instant,
    state: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    images: HashMap<u64, Arc<Image>>,
    /// The applied index the last scan of each region found, to tell a quiet region.
    seen: HashMap<u64, u64>,
    /// Regions being imaged now (one build per region at a time).
    building: HashSet<u64>,
    used: usize,
}

impl State {
    fn remove(&mut self, group: u64) {
        if let Some(old) = self.images.remove(&group) {
            self.used -= old.bytes;
        }
    }
}

/// What the cache has for a scan of a region at an applied index.
pub enum Lookup {
    /// An image of exactly this version.
    Hit(Arc<Image>),
    /// None, but the region was at this version for the scan before and an image of it fits:
    /// worth imaging now.
    Build,
    /// None, and not worth building one now.
    Miss,
}

impl ScanCache {
    /// A cache keeping at most `budget` bytes of images (0: none at all).
    pub fn new(budget: usize) -> ScanCache {
        ScanCache::with_idle(budget, IDLE)
    }

    /// As [`ScanCache::new`], with images unread for `idle` giving way to others.
    pub fn with_idle(budget: usize, idle: Duration) -> ScanCache {
        ScanCache {
            budget,
            idle,
            started: Instant::now(),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves maps that are still consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Drops images unread for longer than the idle time until `bytes` more fit; whether they do.
    fn make_room(&self, st: &mut State, bytes: usize) -> bool {
        // Nothing has been idle that long yet while the node is younger than the idle time.
        let idle_before = self.now_ms().checked_sub(self.idle.as_millis() as u64);
        while st.used + bytes > self.budget {
            let oldest = st
                .images
                .iter()
                .map(|(g, i)| (*g, i.last_used.load(Ordering::Relaxed)))
                .min_by_key(|(_, used)| *used);
            match oldest {
                Some((g, used)) if idle_before.is_some_and(|b| used <= b) => st.remove(g),
                _ => return false,
            }
        }
        true
    }

    /// What there is for a scan of region `group` whose applied index is now `applied`; an image
    /// of an older version is dropped. `estimate` tells about how large an image of the region
    /// would be, asked only when one is worth building.
    pub fn lookup(&self, group: u64, applied: u64, estimate: impl FnOnce() -> usize) -> Lookup {
        if self.budget == 0 {
            return Lookup::Miss;
        }
        let mut st = self.state();
        if let Some(image) = st.images.get(&group) {
            if image.applied == applied {
                image.last_used.store(self.now_ms(), Ordering::Relaxed);
                return Lookup::Hit(image.clone());
            }
            st.remove(group);
        }
        let quiet = st.seen.insert(group, applied) == Some(applied);
        if quiet && !st.building.contains(&group) && self.make_room(&mut st, estimate()) {
            st.building.insert(group);
            return Lookup::Build;
        }
        Lookup::Miss
    }

    /// Ends the build [`ScanCache::lookup`] asked for: keeps the image if there is one and room
    /// for it.
    pub fn built(&self, group: u64, image: Option<Arc<Image>>) {
        let mut st = self.state();
        st.building.remove(&group);
        let Some(image) = image else { return };
        st.remove(group);
        if self.make_room(&mut st, image.bytes) {
            image.last_used.store(self.now_ms(), Ordering::Relaxed);
            st.used += image.bytes;
            st.images.insert(group, image);
        }
    }

    /// Bytes the images take now.
    pub fn used(&self) -> usize {
        self.state().used
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use weir_proto::table::{key, row, Value};
    use weir_sql::scan_filter::FilterOp;
    use weir_storage::engine::memory::MemoryDisk;
    use weir_storage::engine::{WriteBatch, CF_DATA};
    use weir_storage::Engine;

    use super::*;

    const GROUP: u64 = 7;

    fn schema() -> TableSchema {
        TableSchema::parse("id BIGINT, name VARCHAR, n BIGINT", &["id".into()]).unwrap()
    }

    /// A region holding ids `0..rows` (every 10th name NULL) over `[start, end)` of the keys.
    fn region(rows: i64, range: (Option<i64>, Option<i64>)) -> Engine {
        let s = schema();
        let engine = Engine::in_memory(&MemoryDisk::new(1));
        let bound = |b: Option<i64>| b.map_or(Vec::new(), |v| key_of(&s, v));
        let mut b = WriteBatch::default();
        let state = RegionState {
            start: bound(range.0),
            end: bound(range.1),
            ..RegionState::default()
        };
        region::put_state(&mut b, GROUP, &state).unwrap();
        for id in 0..rows {
            let name = match id % 10 {
                0 => Value::Null,
                _ => Value::Str(format!("name-{id}")),
            };
            let (k, cells) =
                row::encode_row(&s, vec![Value::Int(id), name, Value::Int(id % 7)]).unwrap();
            b.put(
                CF_DATA,
                region::row_key(GROUP, &k),
                region::row_value(1, &cells),
            );
        }
        engine.write(b).unwrap();
        engine
    }

    fn key_of(s: &TableSchema, id: i64) -> Vec<u8> {
        key::encode_key(s, &[Value::Int(id)]).unwrap()
    }

    /// The ids and names of a page.
    fn ids(page: &RecordBatch) -> Vec<(i64, Option<String>)> {
        let id = page
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        let name = page
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        (0..page.num_rows())
            .map(|i| {
                let n = (!name.is_null(i)).then(|| name.value(i).to_string());
                (id.value(i), n)
            })
            .collect()
    }

    fn expected(
        ids: std::ops::Range<i64>,
        keep: impl Fn(i64) -> bool,
    ) -> Vec<(i64, Option<String>)> {
        ids.filter(|i| keep(*i))
            .map(|i| (i, (i % 10 != 0).then(|| format!("name-{i}"))))
            .collect()
    }

    #[test]
    fn pages_of_an_image_are_what_the_stored_rows_give() {
        let s = schema();
        // More rows than a chunk, so pages cross chunks; the region ends at id 150,000.
        let engine = region(150_000, (Some(0), Some(150_000)));
        let image = Image::build(&engine, GROUP, &s).unwrap().unwrap();
        assert_eq!(image.chunks.len(), 3);
        let page = |start: i64, end: Option<i64>, limit: usize, filters: &[ScanFilter]| {
            let (start, end) = (key_of(&s, start), end.map_or(Vec::new(), |e| key_of(&s, e)));
            let read = [0usize, 1, 2];
            image
                .page(&PageRequest {
                    start: &start,
                    end: &end,
                    limit,
                    max_bytes: usize::MAX,
                    read: &read,
                    answered: 2,
                    filters,
                })
                .unwrap()
        };
        // A limit inside the second chunk: the page goes on from the next key.
        let (got, end) = page(60_000, None, 10_000, &[]);
        assert_eq!(ids(&got), expected(60_000..70_000, |_| true));
        assert!(end.more);
        assert_eq!(end.resume, key_of(&s, 70_000));
        assert_eq!(end.rows, 10_000);
        // An end inside the region: nothing more.
        let (got, end) = page(131_000, Some(131_005), 10_000, &[]);
        assert_eq!(ids(&got), expected(131_000..131_005, |_| true));
        assert!(!end.more);
        // Past the region's end: the rest of the region, then on at the region's end.
        let (got, end) = page(149_990, None, 10_000, &[]);
        assert_eq!(ids(&got), expected(149_990..150_000, |_| true));
        assert!(end.more);
        assert_eq!(end.resume, key_of(&s, 150_000));
        // Filters on a column not answered: only passing rows, limits count rows visited.
        let filter = ScanFilter {
            column: "n".into(),
            op: FilterOp::Eq,
            values: vec![Value::Int(3)],
        };
        let (got, end) = page(65_530, None, 20, &[filter]);
        assert_eq!(ids(&got), expected(65_530..65_550, |i| i % 7 == 3));
        assert_eq!(got.num_columns(), 2);
        assert!(end.more);
        assert_eq!(end.resume, key_of(&s, 65_550));
        // A limit met exactly at a chunk's end goes on at the next chunk's first key.
        let (got, end) = page(65_000, None, 536, &[]);
        assert_eq!(ids(&got), expected(65_000..65_536, |_| true));
        assert_eq!(end.resume, key_of(&s, 65_536));
        assert!(image.holds(&key_of(&s, 0)) && !image.holds(&key_of(&s, 150_000)));
    }

    #[test]
    fn only_a_quiet_region_is_imaged_and_images_in_use_are_kept() {
        let s = schema();
        let engine = region(1_000, (None, None));
        let image = Arc::new(Image::build(&engine, GROUP, &s).unwrap().unwrap());
        let size = || image.bytes();
        let cache = ScanCache::new(image.bytes() * 2);
        // First sight of a version: not worth an image; the same version again: build it, once.
        assert!(matches!(cache.lookup(GROUP, 5, size), Lookup::Miss));
        assert!(matches!(cache.lookup(GROUP, 5, size), Lookup::Build));
        assert!(matches!(cache.lookup(GROUP, 5, size), Lookup::Miss));
        cache.built(GROUP, Some(image.clone()));
        // The image is labelled with its own applied index (0 here: no header written).
        assert!(matches!(cache.lookup(GROUP, 0, size), Lookup::Hit(_)));
        assert_eq!(cache.used(), image.bytes());
        // Another version drops it.
        assert!(matches!(cache.lookup(GROUP, 9, size), Lookup::Miss));
        assert_eq!(cache.used(), 0);
        // The budget holds two images in use: a third region is read from its rows instead.
        cache.built(1, Some(image.clone()));
        cache.built(2, Some(image.clone()));
        assert!(matches!(cache.lookup(3, 4, size), Lookup::Miss));
        assert!(matches!(cache.lookup(3, 4, size), Lookup::Miss));
        cache.built(3, Some(image.clone()));
        for g in [1, 2] {
            assert!(matches!(cache.lookup(g, 0, size), Lookup::Hit(_)));
        }
        assert!(!matches!(cache.lookup(3, 0, size), Lookup::Hit(_)));
        assert_eq!(cache.used(), image.bytes() * 2);
        // Images gone idle give way.
        let idle = ScanCache::with_idle(image.bytes() * 2, Duration::ZERO);
        idle.built(1, Some(image.clone()));
        idle.built(2, Some(image.clone()));
        assert!(matches!(idle.lookup(3, 4, size), Lookup::Miss));
        assert!(matches!(idle.lookup(3, 4, size), Lookup::Build));
        idle.built(3, Some(image.clone()));
        assert!(matches!(idle.lookup(3, 0, size), Lookup::Hit(_)));
        assert_eq!(idle.used(), image.bytes() * 2);
        // No budget, no images.
        let none = ScanCache::new(0);
        assert!(matches!(none.lookup(GROUP, 5, size), Lookup::Miss));
        assert!(matches!(none.lookup(GROUP, 5, size), Lookup::Miss));
    }
}
