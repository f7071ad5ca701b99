//! `weir bench produce | consume`: throughput and latency, in the manner of Kafka's
//! `kafka-producer-perf-test` and `kafka-consumer-perf-test`.
//!
//! Produce latency is per record, from the `send` call to the acknowledgement of its batch, so it
//! includes time spent waiting for buffer space and lingering. MB are 10^6 bytes of record values
//! (plus keys, when consuming).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rand::RngCore;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::Code;
use weir_client::{
    Client, Consumer, ConsumerConfig, Producer, ProducerConfig, RecordAck, StartFrom,
};

use super::output::{print_rows, Rows};
use super::{BenchConsumeArgs, BenchKvArgs, BenchProduceArgs, Context};

/// A consume benchmark gives up when no record arrived for this long.
const CONSUME_IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Largest latency the histogram tracks, in microseconds (one hour).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// What one producer task measured.
struct ProducerRun {
    latencies_us: Histogram<u64>,
    failed: u64,
    first_error: Option<String>,
}

/// Distinct record payloads a produce benchmark cycles through.
const PAYLOAD_POOL: usize = 1024;

/// Sends `--records` records of `--record-size` bytes and prints throughput and latency.
pub async fn produce(ctx: &Context, args: BenchProduceArgs) -> Result<()> {
    let client = ctx.client().await?;
    require_topic(&client, &args.topic).await?;
    // Distinct random records, as real data is: one record repeated would compress to nothing
    // and flatter every figure that touches the disk. A pool larger than a table block
    // (4 KiB) holds is enough; cycling through it costs nothing per record.
    let payload: Arc<[Bytes]> = (0..PAYLOAD_POOL)
        .map(|_| {
            let mut p = vec![0u8; args.record_size];
            rand::rng().fill_bytes(&mut p);
            Bytes::from(p)
        })
        .collect();
    let config = ProducerConfig {
        batch_bytes: usize::try_from(args.batch_bytes).unwrap_or(usize::MAX),
        linger: Duration::from_millis(args.linger_ms),
        max_in_flight: args.max_in_flight as usize,
        acks: args.acks.into(),
        ..ProducerConfig::default()
    };
    let producers = u64::from(args.producers);
    let progress = progress_bar(args.records, "produce");

    // Each producer gets its own client, hence its own connections, as separate processes would.
    let mut setups = Vec::new();
    for _ in 0..producers {
        let client = ctx.client().await?;
        setups.push(Producer::new(client, &args.topic, config.clone()).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = setups
        .into_iter()
        .enumerate()
        .map(|(i, producer)| {
            let n = share(args.records, producers, i as u64);
            let rate = share(args.throughput, producers, i as u64);
            tokio::spawn(run_producer(
                producer,
                n,
                rate,
                payload.clone(),
                progress.clone(),
            ))
        })
        .collect();
    let mut latencies = new_histogram()?;
    let mut failed = 0u64;
    let mut first_error = None;
    for task in tasks {
        let run = task
            .await
            .map_err(|e| anyhow!("producer task failed: {e}"))??;
        latencies.add(&run.latencies_us)?;
        failed += run.failed;
        first_error = first_error.or(run.first_error);
    }
    let elapsed = started.elapsed();
    progress.finish_and_clear();

    let secs = elapsed.as_secs_f64().max(1e-9);
    let ok = args.records - failed;
    let ms = |q: f64| round3(latencies.value_at_quantile(q) as f64 / 1000.0);
    let mut rows = Rows::new(vec![
        "records",
        "record_size",
        "producers",
        "seconds",
        "records_per_sec",
        "mb_per_sec",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ]);
    rows.push(vec![
        Value::from(ok),
        Value::from(args.record_size),
        Value::from(producers),
        Value::from(round3(secs)),
        Value::from(round3(ok as f64 / secs)),
        Value::from(round3(ok as f64 * args.record_size as f64 / 1e6 / secs)),
        Value::from(ms(0.5)),
        Value::from(ms(0.99)),
        Value::from(ms(0.999)),
        Value::from(round3(latencies.max() as f64 / 1000.0)),
    ]);
    print_rows(ctx.format, &rows, &mut std::io::stdout())?;
    if failed > 0 {
        bail!(
            "{failed} of {} records failed: {}",
            args.records,
            first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// Sends `n` records and measures each one's send-to-acknowledgement latency.
async fn run_producer(
    producer: Producer,
    n: u64,
    rate: u64,
    payload: Arc<[Bytes]>,
    progress: ProgressBar,
) -> Result<ProducerRun> {
    let (acks_tx, acks_rx) = mpsc::unbounded_channel::<(Instant, RecordAck)>();
    let collector = tokio::spawn(collect_latencies(acks_rx, progress));
    let start = Instant::now();
    for i in 0..n {
        if rate > 0 && i % 64 == 0 {
            // Pace in steps of 64 records: record i is due at start + i / rate.
            let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
            tokio::time::sleep_until(due).await;
        }
        let sent = Instant::now();
        let ack = producer
            .send(None, &payload[i as usize % payload.len()], None)
            .await?;
        if acks_tx.send((sent, ack)).is_err() {
            break;
        }
    }
    drop(acks_tx);
    // Failures are counted per record by the collector; flush only waits for the last batches.
    let _ = producer.flush().await;
    collector
        .await
        .map_err(|e| anyhow!("latency collector failed: {e}"))?
}

/// Awaits acknowledgements as they complete (in any order) and records their latencies.
async fn collect_latencies(
    mut acks: mpsc::UnboundedReceiver<(Instant, RecordAck)>,
    progress: ProgressBar,
) -> Result<ProducerRun> {
    let mut run = ProducerRun {
        latencies_us: new_histogram()?,
        failed: 0,
        first_error: None,
    };
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    while open || !pending.is_empty() {
        tokio::select! {
            next = acks.recv(), if open => match next {
                Some((sent, ack)) => pending.push(async move { (sent, ack.await) }),
                None => open = false,
            },
            Some((sent, result)) = pending.next(), if !pending.is_empty() => {
                match result {
                    Ok(_) => {
                        let us = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
                        run.latencies_us.saturating_record(us.max(1));
                    }
                    Err(err) => {
                        run.failed += 1;
                        run.first_error.get_or_insert_with(|| err.to_string());
                    }
                }
                progress.inc(1);
            }
        }
    }
    Ok(run)
}

/// Reads `--records` records from the beginning of the topic and prints the throughput.
pub async fn consume(ctx: &Context, args: BenchConsumeArgs) -> Result<()> {
    let client = ctx.client().await?;
    let partitions = require_topic(&client, &args.topic).await?;
    let consumers = u32::min(args.consumers, partitions).max(1);
    let progress = progress_bar(args.records, "consume");

    let mut readers = Vec::new();
    for i in 0..consumers {
        let mine: Vec<u32> = (0..partitions).filter(|p| p % consumers == i).collect();
        let config = ConsumerConfig {
            partitions: Some(mine),
            from: StartFrom::Earliest,
            max_bytes: 8 * 1024 * 1024,
            ..ConsumerConfig::default()
        };
        readers.push(Consumer::new(ctx.client().await?, &args.topic, config).await?);
    }
    let shared = Arc::new(ConsumeProgress {
        records: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
        last_progress_ms: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let started = Instant::now();
    let tasks: Vec<_> = readers
        .into_iter()
        .map(|consumer| {
            tokio::spawn(run_consumer(
                consumer,
                args.records,
                shared.clone(),
                started,
                progress.clone(),
            ))
        })
        .collect();
    for task in tasks {
        task.await
            .map_err(|e| anyhow!("consumer task failed: {e}"))??;
    }
    let records = shared.records.load(Ordering::Relaxed);
    let bytes = shared.bytes.load(Ordering::Relaxed);
    let secs = Duration::from_millis(shared.last_progress_ms.load(Ordering::Relaxed))
        .as_secs_f64()
        .max(1e-9);
    progress.finish_and_clear();
    if records < args.records {
        bail!(
            "only {records} of {} records arrived before {}s passed without a new record; does \
             topic {} hold that many?",
            args.records,
            CONSUME_IDLE_LIMIT.as_secs(),
            args.topic
        );
    }
    let mut rows = Rows::new(vec![
        "records",
        "consumers",
        "seconds",
        "records_per_sec",
        "mb_per_sec",
    ]);
    rows.push(vec![
        Value::from(records),
        Value::from(consumers),
        Value::from(round3(secs)),
        Value::from(round3(records as f64 / secs)),
        Value::from(round3(bytes as f64 / 1e6 / secs)),
    ]);
    print_rows(ctx.format, &rows, &mut std::io::stdout())
}

/// Counters the consumer tasks of one benchmark share.
struct ConsumeProgress {
    records: AtomicU64,
    bytes: AtomicU64,
    /// Milliseconds from the start to the last record received.
    last_progress_ms: AtomicU64,
    done: AtomicBool,
}

/// Polls one consumer until the shared target is reached or the topic stays quiet too long.
async fn run_consumer(
    mut consumer: Consumer,
    target: u64,
    shared: Arc<ConsumeProgress>,
    started: Instant,
    progress: ProgressBar,
) -> Result<()> {
    while !shared.done.load(Ordering::Relaxed) {
        let records = consumer.poll(Duration::from_millis(200)).await?;
        let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if records.is_empty() {
            let last = Duration::from_millis(shared.last_progress_ms.load(Ordering::Relaxed));
            if started.elapsed().saturating_sub(last) >= CONSUME_IDLE_LIMIT {
                shared.done.store(true, Ordering::Relaxed);
            }
            continue;
        }
        let bytes: usize = records
            .iter()
            .map(|r| r.value.len() + r.key.as_ref().map_or(0, |k| k.len()))
            .sum();
        shared.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        shared.last_progress_ms.fetch_max(now_ms, Ordering::Relaxed);
        let n = records.len() as u64;
        progress.inc(n);
        if shared.records.fetch_add(n, Ordering::Relaxed) + n >= target {
            shared.done.store(true, Ordering::Relaxed);
        }
    }
    consumer.close().await?;
    Ok(())
}

/// The topic's partition count, or a clear error when it does not exist (benchmarks create nothing).
async fn require_topic(client: &Client, topic: &str) -> Result<u32> {
    match client.describe_topic(topic).await {
        Ok(info) => Ok(info.partitions),
        Err(err) if err.code() == Code::NotFound => bail!(
            "topic {topic} does not exist; create it first with `weir topic create {topic} \
             --partitions P --replicas R`"
        ),
        Err(err) => Err(err.into()),
    }
}

/// Records for worker `i` of `workers` when `total` are split as evenly as possible.
fn share(total: u64, workers: u64, i: u64) -> u64 {
    total / workers + u64::from(i < total % workers)
}

fn new_histogram() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A progress bar on stderr; invisible when stderr is not a terminal, so scripts see only results.
fn progress_bar(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:40}] {human_pos}/{human_len} {per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(what.to_string());
    bar
}

/// What one key/value client measured.
struct KvRun {
    puts_us: Histogram<u64>,
    gets_us: Histogram<u64>,
    failed: u64,
    first_error: Option<String>,
}

/// `weir bench kv`: synchronous clients doing puts and gets of one-column keys, in the manner of
/// etcd's `benchmark put` / `benchmark range`: each client waits for its answer before the next.
pub async fn kv(ctx: &Context, args: BenchKvArgs) -> Result<()> {
    let (put_w, get_w) = parse_mix(&args.mix)?;
    let client = ctx.client().await?;
    let table = match client.table(&args.table).await {
        Ok(t) => t,
        Err(e) if e.code() == Code::NotFound => {
            let schema =
                weir_client::TableSchema::parse("key VARCHAR, value VARCHAR", &["key".into()])?;
            client.create_table(&args.table, &schema, 0, 0).await?;
            client.table(&args.table).await?
        }
        Err(e) => return Err(e.into()),
    };
    let schema = table.schema().clone();
    if schema.columns.len() != 2 || schema.primary_key.len() != 1 {
        bail!(
            "bench kv needs a table of one key column and one value column, like \
             'key VARCHAR, value VARCHAR'; '{}' has ({})",
            args.table,
            schema.to_sql()
        );
    }
    let key_ty = schema.columns[schema.primary_key[0]].ty;
    let value_ty = schema.columns[1 - schema.primary_key[0]].ty;
    if !matches!(
        value_ty,
        weir_client::ColumnType::Utf8 | weir_client::ColumnType::Binary
    ) {
        bail!(
            "the value column of '{}' must be VARCHAR or VARBINARY",
            args.table
        );
    }
    let keys = if args.keys == 0 { args.ops } else { args.keys };
    let clients = u64::from(args.clients);
    let progress = progress_bar(args.ops, "kv");
    let mut tables = Vec::new();
    for _ in 0..clients {
        // Each client has its own connections, as separate processes would.
        tables.push(ctx.client().await?.table(&args.table).await?);
    }
    let started = Instant::now();
    let tasks: Vec<_> = tables
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let spec = KvSpec {
                client: i as u64,
                clients,
                ops: share(args.ops, clients, i as u64),
                keys,
                value_size: args.value_size,
                put_weight: put_w,
                get_weight: get_w,
                key_ty,
            };
            tokio::spawn(run_kv_client(t, spec, progress.clone()))
        })
        .collect();
    let mut puts = new_histogram()?;
    let mut gets = new_histogram()?;
    let mut failed = 0;
    let mut first_error = None;
    for task in tasks {
        let run = task
            .await
            .map_err(|e| anyhow!("client task failed: {e}"))??;
        puts.add(&run.puts_us)?;
        gets.add(&run.gets_us)?;
        failed += run.failed;
        first_error = first_error.or(run.first_error);
    }
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    progress.finish_and_clear();
    let mut rows = Rows::new(vec![
        "op",
        "ops",
        "clients",
        "value_size",
        "seconds",
        "ops_per_sec",
        "p50_ms",
        "p99_ms",
        "p999_ms",
        "max_ms",
    ]);
    for (name, h) in [("put", &puts), ("get", &gets)] {
        if h.is_empty() {
            continue;
        }
        let ms = |q: f64| round3(h.value_at_quantile(q) as f64 / 1000.0);
        rows.push(vec![
            Value::from(name),
            Value::from(h.len()),
            Value::from(clients),
            Value::from(args.value_size),
            Value::from(round3(secs)),
            Value::from(round3(h.len() as f64 / secs)),
            Value::from(ms(0.5)),
            Value::from(ms(0.99)),
            Value::from(ms(0.999)),
            Value::from(round3(h.max() as f64 / 1000.0)),
        ]);
    }
    print_rows(ctx.format, &rows, &mut std::io::stdout())?;
    if failed > 0 {
        bail!(
            "{failed} of {} ops failed: {}",
            args.ops,
            first_error.unwrap_or_default()
        );
    }
    Ok(())
}

/// What one benchmark client does.
struct KvSpec {
    client: u64,
    clients: u64,
    ops: u64,
    keys: u64,
    value_size: usize,
    put_weight: u64,
    get_weight: u64,
    key_ty: weir_client::ColumnType,
}

fn bench_key(ty: weir_client::ColumnType, n: u64) -> weir_client::Value {
    match ty {
        weir_client::ColumnType::Utf8 | weir_client::ColumnType::Binary => {
            weir_client::Value::Str(format!("key{n:012}"))
        }
        _ => weir_client::Value::Int(n as i64),
    }
}

async fn run_kv_client(
    table: weir_client::Table,
    spec: KvSpec,
    progress: ProgressBar,
) -> Result<KvRun> {
    let mut run = KvRun {
        puts_us: new_histogram()?,
        gets_us: new_histogram()?,
        failed: 0,
        first_error: None,
    };
    let mut payload = vec![0u8; spec.value_size];
    rand::rng().fill_bytes(&mut payload);
    let value: String = payload.iter().map(|b| char::from(b'a' + b % 26)).collect();
    let cycle = spec.put_weight + spec.get_weight;
    let mut next_put = spec.client;
    for i in 0..spec.ops {
        let is_put = (i % cycle) < spec.put_weight;
        let begun = Instant::now();
        let res = if is_put {
            // Puts walk the key space, the clients interleaved, so later gets find every key.
            let k = next_put % spec.keys;
            next_put += spec.clients;
            table
                .put(vec![vec![
                    bench_key(spec.key_ty, k),
                    weir_client::Value::Str(value.clone()),
                ]])
                .await
                .map(|_| ())
        } else {
            let k = rand::random_range(0..spec.keys);
            table
                .get(&[vec![bench_key(spec.key_ty, k)]], &[], false)
                .await
                .map(|_| ())
        };
        let us = begun.elapsed().as_micros() as u64;
        match res {
            Ok(()) => {
                let h = if is_put {
                    &mut run.puts_us
                } else {
                    &mut run.gets_us
                };
                h.record(us.clamp(1, MAX_LATENCY_US))?;
            }
            Err(e) => {
                run.failed += 1;
                run.first_error.get_or_insert(e.to_string());
            }
        }
        progress.inc(1);
    }
    Ok(run)
}

/// Parses `put:get` weights such as `1:0` (puts only) or `1:9`.
fn parse_mix(mix: &str) -> Result<(u64, u64)> {
    let (p, g) = mix
        .split_once(':')
        .ok_or_else(|| anyhow!("--mix is PUT:GET, e.g. 1:0 or 1:9; got '{mix}'"))?;
    let p: u64 = p
        .trim()
        .parse()
        .map_err(|_| anyhow!("--mix: '{p}' is not a number"))?;
    let g: u64 = g
        .trim()
        .parse()
        .map_err(|_| anyhow!("--mix: '{g}' is not a number"))?;
    // The weights are added up to pick each operation, so their sum must fit too.
    match p.checked_add(g) {
        Some(0) => bail!("--mix needs at least one non-zero weight"),
        Some(_) => Ok((p, g)),
        None => bail!("--mix: {p} + {g} is too large"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn mixes_parse_and_huge_weights_are_refused() {
        assert_eq!(parse_mix("1:9").unwrap(), (1, 9));
        assert_eq!(parse_mix(" 1 : 0 ").unwrap(), (1, 0));
        assert!(parse_mix("0:0")
            .unwrap_err()
            .to_string()
            .contains("non-zero"));
        let e = parse_mix("18446744073709551615:1").unwrap_err().to_string();
        assert!(e.contains("too large"), "{e}");
        assert!(parse_mix("1").is_err());
    }

    proptest! {
        #[test]
        fn any_mix_text_is_parsed_or_refused(text in "[ 0-9:+-]{0,24}|.{0,12}") {
            if let Ok((p, g)) = parse_mix(&text) {
                prop_assert!(p.checked_add(g).is_some_and(|sum| sum > 0));
            }
        }

        #[test]
        fn weights_are_taken_when_their_sum_fits(p in any::<u64>(), g in prop_oneof![any::<u64>(), 0u64..3]) {
            let parsed = parse_mix(&format!("{p}:{g}"));
            match p.checked_add(g) {
                Some(0) | None => prop_assert!(parsed.is_err()),
                Some(_) => prop_assert_eq!(parsed.unwrap(), (p, g)),
            }
        }
    }

    #[test]
    fn records_are_split_evenly_between_workers() {
        let shares: Vec<u64> = (0..4).map(|i| share(10, 4, i)).collect();
        assert_eq!(shares, vec![3, 3, 2, 2]);
        assert_eq!((0..3).map(|i| share(2, 3, i)).sum::<u64>(), 2);
        assert_eq!(share(7, 1, 0), 7);
    }
}
