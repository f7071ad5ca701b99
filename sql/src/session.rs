//! A client's session: the settings its `SET` statements made (`SET weir.distribute = false`,
//! `SET datafusion.execution.batch_size = 4096`), its own and no other client's, as in Postgres
//! and Presto.
//!
//! A Postgres connection keeps one session for its life ([`crate::pg`]). A `weir sql` request
//! runs in a session of its own, started from the settings the request carries; each statement's
//! answer carries the session's settings back, and a client that keeps a session (the `weir sql`
//! shell) sends them with its next request, as Trino's clients resend the session properties its
//! server returns.

use std::collections::BTreeMap;

use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{LogicalPlan, SetVariable, Statement};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Ident;

/// Settings that are the node's, not a session's: the memory pool and spill directory every
/// query on the node shares (`--sql-memory`), which a session replacing them would escape.
const NODE_SETTINGS: &str = "datafusion.runtime.";

/// Refuses a setting a session may not change.
pub fn check_settable(name: &str) -> Result<()> {
    if name.to_ascii_lowercase().starts_with(NODE_SETTINGS) {
        return Err(DataFusionError::Configuration(format!(
            "'{name}' is the node's setting (its memory and spill directory, --sql-memory), \
             shared by every session; it cannot be SET"
        )));
    }
    Ok(())
}

/// `e`, the refusal of a `SET` (or `RESET`) of `name`, worded to name the setting in full
/// (DataFusion names an extension's setting without its prefix: `Config value "x" not found on
/// WeirOptions`).
pub fn refused(name: &str, e: DataFusionError) -> DataFusionError {
    DataFusionError::Configuration(format!(
        "cannot set '{name}': {}",
        crate::sqlstate::message(&e)
    ))
}

/// Applies `settings` (name and value, as `SET name = value` takes them) to the session `ctx`;
/// the first that is unknown or does not parse is refused, naming it.
pub async fn apply(ctx: &SessionContext, settings: &BTreeMap<String, String>) -> Result<()> {
    for (name, value) in settings {
        check_settable(name)?;
        let set = LogicalPlan::Statement(Statement::SetVariable(SetVariable {
            variable: name.clone(),
            value: value.clone(),
        }));
        ctx.execute_logical_plan(set)
            .await
            .map_err(|e| refused(name, e))?;
    }
    Ok(())
}

/// The settings of `session` that differ from those of the node's context `node` it was started
/// from: what a client resends to continue the session.
pub fn changed(session: &SessionContext, node: &SessionContext) -> BTreeMap<String, String> {
    let node = settings(node);
    settings(session)
        .into_iter()
        .filter(|(key, value)| node.get(key) != Some(value))
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
}

/// `SHOW name` of a setting of an extension (`weir.distribute`, `distributed.compression`):
/// its full name and value. None for any other name: DataFusion answers `datafusion.*` itself,
/// but lists an extension's settings without their prefix, so it finds none of these.
pub fn show(ctx: &SessionContext, variable: &[Ident]) -> Option<(String, String)> {
    let name = variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".");
    if name.starts_with("datafusion.") {
        return None;
    }
    let value = settings(ctx).remove(&name)?;
    Some((name, value.unwrap_or_default()))
}

/// Every setting of the session `ctx` by its full name (`datafusion.execution.batch_size`,
/// `weir.distribute`): DataFusion lists an extension's (`weir.*`) without its prefix.
fn settings(ctx: &SessionContext) -> BTreeMap<String, Option<String>> {
    let config = ctx.copied_config();
    let options = config.options();
    let own = options
        .entries()
        .into_iter()
        .filter(|e| e.key.starts_with("datafusion."))
        .map(|e| (e.key, e.value));
    let extensions = options.extensions.iter().flat_map(|(prefix, ext)| {
        ext.entries().into_iter().map(move |e| {
            (
                format!("{prefix}.{}", e.key.trim_start_matches('.')),
                e.value,
            )
        })
    });
    own.chain(extensions).collect()
}
