//! One Kafka client connection: reads size-prefixed request frames and answers them one at a time,
//! in order, as Kafka brokers do: that order is what keeps a non-idempotent producer's batches in
//! the order it sent them, and clients pipeline across partitions inside one request instead.
//!
//! A frame that cannot be read (too large, an unknown API, a version not served, a body that does
//! not decode) closes this connection with a log line; the listener and every other connection go
//! on. `ApiVersions` at a version not served is answered with `UNSUPPORTED_VERSION` and the served
//! versions, so a newer client can step down.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::Instrument;

use super::{
    configs, epochs, errors, fetch, members, offsets, produce, topics, versions, KafkaState,
};

/// Largest request frame accepted (Kafka's `socket.request.max.bytes`).
pub const MAX_FRAME: usize = 100 << 20;

/// Serves one connection until the client closes it or sends something unreadable.
pub async fn run(state: KafkaState, mut socket: TcpStream, peer: SocketAddr) {
    loop {
        let len = match socket.read_i32().await {
            Ok(n) => n,
            Err(_) => return,
        };
        if len < 0 || len as usize > MAX_FRAME {
            tracing::warn!(%peer, len, "Kafka request frame of bad size; closing the connection");
            return;
        }
        let mut frame = BytesMut::zeroed(len as usize);
        if socket.read_exact(&mut frame).await.is_err() {
            return;
        }
        let answer = match read_request(frame.freeze()) {
            Ok(Request::Served(served)) => {
                let (header, key, body) = *served;
                let version = header.request_api_version;
                let span = tracing::debug_span!("kafka", api = ?key, version, correlation = header.correlation_id);
                let client = header.client_id.as_deref().unwrap_or("").to_string();
                let caller = Caller {
                    client: &client,
                    host: format!("/{}", peer.ip()),
                };
                match dispatch(&state, body, version, &caller)
                    .instrument(span)
                    .await
                {
                    Some(resp) => encode_answer(key, version, header.correlation_id, &resp),
                    None => continue,
                }
            }
            Ok(Request::VersionsUnsupported(correlation)) => {
                let mut resp = versions::api_versions();
                resp.error_code = errors::UNSUPPORTED_VERSION;
                encode_answer(
                    ApiKey::ApiVersions,
                    0,
                    correlation,
                    &ResponseKind::ApiVersions(resp),
                )
            }
            Err(why) => {
                tracing::warn!(%peer, "unreadable Kafka request ({why}); closing the connection");
                return;
            }
        };
        match answer {
            Ok(frame) => {
                if socket.write_all(&frame).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(%peer, error = %e, "encoding a Kafka answer failed; closing the connection");
                return;
            }
        }
    }
}

/// A request as read off the wire.
enum Request {
    /// A request this node serves: its header, API and body.
    Served(Box<(RequestHeader, ApiKey, RequestKind)>),
    /// `ApiVersions` at a version this node does not serve (correlation id).
    VersionsUnsupported(i32),
}

/// Reads a request frame: API key and version first (they decide how the rest reads).
fn read_request(mut frame: Bytes) -> Result<Request, String> {
    if frame.len() < 8 {
        return Err(format!(
            "frame of {} bytes has no request header",
            frame.len()
        ));
    }
    let key_num = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let key = ApiKey::try_from(key_num).map_err(|_| format!("unknown API key {key_num}"))?;
    if !versions::serves(key, version) {
        if key == ApiKey::ApiVersions {
            return Ok(Request::VersionsUnsupported(correlation));
        }
        return Err(format!("{key:?} version {version} is not served"));
    }
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(|e| format!("bad {key:?} header: {e}"))?;
    let body = RequestKind::decode(key, &mut frame, version)
        .map_err(|e| format!("bad {key:?} v{version} body: {e}"))?;
    if frame.has_remaining() {
        return Err(format!(
            "{} bytes after the {key:?} v{version} body",
            frame.remaining()
        ));
    }
    Ok(Request::Served(Box::new((header, key, body))))
}

/// A size-prefixed answer frame.
fn encode_answer(
    key: ApiKey,
    version: i16,
    correlation: i32,
    resp: &ResponseKind,
) -> anyhow::Result<Bytes> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation)
        .encode(&mut buf, key.response_header_version(version))?;
    resp.encode(&mut buf, version)?;
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Who sent a request: its client id and the address it connected from (as Kafka shows them).
struct Caller<'a> {
    client: &'a str,
    host: String,
}

/// Serves one request; None when the request wants no answer (a produce with `acks=0`).
async fn dispatch(
    state: &KafkaState,
    req: RequestKind,
    version: i16,
    caller: &Caller<'_>,
) -> Option<ResponseKind> {
    Some(match req {
        RequestKind::ApiVersions(_) => ResponseKind::ApiVersions(versions::api_versions()),
        RequestKind::Metadata(r) => {
            ResponseKind::Metadata(topics::metadata(state, r, version).await)
        }
        RequestKind::CreateTopics(r) => ResponseKind::CreateTopics(topics::create(state, r).await),
        RequestKind::DeleteTopics(r) => ResponseKind::DeleteTopics(topics::delete(state, r).await),
        RequestKind::InitProducerId(r) => ResponseKind::InitProducerId(topics::init_producer_id(r)),
        RequestKind::Produce(r) => ResponseKind::Produce(produce::produce(state, r).await?),
        RequestKind::Fetch(r) => ResponseKind::Fetch(fetch::fetch(state, r).await),
        RequestKind::ListOffsets(r) => {
            ResponseKind::ListOffsets(fetch::list_offsets(state, r, version).await)
        }
        RequestKind::FindCoordinator(r) => {
            ResponseKind::FindCoordinator(members::find_coordinator(state, r))
        }
        RequestKind::JoinGroup(r) => ResponseKind::JoinGroup(
            members::join(state, r, version, caller.client, &caller.host).await,
        ),
        RequestKind::SyncGroup(r) => ResponseKind::SyncGroup(members::sync(state, r).await),
        RequestKind::Heartbeat(r) => ResponseKind::Heartbeat(members::heartbeat(state, r).await),
        RequestKind::LeaveGroup(r) => {
            ResponseKind::LeaveGroup(members::leave(state, r, version).await)
        }
        RequestKind::ListGroups(_) => ResponseKind::ListGroups(members::list(state).await),
        RequestKind::DescribeGroups(r) => {
            ResponseKind::DescribeGroups(members::describe(state, r).await)
        }
        RequestKind::OffsetForLeaderEpoch(r) => {
            ResponseKind::OffsetForLeaderEpoch(epochs::offset_for_leader_epoch(state, r).await)
        }
        RequestKind::DescribeConfigs(r) => {
            ResponseKind::DescribeConfigs(configs::describe(state, r).await)
        }
        RequestKind::OffsetCommit(r) => ResponseKind::OffsetCommit(offsets::commit(state, r).await),
        RequestKind::OffsetFetch(r) => ResponseKind::OffsetFetch(offsets::fetch(state, r).await),
        // `versions::serves` lets through only the APIs above.
        _ => return None,
    })
}
