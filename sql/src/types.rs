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
use weir_proto::table::{Column, ColumnType, TableError, TableSchema, Value};

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

/// The value at `row` of an array already cast to the column's Arrow type.
fn value_at(a: &ArrayRef, row: usize, col: &Column) -> Result<Value> {
    if a.is_null(row) {
        return Ok(Value::Null);
    }
    Ok(match col.ty {
        ColumnType::Int8 => Value::Int(downcast::<Int8Array>(a, col)?.value(row).into()),
        ColumnType::Int16 => Value::Int(downcast::<Int16Array>(a, col)?.value(row).into()),
        ColumnType::Int32 => Value::Int(downcast::<Int32Array>(a, col)?.value(row).into()),
        ColumnType::Int64 => Value::Int(downcast::<Int64Array>(a, col)?.value(row)),
        ColumnType::UInt64 => Value::UInt(downcast::<UInt64Array>(a, col)?.value(row)),
        ColumnType::Float32 => Value::Float(downcast::<Float32Array>(a, col)?.value(row).into()),
        ColumnType::Float64 => Value::Float(downcast::<Float64Array>(a, col)?.value(row)),
        ColumnType::Decimal { .. } => {
            Value::Decimal(downcast::<Decimal128Array>(a, col)?.value(row))
        }
        ColumnType::Boolean => Value::Bool(downcast::<BooleanArray>(a, col)?.value(row)),
        ColumnType::Utf8 => Value::Str(downcast::<StringArray>(a, col)?.value(row).to_string()),
        ColumnType::Binary => Value::Bytes(downcast::<BinaryArray>(a, col)?.value(row).to_vec()),
        ColumnType::Date32 => Value::Date(downcast::<Date32Array>(a, col)?.value(row)),
        ColumnType::Timestamp => {
            Value::Timestamp(downcast::<TimestampMicrosecondArray>(a, col)?.value(row))
        }
    })
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
        let v = value_at(&self.arrays[column][batch], row - self.starts[batch], col)?;
        v.check(col).map_err(|error| {
            DataFusionError::External(Box::new(RowError {
                row: self.first_row + row as u64 + 1,
                error,
            }))
        })
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
