//! The compute actor pool of a node: watches the catalog and keeps exactly the tasks assigned to
//! this node running, each as its own tokio task with a stop signal. A task whose job was stopped,
//! dropped or reassigned elsewhere is told to stop (it finishes the batch it is writing) and
//! aborted if it has not stopped shortly after.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_sql::job::{TaskBoard, TaskStats};
use weir_sql::Cluster;
use weir_storage::catalog::Catalog;

use crate::groups::Registry;
use crate::sql::access::job_meta;

/// How often the pool compares what runs with what the catalog assigns, besides at each change
/// of the catalog (a task that ended by itself is restarted at the next check).
const CHECK_EVERY: Duration = Duration::from_millis(200);
/// How long a task told to stop may take before it is aborted.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// One running task: how to stop it, and its counters on the board.
struct Running {
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
    stats: Arc<TaskStats>,
    /// The assignment epoch it runs under.
    epoch: u64,
}

/// The (job id, partition) pairs the catalog assigns to `node`, with the job they belong to.
fn assigned(catalog: &Catalog, node: u64) -> BTreeMap<(u64, u32), weir_sql::JobMeta> {
    let mut out = BTreeMap::new();
    for job in catalog.jobs.values().filter(|j| j.running) {
        for (p, t) in job.tasks.iter().enumerate() {
            if t.node == Some(node) {
                out.insert((job.id, p as u32), job_meta(job));
            }
        }
    }
    out
}

/// The assignment epoch of task `partition` of `job`.
fn epoch_of(job: &weir_sql::JobMeta, partition: u32) -> u64 {
    job.tasks.get(partition as usize).map_or(0, |(_, e)| *e)
}

/// Runs this node's tasks until `shutdown` turns true, keeping their counters on `board`.
pub async fn compute_loop(
    node: u64,
    registry: Registry,
    board: TaskBoard,
    cluster: Arc<dyn Cluster>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut running: BTreeMap<(u64, u32), Running> = BTreeMap::new();
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A job created, stopped or assigned is acted on as soon as its catalog is applied here.
    let mut seen = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = registry.catalog_changed(&mut seen) => {}
            _ = shutdown.changed() => {}
        }
        let want = if *shutdown.borrow() {
            BTreeMap::new()
        } else {
            match registry.catalog() {
                Ok(c) => assigned(&c, node),
                Err(_) => continue,
            }
        };
        let gone: Vec<(u64, u32)> = running
            .iter()
            // A task assigned away and back between two checks has a new epoch: the instance
            // still running under the old one is fenced by the sink and must start again.
            .filter(|(k, r)| {
                want.get(k).is_none_or(|job| epoch_of(job, k.1) != r.epoch)
                    || r.handle.is_finished()
            })
            .map(|(k, _)| *k)
            .collect();
        for k in gone {
            if let Some(r) = running.remove(&k) {
                tracing::info!(job = k.0, partition = k.1, "stopping stream task");
                let _ = r.stop.send(true);
                let board = board.clone();
                tokio::spawn(async move {
                    let abort = r.handle.abort_handle();
                    if tokio::time::timeout(STOP_GRACE, r.handle).await.is_err() {
                        abort.abort();
                    }
                    // Off the board only once it no longer runs: `STOP JOB` waits for that.
                    board.finished(k.0, k.1, &r.stats);
                });
            }
        }
        if *shutdown.borrow() {
            return;
        }
        for (k, job) in want {
            if running.contains_key(&k) {
                continue;
            }
            tracing::info!(job = %job.name, id = k.0, partition = k.1, "starting stream task");
            let (stop, stop_rx) = watch::channel(false);
            let stats = board.start(k.0, k.1);
            let epoch = epoch_of(&job, k.1);
            let handle = tokio::spawn(weir_sql::job::run_task(
                cluster.clone(),
                job,
                k.1,
                stats.clone(),
                stop_rx,
            ));
            running.insert(
                k,
                Running {
                    stop,
                    handle,
                    stats,
                    epoch,
                },
            );
        }
    }
}
