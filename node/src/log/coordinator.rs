//! Consumer-group coordinator: which live consumer of a group reads which partitions.
//!
//! Runs on the leader of the offsets group and answers only while that node leads it (soft state,
//! like Kafka's group coordinator: if the leader moves, members re-register at the new one on their
//! next heartbeat and report what they read). Members that stop heartbeating for their session
//! timeout lose their partitions; every change of the member set bumps the generation and computes
//! a target assignment by ranges over the sorted member ids.
//!
//! A partition is read by one member at a time. The coordinator tracks an owner per partition, and
//! a partition the target moves from A to B goes to B only once A has given it up: A heartbeats
//! with the new generation (so it has taken up an assignment without the partition and stopped
//! reading it), leaves, or its session expires. This is the revoke-then-assign barrier of Kafka's
//! cooperative protocol. A coordinator that has just taken over does not know what members of its
//! predecessor still read, so it hands out no unowned partition until its hold has passed; members
//! re-register meanwhile and report what they own, which seeds the owner map.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use tokio::sync::{mpsc, oneshot};

/// A member's view of its group after a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Bumped whenever the member set changes.
    pub generation: u64,
    /// Partitions this member may read now.
    pub partitions: Vec<u32>,
    /// Live members of the group.
    pub members: u32,
}

/// The offsets group's leadership a request is served under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leadership {
    /// Raft term of this node's leadership of the offsets group.
    pub term: u64,
    /// No unowned partition is handed out before this instant: until then members of a previous
    /// coordinator may still read partitions they have not reported yet.
    pub assign_after: Instant,
}

/// One heartbeat of a group member.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    /// Consumer group.
    pub group: String,
    /// Topic the group reads.
    pub topic: String,
    /// The member.
    pub member: String,
    /// The member loses its partitions when not heard from for this long.
    pub session_timeout: Duration,
    /// The topic's partition count.
    pub partitions: u32,
    /// Generation whose assignment the member has taken up (0 when joining).
    pub generation: u64,
    /// Partitions the member reads now.
    pub owned: Vec<u32>,
}

/// A member's commit the group refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fenced {
    /// The member is not in the group (its session expired, it left, or the coordinator changed).
    #[error(
        "member '{member}' is not in group '{group}' (its session expired or the group's \
         coordinator changed); rejoin before committing"
    )]
    UnknownMember {
        /// Consumer group.
        group: String,
        /// The member.
        member: String,
    },
    /// The member's generation is not the group's current one.
    #[error(
        "stale generation {given} of member '{member}' in group '{group}': the group is at \
         generation {current}; rejoin before committing"
    )]
    StaleGeneration {
        /// Consumer group.
        group: String,
        /// The member.
        member: String,
        /// Generation the commit carried.
        given: u64,
        /// The group's generation.
        current: u64,
    },
    /// The member commits a partition it does not read.
    #[error(
        "member '{member}' of group '{group}' does not own partition {partition} at generation \
         {generation}; only its owner commits it"
    )]
    NotOwner {
        /// Consumer group.
        group: String,
        /// The member.
        member: String,
        /// The partition.
        partition: u32,
        /// The group's generation.
        generation: u64,
    },
}

#[derive(Debug)]
struct Member {
    seen: Instant,
    timeout: Duration,
}

#[derive(Debug)]
struct GroupState {
    members: BTreeMap<String, Member>,
    partitions: u32,
    generation: u64,
    /// Who should read what at `generation`; `None` when the member set changed since.
    target: Option<BTreeMap<String, BTreeSet<u32>>>,
    /// Who reads each partition now (granted and not yet given up).
    owner: BTreeMap<u32, String>,
}

impl GroupState {
    /// A group first heard of under leadership `term`. Generations carry the term in their upper
    /// half, so a member's generation from an earlier coordinator never equals a current one.
    fn new(term: u64) -> GroupState {
        GroupState {
            members: BTreeMap::new(),
            partitions: 0,
            generation: term << 32,
            target: None,
            owner: BTreeMap::new(),
        }
    }

    /// Drops members whose session expired, with their partitions: an expired member's client has
    /// stopped reading by then (it gives up its partitions when it cannot heartbeat for its session
    /// timeout, counted from before the coordinator last heard it).
    fn expire(&mut self, now: Instant) {
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.seen) >= m.timeout)
            .map(|(id, _)| id.clone())
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    fn remove(&mut self, member: &str) -> bool {
        if self.members.remove(member).is_none() {
            return false;
        }
        self.owner.retain(|_, o| o != member);
        self.target = None;
        true
    }

    fn heartbeat(&mut self, now: Instant, hb: &Heartbeat, assign_after: Instant) -> Assignment {
        if hb.partitions != self.partitions {
            self.partitions = hb.partitions;
            let n = hb.partitions;
            self.owner.retain(|p, _| *p < n);
            self.target = None;
        }
        self.expire(now);
        let member = Member {
            seen: now,
            timeout: hb.session_timeout,
        };
        if self.members.insert(hb.member.clone(), member).is_none() {
            self.target = None;
        }
        // What a member reads and nobody else owns is its: a member re-registering with a new
        // coordinator keeps its partitions instead of another member being handed them.
        for &p in &hb.owned {
            if p < self.partitions {
                self.owner.entry(p).or_insert_with(|| hb.member.clone());
            }
        }
        if self.target.is_none() && now >= assign_after {
            self.generation += 1;
            self.target = Some(assign(self.members.keys(), self.partitions));
        }
        let mine: Vec<u32> = match &self.target {
            Some(target) => {
                let empty = BTreeSet::new();
                let wanted = target.get(&hb.member).unwrap_or(&empty);
                // Having taken up the current generation, the member reads nothing outside its
                // target: what it still owns beyond that is free for the next owner.
                if hb.generation == self.generation {
                    self.owner.retain(|p, o| {
                        *o != hb.member || wanted.contains(p) || hb.owned.contains(p)
                    });
                }
                if now >= assign_after {
                    for &p in wanted {
                        self.owner.entry(p).or_insert_with(|| hb.member.clone());
                    }
                }
                wanted
                    .iter()
                    .copied()
                    .filter(|p| self.owner.get(p) == Some(&hb.member))
                    .collect()
            }
            // Until the hold has passed, members keep what they own and nothing moves.
            None => self
                .owner
                .iter()
                .filter(|(_, o)| **o == hb.member)
                .map(|(p, _)| *p)
                .collect(),
        };
        Assignment {
            generation: self.generation,
            partitions: mine,
            members: self.members.len() as u32,
        }
    }

    fn check_commit(
        &mut self,
        now: Instant,
        group: &str,
        member: &str,
        generation: u64,
        partitions: &[u32],
    ) -> Result<(), Fenced> {
        self.expire(now);
        if !self.members.contains_key(member) {
            return Err(Fenced::UnknownMember {
                group: group.to_string(),
                member: member.to_string(),
            });
        }
        if generation != self.generation {
            return Err(Fenced::StaleGeneration {
                group: group.to_string(),
                member: member.to_string(),
                given: generation,
                current: self.generation,
            });
        }
        if let Some(&p) = partitions
            .iter()
            .find(|p| self.owner.get(p).map(String::as_str) != Some(member))
        {
            return Err(Fenced::NotOwner {
                group: group.to_string(),
                member: member.to_string(),
                partition: p,
                generation,
            });
        }
        Ok(())
    }
}

/// Range assignment: member `i` of `n` (sorted) gets a contiguous share of the partitions.
fn assign<'a>(
    members: impl Iterator<Item = &'a String>,
    partitions: u32,
) -> BTreeMap<String, BTreeSet<u32>> {
    let members: Vec<&String> = members.collect();
    let n = members.len() as u32;
    let mut out = BTreeMap::new();
    if n == 0 {
        return out;
    }
    let (per, extra) = (partitions / n, partitions % n);
    let mut next = 0;
    for (i, m) in members.into_iter().enumerate() {
        let take = per + u32::from((i as u32) < extra);
        out.insert(m.clone(), (next..next + take).collect());
        next += take;
    }
    out
}

/// Every group of one coordinator, valid for one leadership term of the offsets group.
#[derive(Debug, Default)]
struct Groups {
    term: u64,
    assign_after: Option<Instant>,
    groups: BTreeMap<(String, String), GroupState>,
}

impl Groups {
    /// Forgets everything learned under an earlier term: another coordinator may have served the
    /// group since.
    fn under(&mut self, leadership: Leadership) {
        if self.term != leadership.term || self.assign_after.is_none() {
            self.term = leadership.term;
            self.assign_after = Some(leadership.assign_after);
            self.groups.clear();
        }
    }

    fn assign_after(&self) -> Instant {
        self.assign_after.unwrap_or_else(Instant::now)
    }
}

enum Msg {
    Heartbeat {
        hb: Heartbeat,
        leadership: Leadership,
        reply: oneshot::Sender<Assignment>,
    },
    CheckCommit {
        group: String,
        topic: String,
        member: String,
        generation: u64,
        partitions: Vec<u32>,
        leadership: Leadership,
        reply: oneshot::Sender<Result<(), Fenced>>,
    },
    Leave {
        group: String,
        topic: String,
        member: String,
        leadership: Leadership,
    },
}

/// Handle of the coordinator actor.
#[derive(Clone)]
pub struct Coordinator {
    tx: mpsc::Sender<Msg>,
}

impl Coordinator {
    /// Starts the coordinator task.
    pub fn start() -> Coordinator {
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(run(rx));
        Coordinator { tx }
    }

    /// Registers a heartbeat and returns the member's assignment; `None` if the actor stopped.
    pub async fn heartbeat(&self, hb: Heartbeat, leadership: Leadership) -> Option<Assignment> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Heartbeat {
                hb,
                leadership,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Checks that `member` may commit `partitions` at `generation`; `None` if the actor stopped.
    pub async fn check_commit(
        &self,
        group: String,
        topic: String,
        member: String,
        generation: u64,
        partitions: Vec<u32>,
        leadership: Leadership,
    ) -> Option<Result<(), Fenced>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::CheckCommit {
                group,
                topic,
                member,
                generation,
                partitions,
                leadership,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Removes `member` from its group at once; its partitions are free for others.
    pub async fn leave(
        &self,
        group: String,
        topic: String,
        member: String,
        leadership: Leadership,
    ) {
        let _ = self
            .tx
            .send(Msg::Leave {
                group,
                topic,
                member,
                leadership,
            })
            .await;
    }
}

async fn run(mut rx: mpsc::Receiver<Msg>) {
    let mut state = Groups::default();
    while let Some(msg) = rx.recv().await {
        let now = Instant::now();
        match msg {
            Msg::Heartbeat {
                hb,
                leadership,
                reply,
            } => {
                state.under(leadership);
                let assign_after = state.assign_after();
                let st = state
                    .groups
                    .entry((hb.group.clone(), hb.topic.clone()))
                    .or_insert_with(|| GroupState::new(leadership.term));
                let _ = reply.send(st.heartbeat(now, &hb, assign_after));
            }
            Msg::CheckCommit {
                group,
                topic,
                member,
                generation,
                partitions,
                leadership,
                reply,
            } => {
                state.under(leadership);
                let answer = match state.groups.get_mut(&(group.clone(), topic)) {
                    Some(st) => st.check_commit(now, &group, &member, generation, &partitions),
                    None => Err(Fenced::UnknownMember { group, member }),
                };
                let _ = reply.send(answer);
            }
            Msg::Leave {
                group,
                topic,
                member,
                leadership,
            } => {
                state.under(leadership);
                if let Some(st) = state.groups.get_mut(&(group, topic)) {
                    st.remove(&member);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TERM: u64 = 1;

    fn leading() -> Leadership {
        Leadership {
            term: TERM,
            assign_after: Instant::now(),
        }
    }

    fn hb(member: &str, timeout_ms: u64, generation: u64, owned: &[u32]) -> Heartbeat {
        Heartbeat {
            group: "g".into(),
            topic: "t".into(),
            member: member.into(),
            session_timeout: Duration::from_millis(timeout_ms),
            partitions: 4,
            generation,
            owned: owned.to_vec(),
        }
    }

    async fn commit(
        c: &Coordinator,
        member: &str,
        generation: u64,
        partitions: &[u32],
    ) -> Option<Result<(), Fenced>> {
        c.check_commit(
            "g".into(),
            "t".into(),
            member.into(),
            generation,
            partitions.to_vec(),
            leading(),
        )
        .await
    }

    #[test]
    fn ranges_cover_every_partition_once() {
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let a = assign(members.iter(), 8);
        let mut all: Vec<u32> = a.values().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(a["a"], BTreeSet::from([0, 1, 2]));
        assert_eq!(a["c"], BTreeSet::from([6, 7]));
    }

    #[tokio::test]
    async fn a_partition_moves_only_after_its_owner_took_up_the_new_generation() {
        let c = Coordinator::start();
        let a = c
            .heartbeat(hb("a", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        let g1 = a.generation;

        // "b" joins: the target gives it 2 and 3, but "a" still reads them.
        let b = c
            .heartbeat(hb("b", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        let g2 = b.generation;
        assert!(g2 > g1);
        assert_eq!(b.partitions, Vec::<u32>::new(), "b must wait for a");
        assert_eq!(b.members, 2);
        // Still nothing while "a" has not heartbeated with the new generation.
        let b = c
            .heartbeat(hb("b", 10_000, g2, &[]), leading())
            .await
            .unwrap();
        assert!(b.partitions.is_empty());
        // "a" hears of generation g2: it is told to keep 0 and 1 only.
        let a = c
            .heartbeat(hb("a", 10_000, g1, &[0, 1, 2, 3]), leading())
            .await
            .unwrap();
        assert_eq!((a.generation, a.partitions.clone()), (g2, vec![0, 1]));
        // An old report of "a" (still at g1) does not free anything.
        let b = c
            .heartbeat(hb("b", 10_000, g2, &[]), leading())
            .await
            .unwrap();
        assert!(b.partitions.is_empty());
        // "a" took up g2 and stopped reading 2 and 3: now they are b's.
        let a = c
            .heartbeat(hb("a", 10_000, g2, &[0, 1]), leading())
            .await
            .unwrap();
        assert_eq!(a.partitions, vec![0, 1]);
        let b = c
            .heartbeat(hb("b", 10_000, g2, &[]), leading())
            .await
            .unwrap();
        assert_eq!((b.generation, b.partitions), (g2, vec![2, 3]));
    }

    #[tokio::test]
    async fn a_silent_owner_gives_its_partitions_up_when_its_session_expires() {
        let c = Coordinator::start();
        let a = c.heartbeat(hb("a", 300, 0, &[]), leading()).await.unwrap();
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        let b = c
            .heartbeat(hb("b", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        assert!(b.partitions.is_empty(), "b must wait for a");
        // "a" stops heartbeating; after its session timeout "b" gets everything.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let b = c
                .heartbeat(hb("b", 10_000, b.generation, &[]), leading())
                .await
                .unwrap();
            if b.partitions == vec![0, 1, 2, 3] {
                assert_eq!(b.members, 1);
                break;
            }
            assert!(
                b.partitions.is_empty(),
                "b read a's partitions before a expired"
            );
            assert!(Instant::now() < deadline, "member a never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_member_that_leaves_frees_its_partitions_at_once() {
        let c = Coordinator::start();
        let a = c
            .heartbeat(hb("a", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        let b = c
            .heartbeat(hb("b", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        assert!(b.partitions.is_empty());
        c.leave("g".into(), "t".into(), "a".into(), leading()).await;
        let b = c
            .heartbeat(hb("b", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        assert_eq!(b.partitions, vec![0, 1, 2, 3]);
        assert!(b.generation > a.generation);
    }

    #[tokio::test]
    async fn commits_need_the_current_generation_and_ownership() {
        let c = Coordinator::start();
        let a = c
            .heartbeat(hb("a", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        let g1 = a.generation;
        assert_eq!(commit(&c, "a", g1, &[0, 3]).await.unwrap(), Ok(()));
        assert!(matches!(
            commit(&c, "x", g1, &[0]).await.unwrap(),
            Err(Fenced::UnknownMember { .. })
        ));

        let b = c
            .heartbeat(hb("b", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        let g2 = b.generation;
        // "a" has not heard of g2: its commit is stale, and the message says so.
        let err = commit(&c, "a", g1, &[0]).await.unwrap().unwrap_err();
        assert!(
            matches!(err, Fenced::StaleGeneration { given, current, .. } if given == g1 && current == g2)
        );
        assert!(err.to_string().contains("stale generation"), "{err}");
        // At g2, "a" still owns 2 and 3 until it gives them up, so it may hand over its progress.
        assert_eq!(commit(&c, "a", g2, &[2, 3]).await.unwrap(), Ok(()));
        // "b" owns nothing yet.
        assert!(matches!(
            commit(&c, "b", g2, &[2]).await.unwrap(),
            Err(Fenced::NotOwner { partition: 2, .. })
        ));
        c.heartbeat(hb("a", 10_000, g2, &[0, 1]), leading())
            .await
            .unwrap();
        c.heartbeat(hb("b", 10_000, g2, &[]), leading())
            .await
            .unwrap();
        // After the hand-over, 2 is b's: "a" may no longer move it.
        assert!(matches!(
            commit(&c, "a", g2, &[2]).await.unwrap(),
            Err(Fenced::NotOwner { partition: 2, .. })
        ));
        assert_eq!(commit(&c, "b", g2, &[2, 3]).await.unwrap(), Ok(()));
    }

    #[tokio::test]
    async fn a_member_joining_after_everyone_left_gets_every_partition_after_a_hold() {
        let c = Coordinator::start();
        let hold = Duration::from_millis(200);
        let took_over = Leadership {
            term: TERM + 1,
            assign_after: Instant::now() + hold,
        };
        // Two members join during the hold and are given partitions once it has passed.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (mut ga, mut gb) = (0, 0);
        loop {
            let a = c
                .heartbeat(hb("a", 10_000, ga, &[]), took_over)
                .await
                .unwrap();
            let b = c
                .heartbeat(hb("b", 10_000, gb, &[]), took_over)
                .await
                .unwrap();
            (ga, gb) = (a.generation, b.generation);
            if a.partitions.len() + b.partitions.len() == 4 {
                break;
            }
            assert!(Instant::now() < deadline, "a and b never got partitions");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Both leave; a newcomer gets all four.
        c.leave("g".into(), "t".into(), "a".into(), took_over).await;
        c.leave("g".into(), "t".into(), "b".into(), took_over).await;
        let mut gd = 0;
        loop {
            let d = c
                .heartbeat(hb("d", 10_000, gd, &[]), took_over)
                .await
                .unwrap();
            gd = d.generation;
            if d.partitions == vec![0, 1, 2, 3] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "d got {:?} at generation {gd}",
                d.partitions
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_new_coordinator_hands_out_nothing_before_its_hold_and_keeps_reported_owners() {
        let c = Coordinator::start();
        let old = c
            .heartbeat(hb("a", 10_000, 0, &[]), leading())
            .await
            .unwrap();
        let hold = Duration::from_millis(300);
        let next = Leadership {
            term: TERM + 1,
            assign_after: Instant::now() + hold,
        };
        // A member of the old coordinator is unknown to the new one: its commits are refused.
        assert!(matches!(
            c.check_commit(
                "g".into(),
                "t".into(),
                "a".into(),
                old.generation,
                vec![0],
                next
            )
            .await
            .unwrap(),
            Err(Fenced::UnknownMember { .. })
        ));
        // "b" re-registers reporting 2 and 3 (it read them under the old coordinator); "a" has not
        // re-registered yet. A newcomer "c" gets nothing during the hold, "b" keeps what it reads.
        let held = c
            .heartbeat(hb("b", 10_000, 7, &[2, 3]), next)
            .await
            .unwrap();
        assert_eq!(held.partitions, vec![2, 3]);
        assert!(held.generation > old.generation);
        let cc = c.heartbeat(hb("c", 10_000, 0, &[]), next).await.unwrap();
        assert!(cc.partitions.is_empty());
        // The hold passes; "a" never came back, so its partitions 0 and 1 go to their targets,
        // while 2 and 3 stay with "b" until it takes up the new generation.
        let deadline = Instant::now() + Duration::from_secs(5);
        let (b, cc) = loop {
            let b = c
                .heartbeat(hb("b", 10_000, 7, &[2, 3]), next)
                .await
                .unwrap();
            let cc = c
                .heartbeat(hb("c", 10_000, cc.generation, &[]), next)
                .await
                .unwrap();
            if b.generation > held.generation && cc.generation == b.generation {
                break (b, cc);
            }
            assert_eq!(
                b.partitions,
                vec![2, 3],
                "b keeps its partitions during the hold"
            );
            assert!(
                cc.partitions.is_empty(),
                "c got a partition during the hold"
            );
            assert!(Instant::now() < deadline, "the hold never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Target: b gets 0 and 1, c gets 2 and 3. b owns 2 and 3 until it took up the generation.
        assert_eq!(b.partitions, vec![0, 1]);
        assert!(cc.partitions.is_empty(), "c must wait for b");
        c.heartbeat(hb("b", 10_000, b.generation, &[0, 1]), next)
            .await
            .unwrap();
        let cc = c
            .heartbeat(hb("c", 10_000, cc.generation, &[]), next)
            .await
            .unwrap();
        assert_eq!(cc.partitions, vec![2, 3]);
    }
}
