//! `weir consume`: a topic's records to stdout, one value per line.

use std::io::{ErrorKind, Write};
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::json;
use tokio::time::Instant;
use weir_client::{ConsumedRecord, Consumer, ConsumerConfig};

use super::output::Format;
use super::{ConsumeArgs, Context};

/// Longest single wait for records, so that a run without idle timeout still notices Ctrl-C and
/// commits regularly.
const POLL_SLICE: Duration = Duration::from_secs(1);

/// Prints records until `--max` is reached, no record arrived for the idle timeout, stdout is
/// closed, or Ctrl-C; with a group, commits what was printed as it goes and at the end.
pub async fn run(ctx: &Context, args: ConsumeArgs) -> Result<()> {
    let client = ctx.client().await?;
    let config = ConsumerConfig {
        group: args.group.clone(),
        partitions: args.partition.map(|p| vec![p]),
        from: args.from,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(client, &args.topic, config).await?;
    let in_group = args.group.is_some();
    let idle = args.idle_timeout();
    let mut out = std::io::BufWriter::new(std::io::stdout());
    if ctx.format == Format::Csv {
        writeln!(out, "partition,offset,timestamp_ms,key,value")?;
    }

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut printed = 0u64;
    let mut last_record = Instant::now();
    let outcome: Result<()> = loop {
        let remaining = match args.max {
            Some(max) if printed >= max => break Ok(()),
            Some(max) => usize::try_from(max - printed).unwrap_or(usize::MAX),
            None => usize::MAX,
        };
        let wait = match idle {
            Some(idle) => match idle.checked_sub(last_record.elapsed()) {
                Some(left) if !left.is_zero() => left.min(POLL_SLICE),
                _ => break Ok(()),
            },
            None => POLL_SLICE,
        };
        let polled = tokio::select! {
            polled = consumer.poll_at_most(wait, remaining) => polled,
            _ = &mut ctrl_c => break Ok(()),
        };
        let records = match polled {
            Ok(records) => records,
            Err(err) => break Err(err.into()),
        };
        if records.is_empty() {
            continue;
        }
        last_record = Instant::now();
        match write_records(&mut out, ctx.format, &records) {
            Ok(()) => {}
            // The reader went away (`weir consume t | head`): stop quietly.
            Err(err) if err.kind() == ErrorKind::BrokenPipe => break Ok(()),
            Err(err) => break Err(err).context("writing to stdout"),
        }
        printed += records.len() as u64;
        if in_group {
            if let Err(err) = consumer.commit().await {
                break Err(err.into());
            }
        }
    };

    let _ = out.flush();
    if in_group {
        // Keep progress even when the loop ended with an error: what was printed was consumed.
        let committed = consumer.commit().await;
        let left = consumer.close().await;
        outcome?;
        committed.context("committing offsets")?;
        left.context("leaving the consumer group")?;
        Ok(())
    } else {
        outcome
    }
}

/// Writes records in the chosen format and flushes, so that what is committed was really written.
fn write_records(
    out: &mut impl Write,
    format: Format,
    records: &[ConsumedRecord],
) -> std::io::Result<()> {
    for r in records {
        match format {
            Format::Table => {
                out.write_all(&r.value)?;
                out.write_all(b"\n")?;
            }
            Format::Json => {
                let obj = json!({
                    "partition": r.partition,
                    "offset": r.offset,
                    "timestamp_ms": r.timestamp_ms,
                    "key": r.key.as_ref().map(|k| String::from_utf8_lossy(k).into_owned()),
                    "value": String::from_utf8_lossy(&r.value),
                });
                writeln!(out, "{obj}")?;
            }
            Format::Csv => {
                let mut w = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(&mut *out);
                let key = r.key.as_deref().unwrap_or_default();
                w.write_record([
                    r.partition.to_string().as_bytes(),
                    r.offset.to_string().as_bytes(),
                    r.timestamp_ms.to_string().as_bytes(),
                    key,
                    &r.value,
                ])
                .map_err(std::io::Error::other)?;
                w.flush()?;
            }
        }
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(offset: u64, key: Option<&'static str>, value: &'static str) -> ConsumedRecord {
        ConsumedRecord {
            partition: 1,
            offset,
            key: key.map(|k| Bytes::from_static(k.as_bytes())),
            value: Bytes::from_static(value.as_bytes()),
            timestamp_ms: 1_700_000_000_000,
            headers: Vec::new(),
        }
    }

    #[test]
    fn formats_write_one_line_per_record() {
        let records = [record(5, None, "a"), record(6, Some("k"), "b,c")];
        let mut raw = Vec::new();
        write_records(&mut raw, Format::Table, &records).unwrap();
        assert_eq!(raw, b"a\nb,c\n");

        let mut csv = Vec::new();
        write_records(&mut csv, Format::Csv, &records).unwrap();
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "1,5,1700000000000,,a\n1,6,1700000000000,k,\"b,c\"\n"
        );

        let mut json = Vec::new();
        write_records(&mut json, Format::Json, &records).unwrap();
        let lines: Vec<serde_json::Value> = String::from_utf8(json)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["offset"], 5);
        assert_eq!(lines[0]["key"], serde_json::Value::Null);
        assert_eq!(lines[1]["key"], "k");
        assert_eq!(lines[1]["value"], "b,c");
    }
}
