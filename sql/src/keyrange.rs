//! Primary-key ranges taken from a query's filters, so a scan reads only the keys (and regions)
//! the filters can match.
//!
//! Key encoding preserves order and a key prefix encodes to a byte prefix, so equalities on the
//! leading key columns give a prefix, and a range on the next column bounds it. The filters stay
//! in the plan above the scan (the pushdown is inexact): narrowing is only ever a superset.

use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use weir_proto::table::{key, TableSchema, Value};

use crate::types::literal_value;

/// Most key prefixes an `IN` list (or several) may expand to before the scan reads the whole
/// table instead.
const MAX_PREFIXES: usize = 1024;

/// A range of encoded keys `[start, end)`; an empty `end` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// First key (inclusive).
    pub start: Vec<u8>,
    /// Key to stop before; empty: to the end.
    pub end: Vec<u8>,
}

impl KeyRange {
    /// Every key.
    pub fn all() -> KeyRange {
        KeyRange {
            start: Vec::new(),
            end: Vec::new(),
        }
    }

    /// The part of this range inside `[start, end)`, if any.
    pub fn clip(&self, start: &[u8], end: &[u8]) -> Option<KeyRange> {
        let s = if self.start.as_slice() > start {
            self.start.clone()
        } else {
            start.to_vec()
        };
        let e = match (self.end.is_empty(), end.is_empty()) {
            (true, _) => end.to_vec(),
            (false, true) => self.end.clone(),
            (false, false) => std::cmp::min(self.end.as_slice(), end).to_vec(),
        };
        (e.is_empty() || s < e).then_some(KeyRange { start: s, end: e })
    }
}

/// What the filters say about one key column.
#[derive(Debug, Default)]
struct Bounds {
    eq: Option<Vec<Value>>,
    lower: Option<(Value, bool)>,
    upper: Option<(Value, bool)>,
}

fn column_of(e: &Expr) -> Option<&str> {
    match e {
        Expr::Column(c) => Some(c.name.as_str()),
        _ => None,
    }
}

fn literal_of(e: &Expr) -> Option<&datafusion::common::ScalarValue> {
    match e {
        Expr::Literal(v, _) => Some(v),
        _ => None,
    }
}

/// Records what `filter` says about key columns into `bounds` (indexed by key position).
fn collect(schema: &TableSchema, filter: &Expr, bounds: &mut [Bounds]) {
    let key_pos = |name: &str| {
        schema
            .primary_key
            .iter()
            .position(|i| schema.columns[*i].name.eq_ignore_ascii_case(name))
    };
    match filter {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::And => {
            collect(schema, left, bounds);
            collect(schema, right, bounds);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (name, lit, op) = match (
                column_of(left),
                literal_of(right),
                column_of(right),
                literal_of(left),
            ) {
                (Some(n), Some(l), _, _) => (n, l, *op),
                (_, _, Some(n), Some(l)) => match op.swap() {
                    Some(op) => (n, l, op),
                    None => return,
                },
                _ => return,
            };
            let Some(k) = key_pos(name) else { return };
            let col = &schema.columns[schema.primary_key[k]];
            let Some(v) = literal_value(lit, col) else {
                return;
            };
            let b = &mut bounds[k];
            match op {
                Operator::Eq => b.eq = Some(vec![v]),
                Operator::Gt => b.lower = Some((v, false)),
                Operator::GtEq => b.lower = Some((v, true)),
                Operator::Lt => b.upper = Some((v, false)),
                Operator::LtEq => b.upper = Some((v, true)),
                _ => {}
            }
        }
        Expr::Between(bt) if !bt.negated => {
            let (Some(name), Some(lo), Some(hi)) = (
                column_of(&bt.expr),
                literal_of(&bt.low),
                literal_of(&bt.high),
            ) else {
                return;
            };
            let Some(k) = key_pos(name) else { return };
            let col = &schema.columns[schema.primary_key[k]];
            if let (Some(lo), Some(hi)) = (literal_value(lo, col), literal_value(hi, col)) {
                bounds[k].lower = Some((lo, true));
                bounds[k].upper = Some((hi, true));
            }
        }
        Expr::InList(il) if !il.negated => {
            let Some(name) = column_of(&il.expr) else {
                return;
            };
            let Some(k) = key_pos(name) else { return };
            let col = &schema.columns[schema.primary_key[k]];
            let values: Option<Vec<Value>> = il
                .list
                .iter()
                .map(|e| literal_of(e).and_then(|l| literal_value(l, col)))
                .collect();
            if let Some(values) = values {
                bounds[k].eq = Some(values);
            }
        }
        _ => {}
    }
}

/// The key ranges a scan with `filters` must read, in key order and not overlapping.
pub fn key_ranges(schema: &TableSchema, filters: &[Expr]) -> Vec<KeyRange> {
    let mut bounds: Vec<Bounds> = schema
        .primary_key
        .iter()
        .map(|_| Bounds::default())
        .collect();
    for f in filters {
        collect(schema, f, &mut bounds);
    }
    // Key prefixes from the leading equalities (IN lists multiply them).
    let mut prefixes: Vec<Vec<Value>> = vec![Vec::new()];
    let mut next = 0;
    while next < bounds.len() {
        let Some(eq) = &bounds[next].eq else { break };
        if prefixes.len() * eq.len() > MAX_PREFIXES {
            break;
        }
        prefixes = prefixes
            .iter()
            .flat_map(|p| {
                eq.iter().map(move |v| {
                    let mut p = p.clone();
                    p.push(v.clone());
                    p
                })
            })
            .collect();
        next += 1;
    }
    let range_on = bounds.get(next);
    let mut ranges = Vec::new();
    for p in &prefixes {
        let Some(r) = prefix_range(schema, p, range_on) else {
            // A value that does not encode (too long a key): read everything, the filter decides.
            return vec![KeyRange::all()];
        };
        if let Some(r) = r {
            ranges.push(r);
        }
    }
    ranges.sort_by(|a, b| a.start.cmp(&b.start));
    ranges.dedup();
    ranges
}

/// The range of keys starting with `prefix` whose next column lies in `bounds`; `None` when a
/// value does not encode, `Some(None)` when the range is empty.
fn prefix_range(
    schema: &TableSchema,
    prefix: &[Value],
    bounds: Option<&Bounds>,
) -> Option<Option<KeyRange>> {
    let enc = |vals: &[Value]| key::encode_key(schema, vals).ok();
    let base = enc(prefix)?;
    let base_end = if prefix.is_empty() {
        Vec::new()
    } else {
        key::prefix_end(&base).unwrap_or_default()
    };
    let mut range = KeyRange {
        start: base,
        end: base_end,
    };
    if let Some(b) = bounds {
        let with = |v: &Value| {
            let mut p = prefix.to_vec();
            p.push(v.clone());
            enc(&p)
        };
        if let Some((v, inclusive)) = &b.lower {
            let k = with(v)?;
            let start = if *inclusive {
                k
            } else {
                key::prefix_end(&k).unwrap_or_default()
            };
            if start.is_empty() {
                return Some(None);
            }
            if start > range.start {
                range.start = start;
            }
        }
        if let Some((v, inclusive)) = &b.upper {
            let k = with(v)?;
            let end = if *inclusive {
                key::prefix_end(&k).unwrap_or_default()
            } else {
                k
            };
            if !end.is_empty() && (range.end.is_empty() || end < range.end) {
                range.end = end;
            }
        }
    }
    if !range.end.is_empty() && range.start >= range.end {
        return Some(None);
    }
    Some(Some(range))
}
