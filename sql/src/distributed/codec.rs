//! How a table scan travels to the node that runs it: the table's name, the columns, the
//! regions and key ranges of each partition, the filters and the limit. The receiving node
//! looks the table up in its own catalog and reads through its own view of the cluster.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use datafusion_proto::protobuf;
use prost::Message;
use weir_proto::v1;

use crate::cluster::Cluster;
use crate::keyrange::KeyRange;
use crate::scan::{RegionPart, RegionScanExec};
use crate::scan_filter::ScanFilter;

/// A region scan on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct ScanMessage {
    #[prost(string, tag = "1")]
    table: String,
    #[prost(string, repeated, tag = "2")]
    columns: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    parts: Vec<PartMessage>,
    #[prost(message, repeated, tag = "4")]
    filters: Vec<v1::ScanFilter>,
    #[prost(uint64, optional, tag = "5")]
    limit: Option<u64>,
    #[prost(message, optional, tag = "6")]
    schema: Option<protobuf::Schema>,
}

/// One partition of a region scan on the wire.
#[derive(Clone, PartialEq, prost::Message)]
struct PartMessage {
    #[prost(uint64, tag = "1")]
    region: u64,
    #[prost(bytes = "vec", repeated, tag = "2")]
    starts: Vec<Vec<u8>>,
    #[prost(bytes = "vec", repeated, tag = "3")]
    ends: Vec<Vec<u8>>,
}

/// Encodes Weir's table scans into the plans sent to other nodes, and decodes them there
/// against this node's cluster.
#[derive(Debug, Clone)]
pub struct ScanCodec {
    cluster: Arc<dyn Cluster>,
}

impl ScanCodec {
    /// A codec whose decoded scans read through `cluster`.
    pub fn new(cluster: Arc<dyn Cluster>) -> ScanCodec {
        ScanCodec { cluster }
    }
}

fn codec_error(what: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("a table scan sent between nodes: {what}"))
}

impl PhysicalExtensionCodec for ScanCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(codec_error("a region scan has no inputs"));
        }
        let m = ScanMessage::decode(buf).map_err(codec_error)?;
        let table = self
            .cluster
            .table(&m.table)
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .ok_or_else(|| {
                DataFusionError::Execution(format!(
                    "table '{}' is not in this node's catalog (dropped while the query ran?)",
                    m.table
                ))
            })?;
        let columns = m
            .columns
            .iter()
            .map(|name| {
                table
                    .schema
                    .columns
                    .iter()
                    .find(|c| &c.name == name)
                    .cloned()
                    .ok_or_else(|| {
                        DataFusionError::Execution(format!(
                            "table '{}' has no column '{name}' any more",
                            m.table
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        let schema: Schema = m
            .schema
            .as_ref()
            .ok_or_else(|| codec_error("no schema"))?
            .try_into()?;
        let filters = m
            .filters
            .iter()
            .map(|f| ScanFilter::from_proto(f, &table.schema).map_err(codec_error))
            .collect::<Result<Vec<_>>>()?;
        let parts = m
            .parts
            .into_iter()
            .map(|p| RegionPart {
                region: p.region,
                ranges: p
                    .starts
                    .into_iter()
                    .zip(p.ends)
                    .map(|(start, end)| KeyRange { start, end })
                    .collect(),
            })
            .collect();
        let limit = m.limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
        Ok(Arc::new(RegionScanExec::new(
            self.cluster.clone(),
            Arc::new(table),
            (columns, Arc::new(schema)),
            parts,
            filters,
            limit,
        )))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(scan) = node.downcast_ref::<RegionScanExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on another node",
                node.name()
            )));
        };
        let m = ScanMessage {
            table: scan.table().name.clone(),
            columns: scan.columns().iter().map(|c| c.name.clone()).collect(),
            parts: scan
                .parts()
                .iter()
                .map(|p| PartMessage {
                    region: p.region,
                    starts: p.ranges.iter().map(|r| r.start.clone()).collect(),
                    ends: p.ranges.iter().map(|r| r.end.clone()).collect(),
                })
                .collect(),
            filters: scan.filters().iter().map(ScanFilter::to_proto).collect(),
            limit: scan.limit().map(|l| l as u64),
            schema: Some(node.schema().as_ref().try_into()?),
        };
        m.encode(buf).map_err(codec_error)
    }
}
