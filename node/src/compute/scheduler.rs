//! The scheduler of a node: every node looks at every schedule, and the one that first claims a
//! due tick runs it (see `weir_sql::schedule::runs` for the claim, lease and outcome protocol).
//!
//! A tick is claimed when it is due (ticks fall on multiples of the interval since the epoch, or
//! on the cron expression's times; the first at or after the schedule's creation), the schedules
//! it runs `AFTER` have each succeeded for a tick at or after it, and no run of the schedule holds
//! its lease (runs of one schedule never overlap: the lease is one row per schedule, claimed by
//! a compare-and-set, and each claim takes the next fencing token, which every write of the run
//! carries). Only the latest due tick is considered:
//! ticks missed while the cluster was down are not caught up, but a tick that was started and not
//! finished (its node died, or an attempt failed) is still finished after the next tick falls
//! due. A failed attempt is retried with back-off up to [`MAX_ATTEMPTS`]; a run whose node died is
//! claimed again by another node once its lease has passed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{Array, UInt64Array};
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;
use weir_client::{CasAction, Expectation, ScanOptions, Table, Value};
use weir_sql::schedule::fence::{now_ms, FencedCluster, Lease};
use weir_sql::schedule::runs::{LeaseRecord, RunRecord, RunStatus, LEASES_TABLE, RUNS_TABLE};
use weir_sql::schedule::{due_tick, tick_before};
use weir_sql::{Cluster, Engine, EngineConfig, Output, ScheduleMeta};

use crate::groups::Registry;
use crate::sql::access::{schedule_meta, NodeCluster};

/// How often the scheduler looks for due ticks.
const CHECK_EVERY: Duration = Duration::from_millis(500);
/// How long a claim holds a tick without renewal.
const LEASE_MS: i64 = 10_000;
/// How often a running attempt renews its lease.
const RENEW_EVERY: Duration = Duration::from_secs(2);
/// Attempts of one tick before it is left failed.
pub const MAX_ATTEMPTS: i64 = 5;
/// Longest wait before a failed attempt is retried.
const MAX_BACKOFF_MS: i64 = 60_000;
/// A tick later than any (9999-12-31, in microseconds): the exclusive end of a schedule's rows.
const END_OF_TIME_US: i64 = 253_402_300_799_999_999;
/// Longest error text kept in the history.
const MAX_ERROR_CHARS: usize = 2000;
/// How many unanswered writes of one row are remembered (renewals retry every two seconds within a
/// ten-second lease, so a handful covers a lease's life).
const MAX_UNSURE: usize = 8;
/// How long to wait between tries to record an outcome or give a lease back.
const RETRY_EVERY: Duration = Duration::from_millis(200);

/// How long to wait after failed attempt `attempt` (1-based).
fn backoff_ms(attempt: i64) -> i64 {
    (1000i64 << (attempt - 1).clamp(0, 16)).min(MAX_BACKOFF_MS)
}

/// Why a tick is considered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The latest due tick.
    Due,
    /// The tick before it: only finished if it was started.
    Unfinished,
    /// A run asked for with `RUN SCHEDULE` (no dependencies waited for).
    Manual,
}

/// An attempt claimed by this node: its history row and its schedule's lease row, as it last
/// wrote them.
struct Claim {
    rec: RunRecord,
    run_row: Owned,
    lease: LeaseRecord,
    lease_row: Owned,
}

/// A row an attempt owns, written by compare-and-set on the version it last wrote it at.
///
/// A write whose answer was lost (a timeout, a leader change) may still have landed, which moves
/// the row past the version this side knows; such writes are kept, and when the next write finds
/// the row moved, the row holding exactly one of them (each carries its own lease time, so no
/// other writer's row equals it) shows the row is still this attempt's.
struct Owned {
    key: Vec<Value>,
    version: u64,
    unsure: Vec<Vec<Value>>,
}

impl Owned {
    /// A row last written (or read, 0: absent) at `version`.
    fn new(key: Vec<Value>, version: u64) -> Owned {
        Owned {
            key,
            version,
            unsure: Vec::new(),
        }
    }

    /// [`Owned::put`], tried again on errors until `until` (ms; none: once), the end of the lease
    /// that makes the row this attempt's.
    async fn put_until(
        &mut self,
        table: &Table,
        row: Vec<Value>,
        until: Option<i64>,
    ) -> weir_client::Result<bool> {
        loop {
            match self.put(table, row.clone()).await {
                Err(e) if now_ms() < until.unwrap_or(0) => {
                    tracing::debug!(error = %e, "a scheduler write failed; retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                done => return done,
            }
        }
    }

    /// Puts `row` if the row is still this attempt's; false when another writer took it.
    async fn put(&mut self, table: &Table, row: Vec<Value>) -> weir_client::Result<bool> {
        loop {
            match put_if(table, &self.key, self.version, row.clone()).await {
                Ok(Some(version)) => {
                    (self.version, self.unsure) = (version, Vec::new());
                    return Ok(true);
                }
                Ok(None) if self.unsure.is_empty() => return Ok(false),
                Ok(None) => {
                    let current = table
                        .get(std::slice::from_ref(&self.key), &[], false)
                        .await?
                        .into_iter()
                        .next()
                        .flatten();
                    match current {
                        Some(now) if self.unsure.contains(&now.values) => {
                            (self.version, self.unsure) = (now.version, Vec::new());
                        }
                        _ => return Ok(false),
                    }
                }
                Err(e) => {
                    if self.unsure.len() < MAX_UNSURE {
                        self.unsure.push(row);
                    }
                    return Err(e);
                }
            }
        }
    }
}

/// The two internal tables the scheduler keeps its state in.
#[derive(Clone)]
struct Tables {
    runs: Table,
    leases: Table,
}

/// What the scheduler learned about a tick.
enum Look {
    /// Claimed here: run it.
    Claimed(Box<Claim>),
    /// Nothing to do before this time (ms); `i64::MAX`: never again.
    QuietUntil(i64),
}

/// Runs this node's scheduler until `shutdown` turns true.
pub async fn schedule_loop(
    node: u64,
    registry: Registry,
    cluster: Arc<NodeCluster>,
    engine_config: EngineConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    // Per schedule id: the run this node is executing.
    let mut running: HashMap<u64, JoinHandle<()>> = HashMap::new();
    // Per (schedule id, tick): nothing to do before this time.
    let mut quiet: HashMap<(u64, i64), i64> = HashMap::new();
    let mut check = tokio::time::interval(CHECK_EVERY);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = check.tick() => {}
            _ = shutdown.changed() => {}
        }
        if *shutdown.borrow() {
            for (_, run) in running.drain() {
                run.abort();
            }
            return;
        }
        running.retain(|_, run| !run.is_finished());
        let Ok(catalog) = registry.catalog() else {
            continue;
        };
        let ready = [RUNS_TABLE, LEASES_TABLE]
            .iter()
            .all(|t| catalog.tables.contains_key(*t));
        if catalog.schedules.is_empty() || !ready {
            continue;
        }
        let schedules: Vec<ScheduleMeta> = catalog.schedules.values().map(schedule_meta).collect();
        let now = now_ms();
        quiet.retain(|(id, _), _| schedules.iter().any(|s| s.id == *id));
        let (Ok(runs), Ok(leases)) = (
            cluster.handle(RUNS_TABLE).await,
            cluster.handle(LEASES_TABLE).await,
        ) else {
            continue;
        };
        let tables = Tables { runs, leases };
        for s in &schedules {
            if running.contains_key(&s.id) {
                continue;
            }
            let mut ticks = Vec::new();
            if !s.paused {
                if let Some(due) = due_tick(s, now) {
                    if let Some(before) = tick_before(s, due) {
                        ticks.push((before, Kind::Unfinished));
                    }
                    ticks.push((due, Kind::Due));
                }
            }
            ticks.extend(s.run_now.map(|t| (t, Kind::Manual)));
            for (tick, kind) in ticks {
                if quiet.get(&(s.id, tick)).is_some_and(|until| *until > now) {
                    continue;
                }
                match look(node, s, &schedules, tick, kind, &tables).await {
                    Ok(Look::Claimed(claim)) => {
                        quiet.remove(&(s.id, tick));
                        let span = tracing::info_span!(
                            "schedule_run",
                            schedule = %s.name,
                            tick,
                            attempt = claim.rec.attempt,
                            token = claim.lease.token
                        );
                        let run = tokio::spawn(
                            run_attempt(
                                s.clone(),
                                *claim,
                                tables.clone(),
                                cluster.clone(),
                                engine_config.clone(),
                            )
                            .instrument(span),
                        );
                        running.insert(s.id, run);
                        break;
                    }
                    Ok(Look::QuietUntil(until)) => {
                        quiet.insert((s.id, tick), until);
                    }
                    Err(e) => {
                        tracing::debug!(schedule = %s.name, tick, error = %e, "cannot look at a tick yet");
                    }
                }
            }
        }
        // Forget ticks no schedule can come back to.
        quiet.retain(|(id, tick), _| {
            schedules.iter().any(|s| {
                s.id == *id
                    && (s.run_now == Some(*tick)
                        || due_tick(s, now)
                            .is_some_and(|due| *tick == due || tick_before(s, due) == Some(*tick)))
            })
        });
    }
}

/// Reads the row of `tick` and claims the tick when it is this node's to run.
async fn look(
    node: u64,
    s: &ScheduleMeta,
    all: &[ScheduleMeta],
    tick: i64,
    kind: Kind,
    tables: &Tables,
) -> weir_client::Result<Look> {
    let now = now_ms();
    let key = RunRecord::key(&s.name, tick);
    let Some((previous, version)) = read_row(&tables.runs, &key, RunRecord::from_row).await? else {
        tracing::warn!(schedule = %s.name, tick, "unreadable run history row; skipping the tick");
        return Ok(Look::QuietUntil(i64::MAX));
    };
    // A row of an earlier schedule of the same name is this one's to overwrite.
    let previous = previous.filter(|rec| rec.schedule_id == s.id);
    let attempt = match &previous {
        None if kind == Kind::Unfinished => return Ok(Look::QuietUntil(i64::MAX)),
        None => {
            if kind == Kind::Due && !dependencies_done(s, all, tick, &tables.runs).await? {
                return Ok(Look::QuietUntil(now));
            }
            1
        }
        Some(rec) => match rec.status {
            RunStatus::Succeeded => return Ok(Look::QuietUntil(i64::MAX)),
            RunStatus::Running => match rec.lease_until_ms {
                Some(until) if until > now => return Ok(Look::QuietUntil(until)),
                _ => rec.attempt + 1,
            },
            RunStatus::Failed => match rec.retry_at_ms {
                None => return Ok(Look::QuietUntil(i64::MAX)),
                Some(at) if at > now => return Ok(Look::QuietUntil(at)),
                Some(_) => rec.attempt + 1,
            },
        },
    };
    // The schedule's lease: free (never taken, released, or passed) or held by a live run.
    let lease_key = LeaseRecord::key(s.id);
    let Some((held, lease_version)) =
        read_row(&tables.leases, &lease_key, LeaseRecord::from_row).await?
    else {
        tracing::warn!(schedule = %s.name, "unreadable schedule lease row; not running it");
        return Ok(Look::QuietUntil(i64::MAX));
    };
    if let Some(until) = held
        .as_ref()
        .and_then(|l| l.lease_until_ms)
        .filter(|until| *until > now)
    {
        return Ok(Look::QuietUntil(until));
    }
    let lease = LeaseRecord {
        schedule_id: s.id,
        token: held.as_ref().map_or(1, |l| l.token + 1),
        tick_ms: tick,
        attempt,
        node,
        lease_until_ms: Some(now + LEASE_MS),
    };
    let mut lease_row = Owned::new(lease_key, lease_version);
    if !lease_row.put(&tables.leases, lease.to_row()).await? {
        // Another node took the lease first: look again later.
        return Ok(Look::QuietUntil(now));
    }
    let manual = previous.as_ref().map_or(kind == Kind::Manual, |p| p.manual);
    let rec = RunRecord {
        schedule: s.name.clone(),
        tick_ms: tick,
        status: RunStatus::Running,
        attempt,
        node,
        started_ms: now,
        ended_ms: None,
        rows: None,
        error: previous.and_then(|p| p.error),
        manual,
        lease_until_ms: lease.lease_until_ms,
        retry_at_ms: None,
        schedule_id: s.id,
    };
    let mut run_row = Owned::new(key, version);
    if run_row.put(&tables.runs, rec.to_row()).await? {
        tracing::info!(schedule = %s.name, tick, attempt, token = lease.token, "claimed a scheduled run");
        Ok(Look::Claimed(Box::new(Claim {
            rec,
            run_row,
            lease,
            lease_row,
        })))
    } else {
        // The tick's row changed since it was read (its previous attempt recorded an outcome
        // late): give the lease back and look again.
        release(&tables.leases, &lease, lease_row).await;
        Ok(Look::QuietUntil(now))
    }
}

/// The row of `table` at `key`, parsed by `parse`, with the version it was read at: none and 0
/// when there is no row; `None` when the row does not parse.
async fn read_row<T>(
    table: &Table,
    key: &[Value],
    parse: fn(&[Value]) -> Option<T>,
) -> weir_client::Result<Option<(Option<T>, u64)>> {
    let found = table
        .get(&[key.to_vec()], &[], false)
        .await?
        .into_iter()
        .next()
        .flatten();
    Ok(match found {
        Some(row) => parse(&row.values).map(|r| (Some(r), row.version)),
        None => Some((None, 0)),
    })
}

/// Puts `row` at `key` if the row there is still at `version` (0: absent); the new version, or
/// none when another writer changed it first.
async fn put_if(
    table: &Table,
    key: &[Value],
    version: u64,
    row: Vec<Value>,
) -> weir_client::Result<Option<u64>> {
    let o = table
        .compare_and_set(key, Expectation::Version(version), CasAction::Put(row))
        .await?;
    Ok(match (o.succeeded, o.current) {
        (true, Some(row)) => Some(row.version),
        _ => None,
    })
}

/// Gives a schedule's lease back, so the next claim need not wait for it to pass; tried again
/// while the lease lasts (after that it has passed on its own).
async fn release(leases: &Table, lease: &LeaseRecord, mut row: Owned) {
    let mut freed = lease.clone();
    freed.lease_until_ms = None;
    match row
        .put_until(leases, freed.to_row(), lease.lease_until_ms)
        .await
    {
        Ok(true) => {}
        Ok(false) => {
            tracing::debug!("the schedule's lease was taken over before it was given back")
        }
        Err(e) => {
            tracing::debug!(error = %e, "could not give the schedule's lease back; it passes")
        }
    }
}

/// Whether every schedule `s` runs after has succeeded for a tick at or after `tick`.
async fn dependencies_done(
    s: &ScheduleMeta,
    all: &[ScheduleMeta],
    tick: i64,
    table: &Table,
) -> weir_client::Result<bool> {
    for d in &s.after {
        let Some(dep) = all.iter().find(|x| &x.name == d) else {
            return Ok(false);
        };
        let opts = ScanOptions {
            start: Some(RunRecord::key(d, tick)),
            end: Some(vec![
                Value::Str(d.clone()),
                Value::Timestamp(END_OF_TIME_US),
            ]),
            ..Default::default()
        };
        let mut done = false;
        table
            .scan(&opts, |page| {
                done |= page.iter().any(|(_, row)| {
                    RunRecord::from_row(&row.values).is_some_and(|r| {
                        r.schedule_id == dep.id && r.status == RunStatus::Succeeded
                    })
                });
                !done
            })
            .await?;
        if !done {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Rows a statement's output stands for: the count an `INSERT`/`DELETE` reports, or the rows a
/// query returned.
fn rows_of(batch: &RecordBatch) -> i64 {
    let counted = batch.num_columns() == 1 && batch.schema().field(0).name() == "count";
    match batch.column(0).as_any().downcast_ref::<UInt64Array>() {
        Some(c) if counted => c.iter().flatten().map(|n| n as i64).sum(),
        _ => batch.num_rows() as i64,
    }
}

/// Runs the statement through an engine whose writes need the lease.
async fn execute(engine: Engine, sql: String) -> Result<i64, String> {
    let outputs = engine.execute(&sql).await.map_err(|e| e.to_string())?;
    let mut rows = 0;
    for out in outputs {
        if let Output::Rows(mut stream, _) = out {
            while let Some(batch) = stream.next().await {
                rows += rows_of(&batch.map_err(|e| e.to_string())?);
            }
        }
    }
    Ok(rows)
}

/// Renews a claimed attempt's lease: its schedule's lease row, then its history row. False when
/// either was taken over (the attempt must stop).
async fn renew(claim: &mut Claim, tables: &Tables) -> weir_client::Result<bool> {
    let until = Some(now_ms() + LEASE_MS);
    let mut lease = claim.lease.clone();
    lease.lease_until_ms = until;
    if !claim.lease_row.put(&tables.leases, lease.to_row()).await? {
        return Ok(false);
    }
    claim.lease = lease;
    let mut rec = claim.rec.clone();
    rec.lease_until_ms = until;
    if !claim.run_row.put(&tables.runs, rec.to_row()).await? {
        return Ok(false);
    }
    claim.rec = rec;
    Ok(true)
}

/// One attempt of a claimed tick: runs the statement while renewing the lease, then records the
/// outcome, unless the lease was lost (then the statement is cancelled and nothing is recorded).
/// Every table write of the statement carries the claim's fencing token, raised in each table's
/// regions before its first write, so once this attempt has written to a table an earlier one
/// that outlived its lease cannot.
async fn run_attempt(
    s: ScheduleMeta,
    mut claim: Claim,
    tables: Tables,
    cluster: Arc<NodeCluster>,
    engine_config: EngineConfig,
) {
    let lease = Lease::new(claim.lease.lease_until_ms.unwrap_or(0));
    let what = format!("run {} of schedule '{}'", claim.rec.attempt, s.name);
    let engine = match cluster
        .fenced(&LeaseRecord::holder(s.id), claim.lease.token)
        .await
    {
        Ok(view) => {
            let inner: Arc<dyn Cluster> = Arc::new(view);
            let fenced: Arc<dyn Cluster> = Arc::new(FencedCluster::new(inner, lease.clone(), what));
            Engine::new(fenced, &engine_config).map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    let result = match engine {
        Ok(engine) => {
            let exec = execute(engine, s.statement.clone());
            tokio::pin!(exec);
            let mut every = tokio::time::interval(RENEW_EVERY);
            every.tick().await;
            loop {
                tokio::select! {
                    r = &mut exec => break Some(r),
                    _ = every.tick() => match renew(&mut claim, &tables).await {
                        Ok(true) => lease.set(claim.lease.lease_until_ms.unwrap_or(0)),
                        Ok(false) => {
                            tracing::warn!("the run's lease was taken over by another node; cancelling");
                            lease.lose();
                            break None;
                        }
                        Err(e) if lease.holds() => {
                            tracing::debug!(error = %e, "lease renewal failed; retrying");
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "lease could not be renewed in time; cancelling");
                            lease.lose();
                            break None;
                        }
                    },
                }
            }
        }
        Err(e) => Some(Err(e)),
    };
    let Some(result) = result else {
        return;
    };
    if !lease.holds() {
        tracing::warn!("the run ended after its lease; its outcome is not recorded");
        return;
    }
    let mut rec = claim.rec.clone();
    let now = now_ms();
    rec.ended_ms = Some(now);
    rec.lease_until_ms = None;
    match result {
        Ok(rows) => {
            rec.status = RunStatus::Succeeded;
            rec.rows = Some(rows);
            rec.error = None;
            tracing::info!(rows, "scheduled run succeeded");
        }
        Err(e) => {
            rec.status = RunStatus::Failed;
            rec.error = Some(e.chars().take(MAX_ERROR_CHARS).collect());
            rec.retry_at_ms = (rec.attempt < MAX_ATTEMPTS).then(|| now + backoff_ms(rec.attempt));
            tracing::warn!(error = %e, "scheduled run failed");
        }
    }
    // Tried again while the lease lasts; after that another node may claim the tick, and this
    // write then finds the row taken.
    let until = claim.lease.lease_until_ms;
    match claim
        .run_row
        .put_until(&tables.runs, rec.to_row(), until)
        .await
    {
        Ok(true) => release(&tables.leases, &claim.lease, claim.lease_row).await,
        Ok(false) => tracing::warn!("the run's tick was claimed by another node; outcome dropped"),
        // The lease runs out and another node retries the tick.
        Err(e) => tracing::warn!(error = %e, "could not record the run's outcome"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        assert_eq!(backoff_ms(1), 1000);
        assert_eq!(backoff_ms(2), 2000);
        assert_eq!(backoff_ms(4), 8000);
        assert_eq!(backoff_ms(10), MAX_BACKOFF_MS);
    }
}
