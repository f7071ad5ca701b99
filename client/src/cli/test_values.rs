//! Strategies for property tests of the command line's text and JSON parsers: schemas, and typed
//! values that fit their columns.

use proptest::prelude::*;
use weir_client::{ColumnType, TableSchema, Value};
use weir_proto::table::Column;

/// Days and microseconds well inside what chrono (and so `Value::check`) accepts.
const DAYS: i32 = 95_000_000;
const MICROS: i64 = 8_000_000_000_000_000_000;

/// Any column type, decimals of every precision and scale included.
pub fn column_type() -> impl Strategy<Value = ColumnType> {
    prop_oneof![
        3 => prop::sample::select(vec![
            ColumnType::Int8,
            ColumnType::Int16,
            ColumnType::Int32,
            ColumnType::Int64,
            ColumnType::UInt64,
            ColumnType::Float32,
            ColumnType::Float64,
            ColumnType::Boolean,
            ColumnType::Utf8,
            ColumnType::Binary,
            ColumnType::Date32,
            ColumnType::Timestamp,
        ]),
        1 => (1u8..=38)
            .prop_flat_map(|p| (Just(p), 0..=p))
            .prop_map(|(precision, scale)| ColumnType::Decimal { precision, scale }),
    ]
}

/// Values that fit a column of type `ty`, NaN and non-UTF-8 bytes included.
pub fn value_of(ty: ColumnType) -> BoxedStrategy<Value> {
    match ty {
        ColumnType::Int8 => any::<i8>().prop_map(|v| Value::Int(v.into())).boxed(),
        ColumnType::Int16 => any::<i16>().prop_map(|v| Value::Int(v.into())).boxed(),
        ColumnType::Int32 => any::<i32>().prop_map(|v| Value::Int(v.into())).boxed(),
        ColumnType::Int64 => any::<i64>().prop_map(Value::Int).boxed(),
        ColumnType::UInt64 => any::<u64>().prop_map(Value::UInt).boxed(),
        ColumnType::Float32 => any::<f32>()
            .prop_map(|f| Value::Float(f64::from(f)))
            .boxed(),
        ColumnType::Float64 => any::<f64>().prop_map(Value::Float).boxed(),
        ColumnType::Decimal { precision, .. } => {
            let max = 10i128.pow(u32::from(precision)) - 1;
            prop_oneof![
                -max..=max,
                (-1000i128..1000).prop_map(move |d| d.clamp(-max, max))
            ]
            .prop_map(Value::Decimal)
            .boxed()
        }
        ColumnType::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
        ColumnType::Utf8 => prop_oneof![any::<String>(), "[ ,;\"'\\\\a\\n\\r\\t]{0,8}"]
            .prop_map(Value::Str)
            .boxed(),
        ColumnType::Binary => prop_oneof![
            prop::collection::vec(any::<u8>(), 0..16),
            "[ ,\"a\\n]{0,8}".prop_map(String::into_bytes),
        ]
        .prop_map(Value::Bytes)
        .boxed(),
        ColumnType::Date32 => (-DAYS..DAYS).prop_map(Value::Date).boxed(),
        ColumnType::Timestamp => prop_oneof![-MICROS..MICROS, -1_000_000_000i64..1_000_000_000]
            .prop_map(Value::Timestamp)
            .boxed(),
    }
}

/// A schema of one to five columns named `c0`.., with a key of one to three of them.
pub fn schema() -> impl Strategy<Value = TableSchema> {
    prop::collection::vec((column_type(), any::<bool>()), 1..6)
        .prop_flat_map(|cols| {
            let n = cols.len();
            (
                Just(cols),
                prop::sample::subsequence((0..n).collect::<Vec<_>>(), 1..=n.min(3)).prop_shuffle(),
            )
        })
        .prop_map(|(cols, key)| {
            let columns = cols
                .into_iter()
                .enumerate()
                .map(|(i, (ty, nullable))| Column {
                    name: format!("c{i}"),
                    ty,
                    nullable,
                })
                .collect();
            let key: Vec<String> = key.iter().map(|i| format!("c{i}")).collect();
            TableSchema::new(columns, &key).expect("generated schemas are valid")
        })
}

/// A schema and a full row that fits it (NULL in some nullable columns).
pub fn schema_and_row() -> impl Strategy<Value = (TableSchema, Vec<Value>)> {
    schema().prop_flat_map(|s| {
        let cells: Vec<BoxedStrategy<Value>> = s
            .columns
            .iter()
            .map(|c| {
                if c.nullable {
                    prop_oneof![1 => Just(Value::Null), 4 => value_of(c.ty)].boxed()
                } else {
                    value_of(c.ty)
                }
            })
            .collect();
        (Just(s), cells)
    })
}

/// Text for a cell: anything, or text near the forms the column types accept.
pub fn cell_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+ ]?[0-9]{0,42}(\\.[0-9]{0,42})?([eE][-+]?[0-9]{1,3})?",
        "[-+]?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}([ T][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}(\\.[0-9]{0,9})?)?)?Z?",
        prop::sample::select(vec![
            "", " ", "\\N", "NaN", "-inf", "true", "no", "-", ".", "18446744073709551616",
        ])
        .prop_map(str::to_string),
    ]
}

/// Whether `render` writes `v` in a form `Value::parse_text` reads back as `v`. Outside this the
/// text form is knowingly lossy: an empty field is the empty string in text columns, `\N` is NULL
/// everywhere, and bytes that are not UTF-8 print as hex.
pub fn text_is_faithful(v: &Value, ty: ColumnType) -> bool {
    match (v, ty) {
        (Value::Null, ColumnType::Utf8 | ColumnType::Binary) => false,
        (Value::Str(s), _) => s != "\\N",
        (Value::Bytes(b), _) => b != b"\\N" && std::str::from_utf8(b).is_ok(),
        (Value::Float(f), _) => !f.is_nan(),
        _ => true,
    }
}

/// Equality that tells NaNs apart by their bits.
pub fn same(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            _ => x == y,
        })
}
