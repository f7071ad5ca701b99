//! One task of a stream job: reads one partition of the source from the offset its job last
//! committed, runs the per-batch query over each batch of records, writes the rows into the sink
//! (upserted, appended to a sink topic, or folded per key and merged into aggregates) and commits
//! the offset reached.
//! Why replays after a crash are exact is argued in [`crate::job`].

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

use crate::cluster::{Cluster, ClusterError, JobMeta, SinkMerge, TopicRecord};
use crate::columnar::rows_to_batch;
use crate::job::dead_letter::{self, DeadLetter};
use crate::job::plan::{Agg, AggKind, JobPlan, Shape};
use crate::job::stats::TaskStats;
use crate::topic::{decode_record, encode_row};
use crate::types::batch_to_rows;

/// Bytes asked for per fetch (about one batch).
const FETCH_BYTES: u32 = 1 << 20;
/// How long an idle task waits before asking its partition again.
const IDLE_WAIT: Duration = Duration::from_millis(50);
/// Longest pause after a failed batch before it is tried again.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

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
    let committed = cluster
        .committed(&group, &job.source)
        .await
        .map_err(cluster_error)?;
    if let Some(o) = committed.get(&partition) {
        return Ok(*o);
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

async fn run_once(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    partition: u32,
    stats: &TaskStats,
    stop: &mut watch::Receiver<bool>,
) -> Result<()> {
    let plan = JobPlan::new(cluster.clone(), &job.definition).await?;
    let group = progress_group(job);
    let mut next = start_offset(cluster, job, partition).await?;
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
    tracing::info!(job = %job.name, partition, offset = next, "stream task started");
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        stats.tick();
        let page = cluster
            .fetch(&job.source, partition, next, FETCH_BYTES)
            .await
            .map_err(cluster_error)?;
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
                cluster
                    .commit(&group, &job.source, partition, next)
                    .await
                    .map_err(cluster_error)?;
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
        let (out, failed) =
            match process(cluster, job, &plan, partition, &records, (next, to), stats).await {
                Ok(done) => done,
                Err(e) if is_record_error(&e) => {
                    // Some record of the batch does not fit (a value that does not cast, a row the
                    // sink refuses): find it by taking the records one at a time.
                    tracing::warn!(job = %job.name, partition, from = next, to, error = %e,
                    "a batch failed; retrying it record by record");
                    one_by_one(cluster, job, &plan, partition, &records, stats).await?
                }
                Err(e) => return Err(e),
            };
        stats.processed(records.len() as u64, out, failed);
        next = to;
        stats.reached(next);
        if last_commit.elapsed() >= Duration::from_millis(200) {
            cluster
                .commit(&group, &job.source, partition, next)
                .await
                .map_err(cluster_error)?;
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

/// Runs the records of a failed batch one at a time; those that fail on their own go to the
/// dead-letter topic with the error. Returns the rows produced and the records failed.
async fn one_by_one(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    plan: &JobPlan,
    partition: u32,
    records: &[TopicRecord],
    stats: &TaskStats,
) -> Result<(u64, u64)> {
    let (mut out, mut failed) = (0, 0);
    for r in records {
        let one = std::slice::from_ref(r);
        match process(
            cluster,
            job,
            plan,
            partition,
            one,
            (r.offset, r.offset + 1),
            stats,
        )
        .await
        {
            Ok((o, f)) => {
                out += o;
                failed += f;
            }
            Err(e) if is_record_error(&e) => {
                tracing::warn!(job = %job.name, partition, offset = r.offset, error = %e,
                    "record failed; sent to the dead-letter topic");
                stats.failed(&format!("record at offset {}: {e}", r.offset));
                failed += 1;
                let letter = DeadLetter {
                    offset: r.offset,
                    reason: e.to_string(),
                    record: String::from_utf8_lossy(&r.value).into_owned(),
                };
                dead_letter::send(
                    cluster.as_ref(),
                    &job.name,
                    &job.source,
                    partition,
                    vec![letter],
                )
                .await
                .map_err(cluster_error)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok((out, failed))
}

/// Runs one batch of records (offsets `[from, to)`) through the job and into the sink; returns
/// the rows the query produced and the records that did not decode (sent to the dead-letter
/// topic).
async fn process(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    plan: &JobPlan,
    partition: u32,
    records: &[TopicRecord],
    (from, to): (u64, u64),
    stats: &TaskStats,
) -> Result<(u64, u64)> {
    let mut rows = Vec::with_capacity(records.len());
    let mut letters = Vec::new();
    for r in records {
        match decode_record(&plan.source, partition, r) {
            Ok(row) => rows.push(row),
            Err(reason) => letters.push(DeadLetter {
                offset: r.offset,
                reason,
                record: String::from_utf8_lossy(&r.value).into_owned(),
            }),
        }
    }
    let failed = letters.len() as u64;
    if let Some(first) = letters.first() {
        tracing::warn!(job = %job.name, partition, records = letters.len(), offset = first.offset,
            reason = %first.reason, "records do not decode; sent to the dead-letter topic");
        stats.failed(&format!(
            "record at offset {}: {}",
            first.offset, first.reason
        ));
        dead_letter::send(cluster.as_ref(), &job.name, &job.source, partition, letters)
            .await
            .map_err(cluster_error)?;
    }
    let batch = rows_to_batch(&plan.source_schema, &plan.source_columns, &rows)?;
    let mut out = Vec::new();
    for b in plan.run(batch).await? {
        out.extend(batch_to_rows(&b, &plan.out_columns, out.len() as u64)?);
    }
    let produced = out.len() as u64;
    match &plan.shape {
        Shape::Upsert { targets } => {
            let width = plan.sink.schema.columns.len();
            let sink_rows: Vec<Vec<Value>> = out
                .into_iter()
                .map(|r| {
                    let mut row = vec![Value::Null; width];
                    for (v, t) in r.into_iter().zip(targets) {
                        row[*t] = v;
                    }
                    row
                })
                .collect();
            // One call: the client splits the rows by region and writes the parts at once.
            cluster
                .upsert(&plan.sink.name, sink_rows)
                .await
                .map_err(cluster_error)?;
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
        Shape::Aggregate { keys, aggs } => {
            merge_all(cluster, job, plan, partition, keys, aggs, out, from, to).await?;
        }
    }
    Ok((produced, failed))
}

/// Folds the per-record rows by key and merges them into the sink, re-folding a key from the
/// offset its row reached when the row had already taken part of the batch.
#[allow(clippy::too_many_arguments)]
async fn merge_all(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    plan: &JobPlan,
    partition: u32,
    keys: &[usize],
    aggs: &[Agg],
    rows: Vec<Vec<Value>>,
    from: u64,
    to: u64,
) -> Result<()> {
    let schema = &plan.sink.schema;
    let offset_at = keys.len() + aggs.len();
    // Key values in primary-key order, and the rows of each key.
    let mut groups: Vec<(Vec<Value>, Vec<Vec<Value>>)> = Vec::new();
    let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut null_keys = 0u64;
    // Where each primary-key column is among the outputs (the keys are the primary key).
    let key_at: Vec<usize> = schema
        .primary_key
        .iter()
        .map(|c| keys.iter().position(|kc| kc == c).unwrap_or(0))
        .collect();
    for row in rows {
        let key: Vec<Value> = key_at.iter().map(|k| row[*k].clone()).collect();
        if key.iter().any(|v| matches!(v, Value::Null)) {
            null_keys += 1;
            continue;
        }
        let encoded =
            encode_key(schema, &key).map_err(|e| DataFusionError::Execution(e.to_string()))?;
        let i = *index.entry(encoded).or_insert_with(|| {
            groups.push((key, Vec::new()));
            groups.len() - 1
        });
        groups[i].1.push(row);
    }
    if null_keys > 0 {
        tracing::warn!(job = %job.name, partition, rows = null_keys,
            "rows with a NULL group key skipped (the sink's key cannot hold NULL)");
    }
    let source = mark_source(job, partition);
    let build = |g: usize, from: u64| -> Result<SinkMerge> {
        let (key, rows) = &groups[g];
        let mut ops = vec![MergeOp::Keep; schema.columns.len()];
        for (j, agg) in aggs.iter().enumerate() {
            let values = rows
                .iter()
                .filter(|r| offset_of(r, offset_at) >= from)
                .map(|r| &r[keys.len() + j]);
            ops[agg.column] = fold(agg.kind, schema.columns[agg.column].ty, values)?;
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

fn offset_of(row: &[Value], at: usize) -> u64 {
    match row.get(at) {
        Some(Value::Int(o)) => u64::try_from(*o).unwrap_or(0),
        _ => 0,
    }
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
        acc = match kind {
            AggKind::Count | AggKind::Sum | AggKind::Avg => merge::add(&acc, v).map_err(failed)?,
            AggKind::Min => merge::pick(&acc, v, Ordering::Less).map_err(failed)?,
            AggKind::Max => merge::pick(&acc, v, Ordering::Greater).map_err(failed)?,
        };
        count += u64::from(!v.is_null());
    }
    Ok(match kind {
        AggKind::Count => match (column, acc) {
            (ColumnType::UInt64, Value::Int(n)) => MergeOp::Sum(Value::UInt(n.max(0) as u64)),
            (ColumnType::UInt64, _) => MergeOp::Sum(Value::UInt(0)),
            (_, Value::Null) => MergeOp::Sum(Value::Int(0)),
            (_, n) => MergeOp::Sum(n),
        },
        AggKind::Sum => MergeOp::Sum(acc),
        AggKind::Min => MergeOp::Min(acc),
        AggKind::Max => MergeOp::Max(acc),
        AggKind::Avg => MergeOp::Avg { sum: acc, count },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
