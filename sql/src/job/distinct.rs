//! `count(DISTINCT x)` in a stream job, exact across replays, moves and several partitions.
//!
//! A distinct count cannot be merged as a number: two partitions may both bring the value `v` for
//! the key `k`, and a replay brings it again. So the job keeps, for each `count(DISTINCT)` it
//! maintains, a table of the (key, value) pairs it has seen (`<job>.distinct.<column>`, created
//! and dropped with the job, an ordinary table anyone can query), whose row for a pair names the
//! record that first brought it: its source partition and offset.
//!
//! - For a batch, the task proposes for each (key, value) pair the first record of the batch
//!   carrying it, as a merge that sets both cells under one fixed source with range `[0, 1)`: the
//!   first merge for a pair creates the row and every later one finds the range covered, so the
//!   row keeps whichever record reached it first, for good.
//! - It then reads the rows back (a linearizable read), and a record counts 1 for its key when
//!   it is the record its pair's row names, 0 otherwise. That answer no longer depends on who
//!   asks or when: it is a fixed property of the record.
//! - These ones are then counted like `count(x)` and merged into the sink with the same per-
//!   partition marks as every aggregate ([`crate::job`]), so each record's 1 lands once.
//!
//! Every pair's row names one record, which carries the pair and was read by its partition's task;
//! that record's 1 is in the sink once its task's merges pass it. So the sink's count for a key is
//! the number of its distinct values among the records consumed, however batches are cut, whether
//! a batch is replayed after its pairs were written, and whichever instance of a task writes.
//! (One assumption: a replayed record yields the same key as the first time. A lookup join
//! against a dimension table that changed between the two reads can break it, as it would make
//! any replayed aggregate differ from the first attempt.)
//!
//! # Closed windows let go of their pairs
//!
//! With a window that closes (`tumble(ts, size, lateness)` as a group key), a pair's row also
//! keeps when its window closes (`window_closes`: its end plus the lateness), and the task of
//! partition 0 deletes, every few seconds, the rows whose window closed at or before the lowest
//! watermark the job's partitions committed ([`sweep`]), so the table holds the pairs of open
//! windows only. Why that cannot change a count: a record reaches [`mark_firsts`] only when its
//! window closes after its partition's watermark, which its task holds in memory at or above what
//! it committed, so at or above the lowest one swept at: no record still to be counted belongs
//! to a window swept. The watermark a sweep uses is committed before it deletes anything
//! (group `__job.<id>.swept`), and a task starts from the higher of its partition's committed
//! watermark and that one, so neither a replay nor an older watermark committed late by an
//! instance that was replaced can take a record of a swept window as on time. A partition that
//! has not committed a watermark yet (no record read) holds every sweep back, as an idle source
//! holds back Flink's watermark.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use weir_proto::table::key::encode_key;
use weir_proto::table::merge::MergeOp;
use weir_proto::table::{Column, ColumnType, TableSchema, Value, JOB_TABLES};

use crate::cluster::{Cluster, ClusterError, JobMeta, NewTable, SinkMerge};
use crate::job::plan::{Agg, AggKind, JobPlan, Shape};

/// The column of a distinct-values table holding the value counted.
pub const VALUE_COLUMN: &str = "distinct_value";
/// The column naming the source partition of the record that first brought the pair.
pub const PARTITION_COLUMN: &str = "first_partition";
/// The column naming that record's offset.
pub const OFFSET_COLUMN: &str = "first_offset";
/// The column naming when the pair's window closes (for a window that closes).
pub const CLOSES_COLUMN: &str = "window_closes";
/// The merge source every proposal is made under: one for all, so the first one wins.
const FIRST: &str = "first";

fn cluster_error(e: ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// The table keeping the (key, value) pairs of the `count(DISTINCT)` that lands in sink column
/// `column` of job `job`.
pub fn table_name(job: &str, column: &str) -> String {
    format!("{job}{JOB_TABLES}{column}")
}

/// The columns of a distinct-values table: the sink's key columns (in key order), the value,
/// then the record that first brought the pair (and, when the job's window closes, when the
/// pair's window closes); its key is the key columns and the value.
fn schema(sink: &TableSchema, value: ColumnType, closes: bool) -> TableSchema {
    let mut columns: Vec<Column> = sink
        .key_columns()
        .map(|c| Column {
            nullable: false,
            ..c.clone()
        })
        .collect();
    let key_len = columns.len() + 1;
    for (name, ty) in [
        (VALUE_COLUMN, value),
        (PARTITION_COLUMN, ColumnType::Int64),
        (OFFSET_COLUMN, ColumnType::Int64),
    ] {
        columns.push(Column {
            name: name.into(),
            ty,
            nullable: false,
        });
    }
    if closes {
        columns.push(Column {
            name: CLOSES_COLUMN.into(),
            ty: ColumnType::Timestamp,
            nullable: true,
        });
    }
    TableSchema {
        columns,
        primary_key: (0..key_len).collect(),
    }
}

/// The distinct-values tables of `plan` when it runs as job `job`: one per `count(DISTINCT)`,
/// with the position of its aggregate.
pub fn tables(plan: &JobPlan, job: &str) -> Vec<(usize, NewTable)> {
    let Shape::Aggregate { keys, aggs, closes } = &plan.shape else {
        return Vec::new();
    };
    let sink = &plan.sink.schema;
    aggs.iter()
        .enumerate()
        .filter(|(_, a)| a.kind == AggKind::CountDistinct)
        .map(|(j, a)| {
            let value = plan.out_columns[keys.len() + j].ty;
            (
                j,
                NewTable {
                    name: table_name(job, &sink.columns[a.column].name),
                    schema: schema(sink, value, *closes),
                    replicas: 0,
                    split_bytes: 0,
                },
            )
        })
        .collect()
}

/// Creates the distinct-values tables of `plan` for job `job`, refusing one that exists (it
/// would carry another job's pairs); returns the names created.
pub async fn create(cluster: &Arc<dyn Cluster>, plan: &JobPlan, job: &str) -> Result<Vec<String>> {
    let mut created = Vec::new();
    for (_, t) in tables(plan, job) {
        let name = t.name.clone();
        let made = match cluster.table(&name).map_err(cluster_error)? {
            Some(_) => Err(DataFusionError::Plan(format!(
                "job '{job}' keeps its distinct values in table '{name}', which exists already \
                 (left by an earlier job of that name?); drop it or name the job otherwise"
            ))),
            None => cluster.create_table(t).await.map_err(cluster_error),
        };
        if let Err(e) = made {
            drop_all(cluster, &created).await;
            return Err(e);
        }
        created.push(name);
    }
    Ok(created)
}

/// Drops the tables `names` (a job's distinct-values tables), logging what cannot be dropped.
pub async fn drop_all(cluster: &Arc<dyn Cluster>, names: &[String]) {
    for name in names {
        match cluster.drop_table(name).await {
            Ok(()) | Err(ClusterError::NotFound(_)) => {}
            Err(e) => tracing::warn!(table = %name, error = %e,
                "a job's distinct-values table was not dropped; drop it with DROP TABLE"),
        }
    }
}

fn offset_of(row: &[Value], at: usize) -> u64 {
    match row.get(at) {
        Some(Value::Int(o)) => u64::try_from(*o).unwrap_or(0),
        _ => 0,
    }
}

/// Replaces the argument of each `count(DISTINCT)` in `rows` (per-record rows of task
/// `partition`: keys, aggregate arguments, offset) by 1 in the row of the record that first
/// brought its (key, value), NULL in the others, so that counting them counts distinct values.
pub async fn mark_firsts(
    cluster: &Arc<dyn Cluster>,
    job: &JobMeta,
    plan: &JobPlan,
    partition: u32,
    (keys, aggs): (&[usize], &[Agg]),
    rows: &mut [Vec<Value>],
) -> Result<()> {
    let sink = &plan.sink.schema;
    let offset_at = keys.len() + aggs.len();
    let key_at: Vec<usize> = sink
        .primary_key
        .iter()
        .map(|c| keys.iter().position(|k| k == c).unwrap_or(0))
        .collect();
    for (j, table) in tables(plan, &job.name) {
        let at = keys.len() + j;
        // Each pair once, with the first record carrying it (and its window's close, the same
        // for every record of the pair); each row's pair, if it has one.
        let mut pairs: Vec<(Vec<Value>, u64, Value)> = Vec::new();
        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut pair_of: Vec<Option<usize>> = Vec::with_capacity(rows.len());
        for row in rows.iter() {
            let mut key: Vec<Value> = key_at.iter().map(|k| row[*k].clone()).collect();
            key.push(row[at].clone());
            if key.iter().any(Value::is_null) {
                pair_of.push(None);
                continue;
            }
            let encoded = encode_key(&table.schema, &key).map_err(|e| {
                cluster_error(ClusterError::Invalid(format!(
                    "count(DISTINCT) into '{}': {e}",
                    sink.columns[aggs[j].column].name
                )))
            })?;
            let offset = offset_of(row, offset_at);
            let i = *index.entry(encoded).or_insert_with(|| {
                let closes = row.get(offset_at + 2).cloned().unwrap_or(Value::Null);
                pairs.push((key, offset, closes));
                pairs.len() - 1
            });
            pairs[i].1 = pairs[i].1.min(offset);
            pair_of.push(Some(i));
        }
        if pairs.is_empty() {
            continue;
        }
        let columns = &table.schema.columns;
        let position = |name: &str| columns.iter().position(|c| c.name == name);
        let (first_partition, first_offset, closes_at) = (
            position(PARTITION_COLUMN),
            position(OFFSET_COLUMN),
            position(CLOSES_COLUMN),
        );
        let proposals = pairs
            .iter()
            .map(|(key, offset, closes)| {
                let mut ops = vec![MergeOp::Keep; columns.len()];
                let mut set = |cell: Option<usize>, v: Value| {
                    if let Some(cell) = cell {
                        ops[cell] = MergeOp::Set(v);
                    }
                };
                set(first_partition, Value::Int(i64::from(partition)));
                set(first_offset, Value::Int(*offset as i64));
                set(closes_at, closes.clone());
                SinkMerge {
                    key: key.clone(),
                    source: FIRST.into(),
                    from: 0,
                    to: 1,
                    ops,
                }
            })
            .collect();
        let overlaps = cluster
            .merge(&table.name, proposals)
            .await
            .map_err(cluster_error)?;
        if !overlaps.is_empty() {
            return Err(DataFusionError::Internal(format!(
                "a first-record proposal into '{}' overlapped a mark",
                table.name
            )));
        }
        let firsts = cluster
            .get(
                &table.name,
                pairs.into_iter().map(|(k, _, _)| k).collect(),
                &[PARTITION_COLUMN.into(), OFFSET_COLUMN.into()],
            )
            .await
            .map_err(cluster_error)?;
        let mut counted = vec![false; firsts.len()];
        for (row, pair) in rows.iter_mut().zip(pair_of) {
            let first = match pair {
                Some(i) => match firsts.get(i) {
                    Some(Some(cells)) => {
                        let mine = matches!(cells.as_slice(),
                            [Value::Int(p), Value::Int(o)]
                                if *p == i64::from(partition)
                                    && *o == offset_of(row, offset_at) as i64);
                        // A join can give one record several rows: it counts once.
                        let first = mine && !counted[i];
                        counted[i] |= first;
                        first
                    }
                    _ => {
                        return Err(cluster_error(ClusterError::Unavailable(format!(
                            "a pair just written to '{}' was not found",
                            table.name
                        ))))
                    }
                },
                None => false,
            };
            row[at] = if first { Value::Int(1) } else { Value::Null };
        }
    }
    Ok(())
}

/// Deletes from the distinct-values tables of `plan` run as job `job` the pairs whose window
/// closed at or before `watermark`, the lowest watermark the job's partitions committed (see the
/// module's notes), with a plain `DELETE`; returns the pairs deleted.
pub async fn sweep(plan: &JobPlan, job: &str, watermark: i64) -> Result<u64> {
    let mut deleted = 0;
    for (_, table) in tables(plan, job) {
        if table.schema.columns.iter().all(|c| c.name != CLOSES_COLUMN) {
            continue;
        }
        let name = table.name.replace('"', "\"\"");
        deleted += plan
            .execute(&format!(
                "DELETE FROM \"{name}\" WHERE {CLOSES_COLUMN} <= \
                 arrow_cast({watermark}, 'Timestamp(Microsecond, Some(\"UTC\"))')"
            ))
            .await?;
    }
    Ok(deleted)
}
