//! Weir's column types and values as Arrow types and arrays, both ways.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result};
use weir_proto::table::row::EncodedRows;
use weir_proto::table::{Cell, Column, ColumnType, TableError, TableSchema, Value};

/// A row a statement would write that its table refuses (a NULL in a NOT NULL column, a value
/// out of its column's range), with its number in the statement.
#[derive(Debug, thiserror::Error)]
#[error("row {row}: {error}")]
pub struct RowError {
    /// The row's number in the statement, from 1.
    pub row: u64,
    /// What the table refused about it.
    pub error: TableError,
}

/// The Arrow type of a column type.
pub fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Int8 => DataType::Int8,
        ColumnType::Int16 => DataType::Int16,
        ColumnType::Int32 => DataType::Int32,
        ColumnType::Int64 => DataType::Int64,
        ColumnType::UInt64 => DataType::UInt64,
        ColumnType::Float32 => DataType::Float32,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Decimal { precision, scale } => DataType::Decimal128(precision, scale as i8),
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Binary => DataType::Binary,
        ColumnType::Date32 => DataType::Date32,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The column type a table column of this Arrow type gets, or an error naming the type.
pub fn column_type(name: &str, dt: &DataType) -> Result<ColumnType> {
    Ok(match dt {
        DataType::Int8 => ColumnType::Int8,
        DataType::Int16 => ColumnType::Int16,
        DataType::Int32 => ColumnType::Int32,
        DataType::Int64 => ColumnType::Int64,
        DataType::UInt64 => ColumnType::UInt64,
        DataType::Float32 => ColumnType::Float32,
        DataType::Float64 => ColumnType::Float64,
        DataType::Decimal128(p, s) if *s >= 0 => ColumnType::Decimal {
            precision: *p,
            scale: *s as u8,
        },
        DataType::Boolean => ColumnType::Boolean,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ColumnType::Utf8,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ColumnType::Binary,
        DataType::Date32 => ColumnType::Date32,
        DataType::Timestamp(_, _) => ColumnType::Timestamp,
        other => {
            return Err(DataFusionError::Plan(format!(
                "column '{name}': type {other} cannot be stored in a table (use one of TINYINT, \
                 SMALLINT, INT, BIGINT, BIGINT UNSIGNED, REAL, DOUBLE, DECIMAL(p,s), BOOLEAN, \
                 VARCHAR, BYTEA, DATE, TIMESTAMP)"
            )))
        }
    })
}

/// `message` with the Arrow type names DataFusion's errors use (`Utf8`, `Int64`,
/// `Decimal128(10, 2)`, `Timestamp(µs, "UTC")`) written as the SQL types a statement names
/// (`VARCHAR`, `BIGINT`, `DECIMAL(10,2)`, `TIMESTAMP`); quoted identifiers and names Weir has no
/// SQL type for are left as they are.
pub fn sql_type_names(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(c) = rest.chars().next() {
        if c == '"' {
            // A quoted identifier: a column may be named `Int64`.
            let end = rest[1..].find('"').map_or(rest.len(), |e| e + 2);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            continue;
        }
        let word = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        if word == 0 {
            out.push(c);
            rest = &rest[c.len_utf8()..];
            continue;
        }
        if !c.is_ascii_uppercase() {
            out.push_str(&rest[..word]);
            rest = &rest[word..];
            continue;
        }
        // A parameterised type runs to its closing parenthesis.
        let end = match rest[word..].starts_with('(') {
            true => rest[word..].find(')').map_or(word, |e| word + e + 1),
            false => word,
        };
        let sql = rest[..end]
            .parse::<DataType>()
            .ok()
            .and_then(|dt| column_type("", &dt).ok());
        match sql {
            Some(ty) => {
                out.push_str(&ty.sql_name());
                rest = &rest[end..];
            }
            None => {
                out.push_str(&rest[..word]);
                rest = &rest[word..];
            }
        }
    }
    out
}

/// The Arrow schema of a table (all columns, in order). Every field is nullable to DataFusion:
/// rows are checked against the table's own constraints when written, which names the row and
/// column that break them (DataFusion's check names only a position in its input).
pub fn arrow_schema(schema: &TableSchema) -> SchemaRef {
    Arc::new(Schema::new(
        schema
            .columns
            .iter()
            .map(|c| Field::new(&c.name, arrow_type(c.ty), true))
            .collect::<Vec<_>>(),
    ))
}

fn downcast<'a, T: 'static>(a: &'a ArrayRef, col: &Column) -> Result<&'a T> {
    a.as_any().downcast_ref::<T>().ok_or_else(|| {
        DataFusionError::Internal(format!("column '{}': unexpected array type", col.name))
    })
}

/// One array already cast to its column's Arrow type, downcast once, read cell by cell without
/// copying.
enum TypedCells<'a> {
    Int8(&'a Int8Array),
    Int16(&'a Int16Array),
    Int32(&'a Int32Array),
    Int64(&'a Int64Array),
    UInt64(&'a UInt64Array),
    Float32(&'a Float32Array),
    Float64(&'a Float64Array),
    Decimal(&'a Decimal128Array),
    Boolean(&'a BooleanArray),
    Utf8(&'a StringArray),
    Binary(&'a BinaryArray),
    Date32(&'a Date32Array),
    Timestamp(&'a TimestampMicrosecondArray),
}

impl<'a> TypedCells<'a> {
    /// The array `a` of column `col`, which must already have the column's Arrow type.
    fn of(a: &'a ArrayRef, col: &Column) -> Result<TypedCells<'a>> {
        Ok(match col.ty {
            ColumnType::Int8 => TypedCells::Int8(downcast(a, col)?),
            ColumnType::Int16 => TypedCells::Int16(downcast(a, col)?),
            ColumnType::Int32 => TypedCells::Int32(downcast(a, col)?),
            ColumnType::Int64 => TypedCells::Int64(downcast(a, col)?),
            ColumnType::UInt64 => TypedCells::UInt64(downcast(a, col)?),
            ColumnType::Float32 => TypedCells::Float32(downcast(a, col)?),
            ColumnType::Float64 => TypedCells::Float64(downcast(a, col)?),
            ColumnType::Decimal { .. } => TypedCells::Decimal(downcast(a, col)?),
            ColumnType::Boolean => TypedCells::Boolean(downcast(a, col)?),
            ColumnType::Utf8 => TypedCells::Utf8(downcast(a, col)?),
            ColumnType::Binary => TypedCells::Binary(downcast(a, col)?),
            ColumnType::Date32 => TypedCells::Date32(downcast(a, col)?),
            ColumnType::Timestamp => TypedCells::Timestamp(downcast(a, col)?),
        })
    }

    /// The cell at `row`.
    fn cell(&self, row: usize) -> Cell<'a> {
        fn at<A: Array>(a: &A, row: usize, get: impl FnOnce(&A) -> Cell<'_>) -> Cell<'_> {
            if a.is_null(row) {
                Cell::Null
            } else {
                get(a)
            }
        }
        match *self {
            TypedCells::Int8(a) => at(a, row, |a| Cell::Int(a.value(row).into())),
            TypedCells::Int16(a) => at(a, row, |a| Cell::Int(a.value(row).into())),
            TypedCells::Int32(a) => at(a, row, |a| Cell::Int(a.value(row).into())),
            TypedCells::Int64(a) => at(a, row, |a| Cell::Int(a.value(row))),
            TypedCells::UInt64(a) => at(a, row, |a| Cell::UInt(a.value(row))),
            TypedCells::Float32(a) => at(a, row, |a| Cell::Float(a.value(row).into())),
            TypedCells::Float64(a) => at(a, row, |a| Cell::Float(a.value(row))),
            TypedCells::Decimal(a) => at(a, row, |a| Cell::Decimal(a.value(row))),
            TypedCells::Boolean(a) => at(a, row, |a| Cell::Bool(a.value(row))),
            TypedCells::Utf8(a) => at(a, row, |a| Cell::Str(a.value(row))),
            TypedCells::Binary(a) => at(a, row, |a| Cell::Bytes(a.value(row))),
            TypedCells::Date32(a) => at(a, row, |a| Cell::Date(a.value(row))),
            TypedCells::Timestamp(a) => at(a, row, |a| Cell::Timestamp(a.value(row))),
        }
    }
}

/// The rows of `batch` (whose columns are `columns`, in order) as values, each checked against
/// its column; an error names the first row (counting from `first_row`) and column that do not fit.
pub fn batch_to_rows(
    batch: &RecordBatch,
    columns: &[Column],
    first_row: u64,
) -> Result<Vec<Vec<Value>>> {
    SinkCells::new(std::slice::from_ref(batch), columns, first_row)?.to_rows()
}

/// Rows a statement writes, as the columns of the table they go to: each array cast once to its
/// column's type, each cell read and checked only when asked for, so that a reader of a few
/// cells per row (a job folding aggregates) builds no row of values.
pub struct SinkCells<'c> {
    columns: &'c [Column],
    /// Per column, its arrays (one per batch), cast.
    arrays: Vec<Vec<ArrayRef>>,
    /// Where each batch starts among the rows.
    starts: Vec<usize>,
    rows: usize,
    first_row: u64,
}

impl<'c> SinkCells<'c> {
    /// The rows of `batches` (each with the columns `columns`, in order), numbered from
    /// `first_row` + 1 in errors.
    pub fn new(batches: &[RecordBatch], columns: &'c [Column], first_row: u64) -> Result<Self> {
        let mut arrays = vec![Vec::with_capacity(batches.len()); columns.len()];
        let mut starts = Vec::with_capacity(batches.len());
        let mut rows = 0;
        for batch in batches {
            if batch.num_columns() != columns.len() {
                return Err(DataFusionError::Plan(format!(
                    "{} values per row given, the table has {} columns",
                    batch.num_columns(),
                    columns.len()
                )));
            }
            for ((c, a), out) in columns.iter().zip(batch.columns()).zip(&mut arrays) {
                out.push(cast(a, &arrow_type(c.ty))?);
            }
            starts.push(rows);
            rows += batch.num_rows();
        }
        Ok(SinkCells {
            columns,
            arrays,
            starts,
            rows,
            first_row,
        })
    }

    /// How many rows there are.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Every row as values, each checked against its column; an error names the first row and
    /// column that do not fit.
    pub fn to_rows(&self) -> Result<Vec<Vec<Value>>> {
        (0..self.rows)
            .map(|r| (0..self.columns.len()).map(|c| self.value(r, c)).collect())
            .collect()
    }

    /// The value of `row` in `column`, checked against the column; an error names the row and
    /// the column.
    pub fn value(&self, row: usize, column: usize) -> Result<Value> {
        let batch = self.starts.partition_point(|s| *s <= row) - 1;
        let col = &self.columns[column];
        let cell = TypedCells::of(&self.arrays[column][batch], col)?.cell(row - self.starts[batch]);
        cell.to_value()
            .check(col)
            .map_err(|error| self.row_error(row, error))
    }

    /// Encodes rows `rows` (numbered as [`SinkCells::rows`] counts them) into `out` as `schema`
    /// stores them, straight from the arrays; an error names the first row that does not fit,
    /// and adds nothing of it.
    pub fn encode(
        &self,
        schema: &TableSchema,
        rows: std::ops::Range<usize>,
        out: &mut EncodedRows,
    ) -> Result<()> {
        let mut cells = Vec::with_capacity(self.columns.len());
        for (batch, &start) in self.starts.iter().enumerate() {
            let end = self.starts.get(batch + 1).copied().unwrap_or(self.rows);
            let (from, to) = (rows.start.max(start), rows.end.min(end));
            if from >= to {
                continue;
            }
            let readers = self
                .columns
                .iter()
                .zip(&self.arrays)
                .map(|(col, arrays)| TypedCells::of(&arrays[batch], col))
                .collect::<Result<Vec<_>>>()?;
            for row in from..to {
                cells.clear();
                cells.extend(readers.iter().map(|r| r.cell(row - start)));
                out.push(schema, &cells)
                    .map_err(|error| self.row_error(row, error))?;
            }
        }
        Ok(())
    }

    /// The error of `row`, numbered in the statement.
    fn row_error(&self, row: usize, error: TableError) -> DataFusionError {
        DataFusionError::External(Box::new(RowError {
            row: self.first_row + row as u64 + 1,
            error,
        }))
    }
}

/// A literal as a value of `col`, when it is one (filters narrow scans with it: to key ranges,
/// and to rows where they are stored).
pub fn literal_value(v: &ScalarValue, col: &Column) -> Option<Value> {
    let value = match v {
        ScalarValue::Int8(Some(x)) => Value::Int((*x).into()),
        ScalarValue::Int16(Some(x)) => Value::Int((*x).into()),
        ScalarValue::Int32(Some(x)) => Value::Int((*x).into()),
        ScalarValue::Int64(Some(x)) => Value::Int(*x),
        ScalarValue::UInt8(Some(x)) => Value::Int((*x).into()),
        ScalarValue::UInt16(Some(x)) => Value::Int((*x).into()),
        ScalarValue::UInt32(Some(x)) => Value::Int((*x).into()),
        ScalarValue::UInt64(Some(x)) => match col.ty {
            ColumnType::UInt64 => Value::UInt(*x),
            _ => Value::Int(i64::try_from(*x).ok()?),
        },
        ScalarValue::Utf8(Some(s))
        | ScalarValue::LargeUtf8(Some(s))
        | ScalarValue::Utf8View(Some(s)) => Value::Str(s.clone()),
        ScalarValue::Boolean(Some(b)) => Value::Bool(*b),
        ScalarValue::Float64(Some(f)) => Value::Float(*f),
        ScalarValue::Float32(Some(f)) => Value::Float(f64::from(*f)),
        ScalarValue::Date32(Some(d)) => Value::Date(*d),
        ScalarValue::TimestampMicrosecond(Some(t), _) => Value::Timestamp(*t),
        ScalarValue::Decimal128(Some(x), _, s) => match col.ty {
            ColumnType::Decimal { scale, .. } if scale as i8 == *s => Value::Decimal(*x),
            _ => return None,
        },
        _ => return None,
    };
    // Integers given for a UInt64 column.
    let value = match (value, col.ty) {
        (Value::Int(x), ColumnType::UInt64) => Value::UInt(u64::try_from(x).ok()?),
        (v, _) => v,
    };
    value.check(col).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_cells_read_rows_across_batches_and_number_them_in_errors() {
        let columns = vec![
            Column {
                name: "k".into(),
                ty: ColumnType::Int32,
                nullable: false,
            },
            Column {
                name: "v".into(),
                ty: ColumnType::Utf8,
                nullable: true,
            },
        ];
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
        ]));
        let batch = |k: Vec<Option<i64>>, v: Vec<Option<&str>>| {
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from(k)) as ArrayRef,
                    Arc::new(StringArray::from(v)) as ArrayRef,
                ],
            )
            .unwrap()
        };
        let batches = [
            batch(vec![Some(1), Some(2)], vec![Some("a"), None]),
            batch(vec![], vec![]),
            batch(vec![Some(3), None], vec![Some("c"), Some("d")]),
        ];
        let cells = SinkCells::new(&batches, &columns, 10).unwrap();
        assert_eq!(cells.rows(), 4);
        assert_eq!(cells.value(2, 0).unwrap(), Value::Int(3));
        assert_eq!(cells.value(1, 1).unwrap(), Value::Null);
        assert_eq!(cells.value(3, 1).unwrap(), Value::Str("d".into()));
        // Row 4 of these, 14 of the statement: a NULL in a NOT NULL column.
        let e = cells.value(3, 0).unwrap_err().to_string();
        assert!(e.contains("row 14") && e.contains("'k'"), "{e}");
        assert!(cells.to_rows().is_err());
        let first = SinkCells::new(&batches[..1], &columns, 0).unwrap();
        assert_eq!(
            first.to_rows().unwrap(),
            vec![
                vec![Value::Int(1), Value::Str("a".into())],
                vec![Value::Int(2), Value::Null]
            ]
        );
    }

    #[test]
    fn sink_cells_encode_rows_as_the_table_stores_them_and_number_errors() {
        let schema =
            TableSchema::parse("k INT NOT NULL, v VARCHAR, d DATE", &["k".into()]).unwrap();
        let arrow = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("v", DataType::Utf8, true),
            Field::new("d", DataType::Date32, true),
        ]));
        let batch = |k: Vec<Option<i64>>, v: Vec<Option<&str>>, d: Vec<Option<i32>>| {
            RecordBatch::try_new(
                arrow.clone(),
                vec![
                    Arc::new(Int64Array::from(k)) as ArrayRef,
                    Arc::new(StringArray::from(v)) as ArrayRef,
                    Arc::new(Date32Array::from(d)) as ArrayRef,
                ],
            )
            .unwrap()
        };
        let batches = [
            batch(
                vec![Some(5), Some(6)],
                vec![Some("x"), None],
                vec![None, Some(3)],
            ),
            batch(
                vec![Some(7), None],
                vec![Some("z"), Some("w")],
                vec![Some(1), None],
            ),
        ];
        let cells = SinkCells::new(&batches, &schema.columns, 100).unwrap();
        // Rows 1..3 span both batches; each is what encode_row writes for its values.
        let mut out = EncodedRows::default();
        cells.encode(&schema, 1..3, &mut out).unwrap();
        let want: Vec<(Vec<u8>, Vec<u8>)> = (1..3)
            .map(|r| {
                let row = (0..3).map(|c| cells.value(r, c).unwrap()).collect();
                weir_proto::table::row::encode_row(&schema, row).unwrap()
            })
            .collect();
        let got: Vec<(Vec<u8>, Vec<u8>)> = out
            .into_rows()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(got, want);
        // Row 4 of these (104 of the statement) has a NULL key: named, and nothing of it added.
        let mut out = EncodedRows::default();
        let e = cells
            .encode(&schema, 2..4, &mut out)
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 104") && e.contains("'k'"), "{e}");
        assert_eq!(out.len(), 1);
        // An integer out of the column's range is refused the same way.
        let wide = [batch(vec![Some(1 << 40)], vec![None], vec![None])];
        let cells = SinkCells::new(&wide, &schema.columns, 0).unwrap();
        let e = cells
            .encode(&schema, 0..1, &mut EncodedRows::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("row 1"), "{e}");
    }

    #[test]
    fn arrow_type_names_in_messages_read_as_sql_types() {
        assert_eq!(
            sql_type_names(
                "No function matches the given name and argument types 'sum(Utf8)'. \
                 Candidate functions: sum(UserDefined)"
            ),
            "No function matches the given name and argument types 'sum(VARCHAR)'. \
             Candidate functions: sum(UserDefined)"
        );
        assert_eq!(
            sql_type_names("Cannot coerce arithmetic expression Utf8View + Int64 to valid types"),
            "Cannot coerce arithmetic expression VARCHAR + BIGINT to valid types"
        );
        assert_eq!(
            sql_type_names("Cannot cast string 'x' to value of Int32 type"),
            "Cannot cast string 'x' to value of INT type"
        );
        assert_eq!(
            sql_type_names("expected Decimal128(10, 2), got Timestamp(µs, \"UTC\") or Date32"),
            "expected DECIMAL(10,2), got TIMESTAMP or DATE"
        );
        // Quoted identifiers, words that are no type, parts of names and types Weir has no SQL
        // name for stay.
        assert_eq!(
            sql_type_names("No field named \"Int64\" in t_Int64 (Error: List(Null), Null)"),
            "No field named \"Int64\" in t_Int64 (Error: List(Null), Null)"
        );
    }
}
