//! SQL on this node: the engine of `weir-sql` over the cluster (through [`access::NodeCluster`])
//! and the gRPC service that runs statements.

pub mod access;
pub mod service;
