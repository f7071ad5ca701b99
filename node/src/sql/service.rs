//! The `Sql` gRPC service: runs statements on this node's engine and streams the rows back as
//! Arrow IPC, one statement after another.

use std::time::{Duration, Instant};

use datafusion::arrow::datatypes::Schema;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;
use weir_proto::v1::sql_response::Part;
use weir_proto::v1::sql_server::Sql;
use weir_proto::v1::{SqlRequest, SqlResponse, StatementDone};
use weir_sql::cancel::{Stop, Stopped};
use weir_sql::{ClusterError, Engine, Output};

/// The `Sql` service over one engine.
pub struct SqlService {
    engine: Engine,
}

impl SqlService {
    /// The service running statements on `engine`.
    pub fn new(engine: Engine) -> SqlService {
        SqlService { engine }
    }
}

/// The gRPC status a failed statement answers with; its message is the one Postgres clients see
/// ([`weir_sql::sqlstate::message`]).
pub fn status_of(e: DataFusionError) -> Status {
    let message = weir_sql::sqlstate::message(&e);
    if let Some(c) = ClusterError::carried(&e) {
        return match c {
            ClusterError::NotFound(_) => Status::not_found(message),
            ClusterError::AlreadyExists(_) => Status::already_exists(message),
            ClusterError::Invalid(_) => Status::invalid_argument(message),
            ClusterError::Unavailable(_) => Status::unavailable(message),
        };
    }
    match e.find_root() {
        // A task's node that could not be reached: retryable as the cluster's own
        // unavailability is.
        DataFusionError::External(inner) => match inner.downcast_ref::<Status>() {
            Some(s) if matches!(s.code(), Code::Cancelled | Code::DeadlineExceeded) => {
                Status::cancelled(message)
            }
            Some(_) => Status::unavailable(message),
            // A row its table refuses (a NULL key, a value out of range).
            None if inner.is::<weir_sql::types::RowError>() => Status::invalid_argument(message),
            None => Status::internal(message),
        },
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::Execution(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::ArrowError(..) => Status::invalid_argument(message),
        DataFusionError::NotImplemented(_) => Status::unimplemented(message),
        DataFusionError::ResourcesExhausted(_) => Status::resource_exhausted(message),
        _ => Status::internal(message),
    }
}

/// `batches` as one Arrow IPC stream with `schema`.
fn ipc(schema: &Schema, batches: &[RecordBatch]) -> Result<bytes::Bytes, Status> {
    let mut out = Vec::new();
    let encode = |out: &mut Vec<u8>| -> Result<(), datafusion::arrow::error::ArrowError> {
        let mut w = StreamWriter::try_new(out, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()
    };
    encode(&mut out).map_err(|e| Status::internal(format!("encoding the result: {e}")))?;
    Ok(out.into())
}

/// The command a statement's rows answer (its first keyword).
fn tag_of(sql: &str) -> String {
    sql.split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches('(')
        .to_ascii_uppercase()
}

/// Runs one statement in `session`, sending its parts, until it ends, its caller goes away (then
/// it returns false) or it runs past `timeout`; whatever it was doing is dropped, its remote
/// scans too.
async fn run_statement(
    engine: &Session<'_>,
    index: u32,
    stmt: weir_sql::Statement,
    tx: &mpsc::Sender<Result<SqlResponse, Status>>,
    timeout: Option<Duration>,
) -> Result<bool, Status> {
    let stop = Stop::new(timeout, None);
    tokio::select! {
        ran = stop.run(statement_parts(engine, index, stmt, tx)) => match ran {
            Ok(ran) => ran,
            Err(why @ Stopped::TimedOut(_)) => Err(Status::deadline_exceeded(why.message())),
            Err(why @ Stopped::Cancelled) => Err(Status::cancelled(why.message())),
        },
        _ = tx.closed() => Ok(false),
    }
}

/// The session a request runs in, and the node's engine it started from.
struct Session<'a> {
    /// The request's own engine: its `SET`s change only it.
    session: Engine,
    /// The node's engine, whose settings the session's are told apart from.
    node: &'a Engine,
}

/// Runs one statement and sends its parts; returns false when the caller went away.
async fn statement_parts(
    engine: &Session<'_>,
    index: u32,
    stmt: weir_sql::Statement,
    tx: &mpsc::Sender<Result<SqlResponse, Status>>,
) -> Result<bool, Status> {
    let started = Instant::now();
    let tag = tag_of(&stmt.to_string());
    let send = |part| SqlResponse {
        statement: index,
        part: Some(part),
    };
    let (tag, rows, warnings) = match engine.session.run(stmt).await.map_err(status_of)? {
        Output::Done(tag) => (tag, 0, Vec::new()),
        Output::Rows(mut stream, warnings) => {
            let schema = stream.schema();
            if tx
                .send(Ok(send(Part::Arrow(ipc(&schema, &[])?))))
                .await
                .is_err()
            {
                return Ok(false);
            }
            let mut rows = 0u64;
            while let Some(batch) = stream.next().await {
                let batch = batch.map_err(status_of)?;
                if batch.num_rows() == 0 {
                    continue;
                }
                rows += batch.num_rows() as u64;
                let part = Part::Arrow(ipc(&schema, &[batch])?);
                // A closed channel: the client cancelled; dropping the stream stops the query.
                if tx.send(Ok(send(part))).await.is_err() {
                    return Ok(false);
                }
            }
            (tag, rows, warnings.lines())
        }
    };
    let done = Part::Done(StatementDone {
        tag,
        rows,
        elapsed_micros: started.elapsed().as_micros() as u64,
        warnings,
        settings: weir_sql::session::changed(&engine.session.context(), &engine.node.context())
            .into_iter()
            .collect(),
    });
    Ok(tx.send(Ok(send(done))).await.is_ok())
}

#[tonic::async_trait]
impl Sql for SqlService {
    type ExecuteStream = ReceiverStream<Result<SqlResponse, Status>>;

    async fn execute(
        &self,
        request: Request<SqlRequest>,
    ) -> Result<Response<Self::ExecuteStream>, Status> {
        let SqlRequest {
            sql,
            timeout_ms,
            settings,
        } = request.into_inner();
        let timeout = match timeout_ms {
            0 => self.engine.statement_timeout(),
            ms => Some(Duration::from_millis(ms)),
        };
        // A syntax error anywhere fails the request before anything runs.
        let statements = self.engine.parse(&sql).map_err(status_of)?;
        if statements.is_empty() {
            return Err(Status::invalid_argument("no SQL statement given"));
        }
        let session = self.engine.session();
        let settings = settings.into_iter().collect();
        weir_sql::session::apply(&session.context(), &settings)
            .await
            .map_err(status_of)?;
        let (tx, rx) = mpsc::channel(4);
        let node = self.engine.clone();
        let span = tracing::debug_span!("sql", statements = statements.len());
        tokio::spawn(
            async move {
                let engine = Session {
                    session,
                    node: &node,
                };
                for (i, stmt) in statements.into_iter().enumerate() {
                    match run_statement(&engine, i as u32, stmt, &tx, timeout).await {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
