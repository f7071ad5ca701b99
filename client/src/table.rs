//! Tables: create, describe and drop them, and read and write rows by key, each request sent
//! straight to the leader of the key's region.
//!
//! A [`Table`] caches the table's schema and its regions (key ranges and leaders). Keys are encoded
//! on the client with the same memcomparable encoding the server stores, so the client finds each
//! key's region itself. When a region split or its leader moved, the server answers `NotLeader` (with
//! the leader's address) or `UNAVAILABLE` (the key left the region); the table refreshes its regions
//! and retries, so callers see neither. Scans go region by region, each answer one consistent
//! snapshot of one region that says where to continue, so a scan crossing boundaries — even ones
//! that move under it — returns every key once, in order.

use std::future::Future;
use std::sync::{Arc, RwLock};

use futures::future::try_join_all;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};
use weir_proto::table::row::EncodedRows;
use weir_proto::table::{key, TableSchema, Value};
use weir_proto::v1::kv_client::KvClient;
use weir_proto::v1::{self, mutation, ColumnExpect, Mutation, RegionInfo};

use crate::client::{request, Client, MAX_MESSAGE_BYTES};
use crate::error::{is_transport, ClientError, Result};
use crate::pool::normalize;
use crate::retry::{classify, is_ambiguous, Attempts, Verdict};

pub use v1::TableInfo;
pub use weir_proto::table::merge::MergeOp;

/// A `Kv` stub on a channel.
fn kv(channel: Channel) -> KvClient<Channel> {
    KvClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A row read from a table.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRow {
    /// Values in column order (or in the order of the requested columns).
    pub values: Vec<Value>,
    /// Log index of the write that last changed the row.
    pub version: u64,
}

/// What a compare-and-set expects to find.
#[derive(Debug, Clone, PartialEq)]
pub enum Expectation {
    /// The row's version; 0 means the row must not exist.
    Version(u64),
    /// The row exists and this column holds this value.
    Column(String, Value),
}

/// What a compare-and-set does when its expectation holds.
#[derive(Debug, Clone, PartialEq)]
pub enum CasAction {
    /// Writes this full row (its key must be the compared key).
    Put(Vec<Value>),
    /// Deletes the row.
    Delete,
}

/// The answer of a compare-and-set.
#[derive(Debug, Clone, PartialEq)]
pub struct CasOutcome {
    /// Whether the expectation held and the action was applied.
    pub succeeded: bool,
    /// The row after the call: as written, or as found.
    pub current: Option<TableRow>,
}

/// One page of an Arrow scan (see [`Table::scan_arrow_page`]).
#[derive(Debug, Clone)]
pub struct ArrowPage {
    /// The rows' columns as an Arrow IPC stream (schema, one batch).
    pub ipc: bytes::Bytes,
    /// Where the range continues, or none when it is exhausted.
    pub resume: Option<Vec<u8>>,
    /// The node that read the rows.
    pub node: u64,
    /// The region the rows came from.
    pub region: u64,
    /// Whether the page was cut from the region's columnar image rather than read from its rows.
    pub from_image: bool,
}

/// One merge into one row of a table (see [`Table::merge`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RowMerge {
    /// The row's full primary key, in key order.
    pub key: Vec<Value>,
    /// The writer's source (a topic partition, a job's task); the row keeps one mark per source.
    pub source: String,
    /// First source offset the merge aggregates.
    pub from: u64,
    /// Source offset just past the last one the merge aggregates.
    pub to: u64,
    /// One op per column of the table, in column order; key columns [`MergeOp::Keep`].
    pub ops: Vec<MergeOp>,
}

/// A merge that changed nothing because its row's mark for its source falls inside its range:
/// aggregate the source again from `mark` and merge with `from = mark`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeOverlapOut {
    /// Position of the merge in the vector given to [`Table::merge`].
    pub index: usize,
    /// The row's mark for the merge's source.
    pub mark: u64,
}

/// What a scan reads.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// First key (or key prefix), inclusive; none starts at the table's first key.
    pub start: Option<Vec<Value>>,
    /// Key (or key prefix) to stop before, exclusive as in HBase; none scans to the end.
    pub end: Option<Vec<Value>>,
    /// Most rows to return; 0 is unlimited.
    pub limit: usize,
    /// Largest keys first.
    pub reverse: bool,
    /// Columns to return, in order; empty is all.
    pub columns: Vec<String>,
    /// Read from any replica (may be behind).
    pub stale: bool,
}

/// A region as the client last saw it.
#[derive(Debug, Clone)]
struct CachedRegion {
    start: Vec<u8>,
    leader: Option<String>,
}

#[derive(Debug, Default)]
struct Regions {
    regions: Vec<CachedRegion>,
    stale: bool,
}

impl Regions {
    fn find(&self, key: &[u8]) -> Option<usize> {
        let i = self.regions.partition_point(|r| r.start.as_slice() <= key);
        i.checked_sub(1)
    }

    fn find_before(&self, end: &[u8]) -> Option<usize> {
        if end.is_empty() {
            return self.regions.len().checked_sub(1);
        }
        let i = self.regions.partition_point(|r| r.start.as_slice() < end);
        i.checked_sub(1)
            .or(Some(0))
            .filter(|_| !self.regions.is_empty())
    }
}

/// A handle to one table; cheap to clone.
#[derive(Debug, Clone)]
pub struct Table {
    client: Client,
    name: String,
    schema: Arc<TableSchema>,
    regions: Arc<RwLock<Regions>>,
    /// The fencing token every write of this handle carries ([`Table::fenced`]).
    fence: Option<v1::WriterFence>,
}

/// Builds a schema from the wire description of a table.
pub fn schema_of(info: &TableInfo) -> Result<TableSchema> {
    TableSchema::from_column_defs(&info.columns, &info.primary_key)
        .map_err(|e| ClientError::InvalidArgument(e.to_string()))
}

/// A region bound as text (`v1, v2`): the values of the key columns it encodes (split keys are
/// full keys); None when it is not a whole key.
pub fn decode_bound(schema: &TableSchema, bound: &[u8]) -> Option<String> {
    let values = key::decode_key(schema, bound).ok()?;
    Some(
        values
            .iter()
            .zip(schema.key_columns())
            .map(|(v, c)| v.render(c.ty))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

fn to_key(values: &[Value]) -> v1::Key {
    v1::Key {
        values: values.iter().map(Value::to_proto).collect(),
    }
}

fn from_row(r: &v1::Row) -> Result<TableRow> {
    Ok(TableRow {
        values: r
            .values
            .iter()
            .map(Value::from_proto)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| ClientError::InvalidArgument(e.to_string()))?,
        version: r.version,
    })
}

fn maybe_row(m: &v1::MaybeRow) -> Result<Option<TableRow>> {
    match (&m.row, m.found) {
        (Some(r), true) => Ok(Some(from_row(r)?)),
        _ => Ok(None),
    }
}

impl Client {
    /// Creates a table (`replicas` 0 means 3, capped by the cluster size; `split_bytes` 0 means
    /// the default 64 MiB) and returns its description.
    pub async fn create_table(
        &self,
        name: &str,
        schema: &TableSchema,
        replicas: u32,
        split_bytes: u64,
    ) -> Result<TableInfo> {
        self.create_table_split_at(name, schema, replicas, split_bytes, &[])
            .await
    }

    /// Creates a table already split before each of `split_points` (keys or key prefixes), one
    /// region per range, as HBase's `SPLITS`: a bulk load is spread over nodes from the start.
    pub async fn create_table_split_at(
        &self,
        name: &str,
        schema: &TableSchema,
        replicas: u32,
        split_bytes: u64,
        split_points: &[Vec<Value>],
    ) -> Result<TableInfo> {
        let req = v1::CreateTableRequest {
            name: name.to_string(),
            columns: schema.column_defs(),
            primary_key: schema.key_columns().map(|c| c.name.clone()).collect(),
            replicas,
            split_bytes,
            split_points: split_points.iter().map(|k| to_key(k)).collect(),
        };
        let timeout = self
            .config()
            .request_timeout
            .max(std::time::Duration::from_secs(10));
        // A retry after a lost answer may find the table created by the first attempt.
        let created = self
            .call_any_tolerating(Some(Code::AlreadyExists), |ch| {
                let req = req.clone();
                async move { kv(ch).create_table(request(req, timeout)).await }
            })
            .await?;
        match created {
            Some(info) => Ok(info),
            None => self.describe_table(name).await,
        }
    }

    /// Drops a table and all its rows.
    pub async fn drop_table(&self, name: &str) -> Result<()> {
        let timeout = self.config().request_timeout;
        let req = v1::DropTableRequest {
            name: name.to_string(),
        };
        // A retry after a lost answer may find the table already dropped by the first attempt.
        self.call_any_tolerating(Some(Code::NotFound), |ch| {
            let req = req.clone();
            async move { kv(ch).drop_table(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }

    /// Records a table over files under `name`, defined by its `CREATE EXTERNAL TABLE`
    /// statement, so that every node's SQL reads it.
    pub async fn create_external_table(&self, name: &str, definition: &str) -> Result<()> {
        let timeout = self.config().request_timeout;
        let req = v1::CreateExternalTableRequest {
            name: name.to_string(),
            definition: definition.to_string(),
        };
        // A retry after a lost answer may find the table recorded by the first attempt.
        self.call_any_tolerating(Some(Code::AlreadyExists), |ch| {
            let req = req.clone();
            async move { kv(ch).create_external_table(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }

    /// Forgets the table over files `name` (the files stay).
    pub async fn drop_external_table(&self, name: &str) -> Result<()> {
        let timeout = self.config().request_timeout;
        let req = v1::DropTableRequest {
            name: name.to_string(),
        };
        self.call_any_tolerating(Some(Code::NotFound), |ch| {
            let req = req.clone();
            async move { kv(ch).drop_external_table(request(req, timeout)).await }
        })
        .await?;
        Ok(())
    }

    /// Every table, with its regions.
    pub async fn list_tables(&self) -> Result<Vec<TableInfo>> {
        let timeout = self.config().request_timeout;
        Ok(self
            .call_any(|ch| async move {
                kv(ch)
                    .list_tables(request(v1::ListTablesRequest {}, timeout))
                    .await
            })
            .await?
            .tables)
    }

    /// A table's columns, key, and regions with their ranges, leaders and sizes.
    pub async fn describe_table(&self, name: &str) -> Result<TableInfo> {
        let timeout = self.config().request_timeout;
        let req = v1::DescribeTableRequest {
            name: name.to_string(),
        };
        self.call_any(|ch| {
            let req = req.clone();
            async move { kv(ch).describe_table(request(req, timeout)).await }
        })
        .await
    }

    /// A handle to read and write the rows of `name`.
    pub async fn table(&self, name: &str) -> Result<Table> {
        let info = self.describe_table(name).await?;
        let table = Table {
            client: self.clone(),
            name: name.to_string(),
            schema: Arc::new(schema_of(&info)?),
            regions: Arc::new(RwLock::new(Regions::default())),
            fence: None,
        };
        table.remember(&info);
        Ok(table)
    }
}

/// Where a request for a key goes: a region index in the cache, found by key or by end bound.
#[derive(Clone, Copy)]
enum Locate<'a> {
    Key(&'a [u8]),
    Before(&'a [u8]),
}

impl Table {
    /// This handle with every write carrying the fencing token `token` of `holder`: a region
    /// refuses the writes ([`ClientError::Fenced`]) once it has seen a higher token of the same
    /// holder, from a write or from [`Table::fence_all`]. Reads are not fenced.
    pub fn fenced(&self, holder: &str, token: u64) -> Table {
        Table {
            fence: Some(v1::WriterFence {
                holder: holder.to_string(),
                token,
            }),
            ..self.clone()
        }
    }

    /// Raises this handle's fencing token in every region of the table, so that no instance of
    /// the holder with a lower token can write to the table any more, in these regions or in any
    /// split off them later. Returns the regions fenced; refused with [`ClientError::Fenced`] when
    /// a higher token was already seen.
    pub async fn fence_all(&self) -> Result<u32> {
        let Some(fence) = self.fence.clone() else {
            return Err(ClientError::InvalidArgument(format!(
                "the handle of '{}' has no fencing token to raise",
                self.name
            )));
        };
        let timeout = self.client.config().request_timeout;
        let mut key: Vec<u8> = Vec::new();
        let mut regions = 0;
        loop {
            let req = v1::FenceRequest {
                table: self.name.clone(),
                fence: Some(fence.clone()),
                key: key.clone().into(),
            };
            // Raising a token to the same value again changes nothing: safe to retry.
            let resp = self
                .call_region(Locate::Key(&key), true, |ch| {
                    let req = req.clone();
                    async move { kv(ch).fence(request(req, timeout)).await }
                })
                .await?;
            regions += 1;
            if resp.end.is_empty() {
                return Ok(regions);
            }
            if resp.end.as_ref() <= key.as_slice() {
                return Err(ClientError::Status {
                    code: Code::Internal,
                    message: format!(
                        "a region of '{}' answered an end before the key it was asked for",
                        self.name
                    ),
                });
            }
            key = resp.end.to_vec();
        }
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The table's columns and key.
    pub fn schema(&self) -> &TableSchema {
        &self.schema
    }

    /// Encodes a full key (or key prefix) for routing.
    pub fn encode_key(&self, key: &[Value]) -> Result<Vec<u8>> {
        key::encode_key(&self.schema, key).map_err(|e| ClientError::InvalidArgument(e.to_string()))
    }

    /// Refuses a row without one value per column.
    fn check_width(&self, row: &[Value]) -> Result<()> {
        if row.len() != self.schema.columns.len() {
            return Err(ClientError::InvalidArgument(format!(
                "a row of '{}' has {} columns ({}), {} values given",
                self.name,
                self.schema.columns.len(),
                self.schema.column_names().join(", "),
                row.len()
            )));
        }
        Ok(())
    }

    /// The key values of a full row.
    fn key_of(&self, row: &[Value]) -> Result<Vec<Value>> {
        self.check_width(row)?;
        Ok(self
            .schema
            .primary_key
            .iter()
            .map(|i| row[*i].clone())
            .collect())
    }

    fn remember(&self, info: &TableInfo) {
        let mut regions: Vec<CachedRegion> = info
            .regions
            .iter()
            .map(|r: &RegionInfo| CachedRegion {
                start: r.start_key.to_vec(),
                leader: (!r.leader_addr.is_empty()).then(|| normalize(&r.leader_addr)),
            })
            .collect();
        regions.sort_by(|a, b| a.start.cmp(&b.start));
        for r in &regions {
            if let Some(l) = &r.leader {
                self.client.pool().learn(l);
            }
        }
        let mut cache = self.regions.write().unwrap_or_else(|e| e.into_inner());
        *cache = Regions {
            regions,
            stale: false,
        };
    }

    fn mark_stale(&self) {
        self.regions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .stale = true;
    }

    /// The leader of the region for `at`, refreshing stale routes first; any node when unknown.
    async fn route(&self, at: Locate<'_>) -> Result<String> {
        let stale = self.regions.read().unwrap_or_else(|e| e.into_inner()).stale;
        if stale {
            match self.client.describe_table(&self.name).await {
                Ok(info) => self.remember(&info),
                Err(e) if e.code() == Code::NotFound => return Err(e),
                Err(e) => tracing::debug!(table = %self.name, error = %e, "route refresh failed"),
            }
        }
        let cache = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let idx = match at {
            Locate::Key(k) => cache.find(k),
            Locate::Before(e) => cache.find_before(e),
        };
        let leader = idx.and_then(|i| cache.regions[i].leader.clone());
        Ok(match leader {
            Some(addr) if !self.client.pool().is_suspect(&addr) => addr,
            _ => self.client.pool().any_node(),
        })
    }

    fn set_leader(&self, at: Locate<'_>, leader: &str) {
        let mut cache = self.regions.write().unwrap_or_else(|e| e.into_inner());
        let idx = match at {
            Locate::Key(k) => cache.find(k),
            Locate::Before(e) => cache.find_before(e),
        };
        if let Some(i) = idx {
            cache.regions[i].leader = Some(leader.to_string());
        }
    }

    /// Sends a request for the region at `at` to its leader, following splits and leader moves
    /// until the client's retry deadline. With `retry_ambiguous` false, a broken connection (the
    /// request may have been applied) is returned rather than retried.
    async fn call_region<T, F, Fut>(
        &self,
        at: Locate<'_>,
        retry_ambiguous: bool,
        mut call: F,
    ) -> Result<T>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = std::result::Result<Response<T>, Status>>,
    {
        let mut attempts = Attempts::new(self.client.config().retry_for);
        loop {
            let addr = self.route(at).await?;
            attempts.begin();
            let status = match call(self.client.pool().channel(&addr)?).await {
                Ok(resp) => return Ok(resp.into_inner()),
                Err(status) => status,
            };
            let err = ClientError::from_status(&addr, &status);
            match classify(&status) {
                Verdict::Fail => return Err(err),
                Verdict::NotLeader(Some(leader)) => {
                    let leader = normalize(&leader);
                    self.client.pool().learn(&leader);
                    self.set_leader(at, &leader);
                }
                Verdict::NotLeader(None) => self.mark_stale(),
                Verdict::Unavailable => {
                    if is_transport(&status) {
                        self.client.pool().suspect(&addr);
                    }
                    if !retry_ambiguous && is_ambiguous(&status) {
                        return Err(err);
                    }
                    self.mark_stale();
                }
            }
            attempts.pause(err).await?;
        }
    }

    /// Groups `items` by the region their key falls in (by the cached routes); each group comes
    /// with its first key.
    fn by_region<K: AsRef<[u8]>, I>(&self, items: Vec<(K, I)>) -> Vec<(K, Vec<I>)> {
        let cache = self.regions.read().unwrap_or_else(|e| e.into_inner());
        let mut groups: std::collections::BTreeMap<usize, (K, Vec<I>)> = Default::default();
        for (k, item) in items {
            let idx = cache.find(k.as_ref()).unwrap_or(0);
            groups
                .entry(idx)
                .or_insert_with(|| (k, Vec::new()))
                .1
                .push(item);
        }
        groups.into_values().collect()
    }

    /// Reads rows by full key; the answer has one entry per key, in order (None: no such row).
    pub async fn get(
        &self,
        keys: &[Vec<Value>],
        columns: &[String],
        stale: bool,
    ) -> Result<Vec<Option<TableRow>>> {
        let mut items = Vec::with_capacity(keys.len());
        for (i, k) in keys.iter().enumerate() {
            items.push((self.encode_key(k)?, (i, to_key(k))));
        }
        let timeout = self.client.config().request_timeout;
        let parts = self.by_region(items);
        let answers = try_join_all(parts.into_iter().map(|(first, part)| async move {
            let (idx, keys): (Vec<usize>, Vec<v1::Key>) = part.into_iter().unzip();
            let req = v1::GetRequest {
                table: self.name.clone(),
                keys,
                columns: columns.to_vec(),
                stale,
            };
            let resp = self
                .call_region(Locate::Key(&first), true, |ch| {
                    let req = req.clone();
                    async move { kv(ch).get(request(req, timeout)).await }
                })
                .await?;
            Ok::<_, ClientError>((idx, resp.rows))
        }))
        .await?;
        let mut out = vec![None; keys.len()];
        for (idx, rows) in answers {
            for (i, r) in idx.into_iter().zip(rows.iter()) {
                out[i] = maybe_row(r)?;
            }
        }
        Ok(out)
    }

    /// Writes full rows (values in column order); rows of different regions are written in
    /// parallel and each region's part atomically. Returns the rows written.
    ///
    /// Rows are checked and encoded here, as the regions store them, so the regions only check
    /// the bytes instead of decoding and encoding every value again.
    pub async fn put(&self, rows: Vec<Vec<Value>>) -> Result<u64> {
        let mut encoded = EncodedRows::with_capacity(rows.len(), 64);
        for (i, r) in rows.iter().enumerate() {
            self.check_width(r)?;
            encoded.push_values(&self.schema, r).map_err(|e| {
                ClientError::InvalidArgument(format!("row {i} of '{}': {e}", self.name))
            })?;
        }
        self.put_encoded(encoded).await
    }

    /// Writes rows already checked and encoded for this table (see [`put`](Self::put)); the
    /// requests carry slices of their buffer, so no row is copied on the way.
    pub async fn put_encoded(&self, rows: EncodedRows) -> Result<u64> {
        let items = rows
            .into_rows()
            .map(|(key, value)| {
                let put = Mutation {
                    op: Some(mutation::Op::PutEncoded(v1::EncodedRow {
                        key: key.clone(),
                        value,
                    })),
                };
                (key, put)
            })
            .collect();
        self.mutate(items).await
    }

    /// Deletes rows by full key; returns the keys processed.
    pub async fn delete(&self, keys: &[Vec<Value>]) -> Result<u64> {
        let mut items = Vec::with_capacity(keys.len());
        for k in keys {
            items.push((
                self.encode_key(k)?,
                Mutation {
                    op: Some(mutation::Op::Delete(to_key(k))),
                },
            ));
        }
        self.mutate(items).await
    }

    async fn mutate<K: AsRef<[u8]>>(&self, items: Vec<(K, Mutation)>) -> Result<u64> {
        let parts = self.by_region(items);
        let applied = try_join_all(parts.into_iter().map(|(first, mutations)| async move {
            // Puts and deletes are idempotent: a retry after a lost answer rewrites the same rows.
            Ok::<_, ClientError>(
                self.write_part(first.as_ref(), mutations, false)
                    .await?
                    .applied,
            )
        }))
        .await?;
        Ok(applied.into_iter().sum())
    }

    /// Sends one write to the region holding `first` (its first key), retrying through leader
    /// changes and splits; a part whose rows a split divided is taken apart by the node.
    async fn write_part(
        &self,
        first: &[u8],
        mutations: Vec<Mutation>,
        atomic: bool,
    ) -> Result<v1::WriteResponse> {
        let timeout = self.client.config().request_timeout;
        let req = v1::WriteRequest {
            table: self.name.clone(),
            mutations,
            atomic,
            fence: self.fence.clone(),
        };
        self.call_region(Locate::Key(first), true, |ch| {
            let req = req.clone();
            async move { kv(ch).write(request(req, timeout)).await }
        })
        .await
    }

    /// Merges aggregates into rows, each merge atomically on its region's leader: per row, a
    /// source's offset range is combined once (sums, minimums, maximums, averages; see
    /// [`weir_proto::table::merge`]), a range the row already holds is skipped, and a range that
    /// overlaps the row's mark changes nothing and is returned with the mark. Merges of different
    /// regions go in parallel; those of one row are applied in the order given. A merge that does
    /// not fit its row (a sum overflows, a value of another kind) fails its region's whole part.
    pub async fn merge(&self, merges: Vec<RowMerge>) -> Result<Vec<MergeOverlapOut>> {
        let columns = self.schema.columns.len();
        let mut items = Vec::with_capacity(merges.len());
        for (i, m) in merges.into_iter().enumerate() {
            if m.key.len() != self.schema.primary_key.len() {
                return Err(ClientError::InvalidArgument(format!(
                    "merge {i}: a key of '{}' has {} values, {} given",
                    self.name,
                    self.schema.primary_key.len(),
                    m.key.len()
                )));
            }
            if m.ops.len() != columns {
                return Err(ClientError::InvalidArgument(format!(
                    "merge {i}: '{}' has {columns} columns ({}), {} ops given",
                    self.name,
                    self.schema.column_names().join(", "),
                    m.ops.len()
                )));
            }
            let k = self.encode_key(&m.key)?;
            let merge = v1::RowMerge {
                key: Some(to_key(&m.key)),
                source: m.source,
                from: m.from,
                to: m.to,
                cells: m.ops.iter().map(MergeOp::to_proto).collect(),
            };
            items.push((
                k,
                (
                    i,
                    Mutation {
                        op: Some(mutation::Op::Merge(merge)),
                    },
                ),
            ));
        }
        let parts = self.by_region(items);
        let answers = try_join_all(parts.into_iter().map(|(first, part)| async move {
            let (idx, mutations): (Vec<usize>, Vec<Mutation>) = part.into_iter().unzip();
            // Merges are idempotent by their rows' marks: a retry after a lost answer or a broken
            // connection finds the merges the first attempt applied covered and applies the rest,
            // so it is retried like a put.
            let resp = self.write_part(&first, mutations, false).await?;
            resp.overlaps
                .iter()
                .map(|o| {
                    let index =
                        idx.get(o.index as usize)
                            .copied()
                            .ok_or_else(|| ClientError::Status {
                                code: Code::Internal,
                                message: format!(
                                    "the server reported an overlap of merge {} of {}",
                                    o.index,
                                    idx.len()
                                ),
                            })?;
                    Ok(MergeOverlapOut {
                        index,
                        mark: o.mark,
                    })
                })
                .collect::<Result<Vec<_>>>()
        }))
        .await?;
        let mut overlaps: Vec<MergeOverlapOut> = answers.into_iter().flatten().collect();
        overlaps.sort_by_key(|o| o.index);
        Ok(overlaps)
    }

    /// Applies puts (full rows) and deletes (keys) all together or not at all; their keys must
    /// fall in one region.
    pub async fn write_atomic(
        &self,
        puts: Vec<Vec<Value>>,
        deletes: Vec<Vec<Value>>,
    ) -> Result<()> {
        let mut mutations = Vec::new();
        let mut first = None;
        for r in &puts {
            let k = self.encode_key(&self.key_of(r)?)?;
            first.get_or_insert(k);
            mutations.push(Mutation {
                op: Some(mutation::Op::Put(v1::Row {
                    values: r.iter().map(Value::to_proto).collect(),
                    version: 0,
                })),
            });
        }
        for k in &deletes {
            first.get_or_insert(self.encode_key(k)?);
            mutations.push(Mutation {
                op: Some(mutation::Op::Delete(to_key(k))),
            });
        }
        let Some(first) = first else {
            return Ok(());
        };
        self.write_part(&first, mutations, true).await?;
        Ok(())
    }

    /// Applies `action` to the row at `key` only if `expect` holds. A connection that broke before
    /// the answer is reported as an error, not retried: the write may have been applied.
    pub async fn compare_and_set(
        &self,
        key: &[Value],
        expect: Expectation,
        action: CasAction,
    ) -> Result<CasOutcome> {
        let k = self.encode_key(key)?;
        let then = match action {
            CasAction::Put(row) => {
                if self.encode_key(&self.key_of(&row)?)? != k {
                    return Err(ClientError::InvalidArgument(
                        "the row to put has a different key than the one compared".into(),
                    ));
                }
                mutation::Op::Put(v1::Row {
                    values: row.iter().map(Value::to_proto).collect(),
                    version: 0,
                })
            }
            CasAction::Delete => mutation::Op::Delete(to_key(key)),
        };
        let expect = match expect {
            Expectation::Version(v) => v1::cas_request::Expect::Version(v),
            Expectation::Column(column, value) => v1::cas_request::Expect::Column(ColumnExpect {
                column,
                value: Some(value.to_proto()),
            }),
        };
        let req = v1::CasRequest {
            table: self.name.clone(),
            key: Some(to_key(key)),
            expect: Some(expect),
            then: Some(Mutation { op: Some(then) }),
        };
        let timeout = self.client.config().request_timeout;
        let resp = self
            .call_region(Locate::Key(&k), false, |ch| {
                let req = req.clone();
                async move { kv(ch).compare_and_set(request(req, timeout)).await }
            })
            .await?;
        Ok(CasOutcome {
            succeeded: resp.succeeded,
            current: match &resp.current {
                Some(m) => maybe_row(m)?,
                None => None,
            },
        })
    }

    /// Sends one scan request to the region holding its first key (its end, in reverse).
    async fn scan_call(&self, req: v1::ScanRequest) -> Result<v1::ScanResponse> {
        let timeout = self.client.config().request_timeout;
        let (start, end) = (req.start_key.to_vec(), req.end_key.to_vec());
        let at = if req.reverse {
            Locate::Before(&end)
        } else {
            Locate::Key(&start)
        };
        self.call_region(at, true, |ch| {
            let req = req.clone();
            async move { kv(ch).scan(request(req, timeout)).await }
        })
        .await
    }

    /// Reads one page of the rows with encoded keys in `[start, end)` (empty `end`: to the
    /// table's end), at most `limit` (0: as many as one answer holds); returns the columns
    /// `columns` (none when empty) as an Arrow IPC stream built by the node holding the rows, the
    /// key the range continues at, if it does, and where the page was read.
    pub async fn scan_arrow_page(
        &self,
        (start, end): (&[u8], &[u8]),
        limit: u32,
        columns: &[String],
        filters: Vec<v1::ScanFilter>,
        stale: bool,
    ) -> Result<ArrowPage> {
        let resp = self
            .scan_call(v1::ScanRequest {
                table: self.name.clone(),
                start_key: start.to_vec().into(),
                end_key: end.to_vec().into(),
                limit,
                reverse: false,
                columns: columns.to_vec(),
                stale,
                arrow: true,
                filters,
            })
            .await?;
        Ok(ArrowPage {
            resume: resp.more.then(|| resp.resume_key.to_vec()),
            ipc: resp.arrow,
            node: resp.node,
            region: resp.region,
            from_image: resp.from_image,
        })
    }

    /// Reads rows in key order (or reverse) page by page; `page` is called with each page of rows
    /// and their encoded keys and may return false to stop early.
    pub async fn scan(
        &self,
        opts: &ScanOptions,
        mut page: impl FnMut(Vec<(Vec<u8>, TableRow)>) -> bool,
    ) -> Result<u64> {
        let mut start = match &opts.start {
            Some(k) => self.encode_key(k)?,
            None => Vec::new(),
        };
        let mut end = match &opts.end {
            Some(k) => self.encode_key(k)?,
            None => Vec::new(),
        };
        let mut returned = 0u64;
        loop {
            let remaining = if opts.limit == 0 {
                0
            } else {
                (opts.limit as u64 - returned) as u32
            };
            let req = v1::ScanRequest {
                table: self.name.clone(),
                start_key: start.clone().into(),
                end_key: end.clone().into(),
                limit: remaining,
                reverse: opts.reverse,
                columns: opts.columns.clone(),
                stale: opts.stale,
                arrow: false,
                filters: Vec::new(),
            };
            let resp = self.scan_call(req).await?;
            let rows = resp
                .keys
                .iter()
                .zip(resp.rows.iter())
                .map(|(k, r)| Ok((k.to_vec(), from_row(r)?)))
                .collect::<Result<Vec<_>>>()?;
            returned += rows.len() as u64;
            let go_on = page(rows);
            if !go_on || !resp.more || (opts.limit != 0 && returned >= opts.limit as u64) {
                return Ok(returned);
            }
            if opts.reverse {
                end = resp.resume_key.to_vec();
            } else {
                start = resp.resume_key.to_vec();
            }
        }
    }
}
