//! A region's group: applies row writes, merges and compare-and-sets inside the region's key
//! range, and splits (the rows from the split key on move to a new region, seeded here with its own
//! header).

use std::collections::BTreeMap;

use tokio::sync::watch;

use super::{header_key, wrong_kind, ApplyCx, Capture, GroupState, GroupWatch, Header};
use crate::engine::{group_key, CF_DATA};
use crate::region::{self, RegionState};
use crate::types::{Expect, KvCondition, KvOp, WriterFence};
use crate::{encode, Engine, Request, Response, StorageError, TypeConfig};
use openraft::alias::StoredMembershipOf;
use openraft::vote::RaftLeaderId;
use weir_proto::table::merge::{self, MergeError, MergeOutcome, MergeRow, MergeState, RowMerge};
use weir_proto::table::row;

/// Log index a region made by a split starts after (as TiKV's RAFT_INIT_LOG_INDEX): the new
/// region's log is empty and everything up to it counts as applied and purged, so replicas that
/// do not hold the split's data get it from a snapshot.
pub const REGION_INIT_INDEX: u64 = 5;

/// A region's range, epoch and size.
///
/// Rows written by earlier entries of an apply call are in its write batch, not in RocksDB yet: a
/// write that reads stored rows (a compare-and-set, a merge, a split) has that batch written
/// first ([`GroupState::reads_stored_rows`]), so puts and deletes, the bulk of a region's
/// entries, are not kept twice to be seen.
pub(super) struct RegionGroup {
    tx: watch::Sender<RegionState>,
    state: RegionState,
}

impl RegionGroup {
    /// Opens the region `group`; a replica holding nothing yet starts from the group's `origin`
    /// (start, end, epoch) as the first entry of its log found it, so replaying the log repeats
    /// every split.
    pub(super) fn open(
        engine: &Engine,
        group: u64,
        origin: &(Vec<u8>, Vec<u8>, u64),
    ) -> Result<RegionGroup, StorageError> {
        let state = match region::load_state(engine, group)? {
            Some(st) => st,
            None => RegionState {
                start: origin.0.clone(),
                end: origin.1.clone(),
                epoch: origin.2,
                ..RegionState::default()
            },
        };
        Ok(RegionGroup {
            tx: watch::channel(state.clone()).0,
            state,
        })
    }

    fn write(
        &mut self,
        cx: &mut ApplyCx<'_>,
        ops: &[KvOp],
        condition: Option<&KvCondition>,
        fence: Option<&WriterFence>,
    ) -> Result<Response, StorageError> {
        let st = &mut self.state;
        let outside = ops
            .iter()
            .map(KvOp::key)
            .chain(condition.map(|c| c.key.as_slice()))
            .any(|k| !st.contains(k));
        if outside {
            return Ok(Response::NotInRegion(st.clone()));
        }
        // Checked before anything else, and raised only with a write that is applied: a refused
        // write leaves the region as it was.
        if let Some(current) = fence.and_then(|f| st.stale(&f.holder, f.token)) {
            return Ok(Response::StaleWriter { current });
        }
        if let Some(cond) = condition {
            // The entries before this one are in RocksDB (`reads_stored_rows`).
            let stored = cx
                .engine
                .get(CF_DATA, &region::row_key(cx.group, &cond.key))?;
            let current = match &stored {
                Some(v) => {
                    let (version, cells) = region::split_value(v)?;
                    Some((version, cells.to_vec()))
                }
                None => None,
            };
            let holds = match (&cond.expect, &current) {
                (Expect::Version(want), cur) => cur.as_ref().map(|(v, _)| *v).unwrap_or(0) == *want,
                (Expect::Cell { index, cell }, Some((_, cells))) => {
                    weir_proto::table::row::cell_at(cells, *index as usize)
                        .map_err(|e| StorageError::Corrupt(e.to_string()))?
                        == Some(cell.as_slice())
                }
                (Expect::Cell { .. }, None) => false,
            };
            if !holds {
                return Ok(Response::CasFailed { current });
            }
        }
        let merges = ops.iter().any(|op| matches!(op, KvOp::Merge { .. }));
        if !merges {
            // Puts and deletes cannot fail: each goes straight into the batch.
            let st = &mut self.state;
            if let Some(f) = fence {
                st.raise(&f.holder, f.token);
            }
            for op in ops {
                st.approx_bytes += match op {
                    KvOp::Put { key, value } => {
                        region::put_row(cx.batch, cx.group, cx.index, key, value)
                    }
                    KvOp::Delete { key } => {
                        cx.batch.delete(CF_DATA, region::row_key(cx.group, key));
                        key.len() as u64
                    }
                    KvOp::Merge { .. } => 0,
                };
            }
            region::put_state(cx.batch, cx.group, st)?;
            return Ok(Response::KvWritten {
                version: cx.index,
                overlaps: Vec::new(),
            });
        }
        // Every change is worked out before any is written, so a merge that fails leaves nothing
        // of the write behind. `mine` finds this write's latest change of a row in `changes`: a
        // merge sees the ops before it, merges of the same row included.
        let mut changes: Vec<(Vec<u8>, Option<Vec<u8>>, u64)> = Vec::with_capacity(ops.len());
        let mut mine: BTreeMap<Vec<u8>, usize> = BTreeMap::new();
        let mut overlaps = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let rk = region::row_key(cx.group, op.key());
            let (v, bytes) = match op {
                KvOp::Put { key, value } => {
                    let v = region::row_value(cx.index, value);
                    let n = key.len() + v.len();
                    (Some(v), n)
                }
                KvOp::Delete { key } => (None, key.len()),
                KvOp::Merge {
                    key,
                    source,
                    from,
                    to,
                    ops: encoded,
                } => {
                    let index = u32::try_from(i).unwrap_or(u32::MAX);
                    let current = match mine.get(&rk) {
                        Some(&c) => changes[c].1.clone(),
                        None => cx.engine.get(CF_DATA, &rk)?,
                    };
                    let merge = MergeArgs {
                        key,
                        source,
                        from: *from,
                        to: *to,
                        ops: encoded,
                    };
                    match merge_row(cx.index, current.as_deref(), &merge) {
                        Ok(Merged::Written(v)) => {
                            let n = key.len() + v.len();
                            (Some(v), n)
                        }
                        Ok(Merged::Unchanged(None)) => continue,
                        Ok(Merged::Unchanged(Some(mark))) => {
                            overlaps.push((index, mark));
                            continue;
                        }
                        Err((column, reason)) => {
                            return Ok(Response::MergeFailed {
                                index,
                                column,
                                reason,
                            })
                        }
                    }
                }
            };
            mine.insert(rk.clone(), changes.len());
            changes.push((rk, v, bytes as u64));
        }
        let cf = CF_DATA;
        let st = &mut self.state;
        if let Some(f) = fence {
            st.raise(&f.holder, f.token);
        }
        for (rk, v, bytes) in changes {
            st.approx_bytes += bytes;
            match v {
                Some(v) => cx.batch.put(cf, rk, v),
                None => cx.batch.delete(cf, rk),
            }
        }
        region::put_state(cx.batch, cx.group, st)?;
        Ok(Response::KvWritten {
            version: cx.index,
            overlaps,
        })
    }

    /// Raises the region's token for `fence`'s holder, refusing a stale one.
    fn fence(
        &mut self,
        cx: &mut ApplyCx<'_>,
        fence: &WriterFence,
        key: &[u8],
    ) -> Result<Response, StorageError> {
        let st = &mut self.state;
        if !st.contains(key) {
            return Ok(Response::NotInRegion(st.clone()));
        }
        if let Err(current) = st.admit(&fence.holder, fence.token) {
            return Ok(Response::StaleWriter { current });
        }
        region::put_state(cx.batch, cx.group, st)?;
        Ok(Response::Fenced {
            end: st.end.clone(),
        })
    }

    fn split(
        &mut self,
        cx: &mut ApplyCx<'_>,
        split_key: &[u8],
        child: u64,
        planned: u64,
    ) -> Result<Response, StorageError> {
        let group = cx.group;
        let st = &mut self.state;
        if planned != st.epoch {
            return Ok(Response::Rejected(format!(
                "split planned at epoch {planned}, region {group} is at epoch {}",
                st.epoch
            )));
        }
        let inside =
            split_key > st.start.as_slice() && (st.end.is_empty() || split_key < st.end.as_slice());
        if !inside {
            return Ok(Response::Rejected(format!(
                "split key is outside region {group}'s range (epoch {})",
                st.epoch
            )));
        }
        let cf = CF_DATA;
        let epoch = st.epoch + 1;
        let child_exists = region::load_state(cx.engine, child)?.is_some();
        let moved = if child_exists {
            // The new region already got its data here from a snapshot; only drop ours.
            cx.batch.delete_range(
                cf,
                region::row_key(group, split_key),
                group_key(group, &[region::TAG_ROW + 1]),
            );
            0
        } else {
            let (engine, batch) = (cx.engine, &mut *cx.batch);
            crate::engine::off_runtime(|| {
                region::move_rows(engine, batch, group, child, split_key)
            })?
        };
        if !child_exists {
            let init = openraft::LogId::new(
                openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(0, 0),
                REGION_INIT_INDEX,
            );
            let child_header = Header {
                applied: Some(init),
                membership: StoredMembershipOf::<TypeConfig>::new(
                    Some(init),
                    cx.header.membership.membership().clone(),
                ),
                partition: Default::default(),
            };
            cx.batch.put(cf, header_key(child), encode(&child_header)?);
            crate::LogStore::seed_purged(cx.batch, child, &init)?;
            region::put_state(
                cx.batch,
                child,
                &RegionState {
                    start: split_key.to_vec(),
                    end: st.end.clone(),
                    epoch,
                    approx_bytes: moved,
                    last_split: None,
                    fences: st.fences.clone(),
                },
            )?;
        }
        st.end = split_key.to_vec();
        st.epoch = epoch;
        st.approx_bytes = st.approx_bytes.saturating_sub(moved);
        st.last_split = Some(region::SplitRecord {
            child,
            split_key: split_key.to_vec(),
            epoch,
        });
        region::put_state(cx.batch, group, st)?;
        Ok(Response::Ok)
    }
}

/// One merge of a write, as its op carries it.
struct MergeArgs<'a> {
    key: &'a [u8],
    source: &'a str,
    from: u64,
    to: u64,
    ops: &'a [u8],
}

/// What a merge does to its row's stored value.
enum Merged {
    /// The row's new stored value.
    Written(Vec<u8>),
    /// The row stays as it is: covered (None) or an overlap at the row's mark.
    Unchanged(Option<u64>),
}

/// Applies a merge to the stored value `current` (None: no row) at log index `index`; a refusal
/// is (value column at fault, reason). Every replica holds the same rows, so every replica
/// refuses alike, even a row whose stored bytes do not decode.
fn merge_row(
    index: u64,
    current: Option<&[u8]>,
    m: &MergeArgs<'_>,
) -> Result<Merged, (Option<u32>, String)> {
    let whole = |reason: String| (None, reason);
    let (ops, targets) =
        merge::decode_ops(m.ops).map_err(|e| whole(format!("the merge's ops: {e}")))?;
    let stored = |e: &dyn std::fmt::Display| whole(format!("the stored row does not decode: {e}"));
    let mut row = match current {
        Some(v) => {
            let parts = region::split_value_with_state(v).map_err(|e| stored(&e))?;
            let state = match parts.state {
                Some(s) => MergeState::decode(s).map_err(|e| stored(&e))?,
                None => MergeState::default(),
            };
            let cells = row::decode_cells(parts.cells).map_err(|e| stored(&e))?;
            Some(MergeRow { state, cells })
        }
        None => None,
    };
    let merge = RowMerge {
        key: m.key.to_vec(),
        source: m.source.to_string(),
        from: m.from,
        to: m.to,
        ops,
    };
    let outcome = merge.apply(&targets, &mut row).map_err(|e| match e {
        MergeError::Column { column, reason } => (u32::try_from(column).ok(), reason),
        MergeError::Invalid(reason) => whole(reason),
    })?;
    match (outcome, row) {
        (MergeOutcome::Applied, Some(r)) => {
            let state = r
                .state
                .encode()
                .map_err(|e| whole(format!("the merge state does not encode: {e}")))?;
            let v = region::row_value_with_state(index, &state, &row::encode_cells(&r.cells))
                .map_err(|e| whole(e.to_string()))?;
            Ok(Merged::Written(v))
        }
        (MergeOutcome::Applied, None) => Err(whole("an applied merge left no row".into())),
        (MergeOutcome::Covered, _) => Ok(Merged::Unchanged(None)),
        (MergeOutcome::Overlap(mark), _) => Ok(Merged::Unchanged(Some(mark))),
    }
}

impl GroupState for RegionGroup {
    fn apply(&mut self, cx: &mut ApplyCx<'_>, req: &Request) -> Result<Response, StorageError> {
        match req {
            Request::KvWrite {
                ops,
                condition,
                fence,
            } => self.write(cx, ops, condition.as_ref(), fence.as_ref()),
            Request::Fence { fence, key } => self.fence(cx, fence, key),
            Request::Split {
                split_key,
                child,
                epoch,
            } => self.split(cx, split_key, *child, *epoch),
            other => Ok(wrong_kind(cx.group, other)),
        }
    }

    fn reads_stored_rows(&self, req: &Request) -> bool {
        match req {
            // A split moves rows by reading them from RocksDB.
            Request::Split { .. } => true,
            // A compare-and-set reads the row it checks, a merge the row it merges into.
            Request::KvWrite { ops, condition, .. } => {
                condition.is_some() || ops.iter().any(|op| matches!(op, KvOp::Merge { .. }))
            }
            _ => false,
        }
    }

    fn publish(&mut self, _header: &Header) {
        self.tx.send_replace(self.state.clone());
    }

    fn reload(&mut self, engine: &Engine, group: u64) -> Result<(), StorageError> {
        if let Some(stored) = region::load_state(engine, group)? {
            self.state = stored;
        }
        Ok(())
    }

    fn watch(&self) -> GroupWatch {
        GroupWatch::Region(self.tx.subscribe())
    }

    fn pins_snapshots(&self) -> bool {
        true
    }

    fn capture(&self, group: u64, _header: &Header) -> Result<Capture, StorageError> {
        // Rows change in place: the snapshot pins them where they are.
        Ok(Capture::Pinned(
            group_key(group, &[region::TAG_REGION]),
            group_key(group, &[region::TAG_ROW + 1]),
        ))
    }
}
