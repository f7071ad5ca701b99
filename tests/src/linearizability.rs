//! Linearizability checking for a key/value register with compare-and-set, Knossos/Porcupine style.
//!
//! Clients record every operation into a [`History`]; [`check`] then decides whether one total
//! order of the operations, consistent with real time, explains every observed result. Each key
//! is an independent register and linearizability is compositional, so the history is split per
//! key. Timestamps that tie count as concurrent, since the clock cannot order events within one
//! tick; an operation with an unknown outcome may take effect at any time after its invocation,
//! or never.
//!
//! Each key is searched with the algorithm of Wing & Gong as refined by Lowe: a depth-first
//! search over which pending operation takes effect next, memoizing the (operations applied,
//! register value) configurations already explored so that none is searched twice. Plain WGL
//! drowns in long histories with many clients or many timeouts, so the search skips moves that
//! provably cannot be needed: a read that fits now is taken at once, interchangeable operations
//! are taken in one fixed order, values nobody observes are not told apart, unknown operations
//! are only applied when something pending depends on the value they leave, and a configuration
//! is dropped as soon as a value still to be read can no longer be written.
//!
//! Proving a violation means exhausting every alternative, which stays exponential in the worst
//! case. A linear-time pre-check reports the common case (a read no write can explain) directly;
//! otherwise, short windows of history around where the search gets stuck are searched too,
//! since a window without a linearization proves the whole history has none. Each key's search
//! is bounded in steps and memory, and gives [`Verdict::Inconclusive`] beyond that.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Mutex, PoisonError};
// tokio's clock: real time in a process test, the simulation's in a simulated one.
use tokio::time::Instant;

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
    /// The client gave up (timeout, error), so the operation may have taken effect at any time
    /// after its invocation, or never.
    Unknown,
}

/// One entry in a recorded history.
#[derive(Debug, Clone)]
pub struct Event {
    /// Issuing client, only used in failure reports because real-time order comes from the
    /// timestamps alone.
    pub client: usize,
    /// Key the operation addressed; every key is checked as a separate register.
    pub key: Vec<u8>,
    /// What the client asked for.
    pub op: Op,
    /// What the client saw.
    pub outcome: Outcome,
    /// [`History::now_ns`] taken just before the request was sent, so the effect cannot precede
    /// it.
    pub invoke_ns: u64,
    /// [`History::now_ns`] taken just after the response arrived; ignored for
    /// [`Outcome::Unknown`], whose effect may land arbitrarily late.
    pub complete_ns: u64,
}

/// Thread-safe recorder: clients call `record(...)` after each op, with timestamps from one
/// shared monotonic clock so that events of different clients are comparable.
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

    /// A snapshot of everything recorded so far, in recording order (which [`check`] does not
    /// rely on).
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
    /// Some key's history has no valid order; `detail` names the operation that cannot be
    /// linearized.
    NotLinearizable {
        /// The key whose history is not linearizable.
        key: Vec<u8>,
        /// Human-readable account of the operation that cannot be linearized (client, op,
        /// outcome, times) and of the operations around it.
        detail: String,
    },
    /// No verdict: the history is malformed, or the search hit its step or memory limit (it is
    /// exponential in the worst case).
    Inconclusive(String),
}

/// Checks whether `events` are linearizable for a register per key starting out as `initial`.
pub fn check(events: &[Event], initial: Option<Vec<u8>>) -> Verdict {
    check_with_limits(events, initial.as_deref(), DEFAULT_LIMITS)
}

/// Bounds on one key's search, which is exponential in the number of concurrent operations.
#[derive(Debug, Clone, Copy)]
struct Limits {
    steps: u64,
    cache_entries: usize,
}

// A few seconds of searching and at most about a gigabyte of memo per key.
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
    for (key, evs) in &by_key {
        match KeyProblem::new(evs, Initial::Value(initial)) {
            Ok(p) => problems.push((*key, evs, p)),
            Err(why) => return Verdict::Inconclusive(why),
        }
    }
    // The cheap necessary condition runs on every key first, so that a plain stale read is
    // reported even when another key's search would exhaust its limits.
    for (key, _, problem) in &problems {
        if let Some(detail) = problem.impossible_read() {
            return Verdict::NotLinearizable {
                key: key.to_vec(),
                detail,
            };
        }
    }
    let mut inconclusive = None;
    for (key, evs, problem) in &problems {
        match search_key(evs, problem, limits) {
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

/// The search over one key's whole history, helped by searches over windows of it.
///
/// Proving a violation means exhausting every partial linearization up to the offending
/// operation, which is hopeless in a long history with many concurrent clients. So if the search
/// does not finish quickly, the operation it got stuck on is suspected and the search is run on
/// short windows of history ending there: a window that has no linearization proves the whole
/// history has none (see [`window`]), and it is far cheaper to exhaust. A window that does have
/// one proves nothing, and the full search resumes.
fn search_key(events: &[&Event], problem: &KeyProblem<'_>, limits: Limits) -> Search {
    let mut full = Run::new(problem, limits.cache_entries);
    // A tenth of the budget for the full search, up to four tenths for windows, and whatever is
    // left for the full search again.
    let first_slice = limits.steps / 10;
    let mut left = limits.steps - first_slice;
    let mut result = full.run(first_slice);
    if matches!(result, None | Some(Search::GaveUp(_))) {
        if let Some(suspect) = full.suspect() {
            let window_budget = limits.steps / 10 * 4;
            let (violation, used) = window_violation(events, suspect, limits, window_budget);
            if let Some(detail) = violation {
                return Search::Violation(detail);
            }
            left -= used;
        }
        if result.is_none() {
            result = full.run(left);
        }
    }
    result.unwrap_or_else(|| {
        let mut why = format!("search limit: no verdict after {} steps", limits.steps);
        if let Some(suspect) = full.suspect() {
            let _ = write!(
                why,
                "; the furthest the search got was blocked by {}",
                describe(suspect)
            );
        }
        Search::GaveUp(why)
    })
}

/// Lookbacks, in operations invoked before the suspect, of the windows tried.
const WINDOW_LOOKBACKS: [usize; 6] = [16, 32, 64, 128, 512, 2048];

/// Searches windows ending at `suspect` for a violation; also returns the steps spent.
fn window_violation(
    events: &[&Event],
    suspect: &Event,
    limits: Limits,
    budget: u64,
) -> (Option<String>, u64) {
    let end = suspect.complete_ns.saturating_add(1);
    let mut earlier: Vec<u64> = events
        .iter()
        .map(|e| e.invoke_ns)
        .filter(|&t| t < suspect.invoke_ns)
        .collect();
    earlier.sort_unstable();
    let mut used = 0;
    for lookback in WINDOW_LOOKBACKS {
        // A window reaching back to the start, but with an arbitrary initial value, is weaker
        // than the full search.
        let Some(&first) = earlier
            .len()
            .checked_sub(lookback)
            .and_then(|i| earlier.get(i))
        else {
            break;
        };
        let start = first.saturating_sub(1);
        let clipped: Vec<Event> = events
            .iter()
            .filter_map(|e| window(e, start, end))
            .collect();
        let refs: Vec<&Event> = clipped.iter().collect();
        let Ok(problem) = KeyProblem::new(&refs, Initial::Any) else {
            break;
        };
        let mut run = Run::new(&problem, limits.cache_entries);
        let result = run.run(budget - used);
        used += run.steps;
        match result {
            Some(Search::Violation(detail)) => {
                let how = format!(
                    "Proven on the window of operations invoked after {start} ns and completed \
                     before {end} ns, from an arbitrary initial value and with writes straddling \
                     its edges (shown as unknown) free to take effect or not, because the whole \
                     history was too concurrent to search exhaustively in time"
                );
                return (Some(format!("{detail} ({how}.)")), used);
            }
            // A larger window would not be any quicker to exhaust.
            None | Some(Search::GaveUp(_)) => break,
            Some(Search::Linearizable) => {}
        }
    }
    (None, used)
}

/// `e` as seen by the window of history strictly between `start` and `end`, if at all.
///
/// Cut any linearization of the whole history at real times `start` and `end`: the middle part
/// contains every operation lying strictly inside the window, none lying strictly outside it,
/// and some of those straddling an edge. So it linearizes the window's operations if straddling
/// reads are dropped, straddling writes may or may not take effect, and the register starts
/// with whatever value it had at `start`. Hence a window without a linearization proves that
/// the whole history has none.
fn window(e: &Event, start: u64, end: u64) -> Option<Event> {
    let complete = if e.outcome == Outcome::Unknown {
        u64::MAX
    } else {
        e.complete_ns
    };
    if complete < start || e.invoke_ns > end {
        return None;
    }
    if e.invoke_ns > start && complete < end {
        return Some(e.clone());
    }
    match (&e.op, &e.outcome) {
        (Op::Get, _) | (Op::Cas { .. }, Outcome::CasResult(false)) => None,
        _ => Some(Event {
            outcome: Outcome::Unknown,
            ..e.clone()
        }),
    }
}

/// What applying an operation requires of and does to the register, with values interned so
/// that states compare and hash as integers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
            Effect::Read(v) => (state == v || state == ANY).then_some(v),
            Effect::Swap { expected, new } => (state == expected || state == ANY).then_some(new),
            // "Anything but `expected`" is widened back to anything, which can only make the
            // search accept more, so a window's violation still stands.
            Effect::NoSwap { expected } => (state != expected).then_some(state),
        }
    }

    fn read_only(self) -> bool {
        matches!(self, Effect::Read(_) | Effect::NoSwap { .. })
    }
}

/// Register value id shared by every value that no read returns and no CAS expects: such values
/// are indistinguishable to every operation in the history, so telling them apart would only
/// multiply the states the search has to visit.
const UNOBSERVED: u32 = 0;

/// Register state standing for any value at all, which windows of history start from.
const ANY: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
enum Initial<'a> {
    Value(Option<&'a [u8]>),
    Any,
}

struct SearchOp<'a> {
    event: &'a Event,
    effect: Effect,
    /// Position in the applied-set bitset, chosen so typical sets are a few runs of ones.
    bit: usize,
    /// For an operation with an unknown outcome (which the search may leave out entirely): its
    /// class of operations with the same effect, and its rank in that class by invocation time.
    optional: Option<(usize, usize)>,
    /// For a known writing operation, its class of known operations with the same effect.
    twins: Option<usize>,
}

impl<'a> SearchOp<'a> {
    /// The value the register holds after this operation if it takes effect and writes.
    fn written(&self) -> Option<Option<&'a [u8]>> {
        let e: &'a Event = self.event;
        match (&e.op, self.effect) {
            (Op::Put { value }, _) => Some(value.as_deref()),
            (Op::Cas { new, .. }, Effect::Swap { .. }) => Some(new.as_deref()),
            _ => None,
        }
    }

    /// The value the register certainly held when this operation took effect.
    fn observed(&self) -> Option<Option<&'a [u8]>> {
        let e: &'a Event = self.event;
        match (&e.op, &e.outcome) {
            (Op::Get, Outcome::Value(v)) => Some(v.as_deref()),
            // A swap whose write could also be its own source is left to the search.
            (Op::Cas { expected, new }, Outcome::CasResult(true)) if expected != new => {
                Some(expected.as_deref())
            }
            _ => None,
        }
    }
}

/// One key's history, reduced to what the search needs.
struct KeyProblem<'a> {
    ops: Vec<SearchOp<'a>>,
    classes: usize,
    initial: Initial<'a>,
    /// Observed values by id, for reports.
    values: Vec<Option<&'a [u8]>>,
}

impl<'a> KeyProblem<'a> {
    fn new(events: &[&'a Event], initial: Initial<'a>) -> Result<Self, String> {
        let mut parsed = Vec::with_capacity(events.len());
        for &e in events {
            if let Some(raw) = RawEffect::parse(e)? {
                parsed.push((e, raw));
            }
        }
        let mut observed: HashSet<Option<&[u8]>> = HashSet::new();
        for (_, raw) in &parsed {
            match *raw {
                RawEffect::Read(v)
                | RawEffect::Swap { expected: v, .. }
                | RawEffect::NoSwap { expected: v } => {
                    observed.insert(v);
                }
                RawEffect::Write(_) => {}
            }
        }
        let mut ids: HashMap<Option<&[u8]>, u32> = HashMap::new();
        let mut values = vec![None];
        let mut id = |v: Option<&'a [u8]>| -> u32 {
            if !observed.contains(&v) {
                return UNOBSERVED;
            }
            *ids.entry(v).or_insert_with(|| {
                values.push(v);
                u32::try_from(values.len() - 1).expect("fewer than 2^32 distinct values")
            })
        };
        let mut ops: Vec<SearchOp<'a>> = parsed
            .into_iter()
            .map(|(event, raw)| SearchOp {
                event,
                effect: match raw {
                    RawEffect::Write(v) => Effect::Write(id(v)),
                    RawEffect::Read(v) => Effect::Read(id(v)),
                    RawEffect::Swap { expected, new } => Effect::Swap {
                        expected: id(expected),
                        new: id(new),
                    },
                    RawEffect::NoSwap { expected } => Effect::NoSwap {
                        expected: id(expected),
                    },
                },
                bit: 0,
                optional: None,
                twins: None,
            })
            .collect();
        // Bit positions in the memo keys are u32.
        if ops.len() >= (u32::MAX / 2) as usize {
            return Err(format!("{} operations on one key is too many", ops.len()));
        }

        // Known operations get bits in invocation order, since the search applies them roughly
        // in that order. Unknown ones are grouped by class after them: the search always takes
        // a class's members in rank order (see `Searcher::candidate`), so each class contributes
        // one run of ones.
        let mut by_invocation: Vec<usize> = (0..ops.len()).collect();
        by_invocation.sort_by_key(|&i| (ops[i].event.invoke_ns, i));
        let mut class_of: HashMap<Effect, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut next_bit = 0;
        for &i in &by_invocation {
            if ops[i].event.outcome == Outcome::Unknown {
                let class = *class_of.entry(ops[i].effect).or_insert_with(|| {
                    members.push(Vec::new());
                    members.len() - 1
                });
                ops[i].optional = Some((class, members[class].len()));
                members[class].push(i);
            } else {
                ops[i].bit = next_bit;
                next_bit += 1;
            }
        }
        for &i in members.iter().flatten() {
            ops[i].bit = next_bit;
            next_bit += 1;
        }
        let mut twins: HashMap<Effect, Vec<usize>> = HashMap::new();
        for (i, o) in ops.iter().enumerate() {
            if o.optional.is_none() && !o.effect.read_only() {
                twins.entry(o.effect).or_default().push(i);
            }
        }
        for (class, list) in twins.values().filter(|l| l.len() > 1).enumerate() {
            for &i in list {
                ops[i].twins = Some(class);
            }
        }
        Ok(Self {
            ops,
            classes: members.len(),
            initial,
            values,
        })
    }

    fn initial_state(&self) -> u32 {
        match self.initial {
            Initial::Any => ANY,
            Initial::Value(v) => {
                let id = self.values.iter().skip(1).position(|&x| x == v);
                id.map_or(UNOBSERVED, |i| i as u32 + 1)
            }
        }
    }

    /// Looks for an observation that no write can explain: the value was never written before
    /// the observer completed, or every such write was overwritten by a known write that lies
    /// strictly between it and the observer in real time.
    ///
    /// This is only a necessary condition, but it catches the usual violations (stale or
    /// invented reads) in O(n log n), with a precise explanation, where the exhaustive search
    /// may need exponential time to prove that nothing else explains them.
    fn impossible_read(&self) -> Option<String> {
        let Initial::Value(initial) = self.initial else {
            return None;
        };
        let completion = |o: &SearchOp<'_>| {
            if o.optional.is_some() {
                u64::MAX
            } else {
                o.event.complete_ns
            }
        };
        // (invocation, completion, operation); the last two are then replaced by running
        // extremes over the sorted list.
        type Write = (u64, u64, usize);
        // Per written value, writers by invocation with the latest completion among them so
        // far: the latest-completing candidate source is the hardest one to rule out.
        let mut writers: HashMap<Option<&[u8]>, Vec<Write>> = HashMap::new();
        let mut known_writes: Vec<Write> = Vec::new();
        for (i, o) in self.ops.iter().enumerate() {
            if let Some(v) = o.written() {
                let w = (o.event.invoke_ns, completion(o), i);
                writers.entry(v).or_default().push(w);
                if o.optional.is_none() {
                    known_writes.push(w);
                }
            }
        }
        for list in writers.values_mut() {
            list.sort_unstable();
            let mut latest = (0, 0);
            for w in list.iter_mut() {
                latest = latest.max((w.1, w.2));
                (w.1, w.2) = latest;
            }
        }
        // Known writes by invocation with the earliest completion from there on, to find a
        // write invoked after one time and completed before another.
        known_writes.sort_unstable();
        let mut earliest = (u64::MAX, usize::MAX);
        for w in known_writes.iter_mut().rev() {
            earliest = earliest.min((w.1, w.2));
            (w.1, w.2) = earliest;
        }
        let overwriter = |after: Option<u64>, before: u64| -> Option<usize> {
            let from = after.map_or(0, |t| known_writes.partition_point(|w| w.0 <= t));
            known_writes
                .get(from)
                .and_then(|w| (w.1 < before).then_some(w.2))
        };
        for o in &self.ops {
            let Some(v) = o.observed() else { continue };
            let (invoke, complete) = (o.event.invoke_ns, o.event.complete_ns);
            let source = writers.get(&v).and_then(|list| {
                let n = list.partition_point(|w| w.0 <= complete);
                n.checked_sub(1).map(|k| (list[k].1, list[k].2))
            });
            let why = match source {
                Some((source_complete, w)) => match overwriter(Some(source_complete), invoke) {
                    None => continue,
                    Some(w2) => format!(
                        "every write of {} that could precede it was overwritten first: the last \
                         to complete, {}, was followed by {}, which completed before the observer \
                         was invoked",
                        fmt_value(v),
                        describe(self.ops[w].event),
                        describe(self.ops[w2].event),
                    ),
                },
                None if v == initial => match overwriter(None, invoke) {
                    None => continue,
                    Some(w2) => format!(
                        "{} is the initial value, but {} overwrote it and completed before the \
                         observer was invoked",
                        fmt_value(v),
                        describe(self.ops[w2].event),
                    ),
                },
                None => format!(
                    "no operation that writes {} was invoked before it completed, and it is not \
                     the initial value",
                    fmt_value(v),
                ),
            };
            return Some(format!("{} cannot be linearized: {why}", describe(o.event)));
        }
        None
    }

    fn report(&self, f: &Furthest) -> String {
        let blamed = self.ops[f.op].event;
        let register = if f.state == ANY {
            "any value".to_string()
        } else if f.state != UNOBSERVED {
            fmt_value(self.values[f.state as usize])
        } else {
            match (
                f.register.and_then(|op| self.ops[op].written()),
                self.initial,
            ) {
                (Some(v), _) | (None, Initial::Value(v)) => fmt_value(v),
                (None, Initial::Any) => "any value".to_string(),
            }
        };
        let mut s = format!(
            "{} cannot be linearized: no order of the operations before its response explains \
             its result. Furthest partial linearization: {} of {} operations applied, \
             register = {}",
            describe(blamed),
            f.applied,
            self.ops.len(),
            register,
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
        if let Some(by) = f.overwriter {
            let _ = write!(
                s,
                "; from there, applying {} would overwrite for good the value client {}'s {} \
                 needs",
                describe(self.ops[by].event),
                blamed.client,
                op_name(&blamed.op),
            );
        }
        let concurrent: Vec<&Event> = self
            .ops
            .iter()
            .enumerate()
            .filter(|&(i, o)| {
                i != f.op
                    && o.event.invoke_ns <= blamed.complete_ns
                    && (o.optional.is_some() || o.event.complete_ns >= blamed.invoke_ns)
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

/// An event's requirement and effect before values are interned.
#[derive(Clone, Copy)]
enum RawEffect<'a> {
    Write(Option<&'a [u8]>),
    Read(Option<&'a [u8]>),
    Swap {
        expected: Option<&'a [u8]>,
        new: Option<&'a [u8]>,
    },
    NoSwap {
        expected: Option<&'a [u8]>,
    },
}

impl<'a> RawEffect<'a> {
    /// `None` for events that cannot affect the verdict either way.
    fn parse(e: &'a Event) -> Result<Option<Self>, String> {
        let raw = match (&e.op, &e.outcome) {
            // An abandoned read neither constrains nor changes the register.
            (Op::Get, Outcome::Unknown) => return Ok(None),
            // A swap of a value for itself changes nothing whether or not it happened.
            (Op::Cas { expected, new }, Outcome::Unknown) if expected == new => return Ok(None),
            (Op::Put { value }, Outcome::Ok | Outcome::Unknown) => Self::Write(value.as_deref()),
            (Op::Get, Outcome::Value(v)) => Self::Read(v.as_deref()),
            (Op::Cas { expected, new }, Outcome::CasResult(true) | Outcome::Unknown) => {
                Self::Swap {
                    expected: expected.as_deref(),
                    new: new.as_deref(),
                }
            }
            (Op::Cas { expected, .. }, Outcome::CasResult(false)) => Self::NoSwap {
                expected: expected.as_deref(),
            },
            _ => {
                return Err(format!(
                    "malformed event (outcome does not fit the operation): {}",
                    describe(e)
                ))
            }
        };
        if e.outcome != Outcome::Unknown && e.complete_ns < e.invoke_ns {
            return Err(format!(
                "malformed event (completed before it was invoked): {}",
                describe(e)
            ));
        }
        Ok(Some(raw))
    }
}

#[derive(Debug, Clone, Copy)]
enum Move {
    /// A configuration was just reached.
    Arrive,
    /// Look for the next operation to try, from this list entry on.
    Scan(usize),
    /// Undo the most recent move.
    Backtrack,
}

enum Pushed {
    Applied,
    /// The configuration reached was explored before.
    Explored,
    /// The configuration reached is dead: this known operation could no longer be applied.
    Starves(usize),
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    op: usize,
    before: u32,
    forced: bool,
}

const REPORTED_RECENT: usize = 5;
const REPORTED_CONCURRENT: usize = 12;

/// The deepest dead end the search hit, which is where a person debugging should look.
struct Furthest {
    /// Position of the blocking response in time order; later means a longer explained prefix.
    entry: usize,
    op: usize,
    state: u32,
    /// The operation whose write the register held then, `None` for the initial value.
    register: Option<usize>,
    applied: usize,
    recent: Vec<usize>,
    /// The operation whose application there would have overwritten, for good, the value the
    /// blamed one needs; `None` if the blamed one's response was simply reached.
    overwriter: Option<usize>,
}

/// Wing & Gong / Lowe: walk the time-ordered list of invocations and responses; at an
/// invocation, try to apply that operation next; at a response, the operation that responded
/// has not been applied yet, so the current partial linearization is a dead end and the most
/// recent choice is undone. Resumable, so that the step budget can be spent in slices.
struct Run<'p, 'a> {
    s: Searcher<'p, 'a>,
    next: Move,
    furthest: Furthest,
    /// Steps taken so far.
    steps: u64,
}

impl<'p, 'a> Run<'p, 'a> {
    fn new(problem: &'p KeyProblem<'a>, cache_limit: usize) -> Self {
        let s = Searcher::new(problem, cache_limit);
        let furthest = Furthest {
            // Entry 0 is the list head, so the first response reached always replaces this.
            entry: 0,
            op: 0,
            state: s.state,
            register: None,
            applied: 0,
            recent: Vec::new(),
            overwriter: None,
        };
        Self {
            s,
            next: Move::Arrive,
            furthest,
            steps: 0,
        }
    }

    /// The operation at the deepest dead end so far, where a violation most likely is.
    fn suspect(&self) -> Option<&'a Event> {
        (self.furthest.entry > 0).then(|| self.s.problem.ops[self.furthest.op].event)
    }

    /// Records that applying `by` would have left `victim` without the value it needs, a dead
    /// end as deep as `victim`'s response since the search can no longer get past that.
    fn note_starved(&mut self, victim: usize, by: usize) {
        let entry = self.s.list.ret[victim].expect("known operations respond");
        if entry > self.furthest.entry {
            self.furthest = Furthest {
                overwriter: Some(by),
                ..self.s.dead_end(entry, victim)
            };
        }
    }

    /// Advances by at most `steps` steps; `None` if that was not enough for a verdict.
    fn run(&mut self, steps: u64) -> Option<Search> {
        for _ in 0..steps {
            self.steps += 1;
            self.next = match self.next {
                Move::Arrive => {
                    if self.s.remaining == 0 {
                        // Unknown operations still pending can simply never have happened.
                        return Some(Search::Linearizable);
                    }
                    match self.s.applicable_read() {
                        // A read-only operation that fits now can be moved to this point of any
                        // linearization of the rest without breaking it, so it is the only move
                        // worth trying here.
                        Some(op) => match self.s.push(op, self.s.state, true) {
                            Ok(Pushed::Applied) => Move::Arrive,
                            Ok(Pushed::Explored) => Move::Backtrack,
                            Ok(Pushed::Starves(victim)) => {
                                self.note_starved(victim, op);
                                Move::Backtrack
                            }
                            Err(why) => return Some(Search::GaveUp(why)),
                        },
                        None => Move::Scan(self.s.list.first()),
                    }
                }
                Move::Scan(cur) => {
                    let node = self.s.list.nodes[cur];
                    if node.is_return {
                        // This operation responded before taking effect in the current partial
                        // linearization, so no extension of it works.
                        if cur > self.furthest.entry {
                            self.furthest = self.s.dead_end(cur, node.op);
                        }
                        Move::Backtrack
                    } else if let Some(state) = self.s.candidate(node.op) {
                        match self.s.push(node.op, state, false) {
                            Ok(Pushed::Applied) => Move::Arrive,
                            Ok(Pushed::Explored) => Move::Scan(node.next),
                            Ok(Pushed::Starves(victim)) => {
                                self.note_starved(victim, node.op);
                                Move::Scan(node.next)
                            }
                            Err(why) => return Some(Search::GaveUp(why)),
                        }
                    } else {
                        // Known responses sort before the missing responses of unknown
                        // operations, so while a known operation is pending a response follows
                        // and this never runs off the end of the list.
                        Move::Scan(node.next)
                    }
                }
                Move::Backtrack => match self.s.pop() {
                    None => return Some(Search::Violation(self.s.problem.report(&self.furthest))),
                    // The configuration before a forced move is dead if the one after it is.
                    Some(frame) if frame.forced => Move::Backtrack,
                    Some(frame) => Move::Scan(self.s.list.nodes[self.s.list.call[frame.op]].next),
                },
            };
        }
        None
    }
}

/// The mutable state of one key's depth-first search: the current partial linearization and
/// the memo of configurations already explored (every one of which failed or is an ancestor of
/// the current one, or the search would have ended).
struct Searcher<'p, 'a> {
    problem: &'p KeyProblem<'a>,
    list: EntryList,
    applied: Applied,
    /// Per class of unknown operations, how many (always the lowest ranks) are applied.
    consumed: Vec<usize>,
    cache: HashSet<Box<[u32]>, BuildHasherDefault<FxHasher>>,
    cache_limit: usize,
    memo_key: Vec<u32>,
    stack: Vec<Frame>,
    state: u32,
    /// Known operations not yet applied.
    remaining: usize,
    sources: Sources,
}

impl<'p, 'a> Searcher<'p, 'a> {
    fn new(problem: &'p KeyProblem<'a>, cache_limit: usize) -> Self {
        Self {
            problem,
            list: EntryList::new(&problem.ops),
            applied: Applied::new(problem.ops.len()),
            consumed: vec![0; problem.classes],
            cache: HashSet::default(),
            cache_limit,
            memo_key: Vec::new(),
            stack: Vec::new(),
            state: problem.initial_state(),
            remaining: problem.ops.iter().filter(|o| o.optional.is_none()).count(),
            sources: Sources::new(problem),
        }
    }

    /// A pending read-only operation that the current register value satisfies without being
    /// narrowed down.
    fn applicable_read(&self) -> Option<usize> {
        if self.state == ANY {
            return None;
        }
        let mut cur = self.list.first();
        while !self.list.nodes[cur].is_return {
            let op = self.list.nodes[cur].op;
            let effect = self.problem.ops[op].effect;
            if effect.read_only() && effect.apply(self.state).is_some() {
                return Some(op);
            }
            cur = self.list.nodes[cur].next;
        }
        None
    }

    /// The register value after applying pending `op` now, if that is a move worth trying.
    fn candidate(&self, op: usize) -> Option<u32> {
        let o = &self.problem.ops[op];
        // Read-only operations were tried on arrival, and the register has not changed since.
        if o.effect.read_only() && self.state != ANY {
            return None;
        }
        if let Some((class, rank)) = o.optional {
            // Invoked members of a class are interchangeable, so only histories that apply
            // them in rank order need exploring.
            if self.consumed[class] != rank {
                return None;
            }
        }
        if o.twins.is_some() && self.has_earlier_twin(op) {
            return None;
        }
        let next = o.effect.apply(self.state)?;
        // An unknown operation only matters through the value it leaves, and only until the
        // next write: if a linearization applies one whose value nothing pending depends on, it
        // is either a no-op or overwritten unseen, and dropping it leaves a linearization that
        // this search also explores. Pruning those keeps many unknown operations from
        // multiplying the configurations.
        if o.optional.is_some() && (next == self.state || !self.depended_on(next, op)) {
            return None;
        }
        Some(next)
    }

    /// Whether a pending known operation with the same effect as `op` must respond earlier:
    /// swapping two such operations in a linearization keeps it valid, so only histories that
    /// apply them earliest deadline first need exploring.
    fn has_earlier_twin(&self, op: usize) -> bool {
        let class = self.problem.ops[op].twins;
        let deadline = self.list.ret[op];
        let mut cur = self.list.first();
        while !self.list.nodes[cur].is_return {
            let other = self.list.nodes[cur].op;
            if other != op
                && self.problem.ops[other].twins == class
                && self.list.ret[other] < deadline
            {
                return true;
            }
            cur = self.list.nodes[cur].next;
        }
        false
    }

    /// Whether a pending operation other than `op` would accept register value `value` and
    /// could not ignore it (every known one except a blind write, or an unknown one that
    /// would change it).
    fn depended_on(&self, value: u32, op: usize) -> bool {
        let mut cur = self.list.first();
        while !self.list.nodes[cur].is_return {
            let other = self.list.nodes[cur].op;
            let o = &self.problem.ops[other];
            let depends = other != op
                && !matches!(o.effect, Effect::Write(_))
                && o.effect
                    .apply(value)
                    .is_some_and(|next| o.optional.is_none() || next != value);
            if depends {
                return true;
            }
            cur = self.list.nodes[cur].next;
        }
        false
    }

    /// Applies `op`, unless that reaches a configuration explored before or a dead one.
    fn push(&mut self, op: usize, next_state: u32, forced: bool) -> Result<Pushed, String> {
        let problem = self.problem;
        let o = &problem.ops[op];
        self.sources.change(o, -1);
        if let Some(v) = self.sources.starving(next_state) {
            self.sources.change(o, 1);
            let victim = self.sources.needed_by[v as usize]
                .iter()
                .copied()
                .find(|&i| i != op && !self.applied.contains(problem.ops[i].bit))
                .expect("a starved value is needed by an unapplied operation");
            return Ok(Pushed::Starves(victim));
        }
        self.applied.insert(o.bit);
        self.applied.memo_key(next_state, &mut self.memo_key);
        if self.cache.contains(self.memo_key.as_slice()) {
            self.applied.remove(o.bit);
            self.sources.change(o, 1);
            return Ok(Pushed::Explored);
        }
        if self.cache.len() >= self.cache_limit {
            self.applied.remove(o.bit);
            self.sources.change(o, 1);
            return Err(format!(
                "search limit: memo reached {} entries",
                self.cache_limit
            ));
        }
        self.cache.insert(self.memo_key.as_slice().into());
        self.stack.push(Frame {
            op,
            before: self.state,
            forced,
        });
        self.state = next_state;
        self.list.lift(op);
        match o.optional {
            Some((class, _)) => self.consumed[class] += 1,
            None => self.remaining -= 1,
        }
        Ok(Pushed::Applied)
    }

    fn pop(&mut self) -> Option<Frame> {
        let frame = self.stack.pop()?;
        let problem = self.problem;
        let o = &problem.ops[frame.op];
        self.sources.change(o, 1);
        self.list.unlift(frame.op);
        self.applied.remove(o.bit);
        self.state = frame.before;
        match o.optional {
            Some((class, _)) => self.consumed[class] -= 1,
            None => self.remaining += 1,
        }
        Some(frame)
    }

    fn dead_end(&self, entry: usize, op: usize) -> Furthest {
        let ops = &self.problem.ops;
        let tail = self.stack.len().saturating_sub(REPORTED_RECENT);
        Furthest {
            entry,
            op,
            state: self.state,
            register: self
                .stack
                .iter()
                .rev()
                .map(|f| f.op)
                .find(|&op| !ops[op].effect.read_only()),
            applied: self.stack.len(),
            recent: self.stack[tail..].iter().map(|f| f.op).collect(),
            overwriter: None,
        }
    }
}

/// Per observed value, how many unapplied known operations still need the register to hold it
/// and how many unapplied operations could still write it.
///
/// With a value nobody can write any more, a configuration whose register does not hold it
/// already is dead however far the search could still take it. Catching that at once keeps
/// a wrong early choice (typically an unknown write consumed before its readers) from costing
/// an exhaustive search of everything up to those readers.
struct Sources {
    needs: Vec<u32>,
    writers: Vec<u32>,
    /// Values still needed that nothing unapplied writes.
    starved: Vec<u32>,
    /// Known operations needing each value, by response time, to name the one starved.
    needed_by: Vec<Vec<usize>>,
}

impl Sources {
    fn new(problem: &KeyProblem<'_>) -> Self {
        let n = problem.values.len();
        let mut sources = Self {
            needs: vec![0; n],
            writers: vec![0; n],
            starved: Vec::new(),
            needed_by: vec![Vec::new(); n],
        };
        for (i, o) in problem.ops.iter().enumerate() {
            if let (Some(v), _) = Self::needs_and_writes(o) {
                sources.needed_by[v as usize].push(i);
            }
            sources.change(o, 1);
        }
        for list in &mut sources.needed_by {
            list.sort_by_key(|&i| (problem.ops[i].event.complete_ns, i));
        }
        sources
    }

    fn needs_and_writes(o: &SearchOp<'_>) -> (Option<u32>, Option<u32>) {
        let (needs, writes) = match o.effect {
            Effect::Read(v) => (Some(v), None),
            Effect::Write(v) => (None, Some(v)),
            // An unknown swap need not happen, so it needs nothing; counting a known swap's
            // write as a source for its own need only makes the check weaker.
            Effect::Swap { expected, new } => (o.optional.is_none().then_some(expected), Some(new)),
            Effect::NoSwap { .. } => (None, None),
        };
        let observed = |v: u32| v != UNOBSERVED && v != ANY;
        (
            needs.filter(|&v| observed(v)),
            writes.filter(|&v| observed(v)),
        )
    }

    /// Counts `o`'s need and write in (`delta` = 1) or out (-1).
    fn change(&mut self, o: &SearchOp<'_>, delta: i32) {
        let (needs, writes) = Self::needs_and_writes(o);
        if let Some(v) = needs {
            self.adjust(v, delta, 0);
        }
        if let Some(v) = writes {
            self.adjust(v, 0, delta);
        }
    }

    fn adjust(&mut self, v: u32, needs: i32, writes: i32) {
        let i = v as usize;
        let was = self.needs[i] > 0 && self.writers[i] == 0;
        self.needs[i] = self.needs[i].wrapping_add_signed(needs);
        self.writers[i] = self.writers[i].wrapping_add_signed(writes);
        let is = self.needs[i] > 0 && self.writers[i] == 0;
        if is && !was {
            self.starved.push(v);
        } else if was && !is {
            let at = self.starved.iter().position(|&x| x == v);
            self.starved
                .swap_remove(at.expect("starved values are tracked"));
        }
    }

    /// A value still needed that can no longer be the register's value when needed.
    fn starving(&self, state: u32) -> Option<u32> {
        match self.starved[..] {
            [] => None,
            // Windows start from any value, which the first read can pin to this one.
            [_] if state == ANY => None,
            _ => self.starved.iter().copied().find(|&v| v != state),
        }
    }
}

/// FxHash (as in rustc) with a final mix: the memo is hashed once per step, and SipHash's
/// resistance to adversarial keys buys nothing here.
#[derive(Default)]
struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0; 8];
            word[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }

    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    fn finish(&self) -> u64 {
        // The hash table picks buckets from the low bits, which a multiply alone leaves weak.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^ (h >> 33)
    }
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
            if op.optional.is_none() {
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

    fn contains(&self, i: usize) -> bool {
        self.words[i / 64] & (1 << (i % 64)) != 0
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

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Put { .. } => "Put",
        Op::Get => "Get",
        Op::Cas { .. } => "Cas",
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
    // tokio's clock: real time in a process test, the simulation's in a simulated one.
    use tokio::time::Instant;

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
        ev(
            client,
            Op::Put { value: val(v) },
            Outcome::Unknown,
            t0,
            t0 + 1,
        )
    }

    fn get(client: usize, v: Option<&str>, t0: u64, t1: u64) -> Event {
        ev(client, Op::Get, Outcome::Value(v.and_then(val)), t0, t1)
    }

    fn cas(
        client: usize,
        from: Option<&str>,
        to: Option<&str>,
        ok: bool,
        t0: u64,
        t1: u64,
    ) -> Event {
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
        assert!(detail.contains("client 2 Put(\"b\")"), "{detail}");
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
        assert!(
            detail.starts_with("client 7 Get => \"ghost\" [invoked 8 ns, completed 20 ns]"),
            "{detail}"
        );
        assert!(
            detail.contains("no operation that writes \"ghost\""),
            "{detail}"
        );
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

    /// Twelve fully concurrent writes of values that all matter later, then reads of two of
    /// them in turn: each read alone is explainable, but together they force an exhaustive
    /// search through the orders of the writes.
    fn exhaustive_history() -> Vec<Event> {
        let mut events: Vec<Event> = (0..12).map(|c| put(c, &format!("v{c}"), 0, 100)).collect();
        events.push(get(98, Some("v0"), 200, 300));
        events.push(get(99, Some("v1"), 400, 500));
        for c in 0..12 {
            let v = format!("v{c}");
            events.push(cas(100 + c, Some(&v), Some("x"), false, 600, 700));
        }
        events
    }

    #[test]
    fn exhaustive_search_proves_a_violation() {
        let detail = assert_violation(&exhaustive_history());
        assert!(detail.starts_with("client 99 Get"), "{detail}");
    }

    #[test]
    fn search_report_names_the_stuck_operation_and_its_context() {
        // Neither read is stale on its own; only their order gives them away.
        let detail = assert_violation(&[
            put(1, "a", 0, 10),
            put(2, "b", 20, 100),
            get(3, Some("b"), 25, 35),
            get(4, Some("a"), 40, 50),
        ]);
        let expected =
            "client 4 Get => \"a\" [invoked 40 ns, completed 50 ns] cannot be linearized";
        assert!(detail.starts_with(expected), "{detail}");
        assert!(detail.contains("register = \"a\""), "{detail}");
        assert!(
            detail.contains("last applied (oldest first): client 1 Put(\"a\")"),
            "{detail}"
        );
        assert!(
            detail.contains(
                "applying client 2 Put(\"b\") => ok [invoked 20 ns, completed 100 ns] would \
                 overwrite for good the value client 4's Get needs"
            ),
            "{detail}"
        );
        assert!(
            detail.contains("Concurrent with it (1): client 2 Put(\"b\") => ok"),
            "{detail}"
        );
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

    /// The definition, searched naively: some order of the known operations and any subset of
    /// the unknown ones that respects real time and register semantics.
    fn brute_force(events: &[Event], initial: &Option<Vec<u8>>) -> bool {
        let mut placed = vec![false; events.len()];
        place_next(events, initial, &mut placed, &mut HashSet::new())
    }

    type Placement = (Vec<bool>, Option<Vec<u8>>);

    fn place_next(
        events: &[Event],
        state: &Option<Vec<u8>>,
        placed: &mut Vec<bool>,
        failed: &mut HashSet<Placement>,
    ) -> bool {
        if !failed.insert((placed.clone(), state.clone())) {
            return false;
        }
        if events
            .iter()
            .zip(placed.iter())
            .all(|(e, &p)| p || e.outcome == Outcome::Unknown)
        {
            return true;
        }
        for i in 0..events.len() {
            let e = &events[i];
            let must_wait = (0..events.len()).any(|j| {
                !placed[j]
                    && j != i
                    && events[j].outcome != Outcome::Unknown
                    && events[j].complete_ns < e.invoke_ns
            });
            if placed[i] || must_wait {
                continue;
            }
            let next = match (&e.op, &e.outcome) {
                (Op::Put { value }, _) => Some(value.clone()),
                (Op::Get, Outcome::Value(v)) => (v == state).then(|| state.clone()),
                (Op::Get, _) => Some(state.clone()),
                (Op::Cas { expected, new }, Outcome::CasResult(true)) => {
                    (expected == state).then(|| new.clone())
                }
                (Op::Cas { expected, .. }, Outcome::CasResult(false)) => {
                    (expected != state).then(|| state.clone())
                }
                (Op::Cas { expected, new }, _) => Some(if expected == state {
                    new.clone()
                } else {
                    state.clone()
                }),
            };
            if let Some(next) = next {
                placed[i] = true;
                let found = place_next(events, &next, placed, failed);
                placed[i] = false;
                if found {
                    return true;
                }
            }
        }
        false
    }

    /// A small history on one key over few values (so they repeat): a random sequential
    /// execution stretched into overlapping intervals, with some outcomes then made unknown
    /// and, sometimes, one corrupted.
    fn small_history(rng: &mut Rng) -> (Vec<Event>, Option<Vec<u8>>) {
        let pick = |rng: &mut Rng| [None, val("a"), val("b"), val("c")][rng.below(4)].clone();
        let initial = pick(rng);
        let mut state = initial.clone();
        let n = 1 + rng.below(10);
        let mut events = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let op = match rng.below(3) {
                0 => Op::Put { value: pick(rng) },
                1 => Op::Get,
                _ => Op::Cas {
                    expected: pick(rng),
                    new: pick(rng),
                },
            };
            let mut store = Store::from([(b"k".to_vec(), state.clone())]);
            let outcome = apply(&mut store, b"k", &op);
            state = store.remove(b"k".as_slice()).flatten();
            let point = 10 * i;
            events.push(ev(
                i as usize,
                op,
                outcome,
                point - rng.below(25).min(point as usize) as u64,
                point + rng.below(25) as u64,
            ));
        }
        for e in &mut events {
            if rng.percent(15) {
                e.outcome = Outcome::Unknown;
            }
        }
        if rng.percent(50) {
            let e = &mut events[rng.below(n)];
            e.outcome = match &e.op {
                Op::Put { .. } => Outcome::Unknown,
                Op::Get => Outcome::Value(pick(rng)),
                Op::Cas { .. } => Outcome::CasResult(rng.percent(50)),
            };
        }
        (events, initial)
    }

    #[test]
    fn agrees_with_brute_force_on_small_histories() {
        let mut rng = Rng::new(5);
        let mut violations = 0;
        for _ in 0..30_000 {
            let (events, initial) = small_history(&mut rng);
            let expected = brute_force(&events, &initial);
            let verdict = check(&events, initial.clone());
            assert_eq!(
                verdict == Verdict::Linearizable,
                expected,
                "{verdict:?} for {events:#?} from {initial:?}"
            );
            // The search on its own, without the pre-check in front of it.
            let refs: Vec<&Event> = events.iter().collect();
            let problem = KeyProblem::new(&refs, Initial::Value(initial.as_deref())).unwrap();
            let searched = Run::new(&problem, usize::MAX).run(u64::MAX);
            assert_eq!(
                matches!(searched, Some(Search::Linearizable)),
                expected,
                "search alone disagrees for {events:#?} from {initial:?}"
            );
            violations += usize::from(!expected);
        }
        // Both kinds of history were exercised.
        assert!((2_000..28_000).contains(&violations), "{violations}");
    }

    #[test]
    fn windows_of_linearizable_histories_are_linearizable() {
        let mut rng = Rng::new(6);
        let mut windows = 0;
        while windows < 20_000 {
            let (events, initial) = small_history(&mut rng);
            if !brute_force(&events, &initial) {
                continue;
            }
            let start = rng.below(110) as u64;
            let end = start + rng.below(110) as u64;
            let clipped: Vec<Event> = events
                .iter()
                .filter_map(|e| window(e, start, end))
                .collect();
            let refs: Vec<&Event> = clipped.iter().collect();
            let problem = KeyProblem::new(&refs, Initial::Any).unwrap();
            let searched = Run::new(&problem, usize::MAX).run(u64::MAX);
            assert!(
                matches!(searched, Some(Search::Linearizable)),
                "window ({start}, {end}) of {events:#?} from {initial:?}"
            );
            windows += 1;
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

    /// Finds reads `r1` before `r2` and a write `w_old` that completed before the writer of
    /// `r1`'s value was invoked, such that `r2` returning `w_old`'s value gets past
    /// [`KeyProblem::impossible_read`]: with unique values that is still a certain violation
    /// (`r2` would have to see an older write than `r1` did), but only the search can prove it.
    fn inversion_corruption(events: &[Event]) -> (usize, Option<Vec<u8>>) {
        let writer_of = |v: &Option<Vec<u8>>| {
            events.iter().find(|e| match (&e.op, &e.outcome) {
                (Op::Put { value }, _) => value == v,
                (Op::Cas { new, .. }, Outcome::CasResult(true) | Outcome::Unknown) => new == v,
                _ => false,
            })
        };
        let mut by_invocation: Vec<usize> = (0..events.len()).collect();
        by_invocation.sort_by_key(|&i| events[i].invoke_ns);
        // Each key's events, to corrupt one at a time: (position in `events`, copy).
        let mut by_key: HashMap<&[u8], (Vec<usize>, Vec<Event>)> = HashMap::new();
        for (i, e) in events.iter().enumerate() {
            let (positions, copies) = by_key.entry(&e.key).or_default();
            positions.push(i);
            copies.push(e.clone());
        }
        for &r1 in &by_invocation[events.len() / 2..] {
            let Outcome::Value(v_new @ Some(_)) = &events[r1].outcome else {
                continue;
            };
            let Some(w_new) = writer_of(v_new) else {
                continue;
            };
            let Some(w_old) = events
                .iter()
                .filter(|w| {
                    w.key == events[r1].key
                        && w.outcome == Outcome::Ok
                        && matches!(&w.op, Op::Put { value: Some(_) })
                        && w.complete_ns < w_new.invoke_ns
                })
                .max_by_key(|w| w.complete_ns)
            else {
                continue;
            };
            let Op::Put { value: old } = &w_old.op else {
                unreachable!()
            };
            let later_reads = by_invocation.iter().copied().filter(|&r2| {
                events[r2].key == events[r1].key
                    && is_known_get(&events[r2])
                    && events[r2].invoke_ns > events[r1].complete_ns
            });
            let (positions, copies) = by_key.get_mut(events[r1].key.as_slice()).unwrap();
            for r2 in later_reads.take(2) {
                let at = positions.binary_search(&r2).unwrap();
                copies[at].outcome = Outcome::Value(old.clone());
                let refs: Vec<&Event> = copies.iter().collect();
                let problem = KeyProblem::new(&refs, Initial::Value(None)).unwrap();
                let caught = problem.impossible_read().is_some();
                copies[at].outcome = events[r2].outcome.clone();
                if !caught {
                    return (r2, old.clone());
                }
            }
        }
        panic!("no ordering-inversion candidate in the history");
    }

    /// Corrupts the read at `gi` and checks that the full check and, if `search_too`, the search
    /// on its own (without the stale-read pre-check) both blame exactly that read.
    #[track_caller]
    fn assert_corruption_detected(
        events: &[Event],
        gi: usize,
        value: Option<Vec<u8>>,
        search_too: bool,
    ) {
        let mut corrupted = events.to_vec();
        corrupted[gi].outcome = Outcome::Value(value);
        let blamed = describe(&corrupted[gi]);
        match check(&corrupted, None) {
            Verdict::NotLinearizable { key, detail } => {
                assert_eq!(key, corrupted[gi].key);
                assert!(detail.starts_with(&blamed), "{detail}");
            }
            other => panic!("expected a violation, got {other:?}"),
        }
        if search_too {
            let same_key: Vec<&Event> = corrupted
                .iter()
                .filter(|e| e.key == corrupted[gi].key)
                .collect();
            let problem =
                KeyProblem::new(&same_key, Initial::Value(None)).expect("well-formed history");
            let start = Instant::now();
            match search_key(&same_key, &problem, DEFAULT_LIMITS) {
                // Everything before the corrupted read can still be explained, so that read is
                // where the search gets stuck.
                Search::Violation(detail) => assert!(detail.starts_with(&blamed), "{detail}"),
                Search::Linearizable => panic!("the search accepted a corrupted history"),
                Search::GaveUp(why) => panic!("{why}"),
            }
            println!(
                "search alone rejected {} events in {:?}",
                same_key.len(),
                start.elapsed()
            );
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
        assert_corruption_detected(&events, gi, val("never-written"), true);
        let (gi, stale) = stale_read_corruption(&events);
        assert_corruption_detected(&events, gi, stale, true);
        let (gi, old) = inversion_corruption(&events);
        assert_corruption_detected(&events, gi, old, true);
    }

    #[test]
    fn randomized_many_keys_and_seeds() {
        for seed in 2..12 {
            let events = simulate(seed, 8, 4, 2_000, 6);
            assert_eq!(check(&events, None), Verdict::Linearizable, "seed {seed}");
            let (gi, stale) = stale_read_corruption(&events);
            assert_corruption_detected(&events, gi, stale, true);
            let (gi, old) = inversion_corruption(&events);
            assert_corruption_detected(&events, gi, old, true);
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
        assert_corruption_detected(&events, gi, val("never-written"), true);
    }
}
