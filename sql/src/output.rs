//! What a statement produces: rows as they stream, or a command tag.

use std::sync::Arc;

use datafusion::physical_plan::SendableRecordBatchStream;

use crate::warnings::QueryWarnings;

/// What one statement produced.
pub enum Output {
    /// Rows (a query, or the count of rows an `INSERT` or `DELETE` wrote), and what the
    /// statement has to report besides them once they are read (records it skipped).
    Rows(SendableRecordBatchStream, Arc<QueryWarnings>),
    /// A statement without rows, with its command tag (`CREATE TABLE`, `DROP TABLE`).
    Done(String),
}
