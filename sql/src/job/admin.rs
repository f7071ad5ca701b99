//! Running the job statements: `CREATE JOB` (planned here first, so a statement that cannot run
//! is refused before anything is recorded), `DROP JOB`, `STOP JOB`, `START JOB`, `SHOW JOBS` and
//! `DESCRIBE JOB`.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, StringArray, UInt32Array, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use crate::cluster::{Cluster, ClusterError, JobMeta, NewJob};
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
    cluster
        .list_jobs()
        .map_err(cluster_error)?
        .into_iter()
        .find(|j| j.name == name)
        .ok_or_else(|| DataFusionError::Plan(format!("job '{name}' does not exist")))
}

/// Runs a job statement.
pub async fn run(cluster: &Arc<dyn Cluster>, stmt: JobStatement) -> Result<Output> {
    match stmt {
        JobStatement::Create {
            name,
            start_latest,
            body,
        } => {
            let plan = JobPlan::from_insert(cluster.clone(), &body).await?;
            crate::job::dead_letter::ensure(cluster.as_ref(), &plan.source)
                .await
                .map_err(cluster_error)?;
            cluster
                .create_job(NewJob {
                    name,
                    definition: body.to_string(),
                    source: plan.source.name.clone(),
                    sink: plan.sink.name.clone(),
                    start_latest,
                    tasks: plan.source.partitions,
                })
                .await
                .map_err(cluster_error)?;
            Ok(Output::Done("CREATE JOB".into()))
        }
        JobStatement::Drop { name, if_exists } => match cluster.drop_job(&name).await {
            Ok(()) => Ok(Output::Done("DROP JOB".into())),
            Err(ClusterError::NotFound(_)) if if_exists => Ok(Output::Done("DROP JOB".into())),
            Err(e) => Err(cluster_error(e)),
        },
        JobStatement::SetRunning { name, running } => {
            cluster
                .set_job_running(&name, running)
                .await
                .map_err(cluster_error)?;
            Ok(Output::Done(
                if running { "START JOB" } else { "STOP JOB" }.into(),
            ))
        }
        JobStatement::Show => show(cluster),
        JobStatement::Describe { name } => describe(cluster, &job(cluster, &name)?).await,
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

/// `DESCRIBE JOB`: per task, its node, the offset it committed, the partition's end and the lag.
async fn describe(cluster: &Arc<dyn Cluster>, job: &JobMeta) -> Result<Output> {
    let committed = cluster
        .committed(&progress_group(job), &job.source)
        .await
        .map_err(cluster_error)?;
    let (mut partition, mut node, mut epoch, mut offset, mut end, mut lag) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
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
    }
    rows(
        vec![
            Field::new("partition", DataType::UInt32, false),
            Field::new("node", DataType::UInt64, true),
            Field::new("assignment", DataType::UInt64, false),
            Field::new("committed_offset", DataType::UInt64, true),
            Field::new("end_offset", DataType::UInt64, false),
            Field::new("lag", DataType::UInt64, true),
        ],
        vec![
            Arc::new(UInt32Array::from(partition)),
            Arc::new(UInt64Array::from(node)),
            Arc::new(UInt64Array::from(epoch)),
            Arc::new(UInt64Array::from(offset)),
            Arc::new(UInt64Array::from(end)),
            Arc::new(UInt64Array::from(lag)),
        ],
    )
}
