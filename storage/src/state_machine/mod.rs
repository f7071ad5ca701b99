//! The state machine of one Raft group.
//!
//! A group holds one of four kinds of state (see [`GroupKind`]), each in its own module behind
//! the [`GroupState`] trait: the catalog (`catalog_group`), a log partition (`partition_group`),
//! consumer-group offsets (`offsets_group`) or a region of a table (`region_group`). What they
//! share lives here: the apply loop, which writes an apply call's changes and the new applied log
//! id in one RocksDB write batch so a restart never applies an entry twice; the header; and
//! snapshots (`build` writes them, `install` installs them crash-safely). The node watches a
//! group's state through the [`GroupWatch`] it gets before handing the state machine to openraft.

mod build;
mod catalog_group;
mod install;
mod offsets_group;
mod partition_group;
mod region_group;
#[cfg(test)]
mod tests;
mod transfer;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use crate::engine::WriteBatch;
use futures::{Stream, TryStreamExt};
use openraft::alias::{LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use tokio::sync::watch;

pub use build::SnapshotBuilder;
pub use offsets_group::OffsetKey;
pub use partition_group::next_sequence;
pub use region_group::REGION_INIT_INDEX;
pub use transfer::{kept_below, write_transfer};

use crate::catalog::{Catalog, GroupKind};
use crate::engine::{group_key, CF_DATA};
use crate::partition::PartitionState;
use crate::region::RegionState;
use crate::snapshot::{PinnedRows, SnapshotData, SnapshotDir};
use crate::{decode, encode, Engine, Request, Response, StorageError, TypeConfig};
use build::CapturedRows;
use install::{clear_interrupted_install, install_file};

use crate::header::{header_key, Header};

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

/// What an apply of one entry can reach.
struct ApplyCx<'a> {
    engine: &'a Engine,
    group: u64,
    /// The entry's log index.
    index: u64,
    /// The term of the leader that wrote the entry.
    term: u64,
    /// The header, written with the apply call's changes.
    header: &'a mut Header,
    /// The changes of the whole apply call, written at once.
    batch: &'a mut WriteBatch,
}

/// What a snapshot of a group copies, captured while no apply can run.
enum Capture {
    /// Small states, copied in memory.
    Rows(Vec<(Vec<u8>, Vec<u8>)>),
    /// A partition: its (append-only) batches below this offset, and these rows.
    PartitionBelow(u64, Vec<(Vec<u8>, Vec<u8>)>),
    /// Rows of this key range change in place: the snapshot pins the engine's view of them
    /// (and of the header) and has no file; the rows are written out only when it is sent.
    Pinned(Vec<u8>, Vec<u8>),
}

/// One kind of group's state: how it applies its commands, what it shows the node, and what a
/// snapshot of it copies.
trait GroupState: Send + Sync {
    /// Applies one command, adding its writes to `cx.batch`.
    fn apply(&mut self, cx: &mut ApplyCx<'_>, req: &Request) -> Result<Response, StorageError>;

    /// True when applying `req` reads rows from RocksDB, so the writes of the entries before it
    /// in the same apply call must be written first.
    fn reads_stored_rows(&self, _req: &Request) -> bool {
        false
    }

    /// Shows the node the state after an apply call, once its writes are in RocksDB.
    fn publish(&mut self, header: &Header);

    /// Reloads the in-memory state from what the engine holds (after a snapshot install).
    fn reload(&mut self, engine: &Engine, group: u64) -> Result<(), StorageError>;

    /// A handle to observe the published state.
    fn watch(&self) -> GroupWatch;

    /// What a snapshot of the state as it is now must copy.
    fn capture(&self, group: u64, header: &Header) -> Result<Capture, StorageError>;

    /// True for a group whose snapshots are pinned views of the engine ([`Capture::Pinned`]):
    /// taking one costs the same at any size, so one is taken whenever a snapshot is asked for
    /// and none is kept on disk.
    fn pins_snapshots(&self) -> bool {
        false
    }
}

/// The answer to a command sent to a group of another kind.
fn wrong_kind(group: u64, req: &Request) -> Response {
    Response::Rejected(format!(
        "group {group} cannot apply {req}: command does not match the group's kind"
    ))
}

/// The state machine of one group.
pub struct StateMachine {
    engine: Engine,
    group: u64,
    header: Header,
    state: Box<dyn GroupState>,
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
        let header: Header = match engine.get(CF_DATA, &header_key(group))? {
            Some(v) => decode(&v)?,
            None => Header::default(),
        };
        let state: Box<dyn GroupState> = match kind {
            GroupKind::Metadata => Box::new(catalog_group::CatalogGroup::open(&engine, group)?),
            GroupKind::Partition { .. } => Box::new(partition_group::PartitionGroup::open(
                &engine, group, &header,
            )?),
            GroupKind::Offsets => Box::new(offsets_group::OffsetsGroup::open(&engine, group)?),
            GroupKind::Region { origin, .. } => {
                Box::new(region_group::RegionGroup::open(&engine, group, origin)?)
            }
        };
        if state.pins_snapshots() {
            // Its snapshots are taken when asked for: a file kept from an earlier version would
            // only hold disk.
            snapshots.destroy()?;
        }
        Ok(StateMachine {
            engine,
            group,
            header,
            state,
            snapshots,
        })
    }

    /// Pins the group's header and its rows in `[from, to)` as they are now, as a snapshot at the
    /// applied log id; called while no apply runs, so the two agree.
    fn pin_rows(&self, from: Vec<u8>, to: Vec<u8>) -> Result<Box<PinnedRows>, StorageError> {
        let header_key = header_key(self.group);
        if header_key.as_slice() >= from.as_slice() {
            return Err(StorageError::Corrupt(format!(
                "group {}: snapshot rows start before its header",
                self.group
            )));
        }
        Ok(Box::new(PinnedRows {
            meta: build::snapshot_meta(&self.header),
            view: self.engine.pin(CF_DATA, &header_key, &to)?,
            header_key,
            rows: (from, to),
        }))
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
        crate::LogStore::clear_keeping_vote(&mut b, group);
        b.delete_group(CF_DATA, group);
        engine.write_sync(b)?;
        SnapshotDir::new(snapshot_root, group).destroy()
    }

    /// A handle to observe the applied state.
    pub fn watch(&self) -> GroupWatch {
        self.state.watch()
    }

    /// Deletes everything of the group's replica — Raft log, Raft metadata, data — in one write
    /// batch, then its snapshots (the replica is being dropped). One batch, so that another
    /// group's apply (a parent seeding a split region) can never land between the deletions and
    /// leave a log without the data it stands for.
    pub fn destroy(engine: &Engine, group: u64, snapshot_root: &Path) -> Result<(), StorageError> {
        let mut b = WriteBatch::default();
        b.delete_group(crate::engine::CF_LOG, group);
        b.delete_group(crate::engine::CF_META, group);
        b.delete_group(CF_DATA, group);
        engine.write_sync(b)?;
        SnapshotDir::new(snapshot_root, group).destroy()
    }

    fn put_header(&self, b: &mut WriteBatch) -> Result<(), StorageError> {
        b.put(CF_DATA, header_key(self.group), encode(&self.header)?);
        Ok(())
    }

    /// Writes the header with `b` and shows the node the new state.
    fn commit(&mut self, mut b: WriteBatch) -> Result<(), StorageError> {
        self.put_header(&mut b)?;
        self.engine.write(b)?;
        self.state.publish(&self.header);
        Ok(())
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
        let started = std::time::Instant::now();
        let mut b = WriteBatch::default();
        let mut replies = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            if let EntryPayload::Normal(req) = &entry.payload {
                if self.state.reads_stored_rows(req) && !b.is_empty() {
                    self.commit(std::mem::take(&mut b))?;
                }
            }
            self.header.applied = Some(entry.log_id);
            let resp = match &entry.payload {
                EntryPayload::Blank => Response::Ok,
                EntryPayload::Normal(req) => {
                    let mut cx = ApplyCx {
                        engine: &self.engine,
                        group: self.group,
                        index: entry.log_id.index,
                        term: entry.log_id.committed_leader_id().term,
                        header: &mut self.header,
                        batch: &mut b,
                    };
                    self.state.apply(&mut cx, req)?
                }
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
        self.commit(b)?;
        // Committed writes are answered only once applied: part of every write's latency.
        metrics::histogram!("weir_raft_apply_seconds").record(started.elapsed().as_secs_f64());
        for (r, resp) in replies {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        let rows = match self.state.capture(self.group, &self.header) {
            // Pinned while the state machine is borrowed, so no apply lands between the header
            // and the rows it labels.
            Ok(Capture::Pinned(from, to)) => match self.pin_rows(from, to) {
                Ok(pinned) => CapturedRows::Pinned(pinned),
                Err(e) => CapturedRows::Failed(e),
            },
            Ok(captured) => CapturedRows::Captured(captured),
            Err(e) => CapturedRows::Failed(e),
        };
        SnapshotBuilder {
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
        let SnapshotData::File(path) = snapshot else {
            // A pinned snapshot is this replica's own state, taken to be sent.
            return Err(io::Error::other(format!(
                "group {}: only a received snapshot file can be installed",
                self.group
            )));
        };
        let (engine, group, meta_owned, received) =
            (self.engine.clone(), self.group, meta.clone(), path.clone());
        let held = self.header.partition.next_offset;
        let installed = crate::engine::on_blocking_thread(move || {
            install_file(&engine, group, &meta_owned, &received, held)
        })
        .await;
        let header = match installed {
            Ok(header) => header,
            Err(e) => {
                if self.engine.get(CF_DATA, &header_key(self.group))?.is_none() {
                    // The install got as far as dropping the old data: what is stored now is an
                    // empty replica, and the in-memory views must say so too.
                    self.header = Header::default();
                    self.state.reload(&self.engine, self.group)?;
                    self.state.publish(&self.header);
                }
                return Err(e.into());
            }
        };
        tracing::info!(
            group = self.group,
            applied = ?header.applied,
            "snapshot installed"
        );
        self.header = header;
        self.state.reload(&self.engine, self.group)?;
        self.state.publish(&self.header);
        if matches!(
            self.state.capture(self.group, &self.header),
            Ok(Capture::PartitionBelow(..))
        ) {
            // The received file holds batches now in the engine: the replica's own snapshot
            // refers to them instead of keeping a second copy (the file is removed unused).
            use openraft::storage::RaftSnapshotBuilder;
            self.get_snapshot_builder().await.build_snapshot().await?;
            return Ok(());
        }
        if self.state.pins_snapshots() {
            // Its rows are in the engine now; its next snapshot pins them there.
            crate::engine::on_blocking_thread(move || {
                std::fs::remove_file(&path)?;
                Ok(())
            })
            .await?;
            return Ok(());
        }
        let snapshots = self.snapshots.clone();
        crate::engine::on_blocking_thread(move || snapshots.promote(&path)).await?;
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, SnapshotData>>, io::Error> {
        if self.state.pins_snapshots() {
            // The state as it is now: openraft asks at start (and gets the applied id, cheaply)
            // and when a replica needs a snapshot (which then holds everything applied so far).
            if self.header.applied.is_none() {
                return Ok(None);
            }
            let Capture::Pinned(from, to) = self.state.capture(self.group, &self.header)? else {
                return Err(io::Error::other(format!(
                    "group {}: a pinned snapshot was asked of a group that copies its state",
                    self.group
                )));
            };
            let pinned = self.pin_rows(from, to)?;
            return Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
                meta: pinned.meta.clone(),
                snapshot: SnapshotData::Pinned(pinned),
            }));
        }
        let snapshots = self.snapshots.clone();
        if let Some((meta, snapshot)) =
            crate::engine::on_blocking_thread(move || snapshots.current()).await?
        {
            return Ok(Some(SnapshotOf::<TypeConfig, SnapshotData> {
                meta,
                snapshot,
            }));
        }
        // A group whose log was purged without a snapshot on disk (a region made by a split starts
        // so; a discarded corrupt file leaves one so) builds one now, so a follower that needs it
        // gets a snapshot rather than a replication error. A group that still has its whole log
        // needs none: building one would copy all its data, at every start for a partition.
        if self.header.applied.is_some()
            && crate::LogStore::last_purged(&self.engine, self.group)?.is_some()
        {
            let mut builder = self.get_snapshot_builder().await;
            use openraft::storage::RaftSnapshotBuilder;
            return Ok(Some(builder.build_snapshot().await?));
        }
        Ok(None)
    }
}
