//! Running the schedule statements: `CREATE SCHEDULE` (whose statement the engine has planned
//! first), `ALTER`/`DROP`/`RUN SCHEDULE`, `SHOW SCHEDULES`, and the query `SHOW RUNS` stands for.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

use crate::cluster::{Cluster, ClusterError, NewSchedule, ScheduleAction};
use crate::output::Output;
use crate::schedule::runs::RUNS_TABLE;
use crate::schedule::statement::{ScheduleStatement, Timetable};
use crate::warnings::QueryWarnings;

fn cluster_error(e: ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// Runs a schedule statement other than `SHOW RUNS` (see [`runs_query`]).
pub async fn run(cluster: &Arc<dyn Cluster>, stmt: ScheduleStatement) -> Result<Output> {
    match stmt {
        ScheduleStatement::Create {
            name,
            timetable,
            after,
            statement,
        } => {
            let (every_ms, cron) = match timetable {
                Timetable::Every { ms, .. } => (ms, None),
                Timetable::Cron(c) => (0, Some(c)),
            };
            cluster
                .create_schedule(NewSchedule {
                    name,
                    statement,
                    every_ms,
                    cron,
                    after,
                })
                .await
                .map_err(cluster_error)?;
            Ok(Output::Done("CREATE SCHEDULE".into()))
        }
        ScheduleStatement::Alter {
            name,
            action,
            if_exists,
        } => {
            let tag = match action {
                ScheduleAction::Pause | ScheduleAction::Resume => "ALTER SCHEDULE",
                ScheduleAction::Drop => "DROP SCHEDULE",
                ScheduleAction::RunNow => "RUN SCHEDULE",
            };
            match cluster.alter_schedule(&name, action).await {
                Ok(()) => Ok(Output::Done(tag.into())),
                Err(ClusterError::NotFound(_)) if if_exists => Ok(Output::Done(tag.into())),
                Err(e) => Err(cluster_error(e)),
            }
        }
        ScheduleStatement::Show => {
            cluster.catalog_caught_up().await.map_err(cluster_error)?;
            show(cluster)
        }
        ScheduleStatement::ShowRuns { .. } => Err(DataFusionError::Internal(
            "SHOW RUNS is a query the engine runs".into(),
        )),
    }
}

/// `SHOW SCHEDULES`: every schedule, its interval, dependencies, state and statement.
fn show(cluster: &Arc<dyn Cluster>) -> Result<Output> {
    let schedules = cluster.list_schedules().map_err(cluster_error)?;
    let schema = Arc::new(Schema::new(vec![
        Field::new("schedule", DataType::Utf8, false),
        Field::new("timetable", DataType::Utf8, false),
        Field::new("after", DataType::Utf8, false),
        Field::new("paused", DataType::Boolean, false),
        Field::new(
            "created",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("statement", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            schedules.iter().map(|s| s.name.clone()),
        )),
        Arc::new(StringArray::from_iter_values(schedules.iter().map(
            |s| match &s.cron {
                Some(c) => format!("cron {c}"),
                None => describe_every(s.every_ms),
            },
        ))),
        Arc::new(StringArray::from_iter_values(
            schedules.iter().map(|s| s.after.join(", ")),
        )),
        Arc::new(BooleanArray::from(
            schedules.iter().map(|s| s.paused).collect::<Vec<_>>(),
        )),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            schedules.iter().map(|s| s.created_ms),
        )),
        Arc::new(StringArray::from_iter_values(
            schedules.iter().map(|s| s.statement.clone()),
        )),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns)?;
    let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)]));
    Ok(Output::Rows(
        Box::pin(stream),
        Arc::new(QueryWarnings::default()),
    ))
}

/// An interval in its largest whole unit: `10 minutes`, `1 hour`, `1500 ms`.
pub fn describe_every(ms: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (604_800_000, "week"),
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1000, "second"),
    ];
    for (size, unit) in UNITS {
        if ms >= size && ms.is_multiple_of(size) {
            let n = ms / size;
            return format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{ms} ms")
}

/// The query `SHOW RUNS [FOR name]` stands for: the latest 100 runs, newest first; none when no
/// schedule has run yet.
pub fn runs_query(cluster: &Arc<dyn Cluster>, name: Option<&str>) -> Result<Option<String>> {
    if cluster.table(RUNS_TABLE).map_err(cluster_error)?.is_none() {
        return Ok(None);
    }
    let filter = match name {
        Some(n) => format!("WHERE schedule = '{}' ", n.replace('\'', "''")),
        None => String::new(),
    };
    Ok(Some(format!(
        "SELECT schedule, tick, status, attempt, node, started, ended, rows, error, manual \
         FROM \"{RUNS_TABLE}\" {filter}ORDER BY tick DESC, schedule LIMIT 100"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_read_back_in_their_unit() {
        assert_eq!(describe_every(600_000), "10 minutes");
        assert_eq!(describe_every(3_600_000), "1 hour");
        assert_eq!(describe_every(1500), "1500 ms");
        assert_eq!(describe_every(86_400_000), "1 day");
    }
}
