//! Prometheus metrics of the node, rendered by `GET /metrics`.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use weir_proto::v1::GroupReport;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls reuse it).
pub fn install() {
    HANDLE.get_or_init(|| {
        let buckets = [
            0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ];
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("seconds".into()), &buckets)
            .ok()?
            .install_recorder()
            .ok()
    });
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    HANDLE
        .get()
        .and_then(|h| h.as_ref())
        .map(|h| h.render())
        .unwrap_or_default()
}

/// Records an acknowledged produce request.
pub fn produced(records: u32, latency: Duration) {
    counter!("weir_produce_requests_total").increment(1);
    counter!("weir_produce_records_total").increment(u64::from(records));
    histogram!("weir_produce_latency_seconds").record(latency.as_secs_f64());
}

/// Records one stage of a produce request led here: `order` (waiting for the producer's earlier
/// batches to be proposed), `commit` (proposed to applied on a quorum), as Kafka splits its request
/// time into local, remote and queue time.
pub fn produce_stage(stage: &'static str, took: Duration) {
    histogram!("weir_produce_stage_seconds", "stage" => stage).record(took.as_secs_f64());
}

/// Records the round trip of one append a leader streamed to a follower: sent, appended and
/// flushed by the follower, answered. A write with `acks=all` waits for the faster follower's.
pub fn append_answered(round_trip: Duration) {
    histogram!("weir_raft_append_round_trip_seconds").record(round_trip.as_secs_f64());
}

/// Records a fetch answer.
pub fn fetched(records: u64, latency: Duration) {
    counter!("weir_fetch_requests_total").increment(1);
    counter!("weir_fetch_records_total").increment(records);
    histogram!("weir_fetch_latency_seconds").record(latency.as_secs_f64());
}

/// Records a table request a client sent to this node (`op`: get, write, cas, scan) and the rows
/// it read or wrote.
pub fn kv_request(op: &'static str, rows: u64, latency: Duration) {
    counter!("weir_kv_requests_total", "op" => op).increment(1);
    counter!("weir_kv_rows_total", "op" => op).increment(rows);
    histogram!("weir_kv_latency_seconds", "op" => op).record(latency.as_secs_f64());
}

/// Records the memory the regions' columnar images for scans take on this node.
pub fn scan_cache(bytes: usize) {
    gauge!("weir_scan_cache_bytes").set(bytes as f64);
}

/// Records a region split applied by a region this node leads.
pub fn region_split() {
    counter!("weir_region_splits_total").increment(1);
}

/// Records a replica deleted from this node (its group was deleted, or moved away and its
/// removal from the group's membership confirmed).
pub fn replica_dropped() {
    counter!("weir_replicas_dropped_total").increment(1);
}

/// Records a pre-vote started because the node leading a group stopped answering probes.
pub fn failover_prevote() {
    counter!("weir_failover_prevotes_total").increment(1);
}

/// Records a handover of a group this node led to another voter, to spread leadership.
pub fn leader_handover() {
    counter!("weir_leader_handovers_total").increment(1);
}

/// Records a snapshot sent to a replica: its bytes, and whether the replica kept part of its own
/// copy (a partition replica that was behind gets only what it missed).
pub fn snapshot_sent(bytes: u64, incremental: bool) {
    counter!("weir_snapshots_sent_total", "incremental" => incremental.to_string()).increment(1);
    counter!("weir_snapshot_bytes_sent_total").increment(bytes);
}

/// Records where each group's Raft log starts and ends on this node: entries up to the purged
/// index are in a snapshot only, so a follower behind it gets a snapshot rather than entries.
pub fn record_raft_log(group: u64, purged_index: u64, last_index: u64) {
    let group = group.to_string();
    gauge!("weir_raft_log_purged_index", "group" => group.clone()).set(purged_index as f64);
    gauge!("weir_raft_log_last_index", "group" => group).set(last_index as f64);
}

/// Records the Raft groups this node holds and leads, and the worst replication lag, then counts
/// one more tick of the loop that records them: a reader that sees the count move knows the
/// gauges are at least that fresh.
pub fn record_groups(reports: &[GroupReport]) {
    gauge!("weir_raft_groups_held").set(reports.len() as f64);
    gauge!("weir_raft_groups_led").set(reports.iter().filter(|r| r.leader).count() as f64);
    let lag = reports.iter().map(|r| r.max_lag).max().unwrap_or(0);
    gauge!("weir_raft_replication_lag_entries").set(lag as f64);
    counter!("weir_node_heartbeats_total").increment(1);
}

/// Records the storage engine's group-commit counters.
pub fn record_engine(fsyncs: u64, synced_appends: u64) {
    gauge!("weir_wal_fsyncs").set(fsyncs as f64);
    gauge!("weir_wal_synced_appends").set(synced_appends as f64);
}
