//! weir-client: the Rust client of a Weir cluster, and the library behind the `weir` CLI.
//!
//! The crate, one concept per module:
//!
//! - [`client`]: [`Client`], a cheap-to-clone handle to the cluster: catalog calls, consumer-group
//!   calls, and produce / fetch sent straight to each partition's leader.
//! - [`producer`]: [`Producer`], batching records per partition (size and linger), several batches in
//!   flight, a future per record that resolves to its offset.
//! - [`consumer`]: [`Consumer`], reading explicit partitions or as a consumer-group member, with long
//!   polling, committed offsets and heartbeats.
//! - [`table`]: [`Table`], rows of a table read and written by key at each region's leader,
//!   compare-and-set, idempotent merges of aggregates, and scans that cross region boundaries.
//! - [`partitioner`]: which partition a record goes to (key hash, or sticky round-robin per batch).
//! - [`error`]: [`ClientError`], every failure with its gRPC code, printable as one line.
//! - [`retry`]: which failures are retried (not leader, unavailable, broken connection) and the
//!   exponential backoff between attempts.
//! - `routing`: the per-topic cache of partition leaders.
//! - `pool`: one lazily connected channel per node address, and which nodes failed recently.
//!
//! ```no_run
//! use weir_client::{Client, Producer, ProducerConfig};
//!
//! # async fn demo() -> weir_client::Result<()> {
//! let client = Client::connect("127.0.0.1:7400").await?;
//! let producer = Producer::new(client, "events", ProducerConfig::default()).await?;
//! let ack = producer.send(Some(b"user-1"), b"clicked", None).await?;
//! producer.flush().await?;
//! println!("stored at offset {:?}", ack.await?);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod client;
pub mod consumer;
pub mod error;
pub mod jobs;
pub mod partitioner;
mod pool;
pub mod producer;
pub mod retry;
mod routing;
pub mod sql;
pub mod table;

pub use client::{Client, ClientConfig, NewTopic};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, StartFrom};
pub use error::{ClientError, Result};
pub use jobs::NewJob;
pub use partitioner::Partitioner;
pub use pool::Connector;
pub use producer::{now_ms, Producer, ProducerConfig, ProducerStats, RecordAck};
pub use sql::{SqlEvent, SqlSession, SqlStream};
pub use table::{
    CasAction, CasOutcome, Expectation, MergeOp, MergeOverlapOut, RowMerge, ScanOptions, Table,
    TableRow,
};
pub use weir_proto::table::{ColumnType, TableSchema, Value};
pub use weir_proto::v1::{
    Acks, FetchResponse, ListOffsetsResponse, Member, PartitionInfo, StatusResponse, TopicInfo,
};
