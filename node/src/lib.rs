//! weir-node: the Weir server. Every node runs the same code; any node answers any request.
//!
//! - [`node`]: start-up and shut-down: identity, bootstrap or join, servers, background loops.
//! - [`groups`]: the actor owning this node's Raft groups (start, drop, membership reconciliation).
//! - [`raft`]: Raft transport (outgoing network, incoming service) and per-kind timing.
//! - [`cluster`]: the `Cluster` service (join, status, heartbeats) and the node context.
//! - [`liveness`]: member heartbeats as the metadata leader sees them.
//! - [`placement`]: where replicas go; the placement loop of the metadata leader.
//! - [`log`]: Kafka-like topics: the `Log` service, consumer groups, retention.
//! - [`region`]: HBase-like tables: the `Kv` service and region splits.
//! - [`compute`]: stream jobs: the `Jobs` service, task placement, and the tasks this node runs.
//! - [`names`]: naming rules of topics and tables.
//! - [`leader`]: writing through a group's leader and forwarding to it.
//! - [`http`]: record ingest, health, readiness and metrics over HTTP.
//! - [`metrics`]: Prometheus metrics.
//! - [`peers`]: shared gRPC channels to other nodes.
//! - [`error`]: the node's error type and its mapping to gRPC status codes.

pub mod cluster;
pub mod compute;
pub mod error;
pub mod groups;
pub mod http;
pub mod kafka;
pub mod leader;
pub mod liveness;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod names;
pub mod node;
pub mod peers;
pub mod placement;
pub mod raft;
pub mod region;
pub mod sql;

pub use node::{start, start_with, NodeConfig, NodeEnv, RunningNode};
