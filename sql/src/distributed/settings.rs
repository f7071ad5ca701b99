//! A session's DataFusion settings travel with the tasks of its queries, so a task on another
//! node runs as the query was planned: `SET datafusion.execution.time_zone = '+05:00'` changes
//! what `to_timestamp` gives on every node, not only on the one the client is connected to.
//!
//! datafusion-distributed sends the settings of registered extensions (`weir.*`) with each task;
//! DataFusion's own are the worker's unless sent. The root of every plan run across the cluster
//! ([`SessionSettings`]) puts the settings its session changed from the node's into headers of
//! the task requests, and the worker applies them to the session it builds for the task
//! ([`apply`]).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::config::{ConfigField, ConfigOptions};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{
    FunctionRegistry, SendableRecordBatchStream, SessionState, TaskContext,
};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use datafusion::prelude::SessionConfig;
use datafusion_distributed::DistributedExt;
use tonic::codegen::http::{HeaderMap, HeaderName, HeaderValue};

/// Prefix of the headers naming a setting: `x-weir-setting-datafusion.execution.time_zone`.
const HEADER_PREFIX: &str = "x-weir-setting-";

/// DataFusion's settings of a node as it started, which its sessions differ from.
pub(super) type Baseline = Arc<BTreeMap<String, Option<String>>>;

/// DataFusion's own settings (`datafusion.*`) in `options`, by name.
pub(super) fn datafusion_settings(options: &ConfigOptions) -> BTreeMap<String, Option<String>> {
    options
        .entries()
        .into_iter()
        .filter(|e| e.key.starts_with("datafusion."))
        .map(|e| (e.key, e.value))
        .collect()
}

/// The headers carrying the settings of `options` that differ from `baseline`.
fn headers(options: &ConfigOptions, baseline: &Baseline) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in datafusion_settings(options) {
        if baseline.get(&name) == Some(&value) {
            continue;
        }
        let header = HeaderName::try_from(format!("{HEADER_PREFIX}{name}")).map_err(|e| {
            DataFusionError::Configuration(format!("setting '{name}' cannot be sent: {e}"))
        })?;
        // A setting reset to nothing travels as an empty value, which `apply` reads as unset.
        let value = HeaderValue::try_from(value.unwrap_or_default()).map_err(|e| {
            DataFusionError::Configuration(format!(
                "the value of setting '{name}' cannot be sent to other nodes: {e}"
            ))
        })?;
        headers.insert(header, value);
    }
    Ok(headers)
}

/// Applies the settings `headers` carry to `state`, the session of a task sent here, and keeps
/// them in its headers so tasks it calls in turn get them too.
pub(super) fn apply(headers: &HeaderMap, state: &mut SessionState) -> Result<()> {
    let mut forwarded = HeaderMap::new();
    for (header, value) in headers {
        let Some(name) = header.as_str().strip_prefix(HEADER_PREFIX) else {
            continue;
        };
        let text = value.to_str().map_err(|e| {
            DataFusionError::Configuration(format!("setting '{name}' arrived unreadable: {e}"))
        })?;
        let options = state.config_mut().options_mut();
        if text.is_empty() {
            options.reset(name)?;
        } else {
            options.set(name, text)?;
        }
        forwarded.insert(header.clone(), value.clone());
    }
    if forwarded.is_empty() {
        return Ok(());
    }
    state
        .config_mut()
        .set_distributed_passthrough_headers(forwarded)?;
    // Functions that read a setting when made (the time zone of `to_timestamp`) are made again,
    // as DataFusion does after a `SET`.
    let updated: Vec<_> = state
        .scalar_functions()
        .values()
        .filter_map(|f| f.inner().with_updated_config(state.config_options()))
        .collect();
    for f in updated {
        state.register_udf(Arc::new(f))?;
    }
    Ok(())
}

/// The root of a plan run across the cluster: runs it with the session's settings in the
/// headers of every task it sends.
pub(super) struct SessionSettings {
    input: Arc<dyn ExecutionPlan>,
    baseline: Baseline,
}

impl SessionSettings {
    /// `input`, whose tasks get the settings that differ from `baseline`.
    pub(super) fn new(input: Arc<dyn ExecutionPlan>, baseline: Baseline) -> SessionSettings {
        SessionSettings { input, baseline }
    }
}

impl fmt::Debug for SessionSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSettings").finish_non_exhaustive()
    }
}

impl DisplayAs for SessionSettings {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "SessionSettingsExec")
    }
}

impl ExecutionPlan for SessionSettings {
    fn name(&self) -> &str {
        "SessionSettingsExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
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
            Ok([input]) => Ok(Arc::new(SessionSettings::new(input, self.baseline.clone()))),
            Err(c) => Err(DataFusionError::Internal(format!(
                "SessionSettingsExec has one child, {} given",
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
        let headers = headers(context.session_config().options(), &self.baseline)?;
        if headers.is_empty() {
            return self.input.execute(partition, context);
        }
        let config: SessionConfig = context
            .session_config()
            .clone()
            .with_distributed_passthrough_headers(headers)?;
        let context = TaskContext::new(
            context.task_id(),
            context.session_id(),
            config,
            context.scalar_functions().clone(),
            context.higher_order_functions().clone(),
            context.aggregate_functions().clone(),
            context.window_functions().clone(),
            context.runtime_env(),
        );
        self.input.execute(partition, Arc::new(context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::SessionStateBuilder;

    #[test]
    fn changed_settings_travel_and_apply_where_the_task_runs() {
        let node = SessionConfig::new();
        let baseline: Baseline = Arc::new(datafusion_settings(node.options()));
        let mut session = node.clone();
        session
            .options_mut()
            .set("datafusion.execution.time_zone", "+05:00")
            .unwrap();
        session
            .options_mut()
            .set("datafusion.execution.batch_size", "77")
            .unwrap();
        let sent = headers(session.options(), &baseline).unwrap();
        assert_eq!(sent.len(), 2, "only what changed: {sent:?}");
        assert!(headers(node.options(), &baseline).unwrap().is_empty());

        let mut worker = SessionStateBuilder::new().with_default_features().build();
        apply(&sent, &mut worker).unwrap();
        let options = worker.config_options();
        assert_eq!(options.execution.time_zone.as_deref(), Some("+05:00"));
        assert_eq!(options.execution.batch_size.to_string(), "77");

        let mut bad = HeaderMap::new();
        bad.insert(
            HeaderName::from_static("x-weir-setting-datafusion.execution.nonsense"),
            HeaderValue::from_static("1"),
        );
        let e = apply(&bad, &mut worker).unwrap_err().to_string();
        assert!(e.contains("nonsense"), "{e}");
    }
}
