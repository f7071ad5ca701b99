//! The body of an HTTP ingest request, split into record values.
//!
//! A body is a JSON array (one record per element) or NDJSON (one record per non-blank line). A
//! JSON string becomes its text; any other JSON value its compact JSON text. Parsing lives here,
//! apart from the HTTP server, so that it can be tested on its own against arbitrary bodies.

use serde::de::{Deserializer as _, Error as _, SeqAccess, Visitor};

/// Most records one ingest body may hold: each costs far more memory than its bytes in the body
/// (`[1,1,1,...]` is two bytes a record), so the count is bounded on its own.
pub const MAX_INGEST_RECORDS: usize = 100_000;

/// Why an ingest body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    /// The body is not UTF-8 text.
    #[error("body is not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// The body starts like a JSON array but is not one.
    #[error("body is not a JSON array: {0}")]
    NotAnArray(String),
    /// One NDJSON line is not a JSON value.
    #[error("line {line} is not JSON: {reason}")]
    BadLine {
        /// The line, counted from 1.
        line: usize,
        /// What the JSON parser objected to.
        reason: String,
    },
    /// The body holds more than [`MAX_INGEST_RECORDS`] records.
    #[error("body holds more than {MAX_INGEST_RECORDS} records")]
    TooManyRecords,
}

/// Splits a body into record values: a JSON array, or one JSON value per line.
///
/// A body is read as an array when it starts with `[` and the content type does not name NDJSON.
/// Each element becomes its record as soon as it is parsed, so the body is never held as one JSON
/// tree, and parsing stops at [`MAX_INGEST_RECORDS`].
pub fn parse_records(body: &[u8], content_type: &str) -> Result<Vec<Vec<u8>>, IngestError> {
    let text = std::str::from_utf8(body)?;
    if text.trim_start().starts_with('[') && !content_type.contains("ndjson") {
        let mut array = RecordArray {
            records: Vec::new(),
            over_limit: false,
        };
        let mut de = serde_json::Deserializer::from_str(text);
        let parsed = (&mut de)
            .deserialize_seq(&mut array)
            .and_then(|()| de.end());
        return match parsed {
            Ok(()) => Ok(array.records),
            Err(_) if array.over_limit => Err(IngestError::TooManyRecords),
            Err(e) => Err(IngestError::NotAnArray(e.to_string())),
        };
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if out.len() == MAX_INGEST_RECORDS {
            return Err(IngestError::TooManyRecords);
        }
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| IngestError::BadLine {
                line: i + 1,
                reason: e.to_string(),
            })?;
        out.push(as_record(v));
    }
    Ok(out)
}

/// A record's value: a JSON string's text, or any other JSON value's compact JSON text.
pub fn as_record(v: serde_json::Value) -> Vec<u8> {
    match v {
        serde_json::Value::String(s) => s.into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

/// Collects the elements of a JSON array as records, one element at a time.
struct RecordArray {
    records: Vec<Vec<u8>>,
    /// Set when the array has more than [`MAX_INGEST_RECORDS`] elements, so the caller can tell
    /// this refusal from a syntax error (serde only passes back a message).
    over_limit: bool,
}

impl<'de> Visitor<'de> for &mut RecordArray {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON array of records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<serde_json::Value>()? {
            if self.records.len() == MAX_INGEST_RECORDS {
                self.over_limit = true;
                return Err(A::Error::custom("too many records"));
            }
            self.records.push(as_record(v));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::Value as J;

    #[test]
    fn arrays_and_ndjson_become_records() {
        let r = parse_records(br#"["a", {"x": 1}, 3]"#, "application/json").unwrap();
        assert_eq!(
            r,
            vec![b"a".to_vec(), br#"{"x":1}"#.to_vec(), b"3".to_vec()]
        );
        let r = parse_records(b"{\"a\":1}\n\n\"b\"\n", "application/x-ndjson").unwrap();
        assert_eq!(r, vec![br#"{"a":1}"#.to_vec(), b"b".to_vec()]);
        assert!(matches!(
            parse_records(b"[1, 2", "application/json"),
            Err(IngestError::NotAnArray(_))
        ));
        let e = parse_records(b"{\"a\":1}\nnot json\n", "").unwrap_err();
        assert!(matches!(e, IngestError::BadLine { line: 2, .. }), "{e}");
        assert!(e.to_string().contains("line 2"), "{e}");
        let e = parse_records(b"\"caf\xe9\"", "").unwrap_err();
        assert!(matches!(e, IngestError::NotUtf8(_)), "{e}");
    }

    #[test]
    fn bodies_with_too_many_records_are_refused() {
        let at_limit = format!("[{}1]", "1,".repeat(MAX_INGEST_RECORDS - 1));
        let r = parse_records(at_limit.as_bytes(), "application/json").unwrap();
        assert_eq!(r.len(), MAX_INGEST_RECORDS);
        let over = format!("[{}1]", "1,".repeat(MAX_INGEST_RECORDS));
        let e = parse_records(over.as_bytes(), "application/json").unwrap_err();
        assert_eq!(e, IngestError::TooManyRecords);
        assert!(e.to_string().contains("more than"), "{e}");
        let at_limit = "1\n".repeat(MAX_INGEST_RECORDS);
        let r = parse_records(at_limit.as_bytes(), "application/x-ndjson").unwrap();
        assert_eq!(r.len(), MAX_INGEST_RECORDS);
        let over = "1\n".repeat(MAX_INGEST_RECORDS + 1);
        let e = parse_records(over.as_bytes(), "application/x-ndjson").unwrap_err();
        assert_eq!(e, IngestError::TooManyRecords);
        // The limit holds however the records are spelled, and wins over a later syntax error.
        let over = format!("[{}{{}}, oops", "[],".repeat(MAX_INGEST_RECORDS));
        assert_eq!(
            parse_records(over.as_bytes(), "").unwrap_err(),
            IngestError::TooManyRecords
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let deep = format!("[{}{}]", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse_records(deep.as_bytes(), ""),
            Err(IngestError::NotAnArray(_))
        ));
        let deep = format!("{}{}", "{\"a\":".repeat(100_000), "}".repeat(100_000));
        assert!(matches!(
            parse_records(deep.as_bytes(), "application/x-ndjson"),
            Err(IngestError::BadLine { line: 1, .. })
        ));
    }

    /// JSON values that serde_json writes and reads back unchanged.
    fn json() -> impl Strategy<Value = J> {
        let leaf = prop_oneof![
            Just(J::Null),
            any::<bool>().prop_map(J::Bool),
            any::<i64>().prop_map(J::from),
            any::<u64>().prop_map(J::from),
            // Eighths print and parse back exactly, whatever the float parser's rounding.
            (-100_000i32..100_000).prop_map(|i| J::from(f64::from(i) / 8.0)),
            any::<String>().prop_map(J::String),
            "[ \t\r\n\\[\\]{},:\"\\\\a-z0-9]{0,12}".prop_map(J::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| J::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Text made of JSON's own characters, so that the parser gets far before it fails.
    fn jsonish() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "[", "]", "{", "}", ",", ":", "\"", "\\", "\n", "\r\n", " ", "null", "true",
                    "-", "0", "1e", "9", ".", "\"a\"", "\\u", "d800", "\u{0}", "é",
                ])
                .prop_map(str::to_string),
                any::<char>().prop_map(String::from),
            ],
            0..40,
        )
        .prop_map(|parts| parts.concat())
    }

    fn content_type() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec!["", "application/json", "application/x-ndjson"])
    }

    /// The records a body of `values` must give: one per value, in order.
    fn expected(values: &[J]) -> Vec<Vec<u8>> {
        values.iter().cloned().map(as_record).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_give_records_or_an_error(
            body in prop::collection::vec(any::<u8>(), 0..200),
            ct in content_type(),
        ) {
            if let Ok(records) = parse_records(&body, ct) {
                // Never more records than bytes: every record costs at least one byte of body.
                prop_assert!(records.len() <= body.len());
            }
        }

        #[test]
        fn jsonish_text_gives_records_or_an_error(body in jsonish(), ct in content_type()) {
            match parse_records(body.as_bytes(), ct) {
                Ok(records) => prop_assert!(records.len() <= body.len()),
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn arrays_of_n_values_give_n_records(
            values in prop::collection::vec(json(), 0..20),
            pretty in any::<bool>(),
            ct in prop::sample::select(vec!["", "application/json"]),
        ) {
            let array = J::Array(values.clone());
            let body = if pretty {
                serde_json::to_string_pretty(&array).unwrap()
            } else {
                serde_json::to_string(&array).unwrap()
            };
            prop_assert_eq!(parse_records(body.as_bytes(), ct).unwrap(), expected(&values));
        }

        #[test]
        fn ndjson_of_n_values_gives_n_records(
            values in prop::collection::vec(json(), 0..20),
            crlf in any::<bool>(),
            blank_lines in any::<bool>(),
        ) {
            let sep = match (crlf, blank_lines) {
                (false, false) => "\n",
                (true, false) => "\r\n",
                (false, true) => "\n \n",
                (true, true) => "\r\n\t\r\n",
            };
            let body = values
                .iter()
                .map(|v| serde_json::to_string(v).unwrap())
                .collect::<Vec<_>>()
                .join(sep);
            let got = parse_records(body.as_bytes(), "application/x-ndjson").unwrap();
            prop_assert_eq!(got, expected(&values));
        }

        #[test]
        fn a_bad_ndjson_line_is_named(
            before in prop::collection::vec(json(), 0..5),
            after in prop::collection::vec(json(), 0..5),
        ) {
            let mut lines: Vec<String> =
                before.iter().map(|v| serde_json::to_string(v).unwrap()).collect();
            lines.push("{\"unterminated\": ".into());
            lines.extend(after.iter().map(|v| serde_json::to_string(v).unwrap()));
            let body = lines.join("\n");
            let e = parse_records(body.as_bytes(), "application/x-ndjson").unwrap_err();
            prop_assert!(
                matches!(e, IngestError::BadLine { line, .. } if line == before.len() + 1),
                "{}", e
            );
        }

    }

    proptest! {
        // Each case parses a body of over 100,000 records.
        #![proptest_config(ProptestConfig::with_cases(8))]

        #[test]
        fn bodies_over_the_record_limit_are_refused(
            extra in 1usize..4,
            element in prop::sample::select(vec!["0", "\"\"", "[]", "{}", "null"]),
            ndjson in any::<bool>(),
        ) {
            let n = MAX_INGEST_RECORDS + extra;
            let body = if ndjson {
                format!("{element}\n").repeat(n)
            } else {
                format!("[{}{element}]", format!("{element},").repeat(n - 1))
            };
            let ct = if ndjson { "application/x-ndjson" } else { "application/json" };
            prop_assert_eq!(
                parse_records(body.as_bytes(), ct).unwrap_err(),
                IngestError::TooManyRecords
            );
        }
    }
}
