//! What a statement reports besides its rows: records of a topic that did not decode, counted per
//! topic with the first reason, so a query over messy input says what it skipped instead of
//! silently dropping it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use datafusion::prelude::SessionConfig;

tokio::task_local! {
    /// Collects the warnings of the topic scans planned while it is set, for statements planned
    /// in a session Weir does not configure (datafusion-postgres' extended protocol).
    static PLANNED: Arc<QueryWarnings>;
}

/// Records skipped by one statement, per topic.
#[derive(Debug, Default)]
pub struct QueryWarnings {
    skipped: Mutex<BTreeMap<String, Skipped>>,
}

#[derive(Debug)]
struct Skipped {
    count: u64,
    /// Partition, offset and reason of the first record skipped.
    first: (u32, u64, String),
}

impl QueryWarnings {
    /// Runs `work` with `self` collecting what the topic scans planned within it skip, when
    /// their session carries no warnings of its own.
    pub async fn collect_in<F: Future>(self: Arc<Self>, work: F) -> F::Output {
        PLANNED.scope(self, work).await
    }

    /// Where a topic scan planned now in a session with `config` counts what it skips: the
    /// session's warnings, else those of the [`QueryWarnings::collect_in`] it runs within.
    pub fn of(config: &SessionConfig) -> Option<Arc<QueryWarnings>> {
        config
            .get_extension::<QueryWarnings>()
            .or_else(|| PLANNED.try_with(Arc::clone).ok())
    }

    /// Notes that the record at `partition`/`offset` of `topic` did not decode, and why.
    pub fn record_undecodable(&self, topic: &str, partition: u32, offset: u64, reason: &str) {
        let mut skipped = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        let entry = skipped.entry(topic.to_string()).or_insert_with(|| Skipped {
            count: 0,
            first: (partition, offset, reason.to_string()),
        });
        entry.count += 1;
    }

    /// One line per topic with skipped records: how many, and the first one's place and reason.
    pub fn lines(&self) -> Vec<String> {
        let skipped = self.skipped.lock().unwrap_or_else(|p| p.into_inner());
        skipped
            .iter()
            .map(|(topic, s)| {
                let (partition, offset, reason) = &s.first;
                format!(
                    "{} record{} of topic '{topic}' did not decode and {} skipped (first: \
                     partition {partition}, offset {offset}: {reason})",
                    s.count,
                    if s.count == 1 { "" } else { "s" },
                    if s.count == 1 { "was" } else { "were" },
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_topic_and_keeps_the_first_reason() {
        let w = QueryWarnings::default();
        assert!(w.lines().is_empty());
        w.record_undecodable("a", 1, 7, "record is not JSON");
        w.record_undecodable("a", 0, 2, "other");
        w.record_undecodable("b", 0, 0, "bad");
        let lines = w.lines();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("2 records of topic 'a'")
                && lines[0].contains("partition 1, offset 7: record is not JSON"),
            "{lines:?}"
        );
        assert!(lines[1].starts_with("1 record of topic 'b'"), "{lines:?}");
    }
}
