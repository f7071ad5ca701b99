//! The region store: tables split into key ranges, each range (region) a Raft group.
//!
//! - [`service`]: the `Kv` gRPC service: tables, get, write, compare-and-set, scan.
//! - [`split`]: the split check each region leader runs, and how a split reaches the catalog.
//! - [`scan_cache`]: columnar images of quiet regions that scans read instead of stored rows.

pub mod scan_cache;
pub mod service;
pub mod split;
