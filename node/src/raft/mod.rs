//! Raft plumbing shared by every group: the outgoing network ([`network`]), the incoming gRPC
//! service ([`service`]), the per-kind Raft timing ([`config`]), early elections when a leading
//! node dies ([`failover`]), spreading leadership over the voters ([`balance`]), when
//! partitions snapshot themselves ([`compaction`]) and when regions purge their log
//! ([`log_gc`]).

pub mod balance;
pub mod compaction;
pub mod config;
pub mod failover;
pub mod log_gc;
pub mod network;
pub mod service;
