//! Kafka consumer groups: `JoinGroup`, `SyncGroup`, `Heartbeat`, `LeaveGroup`, `ListGroups`,
//! `DescribeGroups`, and the generation check of `OffsetCommit`.
//!
//! Kafka's group protocol assigns partitions in the client: the coordinator only gathers the
//! members of a generation, names one leader that computes the assignment, and hands each member
//! its part. The coordinator of every group is the node leading the offsets group (where the
//! group's commits go); its state is in memory, like Kafka's, and starts empty whenever that node
//! begins a new term as leader (members then find it again and rejoin).
//!
//! One partition has one owner per generation: a generation completes only once every member of
//! the previous one has rejoined (having given up its partitions, as Kafka's consumers do before
//! rejoining) or has been dropped after its rebalance timeout, and commits from any other
//! generation are refused.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, JoinGroupResponse};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{errors, kstr};

/// How long an empty group waits for more members before its first generation, so consumers
/// started together share one (Kafka's `group.initial.rebalance.delay.ms`, shortened).
const INITIAL_DELAY: Duration = Duration::from_millis(1000);
/// Bounds on the session timeout a member may ask for (Kafka's `group.min/max.session.timeout.ms`).
const MIN_SESSION: Duration = Duration::from_millis(1000);
const MAX_SESSION: Duration = Duration::from_secs(300);
/// How often expiries and rebalance deadlines are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long a member id handed out with `MEMBER_ID_REQUIRED` stays valid for its first join.
const PENDING_ID: Duration = Duration::from_secs(300);

/// A consumer's request to join.
#[derive(Debug)]
pub struct Join {
    /// Group name.
    pub group: String,
    /// Member id ("" for a new member).
    pub member: String,
    /// Client id, the prefix of a new member's id.
    pub client: String,
    /// The address the member connected from.
    pub host: String,
    /// Session timeout.
    pub session: Duration,
    /// How long the member may take to rejoin once a rebalance starts.
    pub rebalance: Duration,
    /// Protocol type (`consumer`).
    pub protocol_type: String,
    /// Assignment protocols the member supports, with its metadata for each, in its order.
    pub protocols: Vec<(String, Bytes)>,
    /// Whether the client takes `MEMBER_ID_REQUIRED` (JoinGroup v4 and later).
    pub id_first: bool,
}

enum Msg {
    Join(u64, Join, oneshot::Sender<JoinGroupResponse>),
    Sync {
        term: u64,
        group: String,
        generation: i32,
        member: String,
        assignments: Vec<(String, Bytes)>,
        reply: oneshot::Sender<(i16, Bytes, Option<String>)>,
    },
    Heartbeat {
        term: u64,
        group: String,
        generation: i32,
        member: String,
        reply: oneshot::Sender<i16>,
    },
    Leave {
        term: u64,
        group: String,
        members: Vec<String>,
        reply: oneshot::Sender<Vec<(String, i16)>>,
    },
    CheckCommit {
        term: u64,
        group: String,
        generation: i32,
        member: String,
        reply: oneshot::Sender<i16>,
    },
    List(oneshot::Sender<Vec<ListedGroup>>),
    Describe(u64, Vec<String>, oneshot::Sender<Vec<DescribedGroup>>),
}

/// The handle of this node's group coordinator (an actor; it serves only while this node leads
/// the offsets group, at the term given with each call).
#[derive(Clone)]
pub struct Coordinator {
    tx: mpsc::Sender<Msg>,
}

impl Default for Coordinator {
    fn default() -> Self {
        Coordinator::start()
    }
}

impl Coordinator {
    /// Starts the coordinator's task.
    pub fn start() -> Coordinator {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(rx));
        Coordinator { tx }
    }

    async fn ask<T>(&self, msg: impl FnOnce(oneshot::Sender<T>) -> Msg, fallback: T) -> T {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(msg(reply)).await.is_err() {
            return fallback;
        }
        rx.await.unwrap_or(fallback)
    }

    /// `JoinGroup`: answers once the generation the member joins is complete.
    pub async fn join(&self, term: u64, join: Join) -> JoinGroupResponse {
        let fallback = JoinGroupResponse::default().with_error_code(errors::NOT_COORDINATOR);
        self.ask(|r| Msg::Join(term, join, r), fallback).await
    }

    /// `SyncGroup`: the member's assignment (error, assignment, protocol name); the leader brings
    /// everyone's.
    pub async fn sync(
        &self,
        term: u64,
        group: String,
        generation: i32,
        member: String,
        assignments: Vec<(String, Bytes)>,
    ) -> (i16, Bytes, Option<String>) {
        self.ask(
            |reply| Msg::Sync {
                term,
                group,
                generation,
                member,
                assignments,
                reply,
            },
            (errors::NOT_COORDINATOR, Bytes::new(), None),
        )
        .await
    }

    /// `Heartbeat`: keeps the member's session; tells it when a rebalance began.
    pub async fn heartbeat(
        &self,
        term: u64,
        group: String,
        generation: i32,
        member: String,
    ) -> i16 {
        self.ask(
            |reply| Msg::Heartbeat {
                term,
                group,
                generation,
                member,
                reply,
            },
            errors::NOT_COORDINATOR,
        )
        .await
    }

    /// `LeaveGroup`: (member, error) for each member named.
    pub async fn leave(
        &self,
        term: u64,
        group: String,
        members: Vec<String>,
    ) -> Vec<(String, i16)> {
        let fallback = members
            .iter()
            .map(|m| (m.clone(), errors::NOT_COORDINATOR))
            .collect();
        self.ask(
            |reply| Msg::Leave {
                term,
                group,
                members,
                reply,
            },
            fallback,
        )
        .await
    }

    /// Whether a member may commit offsets at `generation` (an error code; NONE when it may).
    pub async fn check_commit(
        &self,
        term: u64,
        group: String,
        generation: i32,
        member: String,
    ) -> i16 {
        self.ask(
            |reply| Msg::CheckCommit {
                term,
                group,
                generation,
                member,
                reply,
            },
            errors::NOT_COORDINATOR,
        )
        .await
    }

    /// The groups this coordinator knows, with their states.
    pub async fn list(&self) -> Vec<ListedGroup> {
        self.ask(Msg::List, Vec::new()).await
    }

    /// `DescribeGroups`: each named group's state, protocol and members with their assignments
    /// (a group this coordinator does not know is `Dead`, as Kafka answers).
    pub async fn describe(&self, term: u64, groups: Vec<String>) -> Vec<DescribedGroup> {
        let fallback = groups
            .iter()
            .map(|g| {
                DescribedGroup::default()
                    .with_group_id(GroupId(kstr(g.clone())))
                    .with_error_code(errors::NOT_COORDINATOR)
            })
            .collect();
        self.ask(|r| Msg::Describe(term, groups, r), fallback).await
    }
}

/// Where a group is in its rebalance cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No members.
    Empty,
    /// Waiting for members to (re)join: completes once all have, not before `until`, or at
    /// `deadline` without those that have not.
    Preparing { until: Instant, deadline: Instant },
    /// The generation is formed; waiting for the leader's assignment.
    Completing,
    /// Every member has its assignment.
    Stable,
}

struct Member {
    client: String,
    host: String,
    session: Duration,
    rebalance: Duration,
    last_seen: Instant,
    protocols: Vec<(String, Bytes)>,
    /// Rejoined in the rebalance under way.
    joined: bool,
    join: Option<oneshot::Sender<JoinGroupResponse>>,
    sync: Option<oneshot::Sender<(i16, Bytes, Option<String>)>>,
}

struct Group {
    generation: i32,
    phase: Phase,
    members: BTreeMap<String, Member>,
    leader: Option<String>,
    protocol_type: String,
    protocol: Option<String>,
    assignments: HashMap<String, Bytes>,
    pending_ids: HashMap<String, Instant>,
}

impl Group {
    fn new() -> Group {
        Group {
            generation: 0,
            phase: Phase::Empty,
            members: BTreeMap::new(),
            leader: None,
            protocol_type: String::new(),
            protocol: None,
            assignments: HashMap::new(),
            pending_ids: HashMap::new(),
        }
    }

    fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::Empty => "Empty",
            Phase::Preparing { .. } => "PreparingRebalance",
            Phase::Completing => "CompletingRebalance",
            Phase::Stable => "Stable",
        }
    }

    /// Starts a rebalance: every member must rejoin; syncs waiting for the old one are told.
    fn rebalance(&mut self, now: Instant, until: Instant) {
        if let Phase::Preparing { .. } = self.phase {
            return;
        }
        let wait = self
            .members
            .values()
            .map(|m| m.rebalance)
            .max()
            .unwrap_or(Duration::ZERO);
        self.phase = Phase::Preparing {
            until,
            deadline: now + wait.max(until - now),
        };
        for m in self.members.values_mut() {
            m.joined = m.join.is_some();
            if let Some(s) = m.sync.take() {
                let _ = s.send((errors::REBALANCE_IN_PROGRESS, Bytes::new(), None));
            }
        }
        self.assignments.clear();
    }

    /// Forms the next generation when every member has rejoined (or the deadline passed).
    fn try_complete(&mut self, now: Instant) {
        let Phase::Preparing { until, deadline } = self.phase else {
            return;
        };
        let all = self.members.values().all(|m| m.joined);
        if !((all && now >= until) || now >= deadline) {
            return;
        }
        self.members.retain(|_, m| m.joined);
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
            return;
        }
        self.generation += 1;
        let leader = match &self.leader {
            Some(l) if self.members.contains_key(l) => l.clone(),
            _ => self.members.keys().next().cloned().unwrap_or_default(),
        };
        // The first of the leader's protocols every member supports.
        let protocol = self.members.get(&leader).and_then(|l| {
            l.protocols
                .iter()
                .map(|(name, _)| name.clone())
                .find(|name| {
                    self.members
                        .values()
                        .all(|m| m.protocols.iter().any(|(n, _)| n == name))
                })
        });
        self.leader = Some(leader.clone());
        self.protocol = protocol.clone();
        let roster: Vec<JoinGroupResponseMember> = self
            .members
            .iter()
            .map(|(id, m)| {
                let metadata = m
                    .protocols
                    .iter()
                    .find(|(n, _)| Some(n) == protocol.as_ref())
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default();
                JoinGroupResponseMember::default()
                    .with_member_id(kstr(id.clone()))
                    .with_metadata(metadata)
            })
            .collect();
        for (id, m) in self.members.iter_mut() {
            m.joined = false;
            m.last_seen = now;
            let Some(reply) = m.join.take() else { continue };
            let mut resp = JoinGroupResponse::default()
                .with_generation_id(self.generation)
                .with_protocol_type(Some(kstr(self.protocol_type.clone())))
                .with_protocol_name(protocol.clone().map(kstr))
                .with_leader(kstr(leader.clone()))
                .with_member_id(kstr(id.clone()));
            if protocol.is_none() {
                resp = resp.with_error_code(errors::INCONSISTENT_GROUP_PROTOCOL);
            } else if *id == leader {
                resp = resp.with_members(roster.clone());
            }
            let _ = reply.send(resp);
        }
        self.phase = Phase::Completing;
    }

    /// Drops members whose session ran out (those waiting in a join are alive); their going
    /// starts a rebalance, or lets the one under way complete without them.
    fn expire(&mut self, now: Instant) {
        if self.phase == Phase::Empty {
            return;
        }
        let before = self.members.len();
        self.members.retain(|_, m| {
            m.join.is_some() || now.saturating_duration_since(m.last_seen) < m.session
        });
        if self.members.len() == before {
            return;
        }
        if self.members.is_empty() {
            self.phase = Phase::Empty;
            self.leader = None;
        } else {
            self.rebalance(now, now);
        }
    }
}

struct State {
    term: u64,
    groups: HashMap<String, Group>,
}

impl State {
    /// The groups as of `term`: a new term of leadership starts from nothing.
    fn at(&mut self, term: u64) -> &mut HashMap<String, Group> {
        if term != self.term {
            self.term = term;
            self.groups.clear();
        }
        &mut self.groups
    }
}

async fn run(mut rx: mpsc::Receiver<Msg>) {
    let mut st = State {
        term: 0,
        groups: HashMap::new(),
    };
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(m) => handle(&mut st, m),
                None => return,
            },
            _ = tick.tick() => {
                let now = Instant::now();
                for g in st.groups.values_mut() {
                    g.expire(now);
                    g.try_complete(now);
                    g.pending_ids.retain(|_, at| now.saturating_duration_since(*at) < PENDING_ID);
                }
            }
        }
    }
}

fn handle(st: &mut State, msg: Msg) {
    let now = Instant::now();
    match &msg {
        Msg::Join(_, j, _) => tracing::debug!(group = %j.group, member = %j.member, "join"),
        Msg::Sync {
            group,
            member,
            generation,
            ..
        } => tracing::debug!(%group, %member, generation, "sync"),
        Msg::Heartbeat {
            group,
            member,
            generation,
            ..
        } => tracing::debug!(%group, %member, generation, "heartbeat"),
        Msg::Leave { group, members, .. } => tracing::debug!(%group, ?members, "leave"),
        _ => {}
    }
    match msg {
        Msg::Join(term, j, reply) => {
            let g = st
                .at(term)
                .entry(j.group.clone())
                .or_insert_with(Group::new);
            let refuse = |code: i16, member: String| {
                JoinGroupResponse::default()
                    .with_error_code(code)
                    .with_generation_id(-1)
                    .with_member_id(kstr(member))
            };
            if !g.members.is_empty() && g.protocol_type != j.protocol_type {
                let _ = reply.send(refuse(errors::INCONSISTENT_GROUP_PROTOCOL, j.member));
                return;
            }
            if j.session < MIN_SESSION || j.session > MAX_SESSION {
                let _ = reply.send(refuse(errors::INVALID_SESSION_TIMEOUT, j.member));
                return;
            }
            let member = if j.member.is_empty() {
                let id = format!("{}-{:016x}", j.client, weir_proto::random::u64());
                if j.id_first {
                    g.pending_ids.insert(id.clone(), now);
                    let _ = reply.send(refuse(errors::MEMBER_ID_REQUIRED, id));
                    return;
                }
                id
            } else if g.members.contains_key(&j.member) || g.pending_ids.remove(&j.member).is_some()
            {
                j.member
            } else {
                let _ = reply.send(refuse(errors::UNKNOWN_MEMBER_ID, j.member));
                return;
            };
            g.protocol_type = j.protocol_type;
            let m = g.members.entry(member).or_insert_with(|| Member {
                client: j.client.clone(),
                host: j.host.clone(),
                session: j.session,
                rebalance: j.rebalance,
                last_seen: now,
                protocols: Vec::new(),
                joined: false,
                join: None,
                sync: None,
            });
            m.session = j.session;
            m.rebalance = j.rebalance.max(j.session.min(Duration::from_secs(60)));
            m.protocols = j.protocols;
            m.last_seen = now;
            m.joined = true;
            if let Some(old) = m.join.replace(reply) {
                let _ = old.send(refuse(errors::UNKNOWN_MEMBER_ID, String::new()));
            }
            match g.phase {
                Phase::Empty => g.rebalance(now, now + INITIAL_DELAY),
                Phase::Preparing { .. } => {}
                Phase::Completing | Phase::Stable => g.rebalance(now, now),
            }
            g.try_complete(now);
        }
        Msg::Sync {
            term,
            group,
            generation,
            member,
            assignments,
            reply,
        } => {
            let Some(g) = st.at(term).get_mut(&group) else {
                let _ = reply.send((errors::UNKNOWN_MEMBER_ID, Bytes::new(), None));
                return;
            };
            let Some(m) = g.members.get_mut(&member) else {
                let _ = reply.send((errors::UNKNOWN_MEMBER_ID, Bytes::new(), None));
                return;
            };
            m.last_seen = now;
            if generation != g.generation {
                let _ = reply.send((errors::ILLEGAL_GENERATION, Bytes::new(), None));
                return;
            }
            match g.phase {
                Phase::Empty | Phase::Preparing { .. } => {
                    let _ = reply.send((errors::REBALANCE_IN_PROGRESS, Bytes::new(), None));
                }
                Phase::Stable => {
                    let a = g.assignments.get(&member).cloned().unwrap_or_default();
                    let _ = reply.send((errors::NONE, a, g.protocol.clone()));
                }
                Phase::Completing if g.leader.as_deref() != Some(member.as_str()) => {
                    m.sync = Some(reply);
                }
                Phase::Completing => {
                    g.assignments = assignments
                        .into_iter()
                        .filter(|(id, _)| g.members.contains_key(id))
                        .collect();
                    g.phase = Phase::Stable;
                    let protocol = g.protocol.clone();
                    for (id, m) in g.members.iter_mut() {
                        if let Some(s) = m.sync.take() {
                            let a = g.assignments.get(id).cloned().unwrap_or_default();
                            let _ = s.send((errors::NONE, a, protocol.clone()));
                        }
                    }
                    let a = g.assignments.get(&member).cloned().unwrap_or_default();
                    let _ = reply.send((errors::NONE, a, protocol));
                }
            }
        }
        Msg::Heartbeat {
            term,
            group,
            generation,
            member,
            reply,
        } => {
            let code = match st.at(term).get_mut(&group) {
                None => errors::UNKNOWN_MEMBER_ID,
                Some(g) => match g.members.get_mut(&member) {
                    None => errors::UNKNOWN_MEMBER_ID,
                    Some(m) => {
                        m.last_seen = now;
                        if generation != g.generation {
                            errors::ILLEGAL_GENERATION
                        } else if let Phase::Preparing { .. } = g.phase {
                            errors::REBALANCE_IN_PROGRESS
                        } else {
                            errors::NONE
                        }
                    }
                },
            };
            let _ = reply.send(code);
        }
        Msg::Leave {
            term,
            group,
            members,
            reply,
        } => {
            let mut out = Vec::new();
            let g = st.at(term).get_mut(&group);
            let Some(g) = g else {
                let _ = reply.send(
                    members
                        .into_iter()
                        .map(|m| (m, errors::UNKNOWN_MEMBER_ID))
                        .collect(),
                );
                return;
            };
            for id in members {
                match g.members.remove(&id) {
                    Some(m) => {
                        if let Some(j) = m.join {
                            let _ = j.send(
                                JoinGroupResponse::default()
                                    .with_error_code(errors::UNKNOWN_MEMBER_ID)
                                    .with_generation_id(-1),
                            );
                        }
                        out.push((id, errors::NONE));
                    }
                    None => out.push((id, errors::UNKNOWN_MEMBER_ID)),
                }
            }
            if g.members.is_empty() {
                g.phase = Phase::Empty;
                g.leader = None;
            } else if out.iter().any(|(_, c)| *c == errors::NONE) {
                g.rebalance(now, now);
                g.try_complete(now);
            }
            let _ = reply.send(out);
        }
        Msg::CheckCommit {
            term,
            group,
            generation,
            member,
            reply,
        } => {
            let code = match st.at(term).get_mut(&group) {
                None => errors::UNKNOWN_MEMBER_ID,
                Some(g) => match g.members.get_mut(&member) {
                    None => errors::UNKNOWN_MEMBER_ID,
                    Some(_) if generation != g.generation => errors::ILLEGAL_GENERATION,
                    Some(_) if g.phase == Phase::Completing => errors::REBALANCE_IN_PROGRESS,
                    Some(m) => {
                        m.last_seen = now;
                        errors::NONE
                    }
                },
            };
            let _ = reply.send(code);
        }
        Msg::List(reply) => {
            let groups = st
                .groups
                .iter()
                .map(|(name, g)| {
                    ListedGroup::default()
                        .with_group_id(GroupId(kstr(name.clone())))
                        .with_protocol_type(kstr(g.protocol_type.clone()))
                        .with_group_state(kstr(g.state_name()))
                })
                .collect();
            let _ = reply.send(groups);
        }
        Msg::Describe(term, names, reply) => {
            let groups = st.at(term);
            let described = names
                .into_iter()
                .map(|name| {
                    let out = DescribedGroup::default().with_group_id(GroupId(kstr(name.clone())));
                    match groups.get(&name) {
                        None => out.with_group_state(kstr("Dead")),
                        Some(g) => describe(g, out),
                    }
                })
                .collect();
            let _ = reply.send(described);
        }
    }
}

/// A group as `DescribeGroups` shows it; members' metadata and assignments are those of the
/// chosen protocol, and the protocol is named only once the generation is formed.
fn describe(g: &Group, out: DescribedGroup) -> DescribedGroup {
    let formed = matches!(g.phase, Phase::Completing | Phase::Stable);
    let members = g
        .members
        .iter()
        .map(|(id, m)| {
            let metadata = m
                .protocols
                .iter()
                .find(|(n, _)| Some(n) == g.protocol.as_ref())
                .map(|(_, b)| b.clone())
                .unwrap_or_default();
            DescribedGroupMember::default()
                .with_member_id(kstr(id.clone()))
                .with_client_id(kstr(m.client.clone()))
                .with_client_host(kstr(m.host.clone()))
                .with_member_metadata(metadata)
                .with_member_assignment(g.assignments.get(id).cloned().unwrap_or_default())
        })
        .collect();
    out.with_group_state(kstr(g.state_name()))
        .with_protocol_type(kstr(g.protocol_type.clone()))
        .with_protocol_data(kstr(if formed {
            g.protocol.clone().unwrap_or_default()
        } else {
            String::new()
        }))
        .with_members(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(group: &str, member: &str) -> Join {
        Join {
            group: group.into(),
            member: member.into(),
            client: "c".into(),
            host: "/127.0.0.1".into(),
            session: Duration::from_secs(10),
            rebalance: Duration::from_secs(10),
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            id_first: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_members_form_a_generation_and_a_third_rebalances_it() {
        let c = Coordinator::start();
        let first = c.join(1, join("g", "")).await;
        assert_eq!(first.error_code, errors::MEMBER_ID_REQUIRED);
        let a = first.member_id.to_string();
        let second = c.join(1, join("g", "")).await;
        let b = second.member_id.to_string();
        let (ja, jb) = tokio::join!(c.join(1, join("g", &a)), c.join(1, join("g", &b)));
        assert_eq!((ja.error_code, jb.error_code), (0, 0));
        assert_eq!(ja.generation_id, 1);
        let leader = ja.leader.to_string();
        let (lead, follow) = if leader == a { (&a, &b) } else { (&b, &a) };
        let assignments = vec![
            (a.clone(), Bytes::from_static(b"pa")),
            (b.clone(), Bytes::from_static(b"pb")),
        ];
        let (fs, ls) = tokio::join!(
            c.sync(1, "g".into(), 1, follow.clone(), Vec::new()),
            c.sync(1, "g".into(), 1, lead.clone(), assignments)
        );
        assert_eq!((fs.0, ls.0), (0, 0));
        assert_eq!(fs.1, if *follow == a { "pa" } else { "pb" }.as_bytes());
        assert_eq!(c.heartbeat(1, "g".into(), 1, a.clone()).await, 0);
        assert_eq!(c.check_commit(1, "g".into(), 1, a.clone()).await, 0);
        let described = c.describe(1, vec!["g".into(), "nope".into()]).await;
        assert_eq!(described[0].group_state.as_str(), "Stable");
        assert_eq!(described[0].protocol_data.as_str(), "range");
        let mut seen: Vec<(String, Bytes)> = described[0]
            .members
            .iter()
            .map(|m| (m.member_id.to_string(), m.member_assignment.clone()))
            .collect();
        seen.sort();
        let mut want = vec![
            (a.clone(), Bytes::from_static(b"pa")),
            (b.clone(), Bytes::from_static(b"pb")),
        ];
        want.sort();
        assert_eq!(seen, want);
        assert_eq!(described[1].group_state.as_str(), "Dead");

        // A third member starts a rebalance: the others learn it by heartbeat.
        let third = c.join(1, join("g", "")).await.member_id.to_string();
        let pending = {
            let c = c.clone();
            tokio::spawn(async move { c.join(1, join("g", &third)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            c.heartbeat(1, "g".into(), 1, a.clone()).await,
            errors::REBALANCE_IN_PROGRESS
        );
        // The old generation may still commit while it gives up its partitions...
        assert_eq!(c.check_commit(1, "g".into(), 1, b.clone()).await, 0);
        let (ra, rb) = tokio::join!(c.join(1, join("g", &a)), c.join(1, join("g", &b)));
        let rc = pending.await.expect("third joins");
        assert_eq!(
            (ra.generation_id, rb.generation_id, rc.generation_id),
            (2, 2, 2)
        );
        // ...but not once the next one formed.
        assert_eq!(
            c.check_commit(1, "g".into(), 1, b.clone()).await,
            errors::ILLEGAL_GENERATION
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_member_holds_a_rebalance_only_for_its_session() {
        let c = Coordinator::start();
        let slow = |member: &str| Join {
            rebalance: Duration::from_secs(120),
            ..join("g", member)
        };
        let a = c.join(1, slow("")).await.member_id.to_string();
        let b = c.join(1, slow("")).await.member_id.to_string();
        let (ja, _) = tokio::join!(c.join(1, slow(&a)), c.join(1, slow(&b)));
        assert_eq!(ja.generation_id, 1);
        // b goes silent; a rejoins: the new generation forms once b's 10 s session is over, not
        // after its 120 s rebalance timeout.
        let started = Instant::now();
        let again = c.join(1, slow(&a)).await;
        assert_eq!(again.generation_id, 2);
        assert_eq!(again.members.len(), 1, "only a is left");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_member_is_dropped_and_a_new_term_forgets_everything() {
        let c = Coordinator::start();
        let id = c.join(1, join("g", "")).await.member_id.to_string();
        let j = c.join(1, join("g", &id)).await;
        assert_eq!(j.generation_id, 1);
        c.sync(
            1,
            "g".into(),
            1,
            id.clone(),
            vec![(id.clone(), Bytes::new())],
        )
        .await;
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(
            c.heartbeat(1, "g".into(), 1, id.clone()).await,
            errors::UNKNOWN_MEMBER_ID
        );
        assert_eq!(
            c.heartbeat(2, "g".into(), 1, id).await,
            errors::UNKNOWN_MEMBER_ID
        );
    }
}
