//! What a running task has done, for `DESCRIBE JOB`: records read, written, failed (sent to the
//! dead-letter topic) and late (their window had closed), their rates over the last few seconds, and the last error it met.
//!
//! Each task owns one [`TaskStats`] and updates it as it goes (atomic counters, no lock on the
//! hot path); the node's compute pool keeps the task's handle in its [`TaskBoard`], where the
//! node's `Jobs.TaskStatus` call reads it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cluster::TaskStatus;

/// The span the rates are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// The spacing of the counter samples the rates are computed from.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The counters of one task.
#[derive(Debug)]
pub struct TaskStats {
    partition: u32,
    records_in: AtomicU64,
    records_out: AtomicU64,
    records_failed: AtomicU64,
    records_late: AtomicU64,
    /// The source offset the task has processed up to (committed or not).
    position: AtomicU64,
    slow: Mutex<Slow>,
}

/// What changes at most once a second or on failures.
#[derive(Debug, Default)]
struct Slow {
    /// (when, [in, out, failed]) samples, oldest first, spanning about [`RATE_WINDOW`].
    samples: VecDeque<(Instant, [u64; 3])>,
    /// Milliseconds since the Unix epoch and the message of the last error.
    last_error: Option<(i64, String)>,
}

impl TaskStats {
    /// Counters of the task reading `partition`, all zero.
    pub fn new(partition: u32) -> TaskStats {
        TaskStats {
            partition,
            records_in: AtomicU64::new(0),
            records_out: AtomicU64::new(0),
            records_failed: AtomicU64::new(0),
            records_late: AtomicU64::new(0),
            position: AtomicU64::new(0),
            slow: Mutex::new(Slow::default()),
        }
    }

    fn slow(&self) -> MutexGuard<'_, Slow> {
        // Every update of `Slow` is one assignment: a panic elsewhere cannot leave it half-done.
        self.slow.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn counters(&self) -> [u64; 3] {
        [
            self.records_in.load(Ordering::Relaxed),
            self.records_out.load(Ordering::Relaxed),
            self.records_failed.load(Ordering::Relaxed),
        ]
    }

    /// Counts a processed batch: records read, rows it produced, records that failed.
    pub fn processed(&self, read: u64, out: u64, failed: u64) {
        self.records_in.fetch_add(read, Ordering::Relaxed);
        self.records_out.fetch_add(out, Ordering::Relaxed);
        self.records_failed.fetch_add(failed, Ordering::Relaxed);
    }

    /// Counts records dropped because their window had closed.
    pub fn late(&self, records: u64) {
        self.records_late.fetch_add(records, Ordering::Relaxed);
    }

    /// Notes the source offset the task has processed up to.
    pub fn reached(&self, offset: u64) {
        self.position.store(offset, Ordering::Relaxed);
    }

    /// Keeps `error` as the task's last error.
    pub fn failed(&self, error: &str) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.slow().last_error = Some((now, error.to_string()));
    }

    /// Takes a sample of the counters for the rates if the last is a second old; called by the
    /// task on each turn of its loop, busy or idle.
    pub fn tick(&self) {
        let now = Instant::now();
        let counters = self.counters();
        let mut slow = self.slow();
        if slow
            .samples
            .back()
            .is_some_and(|(at, _)| now.duration_since(*at) < SAMPLE_EVERY)
        {
            return;
        }
        slow.samples.push_back((now, counters));
        // Keep one sample older than the window, so the rate always spans at least the window.
        while slow.samples.len() > 2
            && slow
                .samples
                .get(1)
                .is_some_and(|(at, _)| now.duration_since(*at) >= RATE_WINDOW)
        {
            slow.samples.pop_front();
        }
    }

    /// The task's counters, its rates since the oldest sample kept, and its last error.
    pub fn status(&self) -> TaskStatus {
        let now = Instant::now();
        let current = self.counters();
        let slow = self.slow();
        let rates = match slow.samples.front() {
            Some((at, then)) if now.duration_since(*at) >= Duration::from_millis(100) => {
                let secs = now.duration_since(*at).as_secs_f64();
                let rate = |i: usize| current[i].saturating_sub(then[i]) as f64 / secs;
                [rate(0), rate(1), rate(2)]
            }
            _ => [0.0; 3],
        };
        TaskStatus {
            partition: self.partition,
            records_in: current[0],
            records_out: current[1],
            records_failed: current[2],
            records_late: self.records_late.load(Ordering::Relaxed),
            in_per_sec: rates[0],
            out_per_sec: rates[1],
            failed_per_sec: rates[2],
            position: self.position.load(Ordering::Relaxed),
            last_error: slow.last_error.clone(),
        }
    }
}

impl From<TaskStatus> for weir_proto::v1::TaskState {
    fn from(t: TaskStatus) -> Self {
        let (last_error_ms, last_error) = t.last_error.unwrap_or_default();
        weir_proto::v1::TaskState {
            partition: t.partition,
            records_in: t.records_in,
            records_out: t.records_out,
            records_failed: t.records_failed,
            records_late: t.records_late,
            in_per_sec: t.in_per_sec,
            out_per_sec: t.out_per_sec,
            failed_per_sec: t.failed_per_sec,
            position: t.position,
            last_error,
            last_error_ms,
        }
    }
}

impl From<weir_proto::v1::TaskState> for TaskStatus {
    fn from(t: weir_proto::v1::TaskState) -> Self {
        TaskStatus {
            partition: t.partition,
            records_in: t.records_in,
            records_out: t.records_out,
            records_failed: t.records_failed,
            records_late: t.records_late,
            in_per_sec: t.in_per_sec,
            out_per_sec: t.out_per_sec,
            failed_per_sec: t.failed_per_sec,
            position: t.position,
            last_error: (!t.last_error.is_empty()).then_some((t.last_error_ms, t.last_error)),
        }
    }
}

/// Task counters by (job id, partition).
type Tasks = BTreeMap<(u64, u32), Arc<TaskStats>>;

/// The counters of the tasks a node runs, by (job id, partition).
#[derive(Debug, Clone, Default)]
pub struct TaskBoard {
    tasks: Arc<Mutex<Tasks>>,
}

impl TaskBoard {
    fn tasks(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Fresh counters for the task of `job` reading `partition`, replacing any earlier ones.
    pub fn start(&self, job: u64, partition: u32) -> Arc<TaskStats> {
        let stats = Arc::new(TaskStats::new(partition));
        self.tasks().insert((job, partition), stats.clone());
        stats
    }

    /// Forgets the task of `job` reading `partition` whose counters are `stats`, once it no
    /// longer runs here (a newer instance started meanwhile stays).
    pub fn finished(&self, job: u64, partition: u32, stats: &Arc<TaskStats>) {
        let mut tasks = self.tasks();
        if tasks
            .get(&(job, partition))
            .is_some_and(|s| Arc::ptr_eq(s, stats))
        {
            tasks.remove(&(job, partition));
        }
    }

    /// The status of every task of `job` running here, by partition.
    pub fn job(&self, job: u64) -> Vec<TaskStatus> {
        self.tasks()
            .range((job, 0)..=(job, u32::MAX))
            .map(|(_, s)| s.status())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_rates_and_errors_are_reported_per_task() {
        let board = TaskBoard::default();
        let a = board.start(7, 0);
        let b = board.start(7, 3);
        let other = board.start(8, 0);
        a.tick();
        a.processed(100, 40, 2);
        a.reached(100);
        b.failed("sink unavailable");
        other.processed(5, 5, 0);
        std::thread::sleep(Duration::from_millis(150));
        let got = board.job(7);
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].partition, got[0].records_in, got[0].records_out),
            (0, 100, 40)
        );
        assert_eq!((got[0].records_failed, got[0].position), (2, 100));
        // 100 records since the first sample, taken at least 150 ms ago.
        assert!(got[0].in_per_sec > 0.0 && got[0].in_per_sec <= 100.0 / 0.15);
        assert!(got[0].failed_per_sec > 0.0);
        assert_eq!(got[0].last_error, None);
        assert_eq!(got[1].partition, 3);
        assert_eq!(got[1].in_per_sec, 0.0, "no sample yet: no rate");
        assert_eq!(
            got[1].last_error.as_ref().map(|(_, m)| m.as_str()),
            Some("sink unavailable")
        );
        board.finished(7, 0, &a);
        assert_eq!(board.job(7).len(), 1);
        // A newer instance of a task stays when the older one finishes.
        let newer = board.start(7, 3);
        board.finished(7, 3, &b);
        assert_eq!(board.job(7).len(), 1);
        board.finished(7, 3, &newer);
        assert!(board.job(7).is_empty());
        assert_eq!(board.job(8)[0].records_in, 5);
    }

    #[test]
    fn samples_span_the_window_and_no_more() {
        let s = TaskStats::new(0);
        for _ in 0..3 {
            s.tick();
        }
        assert_eq!(s.slow().samples.len(), 1, "one sample per second at most");
    }
}
