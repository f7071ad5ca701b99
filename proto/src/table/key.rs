//! The memcomparable encoding of primary keys.
//!
//! Encoded keys compare, as bytes, exactly as the keys compare as values, column by column, so
//! RocksDB's byte order is the table's key order. Every column's encoding is self-delimiting, so the
//! encoding of a key prefix (the first columns) is a byte prefix of every key that starts with it,
//! which is what scans by partial composite keys rely on.
//!
//! - integers, dates, timestamps: 8 bytes big-endian with the sign bit flipped;
//! - unsigned integers: 8 bytes big-endian;
//! - floats: the IEEE bits, sign bit flipped for positives and all bits flipped for negatives
//!   (`-0.0` is stored as `0.0`, NaN cannot be a key);
//! - decimals: the unscaled i128, 16 bytes big-endian with the sign bit flipped;
//! - booleans: one byte;
//! - text and bytes: groups of 8 bytes, each followed by a marker byte `0xFF - padding`, the last
//!   group zero-padded (as TiDB encodes bytes), so that shorter strings sort first.

use super::types::{ColumnType, TableSchema};
use super::value::{Cell, Value};
use super::{Result, TableError, MAX_KEY_BYTES};

const GROUP: usize = 8;
const MARKER: u8 = 0xFF;

/// Encodes a full primary key, or a prefix of it (fewer values than key columns), checking every
/// value against its column.
pub fn encode_key(schema: &TableSchema, key: &[Value]) -> Result<Vec<u8>> {
    if key.len() > schema.primary_key.len() {
        return Err(TableError::Schema(format!(
            "the key has {} columns, {} values given",
            schema.primary_key.len(),
            key.len()
        )));
    }
    let mut out = Vec::with_capacity(16 * key.len());
    for (v, col) in key.iter().zip(schema.key_columns()) {
        let v = v.clone().check(col)?;
        encode_value(v.as_cell(), col.ty, &mut out).map_err(|reason| TableError::Value {
            column: col.name.clone(),
            reason,
        })?;
    }
    if out.len() > MAX_KEY_BYTES {
        return Err(TableError::Schema(format!(
            "the key is {} bytes encoded; at most {MAX_KEY_BYTES} are allowed",
            out.len()
        )));
    }
    Ok(out)
}

/// Decodes a full key written by [`encode_key`].
///
/// Only bytes [`encode_key`] writes are accepted: a key that decodes re-encodes to the same bytes,
/// so a corrupt or forged key cannot pass for another one or carry a value its column cannot hold.
pub fn decode_key(schema: &TableSchema, mut bytes: &[u8]) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(schema.primary_key.len());
    for col in schema.key_columns() {
        let v = decode_value(&mut bytes, col.ty)?;
        if !v.fits(col) {
            return Err(TableError::Encoding(format!(
                "key column '{}' holds {v:?}, which is not a {} value",
                col.name, col.ty
            )));
        }
        out.push(v);
    }
    if !bytes.is_empty() {
        return Err(TableError::Encoding(format!(
            "{} bytes left after the key",
            bytes.len()
        )));
    }
    Ok(out)
}

/// The smallest byte string greater than every string starting with `prefix` (None: no such
/// string, i.e. unbounded), for turning a key prefix into an exclusive upper bound.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

fn flip_i64(v: i64) -> [u8; 8] {
    ((v as u64) ^ (1 << 63)).to_be_bytes()
}

/// Appends the encoding of one non-null key value of type `ty`.
pub fn encode_value(
    v: Cell<'_>,
    ty: ColumnType,
    out: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    match (v, ty) {
        (Cell::Int(i), _) => out.extend_from_slice(&flip_i64(i)),
        (Cell::Date(d), _) => out.extend_from_slice(&flip_i64(i64::from(d))),
        (Cell::Timestamp(t), _) => out.extend_from_slice(&flip_i64(t)),
        (Cell::UInt(u), _) => out.extend_from_slice(&u.to_be_bytes()),
        (Cell::Float(f), _) => {
            if f.is_nan() {
                return Err("NaN cannot be part of a key".into());
            }
            let f = if f == 0.0 { 0.0f64 } else { f };
            let bits = f.to_bits();
            let bits = if bits >> 63 == 0 {
                bits | (1 << 63)
            } else {
                !bits
            };
            out.extend_from_slice(&bits.to_be_bytes());
        }
        (Cell::Decimal(d), _) => out.extend_from_slice(&((d as u128) ^ (1 << 127)).to_be_bytes()),
        (Cell::Bool(b), _) => out.push(u8::from(b)),
        (Cell::Str(s), _) => encode_bytes(s.as_bytes(), out),
        (Cell::Bytes(b), _) => encode_bytes(b, out),
        (Cell::Null, _) => return Err("NULL cannot be part of a key".into()),
    }
    Ok(())
}

fn encode_bytes(b: &[u8], out: &mut Vec<u8>) {
    out.reserve((b.len() / GROUP + 1) * (GROUP + 1));
    let mut chunks = b.chunks_exact(GROUP);
    for c in &mut chunks {
        out.extend_from_slice(c);
        out.push(MARKER);
    }
    let rest = chunks.remainder();
    let pad = GROUP - rest.len();
    out.extend_from_slice(rest);
    out.extend(std::iter::repeat_n(0u8, pad));
    out.push(MARKER - pad as u8);
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if b.len() < n {
        return Err(TableError::Encoding("key ends early".into()));
    }
    let (head, tail) = b.split_at(n);
    *b = tail;
    Ok(head)
}

fn take8(b: &mut &[u8]) -> Result<[u8; 8]> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(b, 8)?);
    Ok(a)
}

/// Reads one value of type `ty` from the front of `b`.
pub fn decode_value(b: &mut &[u8], ty: ColumnType) -> Result<Value> {
    let signed =
        |b: &mut &[u8]| -> Result<i64> { Ok((u64::from_be_bytes(take8(b)?) ^ (1 << 63)) as i64) };
    Ok(match ty {
        ColumnType::Int8 | ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
            Value::Int(signed(b)?)
        }
        ColumnType::Date32 => Value::Date(
            i32::try_from(signed(b)?).map_err(|_| TableError::Encoding("bad date".into()))?,
        ),
        ColumnType::Timestamp => Value::Timestamp(signed(b)?),
        ColumnType::UInt64 => Value::UInt(u64::from_be_bytes(take8(b)?)),
        ColumnType::Float32 | ColumnType::Float64 => {
            let bits = u64::from_be_bytes(take8(b)?);
            let bits = if bits >> 63 == 1 {
                bits & !(1 << 63)
            } else {
                !bits
            };
            let f = f64::from_bits(bits);
            // The encoder refuses NaN and writes -0.0 as 0.0, so neither can be a stored key.
            if f.is_nan() || bits == (-0.0f64).to_bits() {
                return Err(TableError::Encoding(format!(
                    "key float {f} is not a key value"
                )));
            }
            Value::Float(f)
        }
        ColumnType::Decimal { .. } => {
            let mut a = [0u8; 16];
            a.copy_from_slice(take(b, 16)?);
            Value::Decimal((u128::from_be_bytes(a) ^ (1 << 127)) as i128)
        }
        ColumnType::Boolean => match take(b, 1)?[0] {
            0 => Value::Bool(false),
            1 => Value::Bool(true),
            x => return Err(TableError::Encoding(format!("key boolean byte {x}"))),
        },
        ColumnType::Utf8 => Value::Str(
            String::from_utf8(decode_bytes(b)?)
                .map_err(|_| TableError::Encoding("key text is not UTF-8".into()))?,
        ),
        ColumnType::Binary => Value::Bytes(decode_bytes(b)?),
    })
}

fn decode_bytes(b: &mut &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let group = take(b, GROUP + 1)?;
        let marker = group[GROUP];
        if marker == MARKER {
            out.extend_from_slice(&group[..GROUP]);
            continue;
        }
        let pad = usize::from(MARKER - marker);
        if pad > GROUP || group[GROUP - pad..GROUP].iter().any(|x| *x != 0) {
            return Err(TableError::Encoding("bad byte-group marker in key".into()));
        }
        out.extend_from_slice(&group[..GROUP - pad]);
        return Ok(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::types::Column;
    use proptest::prelude::*;
    use std::cmp::Ordering;

    /// Every key type, with a strategy for its values and their natural order.
    fn types() -> Vec<ColumnType> {
        vec![
            ColumnType::Int8,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::UInt64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::Decimal {
                precision: 38,
                scale: 4,
            },
            ColumnType::Boolean,
            ColumnType::Utf8,
            ColumnType::Binary,
            ColumnType::Date32,
            ColumnType::Timestamp,
        ]
    }

    fn value_of(ty: ColumnType) -> BoxedStrategy<Value> {
        match ty {
            ColumnType::Int8 => any::<i8>().prop_map(|v| Value::Int(v.into())).boxed(),
            ColumnType::Int16 => any::<i16>().prop_map(|v| Value::Int(v.into())).boxed(),
            ColumnType::Int32 => any::<i32>().prop_map(|v| Value::Int(v.into())).boxed(),
            ColumnType::Int64 => prop_oneof![any::<i64>(), -3i64..3]
                .prop_map(Value::Int)
                .boxed(),
            ColumnType::UInt64 => any::<u64>().prop_map(Value::UInt).boxed(),
            ColumnType::Float32 => any::<f32>()
                .prop_filter("keys are not NaN", |f| !f.is_nan())
                .prop_map(|f| Value::Float(if f == 0.0 { 0.0 } else { f64::from(f) }))
                .boxed(),
            ColumnType::Float64 => prop_oneof![
                any::<f64>(),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(f64::MIN_POSITIVE),
                -2.0f64..2.0
            ]
            .prop_filter("keys are not NaN", |f| !f.is_nan())
            .prop_map(|f| Value::Float(if f == 0.0 { 0.0 } else { f }))
            .boxed(),
            ColumnType::Decimal { .. } => (-(10i128.pow(38) - 1)..10i128.pow(38))
                .prop_map(Value::Decimal)
                .boxed(),
            ColumnType::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
            ColumnType::Utf8 => prop_oneof![".{0,20}", "[ab\u{0}]{0,17}"]
                .prop_map(Value::Str)
                .boxed(),
            ColumnType::Binary => prop::collection::vec(
                prop_oneof![Just(0u8), Just(0xFFu8), Just(0xF7u8), any::<u8>()],
                0..20,
            )
            .prop_map(Value::Bytes)
            .boxed(),
            // Dates and times are those chrono can print, as `Value::check` requires.
            ColumnType::Date32 => {
                let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
                let day = |d: chrono::NaiveDate| i32::try_from((d - epoch).num_days()).unwrap();
                (day(chrono::NaiveDate::MIN)..=day(chrono::NaiveDate::MAX))
                    .prop_map(Value::Date)
                    .boxed()
            }
            ColumnType::Timestamp => (chrono::DateTime::<chrono::Utc>::MIN_UTC.timestamp_micros()
                ..=chrono::DateTime::<chrono::Utc>::MAX_UTC.timestamp_micros())
                .prop_map(Value::Timestamp)
                .boxed(),
        }
    }

    fn cmp(a: &Value, b: &Value) -> Ordering {
        match (a, b) {
            (Value::Int(x), Value::Int(y)) => x.cmp(y),
            (Value::UInt(x), Value::UInt(y)) => x.cmp(y),
            (Value::Float(x), Value::Float(y)) => x.partial_cmp(y).unwrap_or(Ordering::Equal),
            (Value::Decimal(x), Value::Decimal(y)) => x.cmp(y),
            (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
            (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
            (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
            (Value::Date(x), Value::Date(y)) => x.cmp(y),
            (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
            _ => unreachable!("same types"),
        }
    }

    fn schema(tys: &[ColumnType]) -> TableSchema {
        let cols: Vec<Column> = tys
            .iter()
            .enumerate()
            .map(|(i, ty)| Column {
                name: format!("k{i}"),
                ty: *ty,
                nullable: false,
            })
            .collect();
        let pk: Vec<String> = cols.iter().map(|c| c.name.clone()).collect();
        TableSchema::new(cols, &pk).unwrap()
    }

    /// Two composite keys of the same (random) column types.
    fn key_pair() -> impl Strategy<Value = (Vec<ColumnType>, Vec<Value>, Vec<Value>)> {
        prop::collection::vec(prop::sample::select(types()), 1..4).prop_flat_map(|tys| {
            let vals: Vec<BoxedStrategy<Value>> = tys.iter().map(|t| value_of(*t)).collect();
            // Small domains make equal leading columns (and so the later columns' order) common.
            let small: Vec<BoxedStrategy<Value>> = tys
                .iter()
                .map(|t| match t {
                    ColumnType::Boolean => value_of(*t),
                    ColumnType::Utf8 => "[ab]{0,2}".prop_map(Value::Str).boxed(),
                    _ => value_of(*t),
                })
                .collect();
            (Just(tys), vals, prop_oneof![small.clone(), small].boxed())
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn single_columns_keep_order_and_round_trip(
            (ty, a, b) in prop::sample::select(types())
                .prop_flat_map(|t| (Just(t), value_of(t), value_of(t)))
        ) {
            let s = schema(&[ty]);
            let ea = encode_key(&s, std::slice::from_ref(&a)).unwrap();
            let eb = encode_key(&s, std::slice::from_ref(&b)).unwrap();
            prop_assert_eq!(ea.cmp(&eb), cmp(&a, &b), "{:?} vs {:?}", a, b);
            prop_assert_eq!(decode_key(&s, &ea).unwrap(), vec![a]);
            prop_assert_eq!(decode_key(&s, &eb).unwrap(), vec![b]);
        }

        #[test]
        fn composite_keys_keep_lexicographic_order_and_round_trip((tys, a, b) in key_pair()) {
            let s = schema(&tys);
            let ea = encode_key(&s, &a).unwrap();
            let eb = encode_key(&s, &b).unwrap();
            let want = a.iter().zip(&b).map(|(x, y)| cmp(x, y)).find(|o| o.is_ne()).unwrap_or(Ordering::Equal);
            prop_assert_eq!(ea.cmp(&eb), want, "{:?} vs {:?}", a, b);
            prop_assert_eq!(decode_key(&s, &ea).unwrap(), a.clone());
            // A prefix of the columns encodes to a byte prefix, bounded by prefix_end.
            let p = encode_key(&s, &a[..1]).unwrap();
            prop_assert!(ea.starts_with(&p));
            if let Some(end) = prefix_end(&p) {
                prop_assert!(ea < end);
            }
        }
    }

    #[test]
    fn keys_refuse_null_nan_and_oversize() {
        let s = schema(&[ColumnType::Float64]);
        assert!(encode_key(&s, &[Value::Float(f64::NAN)])
            .unwrap_err()
            .to_string()
            .contains("NaN"));
        assert!(encode_key(&s, &[Value::Null]).is_err());
        let s = schema(&[ColumnType::Utf8]);
        let big = "x".repeat(MAX_KEY_BYTES);
        assert!(encode_key(&s, &[Value::Str(big)])
            .unwrap_err()
            .to_string()
            .contains("bytes encoded"));
        assert!(decode_key(&s, &[1, 2, 3]).is_err());
    }
}
