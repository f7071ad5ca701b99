//! Cluster and topic APIs: `Metadata` (brokers are nodes, leaders are Raft leaders),
//! `CreateTopics`, `DeleteTopics`, and `InitProducerId` for idempotent producers.

use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse,
    InitProducerIdRequest, InitProducerIdResponse, MetadataRequest, MetadataResponse, ProducerId,
    TopicName,
};
use tonic::Request;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::{CreateTopicRequest, DeleteTopicRequest, ListTopicsRequest, TopicInfo};

use super::{errors, host_port, kstr, KafkaState};

/// Partitions of a topic created without a count (Kafka's `num.partitions`).
pub(crate) const DEFAULT_PARTITIONS: u32 = 1;
/// Replicas for a topic created without a replication factor: three, or fewer on a smaller cluster.
fn default_replicas(state: &KafkaState) -> u32 {
    state.ctx.registry.catalog().map_or(1, |c| {
        crate::placement::default_replicas(&c, &state.ctx.liveness)
    })
}

/// The brokers of the cluster: every node that serves Kafka clients.
pub fn brokers(state: &KafkaState) -> Vec<MetadataResponseBroker> {
    let Ok(catalog) = state.ctx.registry.catalog() else {
        return Vec::new();
    };
    catalog
        .nodes
        .values()
        .filter(|n| !n.kafka_addr.is_empty())
        .map(|n| {
            let (host, port) = host_port(&n.kafka_addr);
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(n.id as i32))
                .with_host(kstr(host))
                .with_port(port)
        })
        .collect()
}

/// A partition's leader epoch as Kafka clients see it: the leader's Raft term, -1 when unknown.
fn leader_epoch(leader: u64, term: u64) -> i32 {
    if leader == 0 || term == 0 {
        -1
    } else {
        i32::try_from(term).unwrap_or(i32::MAX)
    }
}

fn topic_entry(t: &TopicInfo) -> MetadataResponseTopic {
    let partitions = t
        .partition_info
        .iter()
        .map(|p| {
            let ids = |v: &[u64]| v.iter().map(|n| BrokerId(*n as i32)).collect::<Vec<_>>();
            let isr = if p.voters.is_empty() {
                ids(&p.replicas)
            } else {
                ids(&p.voters)
            };
            MetadataResponsePartition::default()
                .with_error_code(if p.leader == 0 {
                    errors::LEADER_NOT_AVAILABLE
                } else {
                    errors::NONE
                })
                .with_partition_index(p.partition as i32)
                .with_leader_id(BrokerId(if p.leader == 0 { -1 } else { p.leader as i32 }))
                .with_leader_epoch(leader_epoch(p.leader, p.leader_epoch))
                .with_replica_nodes(ids(&p.replicas))
                .with_isr_nodes(isr)
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(kstr(t.name.clone()))))
        .with_partitions(partitions)
}

/// `Metadata`: brokers, and the topics asked for (all when none are named). A named topic that
/// does not exist is created when the client allows it, as Kafka's `auto.create.topics.enable`.
pub async fn metadata(state: &KafkaState, req: MetadataRequest, version: i16) -> MetadataResponse {
    let mut resp = MetadataResponse::default()
        .with_brokers(brokers(state))
        .with_cluster_id(Some(kstr("weir")))
        .with_controller_id(BrokerId(state.ctx.node_id as i32));
    let topics = match state
        .log
        .list_topics(Request::new(ListTopicsRequest {}))
        .await
    {
        Ok(r) => r.into_inner().topics,
        Err(s) => {
            tracing::warn!(error = %s, "listing topics for a Kafka client failed");
            Vec::new()
        }
    };
    resp.topics = match req.topics {
        None => topics.iter().map(topic_entry).collect(),
        Some(asked) => {
            let mut out = Vec::new();
            for t in asked {
                let Some(name) = t.name else { continue };
                match topics.iter().find(|i| i.name == name.as_str()) {
                    Some(info) => out.push(topic_entry(info)),
                    None => {
                        // Before v4 a client cannot say; Kafka's default creates the topic.
                        let create = version < 4 || req.allow_auto_topic_creation;
                        let code = if create {
                            auto_create(state, name.as_str()).await
                        } else {
                            errors::UNKNOWN_TOPIC_OR_PARTITION
                        };
                        out.push(
                            MetadataResponseTopic::default()
                                .with_name(Some(name))
                                .with_error_code(code),
                        );
                    }
                }
            }
            out
        }
    };
    resp
}

/// Creates a topic a client asked metadata for; the client is told the leader is not there yet
/// and asks again.
async fn auto_create(state: &KafkaState, name: &str) -> i16 {
    let r = state
        .log
        .create_topic(Request::new(CreateTopicRequest {
            name: name.to_string(),
            partitions: DEFAULT_PARTITIONS,
            replicas: default_replicas(state),
            ..Default::default()
        }))
        .await;
    match r {
        Ok(_) => errors::LEADER_NOT_AVAILABLE,
        Err(s) if s.code() == tonic::Code::AlreadyExists => errors::LEADER_NOT_AVAILABLE,
        Err(s) if s.code() == tonic::Code::InvalidArgument => errors::INVALID_TOPIC_EXCEPTION,
        Err(s) => errors::code(&s),
    }
}

/// A topic config value in milliseconds or bytes (`-1`: no limit).
fn config_u64(configs: &[(String, Option<String>)], name: &str) -> Result<u64, String> {
    match configs.iter().find(|(n, _)| n == name) {
        None | Some((_, None)) => Ok(0),
        Some((_, Some(v))) => match v.trim().parse::<i64>() {
            Ok(n) if n < 0 => Ok(0),
            Ok(n) => Ok(n as u64),
            Err(_) => Err(format!("{name} must be a number, got '{v}'")),
        },
    }
}

/// `CreateTopics`: each topic with its partition count, replication factor, and the
/// `retention.ms` / `retention.bytes` configs (others are accepted and not applied).
pub async fn create(state: &KafkaState, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::new();
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let configs: Vec<(String, Option<String>)> = t
            .configs
            .iter()
            .map(|c| (c.name.to_string(), c.value.as_ref().map(|v| v.to_string())))
            .collect();
        let partitions = if t.num_partitions == -1 {
            DEFAULT_PARTITIONS as i32
        } else {
            t.num_partitions
        };
        let replicas = if t.replication_factor == -1 {
            default_replicas(state) as i16
        } else {
            t.replication_factor
        };
        let result = CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(partitions)
            .with_replication_factor(replicas);
        let refuse = |code: i16, msg: String| {
            result
                .clone()
                .with_error_code(code)
                .with_error_message(Some(kstr(msg)))
        };
        if partitions < 1 {
            results.push(refuse(
                errors::INVALID_PARTITIONS,
                format!("partitions must be at least 1, got {partitions}"),
            ));
            continue;
        }
        if replicas < 1 {
            results.push(refuse(
                errors::INVALID_REPLICATION_FACTOR,
                format!("replication factor must be at least 1, got {replicas}"),
            ));
            continue;
        }
        if !t.assignments.is_empty() {
            results.push(refuse(
                errors::INVALID_REQUEST,
                "manual replica assignments are not supported: Weir places replicas".into(),
            ));
            continue;
        }
        let retention = config_u64(&configs, "retention.ms")
            .and_then(|ms| Ok((ms, config_u64(&configs, "retention.bytes")?)));
        let (retention_ms, retention_bytes) = match retention {
            Ok(r) => r,
            Err(m) => {
                results.push(refuse(errors::INVALID_REQUEST, m));
                continue;
            }
        };
        if req.validate_only {
            let code = match crate::names::validate("topic", &name) {
                Ok(()) => errors::NONE,
                Err(_) => errors::INVALID_TOPIC_EXCEPTION,
            };
            results.push(result.with_error_code(code));
            continue;
        }
        let r = state
            .log
            .create_topic(Request::new(CreateTopicRequest {
                name,
                partitions: partitions as u32,
                replicas: replicas as u32,
                retention_ms,
                retention_bytes,
                format: None,
            }))
            .await;
        results.push(match r {
            Ok(_) => result,
            Err(s) => {
                let code = match s.code() {
                    tonic::Code::InvalidArgument if s.message().contains("name") => {
                        errors::INVALID_TOPIC_EXCEPTION
                    }
                    tonic::Code::InvalidArgument if s.message().contains("replica") => {
                        errors::INVALID_REPLICATION_FACTOR
                    }
                    tonic::Code::InvalidArgument if s.message().contains("partitions") => {
                        errors::INVALID_PARTITIONS
                    }
                    _ => errors::code(&s),
                };
                refuse(code, s.message().to_string())
            }
        });
    }
    CreateTopicsResponse::default().with_topics(results)
}

/// `DeleteTopics` by name.
pub async fn delete(state: &KafkaState, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut out = Vec::new();
    for name in req.topic_names {
        let r = state
            .log
            .delete_topic(Request::new(DeleteTopicRequest {
                name: name.0.to_string(),
            }))
            .await;
        let code = match r {
            Ok(_) => errors::NONE,
            Err(s) => errors::code(&s),
        };
        out.push(
            DeletableTopicResult::default()
                .with_name(Some(name))
                .with_error_code(code),
        );
    }
    DeleteTopicsResponse::default().with_responses(out)
}

/// `InitProducerId` for an idempotent producer: a new random id at epoch 0, or, when the producer
/// names its current id and epoch (after a sequence error), the same id at the next epoch, which
/// partitions take as a restart of its numbering. Transactions are not served.
pub fn init_producer_id(req: InitProducerIdRequest) -> InitProducerIdResponse {
    if req.transactional_id.is_some() {
        return InitProducerIdResponse::default()
            .with_error_code(errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let (id, epoch) = if req.producer_id.0 > 0 && (0..i16::MAX - 1).contains(&req.producer_epoch) {
        (req.producer_id.0, req.producer_epoch + 1)
    } else {
        // Never 0 (the log reads 0 as "not idempotent") and never negative (Kafka's "none").
        ((weir_proto::random::u64() >> 1).max(1) as i64, 0)
    };
    InitProducerIdResponse::default()
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch)
}
