//! `Produce`: each partition's batch goes to the log as it came (a Kafka v2 batch behind a one-byte
//! tag), checked once by the partition's leader; an idempotent producer's id, epoch and sequence
//! are read from the batch header, so a retried batch is answered with its first offsets and never
//! written twice.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse};
use tonic::Request;
use weir_proto::kafka_batch;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::Acks;

use super::{errors, kstr, KafkaState};

/// Longest a produce waits when the client allows longer (or gives no timeout).
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Splits a partition's records into its batches (v3 and later send one; older clients may send
/// several back to back). None when the bytes are not whole batches.
fn batches(mut records: Bytes) -> Option<Vec<Bytes>> {
    let mut out = Vec::new();
    while !records.is_empty() {
        if records.len() < 12 {
            return None;
        }
        let len = i32::from_be_bytes([records[8], records[9], records[10], records[11]]);
        let total = usize::try_from(len).ok()?.checked_add(12)?;
        if total > records.len() {
            return None;
        }
        out.push(records.split_to(total));
    }
    Some(out)
}

/// Produces one partition's records; the answer's error code, base offset and message.
async fn produce_partition(
    state: &KafkaState,
    topic: &str,
    partition: i32,
    records: Option<Bytes>,
    acks: Acks,
    timeout: Duration,
) -> (i16, i64, Option<String>) {
    let Ok(partition) = u32::try_from(partition) else {
        return (errors::UNKNOWN_TOPIC_OR_PARTITION, -1, None);
    };
    let Some(batches) = records.and_then(batches).filter(|b| !b.is_empty()) else {
        return (
            errors::CORRUPT_MESSAGE,
            -1,
            Some("the records are not whole record batches".into()),
        );
    };
    let mut first = -1;
    for kb in batches {
        let mut blob = BytesMut::with_capacity(kb.len() + 1);
        blob.put_u8(kafka_batch::TAG);
        blob.put_slice(&kb);
        let req = weir_proto::v1::ProduceRequest {
            topic: topic.to_string(),
            partition,
            batch: blob.freeze(),
            acks: acks as i32,
            ..Default::default()
        };
        match tokio::time::timeout(timeout, state.log.produce(Request::new(req))).await {
            Ok(Ok(r)) => {
                let r = r.into_inner();
                if first < 0 {
                    first = if r.offsets_pending {
                        -1
                    } else {
                        r.base_offset as i64
                    };
                }
            }
            Ok(Err(s)) => return (errors::code(&s), -1, Some(s.message().to_string())),
            Err(_) => return (errors::REQUEST_TIMED_OUT, -1, None),
        }
    }
    (errors::NONE, first, None)
}

/// Serves a `Produce`; None when the client asked for no answer (`acks=0`).
pub async fn produce(state: &KafkaState, req: ProduceRequest) -> Option<ProduceResponse> {
    if req.transactional_id.is_some() {
        let mut resp = ProduceResponse::default();
        for t in &req.topic_data {
            let parts = t
                .partition_data
                .iter()
                .map(|p| {
                    PartitionProduceResponse::default()
                        .with_index(p.index)
                        .with_error_code(errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
                        .with_base_offset(-1)
                })
                .collect();
            resp.responses.push(
                TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_partition_responses(parts),
            );
        }
        return Some(resp);
    }
    let acks = if req.acks == -1 {
        Acks::All
    } else {
        Acks::Leader
    };
    let timeout = match req.timeout_ms {
        t if t > 0 => Duration::from_millis(t as u64).min(MAX_TIMEOUT),
        _ => MAX_TIMEOUT,
    };
    let mut calls = Vec::new();
    for t in &req.topic_data {
        for p in &t.partition_data {
            calls.push((t.name.clone(), p.index, p.records.clone()));
        }
    }
    let answers = futures::future::join_all(calls.iter().map(|(topic, index, records)| {
        produce_partition(
            state,
            topic.as_str(),
            *index,
            records.clone(),
            acks,
            timeout,
        )
    }))
    .await;
    if req.acks == 0 {
        return None;
    }
    let mut resp = ProduceResponse::default();
    for ((topic, index, _), (code, base, msg)) in calls.into_iter().zip(answers) {
        let part = PartitionProduceResponse::default()
            .with_index(index)
            .with_error_code(code)
            .with_base_offset(base)
            .with_log_append_time_ms(-1)
            .with_log_start_offset(-1)
            .with_error_message(msg.map(kstr));
        match resp.responses.iter_mut().find(|r| r.name == topic) {
            Some(r) => r.partition_responses.push(part),
            None => resp.responses.push(
                TopicProduceResponse::default()
                    .with_name(topic)
                    .with_partition_responses(vec![part]),
            ),
        }
    }
    Some(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_into_whole_batches_only() {
        let one = kafka_batch::encode(0, -1, &[weir_proto::batch::Record::default()]);
        let mut two = BytesMut::from(&one[..]);
        two.put_slice(&one);
        assert_eq!(batches(two.freeze()).map(|b| b.len()), Some(2));
        assert_eq!(batches(one.slice(..one.len() - 1)), None);
        assert_eq!(batches(one.slice(..5)), None);
    }
}
