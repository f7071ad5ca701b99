//! The leaf of a query over a table: one partition per region the key ranges touch, each reading
//! its ranges page by page from the cluster and turning rows into Arrow record batches.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::Statistics;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::metrics::{
    Count, ExecutionPlanMetricsSet, MetricBuilder, MetricsSet,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::stream;
use weir_proto::table::{Column, ColumnType};

use crate::cluster::{Cluster, ClusterError, Served, TableMeta};
use crate::columnar::with_schema;
use crate::keyrange::KeyRange;
use crate::scan_filter::ScanFilter;

/// Rows asked for per page (each page is one round trip and one lease check on the region's
/// leader); the node caps a page at its own limit too.
const PAGE_ROWS: usize = 32_768;

/// The ranges one partition reads, all inside one region as planned.
#[derive(Debug, Clone)]
pub struct RegionPart {
    /// The region the ranges were planned in (a split since then is followed by the scan).
    pub region: u64,
    /// Key ranges in key order.
    pub ranges: Vec<KeyRange>,
}

/// Scans a table's key ranges, one partition per region.
#[derive(Debug)]
pub struct RegionScanExec {
    cluster: Arc<dyn Cluster>,
    table: Arc<TableMeta>,
    /// The columns read, in output order.
    columns: Vec<Column>,
    parts: Vec<RegionPart>,
    /// Conditions the regions' nodes apply before sending rows.
    filters: Arc<Vec<ScanFilter>>,
    limit: Option<usize>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl RegionScanExec {
    /// A scan of `parts` of `table` returning `columns` (as `schema`) of the rows `filters`
    /// allow, at most `limit` rows per partition.
    pub fn new(
        cluster: Arc<dyn Cluster>,
        table: Arc<TableMeta>,
        (columns, schema): (Vec<Column>, SchemaRef),
        mut parts: Vec<RegionPart>,
        filters: Vec<ScanFilter>,
        limit: Option<usize>,
    ) -> RegionScanExec {
        if parts.is_empty() {
            // Nothing matches; one empty partition keeps the plan's shape simple.
            parts.push(RegionPart {
                region: 0,
                ranges: Vec::new(),
            });
        }
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(parts.len()),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        RegionScanExec {
            cluster,
            table,
            columns,
            parts,
            filters: Arc::new(filters),
            limit,
            schema,
            properties,
            metrics: ExecutionPlanMetricsSet::new(),
        }
    }

    /// The regions (and ranges) each partition reads.
    pub fn parts(&self) -> &[RegionPart] {
        &self.parts
    }

    /// The table scanned.
    pub fn table(&self) -> &Arc<TableMeta> {
        &self.table
    }

    /// The columns read, in output order.
    pub fn columns(&self) -> &[Column] {
        &self.columns
    }

    /// The conditions the regions' nodes apply.
    pub fn filters(&self) -> &[ScanFilter] {
        &self.filters
    }

    /// Most rows each partition returns.
    pub fn limit(&self) -> Option<usize> {
        self.limit
    }

    /// The same scan over `parts` only, padded with empty partitions to `partitions` (the tasks
    /// of a distributed stage each read some of the regions, all with one partition count).
    pub fn with_parts(&self, mut parts: Vec<RegionPart>, partitions: usize) -> RegionScanExec {
        while parts.len() < partitions {
            parts.push(RegionPart {
                region: 0,
                ranges: Vec::new(),
            });
        }
        RegionScanExec::new(
            self.cluster.clone(),
            self.table.clone(),
            (self.columns.clone(), self.schema.clone()),
            parts,
            self.filters.as_ref().clone(),
            self.limit,
        )
    }
}

/// Estimated rows and output bytes of `parts`, from the sizes of their regions: known only
/// when every part reads its whole region and that region's size is known (key filters that
/// narrow a part make it unknown rather than guessed). The planner uses it to pick the
/// smaller side of a join to build its hash table from.
fn estimate(
    table: &TableMeta,
    columns: &[Column],
    schema: &SchemaRef,
    parts: &[RegionPart],
    limit: Option<usize>,
) -> Statistics {
    let mut st = Statistics::new_unknown(schema);
    let mut bytes = 0u64;
    for p in parts {
        if p.ranges.is_empty() {
            continue;
        }
        let Some(r) = table.regions.iter().find(|r| r.id == p.region) else {
            return st;
        };
        let whole = p.ranges.len() == 1
            && p.ranges[0].start <= r.start
            && (p.ranges[0].end.is_empty() || (!r.end.is_empty() && p.ranges[0].end >= r.end));
        if !whole || r.approx_bytes == 0 {
            return st;
        }
        bytes += r.approx_bytes;
    }
    let full = stored_width(&table.schema.columns).max(1) as u64;
    let mut rows = bytes / full;
    if let Some(l) = limit {
        rows = rows.min(l as u64 * parts.len() as u64);
    }
    let out = rows * stored_width(columns) as u64;
    st.num_rows = Precision::Inexact(usize::try_from(rows).unwrap_or(usize::MAX));
    st.total_byte_size = Precision::Inexact(usize::try_from(out).unwrap_or(usize::MAX));
    st
}

/// About the bytes the region store counts for a row of these columns (each cell's tag and
/// payload, text taken as 16 bytes, plus the row's version), to turn region sizes into rows.
fn stored_width(columns: &[Column]) -> usize {
    8 + columns
        .iter()
        .map(|c| match c.ty {
            ColumnType::Boolean => 2,
            ColumnType::Date32 => 5,
            ColumnType::Decimal { .. } => 17,
            ColumnType::Utf8 | ColumnType::Binary => 18,
            _ => 9,
        })
        .sum::<usize>()
}

impl DisplayAs for RegionScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let regions: Vec<String> = self.parts.iter().map(|p| p.region.to_string()).collect();
        let ranges: usize = self.parts.iter().map(|p| p.ranges.len()).sum();
        write!(
            f,
            "RegionScanExec: table={}, regions=[{}], key_ranges={ranges}",
            self.table.name,
            regions.join(", ")
        )?;
        if !self.filters.is_empty() {
            let filters: Vec<String> = self.filters.iter().map(ToString::to_string).collect();
            write!(f, ", filters=[{}]", filters.join(", "))?;
        }
        if let Some(l) = self.limit {
            write!(f, ", limit={l}")?;
        }
        Ok(())
    }
}

/// Where a partition's scan is.
struct Cursor {
    cluster: Arc<dyn Cluster>,
    table: String,
    names: Vec<String>,
    schema: SchemaRef,
    ranges: std::vec::IntoIter<KeyRange>,
    current: Option<KeyRange>,
    filters: Arc<Vec<ScanFilter>>,
    left: Option<usize>,
    output_rows: Count,
    /// Where the partition's metrics are kept (they travel back with a task's results from
    /// the node that ran it).
    metrics: ExecutionPlanMetricsSet,
    partition: usize,
    /// Rows, pages and pages from the image read, by region and node.
    served: HashMap<(u64, u64), [Count; 3]>,
}

impl Cursor {
    /// Counts a page in the metrics `EXPLAIN ANALYZE` shows: `region_R_node_N_rows`, `_pages`
    /// and `_image_pages` (pages cut from the region's columnar image).
    fn count(&mut self, served: Served, rows: usize) {
        let (metrics, partition) = (&self.metrics, self.partition);
        let [r, p, i] = self
            .served
            .entry((served.region, served.node))
            .or_insert_with(|| {
                let counter = |what: &str| {
                    MetricBuilder::new(metrics).counter(
                        format!("region_{}_node_{}_{what}", served.region, served.node),
                        partition,
                    )
                };
                [counter("rows"), counter("pages"), counter("image_pages")]
            });
        r.add(rows);
        p.add(1);
        if served.from_image {
            i.add(1);
        }
    }

    /// The next non-empty batch, or none at the end.
    async fn next_batch(&mut self) -> Result<Option<datafusion::arrow::record_batch::RecordBatch>> {
        loop {
            if self.left == Some(0) {
                return Ok(None);
            }
            let Some(range) = self.current.take().or_else(|| self.ranges.next()) else {
                return Ok(None);
            };
            let want = self.left.map_or(PAGE_ROWS, |l| l.min(PAGE_ROWS));
            let page = self
                .cluster
                .scan(
                    &self.table,
                    (&range.start, &range.end),
                    &self.names,
                    &self.filters,
                    want,
                )
                .await
                .map_err(ClusterError::into_task_error)?;
            if let Some(resume) = page.resume {
                if range.end.is_empty() || resume < range.end {
                    self.current = Some(KeyRange {
                        start: resume,
                        end: range.end,
                    });
                }
            }
            let mut batch = page.batch;
            self.count(page.served, batch.num_rows());
            if batch.num_rows() == 0 {
                continue;
            }
            if let Some(l) = self.left.as_mut() {
                batch = batch.slice(0, batch.num_rows().min(*l));
                *l -= batch.num_rows();
            }
            self.output_rows.add(batch.num_rows());
            return with_schema(&batch, &self.schema).map(Some);
        }
    }
}

impl ExecutionPlan for RegionScanExec {
    fn name(&self) -> &str {
        "RegionScanExec"
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
                "a region scan has no inputs".into(),
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
        let part = self.parts.get(partition).ok_or_else(|| {
            DataFusionError::Internal(format!("region scan has no partition {partition}"))
        })?;
        let cursor = Cursor {
            cluster: self.cluster.clone(),
            table: self.table.name.clone(),
            names: self.columns.iter().map(|c| c.name.clone()).collect(),
            schema: self.schema.clone(),
            ranges: part.ranges.clone().into_iter(),
            current: None,
            filters: self.filters.clone(),
            left: self.limit,
            output_rows: MetricBuilder::new(&self.metrics).output_rows(partition),
            metrics: self.metrics.clone(),
            partition,
            served: HashMap::new(),
        };
        let batches = stream::try_unfold(cursor, |mut c| async move {
            Ok(c.next_batch().await?.map(|b| (b, c)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            batches,
        )))
    }

    fn fetch(&self) -> Option<usize> {
        self.limit
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }

    #[allow(deprecated)]
    fn partition_statistics(&self, partition: Option<usize>) -> Result<Arc<Statistics>> {
        let parts = match partition {
            None => &self.parts[..],
            Some(i) => {
                let part = self.parts.get(i).ok_or_else(|| {
                    DataFusionError::Internal(format!("region scan has no partition {i}"))
                })?;
                std::slice::from_ref(part)
            }
        };
        Ok(Arc::new(estimate(
            &self.table,
            &self.columns,
            &self.schema,
            parts,
            self.limit,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::RegionMeta;
    use weir_proto::table::TableSchema;

    fn part(region: u64, start: &[u8], end: &[u8]) -> RegionPart {
        RegionPart {
            region,
            ranges: vec![KeyRange {
                start: start.to_vec(),
                end: end.to_vec(),
            }],
        }
    }

    #[test]
    fn estimates_come_from_whole_regions_of_known_size() {
        let schema = TableSchema::parse("id BIGINT, v BIGINT", &["id".into()]).unwrap();
        let region = |id, start: &[u8], end: &[u8], approx_bytes| RegionMeta {
            id,
            start: start.to_vec(),
            end: end.to_vec(),
            approx_bytes,
        };
        let table = TableMeta {
            name: "t".into(),
            schema: Arc::new(schema.clone()),
            regions: vec![
                region(1, b"", b"m", 2600),
                region(2, b"m", b"", 1300),
                region(3, b"x", b"", 0),
            ],
        };
        let arrow = crate::types::arrow_schema(&schema);
        let cols = schema.columns.clone();
        // 26 bytes a row (version 8 + two 9-byte cells): 100 + 50 rows.
        let st = estimate(
            &table,
            &cols,
            &arrow,
            &[part(1, b"", b"m"), part(2, b"m", b"")],
            None,
        );
        assert_eq!(st.num_rows, Precision::Inexact(150));
        assert_eq!(st.total_byte_size, Precision::Inexact(150 * 26));
        // A limit caps the rows of each partition.
        let st = estimate(&table, &cols, &arrow, &[part(1, b"", b"")], Some(10));
        assert_eq!(st.num_rows, Precision::Inexact(10));
        // A key filter narrowing a region, or a region of unknown size: unknown, not guessed.
        let st = estimate(&table, &cols, &arrow, &[part(1, b"c", b"d")], None);
        assert_eq!(st.num_rows, Precision::Absent);
        let st = estimate(&table, &cols, &arrow, &[part(3, b"x", b"")], None);
        assert_eq!(st.num_rows, Precision::Absent);
        let st = estimate(&table, &cols, &arrow, &[part(9, b"", b"")], None);
        assert_eq!(st.num_rows, Precision::Absent);
    }
}
