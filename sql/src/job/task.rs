//! One task of a stream job: reads one partition of the source from the offset its job last
//! committed, runs the per-batch query over each batch of records, writes the rows into the sink
//! (upserted, appended to a sink topic, or folded per key and merged into aggregates) and commits
//! the offset reached.
//! Why replays after a crash are exact is argued in [`crate::job`].

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use datafusion::error::{DataFusionError, Result};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::Instrument;
use weir_proto::table::key::encode_key;
use weir_proto::table::merge::{self, MergeOp};
use weir_proto::table::{ColumnType, Value};

use crate::cluster::{Cluster, ClusterError, JobMeta, SinkMerge, TableMeta, TopicRecord};
use crate::job::dead_letter::{self, DeadLetter};
use crate::job::distinct;
use crate::job::plan::{Agg, AggKind, JobPlan, Shape};
use crate::job::stats::TaskStats;
use crate::records::RecordDecoder;
use crate::topic::encode_row;
use crate::types::SinkCells;

/// Bytes asked for per fetch (about one batch). Each batch costs a plan run and a sink write
/// through Raft whatever its size, so a task working off a backlog takes big pages (at 1 MiB the
/// seed-001 job spent about a quarter more CPU); a task that keeps up gets what arrived since its
/// last fetch, so freshness does not depend on it. A task holds at most two pages (one processed,
/// one fetched ahead).
const FETCH_BYTES: u32 = 4 << 20;
/// How long an idle task waits before asking its partition again.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Longest pause after a failed batch before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often the task of partition 0 looks whether closed windows' distinct pairs can go.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

fn cluster_error(e: ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The consumer group a job's progress is committed under.
pub fn progress_group(job: &JobMeta) -> String {
    format!("__job.{}", job.id)
}

/// The source name a task's contributions carry in the sink's marks.
fn mark_source(job: &JobMeta, partition: u32) -> String {
    format!("job.{}.{}", job.id, partition)
}

/// The producer a task appends to its sink topic as: the same for every instance of the task, so
/// the sink's partitions remember how far its batches got across crashes and moves.
pub fn producer_id(job: &JobMeta, partition: u32) -> u64 {
    // splitmix64 of (job id, partition): spread over the id space random producers draw from.
    let mut z = ((job.id << 32) | u64::from(partition)).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).max(1)
}

/// The task's producer id and epoch: the epoch is the task's assignment, so an instance whose
/// task was assigned again elsewhere is refused by the sink topic once the new one has started.
fn producer(job: &JobMeta, partition: u32) -> (u64, u64) {
    let epoch = job.tasks.get(partition as usize).map_or(0, |(_, e)| *e);
    (producer_id(job, partition), epoch)
}

/// The producer a task appends its dead letters as (see [`dead_letter`]): its own, beside the
/// one it writes a sink topic with, under the same epoch.
fn letter_producer(job: &JobMeta, partition: u32) -> (u64, u64) {
    let (id, epoch) = producer(job, partition);
    // Another splitmix step: as spread as the sink producers' ids, and distinct from them.
    let mut z = id.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)).max(1), epoch)
}

/// Runs task `partition` of `job` until `stop` turns true; failures are logged (and kept in
/// `stats`) and retried with back-off from the last committed offset (replay is exact).
pub async fn run_task(
    cluster: Arc<dyn Cluster>,
    job: JobMeta,
    partition: u32,
    stats: Arc<TaskStats>,
    mut stop: watch::Receiver<bool>,
) {
    let span = tracing::info_span!("task", job = %job.name, id = job.id, partition);
    let mut backoff = Duration::from_millis(200);
    loop {
        if *stop.borrow() {
            return;
        }
        match run_once(&cluster, &job, partition, &stats, &mut stop)
            .instrument(span.clone())
            .await
        {
            Ok(()) => return,
            Err(e) => {
                tracing::warn!(job = %job.name, partition, error = %e, "stream task failed; retrying");
                stats.failed(&e.to_string());
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Where the task starts: its committed offset, or the topic's start or end for a new job (then
/// committed at once, so a restart does not move a `latest` start).
async fn start_offset(cluster: &Arc<dyn Cluster>, job: &JobMeta, partition: u32) -> Result<u64> {
    let group = progress_group(job);
    if let Some(o) = committed_at(cluster, &group, job, partition).await? {
        return Ok(o);
    }
    let (earliest, latest) = cluster
        .offsets(&job.source, partition)
        .await
        .map_err(cluster_error)?;
    let start = if job.start_latest { latest } else { earliest };
    cluster
        .commit(&group, &job.source, partition, start)
        .await
        .map_err(cluster_error)?;
    Ok(start)
}

/// The offsets group where a job keeps, per source partition, the latest event time its windows
/// have seen (the watermark), beside its progress.
fn watermark_group(job: &JobMeta) -> String {
    format!("{}.watermark", progress_group(job))
}

/// The offsets group where a job keeps the watermark its closed windows' distinct pairs were
/// swept at (as partition 0 of its source).
fn swept_group(job: &JobMeta) -> String {
    format!("{}.swept", progress_group(job))
}

/// What offsets group `group` committed for partition `partition` of the job's source, if it
/// committed anything.
async fn committed_at(
    cluster: &Arc<dyn Cluster>,
    group: &str,
    job: &JobMeta,
    partition: u32,
) -> Result<Option<u64>> {
    Ok(cluster
        .committed(group, &job.source)
        .await
        .map_err(cluster_error)?
        .get(&partition)
        .copied())
}

/// Commits the task's progress: the watermark first (when the job's windows close), then the
/// offset. A watermark ahead of the committed offset is harmless on replay: it reflects only
/// batches already applied, whose merges the sink's marks skip anyway.
async fn commit_progress(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    partition: u32,
    next: u64,
    watermark: Option<i64>,
) -> Result<()> {
    if let Some(w) = watermark {
        cluster
            .commit(&watermark_group(job), &job.source, partition, w as u64)
            .await
            .map_err(cluster_error)?;
    }
    cluster
        .commit(&progress_group(job), &job.source, partition, next)
        .await
        .map_err(cluster_error)
}

/// Deletes the distinct pairs of windows closed in every partition: those closed at or before
/// the lowest watermark the job's partitions committed, once each has committed one and it rose
/// since the last sweep (`swept`). That watermark is committed first: tasks start at or above
/// it (see [`run_once`]).
async fn sweep_closed(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    plan: &JobPlan,
    swept: &mut Option<i64>,
) -> Result<()> {
    let marks = cluster
        .committed(&watermark_group(job), &job.source)
        .await
        .map_err(cluster_error)?;
    let lowest = (0..plan.source.partitions)
        .map(|p| marks.get(&p).map(|w| *w as i64))
        .collect::<Option<Vec<i64>>>()
        .and_then(|w| w.into_iter().min());
    let Some(lowest) = lowest else {
        return Ok(());
    };
    if swept.is_some_and(|s| s >= lowest) {
        return Ok(());
    }
    cluster
        .commit(&swept_group(job), &job.source, 0, lowest as u64)
        .await
        .map_err(cluster_error)?;
    let deleted = distinct::sweep(plan, &job.name, lowest).await?;
    tracing::debug!(job = %job.name, watermark = lowest, deleted,
        "distinct pairs of closed windows deleted");
    *swept = Some(lowest);
    Ok(())
}

/// What processing a batch came to.
#[derive(Debug, Default)]
struct Done {
    /// Rows the query produced.
    out: u64,
    /// Records sent to the dead-letter topic.
    failed: u64,
    /// Records dropped because their window had closed.
    late: u64,
    /// The watermark after the batch.
    watermark: Option<i64>,
}

async fn run_once(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    partition: u32,
    stats: &TaskStats,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let plan = JobPlan::new(cluster.clone(), &job.definition).await?;
    let mut next = start_offset(cluster, job, partition).await?;
    // Never below the windows already swept: their pairs are gone, so none of their records may
    // count again, even if an instance replaced before it stopped committed an older watermark.
    let closes = matches!(plan.shape, Shape::Aggregate { closes: true, .. });
    let (swept_at, mut watermark) = match closes {
        true => {
            let swept = committed_at(cluster, &swept_group(job), job, 0).await?;
            let mark = committed_at(cluster, &watermark_group(job), job, partition).await?;
            let swept = swept.map(|w| w as i64);
            (swept, mark.map(|w| w as i64).max(swept))
        }
        false => (None, None),
    };
    stats.reached(next);
    let mut committed = next;
    let mut last_commit = Instant::now();
    // With a topic sink, batches are numbered by the source offset they end at. An earlier
    // instance may have appended batches past the committed offset before it died: replaying
    // cut at the same ends makes each of those a duplicate the sink's partitions refuse.
    let mut cuts: BTreeSet<u64> = match &plan.sink_topic {
        Some(t) => cluster
            .producer_numbers(&t.name, producer(job, partition))
            .await
            .map_err(cluster_error)?
            .into_iter()
            .filter(|n| *n > next)
            .collect(),
        None => BTreeSet::new(),
    };
    // The task of partition 0 lets go of the distinct pairs of windows closed everywhere.
    let sweeps = closes && partition == 0 && !distinct::tables(&plan, &job.name).is_empty();
    let (mut swept, mut last_sweep) = (swept_at, Instant::now());
    tracing::info!(job = %job.name, partition, offset = next, "stream task started");
    // The page at `next`, fetched while the batch before it was processed.
    let mut ahead = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        stats.tick();
        if sweeps && last_sweep.elapsed() >= SWEEP_EVERY {
            last_sweep = Instant::now();
            // A sweep that fails is tried again at the next one; the task goes on, and shows
            // the error as its last.
            if let Err(e) = sweep_closed(cluster, job, &plan, &mut swept).await {
                tracing::warn!(job = %job.name, error = %e, "closed windows were not swept");
                stats.failed(&format!("sweeping closed windows: {e}"));
            }
        }
        let page = match ahead.take() {
            Some(page) => page,
            None => cluster
                .fetch(&job.source, partition, next, FETCH_BYTES)
                .await
                .map_err(cluster_error)?,
        };
        let cut = cuts.first().copied();
        let records: Vec<TopicRecord> = page
            .records
            .into_iter()
            .filter(|r| r.offset >= next && cut.is_none_or(|c| r.offset < c))
            .collect();
        let Some(last) = records.last().map(|r| r.offset) else {
            if page.next_offset > next {
                // Retention dropped records the task had not read: go on from what is left.
                tracing::warn!(job = %job.name, partition, from = next, to = page.next_offset,
                    "records removed by retention before the job read them");
                next = page.next_offset;
                continue;
            }
            if committed < next {
                commit_progress(cluster, job, partition, next, watermark).await?;
                committed = next;
                last_commit = Instant::now();
            }
            tokio::select! {
                _ = tokio::time::sleep(IDLE_WAIT) => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        let to = match cut {
            // The batch the earlier instance cut here ends here, even if it was sparse.
            Some(c) if page.next_offset >= c => c,
            _ => last + 1,
        };
        cuts.retain(|c| *c > to);
        let batch = Batch {
            job,
            plan: &plan,
            partition,
            stats,
        };
        // The next page is fetched while this batch is processed: the partition's leader reads
        // it while this task decodes and merges. A fetch that fails is asked again.
        let (processed, fetched) = tokio::join!(
            process(cluster, &batch, &records, (next, to), watermark),
            cluster.fetch(&job.source, partition, to, FETCH_BYTES)
        );
        ahead = fetched.ok();
        let done = match processed {
            Ok(done) => done,
            Err(e) if is_record_error(&e) => {
                // Some record of the batch does not fit (a value that does not cast, a row the
                // sink refuses): find it by taking the records one at a time.
                tracing::warn!(job = %job.name, partition, from = next, to, error = %e,
                    "a batch failed; retrying it record by record");
                one_by_one(cluster, &batch, &records, watermark).await?
            }
            Err(e) => return Err(e),
        };
        stats.processed(records.len() as u64, done.out, done.failed);
        stats.late(done.late);
        watermark = done.watermark;
        next = to;
        stats.reached(next);
        if last_commit.elapsed() >= Duration::from_millis(200) {
            commit_progress(cluster, job, partition, next, watermark).await?;
            committed = next;
            last_commit = Instant::now();
        }
    }
}

/// Whether `e` is about the records themselves (a cast that fails, a value the sink refuses), so
/// that retrying the same records cannot help, rather than about the cluster (unavailable).
fn is_record_error(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::External(inner) => matches!(
            inner.downcast_ref::<ClusterError>(),
            Some(ClusterError::Invalid(_))
        ),
        DataFusionError::ArrowError(..) | DataFusionError::Execution(_) => true,
        _ => false,
    }
}

/// What a batch is processed for: the job, its plan, the task's partition and counters.
struct Batch<'a> {
    job: &'a JobMeta,
    plan: &'a JobPlan,
    partition: u32,
    stats: &'a TaskStats,
}

/// Runs the records of a failed batch one at a time; those that fail on their own go to the
/// dead-letter topic with the error.
async fn one_by_one(
    cluster: &Arc<dyn Cluster>,
    batch: &Batch<'_>,
    records: &[TopicRecord],
    watermark: Option<i64>,
) -> Result<Done> {
    let Batch {
        job,
        partition,
        stats,
        ..
    } = *batch;
    let mut all = Done {
        watermark,
        ..Done::default()
    };
    for r in records {
        let one = std::slice::from_ref(r);
        match process(cluster, batch, one, (r.offset, r.offset + 1), all.watermark).await {
            Ok(done) => {
                all.out += done.out;
                all.failed += done.failed;
                all.late += done.late;
                all.watermark = done.watermark;
            }
            Err(e) if is_record_error(&e) => {
                tracing::warn!(job = %job.name, partition, offset = r.offset, error = %e,
                    "record failed; sent to the dead-letter topic");
                stats.failed(&format!("record at offset {}: {e}", r.offset));
                all.failed += 1;
                let letter = DeadLetter {
                    offset: r.offset,
                    reason: e.to_string(),
                    record: String::from_utf8_lossy(&r.value).into_owned(),
                };
                dead_letter::send(
                    cluster.as_ref(),
                    (&job.name, &job.source, partition),
                    letter_producer(job, partition),
                    vec![letter],
                )
                .await
                .map_err(cluster_error)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(all)
}

/// Runs one batch of records (offsets `[from, to)`) through the job and into the sink; returns
/// the rows the query produced and the records that did not decode (sent to the dead-letter
/// topic).
async fn process(
    cluster: &Arc<dyn Cluster>,
    batch: &Batch<'_>,
    records: &[TopicRecord],
    (from, to): (u64, u64),
    watermark: Option<i64>,
) -> Result<Done> {
    let Batch {
        job,
        plan,
        partition,
        stats,
    } = *batch;
    let mut rows = RecordDecoder::new(
        &plan.source,
        partition,
        plan.read.clone(),
        &plan.read_columns,
        plan.read_schema.clone(),
        records.len(),
    )?;
    let mut letters = Vec::new();
    for r in records {
        if let Err(reason) = rows.push(r)? {
            letters.push(DeadLetter {
                offset: r.offset,
                reason,
                record: String::from_utf8_lossy(&r.value).into_owned(),
            });
        }
    }
    let failed = letters.len() as u64;
    if let Some(first) = letters.first() {
        tracing::warn!(job = %job.name, partition, records = letters.len(), offset = first.offset,
            reason = %first.reason, "records do not decode; they go to the dead-letter topic");
        stats.failed(&format!(
            "record at offset {}: {}",
            first.offset, first.reason
        ));
    }
    let decoded = rows.finish()?;
    let batches = plan.run(decoded).await?;
    let cells = SinkCells::new(&batches, &plan.out_columns, 0)?;
    let mut done = Done {
        out: cells.rows() as u64,
        failed,
        late: 0,
        watermark,
    };
    if let Shape::Aggregate { keys, aggs, closes } = &plan.shape {
        // Folded straight from the query's arrays: no row of values per record.
        if !*closes && aggs.iter().all(|a| a.kind != AggKind::CountDistinct) {
            merge_all(cluster, job, plan, partition, keys, aggs, &cells, from, to).await?;
            return finish(cluster, job, partition, letters, done).await;
        }
    }
    let out = cells.to_rows()?;
    match &plan.shape {
        Shape::Upsert { targets } => {
            // Written as merges that set the cells, so the sink's marks keep an instance of this
            // task that was replaced (or a replay) from writing an older record over a newer one.
            let (keys, aggs, rows) = upserts(&plan.sink, targets, out)?;
            merge_all(
                cluster,
                job,
                plan,
                partition,
                &keys,
                &aggs,
                &rows[..],
                from,
                to,
            )
            .await?;
        }
        Shape::Produce { targets } => {
            let topic = plan.sink_topic.as_ref().ok_or_else(|| {
                DataFusionError::Internal("a topic sink without its topic".into())
            })?;
            let width = plan.sink.schema.columns.len();
            let mut records = Vec::with_capacity(out.len());
            for (n, r) in out.into_iter().enumerate() {
                let mut row = vec![Value::Null; width];
                for (v, t) in r.into_iter().zip(targets) {
                    row[*t] = v;
                }
                records.push(encode_row(topic, row, n as u64)?);
            }
            // Keyless records stay together in one partition (the source's, folded), so that a
            // replay sends them where the first attempt did.
            cluster
                .produce_numbered(
                    &topic.name,
                    producer(job, partition),
                    to,
                    records,
                    partition,
                )
                .await
                .map_err(cluster_error)?;
        }
        Shape::Aggregate { keys, aggs, closes } => {
            let mut on_time = if *closes {
                let offset_at = keys.len() + aggs.len();
                let (kept, late, w) = drop_late(out, offset_at, watermark);
                if late > 0 {
                    tracing::debug!(job = %job.name, partition, late,
                        "records dropped: their window had closed");
                }
                (done.late, done.watermark) = (late, w);
                kept
            } else {
                out
            };
            if aggs.iter().any(|a| a.kind == AggKind::CountDistinct) {
                distinct::mark_firsts(cluster, job, plan, partition, (keys, aggs), &mut on_time)
                    .await?;
            }
            merge_all(
                cluster,
                job,
                plan,
                partition,
                keys,
                aggs,
                &on_time[..],
                from,
                to,
            )
            .await?;
        }
    }
    finish(cluster, job, partition, letters, done).await
}

/// Ends a batch written to the sink: sends its dead letters.
async fn finish(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    partition: u32,
    letters: Vec<DeadLetter>,
    done: Done,
) -> Result<Done> {
    // Letters go after the sink writes: a batch that fails on a record is taken again one record
    // at a time, and its letters must then reach the topic in offset order with the others.
    dead_letter::send(
        cluster.as_ref(),
        (&job.name, &job.source, partition),
        letter_producer(job, partition),
        letters,
    )
    .await
    .map_err(cluster_error)?;
    Ok(done)
}

/// Upserted rows as merges see them: the key columns (in primary-key order), then the other
/// columns written, then the record's offset; rows in offset order, so that the last row of a key
/// is its latest record. A NULL key is refused, as a write of the row would be.
#[allow(clippy::type_complexity)]
fn upserts(
    sink: &TableMeta,
    targets: &[usize],
    out: Vec<Vec<Value>>,
) -> Result<(Vec<usize>, Vec<Agg>, Vec<Vec<Value>>)> {
    let schema = &sink.schema;
    let at = |column: usize| targets.iter().position(|t| *t == column);
    let key_at: Vec<usize> = schema.primary_key.iter().filter_map(|c| at(*c)).collect();
    let value_columns: Vec<usize> = targets
        .iter()
        .copied()
        .filter(|c| !schema.primary_key.contains(c))
        .collect();
    let offset_at = targets.len();
    let mut rows = Vec::with_capacity(out.len());
    for r in out {
        let mut row = Vec::with_capacity(key_at.len() + value_columns.len() + 1);
        for (k, i) in schema.primary_key.iter().zip(&key_at) {
            if r[*i].is_null() {
                return Err(cluster_error(ClusterError::Invalid(format!(
                    "key column '{}' of '{}' cannot be NULL",
                    schema.columns[*k].name, sink.name
                ))));
            }
            row.push(r[*i].clone());
        }
        for c in &value_columns {
            row.push(at(*c).map_or(Value::Null, |i| r[i].clone()));
        }
        row.push(r.get(offset_at).cloned().unwrap_or(Value::Null));
        rows.push(row);
    }
    rows.sort_by_key(|r| offset_of(r, key_at.len() + value_columns.len()));
    let aggs = value_columns
        .iter()
        .map(|c| Agg {
            kind: AggKind::Last,
            column: *c,
        })
        .collect();
    Ok((schema.primary_key.clone(), aggs, rows))
}

/// Drops the rows of records whose window closed before them: taken in offset order, a record is
/// late when its window's close time (its end plus the lateness) is at or before the latest event
/// time of the records before it (`watermark`, carried from batch to batch). Batches cut anywhere
/// give the same answer. Returns the rows kept, the records dropped and the new watermark.
fn drop_late(
    mut rows: Vec<Vec<Value>>,
    offset_at: usize,
    mut watermark: Option<i64>,
) -> (Vec<Vec<Value>>, u64, Option<i64>) {
    let time = |row: &[Value], at: usize| match row.get(at) {
        Some(Value::Timestamp(t)) => Some(*t),
        _ => None,
    };
    // A join may give a record's rows out of order, or several rows per record.
    rows.sort_by_key(|r| offset_of(r, offset_at));
    let mut kept = Vec::with_capacity(rows.len());
    let mut late = 0u64;
    // The record being read: its offset, the watermark before it, whether its rows were dropped.
    let mut record: Option<(u64, Option<i64>, bool)> = None;
    for row in rows {
        let offset = offset_of(&row, offset_at);
        let (_, before, dropped) = match &mut record {
            Some(r) if r.0 == offset => r,
            slot => {
                late += u64::from(slot.is_some_and(|r| r.2));
                slot.insert((offset, watermark, false))
            }
        };
        if let Some(t) = time(&row, offset_at + 1) {
            watermark = Some(watermark.map_or(t, |w| w.max(t)));
        }
        match (time(&row, offset_at + 2), *before) {
            (Some(close), Some(w)) if close <= w => *dropped = true,
            _ => kept.push(row),
        }
    }
    late += u64::from(record.is_some_and(|r| r.2));
    (kept, late, watermark)
}

/// The rows a batch's query gave (one per record, or more with a join) as merges read them:
/// rows of values, or the query's arrays read cell by cell.
trait PerRecord {
    /// How many rows there are.
    fn len(&self) -> usize;
    /// The value of `row` in `column`.
    fn cell(&self, row: usize, column: usize) -> Result<Cow<'_, Value>>;
}

impl PerRecord for [Vec<Value>] {
    fn len(&self) -> usize {
        <[Vec<Value>]>::len(self)
    }

    fn cell(&self, row: usize, column: usize) -> Result<Cow<'_, Value>> {
        self.get(row)
            .and_then(|r| r.get(column))
            .map(Cow::Borrowed)
            .ok_or_else(|| DataFusionError::Internal(format!("no cell {row}, {column}")))
    }
}

impl PerRecord for SinkCells<'_> {
    fn len(&self) -> usize {
        self.rows()
    }

    fn cell(&self, row: usize, column: usize) -> Result<Cow<'_, Value>> {
        self.value(row, column).map(Cow::Owned)
    }
}

/// A key's values, and its rows among a batch's with their records' offsets.
type KeyRows = (Vec<Value>, Vec<(usize, u64)>);

/// Folds the per-record rows by key and merges them into the sink, re-folding a key from the
/// offset its row reached when the row had already taken part of the batch.
#[allow(clippy::too_many_arguments)]
async fn merge_all<R: PerRecord + ?Sized>(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    plan: &JobPlan,
    partition: u32,
    keys: &[usize],
    aggs: &[Agg],
    rows: &R,
    from: u64,
    to: u64,
) -> Result<()> {
    let schema = &plan.sink.schema;
    let offset_at = keys.len() + aggs.len();
    // Key values in primary-key order, and the rows of each key with their offsets.
    let mut groups: Vec<KeyRows> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut null_keys = 0u64;
    // Where each primary-key column is among the outputs (the keys are the primary key).
    let key_at: Vec<usize> = schema
        .primary_key
        .iter()
        .map(|c| keys.iter().position(|kc| kc == c).unwrap_or(0))
        .collect();
    let mut key: Vec<Value> = Vec::with_capacity(key_at.len());
    for r in 0..rows.len() {
        key.clear();
        for k in &key_at {
            key.push(rows.cell(r, *k)?.into_owned());
        }
        if key.iter().any(|v| matches!(v, Value::Null)) {
            null_keys += 1;
            continue;
        }
        let encoded =
            encode_key(schema, &key).map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let offset = offset_value(rows.cell(r, offset_at)?.as_ref());
        let i = match index.get(&encoded) {
            Some(i) => *i,
            None => {
                groups.push((key.clone(), Vec::new()));
                index.insert(encoded, groups.len() - 1);
                groups.len() - 1
            }
        };
        groups[i].1.push((r, offset));
    }
    if null_keys > 0 {
        tracing::warn!(job = %job.name, partition, rows = null_keys,
            "rows with a NULL group key skipped (the sink's key cannot hold NULL)");
    }
    let source = mark_source(job, partition);
    let build = |g: usize, from: u64| -> Result<SinkMerge> {
        let (key, members) = &groups[g];
        let mut ops = vec![MergeOp::Keep; schema.columns.len()];
        for (j, agg) in aggs.iter().enumerate() {
            let values = members
                .iter()
                .filter(|(_, offset)| *offset >= from)
                .map(|(r, _)| rows.cell(*r, keys.len() + j))
                .collect::<Result<Vec<_>>>()?;
            ops[agg.column] = fold(
                agg.kind,
                schema.columns[agg.column].ty,
                values.iter().map(|v| v.as_ref()),
            )?;
        }
        Ok(SinkMerge {
            key: key.clone(),
            source: source.clone(),
            from,
            to,
            ops,
        })
    };
    let mut pending: Vec<(usize, u64)> = (0..groups.len()).map(|g| (g, from)).collect();
    while !pending.is_empty() {
        let merges = pending
            .iter()
            .map(|(g, f)| build(*g, *f))
            .collect::<Result<Vec<_>>>()?;
        let overlaps = cluster
            .merge(&plan.sink.name, merges)
            .await
            .map_err(cluster_error)?;
        pending = overlaps
            .into_iter()
            .filter_map(|(i, mark)| pending.get(i).map(|(g, _)| (*g, mark)))
            .filter(|(_, mark)| *mark < to)
            .collect();
    }
    Ok(())
}

/// The record offset a row's offset column holds.
fn offset_value(v: &Value) -> u64 {
    match v {
        Value::Int(o) => u64::try_from(*o).unwrap_or(0),
        _ => 0,
    }
}

fn offset_of(row: &[Value], at: usize) -> u64 {
    row.get(at).map_or(0, offset_value)
}

/// One aggregate over a key's values in a batch, as the merge that adds it to the row. The
/// values are combined with the same arithmetic the region applies the merge with.
fn fold<'a>(
    kind: AggKind,
    column: ColumnType,
    values: impl Iterator<Item = &'a Value>,
) -> Result<MergeOp> {
    let failed = |e: String| DataFusionError::Execution(e);
    let mut acc = Value::Null;
    let mut count = 0u64;
    for v in values {
        count += 1;
        acc = match kind {
            AggKind::Last => {
                acc = v.clone();
                continue;
            }
            AggKind::Count | AggKind::CountDistinct | AggKind::Sum | AggKind::Avg => {
                merge::add(&acc, v).map_err(failed)?
            }
            AggKind::Min => merge::pick(&acc, v, Ordering::Less).map_err(failed)?,
            AggKind::Max => merge::pick(&acc, v, Ordering::Greater).map_err(failed)?,
        };
        count -= u64::from(v.is_null());
    }
    Ok(match kind {
        // A distinct count's values are 1 for the first record of a pair, NULL for the others.
        AggKind::Count | AggKind::CountDistinct => match (column, acc) {
            (ColumnType::UInt64, Value::Int(n)) => MergeOp::Sum(Value::UInt(n.max(0) as u64)),
            (ColumnType::UInt64, _) => MergeOp::Sum(Value::UInt(0)),
            (_, Value::Null) => MergeOp::Sum(Value::Int(0)),
            (_, n) => MergeOp::Sum(n),
        },
        AggKind::Sum => MergeOp::Sum(acc),
        AggKind::Min => MergeOp::Min(acc),
        AggKind::Max => MergeOp::Max(acc),
        AggKind::Avg => MergeOp::Avg { sum: acc, count },
        // No record of the key in the range: the row keeps what it shows.
        AggKind::Last if count == 0 => MergeOp::Keep,
        AggKind::Last => MergeOp::Set(acc),
    })
}

#[cfg(test)]
mod tests {
    use weir_proto::table::TableSchema;

    use super::*;

    /// A per-record row of a job keeping `count(*)` per one-minute window with two minutes of
    /// lateness: key, argument, offset, event time, close time (seconds here).
    fn row(offset: i64, event_s: i64) -> Vec<Value> {
        let minute = event_s.div_euclid(60) * 60;
        vec![
            Value::Timestamp(minute * 1_000_000),
            Value::Int(1),
            Value::Int(offset),
            Value::Timestamp(event_s * 1_000_000),
            Value::Timestamp((minute + 60 + 120) * 1_000_000),
        ]
    }

    #[test]
    fn records_whose_window_closed_are_dropped_wherever_batches_are_cut() {
        // Events (seconds): a late one at offset 3 (its window [0, 60) closed at 180, and 200
        // was seen), one within the lateness at offset 4, one exactly at the close at offset 6.
        let events = [10, 70, 200, 30, 130, 400, 120];
        let rows: Vec<Vec<Value>> = events
            .iter()
            .enumerate()
            .map(|(o, e)| row(o as i64, *e))
            .collect();
        let (kept, late, w) = drop_late(rows.clone(), 2, None);
        let offsets = |k: &[Vec<Value>]| k.iter().map(|r| offset_of(r, 2)).collect::<Vec<_>>();
        assert_eq!(offsets(&kept), [0, 1, 2, 4, 5]);
        assert_eq!(late, 2, "offsets 3 and 6");
        assert_eq!(w, Some(400_000_000));
        // Cut into batches of any size, rows in any order within a batch, and a record that
        // a join turned into two rows: the same records are dropped.
        for size in 1..=events.len() {
            let (mut all, mut late_sum, mut w) = (Vec::new(), 0, None);
            for chunk in rows.chunks(size) {
                let mut batch: Vec<Vec<Value>> = chunk.iter().rev().cloned().collect();
                if let Some(first) = batch.first().cloned() {
                    batch.push(first);
                }
                let (k, l, nw) = drop_late(batch, 2, w);
                all.extend(k);
                late_sum += l;
                w = nw;
            }
            all.sort_by_key(|r| offset_of(r, 2));
            all.dedup();
            assert_eq!(offsets(&all), [0, 1, 2, 4, 5], "batches of {size}");
            assert_eq!(late_sum, 2, "batches of {size}");
        }
        // A watermark carried over from before (a restart) counts too.
        let (kept, late, _) = drop_late(vec![row(7, 20)], 2, Some(400_000_000));
        assert!(kept.is_empty());
        assert_eq!(late, 1);
    }

    #[test]
    fn upserted_rows_are_keyed_in_offset_order_and_null_keys_refused() {
        let col = |name: &str, ty| weir_proto::table::Column {
            name: name.into(),
            ty,
            nullable: true,
        };
        let sink = TableMeta {
            name: "latest".into(),
            schema: Arc::new(TableSchema {
                columns: vec![
                    col("id", ColumnType::Int64),
                    col("note", ColumnType::Utf8),
                    col("v", ColumnType::Int64),
                ],
                primary_key: vec![0],
            }),
            regions: Vec::new(),
        };
        // The job writes (v, id): out rows are v, id, offset; a join gave them out of order.
        let out = vec![
            vec![Value::Int(20), Value::Int(1), Value::Int(7)],
            vec![Value::Int(10), Value::Int(1), Value::Int(3)],
        ];
        let (keys, aggs, rows) = upserts(&sink, &[2, 0], out).expect("upserts");
        assert_eq!(keys, [0]);
        assert_eq!(
            aggs,
            [Agg {
                kind: AggKind::Last,
                column: 2
            }]
        );
        assert_eq!(
            rows,
            [
                vec![Value::Int(1), Value::Int(10), Value::Int(3)],
                vec![Value::Int(1), Value::Int(20), Value::Int(7)],
            ]
        );
        // The latest record's value is set; a key with no record in the range keeps its cells.
        let values = rows.iter().map(|r| &r[1]);
        assert_eq!(
            fold(AggKind::Last, ColumnType::Int64, values).unwrap(),
            MergeOp::Set(Value::Int(20))
        );
        assert_eq!(
            fold(AggKind::Last, ColumnType::Int64, std::iter::empty()).unwrap(),
            MergeOp::Keep
        );
        assert_eq!(
            fold(
                AggKind::Last,
                ColumnType::Int64,
                [Value::Int(1), Value::Null].iter()
            )
            .unwrap(),
            MergeOp::Set(Value::Null)
        );
        let e = upserts(
            &sink,
            &[2, 0],
            vec![vec![Value::Int(1), Value::Null, Value::Int(0)]],
        )
        .expect_err("a NULL key");
        assert!(is_record_error(&e), "{e}");
        assert!(e.to_string().contains("'id' of 'latest'"), "{e}");
    }

    #[test]
    fn folds_follow_sql_aggregates() {
        let vals = [Value::Int(3), Value::Null, Value::Int(-2), Value::Int(7)];
        assert_eq!(
            fold(AggKind::Sum, ColumnType::Int64, vals.iter()).unwrap(),
            MergeOp::Sum(Value::Int(8))
        );
        assert_eq!(
            fold(AggKind::Min, ColumnType::Int64, vals.iter()).unwrap(),
            MergeOp::Min(Value::Int(-2))
        );
        assert_eq!(
            fold(AggKind::Max, ColumnType::Int64, vals.iter()).unwrap(),
            MergeOp::Max(Value::Int(7))
        );
        let ones = [Value::Int(1), Value::Int(0), Value::Int(1)];
        assert_eq!(
            fold(AggKind::Count, ColumnType::Int64, ones.iter()).unwrap(),
            MergeOp::Sum(Value::Int(2))
        );
        let floats = [Value::Float(1.5), Value::Null, Value::Float(2.5)];
        assert_eq!(
            fold(AggKind::Avg, ColumnType::Float64, floats.iter()).unwrap(),
            MergeOp::Avg {
                sum: Value::Float(4.0),
                count: 2
            }
        );
        let nulls = [Value::Null];
        assert_eq!(
            fold(AggKind::Sum, ColumnType::Int64, nulls.iter()).unwrap(),
            MergeOp::Sum(Value::Null)
        );
        let big = [Value::Int(i64::MAX), Value::Int(1)];
        assert!(fold(AggKind::Sum, ColumnType::Int64, big.iter()).is_err());
    }
}
