//! The cluster catalog: what group 0 (the metadata group) replicates.
//!
//! Nodes, topics and tables, and the Raft groups behind their partitions and regions, with each
//! group's target replica set.
//! Every node holds group 0 (as a voter or a learner), so every node has the catalog locally and
//! starts or stops its replicas by watching it. The placement loop on the leader of group 0 decides
//! replica sets and proposes them as [`MetaCommand`]s; applying a command is deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_proto::format::TopicFormat;
use weir_proto::names::{did_you_mean, does_not_exist};
use weir_proto::table::{TableSchema, JOB_TABLES};

/// The id of the metadata group.
pub const METADATA_GROUP: u64 = 0;

/// Name prefix reserved for Weir's own topics.
pub const INTERNAL_PREFIX: &str = "__";

/// Size at which a region splits unless its table says otherwise (HBase's `hbase.hregion.max.filesize`
/// is larger; TiKV's region-split-size is 96 MiB).
pub const DEFAULT_SPLIT_BYTES: u64 = 64 << 20;

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Never reused, even after the node leaves.
    pub id: u64,
    /// gRPC address other nodes and clients use.
    pub addr: String,
    /// HTTP address (health, metrics, ingest).
    pub http_addr: String,
    /// Address Kafka clients reach the node on (empty: it serves none).
    pub kafka_addr: String,
}

/// What a Raft group holds, which decides its state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GroupKind {
    /// Group 0: this catalog.
    Metadata,
    /// One partition of a topic.
    Partition {
        /// Topic name.
        topic: String,
        /// Partition number within the topic.
        partition: u32,
    },
    /// Committed offsets of consumer groups (the `__consumer_offsets` of Kafka).
    Offsets,
    /// One key range of a table.
    Region {
        /// Table name.
        table: String,
        /// First encoded key of the range (empty: the table's first key).
        start: Vec<u8>,
        /// Encoded key just past the range (empty: unbounded).
        end: Vec<u8>,
        /// Bumped by every split of the region.
        epoch: u64,
        /// The region this one split from; its replicas hold its first data.
        parent: Option<u64>,
        /// The range and epoch the region's group was created with, which never change: a
        /// replica that starts empty replays the group's log from there (splits shrink `end`
        /// and bump `epoch` as they are applied), never from the range the catalog shows now.
        origin: (Vec<u8>, Vec<u8>, u64),
    },
}

/// A Raft group and where it should live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// Group id; keys of the group's data start with it.
    pub id: u64,
    /// What the group holds.
    pub kind: GroupKind,
    /// Nodes that should hold a replica; the group's leader reconciles its Raft membership to it.
    pub replicas: Vec<u64>,
    /// Bumped by every replica move. At epoch 0 the replicas are the group's founders and each of
    /// them may initialize it (all with the same membership); later replicas join as learners.
    pub epoch: u64,
}

/// A topic: named partitions, each its own Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicInfo {
    /// Topic name.
    pub name: String,
    /// Replication factor asked for at creation.
    pub replicas: u32,
    /// Records older than this are dropped (0 = never).
    pub retention_ms: u64,
    /// A partition larger than this drops its oldest batches (0 = no limit).
    pub retention_bytes: u64,
    /// Group id of partition `i` at index `i`.
    pub groups: Vec<u64>,
    /// How SQL reads its records as rows (none: as bytes).
    pub format: Option<TopicFormat>,
}

/// A table: typed columns and a primary key, stored in regions (one Raft group each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// Table name.
    pub name: String,
    /// Never reused.
    pub id: u64,
    /// Columns and primary key.
    pub schema: TableSchema,
    /// Replication factor of each region.
    pub replicas: u32,
    /// A region larger than this splits.
    pub split_bytes: u64,
    /// Region group ids, in key order.
    pub regions: Vec<u64>,
}

/// A table over files (Hive's external table): the statement that defines it, kept in group 0
/// so every node plans it the same way and it outlives the session that created it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalTableInfo {
    /// Table name.
    pub name: String,
    /// The `CREATE EXTERNAL TABLE ...` statement, as SQL.
    pub definition: String,
}

/// A stream job: an `INSERT INTO sink SELECT ... FROM topic ...` that never ends, run as one task
/// per partition of its source topic on the nodes placement assigns them to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobInfo {
    /// Job name.
    pub name: String,
    /// Never reused: a job dropped and created again under its name starts afresh (its progress
    /// and its marks in the sink are keyed by the id).
    pub id: u64,
    /// The `INSERT INTO ... SELECT ...` statement, as SQL.
    pub definition: String,
    /// The topic it reads.
    pub source: String,
    /// The table it writes.
    pub sink: String,
    /// Start from the end of the topic (true) or from its earliest record (false) when the job
    /// has no progress recorded yet.
    pub start_latest: bool,
    /// Whether its tasks should run (`STOP JOB` clears it, `START JOB` sets it).
    pub running: bool,
    /// One task per source partition, in partition order.
    pub tasks: Vec<TaskInfo>,
}

/// Where one task of a job runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskInfo {
    /// The node running it; none until placement assigns one.
    pub node: Option<u64>,
    /// Bumped by every assignment, so an instance can tell it has been replaced.
    pub epoch: u64,
}

/// A schedule: a statement run on a timetable (Oozie's coordinator), each tick by exactly one
/// node. Its run history lives in a table, not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// Schedule name.
    pub name: String,
    /// Never reused: a schedule dropped and created again under its name is another schedule.
    pub id: u64,
    /// The statement each run executes, as SQL.
    pub statement: String,
    /// Time between ticks (milliseconds); ticks fall on multiples of it since the epoch. 0 when
    /// `cron` gives the ticks.
    pub every_ms: u64,
    /// A cron expression (5 fields, UTC) whose times are the ticks, instead of an interval.
    pub cron: Option<String>,
    /// Schedules that must have succeeded for a tick before this one runs it.
    pub after: Vec<String>,
    /// Whether ticks are skipped (`ALTER SCHEDULE ... PAUSE`).
    pub paused: bool,
    /// When it was created (milliseconds since the epoch): its first tick is the first one at or
    /// after this.
    pub created_ms: i64,
    /// A run asked for outside the timetable (`RUN SCHEDULE`), by the tick it is recorded under.
    pub run_now: Option<i64>,
}

/// The replicated catalog of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Catalog {
    /// Members by id.
    pub nodes: BTreeMap<u64, NodeInfo>,
    /// Next node id to hand out.
    pub next_node_id: u64,
    /// Next Raft group id to hand out (group 0 is taken).
    pub next_group_id: u64,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
    /// Every Raft group but group 0.
    pub groups: BTreeMap<u64, GroupInfo>,
    /// The group holding consumer-group offsets, once created.
    pub offsets_group: Option<u64>,
    /// Tables by name.
    pub tables: BTreeMap<String, TableInfo>,
    /// Next table id to hand out.
    pub next_table_id: u64,
    /// Tables over files, by name.
    pub external_tables: BTreeMap<String, ExternalTableInfo>,
    /// Stream jobs by name.
    pub jobs: BTreeMap<String, JobInfo>,
    /// Next job id to hand out.
    pub next_job_id: u64,
    /// Schedules by name.
    pub schedules: BTreeMap<String, ScheduleInfo>,
    /// Next schedule id to hand out.
    pub next_schedule_id: u64,
}

/// A change to the catalog, proposed through group 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Registers the first node of a new cluster under a given id.
    Bootstrap {
        /// The node's info (id 1).
        node: NodeInfo,
    },
    /// Registers a node and gives it the next id.
    AddNode {
        /// gRPC address.
        addr: String,
        /// HTTP address.
        http_addr: String,
        /// Kafka protocol address.
        kafka_addr: String,
    },
    /// Updates the addresses of a known node (a node restarted on a new address).
    UpdateNode {
        /// The node, with its new addresses.
        node: NodeInfo,
    },
    /// Creates a topic with one group per partition on the given replica sets.
    CreateTopic {
        /// Topic name.
        name: String,
        /// Replication factor.
        replicas: u32,
        /// Time retention (0 = none).
        retention_ms: u64,
        /// Size retention (0 = none).
        retention_bytes: u64,
        /// Replica set of each partition, in partition order.
        placement: Vec<Vec<u64>>,
        /// How SQL reads its records as rows.
        format: Option<TopicFormat>,
    },
    /// Deletes a topic and its groups.
    DeleteTopic {
        /// Topic name.
        name: String,
    },
    /// Creates the consumer-offsets group.
    CreateOffsetsGroup {
        /// Its replica set.
        replicas: Vec<u64>,
    },
    /// Creates a table with one region spanning all keys.
    CreateTable {
        /// Table name.
        name: String,
        /// Columns and key.
        schema: TableSchema,
        /// Replication factor.
        replicas: u32,
        /// Split threshold of its regions.
        split_bytes: u64,
        /// Encoded keys the table starts split at, ascending; no keys: one region.
        split_keys: Vec<Vec<u8>>,
        /// Replica set of each region, in key order (one more than split keys).
        placement: Vec<Vec<u64>>,
    },
    /// Drops a table and its regions.
    DropTable {
        /// Table name.
        name: String,
    },
    /// Records a table over files; its name must not be taken by a table, topic or other one.
    CreateExternalTable {
        /// Its name and defining statement.
        table: ExternalTableInfo,
    },
    /// Forgets a table over files (the files stay).
    DropExternalTable {
        /// Table name.
        name: String,
    },
    /// Records a stream job (its id is given here; its tasks start unassigned).
    CreateJob {
        /// The job; `id` and task assignments are ignored.
        job: JobInfo,
    },
    /// Forgets a stream job; its tasks stop.
    DropJob {
        /// Job name.
        name: String,
    },
    /// Stops or starts a job's tasks.
    SetJobRunning {
        /// Job name.
        name: String,
        /// Whether its tasks should run.
        running: bool,
    },
    /// Assigns tasks of a job to nodes (placement's decision).
    AssignTasks {
        /// Job name.
        name: String,
        /// The job's id, so an assignment computed for a job since dropped and re-created is
        /// refused.
        id: u64,
        /// (task index, node) pairs.
        assignments: Vec<(u32, u64)>,
    },
    /// Records a schedule (its id is given here).
    CreateSchedule {
        /// The schedule; `id` is ignored.
        schedule: ScheduleInfo,
    },
    /// Forgets a schedule (its run history stays).
    DropSchedule {
        /// Schedule name.
        name: String,
    },
    /// Pauses or resumes a schedule.
    SetSchedulePaused {
        /// Schedule name.
        name: String,
        /// Whether its ticks are skipped.
        paused: bool,
    },
    /// Asks for a run of a schedule now, outside its timetable.
    RunScheduleNow {
        /// Schedule name.
        name: String,
        /// The tick the run is recorded under (the proposer's clock, in milliseconds).
        at_ms: i64,
    },
    /// Reserves a group id (for the region a split is about to create).
    AllocateGroup,
    /// Records a split the region `parent` has applied through its own log: it now ends at
    /// `split_key` and the new region `child` (on the same replicas) holds the rest.
    SplitRegion {
        /// The region that split.
        parent: u64,
        /// Its epoch after the split.
        epoch: u64,
        /// First key of the new region.
        split_key: Vec<u8>,
        /// The new region's group id (from [`MetaCommand::AllocateGroup`]).
        child: u64,
    },
    /// Moves a group to a new replica set.
    SetReplicas {
        /// The group.
        group: u64,
        /// Its new replica set.
        replicas: Vec<u64>,
    },
}

/// What applying a [`MetaCommand`] answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaResponse {
    /// Done, nothing to report.
    Ok,
    /// The id given to a new node.
    NodeId(u64),
    /// A reserved group id.
    GroupId(u64),
    /// The id given to a new job.
    JobId(u64),
    /// The command was refused, for the reason the message gives; the catalog is unchanged.
    Rejected(Refusal, String),
}

/// Why the catalog refused a command, so that each interface answers with the matching code
/// rather than reading the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// The command names a topic, table, job, schedule, node, group or region the catalog does
    /// not have.
    NotFound,
    /// The name the command would create is taken.
    AlreadyExists,
    /// The command does not fit the catalog as it is: something in use by a job or a schedule,
    /// a dependency that cannot be, a split that does not match its region, a second bootstrap.
    Conflict,
}

/// The refusal of a command naming a `what` called `name` that does not exist, naming the closest
/// of the `existing` names.
fn not_found<'a>(
    what: &str,
    name: &str,
    existing: impl IntoIterator<Item = &'a String>,
) -> MetaResponse {
    let existing = existing.into_iter().map(String::as_str);
    MetaResponse::Rejected(Refusal::NotFound, does_not_exist(what, name, existing))
}

impl Catalog {
    /// Why topic `name` cannot be used: it does not exist (and the closest topic, if any).
    pub fn no_topic(&self, name: &str) -> String {
        does_not_exist("topic", name, self.topics.keys().map(String::as_str))
    }

    /// Why table `name` cannot be used: it does not exist (and the closest table, if any).
    pub fn no_table(&self, name: &str) -> String {
        does_not_exist("table", name, self.tables.keys().map(String::as_str))
    }

    /// Applies a command; refused commands leave the catalog unchanged.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaResponse {
        if let MetaCommand::DeleteTopic { name } | MetaCommand::DropTable { name } = cmd {
            if let Some(j) = self.job_using(name) {
                return MetaResponse::Rejected(
                    Refusal::Conflict,
                    format!("job '{}' uses '{name}'; drop the job first", j.name),
                );
            }
        }
        match cmd {
            MetaCommand::Bootstrap { node } => {
                if !self.nodes.is_empty() {
                    return MetaResponse::Rejected(
                        Refusal::Conflict,
                        "cluster is already bootstrapped".into(),
                    );
                }
                self.nodes.insert(node.id, node.clone());
                self.next_node_id = node.id + 1;
                self.next_group_id = self.next_group_id.max(1);
                MetaResponse::NodeId(node.id)
            }
            MetaCommand::AddNode {
                addr,
                http_addr,
                kafka_addr,
            } => {
                if self.nodes.is_empty() {
                    return MetaResponse::Rejected(
                        Refusal::Conflict,
                        "the cluster is not bootstrapped yet; retry".into(),
                    );
                }
                if let Some(existing) = self.nodes.values().find(|n| &n.addr == addr) {
                    return MetaResponse::NodeId(existing.id);
                }
                let id = self.next_node_id.max(1);
                self.next_node_id = id + 1;
                self.nodes.insert(
                    id,
                    NodeInfo {
                        id,
                        addr: addr.clone(),
                        http_addr: http_addr.clone(),
                        kafka_addr: kafka_addr.clone(),
                    },
                );
                MetaResponse::NodeId(id)
            }
            MetaCommand::UpdateNode { node } => {
                if !self.nodes.contains_key(&node.id) {
                    return MetaResponse::Rejected(
                        Refusal::NotFound,
                        format!("node {} is not a member", node.id),
                    );
                }
                self.nodes.insert(node.id, node.clone());
                MetaResponse::Ok
            }
            MetaCommand::CreateTopic {
                name,
                replicas,
                retention_ms,
                retention_bytes,
                placement,
                format,
            } => {
                if self.topics.contains_key(name) {
                    return MetaResponse::Rejected(
                        Refusal::AlreadyExists,
                        format!("topic '{name}' already exists"),
                    );
                }
                let mut groups = Vec::with_capacity(placement.len());
                for (partition, nodes) in placement.iter().enumerate() {
                    let id = self.alloc_group();
                    self.groups.insert(
                        id,
                        GroupInfo {
                            id,
                            kind: GroupKind::Partition {
                                topic: name.clone(),
                                partition: partition as u32,
                            },
                            replicas: nodes.clone(),
                            epoch: 0,
                        },
                    );
                    groups.push(id);
                }
                self.topics.insert(
                    name.clone(),
                    TopicInfo {
                        name: name.clone(),
                        replicas: *replicas,
                        retention_ms: *retention_ms,
                        retention_bytes: *retention_bytes,
                        groups,
                        format: format.clone(),
                    },
                );
                MetaResponse::Ok
            }
            MetaCommand::DeleteTopic { name } => match self.topics.remove(name) {
                Some(t) => {
                    for g in t.groups {
                        self.groups.remove(&g);
                    }
                    MetaResponse::Ok
                }
                None => not_found("topic", name, self.topics.keys()),
            },
            MetaCommand::CreateOffsetsGroup { replicas } => {
                if self.offsets_group.is_some() {
                    return MetaResponse::Ok;
                }
                let id = self.alloc_group();
                self.groups.insert(
                    id,
                    GroupInfo {
                        id,
                        kind: GroupKind::Offsets,
                        replicas: replicas.clone(),
                        epoch: 0,
                    },
                );
                self.offsets_group = Some(id);
                MetaResponse::Ok
            }
            MetaCommand::CreateTable {
                name,
                schema,
                replicas,
                split_bytes,
                split_keys,
                placement,
            } => {
                if self.tables.contains_key(name) {
                    return MetaResponse::Rejected(
                        Refusal::AlreadyExists,
                        format!("table '{name}' already exists"),
                    );
                }
                let ascending = split_keys.windows(2).all(|w| w[0] < w[1]);
                if placement.len() != split_keys.len() + 1
                    || !ascending
                    || split_keys.first().is_some_and(|k| k.is_empty())
                {
                    return MetaResponse::Rejected(
                        Refusal::Conflict,
                        "split keys must be non-empty and ascending, with one placement per region"
                            .into(),
                    );
                }
                let mut bounds = vec![Vec::new()];
                bounds.extend(split_keys.iter().cloned());
                bounds.push(Vec::new());
                let mut regions = Vec::with_capacity(placement.len());
                for (i, nodes) in placement.iter().enumerate() {
                    let id = self.alloc_group();
                    self.groups.insert(
                        id,
                        GroupInfo {
                            id,
                            kind: GroupKind::Region {
                                table: name.clone(),
                                start: bounds[i].clone(),
                                end: bounds[i + 1].clone(),
                                epoch: 0,
                                parent: None,
                                origin: (bounds[i].clone(), bounds[i + 1].clone(), 0),
                            },
                            replicas: nodes.clone(),
                            epoch: 0,
                        },
                    );
                    regions.push(id);
                }
                let table_id = self.next_table_id.max(1);
                self.next_table_id = table_id + 1;
                self.tables.insert(
                    name.clone(),
                    TableInfo {
                        name: name.clone(),
                        id: table_id,
                        schema: schema.clone(),
                        replicas: *replicas,
                        split_bytes: *split_bytes,
                        regions,
                    },
                );
                MetaResponse::Ok
            }
            MetaCommand::DropTable { name } => match self.tables.remove(name) {
                Some(t) => {
                    for g in t.regions {
                        self.groups.remove(&g);
                    }
                    MetaResponse::Ok
                }
                None => not_found("table", name, self.tables.keys()),
            },
            MetaCommand::CreateExternalTable { table } => {
                if let Some(kind) = self.name_taken(&table.name) {
                    return MetaResponse::Rejected(
                        Refusal::AlreadyExists,
                        format!("{kind} '{}' already exists", table.name),
                    );
                }
                self.external_tables
                    .insert(table.name.clone(), table.clone());
                MetaResponse::Ok
            }
            MetaCommand::DropExternalTable { name } => match self.external_tables.remove(name) {
                Some(_) => MetaResponse::Ok,
                None => not_found("external table", name, self.external_tables.keys()),
            },
            MetaCommand::CreateJob { job } => {
                if self.jobs.contains_key(&job.name) {
                    return MetaResponse::Rejected(
                        Refusal::AlreadyExists,
                        format!("job '{}' already exists", job.name),
                    );
                }
                if !self.topics.contains_key(&job.source) {
                    return not_found("topic", &job.source, self.topics.keys());
                }
                if !self.tables.contains_key(&job.sink) && !self.topics.contains_key(&job.sink) {
                    let names = self.tables.keys().chain(self.topics.keys());
                    return not_found("table or topic", &job.sink, names);
                }
                let id = self.next_job_id.max(1);
                self.next_job_id = id + 1;
                let mut job = job.clone();
                job.id = id;
                for t in &mut job.tasks {
                    t.node = None;
                    t.epoch = 0;
                }
                self.jobs.insert(job.name.clone(), job);
                MetaResponse::JobId(id)
            }
            MetaCommand::DropJob { name } => match self.jobs.remove(name) {
                Some(_) => MetaResponse::Ok,
                None => not_found("job", name, self.jobs.keys()),
            },
            MetaCommand::SetJobRunning { name, running } => match self.jobs.get_mut(name) {
                Some(j) => {
                    j.running = *running;
                    MetaResponse::Ok
                }
                None => not_found("job", name, self.jobs.keys()),
            },
            MetaCommand::AssignTasks {
                name,
                id,
                assignments,
            } => {
                let Some(j) = self.jobs.get_mut(name).filter(|j| j.id == *id) else {
                    return MetaResponse::Rejected(
                        Refusal::NotFound,
                        format!("job '{name}' (id {id}) does not exist"),
                    );
                };
                if assignments
                    .iter()
                    .any(|(t, n)| *t as usize >= j.tasks.len() || !self.nodes.contains_key(n))
                {
                    return MetaResponse::Rejected(
                        Refusal::Conflict,
                        format!("an assignment names a task or node job '{name}' does not have"),
                    );
                }
                for (t, n) in assignments {
                    let task = &mut j.tasks[*t as usize];
                    task.node = Some(*n);
                    task.epoch += 1;
                }
                MetaResponse::Ok
            }
            MetaCommand::CreateSchedule { schedule } => self.create_schedule(schedule),
            MetaCommand::DropSchedule { name } => {
                if !self.schedules.contains_key(name) {
                    return not_found("schedule", name, self.schedules.keys());
                }
                if let Some(d) = self.schedules.values().find(|d| d.after.contains(name)) {
                    return MetaResponse::Rejected(
                        Refusal::Conflict,
                        format!("schedule '{}' runs after '{name}'; drop it first", d.name),
                    );
                }
                self.schedules.remove(name);
                MetaResponse::Ok
            }
            MetaCommand::SetSchedulePaused { name, paused } => match self.schedules.get_mut(name) {
                Some(s) => {
                    s.paused = *paused;
                    MetaResponse::Ok
                }
                None => not_found("schedule", name, self.schedules.keys()),
            },
            MetaCommand::RunScheduleNow { name, at_ms } => match self.schedules.get_mut(name) {
                Some(s) => {
                    s.run_now = Some(*at_ms);
                    MetaResponse::Ok
                }
                None => not_found("schedule", name, self.schedules.keys()),
            },
            MetaCommand::AllocateGroup => MetaResponse::GroupId(self.alloc_group()),
            MetaCommand::SplitRegion {
                parent,
                epoch,
                split_key,
                child,
            } => self.split_region(*parent, *epoch, split_key, *child),
            MetaCommand::SetReplicas { group, replicas } => match self.groups.get_mut(group) {
                Some(g) => {
                    if &g.replicas != replicas {
                        g.replicas = replicas.clone();
                        g.epoch += 1;
                    }
                    MetaResponse::Ok
                }
                None => MetaResponse::Rejected(
                    Refusal::NotFound,
                    format!("group {group} does not exist"),
                ),
            },
        }
    }

    fn split_region(
        &mut self,
        parent: u64,
        new_epoch: u64,
        split_key: &[u8],
        child: u64,
    ) -> MetaResponse {
        let Some(g) = self.groups.get(&parent) else {
            return MetaResponse::Rejected(
                Refusal::NotFound,
                format!("region {parent} does not exist"),
            );
        };
        let GroupKind::Region {
            table,
            start,
            end,
            epoch,
            ..
        } = &g.kind
        else {
            return MetaResponse::Rejected(
                Refusal::Conflict,
                format!("group {parent} is not a region"),
            );
        };
        if *epoch >= new_epoch {
            // Reported before (the reporter retried after a lost answer).
            return MetaResponse::Ok;
        }
        if new_epoch != epoch + 1 {
            return MetaResponse::Rejected(
                Refusal::Conflict,
                format!(
                    "region {parent} is at epoch {epoch}; a split to epoch {new_epoch} skips one"
                ),
            );
        }
        if split_key <= start.as_slice() || (!end.is_empty() && split_key >= end.as_slice()) {
            return MetaResponse::Rejected(
                Refusal::Conflict,
                format!("split key is outside region {parent}'s range"),
            );
        }
        if child >= self.next_group_id || self.groups.contains_key(&child) {
            return MetaResponse::Rejected(
                Refusal::Conflict,
                format!("group id {child} was not reserved"),
            );
        }
        let (table, old_end, replicas) = (table.clone(), end.clone(), g.replicas.clone());
        let Some(t) = self.tables.get_mut(&table) else {
            return MetaResponse::Rejected(
                Refusal::NotFound,
                format!("table '{table}' does not exist"),
            );
        };
        let Some(pos) = t.regions.iter().position(|r| *r == parent) else {
            return MetaResponse::Rejected(
                Refusal::Conflict,
                format!("region {parent} is not in table '{table}'"),
            );
        };
        t.regions.insert(pos + 1, child);
        if let Some(GroupInfo {
            kind: GroupKind::Region { end, epoch, .. },
            ..
        }) = self.groups.get_mut(&parent)
        {
            *end = split_key.to_vec();
            *epoch = new_epoch;
        }
        self.groups.insert(
            child,
            GroupInfo {
                id: child,
                kind: GroupKind::Region {
                    table,
                    start: split_key.to_vec(),
                    end: old_end.clone(),
                    epoch: new_epoch,
                    parent: Some(parent),
                    origin: (split_key.to_vec(), old_end, new_epoch),
                },
                replicas,
                // Not founders: the child starts from the parent's split, not from `initialize`.
                epoch: 1,
            },
        );
        MetaResponse::Ok
    }

    /// What already holds `name` among tables, topics and tables over files (SQL reads all three
    /// by name, so they share one namespace).
    pub fn name_taken(&self, name: &str) -> Option<&'static str> {
        if self.tables.contains_key(name) {
            Some("table")
        } else if self.topics.contains_key(name) {
            Some("topic")
        } else if self.external_tables.contains_key(name) {
            Some("external table")
        } else {
            None
        }
    }

    /// A job reading or writing `name` (a topic or table that must not be dropped under it).
    pub fn job_using(&self, name: &str) -> Option<&JobInfo> {
        self.jobs.values().find(|j| {
            j.source == name
                || j.sink == name
                || name
                    .strip_prefix(j.name.as_str())
                    .is_some_and(|rest| rest.starts_with(JOB_TABLES))
        })
    }

    /// Records a schedule whose dependencies exist; a dependency on itself is the only cycle a
    /// new schedule can close, since nothing depends on it yet.
    fn create_schedule(&mut self, schedule: &ScheduleInfo) -> MetaResponse {
        if self.schedules.contains_key(&schedule.name) {
            return MetaResponse::Rejected(
                Refusal::AlreadyExists,
                format!("schedule '{}' already exists", schedule.name),
            );
        }
        if schedule.every_ms == 0 && schedule.cron.is_none() {
            return MetaResponse::Rejected(
                Refusal::Conflict,
                "a schedule needs an interval or a cron expression".into(),
            );
        }
        for d in &schedule.after {
            if d == &schedule.name {
                return MetaResponse::Rejected(
                    Refusal::Conflict,
                    format!("schedule '{d}' cannot run after itself"),
                );
            }
            if !self.schedules.contains_key(d) {
                return MetaResponse::Rejected(
                    Refusal::NotFound,
                    format!(
                        "schedule '{d}' does not exist (named in AFTER){}",
                        did_you_mean(d, self.schedules.keys().map(String::as_str))
                    ),
                );
            }
        }
        let id = self.next_schedule_id.max(1);
        self.next_schedule_id = id + 1;
        let mut schedule = schedule.clone();
        schedule.id = id;
        schedule.run_now = None;
        self.schedules.insert(schedule.name.clone(), schedule);
        MetaResponse::JobId(id)
    }

    fn alloc_group(&mut self) -> u64 {
        let id = self.next_group_id.max(1);
        self.next_group_id = id + 1;
        id
    }

    /// The group of partition `partition` of `topic`.
    pub fn partition_group(&self, topic: &str, partition: u32) -> Option<&GroupInfo> {
        let t = self.topics.get(topic)?;
        let g = t.groups.get(partition as usize)?;
        self.groups.get(g)
    }

    /// The table's regions in key order, with their groups.
    pub fn regions_of<'a>(&'a self, table: &'a TableInfo) -> impl Iterator<Item = &'a GroupInfo> {
        table.regions.iter().filter_map(|r| self.groups.get(r))
    }

    /// The region of `table` holding the encoded `key`: the last one starting at or before it.
    pub fn region_at<'a>(&'a self, table: &TableInfo, key: &[u8]) -> Option<&'a GroupInfo> {
        let i = table
            .regions
            .partition_point(|r| self.region_start(*r).is_some_and(|s| s <= key));
        self.groups.get(table.regions.get(i.checked_sub(1)?)?)
    }

    /// The region of `table` holding the keys just below the encoded `end` (the last region when
    /// `end` is empty), where a reverse scan ending at `end` starts.
    pub fn region_before<'a>(&'a self, table: &TableInfo, end: &[u8]) -> Option<&'a GroupInfo> {
        let i = if end.is_empty() {
            table.regions.len()
        } else {
            table
                .regions
                .partition_point(|r| self.region_start(*r).is_some_and(|s| s < end))
        };
        self.groups.get(table.regions.get(i.max(1) - 1)?)
    }

    fn region_start(&self, group: u64) -> Option<&[u8]> {
        match &self.groups.get(&group)?.kind {
            GroupKind::Region { start, .. } => Some(start),
            _ => None,
        }
    }

    /// Groups whose target replica set includes `node`.
    pub fn groups_of(&self, node: u64) -> impl Iterator<Item = &GroupInfo> {
        self.groups
            .values()
            .filter(move |g| g.replicas.contains(&node))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boot() -> Catalog {
        let mut c = Catalog::default();
        c.apply(&MetaCommand::Bootstrap {
            node: NodeInfo {
                id: 1,
                addr: "a:1".into(),
                http_addr: "a:2".into(),
                kafka_addr: String::new(),
            },
        });
        c
    }

    #[test]
    fn node_ids_are_never_reused() {
        let mut c = boot();
        let add = |c: &mut Catalog, a: &str| {
            c.apply(&MetaCommand::AddNode {
                addr: a.into(),
                http_addr: String::new(),
                kafka_addr: String::new(),
            })
        };
        assert_eq!(add(&mut c, "b:1"), MetaResponse::NodeId(2));
        assert_eq!(add(&mut c, "c:1"), MetaResponse::NodeId(3));
        // The same address joining again is the same node.
        assert_eq!(add(&mut c, "b:1"), MetaResponse::NodeId(2));
        c.nodes.remove(&3);
        assert_eq!(add(&mut c, "d:1"), MetaResponse::NodeId(4));
    }

    #[test]
    fn splits_are_recorded_once_and_keep_regions_in_key_order() {
        let mut c = boot();
        let schema = TableSchema::parse("k VARCHAR, v VARCHAR", &["k".into()]).unwrap();
        let create = MetaCommand::CreateTable {
            name: "t".into(),
            schema,
            replicas: 1,
            split_bytes: 1024,
            split_keys: vec![],
            placement: vec![vec![1]],
        };
        assert_eq!(c.apply(&create), MetaResponse::Ok);
        let r1 = c.tables["t"].regions[0];
        let MetaResponse::GroupId(child) = c.apply(&MetaCommand::AllocateGroup) else {
            panic!("group id")
        };
        let split = MetaCommand::SplitRegion {
            parent: r1,
            epoch: 1,
            split_key: b"m".to_vec(),
            child,
        };
        assert_eq!(c.apply(&split), MetaResponse::Ok);
        assert_eq!(
            c.apply(&split),
            MetaResponse::Ok,
            "a repeated report is a no-op"
        );
        assert_eq!(c.tables["t"].regions, vec![r1, child]);
        let ranges: Vec<(Vec<u8>, Vec<u8>)> = c
            .regions_of(&c.tables["t"])
            .map(|g| match &g.kind {
                GroupKind::Region { start, end, .. } => (start.clone(), end.clone()),
                _ => unreachable!("regions"),
            })
            .collect();
        assert_eq!(
            ranges,
            vec![(vec![], b"m".to_vec()), (b"m".to_vec(), vec![])]
        );
        let t = &c.tables["t"];
        assert_eq!(c.region_at(t, b"a").map(|g| g.id), Some(r1));
        assert_eq!(c.region_at(t, b"m").map(|g| g.id), Some(child));
        assert_eq!(c.region_before(t, b"m").map(|g| g.id), Some(r1));
        assert_eq!(c.region_before(t, b"").map(|g| g.id), Some(child));
        assert_eq!(c.region_before(t, b"z").map(|g| g.id), Some(child));
        // A split of the parent at a key the child now holds is refused.
        let MetaResponse::GroupId(other) = c.apply(&MetaCommand::AllocateGroup) else {
            panic!("group id")
        };
        let bad = MetaCommand::SplitRegion {
            parent: r1,
            epoch: 2,
            split_key: b"x".to_vec(),
            child: other,
        };
        assert!(matches!(c.apply(&bad), MetaResponse::Rejected(..)));
        assert_eq!(
            c.apply(&MetaCommand::DropTable { name: "t".into() }),
            MetaResponse::Ok
        );
        assert!(c.groups.is_empty());
    }

    #[test]
    fn external_tables_share_the_namespace_of_tables_and_topics() {
        let mut c = boot();
        let topic = MetaCommand::CreateTopic {
            name: "events".into(),
            replicas: 1,
            retention_ms: 0,
            retention_bytes: 0,
            placement: vec![vec![1]],
            format: None,
        };
        assert_eq!(c.apply(&topic), MetaResponse::Ok);
        let ext = |name: &str| MetaCommand::CreateExternalTable {
            table: ExternalTableInfo {
                name: name.into(),
                definition: format!("CREATE EXTERNAL TABLE {name} STORED AS CSV LOCATION '/x'"),
            },
        };
        assert_eq!(
            c.apply(&ext("events")),
            MetaResponse::Rejected(
                Refusal::AlreadyExists,
                "topic 'events' already exists".into()
            )
        );
        assert_eq!(c.apply(&ext("raw")), MetaResponse::Ok);
        assert!(matches!(c.apply(&ext("raw")), MetaResponse::Rejected(..)));
        assert_eq!(c.name_taken("raw"), Some("external table"));
        let drop = MetaCommand::DropExternalTable { name: "raw".into() };
        assert_eq!(c.apply(&drop), MetaResponse::Ok);
        assert!(matches!(c.apply(&drop), MetaResponse::Rejected(..)));
        assert_eq!(c.name_taken("raw"), None);
    }

    #[test]
    fn topics_get_one_group_per_partition_and_names_are_unique() {
        let mut c = boot();
        let create = MetaCommand::CreateTopic {
            name: "t".into(),
            replicas: 1,
            retention_ms: 0,
            retention_bytes: 0,
            placement: vec![vec![1], vec![1], vec![1]],
            format: None,
        };
        assert_eq!(c.apply(&create), MetaResponse::Ok);
        assert_eq!(c.topics["t"].groups, vec![1, 2, 3]);
        assert!(matches!(c.apply(&create), MetaResponse::Rejected(..)));
        assert_eq!(c.partition_group("t", 2).unwrap().id, 3);
        assert_eq!(
            c.apply(&MetaCommand::DeleteTopic { name: "t".into() }),
            MetaResponse::Ok
        );
        assert!(c.groups.is_empty());
        // Group ids are not reused either.
        c.apply(&create);
        assert_eq!(c.topics["t"].groups, vec![4, 5, 6]);
    }

    fn schedule(name: &str, after: &[&str]) -> MetaCommand {
        MetaCommand::CreateSchedule {
            schedule: ScheduleInfo {
                name: name.into(),
                id: 0,
                statement: "SELECT 1".into(),
                every_ms: 60_000,
                cron: None,
                after: after.iter().map(|s| s.to_string()).collect(),
                paused: false,
                created_ms: 0,
                run_now: None,
            },
        }
    }

    #[test]
    fn schedules_need_their_dependencies_and_keep_them() {
        let mut c = Catalog::default();
        let rejected = |r: MetaResponse, kind: Refusal, words: &str| match r {
            MetaResponse::Rejected(k, m) => {
                assert!(m.contains(words), "{m}");
                assert_eq!(k, kind, "{m}");
            }
            other => panic!("expected a refusal naming '{words}', got {other:?}"),
        };
        rejected(
            c.apply(&schedule("b", &["a"])),
            Refusal::NotFound,
            "'a' does not exist",
        );
        rejected(
            c.apply(&schedule("a", &["a"])),
            Refusal::Conflict,
            "after itself",
        );
        assert_eq!(c.apply(&schedule("a", &[])), MetaResponse::JobId(1));
        assert_eq!(c.apply(&schedule("b", &["a"])), MetaResponse::JobId(2));
        // A misspelt name is answered with the closest that exists.
        assert_eq!(c.apply(&schedule("loyalty", &[])), MetaResponse::JobId(3));
        rejected(
            c.apply(&MetaCommand::SetSchedulePaused {
                name: "loyality".into(),
                paused: true,
            }),
            Refusal::NotFound,
            "schedule 'loyality' does not exist; did you mean 'loyalty'?",
        );
        rejected(
            c.apply(&schedule("c", &["loyal"])),
            Refusal::NotFound,
            "did you mean 'loyalty'?",
        );
        rejected(
            c.apply(&MetaCommand::DropTable {
                name: "loyalty".into(),
            }),
            Refusal::NotFound,
            "table 'loyalty' does not exist",
        );
        assert_eq!(
            c.apply(&MetaCommand::DropSchedule {
                name: "loyalty".into()
            }),
            MetaResponse::Ok
        );
        rejected(
            c.apply(&schedule("a", &[])),
            Refusal::AlreadyExists,
            "already exists",
        );
        rejected(
            c.apply(&MetaCommand::DropSchedule { name: "a".into() }),
            Refusal::Conflict,
            "'b' runs after 'a'",
        );
        c.apply(&MetaCommand::RunScheduleNow {
            name: "b".into(),
            at_ms: 42,
        });
        assert_eq!(c.schedules["b"].run_now, Some(42));
        c.apply(&MetaCommand::SetSchedulePaused {
            name: "b".into(),
            paused: true,
        });
        assert!(c.schedules["b"].paused);
        assert_eq!(
            c.apply(&MetaCommand::DropSchedule { name: "b".into() }),
            MetaResponse::Ok
        );
        assert_eq!(
            c.apply(&MetaCommand::DropSchedule { name: "a".into() }),
            MetaResponse::Ok
        );
        // Ids are not reused.
        assert_eq!(c.apply(&schedule("a", &[])), MetaResponse::JobId(4));
    }
}
