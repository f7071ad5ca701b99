//! Tables: typed columns, a primary key, and the byte encodings rows are stored under.
//!
//! - [`types`]: column types (the Arrow types users need), columns and table schemas, parsed from
//!   `'id BIGINT, name VARCHAR'`.
//! - [`value`]: one typed value; parsing from text and JSON, printing, and the wire form.
//! - [`key`]: the order-preserving (memcomparable) encoding of primary keys, so RocksDB's byte order
//!   is the key order and a range scan returns rows in key order.
//! - [`row`]: the self-describing encoding of a row's other columns, readable without the schema.
//! - [`merge`]: merges, the idempotent updates of a row's aggregate columns by several writers.
//!
//! Client and server share this module: the client encodes keys to route them to regions, the
//! server encodes them to store them.

pub mod key;
pub mod merge;
pub mod row;
pub mod types;
pub mod value;

pub use types::{Column, ColumnType, TableSchema};
pub use value::{Cell, Value};

/// Largest encoded primary key (HBase and TiKV bound row keys likewise).
pub const MAX_KEY_BYTES: usize = 8 << 10;
/// Largest encoded row.
pub const MAX_ROW_BYTES: usize = 4 << 20;
/// What follows a stream job's name in the names of the tables it keeps its state in
/// (`<job>.distinct.<column>`): they cannot be dropped while the job exists.
pub const JOB_TABLES: &str = ".distinct.";

/// Why a value, key, row or schema was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TableError {
    /// The schema text or definition is invalid.
    #[error("{0}")]
    Schema(String),
    /// A value does not fit its column's type.
    #[error("column '{column}': {reason}")]
    Value {
        /// The column.
        column: String,
        /// What is wrong.
        reason: String,
    },
    /// A column that does not take NULL was given NULL.
    #[error("column '{column}': NULL is not allowed")]
    Null {
        /// The column.
        column: String,
    },
    /// Stored or sent bytes do not decode.
    #[error("bad encoding: {0}")]
    Encoding(String),
}

/// Result type of table encodings.
pub type Result<T> = std::result::Result<T, TableError>;
