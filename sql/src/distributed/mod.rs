//! One query across the cluster. The node that receives a statement plans it; the plan is cut
//! into stages where rows change hands (shuffles, broadcasts, the final gather) by
//! datafusion-distributed, whose operators move the rows. A stage that scans a table runs as
//! one task per node leading some of the scanned regions, on that node ([`tasks`]), so rows
//! are filtered, projected and partially aggregated where they are stored and only what is
//! left crosses the network; stages above them spread over the live nodes, and the last one
//! runs on the planning node. Every node serves tasks on its gRPC port ([`workers`]); a scan
//! travels to it as the table's name, regions and ranges ([`codec`]). A query that cannot
//! reach a node it sent tasks to runs again on the planning node before any of it is answered
//! ([`retry`]), whichever protocol sent it. The session's DataFusion settings travel with the
//! tasks, so they run as the query was planned ([`settings`]).
//!
//! A query runs on the planning node alone when it reads anything but Weir tables: a topic
//! (its skipped-record counts are gathered by the statement on the planning node), a file
//! (visible only where it was named), a catalog view; when its scans are small (under
//! `weir.bytes_per_task` of stored rows per task) or one node leads everything it reads; or
//! when `weir.distribute` is off.

mod codec;
mod retry;
mod settings;
mod tasks;
mod workers;

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::display::{PlanType, StringifiedPlan};
use datafusion::common::extensions_options;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::config::ConfigExtension;
use datafusion::datasource::source_as_provider;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder};
use datafusion::logical_expr::{Explain, LogicalPlan};
use datafusion::physical_plan::explain::ExplainExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, PhysicalPlanner};
use datafusion::prelude::SessionConfig;
use datafusion_distributed::{
    display_plan_ascii, DistributedExec, DistributedExt, SessionStateBuilderExt, Worker,
};
use url::Url;

pub use codec::ScanCodec;
pub use workers::{EngineSlot, TaskSessions, Workers};

use crate::cluster::Cluster;
use crate::table::RegionTable;

extensions_options! {
    /// Session settings of how Weir runs queries (`SET weir.<name> = ...`).
    pub struct WeirOptions {
        /// Whether queries over tables run across the nodes leading their regions (`false`:
        /// every query runs on the node that received it, reading rows from the others).
        pub distribute: bool, default = true
        /// Stored bytes a table scan reads per task it runs across the cluster: a scan of
        /// fewer bytes runs on fewer nodes (one: on the node that received the query), since
        /// sending a stage to another node costs more than reading a small table from it.
        pub bytes_per_task: u64, default = 64 * 1024 * 1024
    }
}

impl ConfigExtension for WeirOptions {
    const PREFIX: &'static str = "weir";
}

/// Whether `session` lets queries run across the cluster.
fn distribute(session: &dyn Session) -> bool {
    session
        .config_options()
        .extensions
        .get::<WeirOptions>()
        .is_none_or(|o| o.distribute)
}

/// Plans a query across the cluster when it reads only Weir tables, on this node otherwise.
#[derive(Debug)]
struct ClusterPlanner {
    across: Arc<dyn QueryPlanner + Send + Sync>,
    /// DataFusion's settings of the node, which a session's tasks are sent the changes from.
    baseline: settings::Baseline,
}

/// Whether `plan` reads Weir tables and nothing else a task on another node could not read.
fn reads_only_tables(plan: &LogicalPlan) -> bool {
    let mut tables = false;
    let mut other = false;
    let _ = plan.apply_with_subqueries(|p| {
        if let LogicalPlan::TableScan(scan) = p {
            match source_as_provider(&scan.source) {
                Ok(t) if t.is::<RegionTable>() => tables = true,
                _ => {
                    other = true;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    tables && !other
}

/// Whether `plan` sends tasks to other nodes.
fn runs_across(plan: &Arc<dyn ExecutionPlan>) -> bool {
    let mut across = false;
    let _ = plan.apply(|p| {
        across = p.is::<DistributedExec>();
        Ok(if across {
            TreeNodeRecursion::Stop
        } else {
            TreeNodeRecursion::Continue
        })
    });
    across
}

impl ClusterPlanner {
    /// `plan`, whose tasks (if it sends any) run with the session's settings.
    fn with_settings(&self, plan: Arc<dyn ExecutionPlan>) -> Arc<dyn ExecutionPlan> {
        if runs_across(&plan) {
            Arc::new(settings::SessionSettings::new(plan, self.baseline.clone()))
        } else {
            plan
        }
    }

    /// `EXPLAIN` of a query that runs across the cluster: its stages, the tasks of each and
    /// the regions each task reads (DataFusion's own `EXPLAIN` would show the single-node plan
    /// the stages are cut from). None when the query runs on one node, or for `EXPLAIN VERBOSE`.
    async fn explain_across(
        &self,
        e: &Explain,
        session: &dyn Session,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        if e.verbose || !reads_only_tables(&e.plan) {
            return Ok(None);
        }
        let physical = self.across.create_physical_plan(&e.plan, session).await?;
        if !physical.is::<DistributedExec>() {
            return Ok(None);
        }
        let plans = vec![
            StringifiedPlan::new(
                PlanType::FinalLogicalPlan,
                e.plan.display_indent().to_string(),
            ),
            StringifiedPlan::new(
                PlanType::FinalPhysicalPlan,
                display_plan_ascii(physical.as_ref(), false),
            ),
        ];
        Ok(Some(Arc::new(ExplainExec::new(
            Arc::new(e.schema.as_arrow().clone()),
            plans,
            false,
        ))))
    }
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !distribute(session) {
            return DefaultPhysicalPlanner::default()
                .create_physical_plan(plan, session)
                .await;
        }
        if let LogicalPlan::Explain(e) = plan {
            if let Some(explained) = self.explain_across(e, session).await? {
                return Ok(explained);
            }
        }
        if reads_only_tables(plan) {
            let state = session.as_any().downcast_ref::<SessionState>();
            let rerun = state.filter(|_| retry::rerunnable(plan));
            let planned = self
                .across
                .create_physical_plan(plan, session)
                .await
                .map(|p| self.with_settings(p));
            match (planned, rerun) {
                (Ok(across), Some(state)) if runs_across(&across) => Ok(Arc::new(
                    retry::RetryHere::new(across, plan.clone(), state.clone()),
                )),
                (Err(e), Some(state)) if retry::unreachable(&e) => {
                    tracing::info!(error = %e, "a node of the query is unreachable; planning it here");
                    retry::plan_here(state, plan).await
                }
                (planned, _) => planned,
            }
        } else {
            DefaultPhysicalPlanner::default()
                .create_physical_plan(plan, session)
                .await
        }
    }
}

/// The session of a node's SQL engine over `cluster`, with `config` and `runtime`, planning
/// queries across the cluster; and the worker that runs the tasks other nodes send here, with
/// the functions of the engine `engine` will hold.
pub fn session_state(
    cluster: Arc<dyn Cluster>,
    config: SessionConfig,
    runtime: Arc<RuntimeEnv>,
    engine: EngineSlot,
) -> Result<(SessionState, Worker)> {
    let worker = Worker::from_session_builder(TaskSessions::new(cluster.clone(), engine))
        .with_runtime_env(runtime.clone());
    let scans = tasks::ScanTasks::new(cluster.clone());
    let mut builder = SessionStateBuilder::new()
        .with_config(config.with_option_extension(WeirOptions::default()))
        .with_runtime_env(runtime)
        .with_default_features()
        .with_analyzer_rule(Arc::new(crate::settings_table::FullNames))
        .with_optimizer_rule(Arc::new(crate::group_keys::ComputedKeysBelow))
        .with_distributed_worker_resolver(Workers::new(cluster.clone()))
        .with_distributed_user_codec(ScanCodec::new(cluster.clone()))
        .with_distributed_desired_task_count_handler(scans.clone())
        .with_distributed_scale_up_leaf_node_handler(scans.clone())
        .with_distributed_route_tasks_handler(scans);
    if let Some(url) = cluster.worker_url() {
        let url = Url::parse(&url).map_err(|e| {
            DataFusionError::Configuration(format!("worker address '{url}' is no URL: {e}"))
        })?;
        builder =
            builder.with_distributed_local_worker_context(worker.to_local_worker_context(url));
    }
    let mut builder = builder.with_distributed_planner();
    // The node's settings as its sessions start (the distributed planner changes some).
    let baseline: settings::Baseline = Arc::new(
        builder
            .config()
            .as_ref()
            .map(|c| settings::datafusion_settings(c.options()))
            .unwrap_or_default(),
    );
    let across = builder.query_planner().take().ok_or_else(|| {
        DataFusionError::Internal("the distributed planner did not install itself".into())
    })?;
    let state = builder
        .with_query_planner(Arc::new(ClusterPlanner { across, baseline }))
        .build();
    Ok((state, worker))
}
