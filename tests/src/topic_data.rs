//! Reading and writing whole topics in tests: fill a topic with acknowledged records, read every
//! record back, and check partitions are dense.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use weir_client::consumer::{Consumer, ConsumerConfig};
use weir_client::{Client, Producer};

/// Reads every record of every partition up to the latest offset (failing after `timeout`):
/// partition → [(offset, value)].
pub async fn read_all(
    client: &Client,
    topic: &str,
    timeout: Duration,
) -> BTreeMap<u32, Vec<(u64, String)>> {
    let info = client.describe_topic(topic).await.expect("topic");
    let mut latest = BTreeMap::new();
    for p in 0..info.partitions {
        let o = client.list_offsets(topic, p).await.expect("offsets");
        latest.insert(p, o.latest);
    }
    let mut consumer = Consumer::new(client.clone(), topic, ConsumerConfig::default())
        .await
        .expect("consumer");
    let mut out: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
    let total: u64 = latest.values().sum();
    let mut got = 0u64;
    let deadline = Instant::now() + timeout;
    while got < total {
        assert!(Instant::now() < deadline, "read {got} of {total} records");
        for r in consumer
            .poll(Duration::from_millis(500))
            .await
            .expect("poll")
        {
            got += 1;
            out.entry(r.partition)
                .or_default()
                .push((r.offset, String::from_utf8_lossy(&r.value).to_string()));
        }
    }
    out
}

/// Partitions in offset order, dense from their first offset, no offset twice.
pub fn assert_dense(data: &BTreeMap<u32, Vec<(u64, String)>>) {
    for (p, recs) in data {
        for w in recs.windows(2) {
            assert_eq!(
                w[1].0,
                w[0].0 + 1,
                "partition {p}: offsets not dense and ordered"
            );
        }
    }
}

/// Sends `n` records of `size` bytes (`{tag}{i}` padded with dots) and waits for every ack.
pub async fn fill(producer: &Producer, tag: &str, n: u64, size: usize) -> u64 {
    let mut acks = Vec::new();
    for i in 0..n {
        let mut v = format!("{tag}{i}").into_bytes();
        v.resize(size, b'.');
        acks.push(producer.send(None, &v, None).await.expect("queued"));
    }
    producer.flush().await.expect("flush");
    for a in acks {
        a.await.expect("acknowledged");
    }
    n * size as u64
}
