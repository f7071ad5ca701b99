//! A region's group: applies row writes and compare-and-sets inside the region's key range, and
//! splits (the rows from the split key on move to a new region, seeded here with its own header).

use std::collections::BTreeMap;

use tokio::sync::watch;

use super::{header_key, wrong_kind, ApplyCx, Capture, GroupState, GroupWatch, Header};
use crate::engine::{group_key, CF_DATA};
use crate::region::{self, RegionState};
use crate::types::{Expect, KvCondition, KvOp};
use crate::{encode, Engine, Request, Response, StorageError, TypeConfig};
use openraft::alias::StoredMembershipOf;
use openraft::vote::RaftLeaderId;

/// Log index a region made by a split starts after (as TiKV's RAFT_INIT_LOG_INDEX): the new
/// region's log is empty and everything up to it counts as applied and purged, so replicas that
/// do not hold the split's data get it from a snapshot.
pub const REGION_INIT_INDEX: u64 = 5;

/// A region's range, epoch and size, and the rows written by entries of the current apply call
/// that are not in RocksDB yet (a compare-and-set must see them).
pub(super) struct RegionGroup {
    tx: watch::Sender<RegionState>,
    state: RegionState,
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
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
            pending: BTreeMap::new(),
        })
    }

    /// The row `rk` as this apply call sees it: written earlier in the call, or stored.
    fn current_row(&self, engine: &Engine, rk: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        match self.pending.get(rk) {
            Some(v) => Ok(v.clone()),
            None => engine.get(CF_DATA, rk),
        }
    }

    fn write(
        &mut self,
        cx: &mut ApplyCx<'_>,
        ops: &[KvOp],
        condition: Option<&KvCondition>,
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
        if let Some(cond) = condition {
            let stored = self.current_row(cx.engine, &region::row_key(cx.group, &cond.key))?;
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
        let cf = CF_DATA;
        let st = &mut self.state;
        for op in ops {
            let rk = region::row_key(cx.group, op.key());
            match op {
                KvOp::Put { key, value } => {
                    let v = region::row_value(cx.index, value);
                    st.approx_bytes += (key.len() + v.len()) as u64;
                    cx.batch.put(cf, rk.as_slice(), v.as_slice());
                    self.pending.insert(rk, Some(v));
                }
                KvOp::Delete { key } => {
                    st.approx_bytes += key.len() as u64;
                    cx.batch.delete(cf, rk.as_slice());
                    self.pending.insert(rk, None);
                }
            }
        }
        region::put_state(cx.batch, cx.group, st)?;
        Ok(Response::KvWritten { version: cx.index })
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

impl GroupState for RegionGroup {
    fn apply(&mut self, cx: &mut ApplyCx<'_>, req: &Request) -> Result<Response, StorageError> {
        match req {
            Request::KvWrite { ops, condition } => self.write(cx, ops, condition.as_ref()),
            Request::Split {
                split_key,
                child,
                epoch,
            } => self.split(cx, split_key, *child, *epoch),
            other => Ok(wrong_kind(cx.group, other)),
        }
    }

    fn reads_stored_rows(&self, req: &Request) -> bool {
        // A split moves rows by reading them from RocksDB.
        matches!(req, Request::Split { .. })
    }

    fn publish(&mut self, _header: &Header) {
        self.pending.clear();
        self.tx.send_replace(self.state.clone());
    }

    fn reload(&mut self, engine: &Engine, group: u64) -> Result<(), StorageError> {
        self.pending.clear();
        if let Some(stored) = region::load_state(engine, group)? {
            self.state = stored;
        }
        Ok(())
    }

    fn watch(&self) -> GroupWatch {
        GroupWatch::Region(self.tx.subscribe())
    }

    fn capture(&self, group: u64, _header: &Header) -> Result<Capture, StorageError> {
        // Rows change in place: they are copied to the snapshot file right away.
        Ok(Capture::RangeNow(
            group_key(group, &[region::TAG_REGION]),
            group_key(group, &[region::TAG_ROW + 1]),
        ))
    }
}
