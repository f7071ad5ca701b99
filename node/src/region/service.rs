//! The `Kv` gRPC service: table DDL through the metadata leader, reads and writes through the
//! leader of each key's region.
//!
//! Any node answers any request: it splits the keys by region using its catalog, serves the regions
//! it leads, and forwards the rest once. The region leader is the authority on its range: a key
//! outside the range it has applied is refused with `UNAVAILABLE` (the region split, or the route
//! was stale) and the client retries after refreshing its routes.

use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::time::Instant;

use futures::future::try_join_all;
use tonic::{Request, Response, Status};
use tracing::Instrument;
use weir_proto::table::merge::{self, MergeOp, MergeTarget};
use weir_proto::table::{
    key, row, Column, ColumnType, TableSchema, Value, MAX_KEY_BYTES, MAX_ROW_BYTES,
};
use weir_proto::v1::kv_client::KvClient;
use weir_proto::v1::kv_server::Kv;
use weir_proto::v1::{self, mutation, *};
use weir_storage::catalog::{
    Catalog, ExternalTableInfo, GroupInfo, GroupKind, MetaCommand, MetaResponse,
    TableInfo as CatalogTable, DEFAULT_SPLIT_BYTES,
};
use weir_storage::region::{self, NotInRegion, StoredRow};
use weir_storage::types::{Expect, KvCondition, KvOp, WriterFence};
use weir_storage::{Request as Cmd, Response as Resp};

use crate::cluster::NodeContext;
use crate::error::{NodeError, NodeResult};
use crate::leader::{self, forwarded, was_forwarded, Target};
use crate::metrics;
use crate::placement;
use crate::region::scan_cache::{Image, Lookup, PageRequest, ScanCache};
use datafusion::arrow::compute::concat_batches;
use weir_sql::columnar::{self, StoredRows};
use weir_sql::scan_filter;

/// Most rows one scan answer carries.
const MAX_SCAN_ROWS: usize = 10_000;
/// About the most bytes one scan answer carries.
const MAX_SCAN_BYTES: usize = 4 << 20;
/// Most rows of one Arrow scan page (a few of DataFusion's batches).
const MAX_ARROW_SCAN_ROWS: usize = 65_536;
/// About the most stored bytes one Arrow scan page reads (its IPC form is about as large).
const MAX_ARROW_SCAN_BYTES: usize = 16 << 20;
/// How many times more stored rows a filtered Arrow page may read (it sends only what passes).
const FILTERED_SCAN_FACTOR: usize = 4;
/// Rows read between two applications of a scan's filters.
const FILTER_CHUNK_ROWS: usize = 8192;
/// Most regions a table may be created with.
const MAX_SPLIT_POINTS: usize = 1024;
/// Longest merge source name (every merged row keeps one mark per source).
const MAX_MERGE_SOURCE_BYTES: usize = 256;

/// The `Kv` service.
pub struct KvService {
    ctx: NodeContext,
    cache: ScanCache,
}

/// One Arrow scan page as the region's node built it.
struct ArrowPage {
    /// The page's columns as an Arrow IPC stream.
    ipc: Vec<u8>,
    /// Where the scan stopped.
    end: region::ScanEnd,
    /// Whether the rows were cut from the region's image rather than read from its rows.
    from_image: bool,
}

/// A table's schema and name, resolved from the catalog the request is served with.
struct Table<'c> {
    info: &'c CatalogTable,
}

fn invalid(e: impl std::fmt::Display) -> NodeError {
    NodeError::InvalidArgument(e.to_string())
}

fn not_in_region(group: u64, NotInRegion(st): NotInRegion) -> NodeError {
    NodeError::Unavailable(format!(
        "region {group} (epoch {}) no longer holds the key: it split or the route was stale; \
         refresh the table's regions and retry",
        st.epoch
    ))
}

impl Table<'_> {
    fn schema(&self) -> &TableSchema {
        &self.info.schema
    }

    /// Indexes of the columns to return (all when `names` is empty).
    fn projection(&self, names: &[String]) -> NodeResult<Vec<usize>> {
        if names.is_empty() {
            return Ok((0..self.schema().columns.len()).collect());
        }
        self.columns(names)
    }

    /// Indexes of the columns named.
    fn columns(&self, names: &[String]) -> NodeResult<Vec<usize>> {
        names
            .iter()
            .map(|n| self.schema().column_index(n).map_err(invalid))
            .collect()
    }

    /// Encodes a full primary key.
    fn encode_key(&self, k: &v1::Key) -> NodeResult<Vec<u8>> {
        let pk = self.schema().primary_key.len();
        if k.values.len() != pk {
            return Err(NodeError::InvalidArgument(format!(
                "table '{}' has a key of {pk} column(s), {} value(s) given",
                self.info.name,
                k.values.len()
            )));
        }
        let values = k
            .values
            .iter()
            .map(Value::from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        key::encode_key(self.schema(), &values).map_err(invalid)
    }

    /// Checks and encodes a full row.
    fn encode_row(&self, r: &v1::Row) -> NodeResult<(Vec<u8>, Vec<u8>)> {
        let values = r
            .values
            .iter()
            .map(Value::from_proto)
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        row::encode_row(self.schema(), values).map_err(invalid)
    }

    /// Checks a row its writer encoded against the table; its key and value as stored.
    fn check_encoded(&self, r: &v1::EncodedRow) -> NodeResult<(Vec<u8>, Vec<u8>)> {
        row::check_encoded(self.schema(), &r.key, &r.value).map_err(invalid)?;
        Ok((r.key.to_vec(), r.value.to_vec()))
    }

    /// Checks a merge against the table and encodes it for the region's log.
    fn encode_merge(&self, m: &v1::RowMerge) -> NodeResult<KvOp> {
        let schema = self.schema();
        let key = self.encode_key(
            m.key
                .as_ref()
                .ok_or_else(|| invalid("a merge needs the key of its row"))?,
        )?;
        if m.source.is_empty() || m.source.len() > MAX_MERGE_SOURCE_BYTES {
            return Err(invalid(format!(
                "a merge's source must be 1 to {MAX_MERGE_SOURCE_BYTES} bytes, not {}",
                m.source.len()
            )));
        }
        if m.from > m.to {
            return Err(invalid(format!(
                "a merge's offset range [{}, {}) ends before it starts",
                m.from, m.to
            )));
        }
        if m.cells.len() != schema.columns.len() {
            return Err(invalid(format!(
                "table '{}' has {} columns ({}), the merge gives {} cells",
                self.info.name,
                schema.columns.len(),
                schema.column_names().join(", "),
                m.cells.len()
            )));
        }
        let mut ops = Vec::with_capacity(m.cells.len());
        let mut targets = Vec::with_capacity(m.cells.len());
        for (i, (cell, col)) in m.cells.iter().zip(&schema.columns).enumerate() {
            let op = MergeOp::from_proto(cell)
                .map_err(|e| invalid(format!("column '{}': {e}", col.name)))?;
            if schema.primary_key.contains(&i) {
                if op != MergeOp::Keep {
                    return Err(invalid(format!(
                        "column '{}' is a key column: a merge must keep it",
                        col.name
                    )));
                }
                continue;
            }
            ops.push(check_merge_op(op, col)?);
            targets.push(MergeTarget::from(col));
        }
        let ops = merge::encode_ops(&ops, &targets).map_err(invalid)?;
        if ops.len() > MAX_ROW_BYTES {
            return Err(invalid(format!(
                "the merge is {} bytes encoded; at most {MAX_ROW_BYTES} are allowed",
                ops.len()
            )));
        }
        Ok(KvOp::Merge {
            key,
            source: m.source.clone(),
            from: m.from,
            to: m.to,
            ops,
        })
    }

    /// The message of a merge the region refused: which column, and why.
    fn merge_failed(&self, column: Option<u32>, reason: &str) -> String {
        let name = column
            .and_then(|c| self.schema().value_columns().get(c as usize).copied())
            .map(|i| self.schema().columns[i].name.as_str());
        match name {
            Some(n) => format!("column '{n}': {reason}"),
            None => reason.to_string(),
        }
    }

    /// One page of an Arrow scan of region `group`: read from the region's columnar image when
    /// `cache` has one of the region as it is now (or the region has been quiet long enough to
    /// make one), else from the stored rows. Disk and CPU work: run it on a blocking thread.
    fn scan_arrow(
        &self,
        engine: &weir_storage::Engine,
        group: u64,
        req: &ScanRequest,
        projection: &[usize],
        cache: &ScanCache,
    ) -> NodeResult<ArrowPage> {
        let filters = req
            .filters
            .iter()
            .map(|f| scan_filter::ScanFilter::from_proto(f, self.schema()))
            .collect::<Result<Vec<_>, String>>()
            .map_err(invalid)?;
        let limit = match (req.limit as usize, filters.is_empty()) {
            (0, true) => MAX_ARROW_SCAN_ROWS,
            (0, false) => MAX_ARROW_SCAN_ROWS * FILTERED_SCAN_FACTOR,
            (n, _) => n.min(MAX_ARROW_SCAN_ROWS),
        };
        let failed = |e: datafusion::error::DataFusionError| {
            NodeError::Internal(format!("scan of table '{}': {e}", self.info.name))
        };
        // The columns asked for, then those only the filters read.
        let mut read = projection.to_vec();
        for f in &filters {
            if let Some(i) = self
                .schema()
                .columns
                .iter()
                .position(|c| c.name == f.column)
            {
                if !read.contains(&i) {
                    read.push(i);
                }
            }
        }
        // An image takes about what the region's rows take stored.
        let estimate = || {
            region::load_state(engine, group)
                .ok()
                .flatten()
                .map_or(0, |st| st.approx_bytes as usize)
        };
        let image = match cache.lookup(group, region::applied_index(engine, group)?, estimate) {
            Lookup::Hit(image) => Some(image),
            Lookup::Build => match Image::build(engine, group, self.schema()) {
                Ok(image) => {
                    let image = image.map(Arc::new);
                    cache.built(group, image.clone());
                    metrics::scan_cache(cache.used());
                    image
                }
                Err(e) => {
                    // The stored rows still answer; the image is tried again on a later scan.
                    cache.built(group, None);
                    tracing::warn!(region = group, error = %e, "region image not built");
                    None
                }
            },
            Lookup::Miss => None,
        };
        if let Some(image) = image.filter(|i| i.holds(&req.start_key)) {
            let (page, end) = image.page(&PageRequest {
                start: &req.start_key,
                end: &req.end_key,
                limit,
                max_bytes: MAX_ARROW_SCAN_BYTES,
                read: &read,
                answered: projection.len(),
                filters: &filters,
            })?;
            let ipc = columnar::to_ipc(&page).map_err(failed)?;
            return Ok(ArrowPage {
                ipc,
                end,
                from_image: true,
            });
        }
        let columns: Vec<Column> = read
            .iter()
            .map(|i| self.schema().columns[*i].clone())
            .collect();
        let mut rows = StoredRows::new(self.schema(), &read, limit.min(8192)).map_err(failed)?;
        // Filtered rows are kept a chunk at a time, so a page holds only what passes.
        let mut kept = Vec::new();
        let mut pending = 0usize;
        let (end, broken) = region::try_scan_each(
            engine,
            group,
            (&req.start_key, &req.end_key),
            (limit, MAX_ARROW_SCAN_BYTES),
            &mut |key, cells| {
                rows.push(key, cells)?;
                pending += 1;
                if filters.is_empty() || pending < FILTER_CHUNK_ROWS {
                    return Ok(());
                }
                pending = 0;
                let chunk = rows.finish()?;
                kept.push(scan_filter::apply(&chunk, &columns, &filters)?);
                Ok(())
            },
        )
        .map_err(NodeError::from)?;
        if let Some(e) = broken {
            return Err(failed(e));
        }
        let end = end.map_err(|e| not_in_region(group, e))?;
        let page = (|| {
            let last = rows.finish()?;
            if filters.is_empty() {
                return Ok(last);
            }
            kept.push(scan_filter::apply(&last, &columns, &filters)?);
            let all = concat_batches(&last.schema(), &kept)?;
            // Only the columns asked for (the filters' own come last).
            Ok(all.project(&(0..projection.len()).collect::<Vec<_>>())?)
        })()
        .map_err(failed)?;
        let ipc = columnar::to_ipc(&page).map_err(failed)?;
        Ok(ArrowPage {
            ipc,
            end,
            from_image: false,
        })
    }

    /// The stored row as the client asked for it.
    fn to_row(&self, stored: &StoredRow, projection: &[usize]) -> NodeResult<v1::Row> {
        let full = row::decode_row(self.schema(), &stored.key, &stored.value)
            .map_err(|e| NodeError::Internal(format!("stored row does not decode: {e}")))?;
        Ok(v1::Row {
            values: projection.iter().map(|i| full[*i].to_proto()).collect(),
            version: stored.version,
        })
    }
}

/// Checks what a merge does to one value column against the column: its values must fit the
/// column's type (NULL always fits: it changes nothing), sums need a numeric column and averages a
/// DOUBLE, REAL or DECIMAL one.
fn check_merge_op(op: MergeOp, col: &Column) -> NodeResult<MergeOp> {
    let named = |reason: String| invalid(format!("column '{}': {reason}", col.name));
    let fit = |v: Value, col: &Column| -> NodeResult<Value> {
        if v.is_null() {
            Ok(v)
        } else {
            v.check(col).map_err(invalid)
        }
    };
    Ok(match op {
        MergeOp::Keep => MergeOp::Keep,
        MergeOp::Sum(v) => {
            if !col.ty.is_numeric() {
                return Err(named(format!("a {} column cannot be summed", col.ty)));
            }
            MergeOp::Sum(fit(v, col)?)
        }
        MergeOp::Min(v) => MergeOp::Min(fit(v, col)?),
        MergeOp::Max(v) => MergeOp::Max(fit(v, col)?),
        // Unlike a delta, a NULL here is written: it must be allowed.
        MergeOp::Set(v) => MergeOp::Set(v.check(col).map_err(invalid)?),
        MergeOp::Avg { sum, count } => {
            // The sum of many values outgrows the column: it is checked as the widest float, or
            // the widest decimal of the column's scale.
            let sum_ty = match col.ty {
                ColumnType::Float32 | ColumnType::Float64 => ColumnType::Float64,
                ColumnType::Decimal { scale, .. } => ColumnType::Decimal {
                    precision: weir_proto::table::types::MAX_DECIMAL_PRECISION,
                    scale,
                },
                other => {
                    return Err(named(format!(
                        "an average needs a DOUBLE, REAL or DECIMAL column, not {other}"
                    )))
                }
            };
            let sum_col = Column {
                name: col.name.clone(),
                ty: sum_ty,
                nullable: true,
            };
            let sum = fit(sum, &sum_col)?;
            if count > 0 && sum.is_null() {
                return Err(named(format!(
                    "an average of {count} values has a NULL sum"
                )));
            }
            let zero = matches!(sum, Value::Null | Value::Decimal(0))
                || matches!(sum, Value::Float(f) if f == 0.0);
            if count == 0 && !zero {
                return Err(named("an average of no values must have a NULL sum".into()));
            }
            MergeOp::Avg { sum, count }
        }
    })
}

/// The region of `table` holding `key`, or the region a reverse scan ending at `key` starts in.
fn region_of<'a>(
    catalog: &'a Catalog,
    table: &CatalogTable,
    key: &[u8],
    reverse: bool,
) -> NodeResult<&'a GroupInfo> {
    let found = if reverse {
        catalog.region_before(table, key)
    } else {
        catalog.region_at(table, key)
    };
    found.ok_or_else(|| NodeError::Internal(format!("table '{}' has no region", table.name)))
}

impl KvService {
    /// The service over `ctx`, keeping regions' columnar images in `cache`.
    pub fn new(ctx: NodeContext, cache: ScanCache) -> KvService {
        KvService { ctx, cache }
    }

    fn catalog(&self) -> NodeResult<Arc<Catalog>> {
        self.ctx.registry.catalog()
    }

    fn table<'c>(&self, catalog: &'c Catalog, name: &str) -> NodeResult<Table<'c>> {
        catalog
            .tables
            .get(name)
            .map(|info| Table { info })
            .ok_or_else(|| NodeError::NotFound(catalog.no_table(name)))
    }

    fn client(&self, addr: &str) -> NodeResult<KvClient<tonic::transport::Channel>> {
        Ok(KvClient::new(self.ctx.peers.channel(addr)?)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20))
    }

    fn leader_client(&self) -> NodeResult<KvClient<tonic::transport::Channel>> {
        self.client(&self.ctx.metadata_leader_addr()?)
    }

    /// The table as clients see it: columns, key, and regions with leaders and sizes (as the
    /// metadata leader last heard from the nodes).
    fn table_info(&self, catalog: &Catalog, name: &str) -> NodeResult<v1::TableInfo> {
        let t = self.table(catalog, name)?.info;
        let led = crate::cluster::led_groups(&self.ctx);
        let regions = catalog
            .regions_of(t)
            .map(|g| {
                let (start, end, epoch) = match &g.kind {
                    GroupKind::Region {
                        start, end, epoch, ..
                    } => (start.clone(), end.clone(), *epoch),
                    _ => (Vec::new(), Vec::new(), 0),
                };
                let (leader, bytes) = led
                    .get(&g.id)
                    .map(|(n, r)| (*n, r.region_bytes))
                    .unwrap_or((0, 0));
                RegionInfo {
                    id: g.id,
                    start_key: start.into(),
                    end_key: end.into(),
                    epoch,
                    replicas: g.replicas.clone(),
                    leader,
                    leader_addr: catalog
                        .nodes
                        .get(&leader)
                        .map(|n| n.addr.clone())
                        .unwrap_or_default(),
                    approx_bytes: bytes,
                }
            })
            .collect();
        Ok(v1::TableInfo {
            name: t.name.clone(),
            id: t.id,
            columns: t.schema.column_defs(),
            primary_key: t.schema.key_columns().map(|c| c.name.clone()).collect(),
            replicas: t.replicas,
            split_bytes: t.split_bytes,
            regions,
        })
    }

    /// Reads the keys of `req` at `idx` (encoded in `keys`) from one region.
    #[allow(clippy::too_many_arguments)]
    async fn get_region(
        &self,
        catalog: &Catalog,
        table: &Table<'_>,
        group: &GroupInfo,
        req: &GetRequest,
        idx: &[usize],
        keys: Vec<Vec<u8>>,
        was_forwarded: bool,
    ) -> NodeResult<Vec<MaybeRow>> {
        let projection = table.projection(&req.columns)?;
        match self.ctx.target(catalog, group, was_forwarded, req.stale)? {
            Target::Local(h) => {
                let confirmation = match req.stale {
                    false => Some(leader::linearizable(&h, catalog).await?),
                    true => None,
                };
                let rows = region::get_rows(&self.ctx.engine, group.id, &keys)?
                    .map_err(|e| not_in_region(group.id, e))?;
                if let Some(c) = confirmation {
                    c.confirm(&h).await?;
                }
                rows.iter()
                    .map(|r| {
                        Ok(match r {
                            Some(r) => MaybeRow {
                                found: true,
                                row: Some(table.to_row(r, &projection)?),
                            },
                            None => MaybeRow {
                                found: false,
                                row: None,
                            },
                        })
                    })
                    .collect()
            }
            Target::Forward(addr) => {
                let sub = GetRequest {
                    table: req.table.clone(),
                    keys: idx.iter().map(|i| req.keys[*i].clone()).collect(),
                    columns: req.columns.clone(),
                    stale: req.stale,
                };
                Ok(self
                    .client(&addr)?
                    .get(forwarded(sub))
                    .await?
                    .into_inner()
                    .rows)
            }
        }
    }

    /// Applies `ops` (the mutations of `req` at `idx`) to one region atomically, or forwards
    /// those mutations. Returns the mutations applied and the merges that overlapped their row's
    /// mark: (position in `req.mutations`, the mark).
    #[allow(clippy::too_many_arguments)]
    async fn write_region(
        &self,
        catalog: &Catalog,
        table: &Table<'_>,
        group: &GroupInfo,
        req: &WriteRequest,
        idx: &[usize],
        ops: Vec<KvOp>,
        was_forwarded: bool,
    ) -> NodeResult<(u64, Vec<(usize, u64)>)> {
        let n = ops.len() as u64;
        let position = |i: u32| {
            idx.get(i as usize).copied().ok_or_else(|| {
                NodeError::Internal(format!(
                    "region {} answered for mutation {i} of {}",
                    group.id,
                    idx.len()
                ))
            })
        };
        match self.ctx.target(catalog, group, was_forwarded, false)? {
            Target::Local(h) => {
                let resp = leader::write(
                    &h,
                    catalog,
                    Cmd::KvWrite {
                        ops: ops.into(),
                        condition: None,
                        fence: writer_fence(req.fence.as_ref())?,
                    },
                )
                .await?;
                match resp {
                    Resp::KvWritten { overlaps, .. } => {
                        let overlaps = overlaps
                            .into_iter()
                            .map(|(i, mark)| Ok((position(i)?, mark)))
                            .collect::<NodeResult<Vec<_>>>()?;
                        Ok((n - overlaps.len() as u64, overlaps))
                    }
                    Resp::MergeFailed {
                        index,
                        column,
                        reason,
                    } => Err(NodeError::InvalidArgument(format!(
                        "mutation {}: {}",
                        position(index)?,
                        table.merge_failed(column, &reason)
                    ))),
                    Resp::NotInRegion(st) => Err(not_in_region(group.id, NotInRegion(st))),
                    Resp::StaleWriter { current } => {
                        Err(stale_writer(group.id, req.fence.as_ref(), current))
                    }
                    other => Err(NodeError::Internal(format!(
                        "region {} answered {other:?}",
                        group.id
                    ))),
                }
            }
            Target::Forward(addr) => {
                // The part keeps the request's own atomicity: the receiving node may know of a
                // split this node has not applied yet and must then divide a non-atomic part
                // again rather than refuse it.
                let sub = WriteRequest {
                    table: req.table.clone(),
                    mutations: idx.iter().map(|i| req.mutations[*i].clone()).collect(),
                    atomic: req.atomic,
                    fence: req.fence.clone(),
                };
                let resp = self
                    .client(&addr)?
                    .write(forwarded(sub))
                    .await?
                    .into_inner();
                let overlaps = resp
                    .overlaps
                    .iter()
                    .map(|o| Ok((position(o.index)?, o.mark)))
                    .collect::<NodeResult<Vec<_>>>()?;
                Ok((resp.applied, overlaps))
            }
        }
    }
}

/// A write's fencing token as the region's command carries it.
fn writer_fence(f: Option<&v1::WriterFence>) -> NodeResult<Option<WriterFence>> {
    match f {
        None => Ok(None),
        Some(f) if f.holder.is_empty() => Err(NodeError::InvalidArgument(
            "a fencing token needs its holder".into(),
        )),
        Some(f) => Ok(Some(WriterFence {
            holder: f.holder.clone(),
            token: f.token,
        })),
    }
}

/// The refusal of a write or fence whose token a newer one replaced in `region`.
fn stale_writer(region: u64, f: Option<&v1::WriterFence>, current: u64) -> NodeError {
    let (holder, token) = f.map_or(("", 0), |f| (f.holder.as_str(), f.token));
    NodeError::WriterFenced(format!(
        "{holder} wrote with token {token}, but region {region} has seen token {current}: \
         a newer instance replaced it"
    ))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn create_table(
        &self,
        request: Request<CreateTableRequest>,
    ) -> Result<Response<v1::TableInfo>, Status> {
        let req = request.get_ref();
        crate::names::validate("table", &req.name)?;
        let schema =
            TableSchema::from_column_defs(&req.columns, &req.primary_key).map_err(invalid)?;
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { KvClient::new(ch).create_table(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let req = request.into_inner();
        let catalog = self.catalog()?;
        if catalog.tables.contains_key(&req.name) {
            return Err(
                NodeError::AlreadyExists(format!("table '{}' already exists", req.name)).into(),
            );
        }
        let replicas = match req.replicas {
            0 => crate::placement::default_replicas(&catalog, &self.ctx.liveness),
            r => r,
        };
        let mut split_keys = Vec::with_capacity(req.split_points.len());
        for (i, k) in req.split_points.iter().enumerate() {
            let values = k
                .values
                .iter()
                .map(Value::from_proto)
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let enc = key::encode_key(&schema, &values)
                .map_err(|e| invalid(format!("split point {i}: {e}")))?;
            if enc.is_empty() {
                return Err(invalid(format!("split point {i} is empty")).into());
            }
            split_keys.push(enc);
        }
        split_keys.sort();
        split_keys.dedup();
        if split_keys.len() >= MAX_SPLIT_POINTS {
            return Err(invalid(format!(
                "at most {MAX_SPLIT_POINTS} split points are allowed at creation"
            ))
            .into());
        }
        let placement = placement::place_new(
            &catalog,
            &self.ctx.liveness,
            split_keys.len() as u32 + 1,
            replicas,
        )?;
        let resp = self
            .ctx
            .propose_meta(MetaCommand::CreateTable {
                name: req.name.clone(),
                schema,
                replicas,
                split_bytes: if req.split_bytes == 0 {
                    DEFAULT_SPLIT_BYTES
                } else {
                    req.split_bytes
                },
                split_keys,
                placement,
            })
            .await?;
        if let MetaResponse::Rejected(kind, m) = resp {
            return Err(NodeError::refused(kind, m).into());
        }
        let info = leader::describe_once_led(
            || self.table_info(&*self.catalog()?, &req.name),
            |info| info.regions.iter().all(|r| r.leader != 0),
        )
        .await?;
        Ok(Response::new(info))
    }

    async fn drop_table(
        &self,
        request: Request<DropTableRequest>,
    ) -> Result<Response<DropTableResponse>, Status> {
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { KvClient::new(ch).drop_table(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let name = request.into_inner().name;
        match self
            .ctx
            .propose_meta(MetaCommand::DropTable { name })
            .await?
        {
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
            _ => Ok(Response::new(DropTableResponse {})),
        }
    }

    async fn create_external_table(
        &self,
        request: Request<CreateExternalTableRequest>,
    ) -> Result<Response<CreateExternalTableResponse>, Status> {
        let req = request.get_ref();
        crate::names::validate("table", &req.name)?;
        if req.definition.trim().is_empty() {
            return Err(invalid("an external table needs its defining statement").into());
        }
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { KvClient::new(ch).create_external_table(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let req = request.into_inner();
        let table = ExternalTableInfo {
            name: req.name,
            definition: req.definition,
        };
        match self
            .ctx
            .propose_meta(MetaCommand::CreateExternalTable { table })
            .await?
        {
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
            _ => Ok(Response::new(CreateExternalTableResponse {})),
        }
    }

    async fn drop_external_table(
        &self,
        request: Request<DropTableRequest>,
    ) -> Result<Response<DropTableResponse>, Status> {
        let request = match leader::on_metadata_leader(
            &self.ctx.registry,
            &self.ctx.peers,
            request,
            |ch, r| async move { KvClient::new(ch).drop_external_table(r).await },
        )
        .await?
        {
            Ok(answer) => return Ok(answer),
            Err(here) => here,
        };
        let name = request.into_inner().name;
        match self
            .ctx
            .propose_meta(MetaCommand::DropExternalTable { name })
            .await?
        {
            MetaResponse::Rejected(kind, m) => Err(NodeError::refused(kind, m).into()),
            _ => Ok(Response::new(DropTableResponse {})),
        }
    }

    async fn list_tables(
        &self,
        request: Request<ListTablesRequest>,
    ) -> Result<Response<ListTablesResponse>, Status> {
        if !self.ctx.is_metadata_leader() && !was_forwarded(&request) {
            return self
                .leader_client()?
                .list_tables(forwarded(request.into_inner()))
                .await
                .map_err(crate::error::relay);
        }
        let catalog = self.catalog()?;
        let tables = catalog
            .tables
            .keys()
            .map(|n| self.table_info(&catalog, n))
            .collect::<NodeResult<Vec<_>>>()?;
        Ok(Response::new(ListTablesResponse { tables }))
    }

    async fn describe_table(
        &self,
        request: Request<DescribeTableRequest>,
    ) -> Result<Response<v1::TableInfo>, Status> {
        if !self.ctx.is_metadata_leader() && !was_forwarded(&request) {
            return self
                .leader_client()?
                .describe_table(forwarded(request.into_inner()))
                .await
                .map_err(crate::error::relay);
        }
        let catalog = self.catalog()?;
        Ok(Response::new(
            self.table_info(&catalog, &request.get_ref().name)?,
        ))
    }

    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let started = Instant::now();
        let fwd = was_forwarded(&request);
        let req = request.into_inner();
        let span = tracing::debug_span!("kv_get", table = %req.table, keys = req.keys.len());
        async move {
            let catalog = self.catalog()?;
            let table = self.table(&catalog, &req.table)?;
            // Unknown columns fail here, before anything is sent.
            table.projection(&req.columns)?;
            // Keys grouped by region, remembering each key's place in the answer.
            let mut parts: BTreeMap<u64, (&GroupInfo, Vec<usize>, Vec<Vec<u8>>)> = BTreeMap::new();
            for (i, k) in req.keys.iter().enumerate() {
                let enc = table.encode_key(k)?;
                let g = region_of(&catalog, table.info, &enc, false)?;
                let e = parts
                    .entry(g.id)
                    .or_insert_with(|| (g, Vec::new(), Vec::new()));
                e.1.push(i);
                e.2.push(enc);
            }
            let answers = try_join_all(parts.into_values().map(|(g, idx, keys)| {
                let (catalog, table, req) = (&catalog, &table, &req);
                async move {
                    let span = tracing::debug_span!("region_get", region = g.id);
                    let rows = self
                        .get_region(catalog, table, g, req, &idx, keys, fwd)
                        .instrument(span)
                        .await?;
                    Ok::<_, NodeError>((idx, rows))
                }
            }))
            .await?;
            let mut rows = vec![MaybeRow::default(); req.keys.len()];
            for (idx, got) in answers {
                if idx.len() != got.len() {
                    return Err(NodeError::Internal(
                        "a region answered the wrong number of rows".into(),
                    ));
                }
                for (i, r) in idx.into_iter().zip(got) {
                    rows[i] = r;
                }
            }
            if !fwd {
                let found = rows.iter().filter(|r| r.found).count() as u64;
                metrics::kv_request("get", found, started.elapsed());
            }
            Ok(Response::new(GetResponse { rows }))
        }
        .instrument(span)
        .await
        .map_err(Status::from)
    }

    async fn write(
        &self,
        request: Request<WriteRequest>,
    ) -> Result<Response<WriteResponse>, Status> {
        let started = Instant::now();
        let fwd = was_forwarded(&request);
        let req = request.into_inner();
        let span =
            tracing::debug_span!("kv_write", table = %req.table, mutations = req.mutations.len());
        async move {
            let catalog = self.catalog()?;
            let table = self.table(&catalog, &req.table)?;
            let mut parts: BTreeMap<u64, (&GroupInfo, Vec<usize>, Vec<KvOp>)> = BTreeMap::new();
            for (i, m) in req.mutations.iter().enumerate() {
                let at = |e: NodeError| NodeError::InvalidArgument(format!("mutation {i}: {e}"));
                let op = match &m.op {
                    Some(mutation::Op::Put(r)) => {
                        let (key, value) = table.encode_row(r).map_err(at)?;
                        KvOp::Put { key, value }
                    }
                    Some(mutation::Op::PutEncoded(r)) => {
                        let (key, value) = table.check_encoded(r).map_err(at)?;
                        KvOp::Put { key, value }
                    }
                    Some(mutation::Op::Delete(k)) => KvOp::Delete {
                        key: table.encode_key(k).map_err(at)?,
                    },
                    Some(mutation::Op::Merge(m)) => table.encode_merge(m).map_err(at)?,
                    None => {
                        return Err(NodeError::InvalidArgument(format!(
                            "mutation {i} is neither a put, a delete nor a merge"
                        )))
                    }
                };
                let g = region_of(&catalog, table.info, op.key(), false)?;
                let e = parts.entry(g.id).or_insert_with(|| (g, Vec::new(), Vec::new()));
                e.1.push(i);
                e.2.push(op);
            }
            if req.atomic && parts.len() > 1 {
                return Err(NodeError::InvalidArgument(format!(
                    "an atomic write must stay in one region; these keys span {} regions of table '{}' \
                     (regions {:?})",
                    parts.len(),
                    req.table,
                    parts.keys().collect::<Vec<_>>()
                )));
            }
            let answers = try_join_all(parts.into_values().map(|(g, idx, ops)| {
                let (catalog, table, req) = (&catalog, &table, &req);
                let span = tracing::debug_span!("region_write", region = g.id, ops = ops.len());
                async move {
                    self.write_region(catalog, table, g, req, &idx, ops, fwd)
                        .instrument(span)
                        .await
                }
            }))
            .await?;
            let mut applied = 0u64;
            let mut overlaps = Vec::new();
            for (n, o) in answers {
                applied += n;
                overlaps.extend(o);
            }
            overlaps.sort_unstable();
            let overlaps = overlaps
                .into_iter()
                .map(|(i, mark)| MergeOverlap {
                    // The request's own mutations are numbered: they are fewer than 2^32.
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    mark,
                })
                .collect();
            if !fwd {
                metrics::kv_request("write", applied, started.elapsed());
            }
            Ok(Response::new(WriteResponse { applied, overlaps }))
        }
        .instrument(span)
        .await
        .map_err(Status::from)
    }

    async fn fence(
        &self,
        request: Request<FenceRequest>,
    ) -> Result<Response<FenceResponse>, Status> {
        let fwd = was_forwarded(&request);
        let req = request.into_inner();
        let catalog = self.catalog()?;
        let table = self.table(&catalog, &req.table)?;
        let fence = writer_fence(req.fence.as_ref())?
            .ok_or_else(|| invalid("a fence needs a holder and a token"))?;
        let g = region_of(&catalog, table.info, &req.key, false)?;
        let span = tracing::debug_span!("kv_fence", table = %req.table, region = g.id, holder = %fence.holder, token = fence.token);
        async {
            let h = match self.ctx.target(&catalog, g, fwd, false)? {
                Target::Local(h) => h,
                Target::Forward(addr) => {
                    return self
                        .client(&addr)?
                        .fence(forwarded(req))
                        .await
                        .map_err(crate::error::relay)
                }
            };
            let resp = leader::write(
                &h,
                &catalog,
                Cmd::Fence {
                    fence,
                    key: req.key.to_vec(),
                },
            )
            .await?;
            match resp {
                Resp::Fenced { end } => Ok(Response::new(FenceResponse { end: end.into() })),
                Resp::NotInRegion(st) => Err(not_in_region(g.id, NotInRegion(st)).into()),
                Resp::StaleWriter { current } => {
                    Err(stale_writer(g.id, req.fence.as_ref(), current).into())
                }
                other => {
                    Err(NodeError::Internal(format!("region {} answered {other:?}", g.id)).into())
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn compare_and_set(
        &self,
        request: Request<CasRequest>,
    ) -> Result<Response<CasResponse>, Status> {
        let started = Instant::now();
        let fwd = was_forwarded(&request);
        let req = request.into_inner();
        let catalog = self.catalog()?;
        let table = self.table(&catalog, &req.table)?;
        let key = table.encode_key(
            req.key
                .as_ref()
                .ok_or_else(|| invalid("compare-and-set needs a key"))?,
        )?;
        let expect = match &req.expect {
            Some(cas_request::Expect::Version(v)) => Expect::Version(*v),
            Some(cas_request::Expect::Column(c)) => {
                let schema = table.schema();
                let col = schema.column_index(&c.column).map_err(invalid)?;
                let index = schema
                    .value_columns()
                    .iter()
                    .position(|i| *i == col)
                    .ok_or_else(|| {
                        invalid(format!(
                            "'{}' is a key column; expect a row version (0 = absent) instead",
                            c.column
                        ))
                    })?;
                let v = Value::from_proto(&c.value.clone().unwrap_or_default()).map_err(invalid)?;
                let v = v.check(&schema.columns[col]).map_err(invalid)?;
                let mut cell = Vec::new();
                row::encode_cell(&v, &mut cell);
                Expect::Cell {
                    index: index as u32,
                    cell,
                }
            }
            None => {
                return Err(
                    invalid("compare-and-set needs an expected version or column value").into(),
                )
            }
        };
        let then = req.then.as_ref().and_then(|m| m.op.as_ref());
        let put = match then {
            Some(mutation::Op::Put(r)) => Some(table.encode_row(r)?),
            Some(mutation::Op::PutEncoded(r)) => Some(table.check_encoded(r)?),
            _ => None,
        };
        let op = match (then, put) {
            (_, Some((k, value))) => {
                if k != key {
                    return Err(invalid(
                        "the row to put has a different key than the one compared",
                    )
                    .into());
                }
                KvOp::Put { key: k, value }
            }
            (Some(mutation::Op::Delete(k)), None) => {
                if table.encode_key(k)? != key {
                    return Err(invalid("the key to delete differs from the one compared").into());
                }
                KvOp::Delete { key: key.clone() }
            }
            (Some(mutation::Op::Merge(_)), None) => {
                return Err(
                    invalid("compare-and-set applies a put or a delete, not a merge").into(),
                )
            }
            _ => return Err(invalid("compare-and-set needs a put or delete to apply").into()),
        };
        let g = region_of(&catalog, table.info, &key, false)?;
        tracing::debug!(table = %req.table, region = g.id, "compare-and-set");
        let h = match self.ctx.target(&catalog, g, fwd, false)? {
            Target::Local(h) => h,
            Target::Forward(addr) => {
                return self
                    .client(&addr)?
                    .compare_and_set(forwarded(req))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let all: Vec<usize> = (0..table.schema().columns.len()).collect();
        let written = match &op {
            KvOp::Put { key, value } => Some((key.clone(), value.clone())),
            KvOp::Delete { .. } | KvOp::Merge { .. } => None,
        };
        let resp = leader::write(
            &h,
            &catalog,
            Cmd::KvWrite {
                ops: Arc::from([op]),
                condition: Some(KvCondition {
                    key: key.clone(),
                    expect,
                }),
                fence: None,
            },
        )
        .await?;
        let as_row = |found: Option<(u64, Vec<u8>)>| -> NodeResult<MaybeRow> {
            Ok(match found {
                Some((version, value)) => MaybeRow {
                    found: true,
                    row: Some(table.to_row(
                        &StoredRow {
                            key: key.clone(),
                            version,
                            value,
                        },
                        &all,
                    )?),
                },
                None => MaybeRow::default(),
            })
        };
        let (succeeded, current) = match resp {
            Resp::KvWritten { version, .. } => (true, as_row(written.map(|(_, v)| (version, v)))?),
            Resp::CasFailed { current } => (false, as_row(current)?),
            Resp::NotInRegion(st) => return Err(not_in_region(g.id, NotInRegion(st)).into()),
            other => {
                return Err(
                    NodeError::Internal(format!("region {} answered {other:?}", g.id)).into(),
                )
            }
        };
        metrics::kv_request("cas", u64::from(succeeded), started.elapsed());
        Ok(Response::new(CasResponse {
            succeeded,
            current: Some(current),
        }))
    }

    async fn scan(&self, request: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let started = Instant::now();
        let fwd = was_forwarded(&request);
        let req = request.into_inner();
        if req.start_key.len() > MAX_KEY_BYTES + 1 || req.end_key.len() > MAX_KEY_BYTES + 1 {
            return Err(invalid("scan bounds are longer than any key").into());
        }
        let catalog = self.catalog()?;
        let table = self.table(&catalog, &req.table)?;
        let projection = match req.arrow {
            true if req.reverse => {
                return Err(invalid("Arrow pages are for forward scans only").into())
            }
            // Exactly the columns asked for: none is a count of rows.
            true => table.columns(&req.columns)?,
            false => table.projection(&req.columns)?,
        };
        let anchor = if req.reverse {
            &req.end_key
        } else {
            &req.start_key
        };
        let g = region_of(&catalog, table.info, anchor, req.reverse)?;
        tracing::debug!(table = %req.table, region = g.id, reverse = req.reverse, "scan");
        let h = match self.ctx.target(&catalog, g, fwd, req.stale)? {
            Target::Local(h) => h,
            Target::Forward(addr) => {
                return self
                    .client(&addr)?
                    .scan(forwarded(req))
                    .await
                    .map_err(crate::error::relay)
            }
        };
        let confirmation = match req.stale {
            false => Some(leader::linearizable(&h, &catalog).await?),
            true => None,
        };
        if req.arrow {
            let (info, engine, cache) = (
                table.info.clone(),
                self.ctx.engine.clone(),
                self.cache.clone(),
            );
            let group = g.id;
            let request = req.clone();
            let page = tokio::task::spawn_blocking(move || {
                Table { info: &info }.scan_arrow(&engine, group, &request, &projection, &cache)
            })
            .await
            .map_err(|e| NodeError::Internal(format!("scan task failed: {e}")))??;
            if let Some(c) = confirmation {
                c.confirm(&h).await?;
            }
            metrics::kv_request("scan", page.end.rows as u64, started.elapsed());
            return Ok(Response::new(ScanResponse {
                rows: Vec::new(),
                keys: Vec::new(),
                more: page.end.more,
                resume_key: page.end.resume.into(),
                arrow: page.ipc.into(),
                node: self.ctx.node_id,
                region: g.id,
                from_image: page.from_image,
            }));
        }
        let limit = match req.limit as usize {
            0 => MAX_SCAN_ROWS,
            n => n.min(MAX_SCAN_ROWS),
        };
        let page = region::scan_rows(
            &self.ctx.engine,
            g.id,
            &req.start_key,
            &req.end_key,
            limit,
            MAX_SCAN_BYTES,
            req.reverse,
        )
        .map_err(NodeError::from)?
        .map_err(|e| not_in_region(g.id, e))?;
        if let Some(c) = confirmation {
            c.confirm(&h).await?;
        }
        let rows = page
            .rows
            .iter()
            .map(|r| table.to_row(r, &projection))
            .collect::<NodeResult<Vec<_>>>()?;
        metrics::kv_request("scan", rows.len() as u64, started.elapsed());
        Ok(Response::new(ScanResponse {
            rows,
            keys: page.rows.into_iter().map(|r| r.key.into()).collect(),
            more: page.more,
            resume_key: page.resume.into(),
            arrow: Default::default(),
            node: self.ctx.node_id,
            region: g.id,
            from_image: false,
        }))
    }
}
