//! [`ClientError`]: every way a call to the cluster can fail, reduced to one line a person can act on.

use std::error::Error as _;
use std::time::Duration;

use tonic::{Code, Status};

/// Result type of every fallible call in this crate.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// Why a client call failed.
///
/// Server-side failures keep their gRPC code so callers can branch on it ([`ClientError::code`]);
/// the `Display` form is one line, suitable for `error: ...` on a terminal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{message} ({})", code_name(*code))]
    Status {
        /// The gRPC status code.
        code: Code,
        /// The server's explanation.
        message: String,
    },
    /// The node could not be reached, or the connection broke before it answered.
    #[error("cannot reach {addr}: {message}")]
    Transport {
        /// The node's address.
        addr: String,
        /// What the network stack reported.
        message: String,
    },
    /// A transient failure (no leader, node down) lasted longer than the retry deadline.
    #[error("gave up after {attempts} attempts in {:.1}s: {last}", elapsed.as_secs_f64())]
    RetriesExhausted {
        /// How many times the request was sent.
        attempts: u32,
        /// How long the client kept trying.
        elapsed: Duration,
        /// The error of the last attempt.
        last: Box<ClientError>,
    },
    /// The server address given to the client is not a valid `HOST:PORT`.
    #[error("invalid server address {addr:?}: {reason}")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why it was rejected.
        reason: String,
    },
    /// An argument was rejected before anything was sent.
    #[error("{0}")]
    InvalidArgument(String),
    /// A fetched record batch failed its checksum or could not be decoded.
    #[error("corrupt record batch at offset {base_offset} of {topic}/{partition}: {reason}")]
    CorruptBatch {
        /// Topic the batch was read from.
        topic: String,
        /// Partition the batch was read from.
        partition: u32,
        /// Offset of the batch's first record.
        base_offset: u64,
        /// What the decoder found wrong.
        reason: String,
    },
    /// The consumer group refused a member's request: its generation is stale or the partition is
    /// not its own. Retrying cannot help; the member rejoins (heartbeats) first.
    #[error("{0} (FAILED_PRECONDITION)")]
    Fenced(String),
    /// The producer was dropped before the record was sent.
    #[error("the producer shut down before the record was acknowledged")]
    Closed,
}

impl ClientError {
    /// The gRPC code that best describes the failure, for callers that branch on the kind of error.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status { code, .. } => *code,
            ClientError::Transport { .. } => Code::Unavailable,
            ClientError::RetriesExhausted { last, .. } => last.code(),
            ClientError::InvalidAddress { .. } | ClientError::InvalidArgument(_) => {
                Code::InvalidArgument
            }
            ClientError::CorruptBatch { .. } => Code::DataLoss,
            ClientError::Fenced(_) => Code::FailedPrecondition,
            ClientError::Closed => Code::Cancelled,
        }
    }

    /// Converts a status received from (or while talking to) `addr`.
    ///
    /// A status created by tonic itself, rather than sent by the server, carries the underlying
    /// I/O or HTTP/2 error as its source; that is how transport failures are told apart from answers.
    pub(crate) fn from_status(addr: &str, status: &Status) -> ClientError {
        if is_transport(status) {
            ClientError::Transport {
                addr: addr.to_string(),
                message: source_chain(status),
            }
        } else if is_fenced(status) {
            ClientError::Fenced(status.message().to_string())
        } else {
            let message = if status.message().is_empty() {
                status.code().description().to_string()
            } else {
                status.message().to_string()
            };
            ClientError::Status {
                code: status.code(),
                message,
            }
        }
    }
}

/// True when a consumer group refused a member's request for its stale generation or ownership.
pub(crate) fn is_fenced(status: &Status) -> bool {
    status
        .metadata()
        .contains_key(weir_proto::FENCED_METADATA_KEY)
}

/// True when the status was produced locally because the connection failed.
pub(crate) fn is_transport(status: &Status) -> bool {
    status.source().is_some()
}

/// Joins a status message with its causes, skipping repeats, so the root cause
/// ("Connection refused") is visible on the same line.
fn source_chain(status: &Status) -> String {
    let mut parts: Vec<String> = Vec::new();
    if !status.message().is_empty() {
        parts.push(status.message().to_string());
    }
    let mut source = status.source();
    while let Some(err) = source {
        let text = err.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = err.source();
    }
    if parts.is_empty() {
        parts.push(status.code().description().to_string());
    }
    parts.join(": ")
}

/// The canonical upper-case name of a gRPC code, as written in weir.proto and the gRPC spec.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_status_keeps_code_and_message() {
        let err =
            ClientError::from_status("n1:7400", &Status::not_found("topic 'x' does not exist"));
        assert_eq!(err.code(), Code::NotFound);
        assert_eq!(err.to_string(), "topic 'x' does not exist (NOT_FOUND)");
    }

    #[test]
    fn local_status_with_a_source_is_a_transport_error() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let status = Status::from_error(Box::new(io));
        let err = ClientError::from_status("n1:7400", &status);
        assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(err.to_string().contains("Connection refused"), "{err}");
        assert!(err.to_string().starts_with("cannot reach n1:7400"), "{err}");
    }

    #[test]
    fn exhausted_retries_report_the_last_cause() {
        let err = ClientError::RetriesExhausted {
            attempts: 7,
            elapsed: Duration::from_millis(2500),
            last: Box::new(ClientError::Status {
                code: Code::Unavailable,
                message: "no leader for partition 0".into(),
            }),
        };
        assert_eq!(err.code(), Code::Unavailable);
        assert_eq!(
            err.to_string(),
            "gave up after 7 attempts in 2.5s: no leader for partition 0 (UNAVAILABLE)"
        );
    }
}
