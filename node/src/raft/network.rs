//! Outgoing Raft traffic: openraft's network for one group, over the node's shared gRPC channels.
//!
//! Messages are bincode-encoded openraft types inside a `RaftRequest` that names the group, so every
//! group of every node shares one HTTP/2 connection per peer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_proto::v1::raft_transport_client::RaftTransportClient;
use weir_proto::v1::{RaftReply, RaftRequest, SnapshotChunk, SnapshotFromRequest};
use weir_storage::engine::{multi_threaded, start_on_blocking_thread};
use weir_storage::snapshot::{SnapshotData, CHUNK_SIZE};
use weir_storage::{Engine, TypeConfig};

use crate::peers::{Lane, Peers};

/// Creates the network clients of one group.
#[derive(Clone)]
pub struct GroupNetwork {
    group: u64,
    peers: Peers,
    engine: Engine,
}

impl GroupNetwork {
    /// The network of `group`, whose snapshots are read from `engine` when sent.
    pub fn new(group: u64, peers: Peers, engine: Engine) -> GroupNetwork {
        GroupNetwork {
            group,
            peers,
            engine,
        }
    }
}

/// The client of one group towards one peer.
pub struct PeerLink {
    group: u64,
    addr: String,
    peers: Peers,
    engine: Engine,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> PeerLink {
        PeerLink {
            group: self.group,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
            engine: self.engine.clone(),
        }
    }
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

impl PeerLink {
    fn client(
        &self,
        lane: Lane,
    ) -> Result<RaftTransportClient<tonic::transport::Channel>, RPCError<TypeConfig>> {
        let ch = self.peers.lane(&self.addr, lane).map_err(unreachable)?;
        Ok(RaftTransportClient::new(ch)
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20))
    }

    /// The gRPC request carrying `rpc` to this group's replica, given up on after the RPC's TTL.
    fn request<T: Serialize>(
        &self,
        rpc: &T,
        option: RPCOption,
    ) -> Result<tonic::Request<RaftRequest>, RPCError<TypeConfig>> {
        let payload = bincode::serialize(rpc).map_err(unreachable)?;
        let mut req = tonic::Request::new(RaftRequest {
            group_id: self.group,
            payload: payload.into(),
        });
        req.set_timeout(option.hard_ttl());
        Ok(req)
    }

    fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, RPCError<TypeConfig>> {
        let r: Result<T, String> = bincode::deserialize(payload)
            .map_err(|e| RPCError::Network(NetworkError::from_string(e.to_string())))?;
        r.map_err(|e| RPCError::Network(NetworkError::from_string(e)))
    }
}

/// The results a stream of appends yields, in order.
type AppendResults<'s> =
    BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>>;

/// The appends of one stream still unanswered: when each was sent, oldest first.
#[derive(Default)]
struct Unanswered {
    sent: Mutex<VecDeque<tokio::time::Instant>>,
    /// Signalled when an append is sent while none was outstanding, so an idle stream waits
    /// without a timer.
    first: tokio::sync::Notify,
}

impl Unanswered {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<tokio::time::Instant>> {
        // Nothing is left half-done in the queue by a panic while it was held.
        self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sent(&self) {
        let mut q = self.queue();
        q.push_back(tokio::time::Instant::now());
        if q.len() == 1 {
            self.first.notify_one();
        }
    }

    /// Takes the oldest append off the queue, its answer having come, and returns when it was
    /// sent.
    fn answered(&self) -> Option<tokio::time::Instant> {
        self.queue().pop_front()
    }

    fn oldest(&self) -> Option<tokio::time::Instant> {
        self.queue().front().copied()
    }
}

impl PeerLink {
    /// Sends `appends` on one gRPC stream to the replica without waiting for an answer before
    /// sending the next: a batch that reaches the leader while earlier ones are on their way goes
    /// out at once instead of one round trip (and one follower fsync) later. The answers come back
    /// in order; an append unanswered after the RPC's TTL ends the stream.
    async fn append_stream<S>(
        &mut self,
        appends: S,
        option: RPCOption,
    ) -> Result<AppendResults<'static>, RPCError<TypeConfig>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let group = self.group;
        let unanswered = Arc::new(Unanswered::default());
        let sent = unanswered.clone();
        let requests = appends.map(move |rpc| {
            let payload = bincode::serialize(&rpc).unwrap_or_else(|e| {
                // The replica refuses an empty payload and the stream ends; the leader resends.
                tracing::error!(group, error = %e, "an append does not encode");
                Vec::new()
            });
            sent.sent();
            RaftRequest {
                group_id: group,
                payload: payload.into(),
            }
        });
        let mut request = tonic::Request::new(requests);
        request.metadata_mut().insert(
            weir_proto::RAFT_GROUP_METADATA_KEY,
            tonic::metadata::MetadataValue::from(group),
        );
        let ttl = option.hard_ttl();
        let mut client = self.client(Lane::Replication)?;
        let replies = match tokio::time::timeout(ttl, client.stream_append(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(unreachable(status)),
            Err(_) => {
                return Err(unreachable(format!(
                    "{} did not open an append stream within {ttl:?}",
                    self.addr
                )))
            }
        };
        let results = futures::stream::unfold(Some((replies, unanswered)), move |state| {
            next_result(state, ttl)
        });
        Ok(Box::pin(results))
    }
}

/// The next answer of an append stream, once it arrives, or the error that ends the stream.
async fn next_result(
    state: Option<(tonic::Streaming<RaftReply>, Arc<Unanswered>)>,
    ttl: Duration,
) -> Option<(
    Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>,
    Option<(tonic::Streaming<RaftReply>, Arc<Unanswered>)>,
)> {
    let (mut replies, unanswered) = state?;
    let got = loop {
        match unanswered.oldest() {
            Some(sent) => match tokio::time::timeout_at(sent + ttl, replies.message()).await {
                Ok(got) => break got,
                Err(_) => {
                    let e = format!("no answer to an append within {ttl:?}");
                    return Some((Err(RPCError::Network(NetworkError::from_string(e))), None));
                }
            },
            // Idle: an answer (or the stream's end) can still come; once an append goes out,
            // its answer is timed.
            None => tokio::select! {
                got = replies.message() => break got,
                _ = unanswered.first.notified() => {}
            },
        }
    };
    match got {
        Ok(Some(reply)) => {
            if let Some(sent) = unanswered.answered() {
                crate::metrics::append_answered(sent.elapsed());
            }
            let result = PeerLink::decode::<StreamAppendResult<TypeConfig>>(&reply.payload);
            // After a refusal (a conflict, a higher vote) or an error the stream is over.
            let more = matches!(result, Ok(Ok(_)));
            Some((result, more.then_some((replies, unanswered))))
        }
        Ok(None) => None,
        Err(status) => Some((Err(unreachable(status)), None)),
    }
}

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = SnapshotData;

    /// A heartbeat (or a probe) goes on the control lane, the stream of a replication on its own
    /// gRPC stream.
    fn stream_append<'s, S>(
        &'s mut self,
        mut input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<AppendResults<'s>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        Box::pin(async move {
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as AppendResults<'s>);
            };
            let mut head = vec![first];
            // A lone message without entries is a heartbeat (or a probe): it goes on the control
            // lane, never behind entries. A replication stream's next message is not ready yet.
            if head[0].entries.is_empty() {
                match input.next().now_or_never() {
                    Some(None) => {
                        let rpc = head.remove(0);
                        let prev = rpc.prev_log_id;
                        let result = self
                            .append_entries(rpc, option)
                            .await
                            .map(|r| r.into_stream_result(prev, prev));
                        return Ok(Box::pin(futures::stream::once(async move { result }))
                            as AppendResults<'s>);
                    }
                    Some(Some(second)) => head.push(second),
                    None => {}
                }
            }
            let appends = futures::stream::iter(head).chain(input);
            self.append_stream(appends, option).await
        })
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // Heartbeats (no entries) go with votes, not behind entries.
        let lane = if rpc.entries.is_empty() {
            Lane::Control
        } else {
            Lane::Replication
        };
        let req = self.request(&rpc, option)?;
        let reply = self
            .client(lane)?
            .append_entries(req)
            .await
            .map_err(unreachable)?;
        Self::decode(&reply.into_inner().payload)
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(&rpc, option)?;
        let reply = self
            .client(Lane::Control)?
            .vote(req)
            .await
            .map_err(unreachable)?;
        Self::decode(&reply.into_inner().payload)
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(&rpc, option)?;
        // An unreachable peer is an error, never a grant: an isolated node must not talk itself
        // into an election that raises its term.
        let reply = self
            .client(Lane::Control)?
            .pre_vote(req)
            .await
            .map_err(unreachable)?;
        Self::decode(&reply.into_inner().payload)
    }

    async fn transfer_leader(
        &mut self,
        rpc: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let req = self.request(&rpc, option)?;
        let reply = self
            .client(Lane::Control)?
            .transfer_leader(req)
            .await
            .map_err(unreachable)?;
        Self::decode(&reply.into_inner().payload)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = bincode::serialize(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e.to_string())))?;
        let group = self.group;
        let mut client = self.client(Lane::Snapshots)?;
        // Where the replica's own copy of a partition ends; asking costs one round trip and can
        // save sending the whole partition.
        let mut ask = tonic::Request::new(SnapshotFromRequest { group_id: group });
        ask.set_timeout(option.hard_ttl());
        let replica_end = match client.snapshot_from(ask).await {
            Ok(r) => r.into_inner().next_offset,
            // A peer without the call gets the whole snapshot.
            Err(e) if e.code() == tonic::Code::Unimplemented => 0,
            // The replica is starting (its group not open yet) or unreachable: it could not
            // install a snapshot now either, and guessing "from the start" would send it the
            // whole partition. openraft tries again shortly.
            Err(e) => {
                return Err(StreamingError::Unreachable(Unreachable::from_string(
                    format!("replica of group {group} did not say where its copy ends: {e}"),
                )))
            }
        };
        // On a node the snapshot is written on a blocking thread while it is sent, four chunks
        // ahead at most; on a single-threaded runtime (a simulation) it is written in place
        // first, so the channel has to hold all of it.
        let blocking = multi_threaded();
        let ahead = if blocking {
            4
        } else {
            tokio::sync::Semaphore::MAX_PERMITS
        };
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(ahead);
        let (engine, data) = (self.engine.clone(), snapshot.snapshot);
        let writer = start_on_blocking_thread(move || {
            let sink = ChunkSink {
                group,
                header: Some(header),
                buf: Vec::with_capacity(CHUNK_SIZE),
                tx,
                blocking,
                sent: 0,
            };
            use std::io::Write;
            let mut sink = weir_storage::state_machine::write_transfer(
                &engine,
                group,
                &data,
                replica_end,
                sink,
            )?;
            sink.flush()?;
            Ok::<u64, weir_storage::StorageError>(sink.sent)
        });
        let send = async move {
            let reply = client
                .install_snapshot(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(unreachable)?;
            Self::decode::<SnapshotResponse<TypeConfig>>(&reply.into_inner().payload)
        };
        tokio::pin!(cancel);
        let res = tokio::select! {
            closed = &mut cancel => Err(StreamingError::Closed(closed)),
            r = send => r.map_err(StreamingError::from),
        };
        // The writer ends once the stream is dropped (its sends fail).
        match writer.await {
            Ok(sent) if res.is_ok() => crate::metrics::snapshot_sent(sent, replica_end > 0),
            Err(e) => tracing::warn!(group, error = %e, "writing a snapshot to send"),
            _ => {}
        }
        res
    }
}

/// Cuts the bytes of a snapshot being sent into chunks on the gRPC stream; the first chunk carries
/// the vote and metadata.
struct ChunkSink {
    group: u64,
    header: Option<Vec<u8>>,
    buf: Vec<u8>,
    tx: tokio::sync::mpsc::Sender<SnapshotChunk>,
    /// Written on a blocking thread (wait for room in the channel), or in place before the
    /// stream is sent (the channel has room for everything).
    blocking: bool,
    sent: u64,
}

impl ChunkSink {
    /// Sends what is buffered as one chunk (and the header, if not sent yet).
    fn send_buffered(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() && self.header.is_none() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK_SIZE));
        self.sent += data.len() as u64;
        let chunk = SnapshotChunk {
            group_id: self.group,
            header: self.header.take().unwrap_or_default().into(),
            data: data.into(),
        };
        let sent = if self.blocking {
            self.tx.blocking_send(chunk).is_ok()
        } else {
            self.tx.try_send(chunk).is_ok()
        };
        if sent {
            Ok(())
        } else {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "snapshot stream closed",
            ))
        }
    }
}

impl std::io::Write for ChunkSink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(CHUNK_SIZE - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        if self.buf.len() >= CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send_buffered()
    }
}
