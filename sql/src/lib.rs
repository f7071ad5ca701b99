//! Weir's SQL layer: DataFusion planning and executing queries over the cluster's tables (one scan
//! partition per region, primary-key filters narrowing what is read) and topics (one per
//! partition, records decoded by the topic's format), inserts and deletes through the region
//! store, and the catalog statements that create and drop tables and topics.
//!
//! The layer reaches the cluster only through [`Cluster`], which the node implements.

pub mod cancel;
pub mod catalog;
pub mod cluster;
pub mod columnar;
pub mod distributed;
pub mod engine;
pub mod external;
pub mod functions;
pub mod group_keys;
pub mod job;
pub mod keyrange;
pub mod output;
pub mod pg;
pub mod records;
pub mod repeated_names;
pub mod restate;
pub mod scan;
pub mod scan_filter;
pub mod schedule;
pub mod session;
pub mod settings_table;
pub mod sqlstate;
pub mod statement;
pub mod syntax;
pub mod table;
pub mod topic;
pub mod types;
pub mod warnings;
pub mod write_window;

pub use cluster::{
    Cluster, ClusterError, ExternalTableMeta, JobMeta, NewJob, NewRecord, NewSchedule, NewTable,
    NewTopic, RecordPage, RegionMeta, ScanPage, ScheduleAction, ScheduleMeta, Served, SinkMerge,
    TableMeta, TaskStatus, TopicMeta, TopicRecord,
};
pub use engine::{Engine, EngineConfig, Output};
pub use statement::Statement;
pub use warnings::QueryWarnings;
