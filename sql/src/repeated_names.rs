//! Select lists that name one column twice (`SELECT a, a`, `SELECT count(*), count(*)`,
//! `SELECT x AS n, y AS n`): Postgres, Spark and Presto answer them, DataFusion refuses them. The
//! later items get names of their own before planning, and the result gets the repeated names
//! back after: on the Arrow schema of the rows (which allows a name twice) and on the column
//! descriptions a Postgres client reads, never on a plan's schema.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::{Expr, Ident, Query, SelectItem, SetExpr};
use futures::StreamExt;

/// How a renamed item's alias starts: `__weir_repeat_{i}_{j}` is item `i`, named as item `j`.
const PREFIX: &str = "__weir_repeat_";

/// Gives each item of a select list that repeats the name of an earlier item an alias saying
/// which item it repeats, for [`restore`] to undo on the result: in the query's outermost select
/// lists (each side of a `UNION`; the result is named by the first), which are what an `INSERT
/// ... SELECT` or a query answers with. A list with a wildcard is left as it is (its items'
/// positions are not the result's). Whether it changed `query`.
pub fn name_repeats(query: &mut Query) -> bool {
    name_in_set(query.body.as_mut())
}

fn name_in_set(body: &mut SetExpr) -> bool {
    match body {
        SetExpr::Select(select) => name_in_select(&mut select.projection),
        SetExpr::SetOperation { left, right, .. } => {
            name_in_set(left.as_mut()) | name_in_set(right.as_mut())
        }
        SetExpr::Query(q) => name_in_set(q.body.as_mut()),
        _ => false,
    }
}

fn name_in_select(projection: &mut [SelectItem]) -> bool {
    let mut names: Vec<String> = Vec::with_capacity(projection.len());
    for item in projection.iter() {
        match item {
            SelectItem::UnnamedExpr(e) => names.push(output_name(e)),
            SelectItem::ExprWithAlias { alias, .. } => names.push(ident_name(alias)),
            // Wildcards, and an item giving several names: positions are not the result's.
            _ => return false,
        }
    }
    let mut first: HashMap<&str, usize> = HashMap::new();
    let mut changed = false;
    for (i, name) in names.iter().enumerate() {
        let j = *first.entry(name.as_str()).or_insert(i);
        if j == i {
            continue;
        }
        let expr = match &projection[i] {
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e.clone(),
            _ => continue,
        };
        projection[i] = SelectItem::ExprWithAlias {
            expr,
            alias: Ident::with_quote('"', format!("{PREFIX}{i}_{j}")),
        };
        changed = true;
    }
    changed
}

/// The positions of the two items DataFusion found giving their column one name, from its
/// refusal of the select list (`... the expression "x" at position 0 and "y" at position 3 have
/// the same name ...`): earlier, later. The cases [`name_repeats`] cannot tell from the text
/// (`count(*), COUNT(*)`, `CAST(NULL AS BIGINT), NULL`) reach DataFusion and come back this way.
pub fn refused_repeat(message: &str) -> Option<(usize, usize)> {
    let (_, rest) = message.split_once("Projections require unique expression names")?;
    let mut positions = rest.split(" at position ").skip(1).map(|s| {
        let digits = s.len() - s.trim_start_matches(|c: char| c.is_ascii_digit()).len();
        s[..digits].parse::<usize>().ok()
    });
    let (earlier, later) = (positions.next()??, positions.next()??);
    (earlier < later).then_some((earlier, later))
}

/// Names item `later` of the query's outermost select lists (each side of a `UNION`) as a repeat
/// of item `earlier`, after DataFusion refused them for giving one name ([`refused_repeat`]).
/// Whether it changed `query`: not when those lists have a wildcard, fewer items, or the item is
/// named so already (the refusal came from a list inside the query, which keeps its refusal).
pub fn name_refused(query: &mut Query, earlier: usize, later: usize) -> bool {
    name_refused_in(query.body.as_mut(), earlier, later)
}

fn name_refused_in(body: &mut SetExpr, earlier: usize, later: usize) -> bool {
    match body {
        SetExpr::Select(select) => {
            let items = &mut select.projection;
            let alias = Ident::with_quote('"', format!("{PREFIX}{later}_{earlier}"));
            let plain = items.iter().all(|i| {
                matches!(
                    i,
                    SelectItem::UnnamedExpr(_) | SelectItem::ExprWithAlias { .. }
                )
            });
            let expr = match items.get(later) {
                Some(SelectItem::ExprWithAlias { alias: a, .. }) if *a == alias => return false,
                Some(SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. })
                    if plain =>
                {
                    e.clone()
                }
                _ => return false,
            };
            items[later] = SelectItem::ExprWithAlias { expr, alias };
            true
        }
        SetExpr::SetOperation { left, right, .. } => {
            name_refused_in(left.as_mut(), earlier, later)
                | name_refused_in(right.as_mut(), earlier, later)
        }
        SetExpr::Query(q) => name_refused_in(q.body.as_mut(), earlier, later),
        _ => false,
    }
}

/// The name a select item without an alias gives its column, as far as telling repeats apart
/// needs: a column's own name (unquoted names folded to lower case, as DataFusion does), else the
/// expression's text.
fn output_name(e: &Expr) -> String {
    match e {
        Expr::Identifier(id) => ident_name(id),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident_name).unwrap_or_default(),
        Expr::Nested(inner) => output_name(inner),
        other => other.to_string(),
    }
}

fn ident_name(id: &Ident) -> String {
    match id.quote_style {
        Some(_) => id.value.clone(),
        None => id.value.to_lowercase(),
    }
}

/// `names` with every alias [`name_repeats`] gave replaced by the name of the item it repeats;
/// `None` when there is none.
pub fn restore(names: &[&str]) -> Option<Vec<String>> {
    let mut restored: Option<Vec<String>> = None;
    for (i, name) in names.iter().enumerate() {
        let Some(j) = repeated_item(name, i) else {
            continue;
        };
        let Some(original) = names.get(j).filter(|n| repeated_item(n, j).is_none()) else {
            continue;
        };
        let out = restored.get_or_insert_with(|| names.iter().map(|n| n.to_string()).collect());
        out[i] = original.to_string();
    }
    restored
}

/// The position of the item the column at `i` named `name` repeats, if [`name_repeats`] named it.
fn repeated_item(name: &str, i: usize) -> Option<usize> {
    let (at, of) = name.strip_prefix(PREFIX)?.split_once('_')?;
    let (at, of) = (at.parse::<usize>().ok()?, of.parse::<usize>().ok()?);
    (at == i && of < i).then_some(of)
}

/// `schema` with the repeated names back; `None` when it has none to restore.
pub fn restore_schema(schema: &Schema) -> Option<SchemaRef> {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let names = restore(&names)?;
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(names)
        .map(|(f, name)| f.as_ref().clone().with_name(name))
        .collect();
    Some(Arc::new(Schema::new_with_metadata(
        fields,
        schema.metadata().clone(),
    )))
}

/// `stream`'s rows under their repeated names, when it has any to restore.
pub fn restore_stream(stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
    let Some(schema) = restore_schema(stream.schema().as_ref()) else {
        return stream;
    };
    let renamed = schema.clone();
    let batches = stream.map(move |batch| {
        let batch = batch?;
        Ok(RecordBatch::try_new_with_options(
            renamed.clone(),
            batch.columns().to_vec(),
            &datafusion::arrow::record_batch::RecordBatchOptions::new()
                .with_row_count(Some(batch.num_rows())),
        )?)
    });
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn named(sql: &str) -> (bool, String) {
        let mut stmts = Parser::parse_sql(&PostgreSqlDialect {}, sql).expect("parses");
        let datafusion::sql::sqlparser::ast::Statement::Query(q) = &mut stmts[0] else {
            panic!("not a query: {sql}");
        };
        let changed = name_repeats(q);
        (changed, q.to_string())
    }

    #[test]
    fn later_items_repeating_a_name_are_renamed_after_the_first() {
        let (changed, sql) = named("SELECT a, t.A, count(*), count(*), x AS a FROM t");
        assert!(changed);
        assert_eq!(
            sql,
            "SELECT a, t.A AS \"__weir_repeat_1_0\", count(*), count(*) AS \"__weir_repeat_3_2\", \
             x AS \"__weir_repeat_4_0\" FROM t"
        );
        // Distinct names, quoted names differing in case, and wildcards are left alone.
        assert!(!named("SELECT a, b FROM t").0);
        assert!(!named("SELECT \"A\", a FROM t").0);
        assert!(!named("SELECT *, a FROM t").0);
        // Each side of a UNION, and inside parentheses.
        assert_eq!(
            named("(SELECT a, a FROM t) UNION ALL SELECT 1, 1").1,
            "(SELECT a, a AS \"__weir_repeat_1_0\" FROM t) UNION ALL SELECT 1, 1 AS \"__weir_repeat_1_0\""
        );
    }

    #[test]
    fn a_refused_repeat_names_the_later_item() {
        let message = "Error during planning: Projections require unique expression names but \
            the expression \"count(Int64(1)) AS count(*)\" at position 0 and \"count(Int64(1)) \
            AS count(*)\" at position 2 have the same name. Consider aliasing (\"AS\") one of them.";
        assert_eq!(refused_repeat(message), Some((0, 2)));
        assert_eq!(refused_repeat("table 't' not found"), None);
        let mut stmts =
            Parser::parse_sql(&PostgreSqlDialect {}, "SELECT count(*), a, COUNT(*) FROM t")
                .expect("parses");
        let datafusion::sql::sqlparser::ast::Statement::Query(q) = &mut stmts[0] else {
            panic!("not a query");
        };
        assert!(name_refused(q, 0, 2));
        assert_eq!(
            q.to_string(),
            "SELECT count(*), a, COUNT(*) AS \"__weir_repeat_2_0\" FROM t"
        );
        // Named so already (the refusal came from inside), or not an item: nothing changes.
        assert!(!name_refused(q, 0, 2));
        assert!(!name_refused(q, 0, 7));
    }

    #[test]
    fn restored_names_are_the_first_items_names() {
        let names = ["a", "__weir_repeat_1_0", "count(*)", "__weir_repeat_3_2"];
        assert_eq!(
            restore(&names),
            Some(vec![
                "a".into(),
                "a".into(),
                "count(*)".into(),
                "count(*)".into()
            ])
        );
        assert_eq!(restore(&["a", "b"]), None);
        // An alias that does not point back at an earlier column of its own kind is a name.
        assert_eq!(restore(&["a", "__weir_repeat_5_0"]), None);
        assert_eq!(restore(&["a", "__weir_repeat_1_1"]), None);
    }
}
