//! Compute: the stream jobs this node runs.
//!
//! - [`service`]: the `Jobs` gRPC service (job definitions into the catalog).
//! - [`assign`]: placement's decision of which node runs which task.
//! - [`pool`]: the actor that starts and stops this node's tasks as the catalog assigns them.

pub mod assign;
pub mod pool;
pub mod service;
