//! `weir kv put | get | delete | scan`: rows of a table by key.
//!
//! Keys are given as text: the value of a one-column key as it is, a composite key as its values
//! separated by commas (quoted as in CSV when a value holds a comma). Rows are printed as a table,
//! or with `--format json` as JSON lines (one object per row), or as CSV.

use std::io::Write;

use anyhow::{anyhow, bail, Result};
use weir_client::{ColumnType, ScanOptions, Table, TableRow, TableSchema, Value};

use super::output::{cell_text, object, print_rows, print_summary, Format, Rows};
use super::{Context, KvCommand};

/// Runs one `weir kv` subcommand.
pub async fn run(ctx: &Context, cmd: KvCommand) -> Result<()> {
    let client = ctx.client().await?;
    let mut out = std::io::stdout();
    match cmd {
        KvCommand::Put { table, row } => {
            let t = client.table(&table).await?;
            let json: serde_json::Value = serde_json::from_str(&row)
                .map_err(|e| anyhow!("the row is not JSON ({e}): {row}"))?;
            let values = row_from_json(t.schema(), &json)?;
            t.put(vec![values]).await?;
            print_summary(
                ctx.format,
                &format!("put 1 row into {table}"),
                &[("rows", serde_json::Value::from(1))],
                &mut out,
            )
        }
        KvCommand::Get {
            table,
            keys,
            columns,
            stale,
        } => {
            let t = client.table(&table).await?;
            let keys = keys
                .iter()
                .map(|k| parse_key(t.schema(), k, false))
                .collect::<Result<Vec<_>>>()?;
            let columns = super::split_names(columns.as_deref().unwrap_or(""));
            let rows = t.get(&keys, &columns, stale).await?;
            let mut printer = RowPrinter::new(ctx.format, &t, &columns)?;
            let found: Vec<TableRow> = rows.into_iter().flatten().collect();
            printer.print(&found, &mut out)?;
            printer.finish(&mut out)
        }
        KvCommand::Delete { table, keys } => {
            let t = client.table(&table).await?;
            let keys = keys
                .iter()
                .map(|k| parse_key(t.schema(), k, false))
                .collect::<Result<Vec<_>>>()?;
            let n = t.delete(&keys).await?;
            print_summary(
                ctx.format,
                &format!("deleted {n} key(s) from {table}"),
                &[("keys", serde_json::Value::from(n))],
                &mut out,
            )
        }
        KvCommand::Scan {
            table,
            start,
            end,
            limit,
            reverse,
            columns,
            stale,
        } => {
            let t = client.table(&table).await?;
            let columns = super::split_names(columns.as_deref().unwrap_or(""));
            let opts = ScanOptions {
                start: start
                    .as_deref()
                    .map(|k| parse_key(t.schema(), k, true))
                    .transpose()?,
                end: end
                    .as_deref()
                    .map(|k| parse_key(t.schema(), k, true))
                    .transpose()?,
                limit: limit.map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX)),
                reverse,
                columns: columns.clone(),
                stale,
            };
            let mut printer = RowPrinter::new(ctx.format, &t, &columns)?;
            let mut failed = None;
            t.scan(&opts, |page| {
                let rows: Vec<TableRow> = page.into_iter().map(|(_, r)| r).collect();
                match printer.print(&rows, &mut out) {
                    Ok(()) => true,
                    Err(e) => {
                        failed = Some(e);
                        false
                    }
                }
            })
            .await?;
            if let Some(e) = failed {
                return Err(e);
            }
            printer.finish(&mut out)
        }
    }
}

/// Parses a key given as text; `prefix` allows fewer values than key columns (scan bounds).
pub fn parse_key(schema: &TableSchema, text: &str, prefix: bool) -> Result<Vec<Value>> {
    let cols: Vec<_> = schema.key_columns().collect();
    let parts: Vec<String> = if cols.len() == 1 {
        vec![text.to_string()]
    } else {
        let mut r = csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(text.as_bytes());
        match r.records().next() {
            Some(rec) => rec?.iter().map(str::to_string).collect(),
            None => Vec::new(),
        }
    };
    if parts.len() > cols.len() || (!prefix && parts.len() != cols.len()) {
        bail!(
            "key '{text}' has {} value(s); the key is ({})",
            parts.len(),
            cols.iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    parts
        .iter()
        .zip(cols)
        .map(|(p, c)| Value::parse_text(p, c).map_err(|e| anyhow!("key '{text}': {e}")))
        .collect()
}

/// A full row from a JSON object (missing columns are NULL) or array (values in column order).
pub fn row_from_json(schema: &TableSchema, json: &serde_json::Value) -> Result<Vec<Value>> {
    match json {
        serde_json::Value::Object(map) => {
            for k in map.keys() {
                schema.column_index(k)?;
            }
            schema
                .columns
                .iter()
                .map(|c| {
                    let v = map
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&c.name))
                        .map(|(_, v)| v)
                        .unwrap_or(&serde_json::Value::Null);
                    Ok(Value::from_json(v, c)?)
                })
                .collect()
        }
        serde_json::Value::Array(items) => {
            if items.len() != schema.columns.len() {
                bail!(
                    "the row has {} values; the table has {} columns ({})",
                    items.len(),
                    schema.columns.len(),
                    schema.column_names().join(", ")
                );
            }
            items
                .iter()
                .zip(&schema.columns)
                .map(|(v, c)| Ok(Value::from_json(v, c)?))
                .collect()
        }
        other => bail!("a row is a JSON object or array, not {other}"),
    }
}

/// Prints rows as they arrive: JSON lines and CSV stream, a table is drawn at the end.
struct RowPrinter {
    format: Format,
    names: Vec<String>,
    types: Vec<ColumnType>,
    grid: Rows,
    header_done: bool,
}

impl RowPrinter {
    fn new(format: Format, table: &Table, columns: &[String]) -> Result<RowPrinter> {
        let schema = table.schema();
        let idx: Vec<usize> = if columns.is_empty() {
            (0..schema.columns.len()).collect()
        } else {
            columns
                .iter()
                .map(|c| schema.column_index(c))
                .collect::<std::result::Result<_, _>>()?
        };
        let names: Vec<String> = idx
            .iter()
            .map(|i| schema.columns[*i].name.clone())
            .collect();
        Ok(RowPrinter {
            format,
            types: idx.iter().map(|i| schema.columns[*i].ty).collect(),
            grid: Rows::new(names.clone()),
            names,
            header_done: false,
        })
    }

    fn print(&mut self, rows: &[TableRow], out: &mut dyn Write) -> Result<()> {
        for r in rows {
            let cells: Vec<serde_json::Value> = r
                .values
                .iter()
                .zip(&self.types)
                .map(|(v, t)| v.to_json(*t))
                .collect();
            match self.format {
                Format::Table => self.grid.push(cells),
                Format::Json => writeln!(out, "{}", object(&self.names, &cells))?,
                Format::Csv => {
                    let mut w = csv::Writer::from_writer(&mut *out);
                    if !self.header_done {
                        w.write_record(&self.names)?;
                        self.header_done = true;
                    }
                    w.write_record(cells.iter().map(|c| cell_text(c, "")))?;
                    w.flush()?;
                }
            }
        }
        Ok(())
    }

    fn finish(self, out: &mut dyn Write) -> Result<()> {
        match self.format {
            Format::Table => print_rows(Format::Table, &self.grid, out),
            Format::Csv if !self.header_done => {
                let mut w = csv::Writer::from_writer(&mut *out);
                w.write_record(&self.names)?;
                w.flush()?;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_values::{cell_text, same, schema, schema_and_row, text_is_faithful};
    use proptest::prelude::*;

    /// A key (or key prefix) as a user types it: the value of a one-column key as it is, the
    /// values of a composite key as one CSV line.
    fn key_text(schema: &TableSchema, key: &[Value]) -> String {
        let texts: Vec<String> = key
            .iter()
            .zip(schema.key_columns())
            .map(|(v, c)| v.render(c.ty))
            .collect();
        if schema.primary_key.len() == 1 {
            return texts[0].clone();
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&texts).unwrap();
        let line = String::from_utf8(w.into_inner().unwrap()).unwrap();
        line.strip_suffix('\n').unwrap_or(&line).to_string()
    }

    /// JSON values, most of them the kinds cells take.
    fn json() -> impl Strategy<Value = serde_json::Value> {
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_key_text_gives_a_key_or_an_error(s in schema(), text in cell_text(), prefix in any::<bool>()) {
            if let Ok(key) = parse_key(&s, &text, prefix) {
                prop_assert!(key.len() <= s.primary_key.len());
                prop_assert!(prefix || key.len() == s.primary_key.len());
                for (v, c) in key.iter().zip(s.key_columns()) {
                    prop_assert!(v.fits(c), "{:?} does not fit {:?}", v, c);
                }
            }
        }

        #[test]
        fn rendered_keys_parse_back((s, row) in schema_and_row()) {
            let key: Vec<Value> = s.primary_key.iter().map(|i| row[*i].clone()).collect();
            prop_assume!(key.iter().zip(s.key_columns()).all(|(v, c)| text_is_faithful(v, c.ty)));
            let text = key_text(&s, &key);
            let back = parse_key(&s, &text, false);
            prop_assert!(
                matches!(&back, Ok(b) if same(b, &key)),
                "{:?} as '{}' parsed as {:?}", key, text, back
            );
            // Every leading part of the key is a prefix key.
            for n in 1..key.len() {
                let text = key_text(&s, &key[..n]);
                let back = parse_key(&s, &text, true);
                prop_assert!(matches!(&back, Ok(b) if same(b, &key[..n])), "{}: {:?}", text, back);
            }
        }

        #[test]
        fn any_json_gives_a_row_or_an_error(s in schema(), json in json()) {
            if let Ok(row) = row_from_json(&s, &json) {
                prop_assert_eq!(row.len(), s.columns.len());
                for (v, c) in row.iter().zip(&s.columns) {
                    prop_assert!(v.fits(c), "{:?} does not fit {:?}", v, c);
                }
            }
        }

        #[test]
        fn rows_printed_as_json_put_back((s, row) in schema_and_row(), as_array in any::<bool>()) {
            // JSON has no NaN or infinities, and bytes that are not UTF-8 print as hex.
            prop_assume!(row.iter().all(|v| match v {
                Value::Float(f) => f.is_finite(),
                Value::Bytes(b) => std::str::from_utf8(b).is_ok(),
                _ => true,
            }));
            let cells = row.iter().zip(&s.columns).map(|(v, c)| v.to_json(c.ty));
            let json = if as_array {
                serde_json::Value::Array(cells.collect())
            } else {
                serde_json::Value::Object(
                    s.columns.iter().map(|c| c.name.clone()).zip(cells).collect(),
                )
            };
            // Through its text, as `weir kv put` reads it.
            let json: serde_json::Value = serde_json::from_str(&json.to_string()).unwrap();
            let back = row_from_json(&s, &json).unwrap();
            prop_assert!(same(&back, &row), "{:?} as {} came back as {:?}", row, json, back);
        }
    }

    #[test]
    fn keys_parse_as_one_value_or_comma_separated_values() {
        let one = TableSchema::parse("name VARCHAR, n INT", &["name".into()]).unwrap();
        assert_eq!(
            parse_key(&one, "a,b", false).unwrap(),
            vec![Value::Str("a,b".into())],
            "a one-column key is taken whole"
        );
        let two = TableSchema::parse(
            "day DATE, id BIGINT, v VARCHAR",
            &["day".into(), "id".into()],
        )
        .unwrap();
        let k = parse_key(&two, "2024-01-02,7", false).unwrap();
        assert_eq!(k, vec![Value::Date(19724), Value::Int(7)]);
        assert_eq!(parse_key(&two, "2024-01-02", true).unwrap().len(), 1);
        let err = parse_key(&two, "2024-01-02", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(day, id)"), "{err}");
        let err = parse_key(&two, "2024-01-02,x", false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("column 'id'"), "{err}");
    }

    #[test]
    fn rows_parse_from_objects_and_arrays() {
        let s = TableSchema::parse("id BIGINT, name VARCHAR, ok BOOLEAN", &["id".into()]).unwrap();
        let row = row_from_json(&s, &serde_json::json!({"id": 1, "NAME": "x"})).unwrap();
        assert_eq!(
            row,
            vec![Value::Int(1), Value::Str("x".into()), Value::Null]
        );
        let row = row_from_json(&s, &serde_json::json!([2, null, true])).unwrap();
        assert_eq!(row, vec![Value::Int(2), Value::Null, Value::Bool(true)]);
        let err = row_from_json(&s, &serde_json::json!({"id": 1, "nope": 2}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown column 'nope'"), "{err}");
        assert!(row_from_json(&s, &serde_json::json!([1])).is_err());
        assert!(row_from_json(&s, &serde_json::json!("x")).is_err());
    }
}
