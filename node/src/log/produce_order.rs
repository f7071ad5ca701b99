//! Orders an idempotent producer's batches at the partition leader before they enter the log.
//!
//! A producer keeps several batches of one partition in flight; the leader's gRPC handlers run
//! them concurrently, so batch n+1 can reach Raft before batch n. The state machine refuses it then
//! (out of order), but only after the entry was replicated and fsynced on every replica, and the
//! producer sends it again: on a loaded partition about half of the log was such retries. Here a
//! batch whose predecessor has not been proposed yet waits briefly for it, and is refused without
//! touching the log if it does not come. The first batch of a producer a leader sees in its term
//! finds where the producer stands in the partition's applied state ([`ProduceOrder::seed`]):
//! a new producer's first batches arrive together, and without that its batch 2 could overtake
//! its batch 0 and start a cascade of refusals and retries with back-off. The state machine's
//! check stays the rule; this only keeps the log free of batches it would refuse.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::error::{NodeError, NodeResult};

/// How long a batch waits for its predecessor to be proposed before it is refused.
pub const WAIT_FOR_PREDECESSOR: Duration = Duration::from_secs(1);
/// Producers remembered; the least recently active is forgotten first (its next batch finds
/// where it stands in the applied state again). An HTTP ingest request is a producer of its own,
/// so a busy node meets this limit often.
const MAX_TRACKED: usize = 10_000;

/// What the leader proposed last for one producer on one partition.
struct Slot {
    /// The leader term the proposals were made in: another term's log may have lost them.
    term: u64,
    /// The sequence number expected next.
    next: u64,
    /// When the slot was last used, as a count of uses of all slots (its place in `by_use`).
    used: u64,
    proposed: Arc<Notify>,
}

/// The slots of (partition group, producer), with an order of last use so the least recently
/// active is found without a scan.
#[derive(Default)]
struct Slots {
    by_key: BTreeMap<(u64, u64), Slot>,
    by_use: BTreeSet<(u64, (u64, u64))>,
    uses: u64,
}

impl Slots {
    /// The slot of `key`, marked as used now.
    fn used(&mut self, key: (u64, u64)) -> Option<&mut Slot> {
        let slot = self.by_key.get_mut(&key)?;
        self.by_use.remove(&(slot.used, key));
        self.uses += 1;
        slot.used = self.uses;
        self.by_use.insert((slot.used, key));
        Some(slot)
    }
}

/// The proposal order of idempotent producers on the partitions this node leads.
#[derive(Default)]
pub struct ProduceOrder {
    slots: Mutex<Slots>,
}

/// The right to propose one batch; [`Turn::proposed`] lets its successor go.
pub struct Turn<'a> {
    order: &'a ProduceOrder,
    key: (u64, u64),
    term: u64,
    sequence: u64,
    /// How far the batch moves the producer's numbering (1, or its record count for a producer
    /// that numbers records).
    step: u64,
}

impl ProduceOrder {
    fn with<T>(&self, f: impl FnOnce(&mut Slots) -> T) -> T {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut slots)
    }

    /// Whether this leader knows in `term` which batch of `producer` on `group` comes next.
    pub fn knows(&self, group: u64, producer: u64, term: u64) -> bool {
        self.with(|slots| {
            slots
                .by_key
                .get(&(group, producer))
                .is_some_and(|s| s.term == term)
        })
    }

    /// Starts the expectation for `producer` on `group` in `term` at `next`, the batch after the
    /// last one the partition has applied from it, unless a proposal of this term has set it. A
    /// leader that has applied its term holds every batch proposed before it, so from here on a
    /// batch that overtook its predecessor waits for it even when it is the producer's first
    /// batch this leader sees (a new producer sends its first batches together).
    pub fn seed(&self, group: u64, producer: u64, term: u64, next: u64) {
        self.with(|slots| {
            slot_in_term(slots, (group, producer), term, next);
        });
    }

    /// Waits until batch `sequence` of `producer` on `group` may be proposed in leader term
    /// `term`: at once when its predecessor was proposed in this term (or nothing is known of the
    /// producer here in this term: see [`ProduceOrder::seed`]), else once the predecessor is, for
    /// at most [`WAIT_FOR_PREDECESSOR`]. The batch's successor is numbered `sequence + step`.
    pub async fn turn(
        &self,
        group: u64,
        producer: u64,
        sequence: u64,
        step: u64,
        term: u64,
    ) -> NodeResult<Turn<'_>> {
        let key = (group, producer);
        let deadline = tokio::time::Instant::now() + WAIT_FOR_PREDECESSOR;
        loop {
            let waiting = self.with(|slots| match slots.used(key) {
                Some(s) if s.term == term && sequence > s.next => {
                    Some((s.next, s.proposed.clone()))
                }
                _ => None,
            });
            let Some((next, proposed)) = waiting else {
                return Ok(Turn {
                    order: self,
                    key,
                    term,
                    sequence,
                    step,
                });
            };
            let notified = proposed.notified();
            // Proposed meanwhile? Then look again rather than wait for a wake-up already sent.
            if self.with(|slots| slots.by_key.get(&key).map(|s| (s.term, s.next)))
                != Some((term, next))
            {
                continue;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(NodeError::Aborted(format!(
                    "batch {sequence} of producer {producer} arrived before batch {next}"
                )));
            }
        }
    }
}

/// The slot of `key` for leader term `term`, made (expecting batch `next`) when there is none or
/// it is of another term, whose proposals the log may have lost; the least recently active
/// producer is forgotten when too many are tracked.
fn slot_in_term(slots: &mut Slots, key: (u64, u64), term: u64, next: u64) -> &mut Slot {
    if slots.by_key.len() >= MAX_TRACKED && !slots.by_key.contains_key(&key) {
        if let Some((_, oldest)) = slots.by_use.pop_first() {
            slots.by_key.remove(&oldest);
        }
    }
    slots.uses += 1;
    let used = slots.uses;
    let slot = slots.by_key.entry(key).or_insert_with(|| Slot {
        term,
        next,
        used,
        proposed: Arc::new(Notify::new()),
    });
    slots.by_use.remove(&(slot.used, key));
    slot.used = used;
    slots.by_use.insert((used, key));
    if slot.term != term {
        slot.term = term;
        slot.next = next;
    }
    slot
}

impl Turn<'_> {
    /// Records that the batch is in the log's queue, so its successor may follow.
    pub fn proposed(self) {
        let Turn {
            order,
            key,
            term,
            sequence,
            step,
        } = self;
        order.with(|slots| {
            let slot = slot_in_term(slots, key, term, 0);
            // A retry of an earlier batch leaves the expectation where it is.
            slot.next = slot.next.max(sequence + step);
            slot.proposed.notify_waiters();
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_batch_waits_for_its_predecessor_to_be_proposed() {
        let order = Arc::new(ProduceOrder::default());
        order.turn(1, 7, 0, 1, 3).await.expect("first").proposed();
        let later = {
            let order = order.clone();
            tokio::spawn(async move {
                let t = order.turn(1, 7, 2, 1, 3).await.map(|t| t.sequence);
                t.expect("batch 2 goes once batch 1 is proposed")
            })
        };
        // Batch 2 cannot go before batch 1: it is still waiting.
        tokio::task::yield_now().await;
        assert!(!later.is_finished(), "batch 2 waits for batch 1");
        order.turn(1, 7, 1, 1, 3).await.expect("batch 1").proposed();
        assert_eq!(later.await.expect("task"), 2);
    }

    #[tokio::test]
    async fn a_batch_whose_predecessor_never_comes_is_refused() {
        let order = ProduceOrder::default();
        order.turn(1, 7, 0, 1, 3).await.expect("first").proposed();
        let err = order.turn(1, 7, 5, 1, 3).await.err().expect("refused");
        assert!(matches!(err, NodeError::Aborted(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_new_producers_later_batch_waits_for_its_first_once_seeded() {
        let order = Arc::new(ProduceOrder::default());
        assert!(!order.knows(1, 7, 3));
        // The partition holds nothing of producer 7: its batch 0 comes first.
        order.seed(1, 7, 3, 0);
        assert!(order.knows(1, 7, 3));
        let second = {
            let order = order.clone();
            tokio::spawn(async move { order.turn(1, 7, 1, 1, 3).await.map(|t| t.sequence) })
        };
        tokio::task::yield_now().await;
        assert!(!second.is_finished(), "batch 1 waits for batch 0");
        order.turn(1, 7, 0, 1, 3).await.expect("batch 0").proposed();
        assert_eq!(second.await.expect("task").expect("batch 1 goes"), 1);
        // A seed does not move back what a proposal of the term set.
        order.seed(1, 7, 3, 0);
        order.turn(1, 7, 1, 1, 3).await.expect("a retry").proposed();
        order.turn(1, 7, 2, 1, 3).await.expect("next in line");
        // A new term's seed is the applied state: its next batch goes at once.
        order.seed(1, 7, 4, 5);
        order
            .turn(1, 7, 5, 1, 4)
            .await
            .expect("next after the applied ones");
    }

    #[tokio::test]
    async fn retries_unknown_producers_and_new_terms_go_at_once() {
        let order = ProduceOrder::default();
        // Nothing known of this producer: the state machine judges.
        order.turn(1, 9, 4, 1, 3).await.expect("unknown").proposed();
        // A retry of a batch already proposed.
        order.turn(1, 9, 2, 1, 3).await.expect("retry").proposed();
        // Another term: what was proposed before may be gone.
        order
            .turn(1, 9, 8, 1, 4)
            .await
            .expect("new term")
            .proposed();
        // Another partition of the same producer is independent.
        order
            .turn(2, 9, 3, 1, 4)
            .await
            .expect("other partition")
            .proposed();
        // Next in line in the new term.
        order.turn(1, 9, 9, 1, 4).await.expect("next");
    }

    #[tokio::test]
    async fn the_least_recently_active_producer_is_forgotten_first() {
        let order = ProduceOrder::default();
        for producer in 0..MAX_TRACKED as u64 {
            order.seed(1, producer, 3, 0);
        }
        // Producer 0 is active again: producer 1 is now the least recently active.
        order.turn(1, 0, 0, 1, 3).await.expect("batch 0").proposed();
        order.seed(1, 99_999, 3, 0);
        assert!(order.knows(1, 0, 3) && order.knows(1, 99_999, 3));
        assert!(
            !order.knows(1, 1, 3),
            "the least recently active is forgotten"
        );
        assert!(order.knows(1, 2, 3));
        order.with(|slots| {
            assert_eq!(slots.by_key.len(), MAX_TRACKED);
            assert_eq!(slots.by_use.len(), MAX_TRACKED);
        });
    }
}
