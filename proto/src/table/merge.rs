//! Merges: atomic, idempotent updates of a row's aggregate columns by several writers.
//!
//! A stream job keeps a GROUP BY aggregate in one row of a sink table. Each writer (one per source
//! partition, say) aggregates a range `[from, to)` of its source's offsets and sends a [`RowMerge`]
//! holding one [`MergeOp`] per non-key column: add to a sum, keep a minimum or maximum, add to an
//! average. The row remembers, per source, the offset its last applied merge ended at (its *mark*),
//! so a writer that replays its input after a crash cannot count anything twice. With `M` the
//! row's mark for the merge's source (none when the source never merged into the row):
//!
//! - `M >= to`: the range was merged already: [`MergeOutcome::Covered`], the row is untouched;
//! - no `M`, or `M <= from`: [`MergeOutcome::Applied`]: every op is combined into the row (which is
//!   created when absent) and the mark becomes `to`;
//! - `from < M < to`: part of the range was merged: [`MergeOutcome::Overlap`]`(M)`, the row is
//!   untouched; the writer aggregates its records again from `M` and retries with `from = M`.
//!
//! Cells combine as SQL aggregates do: a NULL delta changes nothing, a NULL cell takes the delta.
//! Sums stay in their kind (integers are checked for overflow); minimum and maximum compare values
//! of the same kind; an average is kept as a sum and a count in the row's [`MergeState`] and shown
//! as their quotient. Every resulting cell is checked against its column's type
//! ([`MergeTarget`]), so a merge never stores what the column cannot hold. A merge that fails
//! changes nothing.
//!
//! The row's merge state (marks and averages) is stored beside its cells, invisible to readers; a
//! plain put of the row drops it.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::row::{decode_cell, encode_cell};
use super::types::{Column, ColumnType, MAX_DECIMAL_PRECISION};
use super::value::Value;
use super::TableError;
use crate::v1;

/// What one merge does to one non-key column.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeOp {
    /// Leaves the cell as it is (NULL in a row the merge creates).
    Keep,
    /// Adds the value to the cell; a NULL value adds nothing and a NULL cell becomes the value.
    Sum(Value),
    /// Keeps the smaller of the cell and the value (NULL is ignored).
    Min(Value),
    /// Keeps the larger of the cell and the value (NULL is ignored).
    Max(Value),
    /// Adds `count` values summing to `sum` (a float or a decimal) to the column's running average.
    Avg {
        /// Sum of the values added (NULL when `count` is 0).
        sum: Value,
        /// How many values were added.
        count: u64,
    },
    /// Replaces the cell with the value, NULL included (a stream job's upsert: the row then
    /// shows the latest record, and the marks keep an older one from replacing it).
    Set(Value),
}

/// One merge into one row: its encoded key, the source and offset range it aggregates, and one op
/// per value column (the table's non-key columns, in column order).
#[derive(Debug, Clone, PartialEq)]
pub struct RowMerge {
    /// Encoded primary key.
    pub key: Vec<u8>,
    /// The writer's source (a topic partition, say); the row keeps a mark per source.
    pub source: String,
    /// First offset of the source the merge aggregates.
    pub from: u64,
    /// Offset just past the last one the merge aggregates.
    pub to: u64,
    /// One op per value column.
    pub ops: Vec<MergeOp>,
}

/// What a merge did to its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeOutcome {
    /// Combined into the row; the source's mark is now the merge's `to`.
    Applied,
    /// The row's mark for the source is at or past `to`: already merged, nothing changed.
    Covered,
    /// The row's mark for the source falls inside `(from, to)`: nothing changed; merge again from
    /// this mark.
    Overlap(u64),
}

/// The type a merged value column must keep: every cell a merge writes is checked against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeTarget {
    /// The column's type.
    pub ty: ColumnType,
    /// Whether the column may hold NULL.
    pub nullable: bool,
}

impl From<&Column> for MergeTarget {
    fn from(c: &Column) -> MergeTarget {
        MergeTarget {
            ty: c.ty,
            nullable: c.nullable,
        }
    }
}

impl MergeTarget {
    fn column(&self) -> Column {
        Column {
            name: String::new(),
            ty: self.ty,
            nullable: self.nullable,
        }
    }
}

/// A row's merge bookkeeping, stored beside its cells.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeState {
    /// Per source, the offset the last merge applied from it ended at.
    pub marks: BTreeMap<String, u64>,
    /// Per value column (its position among the value columns) holding an average: the sum and
    /// count of the values averaged so far.
    pub avgs: BTreeMap<u32, (Value, u64)>,
}

/// A row as merges see it: its merge state and its value cells (one per value column).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeRow {
    /// Marks and averages.
    pub state: MergeState,
    /// The value cells, in value-column order.
    pub cells: Vec<Value>,
}

/// Why a merge was refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    /// One value column's op does not combine with the row (a sum overflows, values of different
    /// kinds, a result the column's type cannot hold).
    #[error("value column {column}: {reason}")]
    Column {
        /// Position of the column among the value columns.
        column: usize,
        /// What is wrong.
        reason: String,
    },
    /// The merge as a whole does not fit the row (offset range, number of ops).
    #[error("{0}")]
    Invalid(String),
}

impl RowMerge {
    /// What the merge would do to a row with merge state `state` (None: no row), by its marks
    /// alone.
    pub fn outcome(&self, state: Option<&MergeState>) -> MergeOutcome {
        match state.and_then(|s| s.marks.get(&self.source)) {
            Some(&m) if m >= self.to => MergeOutcome::Covered,
            Some(&m) if m > self.from => MergeOutcome::Overlap(m),
            _ => MergeOutcome::Applied,
        }
    }

    /// Applies the merge to `row` (None: the row does not exist), whose value columns have the
    /// types `targets`. On [`MergeOutcome::Applied`] `row` holds the merged row; otherwise, and on
    /// an error, it is unchanged.
    pub fn apply(
        &self,
        targets: &[MergeTarget],
        row: &mut Option<MergeRow>,
    ) -> Result<MergeOutcome, MergeError> {
        if self.from > self.to {
            return Err(MergeError::Invalid(format!(
                "offset range [{}, {}) ends before it starts",
                self.from, self.to
            )));
        }
        if self.ops.len() != targets.len() {
            return Err(MergeError::Invalid(format!(
                "{} ops for {} value columns",
                self.ops.len(),
                targets.len()
            )));
        }
        let outcome = self.outcome(row.as_ref().map(|r| &r.state));
        if outcome != MergeOutcome::Applied {
            return Ok(outcome);
        }
        let (mut state, old) = match row.as_ref() {
            Some(r) => {
                if r.cells.len() != self.ops.len() {
                    return Err(MergeError::Invalid(format!(
                        "the row has {} value cells, the merge {} ops",
                        r.cells.len(),
                        self.ops.len()
                    )));
                }
                (r.state.clone(), Some(r.cells.as_slice()))
            }
            None => (MergeState::default(), None),
        };
        let mut cells = Vec::with_capacity(self.ops.len());
        for (i, (op, target)) in self.ops.iter().zip(targets).enumerate() {
            let at = |reason: String| MergeError::Column { column: i, reason };
            let cur = old.map_or(&Value::Null, |c| &c[i]);
            let v = match op {
                MergeOp::Keep => cur.clone(),
                MergeOp::Sum(d) => add(cur, d).map_err(at)?,
                MergeOp::Min(d) => pick(cur, d, Ordering::Less).map_err(at)?,
                MergeOp::Max(d) => pick(cur, d, Ordering::Greater).map_err(at)?,
                MergeOp::Set(v) => v.clone(),
                MergeOp::Avg { sum, count } => {
                    let col = u32::try_from(i)
                        .map_err(|_| MergeError::Invalid(format!("{i} columns are too many")))?;
                    avg(&mut state, col, cur, sum, *count).map_err(at)?
                }
            };
            let v = v.check(&target.column()).map_err(|e| match e {
                TableError::Value { reason, .. } => at(reason),
                TableError::Null { .. } => at("NULL is not allowed".into()),
                other => at(other.to_string()),
            })?;
            cells.push(v);
        }
        state.marks.insert(self.source.clone(), self.to);
        *row = Some(MergeRow { state, cells });
        Ok(MergeOutcome::Applied)
    }
}

fn summable(v: &Value) -> bool {
    matches!(
        v,
        Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::Decimal(_)
    )
}

/// `cur + d` as SQL's SUM combines: NULL adds nothing, a NULL cell takes the delta.
pub fn add(cur: &Value, d: &Value) -> Result<Value, String> {
    if d.is_null() {
        return Ok(cur.clone());
    }
    if !summable(d) {
        return Err(format!("cannot sum {}", d.kind()));
    }
    if cur.is_null() {
        return Ok(d.clone());
    }
    let overflow = || format!("the sum overflows: {cur:?} + {d:?}");
    match (cur, d) {
        (Value::Int(a), Value::Int(b)) => a.checked_add(*b).map(Value::Int).ok_or_else(overflow),
        (Value::UInt(a), Value::UInt(b)) => a.checked_add(*b).map(Value::UInt).ok_or_else(overflow),
        (Value::Float(a), Value::Float(b)) => Ok(Value::Float(a + b)),
        (Value::Decimal(a), Value::Decimal(b)) => {
            a.checked_add(*b).map(Value::Decimal).ok_or_else(overflow)
        }
        _ => Err(format!(
            "cannot add {} to a cell holding {}",
            d.kind(),
            cur.kind()
        )),
    }
}

/// Orders two values of the same kind (floats by IEEE total order, so NaN has a place).
fn compare(a: &Value, b: &Value) -> Result<Ordering, String> {
    Ok(match (a, b) {
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::UInt(x), Value::UInt(y)) => x.cmp(y),
        (Value::Float(x), Value::Float(y)) => x.total_cmp(y),
        (Value::Decimal(x), Value::Decimal(y)) => x.cmp(y),
        (Value::Date(x), Value::Date(y)) => x.cmp(y),
        (Value::Timestamp(x), Value::Timestamp(y)) => x.cmp(y),
        (Value::Str(x), Value::Str(y)) => x.cmp(y),
        (Value::Bytes(x), Value::Bytes(y)) => x.cmp(y),
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        _ => {
            return Err(format!(
                "cannot compare {} with a cell holding {}",
                b.kind(),
                a.kind()
            ))
        }
    })
}

/// The minimum (`keep` Less) or maximum (Greater) of the cell and the delta, ignoring NULL.
pub fn pick(cur: &Value, d: &Value, keep: Ordering) -> Result<Value, String> {
    if d.is_null() {
        return Ok(cur.clone());
    }
    if cur.is_null() {
        return Ok(d.clone());
    }
    Ok(if compare(cur, d)?.reverse() == keep {
        d.clone()
    } else {
        cur.clone()
    })
}

fn is_zero_or_null(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Float(f) => *f == 0.0,
        Value::Decimal(d) => *d == 0,
        _ => false,
    }
}

/// Adds `count` values summing to `sum` to the average of value column `col`; returns the cell.
fn avg(
    state: &mut MergeState,
    col: u32,
    cur: &Value,
    sum: &Value,
    count: u64,
) -> Result<Value, String> {
    if count == 0 {
        if is_zero_or_null(sum) {
            return Ok(cur.clone());
        }
        return Err(format!("an average of no values cannot sum to {sum:?}"));
    }
    if !matches!(sum, Value::Float(_) | Value::Decimal(_)) {
        return Err(format!(
            "the sum of an average must be a float or a decimal, not {}",
            sum.kind()
        ));
    }
    let acc = match state.avgs.get(&col) {
        None => (sum.clone(), count),
        Some((s, n)) => {
            let s = match (s, sum) {
                (Value::Float(a), Value::Float(b)) => Value::Float(a + b),
                (Value::Decimal(a), Value::Decimal(b)) => Value::Decimal(
                    a.checked_add(*b)
                        .ok_or_else(|| format!("the sum of the average overflows: {a} + {b}"))?,
                ),
                _ => {
                    return Err(format!(
                        "the average so far sums {}, this merge adds {}",
                        s.kind(),
                        sum.kind()
                    ))
                }
            };
            let n = n
                .checked_add(count)
                .ok_or_else(|| "the count of the average overflows".to_string())?;
            (s, n)
        }
    };
    let v = mean(&acc.0, acc.1);
    state.avgs.insert(col, acc);
    Ok(v)
}

/// `sum / count`: a float, or a decimal rounded half away from zero; NULL of no values.
fn mean(sum: &Value, count: u64) -> Value {
    if count == 0 {
        return Value::Null;
    }
    match sum {
        Value::Float(s) => Value::Float(s / count as f64),
        Value::Decimal(s) => Value::Decimal(div_round(*s, count)),
        _ => Value::Null,
    }
}

/// `s / n` rounded half away from zero.
fn div_round(s: i128, n: u64) -> i128 {
    let d = i128::from(n);
    let (q, r) = (s / d, s % d);
    if r.unsigned_abs() * 2 >= n as u128 {
        q + s.signum()
    } else {
        q
    }
}

// ---------------------------------------------------------------- encodings

const OP_KEEP: u8 = 0;
const OP_SUM: u8 = 1;
const OP_MIN: u8 = 2;
const OP_MAX: u8 = 3;
const OP_AVG: u8 = 4;
const OP_SET: u8 = 5;

fn bad(m: impl Into<String>) -> TableError {
    TableError::Encoding(m.into())
}

fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], TableError> {
    if b.len() < n {
        return Err(bad("merge bytes end early"));
    }
    let (h, t) = b.split_at(n);
    *b = t;
    Ok(h)
}

fn byte(b: &mut &[u8]) -> Result<u8, TableError> {
    Ok(take(b, 1)?[0])
}

fn u32_be(b: &mut &[u8]) -> Result<u32, TableError> {
    let mut a = [0u8; 4];
    a.copy_from_slice(take(b, 4)?);
    Ok(u32::from_be_bytes(a))
}

fn u64_be(b: &mut &[u8]) -> Result<u64, TableError> {
    let mut a = [0u8; 8];
    a.copy_from_slice(take(b, 8)?);
    Ok(u64::from_be_bytes(a))
}

fn len_u32(n: usize) -> Result<[u8; 4], TableError> {
    u32::try_from(n)
        .map(u32::to_be_bytes)
        .map_err(|_| bad(format!("{n} does not fit 32 bits")))
}

fn encode_type(ty: ColumnType, out: &mut Vec<u8>) {
    let tag = match ty {
        ColumnType::Int8 => 0,
        ColumnType::Int16 => 1,
        ColumnType::Int32 => 2,
        ColumnType::Int64 => 3,
        ColumnType::UInt64 => 4,
        ColumnType::Float32 => 5,
        ColumnType::Float64 => 6,
        ColumnType::Decimal { precision, scale } => {
            out.extend_from_slice(&[7, precision, scale]);
            return;
        }
        ColumnType::Boolean => 8,
        ColumnType::Utf8 => 9,
        ColumnType::Binary => 10,
        ColumnType::Date32 => 11,
        ColumnType::Timestamp => 12,
    };
    out.push(tag);
}

fn decode_type(b: &mut &[u8]) -> Result<ColumnType, TableError> {
    Ok(match byte(b)? {
        0 => ColumnType::Int8,
        1 => ColumnType::Int16,
        2 => ColumnType::Int32,
        3 => ColumnType::Int64,
        4 => ColumnType::UInt64,
        5 => ColumnType::Float32,
        6 => ColumnType::Float64,
        7 => {
            let (precision, scale) = (byte(b)?, byte(b)?);
            if precision == 0 || precision > MAX_DECIMAL_PRECISION || scale > precision {
                return Err(bad(format!("DECIMAL({precision},{scale}) is not a type")));
            }
            ColumnType::Decimal { precision, scale }
        }
        8 => ColumnType::Boolean,
        9 => ColumnType::Utf8,
        10 => ColumnType::Binary,
        11 => ColumnType::Date32,
        12 => ColumnType::Timestamp,
        t => return Err(bad(format!("unknown column type tag {t}"))),
    })
}

/// Encodes the ops of a merge with the types of their columns, as a region's log carries them
/// (one op per value column; [`decode_ops`] reads them back).
pub fn encode_ops(ops: &[MergeOp], targets: &[MergeTarget]) -> Result<Vec<u8>, MergeError> {
    if ops.len() != targets.len() {
        return Err(MergeError::Invalid(format!(
            "{} ops for {} value columns",
            ops.len(),
            targets.len()
        )));
    }
    let mut out = Vec::with_capacity(ops.len() * 12);
    for (op, t) in ops.iter().zip(targets) {
        encode_type(t.ty, &mut out);
        out.push(u8::from(t.nullable));
        match op {
            MergeOp::Keep => out.push(OP_KEEP),
            MergeOp::Sum(v) => {
                out.push(OP_SUM);
                encode_cell(v, &mut out);
            }
            MergeOp::Min(v) => {
                out.push(OP_MIN);
                encode_cell(v, &mut out);
            }
            MergeOp::Max(v) => {
                out.push(OP_MAX);
                encode_cell(v, &mut out);
            }
            MergeOp::Avg { sum, count } => {
                out.push(OP_AVG);
                encode_cell(sum, &mut out);
                out.extend_from_slice(&count.to_be_bytes());
            }
            MergeOp::Set(v) => {
                out.push(OP_SET);
                encode_cell(v, &mut out);
            }
        }
    }
    Ok(out)
}

/// Reads what [`encode_ops`] wrote: the ops and the types of their columns.
pub fn decode_ops(mut b: &[u8]) -> Result<(Vec<MergeOp>, Vec<MergeTarget>), TableError> {
    let (mut ops, mut targets) = (Vec::new(), Vec::new());
    while !b.is_empty() {
        let ty = decode_type(&mut b)?;
        let nullable = match byte(&mut b)? {
            0 => false,
            1 => true,
            x => return Err(bad(format!("nullable byte {x}"))),
        };
        let op = match byte(&mut b)? {
            OP_KEEP => MergeOp::Keep,
            OP_SUM => MergeOp::Sum(decode_cell(&mut b)?),
            OP_MIN => MergeOp::Min(decode_cell(&mut b)?),
            OP_MAX => MergeOp::Max(decode_cell(&mut b)?),
            OP_AVG => MergeOp::Avg {
                sum: decode_cell(&mut b)?,
                count: u64_be(&mut b)?,
            },
            OP_SET => MergeOp::Set(decode_cell(&mut b)?),
            t => return Err(bad(format!("unknown merge op tag {t}"))),
        };
        ops.push(op);
        targets.push(MergeTarget { ty, nullable });
    }
    Ok((ops, targets))
}

impl MergeState {
    /// The stored form: the marks, then the averages, each in key order (equal states encode to
    /// equal bytes).
    pub fn encode(&self) -> Result<Vec<u8>, TableError> {
        let mut out = Vec::with_capacity(16 + self.marks.len() * 24 + self.avgs.len() * 32);
        out.extend_from_slice(&len_u32(self.marks.len())?);
        for (source, mark) in &self.marks {
            out.extend_from_slice(&len_u32(source.len())?);
            out.extend_from_slice(source.as_bytes());
            out.extend_from_slice(&mark.to_be_bytes());
        }
        out.extend_from_slice(&len_u32(self.avgs.len())?);
        for (col, (sum, count)) in &self.avgs {
            out.extend_from_slice(&col.to_be_bytes());
            encode_cell(sum, &mut out);
            out.extend_from_slice(&count.to_be_bytes());
        }
        Ok(out)
    }

    /// Reads what [`MergeState::encode`] wrote; anything else (keys out of order, bytes left
    /// over) is refused.
    pub fn decode(mut b: &[u8]) -> Result<MergeState, TableError> {
        let mut st = MergeState::default();
        let n = u32_be(&mut b)?;
        for _ in 0..n {
            let len = u32_be(&mut b)? as usize;
            let source = std::str::from_utf8(take(&mut b, len)?)
                .map_err(|_| bad("a merge source is not UTF-8"))?
                .to_string();
            let mark = u64_be(&mut b)?;
            if st.marks.last_key_value().is_some_and(|(k, _)| *k >= source) {
                return Err(bad("merge marks out of order"));
            }
            st.marks.insert(source, mark);
        }
        let n = u32_be(&mut b)?;
        for _ in 0..n {
            let col = u32_be(&mut b)?;
            let sum = decode_cell(&mut b)?;
            let count = u64_be(&mut b)?;
            if st.avgs.last_key_value().is_some_and(|(k, _)| *k >= col) {
                return Err(bad("merge averages out of order"));
            }
            st.avgs.insert(col, (sum, count));
        }
        if !b.is_empty() {
            return Err(bad(format!("{} bytes left after a merge state", b.len())));
        }
        Ok(st)
    }
}

impl MergeOp {
    /// The wire form.
    pub fn to_proto(&self) -> v1::MergeCell {
        use v1::merge_cell::Op;
        let op = match self {
            MergeOp::Keep => Op::Keep(true),
            MergeOp::Sum(v) => Op::Sum(v.to_proto()),
            MergeOp::Min(v) => Op::Min(v.to_proto()),
            MergeOp::Max(v) => Op::Max(v.to_proto()),
            MergeOp::Avg { sum, count } => Op::Avg(v1::MergeAvg {
                sum: Some(sum.to_proto()),
                count: *count,
            }),
            MergeOp::Set(v) => Op::Set(v.to_proto()),
        };
        v1::MergeCell { op: Some(op) }
    }

    /// Reads the wire form; a cell with no op keeps the column.
    pub fn from_proto(c: &v1::MergeCell) -> Result<MergeOp, TableError> {
        use v1::merge_cell::Op;
        let value = |v: &v1::Value| Value::from_proto(v);
        Ok(match &c.op {
            None | Some(Op::Keep(_)) => MergeOp::Keep,
            Some(Op::Sum(v)) => MergeOp::Sum(value(v)?),
            Some(Op::Min(v)) => MergeOp::Min(value(v)?),
            Some(Op::Max(v)) => MergeOp::Max(value(v)?),
            Some(Op::Avg(a)) => MergeOp::Avg {
                sum: match &a.sum {
                    Some(v) => value(v)?,
                    None => Value::Null,
                },
                count: a.count,
            },
            Some(Op::Set(v)) => MergeOp::Set(value(v)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ty: ColumnType) -> MergeTarget {
        MergeTarget { ty, nullable: true }
    }

    fn merge(source: &str, from: u64, to: u64, ops: Vec<MergeOp>) -> RowMerge {
        RowMerge {
            key: b"k".to_vec(),
            source: source.into(),
            from,
            to,
            ops,
        }
    }

    const DEC: ColumnType = ColumnType::Decimal {
        precision: 10,
        scale: 2,
    };

    #[test]
    fn marks_decide_applied_covered_and_overlap() {
        let targets = [t(ColumnType::Int64)];
        let mut row = None;
        let m = |from, to| merge("a", from, to, vec![MergeOp::Sum(Value::Int(1))]);
        assert_eq!(
            m(0, 10).apply(&targets, &mut row),
            Ok(MergeOutcome::Applied)
        );
        let after = row.clone();
        assert_eq!(
            m(0, 10).apply(&targets, &mut row),
            Ok(MergeOutcome::Covered)
        );
        assert_eq!(m(3, 7).apply(&targets, &mut row), Ok(MergeOutcome::Covered));
        assert_eq!(
            m(5, 15).apply(&targets, &mut row),
            Ok(MergeOutcome::Overlap(10))
        );
        assert_eq!(row, after, "covered and overlapping merges change nothing");
        // A gap after the mark is fine (the source skipped offsets without records for the row).
        assert_eq!(
            m(12, 20).apply(&targets, &mut row),
            Ok(MergeOutcome::Applied)
        );
        let r = row.as_ref().unwrap();
        assert_eq!(r.cells, vec![Value::Int(2)]);
        assert_eq!(r.state.marks.get("a"), Some(&20));
        // Another source has its own mark; an empty range is applied and moves nothing but it.
        assert_eq!(
            merge("b", 15, 15, vec![MergeOp::Keep]).apply(&targets, &mut row),
            Ok(MergeOutcome::Applied)
        );
        assert_eq!(row.as_ref().unwrap().state.marks.get("b"), Some(&15));
        assert!(matches!(
            m(5, 4).apply(&targets, &mut row),
            Err(MergeError::Invalid(_))
        ));
    }

    #[test]
    fn sums_follow_sql_null_rules_and_refuse_overflow_and_other_kinds() {
        let targets = [
            t(ColumnType::Int64),
            t(ColumnType::UInt64),
            t(ColumnType::Float64),
            t(DEC),
            t(ColumnType::Utf8),
        ];
        let mut row = None;
        let ops = |a, b, c, d| {
            vec![
                MergeOp::Sum(a),
                MergeOp::Sum(b),
                MergeOp::Sum(c),
                MergeOp::Sum(d),
                MergeOp::Keep,
            ]
        };
        // A new row: NULL deltas leave NULL cells.
        merge(
            "a",
            0,
            1,
            ops(Value::Int(5), Value::Null, Value::Float(1.5), Value::Null),
        )
        .apply(&targets, &mut row)
        .unwrap();
        assert_eq!(
            row.as_ref().unwrap().cells,
            vec![
                Value::Int(5),
                Value::Null,
                Value::Float(1.5),
                Value::Null,
                Value::Null
            ]
        );
        merge(
            "a",
            1,
            2,
            ops(
                Value::Null,
                Value::UInt(7),
                Value::Float(2.0),
                Value::Decimal(-125),
            ),
        )
        .apply(&targets, &mut row)
        .unwrap();
        assert_eq!(
            row.as_ref().unwrap().cells,
            vec![
                Value::Int(5),
                Value::UInt(7),
                Value::Float(3.5),
                Value::Decimal(-125),
                Value::Null
            ]
        );
        let before = row.clone();
        let e = merge(
            "a",
            2,
            3,
            ops(Value::Int(i64::MAX), Value::Null, Value::Null, Value::Null),
        )
        .apply(&targets, &mut row)
        .unwrap_err();
        assert!(
            matches!(&e, MergeError::Column { column: 0, reason } if reason.contains("overflows")),
            "{e}"
        );
        let e = merge(
            "a",
            2,
            3,
            ops(Value::Null, Value::Int(1), Value::Null, Value::Null),
        )
        .apply(&targets, &mut row)
        .unwrap_err();
        assert!(matches!(e, MergeError::Column { column: 1, .. }), "{e}");
        let e = merge(
            "a",
            2,
            3,
            vec![
                MergeOp::Keep,
                MergeOp::Keep,
                MergeOp::Keep,
                MergeOp::Keep,
                MergeOp::Sum(Value::Str("x".into())),
            ],
        )
        .apply(&targets, &mut row)
        .unwrap_err();
        assert!(matches!(e, MergeError::Column { column: 4, .. }), "{e}");
        assert_eq!(
            row, before,
            "a failed merge changes nothing, marks included"
        );
    }

    #[test]
    fn results_are_checked_against_the_column_type() {
        let mut row = None;
        // An INT sum past 32 bits, a DECIMAL(10,2) past 10 digits.
        let targets = [t(ColumnType::Int32), t(DEC), t(ColumnType::Float32)];
        merge(
            "a",
            0,
            1,
            vec![
                MergeOp::Sum(Value::Int(i64::from(i32::MAX))),
                MergeOp::Sum(Value::Decimal(9_999_999_999)),
                MergeOp::Sum(Value::Float(0.1)),
            ],
        )
        .apply(&targets, &mut row)
        .unwrap();
        // REAL cells are rounded to f32 as a put would store them.
        assert_eq!(
            row.as_ref().unwrap().cells[2],
            Value::Float(f64::from(0.1f32))
        );
        for (col, op) in [
            (0, MergeOp::Sum(Value::Int(1))),
            (1, MergeOp::Sum(Value::Decimal(1))),
        ] {
            let mut ops = vec![MergeOp::Keep, MergeOp::Keep, MergeOp::Keep];
            ops[col] = op;
            let e = merge("a", 1, 2, ops).apply(&targets, &mut row).unwrap_err();
            assert!(
                matches!(e, MergeError::Column { column, .. } if column == col),
                "{e}"
            );
        }
        // A NOT NULL column a new row would leave NULL.
        let strict = [MergeTarget {
            ty: ColumnType::Int64,
            nullable: false,
        }];
        let mut fresh = None;
        let e = merge("a", 0, 1, vec![MergeOp::Keep])
            .apply(&strict, &mut fresh)
            .unwrap_err();
        assert!(e.to_string().contains("NULL"), "{e}");
        assert!(fresh.is_none());
    }

    #[test]
    fn min_and_max_ignore_null_and_compare_within_a_kind() {
        let targets = [
            t(ColumnType::Int64),
            t(ColumnType::Utf8),
            t(ColumnType::Float64),
            t(ColumnType::Timestamp),
        ];
        let mut row = None;
        let m = |from, a, b, c, d| {
            merge(
                "a",
                from,
                from + 1,
                vec![
                    MergeOp::Min(a),
                    MergeOp::Max(b),
                    MergeOp::Min(c),
                    MergeOp::Max(d),
                ],
            )
        };
        m(
            0,
            Value::Int(5),
            Value::Null,
            Value::Float(-0.5),
            Value::Timestamp(10),
        )
        .apply(&targets, &mut row)
        .unwrap();
        m(
            1,
            Value::Int(3),
            Value::Str("b".into()),
            Value::Float(2.0),
            Value::Timestamp(7),
        )
        .apply(&targets, &mut row)
        .unwrap();
        m(
            2,
            Value::Null,
            Value::Str("a".into()),
            Value::Null,
            Value::Timestamp(11),
        )
        .apply(&targets, &mut row)
        .unwrap();
        assert_eq!(
            row.as_ref().unwrap().cells,
            vec![
                Value::Int(3),
                Value::Str("b".into()),
                Value::Float(-0.5),
                Value::Timestamp(11)
            ]
        );
        let e = m(3, Value::UInt(1), Value::Null, Value::Null, Value::Null)
            .apply(&targets, &mut row)
            .unwrap_err();
        assert!(e.to_string().contains("cannot compare"), "{e}");
    }

    #[test]
    fn averages_keep_sum_and_count_and_round_decimals_half_away_from_zero() {
        let targets = [t(ColumnType::Float64), t(DEC)];
        let mut row = None;
        let m = |from, f: Value, fc, d: Value, dc| {
            merge(
                "a",
                from,
                from + 1,
                vec![
                    MergeOp::Avg { sum: f, count: fc },
                    MergeOp::Avg { sum: d, count: dc },
                ],
            )
        };
        // Nothing averaged yet: NULL.
        m(0, Value::Null, 0, Value::Null, 0)
            .apply(&targets, &mut row)
            .unwrap();
        assert_eq!(row.as_ref().unwrap().cells, vec![Value::Null, Value::Null]);
        // 1.00 + 2.00 + 2.00 over 3 = 1.666.. -> 1.67; floats 3.0 / 2.
        m(1, Value::Float(3.0), 2, Value::Decimal(300), 2)
            .apply(&targets, &mut row)
            .unwrap();
        m(2, Value::Null, 0, Value::Decimal(200), 1)
            .apply(&targets, &mut row)
            .unwrap();
        let r = row.as_ref().unwrap();
        assert_eq!(r.cells, vec![Value::Float(1.5), Value::Decimal(167)]);
        assert_eq!(r.state.avgs.get(&1), Some(&(Value::Decimal(500), 3)));
        assert_eq!(div_round(-5, 2), -3);
        assert_eq!(div_round(5, 2), 3);
        assert_eq!(div_round(-4, 3), -1);
        // 2^127 / (2^64 - 1) is just above 2^63 + 1/2: rounded away from zero, without overflow.
        assert_eq!(
            div_round(i128::MIN, u64::MAX),
            i128::MIN / i128::from(u64::MAX) - 1
        );
        // An average's sum must be a float or decimal, of the kind it started with.
        let before = row.clone();
        for bad in [
            m(3, Value::Int(1), 1, Value::Null, 0),
            m(3, Value::Null, 0, Value::Float(1.0), 1),
            m(3, Value::Null, 2, Value::Null, 0),
            m(3, Value::Float(1.0), 0, Value::Null, 0),
        ] {
            assert!(bad.apply(&targets, &mut row).is_err());
        }
        assert_eq!(row, before);
    }

    #[test]
    fn sets_replace_cells_unless_the_row_reflects_a_later_record() {
        let targets = [t(ColumnType::Utf8), t(ColumnType::Int64)];
        let set = |from, to, a: &str, b: Value| {
            merge(
                "p0",
                from,
                to,
                vec![MergeOp::Set(Value::Str(a.into())), MergeOp::Set(b)],
            )
        };
        let mut row = None;
        assert_eq!(
            set(0, 10, "first", Value::Int(1)).apply(&targets, &mut row),
            Ok(MergeOutcome::Applied)
        );
        assert_eq!(
            set(10, 20, "second", Value::Null).apply(&targets, &mut row),
            Ok(MergeOutcome::Applied)
        );
        let cells = |row: &Option<MergeRow>| row.as_ref().map(|r| r.cells.clone());
        assert_eq!(
            cells(&row),
            Some(vec![Value::Str("second".into()), Value::Null])
        );
        // A replaced instance of the writer, late with records 5..10: the row keeps the newer.
        assert_eq!(
            set(5, 10, "stale", Value::Int(5)).apply(&targets, &mut row),
            Ok(MergeOutcome::Covered)
        );
        assert_eq!(
            cells(&row),
            Some(vec![Value::Str("second".into()), Value::Null])
        );
        // A value that does not fit the column is refused and changes nothing.
        let not_null = [
            t(ColumnType::Utf8),
            MergeTarget {
                ty: ColumnType::Int64,
                nullable: false,
            },
        ];
        assert!(set(20, 30, "x", Value::Null)
            .apply(&not_null, &mut row)
            .is_err());
        assert_eq!(
            cells(&row),
            Some(vec![Value::Str("second".into()), Value::Null])
        );
    }

    #[test]
    fn states_and_ops_round_trip_and_refuse_bad_bytes() {
        let mut st = MergeState::default();
        assert_eq!(MergeState::decode(&st.encode().unwrap()).unwrap(), st);
        st.marks.insert("topic/1".into(), 42);
        st.marks.insert("topic/0".into(), u64::MAX);
        st.avgs.insert(3, (Value::Decimal(-7), 2));
        st.avgs.insert(0, (Value::Float(0.25), 9));
        let enc = st.encode().unwrap();
        assert_eq!(MergeState::decode(&enc).unwrap(), st);
        assert!(MergeState::decode(&enc[..enc.len() - 1]).is_err());
        let mut longer = enc.clone();
        longer.push(0);
        assert!(MergeState::decode(&longer).is_err());

        let ops = vec![
            MergeOp::Keep,
            MergeOp::Sum(Value::Int(-3)),
            MergeOp::Min(Value::Str("x".into())),
            MergeOp::Max(Value::Null),
            MergeOp::Avg {
                sum: Value::Decimal(12),
                count: 4,
            },
            MergeOp::Set(Value::Str("now".into())),
            MergeOp::Set(Value::Null),
        ];
        let targets = vec![
            t(ColumnType::Boolean),
            MergeTarget {
                ty: ColumnType::Int64,
                nullable: false,
            },
            t(ColumnType::Utf8),
            t(ColumnType::Date32),
            t(DEC),
            t(ColumnType::Utf8),
            t(ColumnType::Int32),
        ];
        let enc = encode_ops(&ops, &targets).unwrap();
        assert_eq!(decode_ops(&enc).unwrap(), (ops.clone(), targets.clone()));
        assert!(decode_ops(&enc[..enc.len() - 1]).is_err());
        assert!(encode_ops(&ops[1..], &targets).is_err());
        for op in &ops {
            assert_eq!(&MergeOp::from_proto(&op.to_proto()).unwrap(), op);
        }
        assert_eq!(
            MergeOp::from_proto(&v1::MergeCell { op: None }).unwrap(),
            MergeOp::Keep
        );
    }
}
