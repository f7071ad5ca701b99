//! A topic's records as Arrow record batches: each record's declared columns and its metadata
//! columns appended straight to the columns' arrays. A JSON record whose fields convert without
//! question is read field by field into the arrays (no JSON tree, no row of values); any other
//! record is decoded into a row of values first ([`decode_record`]), which also says why a record
//! does not decode. Both give the same cells, so a query over a topic and a stream job over it see
//! the same rows.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use weir_proto::format::RecordFormat;
use weir_proto::json_fields::pick_typed;
use weir_proto::table::{Cell, Column, Value};

use crate::cluster::{TopicMeta, TopicRecord};
use crate::columnar::BatchBuilder;

/// How many metadata columns follow a topic's declared ones: `_partition`, `_offset`,
/// `_timestamp`, `_key` (see [`crate::topic::metadata_columns`]).
const METADATA_COLUMNS: usize = 4;

/// A record of `partition` as a row of [`crate::topic::topic_columns`]; the error says why it
/// does not decode.
pub fn decode_record(
    meta: &TopicMeta,
    partition: u32,
    r: &TopicRecord,
) -> std::result::Result<Vec<Value>, String> {
    let mut row = match &meta.format {
        Some(f) => f.decode(&r.value).map_err(|e| e.to_string())?,
        None => vec![Value::Bytes(r.value.to_vec())],
    };
    let key = match &r.key {
        None => Value::Null,
        Some(k) => Value::Str(
            std::str::from_utf8(k)
                .map_err(|_| "its key is not UTF-8 text".to_string())?
                .to_string(),
        ),
    };
    row.push(Value::Int(partition.into()));
    row.push(Value::Int(r.offset as i64));
    row.push(Value::Timestamp(r.timestamp_ms.saturating_mul(1000)));
    row.push(key);
    Ok(row)
}

/// Builds record batches of one partition's records, holding the columns of
/// [`crate::topic::topic_columns`] at `projection`, in that order.
pub struct RecordDecoder<'t> {
    topic: &'t TopicMeta,
    partition: u32,
    /// The declared columns when the topic's records are JSON objects (the fast path's).
    json_columns: Option<&'t [Column]>,
    /// How many columns come before the metadata columns.
    declared: usize,
    projection: Vec<usize>,
    builder: BatchBuilder,
    schema: SchemaRef,
}

impl<'t> RecordDecoder<'t> {
    /// A decoder of `topic`'s records from `partition` into batches with schema `schema`, whose
    /// columns are `columns` (the topic's columns at `projection`).
    pub fn new(
        topic: &'t TopicMeta,
        partition: u32,
        projection: Vec<usize>,
        columns: &[Column],
        schema: SchemaRef,
        capacity: usize,
    ) -> Result<RecordDecoder<'t>> {
        let json_columns = topic
            .format
            .as_ref()
            .filter(|f| f.kind == RecordFormat::Json)
            .map(|f| f.columns.as_slice());
        let declared = topic.format.as_ref().map_or(1, |f| f.columns.len());
        if projection.len() != columns.len()
            || projection.iter().any(|i| *i >= declared + METADATA_COLUMNS)
        {
            return Err(DataFusionError::Internal(format!(
                "a projection {projection:?} of topic '{}' for {} columns",
                topic.name,
                columns.len()
            )));
        }
        Ok(RecordDecoder {
            topic,
            partition,
            json_columns,
            declared,
            projection,
            builder: BatchBuilder::new(columns, capacity)?,
            schema,
        })
    }

    /// Appends the row of `r`; `Ok(Err(reason))` when the record does not decode (nothing is
    /// appended then).
    pub fn push(&mut self, r: &TopicRecord) -> Result<std::result::Result<(), String>> {
        if let Some(columns) = self.json_columns {
            let key = match &r.key {
                None => Some(Cell::Null),
                Some(k) => std::str::from_utf8(k).ok().map(Cell::Str),
            };
            if let (Some(fields), Some(key)) = (pick_typed(&r.value, columns), key) {
                let meta: [Cell; METADATA_COLUMNS] = [
                    Cell::Int(self.partition.into()),
                    Cell::Int(r.offset as i64),
                    Cell::Timestamp(r.timestamp_ms.saturating_mul(1000)),
                    key,
                ];
                for (out, i) in self.projection.iter().enumerate() {
                    let cell = match fields.get(*i) {
                        Some(f) => f.as_cell(),
                        None => meta[*i - self.declared],
                    };
                    self.builder.append(out, cell)?;
                }
                self.builder.end_row();
                return Ok(Ok(()));
            }
        }
        let row = match decode_record(self.topic, self.partition, r) {
            Ok(row) => row,
            Err(reason) => return Ok(Err(reason)),
        };
        for (out, i) in self.projection.iter().enumerate() {
            self.builder.append(out, row[*i].as_cell())?;
        }
        self.builder.end_row();
        Ok(Ok(()))
    }

    /// Rows appended since the last batch.
    pub fn rows(&self) -> usize {
        self.builder.rows()
    }

    /// The batch of the rows appended so far; the decoder starts a new one.
    pub fn finish(&mut self) -> Result<RecordBatch> {
        self.builder.finish(&self.schema)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use weir_proto::format::TopicFormat;
    use weir_proto::table::{ColumnType, TableSchema};

    use super::*;
    use crate::columnar::rows_to_batch;
    use crate::topic::topic_columns;
    use crate::types::arrow_schema;

    fn record(offset: u64, key: Option<&[u8]>, value: &str) -> TopicRecord {
        TopicRecord {
            offset,
            timestamp_ms: 1_700_000_000_000 + offset as i64,
            key: key.map(Bytes::copy_from_slice),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// What rows of values give for the same records: the batch of those that decode, and the
    /// reasons of those that do not.
    fn by_rows(
        topic: &TopicMeta,
        projection: &[usize],
        records: &[TopicRecord],
    ) -> (RecordBatch, Vec<String>) {
        let all = topic_columns(topic);
        let columns: Vec<Column> = projection.iter().map(|i| all[*i].clone()).collect();
        let mut rows = Vec::new();
        let mut reasons = Vec::new();
        for r in records {
            match decode_record(topic, 3, r) {
                Ok(row) => rows.push(projection.iter().map(|i| row[*i].clone()).collect()),
                Err(reason) => reasons.push(reason),
            }
        }
        let schema = arrow_schema(&TableSchema {
            columns: columns.clone(),
            primary_key: vec![],
        });
        (rows_to_batch(&schema, &columns, &rows).unwrap(), reasons)
    }

    #[test]
    fn metadata_columns_are_counted_as_the_topic_declares_them() {
        assert_eq!(crate::topic::metadata_columns().len(), METADATA_COLUMNS);
    }

    #[test]
    fn batches_hold_what_rows_of_values_hold() {
        let col = |name: &str, ty, nullable| Column {
            name: name.into(),
            ty,
            nullable,
        };
        let columns = vec![
            col("id", ColumnType::Int64, false),
            col("name", ColumnType::Utf8, true),
            col("day", ColumnType::Date32, true),
            col("amount", ColumnType::Float64, true),
        ];
        let records = [
            record(
                0,
                None,
                r#"{"id": 1, "name": "a", "day": "1995-03-01", "amount": 2.5}"#,
            ),
            record(
                1,
                Some(b"k"),
                r#"{"id": 2, "name": "caf\u00e9", "amount": 3}"#,
            ),
            record(2, None, r#"{"ID": 3, "Name": "loose keys"}"#),
            record(3, None, r#"{"id": null}"#),
            record(4, None, r#"not json"#),
            record(5, Some(&[0xff]), r#"{"id": 6}"#),
            record(6, None, r#"{"id": 7, "day": "never"}"#),
            record(7, None, r#"{"id": 8, "id": 9}"#),
        ];
        for kind in [RecordFormat::Json, RecordFormat::Csv] {
            let topic = TopicMeta {
                name: "t".into(),
                partitions: 6,
                replicas: 1,
                format: Some(TopicFormat::new(kind, columns.clone()).unwrap()),
            };
            for projection in [vec![0, 1, 2, 3, 4, 5, 6, 7], vec![7, 1, 5, 1]] {
                let all = topic_columns(&topic);
                let cols: Vec<Column> = projection.iter().map(|i| all[*i].clone()).collect();
                let schema = arrow_schema(&TableSchema {
                    columns: cols.clone(),
                    primary_key: vec![],
                });
                let mut decoder =
                    RecordDecoder::new(&topic, 3, projection.clone(), &cols, schema, 4).unwrap();
                let mut reasons = Vec::new();
                for r in &records {
                    if let Err(reason) = decoder.push(r).unwrap() {
                        reasons.push(reason);
                    }
                }
                let (want, want_reasons) = by_rows(&topic, &projection, &records);
                assert_eq!(decoder.rows(), want.num_rows(), "{kind:?} {projection:?}");
                assert_eq!(decoder.finish().unwrap(), want, "{kind:?} {projection:?}");
                assert_eq!(reasons, want_reasons, "{kind:?} {projection:?}");
                if kind == RecordFormat::Json {
                    assert_eq!(want.num_rows(), 4, "{want_reasons:?}");
                }
            }
        }
    }
}
