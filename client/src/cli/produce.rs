//! `weir produce`: stdin to records, one per line, batched through the [`Producer`].

use std::io::BufRead;

use anyhow::{anyhow, Context as _, Result};
use serde_json::Value;
use tokio::sync::mpsc;
use weir_client::{Producer, ProducerConfig};

use super::output::print_summary;
use super::{Context, ProduceArgs};

/// Bytes of stdin handed from the reader thread to the producer at a time.
const CHUNK_BYTES: usize = 256 * 1024;

/// Sends every line of stdin as a record and reports how many were acknowledged.
pub async fn run(ctx: &Context, args: ProduceArgs) -> Result<()> {
    let client = ctx.client().await?;
    let config = ProducerConfig {
        acks: args.acks.into(),
        max_in_flight: args.max_in_flight as usize,
        ..ProducerConfig::default()
    };
    let producer = Producer::new(client, &args.topic, config).await?;
    if let Some(p) = args.partition {
        if p >= producer.partitions() {
            return Err(anyhow!(
                "topic {} has {} partitions; there is no partition {p}",
                args.topic,
                producer.partitions()
            ));
        }
    }
    let key = args.key.as_deref().map(str::as_bytes);

    // Long loads show progress on a terminal; when stderr is redirected the bar draws nothing.
    let progress = indicatif::ProgressBar::new_spinner();
    progress.set_message(format!("sending to {}", args.topic));
    let mut chunks = read_stdin_in_chunks();
    let mut sent = 0u64;
    let mut read_error = None;
    while let Some(chunk) = chunks.recv().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(err) => {
                read_error = Some(err);
                break;
            }
        };
        for line in chunk.split_inclusive(|b| *b == b'\n') {
            let value = strip_newline(line);
            let ack = match args.partition {
                Some(p) => producer.send_to(p, key, value, None).await?,
                None => producer.send(key, value, None).await?,
            };
            // Acknowledgements are counted by the producer; the per-record handle is not needed.
            drop(ack);
            sent += 1;
        }
        progress.set_message(format!("{sent} records sent to {}", args.topic));
        progress.tick();
    }

    let flushed = producer.flush().await;
    progress.finish_and_clear();
    let stats = producer.stats();
    print_summary(
        ctx.format,
        &format!("{} records acknowledged", stats.records_acked),
        &[
            ("acknowledged", Value::from(stats.records_acked)),
            ("failed", Value::from(stats.records_failed)),
        ],
        &mut std::io::stdout(),
    )?;
    if let Err(err) = flushed {
        return Err(anyhow!(
            "{} of {sent} records were not acknowledged: {err}",
            sent.saturating_sub(stats.records_acked)
        ));
    }
    if let Some(err) = read_error {
        return Err(err).context("reading stdin");
    }
    Ok(())
}

/// Reads stdin on a plain thread (blocking reads do not belong on the runtime) and hands over
/// chunks of whole lines.
fn read_stdin_in_chunks() -> mpsc::Receiver<std::io::Result<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut reader = stdin.lock();
        loop {
            let mut chunk = Vec::with_capacity(CHUNK_BYTES + 4096);
            let mut eof = false;
            while chunk.len() < CHUNK_BYTES {
                match reader.read_until(b'\n', &mut chunk) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(_) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(err) => {
                        let _ = tx.blocking_send(Ok(chunk));
                        let _ = tx.blocking_send(Err(err));
                        return;
                    }
                }
            }
            if !chunk.is_empty() && tx.blocking_send(Ok(chunk)).is_err() {
                return;
            }
            if eof {
                return;
            }
        }
    });
    rx
}

/// A line without its terminator (`\n` or `\r\n`).
fn strip_newline(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_terminators_are_removed_but_content_kept() {
        assert_eq!(strip_newline(b"hello\n"), b"hello");
        assert_eq!(strip_newline(b"hello\r\n"), b"hello");
        assert_eq!(strip_newline(b"last line"), b"last line");
        assert_eq!(strip_newline(b"\n"), b"");
        assert_eq!(strip_newline(b" spaced \t\n"), b" spaced \t");
    }
}
