//! `information_schema.df_settings` with every setting under its full name.
//!
//! DataFusion's own `df_settings` lists an extension's settings without their prefix
//! (`distribute` for `weir.distribute`, `bytes_per_task`, and datafusion-distributed's without
//! `distributed.`), so a user looking for `weir.distribute` finds nothing, and two extensions'
//! settings of the same name could not be told apart. The table is wired into DataFusion's
//! session, so [`FullNames`], an analyzer rule, swaps the source of every scan of it for
//! [`SettingsTable`], which lists the same rows with the names `SET` and `SHOW` take.

use std::sync::Arc;

use datafusion::arrow::array::StringBuilder;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::common::tree_node::Transformed;
use datafusion::config::ConfigOptions;
use datafusion::datasource::provider_as_source;
use datafusion::error::Result;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;

/// The analyzer rule that makes scans of `information_schema.df_settings` read [`SettingsTable`].
#[derive(Debug, Default)]
pub struct FullNames;

impl AnalyzerRule for FullNames {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| match plan {
            LogicalPlan::TableScan(mut scan)
                if scan.table_name.schema() == Some("information_schema")
                    && scan.table_name.table() == "df_settings" =>
            {
                let schema = scan.source.schema();
                let table = StreamingTable::try_new(
                    schema.clone(),
                    vec![Arc::new(SettingsTable { schema })],
                )?;
                scan.source = provider_as_source(Arc::new(table));
                Ok(Transformed::yes(LogicalPlan::TableScan(scan)))
            }
            other => Ok(Transformed::no(other)),
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "weir_settings_full_names"
    }
}

/// The rows of `df_settings` (name, value, description) of the session running the query, each
/// setting under its full name, read when the scan runs.
#[derive(Debug)]
pub struct SettingsTable {
    schema: SchemaRef,
}

impl PartitionStream for SettingsTable {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.schema.clone();
        let rows = crate::session::entries(ctx.session_config().options())
            .into_iter()
            .chain(ctx.runtime_env().config_entries());
        let (mut names, mut values, mut descriptions) = (
            StringBuilder::new(),
            StringBuilder::new(),
            StringBuilder::new(),
        );
        for e in rows {
            names.append_value(e.key);
            values.append_option(e.value);
            descriptions.append_value(e.description);
        }
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(names.finish()),
                Arc::new(values.finish()),
                Arc::new(descriptions.finish()),
            ],
        )
        .map_err(Into::into);
        Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::once(async move { batch }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::{SessionConfig, SessionContext};

    use super::*;
    use crate::distributed::WeirOptions;

    async fn names_and_values(ctx: &SessionContext, sql: &str) -> Vec<(String, String)> {
        let batches = ctx.sql(sql).await.unwrap().collect().await.unwrap();
        let mut out = Vec::new();
        for b in batches {
            let col = |i: usize| {
                datafusion::arrow::array::cast::as_string_array(b.column(i).as_ref()).clone()
            };
            let (n, v) = (col(0), col(1));
            for i in 0..b.num_rows() {
                out.push((n.value(i).to_string(), v.value(i).to_string()));
            }
        }
        out
    }

    #[tokio::test]
    async fn extension_settings_are_listed_under_their_full_names() {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_option_extension(WeirOptions::default());
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_analyzer_rule(Arc::new(FullNames))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let weir = "SELECT name, value FROM information_schema.df_settings \
                    WHERE name LIKE 'weir.%' ORDER BY name";
        assert_eq!(
            names_and_values(&ctx, weir).await,
            [
                ("weir.bytes_per_task".to_string(), (64u64 << 20).to_string()),
                ("weir.distribute".to_string(), "true".to_string()),
            ]
        );
        // What a session sets shows, and DataFusion's own settings are still there.
        ctx.sql("SET weir.distribute = false").await.unwrap();
        let one = "SELECT name, value FROM information_schema.df_settings \
                   WHERE name IN ('weir.distribute', 'datafusion.execution.batch_size') \
                   ORDER BY name";
        assert_eq!(
            names_and_values(&ctx, one).await,
            [
                (
                    "datafusion.execution.batch_size".to_string(),
                    "8192".to_string()
                ),
                ("weir.distribute".to_string(), "false".to_string()),
            ]
        );
        // No setting is listed without its prefix.
        let bare = "SELECT name, value FROM information_schema.df_settings \
                    WHERE name NOT LIKE '%.%'";
        assert_eq!(names_and_values(&ctx, bare).await, []);
    }
}
