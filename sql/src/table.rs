//! A Weir table as a DataFusion table: scans narrowed by primary-key filters and split by region,
//! inserts as upserts in per-region batches, deletes by key.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::Session;
use datafusion::common::{Constraint, Constraints, DFSchema};
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::datasource::{TableProvider, TableType};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::metrics::MetricsSet;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use weir_proto::table::row::EncodedRows;
use weir_proto::table::Value;

use crate::cluster::{Cluster, TableMeta};
use crate::keyrange::key_ranges;
use crate::scan::{RegionPart, RegionScanExec};
use crate::scan_filter;
use crate::types::{arrow_schema, batch_to_rows, SinkCells};
use crate::write_window::WriteWindow;

/// Rows per write request of an insert, at most: large enough to amortise a Raft round.
const WRITE_ROWS: usize = 8_192;

/// Encoded bytes after which a write request is sent even if it has fewer rows, to keep it well
/// under the message limits (a row may take up to [`weir_proto::table::MAX_ROW_BYTES`]).
const WRITE_BYTES: usize = 4 << 20;

/// Rows encoded between two checks of a request's size.
const ENCODE_CHUNK: usize = 64;

/// Write requests of one insert in flight at once.
const WRITES_IN_FLIGHT: usize = 4;

/// Keys deleted per request of a `DELETE`.
const DELETE_KEYS: usize = 2_000;

/// Room reserved per row in a request's buffer before its rows are encoded (it grows as needed).
const ROW_BYTES: usize = 128;

/// A table of the region store.
#[derive(Debug)]
pub struct RegionTable {
    cluster: Arc<dyn Cluster>,
    meta: Arc<TableMeta>,
    schema: SchemaRef,
    constraints: Constraints,
}

impl RegionTable {
    /// The table described by `meta`, read and written through `cluster`.
    pub fn new(cluster: Arc<dyn Cluster>, meta: TableMeta) -> RegionTable {
        let schema = arrow_schema(&meta.schema);
        let constraints = Constraints::new_unverified(vec![Constraint::PrimaryKey(
            meta.schema.primary_key.clone(),
        )]);
        RegionTable {
            cluster,
            meta: Arc::new(meta),
            schema,
            constraints,
        }
    }

    /// The scan of `projection` (all columns when none) over the keys `filters` allow.
    fn scan_plan(
        &self,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<RegionScanExec> {
        let indexes: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..self.meta.schema.columns.len()).collect(),
        };
        let columns = indexes
            .iter()
            .map(|i| self.meta.schema.columns[*i].clone())
            .collect();
        let schema = Arc::new(self.schema.project(&indexes)?);
        let ranges = key_ranges(&self.meta.schema, filters);
        let parts = self
            .meta
            .regions
            .iter()
            .filter_map(|r| {
                let ranges: Vec<_> = ranges
                    .iter()
                    .filter_map(|k| k.clip(&r.start, &r.end))
                    .collect();
                (!ranges.is_empty()).then_some(RegionPart {
                    region: r.id,
                    ranges,
                })
            })
            .collect();
        Ok(RegionScanExec::new(
            self.cluster.clone(),
            self.meta.clone(),
            (columns, schema),
            parts,
            scan_filter::from_exprs(&self.meta.schema, filters),
            limit,
        ))
    }
}

#[async_trait]
impl TableProvider for RegionTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn constraints(&self) -> Option<&Constraints> {
        Some(&self.constraints)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(self.scan_plan(projection, filters, limit)?))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> Result<Vec<TableProviderFilterPushDown>> {
        // Filters narrow the key ranges read; DataFusion still applies each of them.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn insert_into(
        &self,
        _state: &dyn Session,
        input: Arc<dyn ExecutionPlan>,
        op: InsertOp,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if op == InsertOp::Overwrite {
            return Err(DataFusionError::NotImplemented(format!(
                "INSERT OVERWRITE into table '{}': rows are upserted by primary key; DELETE first",
                self.meta.name
            )));
        }
        let sink = RegionSink {
            cluster: self.cluster.clone(),
            meta: self.meta.clone(),
            schema: self.schema.clone(),
            op: SinkOp::Upsert,
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }

    async fn delete_from(
        &self,
        state: &dyn Session,
        filters: Vec<Expr>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // Read the rows the filters select (all columns: a filter may use any), then delete
        // their keys.
        let scan: Arc<dyn ExecutionPlan> = Arc::new(self.scan_plan(None, &filters, None)?);
        let input = match conjunction(filters) {
            Some(predicate) => {
                let df_schema = DFSchema::try_from(self.schema.as_ref().clone())?;
                let physical = state.create_physical_expr(predicate, &df_schema)?;
                Arc::new(FilterExec::try_new(physical, scan)?) as Arc<dyn ExecutionPlan>
            }
            None => scan,
        };
        let sink = RegionSink {
            cluster: self.cluster.clone(),
            meta: self.meta.clone(),
            schema: self.schema.clone(),
            op: SinkOp::Delete,
        };
        Ok(Arc::new(DataSinkExec::new(input, Arc::new(sink), None)))
    }
}

/// What a sink does with the rows it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SinkOp {
    /// `INSERT`: write the rows, replacing those with the same key.
    Upsert,
    /// `DELETE`: delete the rows' keys.
    Delete,
}

/// Writes an insert's rows as upserts, or deletes a `DELETE`'s selected rows, batch by batch so a
/// large statement never sits in memory; each batch is checked whole before any of it is sent.
#[derive(Debug)]
struct RegionSink {
    cluster: Arc<dyn Cluster>,
    meta: Arc<TableMeta>,
    schema: SchemaRef,
    op: SinkOp,
}

impl DisplayAs for RegionSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "RegionSink: table={}, op={:?}", self.meta.name, self.op)
    }
}

impl RegionSink {
    /// Upserts the inserted rows, encoded straight from the arrays into one buffer per request.
    /// Several requests are in flight while the next is encoded, so the query and the writes
    /// overlap (see [`WriteWindow`] for why a key given twice still keeps its last row).
    async fn upsert_all(&self, mut data: SendableRecordBatchStream) -> Result<u64> {
        let mut seen = 0u64;
        let schema = &self.meta.schema;
        let mut window = WriteWindow::new(WRITES_IN_FLIGHT);
        // Rows carry over from one batch to the next, so every request but the last is full
        // (DataFusion's 8,192-row batches would otherwise end in a short request each).
        let mut pending = EncodedRows::with_capacity(WRITE_ROWS, ROW_BYTES);
        while let Some(batch) = data.next().await {
            let batch = batch?;
            let cells = SinkCells::new(std::slice::from_ref(&batch), &schema.columns, seen)?;
            let mut row = 0;
            while row < cells.rows() {
                let take = (WRITE_ROWS - pending.len())
                    .min(ENCODE_CHUNK)
                    .min(cells.rows() - row);
                cells.encode(schema, row..row + take, &mut pending)?;
                row += take;
                if pending.len() == WRITE_ROWS || pending.bytes() >= WRITE_BYTES {
                    let full = std::mem::replace(
                        &mut pending,
                        EncodedRows::with_capacity(WRITE_ROWS, ROW_BYTES),
                    );
                    self.send(&mut window, full).await?;
                }
            }
            seen += cells.rows() as u64;
        }
        if !pending.is_empty() {
            self.send(&mut window, pending).await?;
        }
        window.finish().await
    }

    /// Hands one request's worth of encoded rows to the window of writes in flight.
    async fn send(&self, window: &mut WriteWindow, rows: EncodedRows) -> Result<()> {
        let keys = window.keys(rows.keys());
        let cluster = Arc::clone(&self.cluster);
        let table = self.meta.name.clone();
        window
            .send(keys, async move {
                cluster
                    .upsert(&table, rows)
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))
            })
            .await
    }

    /// Deletes the keys of the rows a `DELETE` selected, a request's worth at a time.
    async fn delete_all(&self, mut data: SendableRecordBatchStream) -> Result<u64> {
        let (mut seen, mut done) = (0u64, 0u64);
        let key = &self.meta.schema.primary_key;
        let mut pending: Vec<Vec<Value>> = Vec::with_capacity(DELETE_KEYS);
        while let Some(batch) = data.next().await {
            let rows = batch_to_rows(&batch?, &self.meta.schema.columns, seen)?;
            seen += rows.len() as u64;
            let mut keys = rows
                .into_iter()
                .map(|r| key.iter().map(|i| r[*i].clone()).collect());
            loop {
                pending.extend(keys.by_ref().take(DELETE_KEYS - pending.len()));
                if pending.len() < DELETE_KEYS {
                    break;
                }
                let full = std::mem::replace(&mut pending, Vec::with_capacity(DELETE_KEYS));
                done += self.delete(full).await?;
            }
        }
        if !pending.is_empty() {
            done += self.delete(pending).await?;
        }
        Ok(done)
    }

    /// Deletes one request's worth of keys; returns the keys processed.
    async fn delete(&self, keys: Vec<Vec<Value>>) -> Result<u64> {
        self.cluster
            .delete(&self.meta.name, keys)
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

#[async_trait]
impl DataSink for RegionSink {
    fn metrics(&self) -> Option<MetricsSet> {
        None
    }

    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> Result<u64> {
        match self.op {
            SinkOp::Upsert => self.upsert_all(data).await,
            SinkOp::Delete => self.delete_all(data).await,
        }
    }
}
