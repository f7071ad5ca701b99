//! Reading a partition this node leads: what a fetch answers, whether it came over gRPC or from a
//! stream task on this node (which reads its partition in process rather than through loopback).

use std::time::Duration;

use tokio::time::Instant;

use weir_proto::v1::{FetchResponse, StoredBatch};
use weir_storage::engine::on_blocking_thread;
use weir_storage::partition;
use weir_storage::{Engine, GroupWatch};

use crate::error::{NodeError, NodeResult};
use crate::groups::GroupHandle;
use crate::leader;
use crate::metrics;

/// Largest fetch answer.
const MAX_FETCH_BYTES: u32 = 32 << 20;
/// Longest long-poll a fetch may ask for.
const MAX_WAIT: Duration = Duration::from_secs(30);
/// How long a fetch waits for a just-elected leader to apply its own term before answering
/// UNAVAILABLE (the client retries).
pub const TERM_APPLIED_WAIT: Duration = Duration::from_secs(2);

/// What a fetch asks of one partition.
#[derive(Debug, Clone, Copy)]
pub struct Fetch<'a> {
    /// The topic, for messages.
    pub topic: &'a str,
    /// The partition, for messages.
    pub partition: u32,
    /// First offset wanted.
    pub offset: u64,
    /// Most bytes of batches to return (0: 1 MiB); at least one batch is returned when there is one.
    pub max_bytes: u32,
    /// How long to wait for records when there are none past `offset` yet.
    pub max_wait_ms: u32,
}

/// Reads the batches from `f.offset` of the partition led here through `h`, waiting up to
/// `f.max_wait_ms` for one when the partition ends there; an offset outside the partition is
/// `OutOfRange`.
pub async fn fetch(engine: &Engine, h: &GroupHandle, f: Fetch<'_>) -> NodeResult<FetchResponse> {
    let started = Instant::now();
    leader::term_applied_within(h, TERM_APPLIED_WAIT).await?;
    let mut rx = match &h.watch {
        GroupWatch::Partition(rx) => rx.clone(),
        _ => return Err(NodeError::Internal("not a partition group".into())),
    };
    let mut st = *rx.borrow_and_update();
    if f.offset < st.earliest || f.offset > st.next_offset {
        return Err(NodeError::OutOfRange(format!(
            "offset {} is outside partition {} of '{}': earliest {}, latest {}",
            f.offset, f.partition, f.topic, st.earliest, st.next_offset
        )));
    }
    let wait = Duration::from_millis(u64::from(f.max_wait_ms)).min(MAX_WAIT);
    let deadline = Instant::now() + wait;
    while f.offset >= st.next_offset {
        match tokio::time::timeout_at(deadline, rx.changed()).await {
            Ok(Ok(())) => st = *rx.borrow_and_update(),
            _ => break,
        }
    }
    let max_bytes = if f.max_bytes == 0 {
        1 << 20
    } else {
        f.max_bytes.min(MAX_FETCH_BYTES)
    };
    let engine = engine.clone();
    let (group_id, offset) = (h.id, f.offset.max(st.earliest));
    let batches = on_blocking_thread(move || {
        partition::read_batches(
            &engine,
            group_id,
            offset,
            st.next_offset,
            max_bytes as usize,
        )
    })
    .await?;
    let records: u64 = batches.iter().map(|b| u64::from(b.count)).sum();
    metrics::fetched(records, started.elapsed());
    Ok(FetchResponse {
        batches: batches
            .into_iter()
            .map(|b| StoredBatch {
                base_offset: b.base_offset,
                batch: b.batch,
            })
            .collect(),
        high_watermark: st.next_offset,
        earliest_offset: st.earliest,
        leader_epoch: leader::term_of(h),
    })
}
