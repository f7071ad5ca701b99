//! `DescribeConfigs`: a topic's settings (retention, cleanup, size limits) and a broker's
//! defaults, named as Kafka names them so admin tools and UIs read them.
//!
//! Weir sets these at topic creation (`retention.ms`, `retention.bytes`); the rest are fixed by
//! how Weir works and are reported read-only.

use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};
use tonic::Request;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::DescribeTopicRequest;

use super::{errors, kstr, KafkaState};
use crate::log::service::MAX_BATCH_BYTES;

/// Kafka's resource type of a topic.
const RESOURCE_TOPIC: i8 = 2;
/// Kafka's resource type of a broker.
const RESOURCE_BROKER: i8 = 4;
/// Where a value comes from: set for this topic.
const SOURCE_TOPIC: i8 = 1;
/// Where a value comes from: the broker's fixed configuration.
const SOURCE_STATIC_BROKER: i8 = 4;
/// Where a value comes from: the default.
const SOURCE_DEFAULT: i8 = 5;
/// Kafka's config types, for clients that show them (v3 and later).
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;

/// One config entry: name, value, whether a client may change it, source, type.
struct Entry {
    name: &'static str,
    value: String,
    read_only: bool,
    source: i8,
    kind: i8,
}

impl Entry {
    fn fixed(name: &'static str, value: impl ToString, kind: i8) -> Entry {
        Entry {
            name,
            value: value.to_string(),
            read_only: true,
            source: SOURCE_STATIC_BROKER,
            kind,
        }
    }
}

/// A retention limit as Kafka writes it: -1 for none (Weir's 0).
fn limit(v: u64) -> (String, i8) {
    if v == 0 {
        ("-1".into(), SOURCE_DEFAULT)
    } else {
        (v.to_string(), SOURCE_TOPIC)
    }
}

/// `DescribeConfigs`: every resource asked for, each with its own error.
pub async fn describe(state: &KafkaState, req: DescribeConfigsRequest) -> DescribeConfigsResponse {
    let mut resp = DescribeConfigsResponse::default();
    for r in req.resources {
        let out = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        let entries = match r.resource_type {
            RESOURCE_TOPIC => topic(state, r.resource_name.as_str()).await,
            RESOURCE_BROKER => broker(state, r.resource_name.as_str()),
            other => Err((
                errors::INVALID_REQUEST,
                format!("resource type {other} has no configs here (topics are 2, brokers 4)"),
            )),
        };
        let result = match entries {
            Ok(entries) => {
                let wanted = |name: &str| {
                    r.configuration_keys
                        .as_ref()
                        .filter(|keys| !keys.is_empty())
                        .is_none_or(|keys| keys.iter().any(|k| k.as_str() == name))
                };
                out.with_configs(
                    entries
                        .into_iter()
                        .filter(|e| wanted(e.name))
                        .map(|e| {
                            DescribeConfigsResourceResult::default()
                                .with_name(kstr(e.name))
                                .with_value(Some(kstr(e.value)))
                                .with_read_only(e.read_only)
                                .with_config_source(e.source)
                                .with_config_type(e.kind)
                        })
                        .collect(),
                )
            }
            Err((code, message)) => out
                .with_error_code(code)
                .with_error_message(Some(kstr(message))),
        };
        resp.results.push(result);
    }
    resp
}

async fn topic(state: &KafkaState, name: &str) -> Result<Vec<Entry>, (i16, String)> {
    let info = state
        .log
        .describe_topic(Request::new(DescribeTopicRequest {
            name: name.to_string(),
        }))
        .await
        .map_err(|s| (errors::code(&s), s.message().to_string()))?
        .into_inner();
    let (ms, ms_source) = limit(info.retention_ms);
    let (bytes, bytes_source) = limit(info.retention_bytes);
    Ok(vec![
        Entry {
            name: "retention.ms",
            value: ms,
            read_only: true,
            source: ms_source,
            kind: TYPE_LONG,
        },
        Entry {
            name: "retention.bytes",
            value: bytes,
            read_only: true,
            source: bytes_source,
            kind: TYPE_LONG,
        },
        Entry::fixed("cleanup.policy", "delete", TYPE_STRING),
        // An ack of acks=all means a Raft quorum has the batch on disk.
        Entry::fixed("min.insync.replicas", info.replicas / 2 + 1, TYPE_INT),
        Entry::fixed("max.message.bytes", MAX_BATCH_BYTES, TYPE_INT),
        Entry::fixed("compression.type", "producer", TYPE_STRING),
        Entry::fixed("message.timestamp.type", "CreateTime", TYPE_STRING),
        Entry::fixed("unclean.leader.election.enable", "false", TYPE_BOOLEAN),
    ])
}

fn broker(state: &KafkaState, name: &str) -> Result<Vec<Entry>, (i16, String)> {
    let id: u64 = name.parse().map_err(|_| {
        (
            errors::INVALID_REQUEST,
            format!("broker '{name}' is not a node id"),
        )
    })?;
    let nodes = state
        .ctx
        .registry
        .catalog()
        .map(|c| c.nodes.len())
        .unwrap_or(1);
    if !state
        .ctx
        .registry
        .catalog()
        .is_ok_and(|c| c.nodes.contains_key(&id))
    {
        return Err((
            errors::INVALID_REQUEST,
            format!("node {id} is not a member of the cluster"),
        ));
    }
    Ok(vec![
        Entry::fixed("broker.id", id, TYPE_INT),
        Entry::fixed("auto.create.topics.enable", "true", TYPE_BOOLEAN),
        Entry::fixed(
            "num.partitions",
            super::topics::DEFAULT_PARTITIONS,
            TYPE_INT,
        ),
        Entry::fixed(
            "default.replication.factor",
            nodes.clamp(1, crate::placement::DEFAULT_REPLICAS as usize),
            TYPE_INT,
        ),
        Entry::fixed("message.max.bytes", MAX_BATCH_BYTES, TYPE_INT),
        Entry::fixed("log.cleanup.policy", "delete", TYPE_STRING),
    ])
}
