//! `weir-node`: runs one Weir node.
//!
//! With an empty data dir and no `--join` it bootstraps a one-node cluster; with `--join` it joins
//! the cluster of that member; on a data dir it has used before it comes back as itself.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: weir_node::memory::NodeAllocator = weir_node::memory::NodeAllocator;

/// Runs a Weir node.
#[derive(Debug, Parser)]
#[command(name = "weir-node", version, about = "Runs a Weir node")]
struct Args {
    /// Where the node keeps its data.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = "./weir-data")]
    data_dir: PathBuf,
    /// gRPC address to listen on.
    #[arg(long, env = "WEIR_LISTEN", default_value = "127.0.0.1:7400")]
    listen: String,
    /// HTTP address to listen on (ingest, health, metrics).
    #[arg(long, env = "WEIR_HTTP", default_value = "127.0.0.1:7480")]
    http: String,
    /// gRPC address other nodes and clients reach this node on (default: the listen address).
    #[arg(long, env = "WEIR_ADVERTISE")]
    advertise: Option<String>,
    /// Any member of an existing cluster to join (only used on an empty data dir).
    #[arg(long, env = "WEIR_JOIN")]
    join: Option<String>,
    /// Seconds a node may be silent before its replicas are re-created elsewhere.
    #[arg(long, env = "WEIR_DOWN_TIMEOUT_SECS", default_value_t = 30)]
    down_timeout_secs: u64,
    /// Most memory SQL queries on this node may hold at once (`512MiB`, `4GiB`, bytes; 0 is
    /// unbounded); sorts, joins and aggregations spill to the data dir beyond it.
    #[arg(long, env = "WEIR_SQL_MEMORY", default_value = "2GiB", value_parser = parse_size)]
    sql_memory: usize,
    /// Seconds a SQL statement may run before it is stopped with an error (0: no limit); a
    /// client can set its own (`SET statement_timeout`, `weir sql --timeout`).
    #[arg(long, env = "WEIR_SQL_TIMEOUT_SECS", default_value_t = 0)]
    sql_timeout_secs: u64,
    /// Most memory kept for columnar images of tables' regions that are not being written, which
    /// repeated scans (analytic queries) read instead of the stored rows (`1GiB`; 0 keeps none).
    #[arg(long, env = "WEIR_SCAN_CACHE", default_value = "1GiB", value_parser = parse_size)]
    scan_cache: usize,
    /// Hand groups this node leads beyond its share to the voters leading fewest (`false`: keep
    /// leaders where elections put them).
    #[arg(long, env = "WEIR_LEADER_BALANCE", default_value_t = true, action = clap::ArgAction::Set)]
    leader_balance: bool,
    /// Address to serve the Postgres wire protocol on (psql, psycopg, dashboards); empty serves
    /// none.
    #[arg(long, env = "WEIR_PG", default_value = "127.0.0.1:7432")]
    pg: String,
    /// Address to serve the Kafka wire protocol on (Kafka producers, consumers and tools); empty
    /// serves none.
    #[arg(long, env = "WEIR_KAFKA", default_value = "127.0.0.1:9092")]
    kafka: String,
    /// Address Kafka clients reach this node on (default: the Kafka listen address).
    #[arg(long, env = "WEIR_ADVERTISE_KAFKA")]
    advertise_kafka: Option<String>,
}

/// A size in bytes, with an optional binary suffix (`KiB`, `MiB`, `GiB`; `K`, `M`, `G`).
fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: usize = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (write e.g. 512MiB or 4GiB)"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "'{other}' is not a size unit (use KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1usize << shift)
        .ok_or_else(|| format!("'{text}' is too large"))
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WEIR_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .init();
    let args = Args::parse();
    let mut cfg = weir_node::NodeConfig::new(args.data_dir);
    cfg.listen = args.listen;
    cfg.http = args.http;
    cfg.advertise = args.advertise;
    cfg.join = args.join;
    cfg.down_timeout = Duration::from_secs(args.down_timeout_secs);
    cfg.sql_memory = args.sql_memory;
    cfg.scan_cache = args.scan_cache;
    cfg.leader_balance = args.leader_balance;
    cfg.sql_timeout = Some(Duration::from_secs(args.sql_timeout_secs)).filter(|t| !t.is_zero());
    cfg.pg = Some(args.pg).filter(|a| !a.is_empty());
    cfg.kafka = Some(args.kafka).filter(|a| !a.is_empty());
    cfg.advertise_kafka = args.advertise_kafka;
    let mut node = match weir_node::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    println!(
        "weir-node {} listening on {} (gRPC), {} (HTTP), {} (Postgres) and {} (Kafka)",
        node.node_id,
        node.grpc_addr,
        node.http_addr
            .map_or_else(|| "nothing".to_string(), |a| a.to_string()),
        node.pg_addr
            .map_or_else(|| "nothing".to_string(), |a| a.to_string()),
        node.kafka_addr
            .map_or_else(|| "nothing".to_string(), |a| a.to_string())
    );
    tokio::select! {
        _ = node.wait() => {}
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("shutting down");
            node.shutdown().await;
        }
    }
}
