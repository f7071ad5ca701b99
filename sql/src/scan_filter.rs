//! Filters a table scan applies where the rows are stored: conditions of one column against
//! literals (`=`, `<>`, `<`, `<=`, `>`, `>=`, `BETWEEN`, `IN`, `IS [NOT] NULL`) taken from a
//! query's `WHERE`, so the node leading a region sends only the rows that can match. DataFusion
//! still applies every filter after the scan: these only drop rows the query drops anyway, and a
//! condition that cannot be evaluated exactly there (a cast, a function, a literal of another
//! type than its column) is simply not sent.

use datafusion::arrow::array::{Array, ArrayRef, BooleanArray, Scalar};
use datafusion::arrow::compute::kernels::cmp;
use datafusion::arrow::compute::{and, filter_record_batch, is_not_null, is_null, or};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use weir_proto::table::{Column, TableSchema, Value};
use weir_proto::v1;

use crate::columnar::BatchBuilder;
use crate::types::{arrow_schema, arrow_type, literal_value};

/// How a column is compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FilterOp {
    /// `=`
    Eq,
    /// `<>`
    Ne,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `IS NULL`
    IsNull,
    /// `IS NOT NULL`
    IsNotNull,
    /// `IN (...)`
    In,
}

/// A condition on one column a scan evaluates where the rows are.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanFilter {
    /// The column, by name.
    pub column: String,
    /// The comparison.
    pub op: FilterOp,
    /// The value compared with (one), the list (`In`), none (`IsNull`, `IsNotNull`).
    pub values: Vec<Value>,
}

/// The column of `schema` an expression is, if it is a bare column.
fn column<'a>(schema: &'a TableSchema, e: &Expr) -> Option<&'a Column> {
    match e {
        Expr::Column(c) => schema.columns.iter().find(|col| col.name == c.name),
        _ => None,
    }
}

/// A literal as a value of `col`, only when it has exactly the column's type (so comparing it
/// there is comparing it as DataFusion does).
fn literal(e: &Expr, col: &Column) -> Option<Value> {
    match e {
        Expr::Literal(v, _) if !v.is_null() && v.data_type() == arrow_type(col.ty) => {
            literal_value(v, col)
        }
        _ => None,
    }
}

fn op_of(op: Operator) -> Option<FilterOp> {
    Some(match op {
        Operator::Eq => FilterOp::Eq,
        Operator::NotEq => FilterOp::Ne,
        Operator::Lt => FilterOp::Lt,
        Operator::LtEq => FilterOp::Le,
        Operator::Gt => FilterOp::Gt,
        Operator::GtEq => FilterOp::Ge,
        _ => return None,
    })
}

/// Adds the conditions of `e` (a conjunct of a `WHERE`) that a scan can evaluate to `out`.
fn collect(schema: &TableSchema, e: &Expr, out: &mut Vec<ScanFilter>) {
    let mut push = |col: &Column, op, values| {
        out.push(ScanFilter {
            column: col.name.clone(),
            op,
            values,
        })
    };
    match e {
        Expr::BinaryExpr(BinaryExpr { left, op, right }) if *op == Operator::And => {
            collect(schema, left, out);
            collect(schema, right, out);
        }
        Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
            let (col, value, op) = match (column(schema, left), column(schema, right)) {
                (Some(c), _) => (c, literal(right, c), Some(*op)),
                (None, Some(c)) => (c, literal(left, c), op.swap()),
                _ => return,
            };
            if let (Some(v), Some(op)) = (value, op.and_then(op_of)) {
                push(col, op, vec![v]);
            }
        }
        Expr::Between(b) if !b.negated => {
            if let Some(col) = column(schema, &b.expr) {
                if let (Some(lo), Some(hi)) = (literal(&b.low, col), literal(&b.high, col)) {
                    push(col, FilterOp::Ge, vec![lo]);
                    push(col, FilterOp::Le, vec![hi]);
                }
            }
        }
        Expr::InList(l) if !l.negated => {
            if let Some(col) = column(schema, &l.expr) {
                let values: Option<Vec<Value>> = l.list.iter().map(|v| literal(v, col)).collect();
                if let Some(values) = values.filter(|v| !v.is_empty()) {
                    push(col, FilterOp::In, values);
                }
            }
        }
        Expr::IsNull(inner) => {
            if let Some(col) = column(schema, inner) {
                push(col, FilterOp::IsNull, Vec::new());
            }
        }
        Expr::IsNotNull(inner) => {
            if let Some(col) = column(schema, inner) {
                push(col, FilterOp::IsNotNull, Vec::new());
            }
        }
        _ => {}
    }
}

/// The conditions of `filters` (a scan's `WHERE` conjuncts) a region can evaluate.
pub fn from_exprs(schema: &TableSchema, filters: &[Expr]) -> Vec<ScanFilter> {
    let mut out = Vec::new();
    for f in filters {
        collect(schema, f, &mut out);
    }
    out
}

impl std::fmt::Display for ScanFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let values: Vec<String> = self.values.iter().map(|v| format!("{v:?}")).collect();
        let op = match self.op {
            FilterOp::Eq => "=",
            FilterOp::Ne => "<>",
            FilterOp::Lt => "<",
            FilterOp::Le => "<=",
            FilterOp::Gt => ">",
            FilterOp::Ge => ">=",
            FilterOp::IsNull => return write!(f, "{} IS NULL", self.column),
            FilterOp::IsNotNull => return write!(f, "{} IS NOT NULL", self.column),
            FilterOp::In => return write!(f, "{} IN ({})", self.column, values.join(", ")),
        };
        write!(f, "{} {op} {}", self.column, values.join(", "))
    }
}

impl ScanFilter {
    /// The filter on the wire.
    pub fn to_proto(&self) -> v1::ScanFilter {
        use v1::scan_filter::Op;
        let op = match self.op {
            FilterOp::Eq => Op::Eq,
            FilterOp::Ne => Op::Ne,
            FilterOp::Lt => Op::Lt,
            FilterOp::Le => Op::Le,
            FilterOp::Gt => Op::Gt,
            FilterOp::Ge => Op::Ge,
            FilterOp::IsNull => Op::IsNull,
            FilterOp::IsNotNull => Op::IsNotNull,
            FilterOp::In => Op::In,
        };
        v1::ScanFilter {
            column: self.column.clone(),
            op: op as i32,
            values: self.values.iter().map(Value::to_proto).collect(),
        }
    }

    /// A filter from the wire, checked against `schema`: the column must exist and the values
    /// fit it; an error says what is wrong.
    pub fn from_proto(f: &v1::ScanFilter, schema: &TableSchema) -> Result<ScanFilter, String> {
        use v1::scan_filter::Op;
        let col = schema
            .columns
            .iter()
            .find(|c| c.name == f.column)
            .ok_or_else(|| format!("filter on '{}', which is not a column", f.column))?;
        let op = match Op::try_from(f.op) {
            Ok(Op::Eq) => FilterOp::Eq,
            Ok(Op::Ne) => FilterOp::Ne,
            Ok(Op::Lt) => FilterOp::Lt,
            Ok(Op::Le) => FilterOp::Le,
            Ok(Op::Gt) => FilterOp::Gt,
            Ok(Op::Ge) => FilterOp::Ge,
            Ok(Op::IsNull) => FilterOp::IsNull,
            Ok(Op::IsNotNull) => FilterOp::IsNotNull,
            Ok(Op::In) => FilterOp::In,
            Err(_) => return Err(format!("filter on '{}': unknown op {}", f.column, f.op)),
        };
        let values = f
            .values
            .iter()
            .map(|v| {
                let v = Value::from_proto(v).map_err(|e| e.to_string())?;
                if v.is_null() {
                    return Err("a NULL compares with nothing".to_string());
                }
                v.check(col).map_err(|e| e.to_string())
            })
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| format!("filter on '{}': {e}", f.column))?;
        let wanted = match op {
            FilterOp::IsNull | FilterOp::IsNotNull => values.is_empty(),
            FilterOp::In => !values.is_empty(),
            _ => values.len() == 1,
        };
        if !wanted {
            return Err(format!(
                "filter on '{}': {} values for {op:?}",
                f.column,
                values.len()
            ));
        }
        Ok(ScanFilter {
            column: col.name.clone(),
            op,
            values,
        })
    }
}

/// `values` as an array of `col`'s type.
fn array_of(col: &Column, values: &[Value]) -> Result<ArrayRef> {
    let columns = [col.clone()];
    let mut b = BatchBuilder::new(&columns, values.len())?;
    for v in values {
        b.append(0, v.as_cell())?;
        b.end_row();
    }
    let schema = arrow_schema(&TableSchema {
        columns: columns.to_vec(),
        primary_key: Vec::new(),
    });
    Ok(b.finish(&schema)?.column(0).clone())
}

/// Where one filter holds on `values` (NULL where the column is NULL, as SQL has it).
fn holds(f: &ScanFilter, col: &Column, values: &ArrayRef) -> Result<BooleanArray> {
    let scalar = |i: usize| -> Result<Scalar<ArrayRef>> {
        Ok(Scalar::new(array_of(col, &f.values[i..=i])?))
    };
    Ok(match f.op {
        FilterOp::Eq => cmp::eq(values, &scalar(0)?)?,
        FilterOp::Ne => cmp::neq(values, &scalar(0)?)?,
        FilterOp::Lt => cmp::lt(values, &scalar(0)?)?,
        FilterOp::Le => cmp::lt_eq(values, &scalar(0)?)?,
        FilterOp::Gt => cmp::gt(values, &scalar(0)?)?,
        FilterOp::Ge => cmp::gt_eq(values, &scalar(0)?)?,
        FilterOp::IsNull => is_null(values.as_ref())?,
        FilterOp::IsNotNull => is_not_null(values.as_ref())?,
        FilterOp::In => {
            let mut any: Option<BooleanArray> = None;
            for i in 0..f.values.len() {
                let hit = cmp::eq(values, &scalar(i)?)?;
                any = Some(match any {
                    Some(a) => or(&a, &hit)?,
                    None => hit,
                });
            }
            any.ok_or_else(|| DataFusionError::Internal("an IN filter with no values".into()))?
        }
    })
}

/// The rows of `batch` (whose columns are `columns`) for which every filter holds.
pub fn apply(
    batch: &RecordBatch,
    columns: &[Column],
    filters: &[ScanFilter],
) -> Result<RecordBatch> {
    let mut keep: Option<BooleanArray> = None;
    for f in filters {
        let at = columns
            .iter()
            .position(|c| c.name == f.column)
            .ok_or_else(|| {
                DataFusionError::Internal(format!("no column '{}' to filter", f.column))
            })?;
        let hit = holds(f, &columns[at], batch.column(at))?;
        keep = Some(match keep {
            Some(k) => and(&k, &hit)?,
            None => hit,
        });
    }
    match keep {
        Some(k) if k.true_count() == k.len() && k.null_count() == 0 => Ok(batch.clone()),
        Some(k) => Ok(filter_record_batch(batch, &k)?),
        None => Ok(batch.clone()),
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::prelude::{col, lit};
    use weir_proto::table::ColumnType;

    use super::*;
    use crate::columnar::rows_to_batch;

    fn schema() -> TableSchema {
        TableSchema::parse("id BIGINT, name VARCHAR, score DOUBLE", &["id".into()]).unwrap()
    }

    fn batch(s: &TableSchema) -> RecordBatch {
        let rows = vec![
            vec![Value::Int(1), Value::Str("a".into()), Value::Float(1.5)],
            vec![Value::Int(2), Value::Null, Value::Float(-3.0)],
            vec![Value::Int(3), Value::Str("c".into()), Value::Null],
            vec![Value::Int(4), Value::Str("d".into()), Value::Float(9.0)],
        ];
        rows_to_batch(&arrow_schema(s), &s.columns, &rows).unwrap()
    }

    fn ids(b: &RecordBatch) -> Vec<i64> {
        let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
        a.iter().map(|v| v.unwrap()).collect()
    }

    #[test]
    fn conditions_a_region_can_evaluate_are_taken_and_the_rest_left() {
        let s = schema();
        let exprs = [
            col("id").gt_eq(lit(2i64)).and(col("name").is_not_null()),
            lit(3i64).gt(col("id")),
            col("name").in_list(vec![lit("a"), lit("d")], false),
            col("score").between(lit(0.0f64), lit(10.0f64)),
            // Not exact there: a literal of another type, a function, a negated list.
            col("id").eq(lit(2i32)),
            col("name").in_list(vec![lit("x")], true),
            col("id").eq(col("score")),
        ];
        let f = from_exprs(&s, &exprs);
        let ops: Vec<(&str, FilterOp)> = f.iter().map(|f| (f.column.as_str(), f.op)).collect();
        assert_eq!(
            ops,
            vec![
                ("id", FilterOp::Ge),
                ("name", FilterOp::IsNotNull),
                ("id", FilterOp::Lt),
                ("name", FilterOp::In),
                ("score", FilterOp::Ge),
                ("score", FilterOp::Le),
            ]
        );
        // Each holds as SQL's WHERE does: NULL is not a match.
        let b = batch(&s);
        let only = |i: usize| apply(&b, &s.columns, &f[i..=i]).map(|r| ids(&r)).unwrap();
        assert_eq!(only(0), vec![2, 3, 4]);
        assert_eq!(only(1), vec![1, 3, 4]);
        assert_eq!(only(2), vec![1, 2]);
        assert_eq!(only(3), vec![1, 4]);
        assert_eq!(only(4), vec![1, 4]);
        assert_eq!(ids(&apply(&b, &s.columns, &f).unwrap()), Vec::<i64>::new());
        assert_eq!(ids(&apply(&b, &s.columns, &f[..2]).unwrap()), vec![3, 4]);
        let names = apply(&b, &s.columns, &f[3..4]).unwrap();
        let names = names
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(names.value(1), "d");
    }

    #[test]
    fn filters_cross_the_wire_and_bad_ones_are_refused() {
        let s = schema();
        let f = ScanFilter {
            column: "score".into(),
            op: FilterOp::In,
            values: vec![Value::Float(1.5), Value::Float(9.0)],
        };
        assert_eq!(ScanFilter::from_proto(&f.to_proto(), &s), Ok(f));
        let bad = |column: &str, op: FilterOp, values: Vec<Value>| {
            ScanFilter::from_proto(
                &ScanFilter {
                    column: column.into(),
                    op,
                    values,
                }
                .to_proto(),
                &s,
            )
            .unwrap_err()
        };
        assert!(bad("nope", FilterOp::Eq, vec![Value::Int(1)]).contains("not a column"));
        assert!(bad("id", FilterOp::Eq, vec![Value::Str("x".into())]).contains("id"));
        assert!(bad("id", FilterOp::Eq, vec![]).contains("0 values"));
        assert!(bad("id", FilterOp::Lt, vec![Value::Null]).contains("NULL"));
        assert_eq!(
            array_of(
                &Column {
                    name: "x".into(),
                    ty: ColumnType::Int64,
                    nullable: true
                },
                &[Value::Int(7)]
            )
            .unwrap()
            .len(),
            1
        );
    }
}
