//! The dead-letter topic of a job's source (`<topic>.dlq`, as Kafka Connect's): records a task
//! cannot decode go there with the reason, as JSON rows SQL can read, and the job goes on.
//!
//! Each record's letter lands once across crashes, replays and task moves: a task appends its
//! letters as a deterministic producer of its own (fixed by the job and source partition), numbering
//! each append by the source offset after its last letter, and sends letters in offset order, so
//! the topic refuses a replayed letter as a number it already holds (as a job's topic sink does,
//! see `crate::job`).

use bytes::Bytes;
use weir_proto::format::{RecordFormat, TopicFormat};
use weir_proto::table::{Column, ColumnType};

use crate::cluster::{Cluster, ClusterError, NewRecord, NewTopic, TopicMeta};

/// The dead-letter topic of `source`.
pub fn topic_name(source: &str) -> String {
    format!("{source}.dlq")
}

/// The columns of a dead letter.
fn format() -> TopicFormat {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        nullable: true,
    };
    TopicFormat {
        kind: RecordFormat::Json,
        columns: vec![
            col("job", ColumnType::Utf8),
            col("source_partition", ColumnType::Int32),
            col("source_offset", ColumnType::Int64),
            col("reason", ColumnType::Utf8),
            col("record", ColumnType::Utf8),
        ],
    }
}

/// Creates the dead-letter topic of `source` unless it exists (one partition, as many replicas
/// as the source).
pub async fn ensure(cluster: &dyn Cluster, source: &TopicMeta) -> Result<(), ClusterError> {
    let name = topic_name(&source.name);
    if cluster.topic(&name)?.is_some() {
        return Ok(());
    }
    match cluster
        .create_topic(NewTopic {
            name,
            partitions: 1,
            replicas: source.replicas.max(1),
            retention_ms: 0,
            format: Some(format()),
        })
        .await
    {
        Ok(()) | Err(ClusterError::AlreadyExists(_)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One record that did not decode.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Its offset in the source partition.
    pub offset: u64,
    /// Why it did not decode.
    pub reason: String,
    /// The record's value as it was (invalid UTF-8 replaced).
    pub record: String,
}

/// Appends dead letters of `job`'s task on `partition` of `source` to its dead-letter topic, as
/// `producer` (id, epoch), once: the letters must come after every letter this producer sent
/// before, in offset order.
pub async fn send(
    cluster: &dyn Cluster,
    (job, source, partition): (&str, &str, u32),
    producer: (u64, u64),
    letters: Vec<DeadLetter>,
) -> Result<(), ClusterError> {
    let Some(sequence) = letters.iter().map(|l| l.offset + 1).max() else {
        return Ok(());
    };
    let records = letters
        .into_iter()
        .map(|l| NewRecord {
            partition: Some(0),
            key: None,
            value: Bytes::from(
                serde_json::json!({
                    "job": job,
                    "source_partition": partition,
                    "source_offset": l.offset,
                    "reason": l.reason,
                    "record": l.record,
                })
                .to_string(),
            ),
            timestamp_ms: None,
        })
        .collect();
    cluster
        .produce_numbered(&topic_name(source), producer, sequence, records, 0)
        .await
}
