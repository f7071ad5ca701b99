//! The leaf of a query over a table: one partition per region the key ranges touch, each reading
//! its ranges page by page from the cluster and turning rows into Arrow record batches.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{
    Boundedness, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use futures::stream;
use weir_proto::table::Column;

use crate::cluster::{Cluster, TableMeta};
use crate::columnar::with_schema;
use crate::keyrange::KeyRange;

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
    limit: Option<usize>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl RegionScanExec {
    /// A scan of `parts` of `table` returning `columns` (as `schema`), at most `limit` rows per
    /// partition.
    pub fn new(
        cluster: Arc<dyn Cluster>,
        table: Arc<TableMeta>,
        columns: Vec<Column>,
        schema: SchemaRef,
        mut parts: Vec<RegionPart>,
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
            limit,
            schema,
            properties,
        }
    }

    /// The regions (and ranges) each partition reads.
    pub fn parts(&self) -> &[RegionPart] {
        &self.parts
    }
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
    left: Option<usize>,
}

impl Cursor {
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
                .scan(&self.table, &range.start, &range.end, &self.names, want)
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
            if let Some(resume) = page.resume {
                if range.end.is_empty() || resume < range.end {
                    self.current = Some(KeyRange {
                        start: resume,
                        end: range.end,
                    });
                }
            }
            let mut batch = page.batch;
            if batch.num_rows() == 0 {
                continue;
            }
            if let Some(l) = self.left.as_mut() {
                batch = batch.slice(0, batch.num_rows().min(*l));
                *l -= batch.num_rows();
            }
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
            left: self.limit,
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
}
