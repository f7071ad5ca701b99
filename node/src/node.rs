//! Starting and stopping a node: identity, bootstrap or join, servers and background loops.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use weir_proto::v1::cluster_client::ClusterClient;
use weir_proto::v1::cluster_server::ClusterServer;
use weir_proto::v1::jobs_server::JobsServer;
use weir_proto::v1::kv_server::KvServer;
use weir_proto::v1::log_server::LogServer;
use weir_proto::v1::raft_transport_server::RaftTransportServer;
use weir_proto::v1::sql_server::SqlServer;
use weir_proto::v1::JoinRequest;
use weir_storage::catalog::{MetaCommand, NodeInfo};
use weir_storage::engine::{group_key, CF_META};
use weir_storage::{decode, encode, Engine};

use crate::cluster::{self, ClusterService, NodeContext};
use crate::compute::service::JobsService;
use crate::groups::{GroupManager, GroupManagerConfig};
use crate::http::{self, HttpState};
use crate::liveness::Liveness;
use crate::log::ingest::IngestLanes;
use crate::log::retention;
use crate::log::service::LogService;
use crate::peers::Peers;
use crate::placement;
use crate::region::service::KvService;
use crate::region::split;
use crate::sql::access::NodeCluster;
use crate::sql::service::SqlService;

/// Largest gRPC message a node accepts (a produce batch plus framing).
const MAX_MESSAGE: usize = 64 << 20;
/// Reserved group id under which the node keeps its own identity.
const IDENTITY_GROUP: u64 = u64::MAX;

/// How a node is started.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where RocksDB and snapshots live.
    pub data_dir: PathBuf,
    /// gRPC listen address (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// HTTP listen address.
    pub http: String,
    /// Address other nodes and clients use for gRPC; defaults to the bound listen address.
    pub advertise: Option<String>,
    /// Any member of the cluster to join; none bootstraps a new cluster on an empty data dir.
    pub join: Option<String>,
    /// A node silent this long has its replicas re-created on other nodes.
    pub down_timeout: Duration,
    /// How often placement runs on the metadata leader.
    pub placement_interval: Duration,
    /// Whether this node hands groups it leads beyond its share to voters leading fewer.
    pub leader_balance: bool,
    /// How often partition leaders apply retention.
    pub retention_interval: Duration,
    /// How often region leaders check whether their region should split.
    pub split_check_interval: Duration,
    /// Most memory SQL queries on this node may hold at once (bytes; 0 is unbounded); operators
    /// that can spill do so under the data dir beyond it.
    pub sql_memory: usize,
    /// Longest a SQL statement may run before it is stopped (none: no limit).
    pub sql_timeout: Option<Duration>,
    /// Most memory the columnar images of quiet regions may take for scans (bytes; 0 keeps
    /// none).
    pub scan_cache: usize,
    /// Postgres wire protocol listen address (`127.0.0.1:0` picks a free port); none serves none.
    pub pg: Option<String>,
    /// Kafka protocol listen address (`127.0.0.1:0` picks a free port); none serves none.
    pub kafka: Option<String>,
    /// Address Kafka clients reach this node on (default: the bound Kafka address).
    pub advertise_kafka: Option<String>,
}

impl NodeConfig {
    /// Defaults of the `weir-node` flags with the given data dir.
    pub fn new(data_dir: impl Into<PathBuf>) -> NodeConfig {
        NodeConfig {
            data_dir: data_dir.into(),
            listen: "127.0.0.1:7400".into(),
            http: "127.0.0.1:7480".into(),
            advertise: None,
            join: None,
            down_timeout: Duration::from_secs(30),
            placement_interval: Duration::from_secs(1),
            leader_balance: true,
            retention_interval: Duration::from_secs(5),
            split_check_interval: Duration::from_secs(1),
            sql_memory: 2 << 30,
            sql_timeout: None,
            scan_cache: 1 << 30,
            pg: None,
            kafka: None,
            advertise_kafka: None,
        }
    }
}

/// What the node persists about itself.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Identity {
    node_id: u64,
}

/// A started node.
pub struct RunningNode {
    /// This node's id.
    pub node_id: u64,
    /// Bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// Bound HTTP address (None when the node serves no HTTP).
    pub http_addr: Option<SocketAddr>,
    /// Bound Postgres protocol address (None when the node serves none).
    pub pg_addr: Option<SocketAddr>,
    /// Bound Kafka protocol address (None when the node serves none).
    pub kafka_addr: Option<SocketAddr>,
    /// Shared context (for in-process tests and tools).
    pub ctx: Arc<NodeContext>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl RunningNode {
    /// Stops the servers, the loops and every Raft group.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        for h in self.ctx.registry.all().values() {
            let _ = h.raft.shutdown().await;
        }
    }

    /// Waits until the servers stop (they stop on [`RunningNode::shutdown`] or on error).
    pub async fn wait(&mut self) {
        let mut rx = self.stop.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }
}

fn read_identity(engine: &Engine) -> anyhow::Result<Option<Identity>> {
    Ok(
        match engine.get(CF_META, &group_key(IDENTITY_GROUP, b"node"))? {
            Some(v) => Some(decode(&v)?),
            None => None,
        },
    )
}

fn write_identity(engine: &Engine, id: &Identity) -> anyhow::Result<()> {
    let mut b = weir_storage::engine::WriteBatch::default();
    b.put(CF_META, group_key(IDENTITY_GROUP, b"node"), encode(id)?);
    engine.write_sync(b)?;
    Ok(())
}

/// Asks `seed` (any member) for a node id, retrying until the cluster answers or a minute passes.
async fn join(
    peers: &Peers,
    seed: &str,
    advertise: &str,
    http: &str,
    kafka: &str,
) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_err = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let mut c = ClusterClient::new(peers.channel(seed)?);
            let r = c
                .join(JoinRequest {
                    advertise_addr: advertise.to_string(),
                    http_addr: http.to_string(),
                    node_id: 0,
                    kafka_addr: kafka.to_string(),
                })
                .await?;
            anyhow::Ok(r.into_inner().node_id)
        };
        match attempt.await {
            Ok(id) => return Ok(id),
            Err(e) => {
                last_err = e.to_string();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    anyhow::bail!("could not join the cluster through {seed}: {last_err}")
}

/// Starts a node: opens its storage, bootstraps or joins, and serves gRPC and HTTP.
pub async fn start(cfg: NodeConfig) -> anyhow::Result<RunningNode> {
    let engine = Engine::open(&cfg.data_dir)?;
    let grpc_listener = TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", cfg.listen))?;
    let http_listener = TcpListener::bind(&cfg.http)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {} (HTTP): {e}", cfg.http))?;
    let pg_listener = match &cfg.pg {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} for Postgres clients: {e} (set --pg)")
        })?),
        None => None,
    };
    let kafka_listener = match &cfg.kafka {
        Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} for Kafka clients: {e} (set --kafka)")
        })?),
        None => None,
    };
    let grpc_addr = grpc_listener.local_addr()?;
    // The builder's TCP options only apply to listeners tonic binds itself; without NODELAY on
    // accepted sockets, small answers wait out the client's delayed ACK (about 40 ms).
    let incoming =
        tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
    let env = NodeEnv {
        engine,
        peers: Peers::default(),
        grpc_addr,
        http: Some(http_listener),
        pg: pg_listener,
        kafka: kafka_listener,
    };
    start_with(cfg, env, incoming).await
}

/// What a node runs on besides its configuration: its storage, how it reaches other nodes, and
/// where it serves. [`start`] builds it from RocksDB and the OS's TCP; a simulation builds it
/// from an in-memory disk and a simulated network.
pub struct NodeEnv {
    /// The storage engine, opened.
    pub engine: Engine,
    /// Connections to other nodes.
    pub peers: Peers,
    /// The address gRPC connections arrive on.
    pub grpc_addr: SocketAddr,
    /// Where to serve HTTP; None serves none.
    pub http: Option<TcpListener>,
    /// Where to serve the Postgres protocol; None serves none.
    pub pg: Option<TcpListener>,
    /// Where to serve the Kafka protocol; None serves none.
    pub kafka: Option<TcpListener>,
}

/// Starts a node on `env`, serving gRPC on the connections `incoming` yields.
pub async fn start_with<I, IO, IE>(
    cfg: NodeConfig,
    env: NodeEnv,
    incoming: I,
) -> anyhow::Result<RunningNode>
where
    I: futures::Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    crate::metrics::install();
    let NodeEnv {
        engine,
        peers,
        grpc_addr,
        http: http_listener,
        pg: pg_listener,
        kafka: kafka_listener,
    } = env;
    let http_addr = match &http_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let pg_addr = match &pg_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let advertise = cfg
        .advertise
        .clone()
        .unwrap_or_else(|| grpc_addr.to_string());
    let http_advertised = http_addr.map(|a| a.to_string()).unwrap_or_default();
    let kafka_addr = match &kafka_listener {
        Some(l) => Some(l.local_addr()?),
        None => None,
    };
    let kafka_advertised = match (&cfg.advertise_kafka, kafka_addr) {
        (Some(a), _) => a.clone(),
        (None, Some(a)) => a.to_string(),
        (None, None) => String::new(),
    };

    let (identity, bootstrap) = match read_identity(&engine)? {
        Some(id) => (id, false),
        None => match &cfg.join {
            Some(seed) => {
                let node_id = join(
                    &peers,
                    seed,
                    &advertise,
                    &http_advertised,
                    &kafka_advertised,
                )
                .await?;
                (Identity { node_id }, false)
            }
            None => (Identity { node_id: 1 }, true),
        },
    };
    write_identity(&engine, &identity)?;
    let node_id = identity.node_id;
    tracing::info!(node = node_id, %grpc_addr, http = %http_advertised, bootstrap, "starting node");

    let liveness = Liveness::new(cfg.down_timeout);
    let registry = GroupManager::start(GroupManagerConfig {
        node_id,
        advertise: advertise.clone(),
        engine: engine.clone(),
        peers: peers.clone(),
        snapshot_root: cfg.data_dir.join("snapshots"),
        liveness: liveness.clone(),
        bootstrap,
    })
    .await?;
    let ctx = Arc::new(NodeContext {
        node_id,
        registry,
        peers,
        liveness,
        engine,
        tasks: weir_sql::job::TaskBoard::default(),
    });

    let (stop, stop_rx) = watch::channel(false);
    let log = Arc::new(LogService::new((*ctx).clone()));
    let node_cluster = Arc::new(NodeCluster::new(
        ctx.registry.clone(),
        ctx.engine.clone(),
        ctx.peers.clone(),
        advertise.clone(),
    ));
    let sql_cluster: Arc<dyn weir_sql::Cluster> = node_cluster.clone();
    let engine_config = weir_sql::EngineConfig {
        memory_limit: cfg.sql_memory,
        // A node on a simulated disk has no data dir on the real file system.
        spill_dir: cfg.data_dir.is_dir().then(|| cfg.data_dir.join("spill")),
        target_partitions: 0,
        statement_timeout: cfg.sql_timeout,
    };
    let sql = weir_sql::Engine::new(sql_cluster.clone(), &engine_config)?;
    let mut tasks = Vec::new();

    let grpc = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(8 << 20)
        .initial_connection_window_size(32 << 20)
        .add_service(
            RaftTransportServer::new(crate::raft::service::RaftService::new(
                node_id,
                ctx.registry.clone(),
            ))
            .max_decoding_message_size(256 << 20)
            .max_encoding_message_size(256 << 20),
        )
        .add_service(ClusterServer::new(ClusterService::new((*ctx).clone())))
        .add_service(
            LogServer::from_arc(log.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            KvServer::new(KvService::new(
                (*ctx).clone(),
                crate::region::scan_cache::ScanCache::new(cfg.scan_cache),
            ))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(JobsServer::new(JobsService::new((*ctx).clone())))
        .add_service(sql.worker().into_worker_server())
        .add_service(
            SqlServer::new(SqlService::new(sql.clone()))
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        );
    let mut rx = stop_rx.clone();
    tasks.push(tokio::spawn(async move {
        let stopped = async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        if let Err(e) = grpc.serve_with_incoming_shutdown(incoming, stopped).await {
            tracing::error!(error = %e, "gRPC server stopped");
        }
    }));

    if let Some(http_listener) = http_listener {
        let app = http::router(HttpState {
            ctx: ctx.clone(),
            lanes: IngestLanes::new(log.clone()),
            next_partition: Arc::new(AtomicU32::new(0)),
        });
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(http_listener, app)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "HTTP server stopped");
            }
        }));
    }

    if let Some(kafka_listener) = kafka_listener {
        let state = crate::kafka::KafkaState {
            ctx: ctx.clone(),
            log: log.clone(),
            groups: crate::kafka::groups::Coordinator::start(),
        };
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            crate::kafka::serve(state, kafka_listener, stopped).await;
        }));
    }

    if let Some(pg_listener) = pg_listener {
        let mut rx = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let stopped = async move {
                let _ = rx.wait_for(|s| *s).await;
            };
            if let Err(e) = weir_sql::pg::serve(sql, pg_listener, stopped).await {
                tracing::error!(error = %e, "Postgres server stopped");
            }
        }));
    }

    tasks.push(tokio::spawn(cluster::heartbeat_loop(
        ctx.clone(),
        cfg.join.iter().cloned().collect(),
    )));
    tasks.push(tokio::spawn(crate::raft::failover::failover_loop(
        node_id,
        ctx.registry.clone(),
        ctx.peers.clone(),
    )));
    if cfg.leader_balance {
        tasks.push(tokio::spawn(crate::raft::balance::balance_loop(
            node_id,
            ctx.registry.clone(),
        )));
    }
    tasks.push(tokio::spawn(placement::placement_loop(
        ctx.clone(),
        cfg.placement_interval,
    )));
    tasks.push(tokio::spawn(retention::retention_loop(
        ctx.clone(),
        cfg.retention_interval,
    )));
    tasks.push(tokio::spawn(split::split_loop(
        ctx.clone(),
        cfg.split_check_interval,
    )));
    tasks.push(tokio::spawn(crate::compute::pool::compute_loop(
        node_id,
        ctx.registry.clone(),
        ctx.tasks.clone(),
        sql_cluster,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::compute::scheduler::schedule_loop(
        node_id,
        ctx.registry.clone(),
        node_cluster,
        engine_config,
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(register_self(
        ctx.clone(),
        NodeInfo {
            id: node_id,
            addr: advertise,
            http_addr: http_advertised,
            kafka_addr: kafka_advertised,
        },
    )));

    Ok(RunningNode {
        node_id,
        grpc_addr,
        http_addr,
        pg_addr,
        kafka_addr,
        ctx,
        stop,
        tasks,
    })
}

/// Makes sure the catalog knows this node as it is now: the first node writes the cluster's first
/// catalog entry; a node restarted on another address updates it.
async fn register_self(ctx: Arc<NodeContext>, me: NodeInfo) {
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let Ok(catalog) = ctx.registry.catalog() else {
            continue;
        };
        let cmd = match catalog.nodes.get(&me.id) {
            Some(known) if *known == me => return,
            Some(_) => MetaCommand::UpdateNode { node: me.clone() },
            None if catalog.nodes.is_empty() && ctx.is_metadata_leader() => {
                MetaCommand::Bootstrap { node: me.clone() }
            }
            None => continue,
        };
        if ctx.is_metadata_leader() {
            if let Err(e) = ctx.propose_meta(cmd).await {
                tracing::warn!(error = %e, "registering this node failed");
            }
        } else if let MetaCommand::UpdateNode { .. } = cmd {
            // Only the leader writes the catalog: tell it our new addresses.
            if let Ok(mut c) = ctx.cluster_client_of_leader() {
                let r = c
                    .join(JoinRequest {
                        advertise_addr: me.addr.clone(),
                        http_addr: me.http_addr.clone(),
                        node_id: me.id,
                        kafka_addr: me.kafka_addr.clone(),
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(error = %e, "updating this node's address failed");
                }
            }
        }
    }
}
