//! The fields of a JSON object record that a topic's columns name, picked in one pass over the
//! bytes: fields no column names are skipped without being built, and keys are not copied.
//!
//! The fields picked are exactly those a whole parse into a `serde_json::Map` (a map sorted by
//! key) would give the same lookup: a field named exactly as the column, else the first field in
//! key order whose name equals the column's ignoring ASCII case; a repeated key keeps its last
//! value. One difference: a field no column names is only checked to be well-formed JSON, so a
//! lone UTF-16 surrogate escape (`"\ud800"`, which JSON's grammar allows and `serde_json`'s tree
//! refuses) in such a field does not make the record undecodable.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value as Json;
use smallvec::{smallvec, SmallVec};

use crate::table::{Cell, Column, ColumnType, Value};

/// What one column found.
#[derive(Default)]
struct Found {
    exact: Option<Json>,
    /// The field matching ignoring case with the smallest key so far, and that key.
    loose: Option<(String, Json)>,
}

/// The value each column takes from `record` (`None`: no such field), or `None` when the record
/// is not one well-formed JSON object; the caller then parses it whole to say why.
pub fn pick(record: &[u8], columns: &[Column]) -> Option<Vec<Option<Json>>> {
    let mut de = serde_json::Deserializer::from_slice(record);
    let found = Record { columns }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(
        found
            .into_iter()
            .map(|f| f.exact.or(f.loose.map(|(_, v)| v)))
            .collect(),
    )
}

struct Record<'c> {
    columns: &'c [Column],
}

impl<'de> DeserializeSeed<'de> for Record<'_> {
    type Value = Vec<Found>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Record<'_> {
    type Value = Vec<Found>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found: Vec<Found> = (0..self.columns.len()).map(|_| Found::default()).collect();
        while let Some(key) = map.next_key_seed(KeyOf {
            columns: self.columns,
        })? {
            match key {
                KeyMatch::Exact(i) => found[i].exact = Some(map.next_value()?),
                KeyMatch::Loose(i, name) => {
                    let v: Json = map.next_value()?;
                    let f = &mut found[i];
                    // Sorted-map order: the smallest key wins; the same key again replaces.
                    if f.loose.as_ref().is_none_or(|(k, _)| name <= *k) {
                        f.loose = Some((name, v));
                    }
                }
                KeyMatch::None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }
}

/// Which column a key names.
enum KeyMatch {
    Exact(usize),
    Loose(usize, String),
    None,
}

struct KeyOf<'c> {
    columns: &'c [Column],
}

impl KeyOf<'_> {
    fn classify(&self, key: &str) -> KeyMatch {
        // One pass: a column named exactly so wins over any matching it ignoring case, wherever
        // they stand; most keys differ from every column in length and cost no byte compare.
        let mut loose = None;
        for (i, c) in self.columns.iter().enumerate() {
            if c.name.len() != key.len() {
                continue;
            }
            if c.name == key {
                return KeyMatch::Exact(i);
            }
            if loose.is_none() && c.name.eq_ignore_ascii_case(key) {
                loose = Some(i);
            }
        }
        match loose {
            Some(i) => KeyMatch::Loose(i, key.to_string()),
            None => KeyMatch::None,
        }
    }
}

impl<'de> DeserializeSeed<'de> for KeyOf<'_> {
    type Value = KeyMatch;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeyOf<'_> {
    type Value = KeyMatch;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: serde::de::Error>(self, key: &str) -> Result<KeyMatch, E> {
        Ok(self.classify(key))
    }
}

/// One column's value as [`pick_typed`] found it: converted, or text borrowed from the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Field<'de> {
    /// The value, converted and checked against its column as [`Value::from_json`] does.
    Value(Value),
    /// Text for a VARCHAR column, as it stands in the record (no escapes to undo).
    Text(&'de str),
}

impl Field<'_> {
    /// The field as a borrowed cell.
    pub fn as_cell(&self) -> Cell<'_> {
        match self {
            Field::Value(v) => v.as_cell(),
            Field::Text(s) => Cell::Str(s),
        }
    }

    /// The owned value.
    pub fn into_value(self) -> Value {
        match self {
            Field::Value(v) => v,
            Field::Text(s) => Value::Str(s.to_string()),
        }
    }
}

/// One record's fields, one per column read: inline for up to eight columns, since a stream job
/// picks one such row from every record it reads.
pub type Fields<'de> = SmallVec<[Field<'de>; 8]>;

/// Fills `out` with the row `record` holds, each field converted straight from the bytes to its
/// column's type without a JSON tree in between, and answers true, when nothing about the record
/// needs a closer look; answers false otherwise (a key that matches a column only ignoring case,
/// a key given twice, a value that does not convert, a NULL in a NOT NULL column, a record that
/// is not one JSON object), `out` then holding nothing of use. Where it answers true, the row is
/// exactly what [`pick`] and [`Value::from_json`] give; where it does not, they give the row or
/// say why the record does not decode.
///
/// The caller's `out` is written in place: a row of eight fields is a few hundred bytes, and
/// moving it through the deserializer's return values cost a stream job more than the parse of
/// the fields it reads.
pub fn pick_typed<'de>(record: &'de [u8], columns: &[Column], out: &mut Fields<'de>) -> bool {
    out.clear();
    out.resize(columns.len(), Field::Value(Value::Null));
    let mut seen: SmallVec<[bool; 16]> = smallvec![false; columns.len()];
    let mut de = serde_json::Deserializer::from_slice(record);
    let parsed = TypedRecord {
        columns,
        out,
        seen: &mut seen,
    }
    .deserialize(&mut de);
    if parsed.is_err() || de.end().is_err() {
        return false;
    }
    // A column the record has no field for is NULL, where its column allows that.
    columns
        .iter()
        .zip(&seen)
        .all(|(c, seen)| *seen || Value::Null.check(c).is_ok())
}

struct TypedRecord<'c, 'o, 'de> {
    columns: &'c [Column],
    out: &'o mut Fields<'de>,
    seen: &'o mut [bool],
}

impl<'de> DeserializeSeed<'de> for TypedRecord<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TypedRecord<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key_seed(KeyOf {
            columns: self.columns,
        })? {
            match key {
                KeyMatch::Exact(i) if !self.seen[i] => {
                    self.seen[i] = true;
                    self.out[i] = map.next_value_seed(Typed {
                        column: &self.columns[i],
                    })?;
                }
                // The slower path knows which of several candidates wins.
                KeyMatch::Exact(_) | KeyMatch::Loose(..) => {
                    return Err(serde::de::Error::custom("needs the whole parse"))
                }
                KeyMatch::None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// One field's value, read as its column's type.
struct Typed<'c> {
    column: &'c Column,
}

impl Typed<'_> {
    /// The value a JSON scalar gives, as [`Value::from_json`] converts it; its errors end the
    /// fast path (the slower one words them).
    fn convert<E: serde::de::Error>(&self, json: Json) -> Result<Field<'static>, E> {
        Value::from_json(&json, self.column)
            .map(Field::Value)
            .map_err(|_| E::custom("does not convert"))
    }
}

impl<'de> DeserializeSeed<'de> for Typed<'_> {
    type Value = Field<'de>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Typed<'_> {
    type Value = Field<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON scalar")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Field<'de>, E> {
        self.convert(Json::Null)
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Field<'de>, E> {
        self.convert(Json::Bool(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Field<'de>, E> {
        self.convert(Json::Number(v.into()))
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Field<'de>, E> {
        self.convert(Json::Number(v.into()))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Field<'de>, E> {
        match serde_json::Number::from_f64(v) {
            Some(n) => self.convert(Json::Number(n)),
            None => Err(E::custom("not a finite number")),
        }
    }

    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Field<'de>, E> {
        match self.column.ty {
            ColumnType::Utf8 => Ok(Field::Text(v)),
            _ => self.text(v),
        }
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Field<'de>, E> {
        self.text(v)
    }
}

impl Typed<'_> {
    /// A JSON string for the column, as [`Value::from_json`] reads one (without copying it into
    /// a JSON tree first).
    fn text<'de, E: serde::de::Error>(&self, v: &str) -> Result<Field<'de>, E> {
        let value = match self.column.ty {
            ColumnType::Utf8 => Value::Str(v.to_string()).check(self.column),
            ColumnType::Binary => Value::Bytes(v.as_bytes().to_vec()).check(self.column),
            _ => Value::parse_text(v, self.column),
        };
        value
            .map(Field::Value)
            .map_err(|_| E::custom("does not convert"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ColumnType;
    use proptest::prelude::*;

    fn col(name: &str) -> Column {
        Column {
            name: name.into(),
            ty: ColumnType::Int64,
            nullable: true,
        }
    }

    /// The lookup a whole parse into a sorted map gives, as the fast path must.
    fn whole(record: &[u8], columns: &[Column]) -> Option<Vec<Option<Json>>> {
        let Ok(Json::Object(fields)) = serde_json::from_slice::<Json>(record) else {
            return None;
        };
        Some(
            columns
                .iter()
                .map(|c| {
                    fields
                        .get(&c.name)
                        .or_else(|| {
                            fields
                                .iter()
                                .find(|(k, _)| k.eq_ignore_ascii_case(&c.name))
                                .map(|(_, v)| v)
                        })
                        .cloned()
                })
                .collect(),
        )
    }

    #[test]
    fn picks_what_a_whole_parse_finds() {
        let columns = [col("id"), col("Name"), col("x")];
        for record in [
            &br#"{"id": 1, "Name": "a", "other": {"deep": [1, 2]}}"#[..],
            br#"{"ID": 1, "id": 2}"#,
            br#"{"ID": 1, "Id": 2}"#,
            br#"{"Id": 2, "ID": 1}"#,
            br#"{"id": 1, "id": 3}"#,
            br#"{"iD": 1, "iD": 4, "ID": 0}"#,
            br#"{"name": "n", "NAME": "m"}"#,
            br#"{"x": null}"#,
            br#"{"x": "a\"b\u00e9", "y": "\n"}"#,
            br#"{}"#,
            br#"  {"id": 5}  "#,
            br#"[1, 2]"#,
            br#"7"#,
            br#"{"id": 1} {"id": 2}"#,
            br#"{"id": 1"#,
            br#"not json"#,
            b"",
        ] {
            assert_eq!(
                pick(record, &columns),
                whole(record, &columns),
                "{}",
                String::from_utf8_lossy(record)
            );
        }
        // A field no column names is skipped, not built: a lone surrogate there is let be.
        let lone = br#"{"id": 1, "other": "\ud800"}"#;
        assert_eq!(whole(lone, &columns), None);
        assert_eq!(
            pick(lone, &columns),
            Some(vec![Some(Json::from(1)), None, None])
        );
        assert_eq!(pick(br#"{"x": "\ud800"}"#, &columns), None);
    }

    /// What the slower path gives: the fields picked, each converted as `Value::from_json` does.
    fn slow(record: &[u8], columns: &[Column]) -> Option<Result<Vec<Value>, String>> {
        let fields = pick(record, columns)?;
        Some(
            columns
                .iter()
                .zip(fields)
                .map(|(c, f)| match f {
                    Some(j) => Value::from_json(&j, c),
                    None => Value::Null.check(c),
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string()),
        )
    }

    /// One column of each type a topic can declare, the first NOT NULL.
    fn typed_columns() -> Vec<Column> {
        let typed = |name: &str, ty: ColumnType, nullable: bool| Column {
            name: name.into(),
            ty,
            nullable,
        };
        vec![
            typed("id", ColumnType::Int64, false),
            typed("small", ColumnType::Int16, true),
            typed("n", ColumnType::UInt64, true),
            typed("x", ColumnType::Float64, true),
            typed("r", ColumnType::Float32, true),
            typed(
                "d",
                ColumnType::Decimal {
                    precision: 10,
                    scale: 2,
                },
                true,
            ),
            typed("s", ColumnType::Utf8, true),
            typed("b", ColumnType::Binary, true),
            typed("ok", ColumnType::Boolean, true),
            typed("day", ColumnType::Date32, true),
            typed("at", ColumnType::Timestamp, true),
        ]
    }

    #[test]
    fn typed_fields_are_what_the_slower_path_gives_or_nothing() {
        let columns = typed_columns();
        // Records the fast path answers.
        let plain: &[&[u8]] = &[
            br#"{"id": 1, "small": -3, "n": 7, "x": 1.5, "r": 0.1, "d": 12.34, "s": "a", "b": "bytes", "ok": true, "day": "1995-01-31", "at": "2024-06-01 10:00:00"}"#,
            br#"{"id": -9, "x": 3, "d": "7.1", "s": "tab\there \u00e9", "day": 9000, "at": 1717236000000, "other": {"deep": [1, 2]}}"#,
            br#"{"id": "42", "small": "12", "n": "18446744073709551615", "x": "2.5e3", "ok": "yes", "s": ""}"#,
            br#"{"id": 3, "s": null, "x": null, "ok": false}"#,
            br#"  {"id": 5}  "#,
        ];
        // Records it leaves to the slower path (which decodes some and refuses others).
        let other: &[&[u8]] = &[
            br#"{"ID": 1}"#,
            br#"{"id": 1, "Id": 2}"#,
            br#"{"id": 1, "id": 2}"#,
            br#"{"id": null}"#,
            br#"{"small": 1}"#,
            br#"{"id": 1, "small": 40000}"#,
            br#"{"id": 1.5}"#,
            br#"{"id": 1, "n": -1}"#,
            br#"{"id": 1, "s": [1]}"#,
            br#"{"id": 1, "x": {"a": 1}}"#,
            br#"{"id": 1, "day": "not a date"}"#,
            br#"{"id": 1, "d": 123456789012.5}"#,
            br#"{"id": 1, "d": 12.345}"#,
            br#"{"id": 1, "ok": 1}"#,
            br#"{"id": 1} {"id": 2}"#,
            br#"{"id": 1"#,
            br#"[1]"#,
            b"",
        ];
        let mut out = Fields::new();
        for (record, answers) in plain
            .iter()
            .map(|r| (r, true))
            .chain(other.iter().map(|r| (r, false)))
        {
            let text = String::from_utf8_lossy(record);
            // One buffer for all the records, as a stream job reuses it.
            let fast = pick_typed(record, &columns, &mut out);
            assert_eq!(fast, answers, "{text}: {:?}", slow(record, &columns));
            if fast {
                let values: Vec<Value> = out.drain(..).map(Field::into_value).collect();
                assert_eq!(slow(record, &columns), Some(Ok(values)), "{text}");
            }
        }
    }

    /// A JSON value as text, of the kinds records hold: numbers in and out of every column's
    /// range, text that parses as each type or not (with escapes), null, booleans, nesting.
    fn json_value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|v| v.to_string()),
            any::<u64>().prop_map(|v| v.to_string()),
            (-40_000i64..40_000).prop_map(|v| v.to_string()),
            any::<f64>().prop_map(|v| serde_json::to_string(&v).unwrap_or_default()),
            (-1000i64..1000, 0u32..1000).prop_map(|(a, b)| format!("{a}.{b}")),
            Just("null".to_string()),
            prop_oneof![Just("true"), Just("false")].prop_map(String::from),
            prop_oneof![
                Just("1995-01-31"),
                Just("2024-06-01 10:00:00"),
                Just("12.34"),
                Just("yes"),
                Just("-7"),
                Just("1e3"),
                Just(""),
                Just("tab\\there \\u00e9 \\\""),
            ]
            .prop_map(|t| format!("\"{t}\"")),
            "[a-zA-Z0-9 ]{0,12}".prop_map(|t| format!("\"{t}\"")),
            Just(r#"{"a": [1, {"b": null}]}"#.to_string()),
            Just("[1, 2]".to_string()),
        ]
    }

    /// A value of the kind column `name` of [`typed_columns`] takes (which may still be out of
    /// its range or precision).
    fn value_for(name: &str) -> BoxedStrategy<String> {
        // Mostly values that convert, now and then one that does not.
        let pick = |good: &'static [&'static str], bad: &'static [&'static str]| {
            prop_oneof![
                9 => prop::sample::select(good.to_vec()),
                1 => prop::sample::select(bad.to_vec()),
            ]
            .prop_map(String::from)
            .boxed()
        };
        match name {
            "id" | "small" => prop_oneof![
                9 => (-1000i64..1000).prop_map(|v| v.to_string()),
                1 => any::<i64>().prop_map(|v| v.to_string()),
                1 => Just("\"42\"".to_string()),
            ]
            .boxed(),
            "n" => any::<u64>().prop_map(|v| v.to_string()).boxed(),
            "x" | "r" | "d" => prop_oneof![
                9 => (-100_000i64..100_000, 0u32..100).prop_map(|(a, b)| format!("{a}.{b:02}")),
                1 => (any::<i64>(), 0u32..100_000).prop_map(|(a, b)| format!("{a}.{b}")),
            ]
            .boxed(),
            "s" | "b" => prop_oneof![
                9 => "[a-zA-Z0-9 ]{0,12}".prop_map(|t| format!("\"{t}\"")),
                1 => Just(r#""\ud800""#.to_string()),
            ]
            .boxed(),
            "ok" => pick(&["true", "false", "\"yes\""], &["1"]),
            "day" => pick(
                &["\"1995-01-31\"", "\"2024-02-29\"", "9000"],
                &["\"2023-02-29\""],
            ),
            _ => pick(
                &[
                    "\"2024-06-01 10:00:00\"",
                    "\"2024-06-01T10:00:00Z\"",
                    "1717236000000",
                ],
                &["\"noon\""],
            ),
        }
    }

    /// A record: an object holding the columns' fields, mostly with values of their types and
    /// under their names, sometimes with any value, under a name in another case, given twice,
    /// or beside fields no column names; sometimes cut short, padded, or followed by more.
    fn json_record() -> impl Strategy<Value = Vec<u8>> {
        let field = |name: &'static str| {
            let key = prop_oneof![
                29 => Just(name.to_string()),
                1 => Just(name.to_ascii_uppercase()),
            ];
            let value = prop_oneof![29 => value_for(name), 1 => json_value()];
            // How many times the field is given.
            let times = prop_oneof![29 => Just(1), 1 => Just(2)];
            prop::option::weighted(0.85, (key, value, times))
        };
        let names = [
            "id", "small", "n", "x", "r", "d", "s", "b", "ok", "day", "at",
        ];
        let fields: Vec<_> = names.iter().map(|n| field(n)).collect();
        let other = prop::option::of(json_value());
        (fields, other, 0u8..12, any::<usize>()).prop_map(|(fields, other, shape, cut)| {
            let mut body: Vec<String> = Vec::new();
            for (k, v, times) in fields.into_iter().flatten() {
                for _ in 0..times {
                    body.push(format!("\"{k}\": {v}"));
                }
            }
            if let Some(v) = other {
                body.insert(body.len() / 2, format!("\"other\": {v}"));
            }
            let text = format!("{{{}}}", body.join(", "));
            let mut bytes = text.into_bytes();
            match shape {
                0 => bytes.truncate(cut % (bytes.len() + 1)),
                1 => bytes.extend_from_slice(b" {}"),
                2 => {
                    bytes.insert(0, b' ');
                    bytes.push(b'\n');
                }
                _ => {}
            }
            bytes
        })
    }

    /// What [`pick_typed`] gives in a buffer of its own.
    fn typed<'de>(record: &'de [u8], columns: &[Column]) -> Option<Fields<'de>> {
        let mut out = Fields::new();
        pick_typed(record, columns, &mut out).then_some(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn generated_records_pick_as_a_whole_parse_and_convert_as_the_slower_path(
            record in json_record(),
        ) {
            let columns = typed_columns();
            prop_assert_eq!(pick(&record, &columns), whole(&record, &columns));
            if let Some(fields) = typed(&record, &columns) {
                let values: Vec<Value> = fields.into_iter().map(Field::into_value).collect();
                prop_assert_eq!(slow(&record, &columns), Some(Ok(values)));
            }
        }

        #[test]
        fn arbitrary_bytes_pick_as_a_whole_parse(
            record in prop::collection::vec(any::<u8>(), 0..64),
        ) {
            let columns = typed_columns();
            prop_assert_eq!(pick(&record, &columns), whole(&record, &columns));
            if let Some(fields) = typed(&record, &columns) {
                let values: Vec<Value> = fields.into_iter().map(Field::into_value).collect();
                prop_assert_eq!(slow(&record, &columns), Some(Ok(values)));
            }
        }
    }
}
