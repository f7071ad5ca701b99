//! Raft plumbing shared by every group: the outgoing network ([`network`]), the incoming gRPC
//! service ([`service`]), the per-kind Raft timing ([`config`]) and early elections when a leading
//! node dies ([`failover`]).

pub mod config;
pub mod failover;
pub mod network;
pub mod service;
