//! weir-storage: everything a node keeps on disk, and nothing that talks to the network.
//!
//! - [`engine`]: the node's one RocksDB (column families, key layout) and group commit.
//! - [`types`]: the Raft type configuration and the commands every group replicates.
//! - [`log_store`]: openraft's log storage for one group, over the shared engine.
//! - [`header`]: what every group keeps next to its data, the last entry applied among it.
//! - [`state_machine`]: the state machine of one group (catalog, partition, offsets or region), applying
//!   committed commands atomically with the applied index.
//! - [`partition`]: how a log partition stores its batches and reads them back.
//! - [`region`]: how a region stores its rows, reads them in consistent snapshots, and splits.
//! - [`catalog`]: the cluster catalog replicated by the metadata group.
//! - [`snapshot`]: snapshot files: built from a group's data, streamed in chunks, installed.

pub mod catalog;
pub mod engine;
pub mod header;
pub mod log_cache;
pub mod log_store;
pub mod partition;
pub mod region;
pub mod runtime;
pub mod snapshot;
pub mod state_machine;
pub mod types;

pub use engine::Engine;
pub use log_store::LogStore;
pub use state_machine::{GroupWatch, StateMachine};
pub use types::{Request, Response, TypeConfig};

/// Errors of the storage layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// RocksDB failed.
    #[error("rocksdb: {0}")]
    Rocks(String),
    /// A file operation failed.
    #[error("io: {0}")]
    Io(String),
    /// Stored bytes do not decode.
    #[error("corrupt data: {0}")]
    Corrupt(String),
}

impl From<rocksdb::Error> for StorageError {
    fn from(e: rocksdb::Error) -> Self {
        StorageError::Rocks(e.into_string())
    }
}

impl From<std::io::Error> for StorageError {
    fn from(e: std::io::Error) -> Self {
        StorageError::Io(e.to_string())
    }
}

impl From<bincode::Error> for StorageError {
    fn from(e: bincode::Error) -> Self {
        StorageError::Corrupt(e.to_string())
    }
}

impl From<StorageError> for std::io::Error {
    fn from(e: StorageError) -> Self {
        std::io::Error::other(e.to_string())
    }
}

/// Encodes a value with the storage layer's binary encoding.
pub fn encode<T: serde::Serialize>(v: &T) -> Result<Vec<u8>, StorageError> {
    Ok(bincode::serialize(v)?)
}

/// Decodes a value written by [`encode`].
pub fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, StorageError> {
    Ok(bincode::deserialize(b)?)
}
