//! Running the job statements: `CREATE JOB` (planned here first, so a statement that cannot run
//! is refused before anything is recorded), `DROP JOB`, `STOP JOB`, `START JOB`, `SHOW JOBS` and
//! `DESCRIBE JOB`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use weir_proto::names::does_not_exist;

use crate::cluster::{Cluster, ClusterError, JobMeta, NewJob, TaskStatus};
use crate::job::distinct;
use crate::job::plan::JobPlan;
use crate::job::statement::JobStatement;
use crate::job::task::progress_group;
use crate::output::Output;
use crate::warnings::QueryWarnings;

fn cluster_error(e: ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

fn rows(fields: Vec<Field>, columns: Vec<ArrayRef>) -> Result<Output> {
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)]));
    Ok(Output::Rows(
        Box::pin(stream),
        Arc::new(QueryWarnings::default()),
    ))
}

fn job(cluster: &Arc<dyn Cluster>, name: &str) -> Result<JobMeta> {
    let jobs = cluster.list_jobs().map_err(cluster_error)?;
    let missing = || {
        let names = jobs.iter().map(|j| j.name.as_str());
        cluster_error(ClusterError::NotFound(does_not_exist("job", name, names)))
    };
    jobs.iter()
        .find(|j| j.name == name)
        .cloned()
        .ok_or_else(missing)
}

/// Runs a job statement, on the catalog as current as the cluster's: a job created or moved
/// through another node is seen as it is now.
pub async fn run(cluster: &Arc<dyn Cluster>, stmt: JobStatement) -> Result<Output> {
    cluster.catalog_caught_up().await.map_err(cluster_error)?;
    match stmt {
        JobStatement::Create {
            name,
            start_latest,
            body,
        } => {
            let plan = JobPlan::from_insert(cluster.clone(), &body).await?;
            if job(cluster, &name).is_ok() {
                return Err(DataFusionError::Plan(format!(
                    "job '{name}' exists already"
                )));
            }
            crate::job::dead_letter::ensure(cluster.as_ref(), &plan.source)
                .await
                .map_err(cluster_error)?;
            let tables = distinct::create(cluster, &plan, &name).await?;
            let created = cluster
                .create_job(NewJob {
                    name,
                    definition: body.to_string(),
                    source: plan.source.name.clone(),
                    sink: plan.sink.name.clone(),
                    start_latest,
                    tasks: plan.source.partitions,
                })
                .await;
            if let Err(e) = created {
                distinct::drop_all(cluster, &tables).await;
                return Err(cluster_error(e));
            }
            Ok(Output::Done("CREATE JOB".into()))
        }
        JobStatement::Drop { name, if_exists } => {
            let before = job(cluster, &name).ok();
            match cluster.drop_job(&name).await {
                Ok(()) => {
                    if let Some(before) = before {
                        wait_stopped(cluster, &before, "dropped").await?;
                        drop_distinct(cluster, &before).await;
                    }
                    Ok(Output::Done("DROP JOB".into()))
                }
                Err(ClusterError::NotFound(_)) if if_exists => Ok(Output::Done("DROP JOB".into())),
                Err(e) => Err(cluster_error(e)),
            }
        }
        JobStatement::SetRunning { name, running } => {
            let before = job(cluster, &name)?;
            cluster
                .set_job_running(&name, running)
                .await
                .map_err(cluster_error)?;
            if !running {
                wait_stopped(cluster, &before, "stopped").await?;
            }
            Ok(Output::Done(
                if running { "START JOB" } else { "STOP JOB" }.into(),
            ))
        }
        JobStatement::Show => show(cluster),
        JobStatement::Describe { name } => describe(cluster, &name).await,
    }
}

/// Drops the distinct-values tables of a dropped job, found by planning its statement again (a
/// statement that no longer plans, its sink gone, leaves them for DROP TABLE).
async fn drop_distinct(cluster: &Arc<dyn Cluster>, job: &JobMeta) {
    match JobPlan::new(cluster.clone(), &job.definition).await {
        Ok(plan) => {
            let names: Vec<String> = distinct::tables(&plan, &job.name)
                .into_iter()
                .map(|(_, t)| t.name)
                .collect();
            distinct::drop_all(cluster, &names).await;
        }
        Err(e) => tracing::warn!(job = %job.name, error = %e,
            "a dropped job's distinct-values tables were not looked for"),
    }
}

/// The nodes `job`'s tasks are assigned to.
fn task_nodes(job: &JobMeta) -> BTreeSet<u64> {
    job.tasks.iter().filter_map(|(n, _)| *n).collect()
}

/// Longest wait for a stopped or dropped job's tasks to finish the batch they are writing (a node
/// aborts a task that takes more than a few seconds).
const STOP_WAIT: Duration = Duration::from_secs(30);
/// Longest a node is waited for when asked what it runs: one that is down or cut off must not
/// hold up `DESCRIBE JOB` or `STOP JOB` for a connection timeout.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The tasks of `job` node `node` runs, or None when it does not answer in time.
async fn ask(cluster: &Arc<dyn Cluster>, node: u64, job: &JobMeta) -> Option<Vec<TaskStatus>> {
    match tokio::time::timeout(ASK_TIMEOUT, cluster.task_status(node, job.id)).await {
        Ok(Ok(tasks)) => Some(tasks),
        Ok(Err(e)) => {
            tracing::debug!(job = %job.name, node, error = %e, "no task status");
            None
        }
        Err(_) => {
            tracing::debug!(job = %job.name, node, "no task status in time");
            None
        }
    }
}

/// Asks every node in `nodes` at once what it runs of `job`.
async fn ask_all(
    cluster: &Arc<dyn Cluster>,
    nodes: &BTreeSet<u64>,
    job: &JobMeta,
) -> Vec<(u64, Option<Vec<TaskStatus>>)> {
    futures::future::join_all(
        nodes
            .iter()
            .map(|n| async move { (*n, ask(cluster, *n, job).await) }),
    )
    .await
}

/// Waits until no node that ran a task of `job` (as assigned before it was stopped or dropped:
/// `what` says which) still runs one, so that once `STOP JOB` or `DROP JOB` returns the job
/// writes nothing more. A node that does not answer is not waited for: a node cut off from the
/// cluster has its tasks fenced by their assignment epochs and the sink's marks.
async fn wait_stopped(cluster: &Arc<dyn Cluster>, job: &JobMeta, what: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + STOP_WAIT;
    let mut waiting = task_nodes(job);
    loop {
        waiting = ask_all(cluster, &waiting, job)
            .await
            .into_iter()
            .filter(|(_, tasks)| tasks.as_ref().is_some_and(|t| !t.is_empty()))
            .map(|(n, _)| n)
            .collect();
        if waiting.is_empty() {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let nodes: Vec<String> = waiting.iter().map(u64::to_string).collect();
            return Err(DataFusionError::Execution(format!(
                "job '{}' was {what}, but its tasks on node(s) {} were still running after {} s",
                job.name,
                nodes.join(", "),
                STOP_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `SHOW JOBS`: every job, whether it runs, what it reads and writes, and where its tasks are.
fn show(cluster: &Arc<dyn Cluster>) -> Result<Output> {
    let jobs = cluster.list_jobs().map_err(cluster_error)?;
    let nodes = |j: &JobMeta| {
        j.tasks
            .iter()
            .map(|(n, _)| n.map_or("-".to_string(), |n| n.to_string()))
            .collect::<Vec<_>>()
            .join(",")
    };
    rows(
        vec![
            Field::new("job", DataType::Utf8, false),
            Field::new("running", DataType::Boolean, false),
            Field::new("source", DataType::Utf8, false),
            Field::new("sink", DataType::Utf8, false),
            Field::new("tasks", DataType::UInt32, false),
            Field::new("nodes", DataType::Utf8, false),
            Field::new("statement", DataType::Utf8, false),
        ],
        vec![
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.name.clone()),
            )),
            Arc::new(BooleanArray::from(
                jobs.iter().map(|j| j.running).collect::<Vec<_>>(),
            )),
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.source.clone()),
            )),
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.sink.clone()),
            )),
            Arc::new(UInt32Array::from_iter_values(
                jobs.iter().map(|j| j.tasks.len() as u32),
            )),
            Arc::new(StringArray::from_iter_values(jobs.iter().map(nodes))),
            Arc::new(StringArray::from_iter_values(
                jobs.iter().map(|j| j.definition.clone()),
            )),
        ],
    )
}

/// The status of each running task of `job`, by partition, as the nodes running them report;
/// a node that does not answer leaves its tasks out (their columns show NULL).
async fn task_statuses(cluster: &Arc<dyn Cluster>, job: &JobMeta) -> BTreeMap<u32, TaskStatus> {
    let mut out = BTreeMap::new();
    for (node, tasks) in ask_all(cluster, &task_nodes(job), job).await {
        out.extend(
            tasks
                .unwrap_or_default()
                .into_iter()
                .filter(|t| {
                    job.tasks.get(t.partition as usize).map(|(n, _)| *n) == Some(Some(node))
                })
                .map(|t| (t.partition, t)),
        );
    }
    out
}

/// `DESCRIBE JOB`: per task, its node, the offset it committed, the partition's end and the lag,
/// and, as the node running it reports, the records it read, produced and failed (totals since it
/// started there and rates over the last seconds), its last error, and the records it dropped
/// because their window had closed.
///
/// The offsets are read before the assignment: a task commits only once the catalog has assigned
/// it, so the catalog, brought up to date after the offsets were read, names the node that
/// committed them (or a later one), never an earlier state in which the task had no node yet.
async fn describe(cluster: &Arc<dyn Cluster>, name: &str) -> Result<Output> {
    let before = job(cluster, name)?;
    let committed = cluster
        .committed(&progress_group(&before), &before.source)
        .await
        .map_err(cluster_error)?;
    cluster.catalog_caught_up().await.map_err(cluster_error)?;
    let job = &job(cluster, name)?;
    if job.id != before.id {
        return Err(DataFusionError::Plan(format!(
            "job '{name}' was dropped and created again while it was described; describe it again"
        )));
    }
    let statuses = task_statuses(cluster, job).await;
    let (mut partition, mut node, mut epoch, mut offset, mut end, mut lag) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let (mut read, mut in_rate, mut out_rate, mut failed, mut failed_rate, mut error) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    let mut late = vec![];
    let round = |x: f64| (x * 10.0).round() / 10.0;
    for (p, (n, e)) in job.tasks.iter().enumerate() {
        let p = p as u32;
        let (_, high) = cluster
            .offsets(&job.source, p)
            .await
            .map_err(cluster_error)?;
        let at = committed.get(&p).copied();
        partition.push(p);
        node.push(*n);
        epoch.push(*e);
        offset.push(at);
        end.push(high);
        lag.push(at.map(|o| high.saturating_sub(o)));
        let status = statuses.get(&p);
        read.push(status.map(|s| s.records_in));
        in_rate.push(status.map(|s| round(s.in_per_sec)));
        out_rate.push(status.map(|s| round(s.out_per_sec)));
        failed.push(status.map(|s| s.records_failed));
        failed_rate.push(status.map(|s| round(s.failed_per_sec)));
        late.push(status.map(|s| s.records_late));
        error.push(status.and_then(|s| {
            s.last_error.as_ref().map(|(at, m)| {
                let when = chrono::DateTime::from_timestamp_millis(*at)
                    .map(|t| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string())
                    .unwrap_or_default();
                format!("{when}: {m}")
            })
        }));
    }
    rows(
        vec![
            Field::new("partition", DataType::UInt32, false),
            Field::new("node", DataType::UInt64, true),
            Field::new("assignment", DataType::UInt64, false),
            Field::new("committed_offset", DataType::UInt64, true),
            Field::new("end_offset", DataType::UInt64, false),
            Field::new("lag", DataType::UInt64, true),
            Field::new("records_in", DataType::UInt64, true),
            Field::new("in_per_sec", DataType::Float64, true),
            Field::new("out_per_sec", DataType::Float64, true),
            Field::new("records_failed", DataType::UInt64, true),
            Field::new("failed_per_sec", DataType::Float64, true),
            Field::new("last_error", DataType::Utf8, true),
            Field::new("records_late", DataType::UInt64, true),
        ],
        vec![
            Arc::new(UInt32Array::from(partition)),
            Arc::new(UInt64Array::from(node)),
            Arc::new(UInt64Array::from(epoch)),
            Arc::new(UInt64Array::from(offset)),
            Arc::new(UInt64Array::from(end)),
            Arc::new(UInt64Array::from(lag)),
            Arc::new(UInt64Array::from(read)),
            Arc::new(Float64Array::from(in_rate)),
            Arc::new(Float64Array::from(out_rate)),
            Arc::new(UInt64Array::from(failed)),
            Arc::new(Float64Array::from(failed_rate)),
            Arc::new(StringArray::from(error)),
            Arc::new(UInt64Array::from(late)),
        ],
    )
}
