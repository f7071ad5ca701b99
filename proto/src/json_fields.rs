//! The fields of a JSON object record that a topic's columns name, picked in one pass over the
//! bytes: fields no column names are skipped without being built, and keys are not copied.
//!
//! The fields picked are exactly those a whole parse into a `serde_json::Map` (a map sorted by
//! key) would give the same lookup: a field named exactly as the column, else the first field in
//! key order whose name equals the column's ignoring ASCII case; a repeated key keeps its last
//! value.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value as Json;

use crate::table::Column;

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
        if let Some(i) = self.columns.iter().position(|c| c.name == key) {
            return KeyMatch::Exact(i);
        }
        match self
            .columns
            .iter()
            .position(|c| c.name.eq_ignore_ascii_case(key))
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::ColumnType;

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
    }
}
