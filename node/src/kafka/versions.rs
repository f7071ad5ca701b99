//! The Kafka APIs and versions this node serves: what `ApiVersions` answers, and the gate every
//! request passes.
//!
//! Ranges stop below versions that would change what is served: Fetch 13 and Metadata 10's topic
//! ids in requests, ListOffsets 7's max-timestamp lookup, OffsetFetch 8's batched groups, FindCoordinator
//! 4's batched keys, DeleteTopics 6's topic ids. Clients negotiate down to these.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// (API, lowest version, highest version) served.
pub const SERVED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 0, 9),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 5),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DescribeConfigs, 1, 4),
];

/// Whether `key` at `version` is served.
pub fn serves(key: ApiKey, version: i16) -> bool {
    SERVED
        .iter()
        .any(|(k, lo, hi)| *k == key && (*lo..=*hi).contains(&version))
}

/// The `ApiVersions` answer: every served API with its range.
pub fn api_versions() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = SERVED
        .iter()
        .map(|(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*lo)
                .with_max_version(*hi)
        })
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_served_range_is_one_the_codec_decodes() {
        for (k, lo, hi) in SERVED {
            let valid = k.valid_versions();
            assert!(
                valid.min <= *lo && *hi <= valid.max,
                "{k:?} {lo}..={hi} outside {}..={}",
                valid.min,
                valid.max
            );
        }
    }
}
