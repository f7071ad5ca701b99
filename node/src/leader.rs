//! Writing through a group's leader and telling clients where the leader is.

use std::sync::Arc;

use openraft::error::ClientWriteError;
use openraft::error::RaftError;
use weir_storage::catalog::Catalog;
use weir_storage::{Request, Response, TypeConfig};

use crate::error::{NodeError, NodeResult};
use crate::groups::GroupHandle;

/// Address of the group's leader, if known.
pub fn leader_addr(h: &GroupHandle, catalog: &Catalog) -> Option<String> {
    let leader = h.leader()?;
    catalog.nodes.get(&leader).map(|n| n.addr.clone())
}

/// Replicates `req` through `h` and returns what applying it answered (after quorum commit).
pub async fn write(h: &Arc<GroupHandle>, catalog: &Catalog, req: Request) -> NodeResult<Response> {
    match h.raft.client_write(req).await {
        Ok(r) => Ok(r.data),
        Err(e) => Err(write_error(h, catalog, e)),
    }
}

fn write_error(
    h: &GroupHandle,
    catalog: &Catalog,
    e: RaftError<TypeConfig, ClientWriteError<TypeConfig>>,
) -> NodeError {
    if let Some(f) = e.forward_to_leader() {
        let leader = f
            .leader_id
            .and_then(|id| catalog.nodes.get(&id).map(|n| n.addr.clone()));
        return match leader {
            Some(addr) => NodeError::NotLeader {
                group: h.id,
                leader: Some(addr),
            },
            // A just-elected leader refuses writes until a quorum has acknowledged it.
            None => NodeError::Unavailable(format!(
                "group {} cannot take writes yet ({:?}); retry",
                h.id, f.reason
            )),
        };
    }
    NodeError::Unavailable(format!("group {}: {e}", h.id))
}

/// Header marking a request one node forwarded to another, so it is not forwarded again.
pub const FORWARDED: &str = "weir-forwarded";

/// True when the request was already forwarded once.
pub fn was_forwarded<T>(req: &tonic::Request<T>) -> bool {
    req.metadata().contains_key(FORWARDED)
}

/// Wraps `msg` for forwarding to another node.
pub fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
    r
}
