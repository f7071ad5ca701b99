//! Compute: the stream jobs and scheduled runs this node runs.
//!
//! - [`service`]: the `Jobs` gRPC service (job and schedule definitions into the catalog).
//! - [`assign`]: placement's decision of which node runs which task.
//! - [`pool`]: the actor that starts and stops this node's tasks as the catalog assigns them.
//! - [`scheduler`]: the actor that claims due ticks of schedules and runs them.

pub mod assign;
pub mod pool;
pub mod scheduler;
pub mod service;
