//! The stored form of a row's non-key columns.
//!
//! Each cell is a tag byte naming its kind followed by its payload, so the store can find and compare
//! one cell (compare-and-set on a column) without knowing the table's schema. Equal values always
//! encode to equal bytes.

use super::types::TableSchema;
use super::value::{Cell, Value};
use super::{key, Result, TableError, MAX_ROW_BYTES};

const T_NULL: u8 = 0;
const T_INT: u8 = 1;
const T_UINT: u8 = 2;
const T_FLOAT: u8 = 3;
const T_BOOL: u8 = 4;
const T_STR: u8 = 5;
const T_BYTES: u8 = 6;
const T_DECIMAL: u8 = 7;
const T_DATE: u8 = 8;
const T_TIMESTAMP: u8 = 9;

/// Checks a full row (one value per column, in column order) against `schema` and returns its
/// encoded key and encoded value.
pub fn encode_row(schema: &TableSchema, row: Vec<Value>) -> Result<(Vec<u8>, Vec<u8>)> {
    if row.len() != schema.columns.len() {
        return Err(TableError::Schema(format!(
            "a row of this table has {} columns ({}), {} values given",
            schema.columns.len(),
            schema.column_names().join(", "),
            row.len()
        )));
    }
    let mut checked = Vec::with_capacity(row.len());
    for (v, col) in row.into_iter().zip(&schema.columns) {
        checked.push(v.check(col)?);
    }
    let key_values: Vec<Value> = schema
        .primary_key
        .iter()
        .map(|i| checked[*i].clone())
        .collect();
    let k = key::encode_key(schema, &key_values)?;
    let mut v = Vec::with_capacity(64);
    for i in schema.value_columns() {
        encode_cell(&checked[i], &mut v);
    }
    if v.len() > MAX_ROW_BYTES {
        return Err(TableError::Schema(format!(
            "the row is {} bytes encoded; at most {MAX_ROW_BYTES} are allowed",
            v.len()
        )));
    }
    Ok((k, v))
}

/// Checks a row already encoded (a writer's [`encode_row`] output, sent as such) against `schema`:
/// accepted only if it is what [`encode_row`] writes for some row of the table, so a region never
/// stores bytes its readers would refuse. Nothing is decoded into values.
pub fn check_encoded(schema: &TableSchema, k: &[u8], v: &[u8]) -> Result<()> {
    key::decode_key(schema, k)?;
    if v.len() > MAX_ROW_BYTES {
        return Err(TableError::Schema(format!(
            "the row is {} bytes encoded; at most {MAX_ROW_BYTES} are allowed",
            v.len()
        )));
    }
    value_cells(schema, v, |_, _| {})
}

/// Walks the cells of a stored value, handing each to `visit` with its column's position once
/// it is checked to be of its column's kind (or NULL where allowed); refuses a value with a
/// cell missing or bytes left over.
fn value_cells<'a>(
    schema: &TableSchema,
    v: &'a [u8],
    mut visit: impl FnMut(usize, Cell<'a>),
) -> Result<()> {
    let mut rest = v;
    for i in schema.value_columns() {
        let col = &schema.columns[i];
        if rest.is_empty() {
            return Err(TableError::Encoding(format!(
                "the row ends before column '{}'",
                col.name
            )));
        }
        let cell = decode_cell_ref(&mut rest)?;
        if !cell.fits(col) {
            return Err(TableError::Encoding(format!(
                "column '{}' holds {cell:?}, which is not a {}{} value",
                col.name,
                if col.nullable { "" } else { "NOT NULL " },
                col.ty
            )));
        }
        visit(i, cell);
    }
    if !rest.is_empty() {
        return Err(TableError::Encoding(format!(
            "{} bytes left after the row",
            rest.len()
        )));
    }
    Ok(())
}

/// Rebuilds the full row from its stored key and value.
///
/// Only what [`encode_row`] writes is accepted: every cell must hold its column's kind of value
/// (or NULL where allowed) and nothing may follow the last cell.
pub fn decode_row(schema: &TableSchema, k: &[u8], v: &[u8]) -> Result<Vec<Value>> {
    let key_values = key::decode_key(schema, k)?;
    let mut row = vec![Value::Null; schema.columns.len()];
    for (i, kv) in schema.primary_key.iter().zip(key_values) {
        row[*i] = kv;
    }
    value_cells(schema, v, |i, cell| row[i] = cell.to_value())?;
    Ok(row)
}

/// Appends one cell.
pub fn encode_cell(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(T_NULL),
        Value::Int(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Value::UInt(u) => {
            out.push(T_UINT);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Value::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Value::Bool(b) => {
            out.push(T_BOOL);
            out.push(u8::from(*b));
        }
        Value::Str(s) => {
            out.push(T_STR);
            put_len(s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Bytes(b) => {
            out.push(T_BYTES);
            put_len(b.len(), out);
            out.extend_from_slice(b);
        }
        Value::Decimal(d) => {
            out.push(T_DECIMAL);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::Date(d) => {
            out.push(T_DATE);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Value::Timestamp(t) => {
            out.push(T_TIMESTAMP);
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
}

fn put_len(mut n: usize, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Reads a length written by `put_len`. Only its shortest form is accepted, so that equal cells
/// are equal bytes (compare-and-set compares cells as bytes), and bits past 64 are refused rather
/// than dropped.
fn get_len(b: &mut &[u8]) -> Result<usize> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b
            .split_first()
            .ok_or_else(|| TableError::Encoding("row ends inside a length".into()))?;
        *b = rest;
        let bits = u64::from(byte & 0x7F);
        if shift == 63 && bits > 1 {
            return Err(TableError::Encoding("length overflows 64 bits".into()));
        }
        n |= bits << shift;
        if byte & 0x80 == 0 {
            if byte == 0 && shift > 0 {
                return Err(TableError::Encoding(
                    "length has a redundant zero byte".into(),
                ));
            }
            // A length beyond the address space cannot be followed by that many bytes anyway.
            return usize::try_from(n)
                .map_err(|_| TableError::Encoding(format!("length {n} is too large")));
        }
    }
    Err(TableError::Encoding("length too long".into()))
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if b.len() < n {
        return Err(TableError::Encoding("row ends early".into()));
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn arr<const N: usize>(b: &mut &[u8]) -> Result<[u8; N]> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(b, N)?);
    Ok(a)
}

/// Reads one cell from the front of `b`.
pub fn decode_cell(b: &mut &[u8]) -> Result<Value> {
    decode_cell_ref(b).map(Cell::to_value)
}

/// Reads one cell from the front of `b`, borrowing its text and bytes from `b`.
pub fn decode_cell_ref<'a>(b: &mut &'a [u8]) -> Result<Cell<'a>> {
    let tag = take(b, 1)?[0];
    Ok(match tag {
        T_NULL => Cell::Null,
        T_INT => Cell::Int(i64::from_le_bytes(arr(b)?)),
        T_UINT => Cell::UInt(u64::from_le_bytes(arr(b)?)),
        T_FLOAT => Cell::Float(f64::from_le_bytes(arr(b)?)),
        T_BOOL => match take(b, 1)?[0] {
            0 => Cell::Bool(false),
            1 => Cell::Bool(true),
            x => return Err(TableError::Encoding(format!("boolean cell byte {x}"))),
        },
        T_STR => {
            let n = get_len(b)?;
            Cell::Str(
                std::str::from_utf8(take(b, n)?)
                    .map_err(|_| TableError::Encoding("text is not UTF-8".into()))?,
            )
        }
        T_BYTES => {
            let n = get_len(b)?;
            Cell::Bytes(take(b, n)?)
        }
        T_DECIMAL => Cell::Decimal(i128::from_le_bytes(arr(b)?)),
        T_DATE => Cell::Date(i32::from_le_bytes(arr(b)?)),
        T_TIMESTAMP => Cell::Timestamp(i64::from_le_bytes(arr(b)?)),
        t => return Err(TableError::Encoding(format!("unknown cell tag {t}"))),
    })
}

/// Encodes cells one after the other, as a stored row's value holds them.
pub fn encode_cells(cells: &[Value]) -> Vec<u8> {
    let mut out = Vec::with_capacity(cells.len() * 9);
    for c in cells {
        encode_cell(c, &mut out);
    }
    out
}

/// Reads every cell of an encoded value (the inverse of [`encode_cells`]), without the schema.
pub fn decode_cells(mut v: &[u8]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    while !v.is_empty() {
        out.push(decode_cell(&mut v)?);
    }
    Ok(out)
}

/// The bytes of the `n`-th cell of an encoded value (None when the row has fewer cells).
pub fn cell_at(mut v: &[u8], n: usize) -> Result<Option<&[u8]>> {
    for i in 0..=n {
        if v.is_empty() {
            return Ok(None);
        }
        let before = v;
        decode_cell_ref(&mut v)?;
        if i == n {
            return Ok(Some(&before[..before.len() - v.len()]));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_cells_are_found_without_the_schema() {
        let schema = TableSchema::parse(
            "name VARCHAR, id BIGINT, price DECIMAL(10,2), seen TIMESTAMP, tag VARBINARY",
            &["id".into()],
        )
        .unwrap();
        let row = vec![
            Value::Str("widget".into()),
            Value::Int(7),
            Value::Decimal(1999),
            Value::Null,
            Value::Bytes(vec![0, 1, 2]),
        ];
        let (k, v) = encode_row(&schema, row.clone()).unwrap();
        assert_eq!(decode_row(&schema, &k, &v).unwrap(), row);
        // The value columns are name, price, seen, tag (the key is not repeated).
        let mut price = Vec::new();
        encode_cell(&Value::Decimal(1999), &mut price);
        assert_eq!(cell_at(&v, 1).unwrap(), Some(&price[..]));
        assert_eq!(cell_at(&v, 4).unwrap(), None);
        let cells = decode_cells(&v).unwrap();
        assert_eq!(cells.len(), 4);
        assert_eq!(cells[1], Value::Decimal(1999));
        assert_eq!(encode_cells(&cells), v);
    }

    #[test]
    fn rows_that_do_not_fit_are_refused() {
        let schema = TableSchema::parse("id INT, n SMALLINT NOT NULL", &["id".into()]).unwrap();
        let e = encode_row(&schema, vec![Value::Int(1)]).unwrap_err();
        assert!(e.to_string().contains("2 columns"), "{e}");
        let e = encode_row(&schema, vec![Value::Int(1), Value::Int(1 << 20)]).unwrap_err();
        assert!(e.to_string().contains("column 'n'"), "{e}");
        let e = encode_row(&schema, vec![Value::Int(1), Value::Null]).unwrap_err();
        assert!(e.to_string().contains("NULL"), "{e}");
    }

    #[test]
    fn encoded_rows_are_checked_as_encode_row_would_have_written_them() {
        let schema =
            TableSchema::parse("id INT, n SMALLINT NOT NULL, s VARCHAR", &["id".into()]).unwrap();
        let row = vec![Value::Int(1), Value::Int(5), Value::Str("x".into())];
        let (k, v) = encode_row(&schema, row).unwrap();
        check_encoded(&schema, &k, &v).unwrap();
        let cells = |c: &[Value]| encode_cells(c);
        // A NULL in a NOT NULL column, a value out of the column's range, a cell of another
        // kind, a missing cell, a cell too many, a key of another type.
        let bad = [
            (
                k.clone(),
                cells(&[Value::Null, Value::Str("x".into())]),
                "NOT NULL",
            ),
            (
                k.clone(),
                cells(&[Value::Int(1 << 20), Value::Null]),
                "column 'n'",
            ),
            (
                k.clone(),
                cells(&[Value::Int(5), Value::Int(5)]),
                "column 's'",
            ),
            (k.clone(), cells(&[Value::Int(5)]), "before column 's'"),
            (
                k.clone(),
                cells(&[Value::Int(5), Value::Null, Value::Null]),
                "left after",
            ),
            (vec![1, 2, 3], v.clone(), "key"),
        ];
        for (k, v, want) in bad {
            let e = check_encoded(&schema, &k, &v).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }
}
