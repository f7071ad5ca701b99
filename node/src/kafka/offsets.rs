//! Committed offsets: `OffsetCommit` and `OffsetFetch`, written to and read from the offsets group.
//!
//! A commit from a group member (a member id and generation) is taken only when the group's
//! coordinator (this node, see [`super::members`]) confirms the member is in that generation, so a
//! member that was rebalanced away cannot overwrite its successor's offsets; a standalone consumer
//! (`assign()` with no generation) commits directly.

use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponsePartition, OffsetFetchResponseTopic,
};
use kafka_protocol::messages::{
    OffsetCommitRequest, OffsetCommitResponse, OffsetFetchRequest, OffsetFetchResponse, TopicName,
};
use tonic::Request;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::{CommitOffsetsRequest, FetchCommittedRequest, PartitionOffset};

use super::{errors, kstr, members, KafkaState};

/// `OffsetCommit`, one call to the offsets group per topic.
pub async fn commit(state: &KafkaState, req: OffsetCommitRequest) -> OffsetCommitResponse {
    let mut resp = OffsetCommitResponse::default();
    let member = req.member_id.to_string();
    let refused = if member.is_empty() && req.generation_id_or_member_epoch < 0 {
        None
    } else {
        match members::coordinator_term(state) {
            Err(code) => Some(code),
            Ok(term) => {
                let code = state
                    .groups
                    .check_commit(
                        term,
                        req.group_id.to_string(),
                        req.generation_id_or_member_epoch,
                        member,
                    )
                    .await;
                (code != errors::NONE).then_some(code)
            }
        }
    };
    if let Some(code) = refused {
        for t in req.topics {
            let parts = t
                .partitions
                .iter()
                .map(|p| {
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(code)
                })
                .collect();
            resp.topics.push(
                OffsetCommitResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(parts),
            );
        }
        return resp;
    }
    for t in req.topics {
        let mut offsets = Vec::new();
        let mut parts = Vec::new();
        for p in &t.partitions {
            match (
                u32::try_from(p.partition_index),
                u64::try_from(p.committed_offset),
            ) {
                (Ok(partition), Ok(offset)) => offsets.push(PartitionOffset { partition, offset }),
                _ => parts.push(
                    OffsetCommitResponsePartition::default()
                        .with_partition_index(p.partition_index)
                        .with_error_code(errors::INVALID_REQUEST),
                ),
            }
        }
        let code = if offsets.is_empty() {
            errors::NONE
        } else {
            match state
                .log
                .commit_offsets(Request::new(CommitOffsetsRequest {
                    group: req.group_id.to_string(),
                    topic: t.name.to_string(),
                    offsets: offsets.clone(),
                    member_id: String::new(),
                    generation: 0,
                }))
                .await
            {
                Ok(_) => errors::NONE,
                Err(s) => errors::code(&s),
            }
        };
        parts.extend(offsets.iter().map(|o| {
            OffsetCommitResponsePartition::default()
                .with_partition_index(o.partition as i32)
                .with_error_code(code)
        }));
        resp.topics.push(
            OffsetCommitResponseTopic::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    resp
}

/// The committed offsets of `group` on `topic`: (partition, offset).
async fn committed(
    state: &KafkaState,
    group: &str,
    topic: &str,
) -> Result<Vec<(u32, u64)>, tonic::Status> {
    Ok(state
        .log
        .fetch_committed(Request::new(FetchCommittedRequest {
            group: group.to_string(),
            topic: topic.to_string(),
        }))
        .await?
        .into_inner()
        .offsets
        .into_iter()
        .map(|o| (o.partition, o.offset))
        .collect())
}

/// `OffsetFetch`: the asked partitions (-1 where nothing is committed), or every topic the group
/// has committed on when none are named.
pub async fn fetch(state: &KafkaState, req: OffsetFetchRequest) -> OffsetFetchResponse {
    let group = req.group_id.to_string();
    let mut resp = OffsetFetchResponse::default();
    let asked: Vec<(TopicName, Option<Vec<i32>>)> = match req.topics {
        Some(ts) => ts
            .into_iter()
            .map(|t| (t.name, Some(t.partition_indexes)))
            .collect(),
        None => match state.ctx.registry.catalog() {
            Ok(c) => c
                .topics
                .keys()
                .map(|n| (TopicName(kstr(n.clone())), None))
                .collect(),
            Err(_) => {
                return resp.with_error_code(errors::COORDINATOR_NOT_AVAILABLE);
            }
        },
    };
    for (name, partitions) in asked {
        let part = |index: i32, offset: i64, code: i16| {
            OffsetFetchResponsePartition::default()
                .with_partition_index(index)
                .with_committed_offset(offset)
                .with_metadata(Some(kstr("")))
                .with_error_code(code)
        };
        let parts = match (committed(state, &group, name.as_str()).await, partitions) {
            (Ok(found), Some(asked)) => asked
                .into_iter()
                .map(|i| {
                    let off = found
                        .iter()
                        .find(|(p, _)| i64::from(*p) == i64::from(i))
                        .map_or(-1, |(_, o)| *o as i64);
                    part(i, off, errors::NONE)
                })
                .collect(),
            (Ok(found), None) if found.is_empty() => continue,
            (Ok(found), None) => found
                .into_iter()
                .map(|(p, o)| part(p as i32, o as i64, errors::NONE))
                .collect(),
            (Err(s), Some(asked)) => asked
                .into_iter()
                .map(|i| part(i, -1, errors::code(&s)))
                .collect(),
            (Err(_), None) => continue,
        };
        resp.topics.push(
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(parts),
        );
    }
    resp
}
