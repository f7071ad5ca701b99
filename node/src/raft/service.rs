//! Incoming Raft traffic: the `RaftTransport` gRPC service, which hands each message to the group
//! it names.

use std::sync::Arc;

use futures::StreamExt;
use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use openraft::raft::{AppendEntriesRequest, TransferLeaderRequest, VoteRequest};
use serde::Serialize;
use std::io::Write;
use tonic::{Request, Response, Status, Streaming};
use weir_proto::v1::raft_transport_server::RaftTransport;
use weir_proto::v1::{
    MembershipReply, MembershipRequest, ProbeReply, ProbeRequest, RaftReply, RaftRequest,
    ReadIndexReply, ReadIndexRequest, SnapshotChunk, SnapshotFromReply, SnapshotFromRequest,
};
use weir_storage::engine::{off_runtime, on_blocking_thread};
use weir_storage::snapshot::SnapshotData;
use weir_storage::{GroupWatch, TypeConfig};

use crate::groups::{GroupHandle, Registry};

/// The answers to a stream of appends, in the order of the appends.
pub type AppendReplies =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<RaftReply, Status>> + Send + 'static>>;

/// The gRPC face of every Raft group on this node.
pub struct RaftService {
    node_id: u64,
    registry: Registry,
}

impl RaftService {
    /// The service of node `node_id`, dispatching to the groups of `registry`.
    pub fn new(node_id: u64, registry: Registry) -> RaftService {
        RaftService { node_id, registry }
    }

    fn group(&self, id: u64) -> Result<Arc<GroupHandle>, Status> {
        self.registry
            .get(id)
            .ok_or_else(|| Status::unavailable(format!("group {id} is not running on this node")))
    }

    /// The group a Raft message is for, and the message.
    fn group_request<T: serde::de::DeserializeOwned>(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<(Arc<GroupHandle>, T), Status> {
        let req = request.into_inner();
        let g = self.group(req.group_id)?;
        let rpc = bincode::deserialize(&req.payload).map_err(bad)?;
        Ok((g, rpc))
    }

    /// The group and vote request of a (pre-)vote, refused while the replica may not vote.
    fn vote_request(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<(Arc<GroupHandle>, VoteRequest<TypeConfig>), Status> {
        let (g, rpc) = self.group_request(request)?;
        if !g.may_vote() {
            return Err(Status::unavailable(format!(
                "group {}: not voting yet (restarted within a leader lease, or not yet told by the \
                 group's log that it is a member)",
                g.id
            )));
        }
        Ok((g, rpc))
    }
}

fn reply<T: Serialize, E: std::fmt::Display>(
    r: Result<T, E>,
) -> Result<Response<RaftReply>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    let payload = bincode::serialize(&r).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftReply {
        payload: payload.into(),
    }))
}

fn bad(e: bincode::Error) -> Status {
    Status::invalid_argument(format!("undecodable raft message: {e}"))
}

#[tonic::async_trait]
impl RaftTransport for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (g, rpc): (_, AppendEntriesRequest<TypeConfig>) = self.group_request(request)?;
        reply(g.raft.append_entries(rpc).await)
    }

    type StreamAppendStream = AppendReplies;

    async fn stream_append(
        &self,
        request: Request<Streaming<RaftRequest>>,
    ) -> Result<Response<AppendReplies>, Status> {
        let id = request
            .metadata()
            .get(weir_proto::RAFT_GROUP_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "an append stream names its group in the `{}` header",
                    weir_proto::RAFT_GROUP_METADATA_KEY
                ))
            })?;
        let g = self.group(id)?;
        // The stream's messages up to the first that is cut off or does not decode: openraft then
        // answers what it was given and the leader opens a new stream for the rest.
        let rpcs = request.into_inner().scan((), move |_, m| {
            let rpc = match m {
                Ok(m) => bincode::deserialize::<AppendEntriesRequest<TypeConfig>>(&m.payload)
                    .map_err(|e| tracing::warn!(group = id, error = %e, "undecodable append in a stream"))
                    .ok(),
                Err(_) => None,
            };
            futures::future::ready(rpc)
        });
        let replies = g.raft.stream_append(rpcs).map(|r| {
            let r: Result<_, String> = r.map_err(|e| e.to_string());
            bincode::serialize(&r)
                .map(|payload| RaftReply {
                    payload: payload.into(),
                })
                .map_err(|e| Status::internal(e.to_string()))
        });
        Ok(Response::new(Box::pin(replies)))
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let (g, rpc) = self.vote_request(request)?;
        reply(g.raft.vote(rpc).await)
    }

    async fn pre_vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        // A replica that would refuse the vote refuses the pre-vote too.
        let (g, rpc) = self.vote_request(request)?;
        reply(g.raft.pre_vote(rpc).await)
    }

    async fn transfer_leader(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let (g, rpc): (_, TransferLeaderRequest<TypeConfig>) = self.group_request(request)?;
        reply(g.raft.handle_transfer_leader(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<SnapshotChunk>>,
    ) -> Result<Response<RaftReply>, Status> {
        let mut stream = request.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))??;
        let g = self.group(first.group_id)?;
        let (vote, meta): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>) =
            bincode::deserialize(&first.header).map_err(bad)?;
        let path = g
            .snapshots
            .temp_path()
            .map_err(|e| Status::internal(e.to_string()))?;
        // Removes the received file however this ends: refused, cut off, or left unused by Raft.
        // Once installed it has been renamed to the group's current snapshot and is not touched.
        let _received = RemoveOnDrop(path.clone());
        // Chunk writes are short; on a node they leave the async worker for its other tasks.
        let mut file = off_runtime(|| std::fs::File::create(&path))
            .map_err(|e| Status::internal(e.to_string()))?;
        let mut chunk = Some(first);
        while let Some(c) = chunk.take() {
            off_runtime(|| file.write_all(&c.data)).map_err(|e| Status::internal(e.to_string()))?;
            chunk = stream.next().await.transpose()?;
        }
        off_runtime(|| file.sync_all()).map_err(|e| Status::internal(e.to_string()))?;
        drop(file);
        // A torn transfer, or a file that does not hold the snapshot announced in the header, is
        // refused here (the leader sends it again) instead of failing the group's storage.
        let checked = path.clone();
        let found = on_blocking_thread(move || Ok(weir_storage::snapshot::verify(&checked)))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| Status::data_loss(format!("received snapshot refused: {e}")))?;
        if found != meta {
            return Err(Status::invalid_argument(format!(
                "received snapshot holds {:?}, header announced {:?}",
                found.last_log_id, meta.last_log_id
            )));
        }
        // A partition snapshot that leaves this replica more batches than it holds (its copy
        // was cleared since it told the leader where it ends) is refused here: the leader asks
        // again and sends more. Failing inside Raft's install would stop the group.
        let checked = path.clone();
        let group = g.id;
        let kept =
            on_blocking_thread(move || weir_storage::state_machine::kept_below(group, &checked))
                .await
                .map_err(|e| Status::data_loss(format!("received snapshot refused: {e}")))?;
        let held = held_below(&g);
        if kept > held {
            return Err(Status::failed_precondition(format!(
                "group {group}: snapshot leaves this replica its batches below offset {kept}, \
                 but it holds them only below {held}"
            )));
        }
        tracing::info!(group = g.id, snapshot = ?meta.last_log_id, "installing snapshot");
        let snapshot = SnapshotOf::<TypeConfig, SnapshotData> {
            meta,
            snapshot: SnapshotData::File(path),
        };
        reply(g.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn membership(
        &self,
        request: Request<MembershipRequest>,
    ) -> Result<Response<MembershipReply>, Status> {
        let g = self.group(request.into_inner().group_id)?;
        Ok(Response::new(crate::groups::membership_view(&g)))
    }

    async fn snapshot_from(
        &self,
        request: Request<SnapshotFromRequest>,
    ) -> Result<Response<SnapshotFromReply>, Status> {
        let g = self.group(request.into_inner().group_id)?;
        Ok(Response::new(SnapshotFromReply {
            next_offset: held_below(&g),
        }))
    }

    async fn read_index(
        &self,
        request: Request<ReadIndexRequest>,
    ) -> Result<Response<ReadIndexReply>, Status> {
        let g = self.group(request.into_inner().group_id)?;
        let catalog = self.registry.catalog()?;
        let index = crate::leader::read_index(&g, &catalog).await?;
        Ok(Response::new(ReadIndexReply { index }))
    }

    async fn probe(&self, _request: Request<ProbeRequest>) -> Result<Response<ProbeReply>, Status> {
        Ok(Response::new(ProbeReply {
            node_id: self.node_id,
        }))
    }
}

/// Where this replica's applied copy of a partition ends (0 for other kinds of groups).
fn held_below(g: &GroupHandle) -> u64 {
    match &g.watch {
        GroupWatch::Partition(w) => w.borrow().next_offset,
        _ => 0,
    }
}

/// Deletes a file when dropped, if it is still there.
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => tracing::debug!(path = %self.0.display(), "removed unused snapshot file"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(path = %self.0.display(), error = %e, "removing snapshot file")
            }
        }
    }
}
