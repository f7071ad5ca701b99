//! The node's HTTP face: record ingest (the Flume / Flask HTTP source), health, readiness, metrics.
//!
//! `POST /v1/topics/{topic}/records` takes a JSON array or NDJSON (one record per element or line).
//! A JSON string element becomes its text; any other JSON value its compact JSON text. Query
//! parameters: `key` (records get this key and so one partition), `partition` (explicit). The answer
//! lists the offsets given to the records. A body may be at most [`MAX_INGEST_BODY_BYTES`] and hold
//! at most [`MAX_INGEST_RECORDS`](weir_proto::ingest::MAX_INGEST_RECORDS) records; the body is
//! split into records by [`weir_proto::ingest::parse_records`]. A request rides out a leader
//! election of its partition (it is answered once a new leader has stored its records, within
//! [`INGEST_RETRY_FOR`](crate::log::ingest::INGEST_RETRY_FOR)); its records are stored once
//! however often a batch had to be sent. Concurrent requests to one partition are stored together
//! in one batch (see [`crate::log::ingest`]); the answer's `offsets` is `null` in the rare case a
//! batch's offsets were lost with its first answer (the records are stored).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tonic::Code;
use weir_proto::ingest::parse_records;

use crate::cluster::NodeContext;
use crate::log::ingest::{IngestLanes, IngestRecords, Stored};

/// Largest ingest body accepted; larger ones are refused with 413 before they are read in full.
pub const MAX_INGEST_BODY_BYTES: usize = 2 << 20;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct HttpState {
    /// Node context.
    pub ctx: Arc<NodeContext>,
    /// The per-partition lanes the ingest endpoint produces through.
    pub lanes: IngestLanes,
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
        Err(e) => return error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let catalog = match s.ctx.catalog_knowing_topic(&topic).await {
        Ok(c) => c,
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    };
    let Some(t) = catalog.topics.get(&topic) else {
        return error(StatusCode::NOT_FOUND, catalog.no_topic(&topic));
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
    let count = records.len();
    let records = IngestRecords {
        key: params.key.map(String::into_bytes),
        values: records,
        timestamp_ms: now,
    };
    let offsets = match s.lanes.produce(&topic, partition, records).await {
        Stored::All(offsets) => offsets,
        Stored::Failed { status, written } => {
            let code = match status.code() {
                Code::NotFound => StatusCode::NOT_FOUND,
                Code::InvalidArgument => StatusCode::BAD_REQUEST,
                Code::Unavailable | Code::FailedPrecondition => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            return error(
                code,
                format!(
                    "{} ({written} of {count} records were written before the failure)",
                    status.message(),
                ),
            );
        }
    };
    Json(serde_json::json!({
        "topic": topic,
        "partition": partition,
        "count": count,
        "offsets": offsets,
    }))
    .into_response()
}
