//! Tables over files (Hive's external tables): `CREATE EXTERNAL TABLE name [(cols)] STORED AS
//! CSV|PARQUET|JSON LOCATION 'path' [OPTIONS (...)]`.
//!
//! The cluster's catalog keeps each one's defining statement, so every node plans it and it
//! outlives the session that created it; a node turns the statement into DataFusion's listing
//! table when a query first names it, and keeps that while the definition stays the same. The
//! files themselves must be readable at the same path on the node that plans the query.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::{CreateExternalTable, DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Value;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;

use crate::cluster::ExternalTableMeta;

/// The statement that recreates `c` as the catalog keeps it: every clause written out, without
/// `IF NOT EXISTS` / `OR REPLACE` (they concern the creation, not the table).
pub fn definition(c: &CreateExternalTable) -> Result<String> {
    let mut s = String::from("CREATE ");
    if c.unbounded {
        s.push_str("UNBOUNDED ");
    }
    s.push_str("EXTERNAL TABLE ");
    s.push_str(&c.name.to_string());
    let elements: Vec<String> = c
        .columns
        .iter()
        .map(|col| col.to_string())
        .chain(c.constraints.iter().map(|k| k.to_string()))
        .collect();
    if !elements.is_empty() {
        s.push_str(&format!(" ({})", elements.join(", ")));
    }
    s.push_str(&format!(" STORED AS {}", c.file_type));
    if !c.table_partition_cols.is_empty() {
        s.push_str(&format!(
            " PARTITIONED BY ({})",
            c.table_partition_cols.join(", ")
        ));
    }
    for order in &c.order_exprs {
        let exprs: Vec<String> = order.iter().map(|e| e.to_string()).collect();
        s.push_str(&format!(" WITH ORDER ({})", exprs.join(", ")));
    }
    let quoted = |l: &String| Value::SingleQuotedString(l.clone()).to_string();
    match c.locations.as_slice() {
        [one] => s.push_str(&format!(" LOCATION {}", quoted(one))),
        many => {
            let all: Vec<String> = many.iter().map(quoted).collect();
            s.push_str(&format!(" LOCATION ({})", all.join(", ")));
        }
    }
    if !c.options.is_empty() {
        let options: Vec<String> = c
            .options
            .iter()
            .map(|(k, v)| format!("{} {v}", quoted(k)))
            .collect();
        s.push_str(&format!(" OPTIONS ({})", options.join(", ")));
    }
    // What is kept must plan as what was asked for.
    let mut expected = c.clone();
    expected.if_not_exists = false;
    expected.or_replace = false;
    match parse(&s) {
        Ok(back) if back == expected => Ok(s),
        _ => Err(DataFusionError::NotImplemented(format!(
            "this external table's definition cannot be recorded as written; simplify it \
             (recorded form: {s})"
        ))),
    }
}

/// Parses a kept definition back into its statement.
fn parse(definition: &str) -> Result<CreateExternalTable> {
    let mut parsed = DFParser::parse_sql_with_dialect(definition, &PostgreSqlDialect {})?;
    match (parsed.pop_front(), parsed.is_empty()) {
        (Some(DfStatement::CreateExternalTable(c)), true) => Ok(c),
        _ => Err(DataFusionError::Plan(format!(
            "not one CREATE EXTERNAL TABLE statement: {definition}"
        ))),
    }
}

/// Builds the table a definition describes, reading the files' schema where it is not given;
/// fails naming the path when the files cannot be read.
pub async fn provider(definition: &str) -> Result<Arc<dyn TableProvider>> {
    let stmt = parse(definition)?;
    let state = SessionStateBuilder::new().with_default_features().build();
    let plan = state
        .statement_to_plan(DfStatement::CreateExternalTable(stmt))
        .await?;
    let LogicalPlan::Ddl(DdlStatement::CreateExternalTable(cmd)) = plan else {
        return Err(DataFusionError::Internal(
            "CREATE EXTERNAL TABLE did not plan as one".into(),
        ));
    };
    let kind = cmd.file_type.to_uppercase();
    let factory = state.table_factories().get(kind.as_str()).ok_or_else(|| {
        DataFusionError::Plan(format!(
            "files STORED AS {} cannot be read (known: CSV, PARQUET, JSON, ARROW, AVRO)",
            cmd.file_type
        ))
    })?;
    factory.create(&state, &cmd).await
}

/// Tables built on this node, by name, with the definition each was built from.
type Built = HashMap<String, (String, Arc<dyn TableProvider>)>;

/// This node's tables over files, built from their definitions and kept while those stay the
/// same.
#[derive(Debug, Default)]
pub struct ExternalTables {
    built: RwLock<Built>,
}

impl ExternalTables {
    /// The table for `meta`, built on first use or after its definition changed.
    pub async fn get(&self, meta: &ExternalTableMeta) -> Result<Arc<dyn TableProvider>> {
        if let Some((definition, table)) = self.read().get(&meta.name) {
            if *definition == meta.definition {
                return Ok(table.clone());
            }
        }
        let table = provider(&meta.definition).await.map_err(|e| {
            DataFusionError::Plan(format!(
                "external table '{}' cannot be read on this node: {}",
                meta.name,
                e.strip_backtrace()
            ))
        })?;
        self.built
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(meta.name.clone(), (meta.definition.clone(), table.clone()));
        Ok(table)
    }

    /// Forgets what was built for `name` (the table was dropped).
    pub fn forget(&self, name: &str) {
        self.built
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(name);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Built> {
        self.built.read().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(sql: &str) -> CreateExternalTable {
        match parse(sql) {
            Ok(c) => c,
            Err(e) => panic!("{sql}: {e}"),
        }
    }

    #[test]
    fn definitions_read_back_as_the_statement_that_was_given() {
        for sql in [
            "CREATE EXTERNAL TABLE t STORED AS PARQUET LOCATION '/data/t/'",
            "CREATE EXTERNAL TABLE IF NOT EXISTS raw (id BIGINT NOT NULL, name VARCHAR, \
             joined DATE) STORED AS CSV LOCATION '/data/it''s.csv' \
             OPTIONS ('format.has_header' 'true', 'format.delimiter' ';')",
            "CREATE EXTERNAL TABLE p (a INT, b VARCHAR) STORED AS CSV PARTITIONED BY (b) \
             LOCATION '/d/' OPTIONS (format.has_header false)",
            "CREATE EXTERNAL TABLE o (a INT) STORED AS JSON WITH ORDER (a DESC) LOCATION '/j/'",
        ] {
            let given = create(sql);
            let kept = definition(&given).unwrap_or_else(|e| panic!("{sql}: {e}"));
            let mut expected = given.clone();
            expected.if_not_exists = false;
            assert_eq!(create(&kept), expected, "{sql} was kept as {kept}");
        }
    }

    #[tokio::test]
    async fn a_missing_location_is_named() {
        let err = provider("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '/no/such/dir/x.csv'")
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("/no/such/dir/x.csv"), "{err}");
    }
}
