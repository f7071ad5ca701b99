//! Outgoing Raft traffic: openraft's network for one group, over the node's shared gRPC channels.
//!
//! Messages are bincode-encoded openraft types inside a `RaftRequest` that names the group, so every
//! group of every node shares one HTTP/2 connection per peer.

use std::future::Future;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{RPCOption, RaftNetworkFactory, RaftNetworkV2};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::AsyncReadExt;
use weir_proto::v1::raft_transport_client::RaftTransportClient;
use weir_proto::v1::{RaftRequest, SnapshotChunk};
use weir_storage::snapshot::{SnapshotData, CHUNK_SIZE};
use weir_storage::TypeConfig;

use crate::peers::Peers;

/// Creates the network clients of one group.
#[derive(Clone)]
pub struct GroupNetwork {
    group: u64,
    peers: Peers,
}

impl GroupNetwork {
    /// The network of `group`.
    pub fn new(group: u64, peers: Peers) -> GroupNetwork {
        GroupNetwork { group, peers }
    }
}

/// The client of one group towards one peer.
pub struct PeerLink {
    group: u64,
    addr: String,
    peers: Peers,
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = PeerLink;

    async fn new_client(&mut self, _target: u64, node: &BasicNode) -> PeerLink {
        PeerLink {
            group: self.group,
            addr: node.addr.clone(),
            peers: self.peers.clone(),
        }
    }
}

fn unreachable(e: impl std::fmt::Display) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::from_string(e.to_string()))
}

impl PeerLink {
    fn client(
        &self,
    ) -> Result<RaftTransportClient<tonic::transport::Channel>, RPCError<TypeConfig>> {
        let ch = self.peers.channel(&self.addr).map_err(unreachable)?;
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
        let req = self.request(&rpc, option)?;
        let reply = self
            .client()?
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
        let reply = self.client()?.vote(req).await.map_err(unreachable)?;
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
        let reply = self.client()?.pre_vote(req).await.map_err(unreachable)?;
        Self::decode(&reply.into_inner().payload)
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, SnapshotData>,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let header = bincode::serialize(&(vote, snapshot.meta.clone()))
            .map_err(|e| StreamingError::Unreachable(Unreachable::from_string(e.to_string())))?;
        let path = snapshot.snapshot.path.clone();
        let group = self.group;
        let (tx, rx) = tokio::sync::mpsc::channel::<SnapshotChunk>(4);
        // Read the file chunk by chunk while the stream is being sent.
        let reader = tokio::spawn(async move {
            let mut f = tokio::fs::File::open(&path).await?;
            let mut first = Some(header);
            loop {
                let mut buf = vec![0u8; CHUNK_SIZE];
                let n = f.read(&mut buf).await?;
                buf.truncate(n);
                let chunk = SnapshotChunk {
                    group_id: group,
                    header: first.take().unwrap_or_default().into(),
                    data: buf.into(),
                };
                if tx.send(chunk).await.is_err() || n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
            }
        });
        let mut client = self.client()?;
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
        reader.abort();
        res
    }
}
