//! weir-tests: helpers for Weir's multi-node tests.
//!
//! - [`InProcessCluster`]: several nodes in this test process on loopback ports, temporary dirs.
//! - [`ProcessCluster`] (in [`process`]): the real `weir-node` binaries, killed and restarted.
//! - [`wait_until`]: polling with a deadline, the only way tests wait.
//! - [`linearizability`]: a linearizability checker for histories of a key/value register, and
//!   [`kv_register`]: the clients whose histories it checks.
//! - [`sim`]: whole nodes in a deterministic simulation (turmoil), driven by a seeded nemesis.
//! - [`topic_data`]: fill a topic, read it all back, check partitions are dense.

pub mod kv_register;
pub mod linearizability;
pub mod process;
pub mod sim;
pub mod topic_data;

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use tempfile::TempDir;
use weir_node::{NodeConfig, RunningNode};
use weir_proto::v1::cluster_client::ClusterClient;
use weir_proto::v1::log_client::LogClient;
use weir_proto::v1::StatusRequest;

pub use process::ProcessCluster;

/// A deterministic generator (xorshift), so a test's generated input is the same on every run.
#[derive(Debug, Clone)]
pub struct Gen(pub u64);

impl Gen {
    /// The next number below `n`.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Polls `check` every 50 ms until it returns `Some`, failing with `what` after `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The rows of the last statement of `sql` run through `client`, as text lines `a|b|c` (Arrow's
/// rendering of each cell, empty for NULL), in the order the statement returned them.
pub async fn sql_lines(
    client: &weir_client::Client,
    sql: &str,
) -> Result<Vec<String>, weir_client::ClientError> {
    let mut stream = client.sql(sql).await?;
    let mut batches = Vec::new();
    let mut last = 0;
    while let Some(e) = stream.next().await? {
        if let weir_client::SqlEvent::Batch { statement, batch } = e {
            if statement != last {
                batches.clear();
                last = statement;
            }
            batches.push(batch);
        }
    }
    if batches.iter().all(|b| b.num_rows() == 0) {
        return Ok(Vec::new());
    }
    let text = datafusion::arrow::util::pretty::pretty_format_batches(&batches)
        .map_err(|e| weir_client::ClientError::InvalidArgument(e.to_string()))?
        .to_string();
    Ok(text
        .lines()
        .skip(3) // border, header, border
        .filter(|l| !l.starts_with('+'))
        .map(|l| {
            l.trim()
                .trim_matches('|')
                .split('|')
                .map(str::trim)
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect())
}

/// A log client of `addr`.
pub async fn log_client(addr: &str) -> LogClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_lazy();
    LogClient::new(ch)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// A cluster client of `addr`.
pub async fn cluster_client(addr: &str) -> ClusterClient<tonic::transport::Channel> {
    let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid address")
        .connect_lazy();
    ClusterClient::new(ch)
}

/// Members the cluster reports (asked through `addr`) for which `pick` holds; 0 when it does
/// not answer.
async fn count_members(addr: &str, pick: impl Fn(&weir_proto::v1::Member) -> bool) -> usize {
    match cluster_client(addr).await.status(StatusRequest {}).await {
        Ok(r) => r.into_inner().members.iter().filter(|m| pick(m)).count(),
        Err(_) => 0,
    }
}

/// Number of members the cluster reports as up, asked through `addr`.
pub async fn members_up(addr: &str) -> usize {
    count_members(addr, |m| m.state == "up").await
}

/// How many members are voters of the metadata group, as `addr` reports: until three are, a
/// three-node cluster cannot lose its first node (the others joined as learners).
pub async fn metadata_voters(addr: &str) -> usize {
    count_members(addr, |m| m.metadata_role == "voter").await
}

/// The id of the member listening on `addr` (ids follow join order, so tests look them up).
pub async fn node_id_of(client: &weir_client::Client, addr: &str) -> u64 {
    client
        .cluster_status()
        .await
        .expect("cluster status")
        .members
        .iter()
        .find(|m| m.addr == addr)
        .expect("the node is a member")
        .id
}

/// Sends one HTTP/1.1 request to `addr` and returns the status code and body.
pub async fn http(
    addr: &str,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("HTTP connect");
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.expect("HTTP write");
    s.write_all(body).await.expect("HTTP write");
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.expect("HTTP read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("HTTP status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The body of `GET path` on `addr`, or `None` while the server cannot be reached (a node that
/// is still starting).
pub async fn try_http_get(addr: &str, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(head.as_bytes()).await.ok()?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.ok()?;
    let text = String::from_utf8_lossy(&out).to_string();
    text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// The value of a metric in Prometheus text (`name` may include labels, as written), 0 when absent.
pub fn metric(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// The metrics of the node whose HTTP address is `http`, as of a tick of its heartbeat loop after
/// this call (gauges such as replication lag and Raft log indexes are refreshed once a second):
/// waits for `weir_node_heartbeats_total` to move.
pub async fn fresh_metrics(http: &str, timeout: Duration) -> String {
    let first = wait_until("metrics", timeout, || try_http_get(http, "/metrics")).await;
    let seen = metric(&first, "weir_node_heartbeats_total");
    wait_until("a fresh heartbeat tick", timeout, || async move {
        let m = try_http_get(http, "/metrics").await?;
        (metric(&m, "weir_node_heartbeats_total") > seen).then_some(m)
    })
    .await
}

/// Logs to the test output, filtered by `WEIR_LOG` (default: warnings).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Starts one node on free loopback ports in a new temporary dir, joining `join` if given, with
/// `configure` applied to its configuration last.
async fn start_node(
    join: Option<String>,
    configure: &dyn Fn(&mut NodeConfig),
) -> (RunningNode, TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = NodeConfig::new(dir.path());
    cfg.listen = "127.0.0.1:0".into();
    cfg.http = "127.0.0.1:0".into();
    cfg.pg = Some("127.0.0.1:0".into());
    cfg.kafka = Some("127.0.0.1:0".into());
    cfg.join = join;
    configure(&mut cfg);
    let node = weir_node::start(cfg).await.expect("node starts");
    (node, dir)
}

/// Several nodes running inside the test process.
pub struct InProcessCluster {
    /// The running nodes, in start order.
    pub nodes: Vec<RunningNode>,
    _dirs: Vec<TempDir>,
}

impl InProcessCluster {
    /// Starts `n` nodes: the first bootstraps, the others join it; returns once all are up.
    pub async fn start(n: usize) -> InProcessCluster {
        Self::start_with(n, |_| {}).await
    }

    /// Like [`InProcessCluster::start`], with `configure` applied to every node's configuration.
    pub async fn start_with(n: usize, configure: impl Fn(&mut NodeConfig)) -> InProcessCluster {
        init_tracing();
        let mut nodes: Vec<RunningNode> = Vec::new();
        let mut dirs = Vec::new();
        for i in 0..n {
            let join = (i > 0).then(|| nodes[0].grpc_addr.to_string());
            let (node, dir) = start_node(join, &configure).await;
            nodes.push(node);
            dirs.push(dir);
        }
        let first = nodes[0].grpc_addr.to_string();
        wait_until("all members up", Duration::from_secs(30), || {
            let first = first.clone();
            async move { (members_up(&first).await == n).then_some(()) }
        })
        .await;
        InProcessCluster { nodes, _dirs: dirs }
    }

    /// gRPC address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        self.nodes[i].grpc_addr.to_string()
    }

    /// Starts one more node that joins the first; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let (node, dir) = start_node(Some(self.addr(0)), &|_| {}).await;
        self.nodes.push(node);
        self._dirs.push(dir);
        self.nodes.len() - 1
    }

    /// Stops every node.
    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
    }
}

/// Runs `psql` against the Postgres port `port` of 127.0.0.1 with `args`, returning its stdout
/// and what it printed on stderr (notices) when it succeeded, its stderr when it failed.
pub async fn psql_with_notices(port: u16, args: &[&str]) -> Result<(String, String), String> {
    let mut cmd = std::process::Command::new("psql");
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "weir",
        "-X",
        "-v",
        "ON_ERROR_STOP=1",
    ])
    .args(args)
    .env("PGCONNECT_TIMEOUT", "10");
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("psql task")
        .expect("psql runs (postgresql-client is installed by `make deps`)");
    if out.status.success() {
        Ok((
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        ))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

/// The Python that has kafka-python and confluent-kafka (`make deps` puts them in a virtualenv
/// under `~/.cache/weir/py`; `WEIR_PYTHON` names another).
pub fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("WEIR_PYTHON") {
        return std::path::PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache")))
        .expect("HOME or XDG_CACHE_HOME is set");
    let p = cache.join("weir/py/bin/python");
    assert!(
        p.exists(),
        "{} is missing: `make deps` installs the Kafka clients the tests use",
        p.display()
    );
    p
}
