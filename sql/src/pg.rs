//! The Postgres wire protocol on a node, so `psql`, psycopg and dashboards query Weir: the
//! protocol and the `pg_catalog` tables come from `datafusion-postgres`; statements that change
//! the cluster's catalog are handled by the engine as on every other path.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::common::{DFSchema, ParamValues};
use datafusion::logical_expr::{EmptyRelation, LogicalPlan};
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::Statement;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::hooks::cursor::CursorStatementHook;
use datafusion_postgres::hooks::set_show::SetShowHook;
use datafusion_postgres::hooks::transactions::TransactionStatementHook;
use datafusion_postgres::hooks::HookClient;
use datafusion_postgres::pgwire::api::auth::noop::NoopStartupHandler;
use datafusion_postgres::pgwire::api::auth::StartupHandler;
use datafusion_postgres::pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use datafusion_postgres::pgwire::api::results::{Response, Tag};
use datafusion_postgres::pgwire::api::{ClientInfo, PgWireServerHandlers};
use datafusion_postgres::pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use datafusion_postgres::{DfSessionService, QueryHook};
use tokio::net::TcpListener;

use crate::engine::{Engine, Output, CATALOG};

/// Accepts every user: Weir has no users or passwords yet; bind the port to loopback or a
/// private network.
struct Startup;

impl NoopStartupHandler for Startup {}

/// The handlers of one server: DataFusion's session service for queries.
struct Handlers {
    service: Arc<DfSessionService>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.service.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.service.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        Arc::new(Startup)
    }
}

/// Runs `CREATE TABLE` / `DROP TABLE` on the cluster, for both query protocols.
struct CatalogHook {
    engine: Engine,
}

fn pg_error(e: datafusion::error::DataFusionError) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "ERROR".into(),
        "XX000".into(),
        e.strip_backtrace(),
    )))
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

/// Serves the Postgres protocol on `listener` with `engine` until `shutdown` completes.
pub async fn serve(
    engine: Engine,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> datafusion::error::Result<()> {
    let ctx = engine.context();
    setup_pg_catalog(&ctx, CATALOG, EmptyContextProvider).map_err(|e| *e)?;
    let hooks: Vec<Arc<dyn QueryHook>> = vec![
        Arc::new(CatalogHook {
            engine: engine.clone(),
        }),
        Arc::new(CursorStatementHook),
        Arc::new(SetShowHook),
        Arc::new(TransactionStatementHook),
    ];
    let handlers = Arc::new(Handlers {
        service: Arc::new(DfSessionService::new_with_hooks(ctx, hooks)),
    });
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let handlers = handlers.clone();
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
