//! Group-by keys a table's primary key makes needless. DataFusion answers `SELECT c.id, count(*)
//! ... GROUP BY c.id` as Postgres does, letting the query name any column of `c` (the key
//! determines them), by grouping on every column of `c` too; its projection pruning takes the
//! ones nothing uses out again, but only when every key of the `GROUP BY` is a plain column. One
//! computed key (`date_trunc('day', ts)`) and the join carries every column of the table, and
//! the aggregation hashes them all: the loyalty job grouped ten million joined rows on four
//! strings it never read.
//!
//! [`ComputedKeysBelow`] computes such keys in a projection under the aggregation, so that every
//! key is a column and DataFusion's pruning applies. It only does so where the pruning would take
//! a key out; the rows and their names are the same.

use std::sync::Arc;

use datafusion::common::get_required_group_by_exprs_indices;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{Aggregate, Expr, LogicalPlan, Projection};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The optimizer rule: an aggregation with a computed group-by key, over rows whose columns
/// depend on others it groups by, groups on the key computed in a projection below it instead.
#[derive(Debug, Default)]
pub struct ComputedKeysBelow;

impl OptimizerRule for ComputedKeysBelow {
    fn name(&self) -> &str {
        "weir_computed_group_keys_below"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Aggregate(aggregate) = &plan else {
            return Ok(Transformed::no(plan));
        };
        // Any plan this cannot build is left as it was: the rewrite is only ever a speed-up.
        match keys_below(aggregate) {
            Ok(Some(rewritten)) => Ok(Transformed::yes(rewritten)),
            Ok(None) | Err(_) => Ok(Transformed::no(plan)),
        }
    }
}

/// `aggregate` with its computed keys computed below it, when that lets a key go.
fn keys_below(aggregate: &Aggregate) -> Result<Option<LogicalPlan>> {
    let input = aggregate.input.as_ref();
    if input.schema().functional_dependencies().is_empty() {
        return Ok(None);
    }
    let computed: Vec<bool> = aggregate
        .group_expr
        .iter()
        .map(|e| !matches!(e, Expr::Column(_)))
        .collect();
    if !computed.iter().any(|c| *c) {
        return Ok(None);
    }
    // Grouping sets, and keys reading a subquery or an outer query's columns, stay where they
    // are (their place in the plan matters to other rules).
    let movable = aggregate.group_expr.iter().all(|e| {
        !e.exists(|x| {
            Ok(matches!(
                x,
                Expr::GroupingSet(_)
                    | Expr::ScalarSubquery(_)
                    | Expr::Exists(_)
                    | Expr::InSubquery(_)
                    | Expr::OuterReferenceColumn(..)
                    | Expr::Placeholder(_)
            ))
        })
        .unwrap_or(true)
    });
    if !movable {
        return Ok(None);
    }
    // Below: every input column, then each computed key under the name it gives the output.
    let mut below: Vec<Expr> = input
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    let mut keys = Vec::with_capacity(aggregate.group_expr.len());
    for (i, (key, computed)) in aggregate.group_expr.iter().zip(&computed).enumerate() {
        if !computed {
            keys.push(key.clone());
            continue;
        }
        let (qualifier, field) = aggregate.schema.qualified_field(i);
        below.push(
            key.clone()
                .alias_qualified(qualifier.cloned(), field.name()),
        );
        keys.push(Expr::Column(Column::new(qualifier.cloned(), field.name())));
    }
    let below = LogicalPlan::Projection(Projection::try_new(below, aggregate.input.clone())?);
    let names: Vec<String> = keys.iter().map(|k| k.schema_name().to_string()).collect();
    let needed = get_required_group_by_exprs_indices(below.schema(), &names);
    if needed.is_none_or(|n| n.len() == keys.len()) {
        return Ok(None);
    }
    let rewritten = Aggregate::try_new(Arc::new(below), keys, aggregate.aggr_expr.clone())?;
    // The same columns out, under the same names, or no rewrite.
    let same = rewritten.schema.fields().len() == aggregate.schema.fields().len()
        && rewritten
            .schema
            .iter()
            .zip(aggregate.schema.iter())
            .all(|((q1, f1), (q2, f2))| {
                q1 == q2 && f1.name() == f2.name() && f1.data_type() == f2.data_type()
            });
    Ok(same.then_some(LogicalPlan::Aggregate(rewritten)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::{Constraint, Constraints};
    use datafusion::datasource::{MemTable, TableProvider};
    use datafusion::execution::SessionStateBuilder;
    use datafusion::prelude::SessionContext;

    /// A session with `customers` (primary key `id`) and `orders`, planning with the rule.
    async fn session() -> SessionContext {
        let state = SessionStateBuilder::new()
            .with_default_features()
            .with_optimizer_rule(Arc::new(ComputedKeysBelow))
            .build();
        let ctx = SessionContext::new_with_state(state);
        let customers = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("email", DataType::Utf8, true),
        ]));
        let table = MemTable::try_new(customers, vec![vec![]])
            .expect("table")
            .with_constraints(Constraints::new_unverified(vec![Constraint::PrimaryKey(
                vec![0],
            )]));
        ctx.register_table("customers", Arc::new(table) as Arc<dyn TableProvider>)
            .expect("registers");
        ctx.sql(
            "CREATE TABLE orders (customer BIGINT, price DOUBLE, ts TIMESTAMP) AS VALUES \
             (1, 2.0, TIMESTAMP '2026-01-01T10:00:00'), (1, 3.0, TIMESTAMP '2026-01-01T11:00:00'), \
             (2, 5.0, TIMESTAMP '2026-01-02T10:00:00')",
        )
        .await
        .expect("orders");
        ctx.sql("INSERT INTO customers VALUES (1, 'ann', 'a@x'), (2, 'bo', NULL)")
            .await
            .expect("insert")
            .collect()
            .await
            .expect("inserted");
        ctx
    }

    /// The rows `sql` answers with, as a printed table.
    async fn printed(ctx: &SessionContext, sql: &str) -> String {
        let rows = ctx
            .sql(sql)
            .await
            .expect("plans")
            .collect()
            .await
            .expect("runs");
        datafusion::arrow::util::pretty::pretty_format_batches(&rows)
            .expect("prints")
            .to_string()
    }

    #[tokio::test]
    async fn unused_columns_of_a_keyed_table_are_not_grouped_on() {
        let ctx = session().await;
        let sql = "SELECT c.id, date_trunc('day', o.ts) AS day, count(*) AS n, sum(o.price) AS p \
                   FROM orders o JOIN customers c ON o.customer = c.id \
                   GROUP BY c.id, date_trunc('day', o.ts) ORDER BY c.id";
        let plan = ctx
            .sql(sql)
            .await
            .expect("plans")
            .into_optimized_plan()
            .expect("optimizes");
        let text = plan.display_indent().to_string();
        let aggregate = text
            .lines()
            .find(|l| l.trim_start().starts_with("Aggregate:"))
            .expect("an aggregate");
        assert!(!aggregate.contains("c.name"), "{text}");
        assert!(!aggregate.contains("c.email"), "{text}");
        let shown = printed(&ctx, sql).await;
        assert!(
            shown.contains("| 1  | 2026-01-01T00:00:00 | 2 | 5.0 |"),
            "{shown}"
        );
        assert!(
            shown.contains("| 2  | 2026-01-02T00:00:00 | 1 | 5.0 |"),
            "{shown}"
        );
        // A column the query names is still there, from the group it belongs to.
        let shown = printed(
            &ctx,
            "SELECT c.id, c.name, date_trunc('day', o.ts) AS day, count(*) AS n \
             FROM orders o JOIN customers c ON o.customer = c.id \
             GROUP BY c.id, date_trunc('day', o.ts) ORDER BY c.id",
        )
        .await;
        assert!(shown.contains("| 1  | ann  |"), "{shown}");
        assert!(shown.contains("| 2  | bo   |"), "{shown}");
    }

    #[tokio::test]
    async fn aggregations_the_rule_cannot_help_are_left_alone() {
        let ctx = session().await;
        // Only plain keys: DataFusion's own pruning already applies.
        let plain = ctx
            .sql("SELECT c.id, count(*) FROM orders o JOIN customers c ON o.customer = c.id GROUP BY c.id")
            .await
            .expect("plans")
            .into_optimized_plan()
            .expect("optimizes");
        assert!(!plain.display_indent().to_string().contains("c.name"));
        // No key determines another: nothing to take out, no projection added.
        let unkeyed = ctx
            .sql("SELECT customer, date_trunc('day', ts), count(*) FROM orders GROUP BY 1, 2")
            .await
            .expect("plans")
            .into_unoptimized_plan();
        let LogicalPlan::Projection(p) = &unkeyed else {
            panic!("a projection on top: {unkeyed}");
        };
        let LogicalPlan::Aggregate(a) = p.input.as_ref() else {
            panic!("an aggregate under it: {unkeyed}");
        };
        assert!(keys_below(a).expect("checks").is_none());
    }
}
