//! A topic as a DataFusion table: its declared columns decoded from each record (JSON, CSV or
//! text), plus the metadata columns `_partition`, `_offset`, `_timestamp` and `_key`. A query reads
//! each partition from its earliest offset up to the high watermark it had when the query was
//! planned; filters on `_partition` and `_offset` bound what is fetched. A record that does not
//! decode is skipped and counted in the statement's [`QueryWarnings`], never turned into a row.
//! `INSERT INTO topic` encodes each row in the topic's format and appends it, to the partition
//! `_partition` names or the one `_key` hashes to, with `_timestamp` as its time if given.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::ScalarValue;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{BinaryExpr, Expr, Operator, TableProviderFilterPushDown};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::{stream, StreamExt};
use weir_proto::format::TopicFormat;
use weir_proto::table::{Column, ColumnType, TableSchema, Value};

use crate::cluster::{Cluster, ClusterError, NewRecord, TopicMeta, TopicRecord};
use crate::records::RecordDecoder;
use crate::types::{arrow_schema, batch_to_rows};
use crate::warnings::QueryWarnings;

/// Bytes asked for per fetch.
const FETCH_BYTES: u32 = 1 << 20;
/// Rows per record batch a partition's scan produces.
const BATCH_ROWS: usize = 8192;

/// The metadata columns every topic table ends with.
pub const PARTITION_COLUMN: &str = "_partition";
/// The record's offset in its partition.
pub const OFFSET_COLUMN: &str = "_offset";
/// When the record was produced.
pub const TIMESTAMP_COLUMN: &str = "_timestamp";
/// The record's key as text.
pub const KEY_COLUMN: &str = "_key";

/// The metadata columns: partition, offset, timestamp and key, in that order.
pub fn metadata_columns() -> Vec<Column> {
    let col = |name: &str, ty| Column {
        name: name.into(),
        ty,
        nullable: true,
    };
    vec![
        col(PARTITION_COLUMN, ColumnType::Int32),
        col(OFFSET_COLUMN, ColumnType::Int64),
        col(TIMESTAMP_COLUMN, ColumnType::Timestamp),
        col(KEY_COLUMN, ColumnType::Utf8),
    ]
}

/// The columns a topic reads as: its declared ones (or the raw `value`), then the metadata columns.
pub fn topic_columns(meta: &TopicMeta) -> Vec<Column> {
    let mut columns = match &meta.format {
        Some(f) => f.columns.clone(),
        None => TopicFormat::raw_columns(),
    };
    columns.extend(metadata_columns());
    columns
}

fn cluster_error(e: ClusterError) -> DataFusionError {
    DataFusionError::External(Box::new(e))
}

/// A topic of the log, read as rows.
#[derive(Debug)]
pub struct TopicTable {
    cluster: Arc<dyn Cluster>,
    meta: Arc<TopicMeta>,
    /// The declared columns (or the raw `value`), then the metadata columns.
    columns: Vec<Column>,
    schema: SchemaRef,
}

impl TopicTable {
    /// The topic described by `meta`, read through `cluster`.
    pub fn new(cluster: Arc<dyn Cluster>, meta: TopicMeta) -> TopicTable {
        let columns = topic_columns(&meta);
        let schema = arrow_schema(&TableSchema {
            columns: columns.clone(),
            primary_key: Vec::new(),
        });
        TopicTable {
            cluster,
            meta: Arc::new(meta),
            columns,
            schema,
        }
    }
}

#[async_trait]
impl TableProvider for TopicTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let bounds = Bounds::from_filters(filters);
        let mut parts = Vec::new();
        for p in 0..self.meta.partitions {
            if bounds.partitions.as_ref().is_some_and(|s| !s.contains(&p)) {
                continue;
            }
            // The high watermark now bounds the scan: a query reads what was there when it
            // started, however much is produced meanwhile.
            let (earliest, high) = self
                .cluster
                .offsets(&self.meta.name, p)
                .await
                .map_err(cluster_error)?;
            let start = earliest.max(bounds.from);
            let end = high.min(bounds.to);
            if start < end {
                parts.push(PartitionPart {
                    partition: p,
                    start,
                    end,
                });
            }
        }
        let indexes: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.columns.len()).collect(),
        };
        let schema = Arc::new(self.schema.project(&indexes)?);
        Ok(Arc::new(TopicScanExec::new(
            self.cluster.clone(),
            self.meta.clone(),
            self.columns.clone(),
            indexes,
            schema,
            parts,
            QueryWarnings::of(state.config()),
        )))
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if op == InsertOp::Overwrite {
            return Err(DataFusionError::NotImplemented(format!(
                "INSERT OVERWRITE into topic '{}': a topic is only appended to",
                self.meta.name
            )));
        }
        let sink = TopicSink {
            cluster: self.cluster.clone(),
            meta: self.meta.clone(),
            columns: self.columns.clone(),
            schema: self.schema.clone(),
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters on the partition and offset bound what is fetched; DataFusion still applies
        // every filter to the rows.
        Ok(filters
            .iter()
            .map(|f| {
                if Bounds::understands(f) {
                    TableProviderFilterPushDown::Inexact
                } else {
                    TableProviderFilterPushDown::Unsupported
                }
            })
            .collect())
    }
}

/// Rows per produce call of an insert.
const PRODUCE_ROWS: usize = 2_000;

/// Appends an insert's rows to a topic, encoded in its format, batch by batch so a large insert
/// never sits in memory; each batch is checked and encoded whole before any of it is sent.
#[derive(Debug)]
struct TopicSink {
    cluster: Arc<dyn Cluster>,
    meta: Arc<TopicMeta>,
    /// Every column of the table: the record's, then the metadata columns.
    columns: Vec<Column>,
    schema: SchemaRef,
}

impl DisplayAs for TopicSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "TopicSink: topic={}", self.meta.name)
    }
}

/// The record a row of [`topic_columns`] becomes: its declared columns encoded in the topic's
/// format, its metadata columns naming the partition, timestamp and key; `n` is the row's number
/// in the statement, for errors.
pub fn encode_row(meta: &TopicMeta, row: Vec<Value>, n: u64) -> Result<NewRecord> {
    let bad = |what: String| DataFusionError::Execution(format!("row {n}: {what}"));
    let declared = row.len().saturating_sub(metadata_columns().len());
    let mut metadata = row[declared..].iter();
    let value = match &meta.format {
        Some(f) => f.encode(&row[..declared]).map_err(|e| bad(e.to_string()))?,
        None => match row.first() {
            Some(Value::Bytes(b)) => b.clone(),
            Some(Value::Str(s)) => s.as_bytes().to_vec(),
            other => return Err(bad(format!("value {other:?} is not bytes"))),
        },
    };
    let partition = match metadata.next() {
        Some(Value::Int(p)) => Some(
            u32::try_from(*p)
                .map_err(|_| bad(format!("{PARTITION_COLUMN} {p} is not a partition")))?,
        ),
        _ => None,
    };
    if let Some(Value::Int(o)) = metadata.next() {
        return Err(bad(format!(
            "{OFFSET_COLUMN} is given ({o}), but the log assigns offsets; leave it out"
        )));
    }
    let timestamp_ms = match metadata.next() {
        Some(Value::Timestamp(micros)) => Some(micros.div_euclid(1000)),
        _ => None,
    };
    let key = match metadata.next() {
        Some(Value::Str(k)) => Some(Bytes::from(k.clone().into_bytes())),
        _ => None,
    };
    Ok(NewRecord {
        partition,
        key,
        value: Bytes::from(value),
        timestamp_ms,
    })
}

#[async_trait]
impl DataSink for TopicSink {
    fn metrics(&self) -> Option<MetricsSet> {
        None
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        mut data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        let (mut seen, mut done) = (0u64, 0u64);
        while let Some(batch) = data.next().await {
            let rows = batch_to_rows(&batch?, &self.columns, seen)?;
            let mut records = Vec::with_capacity(rows.len().min(PRODUCE_ROWS));
            for row in rows {
                seen += 1;
                records.push(encode_row(&self.meta, row, seen)?);
                if records.len() == PRODUCE_ROWS {
                    done += self.produce(std::mem::take(&mut records)).await?;
                }
            }
            if !records.is_empty() {
                done += self.produce(records).await?;
            }
        }
        Ok(done)
    }
}

impl TopicSink {
    async fn produce(&self, records: Vec<NewRecord>) -> Result<u64> {
        self.cluster
            .produce(&self.meta.name, records)
            .await
            .map_err(cluster_error)
    }
}

/// The partitions and offsets the filters allow.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bounds {
    /// None: every partition.
    partitions: Option<BTreeSet<u32>>,
    /// First offset allowed.
    from: u64,
    /// Offset every allowed record is below.
    to: u64,
}

impl Bounds {
    fn from_filters(filters: &[Expr]) -> Bounds {
        let mut b = Bounds {
            partitions: None,
            from: 0,
            to: u64::MAX,
        };
        for f in filters {
            b.narrow(f);
        }
        b
    }

    /// True for a filter `narrow` uses.
    fn understands(e: &Expr) -> bool {
        let mut b = Bounds::from_filters(&[]);
        b.narrow(e)
    }

    /// Narrows the bounds by one conjunct; false when it says nothing about them.
    fn narrow(&mut self, e: &Expr) -> bool {
        match e {
            Expr::BinaryExpr(BinaryExpr {
                left,
                op: Operator::And,
                right,
            }) => {
                let l = self.narrow(left);
                let r = self.narrow(right);
                l || r
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                let (column, op, n) = match (column_of(left), literal_of(right)) {
                    (Some(c), Some(n)) => (c, *op, n),
                    _ => match (literal_of(left), column_of(right), op.swap()) {
                        (Some(n), Some(c), Some(op)) => (c, op, n),
                        _ => return false,
                    },
                };
                self.apply(column, op, n)
            }
            Expr::Between(between) if !between.negated => {
                match (
                    column_of(&between.expr),
                    literal_of(&between.low),
                    literal_of(&between.high),
                ) {
                    (Some(c), Some(lo), Some(hi)) => {
                        self.apply(c, Operator::GtEq, lo) && self.apply(c, Operator::LtEq, hi)
                    }
                    _ => false,
                }
            }
            Expr::InList(list)
                if !list.negated && column_of(&list.expr) == Some(PARTITION_COLUMN) =>
            {
                let values: Option<BTreeSet<u32>> = list
                    .list
                    .iter()
                    .map(|v| literal_of(v).and_then(|n| u32::try_from(n).ok()))
                    .collect();
                match values {
                    Some(set) => {
                        self.keep_partitions(set);
                        true
                    }
                    None => false,
                }
            }
            _ => false,
        }
    }

    fn keep_partitions(&mut self, set: BTreeSet<u32>) {
        self.partitions = Some(match self.partitions.take() {
            Some(old) => old.intersection(&set).copied().collect(),
            None => set,
        });
    }

    /// Applies `column op n`; false for a column or operator that bounds nothing.
    fn apply(&mut self, column: &str, op: Operator, n: i128) -> bool {
        match column {
            OFFSET_COLUMN => {
                let clamp = |v: i128| v.clamp(0, i128::from(u64::MAX)) as u64;
                match op {
                    Operator::Eq => {
                        self.from = self.from.max(clamp(n));
                        self.to = self.to.min(clamp(n + 1));
                    }
                    Operator::Gt => self.from = self.from.max(clamp(n + 1)),
                    Operator::GtEq => self.from = self.from.max(clamp(n)),
                    Operator::Lt => self.to = self.to.min(clamp(n)),
                    Operator::LtEq => self.to = self.to.min(clamp(n + 1)),
                    _ => return false,
                }
                true
            }
            PARTITION_COLUMN => {
                let (lo, hi) = match op {
                    Operator::Eq => (n, n),
                    Operator::Gt => (n + 1, i128::from(u32::MAX)),
                    Operator::GtEq => (n, i128::from(u32::MAX)),
                    Operator::Lt => (0, n - 1),
                    Operator::LtEq => (0, n),
                    _ => return false,
                };
                let lo = lo.clamp(0, i128::from(u32::MAX)) as u32;
                if hi < i128::from(lo) {
                    self.keep_partitions(BTreeSet::new());
                } else {
                    let hi = hi.min(i128::from(u32::MAX)) as u32;
                    // Partition counts are small; a bound past them keeps every partition.
                    let hi = hi.min(lo.saturating_add(1 << 16));
                    self.keep_partitions((lo..=hi).collect());
                }
                true
            }
            _ => false,
        }
    }
}

fn column_of(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) if c.name == PARTITION_COLUMN || c.name == OFFSET_COLUMN => {
            Some(c.name.as_str())
        }
        Expr::Cast(c) => column_of(&c.expr),
        _ => None,
    }
}

fn literal_of(e: &Expr) -> Option<i128> {
    match e {
        Expr::Literal(v, _) => match v {
            ScalarValue::Int8(Some(n)) => Some((*n).into()),
            ScalarValue::Int16(Some(n)) => Some((*n).into()),
            ScalarValue::Int32(Some(n)) => Some((*n).into()),
            ScalarValue::Int64(Some(n)) => Some((*n).into()),
            ScalarValue::UInt8(Some(n)) => Some((*n).into()),
            ScalarValue::UInt16(Some(n)) => Some((*n).into()),
            ScalarValue::UInt32(Some(n)) => Some((*n).into()),
            ScalarValue::UInt64(Some(n)) => Some((*n).into()),
            _ => None,
        },
        Expr::Cast(c) => literal_of(&c.expr),
        _ => None,
    }
}

/// The offsets one partition of the scan reads: `[start, end)` of topic partition `partition`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionPart {
    /// The topic partition.
    pub partition: u32,
    /// First offset read.
    pub start: u64,
    /// The offset reading stops before (the high watermark when the query was planned).
    pub end: u64,
}

/// Reads a topic's partitions, one scan partition per topic partition.
#[derive(Debug)]
pub struct TopicScanExec {
    cluster: Arc<dyn Cluster>,
    topic: Arc<TopicMeta>,
    /// Every column of the table.
    columns: Vec<Column>,
    /// The columns output, as indexes into `columns`.
    projection: Vec<usize>,
    parts: Vec<PartitionPart>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    /// Where the statement counts records that do not decode (none: they are logged).
    warnings: Option<Arc<QueryWarnings>>,
}

impl TopicScanExec {
    fn new(
        cluster: Arc<dyn Cluster>,
        topic: Arc<TopicMeta>,
        columns: Vec<Column>,
        projection: Vec<usize>,
        schema: SchemaRef,
        parts: Vec<PartitionPart>,
        warnings: Option<Arc<QueryWarnings>>,
    ) -> TopicScanExec {
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(parts.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        TopicScanExec {
            cluster,
            topic,
            columns,
            projection,
            parts,
            schema,
            properties,
            warnings,
        }
    }

    /// The partitions and offset ranges the scan reads.
    pub fn parts(&self) -> &[PartitionPart] {
        &self.parts
    }
}

impl DisplayAs for TopicScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let parts: Vec<String> = self
            .parts
            .iter()
            .map(|p| format!("{}:{}..{}", p.partition, p.start, p.end))
            .collect();
        write!(
            f,
            "TopicScanExec: topic={}, format={}, offsets=[{}]",
            self.topic.name,
            self.topic
                .format
                .as_ref()
                .map_or("bytes", |f| f.kind.name()),
            parts.join(", ")
        )
    }
}

/// Where one partition's scan is.
struct Reader {
    cluster: Arc<dyn Cluster>,
    topic: Arc<TopicMeta>,
    columns: Vec<Column>,
    projection: Vec<usize>,
    schema: SchemaRef,
    partition: u32,
    next: u64,
    end: u64,
    /// Fetched records not yet turned into rows.
    pending: std::vec::IntoIter<TopicRecord>,
    warnings: Option<Arc<QueryWarnings>>,
    /// Skipped records when no statement collects warnings (the Postgres protocol): logged.
    unreported: u64,
}

impl Reader {
    /// The next non-empty batch, or none at the end of the partition's range.
    async fn next_batch(&mut self) -> Result<Option<RecordBatch>> {
        let topic = self.topic.clone();
        let columns: Vec<Column> = self
            .projection
            .iter()
            .map(|i| self.columns[*i].clone())
            .collect();
        let mut rows = RecordDecoder::new(
            &topic,
            self.partition,
            self.projection.clone(),
            &columns,
            self.schema.clone(),
            BATCH_ROWS,
        )?;
        while rows.rows() < BATCH_ROWS {
            let Some(record) = self.next_record().await? else {
                break;
            };
            if let Err(reason) = rows.push(&record)? {
                self.skip(&record, &reason);
            }
        }
        if rows.rows() == 0 {
            if self.unreported > 0 {
                tracing::warn!(
                    topic = %self.topic.name,
                    partition = self.partition,
                    skipped = self.unreported,
                    "records that did not decode were skipped"
                );
                self.unreported = 0;
            }
            return Ok(None);
        }
        rows.finish().map(Some)
    }

    /// The next record in range, fetching more as needed.
    async fn next_record(&mut self) -> Result<Option<TopicRecord>> {
        loop {
            if let Some(r) = self.pending.next() {
                if r.offset < self.next {
                    // A fetch returns whole stored batches, which may begin before the offset.
                    continue;
                }
                if r.offset >= self.end {
                    self.next = self.end;
                    self.pending = Vec::new().into_iter();
                    return Ok(None);
                }
                self.next = r.offset + 1;
                return Ok(Some(r));
            }
            if self.next >= self.end {
                return Ok(None);
            }
            let page = self
                .cluster
                .fetch(&self.topic.name, self.partition, self.next, FETCH_BYTES)
                .await
                .map_err(cluster_error)?;
            if page.records.is_empty() && page.next_offset <= self.next {
                return Err(DataFusionError::Execution(format!(
                    "topic '{}' partition {} returned nothing at offset {}, below the high \
                     watermark {} the query started with",
                    self.topic.name, self.partition, self.next, self.end
                )));
            }
            if page.records.is_empty() {
                // Retention removed the records since the query was planned: go on from the
                // earliest one left.
                self.next = page.next_offset;
            }
            self.pending = page.records.into_iter();
        }
    }

    fn skip(&mut self, r: &TopicRecord, reason: &str) {
        match &self.warnings {
            Some(w) => w.record_undecodable(&self.topic.name, self.partition, r.offset, reason),
            None => self.unreported += 1,
        }
    }
}

impl ExecutionPlan for TopicScanExec {
    fn name(&self) -> &str {
        "TopicScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !children.is_empty() {
            return Err(DataFusionError::Internal(
                "a topic scan has no inputs".into(),
            ));
        }
        Ok(self)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::execution_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let Some(part) = self.parts.get(partition).cloned() else {
            // No partition has records in range: one empty partition.
            return Ok(Box::pin(RecordBatchStreamAdapter::new(
                self.schema.clone(),
                stream::empty(),
            )));
        };
        let reader = Reader {
            cluster: self.cluster.clone(),
            topic: self.topic.clone(),
            columns: self.columns.clone(),
            projection: self.projection.clone(),
            schema: self.schema.clone(),
            partition: part.partition,
            next: part.start,
            end: part.end,
            pending: Vec::new().into_iter(),
            warnings: self.warnings.clone(),
            unreported: 0,
        };
        let batches = stream::try_unfold(reader, |mut r| async move {
            Ok(r.next_batch().await?.map(|b| (b, r)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn offset_and_partition_filters_bound_the_scan() {
        let b = Bounds::from_filters(&[
            col(OFFSET_COLUMN).gt_eq(lit(10i64)),
            col(OFFSET_COLUMN).lt(lit(20i64)),
            col(PARTITION_COLUMN).eq(lit(1i32)),
        ]);
        assert_eq!(b.from, 10);
        assert_eq!(b.to, 20);
        assert_eq!(b.partitions, Some([1].into()));
        let b = Bounds::from_filters(&[lit(5i64).lt(col(OFFSET_COLUMN))]);
        assert_eq!((b.from, b.to), (6, u64::MAX));
        let b = Bounds::from_filters(&[col(PARTITION_COLUMN).in_list(vec![lit(0), lit(2)], false)]);
        assert_eq!(b.partitions, Some([0, 2].into()));
        let b = Bounds::from_filters(&[col(OFFSET_COLUMN).between(lit(3i64), lit(4i64))]);
        assert_eq!((b.from, b.to), (3, 5));
        let b = Bounds::from_filters(&[col(PARTITION_COLUMN).lt(lit(0))]);
        assert_eq!(b.partitions, Some(BTreeSet::new()));
    }

    #[test]
    fn other_filters_are_not_pushed() {
        assert!(!Bounds::understands(&col("amount").gt(lit(3))));
        assert!(!Bounds::understands(&col(OFFSET_COLUMN).not_eq(lit(3))));
        assert!(!Bounds::understands(
            &col(OFFSET_COLUMN)
                .eq(lit(3))
                .or(col(OFFSET_COLUMN).eq(lit(4)))
        ));
        assert!(Bounds::understands(&col(OFFSET_COLUMN).eq(lit(3))));
    }
}
