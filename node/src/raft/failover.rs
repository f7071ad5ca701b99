//! Fast failover: followers probe the nodes that lead their groups and, once one stops answering,
//! start a pre-vote in each of its groups as soon as the dead leader's lease has run out.
//!
//! Left to itself a group elects only after its lease and then a random election timeout on top
//! (up to twice the lease in all). One probe per leading node and interval, not per group, lets
//! every group of a dead node move right after the lease without sending heartbeats any faster.
//! Every attempt is a pre-vote, so a false alarm (a slow probe on a busy machine) disturbs nobody:
//! the replica refuses it locally while its own lease holds, and peers that still hear the leader
//! refuse it too; nothing is persisted and no term rises unless a quorum would elect.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use weir_proto::v1::raft_transport_client::RaftTransportClient;
use weir_proto::v1::ProbeRequest;

use crate::groups::{GroupHandle, Registry};
use crate::peers::{Lane, Peers};

/// Pause between probe rounds (jittered by ±20% so the followers of one group do not start their
/// pre-votes in step and split the vote).
pub const PROBE_EVERY: Duration = Duration::from_millis(250);
/// A probe not answered within this long counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A group this node follows, and where its leader lives.
struct Followed {
    group: Arc<GroupHandle>,
    leader: u64,
    leader_addr: String,
}

/// The groups this node could help elect a new leader for: it is a voter that may vote, the group
/// has other voters, and the known leader is another node.
fn followed(me: u64, registry: &Registry) -> Vec<Followed> {
    let mut out = Vec::new();
    for g in registry.all().values() {
        if !g.may_vote() {
            continue;
        }
        let m = g.raft.metrics();
        let m = m.borrow_watched();
        if m.state != ServerState::Follower {
            continue;
        }
        let Some(leader) = m.current_leader.filter(|l| *l != me) else {
            continue;
        };
        let membership = m.membership_config.membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        if voters.len() < 2 || !voters.contains(&me) {
            continue;
        }
        let Some(node) = membership.get_node(&leader) else {
            continue;
        };
        out.push(Followed {
            group: g.clone(),
            leader,
            leader_addr: node.addr.clone(),
        });
    }
    out
}

/// True when the node at `addr` answers a probe as node `id` in time.
async fn answers(peers: &Peers, addr: &str, id: u64) -> bool {
    let Ok(ch) = peers.lane(addr, Lane::Control) else {
        return false;
    };
    let mut req = tonic::Request::new(ProbeRequest {});
    req.set_timeout(PROBE_TIMEOUT);
    let mut client = RaftTransportClient::new(ch);
    match tokio::time::timeout(PROBE_TIMEOUT, client.probe(req)).await {
        // Another node answering on a reused address is as good as none.
        Ok(Ok(reply)) => reply.into_inner().node_id == id,
        _ => false,
    }
}

/// Probes the leaders of the groups this node follows, forever, and starts pre-votes in the groups
/// of those that do not answer.
pub async fn failover_loop(me: u64, registry: Registry, peers: Peers) {
    loop {
        let jitter = weir_storage::runtime::jitter(0.8, 1.2);
        tokio::time::sleep(PROBE_EVERY.mul_f64(jitter)).await;
        let groups = followed(me, &registry);
        let mut by_leader: BTreeMap<u64, (String, Vec<Arc<GroupHandle>>)> = BTreeMap::new();
        for f in groups {
            by_leader
                .entry(f.leader)
                .or_insert_with(|| (f.leader_addr, Vec::new()))
                .1
                .push(f.group);
        }
        let probes = by_leader.iter().map(|(id, (addr, _))| {
            let peers = peers.clone();
            async move { (*id, answers(&peers, addr, *id).await) }
        });
        let alive: BTreeMap<u64, bool> = futures::future::join_all(probes)
            .await
            .into_iter()
            .collect();
        for (leader, (_, groups)) in by_leader {
            if alive.get(&leader).copied().unwrap_or(true) {
                continue;
            }
            for g in groups {
                // Still following the silent node? (An election may have moved on meanwhile.)
                if g.leader() != Some(leader) {
                    continue;
                }
                tracing::debug!(
                    group = g.id,
                    leader,
                    "leader's node does not answer; pre-vote"
                );
                crate::metrics::failover_prevote();
                if let Err(e) = g.raft.trigger().elect(true).await {
                    tracing::warn!(group = g.id, error = %e, "starting a pre-vote failed");
                }
            }
        }
    }
}
