//! How a region stores its rows, reads them back, and splits.
//!
//! A region is one key range of a table, replicated by its own Raft group. Its rows live under
//! `group | TAG_ROW | encoded key` with the value `version (8 bytes BE) | encoded cells`, where the
//! version is the log index of the write that last changed the row. A row written by merges also
//! keeps its merge state (`weir_proto::table::merge::MergeState`): the version's top bit is then set
//! and `state length (4 bytes BE) | state` follows it, before the cells. Only merges read the state;
//! every other read sees the version and the cells alone. The region's range and epoch
//! ([`RegionState`]) are stored under `group | TAG_REGION` in the same write batch as every change,
//! so a read through one RocksDB snapshot sees the rows and the range they belong to together: a
//! read never sees a key its region had already split off.

use serde::{Deserialize, Serialize};

use crate::engine::{group_key, ReadView, WriteBatch, CF_DATA};
use crate::{decode, encode, Engine, StorageError};

/// Tag of the region's state.
pub(crate) const TAG_REGION: u8 = 5;
/// Tag of the region's rows.
pub(crate) const TAG_ROW: u8 = 6;

/// A region's key range and split history, as applied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionState {
    /// First key of the range.
    pub start: Vec<u8>,
    /// Key just past the range; empty is unbounded.
    pub end: Vec<u8>,
    /// Bumped by every split.
    pub epoch: u64,
    /// Bytes of keys and values written since the region was created or last measured; grows with
    /// overwrites and deletes too, so it is an upper bound the split check confirms by scanning.
    pub approx_bytes: u64,
    /// The last split applied, until the catalog has recorded it.
    pub last_split: Option<SplitRecord>,
    /// Per writer holding a fencing token here: the highest token seen. A split passes them to
    /// the new region, so an old instance is fenced out of every part of the range.
    pub fences: std::collections::BTreeMap<String, u64>,
}

/// A split as the parent applied it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitRecord {
    /// The new region.
    pub child: u64,
    /// Its first key.
    pub split_key: Vec<u8>,
    /// The parent's epoch after the split.
    pub epoch: u64,
}

impl RegionState {
    /// Checks the token `token` of writer `holder` against the region's and raises the region's
    /// to it; the token found when `token` is below it (nothing is changed then).
    pub fn admit(&mut self, holder: &str, token: u64) -> Result<(), u64> {
        match self.stale(holder, token) {
            Some(current) => Err(current),
            None => {
                self.raise(holder, token);
                Ok(())
            }
        }
    }

    /// The token the region holds for writer `holder` when `token` is below it (a stale writer).
    pub fn stale(&self, holder: &str, token: u64) -> Option<u64> {
        self.fences
            .get(holder)
            .copied()
            .filter(|current| *current > token)
    }

    /// Raises the region's token of writer `holder` to `token` (never lowers it).
    pub fn raise(&mut self, holder: &str, token: u64) {
        let current = self.fences.entry(holder.to_string()).or_insert(token);
        *current = (*current).max(token);
    }

    /// True when `key` falls in the range.
    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }
}

/// One stored row: its encoded key, version and encoded cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRow {
    /// Encoded primary key.
    pub key: Vec<u8>,
    /// Log index of the write that last changed it.
    pub version: u64,
    /// Encoded non-key cells.
    pub value: Vec<u8>,
}

/// A read that reached a region not holding its key (it split, or the route was stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotInRegion(pub RegionState);

/// Key of `key`'s row in `group`.
pub fn row_key(group: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(9 + key.len());
    k.extend_from_slice(&group.to_be_bytes());
    k.push(TAG_ROW);
    k.extend_from_slice(key);
    k
}

/// Adds to `batch` the row `key` of `group` holding `cells`, written at `version`: the stored key
/// and value of [`row_key`] and [`row_value`], built in the batch's buffer without a copy of
/// their own. Answers the bytes the row takes.
pub fn put_row(batch: &mut WriteBatch, group: u64, version: u64, key: &[u8], cells: &[u8]) -> u64 {
    batch.put_parts(
        CF_DATA,
        &[&group.to_be_bytes(), &[TAG_ROW], key],
        &[&version.to_be_bytes(), cells],
    );
    (key.len() + 8 + cells.len()) as u64
}

/// Top bit of a stored version: a merge state follows the version. Versions are log indexes, far
/// below it.
const MERGE_STATE_FLAG: u64 = 1 << 63;

/// The stored value of a row (without merge state).
pub fn row_value(version: u64, cells: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + cells.len());
    v.extend_from_slice(&version.to_be_bytes());
    v.extend_from_slice(cells);
    v
}

/// The stored value of a row written by a merge: its version, its encoded merge state and its
/// encoded cells.
pub fn row_value_with_state(
    version: u64,
    state: &[u8],
    cells: &[u8],
) -> Result<Vec<u8>, StorageError> {
    let len = u32::try_from(state.len())
        .map_err(|_| StorageError::Corrupt(format!("a merge state of {} bytes", state.len())))?;
    let mut v = Vec::with_capacity(12 + state.len() + cells.len());
    v.extend_from_slice(&(version | MERGE_STATE_FLAG).to_be_bytes());
    v.extend_from_slice(&len.to_be_bytes());
    v.extend_from_slice(state);
    v.extend_from_slice(cells);
    Ok(v)
}

/// The parts of a stored row value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueParts<'a> {
    /// Log index of the write that last changed the row.
    pub version: u64,
    /// The encoded merge state, when merges wrote the row.
    pub state: Option<&'a [u8]>,
    /// Encoded non-key cells.
    pub cells: &'a [u8],
}

/// Splits a stored value into (version, cells), passing over a merge state.
pub fn split_value(v: &[u8]) -> Result<(u64, &[u8]), StorageError> {
    let p = split_value_with_state(v)?;
    Ok((p.version, p.cells))
}

/// Splits a stored value into its version, merge state (if any) and cells.
pub fn split_value_with_state(v: &[u8]) -> Result<ValueParts<'_>, StorageError> {
    let short = || StorageError::Corrupt("row value shorter than its header".into());
    let (ver, rest) = v.split_first_chunk::<8>().ok_or_else(short)?;
    let version = u64::from_be_bytes(*ver);
    if version & MERGE_STATE_FLAG == 0 {
        return Ok(ValueParts {
            version,
            state: None,
            cells: rest,
        });
    }
    let (len, rest) = rest.split_first_chunk::<4>().ok_or_else(short)?;
    let len = u32::from_be_bytes(*len) as usize;
    if rest.len() < len {
        return Err(short());
    }
    let (state, cells) = rest.split_at(len);
    Ok(ValueParts {
        version: version & !MERGE_STATE_FLAG,
        state: Some(state),
        cells,
    })
}

/// Key of the region state.
pub(crate) fn state_key(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_REGION])
}

/// Reads the region state as stored (None for a region that has not been written yet).
pub fn load_state(engine: &Engine, group: u64) -> Result<Option<RegionState>, StorageError> {
    match engine.get(CF_DATA, &state_key(group))? {
        Some(v) => Ok(Some(decode(&v)?)),
        None => Ok(None),
    }
}

/// Adds the region state to a write batch.
pub fn put_state(b: &mut WriteBatch, group: u64, st: &RegionState) -> Result<(), StorageError> {
    b.put(CF_DATA, state_key(group), encode(st)?);
    Ok(())
}

fn rows_end(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_ROW + 1])
}

/// The region state as of a consistent view, so that reads in the same view are checked against
/// the range they were written under.
fn state_at(view: &dyn ReadView, group: u64) -> Result<RegionState, StorageError> {
    Ok(match view.get(CF_DATA, &state_key(group))? {
        Some(v) => decode(&v)?,
        None => RegionState::default(),
    })
}

/// Reads the rows of `keys` in one consistent snapshot, or reports that the region does not hold
/// one of them.
pub fn get_rows(
    engine: &Engine,
    group: u64,
    keys: &[Vec<u8>],
) -> Result<Result<Vec<Option<StoredRow>>, NotInRegion>, StorageError> {
    engine.consistent(|view| get_rows_in(view, group, keys))
}

fn get_rows_in(
    view: &dyn ReadView,
    group: u64,
    keys: &[Vec<u8>],
) -> Result<Result<Vec<Option<StoredRow>>, NotInRegion>, StorageError> {
    let st = state_at(view, group)?;
    if let Some(_outside) = keys.iter().find(|k| !st.contains(k)) {
        return Ok(Err(NotInRegion(st)));
    }
    let full: Vec<Vec<u8>> = keys.iter().map(|k| row_key(group, k)).collect();
    let got = view.multi_get(CF_DATA, &full)?;
    let mut out = Vec::with_capacity(keys.len());
    for (k, r) in keys.iter().zip(got) {
        out.push(match r {
            Some(v) => {
                let (version, cells) = split_value(&v)?;
                Some(StoredRow {
                    key: k.clone(),
                    version,
                    value: cells.to_vec(),
                })
            }
            None => None,
        });
    }
    Ok(Ok(out))
}

/// What one region returned for a scan.
#[derive(Debug, Clone, Default)]
pub struct ScanPage {
    /// Rows in scan order.
    pub rows: Vec<StoredRow>,
    /// True when the scanned range continues past this page (a limit was hit or the region ends
    /// before the range does).
    pub more: bool,
    /// Where the scan continues: the next start key (forward) or the next exclusive end key (reverse).
    pub resume: Vec<u8>,
}

/// The index of the last log entry applied to the region's group on this node: its rows' version
/// (it changes with every entry applied).
pub fn applied_index(engine: &Engine, group: u64) -> Result<u64, StorageError> {
    engine.consistent(|view| crate::header::applied_index(view, group))
}

/// Receives each row of a scan in place (encoded key, version, encoded cells); false stops it.
pub type VisitRow<'a> = &'a mut dyn FnMut(&[u8], u64, &[u8]) -> bool;

/// Where a scan visiting rows in place stopped: whether and where the range continues.
#[derive(Debug, Clone, Default)]
pub struct ScanEnd {
    /// Rows visited.
    pub rows: usize,
    /// True when the scanned range continues past what was visited.
    pub more: bool,
    /// Where the scan continues: the next start key (forward) or the next exclusive end key (reverse).
    pub resume: Vec<u8>,
    /// The index of the last log entry applied to the region in the snapshot the scan read: the
    /// version of the rows visited.
    pub applied: u64,
}

/// Scans `[start, end)` (empty end: unbounded) within this region, at most `limit` rows and about
/// `max_bytes`. Forward scans must start inside the region; reverse scans must end inside it (or
/// at its end). Everything is read from one snapshot together with the region's range.
pub fn scan_rows(
    engine: &Engine,
    group: u64,
    start: &[u8],
    end: &[u8],
    limit: usize,
    max_bytes: usize,
    reverse: bool,
) -> Result<Result<ScanPage, NotInRegion>, StorageError> {
    let mut rows = Vec::new();
    let scanned = scan_each(
        engine,
        group,
        (start, end),
        (limit, max_bytes),
        reverse,
        &mut |key, version, cells| {
            rows.push(StoredRow {
                key: key.to_vec(),
                version,
                value: cells.to_vec(),
            });
            true
        },
    )?;
    Ok(scanned.map(|e| ScanPage {
        rows,
        more: e.more,
        resume: e.resume,
    }))
}

/// As [`scan_rows`], but hands each row (encoded key, version, encoded cells) to `each` where it
/// lies instead of copying it out; `each` returns false to stop the scan at once (the page is
/// then to be thrown away).
pub fn scan_each(
    engine: &Engine,
    group: u64,
    (start, end): (&[u8], &[u8]),
    (limit, max_bytes): (usize, usize),
    reverse: bool,
    each: VisitRow<'_>,
) -> Result<Result<ScanEnd, NotInRegion>, StorageError> {
    engine.consistent(|view| {
        scan_in(
            view, group, start, end, limit, max_bytes, reverse, &mut *each,
        )
    })
}

/// As [`scan_each`] with a visitor that can fail: the scan stops at the visitor's first error,
/// which comes back beside where the scan ended.
#[allow(clippy::type_complexity)]
pub fn try_scan_each<E>(
    engine: &Engine,
    group: u64,
    range: (&[u8], &[u8]),
    limits: (usize, usize),
    each: &mut dyn FnMut(&[u8], &[u8]) -> Result<(), E>,
) -> Result<(Result<ScanEnd, NotInRegion>, Option<E>), StorageError> {
    let mut broken = None;
    let end = scan_each(
        engine,
        group,
        range,
        limits,
        false,
        &mut |key, _version, cells| match each(key, cells) {
            Ok(()) => true,
            Err(e) => {
                broken = Some(e);
                false
            }
        },
    )?;
    Ok((end, broken))
}

#[allow(clippy::too_many_arguments)]
fn scan_in(
    view: &dyn ReadView,
    group: u64,
    start: &[u8],
    end: &[u8],
    limit: usize,
    max_bytes: usize,
    reverse: bool,
    each: VisitRow<'_>,
) -> Result<Result<ScanEnd, NotInRegion>, StorageError> {
    let st = state_at(view, group)?;
    let unbounded_end = end.is_empty();
    // The part of [start, end) this region holds.
    let lo: &[u8] = if start > st.start.as_slice() {
        start
    } else {
        &st.start
    };
    let hi: Option<&[u8]> = match (unbounded_end, st.end.is_empty()) {
        (true, true) => None,
        (true, false) => Some(&st.end),
        (false, true) => Some(end),
        (false, false) => Some(if end < st.end.as_slice() {
            end
        } else {
            &st.end
        }),
    };
    let anchored = if reverse {
        // The range's end must fall inside the region (or be the region's own end).
        match (unbounded_end, st.end.is_empty()) {
            (true, true) => true,
            (true, false) => false,
            (false, true) => end > st.start.as_slice(),
            (false, false) => end > st.start.as_slice() && end <= st.end.as_slice(),
        }
    } else {
        st.contains(start) || (start.is_empty() && st.start.is_empty())
    };
    if !anchored {
        return Ok(Err(NotInRegion(st)));
    }
    let mut page = ScanEnd {
        applied: crate::header::applied_index(view, group)?,
        ..ScanEnd::default()
    };
    let mut last: Vec<u8> = Vec::new();
    if hi.is_some_and(|h| h <= lo) {
        return Ok(Ok(page));
    }
    let lo_key = row_key(group, lo);
    let hi_key = hi
        .map(|h| row_key(group, h))
        .unwrap_or_else(|| rows_end(group));
    let mut bytes = 0usize;
    let mut hit_limit = false;
    view.scan(CF_DATA, &lo_key, &hi_key, reverse, &mut |k, v| {
        if page.rows >= limit || bytes >= max_bytes {
            hit_limit = true;
            return Ok(false);
        }
        let (version, cells) = split_value(v)?;
        bytes += k.len() + v.len();
        let key = &k[9..];
        last.clear();
        last.extend_from_slice(key);
        page.rows += 1;
        Ok(each(key, version, cells))
    })?;
    if hit_limit {
        page.more = true;
        page.resume = if reverse {
            last
        } else {
            let mut next = last;
            next.push(0);
            next
        };
    } else if reverse {
        // The range continues below this region's start.
        if start < st.start.as_slice() {
            page.more = true;
            page.resume = st.start.clone();
        }
    } else if !st.end.is_empty() && (unbounded_end || end > st.end.as_slice()) {
        page.more = true;
        page.resume = st.end.clone();
    }
    Ok(Ok(page))
}

/// Adds to `b` the move of the rows at and after `split_key` from `parent` to `child`; returns the
/// bytes moved.
pub(crate) fn move_rows(
    engine: &Engine,
    b: &mut WriteBatch,
    parent: u64,
    child: u64,
    split_key: &[u8],
) -> Result<u64, StorageError> {
    let from = row_key(parent, split_key);
    let to = rows_end(parent);
    let mut moved = 0u64;
    engine.scan(CF_DATA, &from, &to, |k, v| {
        moved += (k.len() - 9 + v.len()) as u64;
        b.put(CF_DATA, row_key(child, &k[9..]), v);
        Ok(true)
    })?;
    b.delete_range(CF_DATA, from, to);
    Ok(moved)
}

/// The region's measured size and, when it holds at least `threshold` bytes, the key at which its
/// rows divide into two halves of about equal size (None when it is smaller, or cannot split:
/// fewer than two rows). A region below the threshold is read once, not twice.
pub fn middle_key(
    engine: &Engine,
    group: u64,
    threshold: u64,
) -> Result<(Option<Vec<u8>>, u64), StorageError> {
    let from = group_key(group, &[TAG_ROW]);
    let to = rows_end(group);
    let mut total = 0u64;
    engine.scan(CF_DATA, &from, &to, |k, v| {
        total += (k.len() - 9 + v.len()) as u64;
        Ok(true)
    })?;
    if total < threshold {
        return Ok((None, total));
    }
    let mut seen = 0u64;
    let mut first = true;
    let mut mid = None;
    engine.scan(CF_DATA, &from, &to, |k, v| {
        if !first && seen >= total / 2 {
            mid = Some(k[9..].to_vec());
            return Ok(false);
        }
        first = false;
        seen += (k.len() - 9 + v.len()) as u64;
        Ok(true)
    })?;
    Ok((mid, total))
}
