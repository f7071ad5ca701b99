//! Raft timing per kind of group, sized for hundreds of groups per node.

use std::sync::Arc;

use openraft::{Config, SnapshotPolicy};

/// Raft settings of the metadata group: small, latency-sensitive, one per cluster.
pub fn metadata() -> Arc<Config> {
    build(
        250,
        1000,
        2000,
        Compaction {
            snapshot_every: 2_000,
            ..ROWS_COMPACTION
        },
    )
}

/// Default heartbeat interval of data groups, in milliseconds.
pub const DATA_HEARTBEAT_MS: u64 = 500;

/// Raft settings of data groups (partitions, offsets): slower heartbeats since a node holds many.
/// A follower's lease (it votes for nobody else) is `election_timeout_max`, four intervals; a
/// group left to itself elects after the lease plus a random 2 to 4 intervals, and the
/// [`failover`](super::failover) probes start a pre-vote right after the lease. openraft
/// randomises each election timeout in the range, so groups do not beat in step.
/// `WEIR_RAFT_HEARTBEAT_MS` trades idle CPU (one heartbeat per group and follower per interval)
/// against failover time.
/// Offsets snapshots copy their rows, so they are taken rarely.
pub fn data() -> Arc<Config> {
    let hb = data_heartbeat_ms();
    build(hb, hb * 2, hb * 4, ROWS_COMPACTION)
}

/// Raft settings of regions: as [`data`], but snapshotted often. A region's snapshot pins its
/// rows in the engine (a RocksDB snapshot) instead of copying them, so taking one costs the same
/// at any size, and the [`log_gc`](super::log_gc) task can purge the log up to what every
/// replica holds: a row is then in the region's Raft log for a few dozen entries, usually deleted
/// before the log's memtable is flushed. A replica more than `keep` entries behind the snapshot
/// is not waited for: it gets the region's rows as they are (as TiKV's Raft log GC does).
pub fn region() -> Arc<Config> {
    let hb = data_heartbeat_ms();
    build(hb, hb * 2, hb * 4, REGION_COMPACTION)
}

/// Raft settings of log partitions: as [`data`], but snapshotted often and their Raft log kept
/// short (and purged as soon as a snapshot allows). A partition's snapshot refers to its batches
/// instead of copying them (they never change), so taking one costs the same at any size, and a
/// replica that falls behind the kept log gets the batches it missed. Without this the log would
/// hold every batch a second time.
pub fn partition() -> Arc<Config> {
    let hb = data_heartbeat_ms();
    let kept = Compaction {
        snapshot_every: PARTITION_SNAPSHOT_EVERY,
        keep: PARTITION_LOG_KEPT,
        purge_batch: 1,
    };
    build(hb, hb * 2, hb * 4, kept)
}

/// When a group snapshots and how much Raft log it keeps.
struct Compaction {
    /// Entries between snapshots.
    snapshot_every: u64,
    /// Entries kept behind a snapshot.
    keep: u64,
    /// Fewest entries purged at once.
    purge_batch: u64,
}

/// Groups whose snapshots copy their state: taken rarely, with a long log kept behind.
const ROWS_COMPACTION: Compaction = Compaction {
    snapshot_every: 20_000,
    keep: 1_000,
    purge_batch: 256,
};

/// Regions, whose snapshots pin their rows instead of copying them: taken often; openraft keeps
/// as much log behind them as for other groups, and `log_gc` purges it sooner.
const REGION_COMPACTION: Compaction = Compaction {
    snapshot_every: 32,
    keep: 1_000,
    purge_batch: 8,
};

/// Entries between two snapshots of a partition, whatever their size (the
/// [`compaction`](super::compaction) task snapshots by bytes appended, usually sooner).
const PARTITION_SNAPSHOT_EVERY: u64 = 1_024;
/// Entries of a partition's Raft log kept after a snapshot, for replicas slightly behind.
const PARTITION_LOG_KEPT: u64 = 8;

fn data_heartbeat_ms() -> u64 {
    std::env::var("WEIR_RAFT_HEARTBEAT_MS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|v| (50..=60_000).contains(v))
        .unwrap_or(DATA_HEARTBEAT_MS)
}

fn build(heartbeat: u64, min: u64, max: u64, compaction: Compaction) -> Arc<Config> {
    let c = Config {
        cluster_name: "weir".into(),
        heartbeat_interval: heartbeat,
        election_timeout_min: min,
        election_timeout_max: max,
        install_snapshot_timeout: 10_000,
        max_payload_entries: 64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(compaction.snapshot_every),
        max_in_snapshot_log_to_keep: compaction.keep,
        purge_batch_size: compaction.purge_batch,
        // A replica that cannot win (cut off, or its leader alive) must not raise its term and
        // depose a healthy leader when it comes back.
        enable_pre_vote: Some(true),
        // A replica killed while installing a snapshot comes back empty, its Raft log reset (it
        // cannot apply entries on top of a state it no longer has; see `StateMachine::recover`),
        // and answers the leader with a log shorter than the one it had acknowledged. Without
        // this openraft's leader panics on that answer. It is safe here: a snapshot is only sent
        // to a replica behind the leader's purged log, so every entry it acknowledged is below
        // the snapshot, committed without it and held by a majority that excludes it; the replica
        // keeps its vote, and the leader starts it over from a snapshot.
        allow_log_reversion: Some(true),
        // A restarted leader wins a new election (a higher term) instead of resuming in its old
        // term. Its appends reach followers before the group commit has fsynced them locally, so
        // a crash can take entries it already sent; resumed in the same term it would write
        // different entries under log ids its followers hold, and they would never be replaced
        // (replicas diverged this way in the simulation, seed 1020).
        enable_leader_restore: Some(false),
        ..Default::default()
    };
    Arc::new(c.validate().expect("static raft config is valid"))
}
