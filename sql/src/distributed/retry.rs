//! A query whose tasks could not reach a node (one that died or went away since its groups
//! last named their leaders) runs again on the planning node alone, if nothing of it has
//! reached the client yet; reads through the client library then route around the dead node.

use datafusion::dataframe::DataFrame;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::SessionState;
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

use super::WeirOptions;

/// Whether `e` says a node running part of the query could not be reached (a transport
/// error: errors a task raised itself come back as themselves).
fn unreachable(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::External(inner) => inner.is::<tonic::Status>(),
        _ => false,
    }
}

/// Whether running `plan` again cannot change what it did the first time: a query, not a
/// write (an upsert would be safe, a topic's append would not).
fn rerunnable(plan: &LogicalPlan) -> bool {
    !matches!(plan, LogicalPlan::Dml(_) | LogicalPlan::Copy(_))
}

/// `plan` run on the planning node alone.
async fn here(mut state: SessionState, plan: LogicalPlan) -> Result<SendableRecordBatchStream> {
    if let Some(o) = state
        .config_mut()
        .options_mut()
        .extensions
        .get_mut::<WeirOptions>()
    {
        o.distribute = false;
    }
    DataFrame::new(state, plan).execute_stream().await
}

/// Runs `plan` in `state`: across the cluster where it plans so, again on this node alone if
/// a node it sent tasks to could not be reached before its first rows.
pub async fn execute(state: SessionState, plan: LogicalPlan) -> Result<SendableRecordBatchStream> {
    if !rerunnable(&plan) {
        return DataFrame::new(state, plan).execute_stream().await;
    }
    let unreached = match DataFrame::new(state.clone(), plan.clone())
        .execute_stream()
        .await
    {
        Ok(mut stream) => match stream.next().await {
            Some(Err(e)) if unreachable(&e) => e,
            first => {
                let schema = stream.schema();
                return Ok(Box::pin(RecordBatchStreamAdapter::new(
                    schema,
                    futures::stream::iter(first).chain(stream),
                )));
            }
        },
        Err(e) if unreachable(&e) => e,
        Err(e) => return Err(e),
    };
    tracing::info!(error = %unreached, "a node of the query is unreachable; running it here");
    here(state, plan).await
}
