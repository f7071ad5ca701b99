//! Consumer-group coordinator: which live consumer of a group reads which partitions.
//!
//! Runs on the leader of the offsets group (soft state, like Kafka's group coordinator: if the
//! leader moves, members simply re-register on their next heartbeat). Members that stop
//! heartbeating for their session timeout lose their partitions; every change of the member set
//! bumps the generation and reassigns partitions by ranges over the sorted member ids.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// A member's view of its group after a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// Bumped whenever the member set changes.
    pub generation: u64,
    /// Partitions this member should read.
    pub partitions: Vec<u32>,
    /// Live members of the group.
    pub members: u32,
}

#[derive(Default)]
struct GroupState {
    members: BTreeMap<String, (Instant, Duration)>,
    generation: u64,
    assignment: HashMap<String, Vec<u32>>,
}

impl GroupState {
    fn expire(&mut self, now: Instant) -> bool {
        let before = self.members.len();
        self.members
            .retain(|_, (seen, timeout)| now.duration_since(*seen) < *timeout);
        before != self.members.len()
    }

    fn rebalance(&mut self, partitions: u32) {
        self.generation += 1;
        self.assignment = assign(self.members.keys(), partitions);
    }
}

/// Range assignment: member `i` of `n` (sorted) gets a contiguous share of the partitions.
fn assign<'a>(
    members: impl Iterator<Item = &'a String>,
    partitions: u32,
) -> HashMap<String, Vec<u32>> {
    let members: Vec<&String> = members.collect();
    let n = members.len() as u32;
    let mut out = HashMap::new();
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

enum Msg {
    Heartbeat {
        group: String,
        topic: String,
        member: String,
        session_timeout: Duration,
        partitions: u32,
        reply: oneshot::Sender<Assignment>,
    },
    Leave {
        group: String,
        topic: String,
        member: String,
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

    /// Registers a heartbeat of `member` and returns its assignment.
    pub async fn heartbeat(
        &self,
        group: String,
        topic: String,
        member: String,
        session_timeout: Duration,
        partitions: u32,
    ) -> Option<Assignment> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Msg::Heartbeat {
                group,
                topic,
                member,
                session_timeout,
                partitions,
                reply,
            })
            .await
            .ok()?;
        rx.await.ok()
    }

    /// Removes `member` from its group at once.
    pub async fn leave(&self, group: String, topic: String, member: String) {
        let _ = self
            .tx
            .send(Msg::Leave {
                group,
                topic,
                member,
            })
            .await;
    }
}

async fn run(mut rx: mpsc::Receiver<Msg>) {
    let mut groups: HashMap<(String, String), GroupState> = HashMap::new();
    while let Some(msg) = rx.recv().await {
        let now = Instant::now();
        match msg {
            Msg::Heartbeat {
                group,
                topic,
                member,
                session_timeout,
                partitions,
                reply,
            } => {
                let st = groups.entry((group, topic)).or_default();
                let expired = st.expire(now);
                let joined = st
                    .members
                    .insert(member.clone(), (now, session_timeout))
                    .is_none();
                let covered: usize = st.assignment.values().map(Vec::len).sum();
                if expired || joined || covered != partitions as usize {
                    st.rebalance(partitions);
                }
                let _ = reply.send(Assignment {
                    generation: st.generation,
                    partitions: st.assignment.get(&member).cloned().unwrap_or_default(),
                    members: st.members.len() as u32,
                });
            }
            Msg::Leave {
                group,
                topic,
                member,
            } => {
                if let Some(st) = groups.get_mut(&(group, topic)) {
                    if st.members.remove(&member).is_some() {
                        let partitions = st.assignment.values().map(Vec::len).sum::<usize>();
                        st.rebalance(partitions as u32);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_partition_once() {
        let members: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let a = assign(members.iter(), 8);
        let mut all: Vec<u32> = a.values().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..8).collect::<Vec<_>>());
        assert_eq!(a["a"], vec![0, 1, 2]);
        assert_eq!(a["c"], vec![6, 7]);
    }

    #[tokio::test]
    async fn a_silent_member_loses_its_partitions() {
        let c = Coordinator::start();
        let hb = |m: &str, t: u64| {
            c.heartbeat(
                "g".into(),
                "t".into(),
                m.into(),
                Duration::from_millis(t),
                4,
            )
        };
        let a = hb("a", 100).await.unwrap();
        assert_eq!(a.partitions, vec![0, 1, 2, 3]);
        let b = hb("b", 10_000).await.unwrap();
        assert_eq!(b.partitions, vec![2, 3]);
        assert_eq!(b.members, 2);
        // "a" stops heartbeating; after its session timeout "b" gets everything.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let b = hb("b", 10_000).await.unwrap();
            if b.partitions == vec![0, 1, 2, 3] {
                assert_eq!(b.members, 1);
                break;
            }
            assert!(Instant::now() < deadline, "member a never expired");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
