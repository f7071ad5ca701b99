//! Raft plumbing shared by every group: the outgoing network ([`network`]), the incoming gRPC
//! service ([`service`]) and the per-kind Raft timing ([`config`]).

pub mod config;
pub mod network;
pub mod service;
