//! The stored form of a row's non-key columns.
//!
//! Each cell is a tag byte naming its kind followed by its payload, so the store can find and compare
//! one cell (compare-and-set on a column) without knowing the table's schema. Equal values always
//! encode to equal bytes.

use super::types::TableSchema;
use super::value::{Cell, Value};
use bytes::Bytes;
use smallvec::SmallVec;

use super::{key, Result, TableError, MAX_KEY_BYTES, MAX_ROW_BYTES};

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
    let cells: SmallVec<[Cell<'_>; 16]> = row.iter().map(Value::as_cell).collect();
    let mut key = Vec::with_capacity(64);
    let at = encode_cells_into(schema, &cells, &mut key)?;
    let value = key.split_off(at);
    Ok((key, value))
}

/// Checks a full row of cells against `schema` and appends its encoded key, then its encoded
/// value, to `out`; returns where the key ends. On error `out` may hold part of the row.
fn encode_cells_into(schema: &TableSchema, cells: &[Cell<'_>], out: &mut Vec<u8>) -> Result<usize> {
    if cells.len() != schema.columns.len() {
        return Err(TableError::Schema(format!(
            "a row of this table has {} columns ({}), {} values given",
            schema.columns.len(),
            schema.column_names().join(", "),
            cells.len()
        )));
    }
    if cells
        .iter()
        .zip(&schema.columns)
        .any(|(c, col)| !c.passes_check(col))
    {
        // Some cell is converted (an integer for a FLOAT column) or refused: check them as
        // values, which names what does not fit, and encode what the check stores.
        let checked = cells
            .iter()
            .zip(&schema.columns)
            .map(|(c, col)| c.to_value().check(col))
            .collect::<Result<Vec<Value>>>()?;
        let cells: SmallVec<[Cell<'_>; 16]> = checked.iter().map(Value::as_cell).collect();
        return encode_checked(schema, &cells, out);
    }
    encode_checked(schema, cells, out)
}

/// Appends the key and value of a row whose cells all passed their columns' checks.
fn encode_checked(schema: &TableSchema, cells: &[Cell<'_>], out: &mut Vec<u8>) -> Result<usize> {
    let start = out.len();
    for (i, col) in schema.key_columns().enumerate() {
        let cell = cells[schema.primary_key[i]];
        key::encode_value(cell, col.ty, out).map_err(|reason| TableError::Value {
            column: col.name.clone(),
            reason,
        })?;
    }
    let at = out.len();
    if at - start > MAX_KEY_BYTES {
        return Err(TableError::Schema(format!(
            "the key is {} bytes encoded; at most {MAX_KEY_BYTES} are allowed",
            at - start
        )));
    }
    for i in schema.value_columns() {
        put_cell(cells[i], out);
    }
    if out.len() - at > MAX_ROW_BYTES {
        return Err(TableError::Schema(format!(
            "the row is {} bytes encoded; at most {MAX_ROW_BYTES} are allowed",
            out.len() - at
        )));
    }
    Ok(at)
}

/// Rows of one table encoded as they are stored, packed in one buffer: a writer encodes a
/// statement's rows here straight from its columns, and sends slices of the buffer, so no row
/// is built as values or allocated on its own.
#[derive(Debug, Default)]
pub struct EncodedRows {
    buf: Vec<u8>,
    /// Per row, where its key ends and where its value ends in `buf`; each row starts where the
    /// one before ends.
    ends: Vec<(usize, usize)>,
}

impl EncodedRows {
    /// An empty set with room for `rows` rows of about `row_bytes` bytes.
    pub fn with_capacity(rows: usize, row_bytes: usize) -> EncodedRows {
        EncodedRows {
            buf: Vec::with_capacity(rows * row_bytes),
            ends: Vec::with_capacity(rows),
        }
    }

    /// How many rows there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// How many bytes the rows' keys and values take together.
    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// True when there is no row.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Checks a full row of cells (one per column, in column order) against `schema` and adds
    /// its encoding; a row that does not fit adds nothing.
    pub fn push(&mut self, schema: &TableSchema, cells: &[Cell<'_>]) -> Result<()> {
        let start = self.buf.len();
        match encode_cells_into(schema, cells, &mut self.buf) {
            Ok(at) => {
                self.ends.push((at, self.buf.len()));
                Ok(())
            }
            Err(e) => {
                self.buf.truncate(start);
                Err(e)
            }
        }
    }

    /// Checks a full row of values and adds its encoding, like [`EncodedRows::push`].
    pub fn push_values(&mut self, schema: &TableSchema, row: &[Value]) -> Result<()> {
        let cells: SmallVec<[Cell<'_>; 16]> = row.iter().map(Value::as_cell).collect();
        self.push(schema, &cells)
    }

    /// The rows' keys, in the order they were added.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0;
        self.ends.iter().map(move |&(key_end, end)| {
            let key = &self.buf[start..key_end];
            start = end;
            key
        })
    }

    /// The rows' keys and values as shared slices of one buffer, in the order they were added.
    pub fn into_rows(self) -> impl ExactSizeIterator<Item = (Bytes, Bytes)> {
        let buf = Bytes::from(self.buf);
        let mut start = 0;
        self.ends.into_iter().map(move |(key_end, end)| {
            let row = (buf.slice(start..key_end), buf.slice(key_end..end));
            start = end;
            row
        })
    }
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
    put_cell(v.as_cell(), out);
}

/// Appends the encoding of one cell (what [`encode_cell`] writes for its value).
pub fn put_cell(c: Cell<'_>, out: &mut Vec<u8>) {
    match c {
        Cell::Null => out.push(T_NULL),
        Cell::Int(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Cell::UInt(u) => {
            out.push(T_UINT);
            out.extend_from_slice(&u.to_le_bytes());
        }
        Cell::Float(f) => {
            out.push(T_FLOAT);
            out.extend_from_slice(&f.to_le_bytes());
        }
        Cell::Bool(b) => {
            out.push(T_BOOL);
            out.push(u8::from(b));
        }
        Cell::Str(s) => {
            out.push(T_STR);
            put_len(s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        Cell::Bytes(b) => {
            out.push(T_BYTES);
            put_len(b.len(), out);
            out.extend_from_slice(b);
        }
        Cell::Decimal(d) => {
            out.push(T_DECIMAL);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Cell::Date(d) => {
            out.push(T_DATE);
            out.extend_from_slice(&d.to_le_bytes());
        }
        Cell::Timestamp(t) => {
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
    fn encoded_rows_hold_what_encode_row_writes_and_nothing_of_a_refused_row() {
        let schema = TableSchema::parse(
            "name VARCHAR, id BIGINT, price DOUBLE, day DATE, r REAL NOT NULL",
            &["id".into()],
        )
        .unwrap();
        let rows = [
            vec![
                Value::Str("a".into()),
                Value::Int(2),
                Value::Float(1.5),
                Value::Date(19_000),
                Value::Float(0.5),
            ],
            // Converted by the check: an integer for DOUBLE, a float REAL rounds.
            vec![
                Value::Null,
                Value::Int(-7),
                Value::Int(3),
                Value::Null,
                Value::Float(0.1),
            ],
        ];
        let mut out = EncodedRows::with_capacity(1, 8);
        let mut want = Vec::new();
        for (i, r) in rows.iter().enumerate() {
            out.push_values(&schema, r).unwrap();
            want.push(encode_row(&schema, r.clone()).unwrap());
            // Refused rows between them leave nothing behind: a NULL in a NOT NULL column, a
            // date out of range, a NaN key, a row too short.
            let mut bad = r.clone();
            match i {
                0 => bad[4] = Value::Null,
                _ => bad[3] = Value::Date(i32::MAX),
            }
            let e = out.push_values(&schema, &bad).unwrap_err();
            assert_eq!(
                e.to_string(),
                encode_row(&schema, bad).unwrap_err().to_string()
            );
            let mut nan = r.clone();
            nan[1] = Value::Float(f64::NAN);
            assert!(out.push_values(&schema, &nan).is_err());
            assert!(out.push_values(&schema, &r[..4]).is_err());
        }
        assert_eq!(out.len(), 2);
        let got: Vec<(Vec<u8>, Vec<u8>)> = out
            .into_rows()
            .map(|(k, v)| (k.to_vec(), v.to_vec()))
            .collect();
        assert_eq!(got, want);
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
