//! Rendering results as a table for people, or JSON / CSV for scripts.

use std::io::Write;

use anyhow::Result;
use clap::ValueEnum;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table as Grid};
use serde_json::{Map, Value};

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for a terminal.
    Table,
    /// JSON: an array of objects for lists, one object for a single result.
    Json,
    /// Comma-separated values with a header row.
    Csv,
}

/// Rows with named columns; cells are JSON values so that JSON output keeps numbers as numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Rows {
    /// Column names, also the JSON keys and the CSV header.
    pub columns: Vec<String>,
    /// One vector of cells per row, in column order.
    pub rows: Vec<Vec<Value>>,
}

impl Rows {
    /// An empty result with the given columns.
    pub fn new<S: Into<String>>(columns: Vec<S>) -> Self {
        Rows {
            columns: columns.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// Appends a row; its cells follow the column order.
    pub fn push(&mut self, row: Vec<Value>) {
        self.rows.push(row);
    }
}

/// Prints rows: a table, a JSON array of objects, or CSV.
pub fn print_rows(format: Format, rows: &Rows, out: &mut dyn Write) -> Result<()> {
    match format {
        Format::Table => {
            let mut grid = Grid::new();
            grid.load_preset(UTF8_FULL_CONDENSED)
                .set_content_arrangement(ContentArrangement::Dynamic)
                .set_header(rows.columns.iter().map(String::as_str));
            for row in &rows.rows {
                grid.add_row(row.iter().map(|v| cell_text(v, "-")));
            }
            writeln!(out, "{grid}")?;
        }
        Format::Json => {
            let list: Vec<Value> = rows
                .rows
                .iter()
                .map(|row| object(&rows.columns, row))
                .collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&list)?)?;
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(&mut *out);
            w.write_record(&rows.columns)?;
            for row in &rows.rows {
                w.write_record(row.iter().map(|v| cell_text(v, "")))?;
            }
            w.flush()?;
        }
    }
    Ok(())
}

/// Prints one result: a sentence for people, or the same facts as a JSON object / one CSV row.
pub fn print_summary(
    format: Format,
    sentence: &str,
    fields: &[(&'static str, Value)],
    out: &mut dyn Write,
) -> Result<()> {
    match format {
        Format::Table => writeln!(out, "{sentence}")?,
        Format::Json => {
            let obj: Map<String, Value> = fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), v.clone()))
                .collect();
            writeln!(
                out,
                "{}",
                serde_json::to_string_pretty(&Value::Object(obj))?
            )?;
        }
        Format::Csv => {
            let mut rows = Rows::new(fields.iter().map(|(k, _)| *k).collect());
            rows.push(fields.iter().map(|(_, v)| v.clone()).collect());
            print_rows(Format::Csv, &rows, out)?;
        }
    }
    Ok(())
}

/// One row as a JSON object keyed by column name; a name the row has twice (`SELECT a, a`) keys
/// its later columns `a_1`, `a_2`, ... (as DuckDB names them), so no value is lost.
pub fn object(columns: &[String], row: &[Value]) -> Value {
    let mut obj = Map::with_capacity(columns.len());
    for (name, v) in columns.iter().zip(row) {
        let mut key = name.clone();
        let mut n = 0;
        while obj.contains_key(&key) {
            n += 1;
            key = format!("{name}_{n}");
        }
        obj.insert(key, v.clone());
    }
    Value::Object(obj)
}

/// A cell as text: strings unquoted, lists comma-joined, null as `empty`.
pub fn cell_text(v: &Value, empty: &str) -> String {
    match v {
        Value::Null => empty.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| cell_text(i, empty))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Rows {
        let mut rows = Rows::new(vec!["partition", "leader", "replicas"]);
        rows.push(vec![json!(0), json!(2), json!([1, 2, 3])]);
        rows.push(vec![json!(1), Value::Null, json!([2, 3])]);
        rows
    }

    fn render(format: Format, rows: &Rows) -> String {
        let mut out = Vec::new();
        print_rows(format, rows, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_repeated_column_name_keeps_every_value_in_json() {
        let mut rows = Rows::new(vec!["a", "a", "a_1", "a"]);
        rows.push(vec![json!(1), json!(2), json!(3), json!(4)]);
        let v: Value = serde_json::from_str(&render(Format::Json, &rows)).unwrap();
        assert_eq!(v, json!([{"a": 1, "a_1": 2, "a_1_1": 3, "a_2": 4}]));
    }

    #[test]
    fn csv_has_a_header_and_joined_lists() {
        assert_eq!(
            render(Format::Csv, &sample()),
            "partition,leader,replicas\n0,2,\"1,2,3\"\n1,,\"2,3\"\n"
        );
    }

    #[test]
    fn json_keeps_numbers_and_nulls() {
        let v: Value = serde_json::from_str(&render(Format::Json, &sample())).unwrap();
        assert_eq!(
            v,
            json!([
                {"partition": 0, "leader": 2, "replicas": [1, 2, 3]},
                {"partition": 1, "leader": null, "replicas": [2, 3]}
            ])
        );
    }

    #[test]
    fn table_shows_every_cell() {
        let text = render(Format::Table, &sample());
        for needle in ["partition", "leader", "replicas", "1,2,3", "2,3", "-"] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
    }
}
