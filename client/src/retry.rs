//! Which failures are worth retrying, and how long to wait between attempts.
//!
//! A request that reaches a node which is not (or no longer) the leader, a node that is down, or a
//! group that is electing a leader all heal on their own within seconds; the client rides them out
//! by retrying with exponential backoff until a deadline. Answers that would be the same on every
//! attempt (bad input, unknown topic, offset out of range, already exists) are returned at once.

use std::time::Duration;

use tokio::time::Instant;
use tonic::{Code, Status};

use crate::error::{is_fenced, is_transport, ClientError};

/// First pause after a failed attempt.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(20);
/// Longest pause between two attempts: a request waiting out a leader election (about two
/// seconds after a node dies) lands within a quarter second of the new leader, at the cost of four
/// small attempts a second while it waits.
pub const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// Exponential backoff: 20 ms, 40 ms, 80 ms, ... capped at 250 ms.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(INITIAL_BACKOFF, MAX_BACKOFF)
    }
}

impl Backoff {
    /// A backoff starting at `initial` and doubling up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial.min(max),
            max,
        }
    }

    /// The pause before the next attempt; each call doubles the following one.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        delay
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The node does not lead the group; the address of the leader it knows, if any.
    NotLeader(Option<String>),
    /// The node or the connection is unavailable; try again, maybe elsewhere.
    Unavailable,
    /// Retrying cannot help.
    Fail,
}

/// Sorts a failed call into retry or give-up.
pub(crate) fn classify(status: &Status) -> Verdict {
    if is_transport(status) {
        return Verdict::Unavailable;
    }
    // Same code as "not leader", but only rejoining the group helps.
    if is_fenced(status) {
        return Verdict::Fail;
    }
    match status.code() {
        Code::FailedPrecondition => {
            let hint = status
                .metadata()
                .get(weir_proto::LEADER_METADATA_KEY)
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .map(str::to_string);
            Verdict::NotLeader(hint)
        }
        // UNKNOWN: the write's leader changed before it committed. Idempotent requests retry;
        // callers of non-idempotent ones (compare-and-set) must not, see `is_ambiguous`.
        // CANCELLED: a stream reset on the way (a node between died mid-request), likewise.
        Code::Unavailable | Code::Aborted | Code::Unknown | Code::Cancelled => Verdict::Unavailable,
        _ => Verdict::Fail,
    }
}

/// Whether a failed call may succeed if sent again (to the same node or the leader it names):
/// for a server that relays an idempotent request, as the client itself retries.
pub fn worth_retrying(status: &Status) -> bool {
    classify(status) != Verdict::Fail
}

/// True when a failed request may nevertheless have been applied: the connection broke before
/// the answer, or the server said the outcome is unknown.
pub(crate) fn is_ambiguous(status: &Status) -> bool {
    is_transport(status) || matches!(status.code(), Code::Unknown | Code::Cancelled)
}

/// Tracks the attempts of one logical request against its deadline.
#[derive(Debug)]
pub(crate) struct Attempts {
    backoff: Backoff,
    started: Instant,
    deadline: Instant,
    count: u32,
    /// Whether an earlier attempt may have been applied by the server even though it failed.
    pub(crate) ambiguous: bool,
}

impl Attempts {
    /// Starts counting; the request may be retried until `budget` has passed.
    pub(crate) fn new(budget: Duration) -> Self {
        let started = Instant::now();
        Attempts {
            backoff: Backoff::default(),
            started,
            deadline: started + budget,
            count: 0,
            ambiguous: false,
        }
    }

    /// Records that an attempt is being made.
    pub(crate) fn begin(&mut self) {
        self.count += 1;
    }

    /// Waits before the next attempt, or returns the failure if the deadline has passed.
    ///
    /// The last pause is shortened so that one final attempt is made right at the deadline.
    pub(crate) async fn pause(&mut self, last: ClientError) -> Result<(), ClientError> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(ClientError::RetriesExhausted {
                attempts: self.count,
                elapsed: now - self.started,
                last: Box::new(last),
            });
        }
        let delay = self.backoff.next_delay().min(self.deadline - now);
        tracing::debug!(attempt = self.count, ?delay, error = %last, "retrying");
        tokio::time::sleep(delay).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataValue;

    #[test]
    fn backoff_doubles_from_20ms_and_caps_at_250ms() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![20, 40, 80, 160, 250, 250, 250]);
    }

    #[test]
    fn backoff_never_starts_above_its_cap() {
        let mut b = Backoff::new(Duration::from_secs(5), Duration::from_millis(300));
        assert_eq!(b.next_delay(), Duration::from_millis(300));
        assert_eq!(b.next_delay(), Duration::from_millis(300));
    }

    #[test]
    fn not_leader_carries_the_leader_hint() {
        let mut status = Status::failed_precondition("not the leader of partition 2");
        status.metadata_mut().insert(
            weir_proto::LEADER_METADATA_KEY,
            MetadataValue::from_static("10.0.0.3:7400"),
        );
        assert_eq!(
            classify(&status),
            Verdict::NotLeader(Some("10.0.0.3:7400".into()))
        );
        assert_eq!(
            classify(&Status::failed_precondition("not leader")),
            Verdict::NotLeader(None)
        );
    }

    #[test]
    fn a_fenced_member_is_not_retried() {
        let mut status = Status::failed_precondition("stale generation 3");
        status.metadata_mut().insert(
            weir_proto::FENCED_METADATA_KEY,
            MetadataValue::from_static("1"),
        );
        assert_eq!(classify(&status), Verdict::Fail);
        let err = ClientError::from_status("n1:7400", &status);
        assert!(matches!(err, ClientError::Fenced(_)), "{err:?}");
        assert_eq!(err.code(), Code::FailedPrecondition);
    }

    #[test]
    fn permanent_errors_are_not_retried() {
        for status in [
            Status::invalid_argument("bad"),
            Status::not_found("no topic"),
            Status::out_of_range("offset 9 > 5"),
            Status::already_exists("topic exists"),
            Status::internal("bug"),
        ] {
            assert_eq!(classify(&status), Verdict::Fail, "{status:?}");
        }
    }

    #[test]
    fn unavailable_and_broken_connections_are_retried() {
        assert_eq!(
            classify(&Status::unavailable("no leader yet")),
            Verdict::Unavailable
        );
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let broken = Status::from_error(Box::new(io));
        assert_eq!(broken.code(), Code::Unknown);
        assert_eq!(classify(&broken), Verdict::Unavailable);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_stop_at_the_deadline() {
        let mut attempts = Attempts::new(Duration::from_millis(100));
        let mut made = 0;
        let err = loop {
            attempts.begin();
            made += 1;
            let failure = ClientError::Status {
                code: Code::Unavailable,
                message: "down".into(),
            };
            if let Err(e) = attempts.pause(failure).await {
                break e;
            }
        };
        // 20 + 40 ms, then a pause cut to the remaining 40 ms, then one last try at the deadline.
        assert_eq!(made, 4);
        match err {
            ClientError::RetriesExhausted {
                attempts, elapsed, ..
            } => {
                assert_eq!(attempts, 4);
                assert_eq!(elapsed, Duration::from_millis(100));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
