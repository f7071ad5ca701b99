//! `Fetch` and `ListOffsets`.
//!
//! A fetch first reads every asked partition at once without waiting; when that found fewer than
//! `min_bytes`, it long-polls all of them together and answers as soon as one has data or
//! `max_wait_ms` has passed. Batches produced through Kafka go back as they are stored (offsets and
//! leader epoch already in their headers); batches produced natively are encoded as Kafka batches.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesUnordered, StreamExt};
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use tonic::Request;
use weir_proto::batch;
use weir_proto::kafka_batch;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::{FetchRequest as WeirFetch, ListOffsetsRequest as WeirListOffsets};

use super::{errors, KafkaState};

/// Longest a fetch long-polls, whatever the client asks.
const MAX_WAIT_MS: i32 = 30_000;
/// Bytes read per step while looking for an offset by timestamp.
const TIME_SCAN_BYTES: u32 = 4 << 20;

/// One partition a fetch asks for.
#[derive(Clone)]
struct Asked {
    topic: TopicName,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    /// The leader epoch the client believes current (-1: it does not track epochs).
    epoch: i32,
}

/// What was read for one partition.
struct Got {
    error: i16,
    high_watermark: i64,
    log_start: i64,
    records: Bytes,
}

/// A stored batch as a Kafka consumer reads it.
fn to_kafka(base_offset: u64, stored: &Bytes, out: &mut BytesMut) -> Result<(), String> {
    if stored.first() == Some(&kafka_batch::TAG) {
        out.extend_from_slice(&stored[1..]);
        return Ok(());
    }
    let records = batch::decode(stored).map_err(|e| e.to_string())?;
    out.extend_from_slice(&kafka_batch::encode(base_offset, -1, &records));
    Ok(())
}

async fn read(state: &KafkaState, a: &Asked, wait_ms: u32) -> Got {
    let failed = |error| Got {
        error,
        high_watermark: -1,
        log_start: -1,
        records: Bytes::new(),
    };
    let (Ok(partition), Ok(offset)) = (u32::try_from(a.partition), u64::try_from(a.offset)) else {
        return failed(errors::OFFSET_OUT_OF_RANGE);
    };
    let req = WeirFetch {
        topic: a.topic.to_string(),
        partition,
        offset,
        max_bytes: a.max_bytes.max(1) as u32,
        max_wait_ms: wait_ms,
    };
    let resp = match state.log.fetch(Request::new(req)).await {
        Ok(r) => r.into_inner(),
        Err(s) => return failed(errors::code(&s)),
    };
    // The records came from the current leader whatever the client thought; a client behind on
    // epochs is still sent to refresh its metadata first, as Kafka does.
    let fenced = errors::epoch_check(a.epoch, resp.leader_epoch);
    if fenced != errors::NONE {
        return failed(fenced);
    }
    let mut out = BytesMut::new();
    for b in &resp.batches {
        if let Err(e) = to_kafka(b.base_offset, &b.batch, &mut out) {
            tracing::warn!(topic = %a.topic.as_str(), partition, base = b.base_offset, error = %e, "stored batch cannot be read");
            return failed(errors::CORRUPT_MESSAGE);
        }
    }
    Got {
        error: errors::NONE,
        high_watermark: resp.high_watermark as i64,
        log_start: resp.earliest_offset as i64,
        records: out.freeze(),
    }
}

/// `Fetch` (sessionless: every request names its partitions; read_uncommitted, as nothing is
/// transactional).
pub async fn fetch(state: &KafkaState, req: FetchRequest) -> FetchResponse {
    let asked: Vec<Asked> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| Asked {
                topic: t.topic.clone(),
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: p.partition_max_bytes,
                epoch: p.current_leader_epoch,
            })
        })
        .collect();
    let mut got: Vec<Got> =
        futures::future::join_all(asked.iter().map(|a| read(state, a, 0))).await;
    let bytes: usize = got.iter().map(|g| g.records.len()).sum();
    let wait = req.max_wait_ms.clamp(0, MAX_WAIT_MS);
    if bytes < req.min_bytes.max(1) as usize && wait > 0 && !asked.is_empty() {
        let mut polls: FuturesUnordered<_> = asked
            .iter()
            .enumerate()
            .filter(|(i, _)| got[*i].error == errors::NONE)
            .map(|(i, a)| async move { (i, read(state, a, wait as u32).await) })
            .collect();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(wait as u64);
        while let Ok(Some((i, g))) = tokio::time::timeout_at(deadline, polls.next()).await {
            let has = !g.records.is_empty() || g.error != errors::NONE;
            got[i] = g;
            if has {
                break;
            }
        }
    }
    let budget = if req.max_bytes > 0 {
        req.max_bytes as usize
    } else {
        usize::MAX
    };
    let mut used = 0usize;
    let mut resp = FetchResponse::default();
    for (a, g) in asked.into_iter().zip(got) {
        // The first partition with data is sent whole even over the budget, so a consumer always
        // progresses.
        let records = if used > 0 && used + g.records.len() > budget {
            Bytes::new()
        } else {
            g.records
        };
        used += records.len();
        let part = PartitionData::default()
            .with_partition_index(a.partition)
            .with_error_code(g.error)
            .with_high_watermark(g.high_watermark)
            .with_last_stable_offset(g.high_watermark)
            .with_log_start_offset(g.log_start)
            .with_aborted_transactions(None)
            .with_records(Some(records));
        match resp.responses.iter_mut().find(|r| r.topic == a.topic) {
            Some(r) => r.partitions.push(part),
            None => resp.responses.push(
                FetchableTopicResponse::default()
                    .with_topic(a.topic)
                    .with_partitions(vec![part]),
            ),
        }
    }
    resp
}

/// The first offset at or after `timestamp` in a partition (its end when there is none), found by
/// reading its records from the start.
async fn offset_for_time(
    state: &KafkaState,
    topic: &str,
    partition: u32,
    earliest: u64,
    latest: u64,
    timestamp: i64,
) -> Result<u64, tonic::Status> {
    let mut offset = earliest;
    while offset < latest {
        let resp = state
            .log
            .fetch(Request::new(WeirFetch {
                topic: topic.to_string(),
                partition,
                offset,
                max_bytes: TIME_SCAN_BYTES,
                max_wait_ms: 0,
            }))
            .await?
            .into_inner();
        if resp.batches.is_empty() {
            break;
        }
        for b in &resp.batches {
            let records = batch::decode(&b.batch)
                .map_err(|e| tonic::Status::data_loss(format!("stored batch unreadable: {e}")))?;
            for (i, r) in records.iter().enumerate() {
                let at = b.base_offset + i as u64;
                if at >= offset && r.timestamp_ms >= timestamp {
                    return Ok(at);
                }
            }
            offset = offset.max(b.base_offset + records.len() as u64);
        }
    }
    Ok(latest)
}

/// `ListOffsets`: earliest (-2), latest (-1), or the first offset at or after a timestamp.
pub async fn list_offsets(
    state: &KafkaState,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let mut resp = ListOffsetsResponse::default();
    for t in req.topics {
        let mut parts = Vec::new();
        for p in t.partitions {
            let answer =
                ListOffsetsPartitionResponse::default().with_partition_index(p.partition_index);
            let Ok(partition) = u32::try_from(p.partition_index) else {
                parts.push(answer.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION));
                continue;
            };
            let offsets = state
                .log
                .list_offsets(Request::new(WeirListOffsets {
                    topic: t.name.to_string(),
                    partition,
                    epoch: None,
                }))
                .await;
            let o = match offsets {
                Ok(o) => o.into_inner(),
                Err(s) => {
                    parts.push(answer.with_error_code(errors::code(&s)));
                    continue;
                }
            };
            let fenced = errors::epoch_check(p.current_leader_epoch, o.leader_epoch);
            if fenced != errors::NONE {
                parts.push(answer.with_error_code(fenced));
                continue;
            }
            // Versions before 4 have no leader epoch in the answer.
            let answer = if version >= 4 {
                answer.with_leader_epoch(i32::try_from(o.leader_epoch).unwrap_or(-1))
            } else {
                answer
            };
            let found = match p.timestamp {
                -2 => Ok(o.earliest),
                -1 => Ok(o.latest),
                ts if ts < 0 => {
                    parts.push(answer.with_error_code(errors::INVALID_REQUEST));
                    continue;
                }
                ts => {
                    offset_for_time(state, t.name.as_str(), partition, o.earliest, o.latest, ts)
                        .await
                }
            };
            parts.push(match found {
                Ok(off) => answer.with_offset(off as i64).with_timestamp(-1),
                Err(s) => answer.with_error_code(errors::code(&s)),
            });
        }
        resp.topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    resp
}
