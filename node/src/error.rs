//! The node's error type and its one mapping to gRPC status codes.

use tonic::{Code, Status};
use weir_storage::catalog::Refusal;

/// Why a request failed, in terms a client can act on.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The named topic (or partition) does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed or violates a limit.
    #[error("{0}")]
    InvalidArgument(String),
    /// The object already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// An offset outside the partition's stored range.
    #[error("{0}")]
    OutOfRange(String),
    /// This node does not lead the group; `leader` is the leader's address when known.
    #[error("node does not lead group {group}")]
    NotLeader {
        /// The group.
        group: u64,
        /// The leader's address, if known.
        leader: Option<String>,
    },
    /// Temporarily unable to serve (no leader elected yet, node starting): retry.
    #[error("{0}")]
    Unavailable(String),
    /// The request must be retried after an earlier one (an idempotent producer's batch that
    /// overtook an earlier batch).
    #[error("{0}")]
    Aborted(String),
    /// The request is valid but the state does not allow it (a stale split report).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A consumer-group member's request the group refuses (stale generation, not the partition's
    /// owner): the member must rejoin, retrying as it is cannot help.
    #[error(transparent)]
    Fenced(#[from] crate::log::coordinator::Fenced),
    /// A jumping producer's batch from an epoch a newer instance has replaced.
    #[error("{0}")]
    ProducerFenced(String),
    /// A region write whose fencing token a newer instance of its writer has replaced.
    #[error("{0}")]
    WriterFenced(String),
    /// The answer of another node this request was forwarded to, passed on as it is.
    #[error("{0}")]
    Remote(Status),
    /// A write may or may not have been applied (its leader changed before it committed).
    #[error("{0}")]
    OutcomeUnknown(String),
    /// A storage or internal failure.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<weir_storage::StorageError> for NodeError {
    fn from(e: weir_storage::StorageError) -> Self {
        NodeError::Internal(e.to_string())
    }
}

impl NodeError {
    /// A command the catalog refused, with the code its reason calls for. A conflict is an
    /// invalid argument, not FAILED_PRECONDITION: clients read that code as "not the leader"
    /// and retry.
    pub fn refused(kind: Refusal, m: String) -> NodeError {
        match kind {
            Refusal::NotFound => NodeError::NotFound(m),
            Refusal::AlreadyExists => NodeError::AlreadyExists(m),
            Refusal::Conflict => NodeError::InvalidArgument(m),
        }
    }
}

impl From<Status> for NodeError {
    fn from(s: Status) -> Self {
        NodeError::Remote(relay(s))
    }
}

impl From<NodeError> for Status {
    fn from(e: NodeError) -> Status {
        match e {
            NodeError::NotFound(m) => Status::new(Code::NotFound, m),
            NodeError::InvalidArgument(m) => Status::new(Code::InvalidArgument, m),
            NodeError::AlreadyExists(m) => Status::new(Code::AlreadyExists, m),
            NodeError::OutOfRange(m) => Status::new(Code::OutOfRange, m),
            NodeError::Unavailable(m) => Status::new(Code::Unavailable, m),
            NodeError::Aborted(m) => Status::new(Code::Aborted, m),
            NodeError::Internal(m) => Status::new(Code::Internal, m),
            NodeError::FailedPrecondition(m) => Status::new(Code::FailedPrecondition, m),
            NodeError::Remote(s) => s,
            NodeError::ProducerFenced(m) | NodeError::WriterFenced(m) => {
                let mut s = Status::new(Code::FailedPrecondition, m);
                s.metadata_mut().insert(
                    weir_proto::FENCED_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                s
            }
            NodeError::Fenced(f) => {
                let mut s = Status::new(Code::FailedPrecondition, f.to_string());
                s.metadata_mut().insert(
                    weir_proto::FENCED_METADATA_KEY,
                    tonic::metadata::MetadataValue::from_static("1"),
                );
                s
            }
            NodeError::OutcomeUnknown(m) => Status::new(Code::Unknown, m),
            NodeError::NotLeader { group, leader } => {
                let mut s = Status::new(
                    Code::FailedPrecondition,
                    format!("this node does not lead group {group}; retry on its leader"),
                );
                if let Some(addr) = leader.and_then(|a| a.parse().ok()) {
                    s.metadata_mut()
                        .insert(weir_proto::LEADER_METADATA_KEY, addr);
                }
                s
            }
        }
    }
}

/// Result type of the node.
pub type NodeResult<T> = Result<T, NodeError>;

/// The answer to pass back for a forwarded request: the other node's own status as it is, but a
/// failure of the forwarding connection itself (the node died or the stream was reset, which tonic
/// reports as CANCELLED or UNKNOWN with the I/O error as its source) becomes UNKNOWN with a message
/// saying so, since the other node may have applied the request before it went away. A connection
/// that was refused carried nothing, so that one is UNAVAILABLE: safe to send again.
pub fn relay(status: tonic::Status) -> tonic::Status {
    let Some(source) = std::error::Error::source(&status) else {
        return status;
    };
    if never_connected(source) {
        return tonic::Status::unavailable(format!(
            "the node this request was forwarded to could not be reached ({}); nothing was sent",
            status.message()
        ));
    }
    tonic::Status::unknown(format!(
        "the node this request was forwarded to failed before answering ({}); it may or may not \
         have been applied",
        status.message()
    ))
}

/// Whether `err`'s chain holds a refused connection: the peer never read a byte of the request.
fn never_connected(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
        {
            return true;
        }
        next = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_forwarding_connection_is_reported_as_unknown_outcome() {
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "reset",
        )));
        let relayed = relay(broken);
        assert_eq!(relayed.code(), tonic::Code::Unknown);
        assert!(relayed.message().contains("may or may not"));
        // A refused connection sent nothing: safe to send again, and said so.
        let refused = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "refused",
        )));
        let relayed = relay(refused);
        assert_eq!(relayed.code(), tonic::Code::Unavailable);
        assert!(relayed.message().contains("nothing was sent"));
        // The other node's own answers pass through unchanged.
        let own = tonic::Status::not_found("table 't' does not exist");
        assert_eq!(relay(own.clone()).code(), own.code());
        assert_eq!(relay(own.clone()).message(), own.message());
    }
}
