//! The Kafka wire protocol: existing Kafka producers, consumers and tools talk to any node.
//!
//! Every node listens for Kafka clients (`--kafka`) and answers with the cluster as Kafka sees it:
//! brokers are Weir nodes, a partition's leader is its Raft group's leader, topics and offsets are
//! Weir's. Requests are decoded with the `kafka-protocol` crate and served by the same log service
//! the gRPC API uses, so records written through either are read through the other.
//!
//! - [`connection`]: framing, request headers, in-order answers, malformed frames.
//! - [`versions`]: the APIs and versions served (what `ApiVersions` answers).
//! - [`errors`]: Weir's errors as the Kafka error codes clients act on.
//! - [`topics`]: `Metadata`, `CreateTopics`, `DeleteTopics`, `InitProducerId`.
//! - [`produce`]: `Produce` (batches stored as they came).
//! - [`fetch`]: `Fetch` (long polling) and `ListOffsets`.
//! - [`epochs`]: `OffsetForLeaderEpoch` (leader epochs are Raft terms).
//! - [`configs`]: topic and broker settings (`DescribeConfigs`).
//! - [`offsets`]: `OffsetCommit`, `OffsetFetch`.
//! - [`groups`]: the group coordinator (generations, members, assignments).
//! - [`members`]: `FindCoordinator`, `JoinGroup`, `SyncGroup`, `Heartbeat`, `LeaveGroup`,
//!   `ListGroups`, `DescribeGroups`.

pub mod configs;
pub mod connection;
pub mod epochs;
pub mod errors;
pub mod fetch;
pub mod groups;
pub mod members;
pub mod offsets;
pub mod produce;
pub mod topics;
pub mod versions;

use std::sync::Arc;

use kafka_protocol::protocol::StrBytes;
use tokio::net::TcpListener;

use crate::cluster::NodeContext;
use crate::log::service::LogService;

/// What every Kafka request handler reaches: the node and its log service.
#[derive(Clone)]
pub struct KafkaState {
    /// The node.
    pub ctx: Arc<NodeContext>,
    /// The log service the gRPC API also serves.
    pub log: Arc<LogService>,
    /// This node's group coordinator (serving while it leads the offsets group).
    pub groups: groups::Coordinator,
}

/// Serves Kafka clients on `listener` until `stopped` resolves.
pub async fn serve(
    state: KafkaState,
    listener: TcpListener,
    stopped: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stopped);
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    tokio::spawn(connection::run(state.clone(), socket, peer));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a Kafka connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// A Kafka string from a Rust one.
pub(crate) fn kstr(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Splits an advertised `host:port` into its parts (port 0 when it has none).
pub(crate) fn host_port(addr: &str) -> (String, i32) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (
            h.trim_start_matches('[').trim_end_matches(']').to_string(),
            p.parse().unwrap_or(0),
        ),
        None => (addr.to_string(), 0),
    }
}
