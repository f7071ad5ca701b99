//! One record, and why a batch of records could not be read: shared by Weir's own batch format
//! (`batch`) and Kafka's (`kafka_batch`), which the log stores side by side.

use bytes::Bytes;

/// Why a batch could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// A Kafka batch that is malformed or uses what Weir does not support.
    #[error("kafka batch: {0}")]
    Kafka(String),
    /// The blob cannot even hold the fixed header of its format.
    #[error("batch is {len} bytes, shorter than its {header}-byte header")]
    TooShort {
        /// Bytes of the blob.
        len: usize,
        /// Bytes of the format's fixed header.
        header: usize,
    },
    /// The first byte names a format this version does not know.
    #[error("batch has unknown format version {0}")]
    BadMagic(u8),
    /// The flags byte has bits set; none are defined, and a flag could change how the body reads.
    #[error("batch has unknown flags {0:#04x}")]
    UnknownFlags(u8),
    /// The body does not match the checksum in the header.
    #[error("batch checksum mismatch: header says {expected:#010x}, body has {actual:#010x}")]
    BadChecksum {
        /// Checksum the header carries.
        expected: u32,
        /// Checksum of the body as received.
        actual: u32,
    },
    /// The header counts zero records.
    #[error("batch holds no records")]
    Empty,
    /// The body ends cleanly after fewer records than the header counts.
    #[error("batch header counts {declared} records but the body holds only {found}")]
    CountMismatch {
        /// Record count in the header.
        declared: u32,
        /// Whole records found in the body.
        found: u32,
    },
    /// One record cannot be read within the body.
    #[error("record {index} of the batch (at byte {at}) is malformed: {problem}")]
    BadRecord {
        /// Position of the record in the batch, from 0.
        index: u32,
        /// Byte position in the batch where the record starts.
        at: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// Bytes follow the last record the header counts.
    #[error("batch has {extra} bytes after the last of its {count} records")]
    TrailingBytes {
        /// Record count in the header.
        count: u32,
        /// Bytes left over.
        extra: usize,
    },
    /// The first record's timestamp is not the header's first timestamp.
    #[error(
        "batch header says the first timestamp is {header} but the first record's is {record}"
    )]
    FirstTimestamp {
        /// First timestamp in the header.
        header: i64,
        /// Timestamp of the first record.
        record: i64,
    },
    /// The header's largest timestamp is not the records' largest; retention trusts the header.
    #[error(
        "batch header says the largest timestamp is {header} but the records' largest is {records}"
    )]
    MaxTimestamp {
        /// Largest timestamp in the header.
        header: i64,
        /// Largest timestamp of the records.
        records: i64,
    },
}

/// One record as producers write it and consumers read it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Optional key (used for partitioning by producers).
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Event time in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Free-form headers.
    pub headers: Vec<(Bytes, Bytes)>,
}
