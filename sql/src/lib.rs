//! Weir's SQL layer: DataFusion planning and executing queries over the cluster's tables (one scan
//! partition per region, primary-key filters narrowing what is read), inserts and deletes through
//! the region store, and the catalog statements that create and drop tables.
//!
//! The layer reaches the cluster only through [`Cluster`], which the node implements.

pub mod catalog;
pub mod cluster;
pub mod engine;
pub mod keyrange;
pub mod pg;
pub mod scan;
pub mod table;
pub mod types;

pub use cluster::{Cluster, ClusterError, NewTable, RegionMeta, RowPage, TableMeta};
pub use engine::{Engine, EngineConfig, Output};
