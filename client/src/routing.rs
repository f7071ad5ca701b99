//! The leader cache: which node leads each partition of each topic the client has touched.
//!
//! Produce, fetch and offset lookups go straight to the partition's leader, saving the hop a
//! forwarding node would add. The cache is filled from `DescribeTopic`, corrected by the leader hint
//! a non-leader returns, and marked stale whenever a node turns out to be unreachable or not the
//! leader, so that the next attempt re-reads the topic's metadata.

use std::collections::BTreeMap;
use std::sync::RwLock;

use weir_proto::v1::TopicInfo;

use crate::pool::normalize;

/// Where to send a request for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// The cached leader of the partition.
    Leader(String),
    /// The topic is cached but its leader is unknown; any node will forward.
    NoLeader,
    /// The topic is not cached, or its entry is known to be out of date.
    Refresh,
}

#[derive(Debug)]
struct Entry {
    info: TopicInfo,
    stale: bool,
}

/// Cached topic metadata, keyed by topic name.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    topics: RwLock<BTreeMap<String, Entry>>,
}

impl Routes {
    /// Where to send a request for `topic`/`partition` right now.
    pub(crate) fn route(&self, topic: &str, partition: u32) -> Route {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = topics.get(topic) else {
            return Route::Refresh;
        };
        if entry.stale {
            return Route::Refresh;
        }
        match entry
            .info
            .partition_info
            .iter()
            .find(|p| p.partition == partition)
        {
            Some(p) if !p.leader_addr.is_empty() => Route::Leader(normalize(&p.leader_addr)),
            _ => Route::NoLeader,
        }
    }

    /// Replaces the cached metadata of a topic with a fresh copy.
    pub(crate) fn update(&self, info: TopicInfo) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        topics.insert(info.name.clone(), Entry { info, stale: false });
    }

    /// The cached partition count of a topic.
    pub(crate) fn partitions(&self, topic: &str) -> Option<u32> {
        let topics = self.topics.read().unwrap_or_else(|e| e.into_inner());
        topics.get(topic).map(|e| e.info.partitions)
    }

    /// Records the leader a non-leader pointed to, so the retry goes there without a metadata round
    /// trip.
    pub(crate) fn set_leader(&self, topic: &str, partition: u32, addr: &str) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = topics.get_mut(topic).and_then(|e| {
            e.info
                .partition_info
                .iter_mut()
                .find(|p| p.partition == partition)
        }) {
            p.leader_addr = addr.to_string();
            p.leader = 0;
        }
    }

    /// Marks a topic's metadata as out of date; the next request re-reads it.
    pub(crate) fn mark_stale(&self, topic: &str) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = topics.get_mut(topic) {
            e.stale = true;
        }
    }

    /// Drops a topic from the cache (after it was deleted).
    pub(crate) fn forget(&self, topic: &str) {
        let mut topics = self.topics.write().unwrap_or_else(|e| e.into_inner());
        topics.remove(topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::v1::PartitionInfo;

    fn topic(leaders: &[&str]) -> TopicInfo {
        TopicInfo {
            name: "t".into(),
            partitions: leaders.len() as u32,
            replicas: 3,
            partition_info: leaders
                .iter()
                .enumerate()
                .map(|(i, l)| PartitionInfo {
                    partition: i as u32,
                    leader_addr: l.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn routes_follow_cache_hints_and_staleness() {
        let routes = Routes::default();
        assert_eq!(routes.route("t", 0), Route::Refresh);
        routes.update(topic(&["a:1", ""]));
        assert_eq!(routes.route("t", 0), Route::Leader("a:1".into()));
        assert_eq!(routes.route("t", 1), Route::NoLeader);
        assert_eq!(routes.route("t", 7), Route::NoLeader);
        routes.set_leader("t", 1, "b:2");
        assert_eq!(routes.route("t", 1), Route::Leader("b:2".into()));
        routes.mark_stale("t");
        assert_eq!(routes.route("t", 0), Route::Refresh);
        assert_eq!(routes.partitions("t"), Some(2));
        routes.forget("t");
        assert_eq!(routes.partitions("t"), None);
    }
}
