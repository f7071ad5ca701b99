//! `OffsetForLeaderEpoch`: where a leader epoch ends, so a consumer that saw a leader change can
//! check that the records it read are still the partition's.
//!
//! A partition's leader epoch is its Raft group's term. Only committed records are ever served,
//! and Raft never takes a committed entry back, so the answer always lies at or after what a
//! consumer read: clients find nothing to truncate, as they should.

use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse};
use tonic::Request;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::ListOffsetsRequest;

use super::{errors, KafkaState};

/// `OffsetForLeaderEpoch`: for each partition, the largest epoch at or below the one asked for
/// that wrote records, and the offset after its last record.
pub async fn offset_for_leader_epoch(
    state: &KafkaState,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut resp = OffsetForLeaderEpochResponse::default();
    for t in req.topics {
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            parts.push(end_of(state, t.topic.as_str(), &p).await);
        }
        resp.topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(parts),
        );
    }
    resp
}

async fn end_of(
    state: &KafkaState,
    topic: &str,
    p: &kafka_protocol::messages::offset_for_leader_epoch_request::OffsetForLeaderPartition,
) -> EpochEndOffset {
    let answer = EpochEndOffset::default()
        .with_partition(p.partition)
        .with_leader_epoch(-1)
        .with_end_offset(-1);
    let Ok(partition) = u32::try_from(p.partition) else {
        return answer.with_error_code(errors::UNKNOWN_TOPIC_OR_PARTITION);
    };
    // An epoch of -1 asks for nothing Kafka can answer: "undefined" both ways.
    let Ok(epoch) = u64::try_from(p.leader_epoch) else {
        return answer;
    };
    let o = match state
        .log
        .list_offsets(Request::new(ListOffsetsRequest {
            topic: topic.to_string(),
            partition,
            epoch: Some(epoch),
        }))
        .await
    {
        Ok(o) => o.into_inner(),
        Err(s) => return answer.with_error_code(errors::code(&s)),
    };
    let fenced = errors::epoch_check(p.current_leader_epoch, o.leader_epoch);
    if fenced != errors::NONE {
        return answer.with_error_code(fenced);
    }
    if epoch > o.leader_epoch {
        // An epoch this leader has not reached: undefined, as Kafka answers.
        return answer;
    }
    let found = o.epoch_found.unwrap_or(epoch);
    answer
        .with_leader_epoch(i32::try_from(found).unwrap_or(i32::MAX))
        .with_end_offset(i64::try_from(o.epoch_end_offset).unwrap_or(i64::MAX))
}
