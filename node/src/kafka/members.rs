//! The group membership requests (`JoinGroup`, `SyncGroup`, `Heartbeat`, `LeaveGroup`,
//! `ListGroups`, `DescribeGroups`) and where a group's coordinator is (`FindCoordinator`): the node leading the
//! offsets group, which is where the group's commits are written.

use std::time::Duration;

use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
    FindCoordinatorResponse, HeartbeatRequest, HeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse, ListGroupsResponse, SyncGroupRequest,
    SyncGroupResponse,
};
use openraft::async_runtime::WatchReceiver;

use super::groups::Join;
use super::{errors, host_port, kstr, KafkaState};

/// The term of this node's leadership of the offsets group, or NOT_COORDINATOR when it does not
/// lead it.
pub fn coordinator_term(state: &KafkaState) -> Result<u64, i16> {
    let catalog = state
        .ctx
        .registry
        .catalog()
        .map_err(|_| errors::COORDINATOR_NOT_AVAILABLE)?;
    let group = catalog
        .offsets_group
        .ok_or(errors::COORDINATOR_NOT_AVAILABLE)?;
    match state.ctx.registry.get(group) {
        Some(h) if h.is_leader() => Ok(h.raft.metrics().borrow_watched().current_term),
        _ => Err(errors::NOT_COORDINATOR),
    }
}

/// The Kafka address and id of the node coordinating groups: the offsets group's leader as this
/// node knows it (or, from a node without a replica, one that has one, which knows better).
fn coordinator(state: &KafkaState) -> Option<(u64, String)> {
    let catalog = state.ctx.registry.catalog().ok()?;
    let group = catalog.offsets_group?;
    let node = match state.ctx.registry.get(group) {
        Some(h) => h.leader()?,
        None => *catalog.groups.get(&group)?.replicas.first()?,
    };
    let info = catalog.nodes.get(&node)?;
    (!info.kafka_addr.is_empty()).then(|| (node, info.kafka_addr.clone()))
}

/// `FindCoordinator` (one key: versions with several are not offered).
pub fn find_coordinator(
    state: &KafkaState,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    if req.key_type != 0 {
        return FindCoordinatorResponse::default()
            .with_error_code(errors::TRANSACTIONAL_ID_AUTHORIZATION_FAILED)
            .with_error_message(Some(kstr("transactions are not served")))
            .with_node_id(BrokerId(-1));
    }
    match coordinator(state) {
        Some((id, addr)) => {
            let (host, port) = host_port(&addr);
            FindCoordinatorResponse::default()
                .with_node_id(BrokerId(id as i32))
                .with_host(kstr(host))
                .with_port(port)
        }
        None => FindCoordinatorResponse::default()
            .with_error_code(errors::COORDINATOR_NOT_AVAILABLE)
            .with_node_id(BrokerId(-1)),
    }
}

/// `JoinGroup`.
pub async fn join(
    state: &KafkaState,
    req: JoinGroupRequest,
    version: i16,
    client: &str,
    host: &str,
) -> JoinGroupResponse {
    let term = match coordinator_term(state) {
        Ok(t) => t,
        Err(code) => {
            return JoinGroupResponse::default()
                .with_error_code(code)
                .with_generation_id(-1)
        }
    };
    let ms = |v: i32| Duration::from_millis(v.max(0) as u64);
    let join = Join {
        group: req.group_id.to_string(),
        member: req.member_id.to_string(),
        client: if client.is_empty() {
            "consumer".into()
        } else {
            client.to_string()
        },
        host: host.to_string(),
        session: ms(req.session_timeout_ms),
        // Before v1 the session timeout was also the rebalance timeout.
        rebalance: if version >= 1 {
            ms(req.rebalance_timeout_ms)
        } else {
            ms(req.session_timeout_ms)
        },
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        id_first: version >= 4,
    };
    state.groups.join(term, join).await
}

/// `SyncGroup`.
pub async fn sync(state: &KafkaState, req: SyncGroupRequest) -> SyncGroupResponse {
    let term = match coordinator_term(state) {
        Ok(t) => t,
        Err(code) => return SyncGroupResponse::default().with_error_code(code),
    };
    let assignments = req
        .assignments
        .into_iter()
        .map(|a| (a.member_id.to_string(), a.assignment))
        .collect();
    let (code, assignment, protocol) = state
        .groups
        .sync(
            term,
            req.group_id.to_string(),
            req.generation_id,
            req.member_id.to_string(),
            assignments,
        )
        .await;
    SyncGroupResponse::default()
        .with_error_code(code)
        .with_assignment(assignment)
        .with_protocol_type(Some(kstr("consumer")))
        .with_protocol_name(protocol.map(kstr))
}

/// `Heartbeat`.
pub async fn heartbeat(state: &KafkaState, req: HeartbeatRequest) -> HeartbeatResponse {
    let code = match coordinator_term(state) {
        Ok(term) => {
            state
                .groups
                .heartbeat(
                    term,
                    req.group_id.to_string(),
                    req.generation_id,
                    req.member_id.to_string(),
                )
                .await
        }
        Err(code) => code,
    };
    HeartbeatResponse::default().with_error_code(code)
}

/// `LeaveGroup` (one member before v3, a list from v3 on).
pub async fn leave(state: &KafkaState, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
    let term = match coordinator_term(state) {
        Ok(t) => t,
        Err(code) => return LeaveGroupResponse::default().with_error_code(code),
    };
    let members: Vec<String> = if version >= 3 {
        req.members
            .iter()
            .map(|m| m.member_id.to_string())
            .collect()
    } else {
        vec![req.member_id.to_string()]
    };
    let out = state
        .groups
        .leave(term, req.group_id.to_string(), members)
        .await;
    let code = if version < 3 {
        out.first().map_or(errors::NONE, |(_, c)| *c)
    } else {
        errors::NONE
    };
    LeaveGroupResponse::default()
        .with_error_code(code)
        .with_members(
            out.into_iter()
                .map(|(id, c)| {
                    MemberResponse::default()
                        .with_member_id(kstr(id))
                        .with_error_code(c)
                })
                .collect(),
        )
}

/// `ListGroups`: the groups this node coordinates.
pub async fn list(state: &KafkaState) -> ListGroupsResponse {
    match coordinator_term(state) {
        Ok(_) => ListGroupsResponse::default().with_groups(state.groups.list().await),
        Err(code) => ListGroupsResponse::default().with_error_code(code),
    }
}

/// `DescribeGroups`: the named groups as this coordinator holds them.
pub async fn describe(state: &KafkaState, req: DescribeGroupsRequest) -> DescribeGroupsResponse {
    let names: Vec<String> = req.groups.iter().map(|g| g.to_string()).collect();
    let groups = match coordinator_term(state) {
        Ok(term) => state.groups.describe(term, names).await,
        Err(code) => req
            .groups
            .into_iter()
            .map(|g| {
                kafka_protocol::messages::describe_groups_response::DescribedGroup::default()
                    .with_group_id(g)
                    .with_error_code(code)
            })
            .collect(),
    };
    DescribeGroupsResponse::default().with_groups(groups)
}
