//! The node's HTTP face: record ingest (the Flume / Flask HTTP source), health, readiness, metrics.
//!
//! `POST /v1/topics/{topic}/records` takes a JSON array or NDJSON (one record per element or line).
//! A JSON string element becomes its text; any other JSON value its compact JSON text. Query
//! parameters: `key` (records get this key and so one partition), `partition` (explicit). The answer
//! lists the offsets given to the records. A body may be at most [`MAX_INGEST_BODY_BYTES`] and hold
//! at most [`MAX_INGEST_RECORDS`] records.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};
use serde::Deserialize;
use tonic::Code;
use weir_proto::batch::BatchBuilder;
use weir_proto::v1::log_server::Log;
use weir_proto::v1::{Acks, ProduceRequest};

use crate::cluster::NodeContext;
use crate::log::service::{LogService, MAX_BATCH_BYTES};

/// Largest ingest body accepted; larger ones are refused with 413 before they are read in full.
pub const MAX_INGEST_BODY_BYTES: usize = 2 << 20;
/// Most records one ingest body may hold: each costs far more memory than its bytes in the body
/// (`[1,1,1,...]` is two bytes a record), so the count is bounded on its own.
pub const MAX_INGEST_RECORDS: usize = 100_000;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Node context.
    pub ctx: Arc<NodeContext>,
    /// The log service the ingest endpoint produces through.
    pub log: Arc<LogService>,
    /// Round-robin cursor for keyless records.
    pub next_partition: Arc<AtomicU32>,
}

/// The HTTP routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route(
            "/v1/topics/{topic}/records",
            post(ingest).layer(DefaultBodyLimit::max(MAX_INGEST_BODY_BYTES)),
        )
        .with_state(state)
}

async fn health() -> &'static str {
    "ok\n"
}

async fn ready(State(s): State<HttpState>) -> Response {
    let leader = s.ctx.metadata_leader_addr();
    let member = s
        .ctx
        .registry
        .catalog()
        .map(|c| c.nodes.contains_key(&s.ctx.node_id))
        .unwrap_or(false);
    match (leader, member) {
        (Ok(_), true) => (StatusCode::OK, "ready\n").into_response(),
        (Err(e), _) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response()
        }
        (Ok(_), false) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: this node is not in the catalog yet\n",
        )
            .into_response(),
    }
}

async fn metrics(State(s): State<HttpState>) -> Response {
    let st = s.ctx.engine.stats();
    crate::metrics::record_engine(
        st.fsyncs.load(Ordering::Relaxed),
        st.synced_appends.load(Ordering::Relaxed),
    );
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

/// Query parameters of the ingest endpoint.
#[derive(Debug, Deserialize)]
pub struct IngestParams {
    key: Option<String>,
    partition: Option<u32>,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(serde_json::json!({ "error": msg.into() }))).into_response()
}

/// Splits a body into record values: a JSON array, or one JSON value per line.
///
/// Each element becomes its record as soon as it is parsed, so the body is never held as one JSON
/// tree, and parsing stops at [`MAX_INGEST_RECORDS`].
fn parse_records(body: &[u8], content_type: &str) -> Result<Vec<Vec<u8>>, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let trimmed = text.trim_start();
    let too_many = || format!("body holds more than {MAX_INGEST_RECORDS} records");
    if trimmed.starts_with('[') && !content_type.contains("ndjson") {
        let mut array = RecordArray {
            records: Vec::new(),
            over_limit: false,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = (&mut de)
            .deserialize_seq(&mut array)
            .and_then(|()| de.end());
        return match parsed {
            Ok(()) => Ok(array.records),
            Err(_) if array.over_limit => Err(too_many()),
            Err(e) => Err(format!("body is not a JSON array: {e}")),
        };
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() == MAX_INGEST_RECORDS {
            return Err(too_many());
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| format!("line {} is not JSON: {e}", i + 1))?;
        out.push(as_record(v));
    }
    Ok(out)
}

/// A record's value: a JSON string's text, or any other JSON value's compact JSON text.
fn as_record(v: serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Collects the elements of a JSON array as records, one element at a time.
struct RecordArray {
    records: Vec<Vec<u8>>,
    /// Set when the array has more than [`MAX_INGEST_RECORDS`] elements.
    over_limit: bool,
}

impl<'de> Visitor<'de> for &mut RecordArray {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            if self.records.len() == MAX_INGEST_RECORDS {
                self.over_limit = true;
                return Err(A::Error::custom("too many records"));
            }
            self.records.push(as_record(v));
        }
        Ok(())
    }
}

async fn ingest(
    State(s): State<HttpState>,
    Path(topic): Path<String>,
    Query(params): Query<IngestParams>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let records = match parse_records(&body, content_type) {
        Ok(r) if r.is_empty() => return error(StatusCode::BAD_REQUEST, "body holds no records"),
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let catalog = match s.ctx.registry.catalog() {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let Some(t) = catalog.topics.get(&topic) else {
        return error(
            StatusCode::NOT_FOUND,
            format!("topic '{topic}' does not exist"),
        );
    };
    let partitions = t.groups.len() as u32;
    let partition = match (params.partition, &params.key) {
        (Some(p), _) if p >= partitions => {
            return error(
                StatusCode::NOT_FOUND,
                format!("topic '{topic}' has no partition {p}"),
            )
        }
        (Some(p), _) => p,
        (None, Some(k)) => crc32fast::hash(k.as_bytes()) % partitions,
        (None, None) => s.next_partition.fetch_add(1, Ordering::Relaxed) % partitions,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let key = params.key.as_deref().map(str::as_bytes);
    let mut offsets = Vec::with_capacity(records.len());
    let mut builder = BatchBuilder::new();
    let mut batches = Vec::new();
    for r in &records {
        if builder.body_len() + r.len() > MAX_BATCH_BYTES / 2 && !builder.is_empty() {
            batches.push(std::mem::take(&mut builder).finish());
        }
        builder.push(key, r, now);
    }
    batches.push(builder.finish());
    for batch in batches {
        let req = tonic::Request::new(ProduceRequest {
            topic: topic.clone(),
            partition,
            batch,
            acks: Acks::All as i32,
            producer_id: 0,
            sequence: 0,
        });
        match s.log.produce(req).await {
            Ok(resp) => {
                let r = resp.into_inner();
                offsets.extend(r.base_offset..r.base_offset + u64::from(r.count));
            }
            Err(status) => {
                let code = match status.code() {
                    Code::NotFound => StatusCode::NOT_FOUND,
                    Code::InvalidArgument => StatusCode::BAD_REQUEST,
                    Code::Unavailable | Code::FailedPrecondition => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                return error(
                    code,
                    format!(
                        "{} ({} of {} records were written before the failure)",
                        status.message(),
                        offsets.len(),
                        records.len()
                    ),
                );
            }
        }
    }
    Json(serde_json::json!({
        "topic": topic,
        "partition": partition,
        "count": offsets.len(),
        "offsets": offsets,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_and_ndjson_become_records() {
        let r = parse_records(br#"["a", {"x": 1}, 3]"#, "application/json").unwrap();
        assert_eq!(
            r,
            vec![b"a".to_vec(), br#"{"x":1}"#.to_vec(), b"3".to_vec()]
        );
        let r = parse_records(b"{\"a\":1}\n\n\"b\"\n", "application/x-ndjson").unwrap();
        assert_eq!(r, vec![br#"{"a":1}"#.to_vec(), b"b".to_vec()]);
        assert!(parse_records(b"[1, 2", "application/json").is_err());
        let e = parse_records(b"{\"a\":1}\nnot json\n", "").unwrap_err();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bodies_with_too_many_records_are_refused() {
        let at_limit = format!("[{}1]", "1,".repeat(MAX_INGEST_RECORDS - 1));
        let r = parse_records(at_limit.as_bytes(), "application/json").unwrap();
        assert_eq!(r.len(), MAX_INGEST_RECORDS);
        let over = format!("[{}1]", "1,".repeat(MAX_INGEST_RECORDS));
        let e = parse_records(over.as_bytes(), "application/json").unwrap_err();
        assert!(e.contains("more than"), "{e}");
        let over = "1\n".repeat(MAX_INGEST_RECORDS + 1);
        let e = parse_records(over.as_bytes(), "application/x-ndjson").unwrap_err();
        assert!(e.contains("more than"), "{e}");
    }
}
