//! Linearizability checker for a key/value register with compare-and-set.
//!
//! Clients record every operation into a [`History`]; [`check`] then decides whether one total
//! order of the operations, consistent with real time, explains every observed result. Each key
//! is an independent register and linearizability is compositional, so the history is split per
//! key and each part is searched on its own with the Wing & Gong algorithm as refined by Lowe
//! (the one Knossos and Porcupine use): a depth-first search over which pending operation takes
//! effect next, memoizing the (operations already applied, register value) pairs it has explored
//! so that no configuration is searched twice.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// One operation a client performed on a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Unconditional write.
    Put {
        /// Value the key holds afterwards; `None` deletes it.
        value: Option<Vec<u8>>,
    },
    /// Read of the current value.
    Get,
    /// Write that happens only if the key currently holds `expected`.
    Cas {
        /// Value required beforehand; `None` requires the key to be absent.
        expected: Option<Vec<u8>>,
        /// Value the key holds afterwards if the swap happens; `None` deletes it.
        new: Option<Vec<u8>>,
    },
}

/// What the client observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A `Put` was acknowledged.
    Ok,
    /// A `Get` returned this value, `None` meaning the key was absent.
    Value(Option<Vec<u8>>),
    /// A `Cas` reported whether it swapped.
    CasResult(bool),
    /// The client gave up (timeout, error), so the operation may have taken effect at any time after its invocation, or never.
    Unknown,
}

/// One entry in a recorded history.
#[derive(Debug, Clone)]
pub struct Event {
    /// Issuing client, only used in failure reports because real-time order comes from the timestamps alone.
    pub client: usize,
    /// Key the operation addressed; every key is checked as a separate register.
    pub key: Vec<u8>,
    /// What the client asked for.
    pub op: Op,
    /// What the client saw.
    pub outcome: Outcome,
    /// [`History::now_ns`] taken just before the request was sent, so the effect cannot precede it.
    pub invoke_ns: u64,
    /// [`History::now_ns`] taken just after the response arrived; ignored for [`Outcome::Unknown`], whose effect may land arbitrarily late.
    pub complete_ns: u64,
}

/// Thread-safe recorder: clients call `record(...)` after each op, with timestamps from one shared monotonic clock so that events of different clients are comparable.
#[derive(Debug)]
pub struct History {
    start: Instant,
    events: Mutex<Vec<Event>>,
}

impl Default for History {
    fn default() -> Self {
        Self::new()
    }
}

impl History {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            events: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history was created, from a monotonic clock shared by all clients.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Appends one completed (or abandoned) operation.
    pub fn record(&self, e: Event) {
        // A client thread that panicked mid-test must not hide what the others recorded.
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(e);
    }

    /// A snapshot of everything recorded so far, in recording order (which [`check`] does not rely on).
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Result of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every key's operations can be ordered consistently with real time and register semantics.
    Linearizable,
    /// Some key's history has no valid order; `detail` names the operation the search could not get past.
    NotLinearizable {
        /// The key whose history is not linearizable.
        key: Vec<u8>,
        /// Human-readable account of the operation that could not be linearized and its surroundings.
        detail: String,
    },
    /// No verdict: the history is malformed, or the search hit its step or memory limit (it is exponential in the worst case).
    Inconclusive(String),
}

/// Checks `events` against a register per key that starts out holding `initial`.
///
/// Operations whose timestamps tie are treated as concurrent, because the clock cannot order
/// events that happened within one tick. Each key's search is bounded separately by a step and
/// a memoization-size limit; reaching either yields [`Verdict::Inconclusive`], but a violation
/// found on any key takes precedence.
pub fn check(events: &[Event], initial: Option<Vec<u8>>) -> Verdict {
    check_with_limits(events, initial.as_deref(), DEFAULT_LIMITS)
}

/// Bounds on one key's search, which is exponential in the number of concurrent operations.
#[derive(Debug, Clone, Copy)]
struct Limits {
    steps: u64,
    cache_entries: usize,
}

// Roughly ten seconds of searching and at most about a gigabyte of memo per key.
const DEFAULT_LIMITS: Limits = Limits {
    steps: 50_000_000,
    cache_entries: 10_000_000,
};

fn check_with_limits<'a>(
    events: &'a [Event],
    initial: Option<&'a [u8]>,
    limits: Limits,
) -> Verdict {
    let mut by_key: BTreeMap<&[u8], Vec<&Event>> = BTreeMap::new();
    for e in events {
        by_key.entry(e.key.as_slice()).or_default().push(e);
    }
    // Every key is prepared before any is searched, so a malformed event is reported even when
    // another key would have failed first.
    let mut problems = Vec::with_capacity(by_key.len());
    for (key, evs) in by_key {
        match KeyProblem::new(&evs, initial) {
            Ok(p) => problems.push((key, p)),
            Err(why) => return Verdict::Inconclusive(why),
        }
    }
    let mut inconclusive = None;
    for (key, problem) in problems {
        match problem.search(limits) {
            Search::Linearizable => {}
            Search::Violation(detail) => {
                return Verdict::NotLinearizable {
                    key: key.to_vec(),
                    detail,
                }
            }
            Search::GaveUp(why) => {
                inconclusive.get_or_insert_with(|| format!("key {}: {why}", fmt_bytes(key)));
            }
        }
    }
    inconclusive.map_or(Verdict::Linearizable, Verdict::Inconclusive)
}

enum Search {
    Linearizable,
    Violation(String),
    GaveUp(String),
}

/// What applying an operation requires of and does to the register, with values interned so
/// that states compare and hash as integers.
#[derive(Debug, Clone, Copy)]
enum Effect {
    Write(u32),
    Read(u32),
    Swap { expected: u32, new: u32 },
    NoSwap { expected: u32 },
}

impl Effect {
    fn apply(self, state: u32) -> Option<u32> {
        match self {
            Effect::Write(v) => Some(v),
            Effect::Read(v) => (state == v).then_some(state),
            Effect::Swap { expected, new } => (state == expected).then_some(new),
            Effect::NoSwap { expected } => (state != expected).then_some(state),
        }
    }
}

struct SearchOp<'a> {
    event: &'a Event,
    effect: Effect,
    /// The outcome is unknown, so the search may leave this operation out entirely.
    optional: bool,
}

#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<Option<&'a [u8]>, u32>,
    values: Vec<Option<&'a [u8]>>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, v: Option<&'a [u8]>) -> u32 {
        *self.ids.entry(v).or_insert_with(|| {
            self.values.push(v);
            u32::try_from(self.values.len() - 1).expect("fewer than 2^32 distinct values")
        })
    }
}

/// One key's history, reduced to what the search needs.
struct KeyProblem<'a> {
    ops: Vec<SearchOp<'a>>,
    values: Vec<Option<&'a [u8]>>,
    initial: u32,
}

impl<'a> KeyProblem<'a> {
    fn new(events: &[&'a Event], initial: Option<&'a [u8]>) -> Result<Self, String> {
        let mut interner = Interner::default();
        let initial = interner.id(initial);
        let mut ops = Vec::with_capacity(events.len());
        for &e in events {
            let optional = e.outcome == Outcome::Unknown;
            let effect = match (&e.op, &e.outcome) {
                // An abandoned read neither constrains nor changes the register.
                (Op::Get, Outcome::Unknown) => continue,
                (Op::Put { value }, Outcome::Ok | Outcome::Unknown) => {
                    Effect::Write(interner.id(value.as_deref()))
                }
                (Op::Get, Outcome::Value(v)) => Effect::Read(interner.id(v.as_deref())),
                // A swap of a value for itself changes nothing whether or not it happened.
                (Op::Cas { expected, new }, Outcome::Unknown) if expected == new => continue,
                (Op::Cas { expected, new }, Outcome::CasResult(true) | Outcome::Unknown) => {
                    Effect::Swap {
                        expected: interner.id(expected.as_deref()),
                        new: interner.id(new.as_deref()),
                    }
                }
                (Op::Cas { expected, .. }, Outcome::CasResult(false)) => Effect::NoSwap {
                    expected: interner.id(expected.as_deref()),
                },
                _ => {
                    return Err(format!(
                        "malformed event (outcome does not fit the operation): {}",
                        describe(e)
                    ))
                }
            };
            if !optional && e.complete_ns < e.invoke_ns {
                return Err(format!(
                    "malformed event (completed before it was invoked): {}",
                    describe(e)
                ));
            }
            ops.push(SearchOp {
                event: e,
                effect,
                optional,
            });
        }
        // Bit positions in the memo keys are u32.
        if ops.len() >= (u32::MAX / 2) as usize {
            return Err(format!("{} operations on one key is too many", ops.len()));
        }
        Ok(Self {
            ops,
            values: interner.values,
            initial,
        })
    }

    /// Wing & Gong / Lowe: walk the time-ordered list of invocations and responses; at an
    /// invocation, try to apply that operation next; at a response, the operation that responded
    /// has not been applied yet, so the current partial order is a dead end and the most recent
    /// choice is undone.
    fn search(&self, limits: Limits) -> Search {
        let mut remaining = self.ops.iter().filter(|o| !o.optional).count();
        if remaining == 0 {
            return Search::Linearizable;
        }
        let mut list = EntryList::new(&self.ops);
        let mut applied = Applied::new(self.ops.len());
        let mut cache: HashSet<Box<[u32]>> = HashSet::new();
        let mut memo_key = Vec::new();
        // Applied operations with the register value before each, for backtracking.
        let mut stack: Vec<(usize, u32)> = Vec::new();
        let mut state = self.initial;
        // Entry 0 is the list head, so the first response reached always replaces this.
        let mut furthest = Furthest {
            entry: 0,
            op: 0,
            state,
            applied: 0,
            recent: Vec::new(),
        };
        let mut cur = list.first();
        let mut backtracks = 0u64; let mut steps = 0u64;
        for _ in 0..limits.steps { steps += 1;
            let entry = list.nodes[cur];
            if !entry.is_return {
                let op = &self.ops[entry.op];
                // Applying an optional operation without changing the register is the same as
                // leaving it out, which the search also explores.
                let next = op
                    .effect
                    .apply(state)
                    .filter(|&next| !(op.optional && next == state));
                if let Some(next) = next {
                    applied.insert(entry.op);
                    applied.memo_key(next, &mut memo_key);
                    if !cache.contains(memo_key.as_slice()) {
                        if cache.len() >= limits.cache_entries {
                            return Search::GaveUp(format!(
                                "search limit: memo reached {} entries",
                                limits.cache_entries
                            ));
                        }
                        cache.insert(memo_key.as_slice().into());
                        stack.push((entry.op, state));
                        state = next;
                        list.lift(entry.op);
                        if !op.optional {
                            remaining -= 1;
                            // Unknown operations still pending can simply never have happened.
                            if remaining == 0 {
                                eprintln!("steps {steps} backtracks {backtracks} cache {}", cache.len());
                                return Search::Linearizable;
                            }
                        }
                        cur = list.first();
                        continue;
                    }
                    applied.remove(entry.op);
                }
                // Known responses sort before the absent responses of unknown operations, so
                // while a known operation remains, a response follows and this is never the end.
                cur = entry.next;
            } else {
                if cur > furthest.entry {
                    let tail = stack.len().saturating_sub(REPORTED_RECENT);
                    furthest = Furthest {
                        entry: cur,
                        op: entry.op,
                        state,
                        applied: stack.len(),
                        recent: stack[tail..].iter().map(|&(op, _)| op).collect(),
                    };
                }
                backtracks += 1;
                let Some((op, before)) = stack.pop() else {
                    return Search::Violation(self.report(&furthest));
                };
                list.unlift(op);
                applied.remove(op);
                state = before;
                if !self.ops[op].optional {
                    remaining += 1;
                }
                cur = list.nodes[list.call[op]].next;
            }
        }
        Search::GaveUp(format!(
            "search limit: no verdict after {} steps",
            limits.steps
        ))
    }

    fn report(&self, f: &Furthest) -> String {
        let blamed = self.ops[f.op].event;
        let mut s = format!(
            "{} cannot be linearized: no order of the operations before its response explains its result. \
             Furthest partial linearization: {} of {} operations applied, register = {}",
            describe(blamed),
            f.applied,
            self.ops.len(),
            fmt_value(self.values[f.state as usize]),
        );
        if !f.recent.is_empty() {
            s.push_str(", last applied (oldest first): ");
            let recent: Vec<String> = f
                .recent
                .iter()
                .map(|&op| describe(self.ops[op].event))
                .collect();
            s.push_str(&recent.join("; "));
        }
        let concurrent: Vec<&Event> = self
            .ops
            .iter()
            .enumerate()
            .filter(|&(i, o)| {
                i != f.op
                    && o.event.invoke_ns <= blamed.complete_ns
                    && (o.optional || o.event.complete_ns >= blamed.invoke_ns)
            })
            .map(|(_, o)| o.event)
            .collect();
        if concurrent.is_empty() {
            s.push_str(". No operation was concurrent with it.");
        } else {
            let _ = write!(s, ". Concurrent with it ({}): ", concurrent.len());
            let shown: Vec<String> = concurrent
                .iter()
                .take(REPORTED_CONCURRENT)
                .map(|e| describe(e))
                .collect();
            s.push_str(&shown.join("; "));
            if concurrent.len() > REPORTED_CONCURRENT {
                let _ = write!(s, "; and {} more", concurrent.len() - REPORTED_CONCURRENT);
            }
        }
        s
    }
}

const REPORTED_RECENT: usize = 5;
const REPORTED_CONCURRENT: usize = 12;

/// The deepest dead end the search hit, which is where a person debugging should look.
struct Furthest {
    /// Position of the blocking response in time order; later means a longer explained prefix.
    entry: usize,
    op: usize,
    state: u32,
    applied: usize,
    recent: Vec<usize>,
}

const HEAD: usize = 0;
const NIL: usize = usize::MAX;

#[derive(Debug, Clone, Copy)]
struct Node {
    prev: usize,
    next: usize,
    op: usize,
    is_return: bool,
}

/// Invocations and responses in time order as a doubly linked list over a vector, so that an
/// applied operation can be unlinked and later relinked in O(1) (undone in reverse order).
struct EntryList {
    nodes: Vec<Node>,
    call: Vec<usize>,
    /// `None` for unknown operations, whose response is at infinity and can never block.
    ret: Vec<Option<usize>>,
}

impl EntryList {
    fn new(ops: &[SearchOp<'_>]) -> Self {
        let mut points: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            points.push((op.event.invoke_ns, false, i));
            if !op.optional {
                points.push((op.event.complete_ns, true, i));
            }
        }
        // On equal times invocations sort first (`false < true`), making tied operations overlap.
        points.sort_unstable();
        let mut nodes = Vec::with_capacity(points.len() + 1);
        nodes.push(Node {
            prev: NIL,
            next: if points.is_empty() { NIL } else { 1 },
            op: 0,
            is_return: false,
        });
        let mut call = vec![NIL; ops.len()];
        let mut ret = vec![None; ops.len()];
        for (i, &(_, is_return, op)) in points.iter().enumerate() {
            let idx = i + 1;
            nodes.push(Node {
                prev: idx - 1,
                next: if idx == points.len() { NIL } else { idx + 1 },
                op,
                is_return,
            });
            if is_return {
                ret[op] = Some(idx);
            } else {
                call[op] = idx;
            }
        }
        Self { nodes, call, ret }
    }

    fn first(&self) -> usize {
        self.nodes[HEAD].next
    }

    fn unlink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = next;
        if next != NIL {
            self.nodes[next].prev = prev;
        }
    }

    fn relink(&mut self, i: usize) {
        let Node { prev, next, .. } = self.nodes[i];
        self.nodes[prev].next = i;
        if next != NIL {
            self.nodes[next].prev = i;
        }
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call[op]);
        if let Some(r) = self.ret[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.ret[op] {
            self.relink(r);
        }
        self.relink(self.call[op]);
    }
}

/// The set of applied operations as a bitset that also yields a compact, exact memo key.
///
/// A full bitset per memo entry would cost n/8 bytes; but applied sets are almost always "a
/// prefix plus a few stragglers", so listing the positions where the bits flip is both short and
/// collision-free. The all-ones prefix and all-zeros suffix are tracked so each key is built in
/// time proportional to the ragged middle only.
struct Applied {
    words: Vec<u64>,
    /// Leading words that are all ones.
    full: usize,
    /// Words up to and including the last nonzero one.
    used: usize,
}

impl Applied {
    fn new(n: usize) -> Self {
        Self {
            words: vec![0; n.div_ceil(64)],
            full: 0,
            used: 0,
        }
    }

    fn insert(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] |= 1 << (i % 64);
        while self.full < self.words.len() && self.words[self.full] == u64::MAX {
            self.full += 1;
        }
        self.used = self.used.max(w + 1);
    }

    fn remove(&mut self, i: usize) {
        let w = i / 64;
        self.words[w] &= !(1 << (i % 64));
        self.full = self.full.min(w);
        while self.used > 0 && self.words[self.used - 1] == 0 {
            self.used -= 1;
        }
    }

    /// Writes the positions where membership flips (starting from "member" before position 0),
    /// then `state`; the last element is always the state, so distinct pairs never collide.
    fn memo_key(&self, state: u32, out: &mut Vec<u32>) {
        out.clear();
        let mut carry = 1u64;
        for w in self.full..self.used {
            let word = self.words[w];
            let mut flips = word ^ ((word << 1) | carry);
            while flips != 0 {
                out.push((w * 64) as u32 + flips.trailing_zeros());
                flips &= flips - 1;
            }
            carry = word >> 63;
        }
        if carry == 1 {
            out.push((self.used.max(self.full) * 64) as u32);
        }
        out.push(state);
    }
}

fn describe(e: &Event) -> String {
    let op = match &e.op {
        Op::Put { value } => format!("Put({})", fmt_value(value.as_deref())),
        Op::Get => "Get".to_string(),
        Op::Cas { expected, new } => format!(
            "Cas({} -> {})",
            fmt_value(expected.as_deref()),
            fmt_value(new.as_deref())
        ),
    };
    let outcome = match &e.outcome {
        Outcome::Ok => "ok".to_string(),
        Outcome::Value(v) => fmt_value(v.as_deref()),
        Outcome::CasResult(swapped) => swapped.to_string(),
        Outcome::Unknown => "unknown".to_string(),
    };
    let completed = if e.outcome == Outcome::Unknown {
        "never".to_string()
    } else {
        format!("{} ns", e.complete_ns)
    };
    format!(
        "client {} {op} => {outcome} [invoked {} ns, completed {completed}]",
        e.client, e.invoke_ns
    )
}

fn fmt_value(v: Option<&[u8]>) -> String {
    v.map_or_else(|| "<absent>".to_string(), fmt_bytes)
}

fn fmt_bytes(b: &[u8]) -> String {
    const MAX_SHOWN: usize = 32;
    if b.len() <= 2 * MAX_SHOWN && b.iter().all(|c| c.is_ascii_graphic() || *c == b' ') {
        return format!("{:?}", String::from_utf8_lossy(b));
    }
    let mut s = String::from("0x");
    for byte in b.iter().take(MAX_SHOWN) {
        let _ = write!(s, "{byte:02x}");
    }
    if b.len() > MAX_SHOWN {
        let _ = write!(s, "...({} bytes)", b.len());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    fn val(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    fn ev(client: usize, op: Op, outcome: Outcome, invoke_ns: u64, complete_ns: u64) -> Event {
        Event {
            client,
            key: b"k".to_vec(),
            op,
            outcome,
            invoke_ns,
            complete_ns,
        }
    }

    fn put(client: usize, v: &str, t0: u64, t1: u64) -> Event {
        ev(client, Op::Put { value: val(v) }, Outcome::Ok, t0, t1)
    }

    fn delete(client: usize, t0: u64, t1: u64) -> Event {
        ev(client, Op::Put { value: None }, Outcome::Ok, t0, t1)
    }

    fn put_unknown(client: usize, v: &str, t0: u64) -> Event {
        ev(client, Op::Put { value: val(v) }, Outcome::Unknown, t0, t0 + 1)
    }

    fn get(client: usize, v: Option<&str>, t0: u64, t1: u64) -> Event {
        ev(client, Op::Get, Outcome::Value(v.and_then(val)), t0, t1)
    }

    fn cas(client: usize, from: Option<&str>, to: Option<&str>, ok: bool, t0: u64, t1: u64) -> Event {
        let op = Op::Cas {
            expected: from.and_then(val),
            new: to.and_then(val),
        };
        ev(client, op, Outcome::CasResult(ok), t0, t1)
    }

    fn cas_unknown(client: usize, from: Option<&str>, to: Option<&str>, t0: u64) -> Event {
        let op = Op::Cas {
            expected: from.and_then(val),
            new: to.and_then(val),
        };
        ev(client, op, Outcome::Unknown, t0, 0)
    }

    #[track_caller]
    fn assert_linearizable(events: &[Event]) {
        let v = check(events, None);
        assert_eq!(v, Verdict::Linearizable, "{events:#?}");
    }

    #[track_caller]
    fn assert_violation(events: &[Event]) -> String {
        match check(events, None) {
            Verdict::NotLinearizable { key, detail } => {
                assert_eq!(key, b"k");
                detail
            }
            other => panic!("expected a violation, got {other:?} for {events:#?}"),
        }
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert_linearizable(&[]);
    }

    #[test]
    fn sequential_history_is_linearizable() {
        assert_linearizable(&[
            get(1, None, 0, 1),
            put(1, "a", 2, 3),
            get(2, Some("a"), 4, 5),
            put(2, "b", 6, 7),
            get(1, Some("b"), 8, 9),
            delete(1, 10, 11),
            get(2, None, 12, 13),
        ]);
    }

    #[test]
    fn stale_read_after_completed_write_is_rejected() {
        let detail = assert_violation(&[
            put(1, "a", 0, 10),
            put(2, "b", 20, 30),
            get(3, Some("a"), 40, 50),
        ]);
        assert!(
            detail.contains("client 3 Get => \"a\" [invoked 40 ns, completed 50 ns]"),
            "{detail}"
        );
        assert!(detail.contains("register = \"b\""), "{detail}");
    }

    #[test]
    fn read_of_overwritten_initial_value_is_rejected() {
        assert_violation(&[put(1, "a", 0, 10), get(2, None, 11, 12)]);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        for seen in ["a", "b"] {
            assert_linearizable(&[
                put(1, "a", 0, 10),
                put(2, "b", 20, 40),
                get(3, Some(seen), 25, 35),
            ]);
        }
        // Once one concurrent reader has seen the new value, a later reader must too.
        assert_violation(&[
            put(1, "a", 0, 10),
            put(2, "b", 20, 100),
            get(3, Some("b"), 25, 35),
            get(4, Some("a"), 40, 50),
        ]);
    }

    #[test]
    fn equal_timestamps_count_as_concurrent() {
        assert_linearizable(&[put(1, "a", 0, 10), get(2, None, 10, 20)]);
    }

    #[test]
    fn cas_success_and_failure_semantics() {
        assert_linearizable(&[
            cas(1, None, Some("a"), true, 0, 1),
            cas(1, Some("x"), Some("y"), false, 2, 3),
            cas(2, Some("a"), Some("b"), true, 4, 5),
            get(1, Some("b"), 6, 7),
            cas(1, Some("a"), Some("c"), false, 8, 9),
            cas(2, None, Some("c"), false, 10, 11),
            get(2, Some("b"), 12, 13),
            cas(1, Some("b"), None, true, 14, 15),
            get(2, None, 16, 17),
        ]);
        // A swap reported as done when the value did not match.
        assert_violation(&[put(1, "x", 0, 1), cas(2, Some("a"), Some("b"), true, 2, 3)]);
        // A swap reported as refused when the value did match.
        assert_violation(&[put(1, "a", 0, 1), cas(2, Some("a"), Some("b"), false, 2, 3)]);
        // A refused swap must not change the register.
        assert_violation(&[
            put(1, "a", 0, 1),
            cas(2, Some("x"), Some("b"), false, 2, 3),
            get(1, Some("b"), 4, 5),
        ]);
    }

    #[test]
    fn only_one_of_two_concurrent_identical_cas_can_win() {
        assert_linearizable(&[
            put(1, "a", 0, 1),
            cas(2, Some("a"), Some("b"), true, 10, 20),
            cas(3, Some("a"), Some("c"), false, 10, 20),
            get(1, Some("b"), 30, 40),
        ]);
        assert_violation(&[
            put(1, "a", 0, 1),
            cas(2, Some("a"), Some("b"), true, 10, 20),
            cas(3, Some("a"), Some("c"), true, 10, 20),
        ]);
    }

    #[test]
    fn unknown_put_that_later_shows_up_in_a_read_is_accepted() {
        assert_linearizable(&[
            put(1, "a", 0, 10),
            put_unknown(2, "x", 20),
            get(3, Some("a"), 1_000, 1_010),
            get(3, Some("x"), 5_000, 5_010),
            get(1, Some("x"), 6_000, 6_010),
        ]);
    }

    #[test]
    fn unknown_put_that_is_never_observed_is_accepted() {
        assert_linearizable(&[
            put(1, "a", 0, 10),
            put_unknown(2, "x", 20),
            get(3, Some("a"), 30, 40),
            get(3, Some("a"), 50, 60),
        ]);
    }

    #[test]
    fn unknown_put_takes_effect_at_most_once_and_not_before_its_invocation() {
        assert_violation(&[
            put(1, "a", 0, 10),
            put_unknown(2, "x", 20),
            get(3, Some("x"), 30, 40),
            get(3, Some("a"), 50, 60),
            get(3, Some("x"), 70, 80),
        ]);
        assert_violation(&[get(1, Some("x"), 0, 10), put_unknown(2, "x", 20)]);
    }

    #[test]
    fn unknown_cas_applies_only_when_its_expectation_holds() {
        assert_linearizable(&[
            put(1, "a", 0, 10),
            cas_unknown(2, Some("a"), Some("b"), 20),
            get(3, Some("b"), 30, 40),
        ]);
        assert_violation(&[
            put(1, "z", 0, 10),
            cas_unknown(2, Some("a"), Some("b"), 20),
            get(3, Some("b"), 30, 40),
        ]);
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let detail = assert_violation(&[
            put(1, "a", 0, 10),
            put(2, "b", 5, 15),
            get(7, Some("ghost"), 8, 20),
        ]);
        assert!(detail.contains("client 7 Get => \"ghost\""), "{detail}");
        assert!(detail.contains("Concurrent with it (2)"), "{detail}");
    }

    #[test]
    fn initial_value_is_respected() {
        let events = [get(1, Some("init"), 0, 1)];
        assert_eq!(check(&events, val("init")), Verdict::Linearizable);
        assert!(matches!(
            check(&events, None),
            Verdict::NotLinearizable { .. }
        ));
    }

    #[test]
    fn keys_are_independent_registers() {
        let on = |key: &str, mut e: Event| {
            e.key = key.as_bytes().to_vec();
            e
        };
        let ok = [
            on("x", put(1, "a", 0, 10)),
            on("y", put(2, "b", 0, 10)),
            on("x", get(3, Some("a"), 20, 30)),
            on("y", get(3, Some("b"), 20, 30)),
        ];
        assert_eq!(check(&ok, None), Verdict::Linearizable);
        let mut bad = ok.to_vec();
        bad.push(on("y", get(4, Some("a"), 40, 50)));
        match check(&bad, None) {
            Verdict::NotLinearizable { key, .. } => assert_eq!(key, b"y"),
            other => panic!("expected a violation on y, got {other:?}"),
        }
    }

    #[test]
    fn malformed_events_are_inconclusive() {
        let wrong_outcome = [ev(1, Op::Get, Outcome::Ok, 0, 1)];
        assert!(matches!(
            check(&wrong_outcome, None),
            Verdict::Inconclusive(_)
        ));
        let backwards = [put(1, "a", 10, 5)];
        assert!(matches!(check(&backwards, None), Verdict::Inconclusive(_)));
    }

    /// Twelve fully concurrent writes followed by an impossible read force an exhaustive search.
    fn exhaustive_history() -> Vec<Event> {
        let mut events: Vec<Event> = (0..12)
            .map(|c| put(c, &format!("v{c}"), 0, 100))
            .collect();
        events.push(get(99, Some("ghost"), 200, 300));
        events
    }

    #[test]
    fn exhaustive_search_proves_a_violation() {
        let detail = assert_violation(&exhaustive_history());
        assert!(detail.contains("client 99"), "{detail}");
    }

    #[test]
    fn search_limits_yield_inconclusive() {
        let events = exhaustive_history();
        let few_steps = Limits {
            steps: 1_000,
            cache_entries: usize::MAX,
        };
        let small_memo = Limits {
            steps: u64::MAX,
            cache_entries: 100,
        };
        for limits in [few_steps, small_memo] {
            match check_with_limits(&events, None, limits) {
                Verdict::Inconclusive(why) => assert!(why.contains("search limit"), "{why}"),
                other => panic!("expected Inconclusive, got {other:?}"),
            }
        }
    }

    #[test]
    fn memo_key_is_exact() {
        let mut applied = Applied::new(200);
        let mut seen = HashMap::new();
        let mut key = Vec::new();
        let mut rng = Rng::new(7);
        let mut members = vec![false; 200];
        for _ in 0..20_000 {
            let i = rng.below(200);
            if members[i] {
                applied.remove(i);
            } else {
                applied.insert(i);
            }
            members[i] = !members[i];
            applied.memo_key(3, &mut key);
            let previous = seen.insert(key.clone(), members.clone());
            assert!(previous.is_none_or(|m| m == members));
        }
    }

    /// xorshift64*, so the randomized tests are reproducible without extra dependencies.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Self {
            Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
        }

        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn percent(&mut self, p: u64) -> bool {
            self.next() % 100 < p
        }
    }

    type Store = HashMap<Vec<u8>, Option<Vec<u8>>>;

    /// The reference register: applying operations one at a time is linearizable by construction.
    fn apply(store: &mut Store, key: &[u8], op: &Op) -> Outcome {
        let cur = store.entry(key.to_vec()).or_default();
        match op {
            Op::Put { value } => {
                cur.clone_from(value);
                Outcome::Ok
            }
            Op::Get => Outcome::Value(cur.clone()),
            Op::Cas { expected, new } => {
                let swapped = cur == expected;
                if swapped {
                    cur.clone_from(new);
                }
                Outcome::CasResult(swapped)
            }
        }
    }

    /// A random operation; written values are unique (`unique`) so corrupted reads are detectable.
    fn random_op(rng: &mut Rng, unique: String, last_seen: Option<Vec<u8>>) -> Op {
        let fresh = if rng.percent(10) {
            None
        } else {
            Some(unique.into_bytes())
        };
        match rng.below(10) {
            0..=3 => Op::Get,
            4..=6 => Op::Put { value: fresh },
            _ => Op::Cas {
                expected: if rng.percent(70) { last_seen } else { None },
                new: fresh,
            },
        }
    }

    fn observed(op: &Op, outcome: &Outcome) -> Option<Option<Vec<u8>>> {
        match (op, outcome) {
            (Op::Put { value }, Outcome::Ok) => Some(value.clone()),
            (Op::Get, Outcome::Value(v)) => Some(v.clone()),
            (Op::Cas { new, .. }, Outcome::CasResult(true)) => Some(new.clone()),
            _ => None,
        }
    }

    struct InFlight {
        key: Vec<u8>,
        op: Op,
        invoke_ns: u64,
        outcome: Option<Outcome>,
    }

    /// A deterministic interleaving of `clients` clients on one shared register per key: each
    /// operation is invoked, takes effect and completes at separate random moments, so up to
    /// `clients` operations overlap. `unknown_percent` of operations time out: half of those had
    /// already taken effect, the rest are left in flight and land later or never.
    pub(super) fn simulate_pub(seed: u64, clients: usize, keys: usize, total_ops: usize, unknown_percent: usize) -> Vec<Event> { simulate(seed, clients, keys, total_ops, unknown_percent) }
    fn simulate(
        seed: u64,
        clients: usize,
        keys: usize,
        total_ops: usize,
        unknown_percent: usize,
    ) -> Vec<Event> {
        let mut rng = Rng::new(seed);
        let mut store = Store::new();
        let mut inflight: Vec<Option<InFlight>> = (0..clients).map(|_| None).collect();
        let mut last_seen: Vec<Store> = vec![Store::new(); clients];
        let mut lost: Vec<(Vec<u8>, Op)> = Vec::new();
        let mut events = Vec::with_capacity(total_ops);
        let (mut issued, mut clock) = (0, 0u64);
        while issued < total_ops || inflight.iter().any(Option::is_some) {
            // Zero increments produce equal timestamps on purpose.
            clock += rng.below(3) as u64;
            if !lost.is_empty() && rng.percent(3) {
                let (key, op) = lost.swap_remove(rng.below(lost.len()));
                if rng.percent(50) {
                    apply(&mut store, &key, &op);
                }
                continue;
            }
            let c = rng.below(clients);
            match inflight[c].take() {
                None if issued < total_ops => {
                    let key = format!("key{}", rng.below(keys)).into_bytes();
                    let seen = last_seen[c].get(&key).cloned().flatten();
                    let op = random_op(&mut rng, format!("c{c}-{issued}"), seen);
                    issued += 1;
                    inflight[c] = Some(InFlight {
                        key,
                        op,
                        invoke_ns: clock,
                        outcome: None,
                    });
                }
                None => {}
                Some(mut f) if f.outcome.is_none() => {
                    let roll = rng.below(200);
                    f.outcome = Some(if roll < unknown_percent {
                        lost.push((f.key.clone(), f.op.clone()));
                        Outcome::Unknown
                    } else if roll < 2 * unknown_percent {
                        apply(&mut store, &f.key, &f.op);
                        Outcome::Unknown
                    } else {
                        apply(&mut store, &f.key, &f.op)
                    });
                    inflight[c] = Some(f);
                }
                Some(f) => {
                    let outcome = f.outcome.expect("took effect before completing");
                    if let Some(v) = observed(&f.op, &outcome) {
                        last_seen[c].insert(f.key.clone(), v);
                    }
                    events.push(Event {
                        client: c,
                        key: f.key,
                        op: f.op,
                        outcome,
                        invoke_ns: f.invoke_ns,
                        complete_ns: clock,
                    });
                }
            }
        }
        events
    }

    fn is_known_get(e: &Event) -> bool {
        e.op == Op::Get && matches!(e.outcome, Outcome::Value(_))
    }

    /// Finds a read `g` and writes `p` then `q` on its key that strictly precede each other and
    /// `g` in real time, with `p` writing a unique value: `g` returning `p`'s value is then stale.
    fn stale_read_corruption(events: &[Event]) -> (usize, Option<Vec<u8>>) {
        let known_put = |e: &Event| matches!(e.op, Op::Put { .. }) && e.outcome == Outcome::Ok;
        for (gi, g) in events.iter().enumerate().skip(events.len() / 2) {
            if !is_known_get(g) {
                continue;
            }
            let same_key = || events.iter().filter(|e| e.key == g.key && known_put(e));
            let Some(q) = same_key()
                .filter(|q| q.complete_ns < g.invoke_ns)
                .max_by_key(|q| q.complete_ns)
            else {
                continue;
            };
            let p = same_key().find(|p| {
                p.complete_ns < q.invoke_ns && matches!(&p.op, Op::Put { value: Some(_) })
            });
            if let Some(Event {
                op: Op::Put { value },
                ..
            }) = p
            {
                if g.outcome != Outcome::Value(value.clone()) {
                    return (gi, value.clone());
                }
            }
        }
        panic!("no stale-read candidate in the history");
    }

    #[track_caller]
    fn assert_corruption_detected(events: &[Event], gi: usize, value: Option<Vec<u8>>) {
        let mut corrupted = events.to_vec();
        corrupted[gi].outcome = Outcome::Value(value);
        let start = Instant::now();
        let verdict = check(&corrupted, None);
        println!("corrupted read checked in {:?}", start.elapsed());
        match verdict {
            Verdict::NotLinearizable { key, detail } => {
                assert_eq!(key, corrupted[gi].key);
                // The search can always explain everything before the corrupted read, so that
                // read is where it gets stuck and what it must blame.
                assert!(detail.starts_with(&describe(&corrupted[gi])), "{detail}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
    }

    #[test]
    fn randomized_16_clients_one_key_then_corrupted() {
        let events = simulate(1, 16, 1, 5_000, 4);
        let unknown = events
            .iter()
            .filter(|e| e.outcome == Outcome::Unknown)
            .count();
        assert!(unknown > 0);
        let start = Instant::now();
        assert_eq!(check(&events, None), Verdict::Linearizable);
        println!(
            "16 clients, {} events ({unknown} unknown) on one key checked in {:?}",
            events.len(),
            start.elapsed()
        );

        let gi = (events.len() / 2..events.len())
            .find(|&i| is_known_get(&events[i]))
            .expect("a read");
        assert_corruption_detected(&events, gi, val("never-written"));
        let (gi, stale) = stale_read_corruption(&events);
        assert_corruption_detected(&events, gi, stale);
    }

    #[test]
    fn randomized_many_keys_and_seeds() {
        for seed in 2..12 {
            let events = simulate(seed, 8, 4, 2_000, 6);
            assert_eq!(check(&events, None), Verdict::Linearizable, "seed {seed}");
            let (gi, stale) = stale_read_corruption(&events);
            assert_corruption_detected(&events, gi, stale);
        }
    }

    #[test]
    fn sequential_5000_ops_is_fast() {
        let mut rng = Rng::new(42);
        let mut store = Store::new();
        let mut seen = None;
        let mut events = Vec::new();
        for i in 0..5_000u64 {
            let op = random_op(&mut rng, format!("v{i}"), seen.clone());
            let outcome = apply(&mut store, b"k", &op);
            if let Some(v) = observed(&op, &outcome) {
                seen = v;
            }
            events.push(ev((i % 3) as usize, op, outcome, 10 * i, 10 * i + 5));
        }
        let start = Instant::now();
        assert_eq!(check(&events, None), Verdict::Linearizable);
        let elapsed = start.elapsed();
        println!("5000 sequential events checked in {elapsed:?}");
        assert!(elapsed.as_secs() < 5, "took {elapsed:?}");
    }

    #[test]
    fn threads_on_a_real_atomic_register_are_linearizable() {
        let history = Arc::new(History::new());
        let store = Arc::new(Mutex::new(Store::new()));
        let threads: Vec<_> = (0..6)
            .map(|client| {
                let history = Arc::clone(&history);
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    let mut rng = Rng::new(100 + client as u64);
                    let mut last_seen = Store::new();
                    for seq in 0..500 {
                        let key = format!("key{}", rng.below(2)).into_bytes();
                        let seen = last_seen.get(&key).cloned().flatten();
                        let op = random_op(&mut rng, format!("t{client}-{seq}"), seen);
                        let invoke_ns = history.now_ns();
                        let outcome = apply(&mut store.lock().unwrap(), &key, &op);
                        let complete_ns = history.now_ns();
                        if let Some(v) = observed(&op, &outcome) {
                            last_seen.insert(key.clone(), v);
                        }
                        history.record(Event {
                            client,
                            key,
                            op,
                            outcome,
                            invoke_ns,
                            complete_ns,
                        });
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let events = history.events();
        assert_eq!(events.len(), 3_000);
        assert_eq!(check(&events, None), Verdict::Linearizable);

        let gi = events.iter().rposition(is_known_get).expect("a read");
        assert_corruption_detected(&events, gi, val("never-written"));
    }
}
#[cfg(test)]
mod tmp_probe {
    #[test]
    fn probe() {
        for (clients, unk) in [(16, 0), (8, 4), (16, 1), (4, 4)] {
            let events = super::tests::simulate_pub(1, clients, 1, 5_000, unk);
            let t = std::time::Instant::now();
            let v = super::check(&events, None);
            println!("clients {clients} unk {unk}: {:?} in {:?}", matches!(v, super::Verdict::Linearizable), t.elapsed());
        }
    }
}
