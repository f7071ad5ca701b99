//! Raft plumbing shared by every group: the outgoing network ([`network`]), the incoming gRPC
//! service ([`service`]), the per-kind Raft timing ([`config`]), early elections when a leading
//! node dies ([`failover`]), spreading leadership over the voters ([`balance`]) and when
//! partitions snapshot themselves ([`compaction`]).

pub mod balance;
pub mod compaction;
pub mod config;
pub mod failover;
pub mod network;
pub mod service;
