//! The last entries appended to a group's Raft log, kept decoded.
//!
//! Right after an entry is appended, openraft reads it back: to apply it, and on a leader once
//! per follower to replicate it. Reading it from RocksDB means a scan and a decode of every row
//! each time; the cache hands out clones instead, which are cheap because an entry's rows are
//! shared (`Request::KvWrite` holds them behind an `Arc`).
//!
//! The cache always holds a suffix of the log: the entries from its first index to the log's
//! last, with no gap. Appends extend it, truncations and purges cut it, and when it would grow
//! past its bounds it drops entries from the front (or, past the node's budget, empties), so a
//! read below its first index goes to RocksDB as before.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::alias::EntryOf;

use crate::TypeConfig;

/// Most encoded bytes of entries one group keeps decoded.
const GROUP_BYTES: usize = 16 << 20;
/// Most entries one group keeps decoded.
const GROUP_ENTRIES: usize = 1024;
/// Most encoded bytes of entries all the groups of a node keep decoded together.
pub const NODE_BYTES: usize = 256 << 20;

/// The decoded suffix of one group's log, shared by its log store and the readers cloned from it.
#[derive(Debug, Clone)]
pub struct RecentEntries {
    inner: Arc<Mutex<Recent>>,
}

#[derive(Debug)]
struct Recent {
    /// Entries in index order with their encoded size, the last one the log's last.
    entries: VecDeque<(EntryOf<TypeConfig>, usize)>,
    bytes: usize,
    /// Bytes kept by every group of the node.
    node: Arc<AtomicUsize>,
}

impl Recent {
    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.forget(size);
        }
    }

    fn pop_back(&mut self) {
        if let Some((_, size)) = self.entries.pop_back() {
            self.forget(size);
        }
    }

    fn forget(&mut self, size: usize) {
        self.bytes -= size;
        self.node.fetch_sub(size, Ordering::Relaxed);
    }

    fn clear(&mut self) {
        self.node.fetch_sub(self.bytes, Ordering::Relaxed);
        self.bytes = 0;
        self.entries.clear();
    }

    fn next_index(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }
}

impl Drop for Recent {
    fn drop(&mut self) {
        self.clear();
    }
}

impl RecentEntries {
    /// An empty cache counting its bytes in `node`, the budget shared by the node's groups.
    pub fn new(node: Arc<AtomicUsize>) -> RecentEntries {
        RecentEntries {
            inner: Arc::new(Mutex::new(Recent {
                entries: VecDeque::new(),
                bytes: 0,
                node,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Recent> {
        // A panic while holding the lock leaves the cache as consistent as any step of it: the
        // worst a poisoned cache can do is hold fewer entries.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds entries just written to the log, `size` being each one's encoded length. Entries that
    /// do not follow the cached ones (the log was replaced below them) start the cache over.
    pub fn appended(&self, entries: impl IntoIterator<Item = (EntryOf<TypeConfig>, usize)>) {
        let mut r = self.lock();
        for (entry, size) in entries {
            if r.next_index()
                .is_some_and(|next| next != entry.log_id.index)
            {
                r.clear();
            }
            while !r.entries.is_empty()
                && (r.bytes + size > GROUP_BYTES || r.entries.len() >= GROUP_ENTRIES)
            {
                r.pop_front();
            }
            if size > GROUP_BYTES || r.node.load(Ordering::Relaxed) + size > NODE_BYTES {
                // Not kept: the cache would no longer end at the log's last entry.
                r.clear();
                continue;
            }
            r.bytes += size;
            r.node.fetch_add(size, Ordering::Relaxed);
            r.entries.push_back((entry, size));
        }
    }

    /// Drops the cached entries after index `last` (the log was truncated there).
    pub fn truncated_after(&self, last: Option<u64>) {
        let mut r = self.lock();
        while r
            .entries
            .back()
            .is_some_and(|(e, _)| last.is_none_or(|l| e.log_id.index > l))
        {
            r.pop_back();
        }
    }

    /// Drops the cached entries up to index `upto` (the log was purged there).
    pub fn purged(&self, upto: u64) {
        let mut r = self.lock();
        while r
            .entries
            .front()
            .is_some_and(|(e, _)| e.log_id.index <= upto)
        {
            r.pop_front();
        }
    }

    /// Clones of the cached entries in `[start, end)`, and the index below which the caller must
    /// read the log itself (the first cached index, or `end` when none of the range is cached).
    pub fn get(&self, start: u64, end: u64) -> (Vec<EntryOf<TypeConfig>>, u64) {
        let r = self.lock();
        let Some(first) = r.entries.front().map(|(e, _)| e.log_id.index) else {
            return (Vec::new(), end);
        };
        if first >= end {
            return (Vec::new(), end);
        }
        let from = start.max(first);
        let skip = usize::try_from(from - first).unwrap_or(usize::MAX);
        let take = usize::try_from(end - from).unwrap_or(usize::MAX);
        let got = r
            .entries
            .iter()
            .skip(skip)
            .take(take)
            .map(|(e, _)| e.clone())
            .collect();
        (got, from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Request;
    use openraft::entry::RaftEntry;
    use openraft::vote::RaftLeaderId;

    fn entry(index: u64) -> (EntryOf<TypeConfig>, usize) {
        let lid = openraft::alias::CommittedLeaderIdOf::<TypeConfig>::new(1, 1);
        let e = EntryOf::<TypeConfig>::new_normal(
            openraft::LogId::new(lid, index),
            Request::Trim { before: index },
        );
        (e, 1 << 20)
    }

    fn indexes(got: &[EntryOf<TypeConfig>]) -> Vec<u64> {
        got.iter().map(|e| e.log_id.index).collect()
    }

    #[test]
    fn keeps_a_gapless_suffix_of_the_log_within_its_bounds() {
        let node = Arc::new(AtomicUsize::new(0));
        let c = RecentEntries::new(node.clone());
        c.appended((1..=10).map(entry));
        let (got, below) = c.get(3, 6);
        assert_eq!((indexes(&got), below), (vec![3, 4, 5], 3));
        // Past the last entry there is nothing, in the cache as in the log.
        let (got, below) = c.get(9, 100);
        assert_eq!((indexes(&got), below), (vec![9, 10], 9));

        c.truncated_after(Some(7));
        c.purged(4);
        let (got, below) = c.get(1, 100);
        assert_eq!((indexes(&got), below), (vec![5, 6, 7], 5));
        assert_eq!(node.load(Ordering::Relaxed), 3 << 20);

        // Entries that do not follow the cached ones replace them.
        c.appended([entry(20)]);
        let (got, below) = c.get(1, 100);
        assert_eq!((indexes(&got), below), (vec![20], 20));

        // A group keeps its last 16 MB; the front is read from the log.
        c.appended((21..=40).map(entry));
        let (got, below) = c.get(1, 100);
        assert_eq!(got.len(), 16);
        assert_eq!((got[0].log_id.index, below), (25, 25));

        // Past the node's budget the cache empties rather than keep a gap.
        node.fetch_add(NODE_BYTES, Ordering::Relaxed);
        c.appended([entry(41)]);
        let (got, below) = c.get(1, 100);
        assert_eq!((got.len(), below), (0, 100));
        node.fetch_sub(NODE_BYTES, Ordering::Relaxed);
        assert_eq!(node.load(Ordering::Relaxed), 0);

        c.appended([entry(42)]);
        drop(c);
        assert_eq!(
            node.load(Ordering::Relaxed),
            0,
            "a dropped cache gives its bytes back"
        );
    }
}
