//! weir-proto: the wire formats Weir speaks.
//!
//! - [`v1`]: the gRPC services and messages generated from `proto/weir.proto` (cluster, log, tables,
//!   Raft transport).
//! - [`batch`]: the record-batch encoding producers write and consumers read. The broker checks a
//!   batch once on produce and stores it as one checksummed blob, never re-encoding it.
//! - [`kafka_batch`]: Kafka's record batch (v2), which batches produced over the Kafka protocol are
//!   stored as.
//! - [`ingest`]: the bodies of HTTP ingest requests (a JSON array or NDJSON), split into records.
//! - [`format`]: a topic's record format (JSON, CSV, text) and columns, records to rows and back.
//! - [`table`]: table schemas, typed values, and the key and row encodings of the region store.
//! - [`names`]: the closest existing name to one that does not exist, for error messages.

pub mod batch;
pub mod format;
pub mod ingest;
pub mod json_fields;
pub mod kafka_batch;
pub mod names;
pub mod random;
pub mod record;
pub mod table;

/// Generated gRPC services and messages of `weir.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("weir.v1");
}

/// gRPC metadata key that carries the leader's address on a `FAILED_PRECONDITION` "not leader" error.
pub const LEADER_METADATA_KEY: &str = "weir-leader";

/// Header naming the Raft group of a `StreamAppend` stream.
pub const RAFT_GROUP_METADATA_KEY: &str = "weir-raft-group";

/// gRPC metadata key set on the `FAILED_PRECONDITION` a consumer group gives a member whose
/// generation is stale or who commits a partition it does not own: retrying cannot help, rejoining
/// does.
pub const FENCED_METADATA_KEY: &str = "weir-fenced";
