//! The cluster catalog: what group 0 (the metadata group) replicates.
//!
//! Nodes, topics and the Raft groups behind their partitions, with each group's target replica set.
//! Every node holds group 0 (as a voter or a learner), so every node has the catalog locally and
//! starts or stops its replicas by watching it. The placement loop on the leader of group 0 decides
//! replica sets and proposes them as [`MetaCommand`]s; applying a command is deterministic.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The id of the metadata group.
pub const METADATA_GROUP: u64 = 0;

/// Name prefix reserved for Weir's own topics.
pub const INTERNAL_PREFIX: &str = "__";

/// A member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Never reused, even after the node leaves.
    pub id: u64,
    /// gRPC address other nodes and clients use.
    pub addr: String,
    /// HTTP address (health, metrics, ingest).
    pub http_addr: String,
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
    /// The command was refused (name taken, unknown topic...); the catalog is unchanged.
    Rejected(String),
}

impl Catalog {
    /// Applies a command; refused commands leave the catalog unchanged.
    pub fn apply(&mut self, cmd: &MetaCommand) -> MetaResponse {
        match cmd {
            MetaCommand::Bootstrap { node } => {
                if !self.nodes.is_empty() {
                    return MetaResponse::Rejected("cluster is already bootstrapped".into());
                }
                self.nodes.insert(node.id, node.clone());
                self.next_node_id = node.id + 1;
                self.next_group_id = self.next_group_id.max(1);
                MetaResponse::NodeId(node.id)
            }
            MetaCommand::AddNode { addr, http_addr } => {
                if self.nodes.is_empty() {
                    return MetaResponse::Rejected(
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
                    },
                );
                MetaResponse::NodeId(id)
            }
            MetaCommand::UpdateNode { node } => {
                if !self.nodes.contains_key(&node.id) {
                    return MetaResponse::Rejected(format!("node {} is not a member", node.id));
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
            } => {
                if self.topics.contains_key(name) {
                    return MetaResponse::Rejected(format!("topic '{name}' already exists"));
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
                None => MetaResponse::Rejected(format!("topic '{name}' does not exist")),
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
            MetaCommand::SetReplicas { group, replicas } => match self.groups.get_mut(group) {
                Some(g) => {
                    if &g.replicas != replicas {
                        g.replicas = replicas.clone();
                        g.epoch += 1;
                    }
                    MetaResponse::Ok
                }
                None => MetaResponse::Rejected(format!("group {group} does not exist")),
            },
        }
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
    fn topics_get_one_group_per_partition_and_names_are_unique() {
        let mut c = boot();
        let create = MetaCommand::CreateTopic {
            name: "t".into(),
            replicas: 1,
            retention_ms: 0,
            retention_bytes: 0,
            placement: vec![vec![1], vec![1], vec![1]],
        };
        assert_eq!(c.apply(&create), MetaResponse::Ok);
        assert_eq!(c.topics["t"].groups, vec![1, 2, 3]);
        assert!(matches!(c.apply(&create), MetaResponse::Rejected(_)));
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
}
