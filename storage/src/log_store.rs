//! openraft log storage for one Raft group, over the node's shared engine.
//!
//! Entries live in [`CF_LOG`] under `group | 0 | index`; the vote, the committed log id and the last
//! purged log id live in [`CF_META`]. Appends are written unsynced and made durable by the engine's
//! group commit, which completes openraft's flush callback after the shared fsync.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};

use crate::engine::WriteBatch;
use openraft::alias::{EntryOf, LogIdOf, VoteOf};
use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;

use crate::engine::{group_key, group_key_u64, CF_LOG, CF_META};
use crate::log_cache::RecentEntries;
use crate::{decode, encode, Engine, StorageError, TypeConfig};

const TAG_ENTRY: u8 = 0;
const META_VOTE: &[u8] = b"v";
const META_COMMITTED: &[u8] = b"c";
const META_PURGED: &[u8] = b"p";

/// The Raft log of one group; cheap to clone (the reader is a clone, sharing its cache of the
/// entries appended last).
///
/// Nothing else may change the group's entries in the engine while a log store of it is in use
/// ([`LogStore::clear_keeping_vote`] and `StateMachine::destroy` run while the group is closed).
#[derive(Debug, Clone)]
pub struct LogStore {
    engine: Engine,
    group: u64,
    recent: RecentEntries,
}

impl LogStore {
    /// The log of `group` in `engine`.
    pub fn new(engine: Engine, group: u64) -> LogStore {
        let recent = RecentEntries::new(engine.log_cache_bytes());
        LogStore {
            engine,
            group,
            recent,
        }
    }

    /// The stored entries in `[start, end)`, read from the engine.
    fn read_stored(&self, start: u64, end: u64) -> Result<Vec<EntryOf<TypeConfig>>, StorageError> {
        let mut out = Vec::new();
        if start >= end {
            return Ok(out);
        }
        self.engine.scan(
            CF_LOG,
            &self.entry_key(start),
            &self.entry_key(end),
            |_, v| {
                out.push(decode::<EntryOf<TypeConfig>>(v)?);
                Ok(true)
            },
        )?;
        Ok(out)
    }

    fn entry_key(&self, index: u64) -> Vec<u8> {
        group_key_u64(self.group, TAG_ENTRY, index)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        tag: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.engine.get(CF_META, &group_key(self.group, tag))? {
            Some(v) => Ok(Some(decode(&v)?)),
            None => Ok(None),
        }
    }

    fn last_log_id(&self) -> Result<Option<LogIdOf<TypeConfig>>, StorageError> {
        let from = self.entry_key(0);
        let to = group_key(self.group, &[TAG_ENTRY + 1]);
        match self.engine.last_in(CF_LOG, &from, &to)? {
            Some((_, v)) => {
                let e: EntryOf<TypeConfig> = decode(&v)?;
                Ok(Some(e.log_id))
            }
            None => Ok(None),
        }
    }

    /// Adds to `b` the state of a log that starts after `log_id`, as if everything up to it had been
    /// applied and purged: a region made by a split starts so, and replicas that did not apply the
    /// split must get its data from a snapshot.
    pub fn seed_purged(
        b: &mut WriteBatch,
        group: u64,
        log_id: &LogIdOf<TypeConfig>,
    ) -> Result<(), StorageError> {
        b.put(CF_META, group_key(group, META_PURGED), encode(log_id)?);
        Ok(())
    }

    /// The last purged log id of `group`.
    pub fn last_purged(
        engine: &Engine,
        group: u64,
    ) -> Result<Option<LogIdOf<TypeConfig>>, StorageError> {
        LogStore::new(engine.clone(), group).get_meta(META_PURGED)
    }

    /// Adds to `b` the deletion of the group's log entries and its committed and purged ids, but
    /// not its vote: a replica that is reset stays a member, and must remember whom it voted for.
    pub fn clear_keeping_vote(b: &mut WriteBatch, group: u64) {
        b.delete_group(CF_LOG, group);
        b.delete(CF_META, group_key(group, META_COMMITTED));
        b.delete(CF_META, group_key(group, META_PURGED));
    }
}

fn bounds(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let (start, end) = bounds(&range);
        if start >= end {
            return Ok(Vec::new());
        }
        // The cache holds the log's last entries; only what lies below them is read back.
        let (cached, below) = self.recent.get(start, end);
        let mut out = self.read_stored(start, below)?;
        out.extend(cached);
        let mut expect = None;
        for e in &out {
            if let Some(x) = expect {
                if e.log_id.index != x {
                    return Err(StorageError::Corrupt(format!(
                        "group log has a hole: expected index {x}, found {}",
                        e.log_id.index
                    ))
                    .into());
                }
            }
            expect = Some(e.log_id.index + 1);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self.get_meta(META_VOTE)?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<TypeConfig>> = self.get_meta(META_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        let mut b = WriteBatch::default();
        b.put(CF_META, group_key(self.group, META_VOTE), encode(vote)?);
        Ok(self.engine.write_sync(b)?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Not synced: a lost `committed` only means re-applying fewer entries at start-up.
        let mut b = WriteBatch::default();
        b.put(
            CF_META,
            group_key(self.group, META_COMMITTED),
            encode(&committed)?,
        );
        Ok(self.engine.write(b)?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        Ok(self
            .get_meta::<Option<LogIdOf<TypeConfig>>>(META_COMMITTED)?
            .flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = CF_LOG;
        let started = std::time::Instant::now();
        let mut b = WriteBatch::default();
        let mut written = Vec::new();
        for e in entries {
            let bytes = encode(&e)?;
            let size = bytes.len();
            b.put(cf, self.entry_key(e.log_id.index), bytes);
            written.push((e, size));
        }
        self.engine.write(b)?;
        self.recent.appended(written);
        self.engine.sync(Box::new(move |r| {
            // A leader counts a proposal only once this is done, and a follower answers an append
            // only then: the local share of every acknowledged write's latency.
            metrics::histogram!("weir_raft_log_flush_seconds")
                .record(started.elapsed().as_secs_f64());
            callback.io_completed(r.map_err(io::Error::from))
        }));
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(l) => l.index + 1,
            None => 0,
        };
        let mut b = WriteBatch::default();
        b.delete_range(
            CF_LOG,
            self.entry_key(from),
            group_key(self.group, &[TAG_ENTRY + 1]),
        );
        self.recent.truncated_after(from.checked_sub(1));
        Ok(self.engine.write_sync(b)?)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        // Delete only what the previous purge left: ranges that all start at 0 would pile up
        // overlapping tombstones that every later read of the log has to step over.
        let from = self
            .get_meta::<LogIdOf<TypeConfig>>(META_PURGED)?
            .map_or(0, |p| p.index + 1);
        let mut b = WriteBatch::default();
        b.put(
            CF_META,
            group_key(self.group, META_PURGED),
            encode(&log_id)?,
        );
        if from <= log_id.index {
            b.delete_range(
                CF_LOG,
                self.entry_key(from),
                self.entry_key(log_id.index + 1),
            );
        }
        self.recent.purged(log_id.index);
        Ok(self.engine.write(b)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Request;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;

    fn entry(term: u64, index: u64) -> EntryOf<TypeConfig> {
        let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(term, 1);
        EntryOf::<TypeConfig>::new_normal(
            openraft::LogId::new(lid, index),
            Request::Trim { before: index },
        )
    }

    async fn append(store: &mut LogStore, entries: Vec<EntryOf<TypeConfig>>) {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        store.append(entries, IOFlushed::signal(tx)).await.unwrap();
        rx.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn append_truncate_purge_and_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let engine = Engine::open(dir.path()).unwrap();
            let mut s = LogStore::new(engine.clone(), 3);
            // Another group's entries must never show up in this group's log.
            let mut other = LogStore::new(engine, 4);
            append(&mut other, (1..=5).map(|i| entry(1, i)).collect()).await;

            append(&mut s, (1..=10).map(|i| entry(1, i)).collect()).await;
            let got = s.try_get_log_entries(3..6).await.unwrap();
            assert_eq!(
                got.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
                vec![3, 4, 5]
            );

            s.truncate_after(Some(entry(1, 7).log_id)).await.unwrap();
            assert_eq!(
                s.get_log_state().await.unwrap().last_log_id.unwrap().index,
                7
            );

            s.purge(entry(1, 4).log_id).await.unwrap();
            let st = s.get_log_state().await.unwrap();
            assert_eq!(st.last_purged_log_id.unwrap().index, 4);
            assert_eq!(s.try_get_log_entries(0..100).await.unwrap().len(), 3);

            let vote = openraft::alias::VoteOf::<TypeConfig>::new(5, 2);
            s.save_vote(&vote).await.unwrap();
        }
        // Reopen: everything acknowledged is still there.
        let engine = Engine::open(dir.path()).unwrap();
        let mut s = LogStore::new(engine.clone(), 3);
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.unwrap().index, 7);
        assert_eq!(st.last_purged_log_id.unwrap().index, 4);
        assert_eq!(s.read_vote().await.unwrap().unwrap().leader_id().term, 5);
        assert_eq!(
            LogStore::new(engine.clone(), 4)
                .try_get_log_entries(..)
                .await
                .unwrap()
                .len(),
            5
        );

        // Purging everything leaves the purged id as the last log id.
        s.purge(entry(1, 7).log_id).await.unwrap();
        let st = s.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.unwrap().index, 7);
        // Dropping the replica takes its log and Raft metadata with it.
        crate::StateMachine::destroy(&engine, 3, dir.path()).unwrap();
        assert!(s.get_log_state().await.unwrap().last_log_id.is_none());
        assert!(s.read_vote().await.unwrap().is_none());
    }
}
