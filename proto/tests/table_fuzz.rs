//! Property tests of every table decoder fed bytes or text from outside the process: stored keys
//! and rows, wire values, CSV and command-line text, JSON, schema text and ingest bodies.
//!
//! Each decoder must answer Ok or Err on any input (never panic), must not allocate more than a
//! bound proportional to its input, and must give back what its encoder wrote.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use chrono::{DateTime, NaiveDate, Utc};
use proptest::prelude::*;
use prost::Message as _;
use weir_proto::ingest::parse_records;
use weir_proto::table::key::{decode_key, encode_key};
use weir_proto::table::row::{cell_at, decode_cell, decode_row, encode_cell, encode_row};
use weir_proto::table::{Column, ColumnType, TableError, TableSchema, Value};
use weir_proto::v1;

/// Records, per thread, the largest single allocation asked for, so a test can bound what a decoder
/// reserves (a length prefix trusted in `Vec::with_capacity` shows up here at once).
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: allocations made while the thread is torn down are not counted.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is passed on unchanged to the system allocator.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// What a decoder of `input_len` bytes may reserve at once: a small multiple of its input (vectors
/// grow by doubling, a `Value` is 32 bytes) plus a constant for fixed-size scratch space.
fn bound(input_len: usize) -> usize {
    64 * input_len + 64 * 1024
}

fn simple_types() -> Vec<ColumnType> {
    vec![
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
    ]
}

fn column_type() -> impl Strategy<Value = ColumnType> {
    prop_oneof![
        3 => prop::sample::select(simple_types()),
        1 => (1u8..=38)
            .prop_flat_map(|p| (Just(p), 0..=p))
            .prop_map(|(precision, scale)| ColumnType::Decimal { precision, scale }),
    ]
}

/// Values that fit a column of type `ty` (as `Value::check` leaves them).
fn value_of(ty: ColumnType) -> BoxedStrategy<Value> {
    match ty {
        ColumnType::Int8 => any::<i8>().prop_map(|v| Value::Int(v.into())).boxed(),
        ColumnType::Int16 => any::<i16>().prop_map(|v| Value::Int(v.into())).boxed(),
        ColumnType::Int32 => any::<i32>().prop_map(|v| Value::Int(v.into())).boxed(),
        ColumnType::Int64 => any::<i64>().prop_map(Value::Int).boxed(),
        ColumnType::UInt64 => any::<u64>().prop_map(Value::UInt).boxed(),
        ColumnType::Float32 => any::<f32>()
            .prop_map(|f| Value::Float(f64::from(f)))
            .boxed(),
        ColumnType::Float64 => prop_oneof![any::<f64>(), -4.0f64..4.0]
            .prop_map(Value::Float)
            .boxed(),
        ColumnType::Decimal { precision, .. } => {
            let max = 10i128.pow(u32::from(precision)) - 1;
            prop_oneof![
                -max..=max,
                (-1000i128..1000).prop_map(move |d| d.clamp(-max, max)),
                Just(max),
                Just(-max),
            ]
            .prop_map(Value::Decimal)
            .boxed()
        }
        ColumnType::Boolean => any::<bool>().prop_map(Value::Bool).boxed(),
        ColumnType::Utf8 => prop_oneof![any::<String>(), "[ ,\"\\\\a\\n\\r]{0,10}"]
            .prop_map(Value::Str)
            .boxed(),
        ColumnType::Binary => prop::collection::vec(any::<u8>(), 0..24)
            .prop_map(Value::Bytes)
            .boxed(),
        ColumnType::Date32 => prop_oneof![
            min_day()..=max_day(),
            -1000..1000,
            Just(min_day()),
            Just(max_day())
        ]
        .prop_map(Value::Date)
        .boxed(),
        ColumnType::Timestamp => {
            let (lo, hi) = (min_micros(), max_micros());
            prop_oneof![lo..=hi, -1_000_000i64..1_000_000, Just(lo), Just(hi)]
                .prop_map(Value::Timestamp)
                .boxed()
        }
    }
}

const EPOCH: NaiveDate = match NaiveDate::from_ymd_opt(1970, 1, 1) {
    Some(d) => d,
    None => panic!("1970-01-01 is a date"),
};

/// The first and last days (since 1970-01-01) a DATE column holds: those chrono can print.
fn min_day() -> i32 {
    i32::try_from((NaiveDate::MIN - EPOCH).num_days()).unwrap()
}

fn max_day() -> i32 {
    i32::try_from((NaiveDate::MAX - EPOCH).num_days()).unwrap()
}

/// The first and last microseconds a TIMESTAMP column holds.
fn min_micros() -> i64 {
    DateTime::<Utc>::MIN_UTC.timestamp_micros()
}

fn max_micros() -> i64 {
    DateTime::<Utc>::MAX_UTC.timestamp_micros()
}

/// Whether every date and time in `values` is one `Value::check` takes: decoders still read
/// others (rows stored before the range was enforced stay readable), but they cannot be written.
fn printable(values: &[Value]) -> bool {
    values.iter().all(|v| match v {
        Value::Date(d) => (min_day()..=max_day()).contains(d),
        Value::Timestamp(t) => (min_micros()..=max_micros()).contains(t),
        _ => true,
    })
}

/// A key value of type `ty`: no NULL, no NaN, and `0.0` for zero (what `encode_key` stores).
fn key_value_of(ty: ColumnType) -> BoxedStrategy<Value> {
    value_of(ty)
        .prop_filter(
            "keys are not NaN",
            |v| !matches!(v, Value::Float(f) if f.is_nan()),
        )
        .prop_map(|v| match v {
            // The pattern matches -0.0 too: float patterns compare with `==`.
            Value::Float(0.0) => Value::Float(0.0),
            v => v,
        })
        .boxed()
}

/// A schema of one to six columns with a key of one to three of them, in any order.
fn schema() -> impl Strategy<Value = TableSchema> {
    prop::collection::vec((column_type(), any::<bool>()), 1..7)
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

/// A schema and a full row that fits it.
fn schema_and_row() -> impl Strategy<Value = (TableSchema, Vec<Value>)> {
    schema().prop_flat_map(|s| {
        let cells: Vec<BoxedStrategy<Value>> = s
            .columns
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if s.primary_key.contains(&i) {
                    key_value_of(c.ty)
                } else if c.nullable {
                    prop_oneof![1 => Just(Value::Null), 4 => value_of(c.ty)].boxed()
                } else {
                    value_of(c.ty)
                }
            })
            .collect();
        (Just(s), cells)
    })
}

/// Equality that tells NaNs and zeros apart by their bits, as the encodings do.
fn same(a: &[Value], b: &[Value]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| match (x, y) {
            (Value::Float(x), Value::Float(y)) => x.to_bits() == y.to_bits(),
            _ => x == y,
        })
}

/// Bytes that look like encoded keys and rows often enough to get past the first check.
fn bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => any::<u8>(),
            1 => prop::sample::select(vec![0u8, 1, 5, 6, 0x7F, 0x80, 0xF7, 0xFE, 0xFF]),
        ],
        0..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn keys_decode_from_any_bytes_only_as_what_encode_key_writes(s in schema(), b in bytes()) {
        let (decoded, largest) = largest_allocation(|| decode_key(&s, &b));
        prop_assert!(largest <= bound(b.len()), "{} bytes reserved for {} bytes", largest, b.len());
        if let Ok(key) = decoded {
            if printable(&key) {
                prop_assert_eq!(encode_key(&s, &key).unwrap(), b);
            } else {
                let e = encode_key(&s, &key).unwrap_err();
                prop_assert!(e.to_string().contains("out of range"), "{}", e);
            }
        }
    }

    #[test]
    fn keys_round_trip((s, row) in schema_and_row()) {
        let key: Vec<Value> = s.primary_key.iter().map(|i| row[*i].clone()).collect();
        let encoded = encode_key(&s, &key).unwrap();
        let decoded = decode_key(&s, &encoded).unwrap();
        prop_assert!(same(&decoded, &key), "{:?} became {:?}", key, decoded);
        // Every proper prefix of a key is refused as a full key, as is any byte more.
        for cut in 0..encoded.len() {
            prop_assert!(decode_key(&s, &encoded[..cut]).is_err());
        }
        let mut longer = encoded.clone();
        longer.push(0);
        prop_assert!(decode_key(&s, &longer).is_err());
    }

    #[test]
    fn rows_decode_from_any_bytes_only_as_what_encode_row_writes(
        (s, row) in schema_and_row(),
        b in bytes(),
    ) {
        // A real key with arbitrary cells, and arbitrary bytes as the key.
        let (k, _) = encode_row(&s, row).unwrap();
        for (key, cells) in [(&k[..], &b[..]), (&b[..], &b[..])] {
            let (decoded, largest) = largest_allocation(|| decode_row(&s, key, cells));
            let input = key.len() + cells.len();
            prop_assert!(largest <= bound(input), "{} bytes reserved for {}", largest, input);
            if let Ok(decoded) = decoded {
                if printable(&decoded) {
                    let (k2, v2) = encode_row(&s, decoded).unwrap();
                    prop_assert_eq!(&k2[..], key);
                    prop_assert_eq!(&v2[..], cells);
                } else {
                    let e = encode_row(&s, decoded).unwrap_err();
                    prop_assert!(e.to_string().contains("out of range"), "{}", e);
                }
            }
        }
    }

    #[test]
    fn cells_decode_from_any_bytes_to_what_encode_cell_writes(b in bytes(), n in 0usize..6) {
        let mut rest = &b[..];
        let (decoded, largest) = largest_allocation(|| decode_cell(&mut rest));
        prop_assert!(largest <= bound(b.len()));
        if let Ok(v) = decoded {
            let mut again = Vec::new();
            encode_cell(&v, &mut again);
            prop_assert_eq!(&again[..], &b[..b.len() - rest.len()]);
        }
        let (found, largest) = largest_allocation(|| cell_at(&b, n));
        prop_assert!(largest <= bound(b.len()));
        if let Ok(Some(cell)) = found {
            let mut one = cell;
            prop_assert!(decode_cell(&mut one).is_ok());
            prop_assert!(one.is_empty());
        }
    }

    #[test]
    fn rows_round_trip_and_every_cell_is_found((s, row) in schema_and_row()) {
        let (k, v) = encode_row(&s, row.clone()).unwrap();
        let decoded = decode_row(&s, &k, &v).unwrap();
        prop_assert!(same(&decoded, &row), "{:?} became {:?}", row, decoded);
        for (n, i) in s.value_columns().into_iter().enumerate() {
            let mut want = Vec::new();
            encode_cell(&row[i], &mut want);
            prop_assert_eq!(cell_at(&v, n).unwrap(), Some(&want[..]));
        }
        prop_assert_eq!(cell_at(&v, s.value_columns().len()).unwrap(), None);
        // A row cut short, or with a byte more, is refused.
        if !v.is_empty() {
            prop_assert!(decode_row(&s, &k, &v[..v.len() - 1]).is_err());
        }
        let mut longer = v.clone();
        longer.push(0);
        prop_assert!(decode_row(&s, &k, &longer).is_err());
    }

    #[test]
    fn wire_values_decode_from_any_bytes(b in bytes()) {
        // What a gRPC peer can send: any protobuf bytes as a Value.
        let (wire, largest) = largest_allocation(|| v1::Value::decode(&b[..]));
        prop_assert!(largest <= bound(b.len()));
        if let Ok(wire) = wire {
            if let Ok(v) = Value::from_proto(&wire) {
                let again = Value::from_proto(&v.to_proto()).unwrap();
                prop_assert!(same(&[again], &[v]));
            }
        }
    }

    #[test]
    fn wire_values_round_trip(v in column_type().prop_flat_map(value_of)) {
        let bytes = v.to_proto().encode_to_vec();
        let back = Value::from_proto(&v1::Value::decode(&bytes[..]).unwrap()).unwrap();
        prop_assert!(same(&[back], &[v]));
    }

    #[test]
    fn dates_and_times_that_cannot_be_printed_are_refused(
        day in any::<i32>(),
        micros in any::<i64>(),
    ) {
        for (v, ty) in [(Value::Date(day), ColumnType::Date32), (Value::Timestamp(micros), ColumnType::Timestamp)] {
            let c = Column { name: "at".into(), ty, nullable: false };
            match v.clone().check(&c) {
                Ok(ok) => {
                    prop_assert!(printable(std::slice::from_ref(&ok)));
                    prop_assert_eq!(Value::parse_text(&ok.render(ty), &c).unwrap(), ok);
                }
                Err(e) => {
                    prop_assert!(!printable(&[v]));
                    prop_assert!(e.to_string().contains("column 'at'"), "{}", e);
                    prop_assert!(e.to_string().contains("out of range"), "{}", e);
                }
            }
        }
    }

    #[test]
    fn wire_decimals_of_any_length_are_ok_or_refused(b in prop::collection::vec(any::<u8>(), 0..40)) {
        let wire = v1::Value { kind: Some(v1::value::Kind::Decimal(b.clone().into())) };
        match Value::from_proto(&wire) {
            Ok(Value::Decimal(d)) => prop_assert_eq!(d.to_be_bytes().to_vec(), b),
            Ok(other) => prop_assert!(false, "decimal bytes gave {:?}", other),
            Err(e) => {
                prop_assert_ne!(b.len(), 16);
                prop_assert!(e.to_string().contains("16 bytes"), "{}", e);
            }
        }
    }
}

/// A column named so that error messages can be checked for it.
fn col(ty: ColumnType, nullable: bool) -> Column {
    Column {
        name: "the_col".into(),
        ty,
        nullable,
    }
}

/// Text for a cell: anything, or text near the forms each type accepts.
fn cell_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[-+ ]?[0-9]{0,45}(\\.[0-9]{0,45})?([eE][-+]?[0-9]{1,4})?",
        "[-+]?[0-9]{1,6}-[0-9]{1,2}-[0-9]{1,2}([ T][0-9]{1,2}:[0-9]{1,2}(:[0-9]{1,2}(\\.[0-9]{0,12})?)?)?(Z|[-+][0-9]{2}:[0-9]{2})?",
        prop::sample::select(vec![
            "", " ", "\\N", "NaN", "inf", "-inf", "true", "FALSE", "yes", "t", "-", "+", ".", "-.",
            "0x10", "1_000", "١٢٣", "9223372036854775808", "-9223372036854775809",
            "18446744073709551616", "170141183460469231731687303715884105728",
            "2024-02-30", "+262144-01-01", "-262144-01-01", "9999-12-31T23:59:60Z",
        ])
        .prop_map(str::to_string),
    ]
}

/// Whether `text` is the form `render` gives `v`, so that reading it back must give `v`.
///
/// Outside this domain the CSV text form is knowingly lossy: an empty field is NULL in most
/// columns but the empty string in text ones, `\N` is NULL everywhere, bytes that are not UTF-8
/// print as hex, and dates and times beyond chrono's range (about ±262,000 years) print as numbers.
fn text_is_faithful(v: &Value, ty: ColumnType) -> bool {
    match (v, ty) {
        (Value::Null, ColumnType::Utf8 | ColumnType::Binary) => false,
        (Value::Str(s), _) => s != "\\N",
        (Value::Bytes(b), _) => b != b"\\N" && std::str::from_utf8(b).is_ok(),
        (Value::Float(f), _) => !f.is_nan(),
        _ => true,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn cell_text_parses_or_names_the_column(
        text in cell_text(),
        ty in column_type(),
        nullable in any::<bool>(),
    ) {
        let c = col(ty, nullable);
        let (parsed, largest) = largest_allocation(|| Value::parse_text(&text, &c));
        prop_assert!(largest <= bound(text.len()));
        match parsed {
            Ok(v) => prop_assert!(v.fits(&c), "'{}' gave {:?}, which does not fit {}", text, v, ty),
            Err(TableError::Value { column, reason }) => {
                prop_assert_eq!(column, "the_col");
                prop_assert!(!reason.is_empty());
            }
            Err(TableError::Null { column }) => {
                prop_assert!(!nullable);
                prop_assert_eq!(column, "the_col");
            }
            Err(other) => prop_assert!(false, "'{}': {:?} does not name the column", text, other),
        }
    }

    #[test]
    fn rendered_values_parse_back(
        (ty, v) in column_type().prop_flat_map(|t| (Just(t), value_of(t))),
        null in any::<bool>(),
    ) {
        let v = if null { Value::Null } else { v };
        prop_assume!(text_is_faithful(&v, ty));
        let c = col(ty, true);
        let text = v.render(ty);
        let back = Value::parse_text(&text, &c);
        prop_assert!(
            matches!(&back, Ok(b) if same(std::slice::from_ref(b), std::slice::from_ref(&v))),
            "{:?} rendered as '{}' parsed as {:?}", v, text, back
        );
    }

    #[test]
    fn json_values_convert_or_name_the_column(
        json in json_value(),
        ty in column_type(),
        nullable in any::<bool>(),
    ) {
        let c = col(ty, nullable);
        match Value::from_json(&json, &c) {
            Ok(v) => prop_assert!(v.fits(&c), "{} gave {:?}, which does not fit {}", json, v, ty),
            Err(TableError::Value { column, .. } | TableError::Null { column }) => {
                prop_assert_eq!(column, "the_col")
            }
            Err(other) => prop_assert!(false, "{}: {:?} does not name the column", json, other),
        }
    }

    #[test]
    fn values_round_trip_through_json(
        (ty, v) in column_type().prop_flat_map(|t| (Just(t), value_of(t))),
    ) {
        // JSON has no NaN or infinities: those print as null.
        prop_assume!(!matches!(v, Value::Float(f) if !f.is_finite()));
        prop_assume!(text_is_faithful(&v, ty));
        let c = col(ty, true);
        let json = v.to_json(ty);
        // Through the text of the JSON too, as a client would send it.
        let json: serde_json::Value = serde_json::from_str(&json.to_string()).unwrap();
        let back = Value::from_json(&json, &c);
        prop_assert!(
            matches!(&back, Ok(b) if same(std::slice::from_ref(b), std::slice::from_ref(&v))),
            "{:?} as JSON {} came back as {:?}", v, json, back
        );
    }

    #[test]
    fn type_names_parse_or_are_refused(text in type_text()) {
        if let Ok(ty) = ColumnType::parse(&text) {
            prop_assert_eq!(ColumnType::parse(&ty.sql_name()).unwrap(), ty);
        }
    }

    #[test]
    fn type_names_round_trip(ty in column_type()) {
        prop_assert_eq!(ColumnType::parse(&ty.sql_name()).unwrap(), ty);
        prop_assert_eq!(ColumnType::parse(&ty.sql_name().to_lowercase()).unwrap(), ty);
    }

    #[test]
    fn schema_text_parses_or_is_refused(
        text in prop::collection::vec(
            prop_oneof![type_text(), "[a-z\"]{1,4}", Just(",".to_string()), Just(" ".to_string())],
            0..12,
        ).prop_map(|parts| parts.join(" ")),
        key in "[a-z\"]{0,3}",
    ) {
        let (parsed, largest) = largest_allocation(|| TableSchema::parse(&text, std::slice::from_ref(&key)));
        prop_assert!(largest <= bound(text.len()));
        if let Ok(s) = parsed {
            prop_assert_eq!(TableSchema::parse(&s.to_sql(), &[key]).unwrap(), s);
        }
    }

    #[test]
    fn schemas_round_trip_through_sql_and_the_wire(s in schema()) {
        let key: Vec<String> = s.key_columns().map(|c| c.name.clone()).collect();
        prop_assert_eq!(&TableSchema::parse(&s.to_sql(), &key).unwrap(), &s);
        prop_assert_eq!(&TableSchema::from_column_defs(&s.column_defs(), &key).unwrap(), &s);
    }

    #[test]
    fn ingest_bodies_are_parsed_within_bounded_memory(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..200),
            "[\\[\\]{},:\" 0-9a-z\\\\\\n]{0,200}".prop_map(String::into_bytes),
        ],
        ct in prop::sample::select(vec!["", "application/x-ndjson"]),
    ) {
        let (_, largest) = largest_allocation(|| parse_records(&body, ct));
        prop_assert!(largest <= bound(body.len()), "{} bytes for {}", largest, body.len());
    }
}

/// Type names: the real ones, with arguments, case and spaces varied, and noise.
fn type_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        (
            prop::sample::select(vec![
                "BIGINT",
                "int",
                "Decimal",
                "NUMERIC",
                "VARCHAR",
                "double precision",
                "BIGINT  UNSIGNED",
                "timestamp",
                "bool",
                "BYTEA",
                "DECIMAL",
                "",
            ]),
            "(\\(([-+ 0-9,]{0,8}|[0-9]{1,4}(, ?[0-9]{1,4})?)\\)?)?",
            "( NOT NULL| NULL)?",
        )
            .prop_map(|(a, b, c)| format!("{a}{b}{c}")),
    ]
}

/// Arbitrary JSON values, nested a little.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        any::<u64>().prop_map(J::from),
        any::<f64>().prop_map(J::from),
        cell_text().prop_map(J::String),
    ];
    leaf.prop_recursive(2, 8, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(J::Array),
            prop::collection::btree_map("[a-z]{1,3}", inner, 0..3)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}
