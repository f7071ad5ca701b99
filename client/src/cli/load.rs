//! `weir load csv`: stream a CSV file into a table in batches, with a progress bar.
//!
//! A reader thread parses and checks rows against the table's schema; batches of rows are written
//! by several concurrent requests (each split by region and sent to the regions' leaders). With
//! `--create` the table is created first, its column types inferred from the first rows. A row that
//! does not fit stops the load with the file, line and column (rows before it stay loaded), unless
//! `--bad-rows FILE` is given: then each such row goes to that file with the reason.

use std::fs::File;
use std::io::BufReader;
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::Value as J;
use tokio::sync::mpsc;
use weir_client::{ColumnType, Table, TableSchema, Value};
use weir_proto::table::Column;

use super::output::print_summary;
use super::{Context, LoadCsvArgs};

/// Rows looked at to infer column types.
const INFER_ROWS: usize = 1000;

/// What the reader thread hands over.
enum Parsed {
    /// A batch of checked rows and the bytes of the file read so far.
    Batch(Vec<Vec<Value>>, u64),
    /// The load must stop here.
    Failed(anyhow::Error),
    /// The whole file was read; rows written to the bad-rows file.
    Done(u64),
}

/// Runs `weir load csv`.
pub async fn csv(ctx: &Context, args: LoadCsvArgs) -> Result<()> {
    let delimiter = u8::try_from(args.delimiter)
        .map_err(|_| anyhow!("--delimiter must be a single-byte character"))?;
    let open = || -> Result<csv::Reader<BufReader<File>>> {
        let f = File::open(&args.file).with_context(|| format!("cannot open {}", args.file))?;
        Ok(csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(args.header)
            .flexible(true)
            .from_reader(BufReader::with_capacity(1 << 20, f)))
    };
    let client = ctx.client().await?;
    let mut reader = open()?;
    let header: Option<Vec<String>> = if args.header {
        Some(reader.headers()?.iter().map(str::to_string).collect())
    } else {
        None
    };
    if args.create {
        let schema = infer_schema(&mut reader, header.as_deref(), args.primary_key.as_deref())?;
        client
            .create_table(&args.table, &schema, args.replicas, args.split_bytes)
            .await
            .with_context(|| format!("creating table {}", args.table))?;
        eprintln!("created table {} ({})", args.table, schema.to_sql());
        reader = open()?;
        if args.header {
            reader.headers()?;
        }
    }
    let table = client.table(&args.table).await?;
    let mapping = column_mapping(table.schema(), header.as_deref())?;
    let size = std::fs::metadata(&args.file).map(|m| m.len()).unwrap_or(0);
    let progress = ProgressBar::new(size);
    progress.set_style(
        ProgressStyle::with_template(
            "load {bar:30} {bytes}/{total_bytes} {msg} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let concurrency = usize::try_from(args.concurrency)
        .unwrap_or(usize::MAX)
        .min(1024);
    let (tx, mut rx) = mpsc::channel::<Parsed>(concurrency * 2);
    let schema = table.schema().clone();
    let file = args.file.clone();
    let bad_rows = args.bad_rows.clone();
    let batch_rows = usize::try_from(args.batch_rows)
        .unwrap_or(usize::MAX)
        .min(1 << 20);
    let reader_task = tokio::task::spawn_blocking(move || {
        read_rows(
            reader,
            &schema,
            &mapping,
            &file,
            bad_rows.as_deref(),
            batch_rows,
            &tx,
        )
    });

    let started = Instant::now();
    let mut loaded = 0u64;
    let mut bad = 0u64;
    let mut in_flight = FuturesUnordered::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut reading = true;
    while reading || !in_flight.is_empty() {
        tokio::select! {
            msg = rx.recv(), if reading && in_flight.len() < concurrency => match msg {
                Some(Parsed::Batch(rows, pos)) => {
                    progress.set_position(pos);
                    let table: Table = table.clone();
                    in_flight.push(async move { table.put(rows).await });
                }
                Some(Parsed::Failed(e)) => {
                    failure = Some(e);
                    reading = false;
                }
                Some(Parsed::Done(n)) => {
                    bad = n;
                    reading = false;
                }
                None => reading = false,
            },
            Some(done) = in_flight.next(), if !in_flight.is_empty() => match done {
                Ok(n) => {
                    loaded += n;
                    progress.set_message(format!("{loaded} rows"));
                }
                Err(e) => {
                    failure.get_or_insert(anyhow!(e).context("writing rows"));
                    reading = false;
                }
            },
        }
    }
    drop(rx);
    reader_task
        .await
        .map_err(|e| anyhow!("reader thread failed: {e}"))?;
    progress.finish_and_clear();
    if let Some(e) = failure {
        return Err(e.context(format!("load stopped after {loaded} rows")));
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let mut sentence = format!(
        "loaded {loaded} rows into {} in {secs:.1}s ({:.0} rows/s)",
        args.table,
        loaded as f64 / secs
    );
    if let Some(path) = &args.bad_rows {
        sentence.push_str(&format!("; {bad} bad row(s) written to {path}"));
    }
    print_summary(
        ctx.format,
        &sentence,
        &[
            ("table", J::from(args.table.clone())),
            ("rows", J::from(loaded)),
            ("bad_rows", J::from(bad)),
            ("seconds", J::from((secs * 1000.0).round() / 1000.0)),
            ("rows_per_sec", J::from((loaded as f64 / secs).round())),
        ],
        &mut std::io::stdout(),
    )
}

/// For each table column, the CSV field it comes from (None: NULL).
fn column_mapping(schema: &TableSchema, header: Option<&[String]>) -> Result<Vec<Option<usize>>> {
    match header {
        Some(h) => {
            let mut map = vec![None; schema.columns.len()];
            for (field, name) in h.iter().enumerate() {
                let col = schema
                    .column_index(&sanitize(name))
                    .or_else(|_| schema.column_index(name))
                    .map_err(|e| anyhow!("header field '{name}': {e}"))?;
                map[col] = Some(field);
            }
            for (i, c) in schema.columns.iter().enumerate() {
                if map[i].is_none() && !c.nullable {
                    bail!("the file has no column '{}', which may not be NULL", c.name);
                }
            }
            Ok(map)
        }
        None => Ok((0..schema.columns.len()).map(Some).collect()),
    }
}

/// Reads the file, checks every row, and sends batches; runs on a blocking thread.
fn read_rows(
    mut reader: csv::Reader<BufReader<File>>,
    schema: &TableSchema,
    mapping: &[Option<usize>],
    file: &str,
    bad_rows: Option<&str>,
    batch_rows: usize,
    tx: &mpsc::Sender<Parsed>,
) {
    let mut bad_out = match bad_rows.map(csv::Writer::from_path).transpose() {
        Ok(w) => w,
        Err(e) => {
            let _ = tx.blocking_send(Parsed::Failed(anyhow!(
                "cannot write the bad-rows file: {e}"
            )));
            return;
        }
    };
    if let Some(w) = bad_out.as_mut() {
        if let Err(e) = w.write_record(["line", "reason", "row"]) {
            let _ = tx.blocking_send(Parsed::Failed(e.into()));
            return;
        }
    }
    let fields_wanted = mapping.iter().flatten().max().map(|m| m + 1).unwrap_or(0);
    let mut batch = Vec::with_capacity(batch_rows);
    let mut bad = 0u64;
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {}
            Err(e) => {
                let _ = tx.blocking_send(Parsed::Failed(anyhow!("{file}: {e}")));
                return;
            }
        }
        let line = record.position().map(|p| p.line()).unwrap_or(0);
        match parse_row(&record, schema, mapping, fields_wanted) {
            Ok(row) => batch.push(row),
            Err(reason) => match bad_out.as_mut() {
                Some(w) => {
                    bad += 1;
                    let raw = record.iter().collect::<Vec<_>>().join(",");
                    if let Err(e) = w.write_record([line.to_string(), reason, raw]) {
                        let _ = tx.blocking_send(Parsed::Failed(e.into()));
                        return;
                    }
                }
                None => {
                    let _ = tx.blocking_send(Parsed::Failed(anyhow!(
                        "{file} line {line}: {reason} (--bad-rows FILE sets such rows aside)"
                    )));
                    return;
                }
            },
        }
        if batch.len() >= batch_rows {
            let pos = reader.position().byte();
            if tx
                .blocking_send(Parsed::Batch(std::mem::take(&mut batch), pos))
                .is_err()
            {
                return;
            }
        }
    }
    if let Some(w) = bad_out.as_mut() {
        if let Err(e) = w.flush() {
            let _ = tx.blocking_send(Parsed::Failed(e.into()));
            return;
        }
    }
    let pos = reader.position().byte();
    if !batch.is_empty() && tx.blocking_send(Parsed::Batch(batch, pos)).is_err() {
        return;
    }
    let _ = tx.blocking_send(Parsed::Done(bad));
}

/// Checks one record; the error names the column and what is wrong.
fn parse_row(
    record: &csv::StringRecord,
    schema: &TableSchema,
    mapping: &[Option<usize>],
    fields_wanted: usize,
) -> std::result::Result<Vec<Value>, String> {
    if record.len() < fields_wanted {
        return Err(format!(
            "{} field(s), {fields_wanted} expected",
            record.len()
        ));
    }
    mapping
        .iter()
        .zip(&schema.columns)
        .map(|(field, col)| match field {
            Some(f) => {
                Value::parse_text(record.get(*f).unwrap_or(""), col).map_err(|e| e.to_string())
            }
            None => Ok(Value::Null),
        })
        .collect()
}

/// A column name from a header field: letters, digits and `_`.
fn sanitize(name: &str) -> String {
    let s: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if s.is_empty() {
        "column".into()
    } else {
        s
    }
}

/// Infers a schema from the first rows: per column the narrowest of BIGINT, DOUBLE, BOOLEAN,
/// DATE, TIMESTAMP and VARCHAR that every non-empty value fits.
fn infer_schema(
    reader: &mut csv::Reader<BufReader<File>>,
    header: Option<&[String]>,
    primary_key: Option<&str>,
) -> Result<TableSchema> {
    let mut sample = Vec::new();
    for rec in reader.records().take(INFER_ROWS) {
        sample.push(rec?);
    }
    let width = header
        .map(|h| h.len())
        .or_else(|| sample.iter().map(|r| r.len()).max())
        .unwrap_or(0);
    if width == 0 {
        bail!("the file has no columns to infer a schema from");
    }
    let names: Vec<String> = match header {
        Some(h) => h.iter().map(|n| sanitize(n)).collect(),
        None => (1..=width).map(|i| format!("c{i}")).collect(),
    };
    let candidates = [
        ColumnType::Int64,
        ColumnType::Float64,
        ColumnType::Boolean,
        ColumnType::Date32,
        ColumnType::Timestamp,
    ];
    let mut columns = Vec::with_capacity(width);
    for (i, name) in names.iter().enumerate() {
        let values: Vec<&str> = sample
            .iter()
            .map(|r| r.get(i).unwrap_or(""))
            .filter(|v| !v.is_empty())
            .collect();
        let fits = |ty: ColumnType| {
            let col = Column {
                name: name.clone(),
                ty,
                nullable: true,
            };
            !values.is_empty() && values.iter().all(|v| Value::parse_text(v, &col).is_ok())
        };
        let ty = candidates
            .iter()
            .copied()
            .find(|t| fits(*t))
            .unwrap_or(ColumnType::Utf8);
        columns.push(Column {
            name: name.clone(),
            ty,
            nullable: true,
        });
    }
    let pk = match primary_key {
        Some(list) => super::split_names(list),
        None => vec![names[0].clone()],
    };
    TableSchema::new(columns, &pk).map_err(|e| anyhow!("inferred schema: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_values::{
        cell_text, same, schema, schema_and_row, text_is_faithful, value_of,
    };
    use proptest::prelude::*;

    /// One CSV line as `load csv` reads it (no header, ragged rows allowed).
    fn read_record(line: &[u8]) -> csv::StringRecord {
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(false)
            .flexible(true)
            .from_reader(line);
        let mut record = csv::StringRecord::new();
        assert!(reader.read_record(&mut record).unwrap(), "one record");
        record
    }

    /// A row as CSV, each value as `render` prints it.
    fn write_row(schema: &TableSchema, row: &[Value]) -> Vec<u8> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(row.iter().zip(&schema.columns).map(|(v, c)| v.render(c.ty)))
            .unwrap();
        w.into_inner().unwrap()
    }

    #[test]
    fn short_rows_and_bad_cells_are_refused_with_the_column() {
        let s = TableSchema::parse("id BIGINT, n SMALLINT, at DATE", &["id".into()]).unwrap();
        let map = column_mapping(&s, None).unwrap();
        let row = parse_row(&read_record(b"1,2,2024-01-02"), &s, &map, 3).unwrap();
        assert_eq!(row, vec![Value::Int(1), Value::Int(2), Value::Date(19724)]);
        let e = parse_row(&read_record(b"1,2"), &s, &map, 3).unwrap_err();
        assert!(e.contains("2 field(s), 3 expected"), "{e}");
        let e = parse_row(&read_record(b"1,70000,"), &s, &map, 3).unwrap_err();
        assert!(
            e.contains("column 'n'") && e.contains("out of range"),
            "{e}"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_cells_give_a_row_or_name_the_column(
            s in schema(),
            cells in prop::collection::vec(cell_text(), 0..7),
        ) {
            let map = column_mapping(&s, None).unwrap();
            let record = csv::StringRecord::from(cells.clone());
            match parse_row(&record, &s, &map, s.columns.len()) {
                Ok(row) => {
                    prop_assert_eq!(row.len(), s.columns.len());
                    for (v, c) in row.iter().zip(&s.columns) {
                        prop_assert!(v.fits(c), "{:?} does not fit {:?}", v, c);
                    }
                }
                Err(e) if cells.len() < s.columns.len() => {
                    prop_assert!(e.contains("expected"), "{}", e);
                }
                Err(e) => {
                    let named = s.columns.iter().any(|c| e.starts_with(&format!("column '{}': ", c.name)));
                    prop_assert!(named, "{}", e);
                }
            }
        }

        #[test]
        fn rendered_rows_load_back((s, row) in schema_and_row()) {
            prop_assume!(row.iter().zip(&s.columns).all(|(v, c)| text_is_faithful(v, c.ty)));
            let map = column_mapping(&s, None).unwrap();
            let line = write_row(&s, &row);
            let back = parse_row(&read_record(&line), &s, &map, s.columns.len()).unwrap();
            prop_assert!(same(&back, &row), "{:?} as {:?} loaded as {:?}", row, String::from_utf8_lossy(&line), back);
        }

        #[test]
        fn a_header_maps_columns_in_any_order(
            (s, row) in schema_and_row(),
            seed in any::<u64>(),
        ) {
            prop_assume!(row.iter().zip(&s.columns).all(|(v, c)| text_is_faithful(v, c.ty)));
            // The file lists the columns in some other order, named in upper case.
            let mut order: Vec<usize> = (0..s.columns.len()).collect();
            let n = order.len();
            for i in 0..n {
                order.swap(i, (seed as usize).wrapping_add(i * 7) % n);
            }
            let header: Vec<String> = order.iter().map(|i| s.columns[*i].name.to_uppercase()).collect();
            let map = column_mapping(&s, Some(&header)).unwrap();
            let fields: Vec<String> = order.iter().map(|i| row[*i].render(s.columns[*i].ty)).collect();
            let wanted = map.iter().flatten().max().map(|m| m + 1).unwrap_or(0);
            let back = parse_row(&csv::StringRecord::from(fields), &s, &map, wanted).unwrap();
            prop_assert!(same(&back, &row));
        }

        #[test]
        fn each_cell_type_parses_its_rendered_values(
            (ty, v) in crate::cli::test_values::column_type().prop_flat_map(|t| (Just(t), value_of(t))),
        ) {
            prop_assume!(text_is_faithful(&v, ty));
            let c = Column { name: "x".into(), ty, nullable: false };
            let back = Value::parse_text(&v.render(ty), &c).unwrap();
            prop_assert!(same(&[back], &[v]));
        }
    }
}
