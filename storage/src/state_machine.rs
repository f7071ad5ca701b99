//! The state machine of one Raft group.
//!
//! A group holds one of four kinds of state (see [`GroupKind`]): the catalog (group 0), a log
//! partition, consumer-group offsets, or a region of a table. Every apply writes its changes and the new applied log id
//! in one RocksDB write batch, so a restart never applies an entry twice. The node watches a group's
//! state through the [`GroupWatch`] it gets before handing the state machine to openraft.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::path::Path;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::vote::RaftLeaderId;
use openraft::{EntryPayload, OptionalSend};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::catalog::{Catalog, GroupKind, MetaResponse};
use crate::engine::{group_key, key_suffix_u64, CF_DATA};
use crate::partition::{self, PartitionState};
use crate::region::{self, RegionState};
use crate::snapshot::{read_rows, verify, SnapshotData, SnapshotDir, SnapshotWriter};
use crate::types::{Expect, KvOp};
use crate::{decode, encode, Engine, Request, Response, StorageError, TypeConfig};

const TAG_HEADER: u8 = 0;
const TAG_CATALOG: u8 = 2;
const TAG_OFFSET: u8 = 3;
const TAG_PRODUCER: u8 = 4;
/// Marks a snapshot install under way: written (synced) before the first row and removed in the
/// synced write of the header, so finding it at start-up means a crash cut an install short.
const TAG_INSTALLING: u8 = 0xFE;
/// Batches remembered per producer for de-duplication (as Kafka's five in-flight batches).
const PRODUCER_WINDOW: usize = 5;
/// Producers remembered per partition; the least recently active is forgotten first.
const MAX_PRODUCERS: usize = 10_000;
/// Rows per write batch when a snapshot is installed.
const INSTALL_BATCH_BYTES: usize = 4 << 20;
/// Log index a region made by a split starts after (as TiKV's RAFT_INIT_LOG_INDEX): the new
/// region's log is empty and everything up to it counts as applied and purged, so replicas that
/// do not hold the split's data get it from a snapshot.
pub const REGION_INIT_INDEX: u64 = 5;

/// Key of committed offsets: (consumer group, topic, partition).
pub type OffsetKey = (String, String, u32);

/// What every state machine persists next to its data.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Header {
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    partition: PartitionState,
}

/// The last batches an idempotent producer wrote to a partition.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ProducerState {
    /// Log index of the producer's last write (orders eviction the same way on every replica).
    last_index: u64,
    /// (sequence, base offset, count) of the last batches, oldest first.
    batches: std::collections::VecDeque<(u64, u64, u32)>,
}

/// Kind-specific state kept in memory.
enum Kind {
    Metadata(watch::Sender<Arc<Catalog>>),
    Partition(watch::Sender<PartitionState>, BTreeMap<u64, ProducerState>),
    Offsets(watch::Sender<Arc<BTreeMap<OffsetKey, u64>>>),
    /// The region's state, and the rows written by entries of the current apply call that are
    /// not in RocksDB yet (a compare-and-set must see them).
    Region(
        watch::Sender<RegionState>,
        RegionState,
        HashMap<Vec<u8>, Option<Vec<u8>>>,
    ),
}

/// How the node observes a group's applied state.
#[derive(Debug, Clone)]
pub enum GroupWatch {
    /// The catalog, after every applied change.
    Catalog(watch::Receiver<Arc<Catalog>>),
    /// Offsets and size of a partition.
    Partition(watch::Receiver<PartitionState>),
    /// Committed consumer-group offsets.
    Offsets(watch::Receiver<Arc<BTreeMap<OffsetKey, u64>>>),
    /// A region's range, epoch and size.
    Region(watch::Receiver<RegionState>),
}

/// The state machine of one group.
pub struct StateMachine {
    engine: Engine,
    group: u64,
    header: Header,
    kind: Kind,
    snapshots: SnapshotDir,
}

impl StateMachine {
    /// Opens the state machine of `group` from what the engine holds.
    pub fn open(
        engine: Engine,
        group: u64,
        kind: &GroupKind,
        snapshot_root: &Path,
    ) -> Result<StateMachine, StorageError> {
        // Runs before anything reads the group's data, so a half-installed snapshot is never seen.
        if clear_interrupted_install(&engine, group)? {
            tracing::warn!(
                group,
                "a snapshot install was cut short; starting the replica empty"
            );
        }
        let snapshots = SnapshotDir::new(snapshot_root, group);
        // Nothing builds or receives a snapshot of the group before it is opened.
        snapshots.remove_temp_files()?;
        let header: Header = match engine.get(CF_DATA, &group_key(group, &[TAG_HEADER]))? {
            Some(v) => decode(&v)?,
            None => Header::default(),
        };
        let kind = match kind {
            GroupKind::Metadata => {
                let catalog = match engine.get(CF_DATA, &group_key(group, &[TAG_CATALOG]))? {
                    Some(v) => decode(&v)?,
                    None => Catalog::default(),
                };
                Kind::Metadata(watch::channel(Arc::new(catalog)).0)
            }
            GroupKind::Partition { .. } => Kind::Partition(
                watch::channel(header.partition).0,
                load_producers(&engine, group)?,
            ),
            GroupKind::Offsets => {
                Kind::Offsets(watch::channel(Arc::new(load_offsets(&engine, group)?)).0)
            }
            GroupKind::Region { origin, .. } => {
                // A replica holding nothing yet starts from the group's origin, as the first entry
                // of its log found it, so replaying the log repeats every split.
                let st = match region::load_state(&engine, group)? {
                    Some(st) => st,
                    None => RegionState {
                        start: origin.0.clone(),
                        end: origin.1.clone(),
                        epoch: origin.2,
                        ..RegionState::default()
                    },
                };
                Kind::Region(watch::channel(st.clone()).0, st, HashMap::new())
            }
        };
        Ok(StateMachine {
            engine,
            group,
            header,
            kind,
            snapshots,
        })
    }

    /// Opens the state machine of `group` for Raft to run, repairing what a crash can leave: an
    /// install cut short is cleared, and a state machine behind its purged log is reset to an
    /// empty replica (keeping the vote) that gets a snapshot from its leader.
    ///
    /// Does disk work (and may delete a whole replica's data): call from a blocking context.
    pub fn recover(
        engine: Engine,
        group: u64,
        kind: &GroupKind,
        snapshot_root: &Path,
    ) -> Result<StateMachine, StorageError> {
        let sm = StateMachine::open(engine.clone(), group, kind, snapshot_root)?;
        let purged = crate::LogStore::last_purged(&engine, group)?;
        if purged.is_none() || sm.header.applied >= purged {
            return Ok(sm);
        }
        // A log can only be purged up to what the state machine holds; anything else would
        // append entries on top of missing data. Start empty and get a snapshot.
        tracing::warn!(
            group,
            applied = ?sm.header.applied,
            ?purged,
            "log purged past the applied state; starting the replica empty"
        );
        drop(sm);
        StateMachine::reset(&engine, group, snapshot_root)?;
        StateMachine::open(engine, group, kind, snapshot_root)
    }

    /// Empties the group's replica — Raft log, committed and purged ids, data, snapshots — but
    /// keeps its vote: the replica stays a member, and a member that forgot its vote could vote
    /// twice in one term.
    pub fn reset(engine: &Engine, group: u64, snapshot_root: &Path) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        crate::LogStore::clear_keeping_vote(engine, &mut b, group)?;
        engine.delete_group_range(&mut b, CF_DATA, group)?;
        engine.write_sync(b)?;
        SnapshotDir::new(snapshot_root, group).destroy()
    }

    /// A handle to observe the applied state.
    pub fn watch(&self) -> GroupWatch {
        match &self.kind {
            Kind::Metadata(tx) => GroupWatch::Catalog(tx.subscribe()),
            Kind::Partition(tx, _) => GroupWatch::Partition(tx.subscribe()),
            Kind::Offsets(tx) => GroupWatch::Offsets(tx.subscribe()),
            Kind::Region(tx, ..) => GroupWatch::Region(tx.subscribe()),
        }
    }

    /// Deletes everything of the group's replica — Raft log, Raft metadata, data — in one write
    /// batch, then its snapshots (the replica is being dropped). One batch, so that another
    /// group's apply (a parent seeding a split region) can never land between the deletions and
    /// leave a log without the data it stands for.
    pub fn destroy(engine: &Engine, group: u64, snapshot_root: &Path) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        engine.delete_group_range(&mut b, crate::engine::CF_LOG, group)?;
        engine.delete_group_range(&mut b, crate::engine::CF_META, group)?;
        engine.delete_group_range(&mut b, CF_DATA, group)?;
        engine.write_sync(b)?;
        SnapshotDir::new(snapshot_root, group).destroy()
    }

    fn apply_one(
        &mut self,
        index: u64,
        req: &Request,
        b: &mut WriteBatch,
    ) -> Result<Response, StorageError> {
        let cf = self.engine.cf(CF_DATA)?;
        let group = self.group;
        Ok(match (&mut self.kind, req) {
            (Kind::Metadata(tx), Request::Meta(cmd)) => {
                let mut catalog = (**tx.borrow()).clone();
                let resp = catalog.apply(cmd);
                if !matches!(resp, MetaResponse::Rejected(_)) {
                    b.put_cf(&cf, group_key(group, &[TAG_CATALOG]), encode(&catalog)?);
                    tx.send_replace(Arc::new(catalog));
                }
                Response::Meta(resp)
            }
            (
                Kind::Partition(_, producers),
                Request::Append {
                    batch,
                    count,
                    max_timestamp_ms,
                    producer,
                },
            ) => {
                let p = &mut self.header.partition;
                let base_offset = p.next_offset;
                if let Some(ps) = producer {
                    let st = producers.entry(ps.producer_id).or_default();
                    if let Some((_, base, n)) =
                        st.batches.iter().find(|(seq, _, _)| *seq == ps.sequence)
                    {
                        return Ok(Response::Appended {
                            base_offset: *base,
                            count: *n,
                        });
                    }
                    // A producer's first batch here is its batch 0; a later one arriving first
                    // (several in flight) waits for it.
                    let last = match st.batches.back() {
                        Some((seq, _, _)) => Some(*seq),
                        None if ps.sequence == 0 => None,
                        None => {
                            return Ok(Response::OutOfOrder(format!(
                                "batch {} of producer {} arrived before its batch 0",
                                ps.sequence, ps.producer_id
                            )))
                        }
                    };
                    if let Some(last) = last {
                        if ps.sequence > last + 1 {
                            return Ok(Response::OutOfOrder(format!(
                                "batch {} of producer {} arrived before batch {}",
                                ps.sequence,
                                ps.producer_id,
                                last + 1
                            )));
                        }
                        if ps.sequence <= last {
                            // Older than everything remembered: it may or may not be stored.
                            return Ok(Response::Rejected(format!(
                                "batch {} of producer {} is older than its last {PRODUCER_WINDOW} batches",
                                ps.sequence, ps.producer_id
                            )));
                        }
                    }
                    st.batches.push_back((ps.sequence, base_offset, *count));
                    if st.batches.len() > PRODUCER_WINDOW {
                        st.batches.pop_front();
                    }
                    st.last_index = index;
                    b.put_cf(cf, producer_key(group, ps.producer_id), encode(&*st)?);
                    if producers.len() > MAX_PRODUCERS {
                        if let Some(oldest) = producers
                            .iter()
                            .min_by_key(|(_, st)| st.last_index)
                            .map(|(id, _)| *id)
                        {
                            producers.remove(&oldest);
                            b.delete_cf(cf, producer_key(group, oldest));
                        }
                    }
                }
                b.put_cf(
                    &cf,
                    partition::batch_key(group, base_offset),
                    partition::batch_value(*count, *max_timestamp_ms, batch),
                );
                p.next_offset += u64::from(*count);
                p.bytes += batch.len() as u64;
                Response::Appended {
                    base_offset,
                    count: *count,
                }
            }
            (Kind::Partition(..), Request::Trim { before }) => {
                let p = &mut self.header.partition;
                let before = (*before).min(p.next_offset);
                if before > p.earliest {
                    let mut dropped = 0u64;
                    partition::scan_batches(&self.engine, group, before, |_, _, sb| {
                        dropped += sb.batch.len() as u64;
                        Ok(true)
                    })?;
                    b.delete_range_cf(
                        &cf,
                        partition::batch_key(group, 0),
                        partition::batch_key(group, before),
                    );
                    p.earliest = before;
                    p.bytes = p.bytes.saturating_sub(dropped);
                }
                Response::Ok
            }
            (
                Kind::Offsets(tx),
                Request::CommitOffsets {
                    group: cg,
                    topic,
                    offsets,
                },
            ) => {
                let mut map = (**tx.borrow()).clone();
                for (p, off) in offsets {
                    let key = (cg.clone(), topic.clone(), *p);
                    b.put_cf(&cf, offset_key(group, &key)?, off.to_be_bytes());
                    map.insert(key, *off);
                }
                tx.send_replace(Arc::new(map));
                Response::Ok
            }
            (Kind::Region(_, st, pending), Request::KvWrite { ops, condition }) => {
                let outside = ops
                    .iter()
                    .map(KvOp::key)
                    .chain(condition.as_ref().map(|c| c.key.as_slice()))
                    .any(|k| !st.contains(k));
                if outside {
                    return Ok(Response::NotInRegion(st.clone()));
                }
                if let Some(cond) = condition {
                    let rk = region::row_key(group, &cond.key);
                    let stored = match pending.get(&rk) {
                        Some(v) => v.clone(),
                        None => self.engine.get(CF_DATA, &rk)?,
                    };
                    let current = match &stored {
                        Some(v) => {
                            let (version, cells) = region::split_value(v)?;
                            Some((version, cells.to_vec()))
                        }
                        None => None,
                    };
                    let holds = match (&cond.expect, &current) {
                        (Expect::Version(want), cur) => {
                            cur.as_ref().map(|(v, _)| *v).unwrap_or(0) == *want
                        }
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
                for op in ops {
                    let rk = region::row_key(group, op.key());
                    match op {
                        KvOp::Put { key, value } => {
                            let v = region::row_value(index, value);
                            st.approx_bytes += (key.len() + v.len()) as u64;
                            b.put_cf(cf, &rk, &v);
                            pending.insert(rk, Some(v));
                        }
                        KvOp::Delete { key } => {
                            st.approx_bytes += key.len() as u64;
                            b.delete_cf(cf, &rk);
                            pending.insert(rk, None);
                        }
                    }
                }
                region::put_state(&self.engine, b, group, st)?;
                Response::KvWritten { version: index }
            }
            (
                Kind::Region(_, st, _),
                Request::Split {
                    split_key,
                    child,
                    epoch: planned,
                },
            ) => {
                if *planned != st.epoch {
                    return Ok(Response::Rejected(format!(
                        "split planned at epoch {planned}, region {group} is at epoch {}",
                        st.epoch
                    )));
                }
                let inside = split_key.as_slice() > st.start.as_slice()
                    && (st.end.is_empty() || split_key.as_slice() < st.end.as_slice());
                if !inside {
                    return Ok(Response::Rejected(format!(
                        "split key is outside region {group}'s range (epoch {})",
                        st.epoch
                    )));
                }
                let epoch = st.epoch + 1;
                let child_exists = region::load_state(&self.engine, *child)?.is_some();
                let moved = if child_exists {
                    // The new region already got its data here from a snapshot; only drop ours.
                    b.delete_range_cf(
                        cf,
                        region::row_key(group, split_key),
                        group_key(group, &[region::TAG_ROW + 1]),
                    );
                    0
                } else {
                    crate::engine::off_runtime(|| {
                        region::move_rows(&self.engine, b, group, *child, split_key)
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
                            self.header.membership.membership().clone(),
                        ),
                        partition: PartitionState::default(),
                    };
                    b.put_cf(cf, group_key(*child, &[TAG_HEADER]), encode(&child_header)?);
                    crate::LogStore::seed_purged(&self.engine, b, *child, &init)?;
                    region::put_state(
                        &self.engine,
                        b,
                        *child,
                        &RegionState {
                            start: split_key.clone(),
                            end: st.end.clone(),
                            epoch,
                            approx_bytes: moved,
                            last_split: None,
                        },
                    )?;
                }
                st.end = split_key.clone();
                st.epoch = epoch;
                st.approx_bytes = st.approx_bytes.saturating_sub(moved);
                st.last_split = Some(region::SplitRecord {
                    child: *child,
                    split_key: split_key.clone(),
                    epoch,
                });
                region::put_state(&self.engine, b, group, st)?;
                Response::Ok
            }
            (_, other) => Response::Rejected(format!(
                "group {group} cannot apply {other}: command does not match the group's kind"
            )),
        })
    }

    /// Reloads the in-memory views of the kind's state from what the engine now holds.
    fn reload_views(&mut self) -> Result<(), StorageError> {
        match &mut self.kind {
            Kind::Metadata(tx) => {
                let catalog = match self
                    .engine
                    .get(CF_DATA, &group_key(self.group, &[TAG_CATALOG]))?
                {
                    Some(v) => decode(&v)?,
                    None => Catalog::default(),
                };
                tx.send_replace(Arc::new(catalog));
            }
            Kind::Offsets(tx) => {
                tx.send_replace(Arc::new(load_offsets(&self.engine, self.group)?));
            }
            Kind::Partition(_, producers) => {
                *producers = load_producers(&self.engine, self.group)?;
            }
            Kind::Region(_, st, pending) => {
                pending.clear();
                if let Some(stored) = region::load_state(&self.engine, self.group)? {
                    *st = stored;
                }
            }
        }
        Ok(())
    }

    fn put_header(&self, b: &mut WriteBatch) -> Result<(), StorageError> {
        b.put_cf(
            &self.engine.cf(CF_DATA)?,
            group_key(self.group, &[TAG_HEADER]),
            encode(&self.header)?,
        );
        Ok(())
    }

    fn publish(&mut self) {
        match &mut self.kind {
            Kind::Partition(tx, _) => {
                tx.send_replace(self.header.partition);
            }
            Kind::Region(tx, st, pending) => {
                pending.clear();
                tx.send_replace(st.clone());
            }
            _ => {}
        }
    }
}

/// Writes a region's state, rows and header to a snapshot file as they are now.
fn write_region_snapshot(
    engine: &Engine,
    group: u64,
    header: &Header,
    snapshots: &SnapshotDir,
) -> Result<std::path::PathBuf, StorageError> {
    let mut w = SnapshotWriter::create(snapshots.temp_path()?, &snapshot_meta(header))?;
    engine.scan(
        CF_DATA,
        &group_key(group, &[region::TAG_REGION]),
        &group_key(group, &[region::TAG_ROW + 1]),
        |k, v| {
            w.row(k, v)?;
            Ok(true)
        },
    )?;
    w.row(&group_key(group, &[TAG_HEADER]), &encode(header)?)?;
    w.finish()
}

/// The snapshot metadata of a state machine whose header is `header`.
fn snapshot_meta(header: &Header) -> SnapshotMetaOf<TypeConfig> {
    SnapshotMetaOf::<TypeConfig> {
        last_log_id: header.applied,
        last_membership: header.membership.clone(),
    }
}

fn installing_key(group: u64) -> Vec<u8> {
    group_key(group, &[TAG_INSTALLING])
}

/// If an install of `group` was cut short, deletes the part of it that was written (in one synced
/// write, which also removes the mark), leaving the group with no data and no header: an empty
/// replica that gets a fresh snapshot. Its Raft log and vote are left alone.
fn clear_interrupted_install(engine: &Engine, group: u64) -> Result<bool, StorageError> {
    if engine.get(CF_DATA, &installing_key(group))?.is_none() {
        return Ok(false);
    }
    let mut b = WriteBatch::default();
    engine.delete_group_range(&mut b, CF_DATA, group)?;
    engine.write_sync(b)?;
    Ok(true)
}

/// Install step 1: in one synced write, drops the group's data and marks an install as under way,
/// so that from here on a crash leaves a marked, clearable group rather than a header over partial
/// data.
fn begin_install(engine: &Engine, group: u64) -> Result<(), StorageError> {
    let mut b = WriteBatch::default();
    engine.delete_group_range(&mut b, CF_DATA, group)?;
    // After the range deletion in the same batch, so the mark survives it.
    b.put_cf(engine.cf(CF_DATA)?, installing_key(group), []);
    engine.write_sync(b)
}

/// Install step 2: copies the rows of the snapshot file at `path` into the engine in bounded,
/// unsynced write batches (step 3 makes them durable), and returns the header the file holds.
fn write_install_rows(
    engine: &Engine,
    group: u64,
    path: &Path,
) -> Result<Option<Header>, StorageError> {
    let cf = engine.cf(CF_DATA)?;
    let header_key = group_key(group, &[TAG_HEADER]);
    let mut header = None;
    let mut b = WriteBatch::default();
    let mut pending = 0usize;
    read_rows(path, |k, v| {
        if k.get(..8) != Some(&group.to_be_bytes()[..]) {
            return Err(StorageError::Corrupt(
                "snapshot row belongs to another group".into(),
            ));
        }
        if k == header_key {
            header = Some(decode(&v)?);
            return Ok(());
        }
        if k == installing_key(group) {
            return Err(StorageError::Corrupt(
                "snapshot holds an install mark".into(),
            ));
        }
        pending += k.len() + v.len();
        b.put_cf(cf, k, v);
        if pending >= INSTALL_BATCH_BYTES {
            engine.write(std::mem::take(&mut b))?;
            pending = 0;
        }
        Ok(())
    })?;
    engine.write(b)?;
    Ok(header)
}

/// Install step 3: fsyncs the rows written so far, then writes the header and removes the install
/// mark in one synced write. The header is what makes the group hold data at all, so it only lands
/// once everything it stands for is durable.
fn commit_install(engine: &Engine, group: u64, header: &Header) -> Result<(), StorageError> {
    engine.db().flush_wal(true)?;
    let mut b = WriteBatch::default();
    let cf = engine.cf(CF_DATA)?;
    b.put_cf(cf, group_key(group, &[TAG_HEADER]), encode(header)?);
    b.delete_cf(cf, installing_key(group));
    engine.write_sync(b)
}

/// Installs the snapshot file at `path` as the whole state of `group`, all or nothing across a
/// crash, and returns the new header. A torn or corrupt file, or one holding other metadata than
/// `meta`, is refused before anything is changed.
fn install_file(
    engine: &Engine,
    group: u64,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &Path,
) -> Result<Header, StorageError> {
    let found = verify(path)
        .map_err(|e| StorageError::Corrupt(format!("refusing snapshot {}: {e}", path.display())))?;
    if &found != meta {
        return Err(StorageError::Corrupt(format!(
            "refusing snapshot {}: it holds {:?}, expected {:?}",
            path.display(),
            found.last_log_id,
            meta.last_log_id
        )));
    }
    begin_install(engine, group)?;
    let installed = (|| {
        let mut header = write_install_rows(engine, group, path)?.unwrap_or_default();
        header.applied = meta.last_log_id;
        header.membership = meta.last_membership.clone();
        commit_install(engine, group, &header)?;
        Ok(header)
    })();
    if installed.is_err() {
        // Leave an empty replica rather than partial data; if even that fails, the install mark
        // is still there and the next start clears the group.
        if let Err(e) = clear_interrupted_install(engine, group) {
            tracing::error!(group, error = %e, "clearing a failed snapshot install");
        }
    }
    installed
}

fn offset_key(group: u64, key: &OffsetKey) -> Result<Vec<u8>, StorageError> {
    let mut suffix = vec![TAG_OFFSET];
    suffix.extend_from_slice(&encode(key)?);
    Ok(group_key(group, &suffix))
}

fn producer_key(group: u64, producer: u64) -> Vec<u8> {
    crate::engine::group_key_u64(group, TAG_PRODUCER, producer)
}

fn load_producers(
    engine: &Engine,
    group: u64,
) -> Result<BTreeMap<u64, ProducerState>, StorageError> {
    let mut map = BTreeMap::new();
    engine.scan(
        CF_DATA,
        &group_key(group, &[TAG_PRODUCER]),
        &group_key(group, &[TAG_PRODUCER + 1]),
        |k, v| {
            let id = key_suffix_u64(k)
                .ok_or_else(|| StorageError::Corrupt("bad producer key".into()))?;
            map.insert(id, decode(v)?);
            Ok(true)
        },
    )?;
    Ok(map)
}

fn load_offsets(engine: &Engine, group: u64) -> Result<BTreeMap<OffsetKey, u64>, StorageError> {
    let mut map = BTreeMap::new();
    engine.scan(
        CF_DATA,
        &group_key(group, &[TAG_OFFSET]),
        &group_key(group, &[TAG_OFFSET + 1]),
        |k, v| {
            let key: OffsetKey = decode(&k[9..])?;
            let off =
                key_suffix_u64(v).ok_or_else(|| StorageError::Corrupt("bad offset".into()))?;
            map.insert(key, off);
            Ok(true)
        },
    )?;
    Ok(map)
}

/// Builds a snapshot of the state as it was when the builder was made.
pub struct SnapshotBuilder {
    engine: Engine,
    group: u64,
    header: Header,
    rows: CapturedRows,
    snapshots: SnapshotDir,
}

/// What the builder copies: small states are captured in memory, partitions are scanned.
enum CapturedRows {
    Rows(Vec<(Vec<u8>, Vec<u8>)>),
    /// Batches are append-only, so every batch below the captured high watermark is the captured state
    /// (retention may since have dropped some at the front, which the builder accounts for).
    /// Producer de-duplication state is small and captured as rows.
    PartitionBelow(u64, Vec<(Vec<u8>, Vec<u8>)>),
    /// Regions change in place, so their snapshot file is written when the builder is made.
    File(Result<std::path::PathBuf, StorageError>),
    /// The state could not be captured: building fails with this error rather than writing a
    /// snapshot that silently lacks part of the state (an empty catalog, a missing producer).
    Failed(StorageError),
}

impl SnapshotBuilder {
    /// Writes the captured state to a snapshot file and makes it the group's current snapshot.
    fn build(
        engine: &Engine,
        group: u64,
        header: &Header,
        rows: CapturedRows,
        snapshots: &SnapshotDir,
    ) -> Result<SnapshotOf<TypeConfig, SnapshotData>, StorageError> {
        let meta = snapshot_meta(header);
        let path = match rows {
            CapturedRows::File(written) => written?,
            CapturedRows::Failed(e) => return Err(e),
            CapturedRows::Rows(rows) => {
                let mut w = SnapshotWriter::create(snapshots.temp_path()?, &meta)?;
                for (k, v) in &rows {
                    w.row(k, v)?;
                }
                w.row(&group_key(group, &[TAG_HEADER]), &encode(header)?)?;
                w.finish()?
            }
            CapturedRows::PartitionBelow(end, producers) => {
                let mut w = SnapshotWriter::create(snapshots.temp_path()?, &meta)?;
                for (k, v) in &producers {
                    w.row(k, v)?;
                }
                let mut first = None;
                let mut bytes = 0u64;
                partition::scan_batches(engine, group, end, |k, v, sb| {
                    first.get_or_insert(sb.base_offset);
                    bytes += sb.batch.len() as u64;
                    w.row(k, v)?;
                    Ok(true)
                })?;
                let mut header = header.clone();
                header.partition.earliest = first.unwrap_or(end).max(header.partition.earliest);
                header.partition.bytes = bytes;
                w.row(&group_key(group, &[TAG_HEADER]), &encode(&header)?)?;
                w.finish()?
            }
        };
        let snapshot = snapshots.promote(&path)?;
        Ok(SnapshotOf::<TypeConfig, SnapshotData> { meta, snapshot })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, SnapshotData>, io::Error> {
        let rows = std::mem::replace(
            &mut self.rows,
            CapturedRows::File(Err(StorageError::Io(
                "snapshot builder already used".into(),
            ))),
        );
        let (engine, group, header, snapshots) = (
            self.engine.clone(),
            self.group,
            self.header.clone(),
            self.snapshots.clone(),
        );
        Ok(crate::engine::on_blocking_thread(move || {
            SnapshotBuilder::build(&engine, group, &header, rows, &snapshots)
        })
        .await?)
    }
}

impl Drop for SnapshotBuilder {
    fn drop(&mut self) {
        // A region's file is written when the builder is made; unused, it must not linger.
        if let CapturedRows::File(Ok(path)) = &self.rows {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        Ok((self.header.applied, self.header.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut b = WriteBatch::default();
        let mut replies = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            if matches!(&entry.payload, EntryPayload::Normal(Request::Split { .. }))
                && !b.is_empty()
            {
                // A split moves rows by reading them from RocksDB: the entries before it go in first.
                self.put_header(&mut b)?;
                self.engine.write(std::mem::take(&mut b))?;
                self.publish();
            }
            self.header.applied = Some(entry.log_id);
            let resp = match &entry.payload {
                EntryPayload::Blank => Response::Ok,
                EntryPayload::Normal(req) => self.apply_one(entry.log_id.index, req, &mut b)?,
                EntryPayload::Membership(m) => {
                    self.header.membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id), m.clone());
                    Response::Ok
                }
            };
            if let Some(r) = responder {
                replies.push((r, resp));
            }
        }
        self.put_header(&mut b)?;
        self.engine.write(b)?;
        self.publish();
        for (r, resp) in replies {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let rows = match &self.kind {
            Kind::Metadata(tx) => match encode(&**tx.borrow()) {
                Ok(catalog) => {
                    CapturedRows::Rows(vec![(group_key(self.group, &[TAG_CATALOG]), catalog)])
                }
                Err(e) => CapturedRows::Failed(e),
            },
            Kind::Partition(_, producers) => {
                let captured = producers
                    .iter()
                    .map(|(id, st)| Ok((producer_key(self.group, *id), encode(st)?)))
                    .collect::<Result<Vec<_>, StorageError>>();
                match captured {
                    Ok(rows) => {
                        CapturedRows::PartitionBelow(self.header.partition.next_offset, rows)
                    }
                    Err(e) => CapturedRows::Failed(e),
                }
            }
            Kind::Region(..) => {
                // Awaited while the state machine is borrowed, so no apply lands while the rows
                // (changed in place) are copied.
                let (engine, group, header, snapshots) = (
                    self.engine.clone(),
                    self.group,
                    self.header.clone(),
                    self.snapshots.clone(),
                );
                CapturedRows::File(
                    crate::engine::on_blocking_thread(move || {
                        write_region_snapshot(&engine, group, &header, &snapshots)
                    })
                    .await,
                )
            }
            Kind::Offsets(tx) => {
                let captured = tx
                    .borrow()
                    .iter()
                    .map(|(k, v)| Ok((offset_key(self.group, k)?, v.to_be_bytes().to_vec())))
                    .collect::<Result<Vec<_>, StorageError>>();
                match captured {
                    Ok(rows) => CapturedRows::Rows(rows),
                    Err(e) => CapturedRows::Failed(e),
                }
            }
        };
        SnapshotBuilder {
            engine: self.engine.clone(),
            group: self.group,
            header: self.header.clone(),
            rows,
            snapshots: self.snapshots.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let (engine, group, meta_owned, path) = (
            self.engine.clone(),
            self.group,
            meta.clone(),
            snapshot.path.clone(),
        );
        let installed = crate::engine::on_blocking_thread(move || {
            install_file(&engine, group, &meta_owned, &path)
        })
        .await;
        let header = match installed {
            Ok(header) => header,
            Err(e) => {
                if self
                    .engine
                    .get(CF_DATA, &group_key(self.group, &[TAG_HEADER]))?
                    .is_none()
                {
                    // The install got as far as dropping the old data: what is stored now is an
                    // empty replica, and the in-memory views must say so too.
                    self.header = Header::default();
                    self.reload_views()?;
                    self.publish();
                }
                return Err(e.into());
            }
        };
        self.header = header;
        self.reload_views()?;
        self.publish();
        let snapshots = self.snapshots.clone();
        crate::engine::on_blocking_thread(move || snapshots.promote(&snapshot.path)).await?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        let snapshots = self.snapshots.clone();
        if let Some((meta, snapshot)) =
            crate::engine::on_blocking_thread(move || snapshots.current()).await?
        {
            return Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
                meta,
                snapshot,
            }));
        }
        // A region made by a split has a purged log but no snapshot yet; a follower that needs it
        // gets one built now rather than a replication error.
        if self.header.applied.is_some() {
            let mut builder = self.get_snapshot_builder().await;
            return Ok(Some(builder.build_snapshot().await?));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::GroupKind;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;

    fn append(index: u64, n: u32) -> openraft::alias::EntryOf<TypeConfig> {
        let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
        openraft::alias::EntryOf::<TypeConfig>::new_normal(
            openraft::LogId::new(lid, index),
            Request::Append {
                batch: bytes::Bytes::from(vec![index as u8; 100]),
                count: n,
                max_timestamp_ms: index as i64,
                producer: None,
            },
        )
    }

    async fn apply_all(sm: &mut StateMachine, entries: Vec<openraft::alias::EntryOf<TypeConfig>>) {
        let stream = futures::stream::iter(entries.into_iter().map(|e| Ok((e, None))));
        sm.apply(stream).await.unwrap();
    }

    fn partition() -> GroupKind {
        GroupKind::Partition {
            topic: "t".into(),
            partition: 0,
        }
    }

    fn state(sm: &StateMachine) -> PartitionState {
        match sm.watch() {
            GroupWatch::Partition(rx) => *rx.borrow(),
            _ => unreachable!("partition group"),
        }
    }

    #[tokio::test]
    async fn partition_applies_snapshots_installs_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("a")).unwrap();
        let snaps = dir.path().join("snap-a");
        let mut sm = StateMachine::open(engine.clone(), 5, &partition(), &snaps).unwrap();
        apply_all(&mut sm, (1..=10).map(|i| append(i, 3)).collect()).await;
        assert_eq!(state(&sm).next_offset, 30);
        let got = partition::read_batches(&engine, 5, 7, 30, usize::MAX).unwrap();
        assert_eq!(
            got.first().map(|b| b.base_offset),
            Some(6),
            "batch holding offset 7"
        );
        assert_eq!(got.len(), 8);

        // Retention drops whole batches from the front.
        let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
        let trim = openraft::alias::EntryOf::<TypeConfig>::new_normal(
            openraft::LogId::new(lid, 11),
            Request::Trim { before: 9 },
        );
        apply_all(&mut sm, vec![trim]).await;
        assert_eq!(state(&sm).earliest, 9);
        assert_eq!(state(&sm).bytes, 700);

        let mut builder = sm.get_snapshot_builder().await;
        let snap = builder.build_snapshot().await.unwrap();
        assert_eq!(snap.meta.last_log_id.unwrap().index, 11);

        // A fresh replica installs it and serves the same data.
        let engine_b = Engine::open(&dir.path().join("b")).unwrap();
        let mut sm_b = StateMachine::open(
            engine_b.clone(),
            5,
            &partition(),
            &dir.path().join("snap-b"),
        )
        .unwrap();
        let copy = dir.path().join("incoming.snap");
        std::fs::copy(&snap.snapshot.path, &copy).unwrap();
        sm_b.install_snapshot(&snap.meta, SnapshotData { path: copy })
            .await
            .unwrap();
        assert_eq!(state(&sm_b), state(&sm));
        let a = partition::read_batches(&engine, 5, 9, 30, usize::MAX).unwrap();
        let b = partition::read_batches(&engine_b, 5, 9, 30, usize::MAX).unwrap();
        assert_eq!(a, b);
        assert_eq!(sm_b.applied_state().await.unwrap().0.unwrap().index, 11);
        assert!(sm_b.get_current_snapshot().await.unwrap().is_some());

        // Restart: the applied index and data come back from disk, so nothing is applied twice.
        drop(sm_b);
        drop(engine_b);
        let engine_b = Engine::open(&dir.path().join("b")).unwrap();
        let sm_b =
            StateMachine::open(engine_b, 5, &partition(), &dir.path().join("snap-b")).unwrap();
        assert_eq!(state(&sm_b).next_offset, 30);
        assert_eq!(state(&sm_b).earliest, 9);
    }

    /// Index in `file` of the first run of 20 bytes equal to `b` (inside a batch written by
    /// [`append`]).
    fn find_run(file: &[u8], b: u8) -> usize {
        file.windows(20)
            .position(|w| w.iter().all(|x| *x == b))
            .expect("batch bytes in the snapshot file")
    }

    /// Keys of `group` in the data column family.
    fn data_keys(engine: &Engine, group: u64) -> usize {
        let mut n = 0;
        engine
            .scan(
                CF_DATA,
                &group.to_be_bytes(),
                &(group + 1).to_be_bytes(),
                |_, _| {
                    n += 1;
                    Ok(true)
                },
            )
            .unwrap();
        n
    }

    #[tokio::test]
    async fn torn_or_corrupt_snapshots_are_refused_and_change_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("a")).unwrap();
        let mut sm = StateMachine::open(engine, 5, &partition(), &dir.path().join("sa")).unwrap();
        apply_all(&mut sm, (1..=10).map(|i| append(i, 3)).collect()).await;
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let good = std::fs::read(&snap.snapshot.path).unwrap();

        let engine_b = Engine::open(&dir.path().join("b")).unwrap();
        let mut b =
            StateMachine::open(engine_b.clone(), 5, &partition(), &dir.path().join("sb")).unwrap();
        apply_all(&mut b, (1..=3).map(|i| append(i, 3)).collect()).await;
        let before = partition::read_batches(&engine_b, 5, 0, 9, usize::MAX).unwrap();

        // A flipped bit inside a batch, and a file cut off right after a whole row (a transfer
        // or a write that stopped early).
        let mut flipped = good.clone();
        flipped[find_run(&good, 7) + 3] ^= 0x01;
        let cut = good[..find_run(&good, 5) + 100].to_vec();
        for (what, bytes) in [("flipped", flipped), ("cut", cut)] {
            let path = dir.path().join(format!("{what}.snap"));
            std::fs::write(&path, &bytes).unwrap();
            let r = b.install_snapshot(&snap.meta, SnapshotData { path }).await;
            assert!(r.is_err(), "{what} snapshot installed");
            assert_eq!(
                b.applied_state().await.unwrap().0.map(|l| l.index),
                Some(3),
                "{what}"
            );
            assert_eq!(state(&b).next_offset, 9, "{what}");
            let now = partition::read_batches(&engine_b, 5, 0, 9, usize::MAX).unwrap();
            assert_eq!(now, before, "{what}: data changed");
        }
        // The intact file installs.
        let path = dir.path().join("good.snap");
        std::fs::write(&path, &good).unwrap();
        b.install_snapshot(&snap.meta, SnapshotData { path })
            .await
            .unwrap();
        assert_eq!(state(&b).next_offset, 30);
    }

    #[tokio::test]
    async fn leftover_snapshot_files_are_removed_when_a_group_opens() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let root = dir.path().join("snaps");
        let sd = SnapshotDir::new(&root, 5);
        let leftover = sd.temp_path().unwrap();
        std::fs::write(&leftover, b"half a snapshot").unwrap();
        let _sm = StateMachine::open(engine, 5, &partition(), &root).unwrap();
        assert!(!leftover.exists());
    }

    /// Builds a 20-entry partition snapshot in its own engine, as a leader would send it.
    async fn leader_snapshot(dir: &Path) -> (SnapshotMetaOf<TypeConfig>, std::path::PathBuf) {
        let engine = Engine::open(&dir.join("leader")).unwrap();
        let mut sm = StateMachine::open(engine, 5, &partition(), &dir.join("sl")).unwrap();
        apply_all(&mut sm, (1..=20).map(|i| append(i, 3)).collect()).await;
        let snap = sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        let copy = dir.join("sent.snap");
        std::fs::copy(&snap.snapshot.path, &copy).unwrap();
        (snap.meta, copy)
    }

    /// A follower replica of group 5 holding 10 entries, a vote, and a log purged up to 4.
    async fn follower(dir: &Path) -> (Engine, VoteOf) {
        let engine = Engine::open(&dir.join("f")).unwrap();
        let mut sm = StateMachine::open(engine.clone(), 5, &partition(), &dir.join("sf")).unwrap();
        apply_all(&mut sm, (1..=10).map(|i| append(i, 3)).collect()).await;
        use openraft::storage::RaftLogStorage;
        let mut log = crate::LogStore::new(engine.clone(), 5);
        let vote = openraft::alias::VoteOf::<TypeConfig>::new(7, 2);
        log.save_vote(&vote).await.unwrap();
        log.purge(append(4, 3).log_id).await.unwrap();
        (engine, vote)
    }

    type VoteOf = openraft::alias::VoteOf<TypeConfig>;

    /// Reopens the follower as the node does after a crash and checks it is either at its old
    /// state or empty (and so gets the snapshot again), with its vote intact.
    async fn after_crash(dir: &Path, vote: &VoteOf) -> Option<u64> {
        let engine = Engine::open(&dir.join("f")).unwrap();
        let mut sm =
            StateMachine::recover(engine.clone(), 5, &partition(), &dir.join("sf")).unwrap();
        use openraft::storage::{RaftLogReader, RaftLogStorage};
        let mut log = crate::LogStore::new(engine.clone(), 5);
        assert_eq!(
            log.read_vote().await.unwrap().as_ref(),
            Some(vote),
            "vote lost"
        );
        let applied = sm.applied_state().await.unwrap().0.map(|l| l.index);
        let purged = log.get_log_state().await.unwrap().last_purged_log_id;
        assert!(
            purged.map(|l| l.index) <= applied,
            "log purged to {purged:?} past applied {applied:?}"
        );
        match applied {
            Some(10) => {
                assert_eq!(state(&sm).next_offset, 30);
                assert_eq!(
                    partition::read_batches(&engine, 5, 0, 30, usize::MAX)
                        .unwrap()
                        .len(),
                    10
                );
            }
            Some(20) => assert_eq!(state(&sm).next_offset, 60),
            None => {
                assert_eq!(data_keys(&engine, 5), 0, "partial data left");
                assert_eq!(state(&sm).next_offset, 0);
            }
            other => panic!("replica at {other:?}: neither its old state, the new one, nor empty"),
        }
        applied
    }

    #[tokio::test]
    async fn an_install_cut_short_by_a_crash_leaves_an_empty_replica_with_its_vote() {
        // Crash after the old data is dropped and part of the rows is written.
        let dir = tempfile::tempdir().unwrap();
        let (_, sent) = leader_snapshot(dir.path()).await;
        let (engine, vote) = follower(dir.path()).await;
        begin_install(&engine, 5).unwrap();
        let mut b = WriteBatch::default();
        let mut n = 0;
        read_rows(&sent, |k, v| {
            if n < 4 {
                b.put_cf(engine.cf(CF_DATA)?, k, v);
            }
            n += 1;
            Ok(())
        })
        .unwrap();
        engine.write_sync(b).unwrap();
        drop(engine);
        assert_eq!(after_crash(dir.path(), &vote).await, None);

        // Crash after every row is written, before the header.
        let dir = tempfile::tempdir().unwrap();
        let (_, sent) = leader_snapshot(dir.path()).await;
        let (engine, vote) = follower(dir.path()).await;
        begin_install(&engine, 5).unwrap();
        write_install_rows(&engine, 5, &sent).unwrap();
        engine.db().flush_wal(true).unwrap();
        drop(engine);
        assert_eq!(after_crash(dir.path(), &vote).await, None);

        // Crash right after the header: the new state is there in full.
        let dir = tempfile::tempdir().unwrap();
        let (meta, sent) = leader_snapshot(dir.path()).await;
        let (engine, vote) = follower(dir.path()).await;
        let header = install_file(&engine, 5, &meta, &sent).unwrap();
        assert_eq!(header.applied.map(|l| l.index), Some(20));
        drop(engine);
        assert_eq!(after_crash(dir.path(), &vote).await, Some(20));
    }

    #[tokio::test]
    async fn a_replica_behind_its_purged_log_is_reset_but_keeps_its_vote() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, vote) = follower(dir.path()).await;
        // The data (header included) is lost, the purged log is not.
        let mut b = WriteBatch::default();
        engine.delete_group_range(&mut b, CF_DATA, 5).unwrap();
        engine.write_sync(b).unwrap();
        drop(engine);
        assert_eq!(after_crash(dir.path(), &vote).await, None);
        let engine = Engine::open(&dir.path().join("f")).unwrap();
        use openraft::storage::RaftLogStorage;
        let st = crate::LogStore::new(engine, 5)
            .get_log_state()
            .await
            .unwrap();
        assert!(st.last_log_id.is_none() && st.last_purged_log_id.is_none());
    }

    #[tokio::test]
    async fn retried_batches_of_idempotent_producers_are_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(engine.clone(), 2, &partition(), dir.path()).unwrap();
        let req = |seq: u64| Request::Append {
            batch: bytes::Bytes::from_static(b"x"),
            count: 10,
            max_timestamp_ms: 0,
            producer: Some(crate::types::ProducerSeq {
                producer_id: 42,
                sequence: seq,
            }),
        };
        let mut b = WriteBatch::default();
        assert!(
            matches!(
                sm.apply_one(1, &req(1), &mut b).unwrap(),
                Response::OutOfOrder(_)
            ),
            "a new producer's batch 1 waits for its batch 0"
        );
        let first = sm.apply_one(1, &req(0), &mut b).unwrap();
        assert!(matches!(
            sm.apply_one(2, &req(2), &mut b).unwrap(),
            Response::OutOfOrder(_)
        ));
        let second = sm.apply_one(2, &req(1), &mut b).unwrap();
        let retry = sm.apply_one(3, &req(0), &mut b).unwrap();
        assert_eq!(first, retry, "a retried batch gets its original offsets");
        assert_eq!(
            second,
            Response::Appended {
                base_offset: 10,
                count: 10
            }
        );
        engine.write(b).unwrap();
        assert_eq!(sm.header.partition.next_offset, 20);
        // The de-duplication window survives a restart.
        drop(sm);
        let mut sm = StateMachine::open(engine, 2, &partition(), dir.path()).unwrap();
        let mut b = WriteBatch::default();
        assert_eq!(sm.apply_one(4, &req(1), &mut b).unwrap(), second);
    }

    fn region_kind() -> GroupKind {
        GroupKind::Region {
            table: "t".into(),
            start: Vec::new(),
            end: Vec::new(),
            epoch: 0,
            parent: None,
            origin: (Vec::new(), Vec::new(), 0),
        }
    }

    fn entry(index: u64, req: Request) -> openraft::alias::EntryOf<TypeConfig> {
        let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
        openraft::alias::EntryOf::<TypeConfig>::new_normal(openraft::LogId::new(lid, index), req)
    }

    fn put(k: &str, v: &str) -> KvOp {
        KvOp::Put {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    #[tokio::test]
    async fn regions_apply_writes_cas_and_splits_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let mut sm = StateMachine::open(engine.clone(), 7, &region_kind(), dir.path()).unwrap();
        // 100 rows, a CAS that must see them within the same apply call, a split at k050.
        let log = || {
            let ops = (0..100).map(|i| put(&format!("k{i:03}"), "v")).collect();
            vec![
                entry(
                    1,
                    Request::KvWrite {
                        ops,
                        condition: None,
                    },
                ),
                // In the same apply call: a CAS sees the write before it.
                entry(
                    2,
                    Request::KvWrite {
                        ops: vec![put("k000", "w")],
                        condition: Some(crate::types::KvCondition {
                            key: b"k000".to_vec(),
                            expect: Expect::Version(1),
                        }),
                    },
                ),
                entry(
                    3,
                    Request::Split {
                        split_key: b"k050".to_vec(),
                        child: 8,
                        epoch: 0,
                    },
                ),
            ]
        };
        apply_all(&mut sm, log()).await;
        let k = |s: &str| s.as_bytes().to_vec();
        // A replica that starts empty after the split (the catalog now shows the narrower range)
        // replays the same log from its origin and ends in the same state.
        let late_engine = Engine::open(&dir.path().join("late")).unwrap();
        let narrowed = GroupKind::Region {
            table: "t".into(),
            start: Vec::new(),
            end: k("k050"),
            epoch: 1,
            parent: None,
            origin: (Vec::new(), Vec::new(), 0),
        };
        let mut late =
            StateMachine::open(late_engine.clone(), 7, &narrowed, &dir.path().join("s2")).unwrap();
        apply_all(&mut late, log()).await;
        assert_eq!(
            region::load_state(&late_engine, 7).unwrap(),
            region::load_state(&engine, 7).unwrap()
        );
        assert!(region::get_rows(&late_engine, 8, &[k("k099")])
            .unwrap()
            .unwrap()[0]
            .is_some());
        let got = region::get_rows(&engine, 7, &[k("k000"), k("k049")])
            .unwrap()
            .unwrap();
        assert_eq!(
            got[0].as_ref().map(|r| (r.version, r.value.clone())),
            Some((2, k("w")))
        );
        assert!(got[1].is_some());
        // The parent no longer holds the keys past the split; the child does, from a purged log.
        assert!(region::get_rows(&engine, 7, &[k("k050")]).unwrap().is_err());
        let child = region::get_rows(&engine, 8, &[k("k050"), k("k099")])
            .unwrap()
            .unwrap();
        assert!(child.iter().all(|r| r.is_some()));
        let st = region::load_state(&engine, 7).unwrap().unwrap();
        assert_eq!((st.end.clone(), st.epoch), (k("k050"), 1));
        let mut child_log = crate::LogStore::new(engine.clone(), 8);
        use openraft::storage::RaftLogStorage;
        let ls = child_log.get_log_state().await.unwrap();
        assert_eq!(
            ls.last_purged_log_id.map(|l| l.index),
            Some(REGION_INIT_INDEX)
        );
        let mut child_sm =
            StateMachine::open(engine.clone(), 8, &region_kind(), dir.path()).unwrap();
        let (applied, membership) = child_sm.applied_state().await.unwrap();
        assert_eq!(applied.map(|l| l.index), Some(REGION_INIT_INDEX));
        assert_eq!(
            membership.log_id().map(|l| l.index),
            Some(REGION_INIT_INDEX)
        );
        // The child can hand a follower a snapshot even though it never built one.
        assert!(child_sm.get_current_snapshot().await.unwrap().is_some());

        // Scans cross nothing: each region answers for its own range and says where to go on.
        let page = region::scan_rows(&engine, 7, b"k040", b"", 1000, usize::MAX, false)
            .unwrap()
            .unwrap();
        assert_eq!(page.rows.len(), 10);
        assert!(page.more);
        assert_eq!(page.resume, k("k050"));
        let page = region::scan_rows(&engine, 8, b"k050", b"", 1000, usize::MAX, true)
            .unwrap()
            .unwrap();
        assert_eq!(page.rows.first().map(|r| r.key.clone()), Some(k("k099")));
        assert_eq!(page.rows.len(), 50);
        assert!(!page.more);
        let page = region::scan_rows(&engine, 7, b"", b"k050", 5, usize::MAX, true)
            .unwrap()
            .unwrap();
        assert_eq!(page.rows.len(), 5);
        assert_eq!(page.resume, k("k045"));

        // A failed CAS and a write outside the range change nothing.
        let mut b = WriteBatch::default();
        let r = sm
            .apply_one(
                4,
                &Request::KvWrite {
                    ops: vec![put("k001", "x")],
                    condition: Some(crate::types::KvCondition {
                        key: b"k001".to_vec(),
                        expect: Expect::Version(99),
                    }),
                },
                &mut b,
            )
            .unwrap();
        assert!(matches!(
            r,
            Response::CasFailed {
                current: Some((1, _))
            }
        ));
        let r = sm
            .apply_one(
                4,
                &Request::KvWrite {
                    ops: vec![put("k001", "x"), put("k077", "x")],
                    condition: None,
                },
                &mut b,
            )
            .unwrap();
        assert!(matches!(r, Response::NotInRegion(_)));
        // A split planned at an epoch the region has left (an earlier leader's plan) is refused.
        let r = sm
            .apply_one(
                4,
                &Request::Split {
                    split_key: b"k020".to_vec(),
                    child: 9,
                    epoch: 0,
                },
                &mut b,
            )
            .unwrap();
        assert!(matches!(r, Response::Rejected(_)));
        assert_eq!(b.len(), 0);
    }

    #[tokio::test]
    async fn commands_of_another_kind_are_rejected_without_effect() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(dir.path()).unwrap();
        let mut sm = StateMachine::open(engine, 1, &GroupKind::Offsets, dir.path()).unwrap();
        let mut b = WriteBatch::default();
        let r = sm
            .apply_one(1, &Request::Trim { before: 3 }, &mut b)
            .unwrap();
        assert!(matches!(r, Response::Rejected(_)));
        assert_eq!(b.len(), 0);
    }
}
