//! # membership: who is in the cluster, and the table that follows from it
//!
//! Owns the member registry of one leadership term (each node's [`NodeInfo`] and the facts of
//! its last heartbeat) and the translation of a member list into a [`PartitionTable`] through
//! [`crate::partition_table::compute_owners`].
//!
//! It must never do I/O, read the clock (callers pass `now`) or publish anything: the leader
//! (the `leader` module) persists a table before anyone sees it. Keeping this module pure is what
//! lets the leader compute a candidate table, persist it, and only then commit the change.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use herald_proto::NodeId;
use herald_proto::v1::{NodeInfo, PartitionTable};

use crate::Error;
use crate::partition_table::{self, Member};

/// Weight given to a node that sends none (proto3 default 0).
pub const DEFAULT_WEIGHT: u32 = 1;
/// Heaviest weight a node may claim: it bounds how lopsided a table can get from one bad config.
pub const MAX_WEIGHT: u32 = 1_000;
/// Longest node id accepted.
pub const MAX_NODE_ID_LEN: usize = 128;
/// Longest node address accepted.
pub const MAX_ADDRESS_LEN: usize = 256;

/// What the leader knows about one member.
#[derive(Clone, Debug)]
pub struct MemberState {
    pub info: NodeInfo,
    /// Last heartbeat, join, or the start of the leadership term for members inherited from the
    /// stored table (they get a full failure timeout to find the new leader).
    pub last_heartbeat: Instant,
    /// The newest table epoch the node reported as applied (0 until its first heartbeat).
    pub applied_epoch: u64,
    /// Partitions the node reported serving (0 until its first heartbeat).
    pub serving_partitions: u32,
}

/// A change of the member set. Each one that changes the set produces exactly one new epoch.
#[derive(Clone, Debug)]
pub enum Change {
    /// Add a node, or update its address/weight when it rejoins.
    Join(NodeInfo),
    /// Planned leave.
    Leave(NodeId),
    /// Nodes declared dead by the failure detector, removed together (one epoch for all).
    Expire(Vec<NodeId>),
}

/// How a join relates to the current members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JoinKind {
    New,
    /// Same node id, new address or weight: the table must be republished.
    Updated,
    /// Same node id, address and weight: nothing to recompute.
    Unchanged,
}

/// The members of one leadership term.
#[derive(Clone, Debug, Default)]
pub struct Membership {
    members: BTreeMap<NodeId, MemberState>,
}

impl Membership {
    /// The members recorded in a stored table; each gets `now` as its last heartbeat so that a
    /// new leader does not declare the whole cluster dead at once.
    pub fn from_table(table: &PartitionTable, now: Instant) -> Self {
        let members = table
            .nodes
            .iter()
            .map(|info| {
                (
                    NodeId(info.node_id.clone()),
                    MemberState {
                        info: info.clone(),
                        last_heartbeat: now,
                        applied_epoch: 0,
                        serving_partitions: 0,
                    },
                )
            })
            .collect();
        Self { members }
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn join_kind(&self, info: &NodeInfo) -> JoinKind {
        match self.members.get(&NodeId(info.node_id.clone())) {
            None => JoinKind::New,
            Some(m) if m.info == *info => JoinKind::Unchanged,
            Some(_) => JoinKind::Updated,
        }
    }

    /// Whether `change` alters the member set (and so needs a new epoch).
    pub fn changes_members(&self, change: &Change) -> bool {
        match change {
            Change::Join(info) => self.join_kind(info) != JoinKind::Unchanged,
            Change::Leave(node) => self.members.contains_key(node),
            Change::Expire(nodes) => nodes.iter().any(|n| self.members.contains_key(n)),
        }
    }

    /// The member list after `change`, sorted by node id (the table's `nodes` order), without
    /// modifying `self`.
    pub fn nodes_after(&self, change: &Change) -> Vec<NodeInfo> {
        let mut nodes: BTreeMap<&str, &NodeInfo> = self
            .members
            .iter()
            .map(|(id, m)| (id.as_str(), &m.info))
            .collect();
        match change {
            Change::Join(info) => {
                nodes.insert(info.node_id.as_str(), info);
            }
            Change::Leave(node) => {
                nodes.remove(node.as_str());
            }
            Change::Expire(dead) => {
                for node in dead {
                    nodes.remove(node.as_str());
                }
            }
        }
        nodes.into_values().cloned().collect()
    }

    /// Applies `change`. A joining node counts as just heard from.
    pub fn apply(&mut self, change: &Change, now: Instant) {
        match change {
            Change::Join(info) => {
                let id = NodeId(info.node_id.clone());
                let state = self.members.entry(id).or_insert_with(|| MemberState {
                    info: info.clone(),
                    last_heartbeat: now,
                    applied_epoch: 0,
                    serving_partitions: 0,
                });
                state.info = info.clone();
                state.last_heartbeat = now;
            }
            Change::Leave(node) => {
                self.members.remove(node);
            }
            Change::Expire(dead) => {
                for node in dead {
                    self.members.remove(node);
                }
            }
        }
    }

    /// Records a heartbeat; false when the node is not a member (it must join again).
    pub fn heartbeat(
        &mut self,
        node: &NodeId,
        applied_epoch: u64,
        serving_partitions: u32,
        now: Instant,
    ) -> bool {
        let Some(state) = self.members.get_mut(node) else {
            return false;
        };
        state.last_heartbeat = now;
        state.applied_epoch = applied_epoch;
        state.serving_partitions = serving_partitions;
        true
    }

    /// Members silent for longer than `timeout`, with how long each has been silent.
    pub fn silent_longer_than(&self, timeout: Duration, now: Instant) -> Vec<(NodeId, Duration)> {
        self.members
            .iter()
            .filter_map(|(id, m)| {
                let silent = now.saturating_duration_since(m.last_heartbeat);
                (silent > timeout).then(|| (id.clone(), silent))
            })
            .collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &MemberState)> {
        self.members.iter()
    }
}

/// Checks a node's self-description and fills in the default weight. Errors name the field.
pub fn normalize_node_info(info: Option<NodeInfo>) -> Result<NodeInfo, herald_proto::error::Error> {
    use herald_proto::error::Error as Invalid;
    let Some(mut info) = info else {
        return Err(Invalid::invalid("node", "is required"));
    };
    if info.node_id.is_empty() || info.node_id.len() > MAX_NODE_ID_LEN {
        return Err(Invalid::invalid(
            "node.node_id",
            format!("must be 1..={MAX_NODE_ID_LEN} bytes"),
        ));
    }
    if info
        .node_id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Invalid::invalid(
            "node.node_id",
            "must not contain whitespace or control characters",
        ));
    }
    if info.address.is_empty() || info.address.len() > MAX_ADDRESS_LEN {
        return Err(Invalid::invalid(
            "node.address",
            format!("must be host:port, 1..={MAX_ADDRESS_LEN} bytes"),
        ));
    }
    let port_ok = info
        .address
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(Invalid::invalid("node.address", "must be host:port"));
    }
    if info.api_address.len() > MAX_ADDRESS_LEN {
        return Err(Invalid::invalid(
            "node.api_address",
            format!("must be at most {MAX_ADDRESS_LEN} bytes"),
        ));
    }
    if info.weight == 0 {
        info.weight = DEFAULT_WEIGHT;
    }
    if info.weight > MAX_WEIGHT {
        return Err(Invalid::invalid(
            "node.weight",
            format!("must be 0..={MAX_WEIGHT} (0 means {DEFAULT_WEIGHT})"),
        ));
    }
    Ok(info)
}

/// The owner of each partition in `table` as node ids, or `None` when the table assigns
/// nothing (an empty cluster) or is malformed.
pub fn owner_ids(table: &PartitionTable) -> Option<Vec<NodeId>> {
    if table.owners.is_empty() || table.owners.len() != table.partition_count as usize {
        return None;
    }
    table
        .owners
        .iter()
        .map(|&i| {
            table
                .nodes
                .get(i as usize)
                .map(|n| NodeId(n.node_id.clone()))
        })
        .collect()
}

/// Checks the shape of a table read from the store: one owner per partition, every owner index
/// naming a node. An empty cluster's table (no nodes, no owners) is valid.
pub fn check_table(table: &PartitionTable) -> Result<(), String> {
    if table.owners.is_empty() {
        return Ok(());
    }
    if table.owners.len() != table.partition_count as usize {
        return Err(format!(
            "{} owners for {} partitions",
            table.owners.len(),
            table.partition_count
        ));
    }
    if let Some(bad) = table
        .owners
        .iter()
        .find(|&&i| i as usize >= table.nodes.len())
    {
        return Err(format!(
            "owner index {bad} out of range ({} nodes)",
            table.nodes.len()
        ));
    }
    Ok(())
}

/// Builds the table of `epoch` for `nodes` (sorted by node id), moving as few partitions as
/// possible away from `previous`.
///
/// With no nodes the table has no owners: nodes must read that as "nobody owns anything yet".
pub fn build_table(
    partition_count: u32,
    nodes: Vec<NodeInfo>,
    previous: &PartitionTable,
    epoch: u64,
) -> Result<PartitionTable, Error> {
    debug_assert!(epoch > previous.epoch, "epochs must strictly increase");
    if nodes.is_empty() {
        return Ok(PartitionTable {
            epoch,
            partition_count,
            nodes,
            owners: Vec::new(),
        });
    }
    let members: Vec<Member> = nodes
        .iter()
        .map(|n| Member {
            node_id: NodeId(n.node_id.clone()),
            weight: n.weight,
        })
        .collect();
    // A previous table of another partition count cannot guide stickiness (the leader refuses
    // such tables anyway).
    let previous_owners =
        owner_ids(previous).filter(|_| previous.partition_count == partition_count);
    let owners =
        partition_table::compute_owners(partition_count, &members, previous_owners.as_deref())?;
    let index: HashMap<&str, u32> = nodes
        .iter()
        .zip(0u32..)
        .map(|(n, i)| (n.node_id.as_str(), i))
        .collect();
    if owners.len() != partition_count as usize {
        return Err(Error::InconsistentTable(format!(
            "compute_owners returned {} owners for {partition_count} partitions",
            owners.len()
        )));
    }
    let owners = owners
        .iter()
        .map(|owner| {
            index
                .get(owner.as_str())
                .copied()
                .ok_or_else(|| Error::InconsistentTable(format!("owner {owner} is not a member")))
        })
        .collect::<Result<Vec<u32>, Error>>()?;
    Ok(PartitionTable {
        epoch,
        partition_count,
        nodes,
        owners,
    })
}

/// How many partitions each node of `table` owns, by node id.
pub fn owned_counts(table: &PartitionTable) -> HashMap<&str, u32> {
    let mut by_index = vec![0u32; table.nodes.len()];
    for &owner in &table.owners {
        if let Some(count) = by_index.get_mut(owner as usize) {
            *count += 1;
        }
    }
    table
        .nodes
        .iter()
        .zip(by_index)
        .map(|(n, count)| (n.node_id.as_str(), count))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, port: u16) -> NodeInfo {
        NodeInfo {
            node_id: id.into(),
            address: format!("127.0.0.1:{port}"),
            weight: 1,
            ..Default::default()
        }
    }

    #[test]
    fn join_kinds_and_ordered_nodes() {
        let now = Instant::now();
        let mut m = Membership::default();
        assert_eq!(m.join_kind(&info("b", 1)), JoinKind::New);
        m.apply(&Change::Join(info("b", 1)), now);
        m.apply(&Change::Join(info("a", 2)), now);
        assert_eq!(m.join_kind(&info("b", 1)), JoinKind::Unchanged);
        assert_eq!(m.join_kind(&info("b", 9)), JoinKind::Updated);
        let ids: Vec<_> = m
            .nodes_after(&Change::Join(info("c", 3)))
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(m.len(), 2, "nodes_after must not modify");
        assert!(!m.changes_members(&Change::Leave(NodeId("zz".into()))));
    }

    #[test]
    fn silence_is_measured_from_the_last_heartbeat() {
        let start = Instant::now();
        let mut m = Membership::default();
        m.apply(&Change::Join(info("a", 1)), start);
        m.apply(&Change::Join(info("b", 2)), start);
        let later = start + Duration::from_millis(500);
        assert!(m.heartbeat(&NodeId("a".into()), 3, 10, later));
        assert!(!m.heartbeat(&NodeId("x".into()), 3, 10, later));
        let dead = m.silent_longer_than(Duration::from_millis(300), later);
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, NodeId("b".into()));
    }

    #[test]
    fn node_info_is_validated_by_field() {
        let err = normalize_node_info(Some(NodeInfo {
            node_id: "n1".into(),
            address: "nohost".into(),
            weight: 0,
            ..Default::default()
        }))
        .expect_err("bad address");
        assert!(err.to_string().contains("node.address"), "{err}");
        let ok = normalize_node_info(Some(info("n1", 80))).expect("valid");
        assert_eq!(ok.weight, 1);
        assert!(normalize_node_info(None).is_err());
    }

    #[test]
    fn empty_cluster_has_no_owners() {
        let previous = PartitionTable {
            epoch: 4,
            partition_count: 16,
            nodes: vec![],
            owners: vec![],
        };
        let table = build_table(16, vec![], &previous, 5).expect("empty table");
        assert!(table.owners.is_empty() && table.nodes.is_empty());
        assert!(check_table(&table).is_ok());
    }

    #[test]
    fn built_tables_name_members_only() {
        let empty = PartitionTable {
            epoch: 0,
            partition_count: 64,
            nodes: vec![],
            owners: vec![],
        };
        let nodes = vec![info("a", 1), info("b", 2), info("c", 3)];
        let table = build_table(64, nodes, &empty, 1).expect("table");
        assert_eq!(table.owners.len(), 64);
        assert!(check_table(&table).is_ok());
        let counts = owned_counts(&table);
        assert_eq!(counts.values().sum::<u32>(), 64);
        assert!(counts.values().all(|&c| c > 0), "{counts:?}");
        // Removing c keeps a's and b's partitions where they were.
        let smaller = build_table(64, vec![info("a", 1), info("b", 2)], &table, 2).expect("table");
        let before = owner_ids(&table).expect("owners");
        let after = owner_ids(&smaller).expect("owners");
        for (b, a) in before.iter().zip(&after) {
            if b.as_str() != "c" {
                assert_eq!(b, a);
            }
        }
    }
}
