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

#[cfg(test)]
mod tests {
    use datafusion::prelude::{col, lit};
    use proptest::prelude::*;

    use super::*;

    /// One condition on a key column and how to evaluate it on a row.
    #[derive(Debug, Clone)]
    enum Cond {
        AEq(i64),
        AIn(Vec<i64>),
        AGt(i64),
        AGtEq(i64),
        ALt(i64),
        ALtEq(i64),
        ABetween(i64, i64),
        BEq(String),
        BGt(String),
        BLtEq(String),
    }

    impl Cond {
        fn expr(&self) -> Expr {
            match self {
                Cond::AEq(v) => col("a").eq(lit(*v)),
                Cond::AIn(vs) => col("a").in_list(vs.iter().map(|v| lit(*v)).collect(), false),
                Cond::AGt(v) => col("a").gt(lit(*v)),
                Cond::AGtEq(v) => lit(*v).lt_eq(col("a")),
                Cond::ALt(v) => col("a").lt(lit(*v)),
                Cond::ALtEq(v) => col("a").lt_eq(lit(*v)),
                Cond::ABetween(lo, hi) => col("a").between(lit(*lo), lit(*hi)),
                Cond::BEq(s) => col("b").eq(lit(s.clone())),
                Cond::BGt(s) => col("b").gt(lit(s.clone())),
                Cond::BLtEq(s) => col("b").lt_eq(lit(s.clone())),
            }
        }

        fn holds(&self, a: i64, b: &str) -> bool {
            match self {
                Cond::AEq(v) => a == *v,
                Cond::AIn(vs) => vs.contains(&a),
                Cond::AGt(v) => a > *v,
                Cond::AGtEq(v) => a >= *v,
                Cond::ALt(v) => a < *v,
                Cond::ALtEq(v) => a <= *v,
                Cond::ABetween(lo, hi) => a >= *lo && a <= *hi,
                Cond::BEq(s) => b == s,
                Cond::BGt(s) => b > s.as_str(),
                Cond::BLtEq(s) => b <= s.as_str(),
            }
        }
    }

    fn small() -> impl Strategy<Value = i64> {
        -4i64..4
    }

    fn text() -> impl Strategy<Value = String> {
        "[ab]{0,2}"
    }

    fn cond() -> impl Strategy<Value = Cond> {
        prop_oneof![
            small().prop_map(Cond::AEq),
            prop::collection::vec(small(), 1..4).prop_map(Cond::AIn),
            small().prop_map(Cond::AGt),
            small().prop_map(Cond::AGtEq),
            small().prop_map(Cond::ALt),
            small().prop_map(Cond::ALtEq),
            (small(), small()).prop_map(|(l, h)| Cond::ABetween(l, h)),
            text().prop_map(Cond::BEq),
            text().prop_map(Cond::BGt),
            text().prop_map(Cond::BLtEq),
        ]
    }

    fn schema() -> TableSchema {
        TableSchema::parse("a BIGINT, b VARCHAR, c INT", &["a".into(), "b".into()]).unwrap()
    }

    proptest! {
        /// Narrowing never loses a row: every key the filters accept lies in one of the ranges,
        /// and the ranges are ordered and do not overlap.
        #[test]
        fn ranges_cover_every_matching_key(
            conds in prop::collection::vec(cond(), 0..4),
            rows in prop::collection::vec((small(), text()), 1..40),
        ) {
            let schema = schema();
            let filters: Vec<Expr> = conds.iter().map(Cond::expr).collect();
            let ranges = key_ranges(&schema, &filters);
            for w in ranges.windows(2) {
                prop_assert!(!w[0].end.is_empty() && w[0].end <= w[1].start, "{ranges:?}");
            }
            for (a, b) in rows {
                if conds.iter().all(|c| c.holds(a, &b)) {
                    let k = key::encode_key(&schema, &[Value::Int(a), Value::Str(b.clone())]).unwrap();
                    let inside = ranges.iter().any(|r| {
                        k.as_slice() >= r.start.as_slice() && (r.end.is_empty() || k < r.end)
                    });
                    prop_assert!(inside, "key ({a}, {b:?}) matches {conds:?} but is outside {ranges:?}");
                }
            }
        }
    }

    #[test]
    fn equality_on_the_whole_key_is_one_point_and_in_lists_are_points() {
        let schema = schema();
        let r = key_ranges(&schema, &[col("a").eq(lit(3i64)), col("b").eq(lit("x"))]);
        assert_eq!(r.len(), 1);
        let k = key::encode_key(&schema, &[Value::Int(3), Value::Str("x".into())]).unwrap();
        assert_eq!(r[0].start, k);
        let r = key_ranges(
            &schema,
            &[col("a").in_list(vec![lit(1i64), lit(5i64)], false)],
        );
        assert_eq!(r.len(), 2);
        // A filter on a non-key column, or none, reads everything.
        assert_eq!(
            key_ranges(&schema, &[col("c").eq(lit(1i32))]),
            vec![KeyRange::all()]
        );
        // Contradictory bounds read nothing.
        assert!(key_ranges(&schema, &[col("a").gt(lit(3i64)), col("a").lt(lit(2i64))]).is_empty());
    }
}
