//! The log: Kafka-like topics served by the partition groups of this node.
//!
//! - [`service`]: the `Log` gRPC service (topics, produce, fetch, offsets, consumer groups).
//! - [`coordinator`]: consumer-group membership and partition assignment.
//! - [`retention`]: drops old batches of the partitions this node leads.
//! - [`read`]: reads of a partition led here, for fetches and for stream tasks on this node.
//! - [`ingest`]: HTTP ingest requests to one partition joined into one batch per send.
//! - [`produce_order`]: idempotent producers' batches enter a partition's log in sequence order.

pub mod coordinator;
pub mod ingest;
pub mod produce_order;
pub mod read;
pub mod retention;
pub mod service;
