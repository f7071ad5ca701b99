//! Whole Weir nodes in one deterministic simulation: turmoil's network and clock, in-memory disks
//! that lose unsynced writes when their machine crashes, and Raft's randomness drawn from the
//! seed. Every node runs the code a `weir-node` process runs ([`weir_node::start_with`]); only the
//! network, the disk and the clock underneath are simulated. Everything runs on the test's one
//! thread, so a run follows from its seed and a failing seed replays exactly.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;
use tonic::transport::Uri;
use weir_client::{ClientConfig, Connector};
use weir_node::cluster::NodeContext;
use weir_node::peers::{channel_maker, Peers};
use weir_node::{NodeConfig, NodeEnv};
use weir_storage::engine::memory::MemoryDisk;
use weir_storage::Engine;

/// The gRPC port every simulated node listens on.
pub const PORT: u16 = 7400;

/// The address of simulated host `name`, as nodes advertise it and clients dial it.
pub fn addr(name: &str) -> String {
    format!("{name}:{PORT}")
}

/// An accepted turmoil connection, as tonic's server wants it.
pub struct SimStream(pub turmoil::net::TcpStream);

impl Connected for SimStream {
    type ConnectInfo = ();

    fn connect_info(&self) {}
}

impl AsyncRead for SimStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for SimStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Opens a simulated TCP connection to `http://HOST:PORT`.
pub async fn connect(uri: Uri) -> io::Result<turmoil::net::TcpStream> {
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    let port = uri.port_u16().unwrap_or(PORT);
    turmoil::net::TcpStream::connect((host, port)).await
}

/// Simulated connections arriving on `port` of the current host, as a stream for tonic's server.
pub async fn incoming(
    port: u16,
) -> io::Result<impl futures::Stream<Item = io::Result<SimStream>> + Send + 'static> {
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", port)).await?;
    Ok(futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(s, _)| SimStream(s));
        Some((accepted, listener))
    }))
}

/// Channels to nodes over the simulated network.
pub fn peers() -> Peers {
    Peers::with_connector(tower::service_fn(connect))
}

/// A client configuration whose calls cross the simulated network.
pub fn client_config() -> ClientConfig {
    ClientConfig {
        connector: Some(Connector(channel_maker(tower::service_fn(connect)))),
        ..ClientConfig::default()
    }
}

/// The nodes running now, by host name, for checks that look inside them.
#[derive(Clone, Default)]
pub struct Running(Arc<Mutex<BTreeMap<String, Arc<NodeContext>>>>);

impl Running {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<NodeContext>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The running nodes, by host name.
    pub fn all(&self) -> BTreeMap<String, Arc<NodeContext>> {
        self.lock().clone()
    }

    /// Forgets a node whose machine crashed.
    pub fn remove(&self, name: &str) {
        self.lock().remove(name);
    }

    fn insert(&self, name: &str, ctx: Arc<NodeContext>) {
        self.lock().insert(name.to_string(), ctx);
    }
}

/// A simulated machine: a disk that outlives crashes, a directory for snapshot files, and how
/// its node is configured.
#[derive(Clone)]
pub struct Machine {
    /// Host name (`n1`, ...).
    pub name: String,
    /// Its disk.
    pub disk: MemoryDisk,
    /// Where its snapshot files go (files are treated as synced once written).
    pub dir: PathBuf,
    /// A node to join through; None bootstraps a cluster on an empty disk.
    pub join: Option<String>,
    /// Seconds of silence after which the cluster re-creates this node's replicas elsewhere.
    pub down_timeout: Duration,
}

impl Machine {
    /// A machine named `name` with a fresh disk whose crashes are drawn from `seed`.
    pub fn new(name: &str, seed: u64, root: &Path, join: Option<String>) -> Machine {
        Machine {
            name: name.to_string(),
            disk: MemoryDisk::new(seed).with_fsync_up_to(Duration::from_millis(3)),
            dir: root.join(name),
            join,
            down_timeout: Duration::from_secs(10),
        }
    }

    /// Adds the machine to `sim`: each time it starts (and restarts after a crash) it opens its
    /// disk and runs a node until the simulation ends.
    pub fn add_to(&self, sim: &mut turmoil::Sim<'_>, running: &Running) {
        let (machine, running) = (self.clone(), running.clone());
        sim.host(self.name.as_str(), move || {
            let (machine, running) = (machine.clone(), running.clone());
            async move { machine.run(running).await }
        });
    }

    /// The machine crashes: its node stops and its disk loses what was not synced.
    pub fn crash(&self, sim: &mut turmoil::Sim<'_>, running: &Running) {
        sim.crash(self.name.as_str());
        running.remove(&self.name);
        self.disk.crash();
    }

    async fn run(self, running: Running) -> turmoil::Result {
        let mut cfg = NodeConfig::new(&self.dir);
        cfg.advertise = Some(addr(&self.name));
        cfg.join = self.join.clone();
        cfg.down_timeout = self.down_timeout;
        let env = NodeEnv {
            engine: Engine::in_memory(&self.disk),
            peers: peers(),
            grpc_addr: std::net::SocketAddr::from(([0, 0, 0, 0], PORT)),
            http: None,
            pg: None,
            kafka: None,
        };
        let mut node = weir_node::start_with(cfg, env, incoming(PORT).await?)
            .await
            .map_err(|e| -> Box<dyn std::error::Error> { e.into() })?;
        running.insert(&self.name, node.ctx.clone());
        node.wait().await;
        Ok(())
    }
}
