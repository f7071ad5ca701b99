//! The cluster as one run of a schedule sees it: every read passes through, every write is
//! refused once the run's lease may have passed, so a run that stalled past its lease (and whose
//! tick another node may have claimed) stops writing before the other can start.
//!
//! The check is made before each write is sent, against this node's clock with a margin for the
//! drift between nodes' clocks. Table writes are also fenced in the store: the node gives a run a
//! cluster view whose writes carry the run's fencing token, which regions check
//! (`weir_storage::types::WriterFence`), so a table write already on the wire when the process
//! stalls cannot land where a successor has written. Writes to topics and DDL have the lease
//! check alone.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use weir_proto::table::row::EncodedRows;
use weir_proto::table::Value;

use crate::cluster::{
    Cluster, ClusterError, ExternalTableMeta, JobMeta, NewJob, NewRecord, NewSchedule, NewTable,
    NewTopic, RecordPage, ScanPage, ScheduleAction, ScheduleMeta, SinkMerge, TableMeta, TaskStatus,
    TopicMeta,
};
use crate::scan_filter::ScanFilter;

/// Milliseconds since the epoch on this node's clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// How long before its lease ends a run stops writing: the most the nodes' clocks may disagree.
pub const CLOCK_MARGIN_MS: i64 = 2_000;

/// Until when (ms since the epoch, the lease's end) a run may write; shared with the task that
/// renews the lease, which moves it forward or, when the lease is lost, to 0.
#[derive(Debug, Clone, Default)]
pub struct Lease(Arc<AtomicI64>);

impl Lease {
    /// A lease ending at `until_ms`.
    pub fn new(until_ms: i64) -> Lease {
        Lease(Arc::new(AtomicI64::new(until_ms)))
    }

    /// Moves the lease's end.
    pub fn set(&self, until_ms: i64) {
        self.0.store(until_ms, Ordering::SeqCst);
    }

    /// Ends the lease now (it was lost).
    pub fn lose(&self) {
        self.0.store(0, Ordering::SeqCst);
    }

    /// Whether writes are still allowed: the lease ends later than the clock margin from now.
    pub fn holds(&self) -> bool {
        now_ms() + CLOCK_MARGIN_MS < self.0.load(Ordering::SeqCst)
    }
}

/// A cluster whose writes need a held lease.
#[derive(Debug)]
pub struct FencedCluster {
    inner: Arc<dyn Cluster>,
    lease: Lease,
    what: String,
}

impl FencedCluster {
    /// `inner` fenced by `lease`; `what` names the run in refusals.
    pub fn new(inner: Arc<dyn Cluster>, lease: Lease, what: String) -> FencedCluster {
        FencedCluster { inner, lease, what }
    }

    fn check(&self) -> Result<(), ClusterError> {
        if self.lease.holds() {
            Ok(())
        } else {
            Err(ClusterError::Unavailable(format!(
                "{} lost its lease; it writes no more",
                self.what
            )))
        }
    }
}

#[async_trait]
impl Cluster for FencedCluster {
    fn list_tables(&self) -> Result<Vec<TableMeta>, ClusterError> {
        self.inner.list_tables()
    }

    fn table(&self, name: &str) -> Result<Option<TableMeta>, ClusterError> {
        self.inner.table(name)
    }

    fn worker_url(&self) -> Option<String> {
        self.inner.worker_url()
    }

    fn worker_urls(&self) -> Vec<String> {
        self.inner.worker_urls()
    }

    fn region_leader_url(&self, region: u64) -> Option<String> {
        self.inner.region_leader_url(region)
    }

    async fn scan(
        &self,
        table: &str,
        range: (&[u8], &[u8]),
        columns: &[String],
        filters: &[ScanFilter],
        limit: usize,
    ) -> Result<ScanPage, ClusterError> {
        self.inner.scan(table, range, columns, filters, limit).await
    }

    async fn upsert(&self, table: &str, rows: EncodedRows) -> Result<u64, ClusterError> {
        self.check()?;
        self.inner.upsert(table, rows).await
    }

    async fn delete(&self, table: &str, keys: Vec<Vec<Value>>) -> Result<u64, ClusterError> {
        self.check()?;
        self.inner.delete(table, keys).await
    }

    async fn create_table(&self, table: NewTable) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.create_table(table).await
    }

    async fn drop_table(&self, name: &str) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.drop_table(name).await
    }

    fn list_topics(&self) -> Result<Vec<TopicMeta>, ClusterError> {
        self.inner.list_topics()
    }

    fn topic(&self, name: &str) -> Result<Option<TopicMeta>, ClusterError> {
        self.inner.topic(name)
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), ClusterError> {
        self.inner.offsets(topic, partition).await
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<RecordPage, ClusterError> {
        self.inner.fetch(topic, partition, offset, max_bytes).await
    }

    async fn produce(&self, topic: &str, records: Vec<NewRecord>) -> Result<u64, ClusterError> {
        self.check()?;
        self.inner.produce(topic, records).await
    }

    async fn produce_numbered(
        &self,
        topic: &str,
        producer: (u64, u64),
        sequence: u64,
        records: Vec<NewRecord>,
        keyless: u32,
    ) -> Result<(), ClusterError> {
        self.check()?;
        self.inner
            .produce_numbered(topic, producer, sequence, records, keyless)
            .await
    }

    async fn producer_numbers(
        &self,
        topic: &str,
        producer: (u64, u64),
    ) -> Result<Vec<u64>, ClusterError> {
        self.inner.producer_numbers(topic, producer).await
    }

    async fn create_topic(&self, topic: NewTopic) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.create_topic(topic).await
    }

    async fn drop_topic(&self, name: &str) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.drop_topic(name).await
    }

    fn list_external_tables(&self) -> Result<Vec<ExternalTableMeta>, ClusterError> {
        self.inner.list_external_tables()
    }

    fn external_table(&self, name: &str) -> Result<Option<ExternalTableMeta>, ClusterError> {
        self.inner.external_table(name)
    }

    async fn create_external_table(&self, table: ExternalTableMeta) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.create_external_table(table).await
    }

    async fn drop_external_table(&self, name: &str) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.drop_external_table(name).await
    }

    async fn catalog_caught_up(&self) -> Result<(), ClusterError> {
        self.inner.catalog_caught_up().await
    }

    fn list_jobs(&self) -> Result<Vec<JobMeta>, ClusterError> {
        self.inner.list_jobs()
    }

    async fn create_job(&self, job: NewJob) -> Result<u64, ClusterError> {
        self.check()?;
        self.inner.create_job(job).await
    }

    async fn drop_job(&self, name: &str) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.drop_job(name).await
    }

    async fn set_job_running(&self, name: &str, running: bool) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.set_job_running(name, running).await
    }

    async fn task_status(&self, node: u64, job: u64) -> Result<Vec<TaskStatus>, ClusterError> {
        self.inner.task_status(node, job).await
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleMeta>, ClusterError> {
        self.inner.list_schedules()
    }

    async fn create_schedule(&self, schedule: NewSchedule) -> Result<u64, ClusterError> {
        self.check()?;
        self.inner.create_schedule(schedule).await
    }

    async fn alter_schedule(&self, name: &str, action: ScheduleAction) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.alter_schedule(name, action).await
    }

    async fn get(
        &self,
        table: &str,
        keys: Vec<Vec<Value>>,
        columns: &[String],
    ) -> Result<Vec<Option<Vec<Value>>>, ClusterError> {
        self.inner.get(table, keys, columns).await
    }

    async fn merge(
        &self,
        table: &str,
        merges: Vec<SinkMerge>,
    ) -> Result<Vec<(usize, u64)>, ClusterError> {
        self.check()?;
        self.inner.merge(table, merges).await
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<u32, u64>, ClusterError> {
        self.inner.committed(group, topic).await
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ClusterError> {
        self.check()?;
        self.inner.commit(group, topic, partition, offset).await
    }
}
