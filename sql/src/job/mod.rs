//! Stream jobs: `CREATE JOB name AS INSERT INTO table SELECT ... FROM topic [JOIN table ...]
//! [WHERE ...] [GROUP BY ...]` (or `INSERT INTO topic ...` without aggregates, so jobs chain), a
//! statement that never ends.
//!
//! - [`statement`]: the job statements' syntax.
//! - [`plan`]: what a job's statement means: the source topic, the sink table, the per-batch query
//!   (DataFusion runs the stateless part: decode, join, filter, project, scalar functions) and how
//!   its rows land in the sink (upserted, or merged into aggregates).
//! - [`admin`]: the job statements run (create, drop, stop, start, show, describe).
//! - [`distinct`]: the (key, value) pairs a `count(DISTINCT)` has seen, each naming the record
//!   that first brought it, so each distinct value counts once.
//! - [`dead_letter`]: records that do not decode, kept in `<topic>.dlq` with the reason.
//! - [`stats`]: what each running task has done (for `DESCRIBE JOB`).
//! - [`task`]: one task, reading one partition of the source and writing the sink.
//!
//! # Exactly once without distributed transactions
//!
//! A task's progress (the offset it committed for its partition) and its writes to the sink cannot
//! commit together: they live in different Raft groups. What makes replaying input after a crash
//! harmless is that every write says which input it reflects.
//!
//! - **Aggregates** (`GROUP BY`): each sink row keeps, beside its cells and invisible to SQL, the
//!   offset each source partition's contributions reached (`marks`, in the row's merge state). A
//!   task adds the records of offsets `[from, to)` to a row with one merge, applied atomically by
//!   the row's region: if the row's mark `M` for this partition is at or past `to`, the merge is a
//!   no-op; if it is at or before `from`, it applies and the mark becomes `to`; if `from < M < to`
//!   the region refuses and answers `M`, and the task re-aggregates that key's records from `M`
//!   and merges again. A task applies its batches in offset order and moves on only when every
//!   merge of a batch was applied or found covered, so for every key, all records below the
//!   task's position are in the row exactly once. Replay after a crash restarts from the
//!   committed offset, at or below every mark, and however the batches are now cut the rule skips
//!   what was taken and adds the rest. The same holds with two instances of a task running at once
//!   (the old one not yet stopped after a reassignment): each merge is atomic on its row and the
//!   marks only grow, so whichever instance lands a range first, the other skips it.
//! - **Distinct counts** (`count(DISTINCT x)`): a record counts 1 when it is the record its
//!   (key, value) pair's row in the job's distinct-values table names as the pair's first, a
//!   fixed property of the record once the row exists; those ones merge as a count does. The
//!   argument is in [`distinct`].
//! - **Windows that close** (`tumble(ts, size, lateness)` as a group key): a record is dropped as
//!   late when its window's end plus the lateness is at or before the latest event time of the
//!   records before it in its partition. That depends on offset order alone, not on how batches
//!   are cut. The latest event time is committed (group `__job.<id>.watermark`) just before the
//!   offset, and reflects only applied batches: after a restart it may be ahead of the committed
//!   offset, which changes decisions only for replayed records, whose merges the marks skip.
//!   The distinct pairs of a window closed in every partition are deleted (see [`distinct`]), so
//!   a windowed distinct count keeps the pairs of open windows only.
//! - **Plain inserts** (no `GROUP BY`): each output row sets the cells it writes in the row of its
//!   key, as a merge with the same marks as aggregates (the latest record of the key in the range
//!   wins; on an overlap, the latest record at or past the row's mark). A replay, or an instance
//!   of the task replaced during a reassignment and still writing, offers a range the row's mark
//!   already covers, so an older record never replaces a newer one.
//! - **Topic sinks** (a chain of jobs): a task appends as one producer whose id is fixed by the
//!   job and the source partition, and numbers each batch of records by the source offset `to` it
//!   reaches. A partition of the sink keeps the last number that producer wrote and refuses a
//!   batch numbered at or below it (numbers may jump). A task writes its batches in offset order,
//!   each batch to every sink partition it has records for, so for each sink partition the records
//!   derived from sources below its last number `L` are all there. At start a task asks every sink
//!   partition for its `L` and cuts its first batches at those offsets: each replayed batch then
//!   ends where an earlier one did, and is refused exactly by the partitions that already hold it.
//!   Records without a key go to the partition of the source's number (modulo), keyed records to
//!   their key's, so a replay sends every record where its first attempt did. Two instances at
//!   once (a reassignment the old node has not noticed yet): the producer also carries the task's
//!   assignment epoch, and asking a partition for its number announces it; from then on the
//!   partition refuses the older epoch. The new instance asks every partition before it writes,
//!   so whatever the old one wrote before being refused is in the numbers it cuts at.
//!
//! The invariant the tests check: the sink equals the same `SELECT` run as a batch over the
//! records the job consumed.

pub mod admin;
pub mod dead_letter;
pub mod distinct;
pub mod plan;
pub mod statement;
pub mod stats;
pub mod task;

pub use plan::JobPlan;
pub use stats::{TaskBoard, TaskStats};
pub use task::run_task;
