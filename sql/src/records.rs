//! A topic's records as Arrow record batches: each record's declared columns and its metadata
//! columns appended straight to the columns' arrays. A JSON record whose fields convert without
//! question is read field by field into the arrays (no JSON tree, no row of values); any other
//! record is decoded into a row of values first, which also says why a record does not decode.
//! Both give the same cells, so a query over a topic and a stream job over it that read the same
//! columns see the same rows.

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::error::{DataFusionError, Result};
use weir_proto::format::{RecordFormat, TopicFormat};
use weir_proto::json_fields::{pick_typed, Fields};
use weir_proto::table::{Cell, Column, Value};

use crate::cluster::{TopicMeta, TopicRecord};
use crate::columnar::BatchBuilder;

/// How many metadata columns follow a topic's declared ones: `_partition`, `_offset`,
/// `_timestamp`, `_key` (see [`crate::topic::metadata_columns`]).
const METADATA_COLUMNS: usize = 4;

/// A record of `partition` as a row of [`crate::topic::topic_columns`]; the error says why it
/// does not decode. The whole decode the tests check the decoder against.
#[cfg(test)]
fn decode_record(
    meta: &TopicMeta,
    partition: u32,
    r: &TopicRecord,
) -> std::result::Result<Vec<Value>, String> {
    let mut row = decode_declared(meta.format.as_ref(), &r.value)?;
    row.extend(metadata_values(partition, r)?);
    Ok(row)
}

/// The values of the columns of `format` a record holds (the record's bytes when the topic has no
/// format), or why they do not decode.
fn decode_declared(
    format: Option<&TopicFormat>,
    value: &[u8],
) -> std::result::Result<Vec<Value>, String> {
    match format {
        Some(f) => f.decode(value).map_err(|e| e.to_string()),
        None => Ok(vec![Value::Bytes(value.to_vec())]),
    }
}

/// The metadata columns of a record of `partition`, or why its key does not decode.
fn metadata_values(
    partition: u32,
    r: &TopicRecord,
) -> std::result::Result<[Value; METADATA_COLUMNS], String> {
    let key = match &r.key {
        None => Value::Null,
        Some(k) => Value::Str(
            std::str::from_utf8(k)
                .map_err(|_| "its key is not UTF-8 text".to_string())?
                .to_string(),
        ),
    };
    Ok([
        Value::Int(partition.into()),
        Value::Int(r.offset as i64),
        Value::Timestamp(r.timestamp_ms.saturating_mul(1000)),
        key,
    ])
}

/// Where an output column of a [`RecordDecoder`] comes from.
#[derive(Debug, Clone, Copy)]
enum Slot {
    /// The n-th of the decoded columns.
    Field(usize),
    /// The n-th metadata column.
    Meta(usize),
}

/// Builds record batches of one partition's records, holding the columns of
/// [`crate::topic::topic_columns`] at `projection`, in that order.
///
/// A JSON record is decoded for the declared columns the projection holds only: a field no
/// column of the projection names is skipped (it must still be well-formed JSON), so a value that
/// would not fit its column makes the record undecodable only for the queries and jobs that read
/// that column — as Spark's and Flink's JSON readers do with the columns a query needs. CSV and
/// text records are decoded whole (a CSV record's fields are known by position only).
pub struct RecordDecoder {
    /// The format records are decoded with: the topic's, narrowed to the projection's declared
    /// columns for JSON.
    format: Option<TopicFormat>,
    partition: u32,
    slots: Vec<Slot>,
    builder: BatchBuilder,
    schema: SchemaRef,
}

impl RecordDecoder {
    /// A decoder of `topic`'s records from `partition` into batches with schema `schema`, whose
    /// columns are `columns` (the topic's columns at `projection`).
    pub fn new(
        topic: &TopicMeta,
        partition: u32,
        projection: Vec<usize>,
        columns: &[Column],
        schema: SchemaRef,
        capacity: usize,
    ) -> Result<RecordDecoder> {
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
        let json = topic
            .format
            .as_ref()
            .is_some_and(|f| f.kind == RecordFormat::Json);
        // The declared columns decoded, in the topic's order: those projected for JSON, all else.
        let decoded: Vec<usize> = if json {
            let mut read: Vec<usize> = projection
                .iter()
                .copied()
                .filter(|i| *i < declared)
                .collect();
            read.sort_unstable();
            read.dedup();
            read
        } else {
            (0..declared).collect()
        };
        let format = topic.format.as_ref().map(|f| TopicFormat {
            kind: f.kind,
            columns: if json {
                decoded.iter().map(|i| f.columns[*i].clone()).collect()
            } else {
                f.columns.clone()
            },
        });
        let slots = projection
            .iter()
            .map(|i| match decoded.binary_search(i) {
                Ok(at) => Slot::Field(at),
                // Past the declared columns (`decoded` holds declared ones only).
                Err(_) => Slot::Meta(*i - declared),
            })
            .collect();
        Ok(RecordDecoder {
            format,
            partition,
            slots,
            builder: BatchBuilder::new(columns, capacity)?,
            schema,
        })
    }

    /// Appends the row of `r`; `Ok(Err(reason))` when the record does not decode (nothing is
    /// appended then).
    pub fn push(&mut self, r: &TopicRecord) -> Result<std::result::Result<(), String>> {
        if let Some(format) = self
            .format
            .as_ref()
            .filter(|f| f.kind == RecordFormat::Json)
        {
            let key = match &r.key {
                None => Some(Cell::Null),
                Some(k) => std::str::from_utf8(k).ok().map(Cell::Str),
            };
            // Filled in place: the row is a few hundred bytes, not worth moving per record.
            let mut fields = Fields::new();
            if let (true, Some(key)) = (pick_typed(&r.value, &format.columns, &mut fields), key) {
                let meta: [Cell; METADATA_COLUMNS] = [
                    Cell::Int(self.partition.into()),
                    Cell::Int(r.offset as i64),
                    Cell::Timestamp(r.timestamp_ms.saturating_mul(1000)),
                    key,
                ];
                for (out, slot) in self.slots.iter().enumerate() {
                    let cell = match *slot {
                        Slot::Field(at) => fields[at].as_cell(),
                        Slot::Meta(m) => meta[m],
                    };
                    self.builder.append(out, cell)?;
                }
                self.builder.end_row();
                return Ok(Ok(()));
            }
        }
        let decoded = decode_declared(self.format.as_ref(), &r.value)
            .and_then(|values| Ok((values, metadata_values(self.partition, r)?)));
        let (values, meta) = match decoded {
            Ok(decoded) => decoded,
            Err(reason) => return Ok(Err(reason)),
        };
        for (out, slot) in self.slots.iter().enumerate() {
            let cell = match *slot {
                Slot::Field(at) => values[at].as_cell(),
                Slot::Meta(m) => meta[m].as_cell(),
            };
            self.builder.append(out, cell)?;
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
    /// reasons of those that do not. A JSON record is read for the projected columns only: as
    /// the topic's rows, it is decoded as a topic of those columns would decode it.
    fn by_rows(
        topic: &TopicMeta,
        projection: &[usize],
        records: &[TopicRecord],
    ) -> (RecordBatch, Vec<String>) {
        let all = topic_columns(topic);
        let columns: Vec<Column> = projection.iter().map(|i| all[*i].clone()).collect();
        let format = topic.format.as_ref().unwrap();
        let declared = format.columns.len();
        // The topic of the projected declared columns, and where each column of `all` is in it.
        let (narrow, at): (TopicMeta, Vec<usize>) = match format.kind {
            RecordFormat::Json => {
                let kept: Vec<usize> = (0..declared).filter(|i| projection.contains(i)).collect();
                let narrow = TopicMeta {
                    format: Some(
                        TopicFormat::new(
                            RecordFormat::Json,
                            kept.iter().map(|i| all[*i].clone()).collect(),
                        )
                        .unwrap(),
                    ),
                    ..topic.clone()
                };
                let at = (0..all.len())
                    .map(|i| match kept.iter().position(|k| *k == i) {
                        Some(p) => p,
                        None if i >= declared => kept.len() + i - declared,
                        None => usize::MAX,
                    })
                    .collect();
                (narrow, at)
            }
            _ => (topic.clone(), (0..all.len()).collect()),
        };
        let mut rows = Vec::new();
        let mut reasons = Vec::new();
        for r in records {
            match decode_record(&narrow, 3, r) {
                Ok(row) => rows.push(projection.iter().map(|i| row[at[*i]].clone()).collect()),
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
                    // Read whole, the NULL id and the date "never" do not fit; read for the name
                    // and metadata only, those fields are not looked at.
                    let fit = if projection.len() == 8 { 4 } else { 6 };
                    assert_eq!(want.num_rows(), fit, "{want_reasons:?}");
                }
            }
        }
    }
}
