//! The SQL engine of a node: a DataFusion session over the cluster's tables and topics, with
//! Weir's own handling of the statements that change the catalog (`CREATE TABLE|TOPIC`,
//! `CREATE EXTERNAL TABLE`, `DROP TABLE|TOPIC`) and of `SHOW TOPICS`.

use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{StringArray, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, SchemaProvider};
use datafusion::common::Constraint;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SessionState;
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::sql::parser::{CreateExternalTable, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::{
    visit_relations, CreateTable, CreateTableOptions, Expr as SqlExpr, Ident, ObjectName,
    ObjectType, Query, SetExpr, SqlOption, Statement as Sql, TableObject, Value as SqlValue,
};
use datafusion_distributed::Worker;
use weir_proto::format::{RecordFormat, TopicFormat};
use weir_proto::table::{Column, TableSchema};

use crate::catalog::ClusterSchema;
use crate::cluster::{Cluster, ClusterError, ExternalTableMeta, NewTable, NewTopic, TopicMeta};
use crate::distributed::{self, EngineSlot};
use crate::repeated_names;
use crate::restate::{restate, restate_error, Restated};
use crate::schedule::statement::ScheduleStatement;
use crate::statement::{self, Statement};
use crate::topic::{metadata_columns, topic_columns};
use crate::types::column_type;
use crate::warnings::QueryWarnings;

pub use crate::catalog::{CATALOG, SCHEMA};
pub use crate::output::Output;

/// How a node runs queries.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Most memory all queries on this node may hold at once (bytes); 0 is unbounded.
    pub memory_limit: usize,
    /// Where operators spill what does not fit in memory (created if missing); none: the OS's
    /// temporary directory.
    pub spill_dir: Option<PathBuf>,
    /// Partitions each operator runs with (0: the number of cores).
    pub target_partitions: usize,
    /// Longest a statement may run before it is stopped with an error (none: no limit); a
    /// Postgres session's `SET statement_timeout` overrides it for that session.
    pub statement_timeout: Option<Duration>,
}

/// Parses and runs SQL against the cluster.
#[derive(Clone)]
pub struct Engine {
    ctx: Arc<SessionContext>,
    /// Runs the tasks of queries other nodes plan (served on the node's gRPC port).
    worker: Worker,
    cluster: Arc<dyn Cluster>,
    schema: Arc<ClusterSchema>,
    statement_timeout: Option<Duration>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").finish_non_exhaustive()
    }
}

fn cluster_error(e: ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

impl Engine {
    /// An engine over `cluster`.
    pub fn new(cluster: Arc<dyn Cluster>, config: &EngineConfig) -> Result<Engine> {
        let mut session = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG, SCHEMA)
            .with_create_default_catalog_and_schema(false);
        if config.target_partitions > 0 {
            session = session.with_target_partitions(config.target_partitions);
        }
        session.options_mut().sql_parser.dialect = datafusion::config::Dialect::PostgreSQL;
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(dir) = &config.spill_dir {
            std::fs::create_dir_all(dir).map_err(|e| {
                DataFusionError::Execution(format!(
                    "cannot create the spill directory {}: {e}",
                    dir.display()
                ))
            })?;
            runtime = runtime.with_temp_file_path(dir.clone());
        }
        if config.memory_limit > 0 {
            runtime = runtime.with_memory_limit(config.memory_limit, 1.0);
        }
        let slot = EngineSlot::default();
        let (state, worker) = distributed::session_state(
            cluster.clone(),
            session,
            runtime.build_arc()?,
            slot.clone(),
        )?;
        let ctx = Arc::new(SessionContext::new_with_state(state));
        // Tasks other nodes send here resolve functions as this engine does.
        let _ = slot.set(Arc::downgrade(&ctx));
        for f in crate::functions::all() {
            ctx.register_udf(f);
        }
        let schema = Arc::new(ClusterSchema::new(cluster.clone()));
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(SCHEMA, schema.clone())?;
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        Ok(Engine {
            ctx,
            worker,
            cluster,
            schema,
            statement_timeout: config.statement_timeout.filter(|t| !t.is_zero()),
        })
    }

    /// An engine over the same cluster, catalog, functions and memory pool whose settings
    /// (`SET`) are its own: one client's session ([`crate::session`]).
    pub fn session(&self) -> Engine {
        Engine {
            ctx: Arc::new(SessionContext::new_with_state(self.ctx.state())),
            ..self.clone()
        }
    }

    /// How long a statement may run when its client does not say (none: no limit).
    pub fn statement_timeout(&self) -> Option<Duration> {
        self.statement_timeout
    }

    /// An error `message` from a planner Weir does not call itself (the Postgres protocol's)
    /// restated as [`crate::restate`] words it, if it does.
    pub fn restate(&self, message: &str) -> Option<Restated> {
        restate(message, || self.schema.table_names())
    }

    /// `e` restated as [`crate::restate`] words it, if it does.
    fn restated(&self, e: DataFusionError) -> DataFusionError {
        restate_error(e, || self.schema.table_names())
    }

    /// The worker that runs this node's share of queries planned anywhere in the cluster.
    pub fn worker(&self) -> Worker {
        self.worker.clone()
    }

    /// The DataFusion session (for the Postgres protocol, which plans through it).
    pub fn context(&self) -> Arc<SessionContext> {
        self.ctx.clone()
    }

    /// Splits `sql` into statements; a syntax error names the line and column.
    pub fn parse(&self, sql: &str) -> Result<VecDeque<Statement>> {
        let mut statements = statement::parse(sql)?;
        for s in statements.iter_mut() {
            self.rewrite(s);
        }
        Ok(statements)
    }

    /// `sql` as Weir rewrites it before planning, when it rewrites any of it (an `INSERT INTO
    /// topic` without a column list, a select list naming one column twice), for the Postgres
    /// protocol, whose planner reads the text itself.
    pub fn completed(&self, sql: &str) -> Option<String> {
        let mut statements = statement::parse(sql).ok()?;
        let mut changed = false;
        for s in statements.iter_mut() {
            changed |= self.rewrite(s);
        }
        changed.then(|| {
            statements
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(";\n")
        })
    }

    /// `sql` (one statement) with the item DataFusion's `refusal` names as repeating an earlier
    /// item's column name named apart (see [`Engine::plan`]), for the Postgres protocol to plan
    /// again; `None` when the refusal is another or nothing can be renamed.
    pub fn renamed_after(&self, sql: &str, refusal: &str) -> Option<String> {
        let (earlier, later) = repeated_names::refused_repeat(refusal)?;
        let mut statements = self.parse(sql).ok()?;
        if statements.len() != 1 {
            return None;
        }
        let Some(Statement::Sql(stmt)) = statements.front_mut() else {
            return None;
        };
        let q = outer_query_mut(stmt)?;
        repeated_names::name_refused(q, earlier, later).then(|| stmt.to_string())
    }

    /// Rewrites what DataFusion would refuse but Postgres takes: an `INSERT INTO topic` without
    /// a column list, a select list naming one column twice. Whether it changed `stmt`.
    fn rewrite(&self, stmt: &mut Statement) -> bool {
        self.name_topic_columns(stmt) | name_repeated_columns(stmt)
    }

    /// Gives an `INSERT INTO topic` without a column list the topic's own columns, as Postgres
    /// fills a table's leading columns: the metadata columns (`_partition`, `_key`, ...) follow
    /// them and are set only by name. Whether it changed `stmt`.
    fn name_topic_columns(&self, stmt: &mut Statement) -> bool {
        let Statement::Sql(DfStatement::Statement(s)) = stmt else {
            return false;
        };
        let Sql::Insert(insert) = s.as_mut() else {
            return false;
        };
        let TableObject::TableName(name) = &insert.table else {
            return false;
        };
        if !insert.columns.is_empty() {
            return false;
        }
        let Ok(Some(meta)) = self.cluster.topic(&object_name(name)) else {
            return false;
        };
        let columns = topic_columns(&meta);
        let declared = columns.len().saturating_sub(metadata_columns().len());
        insert.columns = columns[..declared]
            .iter()
            .map(|c| ObjectName::from(vec![Ident::with_quote('"', c.name.clone())]))
            .collect();
        true
    }

    /// Whether `stmt` is a query that reads a topic: it reports the records it skipped as
    /// undecodable, so a protocol that shows notices runs it on the engine.
    pub fn reads_topic(&self, stmt: &Statement) -> bool {
        let Statement::Sql(DfStatement::Statement(s)) = stmt else {
            return false;
        };
        if !matches!(s.as_ref(), Sql::Query(_)) {
            return false;
        }
        visit_relations(s.as_ref(), |name| {
            if matches!(self.cluster.topic(&object_name(name)), Ok(Some(_))) {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .is_break()
    }

    /// Runs every statement of `sql` in order, returning each one's output; the rows of a query
    /// stream as they are read. An error stops at the failing statement.
    pub async fn execute(&self, sql: &str) -> Result<Vec<Output>> {
        let mut outputs = Vec::new();
        for stmt in self.parse(sql)? {
            outputs.push(self.run(stmt).await?);
        }
        Ok(outputs)
    }

    /// Runs one parsed statement.
    pub async fn run(&self, stmt: Statement) -> Result<Output> {
        let stmt = match stmt {
            Statement::Sql(s) => s,
            Statement::CreateTopic(ct) => return self.create_topic(&ct).await,
            Statement::DropTopic { names, if_exists } => {
                for name in &names {
                    match self.cluster.drop_topic(&object_name(name)).await {
                        Ok(()) => {}
                        Err(ClusterError::NotFound(_)) if if_exists => {}
                        Err(e) => return Err(cluster_error(e)),
                    }
                }
                return Ok(Output::Done("DROP TOPIC".into()));
            }
            Statement::ShowTopics => return self.show_topics(),
            Statement::Job(j) => return crate::job::admin::run(&self.cluster, j).await,
            Statement::Schedule(s) => return self.schedule(s).await,
        };
        if let DfStatement::Statement(s) = &stmt {
            if let Some(out) = self.catalog_statement(s).await? {
                return Ok(out);
            }
            if let Sql::ShowVariable { variable } = s.as_ref() {
                if crate::session::shows_all(variable) {
                    let all = crate::session::show_all(&self.ctx);
                    return Output::text_rows(&["name", "value", "description"], &all);
                }
                if let Some((name, value)) = crate::session::show(&self.ctx, variable) {
                    return Output::one_row(&[("name", name), ("value", value)]);
                }
            }
            if let Some(change) = crate::session::zone_change(s) {
                crate::session::change_zone(&self.ctx, &change?).await?;
                return Ok(Output::Done("SET".into()));
            }
        }
        if let DfStatement::CreateExternalTable(c) = &stmt {
            if !c.temporary {
                return self.create_external_table(c).await;
            }
        }
        let warnings = Arc::new(QueryWarnings::default());
        let mut state = self.ctx.state();
        state.config_mut().set_extension(warnings.clone());
        let plan = self.plan(&state, stmt).await?;
        match &plan {
            LogicalPlan::Ddl(d) => {
                let tag = command_tag(d.name());
                self.ctx.execute_logical_plan(plan).await?.collect().await?;
                Ok(Output::Done(tag))
            }
            LogicalPlan::Statement(s) => {
                use datafusion::logical_expr::Statement as Df;
                // A setting's change answers with its command, as in Postgres, not with rows.
                let (tag, name) = match s {
                    Df::SetVariable(set) => {
                        crate::session::check_settable(&set.variable)?;
                        (Some("SET"), Some(set.variable.clone()))
                    }
                    Df::ResetVariable(reset) => (Some("RESET"), Some(reset.variable.clone())),
                    _ => (None, None),
                };
                let df = self
                    .ctx
                    .execute_logical_plan(plan)
                    .await
                    .map_err(|e| match &name {
                        Some(name) => crate::session::refused(name, e),
                        None => e,
                    })?;
                match tag {
                    Some(tag) => {
                        df.collect().await?;
                        Ok(Output::Done(tag.into()))
                    }
                    None => Ok(Output::Rows(df.execute_stream().await?, warnings)),
                }
            }
            _ => {
                // Type coercion runs here, as the plan is optimized.
                let stream = datafusion::dataframe::DataFrame::new(state, plan)
                    .execute_stream()
                    .await
                    .map_err(|e| self.restated(e))?;
                Ok(Output::Rows(
                    repeated_names::restore_stream(stream),
                    warnings,
                ))
            }
        }
    }

    /// Plans `stmt`; a select list DataFusion refuses for naming one column twice in a way the
    /// text did not show (see [`repeated_names::refused_repeat`]) is named and planned again.
    async fn plan(&self, state: &SessionState, mut stmt: DfStatement) -> Result<LogicalPlan> {
        loop {
            let again = outer_query_mut(&mut stmt).is_some().then(|| stmt.clone());
            let e = match state.statement_to_plan(stmt).await {
                Ok(plan) => return Ok(plan),
                Err(e) => e,
            };
            let renamed = again.and_then(|mut again| {
                let (earlier, later) = repeated_names::refused_repeat(&e.to_string())?;
                let q = outer_query_mut(&mut again)?;
                repeated_names::name_refused(q, earlier, later).then_some(again)
            });
            match renamed {
                Some(again) => stmt = again,
                None => return Err(self.restated(e)),
            }
        }
    }

    /// Runs a schedule statement: a new schedule's statement must plan now, and `SHOW RUNS` is a
    /// query over the run history.
    async fn schedule(&self, stmt: ScheduleStatement) -> Result<Output> {
        match stmt {
            ScheduleStatement::Create { ref statement, .. } => {
                self.check_plans(statement).await?;
                crate::schedule::admin::run(&self.cluster, stmt).await
            }
            ScheduleStatement::ShowRuns { name } => {
                match crate::schedule::admin::runs_query(&self.cluster, name.as_deref())? {
                    Some(q) => {
                        let mut parsed = self.parse(&q)?;
                        match parsed.pop_front() {
                            Some(stmt) => Box::pin(self.run(stmt)).await,
                            None => Err(DataFusionError::Internal(
                                "SHOW RUNS parsed to nothing".into(),
                            )),
                        }
                    }
                    None => Ok(Output::Done("SHOW RUNS: no schedule has run yet".into())),
                }
            }
            other => crate::schedule::admin::run(&self.cluster, other).await,
        }
    }

    /// Checks that `sql` is one statement a schedule can run, and that it plans against the
    /// catalog as it is now.
    async fn check_plans(&self, sql: &str) -> Result<()> {
        let mut stmts = self.parse(sql)?;
        let (Some(stmt), None) = (stmts.pop_front(), stmts.pop_front()) else {
            return Err(DataFusionError::Plan(
                "a schedule runs exactly one statement".into(),
            ));
        };
        match stmt {
            Statement::Job(_) | Statement::Schedule(_) => Err(DataFusionError::Plan(format!(
                "a schedule cannot run a job or schedule statement: {stmt}"
            ))),
            Statement::Sql(DfStatement::Statement(s)) if !Self::is_catalog_statement(&s) => {
                self.ctx
                    .state()
                    .statement_to_plan(DfStatement::Statement(s))
                    .await
                    .map_err(|e| {
                        DataFusionError::Plan(format!(
                            "the schedule's statement does not plan: {}",
                            self.restated(e)
                        ))
                    })?;
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// `SHOW TOPICS`: every topic with its partitions, format and columns.
    fn show_topics(&self) -> Result<Output> {
        let topics = self.cluster.list_topics().map_err(cluster_error)?;
        let schema = Arc::new(Schema::new(vec![
            Field::new("topic", DataType::Utf8, false),
            Field::new("partitions", DataType::UInt32, false),
            Field::new("format", DataType::Utf8, false),
            Field::new("columns", DataType::Utf8, false),
        ]));
        let columns = |t: &TopicMeta| match &t.format {
            Some(f) => f
                .columns
                .iter()
                .map(|c| format!("{} {}", c.name, c.ty.sql_name()))
                .collect::<Vec<_>>()
                .join(", "),
            None => "value VARBINARY".into(),
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    topics.iter().map(|t| t.name.clone()),
                )),
                Arc::new(UInt32Array::from_iter_values(
                    topics.iter().map(|t| t.partitions),
                )),
                Arc::new(StringArray::from_iter_values(topics.iter().map(|t| {
                    t.format
                        .as_ref()
                        .map_or("bytes", |f| f.kind.name())
                        .to_string()
                }))),
                Arc::new(StringArray::from_iter_values(topics.iter().map(columns))),
            ],
        )?;
        let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)]));
        Ok(Output::Rows(
            Box::pin(stream),
            Arc::new(QueryWarnings::default()),
        ))
    }

    /// `CREATE TOPIC name (cols...) WITH (partitions = N, replicas = N, format = 'json',
    /// retention_ms = N)`.
    async fn create_topic(&self, ct: &CreateTable) -> Result<Output> {
        let name = object_name(&ct.name);
        let mut options = topic_options(&ct.table_options)?;
        let kind = match options.format.take() {
            Some(f) => RecordFormat::parse(&f).map_err(|e| DataFusionError::Plan(e.to_string()))?,
            None if ct.columns.is_empty() => {
                // No columns and no format: the records are read as bytes.
                return self.create_topic_as(ct, name, options, None).await;
            }
            None => RecordFormat::Json,
        };
        let columns = if ct.columns.is_empty() {
            Vec::new()
        } else {
            let mut plain = ct.clone();
            plain.table_options = CreateTableOptions::None;
            plain.constraints.clear();
            let plan = self
                .ctx
                .state()
                .statement_to_plan(DfStatement::Statement(Box::new(Sql::CreateTable(plain))))
                .await?;
            let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmt)) = plan else {
                return Err(DataFusionError::Internal(
                    "CREATE TOPIC did not plan as a table".into(),
                ));
            };
            cmt.input
                .schema()
                .fields()
                .iter()
                .map(|f| {
                    Ok(Column {
                        name: f.name().clone(),
                        ty: column_type(f.name(), f.data_type())?,
                        nullable: f.is_nullable(),
                    })
                })
                .collect::<Result<Vec<_>>>()?
        };
        let format =
            TopicFormat::new(kind, columns).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        self.create_topic_as(ct, name, options, Some(format)).await
    }

    async fn create_topic_as(
        &self,
        ct: &CreateTable,
        name: String,
        options: TopicOptions,
        format: Option<TopicFormat>,
    ) -> Result<Output> {
        self.name_free_for(&name, "topic")?;
        if self.cluster.topic(&name).map_err(cluster_error)?.is_some() {
            if ct.if_not_exists {
                return Ok(Output::Done("CREATE TOPIC".into()));
            }
            return Err(cluster_error(ClusterError::AlreadyExists(format!(
                "topic '{name}' already exists"
            ))));
        }
        let topic = NewTopic {
            name,
            partitions: options.partitions,
            replicas: options.replicas,
            retention_ms: options.retention_ms,
            format,
        };
        match self.cluster.create_topic(topic).await {
            Ok(()) => {}
            Err(ClusterError::AlreadyExists(_)) if ct.if_not_exists => {}
            Err(e) => return Err(cluster_error(e)),
        }
        Ok(Output::Done("CREATE TOPIC".into()))
    }

    /// Fails when `name` is held by something other than a `kind` (tables, topics and tables
    /// over files share one namespace: SQL reads all three by name); one of the same kind is
    /// left to the caller, which knows about `IF NOT EXISTS`.
    fn name_free_for(&self, name: &str, kind: &str) -> Result<()> {
        let held = if kind != "table" && self.cluster.table(name).map_err(cluster_error)?.is_some()
        {
            Some("table")
        } else if kind != "topic" && self.cluster.topic(name).map_err(cluster_error)?.is_some() {
            Some("topic")
        } else if kind != "external table"
            && self
                .cluster
                .external_table(name)
                .map_err(cluster_error)?
                .is_some()
        {
            Some("external table")
        } else {
            None
        };
        match held {
            Some(other) => {
                let a = |k: &str| if k.starts_with('e') { "an" } else { "a" };
                Err(cluster_error(ClusterError::AlreadyExists(format!(
                    "{} {other} named '{name}' already exists; {} {kind} needs another name",
                    a(other),
                    a(kind)
                ))))
            }
            None => Ok(()),
        }
    }

    /// True for the statements [`Engine::catalog_statement`] handles.
    pub fn is_catalog_statement(s: &Sql) -> bool {
        matches!(s, Sql::CreateTable(ct) if !ct.external)
            || matches!(
                s,
                Sql::Drop {
                    object_type: ObjectType::Table,
                    ..
                }
            )
    }

    /// Handles the statements that change the cluster's catalog; `None` for every other one.
    pub async fn catalog_statement(&self, s: &Sql) -> Result<Option<Output>> {
        match s {
            Sql::CreateTable(ct) if !ct.external => self.create_table(ct).await.map(Some),
            Sql::Drop {
                object_type: ObjectType::Table,
                if_exists,
                names,
                ..
            } => {
                for name in names {
                    let name = object_name(name);
                    if self.schema.deregister_table(&name)?.is_some() {
                        continue;
                    }
                    if self
                        .cluster
                        .external_table(&name)
                        .map_err(cluster_error)?
                        .is_some()
                    {
                        match self.cluster.drop_external_table(&name).await {
                            Ok(()) | Err(ClusterError::NotFound(_)) => {}
                            Err(e) => return Err(cluster_error(e)),
                        }
                        self.schema.forget_files(&name);
                        continue;
                    }
                    match self.cluster.drop_table(&name).await {
                        Ok(()) => {}
                        Err(ClusterError::NotFound(_)) if *if_exists => {}
                        Err(e) => return Err(cluster_error(e)),
                    }
                }
                Ok(Some(Output::Done("DROP TABLE".into())))
            }
            _ => Ok(None),
        }
    }

    /// `CREATE EXTERNAL TABLE`: the files are read once here (so a wrong path or format fails
    /// now, naming it), then the definition is recorded in the cluster's catalog.
    async fn create_external_table(&self, c: &CreateExternalTable) -> Result<Output> {
        let name = object_name(&c.name);
        let done = || Ok(Output::Done("CREATE EXTERNAL TABLE".into()));
        self.name_free_for(&name, "external table")?;
        let definition = crate::external::definition(c)?;
        crate::external::provider(&definition).await?;
        if let Some(existing) = self.cluster.external_table(&name).map_err(cluster_error)? {
            if c.if_not_exists {
                return done();
            }
            if !c.or_replace {
                return Err(cluster_error(ClusterError::AlreadyExists(format!(
                    "external table '{name}' already exists (CREATE OR REPLACE EXTERNAL TABLE \
                     redefines it)"
                ))));
            }
            if existing.definition == definition {
                return done();
            }
            match self.cluster.drop_external_table(&name).await {
                Ok(()) | Err(ClusterError::NotFound(_)) => {}
                Err(e) => return Err(cluster_error(e)),
            }
            self.schema.forget_files(&name);
        }
        let table = ExternalTableMeta { name, definition };
        match self.cluster.create_external_table(table).await {
            Ok(()) => done(),
            Err(ClusterError::AlreadyExists(_)) if c.if_not_exists => done(),
            Err(e) => Err(cluster_error(e)),
        }
    }

    async fn create_table(&self, ct: &CreateTable) -> Result<Output> {
        if ct.query.is_some() {
            return Err(DataFusionError::NotImplemented(
                "CREATE TABLE ... AS SELECT: create the table with its PRIMARY KEY, then \
                 INSERT INTO it SELECT ..."
                    .into(),
            ));
        }
        if ct.or_replace {
            return Err(DataFusionError::NotImplemented(
                "CREATE OR REPLACE TABLE: DROP TABLE first".into(),
            ));
        }
        let (replicas, split_bytes) = table_options(&ct.table_options)?;
        let mut plain = ct.clone();
        plain.table_options = CreateTableOptions::None;
        let plan = self
            .ctx
            .state()
            .statement_to_plan(DfStatement::Statement(Box::new(Sql::CreateTable(plain))))
            .await?;
        let LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(cmt)) = plan else {
            return Err(DataFusionError::Internal(
                "CREATE TABLE did not plan as a table".into(),
            ));
        };
        let name = cmt.name.table().to_string();
        let fields = cmt.input.schema().fields();
        let columns = fields
            .iter()
            .map(|f| {
                Ok(Column {
                    name: f.name().clone(),
                    ty: column_type(f.name(), f.data_type())?,
                    nullable: f.is_nullable(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let key: Vec<String> = cmt
            .constraints
            .iter()
            .find_map(|c| match c {
                Constraint::PrimaryKey(idx) => {
                    Some(idx.iter().map(|i| fields[*i].name().clone()).collect())
                }
                _ => None,
            })
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "table '{name}' needs a primary key: add PRIMARY KEY (column, ...) \
                     (rows are stored and upserted by it)"
                ))
            })?;
        let schema =
            TableSchema::new(columns, &key).map_err(|e| DataFusionError::Plan(e.to_string()))?;
        self.name_free_for(&name, "table")?;
        if self.cluster.table(&name).map_err(cluster_error)?.is_some() {
            if cmt.if_not_exists {
                return Ok(Output::Done("CREATE TABLE".into()));
            }
            return Err(cluster_error(ClusterError::AlreadyExists(format!(
                "table '{name}' already exists"
            ))));
        }
        match self
            .cluster
            .create_table(NewTable {
                name,
                schema,
                replicas,
                split_bytes,
            })
            .await
        {
            Ok(()) => {}
            Err(ClusterError::AlreadyExists(_)) if cmt.if_not_exists => {}
            Err(e) => return Err(cluster_error(e)),
        }
        Ok(Output::Done("CREATE TABLE".into()))
    }
}

/// A DDL plan's name as a command tag (`CreateExternalTable` -> `CREATE EXTERNAL TABLE`).
fn command_tag(name: &str) -> String {
    let mut tag = String::new();
    for c in name.chars() {
        if c.is_ascii_uppercase() && !tag.is_empty() {
            tag.push(' ');
        }
        tag.push(c.to_ascii_uppercase());
    }
    tag
}

/// Names the repeated items of the select list of a query or an `INSERT ... SELECT` (see
/// [`crate::repeated_names`]). Whether it changed `stmt`.
fn name_repeated_columns(stmt: &mut Statement) -> bool {
    let Statement::Sql(s) = stmt else {
        return false;
    };
    outer_query_mut(s).is_some_and(repeated_names::name_repeats)
}

/// The query whose select lists name a statement's columns: a query's own, an `INSERT`'s
/// source unless it is a `VALUES` list (which names nothing and may be long to copy).
fn outer_query_mut(stmt: &mut DfStatement) -> Option<&mut Query> {
    let DfStatement::Statement(s) = stmt else {
        return None;
    };
    match s.as_mut() {
        Sql::Insert(insert) => insert
            .source
            .as_deref_mut()
            .filter(|q| !matches!(q.body.as_ref(), SetExpr::Values(_))),
        Sql::Query(q) => Some(q),
        _ => None,
    }
}

/// The unqualified name of a table (`weir.public.t` and `t` both name `t`).
fn object_name(name: &datafusion::sql::sqlparser::ast::ObjectName) -> String {
    let last = name.0.last().map(|p| p.to_string()).unwrap_or_default();
    match last.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => last.to_ascii_lowercase(),
    }
}

/// `replicas` and `split_bytes` from `WITH (...)`.
fn table_options(opts: &CreateTableOptions) -> Result<(u32, u64)> {
    let list = match opts {
        CreateTableOptions::None => return Ok((0, 0)),
        CreateTableOptions::With(l) | CreateTableOptions::Options(l) => l,
        other => {
            return Err(DataFusionError::Plan(format!(
                "table options {other} are not understood; use WITH (replicas = N, split_bytes = N)"
            )))
        }
    };
    let (mut replicas, mut split) = (0u32, 0u64);
    for o in list {
        let SqlOption::KeyValue { key, value } = o else {
            return Err(DataFusionError::Plan(format!(
                "table option {o} is not understood; use WITH (replicas = N, split_bytes = N)"
            )));
        };
        let number = match value {
            SqlExpr::Value(v) => match &v.value {
                SqlValue::Number(n, _) => n.parse::<u64>().ok(),
                SqlValue::SingleQuotedString(s) => s.parse::<u64>().ok(),
                _ => None,
            },
            _ => None,
        }
        .ok_or_else(|| {
            DataFusionError::Plan(format!("table option {key}: {value} is not a whole number"))
        })?;
        match key.value.to_ascii_lowercase().as_str() {
            "replicas" => {
                replicas = u32::try_from(number).map_err(|_| {
                    DataFusionError::Plan(format!("replicas = {number} is too many"))
                })?
            }
            "split_bytes" => split = number,
            other => {
                return Err(DataFusionError::Plan(format!(
                    "unknown table option '{other}' (known: replicas, split_bytes)"
                )))
            }
        }
    }
    Ok((replicas, split))
}

/// What `WITH (...)` of `CREATE TOPIC` sets.
#[derive(Debug, Default)]
struct TopicOptions {
    partitions: u32,
    replicas: u32,
    retention_ms: u64,
    format: Option<String>,
}

/// `partitions`, `replicas`, `retention_ms` and `format` from `WITH (...)`; partitions default
/// to 1 and replicas to 0 (the cluster's default: 3, or fewer on a smaller cluster).
fn topic_options(opts: &CreateTableOptions) -> Result<TopicOptions> {
    const KNOWN: &str = "partitions, replicas, retention_ms, format";
    let mut out = TopicOptions {
        partitions: 1,
        ..TopicOptions::default()
    };
    let list = match opts {
        CreateTableOptions::None => return Ok(out),
        CreateTableOptions::With(l) | CreateTableOptions::Options(l) => l,
        other => {
            return Err(DataFusionError::Plan(format!(
                "topic options {other} are not understood; use WITH ({KNOWN})"
            )))
        }
    };
    for o in list {
        let SqlOption::KeyValue { key, value } = o else {
            return Err(DataFusionError::Plan(format!(
                "topic option {o} is not understood; use WITH ({KNOWN})"
            )));
        };
        let text = match value {
            SqlExpr::Value(v) => match &v.value {
                SqlValue::Number(n, _) => Some(n.clone()),
                SqlValue::SingleQuotedString(s) => Some(s.clone()),
                _ => None,
            },
            SqlExpr::Identifier(i) => Some(i.value.clone()),
            _ => None,
        }
        .ok_or_else(|| {
            DataFusionError::Plan(format!("topic option {key}: {value} is not a value"))
        })?;
        let number = || {
            text.parse::<u64>().map_err(|_| {
                DataFusionError::Plan(format!("topic option {key}: {text} is not a whole number"))
            })
        };
        let small = |n: u64| {
            u32::try_from(n)
                .map_err(|_| DataFusionError::Plan(format!("topic option {key}: {n} is too many")))
        };
        match key.value.to_ascii_lowercase().as_str() {
            "partitions" => out.partitions = small(number()?)?,
            "replicas" => out.replicas = small(number()?)?,
            "retention_ms" => out.retention_ms = number()?,
            "format" => out.format = Some(text.clone()),
            other => {
                return Err(DataFusionError::Plan(format!(
                    "unknown topic option '{other}' (known: {KNOWN})"
                )))
            }
        }
    }
    Ok(out)
}
