//! The Kafka wire protocol, exercised with Kafka clients nobody here wrote: `kcat` (librdkafka),
//! `kafka-python` and `confluent-kafka` (installed by `make deps`: kcat from Debian, the Python
//! packages into a virtualenv under `~/.cache/weir/py`, or the Python named by `WEIR_PYTHON`).
//!
//! Records written through the Kafka listener are read natively and the other way round; an
//! idempotent producer loses and duplicates nothing while a partition leader is SIGKILLed; leader
//! epochs are Raft terms that end where the next leader wrote; random and truncated frames never
//! stop the listener.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::{
    ApiKey, BrokerId, DescribeConfigsRequest, FetchRequest, MetadataRequest,
    OffsetForLeaderEpochRequest, RequestHeader, ResponseHeader, ResponseKind, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use weir_client::partitioner::Partitioner;
use weir_client::{Client, NewTopic};
use weir_tests::process::binary;
use weir_tests::{python, wait_until, Gen, ProcessCluster};

const SETTLE: Duration = Duration::from_secs(120);

/// A script of `tests/kafka/`.
fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("kafka")
        .join(name)
}

/// Runs a command to its end off the async runtime.
async fn run(mut cmd: Command) -> Output {
    let what = format!("{cmd:?}");
    tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("command task")
        .unwrap_or_else(|e| panic!("{what} runs: {e}"))
}

/// Runs `kcat` with `args`, feeding it `input`.
async fn kcat(args: &[&str], input: Option<Vec<u8>>) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new("kcat")
            .args(&args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kcat runs (`make deps` installs it)");
        if let Some(bytes) = input {
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(&bytes).expect("kcat reads stdin");
        }
        child.wait_with_output().expect("kcat finishes")
    })
    .await
    .expect("kcat task")
}

/// The `weir` CLI against `server`.
async fn weir(server: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(binary("weir"));
    cmd.arg("--server").arg(server).args(args);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "weir {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

async fn three_nodes_with_topic(topic: &str, partitions: u32) -> (ProcessCluster, Client) {
    let cluster = ProcessCluster::start(3, &[]);
    cluster.wait_members_up(3, SETTLE).await;
    let client = Client::connect(cluster.addr(0)).await.expect("client");
    client
        .create_topic(&NewTopic::new(topic, partitions, 3))
        .await
        .expect("topic created");
    (cluster, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kcat_lists_produces_and_consumes_with_keys_on_their_partitions() {
    let (cluster, _client) = three_nodes_with_topic("clicks", 3).await;
    let broker = cluster.nodes[1].kafka.clone();

    // Metadata: three brokers, the topic's three partitions, each with a leader.
    let listing = wait_until("every partition led in kcat's metadata", SETTLE, || {
        let broker = broker.clone();
        async move {
            let out = kcat(&["-b", &broker, "-L", "-t", "clicks"], None).await;
            let text = String::from_utf8_lossy(&out.stdout).to_string();
            (out.status.success()
                && text.matches("leader ").count() == 3
                && !text.contains("leader -1"))
            .then_some(text)
        }
    })
    .await;
    assert!(listing.contains("3 brokers"), "{listing}");
    assert!(
        listing.contains("topic \"clicks\" with 3 partitions"),
        "{listing}"
    );

    // Produce keyed records from a file: each key lands on crc32(key) % 3, as Weir's own
    // producer places it.
    let file = cluster.dir().join("clicks.txt");
    let lines: Vec<String> = (0..300)
        .map(|i| format!("user{}:click{i}", i % 10))
        .collect();
    std::fs::write(&file, lines.join("\n") + "\n").expect("input file");
    let out = kcat(
        &[
            "-b",
            &broker,
            "-P",
            "-t",
            "clicks",
            "-K",
            ":",
            "-l",
            file.to_str().expect("path"),
        ],
        None,
    )
    .await;
    assert!(
        out.status.success(),
        "kcat produce: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Consume from the beginning: every record, each key on its partition, in order per key.
    let out = kcat(
        &[
            "-b",
            &broker,
            "-C",
            "-t",
            "clicks",
            "-o",
            "beginning",
            "-e",
            "-f",
            "%p|%k|%s\n",
        ],
        None,
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let partitioner = Partitioner::new(3, 1);
    let mut per_key: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for line in text.lines() {
        let mut f = line.splitn(3, '|');
        let (p, k, v) = (
            f.next().expect("partition"),
            f.next().expect("key"),
            f.next().expect("value"),
        );
        let p: u32 = p.parse().expect("partition number");
        assert_eq!(
            p,
            partitioner.partition(Some(k.as_bytes())),
            "key {k} on partition {p}"
        );
        let n: u32 = v.trim_start_matches("click").parse().expect("value");
        per_key.entry(k.to_string()).or_default().push(n);
    }
    assert_eq!(per_key.values().map(Vec::len).sum::<usize>(), 300, "{text}");
    for (k, ns) in &per_key {
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{k} out of order: {ns:?}"
        );
    }

    // The native consumer reads what kcat wrote, and kcat reads what the native producer wrote.
    let native = weir(
        &cluster.addr(2),
        &[
            "consume",
            "clicks",
            "--from",
            "earliest",
            "-n",
            "300",
            "--timeout-ms",
            "30000",
        ],
    )
    .await;
    assert_eq!(
        native.lines().filter(|l| l.starts_with("click")).count(),
        300,
        "{native}"
    );
    let mut cmd = Command::new(binary("weir"));
    cmd.args([
        "--server",
        &cluster.addr(0),
        "produce",
        "clicks",
        "-k",
        "native",
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let out = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("weir produce");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(b"n1\nn2\nn3\n")
            .expect("input");
        child.wait_with_output().expect("weir produce ends")
    })
    .await
    .expect("task");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = partitioner.partition(Some(b"native")).to_string();
    let out = kcat(
        &[
            "-b", &broker, "-C", "-t", "clicks", "-p", &p, "-o", "-3", "-e", "-f", "%k=%s\n",
        ],
        None,
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "native=n1\nnative=n2\nnative=n3\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seed_003s_kafka_python_producer_runs_unchanged_and_sql_reads_its_records() {
    let cluster = ProcessCluster::start(1, &[]);
    cluster.wait_members_up(1, SETTLE).await;
    let server = cluster.addr(0);
    weir(
        &server,
        &[
            "sql",
            "CREATE TOPIC car_transactions_logs (transaction_id VARCHAR, buyer_name VARCHAR, \
             car_brand VARCHAR, year INT, transaction_price DOUBLE) \
             WITH (partitions = 2, replicas = 1, format = 'json')",
        ],
    )
    .await;
    let mut cmd = Command::new(python());
    cmd.arg(script("seed003_producer.py"))
        .arg(&cluster.nodes[0].kafka)
        .arg("car_transactions_logs")
        .arg("500");
    let out = run(cmd).await;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && stdout.starts_with("sent 500"),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let total: f64 = stdout
        .split_whitespace()
        .nth(3)
        .and_then(|t| t.parse().ok())
        .expect("total printed");
    let answer = weir(
        &server,
        &[
            "--format",
            "csv",
            "sql",
            "SELECT count(*) AS n, round(sum(transaction_price), 2) AS total, \
             count(DISTINCT transaction_id) AS ids FROM car_transactions_logs",
        ],
    )
    .await;
    let row: Vec<&str> = answer.lines().nth(1).expect("a row").split(',').collect();
    assert_eq!(row[0], "500", "{answer}");
    assert!(
        (row[1].parse::<f64>().expect("sum") - total).abs() < 0.02,
        "{answer} vs {total}"
    );
    assert_eq!(row[2], "500", "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idempotent_producer_loses_and_duplicates_nothing_across_a_leader_kill() {
    const COUNT: usize = 100_000;
    const PARTITIONS: u32 = 6;
    let (mut cluster, client) = three_nodes_with_topic("orders", PARTITIONS).await;
    let acked_path = cluster.dir().join("acked.txt");
    // Every node's Kafka address: librdkafka finds the others through metadata anyway.
    let brokers = cluster
        .nodes
        .iter()
        .map(|n| n.kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    let mut producer = Command::new(python())
        .arg(script("idempotent_producer.py"))
        .arg(&brokers)
        .arg("orders")
        .arg(COUNT.to_string())
        .arg(&acked_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("producer starts");
    let stdout = producer.stdout.take().expect("stdout");
    let (tx, mut progress) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        let mut all = String::new();
        let mut buf = [0u8; 4096];
        let mut reader = stdout;
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.push_str(&String::from_utf8_lossy(&buf[..n]));
            while let Some(i) = all.find('\n') {
                let line: String = all.drain(..=i).collect();
                let _ = tx.send(line.trim().to_string());
            }
        }
    });
    let mut last = String::new();
    let acked_at =
        |line: &str| -> Option<usize> { line.strip_prefix("acked ").and_then(|n| n.parse().ok()) };
    // Kill the leader of partition 0 once a fifth is acknowledged, restart it at half.
    let mut killed = None;
    let mut restarted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let line = tokio::time::timeout_at(deadline, progress.recv())
            .await
            .expect("the producer finishes within 10 minutes");
        let Some(line) = line else { break };
        last = line.clone();
        let n = acked_at(&line).unwrap_or(0);
        if killed.is_none() && n >= COUNT / 5 {
            let info = client.describe_topic("orders").await.expect("describe");
            let leader = info.partition_info[0].leader;
            let status = client.cluster_status().await.expect("status");
            let addr = status
                .members
                .iter()
                .find(|m| m.id == leader)
                .map(|m| m.addr.clone())
                .expect("leader is a member");
            let i = (0..3).find(|i| cluster.addr(*i) == addr).expect("ours");
            cluster.kill(i);
            killed = Some(i);
        }
        if let (Some(i), false) = (killed, restarted) {
            if n >= COUNT / 2 {
                cluster.restart(i);
                restarted = true;
            }
        }
    }
    let status = tokio::task::spawn_blocking(move || producer.wait_with_output())
        .await
        .expect("task")
        .expect("producer exits");
    assert!(killed.is_some(), "the kill happened (last line: {last})");
    assert!(
        status.status.success() && last.starts_with("done") && last.contains("failed=0"),
        "producer: {last} {}",
        String::from_utf8_lossy(&status.stderr)
    );
    if let Some(i) = killed.filter(|_| !restarted) {
        cluster.restart(i);
    }

    let acked: Vec<(u32, i64, u64)> = std::fs::read_to_string(&acked_path)
        .expect("acked file")
        .lines()
        .map(|l| {
            let f: Vec<u64> = l.split(' ').map(|x| x.parse().expect("number")).collect();
            (f[0] as u32, f[1] as i64, f[2])
        })
        .collect();
    assert_eq!(acked.len(), COUNT, "every record acknowledged");

    let out_path = cluster.dir().join("consumed.txt");
    let mut cmd = Command::new(python());
    cmd.arg(script("consume_all.py"))
        .arg(&brokers)
        .arg("orders")
        .arg(PARTITIONS.to_string())
        .arg(COUNT.to_string())
        .arg(&out_path);
    let out = run(cmd).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let consumed: Vec<(u32, i64, u64)> = std::fs::read_to_string(&out_path)
        .expect("consumed file")
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<u64> = l.split(' ').map(|x| x.parse().expect("number")).collect();
            (f[0] as u32, f[1] as i64, f[2])
        })
        .collect();
    // Exactly once: each value consumed once, at the offset it was acknowledged with.
    let mut seen: HashMap<u64, (u32, i64)> = HashMap::new();
    for (p, o, v) in &consumed {
        assert!(
            seen.insert(*v, (*p, *o)).is_none(),
            "value {v} consumed twice"
        );
    }
    for (p, o, v) in &acked {
        assert_eq!(
            seen.get(v),
            Some(&(*p, *o)),
            "acknowledged value {v} at {p}/{o}"
        );
    }
    // In order per partition: values sent in increasing order stay so by offset.
    let mut per_partition: BTreeMap<u32, Vec<(i64, u64)>> = BTreeMap::new();
    for (p, o, v) in consumed {
        per_partition.entry(p).or_default().push((o, v));
    }
    for (p, mut rows) in per_partition {
        rows.sort();
        assert!(
            rows.windows(2).all(|w| w[0].1 < w[1].1),
            "partition {p} out of order"
        );
    }
}

/// A running `group_member.py` and the file it writes.
struct Member {
    child: std::process::Child,
    out: PathBuf,
}

impl Member {
    /// Starts `member_script` as a member of `group` reading `topic`.
    fn start(member_script: &str, brokers: &str, group: &str, topic: &str, out: PathBuf) -> Member {
        let child = Command::new(python())
            .arg(script(member_script))
            .args([brokers, group, topic])
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("member starts");
        Member { child, out }
    }

    fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Partitions it holds now (after its last assign or revoke).
    fn holds(&self) -> Vec<u32> {
        let mut held = Vec::new();
        for l in self.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let ps = || {
                f.get(2)
                    .map(|p| {
                        p.split(',')
                            .filter_map(|x| x.parse().ok())
                            .collect::<Vec<u32>>()
                    })
                    .unwrap_or_default()
            };
            match f[0] {
                "assign" => held.extend(ps()),
                "revoke" => held.retain(|p| !ps().contains(p)),
                _ => {}
            }
        }
        held
    }

    fn stop(&mut self, signal: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// (partition, offset) of every record the members read, without repeats.
fn distinct_records(members: &[&Member]) -> std::collections::BTreeSet<(u32, u64)> {
    members
        .iter()
        .flat_map(|m| m.lines())
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[0] == "rec").then(|| (f[1].parse().expect("p"), f[2].parse().expect("o")))
        })
        .collect()
}

/// Ownership intervals (member, partition, from, to) out of the members' logs; a member killed at
/// `killed` holds its partitions until then.
fn ownership(members: &[(&Member, Option<f64>)]) -> Vec<(usize, u32, f64, f64)> {
    let mut out = Vec::new();
    for (i, (m, killed)) in members.iter().enumerate() {
        let mut open: BTreeMap<u32, f64> = BTreeMap::new();
        let mut last = 0.0;
        for l in m.lines() {
            let f: Vec<&str> = l.split(' ').collect();
            let t: f64 = match f.get(1).and_then(|t| t.parse().ok()) {
                Some(t) => t,
                None => continue,
            };
            last = t;
            let ps: Vec<u32> = f
                .get(2)
                .map(|p| p.split(',').filter_map(|x| x.parse().ok()).collect())
                .unwrap_or_default();
            match f[0] {
                "assign" => {
                    for p in ps {
                        open.insert(p, t);
                    }
                }
                "revoke" => {
                    for p in ps {
                        if let Some(from) = open.remove(&p) {
                            out.push((i, p, from, t));
                        }
                    }
                }
                _ => {}
            }
        }
        let end = killed.unwrap_or(last);
        for (p, from) in open {
            out.push((i, p, from, end));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_consumer_group_of_two_then_three_then_two_reads_everything_one_owner_at_a_time() {
    group_of_two_then_three_then_two("group_member.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kafka_python_consumer_group_of_two_then_three_then_two_reads_everything_one_owner_at_a_time(
) {
    group_of_two_then_three_then_two("group_member_kp.py").await;
}

/// A group of members run by `member_script` (2, then 3, then one SIGKILLed) reads a 6-partition
/// topic while it is written: every record read, commits at the end of every partition, and no
/// partition held by two members at once.
async fn group_of_two_then_three_then_two(member_script: &str) {
    let (cluster, client) = three_nodes_with_topic("gq", 6).await;
    let brokers = cluster
        .nodes
        .iter()
        .map(|n| n.kafka.clone())
        .collect::<Vec<_>>()
        .join(",");
    let producer =
        weir_client::Producer::new(client.clone(), "gq", weir_client::ProducerConfig::default())
            .await
            .expect("producer");
    let mut written = 0u64;
    let mut produce = |n: u64| {
        let from = written;
        written += n;
        let producer = producer.clone();
        async move {
            for i in from..from + n {
                let key = format!("k{i}");
                // Acknowledged by the flush below.
                let _ack = producer
                    .send(Some(key.as_bytes()), format!("v{i}").as_bytes(), None)
                    .await
                    .expect("queued");
            }
            producer.flush().await.expect("acknowledged");
        }
    };
    produce(3000).await;
    let dir = cluster.dir().to_path_buf();
    let a = Member::start(member_script, &brokers, "gq-group", "gq", dir.join("a.log"));
    let mut b = Member::start(member_script, &brokers, "gq-group", "gq", dir.join("b.log"));
    let read = |members: Vec<&Member>, n: usize| distinct_records(&members).len() >= n;
    wait_until("two members read the first 3,000", SETTLE, || {
        let ok = read(vec![&a, &b], 3000) && !a.holds().is_empty() && !b.holds().is_empty();
        async move { ok.then_some(()) }
    })
    .await;

    // A third member joins: the six partitions are spread over three.
    let mut c = Member::start(member_script, &brokers, "gq-group", "gq", dir.join("c.log"));
    produce(3000).await;
    wait_until("three members share the partitions", SETTLE, || {
        let ok = read(vec![&a, &b, &c], 6000) && [&a, &b, &c].iter().all(|m| !m.holds().is_empty());
        async move { ok.then_some(()) }
    })
    .await;

    // One member crashes: once its session is over, the others take its partitions.
    b.stop("KILL");
    let killed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    produce(3000).await;
    wait_until("the two left read everything", SETTLE, || {
        let ok = read(vec![&a, &b, &c], 9000) && a.holds().len() + c.holds().len() == 6;
        async move { ok.then_some(()) }
    })
    .await;
    // An admin tool sees the group as it is: stable, two members sharing the six partitions.
    let described = wait_until(
        "the group is described stable with two members",
        SETTLE,
        || {
            let brokers = brokers.clone();
            async move {
                let mut cmd = Command::new(python());
                cmd.arg(script("admin.py"))
                    .args([&brokers, "gq-group", "gq"]);
                let out = run(cmd).await;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let members = v["members"].as_array()?;
                (v["state"] == "STABLE" && members.len() == 2).then_some(v)
            }
        },
    )
    .await;
    let mut parts: Vec<u64> = described["members"]
        .as_array()
        .expect("members")
        .iter()
        .flat_map(|m| m["partitions"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p.as_u64())
        .collect();
    parts.sort();
    assert_eq!(parts, (0..6).collect::<Vec<u64>>(), "{described}");
    assert!(
        described["groups"]
            .as_array()
            .is_some_and(|g| g.iter().any(|g| g == "gq-group")),
        "{described}"
    );
    assert_eq!(
        described["configs"]["cleanup.policy"], "delete",
        "{described}"
    );
    let mut a = a;
    a.stop("TERM");
    c.stop("TERM");

    // Every record read, and the group's commits reach the end of every partition.
    let all = distinct_records(&[&a, &b, &c]);
    assert_eq!(all.len() as u64, written);
    let committed = client
        .fetch_committed("gq-group", "gq")
        .await
        .expect("committed offsets");
    for p in 0..6u32 {
        let end = client.list_offsets("gq", p).await.expect("offsets").latest;
        assert_eq!(
            committed.get(&p).copied().unwrap_or(0),
            end,
            "partition {p}"
        );
    }
    // One owner at a time: no partition held by two members over overlapping times.
    let held = ownership(&[(&a, None), (&b, Some(killed)), (&c, None)]);
    for x in &held {
        for y in &held {
            if x.0 < y.0 && x.1 == y.1 {
                assert!(
                    x.3 <= y.2 || y.3 <= x.2,
                    "partition {} held by members {} ({:.3}..{:.3}) and {} ({:.3}..{:.3})",
                    x.1,
                    x.0,
                    x.2,
                    x.3,
                    y.0,
                    y.2,
                    y.3
                );
            }
        }
    }
}

/// An `ApiVersions` v0 request frame.
fn api_versions_frame(correlation: i32) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&10i32.to_be_bytes());
    f.extend_from_slice(&18i16.to_be_bytes());
    f.extend_from_slice(&0i16.to_be_bytes());
    f.extend_from_slice(&correlation.to_be_bytes());
    f.extend_from_slice(&(-1i16).to_be_bytes());
    f
}

/// Whether the listener answers `ApiVersions` on a new connection.
fn answers_api_versions(addr: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    if s.write_all(&api_versions_frame(77)).is_err() {
        return false;
    }
    let mut head = [0u8; 10];
    if s.read_exact(&mut head).is_err() {
        return false;
    }
    let correlation = i32::from_be_bytes([head[4], head[5], head[6], head[7]]);
    let error = i16::from_be_bytes([head[8], head[9]]);
    correlation == 77 && error == 0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_and_truncated_frames_never_stop_the_listener() {
    // A real node process: a frame that made it abort would show here.
    let cluster = ProcessCluster::start(1, &[]);
    cluster.wait_members_up(1, SETTLE).await;
    let addr2 = cluster.nodes[0].kafka.clone();
    tokio::task::spawn_blocking(move || {
        let addr = addr2;
        let mut gen = Gen(0x006b_6166_6b61);
        assert!(answers_api_versions(&addr), "answers before");
        for &(key, lo, hi) in weir_node::kafka::versions::SERVED {
            for version in lo..=hi {
                for round in 0..6i32 {
                    let len = gen.next(200) as usize;
                    let mut body: Vec<u8> = (0..len).map(|_| gen.next(256) as u8).collect();
                    if round == 0 {
                        // Plausible lengths that run past the end: all 0x7f.
                        body.iter_mut().for_each(|b| *b = 0x7f);
                    }
                    let mut frame = Vec::new();
                    let declared = if round == 1 { len + 50 } else { len + 10 };
                    frame.extend_from_slice(&(declared as i32).to_be_bytes());
                    frame.extend_from_slice(&(key as i16).to_be_bytes());
                    frame.extend_from_slice(&version.to_be_bytes());
                    frame.extend_from_slice(&round.to_be_bytes());
                    frame.extend_from_slice(&(-1i16).to_be_bytes());
                    frame.extend_from_slice(&body);
                    if let Ok(mut s) = TcpStream::connect(&addr) {
                        let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                        let _ = s.write_all(&frame);
                        if round == 1 {
                            // A frame shorter than it said, then the client goes away.
                            let _ = s.shutdown(std::net::Shutdown::Write);
                        }
                        let mut sink = [0u8; 512];
                        let _ = s.read(&mut sink);
                    }
                }
            }
        }
        // Sizes no request may have, unknown APIs, garbage headers.
        for frame in [
            (-5i32).to_be_bytes().to_vec(),
            i32::MAX.to_be_bytes().to_vec(),
            [&8i32.to_be_bytes()[..], &[0x7f, 0x7f, 0, 0, 0, 0, 0, 1]].concat(),
            [&3i32.to_be_bytes()[..], &[0, 0, 0]].concat(),
        ] {
            if let Ok(mut s) = TcpStream::connect(&addr) {
                let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
                let _ = s.write_all(&frame);
                let mut sink = [0u8; 64];
                let _ = s.read(&mut sink);
            }
        }
        assert!(
            answers_api_versions(&addr),
            "still answers after the garbage"
        );
    })
    .await
    .expect("frames sent");
}

/// Sends one Kafka request to `addr` and reads its answer (the client side of the codec, so the
/// test sees exactly what the node put on the wire).
async fn kafka_call<R>(addr: &str, key: ApiKey, version: i16, req: &R) -> ResponseKind
where
    R: Encodable,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut body = bytes::BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(9)
        .with_client_id(Some(StrBytes::from_static_str("weir-test")))
        .encode(&mut body, key.request_header_version(version))
        .expect("header encodes");
    req.encode(&mut body, version).expect("request encodes");
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    s.write_all(&(body.len() as i32).to_be_bytes())
        .await
        .expect("sent");
    s.write_all(&body).await.expect("sent");
    let len = s.read_i32().await.expect("answer length");
    let mut frame = vec![0u8; len as usize];
    s.read_exact(&mut frame).await.expect("answer");
    let mut frame = bytes::Bytes::from(frame);
    let header = ResponseHeader::decode(&mut frame, key.response_header_version(version))
        .expect("response header");
    assert_eq!(header.correlation_id, 9);
    ResponseKind::decode(key, &mut frame, version).expect("response decodes")
}

/// (leader id, leader epoch) of partition 0 of `topic` in a `Metadata` answer from `addr`.
async fn leader_and_epoch(addr: &str, topic: &str) -> (i32, i32) {
    let req = MetadataRequest::default().with_topics(Some(vec![MetadataRequestTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(topic.into()))))]));
    let ResponseKind::Metadata(m) = kafka_call(addr, ApiKey::Metadata, 9, &req).await else {
        panic!("a Metadata answer");
    };
    let p = &m.topics[0].partitions[0];
    (p.leader_id.0, p.leader_epoch)
}

/// (error, leader epoch found, end offset) of `OffsetForLeaderEpoch` for partition 0 of `topic`.
async fn epoch_end(addr: &str, topic: &str, current: i32, epoch: i32) -> (i16, i32, i64) {
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current)
                .with_leader_epoch(epoch)])]);
    let ResponseKind::OffsetForLeaderEpoch(r) =
        kafka_call(addr, ApiKey::OffsetForLeaderEpoch, 4, &req).await
    else {
        panic!("an OffsetForLeaderEpoch answer");
    };
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

/// Error of a `Fetch` of partition 0 of `topic` from offset 0 made at leader epoch `current`,
/// and the bytes of records it brought.
async fn fetch_at_epoch(addr: &str, topic: &str, current: i32) -> (i16, usize) {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(0)
        .with_max_bytes(1 << 20)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_current_leader_epoch(current)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20)])]);
    let ResponseKind::Fetch(r) = kafka_call(addr, ApiKey::Fetch, 12, &req).await else {
        panic!("a Fetch answer");
    };
    let p = &r.responses[0].partitions[0];
    (
        p.error_code,
        p.records.as_ref().map(|r| r.len()).unwrap_or(0),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_epochs_are_raft_terms_and_end_where_the_next_leader_wrote() {
    let (mut cluster, client) = three_nodes_with_topic("ep", 1).await;
    let producer =
        weir_client::Producer::new(client.clone(), "ep", weir_client::ProducerConfig::default())
            .await
            .expect("producer");
    let send = |from: u64, n: u64| {
        let producer = producer.clone();
        async move {
            for i in from..from + n {
                // Acknowledged by the flush below.
                let _ack = producer
                    .send(None, format!("v{i}").as_bytes(), None)
                    .await
                    .expect("queued");
            }
            producer.flush().await.expect("acknowledged");
        }
    };
    send(0, 1000).await;
    let any = cluster.nodes[0].kafka.clone();
    // Metadata learns epochs from heartbeats: a request made at an epoch that has just moved on is
    // fenced (74) or held (75), and asked again with the next metadata, as a client would.
    let moved = |err: i16| err == 74 || err == 75;
    let (leader, e1, (err, found, end), fetched) =
        wait_until("metadata names the leader's epoch", SETTLE, || {
            let any = any.clone();
            async move {
                let (l, e) = leader_and_epoch(&any, "ep").await;
                if l <= 0 || e <= 0 {
                    return None;
                }
                let end = epoch_end(&any, "ep", e, e).await;
                let fetched = fetch_at_epoch(&any, "ep", e).await;
                (!moved(end.0) && !moved(fetched.0)).then_some((l, e, end, fetched))
            }
        })
        .await;
    // Every record so far was written at or before the current epoch.
    assert_eq!(err, 0);
    assert!(0 < found && found <= e1, "found {found}, current {e1}");
    assert_eq!(end, 1000);
    assert_eq!(fetched.0, 0);
    assert!(fetched.1 > 0);
    // An epoch no leader has reached yet is undefined.
    assert_eq!(epoch_end(&any, "ep", -1, e1 + 1000).await, (0, -1, -1));

    // The leader dies: a later term leads and writes after offset 1000.
    let status = client.cluster_status().await.expect("status");
    let leader_addr = status
        .members
        .iter()
        .find(|m| m.id as i32 == leader)
        .map(|m| m.addr.clone())
        .expect("leader is a member");
    let dead = (0..3)
        .find(|i| cluster.addr(*i) == leader_addr)
        .expect("the leader is ours");
    cluster.kill(dead);
    let alive = cluster.nodes[(dead + 1) % 3].kafka.clone();
    let client = Client::connect(cluster.addr((dead + 1) % 3))
        .await
        .expect("client");
    let producer =
        weir_client::Producer::new(client.clone(), "ep", weir_client::ProducerConfig::default())
            .await
            .expect("producer");
    for i in 1000..1500u64 {
        let _ack = producer
            .send(None, format!("v{i}").as_bytes(), None)
            .await
            .expect("queued");
    }
    producer
        .flush()
        .await
        .expect("acknowledged after the failover");
    let (e2, old, new, fetched) =
        wait_until("metadata shows the new leader's epoch", SETTLE, || {
            let alive = alive.clone();
            async move {
                let (l, e) = leader_and_epoch(&alive, "ep").await;
                if l <= 0 || l == leader || e <= e1 {
                    return None;
                }
                let old = epoch_end(&alive, "ep", e, e1).await;
                let new = epoch_end(&alive, "ep", e, e).await;
                let fetched = fetch_at_epoch(&alive, "ep", e).await;
                (![old.0, new.0, fetched.0].into_iter().any(moved))
                    .then_some((e, old, new, fetched))
            }
        })
        .await;
    // The old epoch ends where the new leader began writing; the new one at the end.
    assert_eq!((old.0, old.2), (0, 1000), "epoch {e1}: {old:?}");
    assert!(old.1 <= e1);
    assert_eq!((new.0, new.2), (0, 1500));
    assert!(e1 < new.1 && new.1 <= e2, "found {}, {e1}..={e2}", new.1);
    // A client still at the old epoch is sent to refresh its metadata; one at the new epoch reads.
    assert_eq!(fetched.0, 0);
    assert!(fetched.1 > 0);
    assert_eq!(epoch_end(&alive, "ep", e1, e1).await.0, 74);
    assert_eq!(fetch_at_epoch(&alive, "ep", e1).await, (74, 0));
    cluster.restart(dead);

    // Admin tools read the topic's settings as Kafka names them.
    let req = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("ep")),
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("missing")),
    ]);
    let ResponseKind::DescribeConfigs(r) =
        kafka_call(&alive, ApiKey::DescribeConfigs, 4, &req).await
    else {
        panic!("a DescribeConfigs answer");
    };
    let configs: BTreeMap<String, String> = r.results[0]
        .configs
        .iter()
        .map(|c| {
            (
                c.name.to_string(),
                c.value.as_ref().map(|v| v.to_string()).unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(r.results[0].error_code, 0);
    assert_eq!(
        configs.get("cleanup.policy").map(String::as_str),
        Some("delete")
    );
    assert_eq!(configs.get("retention.ms").map(String::as_str), Some("-1"));
    assert_eq!(
        configs.get("min.insync.replicas").map(String::as_str),
        Some("2")
    );
    assert_eq!(
        r.results[1].error_code, 3,
        "an unknown topic is named as such"
    );
}
