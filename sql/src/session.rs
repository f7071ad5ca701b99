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

use crate::engine::Engine;

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

/// Applies `settings` (name and value, as `SET name = value` takes them) to the session
/// `engine`; the first that is unknown or does not parse is refused, naming it.
pub async fn apply(engine: &Engine, settings: &BTreeMap<String, String>) -> Result<()> {
    let ctx = engine.context();
    for (name, value) in settings {
        check_settable(name)?;
        let set = LogicalPlan::Statement(Statement::SetVariable(SetVariable {
            variable: name.clone(),
            value: value.clone(),
        }));
        ctx.execute_logical_plan(set).await.map_err(|e| {
            DataFusionError::Configuration(format!(
                "setting '{name}' to '{value}': {}",
                crate::sqlstate::message(&e)
            ))
        })?;
    }
    Ok(())
}

/// The settings of `session` that differ from those of the node's `engine` it was started from:
/// what a client resends to continue the session.
pub fn changed(session: &Engine, engine: &Engine) -> BTreeMap<String, String> {
    let node = settings(engine);
    settings(session)
        .into_iter()
        .filter(|(key, value)| node.get(key) != Some(value))
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
}

/// Every setting of `engine`'s session by its full name (`datafusion.execution.batch_size`,
/// `weir.distribute`): DataFusion lists an extension's (`weir.*`) without its prefix.
fn settings(engine: &Engine) -> BTreeMap<String, Option<String>> {
    let config = engine.context().copied_config();
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
