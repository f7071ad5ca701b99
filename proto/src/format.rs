//! How a topic's records read as rows: the record format a topic declares (JSON, CSV or text) and
//! its typed columns, decoding each record into values and encoding rows back into records.

use crate::table::{Column, ColumnType, Result, TableError, Value};
use crate::v1;

/// How one record's bytes hold a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum RecordFormat {
    /// A JSON object per record; its fields are matched to the columns by name.
    Json,
    /// One CSV line per record, its fields in column order.
    Csv,
    /// The whole record as text: one VARCHAR column.
    Text,
}

impl RecordFormat {
    /// Parses `json`, `csv` or `text` (any case).
    pub fn parse(name: &str) -> Result<RecordFormat> {
        match name.trim().to_ascii_lowercase().as_str() {
            "json" => Ok(RecordFormat::Json),
            "csv" => Ok(RecordFormat::Csv),
            "text" => Ok(RecordFormat::Text),
            other => Err(TableError::Schema(format!(
                "unknown record format '{other}' (known: json, csv, text)"
            ))),
        }
    }

    /// The format's name as `parse` reads it.
    pub fn name(&self) -> &'static str {
        match self {
            RecordFormat::Json => "json",
            RecordFormat::Csv => "csv",
            RecordFormat::Text => "text",
        }
    }
}

/// A topic's record format and the columns its records decode into.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TopicFormat {
    /// How a record holds a row.
    pub kind: RecordFormat,
    /// The columns, in order (a CSV record's fields come in this order).
    pub columns: Vec<Column>,
}

/// The prefix of the metadata columns SQL adds to every topic (`_partition`, `_offset`, ...),
/// which declared columns therefore may not use.
pub const METADATA_PREFIX: char = '_';

impl TopicFormat {
    /// Checks a format: JSON and CSV need columns, text has exactly one VARCHAR column (`line`
    /// when none is named); names are letters, digits and '_', unique, and do not start with '_'.
    pub fn new(kind: RecordFormat, mut columns: Vec<Column>) -> Result<TopicFormat> {
        if kind == RecordFormat::Text {
            if columns.is_empty() {
                columns.push(Column {
                    name: "line".into(),
                    ty: ColumnType::Utf8,
                    nullable: false,
                });
            }
            if columns.len() != 1 || columns[0].ty != ColumnType::Utf8 {
                return Err(TableError::Schema(
                    "a text topic has exactly one VARCHAR column".into(),
                ));
            }
        }
        if columns.is_empty() {
            return Err(TableError::Schema(format!(
                "a {} topic needs its columns: CREATE TOPIC name (col TYPE, ...)",
                kind.name()
            )));
        }
        for (i, c) in columns.iter().enumerate() {
            if c.name.is_empty() || !c.name.chars().all(|ch| ch.is_alphanumeric() || ch == '_') {
                return Err(TableError::Schema(format!(
                    "column name '{}' must be letters, digits or '_'",
                    c.name
                )));
            }
            if c.name.starts_with(METADATA_PREFIX) {
                return Err(TableError::Schema(format!(
                    "column name '{}' starts with '_', which the metadata columns (_partition, \
                     _offset, _timestamp, _key) use",
                    c.name
                )));
            }
            if columns[..i]
                .iter()
                .any(|o| o.name.eq_ignore_ascii_case(&c.name))
            {
                return Err(TableError::Schema(format!(
                    "column '{}' is declared twice",
                    c.name
                )));
            }
        }
        Ok(TopicFormat { kind, columns })
    }

    /// The one column a topic without a format reads as: the record's bytes.
    pub fn raw_columns() -> Vec<Column> {
        vec![Column {
            name: "value".into(),
            ty: ColumnType::Binary,
            nullable: false,
        }]
    }

    /// The row a record holds, one value per column, or why it does not decode.
    pub fn decode(&self, record: &[u8]) -> Result<Vec<Value>> {
        match self.kind {
            RecordFormat::Json => self.decode_json(record),
            RecordFormat::Csv => self.decode_csv(record),
            RecordFormat::Text => {
                let text = std::str::from_utf8(record)
                    .map_err(|e| TableError::Encoding(format!("record is not UTF-8 text: {e}")))?;
                Ok(vec![Value::Str(text.to_string()).check(&self.columns[0])?])
            }
        }
    }

    fn decode_json(&self, record: &[u8]) -> Result<Vec<Value>> {
        if let Some(fields) = crate::json_fields::pick(record, &self.columns) {
            return self
                .columns
                .iter()
                .zip(fields)
                .map(|(c, v)| match v {
                    Some(v) => Value::from_json(&v, c),
                    None => Value::Null.check(c),
                })
                .collect();
        }
        // Not one JSON object: the whole parse says why.
        let json: serde_json::Value = serde_json::from_slice(record)
            .map_err(|e| TableError::Encoding(format!("record is not JSON: {e}")))?;
        let serde_json::Value::Object(fields) = json else {
            return Err(TableError::Encoding(format!(
                "record is JSON but not an object: {}",
                truncate(&json.to_string())
            )));
        };
        self.columns
            .iter()
            .map(|c| {
                let v = fields.get(&c.name).or_else(|| {
                    fields
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&c.name))
                        .map(|(_, v)| v)
                });
                match v {
                    Some(v) => Value::from_json(v, c),
                    None => Value::Null.check(c),
                }
            })
            .collect()
    }

    fn decode_csv(&self, record: &[u8]) -> Result<Vec<Value>> {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(record);
        let mut fields = csv::StringRecord::new();
        let read = reader
            .read_record(&mut fields)
            .map_err(|e| TableError::Encoding(format!("record is not CSV: {e}")))?;
        if !read {
            fields = csv::StringRecord::from(vec![""]);
        }
        if fields.len() != self.columns.len() {
            return Err(TableError::Encoding(format!(
                "record has {} fields, the topic has {} columns",
                fields.len(),
                self.columns.len()
            )));
        }
        self.columns
            .iter()
            .zip(fields.iter())
            .map(|(c, f)| Value::parse_text(f, c))
            .collect()
    }

    /// The record that holds `row` (values in column order), as `decode` reads it back.
    pub fn encode(&self, row: &[Value]) -> Result<Vec<u8>> {
        if row.len() != self.columns.len() {
            return Err(TableError::Encoding(format!(
                "row has {} values, the topic has {} columns",
                row.len(),
                self.columns.len()
            )));
        }
        match self.kind {
            RecordFormat::Json => {
                let object: serde_json::Map<String, serde_json::Value> = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| (c.name.clone(), v.to_json(c.ty)))
                    .collect();
                serde_json::to_vec(&object).map_err(|e| TableError::Encoding(e.to_string()))
            }
            RecordFormat::Csv => {
                let mut out = csv::WriterBuilder::new()
                    .has_headers(false)
                    .terminator(csv::Terminator::Any(b'\n'))
                    .from_writer(Vec::new());
                let fields: Vec<String> = self
                    .columns
                    .iter()
                    .zip(row)
                    .map(|(c, v)| match v {
                        Value::Null => "\\N".to_string(),
                        v => v.render(c.ty),
                    })
                    .collect();
                out.write_record(&fields)
                    .map_err(|e| TableError::Encoding(e.to_string()))?;
                let mut bytes = out
                    .into_inner()
                    .map_err(|e| TableError::Encoding(e.to_string()))?;
                if bytes.last() == Some(&b'\n') {
                    bytes.pop();
                }
                Ok(bytes)
            }
            RecordFormat::Text => match &row[0] {
                Value::Str(s) => Ok(s.as_bytes().to_vec()),
                Value::Null => Err(TableError::Value {
                    column: self.columns[0].name.clone(),
                    reason: "a text record cannot be NULL".into(),
                }),
                other => Ok(other.render(self.columns[0].ty).into_bytes()),
            },
        }
    }

    /// The format as the wire describes it.
    pub fn to_proto(&self) -> v1::TopicFormat {
        v1::TopicFormat {
            kind: self.kind.name().into(),
            columns: self
                .columns
                .iter()
                .map(|c| v1::ColumnDef {
                    name: c.name.clone(),
                    r#type: c.ty.sql_name(),
                    nullable: c.nullable,
                })
                .collect(),
        }
    }

    /// A format from its wire description, checked as [`TopicFormat::new`] does.
    pub fn from_proto(f: &v1::TopicFormat) -> Result<TopicFormat> {
        let columns = f
            .columns
            .iter()
            .map(|d| {
                Ok(Column {
                    name: d.name.clone(),
                    ty: ColumnType::parse(&d.r#type)
                        .map_err(|e| TableError::Schema(format!("column '{}': {e}", d.name)))?,
                    nullable: d.nullable,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        TopicFormat::new(RecordFormat::parse(&f.kind)?, columns)
    }
}

/// At most the first 80 characters of `s`, for error messages.
fn truncate(s: &str) -> String {
    match s.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str, nullable: bool) -> Column {
        Column {
            name: name.into(),
            ty: ColumnType::parse(ty).unwrap(),
            nullable,
        }
    }

    fn format(kind: RecordFormat) -> TopicFormat {
        TopicFormat::new(
            kind,
            vec![
                col("id", "BIGINT", false),
                col("name", "VARCHAR", true),
                col("price", "DECIMAL(10,2)", true),
            ],
        )
        .unwrap()
    }

    #[test]
    fn json_records_decode_by_field_name_and_missing_fields_are_null() {
        let f = format(RecordFormat::Json);
        let row = f
            .decode(br#"{"price": "2.50", "ID": 7, "extra": true}"#)
            .unwrap();
        assert_eq!(row[0], Value::Int(7));
        assert_eq!(row[1], Value::Null);
        assert_eq!(row[2], Value::Decimal(250));
    }

    #[test]
    fn records_that_do_not_fit_say_why() {
        let f = format(RecordFormat::Json);
        let e = f.decode(br#"{"id": "seven"}"#).unwrap_err().to_string();
        assert!(e.contains("'id'") && e.contains("seven"), "{e}");
        let e = f.decode(b"not json").unwrap_err().to_string();
        assert!(e.contains("not JSON"), "{e}");
        let e = f.decode(b"[1, 2]").unwrap_err().to_string();
        assert!(e.contains("not an object"), "{e}");
        let e = f.decode(br#"{"name": "x"}"#).unwrap_err().to_string();
        assert!(
            e.contains("'id'"),
            "a missing NOT NULL column is named: {e}"
        );
        let csv = format(RecordFormat::Csv);
        let e = csv.decode(b"1,a").unwrap_err().to_string();
        assert!(e.contains("2 fields") && e.contains("3 columns"), "{e}");
        let text = TopicFormat::new(RecordFormat::Text, vec![]).unwrap();
        assert!(text.decode(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn rows_round_trip_through_every_format() {
        let row = vec![
            Value::Int(1),
            Value::Str("a, \"quoted\"\nline".into()),
            Value::Null,
        ];
        for kind in [RecordFormat::Json, RecordFormat::Csv] {
            let f = format(kind);
            let record = f.encode(&row).unwrap();
            assert_eq!(f.decode(&record).unwrap(), row, "{kind:?}");
        }
        let text = TopicFormat::new(RecordFormat::Text, vec![]).unwrap();
        let row = vec![Value::Str("GET /index.html 200".into())];
        assert_eq!(text.decode(&text.encode(&row).unwrap()).unwrap(), row);
    }

    #[test]
    fn formats_are_checked() {
        assert!(RecordFormat::parse("avro").is_err());
        assert!(TopicFormat::new(RecordFormat::Json, vec![]).is_err());
        assert!(
            TopicFormat::new(RecordFormat::Json, vec![col("_offset", "BIGINT", true)]).is_err()
        );
        assert!(TopicFormat::new(
            RecordFormat::Json,
            vec![col("a", "INT", true), col("A", "INT", true)]
        )
        .is_err());
        assert!(TopicFormat::new(RecordFormat::Text, vec![col("n", "INT", true)]).is_err());
        let f = format(RecordFormat::Csv);
        assert_eq!(TopicFormat::from_proto(&f.to_proto()).unwrap(), f);
    }
}
