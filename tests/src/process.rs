//! Clusters of real `weir-node` processes, for tests that kill nodes with SIGKILL.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;

use tempfile::TempDir;

/// A free port on 127.0.0.1 for a node to listen on, checked by binding it once. Drawn below the
/// range the OS hands out to outgoing connections (32768 and up on Linux): a port the OS picked
/// for us could be taken by any client's connection before the node binds it. A port is handed
/// out at most once per test process: the tests of one binary run side by side, and a node that
/// was killed leaves its ports unbound until it restarts on them, when another cluster must not
/// have taken them.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = rand::random_range(20_000..32_000);
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.insert(port);
            return port;
        }
    }
    panic!("no free port in 20000..32000 on 127.0.0.1")
}

/// The log filter of the nodes a test starts: `WEIR_NODE_LOG` when set (to see more of a failing
/// run), else informational lines with openraft's warnings.
fn node_log_filter() -> String {
    std::env::var("WEIR_NODE_LOG").unwrap_or_else(|_| "info,openraft=warn".to_string())
}

/// Path of a workspace binary, next to the test executable's directory (`target/<profile>/`).
pub fn binary(name: &str) -> PathBuf {
    if let Ok(p) = std::env::var(format!(
        "WEIR_{}_BIN",
        name.to_uppercase().replace('-', "_")
    )) {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target directory");
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace` first",
        p.display()
    );
    p
}

/// One node process and what it needs to restart.
pub struct NodeProcess {
    /// Node data directory.
    pub data_dir: PathBuf,
    /// gRPC address.
    pub addr: String,
    /// HTTP address.
    pub http: String,
    /// Postgres protocol address.
    pub pg: String,
    /// Kafka protocol address.
    pub kafka: String,
    join: Option<String>,
    child: Option<Child>,
    log: PathBuf,
}

impl NodeProcess {
    fn spawn(&mut self, extra: &[&str], envs: &[(String, String)]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("node log file");
        let mut cmd = Command::new(binary("weir-node"));
        cmd.arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(&self.addr)
            .arg("--http")
            .arg(&self.http)
            .arg("--pg")
            .arg(&self.pg)
            .arg("--kafka")
            .arg(&self.kafka)
            .args(extra)
            .env("WEIR_LOG", node_log_filter())
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log);
        if let Some(j) = &self.join {
            cmd.arg("--join").arg(j);
        }
        self.child = Some(cmd.spawn().expect("weir-node starts"));
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.id().to_string())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "kill -{sig} {} failed", c.id());
        }
    }
}

/// Several `weir-node` processes on loopback ports, each with its own temporary data dir.
pub struct ProcessCluster {
    /// The nodes, in start order (node `i` has id `i + 1`).
    pub nodes: Vec<NodeProcess>,
    extra: Vec<String>,
    envs: Vec<(String, String)>,
    dir: TempDir,
}

impl ProcessCluster {
    /// Starts `n` nodes (the first bootstraps, the others join it), passing `extra` flags to all.
    pub fn start(n: usize, extra: &[&str]) -> ProcessCluster {
        ProcessCluster::start_with_env(n, extra, &[])
    }

    /// Like [`ProcessCluster::start`], with environment variables for every node (`WEIR_*`
    /// settings that have no flag).
    pub fn start_with_env(n: usize, extra: &[&str], envs: &[(&str, &str)]) -> ProcessCluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut c = ProcessCluster {
            nodes: Vec::new(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            envs: envs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir,
        };
        for _ in 0..n {
            c.add_node();
        }
        c
    }

    /// Starts one more node that joins the first.
    pub fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let join = self.nodes.first().map(|n| n.addr.clone());
        let mut node = NodeProcess {
            data_dir: self.dir.path().join(format!("node{i}")),
            addr: format!("127.0.0.1:{}", free_port()),
            http: format!("127.0.0.1:{}", free_port()),
            pg: format!("127.0.0.1:{}", free_port()),
            kafka: format!("127.0.0.1:{}", free_port()),
            join,
            child: None,
            log: self.dir.path().join(format!("node{i}.log")),
        };
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        node.spawn(&extra, &self.envs);
        self.nodes.push(node);
        i
    }

    /// gRPC address of node `i`.
    pub fn addr(&self, i: usize) -> String {
        self.nodes[i].addr.clone()
    }

    /// Kills node `i` with SIGKILL (no chance to flush or say goodbye).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts node `i` on its data dir and addresses.
    pub fn restart(&mut self, i: usize) {
        self.restart_with_env(i, &[]);
    }

    /// Restarts node `i` with these environment variables added to the cluster's.
    pub fn restart_with_env(&mut self, i: usize, envs: &[(&str, &str)]) {
        assert!(!self.nodes[i].is_running(), "node {i} is still running");
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        let mut all = self.envs.clone();
        all.extend(envs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.nodes[i].spawn(&extra, &all);
    }

    /// Freezes node `i` with SIGSTOP: to the others it is partitioned away (its connections stay
    /// open but nothing answers), until [`ProcessCluster::resume`].
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].signal("STOP");
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].signal("CONT");
    }

    /// Waits (up to `timeout`) until node 0 reports `n` members up, and at least as many voters
    /// of the metadata group (three at most): nodes join it as learners, and until they vote a
    /// test that kills the first node would kill the cluster's metadata with it.
    pub async fn wait_members_up(&self, n: usize, timeout: std::time::Duration) {
        let addr = self.addr(0);
        crate::wait_until(&format!("{n} members up"), timeout, || {
            let addr = addr.clone();
            async move {
                (crate::members_up(&addr).await == n
                    && crate::metadata_voters(&addr).await >= n.min(3))
                .then_some(())
            }
        })
        .await;
    }

    /// What node `i` has logged so far (across restarts), without terminal colour codes.
    pub fn log_text(&self, i: usize) -> String {
        let raw = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let mut out = String::with_capacity(raw.len());
        let mut chars = raw.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                // `ESC [ … m`: skip through the final letter.
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    }

    /// The directory holding the nodes' data dirs and logs (files a test writes can go here).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
        // The data dirs go with the temporary directory; a failing test keeps the nodes' logs.
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!(
                "weir-failed-{}-{}",
                std::process::id(),
                self.dir.path().display().to_string().replace('/', "_")
            ));
            if std::fs::create_dir_all(&keep).is_ok() {
                for n in &self.nodes {
                    if let Some(name) = n.log.file_name() {
                        let _ = std::fs::copy(&n.log, keep.join(name));
                    }
                }
                eprintln!("node logs kept in {}", keep.display());
            }
        }
    }
}
