//! Running SQL on the cluster: statements go to the client's node, results stream back as Arrow
//! record batches.

use std::collections::BTreeMap;

use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::record_batch::RecordBatch;
use tonic::Streaming;
use weir_proto::v1::sql_client::SqlClient;
use weir_proto::v1::sql_response::Part;
use weir_proto::v1::{SqlRequest, SqlResponse};

use crate::client::Client;
use crate::error::{ClientError, Result};

/// Largest result part the client accepts.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// One event of a running SQL request.
#[derive(Debug)]
pub enum SqlEvent {
    /// A statement's result begins: its columns.
    Schema {
        /// The statement (from 0).
        statement: u32,
        /// The result's columns.
        schema: SchemaRef,
    },
    /// Rows of the current statement's result.
    Batch {
        /// The statement (from 0).
        statement: u32,
        /// The rows.
        batch: RecordBatch,
    },
    /// A statement finished.
    Done {
        /// The statement (from 0).
        statement: u32,
        /// Its command (`SELECT`, `CREATE TABLE`, ...).
        tag: String,
        /// Rows it returned.
        rows: u64,
        /// Time it took on the node, in microseconds.
        elapsed_micros: u64,
        /// What it reports besides its rows (records of a topic it skipped).
        warnings: Vec<String>,
        /// The session's settings after it, where they differ from the node's: what
        /// [`SqlSession::settings`] becomes.
        settings: BTreeMap<String, String>,
    },
}

/// What a client keeps across SQL requests, as a Postgres connection keeps it: the settings its
/// `SET` statements made (sent with each request, since a request runs in a session of its own
/// on the node) and how long each statement may run.
#[derive(Debug, Clone, Default)]
pub struct SqlSession {
    /// Longest each statement may run before it is stopped with an error (DEADLINE_EXCEEDED);
    /// none: the node's default.
    pub timeout: Option<std::time::Duration>,
    /// The session's settings, as the last statement's [`SqlEvent::Done`] gave them.
    pub settings: BTreeMap<String, String>,
}

/// The results of a SQL request as they arrive; dropping it cancels what still runs.
pub struct SqlStream {
    addr: String,
    inner: Streaming<SqlResponse>,
    pending: std::collections::VecDeque<SqlEvent>,
    /// The statement whose rows have begun and whose end has not been reported yet.
    open: Option<u32>,
}

impl SqlStream {
    /// The next event, or none once every statement has finished.
    pub async fn next(&mut self) -> Result<Option<SqlEvent>> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Ok(Some(e));
            }
            let msg = match self.inner.message().await {
                Ok(Some(m)) => m,
                Ok(None) => match self.open {
                    // A result cut short is never handed over as if it were whole.
                    Some(statement) => {
                        return Err(ClientError::Transport {
                            addr: self.addr.clone(),
                            message: format!(
                                "the result of statement {} ended before it was complete",
                                statement + 1
                            ),
                        })
                    }
                    None => return Ok(None),
                },
                Err(s) => return Err(ClientError::from_status(&self.addr, &s)),
            };
            let statement = msg.statement;
            self.open = match &msg.part {
                Some(Part::Done(_)) => None,
                _ => Some(statement),
            };
            match msg.part {
                Some(Part::Arrow(bytes)) => {
                    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)
                        .map_err(|e| bad_part(&e))?;
                    let schema = reader.schema();
                    let mut batches = Vec::new();
                    for b in reader {
                        batches.push(b.map_err(|e| bad_part(&e))?);
                    }
                    if batches.is_empty() {
                        self.pending
                            .push_back(SqlEvent::Schema { statement, schema });
                    }
                    for batch in batches {
                        self.pending.push_back(SqlEvent::Batch { statement, batch });
                    }
                }
                Some(Part::Done(d)) => self.pending.push_back(SqlEvent::Done {
                    statement,
                    tag: d.tag,
                    rows: d.rows,
                    elapsed_micros: d.elapsed_micros,
                    warnings: d.warnings,
                    settings: d.settings.into_iter().collect(),
                }),
                None => {}
            }
        }
    }
}

fn bad_part(e: &dyn std::fmt::Display) -> ClientError {
    ClientError::InvalidArgument(format!("the node sent a result that does not decode: {e}"))
}

impl Client {
    /// Runs the statements of `sql` (separated by `;`) on the client's node, in order. Not
    /// retried: a statement may have written before a failure.
    pub async fn sql(&self, sql: &str) -> Result<SqlStream> {
        self.sql_with_timeout(sql, None).await
    }

    /// As [`Client::sql`], each statement stopped with an error (DEADLINE_EXCEEDED) when it runs
    /// longer than `timeout` (none: the node's default).
    pub async fn sql_with_timeout(
        &self,
        sql: &str,
        timeout: Option<std::time::Duration>,
    ) -> Result<SqlStream> {
        let session = SqlSession {
            timeout,
            ..SqlSession::default()
        };
        self.sql_in(sql, &session).await
    }

    /// As [`Client::sql`], in `session`: its settings apply before the statements run (a bad
    /// one fails the request, naming it), and its timeout to each of them.
    pub async fn sql_in(&self, sql: &str, session: &SqlSession) -> Result<SqlStream> {
        let addr = self.seed().to_string();
        let channel = self.pool().channel(&addr)?;
        let mut client = SqlClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let inner = client
            .execute(SqlRequest {
                sql: sql.to_string(),
                // At least a millisecond: 0 would mean the node's default.
                timeout_ms: session.timeout.map_or(0, |t| (t.as_millis() as u64).max(1)),
                settings: session.settings.clone().into_iter().collect(),
            })
            .await
            .map_err(|s| ClientError::from_status(&addr, &s))?
            .into_inner();
        Ok(SqlStream {
            addr,
            inner,
            pending: Default::default(),
            open: None,
        })
    }
}
