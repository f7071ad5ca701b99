//! One typed value: parsed from text (CSV, the command line) or JSON, checked against its column,
//! printed, and carried on the wire.

use chrono::{DateTime, Datelike as _, NaiveDate, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};

use super::types::{Column, ColumnType};
use super::{Result, TableError};
use crate::v1;

/// A value of one cell. Integers of every width are `Int`, both float widths `Float`; decimals are
/// the integer scaled by the column's scale; dates are days and timestamps microseconds since the
/// Unix epoch (UTC).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// Signed integers.
    Int(i64),
    /// Unsigned 64-bit integers.
    UInt(u64),
    /// Floating point.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 text.
    Str(String),
    /// Bytes.
    Bytes(Vec<u8>),
    /// A decimal as its unscaled integer.
    Decimal(i128),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
}

/// A value borrowed from where it is stored (a row's bytes, or a [`Value`]), so scans can copy it
/// into a column without allocating for each cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    /// SQL NULL.
    Null,
    /// Signed integers.
    Int(i64),
    /// Unsigned 64-bit integers.
    UInt(u64),
    /// Floating point.
    Float(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 text.
    Str(&'a str),
    /// Bytes.
    Bytes(&'a [u8]),
    /// A decimal as its unscaled integer.
    Decimal(i128),
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since 1970-01-01T00:00:00Z.
    Timestamp(i64),
}

impl Cell<'_> {
    /// Whether the cell is exactly what [`Value::check`] stores for `col` (see [`Value::fits`]).
    pub fn fits(&self, col: &Column) -> bool {
        match (self, col.ty) {
            (Cell::Null, _) => col.nullable,
            (Cell::Int(v), ColumnType::Int8) => i8::try_from(*v).is_ok(),
            (Cell::Int(v), ColumnType::Int16) => i16::try_from(*v).is_ok(),
            (Cell::Int(v), ColumnType::Int32) => i32::try_from(*v).is_ok(),
            (Cell::Int(_), ColumnType::Int64) => true,
            (Cell::UInt(_), ColumnType::UInt64) => true,
            // `check` rounds to the column's width, so a stored REAL is always an f32 widened.
            (Cell::Float(f), ColumnType::Float32) => f64::from(*f as f32).to_bits() == f.to_bits(),
            (Cell::Float(_), ColumnType::Float64) => true,
            (Cell::Decimal(d), ColumnType::Decimal { precision, .. }) => {
                digits(*d) <= u32::from(precision)
            }
            (Cell::Bool(_), ColumnType::Boolean)
            | (Cell::Str(_), ColumnType::Utf8)
            | (Cell::Bytes(_), ColumnType::Binary)
            | (Cell::Date(_), ColumnType::Date32)
            | (Cell::Timestamp(_), ColumnType::Timestamp) => true,
            _ => false,
        }
    }

    /// Whether [`Value::check`] takes the cell for `col` as it is: the column's own kind, within
    /// its range (a writer encodes such a cell without building a value).
    pub fn passes_check(&self, col: &Column) -> bool {
        self.fits(col)
            && match self {
                Cell::Date(d) => date_in_range(*d),
                Cell::Timestamp(t) => DateTime::<Utc>::from_timestamp_micros(*t).is_some(),
                _ => true,
            }
    }

    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            Cell::Null => Value::Null,
            Cell::Int(v) => Value::Int(v),
            Cell::UInt(v) => Value::UInt(v),
            Cell::Float(v) => Value::Float(v),
            Cell::Bool(v) => Value::Bool(v),
            Cell::Str(v) => Value::Str(v.to_string()),
            Cell::Bytes(v) => Value::Bytes(v.to_vec()),
            Cell::Decimal(v) => Value::Decimal(v),
            Cell::Date(v) => Value::Date(v),
            Cell::Timestamp(v) => Value::Timestamp(v),
        }
    }
}

fn bad(col: &Column, reason: impl Into<String>) -> TableError {
    TableError::Value {
        column: col.name.clone(),
        reason: reason.into(),
    }
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

impl Value {
    /// True for NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value borrowed as a cell.
    pub fn as_cell(&self) -> Cell<'_> {
        match self {
            Value::Null => Cell::Null,
            Value::Int(v) => Cell::Int(*v),
            Value::UInt(v) => Cell::UInt(*v),
            Value::Float(v) => Cell::Float(*v),
            Value::Bool(v) => Cell::Bool(*v),
            Value::Str(v) => Cell::Str(v),
            Value::Bytes(v) => Cell::Bytes(v),
            Value::Decimal(v) => Cell::Decimal(*v),
            Value::Date(v) => Cell::Date(*v),
            Value::Timestamp(v) => Cell::Timestamp(*v),
        }
    }

    /// Parses text as a value of `col` (CSV fields, command-line keys). An empty field is NULL,
    /// except in text and binary columns where it is the empty string; `\N` is NULL everywhere.
    pub fn parse_text(text: &str, col: &Column) -> Result<Value> {
        if text == "\\N"
            || (text.is_empty() && !matches!(col.ty, ColumnType::Utf8 | ColumnType::Binary))
        {
            return Value::Null.check(col);
        }
        let t = text.trim();
        let v = match col.ty {
            ColumnType::Int8 | ColumnType::Int16 | ColumnType::Int32 | ColumnType::Int64 => {
                Value::Int(
                    t.parse()
                        .map_err(|_| bad(col, format!("'{text}' is not an integer")))?,
                )
            }
            ColumnType::UInt64 => Value::UInt(
                t.parse()
                    .map_err(|_| bad(col, format!("'{text}' is not an unsigned integer")))?,
            ),
            ColumnType::Float32 | ColumnType::Float64 => Value::Float(
                t.parse()
                    .map_err(|_| bad(col, format!("'{text}' is not a number")))?,
            ),
            ColumnType::Decimal { precision, scale } => {
                Value::Decimal(parse_decimal(t, precision, scale).map_err(|r| bad(col, r))?)
            }
            ColumnType::Boolean => match t.to_ascii_lowercase().as_str() {
                "true" | "t" | "1" | "yes" | "y" => Value::Bool(true),
                "false" | "f" | "0" | "no" | "n" => Value::Bool(false),
                _ => return Err(bad(col, format!("'{text}' is not a boolean"))),
            },
            ColumnType::Utf8 => Value::Str(text.to_string()),
            ColumnType::Binary => Value::Bytes(text.as_bytes().to_vec()),
            ColumnType::Date32 => Value::Date(parse_date(t).map_err(|r| bad(col, r))?),
            ColumnType::Timestamp => Value::Timestamp(parse_timestamp(t).map_err(|r| bad(col, r))?),
        };
        v.check(col)
    }

    /// Converts a JSON value to a value of `col`.
    pub fn from_json(json: &serde_json::Value, col: &Column) -> Result<Value> {
        use serde_json::Value as J;
        let v = match (json, col.ty) {
            (J::Null, _) => Value::Null,
            (J::String(s), ColumnType::Utf8) => Value::Str(s.clone()),
            (J::String(s), ColumnType::Binary) => Value::Bytes(s.as_bytes().to_vec()),
            (J::String(s), _) => return Value::parse_text(s, col),
            (J::Bool(b), ColumnType::Boolean) => Value::Bool(*b),
            (J::Number(n), ColumnType::Decimal { .. }) => {
                return Value::parse_text(&n.to_string(), col)
            }
            (J::Number(n), ColumnType::Float32 | ColumnType::Float64) => Value::Float(
                n.as_f64()
                    .ok_or_else(|| bad(col, format!("{n} is not a number")))?,
            ),
            (J::Number(n), ColumnType::UInt64) => Value::UInt(
                n.as_u64()
                    .ok_or_else(|| bad(col, format!("{n} is not an unsigned integer")))?,
            ),
            (J::Number(n), ColumnType::Timestamp) => Value::Timestamp(
                n.as_i64()
                    .and_then(|ms| ms.checked_mul(1000))
                    .ok_or_else(|| bad(col, format!("{n} is not a timestamp in milliseconds")))?,
            ),
            (J::Number(n), ColumnType::Date32) => Value::Date(
                n.as_i64()
                    .and_then(|d| i32::try_from(d).ok())
                    .ok_or_else(|| bad(col, format!("{n} is not a day number")))?,
            ),
            (J::Number(n), _) => Value::Int(
                n.as_i64()
                    .ok_or_else(|| bad(col, format!("{n} is not an integer")))?,
            ),
            (other, ty) => {
                return Err(bad(col, format!("{other} does not fit type {ty}")));
            }
        };
        v.check(col)
    }

    /// Checks (and normalises) the value against its column: NULL only where allowed, integers in
    /// the column's range, floats rounded to the column's width, decimals within their precision.
    pub fn check(self, col: &Column) -> Result<Value> {
        let range = |v: i64, lo: i64, hi: i64| {
            if v < lo || v > hi {
                Err(bad(col, format!("{v} is out of range for {}", col.ty)))
            } else {
                Ok(Value::Int(v))
            }
        };
        match (self, col.ty) {
            (Value::Null, _) if col.nullable => Ok(Value::Null),
            (Value::Null, _) => Err(TableError::Null {
                column: col.name.clone(),
            }),
            (Value::Int(v), ColumnType::Int8) => range(v, i8::MIN.into(), i8::MAX.into()),
            (Value::Int(v), ColumnType::Int16) => range(v, i16::MIN.into(), i16::MAX.into()),
            (Value::Int(v), ColumnType::Int32) => range(v, i32::MIN.into(), i32::MAX.into()),
            (Value::Int(v), ColumnType::Int64) => Ok(Value::Int(v)),
            (Value::UInt(v), ColumnType::Int64) => i64::try_from(v)
                .map(Value::Int)
                .map_err(|_| bad(col, format!("{v} is out of range for BIGINT"))),
            (Value::UInt(v), ColumnType::Int8 | ColumnType::Int16 | ColumnType::Int32) => {
                let v = i64::try_from(v)
                    .map_err(|_| bad(col, format!("{v} is out of range for {}", col.ty)))?;
                Value::Int(v).check(col)
            }
            (Value::UInt(v), ColumnType::UInt64) => Ok(Value::UInt(v)),
            (Value::Int(v), ColumnType::UInt64) => u64::try_from(v)
                .map(Value::UInt)
                .map_err(|_| bad(col, format!("{v} is negative"))),
            (Value::Float(f), ColumnType::Float32) => Ok(Value::Float(f64::from(f as f32))),
            (Value::Float(f), ColumnType::Float64) => Ok(Value::Float(f)),
            (Value::Int(v), ColumnType::Float32 | ColumnType::Float64) => {
                Value::Float(v as f64).check(col)
            }
            (Value::Decimal(d), ColumnType::Decimal { precision, .. }) => {
                if digits(d) > u32::from(precision) {
                    Err(bad(col, format!("{d} has more than {precision} digits")))
                } else {
                    Ok(Value::Decimal(d))
                }
            }
            (Value::Int(v), ColumnType::Decimal { precision, scale }) => {
                let d = i128::from(v)
                    .checked_mul(10i128.pow(u32::from(scale)))
                    .ok_or_else(|| bad(col, format!("{v} is out of range")))?;
                Value::Decimal(d).check(&Column {
                    ty: ColumnType::Decimal { precision, scale },
                    ..col.clone()
                })
            }
            (Value::Bool(b), ColumnType::Boolean) => Ok(Value::Bool(b)),
            (Value::Str(s), ColumnType::Utf8) => Ok(Value::Str(s)),
            (Value::Bytes(b), ColumnType::Binary) => Ok(Value::Bytes(b)),
            (Value::Str(s), ColumnType::Binary) => Ok(Value::Bytes(s.into_bytes())),
            // Only dates and times that can be printed are taken, so that what `render` writes
            // (a CSV export, a scan as text) `parse_text` reads back.
            (Value::Date(d), ColumnType::Date32) => match date_in_range(d) {
                true => Ok(Value::Date(d)),
                false => Err(bad(
                    col,
                    format!(
                        "day {d} is out of range for DATE (years {} to {})",
                        NaiveDate::MIN.year(),
                        NaiveDate::MAX.year()
                    ),
                )),
            },
            (Value::Timestamp(t), ColumnType::Timestamp) => {
                match DateTime::<Utc>::from_timestamp_micros(t) {
                    Some(_) => Ok(Value::Timestamp(t)),
                    None => Err(bad(
                        col,
                        format!(
                            "{t} microseconds is out of range for TIMESTAMP (years {} to {})",
                            NaiveDate::MIN.year(),
                            NaiveDate::MAX.year()
                        ),
                    )),
                }
            }
            (Value::Str(s), _) => Value::parse_text(&s, col),
            (v, ty) => Err(bad(col, format!("{} does not fit type {ty}", v.kind()))),
        }
    }

    /// Whether the value is exactly what [`Value::check`] stores for `col`: the column's own kind,
    /// within its range. Decoders of stored and sent bytes use it, so that a value no encoder could
    /// have written is refused rather than handed on under the wrong type.
    pub fn fits(&self, col: &Column) -> bool {
        self.as_cell().fits(col)
    }

    /// The kind of value, for messages ("an integer", "NULL").
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Null => "NULL",
            Value::Int(_) => "an integer",
            Value::UInt(_) => "an unsigned integer",
            Value::Float(_) => "a float",
            Value::Bool(_) => "a boolean",
            Value::Str(_) => "a string",
            Value::Bytes(_) => "bytes",
            Value::Decimal(_) => "a decimal",
            Value::Date(_) => "a date",
            Value::Timestamp(_) => "a timestamp",
        }
    }

    /// The value as text for people and CSV (the form `parse_text` reads back); NULL is empty.
    pub fn render(&self, ty: ColumnType) -> String {
        match self {
            Value::Null => String::new(),
            Value::Int(v) => v.to_string(),
            Value::UInt(v) => v.to_string(),
            Value::Float(v) => v.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Str(s) => s.clone(),
            Value::Bytes(b) => match std::str::from_utf8(b) {
                Ok(s) => s.to_string(),
                Err(_) => b.iter().map(|x| format!("{x:02x}")).collect(),
            },
            Value::Decimal(d) => {
                let scale = match ty {
                    ColumnType::Decimal { scale, .. } => u32::from(scale),
                    _ => 0,
                };
                render_decimal(*d, scale)
            }
            Value::Date(d) => date_of(*d)
                .map(|x| x.to_string())
                .unwrap_or_else(|| d.to_string()),
            Value::Timestamp(us) => DateTime::<Utc>::from_timestamp_micros(*us)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
                .unwrap_or_else(|| us.to_string()),
        }
    }

    /// The value as JSON: numbers stay numbers, decimals and times become strings.
    pub fn to_json(&self, ty: ColumnType) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Value::Null => J::Null,
            Value::Int(v) => J::from(*v),
            Value::UInt(v) => J::from(*v),
            Value::Float(v) => serde_json::Number::from_f64(*v)
                .map(J::Number)
                .unwrap_or(J::Null),
            Value::Bool(b) => J::Bool(*b),
            _ => J::String(self.render(ty)),
        }
    }

    /// The wire form.
    pub fn to_proto(&self) -> v1::Value {
        use v1::value::Kind;
        let kind = match self {
            Value::Null => None,
            Value::Int(v) => Some(Kind::Int(*v)),
            Value::UInt(v) => Some(Kind::Uint(*v)),
            Value::Float(v) => Some(Kind::Float(*v)),
            Value::Bool(b) => Some(Kind::Boolean(*b)),
            Value::Str(s) => Some(Kind::Str(s.clone())),
            Value::Bytes(b) => Some(Kind::Bin(b.clone().into())),
            Value::Decimal(d) => Some(Kind::Decimal(d.to_be_bytes().to_vec().into())),
            Value::Date(d) => Some(Kind::Date(*d)),
            Value::Timestamp(t) => Some(Kind::TimestampUs(*t)),
        };
        v1::Value { kind }
    }

    /// Reads the wire form.
    pub fn from_proto(v: &v1::Value) -> Result<Value> {
        use v1::value::Kind;
        Ok(match &v.kind {
            None => Value::Null,
            Some(Kind::Int(v)) => Value::Int(*v),
            Some(Kind::Uint(v)) => Value::UInt(*v),
            Some(Kind::Float(v)) => Value::Float(*v),
            Some(Kind::Boolean(b)) => Value::Bool(*b),
            Some(Kind::Str(s)) => Value::Str(s.clone()),
            Some(Kind::Bin(b)) => Value::Bytes(b.to_vec()),
            Some(Kind::Decimal(b)) => Value::Decimal(i128::from_be_bytes(
                b.as_ref()
                    .try_into()
                    .map_err(|_| TableError::Encoding("a decimal is 16 bytes".into()))?,
            )),
            Some(Kind::Date(d)) => Value::Date(*d),
            Some(Kind::TimestampUs(t)) => Value::Timestamp(*t),
        })
    }
}

/// Days from 1970-01-01 that are surely dates chrono can represent (about 200,000 years either
/// way; it goes to 262,142): most dates are checked without building one, which a stream job
/// would do for every record.
const SURELY_A_DATE: i32 = 200_000 * 365;

/// True when chrono can represent the date `days` after 1970-01-01.
fn date_in_range(days: i32) -> bool {
    (-SURELY_A_DATE..=SURELY_A_DATE).contains(&days) || date_of(days).is_some()
}

/// The calendar date `days` after 1970-01-01, when chrono can represent it.
fn date_of(days: i32) -> Option<NaiveDate> {
    EPOCH.checked_add_signed(chrono::TimeDelta::try_days(i64::from(days))?)
}

fn digits(d: i128) -> u32 {
    let mut n = d.unsigned_abs();
    let mut k = 1;
    while n >= 10 {
        n /= 10;
        k += 1;
    }
    k
}

/// Parses `-123.45` into the integer scaled by `scale` (`-12345` at scale 2).
fn parse_decimal(t: &str, precision: u8, scale: u8) -> std::result::Result<i128, String> {
    let (neg, body) = match t.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, t.strip_prefix('+').unwrap_or(t)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !ok(int) || !ok(frac) {
        return Err(format!("'{t}' is not a decimal number"));
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > usize::from(scale) {
        return Err(format!(
            "'{t}' has more than {scale} digits after the point"
        ));
    }
    let int = int.trim_start_matches('0');
    if int.len() + usize::from(scale) > usize::from(precision) {
        return Err(format!("'{t}' does not fit DECIMAL({precision},{scale})"));
    }
    let digits = format!("{int}{frac:0<width$}", width = usize::from(scale));
    let v: i128 = if digits.is_empty() {
        0
    } else {
        digits
            .parse()
            .map_err(|_| format!("'{t}' is not a decimal number"))?
    };
    Ok(if neg { -v } else { v })
}

fn render_decimal(d: i128, scale: u32) -> String {
    if scale == 0 {
        return d.to_string();
    }
    let abs = d.unsigned_abs().to_string();
    let width = scale as usize + 1;
    let padded = format!("{abs:0>width$}");
    let (int, frac) = padded.split_at(padded.len() - scale as usize);
    format!("{}{int}.{frac}", if d < 0 { "-" } else { "" })
}

fn parse_date(t: &str) -> std::result::Result<i32, String> {
    if let Some(days) = plain_date(t) {
        return Ok(days);
    }
    let d = NaiveDate::parse_from_str(t, "%Y-%m-%d")
        .map_err(|_| format!("'{t}' is not a date (YYYY-MM-DD)"))?;
    i32::try_from((d - EPOCH).num_days()).map_err(|_| format!("'{t}' is out of range"))
}

/// The days since 1970-01-01 of `YYYY-MM-DD` with exactly those digits, read without a format
/// parser or a calendar type (most dates in records look so, and a stream job reads one per
/// record); anything else, or a day that does not exist, is left to the format parser.
fn plain_date(t: &str) -> Option<i32> {
    let b = t.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |n, c| {
            c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0'))
        })
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if d < 1 || d > month_days {
        return None;
    }
    // Days from the civil date (proleptic Gregorian), counting years from March so that the
    // leap day ends a year; era = 400 years.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    i32::try_from(era * 146_097 + doe - 719_468).ok()
}

/// Accepts RFC 3339 (`2024-05-01T12:00:00Z`), `2024-05-01 12:00:00[.fff]` (UTC), a bare date, or
/// epoch milliseconds; and what `render` writes, whose years may have five digits or a sign.
fn parse_timestamp(t: &str) -> std::result::Result<i64, String> {
    if let Ok(ms) = t.parse::<i64>() {
        return ms
            .checked_mul(1000)
            .ok_or_else(|| format!("'{t}' is out of range"));
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.timestamp_micros());
    }
    for fmt in [
        // What `render` writes; RFC 3339 has no room for years before 0 or after 9999.
        "%Y-%m-%dT%H:%M:%S%.fZ",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(t, fmt) {
            return Ok(dt.and_utc().timestamp_micros());
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        if let Some(dt) = d.and_hms_opt(0, 0, 0) {
            return Ok(dt.and_utc().timestamp_micros());
        }
    }
    Err(format!(
        "'{t}' is not a timestamp (RFC 3339, 'YYYY-MM-DD HH:MM:SS' or epoch milliseconds)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_in_range_exactly_where_chrono_has_them() {
        let last = (NaiveDate::MAX - EPOCH).num_days() as i32;
        let first = (NaiveDate::MIN - EPOCH).num_days() as i32;
        for d in [
            i32::MIN,
            first - 1,
            first,
            -SURELY_A_DATE - 1,
            -SURELY_A_DATE,
            0,
            SURELY_A_DATE,
            SURELY_A_DATE + 1,
            last,
            last + 1,
            i32::MAX,
        ] {
            assert_eq!(date_in_range(d), date_of(d).is_some(), "day {d}");
        }
        assert!(date_in_range(last) && !date_in_range(last + 1));
    }

    #[test]
    fn plain_dates_read_as_the_format_parser_reads_them() {
        for t in [
            "2024-02-29",
            "2023-02-29",
            "0000-01-01",
            "9999-12-31",
            "1970-01-01",
            "2024-13-01",
            "2024-00-10",
            "2024-01-32",
            "2024-1-01",
            "+2024-01-01",
            "2024/01/01",
            "2024-01-1x",
            "20240-01-01",
            "",
        ] {
            let format = NaiveDate::parse_from_str(t, "%Y-%m-%d").ok();
            let plain = plain_date(t);
            let format_days = format.map(|d| (d - EPOCH).num_days() as i32);
            assert!(plain.is_none() || plain == format_days, "{t}");
            assert_eq!(
                parse_date(t).ok(),
                format.map(|d| (d - EPOCH).num_days() as i32),
                "{t}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn every_plain_date_counts_the_days_the_calendar_does(days in -719_528i64..2_932_896) {
            // 0000-01-01 to 9999-12-31, the dates with four-digit years.
            let date = EPOCH + chrono::TimeDelta::days(days);
            let text = date.format("%Y-%m-%d").to_string();
            proptest::prop_assert_eq!(plain_date(&text), Some(days as i32), "{}", text);
        }
    }

    fn col(ty: ColumnType) -> Column {
        Column {
            name: "c".into(),
            ty,
            nullable: true,
        }
    }

    #[test]
    fn text_round_trips_through_render() {
        let cases = [
            (ColumnType::Int32, "-42"),
            (ColumnType::UInt64, "18446744073709551615"),
            (ColumnType::Float64, "1.5"),
            (ColumnType::Boolean, "true"),
            (ColumnType::Utf8, "héllo, world"),
            (ColumnType::Date32, "2024-02-29"),
            (ColumnType::Timestamp, "2024-02-29T12:34:56.789000Z"),
            (
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                "-0.05",
            ),
        ];
        for (ty, text) in cases {
            let v = Value::parse_text(text, &col(ty)).unwrap();
            assert_eq!(v.render(ty), text, "{ty}");
            assert_eq!(Value::from_proto(&v.to_proto()).unwrap(), v);
        }
    }

    #[test]
    fn values_that_do_not_fit_are_refused_with_the_reason() {
        let e = |ty, t: &str| Value::parse_text(t, &col(ty)).unwrap_err().to_string();
        assert!(e(ColumnType::Int8, "300").contains("out of range"));
        assert!(e(ColumnType::Int64, "12x").contains("not an integer"));
        let dec = ColumnType::Decimal {
            precision: 5,
            scale: 2,
        };
        assert!(e(dec, "1.234").contains("more than 2 digits"));
        assert!(e(dec, "1234.5").contains("does not fit"));
        assert!(e(ColumnType::Date32, "2024-13-01").contains("not a date"));
        let not_null = Column {
            nullable: false,
            ..col(ColumnType::Int64)
        };
        assert!(Value::parse_text("", &not_null)
            .unwrap_err()
            .to_string()
            .contains("NULL is not allowed"));
        assert!(Value::from_json(&serde_json::json!([1]), &col(ColumnType::Int64)).is_err());
    }

    #[test]
    fn json_numbers_fill_every_numeric_type() {
        let j = serde_json::json!(12);
        assert_eq!(
            Value::from_json(&j, &col(ColumnType::Float32)).unwrap(),
            Value::Float(12.0)
        );
        let dec = ColumnType::Decimal {
            precision: 10,
            scale: 3,
        };
        assert_eq!(
            Value::from_json(&serde_json::json!(1.25), &col(dec)).unwrap(),
            Value::Decimal(1250)
        );
    }
}
