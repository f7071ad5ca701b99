//! Arrow record batches built cell by cell: from rows of values, or straight from rows as the
//! region store keeps them (on the node that holds them, so a scan ships Arrow, not rows), and
//! carried between nodes in Arrow's IPC stream format.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, Int8Builder, StringBuilder,
    TimestampMicrosecondBuilder, UInt64Builder,
};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::arrow::record_batch::{RecordBatch, RecordBatchOptions};
use datafusion::error::{DataFusionError, Result};
use weir_proto::table::row::decode_cell_ref;
use weir_proto::table::{key, Cell, Column, ColumnType, TableSchema, Value};

/// The builder of one column's array, typed by the column.
enum Builder {
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder),
    Boolean(BooleanBuilder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
    Date32(Date32Builder),
    Timestamp(TimestampMicrosecondBuilder),
}

fn mismatch(col: &Column, cell: Cell<'_>) -> DataFusionError {
    DataFusionError::Internal(format!(
        "column '{}' ({}) holds a value of another type: {cell:?}",
        col.name, col.ty
    ))
}

fn narrow<T: TryFrom<i64>>(col: &Column, v: i64) -> Result<T> {
    T::try_from(v).map_err(|_| {
        DataFusionError::Internal(format!(
            "column '{}' ({}) holds {v}, out of its range",
            col.name, col.ty
        ))
    })
}

impl Builder {
    fn new(ty: ColumnType, capacity: usize) -> Result<Builder> {
        Ok(match ty {
            ColumnType::Int8 => Builder::Int8(Int8Builder::with_capacity(capacity)),
            ColumnType::Int16 => Builder::Int16(Int16Builder::with_capacity(capacity)),
            ColumnType::Int32 => Builder::Int32(Int32Builder::with_capacity(capacity)),
            ColumnType::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
            ColumnType::UInt64 => Builder::UInt64(UInt64Builder::with_capacity(capacity)),
            ColumnType::Float32 => Builder::Float32(Float32Builder::with_capacity(capacity)),
            ColumnType::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
            ColumnType::Decimal { precision, scale } => Builder::Decimal(
                Decimal128Builder::with_capacity(capacity)
                    .with_precision_and_scale(precision, scale as i8)?,
            ),
            ColumnType::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(capacity)),
            ColumnType::Utf8 => {
                Builder::Utf8(StringBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnType::Binary => {
                Builder::Binary(BinaryBuilder::with_capacity(capacity, capacity * 16))
            }
            ColumnType::Date32 => Builder::Date32(Date32Builder::with_capacity(capacity)),
            ColumnType::Timestamp => Builder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
            ),
        })
    }

    fn append(&mut self, col: &Column, cell: Cell<'_>) -> Result<()> {
        match (self, cell) {
            (Builder::Int8(b), Cell::Null) => b.append_null(),
            (Builder::Int16(b), Cell::Null) => b.append_null(),
            (Builder::Int32(b), Cell::Null) => b.append_null(),
            (Builder::Int64(b), Cell::Null) => b.append_null(),
            (Builder::UInt64(b), Cell::Null) => b.append_null(),
            (Builder::Float32(b), Cell::Null) => b.append_null(),
            (Builder::Float64(b), Cell::Null) => b.append_null(),
            (Builder::Decimal(b), Cell::Null) => b.append_null(),
            (Builder::Boolean(b), Cell::Null) => b.append_null(),
            (Builder::Utf8(b), Cell::Null) => b.append_null(),
            (Builder::Binary(b), Cell::Null) => b.append_null(),
            (Builder::Date32(b), Cell::Null) => b.append_null(),
            (Builder::Timestamp(b), Cell::Null) => b.append_null(),
            (Builder::Int8(b), Cell::Int(v)) => b.append_value(narrow(col, v)?),
            (Builder::Int16(b), Cell::Int(v)) => b.append_value(narrow(col, v)?),
            (Builder::Int32(b), Cell::Int(v)) => b.append_value(narrow(col, v)?),
            (Builder::Int64(b), Cell::Int(v)) => b.append_value(v),
            (Builder::UInt64(b), Cell::UInt(v)) => b.append_value(v),
            (Builder::Float32(b), Cell::Float(v)) => b.append_value(v as f32),
            (Builder::Float64(b), Cell::Float(v)) => b.append_value(v),
            (Builder::Decimal(b), Cell::Decimal(v)) => b.append_value(v),
            (Builder::Boolean(b), Cell::Bool(v)) => b.append_value(v),
            (Builder::Utf8(b), Cell::Str(v)) => b.append_value(v),
            (Builder::Binary(b), Cell::Bytes(v)) => b.append_value(v),
            (Builder::Date32(b), Cell::Date(v)) => b.append_value(v),
            (Builder::Timestamp(b), Cell::Timestamp(v)) => b.append_value(v),
            (_, other) => return Err(mismatch(col, other)),
        }
        Ok(())
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Int8(b) => Arc::new(b.finish()),
            Builder::Int16(b) => Arc::new(b.finish()),
            Builder::Int32(b) => Arc::new(b.finish()),
            Builder::Int64(b) => Arc::new(b.finish()),
            Builder::UInt64(b) => Arc::new(b.finish()),
            Builder::Float32(b) => Arc::new(b.finish()),
            Builder::Float64(b) => Arc::new(b.finish()),
            Builder::Decimal(b) => Arc::new(b.finish()),
            Builder::Boolean(b) => Arc::new(b.finish()),
            Builder::Utf8(b) => Arc::new(b.finish()),
            Builder::Binary(b) => Arc::new(b.finish()),
            Builder::Date32(b) => Arc::new(b.finish()),
            Builder::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds one record batch row by row, each cell appended to its column's array.
pub struct BatchBuilder {
    columns: Vec<Column>,
    builders: Vec<Builder>,
    rows: usize,
}

impl BatchBuilder {
    /// A builder of batches whose columns are `columns`, in order, sized for `capacity` rows.
    pub fn new(columns: &[Column], capacity: usize) -> Result<BatchBuilder> {
        Ok(BatchBuilder {
            columns: columns.to_vec(),
            builders: columns
                .iter()
                .map(|c| Builder::new(c.ty, capacity))
                .collect::<Result<_>>()?,
            rows: 0,
        })
    }

    /// Appends `cell` to column `i`; the caller appends one cell to every column per row and
    /// then calls [`BatchBuilder::end_row`].
    pub fn append(&mut self, i: usize, cell: Cell<'_>) -> Result<()> {
        match (self.builders.get_mut(i), self.columns.get(i)) {
            (Some(b), Some(col)) => b.append(col, cell),
            _ => Err(DataFusionError::Internal(format!(
                "a batch of {} columns has no column {i}",
                self.columns.len()
            ))),
        }
    }

    /// Counts the row whose cells were appended.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    /// Rows appended so far.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The batch of the rows appended, with schema `schema` (whose fields are the columns').
    pub fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let arrays = self.builders.iter_mut().map(Builder::finish).collect();
        let options = RecordBatchOptions::new().with_row_count(Some(self.rows));
        self.rows = 0;
        Ok(RecordBatch::try_new_with_options(
            schema.clone(),
            arrays,
            &options,
        )?)
    }
}

/// A record batch of `rows`, whose values are those of `columns` in order, with schema `schema`.
pub fn rows_to_batch(
    schema: &SchemaRef,
    columns: &[Column],
    rows: &[Vec<Value>],
) -> Result<RecordBatch> {
    let mut b = BatchBuilder::new(columns, rows.len())?;
    for row in rows {
        if row.len() < columns.len() {
            return Err(DataFusionError::Internal(format!(
                "a row of {} values for {} columns",
                row.len(),
                columns.len()
            )));
        }
        for (i, v) in row.iter().take(columns.len()).enumerate() {
            b.append(i, v.as_cell())?;
        }
        b.end_row();
    }
    b.finish(schema)
}

/// Builds a batch of a table's stored rows (key and value bytes as the region store keeps them),
/// holding the columns `projection` (indexes into the table's columns) in that order. The cells
/// are copied from the stored bytes into the arrays without an intermediate row of values.
pub struct StoredRows {
    table: TableSchema,
    /// For each table column: the output positions it fills (a column may be asked twice).
    targets: Vec<Vec<usize>>,
    /// Table columns that are not part of the key, in stored order.
    value_columns: Vec<usize>,
    /// Whether any key column is asked for (else keys are not decoded).
    wants_key: bool,
    builder: BatchBuilder,
    schema: SchemaRef,
}

impl StoredRows {
    /// A builder for rows of `table`, giving the columns at `projection`.
    pub fn new(table: &TableSchema, projection: &[usize], capacity: usize) -> Result<StoredRows> {
        let mut targets = vec![Vec::new(); table.columns.len()];
        let mut columns = Vec::with_capacity(projection.len());
        for (out, i) in projection.iter().enumerate() {
            let col = table
                .columns
                .get(*i)
                .ok_or_else(|| DataFusionError::Internal(format!("the table has no column {i}")))?;
            targets[*i].push(out);
            columns.push(col.clone());
        }
        let schema = crate::types::arrow_schema(&TableSchema {
            columns: columns.clone(),
            primary_key: Vec::new(),
        });
        Ok(StoredRows {
            wants_key: table.primary_key.iter().any(|k| !targets[*k].is_empty()),
            value_columns: table.value_columns(),
            table: table.clone(),
            targets,
            builder: BatchBuilder::new(&columns, capacity)?,
            schema,
        })
    }

    /// Appends one stored row.
    pub fn push(&mut self, stored_key: &[u8], stored_value: &[u8]) -> Result<()> {
        let corrupt = |e: weir_proto::table::TableError| {
            DataFusionError::Internal(format!("stored row does not decode: {e}"))
        };
        if self.wants_key {
            let values = key::decode_key(&self.table, stored_key).map_err(corrupt)?;
            for (k, v) in self.table.primary_key.iter().zip(&values) {
                for out in &self.targets[*k] {
                    self.builder.append(*out, v.as_cell())?;
                }
            }
        }
        let mut rest = stored_value;
        for i in &self.value_columns {
            let cell = decode_cell_ref(&mut rest).map_err(corrupt)?;
            for out in &self.targets[*i] {
                self.builder.append(*out, cell)?;
            }
        }
        if !rest.is_empty() {
            return Err(DataFusionError::Internal(format!(
                "stored row does not decode: {} bytes left after the row",
                rest.len()
            )));
        }
        self.builder.end_row();
        Ok(())
    }

    /// The batch of the rows pushed.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.builder.finish(&self.schema)
    }
}

/// A batch in Arrow's IPC stream format (its schema, then the batch).
pub fn to_ipc(batch: &RecordBatch) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(batch.get_array_memory_size() + 1024);
    {
        let mut w = StreamWriter::try_new(&mut out, &batch.schema())?;
        w.write(batch)?;
        w.finish()?;
    }
    Ok(out)
}

/// The batch of an IPC stream written by [`to_ipc`] (several are concatenated; none is an empty
/// batch of the stream's schema).
pub fn from_ipc(bytes: &[u8]) -> Result<RecordBatch> {
    let reader = StreamReader::try_new(bytes, None)?;
    let schema = reader.schema();
    let batches = reader.collect::<std::result::Result<Vec<_>, _>>()?;
    match batches.len() {
        0 => Ok(RecordBatch::new_empty(schema)),
        1 => Ok(batches
            .into_iter()
            .next()
            .unwrap_or_else(|| RecordBatch::new_empty(schema))),
        _ => Ok(datafusion::arrow::compute::concat_batches(
            &schema, &batches,
        )?),
    }
}

/// `batch` under `schema` (the same columns, perhaps differently named fields or metadata).
pub fn with_schema(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    RecordBatch::try_new_with_options(schema.clone(), batch.columns().to_vec(), &options).map_err(
        |e| DataFusionError::Internal(format!("a scan page does not fit the table's schema: {e}")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_proto::table::row::encode_row;

    #[test]
    fn stored_rows_become_the_same_batch_as_their_values() {
        let schema = TableSchema::parse(
            "name VARCHAR, id BIGINT, price DECIMAL(10,2), seen TIMESTAMP, tag VARBINARY, n INT",
            &["id".into()],
        )
        .unwrap();
        let rows = vec![
            vec![
                Value::Str("a".into()),
                Value::Int(1),
                Value::Decimal(1234),
                Value::Timestamp(5),
                Value::Bytes(vec![1, 2]),
                Value::Int(-7),
            ],
            vec![
                Value::Null,
                Value::Int(2),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
            ],
        ];
        // Columns out of order and one asked twice.
        let projection = [5, 1, 0, 2, 1, 3, 4];
        let mut stored = StoredRows::new(&schema, &projection, 2).unwrap();
        for r in &rows {
            let (k, v) = encode_row(&schema, r.clone()).unwrap();
            stored.push(&k, &v).unwrap();
        }
        let got = stored.finish().unwrap();
        let columns: Vec<Column> = projection
            .iter()
            .map(|i| schema.columns[*i].clone())
            .collect();
        let projected: Vec<Vec<Value>> = rows
            .iter()
            .map(|r| projection.iter().map(|i| r[*i].clone()).collect())
            .collect();
        let want = rows_to_batch(&got.schema(), &columns, &projected).unwrap();
        assert_eq!(got, want);
        let back = from_ipc(&to_ipc(&got).unwrap()).unwrap();
        assert_eq!(back, want);
        // A corrupt row is an error naming it, not a panic.
        let (k, mut v) = encode_row(&schema, rows[0].clone()).unwrap();
        v.push(0);
        assert!(stored
            .push(&k, &v)
            .unwrap_err()
            .to_string()
            .contains("left after"));
        // No columns at all: only the row count.
        let mut none = StoredRows::new(&schema, &[], 1).unwrap();
        let (k, v) = encode_row(&schema, rows[0].clone()).unwrap();
        none.push(&k, &v).unwrap();
        let b = none.finish().unwrap();
        assert_eq!((b.num_rows(), b.num_columns()), (1, 0));
        let back = from_ipc(&to_ipc(&b).unwrap()).unwrap();
        assert_eq!(back.num_rows(), 1);
    }
}
