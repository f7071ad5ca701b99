//! A query whose tasks could not reach a node (one that died or went away since its groups
//! last named their leaders) runs again on the planning node alone, if nothing of it has
//! reached the client yet; reads through the client library then route around the dead node.
//!
//! The fall-back is part of the plan ([`RetryHere`] at its root), so it holds whichever
//! protocol runs the plan: `weir sql`, the Postgres protocol, a schedule.

use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, SessionState, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    execute_stream, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use futures::{StreamExt, TryStreamExt};

/// Whether `e` says a node running part of the query could not be reached (a transport
/// error: errors a task raised itself come back as themselves).
pub(super) fn unreachable(e: &DataFusionError) -> bool {
    match e.find_root() {
        DataFusionError::External(inner) => inner.is::<tonic::Status>(),
        _ => false,
    }
}

/// Whether running `plan` again cannot change what it did the first time: a query, not a
/// write (an upsert would be safe, a topic's append would not); and not `EXPLAIN ANALYZE`,
/// whose report is of the distributed run.
pub(super) fn rerunnable(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Analyze(_)
    )
}

/// `plan` planned to run on this node alone, in `state` (whose `weir.distribute` is off).
pub(super) async fn plan_here(
    state: &SessionState,
    plan: &LogicalPlan,
) -> Result<Arc<dyn ExecutionPlan>> {
    DefaultPhysicalPlanner::default()
        .create_physical_plan(plan, state)
        .await
}

/// The root of a query planned across the cluster: runs it so, and runs it again on this node
/// alone when a node it sent tasks to cannot be reached before its first rows.
pub(super) struct RetryHere {
    /// The query's plan across the cluster.
    across: Arc<dyn ExecutionPlan>,
    /// The query, to plan again on this node.
    plan: LogicalPlan,
    /// The session the query was planned in.
    state: SessionState,
    /// One partition of the query's rows.
    properties: Arc<PlanProperties>,
}

impl RetryHere {
    /// `across`, the plan of `plan` across the cluster in `state`, with its fall-back.
    pub(super) fn new(
        across: Arc<dyn ExecutionPlan>,
        plan: LogicalPlan,
        state: SessionState,
    ) -> RetryHere {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(across.schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        RetryHere {
            across,
            plan,
            state,
            properties,
        }
    }
}

impl fmt::Debug for RetryHere {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryHere").finish_non_exhaustive()
    }
}

impl DisplayAs for RetryHere {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RetryHereExec")
    }
}

impl ExecutionPlan for RetryHere {
    fn name(&self) -> &str {
        "RetryHereExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.across]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        match <[_; 1]>::try_from(children) {
            Ok([across]) => Ok(Arc::new(RetryHere::new(
                across,
                self.plan.clone(),
                self.state.clone(),
            ))),
            Err(c) => Err(DataFusionError::Internal(format!(
                "RetryHereExec has one child, {} given",
                c.len()
            ))),
        }
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "RetryHereExec has one partition, {partition} asked for"
            )));
        }
        let across = self.across.clone();
        let plan = self.plan.clone();
        let state = self.state.clone();
        let run = async move {
            let first_try = match execute_stream(across, context.clone()) {
                Ok(mut stream) => match stream.next().await {
                    Some(Err(e)) if unreachable(&e) => e,
                    first => {
                        let rest = futures::stream::iter(first).chain(stream);
                        return Ok(rest.boxed());
                    }
                },
                Err(e) if unreachable(&e) => e,
                Err(e) => return Err(e),
            };
            tracing::info!(error = %first_try, "a node of the query is unreachable; running it here");
            let here = plan_here(&state, &plan).await?;
            Ok(execute_stream(here, context)?.boxed())
        };
        let rows = futures::stream::once(run).try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), rows)))
    }
}
