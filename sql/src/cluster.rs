//! What the SQL layer needs from the cluster: the tables in the catalog, scans of key ranges, and
//! writes. The node implements it; the SQL layer never reaches into node internals.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::DataFusionError;
use weir_proto::format::TopicFormat;
use weir_proto::table::merge::MergeOp;
use weir_proto::table::row::EncodedRows;
use weir_proto::table::{TableSchema, Value};

use crate::scan_filter::ScanFilter;

/// Why a cluster call failed, as the SQL layer reports it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClusterError {
    /// The named table or topic does not exist.
    #[error("{0}")]
    NotFound(String),
    /// Something with that name already exists.
    #[error("{0}")]
    AlreadyExists(String),
    /// The request itself is wrong (a value that does not fit its column, a bad name).
    #[error("{0}")]
    Invalid(String),
    /// The cluster could not serve the call in time (no leader, a node down); retrying may work.
    #[error("{0}")]
    Unavailable(String),
}

/// What a [`ClusterError`] raised by a query's task is wrapped in, followed by its kind: the
/// task may run on another node, and datafusion-distributed sends an external error back as its
/// text alone, but a context's text with it.
const TRAVELS_AS: &str = "weir.cluster_error.";

impl ClusterError {
    /// The name of its kind, as it travels.
    fn kind(&self) -> &'static str {
        match self {
            ClusterError::NotFound(_) => "not_found",
            ClusterError::AlreadyExists(_) => "already_exists",
            ClusterError::Invalid(_) => "invalid",
            ClusterError::Unavailable(_) => "unavailable",
        }
    }

    /// `self` as the error of a task that may run on another node: it arrives at the planning
    /// node as itself ([`ClusterError::carried`] finds it), not as an anonymous text.
    pub fn into_task_error(self) -> DataFusionError {
        DataFusionError::Context(
            format!("{TRAVELS_AS}{}", self.kind()),
            Box::new(DataFusionError::External(Box::new(self))),
        )
    }

    /// The cluster error `e` carries, raised on this node or by a task on another (then rebuilt
    /// from its kind and text).
    pub fn carried(e: &DataFusionError) -> Option<ClusterError> {
        let mut kind = None;
        let mut at: Option<&(dyn std::error::Error + 'static)> = Some(e);
        let mut innermost: &(dyn std::error::Error + 'static) = e;
        while let Some(err) = at {
            if let Some(c) = err.downcast_ref::<ClusterError>() {
                return Some(c.clone());
            }
            if let Some(DataFusionError::Context(tag, _)) = err.downcast_ref::<DataFusionError>() {
                kind = tag.strip_prefix(TRAVELS_AS).or(kind);
            }
            innermost = err;
            at = err.source();
        }
        let message = innermost.to_string();
        kind.map(|kind| match kind {
            "not_found" => ClusterError::NotFound(message),
            "already_exists" => ClusterError::AlreadyExists(message),
            "invalid" => ClusterError::Invalid(message),
            _ => ClusterError::Unavailable(message),
        })
    }
}

/// A region of a table as the catalog last described it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegionMeta {
    /// The region's Raft group.
    pub id: u64,
    /// First encoded key it holds (empty: the table's start).
    pub start: Vec<u8>,
    /// Encoded key it ends before (empty: the table's end).
    pub end: Vec<u8>,
    /// Approximate bytes it holds, as last reported (0 when unknown).
    pub approx_bytes: u64,
}

/// A table as SQL sees it: name, schema and regions.
#[derive(Debug, Clone)]
pub struct TableMeta {
    /// The table's name.
    pub name: String,
    /// Its columns and primary key.
    pub schema: Arc<TableSchema>,
    /// Its regions in key order.
    pub regions: Vec<RegionMeta>,
}

/// How a new table is laid out.
#[derive(Debug, Clone)]
pub struct NewTable {
    /// The table's name.
    pub name: String,
    /// Its columns and primary key.
    pub schema: TableSchema,
    /// Replicas of each region (0: the cluster's default).
    pub replicas: u32,
    /// Size at which a region splits (0: the cluster's default).
    pub split_bytes: u64,
}

/// One page of a scan.
#[derive(Debug, Clone)]
pub struct ScanPage {
    /// Rows in key order, as one batch of the requested columns.
    pub batch: RecordBatch,
    /// Where the range continues (the next page's start), or none when it is exhausted.
    pub resume: Option<Vec<u8>>,
    /// Where the page was read, for `EXPLAIN ANALYZE`.
    pub served: Served,
}

/// Where one scan page was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Served {
    /// The region the rows came from.
    pub region: u64,
    /// The node that read them.
    pub node: u64,
    /// Whether they were cut from the region's columnar image rather than read from its rows.
    pub from_image: bool,
}

/// A topic as SQL sees it.
#[derive(Debug, Clone)]
pub struct TopicMeta {
    /// The topic's name.
    pub name: String,
    /// How many partitions it has.
    pub partitions: u32,
    /// Replicas of each partition.
    pub replicas: u32,
    /// How its records read as rows; none: as bytes.
    pub format: Option<TopicFormat>,
}

/// How a new topic is laid out.
#[derive(Debug, Clone)]
pub struct NewTopic {
    /// The topic's name.
    pub name: String,
    /// Its partitions.
    pub partitions: u32,
    /// Replicas of each partition.
    pub replicas: u32,
    /// Records older than this are deleted (0: kept).
    pub retention_ms: u64,
    /// Its record format and columns.
    pub format: Option<TopicFormat>,
}

/// A table over files, as the cluster's catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalTableMeta {
    /// The table's name.
    pub name: String,
    /// The `CREATE EXTERNAL TABLE ...` statement that defines it.
    pub definition: String,
}

/// One record of a partition.
#[derive(Debug, Clone)]
pub struct TopicRecord {
    /// Its offset in the partition.
    pub offset: u64,
    /// When it was produced (milliseconds since the epoch).
    pub timestamp_ms: i64,
    /// Its key, if any.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
}

/// A record to append to a topic.
#[derive(Debug, Clone)]
pub struct NewRecord {
    /// The partition it must go to; none: chosen by its key.
    pub partition: Option<u32>,
    /// Its key, if any.
    pub key: Option<Bytes>,
    /// Its value.
    pub value: Bytes,
    /// Its timestamp (milliseconds since the epoch); none: now.
    pub timestamp_ms: Option<i64>,
}

/// What one read of a partition returned.
#[derive(Debug, Clone, Default)]
pub struct RecordPage {
    /// Records from the offset asked for, in offset order (possibly none).
    pub records: Vec<TopicRecord>,
    /// The offset the next read continues from.
    pub next_offset: u64,
}

/// A stream job as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobMeta {
    /// The job's name.
    pub name: String,
    /// Never reused; its progress and its marks in the sink are keyed by it.
    pub id: u64,
    /// The `INSERT INTO ... SELECT ...` statement.
    pub definition: String,
    /// The topic it reads.
    pub source: String,
    /// The table it writes.
    pub sink: String,
    /// Whether it starts at the end of its topic when it has no progress yet.
    pub start_latest: bool,
    /// Whether its tasks should run.
    pub running: bool,
    /// The node of each task (by source partition), once assigned, and its assignment epoch.
    pub tasks: Vec<(Option<u64>, u64)>,
}

/// What one running task of a job has done (`DESCRIBE JOB`), as the node running it reports.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskStatus {
    /// The source partition the task reads.
    pub partition: u32,
    /// Records read since the task started on its node.
    pub records_in: u64,
    /// Rows the job's query produced from them.
    pub records_out: u64,
    /// Records sent to the dead-letter topic.
    pub records_failed: u64,
    /// Records dropped because their window had closed.
    pub records_late: u64,
    /// Records read per second over the last few seconds.
    pub in_per_sec: f64,
    /// Rows produced per second over the last few seconds.
    pub out_per_sec: f64,
    /// Records failed per second over the last few seconds.
    pub failed_per_sec: f64,
    /// The source offset processed up to (the committed offset trails it).
    pub position: u64,
    /// When (milliseconds since the Unix epoch) and what the task's last error was.
    pub last_error: Option<(i64, String)>,
}

/// A job to record in the catalog.
#[derive(Debug, Clone)]
pub struct NewJob {
    /// The job's name.
    pub name: String,
    /// The `INSERT INTO ... SELECT ...` statement.
    pub definition: String,
    /// The topic it reads.
    pub source: String,
    /// The table it writes.
    pub sink: String,
    /// Start at the end of the topic rather than its earliest record.
    pub start_latest: bool,
    /// Tasks (partitions of the source).
    pub tasks: u32,
}

/// A schedule as the catalog keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleMeta {
    /// The schedule's name.
    pub name: String,
    /// Never reused.
    pub id: u64,
    /// The statement each run executes.
    pub statement: String,
    /// Milliseconds between ticks (ticks fall on multiples of it since the epoch); 0 with `cron`.
    pub every_ms: u64,
    /// A cron expression (5 fields, UTC) giving the ticks instead.
    pub cron: Option<String>,
    /// Schedules that must have succeeded for a tick before this one runs it.
    pub after: Vec<String>,
    /// Whether its ticks are skipped.
    pub paused: bool,
    /// When it was created (milliseconds since the epoch).
    pub created_ms: i64,
    /// The tick of a run asked for outside the timetable, if any.
    pub run_now: Option<i64>,
}

/// A schedule to record in the catalog.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// The schedule's name.
    pub name: String,
    /// The statement each run executes.
    pub statement: String,
    /// Milliseconds between ticks (0 with `cron`).
    pub every_ms: u64,
    /// A cron expression giving the ticks instead.
    pub cron: Option<String>,
    /// Schedules it runs after.
    pub after: Vec<String>,
}

/// A change to a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleAction {
    /// Skip its ticks.
    Pause,
    /// Run its ticks again.
    Resume,
    /// Forget it (its run history stays).
    Drop,
    /// Run it once now, outside its timetable.
    RunNow,
}

/// One aggregate merge into a sink row: add what the records of `source` in offsets
/// `[from, to)` contribute, unless the row has already taken them.
#[derive(Debug, Clone)]
pub struct SinkMerge {
    /// The row's full primary key, in key order.
    pub key: Vec<Value>,
    /// Who contributes (a job's task): the row keeps the offset each source reached.
    pub source: String,
    /// First offset the contribution covers.
    pub from: u64,
    /// Offset just past the last one it covers.
    pub to: u64,
    /// One per column of the table, in column order (key columns: `Keep`).
    pub ops: Vec<MergeOp>,
}

/// The cluster's data plane as the SQL layer uses it.
#[async_trait]
pub trait Cluster: std::fmt::Debug + Send + Sync + 'static {
    /// Every table in the catalog, as this node last applied it.
    fn list_tables(&self) -> Result<Vec<TableMeta>, ClusterError>;

    /// One table, or none when it does not exist.
    fn table(&self, name: &str) -> Result<Option<TableMeta>, ClusterError>;

    /// Reads one page of the rows of `table` with encoded keys in `[start, end)` (empty `end`:
    /// to the table's end), returning the columns `columns` (none when empty: only the count of
    /// rows) in key order, as Arrow built by the node holding them.
    async fn scan(
        &self,
        table: &str,
        range: (&[u8], &[u8]),
        columns: &[String],
        filters: &[ScanFilter],
        limit: usize,
    ) -> Result<ScanPage, ClusterError>;

    /// Writes full rows, encoded and checked for the table, replacing any row with the same
    /// primary key; returns rows written.
    async fn upsert(&self, table: &str, rows: EncodedRows) -> Result<u64, ClusterError>;

    /// Deletes the rows with these primary keys; returns keys deleted (present or not).
    async fn delete(&self, table: &str, keys: Vec<Vec<Value>>) -> Result<u64, ClusterError>;

    /// Creates a table.
    async fn create_table(&self, table: NewTable) -> Result<(), ClusterError>;

    /// Drops a table.
    async fn drop_table(&self, name: &str) -> Result<(), ClusterError>;

    /// Every topic in the catalog, as this node last applied it.
    fn list_topics(&self) -> Result<Vec<TopicMeta>, ClusterError>;

    /// One topic, or none when it does not exist.
    fn topic(&self, name: &str) -> Result<Option<TopicMeta>, ClusterError>;

    /// The earliest offset a partition still holds and its high watermark (the next offset to
    /// be written).
    async fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), ClusterError>;

    /// Reads records of a partition from `offset`, about `max_bytes` of them, without waiting.
    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<RecordPage, ClusterError>;

    /// Appends records to a topic, each to its partition (or the one its key hashes to, or
    /// spread when it has neither), acknowledged once a quorum stored them; returns how many.
    async fn produce(&self, topic: &str, records: Vec<NewRecord>) -> Result<u64, ClusterError>;

    /// Appends records to a topic as batch `sequence` of the deterministic producer `producer`
    /// (id, epoch; a stream job's task and its assignment): each partition's part is written only
    /// when that producer has written nothing numbered `sequence` or above there, and refused
    /// (`Unavailable`) once a later epoch of it has written or asked there. Records go to their
    /// partition, else the one their key hashes to, else `keyless`.
    async fn produce_numbered(
        &self,
        topic: &str,
        producer: (u64, u64),
        sequence: u64,
        records: Vec<NewRecord>,
        keyless: u32,
    ) -> Result<(), ClusterError>;

    /// Per partition of `topic`, the last number `producer` (id, epoch) wrote there (0: none);
    /// asking announces the epoch, so earlier epochs are refused from then on.
    async fn producer_numbers(
        &self,
        topic: &str,
        producer: (u64, u64),
    ) -> Result<Vec<u64>, ClusterError>;

    /// Creates a topic.
    async fn create_topic(&self, topic: NewTopic) -> Result<(), ClusterError>;

    /// Drops a topic and its records.
    async fn drop_topic(&self, name: &str) -> Result<(), ClusterError>;

    /// Every table over files: its name and defining `CREATE EXTERNAL TABLE` statement.
    fn list_external_tables(&self) -> Result<Vec<ExternalTableMeta>, ClusterError>;

    /// The table over files of that name, if there is one.
    fn external_table(&self, name: &str) -> Result<Option<ExternalTableMeta>, ClusterError>;

    /// Records a table over files in the cluster's catalog.
    async fn create_external_table(&self, table: ExternalTableMeta) -> Result<(), ClusterError>;

    /// Forgets a table over files (the files stay).
    async fn drop_external_table(&self, name: &str) -> Result<(), ClusterError>;

    /// Waits until this node's catalog holds every change the cluster committed before the call
    /// (each node applies the catalog on its own, a little after its leader), so that what is
    /// listed next is current.
    async fn catalog_caught_up(&self) -> Result<(), ClusterError>;

    /// Every stream job, as this node last applied the catalog.
    fn list_jobs(&self) -> Result<Vec<JobMeta>, ClusterError>;

    /// Records a stream job; returns its id.
    async fn create_job(&self, job: NewJob) -> Result<u64, ClusterError>;

    /// Forgets a stream job (its tasks stop; what it wrote stays).
    async fn drop_job(&self, name: &str) -> Result<(), ClusterError>;

    /// Stops or starts a job's tasks.
    async fn set_job_running(&self, name: &str, running: bool) -> Result<(), ClusterError>;

    /// What the tasks of job `job` running on node `node` have done.
    async fn task_status(&self, node: u64, job: u64) -> Result<Vec<TaskStatus>, ClusterError>;

    /// Every schedule, as this node last applied the catalog.
    fn list_schedules(&self) -> Result<Vec<ScheduleMeta>, ClusterError>;

    /// Records a schedule; returns its id.
    async fn create_schedule(&self, schedule: NewSchedule) -> Result<u64, ClusterError>;

    /// Pauses, resumes, drops or runs a schedule now.
    async fn alter_schedule(&self, name: &str, action: ScheduleAction) -> Result<(), ClusterError>;

    /// Reads rows of `table` by full primary key (linearizable): one answer per key, in order,
    /// with the values of `columns` (None: no such row).
    async fn get(
        &self,
        table: &str,
        keys: Vec<Vec<Value>>,
        columns: &[String],
    ) -> Result<Vec<Option<Vec<Value>>>, ClusterError>;

    /// Applies aggregate merges to rows of `table`; returns, for each merge refused because its
    /// row already took part of its range, the merge's index and the offset the row reached.
    async fn merge(
        &self,
        table: &str,
        merges: Vec<SinkMerge>,
    ) -> Result<Vec<(usize, u64)>, ClusterError>;

    /// The offsets `group` has committed for the partitions of `topic`.
    async fn committed(&self, group: &str, topic: &str)
        -> Result<BTreeMap<u32, u64>, ClusterError>;

    /// Commits `offset` (the next one to read) for one partition of `topic` in `group`.
    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ClusterError>;

    /// The URL (`http://host:port`) of this node's query worker, when it serves one: queries
    /// run across the cluster only from a node that is itself a worker.
    fn worker_url(&self) -> Option<String> {
        None
    }

    /// URLs of the workers a query may send tasks to now, this node's included.
    fn worker_urls(&self) -> Vec<String> {
        Vec::new()
    }

    /// URL of the worker on the node leading `region`, when this node knows it.
    fn region_leader_url(&self, _region: u64) -> Option<String> {
        None
    }
}
