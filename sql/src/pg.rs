//! The Postgres wire protocol on a node, so `psql`, psycopg and dashboards query Weir: the
//! protocol and the `pg_catalog` tables come from `datafusion-postgres`; statements that change
//! the cluster's catalog are handled by the engine as on every other path.
//!
//! Weir's own statements (topics, jobs, schedules, external tables, `COPY ... TO`) are not
//! PostgreSQL syntax, so datafusion-postgres' parser would refuse them: a simple query (what
//! `psql` sends) is first read with Weir's parser, and one that holds any of them runs whole on
//! the engine, as `weir sql` runs it; over the extended protocol (what psycopg and most drivers
//! send) a prepared statement only Weir reads is kept as text and run on the engine.
//!
//! Every statement can be stopped by a cancel request and by its timeout ([`crate::cancel`]),
//! on both protocols, while it plans, computes or streams rows.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::StartupHandler;
use datafusion_postgres::pgwire::api::cancel::CancelHandler;
use datafusion_postgres::pgwire::api::copy;
use datafusion_postgres::pgwire::api::portal::{Format, Portal};
use datafusion_postgres::pgwire::api::query::{
    send_execution_response, send_query_response, send_ready_for_query, ExtendedQueryHandler,
    SimpleQueryHandler,
};
use datafusion_postgres::pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use datafusion_postgres::pgwire::api::stmt::QueryParser;
use datafusion_postgres::pgwire::api::store::PortalStore;
use datafusion_postgres::pgwire::api::Type;
use datafusion_postgres::pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers,
};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::pgwire::messages::cancel::CancelRequest;
use datafusion_postgres::pgwire::messages::extendedquery::Execute;
use datafusion_postgres::pgwire::messages::response::EmptyQueryResponse;
use datafusion_postgres::pgwire::messages::simplequery::Query;
use datafusion_postgres::pgwire::messages::startup::ParameterStatus;
use datafusion_postgres::pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use datafusion_postgres::{DfSessionService, QueryHook};
use futures::{Sink, SinkExt, StreamExt};
use tokio::net::TcpListener;

use crate::cancel::{Cancels, Registration, Stop, Stopped};
use crate::engine::{Engine, Output, CATALOG};
use crate::repeated_names;
use crate::sqlstate;
use crate::statement::Statement as WeirStatement;
use crate::warnings::QueryWarnings;

/// Accepts every user: Weir has no users or passwords yet; bind the port to loopback or a
/// private network. Each connection is recorded under the key it is given, so that a cancel
/// request (psql's Ctrl-C) can stop its statement.
struct Startup {
    cancels: Arc<Cancels>,
}

#[async_trait]
impl NoopStartupHandler for Startup {
    async fn post_startup<C>(
        &self,
        client: &mut C,
        _message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let (pid, key) = client.pid_and_secret_key();
        let registration = self.cancels.register((pid, key.to_bytes()));
        client.session_extensions().insert(registration);
        Ok(())
    }
}

/// Cancel requests: each stops the statement of the connection it names.
struct CancelRequests {
    cancels: Arc<Cancels>,
}

#[async_trait]
impl CancelHandler for CancelRequests {
    async fn on_cancel_request(&self, request: CancelRequest) {
        if !self
            .cancels
            .cancel(&(request.pid, request.secret_key.to_bytes()))
        {
            tracing::debug!(pid = request.pid, "a cancel request for no open connection");
        }
    }
}

/// Where datafusion-postgres keeps a session's `SET statement_timeout` (milliseconds).
const SESSION_TIMEOUT: &str = "statement_timeout_ms";
/// Set when the session's `SET statement_timeout` was 0: as in Postgres, its statements then
/// run without a limit, the node's `--sql-timeout-secs` included (datafusion-postgres records a
/// 0 by removing its own key, which would read as "use the node's").
const SESSION_NO_TIMEOUT: &str = "weir.statement_timeout_off";

/// What stops a statement of this connection: its cancel requests, and the session's
/// `statement_timeout` or else the node's.
fn stop_of<C: ClientInfo>(client: &C, engine: &Engine) -> Stop {
    let metadata = client.metadata();
    let timeout = if metadata.contains_key(SESSION_NO_TIMEOUT) {
        None
    } else {
        metadata
            .get(SESSION_TIMEOUT)
            .and_then(|ms| ms.parse::<u64>().ok())
            .filter(|ms| *ms > 0)
            .map(Duration::from_millis)
            .or(engine.statement_timeout())
    };
    let cancel = client
        .session_extensions()
        .get::<Registration>()
        .map(|r| r.watch());
    Stop::new(timeout, cancel)
}

/// The error a stopped statement ends with: Postgres's `query_canceled`.
fn stopped_error(why: Stopped) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        sqlstate::QUERY_CANCELED.into(),
        why.message(),
    )))
}

/// `response` with its rows (if it has any) stopped by `stop` too: rows are computed as they
/// are sent, after the handler returned them. Its columns carry the names the statement gave
/// them, a repeated one too (see [`crate::repeated_names`]).
fn guarded(response: Response, stop: &Stop) -> Response {
    match response {
        Response::Query(mut q) => {
            if let Some(fields) = restored_fields(&q.row_schema) {
                q.row_schema = Arc::new(fields);
            }
            let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
            let rows = rows.map(|row| row.map_err(stated));
            q.data_rows = Box::pin(stop.guard(rows, stopped_error));
            Response::Query(q)
        }
        other => other,
    }
}

/// The handlers of one server: DataFusion's session service for queries, Weir's engine for the
/// statements only Weir has.
struct Handlers {
    extended: Arc<ExtendedQueries>,
    simple: Arc<SimpleQueries>,
    cancels: Arc<Cancels>,
}

tokio::task_local! {
    /// The warning lines an `Execute` message sends after its rows: what the statements whose
    /// rows it finished sending skipped.
    static EXECUTE_NOTICES: Arc<Mutex<Vec<String>>>;
}

/// `response` with what its statement skipped (known once its rows were all sent) handed to the
/// `Execute` that sends the last of them: a portal read in parts ends in a later one.
fn reported(response: Response, warnings: Arc<QueryWarnings>) -> Response {
    fn hand_over(warnings: &QueryWarnings) {
        let lines = warnings.lines();
        if !lines.is_empty() {
            // Outside an `Execute` (none here) there is no one to tell.
            let _ = EXECUTE_NOTICES
                .try_with(|n| n.lock().unwrap_or_else(|p| p.into_inner()).extend(lines));
        }
    }
    match response {
        Response::Query(mut q) => {
            let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures::stream::empty()));
            let end = futures::stream::once(async move {
                hand_over(&warnings);
                None
            })
            .filter_map(futures::future::ready);
            q.data_rows = Box::pin(rows.chain(end));
            Response::Query(q)
        }
        other => {
            hand_over(&warnings);
            other
        }
    }
}

/// The extended protocol (what psycopg and most drivers send): datafusion-postgres plans and
/// runs each portal, stopped as a simple query is (cancel request, statement timeout).
struct ExtendedQueries {
    engine: Engine,
    service: Arc<DfSessionService>,
    parser: Arc<WeirParser>,
}

/// A prepared statement as datafusion-postgres keeps it: its text, and its statement and plan.
type Prepared = <DfSessionService as ExtendedQueryHandler>::Statement;

/// The extended protocol's parser: a statement only Weir's parser reads (a topic, job or
/// schedule statement, sent by a driver that prepares everything, as psycopg does) is kept as
/// its text with an empty plan carrying the columns it answers with, and runs on the engine; the
/// rest is datafusion-postgres' to plan.
struct WeirParser {
    engine: Engine,
    inner: Arc<<DfSessionService as ExtendedQueryHandler>::QueryParser>,
}

impl WeirParser {
    /// The one statement of `sql` only Weir reads, if that is what it holds.
    fn weir_statement(engine: &Engine, sql: &str) -> PgWireResult<Option<WeirStatement>> {
        match engine.parse(sql) {
            Ok(s) if s.iter().any(weir_only) => {
                let mut s = s;
                match (s.pop_front(), s.is_empty()) {
                    (Some(one), true) => Ok(Some(one)),
                    _ => Err(pg_error(datafusion::error::DataFusionError::Plan(
                        "a prepared statement holds one statement; send several as a simple query"
                            .into(),
                    ))),
                }
            }
            _ => Ok(None),
        }
    }
}

/// Whether a Weir statement answers with rows (`SHOW ...`, `DESCRIBE ...`) rather than a tag.
fn answers_rows(statement: &WeirStatement) -> bool {
    let text = statement.to_string();
    let first = text.split_whitespace().next().unwrap_or("");
    first.eq_ignore_ascii_case("SHOW") || first.eq_ignore_ascii_case("DESCRIBE")
}

#[async_trait]
impl QueryParser for WeirParser {
    type Statement = Prepared;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Prepared>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        let Some(statement) = WeirParser::weir_statement(&self.engine, sql)? else {
            let mut text = self
                .engine
                .completed(sql)
                .unwrap_or_else(|| sql.to_string());
            let parsed = loop {
                match self.inner.parse_sql(client, &text, types).await {
                    Err(e) => match self.engine.renamed_after(&text, &e.to_string()) {
                        Some(renamed) => text = renamed,
                        None => break Err(e),
                    },
                    planned => break planned,
                }
            };
            return parsed.map_err(|e| {
                weir_refusal_first(restated(&self.engine, e), || self.engine.parse(sql).err())
            });
        };
        // The columns a statement answers with are described before it runs: a SHOW or
        // DESCRIBE (a read) runs once here for them.
        let schema = if answers_rows(&statement) {
            match self.engine.run(statement).await.map_err(pg_error)? {
                Output::Rows(stream, _) => {
                    DFSchema::try_from(stream.schema().as_ref().clone()).map_err(pg_error)?
                }
                Output::Done(_) => DFSchema::empty(),
            }
        } else {
            DFSchema::empty()
        };
        let plan = LogicalPlan::EmptyRelation(EmptyRelation {
            produce_one_row: false,
            schema: Arc::new(schema),
        });
        // The statement slot holds a placeholder: a Weir statement is run from its text.
        let placeholder = Statement::Comment {
            object_type: datafusion::sql::sqlparser::ast::CommentObject::Table,
            object_name: datafusion::sql::sqlparser::ast::ObjectName::from(vec![]),
            comment: None,
            if_exists: false,
        };
        Ok(Some((sql.to_string(), Some((placeholder, plan)))))
    }

    fn get_parameter_types(&self, stmt: &Prepared) -> PgWireResult<Vec<Type>> {
        self.inner.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Prepared,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        let fields = self.inner.get_result_schema(stmt, column_format)?;
        Ok(restored_fields(&fields).unwrap_or(fields))
    }
}

#[async_trait]
impl ExtendedQueryHandler for ExtendedQueries {
    type Statement = Prepared;
    type QueryParser = WeirParser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.parser.clone()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stop = stop_of(client, &self.engine);
        if let Some(statement) =
            WeirParser::weir_statement(&self.engine, &portal.statement.statement.0)?
        {
            if !portal.parameters.is_empty() {
                return Err(pg_error(datafusion::error::DataFusionError::Plan(
                    "topic, job and schedule statements take no parameters".into(),
                )));
            }
            let output = stop
                .run(self.engine.run(statement))
                .await
                .map_err(stopped_error)?
                .map_err(pg_error)?;
            let answered = match &output {
                Output::Rows(_, w) => {
                    let warnings = w.clone();
                    reported(response(output)?, warnings)
                }
                Output::Done(_) => response(output)?,
            };
            return Ok(guarded(answered, &stop));
        }
        // datafusion-postgres plans the portal's statement in a session of its own: the topic
        // scans planned meanwhile count what they skip here instead.
        let warnings = Arc::new(QueryWarnings::default());
        let answered = stop
            .run(warnings.clone().collect_in(ExtendedQueryHandler::do_query(
                self.service.as_ref(),
                client,
                portal,
                max_rows,
            )))
            .await
            .map_err(stopped_error)?
            .map_err(|e| restated(&self.engine, e))?;
        Ok(guarded(reported(answered, warnings), &stop))
    }

    /// pgwire's own handling of an `Execute`, followed by a `WARNING` notice for each line of
    /// what the statement skipped, when this `Execute` sent the last of its rows.
    async fn on_execute<C>(&self, client: &mut C, message: Execute) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let outbox = Arc::new(Mutex::new(Vec::new()));
        EXECUTE_NOTICES
            .scope(outbox.clone(), self._on_execute(client, message))
            .await?;
        let lines = std::mem::take(&mut *outbox.lock().unwrap_or_else(|p| p.into_inner()));
        for line in lines {
            client.feed(notice(line)).await?;
        }
        Ok(())
    }
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.simple.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.extended.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup {
            cancels: self.cancels.clone(),
        })
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(CancelRequests {
            cancels: self.cancels.clone(),
        })
    }
}

/// `fields` with the names of repeated select items restored; `None` when none was renamed.
fn restored_fields(fields: &[FieldInfo]) -> Option<Vec<FieldInfo>> {
    let names: Vec<&str> = fields.iter().map(FieldInfo::name).collect();
    let names = repeated_names::restore(&names)?;
    Some(
        fields
            .iter()
            .zip(names)
            .map(|(f, name)| {
                FieldInfo::new(
                    name,
                    f.table_id(),
                    f.column_id(),
                    f.datatype().clone(),
                    f.format(),
                )
                .with_format_options(f.format_options().clone())
                .with_type_size(f.type_size())
                .with_type_modifier(f.type_modifier())
            })
            .collect(),
    )
}

/// Simple queries (what `psql` sends): see [`SimpleQueries::answer`] for which runs where.
struct SimpleQueries {
    engine: Engine,
    service: Arc<DfSessionService>,
}

/// Whether a statement is one only Weir's parser reads.
fn weir_only(s: &WeirStatement) -> bool {
    use datafusion::sql::parser::Statement as Df;
    match s {
        WeirStatement::Sql(Df::Statement(_)) => false,
        WeirStatement::Sql(_)
        | WeirStatement::CreateTopic(_)
        | WeirStatement::DropTopic { .. }
        | WeirStatement::ShowTopics
        | WeirStatement::Job(_)
        | WeirStatement::Schedule(_) => true,
    }
}

/// A Weir statement's output as a Postgres response: rows stream as they are read.
fn response(output: Output) -> PgWireResult<Response> {
    match output {
        Output::Done(tag) => Ok(Response::Execution(Tag::new(&tag))),
        Output::Rows(stream, _warnings) => {
            let fields = Arc::new(arrow_schema_to_pg_fields(
                stream.schema().as_ref(),
                &Format::UnifiedText,
                None,
            )?);
            let row_fields = fields.clone();
            let rows = stream
                .map(move |batch| {
                    let rows: Box<dyn Iterator<Item = PgWireResult<_>> + Send + Sync> = match batch
                    {
                        Ok(b) => encode_recordbatch(row_fields.clone(), b),
                        Err(e) => Box::new(std::iter::once(Err(pg_error(e)))),
                    };
                    futures::stream::iter(rows)
                })
                .flatten();
            Ok(Response::Query(QueryResponse::new(fields, rows)))
        }
    }
}

/// The results of a simple query's statements, each with what its statement reports besides
/// its rows (records of a topic it skipped), known once the rows have been sent.
type Answers = Vec<(Response, Option<Arc<QueryWarnings>>)>;

impl SimpleQueries {
    /// Runs the statements of a simple query. Those only Weir reads, and queries over topics
    /// (whose skipped records must reach the client), run on the engine; the rest go to
    /// datafusion-postgres (which also answers `SET`, `SHOW`, transactions and `pg_catalog`).
    async fn answer<C>(&self, client: &mut C, query: &str) -> PgWireResult<Answers>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let stop = stop_of(client, &self.engine);
        let statements = match self.engine.parse(query) {
            Ok(s) if s.iter().any(|s| weir_only(s) || self.engine.reads_topic(s)) => s,
            // Plain SQL, or text Weir's parser refuses: datafusion-postgres answers (with its own
            // error for what neither reads).
            _ => {
                // An `INSERT ... SELECT` from a topic is among these: the scans it plans count
                // what they skip here, reported after the last answer.
                let warnings = Arc::new(QueryWarnings::default());
                let mut text = self
                    .engine
                    .completed(query)
                    .unwrap_or_else(|| query.to_string());
                // A select list DataFusion refuses for naming a column twice is planned again
                // with the item named apart (nothing of the statement ran).
                let answered = loop {
                    let answered = stop
                        .run(warnings.clone().collect_in(SimpleQueryHandler::do_query(
                            self.service.as_ref(),
                            client,
                            &text,
                        )))
                        .await
                        .map_err(stopped_error)?;
                    let refusal = match &answered {
                        Err(e) => Some(e.to_string()),
                        Ok(r) => match r.as_slice() {
                            [Response::Error(info)] => Some(info.message.clone()),
                            _ => None,
                        },
                    };
                    match refusal.and_then(|m| self.engine.renamed_after(&text, &m)) {
                        Some(renamed) => text = renamed,
                        None => break answered,
                    }
                };
                let answered = answered.map_err(|e| {
                    weir_refusal_first(restated(&self.engine, e), || self.engine.parse(query).err())
                })?;
                let last = answered.len().saturating_sub(1);
                return Ok(answered
                    .into_iter()
                    .map(|r| match r {
                        Response::Error(info) => {
                            Response::Error(Box::new(restated_info(&self.engine, *info)))
                        }
                        other => other,
                    })
                    .enumerate()
                    .map(|(i, r)| (guarded(r, &stop), (i == last).then(|| warnings.clone())))
                    .collect());
            }
        };
        let mut out = Vec::with_capacity(statements.len());
        for statement in statements {
            match stop.run(self.engine.run(statement)).await {
                Ok(Ok(output)) => {
                    let warnings = match &output {
                        Output::Rows(_, w) => Some(w.clone()),
                        Output::Done(_) => None,
                    };
                    out.push((guarded(response(output)?, &stop), warnings));
                }
                Ok(Err(e)) => {
                    // As Postgres does: the statements before it stand, the rest are not run.
                    out.push((Response::Error(Box::new(error_info(e))), None));
                    break;
                }
                Err(why) => return Err(stopped_error(why)),
            }
        }
        Ok(out)
    }
}

/// A notice (Postgres's `WARNING`, SQLSTATE 01000) for each line `warnings` holds.
fn notices(warnings: &QueryWarnings) -> impl Iterator<Item = PgWireBackendMessage> {
    warnings.lines().into_iter().map(notice)
}

/// `line` as a notice (Postgres's `WARNING`, SQLSTATE 01000).
fn notice(line: String) -> PgWireBackendMessage {
    PgWireBackendMessage::NoticeResponse(
        ErrorInfo::new("WARNING".into(), "01000".into(), line).into(),
    )
}

#[async_trait]
impl SimpleQueryHandler for SimpleQueries {
    /// pgwire's own handling of a simple query, with one addition: after a statement's rows,
    /// what it skipped goes to the client as `WARNING` notices, which `psql` prints under the
    /// result. They can only be sent here: the rows are computed while they are sent, after
    /// `do_query` returned, and pgwire ends the query with `ReadyForQuery` right after them.
    async fn on_query<C>(&self, client: &mut C, query: Query) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if !matches!(client.state(), PgWireConnectionState::ReadyForQuery) {
            return Err(PgWireError::NotReadyForQuery);
        }
        let mut status = client.transaction_status();
        client.set_state(PgWireConnectionState::QueryInProgress);
        if query.query.chars().all(|c| c == ';' || c.is_whitespace()) {
            client
                .feed(PgWireBackendMessage::EmptyQueryResponse(
                    EmptyQueryResponse::new(),
                ))
                .await?;
        } else {
            let answers = self.answer(client, &query.query).await?;
            for (answer, warnings) in answers {
                match answer {
                    Response::EmptyQuery => {
                        client
                            .feed(PgWireBackendMessage::EmptyQueryResponse(
                                EmptyQueryResponse::new(),
                            ))
                            .await?;
                    }
                    Response::Query(rows) => send_query_response(client, rows, true).await?,
                    Response::Execution(tag) => send_execution_response(client, tag).await?,
                    Response::TransactionStart(tag) => {
                        send_execution_response(client, tag).await?;
                        status = status.to_in_transaction_state();
                    }
                    Response::TransactionEnd(tag) => {
                        send_execution_response(client, tag).await?;
                        status = status.to_idle_state();
                    }
                    Response::Error(e) => {
                        client
                            .feed(PgWireBackendMessage::ErrorResponse((*e).into()))
                            .await?;
                        status = status.to_error_state();
                    }
                    Response::CopyIn(copy) => {
                        copy::send_copy_in_response(client, copy).await?;
                        client.set_state(PgWireConnectionState::CopyInProgress(false));
                    }
                    Response::CopyOut(copy) => copy::send_copy_out_response(client, copy).await?,
                    Response::CopyBoth(copy) => {
                        copy::send_copy_both_response(client, copy).await?;
                        client.set_state(PgWireConnectionState::CopyInProgress(false));
                    }
                }
                for notice in warnings.iter().flat_map(|w| notices(w)) {
                    client.feed(notice).await?;
                }
            }
        }
        // A COPY FROM STDIN in progress answers ReadyForQuery when it ends, as in pgwire.
        if !matches!(client.state(), PgWireConnectionState::CopyInProgress(_)) {
            client.set_state(PgWireConnectionState::ReadyForQuery);
            client.set_transaction_status(status);
            send_ready_for_query(client, status).await?;
        }
        Ok(())
    }

    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: std::fmt::Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let answers = self.answer(client, query).await?;
        Ok(answers.into_iter().map(|(r, _)| r).collect())
    }
}

/// Runs `CREATE TABLE` / `DROP TABLE` on the cluster, for both query protocols.
struct CatalogHook {
    engine: Engine,
}

/// `e` as Postgres reports an error: its message and SQLSTATE.
fn error_info(e: datafusion::error::DataFusionError) -> ErrorInfo {
    ErrorInfo::new(
        "ERROR".into(),
        sqlstate::of(&e).into(),
        sqlstate::message(&e),
    )
}

/// `info` restated as [`weir_sql::restate`](crate::restate) words it (a misspelt relation, a
/// function without a matching signature), with the SQLSTATE Postgres gives the same error.
fn restated_info(engine: &Engine, mut info: ErrorInfo) -> ErrorInfo {
    if let Some(r) = engine.restate(&info.message) {
        info.message = r.message;
        info.code = r.sqlstate.into();
    }
    info
}

/// `e` restated by [`restated_info`].
fn restated(engine: &Engine, e: PgWireError) -> PgWireError {
    match e {
        PgWireError::UserError(info) => {
            PgWireError::UserError(Box::new(restated_info(engine, *info)))
        }
        // How datafusion-postgres passes on the planner's and the executor's errors.
        PgWireError::ApiError(inner) => match engine.restate(&inner.to_string()) {
            Some(r) => PgWireError::UserError(Box::new(ErrorInfo::new(
                "ERROR".into(),
                r.sqlstate.into(),
                r.message,
            ))),
            None => stated(PgWireError::ApiError(inner)),
        },
        other => other,
    }
}

/// `e`, datafusion-postgres's answer to text it could not read, replaced by `weir`'s refusal of
/// the same text when there is one: Weir's parser reads all DataFusion's does and Weir's own
/// statements too, so its words name the real fault (`EVERY 'bogus': write a number and a unit
/// ...`, where DataFusion's parser says it knows no `CREATE SCHEDULE`).
fn weir_refusal_first(
    e: PgWireError,
    weir: impl FnOnce() -> Option<datafusion::error::DataFusionError>,
) -> PgWireError {
    match &e {
        PgWireError::UserError(info) if info.code == sqlstate::SYNTAX_ERROR => {
            weir().map_or(e, pg_error)
        }
        _ => e,
    }
}

/// `e` with the SQLSTATE and words of the DataFusion or SQL parser error it passes on, if it
/// passes one on (datafusion-postgres hands those over as they are).
fn stated(e: PgWireError) -> PgWireError {
    use datafusion::sql::sqlparser::parser::ParserError;
    let PgWireError::ApiError(inner) = e else {
        return e;
    };
    let inner = match inner.downcast::<datafusion::error::DataFusionError>() {
        Ok(e) => return pg_error(*e),
        Err(inner) => inner,
    };
    match inner.downcast::<ParserError>() {
        Ok(e) => PgWireError::UserError(Box::new(ErrorInfo::new(
            "ERROR".into(),
            sqlstate::SYNTAX_ERROR.into(),
            e.to_string(),
        ))),
        Err(inner) => PgWireError::ApiError(inner),
    }
}

fn pg_error(e: datafusion::error::DataFusionError) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(e)))
}

impl CatalogHook {
    async fn run(&self, statement: &Statement) -> Option<PgWireResult<Response>> {
        match self.engine.catalog_statement(statement).await {
            Ok(Some(Output::Done(tag))) => Some(Ok(Response::Execution(Tag::new(&tag)))),
            Ok(Some(Output::Rows(..))) | Ok(None) => None,
            Err(e) => Some(Err(pg_error(e))),
        }
    }
}

#[async_trait]
impl QueryHook for CatalogHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.run(statement).await
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        _ctx: &SessionContext,
        _client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        // Nothing to plan: the statement runs when executed.
        Engine::is_catalog_statement(statement).then(|| {
            Ok(LogicalPlan::EmptyRelation(EmptyRelation {
                produce_one_row: false,
                schema: Arc::new(DFSchema::empty()),
            }))
        })
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        _plan: &LogicalPlan,
        _params: &ParamValues,
        _ctx: &SessionContext,
        _client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        self.run(statement).await
    }
}

/// `SET` as datafusion-postgres answers it, also noting a session's `statement_timeout` of 0 (no
/// limit) where [`stop_of`] finds it; except a namespaced setting (`weir.distribute`,
/// `datafusion.execution.batch_size`), which is applied to the connection's session here and
/// refused, naming it, when it is unknown or its value does not parse (datafusion-postgres
/// answers `SET` to any of those, applied or not). Postgres's own variables a driver sets at
/// connect (`extra_float_digits`, `client_encoding`) are still accepted as before.
struct SetHook;

impl SetHook {
    /// The answer to `SHOW` of an extension's setting (`weir.distribute`), as Postgres answers
    /// `SHOW`: one column named after the setting; datafusion-postgres finds none of them.
    fn show(statement: &Statement, ctx: &SessionContext) -> Option<PgWireResult<Response>> {
        let Statement::ShowVariable { variable } = statement else {
            return None;
        };
        if crate::session::shows_all(variable) {
            let all = crate::session::show_all(ctx);
            return Some(
                Output::text_rows(&["name", "setting", "description"], &all)
                    .map_err(pg_error)
                    .and_then(response),
            );
        }
        let (name, value) = crate::session::show(ctx, variable)?;
        Some(
            Output::one_row(&[(name.as_str(), value)])
                .map_err(pg_error)
                .and_then(response),
        )
    }

    /// Applies `statement` to `ctx` if it sets a namespaced setting, with its answer.
    async fn namespaced(
        statement: &Statement,
        ctx: &SessionContext,
    ) -> Option<PgWireResult<Response>> {
        let Statement::Set(datafusion::sql::sqlparser::ast::Set::SingleAssignment {
            variable, ..
        }) = statement
        else {
            return None;
        };
        let name = variable.to_string();
        if !name.contains('.') {
            return None;
        }
        let applied = async {
            crate::session::check_settable(&name)?;
            let state = ctx.state();
            let plan = state
                .statement_to_plan(datafusion::sql::parser::Statement::Statement(Box::new(
                    statement.clone(),
                )))
                .await?;
            ctx.execute_logical_plan(plan)
                .await
                .map(|_| ())
                .map_err(|e| crate::session::refused(&name, e))
        };
        Some(match applied.await {
            Ok(()) => Ok(Response::Execution(Tag::new("SET"))),
            Err(e) => Err(pg_error(e)),
        })
    }

    /// Applies `statement` to `ctx` if it changes the time zone in one of Postgres's forms
    /// (`SET TIME ZONE 'Europe/Paris'`, `SET timezone TO '+02:00'`), telling the client the new
    /// zone as Postgres does (`ParameterStatus`). datafusion-postgres would change a copy of the
    /// session's settings only, leaving the queries in the zone they had.
    async fn zone(
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        let change = crate::session::zone_change(statement)?;
        let applied = match change {
            Ok(change) => crate::session::change_zone(ctx, &change).await,
            Err(e) => Err(e),
        };
        if let Err(e) = applied {
            return Some(Err(pg_error(e)));
        }
        let zone = crate::session::time_zone(ctx);
        // Where datafusion-postgres keeps the zone it reports.
        client
            .metadata_mut()
            .insert("timezone".to_string(), zone.clone());
        let status = ParameterStatus::new("TimeZone".to_string(), zone);
        Some(
            client
                .send_message(PgWireBackendMessage::ParameterStatus(status))
                .await
                .map(|()| Response::Execution(Tag::new("SET"))),
        )
    }

    /// True for `SET statement_timeout ...`.
    fn sets_timeout(statement: &Statement) -> bool {
        matches!(
            statement,
            Statement::Set(datafusion::sql::sqlparser::ast::Set::SingleAssignment { variable, .. })
                if variable.to_string().eq_ignore_ascii_case("statement_timeout")
        )
    }

    /// After a `SET statement_timeout` was applied: a value datafusion-postgres kept no limit for
    /// is a 0, which lifts the node's timeout too.
    fn note_timeout(statement: &Statement, client: &mut dyn HookClient) {
        if Self::sets_timeout(statement) {
            let metadata = client.metadata_mut();
            if metadata.contains_key(SESSION_TIMEOUT) {
                metadata.remove(SESSION_NO_TIMEOUT);
            } else {
                metadata.insert(SESSION_NO_TIMEOUT.to_string(), "on".to_string());
            }
        }
    }
}

#[async_trait]
impl QueryHook for SetHook {
    async fn handle_simple_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Some(answer) = Self::zone(statement, ctx, client).await {
            return Some(answer);
        }
        if let Some(answer) = Self::namespaced(statement, ctx).await {
            return Some(answer);
        }
        if let Some(answer) = Self::show(statement, ctx) {
            return Some(answer);
        }
        let answer = SetShowHook
            .handle_simple_query(statement, ctx, client)
            .await;
        if matches!(answer, Some(Ok(_))) {
            Self::note_timeout(statement, client);
        }
        answer
    }

    async fn handle_extended_parse_query(
        &self,
        statement: &Statement,
        ctx: &SessionContext,
        client: &(dyn ClientInfo + Send + Sync),
    ) -> Option<PgWireResult<LogicalPlan>> {
        SetShowHook
            .handle_extended_parse_query(statement, ctx, client)
            .await
    }

    async fn handle_extended_query(
        &self,
        statement: &Statement,
        plan: &LogicalPlan,
        params: &ParamValues,
        ctx: &SessionContext,
        client: &mut dyn HookClient,
    ) -> Option<PgWireResult<Response>> {
        if let Some(answer) = Self::zone(statement, ctx, client).await {
            return Some(answer);
        }
        if let Some(answer) = Self::namespaced(statement, ctx).await {
            return Some(answer);
        }
        if let Some(answer) = Self::show(statement, ctx) {
            return Some(answer);
        }
        let answer = SetShowHook
            .handle_extended_query(statement, plan, params, ctx, client)
            .await;
        if matches!(answer, Some(Ok(_))) {
            Self::note_timeout(statement, client);
        }
        answer
    }
}

/// Serves the Postgres protocol on `listener` with `engine` until `shutdown` completes.
pub async fn serve(
    engine: Engine,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> datafusion::error::Result<()> {
    // Every session's context shares the engine's catalogs, `pg_catalog` among them.
    setup_pg_catalog(&engine.context(), CATALOG, EmptyContextProvider).map_err(|e| *e)?;
    let cancels = Arc::new(Cancels::default());
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = connection(engine.session(), cancels.clone());
                    tokio::spawn(async move {
                        if let Err(e) = datafusion_postgres::pgwire::tokio::process_socket(socket, None, handlers).await {
                            tracing::debug!(%peer, error = %e, "postgres connection ended");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "accepting a postgres connection"),
            },
            _ = &mut shutdown => return Ok(()),
        }
    }
}

/// The handlers of one connection, over `session`: its `SET`s change its own settings only.
fn connection(session: Engine, cancels: Arc<Cancels>) -> Arc<Handlers> {
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(CatalogHook {
            engine: session.clone(),
        }),
        Arc::new(CursorStatementHook),
        Arc::new(SetHook),
        Arc::new(TransactionStatementHook),
    ];
    let service = Arc::new(DfSessionService::new_with_hooks(session.context(), hooks));
    Arc::new(Handlers {
        simple: Arc::new(SimpleQueries {
            engine: session.clone(),
            service: service.clone(),
        }),
        extended: Arc::new(ExtendedQueries {
            engine: session.clone(),
            parser: Arc::new(WeirParser {
                engine: session,
                inner: service.query_parser(),
            }),
            service,
        }),
        cancels,
    })
}
