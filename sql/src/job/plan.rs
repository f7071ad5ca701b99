//! What a job's statement means, worked out once when the job is created (to refuse what cannot
//! run) and again by each task when it starts.
//!
//! `INSERT INTO sink [(cols)] SELECT ... FROM topic [JOIN table ...] [WHERE ...] [GROUP BY ...]`
//! splits into a per-batch query, which DataFusion runs over each batch of decoded records (the
//! stateless part: joins with tables, filters, projections, scalar functions), and what becomes of
//! its rows:
//!
//! - without aggregates, each row is a sink row, written by its primary key; or, when the sink is
//!   a topic, a record appended to it (a chain of jobs: topic → job → topic → job → table);
//! - with `GROUP BY` (or aggregate calls), each select item must be a group key or one aggregate
//!   call (`count`, `sum`, `min`, `max`, `avg`), the group keys must be exactly the sink's primary
//!   key, and the per-batch query yields, per record, the key values, each aggregate's argument and
//!   the record's offset; the task folds them per key and merges them into the sink rows.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::array::UInt64Array;
use datafusion::arrow::compute::can_cast_types;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{MemoryCatalogProvider, SchemaProvider, Session};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::dataframe::DataFrame;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr as DfExpr, LogicalPlan};
use datafusion::physical_plan::{collect, ExecutionPlan};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::sqlparser::ast::{
    DuplicateTreatment, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, GroupByExpr, Ident,
    ObjectName, Query, SelectItem, SetExpr, Statement as Sql, TableFactor, TableObject,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;
use weir_proto::names::does_not_exist;
use weir_proto::table::{Column, ColumnType, TableSchema};

use crate::catalog::{ClusterSchema, CATALOG, SCHEMA};
use crate::cluster::{Cluster, ClusterError, TableMeta, TopicMeta};
use crate::job::statement::{parse_job_statement, JobStatement};
use crate::topic::{metadata_columns, topic_columns, OFFSET_COLUMN};
use crate::types::{arrow_schema, arrow_type, column_type};

/// The aggregate functions a job keeps incrementally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggKind {
    /// `count(*)` or `count(x)` (the per-batch query yields 1 or 0 per record).
    Count,
    /// `sum(x)`.
    Sum,
    /// `min(x)`.
    Min,
    /// `max(x)`.
    Max,
    /// `avg(x)` (a hidden sum and count per row; the cell shows their quotient).
    Avg,
    /// The value of the latest record: a column of an upserted row (no `GROUP BY`).
    Last,
    /// `count(DISTINCT x)`: the per-batch query yields `x`; the task turns it into 1 for the one
    /// record that first brought each (key, value) and NULL for the others, and counts those
    /// (see [`crate::job::distinct`]).
    CountDistinct,
}

/// One aggregate column of the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agg {
    /// What it computes.
    pub kind: AggKind,
    /// The sink column it lands in.
    pub column: usize,
}

/// How the per-batch query's rows land in the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shape {
    /// Output column `i` is sink column `targets[i]`, then the record's offset; each row replaces
    /// the cells it names in the sink row of its key (the others keep their values; NULL in a
    /// new row), unless that row already reflects a later record of the same source partition.
    Upsert {
        /// Sink column of each output column.
        targets: Vec<usize>,
    },
    /// As `Upsert`, but each row is a record appended to the sink topic (whose columns are its
    /// declared ones, then its metadata columns).
    Produce {
        /// Sink column of each output column.
        targets: Vec<usize>,
    },
    /// Outputs are the key columns (sink columns `keys`), then one argument per aggregate, then
    /// the record's offset, then (for a window with a lateness) the record's event time and the
    /// time its window closes.
    Aggregate {
        /// Sink column of each key output.
        keys: Vec<usize>,
        /// The aggregates, in output order after the keys.
        aggs: Vec<Agg>,
        /// Whether a key is a `tumble(ts, size, lateness)` window whose closed windows take no
        /// more records.
        closes: bool,
    },
}

/// The three arguments of a `tumble(ts, size, lateness)` call, if `e` is one.
fn tumble_with_lateness(e: &Expr) -> Result<Option<[Expr; 3]>> {
    let Expr::Function(f) = e else {
        return Ok(None);
    };
    if object_name(&f.name)? != "tumble" {
        return Ok(None);
    }
    let FunctionArguments::List(list) = &f.args else {
        return Ok(None);
    };
    let args: Vec<Expr> = list
        .args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => Some(x.clone()),
            _ => None,
        })
        .collect();
    Ok(<[Expr; 3]>::try_from(args).ok())
}

/// A job's statement, planned: the per-batch query over its source and what its rows become.
pub struct JobPlan {
    /// The topic read.
    pub source: TopicMeta,
    /// The table written; for a topic sink, its columns (declared, then metadata) as a table
    /// without key or regions.
    pub sink: TableMeta,
    /// The topic written, when the sink is a topic.
    pub sink_topic: Option<TopicMeta>,
    /// How rows land in the sink.
    pub shape: Shape,
    /// The per-batch query's output columns, typed as the task reads them.
    pub out_columns: Vec<Column>,
    /// The columns of the topic (declared, then metadata) the per-batch query reads, by index:
    /// only these are decoded from the records.
    pub read: Vec<usize>,
    /// The columns at `read`.
    pub read_columns: Vec<Column>,
    /// Arrow schema of the decoded records (the columns at `read`).
    pub read_schema: SchemaRef,
    ctx: SessionContext,
    plan: LogicalPlan,
    batch: Arc<BatchSource>,
}

impl std::fmt::Debug for JobPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobPlan")
            .field("source", &self.source.name)
            .field("sink", &self.sink.name)
            .field("shape", &self.shape)
            .finish()
    }
}

/// Why a job cannot name `name`: no table or topic has that name (and the closest that does).
fn no_relation(cluster: &Arc<dyn Cluster>, name: &str) -> DataFusionError {
    let mut names: Vec<String> = cluster
        .list_tables()
        .map(|t| t.into_iter().map(|t| t.name).collect())
        .unwrap_or_default();
    if let Ok(topics) = cluster.list_topics() {
        names.extend(topics.into_iter().map(|t| t.name));
    }
    cluster_error(ClusterError::NotFound(does_not_exist(
        "table or topic",
        name,
        names.iter().map(String::as_str),
    )))
}

fn plan_err(m: impl Into<String>) -> DataFusionError {
    DataFusionError::Plan(m.into())
}

fn cluster_error(e: ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A name as SQL resolves it: unquoted identifiers fold to lower case.
fn ident_name(i: &Ident) -> String {
    match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    }
}

fn object_name(n: &ObjectName) -> Result<String> {
    n.0.last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .ok_or_else(|| plan_err(format!("'{n}' is not a table name")))
}

fn parse_expr(sql: &str) -> Result<Expr> {
    Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .and_then(|mut p| p.parse_expr())
        .map_err(|e| plan_err(e.to_string()))
}

/// The aggregate an expression calls, with its argument (none: `count(*)`), if it is one whole
/// aggregate call.
fn as_aggregate(e: &Expr) -> Result<Option<(AggKind, Option<Expr>)>> {
    let Expr::Function(f) = e else {
        return Ok(None);
    };
    let name = object_name(&f.name)?;
    let kind = match name.as_str() {
        "count" => AggKind::Count,
        "sum" => AggKind::Sum,
        "min" => AggKind::Min,
        "max" => AggKind::Max,
        "avg" | "mean" => AggKind::Avg,
        _ => return Ok(None),
    };
    if f.over.is_some() || f.filter.is_some() || !f.within_group.is_empty() {
        return Err(plan_err(format!(
            "{e}: a stream job keeps plain aggregates; OVER, FILTER and WITHIN GROUP are not kept"
        )));
    }
    let FunctionArguments::List(list) = &f.args else {
        return Err(plan_err(format!("{e}: expected one argument")));
    };
    let kind = match (list.duplicate_treatment, kind) {
        (None | Some(DuplicateTreatment::All), kind) => kind,
        (Some(DuplicateTreatment::Distinct), AggKind::Count) => AggKind::CountDistinct,
        // The least and greatest of the distinct values are those of all values.
        (Some(DuplicateTreatment::Distinct), AggKind::Min | AggKind::Max) => kind,
        (Some(DuplicateTreatment::Distinct), _) => {
            return Err(plan_err(format!(
                "{e}: a stream job keeps count(DISTINCT x), but not a sum or average of distinct \
                 values"
            )))
        }
    };
    match list.args.as_slice() {
        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if kind == AggKind::CountDistinct => {
            Err(plan_err(format!(
                "{e}: count(DISTINCT) counts the values of one expression"
            )))
        }
        [FunctionArg::Unnamed(FunctionArgExpr::Wildcard)] if kind == AggKind::Count => {
            Ok(Some((kind, None)))
        }
        [FunctionArg::Unnamed(FunctionArgExpr::Expr(a))] => Ok(Some((kind, Some(a.clone())))),
        _ => Err(plan_err(format!("{e}: expected one argument"))),
    }
}

impl JobPlan {
    /// Plans the job statement `definition` (`INSERT INTO ... SELECT ...`) against the cluster's
    /// catalog; an error says what does not fit.
    pub async fn new(cluster: Arc<dyn Cluster>, definition: &str) -> Result<JobPlan> {
        let sql = format!("CREATE JOB j AS {definition}");
        let JobStatement::Create { body, .. } = parse_job_statement(&sql)? else {
            return Err(plan_err("not a job statement"));
        };
        JobPlan::from_insert(cluster, &body).await
    }

    /// Plans a parsed `INSERT INTO ... SELECT ...`.
    pub async fn from_insert(cluster: Arc<dyn Cluster>, insert: &Sql) -> Result<JobPlan> {
        let Sql::Insert(ins) = insert else {
            return Err(plan_err("a job runs INSERT INTO table SELECT ..."));
        };
        let TableObject::TableName(sink_name) = &ins.table else {
            return Err(plan_err("a job inserts into a table named by its name"));
        };
        let sink_name = object_name(sink_name)?;
        let (sink, sink_topic) = match cluster.table(&sink_name).map_err(cluster_error)? {
            Some(t) => (t, None),
            None => match cluster.topic(&sink_name).map_err(cluster_error)? {
                Some(topic) => (
                    TableMeta {
                        name: topic.name.clone(),
                        schema: Arc::new(TableSchema {
                            columns: topic_columns(&topic),
                            primary_key: Vec::new(),
                        }),
                        regions: Vec::new(),
                    },
                    Some(topic),
                ),
                None => return Err(no_relation(&cluster, &sink_name)),
            },
        };
        let Some(query) = &ins.source else {
            return Err(plan_err("a job inserts the rows of a SELECT"));
        };
        let select = plain_select(query)?;
        let (source, qualifier) = find_source(&cluster, select)?;
        let schema = &sink.schema;
        // A topic's metadata columns are written only when named.
        let declared = match &sink_topic {
            Some(_) => schema.columns.len() - metadata_columns().len(),
            None => schema.columns.len(),
        };
        let targets: Vec<usize> = if ins.columns.is_empty() {
            (0..declared).collect()
        } else {
            ins.columns
                .iter()
                .map(|c| {
                    let name = object_name(c)?;
                    schema
                        .columns
                        .iter()
                        .position(|col| col.name == name)
                        .ok_or_else(|| {
                            plan_err(format!("table '{}' has no column '{name}'", sink.name))
                        })
                })
                .collect::<Result<_>>()?
        };
        if targets.iter().collect::<BTreeSet<_>>().len() != targets.len() {
            return Err(plan_err("a column is named twice in the INSERT"));
        }
        for (i, col) in schema.columns.iter().enumerate() {
            if !targets.contains(&i) && (!col.nullable || schema.primary_key.contains(&i)) {
                return Err(plan_err(format!(
                    "the job does not write column '{}' of '{}', which cannot be NULL",
                    col.name, sink.name
                )));
            }
        }
        let aggregating = !matches!(&select.group_by, GroupByExpr::Expressions(e, _) if e.is_empty())
            || select.projection.iter().any(|item| match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    matches!(as_aggregate(e), Ok(Some(_)) | Err(_))
                }
                _ => false,
            });
        if sink_topic.is_some() {
            if aggregating {
                return Err(plan_err(format!(
                    "a job writing the topic '{}' keeps no aggregates: GROUP BY into a table \
                     whose key is the group key",
                    sink.name
                )));
            }
            if targets.contains(&(declared + 1)) {
                return Err(plan_err(format!(
                    "{OFFSET_COLUMN} of '{}' is assigned by the log; leave it out",
                    sink.name
                )));
            }
        }
        let (per_batch, shape, out_columns) = if aggregating {
            aggregate_query(query, select, &qualifier, schema, &targets, &sink.name)?
        } else if sink_topic.is_some() {
            let out = targets.iter().map(|t| loose(&schema.columns[*t])).collect();
            (query.to_string(), Shape::Produce { targets }, out)
        } else {
            let mut out: Vec<Column> = targets.iter().map(|t| loose(&schema.columns[*t])).collect();
            let mut per_batch = query.clone();
            if let SetExpr::Select(s) = per_batch.body.as_mut() {
                with_offset(&mut s.projection, &mut out, &qualifier)?;
            }
            (per_batch.to_string(), Shape::Upsert { targets }, out)
        };
        let source_columns = topic_columns(&source);
        let source_schema = arrow_schema(&TableSchema {
            columns: source_columns.clone(),
            primary_key: Vec::new(),
        });
        let batch = Arc::new(BatchSource {
            schema: source_schema.clone(),
            read: std::sync::OnceLock::new(),
            batch: Mutex::new(None),
        });
        let ctx = job_context(cluster.clone(), &source.name, batch.clone())?;
        let plan = ctx
            .state()
            .create_logical_plan(&per_batch)
            .await
            .map_err(|e| plan_err(format!("{e}")))?;
        let read = columns_read(&ctx, &plan, &batch, source_columns.len())?;
        let read_columns: Vec<Column> = read.iter().map(|i| source_columns[*i].clone()).collect();
        let read_schema = Arc::new(source_schema.project(&read)?);
        batch
            .read
            .set(read.clone())
            .map_err(|_| DataFusionError::Internal("a job's batch source planned twice".into()))?;
        let mut stateful = None;
        plan.apply(|n| {
            if matches!(
                n,
                LogicalPlan::Aggregate(_) | LogicalPlan::Window(_) | LogicalPlan::Distinct(_)
            ) {
                stateful = Some(n.display().to_string());
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        if let Some(node) = stateful {
            return Err(plan_err(format!(
                "a stream job keeps aggregates only as whole select items with GROUP BY the sink's \
                 key (this statement needs {node})"
            )));
        }
        let fields = plan.schema().fields();
        if fields.len() != out_columns.len() {
            // Not counting the columns the job adds (offset, event and close times).
            let hidden = match &shape {
                Shape::Upsert { .. } => 1,
                Shape::Aggregate { closes, .. } => 1 + 2 * usize::from(*closes),
                Shape::Produce { .. } => 0,
            };
            return Err(plan_err(format!(
                "the SELECT gives {} columns, the job writes {} columns of '{}'",
                fields.len().saturating_sub(hidden),
                out_columns.len().saturating_sub(hidden),
                sink.name
            )));
        }
        let mut out_columns = out_columns;
        if let Shape::Aggregate { keys, aggs, .. } = &shape {
            for (j, agg) in aggs.iter().enumerate() {
                if agg.kind == AggKind::CountDistinct {
                    let at = keys.len() + j;
                    out_columns[at].ty = column_type(fields[at].name(), fields[at].data_type())?;
                }
            }
        }
        for (f, c) in fields.iter().zip(&out_columns) {
            if !can_cast_types(f.data_type(), &arrow_type(c.ty)) {
                return Err(plan_err(format!(
                    "column '{}' is {}, which cannot be written as {} ({})",
                    f.name(),
                    f.data_type(),
                    c.ty,
                    c.name
                )));
            }
        }
        Ok(JobPlan {
            source,
            sink,
            sink_topic,
            shape,
            out_columns,
            read,
            read_columns,
            read_schema,
            ctx,
            plan,
            batch,
        })
    }

    /// Runs the per-batch query over one batch of decoded records.
    pub async fn run(&self, records: RecordBatch) -> Result<Vec<RecordBatch>> {
        *self.batch.batch.lock().unwrap_or_else(|p| p.into_inner()) = Some(records);
        let out = DataFrame::new(self.ctx.state(), self.plan.clone())
            .collect()
            .await;
        *self.batch.batch.lock().unwrap_or_else(|p| p.into_inner()) = None;
        out
    }

    /// Runs one statement that does not read the source topic (a `DELETE` of the job's state) in
    /// the task's session, with the cluster's tables; returns its count of rows.
    pub async fn execute(&self, sql: &str) -> Result<u64> {
        let batches = self.ctx.sql(sql).await?.collect().await?;
        let count = batches
            .iter()
            .filter(|b| b.num_rows() > 0)
            .filter_map(|b| b.column(0).as_any().downcast_ref::<UInt64Array>())
            .map(|c| c.value(0))
            .sum();
        Ok(count)
    }
}

/// Adds the record's offset (`__offset`) to a per-batch query's select items and output columns.
fn with_offset(
    projection: &mut Vec<SelectItem>,
    out: &mut Vec<Column>,
    qualifier: &str,
) -> Result<()> {
    projection.push(SelectItem::ExprWithAlias {
        expr: parse_expr(&format!("{qualifier}.{OFFSET_COLUMN}"))?,
        alias: Ident::new("__offset"),
    });
    out.push(Column {
        name: "__offset".into(),
        ty: ColumnType::Int64,
        nullable: false,
    });
    Ok(())
}

/// The column as an output of the per-batch query: its type, NULL allowed (the sink checks).
fn loose(c: &Column) -> Column {
    Column {
        name: c.name.clone(),
        ty: c.ty,
        nullable: true,
    }
}

/// The query's single `SELECT`, refusing what a never-ending query cannot mean.
fn plain_select(query: &Query) -> Result<&datafusion::sql::sqlparser::ast::Select> {
    if query.with.is_some() {
        return Err(plan_err("a job's SELECT cannot have WITH"));
    }
    if query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(plan_err(
            "a job's SELECT never ends, so ORDER BY, LIMIT and FETCH have no meaning in it",
        ));
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return Err(plan_err(
            "a job's SELECT must be one SELECT (no UNION, VALUES or parentheses)",
        ));
    };
    if select.distinct.is_some() || select.having.is_some() {
        return Err(plan_err(
            "a job's SELECT cannot have DISTINCT or HAVING (keep the aggregate and filter it \
             when you query the sink)",
        ));
    }
    Ok(select)
}

/// The one topic the SELECT reads, and the name its columns are qualified by.
fn find_source(
    cluster: &Arc<dyn Cluster>,
    select: &datafusion::sql::sqlparser::ast::Select,
) -> Result<(TopicMeta, String)> {
    let mut topics = Vec::new();
    for twj in &select.from {
        for rel in std::iter::once(&twj.relation).chain(twj.joins.iter().map(|j| &j.relation)) {
            let TableFactor::Table { name, alias, .. } = rel else {
                return Err(plan_err(format!(
                    "a job reads topics and tables by name, not {rel}"
                )));
            };
            let n = object_name(name)?;
            if let Some(t) = cluster.topic(&n).map_err(cluster_error)? {
                let qualifier = match alias {
                    Some(a) => a.name.to_string(),
                    None => name.to_string(),
                };
                topics.push((t, qualifier));
            } else if cluster.table(&n).map_err(cluster_error)?.is_none()
                && cluster.external_table(&n).map_err(cluster_error)?.is_none()
            {
                return Err(no_relation(cluster, &n));
            }
        }
    }
    let mut topics = topics.into_iter();
    let (Some(source), None) = (topics.next(), topics.next()) else {
        return Err(plan_err(
            "a job reads exactly one topic (joined with any number of tables)",
        ));
    };
    if source.0.format.is_none() {
        return Err(plan_err(format!(
            "topic '{}' has no format or columns, so its records cannot be read as rows; \
             create it with columns and a format",
            source.0.name
        )));
    }
    Ok(source)
}

/// The per-batch query of a `GROUP BY` job: keys, aggregate arguments, and the offset, per record.
fn aggregate_query(
    query: &Query,
    select: &datafusion::sql::sqlparser::ast::Select,
    qualifier: &str,
    schema: &TableSchema,
    targets: &[usize],
    sink: &str,
) -> Result<(String, Shape, Vec<Column>)> {
    let GroupByExpr::Expressions(group_exprs, modifiers) = &select.group_by else {
        return Err(plan_err("GROUP BY ALL is not supported in a job"));
    };
    if !modifiers.is_empty() {
        return Err(plan_err(
            "ROLLUP, CUBE and GROUPING SETS are not supported in a job",
        ));
    }
    if select.projection.len() != targets.len() {
        return Err(plan_err(format!(
            "the SELECT gives {} columns, the job writes {} columns of '{sink}'",
            select.projection.len(),
            targets.len()
        )));
    }
    let mut keys: Vec<(usize, Expr)> = Vec::new();
    let mut aggs: Vec<(Agg, Option<Expr>)> = Vec::new();
    let mut aliases: HashMap<String, usize> = HashMap::new();
    for (i, item) in select.projection.iter().enumerate() {
        let (expr, alias) = match item {
            SelectItem::UnnamedExpr(e) => (e, None),
            SelectItem::ExprWithAlias { expr, alias } => (expr, Some(alias)),
            other => {
                return Err(plan_err(format!(
                    "{other}: a job with GROUP BY names each column it keeps"
                )))
            }
        };
        let column = targets[i];
        match as_aggregate(expr)? {
            Some((kind, arg)) => {
                if schema.primary_key.contains(&column) {
                    return Err(plan_err(format!(
                        "{expr} lands in '{}', a key column of '{sink}'; the key must be the GROUP BY",
                        schema.columns[column].name
                    )));
                }
                aggs.push((Agg { kind, column }, arg));
            }
            None => {
                if let Some(a) = alias {
                    aliases.insert(ident_name(a), keys.len());
                }
                keys.push((column, expr.clone()));
            }
        }
    }
    // Every GROUP BY expression must be a selected key, and every selected key grouped by.
    let mut grouped = vec![false; keys.len()];
    for g in group_exprs {
        let hit = match g {
            Expr::Value(v) => v
                .value
                .to_string()
                .parse::<usize>()
                .ok()
                .and_then(|n| n.checked_sub(1))
                .and_then(|n| {
                    let item_column = targets.get(n)?;
                    keys.iter().position(|(c, _)| c == item_column)
                }),
            Expr::Identifier(i) => aliases.get(&ident_name(i)).copied().or_else(|| {
                keys.iter()
                    .position(|(_, e)| e.to_string() == g.to_string())
            }),
            _ => keys
                .iter()
                .position(|(_, e)| e.to_string() == g.to_string()),
        };
        match hit {
            Some(k) => grouped[k] = true,
            None => {
                return Err(plan_err(format!(
                    "GROUP BY {g}: each group key must also be selected into the sink's key"
                )))
            }
        }
    }
    if let Some(k) = grouped.iter().position(|g| !g) {
        return Err(plan_err(format!(
            "{} is selected but not in the GROUP BY",
            keys[k].1
        )));
    }
    let key_columns: BTreeSet<usize> = keys.iter().map(|(c, _)| *c).collect();
    let pk: BTreeSet<usize> = schema.primary_key.iter().copied().collect();
    if key_columns != pk {
        let names = |s: &BTreeSet<usize>| {
            s.iter()
                .map(|c| schema.columns[*c].name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        };
        return Err(plan_err(format!(
            "the GROUP BY keys land in ({}), but the primary key of '{sink}' is ({}); a job \
             keeps one row per group, so they must be the same",
            names(&key_columns),
            names(&pk)
        )));
    }
    let mut projection = Vec::new();
    let mut out = Vec::new();
    for (i, (column, e)) in keys.iter().enumerate() {
        projection.push(SelectItem::ExprWithAlias {
            expr: e.clone(),
            alias: Ident::new(format!("__k{i}")),
        });
        out.push(loose(&schema.columns[*column]));
    }
    for (i, (agg, arg)) in aggs.iter().enumerate() {
        let col = &schema.columns[agg.column];
        let (expr, ty) = match (agg.kind, arg) {
            (AggKind::Count, None) => (parse_expr("1")?, ColumnType::Int64),
            (AggKind::Count, Some(a)) => (
                parse_expr(&format!("({a}) IS NOT NULL"))?,
                ColumnType::Int64,
            ),
            // The value's type is the argument's, known once the query is planned.
            (AggKind::CountDistinct, Some(a)) => (a.clone(), ColumnType::Int64),
            (AggKind::Avg, Some(a)) => match col.ty {
                ColumnType::Float32 | ColumnType::Float64 => (a.clone(), ColumnType::Float64),
                ColumnType::Decimal { .. } => (a.clone(), col.ty),
                other => {
                    return Err(plan_err(format!(
                        "avg lands in '{}', which is {other}; an average is DOUBLE or DECIMAL",
                        col.name
                    )))
                }
            },
            (AggKind::Sum, Some(_)) if !col.ty.is_numeric() => {
                return Err(plan_err(format!(
                    "sum lands in '{}', which is {}; a sum is a number",
                    col.name, col.ty
                )))
            }
            (_, Some(a)) => (a.clone(), col.ty),
            (_, None) => return Err(plan_err("only count takes *")),
        };
        if matches!(agg.kind, AggKind::Count | AggKind::CountDistinct)
            && !matches!(
                col.ty,
                ColumnType::Int32 | ColumnType::Int64 | ColumnType::UInt64
            )
        {
            return Err(plan_err(format!(
                "count lands in '{}', which is {}; a count is BIGINT",
                col.name, col.ty
            )));
        }
        projection.push(SelectItem::ExprWithAlias {
            expr,
            alias: Ident::new(format!("__a{i}")),
        });
        out.push(Column {
            name: format!("__a{i}"),
            ty,
            nullable: true,
        });
    }
    with_offset(&mut projection, &mut out, qualifier)?;
    // A window key with a lateness: each record's event time, and when its window closes (its
    // end plus the lateness), so the task can drop records whose window closed before them.
    let mut windows = Vec::new();
    for (_, e) in &keys {
        if let Some(w) = tumble_with_lateness(e)? {
            windows.push(w);
        }
    }
    if windows.len() > 1 {
        return Err(plan_err(
            "a job keeps one window with a lateness: give the lateness to one tumble(...) only",
        ));
    }
    let closes = !windows.is_empty();
    if let Some([ts, size, lateness]) = windows.pop() {
        for (name, expr) in [
            ("__event", ts.to_string()),
            (
                "__close",
                format!("tumble({ts}, {size}) + {size} + {lateness}"),
            ),
        ] {
            projection.push(SelectItem::ExprWithAlias {
                expr: parse_expr(&expr)?,
                alias: Ident::new(name),
            });
            out.push(Column {
                name: name.into(),
                ty: ColumnType::Timestamp,
                nullable: true,
            });
        }
    }
    let mut per_batch = query.clone();
    if let SetExpr::Select(s) = per_batch.body.as_mut() {
        s.projection = projection;
        s.group_by = GroupByExpr::Expressions(Vec::new(), Vec::new());
    }
    let shape = Shape::Aggregate {
        keys: keys.iter().map(|(c, _)| *c).collect(),
        aggs: aggs.into_iter().map(|(a, _)| a).collect(),
        closes,
    };
    Ok((per_batch.to_string(), shape, out))
}

/// The session a task plans and runs its per-batch query in: the cluster's tables and topics,
/// with the source topic's name standing for the batch at hand.
fn job_context(
    cluster: Arc<dyn Cluster>,
    source: &str,
    batch: Arc<BatchSource>,
) -> Result<SessionContext> {
    let mut config = SessionConfig::new()
        .with_default_catalog_and_schema(CATALOG, SCHEMA)
        .with_create_default_catalog_and_schema(false)
        .with_target_partitions(1);
    config.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
    let ctx = SessionContext::new_with_config(config);
    for f in crate::functions::all() {
        ctx.register_udf(f);
    }
    let schema = JobSchema {
        source: source.to_string(),
        batch,
        cluster: ClusterSchema::new(cluster),
    };
    let catalog = MemoryCatalogProvider::new();
    datafusion::catalog::CatalogProvider::register_schema(&catalog, SCHEMA, Arc::new(schema))?;
    ctx.register_catalog(CATALOG, Arc::new(catalog));
    Ok(ctx)
}

/// The cluster's schema, with the source topic replaced by the batch a task is processing.
#[derive(Debug)]
struct JobSchema {
    source: String,
    batch: Arc<BatchSource>,
    cluster: ClusterSchema,
}

#[async_trait]
impl SchemaProvider for JobSchema {
    fn table_names(&self) -> Vec<String> {
        self.cluster.table_names()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if name == self.source {
            return Ok(Some(self.batch.clone()));
        }
        Ok(self
            .cluster
            .table(name)
            .await?
            .map(|inner| Arc::new(LookupCache::new(inner)) as Arc<dyn TableProvider>))
    }

    fn table_exist(&self, name: &str) -> bool {
        name == self.source || self.cluster.table_exist(name)
    }
}

/// How long a task reuses what it read of a table it joins with (Flink's lookup cache TTL): a
/// change to the table reaches the job's results within this time.
const LOOKUP_TTL: Duration = Duration::from_secs(1);
/// A table larger than this is read afresh for every batch instead of kept.
const LOOKUP_MAX_ROWS: usize = 1_000_000;

/// A table a job joins with, read whole and kept for [`LOOKUP_TTL`], so that each batch of
/// records does not read it again: a lookup join sees the table's rows as of at most that long
/// ago.
#[derive(Debug)]
struct LookupCache {
    inner: Arc<dyn TableProvider>,
    kept: Mutex<Option<(Instant, Vec<RecordBatch>)>>,
}

impl LookupCache {
    fn new(inner: Arc<dyn TableProvider>) -> LookupCache {
        LookupCache {
            inner,
            kept: Mutex::new(None),
        }
    }

    fn fresh(&self) -> Option<Vec<RecordBatch>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        kept.as_ref()
            .filter(|(at, _)| at.elapsed() < LOOKUP_TTL)
            .map(|(_, b)| b.clone())
    }
}

#[async_trait]
impl TableProvider for LookupCache {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[DfExpr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches = match self.fresh() {
            Some(b) => b,
            None => {
                let plan = self.inner.scan(state, None, &[], None).await?;
                let batches = collect(plan, state.task_ctx()).await?;
                let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                if rows > LOOKUP_MAX_ROWS {
                    return self.inner.scan(state, projection, filters, limit).await;
                }
                *self.kept.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), batches.clone()));
                batches
            }
        };
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            self.inner.schema(),
            projection.cloned(),
        )?)
    }

    /// Deletes from the table itself (a job letting go of its own state), and forgets what was
    /// kept so that the next read sees the delete.
    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<DfExpr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        *self.kept.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.delete_from(state, filters).await
    }
}

/// The records of the batch a task is processing, as a table.
#[derive(Debug)]
struct BatchSource {
    /// The source topic's columns, all of them, as the query is planned against.
    schema: SchemaRef,
    /// The columns of `schema` the batches hold (those the query reads), in order; set once
    /// the query is planned.
    read: std::sync::OnceLock<Vec<usize>>,
    batch: Mutex<Option<RecordBatch>>,
}

/// The columns of the source (indexes into its `width` columns) that `plan` reads from `batch`,
/// in order: the union of the projections the optimizer gives its scans.
fn columns_read(
    ctx: &SessionContext,
    plan: &LogicalPlan,
    batch: &Arc<BatchSource>,
    width: usize,
) -> Result<Vec<usize>> {
    let optimized = ctx.state().optimize(plan)?;
    let mut read = BTreeSet::new();
    optimized.apply(|n| {
        if let LogicalPlan::TableScan(scan) = n {
            let provider = datafusion::datasource::source_as_provider(&scan.source)?;
            let is_batch = provider
                .downcast_ref::<BatchSource>()
                .is_some_and(|b| std::ptr::eq(b, batch.as_ref()));
            if is_batch {
                match &scan.projection {
                    Some(p) => read.extend(p.iter().copied()),
                    None => read.extend(0..width),
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    Ok(read.into_iter().collect())
}

#[async_trait]
impl TableProvider for BatchSource {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[DfExpr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let batches: Vec<RecordBatch> = self
            .batch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let Some(read) = self.read.get() else {
            return Ok(MemorySourceConfig::try_new_exec(
                &[batches],
                self.schema.clone(),
                projection.cloned(),
            )?);
        };
        // The batch holds the columns at `read`: the scan's columns are found among them (the
        // query is optimized the same way for every batch as when `read` was found).
        let all: Vec<usize> = (0..self.schema.fields().len()).collect();
        let at = projection
            .unwrap_or(&all)
            .iter()
            .map(|i| {
                read.binary_search(i).map_err(|_| {
                    DataFusionError::Internal(format!(
                        "a job's scan of column {i} of its source, which is not decoded"
                    ))
                })
            })
            .collect::<Result<Vec<usize>>>()?;
        Ok(MemorySourceConfig::try_new_exec(
            &[batches],
            Arc::new(self.schema.project(read)?),
            Some(at),
        )?)
    }
}
