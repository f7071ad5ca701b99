//! Weir's errors as the Kafka error codes clients act on (retry, refresh metadata, rejoin, give
//! up).

use tonic::{Code, Status};

/// No error.
pub const NONE: i16 = 0;
/// An error the server cannot classify.
pub const UNKNOWN_SERVER_ERROR: i16 = -1;
/// The requested offset is not in the partition.
pub const OFFSET_OUT_OF_RANGE: i16 = 1;
/// A batch failed validation.
pub const CORRUPT_MESSAGE: i16 = 2;
/// The topic or partition does not exist.
pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
/// The partition has no leader right now.
pub const LEADER_NOT_AVAILABLE: i16 = 5;
/// This node does not lead the partition.
pub const NOT_LEADER_OR_FOLLOWER: i16 = 6;
/// The request did not finish in time (its outcome may be unknown).
pub const REQUEST_TIMED_OUT: i16 = 7;
/// A batch is larger than the broker accepts.
pub const MESSAGE_TOO_LARGE: i16 = 10;
/// The coordinator is not available.
pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
/// This node does not coordinate the group.
pub const NOT_COORDINATOR: i16 = 16;
/// A topic name breaks the naming rules.
pub const INVALID_TOPIC_EXCEPTION: i16 = 17;
/// Not enough replicas are up to take the write.
pub const NOT_ENOUGH_REPLICAS: i16 = 19;
/// The member's generation is not the group's.
pub const ILLEGAL_GENERATION: i16 = 22;
/// The member's protocol type or protocols do not match the group's.
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
/// The member is not in the group.
pub const UNKNOWN_MEMBER_ID: i16 = 25;
/// A session timeout outside what the coordinator allows.
pub const INVALID_SESSION_TIMEOUT: i16 = 26;
/// The group is rebalancing: the member rejoins.
pub const REBALANCE_IN_PROGRESS: i16 = 27;
/// The API version is not served.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// The topic exists already.
pub const TOPIC_ALREADY_EXISTS: i16 = 36;
/// A partition count that cannot be.
pub const INVALID_PARTITIONS: i16 = 37;
/// A replication factor that cannot be.
pub const INVALID_REPLICATION_FACTOR: i16 = 38;
/// A request that is not valid.
pub const INVALID_REQUEST: i16 = 42;
/// An idempotent producer's batch came before an earlier one of its batches.
pub const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;
/// The producer was replaced by one with a newer epoch.
pub const INVALID_PRODUCER_EPOCH: i16 = 47;
/// Transactions are not served.
pub const TRANSACTIONAL_ID_AUTHORIZATION_FAILED: i16 = 53;
/// The client's leader epoch is older than the leader's: it refreshes metadata.
pub const FENCED_LEADER_EPOCH: i16 = 74;
/// The client's leader epoch is newer than the leader's: it retries.
pub const UNKNOWN_LEADER_EPOCH: i16 = 75;
/// A new member gets its id first and joins again with it.
pub const MEMBER_ID_REQUIRED: i16 = 79;
/// A produced record is not valid.
pub const INVALID_RECORD: i16 = 87;

/// A group that does not exist (for `DescribeGroups`, Kafka answers `Dead` instead).
pub const GROUP_ID_NOT_FOUND: i16 = 69;
/// A config resource type that is not served.
pub const INVALID_CONFIG: i16 = 40;

/// The error for a request made at leader epoch `client` of a partition whose leader is at
/// `leader` (-1 from a client means it does not track epochs).
pub fn epoch_check(client: i32, leader: u64) -> i16 {
    let leader = i64::try_from(leader).unwrap_or(i64::MAX);
    match i64::from(client) {
        c if c < 0 => NONE,
        c if c < leader => FENCED_LEADER_EPOCH,
        c if c > leader => UNKNOWN_LEADER_EPOCH,
        _ => NONE,
    }
}

/// The Kafka error code for a failed call of the log service.
pub fn code(s: &Status) -> i16 {
    let fenced = s.metadata().get(weir_proto::FENCED_METADATA_KEY).is_some();
    match s.code() {
        Code::Ok => NONE,
        Code::NotFound => UNKNOWN_TOPIC_OR_PARTITION,
        Code::OutOfRange => OFFSET_OUT_OF_RANGE,
        Code::AlreadyExists => TOPIC_ALREADY_EXISTS,
        Code::InvalidArgument if s.message().contains("-byte limit") => MESSAGE_TOO_LARGE,
        Code::InvalidArgument if s.message().starts_with("rejected batch") => CORRUPT_MESSAGE,
        Code::InvalidArgument => INVALID_REQUEST,
        Code::Aborted => OUT_OF_ORDER_SEQUENCE_NUMBER,
        Code::FailedPrecondition if fenced && s.message().contains("producer") => {
            INVALID_PRODUCER_EPOCH
        }
        Code::FailedPrecondition if fenced => ILLEGAL_GENERATION,
        // Not the leader (now): the client refreshes metadata and retries.
        Code::FailedPrecondition | Code::Unavailable => NOT_LEADER_OR_FOLLOWER,
        // The write may or may not have been applied: a retry of an idempotent producer is
        // recognised, as after a Kafka timeout.
        Code::Unknown | Code::DeadlineExceeded | Code::Cancelled => REQUEST_TIMED_OUT,
        _ => UNKNOWN_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_what_clients_act_on() {
        assert_eq!(
            code(&Status::not_found("topic 'x' does not exist")),
            UNKNOWN_TOPIC_OR_PARTITION
        );
        assert_eq!(
            code(&Status::unavailable("no leader")),
            NOT_LEADER_OR_FOLLOWER
        );
        assert_eq!(
            code(&Status::invalid_argument(
                "batch of 9 bytes is over the 8-byte limit"
            )),
            MESSAGE_TOO_LARGE
        );
        assert_eq!(
            code(&Status::invalid_argument("rejected batch: x")),
            CORRUPT_MESSAGE
        );
        assert_eq!(
            code(&Status::aborted("batch 3 arrived before 2")),
            OUT_OF_ORDER_SEQUENCE_NUMBER
        );
        assert_eq!(code(&Status::out_of_range("offset 9")), OFFSET_OUT_OF_RANGE);
    }

    #[test]
    fn leader_epochs_fence_older_clients_and_hold_newer_ones() {
        assert_eq!(epoch_check(-1, 7), NONE);
        assert_eq!(epoch_check(7, 7), NONE);
        assert_eq!(epoch_check(6, 7), FENCED_LEADER_EPOCH);
        assert_eq!(epoch_check(8, 7), UNKNOWN_LEADER_EPOCH);
    }
}
