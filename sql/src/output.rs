//! What a statement produces: rows as they stream, or a command tag.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::Result;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
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

impl Output {
    /// One row of text columns, each named by the first of its pair (a `SHOW` of a setting).
    pub fn one_row(cells: &[(&str, String)]) -> Result<Output> {
        let names: Vec<&str> = cells.iter().map(|(name, _)| *name).collect();
        let row: Vec<String> = cells.iter().map(|(_, v)| v.clone()).collect();
        Output::text_rows(&names, &[row])
    }

    /// Rows of text columns named `names` (`SHOW ALL`); every row has one cell per name.
    pub fn text_rows<R: AsRef<[String]>>(names: &[&str], rows: &[R]) -> Result<Output> {
        let schema = Arc::new(Schema::new(
            names
                .iter()
                .map(|name| Field::new(*name, DataType::Utf8, false))
                .collect::<Vec<_>>(),
        ));
        let columns: Vec<ArrayRef> = (0..names.len())
            .map(|c| {
                let cells = rows
                    .iter()
                    .map(|r| r.as_ref().get(c).map_or("", String::as_str));
                Arc::new(StringArray::from_iter_values(cells)) as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let stream = RecordBatchStreamAdapter::new(schema, futures::stream::iter([Ok(batch)]));
        Ok(Output::Rows(
            Box::pin(stream),
            Arc::new(QueryWarnings::default()),
        ))
    }
}
