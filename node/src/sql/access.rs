//! The cluster as the SQL layer reaches it: the catalog this node has applied, and reads and
//! writes sent through the client library, which routes each to its region's leader and retries
//! across leader changes and splits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tonic::Code;
use weir_client::{Acks, Client, ClientConfig, ClientError, Partitioner, Table};
use weir_proto::batch::{self, BatchBuilder};
use weir_proto::table::row::EncodedRows;
use weir_proto::table::Value;
use weir_sql::scan_filter::ScanFilter;
use weir_sql::{
    Cluster, ClusterError, ExternalTableMeta, JobMeta, NewJob, NewRecord, NewSchedule, NewTable,
    NewTopic, RecordPage, RegionMeta, ScanPage, ScheduleAction, ScheduleMeta, Served, SinkMerge,
    TableMeta, TaskStatus, TopicMeta, TopicRecord,
};
use weir_storage::catalog::{
    Catalog, ExternalTableInfo, GroupKind, JobInfo, ScheduleInfo, TableInfo, TopicInfo,
};

use crate::groups::Registry;
use crate::log::read;
use crate::peers::Peers;

/// The SQL layer's view of the cluster from this node.
pub struct NodeCluster {
    registry: Registry,
    /// The storage engine, for reading the partitions this node leads without a round trip.
    engine: weir_storage::Engine,
    /// Channels to the other nodes, for asking the metadata leader how current the catalog is.
    peers: Peers,
    /// This node's own gRPC address: the client's first hop.
    addr: String,
    client: tokio::sync::OnceCell<Client>,
    /// Table handles (with their cached region routes), by name and table id.
    tables: Mutex<HashMap<String, (u64, Table)>>,
    /// The fencing token (holder, token) every write of this view carries, if any.
    fence: Option<(String, u64)>,
    /// Ids of the tables whose every region has this view's token already.
    fenced_tables: Mutex<HashSet<u64>>,
}

impl std::fmt::Debug for NodeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCluster")
            .field("addr", &self.addr)
            .finish()
    }
}

fn to_cluster(e: ClientError) -> ClusterError {
    // A replaced writer: retrying later (as whoever replaced it) is the way on, not a bad request.
    if let ClientError::Fenced(m) = &e {
        return ClusterError::Unavailable(format!("fenced: {m}"));
    }
    // The SQL layer reports its own status code; keep only the node's explanation.
    let message = match &e {
        ClientError::Status { message, .. } => message.clone(),
        other => other.to_string(),
    };
    match e.code() {
        Code::NotFound => ClusterError::NotFound(message),
        Code::AlreadyExists => ClusterError::AlreadyExists(message),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            ClusterError::Invalid(message)
        }
        _ => ClusterError::Unavailable(message),
    }
}

/// The URL of the query worker of the node whose gRPC address is `addr` (it serves on that port).
fn worker_url(addr: &str) -> String {
    format!("http://{}", addr.trim_start_matches("http://"))
}

/// A table as SQL sees it; region sizes are those of the replicas this node holds (every replica
/// applies every write, so a follower's count is as good as its leader's), 0 for the others.
fn meta(catalog: &Catalog, t: &TableInfo, registry: &Registry) -> TableMeta {
    let held = |id: u64| match registry.get(id).map(|h| h.watch.clone()) {
        Some(weir_storage::GroupWatch::Region(rx)) => rx.borrow().approx_bytes,
        _ => 0,
    };
    TableMeta {
        name: t.name.clone(),
        schema: Arc::new(t.schema.clone()),
        regions: catalog
            .regions_of(t)
            .filter_map(|g| match &g.kind {
                GroupKind::Region { start, end, .. } => Some(RegionMeta {
                    id: g.id,
                    start: start.clone(),
                    end: end.clone(),
                    approx_bytes: held(g.id),
                }),
                _ => None,
            })
            .collect(),
    }
}

/// A job as the SQL layer sees it.
pub fn job_meta(j: &JobInfo) -> JobMeta {
    JobMeta {
        name: j.name.clone(),
        id: j.id,
        definition: j.definition.clone(),
        source: j.source.clone(),
        sink: j.sink.clone(),
        start_latest: j.start_latest,
        running: j.running,
        tasks: j.tasks.iter().map(|t| (t.node, t.epoch)).collect(),
    }
}

/// Records encoded into one batch per partition: each to its partition, else the one its key
/// hashes to, else `keyless` when given (deterministic), else spread record by record.
fn batches_by_partition(
    topic: &str,
    partitions: u32,
    records: &[NewRecord],
    keyless: Option<u32>,
) -> Result<BTreeMap<u32, BatchBuilder>, ClusterError> {
    let mut partitioner = Partitioner::new(partitions, 1);
    let mut batches: BTreeMap<u32, BatchBuilder> = BTreeMap::new();
    let now = weir_client::now_ms();
    for r in records {
        let p = match (r.partition, &r.key, keyless) {
            (Some(p), _, _) if p < partitions => p,
            (Some(p), _, _) => {
                return Err(ClusterError::Invalid(format!(
                    "topic '{topic}' has {partitions} partitions; there is no partition {p}"
                )))
            }
            (None, None, Some(p)) => p % partitions.max(1),
            (None, key, _) => partitioner.partition(key.as_deref()),
        };
        batches.entry(p).or_default().push(
            r.key.as_deref(),
            &r.value,
            r.timestamp_ms.unwrap_or(now),
        );
        if r.key.is_none() && r.partition.is_none() {
            partitioner.keyless_taken(1);
        }
    }
    Ok(batches)
}

/// A schedule as the SQL layer sees it.
pub fn schedule_meta(s: &ScheduleInfo) -> ScheduleMeta {
    ScheduleMeta {
        name: s.name.clone(),
        id: s.id,
        statement: s.statement.clone(),
        every_ms: s.every_ms,
        cron: s.cron.clone(),
        after: s.after.clone(),
        paused: s.paused,
        created_ms: s.created_ms,
        run_now: s.run_now,
    }
}

fn external_meta(t: &ExternalTableInfo) -> ExternalTableMeta {
    ExternalTableMeta {
        name: t.name.clone(),
        definition: t.definition.clone(),
    }
}

fn topic_meta(t: &TopicInfo) -> TopicMeta {
    TopicMeta {
        name: t.name.clone(),
        replicas: t.replicas,
        partitions: t.groups.len() as u32,
        format: t.format.clone(),
    }
}

impl NodeCluster {
    /// The view from the node at `addr` whose groups are `registry`.
    pub fn new(
        registry: Registry,
        engine: weir_storage::Engine,
        peers: Peers,
        addr: String,
    ) -> NodeCluster {
        NodeCluster {
            registry,
            engine,
            peers,
            addr,
            client: tokio::sync::OnceCell::new(),
            tables: Mutex::new(HashMap::new()),
            fence: None,
            fenced_tables: Mutex::new(HashSet::new()),
        }
    }

    /// A fetch answered in process when this node leads the partition, as it does for the stream
    /// tasks placed beside their partition's leader: a page through gRPC over loopback costs a
    /// copy into and out of the socket. `None` when another node leads or the read fails here;
    /// the client then finds the leader, retries and reports what is wrong.
    async fn fetch_here(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Option<weir_proto::v1::FetchResponse> {
        let catalog = self.registry.catalog().ok()?;
        let group = catalog.partition_group(topic, partition)?.id;
        let h = self.registry.get(group).filter(|h| h.is_leader())?;
        let f = read::Fetch {
            topic,
            partition,
            offset,
            max_bytes,
            max_wait_ms: 0,
        };
        read::fetch(&self.engine, &h, f).await.ok()
    }

    /// The same view with every table write carrying the fencing token `token` of `holder`:
    /// before its first write to a table it raises the token in all of the table's regions, so
    /// from then on no instance of `holder` with a lower token can write to that table.
    pub async fn fenced(&self, holder: &str, token: u64) -> Result<NodeCluster, ClusterError> {
        let client = self.client().await?.clone();
        Ok(NodeCluster {
            registry: self.registry.clone(),
            engine: self.engine.clone(),
            peers: self.peers.clone(),
            addr: self.addr.clone(),
            client: tokio::sync::OnceCell::new_with(Some(client)),
            tables: Mutex::new(HashMap::new()),
            fence: Some((holder.to_string(), token)),
            fenced_tables: Mutex::new(HashSet::new()),
        })
    }

    fn catalog(&self) -> Result<Arc<Catalog>, ClusterError> {
        self.registry
            .catalog()
            .map_err(|e| ClusterError::Unavailable(e.to_string()))
    }

    async fn client(&self) -> Result<&Client, ClusterError> {
        self.client
            .get_or_try_init(|| Client::connect_with(&self.addr, ClientConfig::default()))
            .await
            .map_err(to_cluster)
    }

    /// A handle to write to the table: one carrying this view's token, raised in all of the
    /// table's regions first.
    async fn writable(&self, name: &str) -> Result<Table, ClusterError> {
        let (id, t) = self.handle_of(name).await?;
        let fenced = |ids: &HashSet<u64>| ids.contains(&id);
        if self.fence.is_some() && !fenced(&self.fenced_set()) {
            t.fence_all().await.map_err(to_cluster)?;
            self.fenced_set().insert(id);
        }
        Ok(t)
    }

    fn fenced_set(&self) -> std::sync::MutexGuard<'_, HashSet<u64>> {
        self.fenced_tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A handle to the table, reused while the catalog shows the same table under the name.
    pub async fn handle(&self, name: &str) -> Result<Table, ClusterError> {
        Ok(self.handle_of(name).await?.1)
    }

    /// The table's id and a handle to it (carrying this view's token, if any).
    async fn handle_of(&self, name: &str) -> Result<(u64, Table), ClusterError> {
        let catalog = self.catalog()?;
        let id = catalog
            .tables
            .get(name)
            .map(|t| t.id)
            .ok_or_else(|| ClusterError::NotFound(catalog.no_table(name)))?;
        if let Some((cached, t)) = self.cached().get(name) {
            if *cached == id {
                return Ok((id, t.clone()));
            }
        }
        let mut t = self.client().await?.table(name).await.map_err(to_cluster)?;
        if let Some((holder, token)) = &self.fence {
            t = t.fenced(holder, *token);
        }
        self.cached().insert(name.to_string(), (id, t.clone()));
        Ok((id, t))
    }

    fn cached(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, Table)>> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Cluster for NodeCluster {
    fn list_tables(&self) -> Result<Vec<TableMeta>, ClusterError> {
        let catalog = self.catalog()?;
        Ok(catalog
            .tables
            .values()
            .map(|t| meta(&catalog, t, &self.registry))
            .collect())
    }

    fn table(&self, name: &str) -> Result<Option<TableMeta>, ClusterError> {
        let catalog = self.catalog()?;
        Ok(catalog
            .tables
            .get(name)
            .map(|t| meta(&catalog, t, &self.registry)))
    }

    async fn scan(
        &self,
        table: &str,
        (start, end): (&[u8], &[u8]),
        columns: &[String],
        filters: &[ScanFilter],
        limit: usize,
    ) -> Result<ScanPage, ClusterError> {
        let t = self.handle(table).await?;
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        let filters = filters.iter().map(ScanFilter::to_proto).collect();
        let page = t
            .scan_arrow_page((start, end), limit, columns, filters, false)
            .await
            .map_err(to_cluster)?;
        let batch = weir_sql::columnar::from_ipc(&page.ipc)
            .map_err(|e| ClusterError::Unavailable(format!("a scan page does not decode: {e}")))?;
        Ok(ScanPage {
            batch,
            resume: page.resume,
            served: Served {
                region: page.region,
                node: page.node,
                from_image: page.from_image,
            },
        })
    }

    async fn upsert(&self, table: &str, rows: EncodedRows) -> Result<u64, ClusterError> {
        self.writable(table)
            .await?
            .put_encoded(rows)
            .await
            .map_err(to_cluster)
    }

    async fn delete(&self, table: &str, keys: Vec<Vec<Value>>) -> Result<u64, ClusterError> {
        self.writable(table)
            .await?
            .delete(&keys)
            .await
            .map_err(to_cluster)
    }

    async fn create_table(&self, t: NewTable) -> Result<(), ClusterError> {
        self.client()
            .await?
            .create_table(&t.name, &t.schema, t.replicas, t.split_bytes)
            .await
            .map(|_| ())
            .map_err(to_cluster)
    }

    async fn drop_table(&self, name: &str) -> Result<(), ClusterError> {
        self.client()
            .await?
            .drop_table(name)
            .await
            .map_err(to_cluster)?;
        self.cached().remove(name);
        Ok(())
    }

    fn list_external_tables(&self) -> Result<Vec<ExternalTableMeta>, ClusterError> {
        Ok(self
            .catalog()?
            .external_tables
            .values()
            .map(external_meta)
            .collect())
    }

    fn external_table(&self, name: &str) -> Result<Option<ExternalTableMeta>, ClusterError> {
        Ok(self.catalog()?.external_tables.get(name).map(external_meta))
    }

    async fn create_external_table(&self, table: ExternalTableMeta) -> Result<(), ClusterError> {
        self.client()
            .await?
            .create_external_table(&table.name, &table.definition)
            .await
            .map_err(to_cluster)
    }

    async fn drop_external_table(&self, name: &str) -> Result<(), ClusterError> {
        self.client()
            .await?
            .drop_external_table(name)
            .await
            .map_err(to_cluster)
    }

    async fn catalog_caught_up(&self) -> Result<(), ClusterError> {
        crate::leader::catalog_caught_up(&self.registry, &self.peers)
            .await
            .map_err(|e| ClusterError::Unavailable(e.to_string()))
    }

    fn list_jobs(&self) -> Result<Vec<JobMeta>, ClusterError> {
        Ok(self.catalog()?.jobs.values().map(job_meta).collect())
    }

    async fn create_job(&self, job: NewJob) -> Result<u64, ClusterError> {
        self.client()
            .await?
            .create_job(&weir_client::NewJob {
                name: job.name,
                definition: job.definition,
                source: job.source,
                sink: job.sink,
                start_latest: job.start_latest,
                tasks: job.tasks,
            })
            .await
            .map_err(to_cluster)
    }

    async fn drop_job(&self, name: &str) -> Result<(), ClusterError> {
        self.client()
            .await?
            .drop_job(name)
            .await
            .map_err(to_cluster)
    }

    async fn set_job_running(&self, name: &str, running: bool) -> Result<(), ClusterError> {
        self.client()
            .await?
            .set_job_running(name, running)
            .await
            .map_err(to_cluster)
    }

    async fn task_status(&self, node: u64, job: u64) -> Result<Vec<TaskStatus>, ClusterError> {
        let addr = self
            .catalog()?
            .nodes
            .get(&node)
            .map(|n| n.addr.clone())
            .ok_or_else(|| ClusterError::NotFound(format!("node {node} is not a member")))?;
        let tasks = self
            .client()
            .await?
            .task_status(&addr, job)
            .await
            .map_err(to_cluster)?;
        Ok(tasks.into_iter().map(TaskStatus::from).collect())
    }

    fn list_schedules(&self) -> Result<Vec<ScheduleMeta>, ClusterError> {
        Ok(self
            .catalog()?
            .schedules
            .values()
            .map(schedule_meta)
            .collect())
    }

    async fn create_schedule(&self, s: NewSchedule) -> Result<u64, ClusterError> {
        self.client()
            .await?
            .create_schedule(
                &s.name,
                &s.statement,
                s.every_ms,
                s.cron.as_deref(),
                &s.after,
            )
            .await
            .map_err(to_cluster)
    }

    async fn alter_schedule(&self, name: &str, action: ScheduleAction) -> Result<(), ClusterError> {
        use weir_proto::v1::alter_schedule_request::Action;
        let action = match action {
            ScheduleAction::Pause => Action::Pause,
            ScheduleAction::Resume => Action::Resume,
            ScheduleAction::Drop => Action::Drop,
            ScheduleAction::RunNow => Action::RunNow,
        };
        self.client()
            .await?
            .alter_schedule(name, action)
            .await
            .map_err(to_cluster)
    }

    async fn get(
        &self,
        table: &str,
        keys: Vec<Vec<Value>>,
        columns: &[String],
    ) -> Result<Vec<Option<Vec<Value>>>, ClusterError> {
        let rows = self
            .handle(table)
            .await?
            .get(&keys, columns, false)
            .await
            .map_err(to_cluster)?;
        Ok(rows.into_iter().map(|r| r.map(|r| r.values)).collect())
    }

    async fn merge(
        &self,
        table: &str,
        merges: Vec<SinkMerge>,
    ) -> Result<Vec<(usize, u64)>, ClusterError> {
        let merges = merges
            .into_iter()
            .map(|m| weir_client::RowMerge {
                key: m.key,
                source: m.source,
                from: m.from,
                to: m.to,
                ops: m.ops,
            })
            .collect();
        let overlaps = self
            .writable(table)
            .await?
            .merge(merges)
            .await
            .map_err(to_cluster)?;
        Ok(overlaps.into_iter().map(|o| (o.index, o.mark)).collect())
    }

    async fn committed(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<BTreeMap<u32, u64>, ClusterError> {
        self.client()
            .await?
            .fetch_committed(group, topic)
            .await
            .map_err(to_cluster)
    }

    async fn commit(
        &self,
        group: &str,
        topic: &str,
        partition: u32,
        offset: u64,
    ) -> Result<(), ClusterError> {
        self.client()
            .await?
            .commit_offsets(group, topic, &[(partition, offset)])
            .await
            .map_err(to_cluster)
    }

    fn list_topics(&self) -> Result<Vec<TopicMeta>, ClusterError> {
        Ok(self.catalog()?.topics.values().map(topic_meta).collect())
    }

    fn worker_url(&self) -> Option<String> {
        Some(worker_url(&self.addr))
    }

    fn worker_urls(&self) -> Vec<String> {
        // A node that leads a group here is alive (a dead node's groups elect someone else
        // within an election timeout); nodes leading nothing here take no tasks.
        let mut urls = BTreeSet::from([worker_url(&self.addr)]);
        if let Ok(catalog) = self.catalog() {
            for h in self.registry.all().values() {
                if let Some(n) = h.leader().and_then(|id| catalog.nodes.get(&id)) {
                    urls.insert(worker_url(&n.addr));
                }
            }
        }
        urls.into_iter().collect()
    }

    fn region_leader_url(&self, region: u64) -> Option<String> {
        let leader = self.registry.get(region)?.leader()?;
        let catalog = self.catalog().ok()?;
        catalog.nodes.get(&leader).map(|n| worker_url(&n.addr))
    }

    fn topic(&self, name: &str) -> Result<Option<TopicMeta>, ClusterError> {
        Ok(self.catalog()?.topics.get(name).map(topic_meta))
    }

    async fn offsets(&self, topic: &str, partition: u32) -> Result<(u64, u64), ClusterError> {
        let o = self
            .client()
            .await?
            .list_offsets(topic, partition)
            .await
            .map_err(to_cluster)?;
        Ok((o.earliest, o.latest))
    }

    async fn fetch(
        &self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_bytes: u32,
    ) -> Result<RecordPage, ClusterError> {
        let resp = match self.fetch_here(topic, partition, offset, max_bytes).await {
            Some(resp) => resp,
            None => self
                .client()
                .await?
                .fetch(topic, partition, offset, max_bytes, 0)
                .await
                .map_err(to_cluster)?,
        };
        let decoded = resp
            .batches
            .iter()
            .map(|stored| {
                let records = batch::decode(&stored.batch).map_err(|e| {
                    ClusterError::Unavailable(format!(
                        "topic '{topic}' partition {partition}: a stored batch at offset {} does not decode: {e}",
                        stored.base_offset
                    ))
                })?;
                Ok((stored.base_offset, records))
            })
            .collect::<Result<Vec<_>, ClusterError>>()?;
        // Sized once: a 4 MiB page is tens of thousands of records.
        let mut records = Vec::with_capacity(decoded.iter().map(|(_, d)| d.len()).sum());
        for (base_offset, batch) in decoded {
            for (i, r) in batch.into_iter().enumerate() {
                records.push(TopicRecord {
                    offset: base_offset + i as u64,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    value: r.value,
                });
            }
        }
        let next_offset = match records.last() {
            Some(r) => r.offset + 1,
            // Below the earliest offset (retention trimmed it): continue from there.
            None => offset.max(resp.earliest_offset),
        };
        Ok(RecordPage {
            records,
            next_offset,
        })
    }

    async fn produce(&self, topic: &str, records: Vec<NewRecord>) -> Result<u64, ClusterError> {
        let client = self.client().await?;
        let partitions = client.partition_count(topic).await.map_err(to_cluster)?;
        let batches = batches_by_partition(topic, partitions, &records, None)?;
        // One producer id per call, sequence 0 per partition: a batch retried after a lost
        // answer is stored once.
        let producer_id = weir_proto::random::u64().max(1);
        let mut written = 0u64;
        for (p, b) in batches {
            let (_, n) = client
                .produce_idempotent(topic, p, b.finish(), Acks::All, Some((producer_id, 0)))
                .await
                .map_err(to_cluster)?;
            written += u64::from(n);
        }
        Ok(written)
    }

    async fn produce_numbered(
        &self,
        topic: &str,
        producer: (u64, u64),
        sequence: u64,
        records: Vec<NewRecord>,
        keyless: u32,
    ) -> Result<(), ClusterError> {
        let client = self.client().await?;
        let partitions = client.partition_count(topic).await.map_err(to_cluster)?;
        let batches = batches_by_partition(topic, partitions, &records, Some(keyless))?;
        for (p, b) in batches {
            client
                .produce_numbered(topic, p, b.finish(), producer, sequence)
                .await
                .map_err(to_cluster)?;
        }
        Ok(())
    }

    async fn producer_numbers(
        &self,
        topic: &str,
        producer: (u64, u64),
    ) -> Result<Vec<u64>, ClusterError> {
        let client = self.client().await?;
        let partitions = client.partition_count(topic).await.map_err(to_cluster)?;
        let mut out = Vec::with_capacity(partitions as usize);
        for p in 0..partitions {
            let last = client
                .produce_numbered(topic, p, bytes::Bytes::new(), producer, 0)
                .await
                .map_err(to_cluster)?;
            out.push(last.unwrap_or(0));
        }
        Ok(out)
    }

    async fn create_topic(&self, t: NewTopic) -> Result<(), ClusterError> {
        let mut topic = weir_client::NewTopic::new(t.name, t.partitions, t.replicas);
        if t.retention_ms > 0 {
            topic = topic.retention_ms(t.retention_ms);
        }
        if let Some(f) = t.format {
            topic = topic.format(f);
        }
        self.client()
            .await?
            .create_topic(&topic)
            .await
            .map(|_| ())
            .map_err(to_cluster)
    }

    async fn drop_topic(&self, name: &str) -> Result<(), ClusterError> {
        self.client()
            .await?
            .delete_topic(name)
            .await
            .map_err(to_cluster)
    }
}
