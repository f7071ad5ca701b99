//! The Raft type configuration shared by every group, and the commands groups replicate.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::catalog::{MetaCommand, MetaResponse};

openraft::declare_raft_types!(
    /// Raft types of every Weir group: u64 node ids, nodes addressed by their gRPC address.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        AsyncRuntime = crate::runtime::WeirRuntime,
);

/// The Raft handle of one group.
pub type Raft = openraft::Raft<TypeConfig, crate::StateMachine>;

/// A command replicated through a group's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Metadata group: change the catalog.
    Meta(MetaCommand),
    /// Partition group: append one record batch (kept as the producer encoded it).
    Append {
        /// The encoded batch.
        batch: Bytes,
        /// Records in the batch (from its header, checked by the leader).
        count: u32,
        /// Largest record timestamp (drives time retention).
        max_timestamp_ms: i64,
        /// Idempotent producers name themselves and number their batches, so a retried batch
        /// that was already written is answered with its offsets instead of being written twice.
        producer: Option<ProducerSeq>,
    },
    /// Partition group: drop whole batches that end at or before `before` (retention).
    Trim {
        /// First offset to keep.
        before: u64,
    },
    /// Region group: puts and deletes applied atomically, all of them only if `condition` holds.
    KvWrite {
        /// The changes, applied in order; shared, so the copies of an entry openraft hands
        /// around (to apply, to each replica) do not copy its rows.
        ops: Arc<[KvOp]>,
        /// Compare-and-set: what must hold first.
        condition: Option<KvCondition>,
        /// The writer's fencing token: the write is refused when the region has seen a higher
        /// token of the same holder, and raises the region's token otherwise.
        fence: Option<WriterFence>,
    },
    /// Region group: raise the region's token for a holder without writing rows, so that the
    /// holder's earlier instances can write no more here (nor in regions split off later).
    Fence {
        /// The holder and its new token.
        fence: WriterFence,
        /// A key the sender believes is in the region (checked, as a write's keys are).
        key: Vec<u8>,
    },
    /// Region group: split at `split_key`; the keys from it on move to the new region `child`.
    Split {
        /// First key of the new region.
        split_key: Vec<u8>,
        /// The new region's group id.
        child: u64,
        /// The region's epoch the split was planned at; a split planned at another epoch (by an
        /// earlier leader, say) is refused, so splits apply one epoch at a time.
        epoch: u64,
    },
    /// Offsets group: record committed offsets of a consumer group.
    CommitOffsets {
        /// Consumer group.
        group: String,
        /// Topic.
        topic: String,
        /// (partition, next offset to consume).
        offsets: Vec<(u32, u64)>,
    },
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Request::Meta(c) => write!(f, "meta {c:?}"),
            Request::Append { count, batch, .. } => {
                write!(f, "append {count} records ({} bytes)", batch.len())
            }
            Request::Trim { before } => write!(f, "trim before {before}"),
            Request::KvWrite { ops, condition, .. } => write!(
                f,
                "kv write of {} ops{}",
                ops.len(),
                if condition.is_some() {
                    " (conditional)"
                } else {
                    ""
                }
            ),
            Request::Fence { fence, .. } => {
                write!(f, "fence {} at token {}", fence.holder, fence.token)
            }
            Request::Split { child, .. } => write!(f, "split into region {child}"),
            Request::CommitOffsets {
                group,
                topic,
                offsets,
            } => write!(f, "commit {group}/{topic} {offsets:?}"),
        }
    }
}

/// One change to a region's rows (keys and cells encoded as in `weir_proto::table`). Its byte
/// strings are (de)serialized whole rather than byte by byte: bincode writes the same bytes
/// either way (a length, then the bytes), so stored Raft logs and snapshots read as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    /// Write a row.
    Put {
        /// Encoded primary key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// Encoded non-key cells.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Delete a row (absent rows are fine).
    Delete {
        /// Encoded primary key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Merge aggregates into a row, once per source offset range (`weir_proto::table::merge`):
    /// applied when the row's mark for `source` is absent or at most `from`, otherwise the row is
    /// left as it is (covered, or an overlap the response reports).
    Merge {
        /// Encoded primary key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The writer's source.
        source: String,
        /// First source offset merged.
        from: u64,
        /// Source offset just past the last one merged.
        to: u64,
        /// One op per value column with the column's type, encoded by
        /// `weir_proto::table::merge::encode_ops`.
        #[serde(with = "serde_bytes")]
        ops: Vec<u8>,
    },
}

impl KvOp {
    /// The row's key.
    pub fn key(&self) -> &[u8] {
        match self {
            KvOp::Put { key, .. } | KvOp::Delete { key } | KvOp::Merge { key, .. } => key,
        }
    }
}

/// A fencing token of one writer of regions (a schedule's runs): every instance of the holder
/// takes a higher token than the one before, and a region refuses writes carrying a token below
/// the highest it has seen for the holder, so an instance that was replaced cannot write where its
/// successor has written or fenced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriterFence {
    /// Who writes (for example `schedule 7`).
    pub holder: String,
    /// The instance's token.
    pub token: u64,
}

/// The condition of a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvCondition {
    /// The row the condition reads.
    pub key: Vec<u8>,
    /// What it must find.
    pub expect: Expect,
}

/// What a compare-and-set expects of a row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Expect {
    /// The row's version (0: the row does not exist).
    Version(u64),
    /// The row exists and its `index`-th non-key cell encodes to `cell`.
    Cell {
        /// Position among the non-key columns.
        index: u32,
        /// The encoded cell.
        cell: Vec<u8>,
    },
}

/// A producer's id and the sequence number of one of its batches to one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerSeq {
    /// Chosen at random by the producer, once per producer instance.
    pub producer_id: u64,
    /// Increases by one per batch the producer sends to the partition (or, for a jumping
    /// producer, increases by any amount).
    pub sequence: u64,
    /// A producer whose identity and numbering are deterministic (a stream job's task numbers its
    /// batches by the source offset they reach): a batch numbered at or below the last one it
    /// wrote is a duplicate, gaps are fine, and it is never forgotten. An empty batch only asks
    /// for the last number.
    pub jumping: bool,
    /// A jumping producer's epoch (the task's assignment), or a Kafka producer's: once a partition
    /// has seen an epoch, it refuses the producer's batches from lower ones, so a replaced instance
    /// cannot write.
    pub epoch: u64,
    /// Sequence numbers count records, not batches (Kafka's idempotent producers): a batch's
    /// successor is numbered by its sequence plus its record count, and a new epoch starts again
    /// at 0.
    pub counted: bool,
}

/// What applying a [`Request`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Nothing to report (blank and membership entries, trims, commits).
    Ok,
    /// Answer of a catalog change.
    Meta(MetaResponse),
    /// Offsets given to an appended batch: `[base_offset, base_offset + count)`.
    Appended {
        /// First offset of the batch.
        base_offset: u64,
        /// Records in the batch.
        count: u32,
    },
    /// A region write was applied at this version (its log index).
    KvWritten {
        /// The version the written rows now have.
        version: u64,
        /// The merges that overlapped their row's mark and changed nothing: (position of the op
        /// in the write, the row's mark for the merge's source). Merges applied or already
        /// covered are not listed.
        overlaps: Vec<(u32, u64)>,
    },
    /// A merge of the write could not be combined into its row (a sum overflowed, a value of
    /// another kind than the cell, a result the column cannot hold); nothing was written.
    MergeFailed {
        /// Position of the merge among the write's ops.
        index: u32,
        /// Position among the value columns of the column at fault, when one is.
        column: Option<u32>,
        /// What is wrong.
        reason: String,
    },
    /// A compare-and-set found something else; nothing was written.
    CasFailed {
        /// The row as found: (version, encoded cells), or None when absent.
        current: Option<(u64, Vec<u8>)>,
    },
    /// A region write named a key outside the region (it split, or the route was stale); nothing
    /// was written.
    NotInRegion(crate::region::RegionState),
    /// The command does not fit this group (a bug or a stale route); nothing was changed.
    Rejected(String),
    /// An idempotent producer's batch arrived before an earlier one of its batches; nothing was
    /// written and the producer should retry it after the earlier batch (Kafka's out-of-order
    /// sequence), which keeps its batches in order across retries.
    OutOfOrder(String),
    /// A retried batch older than the producer's batches remembered here: the partition holds it
    /// already (a producer's batches are stored in unbroken order), at offsets no longer known.
    StoredEarlier,
    /// A jumping producer's batch was not written: it had already written one numbered
    /// `last_sequence` (0: none yet), at or above this one's, or the batch was empty.
    Duplicate {
        /// The last number that producer wrote to the partition.
        last_sequence: u64,
    },
    /// A fence was applied: the region now holds the keys up to `end` (empty: unbounded), so a
    /// sender fencing every region of a table goes on from there.
    Fenced {
        /// The region's end after the fence.
        end: Vec<u8>,
    },
    /// A fenced write or fence carried a token below the region's for its holder: nothing was
    /// written.
    StaleWriter {
        /// The highest token the region has seen for the holder.
        current: u64,
    },
    /// A jumping producer's batch from an epoch below one the partition has seen: refused.
    StaleProducer {
        /// The epoch the partition has seen.
        current_epoch: u64,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `KvOp` as it was declared before its byte strings were serialized whole.
    #[derive(Debug, Serialize, Deserialize)]
    enum PlainKvOp {
        Put {
            key: Vec<u8>,
            value: Vec<u8>,
        },
        Delete {
            key: Vec<u8>,
        },
        Merge {
            key: Vec<u8>,
            source: String,
            from: u64,
            to: u64,
            ops: Vec<u8>,
        },
    }

    #[test]
    fn kv_ops_encode_to_the_bytes_they_always_did() {
        let ops = vec![
            KvOp::Put {
                key: vec![1, 2, 3],
                value: (0..=255).collect(),
            },
            KvOp::Delete { key: vec![] },
            KvOp::Merge {
                key: vec![9],
                source: "job 3".into(),
                from: 7,
                to: 11,
                ops: vec![0, 255, 4],
            },
        ];
        let plain = vec![
            PlainKvOp::Put {
                key: vec![1, 2, 3],
                value: (0..=255).collect(),
            },
            PlainKvOp::Delete { key: vec![] },
            PlainKvOp::Merge {
                key: vec![9],
                source: "job 3".into(),
                from: 7,
                to: 11,
                ops: vec![0, 255, 4],
            },
        ];
        let old = crate::encode(&plain).expect("encodes");
        assert_eq!(crate::encode(&ops).expect("encodes"), old);
        let read: Vec<KvOp> = crate::decode(&old).expect("decodes");
        assert_eq!(read, ops);
    }
}
