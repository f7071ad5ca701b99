//! Outgoing Raft traffic: openraft's network for one group, over the node's shared gRPC channels.
//!
//! Messages are bincode-encoded openraft types inside a `RaftRequest` that names the group, so every
//! group of every node shares one HTTP/2 connection per peer.

use std::future::Future;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use weir_proto::v1::raft_transport_client::RaftTransportClient;
use weir_proto::v1::{RaftRequest, SnapshotChunk, SnapshotFromRequest};
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

impl RaftNetworkV2<TypeConfig> for PeerLink {
    type SnapshotData = SnapshotData;

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
