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
use std::str::FromStr;

use datafusion::arrow::array::timezone::Tz;
use datafusion::config::{ConfigEntry, ConfigOptions};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{LogicalPlan, ResetVariable, SetVariable, Statement};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    Expr, Ident, Set, Statement as Sql, UnaryOperator, Value as SqlValue,
};

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

/// The setting that holds a session's time zone, which Postgres calls `TimeZone`.
const TIME_ZONE: &str = "datafusion.execution.time_zone";

/// `SHOW name` of one setting by its full name (`weir.distribute`,
/// `datafusion.execution.batch_size`), or of the time zone as Postgres names it (`SHOW timezone`,
/// `SHOW TIME ZONE`, answered as `TimeZone`): the name to answer with and the value. None for a
/// name that is no setting (and for `SHOW ALL`, see [`show_all`]). DataFusion lists an
/// extension's settings without their prefix, so it would find none of those.
pub fn show(ctx: &SessionContext, variable: &[Ident]) -> Option<(String, String)> {
    let name = variable
        .iter()
        .map(|i| i.value.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(".");
    if name == "timezone" || name == "time.zone" {
        return Some(("TimeZone".into(), time_zone(ctx)));
    }
    let value = settings(ctx).remove(&name)?;
    Some((name, value.unwrap_or_default()))
}

/// True for `SHOW ALL`.
pub fn shows_all(variable: &[Ident]) -> bool {
    matches!(variable, [all] if all.value.eq_ignore_ascii_case("all"))
}

/// `SHOW ALL`: every setting of the session by its full name, with its value and what it is for.
pub fn show_all(ctx: &SessionContext) -> Vec<[String; 3]> {
    let mut all: Vec<[String; 3]> = entries(ctx.copied_config().options())
        .into_iter()
        .map(|e| {
            [
                e.key,
                e.value.unwrap_or_default(),
                e.description.to_string(),
            ]
        })
        .collect();
    all.sort();
    all
}

/// The session's time zone as `SHOW TIME ZONE` answers it: the one set, else UTC (timestamps
/// without a zone are read as UTC).
pub fn time_zone(ctx: &SessionContext) -> String {
    ctx.copied_config()
        .options()
        .execution
        .time_zone
        .clone()
        .unwrap_or_else(|| "UTC".into())
}

/// A change of the session's time zone asked in one of Postgres's forms.
#[derive(Debug, Clone, PartialEq)]
pub enum ZoneChange {
    /// To this zone: a name of the tz database (`Europe/Paris`) or an offset east of UTC
    /// (`+05:30`).
    To(String),
    /// Back to the default, UTC (`SET TIME ZONE LOCAL`, `SET TIME ZONE DEFAULT`).
    Default,
}

/// The time-zone change `statement` asks for, when it is `SET TIME ZONE x` or
/// `SET timezone = x` / `TO x` (`SET datafusion.execution.time_zone` is an ordinary setting); an
/// error for a value that is no zone, naming it. A number is hours east of UTC, as in Postgres.
pub fn zone_change(statement: &Sql) -> Option<Result<ZoneChange>> {
    let value = match statement {
        Sql::Set(Set::SetTimeZone {
            local: false,
            value,
        }) => value,
        Sql::Set(Set::SingleAssignment {
            scope: None,
            hivevar: false,
            variable,
            values,
        }) if variable.to_string().eq_ignore_ascii_case("timezone") => match values.as_slice() {
            [value] => value,
            _ => return Some(Err(bad_zone(&variable.to_string()))),
        },
        _ => return None,
    };
    Some(zone_of(value))
}

/// The refusal of `what` as a time zone, worded as Postgres words it.
fn bad_zone(what: &str) -> DataFusionError {
    DataFusionError::Configuration(format!(
        "invalid value for parameter \"TimeZone\": {what} (a zone is a name such as \
         'Europe/Paris' or 'UTC', an offset such as '+05:30', or a number of hours)"
    ))
}

/// The zone `value` names.
fn zone_of(value: &Expr) -> Result<ZoneChange> {
    let hours = |n: &str, negative: bool| -> Result<ZoneChange> {
        let h: f64 = n.parse().map_err(|_| bad_zone(n))?;
        let minutes = (h * 60.0).round() as i64;
        if !(-15 * 60..=15 * 60).contains(&minutes) {
            return Err(bad_zone(n));
        }
        let minutes = if negative { -minutes } else { minutes };
        let sign = if minutes < 0 { '-' } else { '+' };
        let m = minutes.abs();
        Ok(ZoneChange::To(format!("{sign}{:02}:{:02}", m / 60, m % 60)))
    };
    let named = |name: &str| -> Result<ZoneChange> {
        if name.eq_ignore_ascii_case("local") || name.eq_ignore_ascii_case("default") {
            return Ok(ZoneChange::Default);
        }
        Tz::from_str(name).map_err(|_| bad_zone(&format!("'{name}'")))?;
        Ok(ZoneChange::To(name.to_string()))
    };
    match value {
        Expr::Identifier(i) => named(&i.value),
        Expr::Value(v) => match &v.value {
            SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => named(s),
            SqlValue::Number(n, _) => hours(n, false),
            other => Err(bad_zone(&other.to_string())),
        },
        Expr::UnaryOp {
            op: op @ (UnaryOperator::Minus | UnaryOperator::Plus),
            expr,
        } => match expr.as_ref() {
            Expr::Value(v) => match &v.value {
                SqlValue::Number(n, _) => hours(n, *op == UnaryOperator::Minus),
                other => Err(bad_zone(&other.to_string())),
            },
            other => Err(bad_zone(&other.to_string())),
        },
        other => Err(bad_zone(&other.to_string())),
    }
}

/// Applies `change` to the session `ctx`.
pub async fn change_zone(ctx: &SessionContext, change: &ZoneChange) -> Result<()> {
    let plan = match change {
        ZoneChange::To(zone) => Statement::SetVariable(SetVariable {
            variable: TIME_ZONE.into(),
            value: zone.clone(),
        }),
        ZoneChange::Default => Statement::ResetVariable(ResetVariable {
            variable: TIME_ZONE.into(),
        }),
    };
    ctx.execute_logical_plan(LogicalPlan::Statement(plan))
        .await
        .map(|_| ())
        .map_err(|e| refused(TIME_ZONE, e))
}

/// Every setting of the session `ctx` by its full name (`datafusion.execution.batch_size`,
/// `weir.distribute`), with its value.
fn settings(ctx: &SessionContext) -> BTreeMap<String, Option<String>> {
    entries(ctx.copied_config().options())
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect()
}

/// Every setting in `options`, each keyed by its full name: DataFusion lists an extension's
/// (`weir.*`) without its prefix.
pub fn entries(options: &ConfigOptions) -> Vec<ConfigEntry> {
    let own = options
        .entries()
        .into_iter()
        .filter(|e| e.key.starts_with("datafusion."));
    let extensions = options.extensions.iter().flat_map(|(prefix, ext)| {
        ext.entries().into_iter().map(move |e| ConfigEntry {
            key: format!("{prefix}.{}", e.key.trim_start_matches('.')),
            ..e
        })
    });
    own.chain(extensions).collect()
}

#[cfg(test)]
mod tests {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    use super::*;

    fn change(sql: &str) -> Option<std::result::Result<ZoneChange, String>> {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql)
            .expect("parses")
            .remove(0);
        zone_change(&statement).map(|r| r.map_err(|e| e.to_string()))
    }

    #[test]
    fn postgres_forms_of_the_time_zone_are_read_as_zones() {
        let to = |z: &str| Some(Ok(ZoneChange::To(z.into())));
        assert_eq!(change("SET TIME ZONE 'Europe/Paris'"), to("Europe/Paris"));
        assert_eq!(change("SET timezone = 'UTC'"), to("UTC"));
        assert_eq!(change("SET timezone TO '+05:30'"), to("+05:30"));
        assert_eq!(change("SET TIME ZONE 5.5"), to("+05:30"));
        assert_eq!(change("SET TIME ZONE -8"), to("-08:00"));
        assert_eq!(change("SET TIME ZONE LOCAL"), Some(Ok(ZoneChange::Default)));
        assert_eq!(
            change("SET timezone TO DEFAULT"),
            Some(Ok(ZoneChange::Default))
        );
        assert_eq!(change("SET datafusion.execution.time_zone = 'UTC'"), None);
        assert_eq!(change("SET weir.distribute = false"), None);
        for bad in ["SET TIME ZONE 'Mars/Olympus'", "SET TIME ZONE 40"] {
            match change(bad) {
                Some(Err(e)) => assert!(e.contains("TimeZone"), "{bad}: {e}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
    }
}
