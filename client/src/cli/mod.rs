//! The `weir` command line: argument definitions and dispatch to one module per command group.
//!
//! - [`output`]: tables, JSON and CSV.
//! - [`cluster`]: `weir cluster status`.
//! - [`topic`]: `weir topic create | list | describe | delete`.
//! - [`produce`]: `weir produce`, stdin lines to records.
//! - [`consume`]: `weir consume`, records to stdout lines.
//! - [`table`]: `weir table create | list | describe | drop`.
//! - [`kv`]: `weir kv put | get | delete | scan`, rows by key.
//! - [`load`]: `weir load csv`, files into tables.
//! - [`bench`]: `weir bench produce | consume | kv`, throughput and latency.
//! - [`sql`]: `weir sql`, statements, files and an interactive shell.

pub mod bench;
pub mod cluster;
pub mod consume;
pub mod kv;
pub mod load;
pub mod output;
pub mod produce;
pub mod sql;
pub mod table;
#[cfg(test)]
mod test_values;
pub mod topic;

use std::time::Duration;

use anyhow::Result;
use clap::{Args, Parser, Subcommand, ValueEnum};
use weir_client::{Acks, Client, ClientConfig, StartFrom};

use output::Format;

/// Command-line tool for a Weir cluster.
#[derive(Debug, Parser)]
#[command(name = "weir", version, propagate_version = true)]
pub struct Cli {
    /// Any node of the cluster.
    #[arg(
        long,
        global = true,
        env = "WEIR_SERVER",
        default_value = "127.0.0.1:7400",
        value_name = "HOST:PORT"
    )]
    pub server: String,

    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = Format::Table)]
    pub format: Format,

    /// How long to keep retrying a request that fails for a transient reason (no leader yet, node
    /// down) before giving up.
    #[arg(
        long,
        global = true,
        env = "WEIR_RETRY_FOR_MS",
        default_value_t = 30_000,
        value_name = "MS"
    )]
    pub retry_for_ms: u64,

    #[command(subcommand)]
    pub command: Command,
}

/// The top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Cluster membership and health.
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(TopicCommand),
    /// Send stdin to a topic, one record per line.
    Produce(ProduceArgs),
    /// Print a topic's records to stdout, one value per line.
    ///
    /// Records of a partition come in offset order. With --format json each line is an object
    /// with partition, offset, timestamp_ms, key and value; with --format csv, a row of those.
    Consume(ConsumeArgs),
    /// Create, list, describe and drop tables.
    #[command(subcommand)]
    Table(TableCommand),
    /// Read and write rows of a table by key.
    #[command(subcommand)]
    Kv(KvCommand),
    /// Load a file into a table.
    #[command(subcommand)]
    Load(LoadCommand),
    /// Measure produce, consume or key/value throughput and latency.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run SQL: a statement, a file of statements, statements on stdin, or (with none of these,
    /// on a terminal) an interactive shell.
    Sql(SqlArgs),
    /// List, describe, stop, start and drop stream jobs (created with `CREATE JOB` in SQL).
    #[command(subcommand)]
    Job(JobCommand),
    /// List, pause, resume, run now and drop schedules (created with `CREATE SCHEDULE` in SQL),
    /// and show their runs.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

/// `weir schedule ...`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// List every schedule: its interval, dependencies, whether it is paused, its statement.
    List,
    /// Show the latest runs (of one schedule, or of all): tick, status, attempts, node, rows,
    /// error.
    Runs {
        /// Schedule name (all schedules when left out).
        name: Option<String>,
    },
    /// Skip a schedule's ticks until it is resumed.
    Pause {
        /// Schedule name.
        name: String,
    },
    /// Run a paused schedule's ticks again.
    Resume {
        /// Schedule name.
        name: String,
    },
    /// Run a schedule once now, outside its timetable.
    RunNow {
        /// Schedule name.
        name: String,
    },
    /// Drop a schedule (its run history stays).
    Drop {
        /// Schedule name.
        name: String,
    },
}

/// `weir job ...`.
#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// List every job: whether it runs, its source and sink, and the nodes of its tasks.
    List,
    /// Show a job's tasks: node, committed offset, end of the partition and lag.
    Describe {
        /// Job name.
        name: String,
    },
    /// Stop a job's tasks (it keeps its place).
    Stop {
        /// Job name.
        name: String,
    },
    /// Start a stopped job from where it stopped.
    Start {
        /// Job name.
        name: String,
    },
    /// Drop a job (what it wrote stays).
    Drop {
        /// Job name.
        name: String,
    },
}

/// Arguments of `weir sql`.
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The statement(s) to run, separated by ';'.
    pub statement: Option<String>,
    /// Run the statements of this file.
    #[arg(short, long, value_name = "PATH")]
    pub file: Option<std::path::PathBuf>,
    /// Stop a statement that runs longer than this (`500ms`, `30s`, `5m`; default: the node's
    /// `--sql-timeout-secs`).
    #[arg(long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<std::time::Duration>,
}

/// A statement timeout: a number with `ms`, `s`, `m` or `h` (seconds without a unit).
fn parse_timeout(text: &str) -> std::result::Result<std::time::Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (write e.g. 500ms, 30s or 5m)"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1_000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        other => {
            return Err(format!(
                "'{other}' is not a unit of time (use ms, s, m or h)"
            ))
        }
    };
    match ms {
        Some(0) => Err("a timeout must be longer than 0".into()),
        Some(ms) => Ok(std::time::Duration::from_millis(ms)),
        None => Err(format!("'{text}' is too long")),
    }
}

/// `weir table ...`.
#[derive(Debug, Subcommand)]
pub enum TableCommand {
    /// Create a table (it starts as one region and splits as it grows).
    Create(CreateTableArgs),
    /// List all tables.
    List,
    /// Show a table's columns and its regions: key ranges, leaders, sizes.
    Describe {
        /// Table name.
        name: String,
    },
    /// Drop a table and all its rows.
    Drop {
        /// Table name.
        name: String,
    },
}

/// Arguments of `weir table create`.
#[derive(Debug, Args)]
pub struct CreateTableArgs {
    /// Table name.
    pub name: String,
    /// Columns, e.g. 'id BIGINT, name VARCHAR NOT NULL, price DECIMAL(10,2), at TIMESTAMP'.
    #[arg(long)]
    pub schema: String,
    /// Primary-key column(s), comma-separated, in key order.
    #[arg(long)]
    pub primary_key: String,
    /// Replicas of each region (default 3, or the cluster size if smaller).
    #[arg(long, short = 'r', default_value_t = 0)]
    pub replicas: u32,
    /// A region larger than this many bytes splits (default 64 MiB).
    #[arg(long, default_value_t = 0, value_name = "BYTES")]
    pub split_bytes: u64,
    /// Start with a region boundary before this key (or key prefix); repeat for more regions.
    #[arg(long = "split-at", value_name = "KEY")]
    pub split_at: Vec<String>,
}

/// `weir kv ...`.
#[derive(Debug, Subcommand)]
pub enum KvCommand {
    /// Write one row, given as a JSON object (missing columns are NULL) or array.
    Put {
        /// Table name.
        table: String,
        /// The row, e.g. '{"id": 1, "name": "ada"}'.
        row: String,
    },
    /// Read rows by key; a composite key is its values separated by commas.
    Get {
        /// Table name.
        table: String,
        /// Keys to read.
        #[arg(required = true)]
        keys: Vec<String>,
        /// Columns to print, comma-separated (default all).
        #[arg(long)]
        columns: Option<String>,
        /// Read from any replica; may miss the latest writes.
        #[arg(long)]
        stale: bool,
    },
    /// Delete rows by key.
    Delete {
        /// Table name.
        table: String,
        /// Keys to delete.
        #[arg(required = true)]
        keys: Vec<String>,
    },
    /// Print rows in key order from --start (inclusive) to --end (exclusive).
    Scan {
        /// Table name.
        table: String,
        /// First key or key prefix (inclusive).
        #[arg(long)]
        start: Option<String>,
        /// Key or key prefix to stop before (exclusive).
        #[arg(long)]
        end: Option<String>,
        /// Most rows to print (default: all).
        #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
        limit: Option<u64>,
        /// Largest keys first.
        #[arg(long)]
        reverse: bool,
        /// Columns to print, comma-separated (default all).
        #[arg(long)]
        columns: Option<String>,
        /// Read from any replica; may miss the latest writes.
        #[arg(long)]
        stale: bool,
    },
}

/// `weir load ...`.
#[derive(Debug, Subcommand)]
pub enum LoadCommand {
    /// Load a CSV file into a table.
    Csv(LoadCsvArgs),
}

/// Arguments of `weir load csv`.
#[derive(Debug, Args)]
pub struct LoadCsvArgs {
    /// The CSV file.
    pub file: String,
    /// Table to load into.
    #[arg(long, short = 't')]
    pub table: String,
    /// Create the table, inferring column types from the first rows.
    #[arg(long)]
    pub create: bool,
    /// Primary key of a created table, comma-separated (default: the first column).
    #[arg(long, requires = "create")]
    pub primary_key: Option<String>,
    /// Replicas of a created table's regions (default 3, or the cluster size if smaller).
    #[arg(long, default_value_t = 0, requires = "create")]
    pub replicas: u32,
    /// Split threshold of a created table (default 64 MiB).
    #[arg(long, default_value_t = 0, requires = "create", value_name = "BYTES")]
    pub split_bytes: u64,
    /// Field separator.
    #[arg(long, short = 'd', default_value_t = ',')]
    pub delimiter: char,
    /// The first line names the columns.
    #[arg(long)]
    pub header: bool,
    /// Write rows that do not fit the table here, with the reason, instead of stopping.
    #[arg(long, value_name = "FILE")]
    pub bad_rows: Option<String>,
    /// Rows per write request.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_rows: u64,
    /// Write requests in flight at once.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    pub concurrency: u64,
}

/// `weir cluster ...`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Members with their state and the Raft groups they hold and lead.
    Status,
}

/// `weir topic ...`.
#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create(CreateTopicArgs),
    /// List all topics.
    List,
    /// Show a topic's partitions: leader, replicas, offsets.
    Describe {
        /// Topic name.
        name: String,
    },
    /// Delete a topic and all its records.
    Delete {
        /// Topic name.
        name: String,
    },
}

/// Arguments of `weir topic create`.
#[derive(Debug, Args)]
pub struct CreateTopicArgs {
    /// Topic name.
    pub name: String,
    /// Number of partitions.
    #[arg(long, short = 'p', value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Replicas per partition.
    #[arg(long, short = 'r', value_parser = clap::value_parser!(u32).range(1..))]
    pub replicas: u32,
    /// Delete records older than this many milliseconds (default: keep forever).
    #[arg(long, value_name = "MS")]
    pub retention_ms: Option<u64>,
    /// Trim each partition to about this many bytes (default: no limit).
    #[arg(long, value_name = "BYTES")]
    pub retention_bytes: Option<u64>,
}

/// Durability asked of the cluster before it acknowledges a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Committed by a quorum of replicas.
    All,
    /// Accepted by the partition leader, answered before quorum commit (may be lost if it crashes).
    Leader,
}

impl From<AcksArg> for Acks {
    fn from(a: AcksArg) -> Acks {
        match a {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
        }
    }
}

/// Arguments of `weir produce`.
#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to write to.
    pub topic: String,
    /// Key of every record (records with one key all go to one partition).
    #[arg(long, short = 'k')]
    pub key: Option<String>,
    /// Durability asked of the cluster.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// Send every record to this partition instead of choosing by key.
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
    /// Batches per partition awaiting acknowledgement at once; above 1, a retried batch may land
    /// after a later one, so the default keeps stdin's line order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
}

/// Arguments of `weir consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Consumer group: share partitions with other members, resume from and commit its offsets.
    #[arg(long, short = 'g', conflicts_with = "partition")]
    pub group: Option<String>,
    /// Where to start when there is no committed offset: earliest, latest or an offset.
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    pub from: StartFrom,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub max: Option<u64>,
    /// Stop when no record arrived for this long; defaults to 5000 without --max, and to waiting
    /// forever with --max.
    #[arg(long, value_name = "MS")]
    pub timeout_ms: Option<u64>,
    /// Read only this partition (default: all partitions, or the group's share).
    #[arg(long, short = 'p')]
    pub partition: Option<u32>,
}

/// Idle time after which `weir consume` without `--max` stops, so scripts end on their own.
pub const DEFAULT_CONSUME_TIMEOUT: Duration = Duration::from_millis(5000);

impl ConsumeArgs {
    /// How long to wait for the next record before stopping; `None` waits forever.
    pub fn idle_timeout(&self) -> Option<Duration> {
        match (self.timeout_ms, self.max) {
            (Some(ms), _) => Some(Duration::from_millis(ms)),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_CONSUME_TIMEOUT),
        }
    }
}

fn parse_start(s: &str) -> std::result::Result<StartFrom, String> {
    s.parse()
}

/// `weir bench ...`.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Produce records as fast as possible; report throughput and send-to-ack latency.
    Produce(BenchProduceArgs),
    /// Consume records from the beginning as fast as possible; report throughput.
    Consume(BenchConsumeArgs),
    /// Puts and gets by synchronous clients; report throughput and latency per operation.
    Kv(BenchKvArgs),
}

/// Arguments of `weir bench kv`.
#[derive(Debug, Args)]
pub struct BenchKvArgs {
    /// Table of one key and one value column (created as 'key VARCHAR, value VARCHAR' if missing).
    #[arg(long, short = 't')]
    pub table: String,
    /// Operations in total.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub ops: u64,
    /// Size of each value in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// Concurrent clients, each waiting for its answer before its next request.
    #[arg(long, short = 'c', default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub clients: u32,
    /// Ratio of puts to gets, e.g. 1:0 (puts only), 0:1 (gets only), 1:9.
    #[arg(long, default_value = "1:0")]
    pub mix: String,
    /// Size of the key space (default: --ops); puts cover it in order, gets pick keys at random.
    #[arg(long, default_value_t = 0)]
    pub keys: u64,
}

/// Arguments of `weir bench produce`.
#[derive(Debug, Args)]
pub struct BenchProduceArgs {
    /// Topic to write to (must exist).
    #[arg(long, short = 't')]
    pub topic: String,
    /// Records to send in total.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,
    /// Size of each record's value in bytes.
    #[arg(long, short = 's')]
    pub record_size: usize,
    /// Concurrent producers, each with its own connections; records are split between them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub producers: u32,
    /// Durability asked of the cluster.
    #[arg(long, value_enum, default_value_t = AcksArg::All)]
    pub acks: AcksArg,
    /// A batch is sent once its records take this many bytes.
    #[arg(long, default_value_t = 256 * 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub batch_bytes: u64,
    /// How long a batch waits for more records.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Batches per partition awaiting acknowledgement at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Target records/s over all producers, paced evenly (as kafka-producer-perf-test's
    /// --throughput); 0 sends as fast as possible. Latency is only meaningful below saturation.
    #[arg(long, default_value_t = 0)]
    pub throughput: u64,
}

/// Arguments of `weir bench consume`.
#[derive(Debug, Args)]
pub struct BenchConsumeArgs {
    /// Topic to read (must exist and hold at least --records records).
    #[arg(long, short = 't')]
    pub topic: String,
    /// Records to read in total.
    #[arg(long, short = 'n', value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,
    /// Concurrent consumers; the partitions are split between them.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub consumers: u32,
}

/// Settings every command needs.
#[derive(Debug, Clone)]
pub struct Context {
    /// Address of the node to talk to.
    pub server: String,
    /// Output format.
    pub format: Format,
    /// Client settings derived from the global flags.
    pub client_config: ClientConfig,
}

impl Context {
    /// A new client for the configured server.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::connect_with(&self.server, self.client_config.clone()).await?)
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    let ctx = Context {
        server: cli.server,
        format: cli.format,
        client_config: ClientConfig {
            retry_for: Duration::from_millis(cli.retry_for_ms),
            ..ClientConfig::default()
        },
    };
    match cli.command {
        Command::Cluster(ClusterCommand::Status) => cluster::status(&ctx).await,
        Command::Topic(cmd) => topic::run(&ctx, cmd).await,
        Command::Produce(args) => produce::run(&ctx, args).await,
        Command::Consume(args) => consume::run(&ctx, args).await,
        Command::Bench(BenchCommand::Produce(args)) => bench::produce(&ctx, args).await,
        Command::Bench(BenchCommand::Consume(args)) => bench::consume(&ctx, args).await,
        Command::Bench(BenchCommand::Kv(args)) => bench::kv(&ctx, args).await,
        Command::Table(cmd) => table::run(&ctx, cmd).await,
        Command::Kv(cmd) => kv::run(&ctx, cmd).await,
        Command::Load(LoadCommand::Csv(args)) => load::csv(&ctx, args).await,
        Command::Sql(args) => sql::run(&ctx, args).await,
        Command::Job(cmd) => sql::job(&ctx, cmd).await,
        Command::Schedule(cmd) => sql::schedule(&ctx, cmd).await,
    }
}

/// Splits a comma-separated list (`a, b`) of column names.
pub fn split_names(list: &str) -> Vec<String> {
    list.split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("weir").chain(args.iter().copied()))
    }

    #[test]
    fn global_flags_have_documented_defaults_and_work_after_the_subcommand() {
        // The environment may set WEIR_SERVER; the default only applies without it.
        if std::env::var_os("WEIR_SERVER").is_none() {
            let cli = parse(&["topic", "list"]).unwrap();
            assert_eq!(cli.server, "127.0.0.1:7400");
        }
        let cli = parse(&["topic", "list"]).unwrap();
        assert_eq!(cli.format, Format::Table);
        let cli = parse(&["topic", "list", "--server", "n2:7401", "--format", "json"]).unwrap();
        assert_eq!(cli.server, "n2:7401");
        assert_eq!(cli.format, Format::Json);
        assert!(matches!(cli.command, Command::Topic(TopicCommand::List)));
        let err = parse(&["--format", "yaml", "topic", "list"]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidValue);
    }

    #[test]
    fn topic_create_requires_positive_partitions_and_replicas() {
        let cli = parse(&[
            "topic",
            "create",
            "orders",
            "--partitions",
            "6",
            "--replicas",
            "3",
            "--retention-ms",
            "86400000",
        ])
        .unwrap();
        let Command::Topic(TopicCommand::Create(args)) = cli.command else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(args.name, "orders");
        assert_eq!((args.partitions, args.replicas), (6, 3));
        assert_eq!(args.retention_ms, Some(86_400_000));
        assert_eq!(args.retention_bytes, None);

        let missing = parse(&["topic", "create", "orders", "--partitions", "6"]).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);
        let zero = parse(&[
            "topic",
            "create",
            "o",
            "--partitions",
            "0",
            "--replicas",
            "1",
        ])
        .unwrap_err();
        assert_eq!(zero.kind(), ErrorKind::ValueValidation);
        // Usage errors exit with status 2, unlike failed requests (1).
        assert_eq!(zero.exit_code(), 2);
    }

    #[test]
    fn produce_parses_key_acks_and_partition() {
        let cli = parse(&[
            "produce",
            "t",
            "--key",
            "k1",
            "--acks",
            "leader",
            "--partition",
            "2",
        ])
        .unwrap();
        let Command::Produce(args) = cli.command else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(args.key.as_deref(), Some("k1"));
        assert_eq!(Acks::from(args.acks), Acks::Leader);
        assert_eq!(args.partition, Some(2));
        assert_eq!(args.max_in_flight, 1);
        let default = parse(&["produce", "t"]).unwrap();
        let Command::Produce(args) = default.command else {
            panic!("wrong command");
        };
        assert_eq!(Acks::from(args.acks), Acks::All);
        assert!(parse(&["produce", "t", "--acks", "none"]).is_err());
    }

    #[test]
    fn consume_timeout_defaults_depend_on_max() {
        let consume = |args: &[&str]| match parse(args).unwrap().command {
            Command::Consume(c) => c,
            other => panic!("wrong command: {other:?}"),
        };
        let c = consume(&["consume", "t"]);
        assert_eq!(c.from, StartFrom::Earliest);
        assert_eq!(c.idle_timeout(), Some(Duration::from_millis(5000)));
        let c = consume(&["consume", "t", "--max", "10"]);
        assert_eq!(c.idle_timeout(), None);
        let c = consume(&[
            "consume",
            "t",
            "--max",
            "10",
            "--timeout-ms",
            "250",
            "--from",
            "42",
        ]);
        assert_eq!(c.idle_timeout(), Some(Duration::from_millis(250)));
        assert_eq!(c.from, StartFrom::Offset(42));
        let c = consume(&["consume", "t", "--group", "g1", "--from", "latest"]);
        assert_eq!(c.group.as_deref(), Some("g1"));
        assert_eq!(c.from, StartFrom::Latest);

        let bad_from = parse(&["consume", "t", "--from", "yesterday"]).unwrap_err();
        assert_eq!(bad_from.kind(), ErrorKind::ValueValidation);
        let both = parse(&["consume", "t", "--group", "g", "--partition", "1"]).unwrap_err();
        assert_eq!(both.kind(), ErrorKind::ArgumentConflict);
    }

    #[test]
    fn bench_requires_topic_records_and_size() {
        let cli = parse(&[
            "bench",
            "produce",
            "--topic",
            "b",
            "--records",
            "1000000",
            "--record-size",
            "100",
            "--producers",
            "4",
            "--batch-bytes",
            "65536",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Produce(args)) = cli.command else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!(args.records, 1_000_000);
        assert_eq!(args.record_size, 100);
        assert_eq!(args.producers, 4);
        assert_eq!(args.batch_bytes, 65536);
        assert_eq!(Acks::from(args.acks), Acks::All);
        let missing = parse(&["bench", "produce", "--topic", "b", "--records", "10"]).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::MissingRequiredArgument);

        let cli = parse(&[
            "bench",
            "consume",
            "--topic",
            "b",
            "--records",
            "5",
            "--consumers",
            "2",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Consume(args)) = cli.command else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!((args.records, args.consumers), (5, 2));
        let zero = parse(&["bench", "consume", "--topic", "b", "--records", "0"]).unwrap_err();
        assert_eq!(zero.kind(), ErrorKind::ValueValidation);
    }

    #[test]
    fn cluster_status_and_unknown_commands() {
        assert!(matches!(
            parse(&["cluster", "status"]).unwrap().command,
            Command::Cluster(ClusterCommand::Status)
        ));
        assert_eq!(
            parse(&["cluster", "reboot"]).unwrap_err().kind(),
            ErrorKind::InvalidSubcommand
        );
    }

    #[test]
    fn table_kv_load_and_bench_kv_parse() {
        let cli = parse(&[
            "table",
            "create",
            "users",
            "--schema",
            "id BIGINT, name VARCHAR",
            "--primary-key",
            "id",
        ])
        .unwrap();
        let Command::Table(TableCommand::Create(args)) = cli.command else {
            panic!("wrong command: {:?}", cli.command);
        };
        assert_eq!((args.replicas, args.split_bytes), (0, 0));
        assert!(args.split_at.is_empty());
        let cli = parse(&[
            "table",
            "create",
            "t",
            "--schema",
            "a INT",
            "--primary-key",
            "a",
            "--split-at",
            "10",
            "--split-at",
            "20",
        ])
        .unwrap();
        let Command::Table(TableCommand::Create(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!(args.split_at, vec!["10", "20"]);
        assert_eq!(
            parse(&["table", "create", "t", "--schema", "a INT"])
                .unwrap_err()
                .kind(),
            ErrorKind::MissingRequiredArgument
        );
        let cli = parse(&[
            "kv",
            "scan",
            "users",
            "--start",
            "5",
            "--end",
            "9",
            "--limit",
            "3",
            "--reverse",
        ])
        .unwrap();
        let Command::Kv(KvCommand::Scan {
            start,
            end,
            limit,
            reverse,
            ..
        }) = cli.command
        else {
            panic!("wrong command");
        };
        assert_eq!(
            (start.as_deref(), end.as_deref(), limit, reverse),
            (Some("5"), Some("9"), Some(3), true)
        );
        assert_eq!(
            parse(&["kv", "scan", "users", "--limit", "0"])
                .unwrap_err()
                .kind(),
            ErrorKind::ValueValidation,
            "a limit of 0 is refused rather than read as unlimited"
        );
        assert_eq!(
            parse(&["kv", "get", "users"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        let cli = parse(&[
            "load", "csv", "f.csv", "--table", "t", "--create", "--header", "-d", ";",
        ])
        .unwrap();
        let Command::Load(LoadCommand::Csv(args)) = cli.command else {
            panic!("wrong command");
        };
        assert!(args.create && args.header);
        assert_eq!(args.delimiter, ';');
        assert_eq!((args.batch_rows, args.concurrency), (2000, 8));
        // Creation options only make sense with --create.
        assert_eq!(
            parse(&[
                "load",
                "csv",
                "f.csv",
                "--table",
                "t",
                "--primary-key",
                "id"
            ])
            .unwrap_err()
            .kind(),
            ErrorKind::MissingRequiredArgument
        );
        let cli = parse(&[
            "bench", "kv", "--table", "kv", "--ops", "100", "--mix", "1:9",
        ])
        .unwrap();
        let Command::Bench(BenchCommand::Kv(args)) = cli.command else {
            panic!("wrong command");
        };
        assert_eq!((args.clients, args.value_size), (16, 256));
        assert_eq!(args.mix, "1:9");
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
