//! The partition table computation: which node owns each partition.
//!
//! This module owns one pure function, [`compute_owners`], and the consistent-hash [`Ring`] it
//! uses for preferences. The control plane leader calls it whenever membership changes and
//! publishes the result under a new epoch; nothing else decides ownership.
//!
//! It must never do I/O, read a clock, use randomness or keep global state: the output must be a
//! function of `(partition_count, members, previous)` only, so that the same inputs give the same
//! table on any leader, in any process, in any release that keeps the hashes below.
//!
//! # Algorithm: consistent hashing with bounded loads, sticky
//!
//! 1. **Ring.** Member `i` gets `VNODES_PER_WEIGHT × weight_i` virtual nodes (scaled down
//!    proportionally if the ring would exceed [`MAX_RING_POINTS`]); vnode `v` of node `id` sits
//!    at `key_hash(id, decimal(v))`. Partition `p` sits at [`partition_key`]`(p)`; its
//!    *preference list* is the distinct members met walking clockwise from there.
//! 2. **Capacities.** Exact fair shares: `P × w_i / W`, rounded by largest remainder so they sum
//!    to exactly `P`. Ties for a `+1` go to members that already hold more than their rounded-down
//!    share in `previous`, so no partition moves only because of rounding.
//! 3. **Stickiness.** Every partition whose previous owner is still a member stays. A member
//!    above capacity sheds its excess, first the partitions it deserves least: those where an
//!    under-capacity member comes earlier in the preference list (landing highest first), then
//!    those where it ranks lowest.
//! 4. **Bounded-load assignment.** Unassigned partitions (new, shed, orphaned) are placed in
//!    rounds: in round `r` each still-unplaced partition, in partition order, tries the `r`-th
//!    member of its preference list and takes it if it is below capacity. Every partition thus
//!    lands on the first member of its list that had room, and a partition is off its ring owner
//!    only when that owner's ring share exceeds its capacity.
//!
//! With no `previous` this is plain consistent hashing plus the bounded-load pass.
//!
//! # Properties (tested below)
//! - Every member ends with exactly its capacity, so `max/mean ≤ ⌈P/N⌉ / (P/N)` for equal
//!   weights — well inside the architecture's `⌈1.05 × P/N⌉` bound.
//! - From a balanced table, adding a node moves exactly the new node's share, all of it to the
//!   new node; removing a node moves only that node's partitions.

use std::cmp::Reverse;
use std::collections::HashMap;

use herald_proto::ids::NodeId;
use herald_proto::partition::{fmix64, key_hash};

/// Virtual nodes per unit of weight. 64 keeps ring-only imbalance around ±15–25 %, which the
/// bounded-load pass absorbs by moving few partitions off their ring owner.
pub const VNODES_PER_WEIGHT: u32 = 64;

/// Upper bound on ring points, so huge weights cannot make a table computation slow. Above it
/// every member's vnode count is scaled down proportionally (minimum one).
pub const MAX_RING_POINTS: u64 = 1 << 16;

/// Separates partition keys from any other use of `fmix64` on small integers.
const PARTITION_KEY_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// A cluster member as the partition table sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub node_id: NodeId,
    /// Relative capacity; must be at least 1.
    pub weight: u32,
}

/// Why a partition table cannot be computed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("no members")]
    NoMembers,
    #[error("member {0} has weight 0")]
    ZeroWeight(String),
    #[error("duplicate member {0}")]
    DuplicateMember(String),
    #[error("partition_count must be > 0")]
    NoPartitions,
}

/// Position of partition `partition` on the ring.
pub fn partition_key(partition: u32) -> u64 {
    fmix64(u64::from(partition) ^ PARTITION_KEY_SALT)
}

/// The consistent-hash ring (weighted virtual nodes) used for preferences.
///
/// Member indices returned by its methods are positions in the `members` slice it was built from.
#[derive(Clone, Debug)]
pub struct Ring {
    /// `(point, member index)`, sorted by point, then node id: ties are as good as impossible, but
    /// breaking them by id keeps the ring independent of member order.
    points: Vec<(u64, u32)>,
    /// Ring indices of each member's points, grouped by member, ascending within a group, so a
    /// walk can tell "first time this member is met" by binary search instead of a seen-set.
    member_points: Vec<u32>,
    /// `member_points[member_start[m]..member_start[m + 1]]` belongs to member `m`.
    member_start: Vec<u32>,
}

impl Ring {
    /// Builds the ring. A member with weight 0 still gets one point so every member appears in
    /// every preference list (`compute_owners` rejects weight 0 before getting here).
    pub fn new(members: &[Member]) -> Ring {
        let counts = vnode_counts(members);
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut points = Vec::with_capacity(total);
        for (index, (member, &count)) in members.iter().zip(&counts).enumerate() {
            for vnode in 0..count {
                let point = key_hash(member.node_id.as_str(), &vnode.to_string());
                points.push((point, index as u32));
            }
        }
        points.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| {
                    members[a.1 as usize]
                        .node_id
                        .cmp(&members[b.1 as usize].node_id)
                })
                .then_with(|| a.1.cmp(&b.1))
        });

        let mut member_start = vec![0u32; members.len() + 1];
        for &(_, member) in &points {
            member_start[member as usize + 1] += 1;
        }
        for i in 1..member_start.len() {
            member_start[i] += member_start[i - 1];
        }
        let mut fill: Vec<u32> = member_start[..members.len()].to_vec();
        let mut member_points = vec![0u32; points.len()];
        for (ring_index, &(_, member)) in points.iter().enumerate() {
            let slot = &mut fill[member as usize];
            member_points[*slot as usize] = ring_index as u32;
            *slot += 1;
        }
        Ring {
            points,
            member_points,
            member_start,
        }
    }

    /// The member owning `key` on the plain ring: the first point at or clockwise after `key`.
    ///
    /// # Panics
    /// If the ring was built from an empty member list.
    pub fn owner(&self, key: u64) -> usize {
        self.points[self.successor(key)].1 as usize
    }

    /// The distinct members met walking clockwise from `key`, nearest first: `key`'s preference
    /// list. Yields every member exactly once; allocates nothing.
    pub fn preferences(&self, key: u64) -> Preferences<'_> {
        let start = if self.points.is_empty() {
            0
        } else {
            self.successor(key)
        };
        Preferences {
            ring: self,
            start,
            next: start,
            steps: 0,
            yielded: 0,
        }
    }

    /// Number of members the ring was built from.
    pub fn member_count(&self) -> usize {
        self.member_start.len() - 1
    }

    /// Number of virtual nodes on the ring.
    pub fn point_count(&self) -> usize {
        self.points.len()
    }

    fn successor(&self, key: u64) -> usize {
        let index = self.points.partition_point(|&(point, _)| point < key);
        if index == self.points.len() { 0 } else { index }
    }

    /// Ring index of `member`'s first point at or clockwise after ring index `start`.
    fn first_point_from(&self, member: usize, start: usize) -> Option<usize> {
        let group = &self.member_points
            [self.member_start[member] as usize..self.member_start[member + 1] as usize];
        let i = group.partition_point(|&ring_index| (ring_index as usize) < start);
        group
            .get(i)
            .or(group.first())
            .map(|&ring_index| ring_index as usize)
    }
}

/// Iterator over a key's preference list; see [`Ring::preferences`].
#[derive(Clone, Debug)]
pub struct Preferences<'a> {
    ring: &'a Ring,
    start: usize,
    next: usize,
    steps: usize,
    yielded: usize,
}

impl Iterator for Preferences<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let len = self.ring.points.len();
        while self.yielded < self.ring.member_count() && self.steps < len {
            let index = self.next;
            self.next = if index + 1 == len { 0 } else { index + 1 };
            self.steps += 1;
            let member = self.ring.points[index].1 as usize;
            // A member is new exactly at its first point clockwise from the start.
            if self.ring.first_point_from(member, self.start) == Some(index) {
                self.yielded += 1;
                return Some(member);
            }
        }
        None
    }
}

fn vnode_counts(members: &[Member]) -> Vec<u32> {
    let raw: Vec<u128> = members
        .iter()
        .map(|m| u128::from(VNODES_PER_WEIGHT) * u128::from(m.weight.max(1)))
        .collect();
    let total: u128 = raw.iter().sum();
    let cap = u128::from(MAX_RING_POINTS);
    raw.iter()
        .map(|&r| {
            let scaled = if total > cap { r * cap / total } else { r };
            scaled.clamp(1, u128::from(u32::MAX)) as u32
        })
        .collect()
}

/// `owners[p]` = the node that owns partition `p`. `previous` is the last table's owners (may
/// name nodes that are no longer members, may be shorter or longer than `partition_count`).
/// Deterministic: same inputs -> same output, whatever the order of `members`.
pub fn compute_owners(
    partition_count: u32,
    members: &[Member],
    previous: Option<&[NodeId]>,
) -> Result<Vec<NodeId>, Error> {
    let id_rank = validate(partition_count, members)?;

    let index_of: HashMap<&str, usize> = members
        .iter()
        .enumerate()
        .map(|(i, m)| (m.node_id.as_str(), i))
        .collect();
    let mut owner: Vec<Option<usize>> = (0..partition_count as usize)
        .map(|p| {
            previous
                .and_then(|prev| prev.get(p))
                .and_then(|id| index_of.get(id.as_str()).copied())
        })
        .collect();
    let mut load = vec![0u32; members.len()];
    for &m in owner.iter().flatten() {
        load[m] += 1;
    }

    let capacity = capacities(partition_count, members, &load, &id_rank);
    let ring = Ring::new(members);
    let keys: Vec<u64> = (0..partition_count).map(partition_key).collect();

    shed_excess(&ring, &keys, &capacity, &mut owner, &mut load);
    assign_unassigned(&ring, &keys, &capacity, &id_rank, &mut owner, &mut load);

    Ok(owner
        .iter()
        .map(|o| {
            // assign_unassigned leaves no partition without an owner.
            let m = o.unwrap_or_default();
            members[m].node_id.clone()
        })
        .collect())
}

/// Checks the inputs; returns each member's rank in node-id order, the tie-breaker that makes the
/// result independent of the order of `members`.
fn validate(partition_count: u32, members: &[Member]) -> Result<Vec<usize>, Error> {
    if members.is_empty() {
        return Err(Error::NoMembers);
    }
    if let Some(m) = members.iter().find(|m| m.weight == 0) {
        return Err(Error::ZeroWeight(m.node_id.0.clone()));
    }
    let mut by_id: Vec<usize> = (0..members.len()).collect();
    by_id.sort_unstable_by(|&a, &b| members[a].node_id.cmp(&members[b].node_id));
    if let Some(pair) = by_id
        .windows(2)
        .find(|w| members[w[0]].node_id == members[w[1]].node_id)
    {
        return Err(Error::DuplicateMember(members[pair[0]].node_id.0.clone()));
    }
    if partition_count == 0 {
        return Err(Error::NoPartitions);
    }
    let mut id_rank = vec![0usize; members.len()];
    for (rank, &m) in by_id.iter().enumerate() {
        id_rank[m] = rank;
    }
    Ok(id_rank)
}

/// Exact weighted fair shares, largest-remainder rounded so they sum to `partition_count`.
fn capacities(
    partition_count: u32,
    members: &[Member],
    held: &[u32],
    id_rank: &[usize],
) -> Vec<u32> {
    let p = u128::from(partition_count);
    let total_weight: u128 = members.iter().map(|m| u128::from(m.weight)).sum();
    let mut capacity = Vec::with_capacity(members.len());
    let mut remainder = Vec::with_capacity(members.len());
    for m in members {
        let share = p * u128::from(m.weight);
        capacity.push((share / total_weight) as u32);
        remainder.push(share % total_weight);
    }
    let floor_sum: u64 = capacity.iter().map(|&c| u64::from(c)).sum();
    let spare = (u64::from(partition_count) - floor_sum) as usize;

    let mut order: Vec<usize> = (0..members.len()).collect();
    // A +1 given to a member already holding more than its floor saves one move; given to
    // anyone else it saves nothing. Hence: remainder, then "would otherwise shed", then more held.
    order.sort_unstable_by_key(|&i| {
        (
            Reverse(remainder[i]),
            Reverse(held[i] > capacity[i]),
            Reverse(held[i]),
            id_rank[i],
        )
    });
    for &i in order.iter().take(spare) {
        capacity[i] += 1;
    }
    capacity
}

/// Unassigns each over-capacity member's excess, least-deserved partitions first.
fn shed_excess(
    ring: &Ring,
    keys: &[u64],
    capacity: &[u32],
    owner: &mut [Option<usize>],
    load: &mut [u32],
) {
    let over: Vec<bool> = load.iter().zip(capacity).map(|(l, c)| l > c).collect();
    if !over.contains(&true) {
        return;
    }
    let under: Vec<bool> = load.iter().zip(capacity).map(|(l, c)| l < c).collect();

    // Sort key per partition: (no under-capacity member precedes the owner, rank of the first
    // such member, Reverse(rank of the owner), partition). Smallest is shed first.
    type ShedKey = (bool, usize, Reverse<usize>, usize);
    let mut candidates: Vec<Vec<ShedKey>> = vec![Vec::new(); capacity.len()];
    for (p, o) in owner.iter().enumerate() {
        let Some(m) = *o else { continue };
        if !over[m] {
            continue;
        }
        let mut first_under = None;
        let mut rank = 0;
        for x in ring.preferences(keys[p]) {
            if x == m {
                break;
            }
            if first_under.is_none() && under[x] {
                first_under = Some(rank);
            }
            rank += 1;
        }
        candidates[m].push((
            first_under.is_none(),
            first_under.unwrap_or(usize::MAX),
            Reverse(rank),
            p,
        ));
    }

    for (m, list) in candidates.iter_mut().enumerate() {
        if !over[m] {
            continue;
        }
        let excess = (load[m] - capacity[m]) as usize;
        list.sort_unstable();
        for &(_, _, _, p) in list.iter().take(excess) {
            owner[p] = None;
        }
        load[m] = capacity[m];
    }
}

/// Places every unowned partition on the first member of its preference list with room, in
/// rounds by preference rank so that ring owners fill with their own partitions before spill-over.
fn assign_unassigned(
    ring: &Ring,
    keys: &[u64],
    capacity: &[u32],
    id_rank: &[usize],
    owner: &mut [Option<usize>],
    load: &mut [u32],
) {
    let mut pending: Vec<(usize, Preferences<'_>)> = owner
        .iter()
        .enumerate()
        .filter(|(_, o)| o.is_none())
        .map(|(p, _)| (p, ring.preferences(keys[p])))
        .collect();
    while !pending.is_empty() {
        pending.retain_mut(|(p, walk)| {
            let chosen = match walk.next() {
                Some(m) if load[m] < capacity[m] => m,
                Some(_) => return true,
                // Unreachable: capacities sum to the partition count, so some member on the
                // full preference list had room. Fall back to a total, deterministic choice.
                None => least_loaded(load, capacity, id_rank),
            };
            owner[*p] = Some(chosen);
            load[chosen] += 1;
            false
        });
    }
}

fn least_loaded(load: &[u32], capacity: &[u32], id_rank: &[usize]) -> usize {
    debug_assert!(false, "capacities must sum to the partition count");
    (0..load.len())
        .min_by_key(|&m| (i64::from(load[m]) - i64::from(capacity[m]), id_rank[m]))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u32 = 4096;

    fn member(id: &str, weight: u32) -> Member {
        Member {
            node_id: NodeId(id.to_string()),
            weight,
        }
    }

    fn equal_members(n: usize) -> Vec<Member> {
        (0..n).map(|i| member(&format!("node-{i:02}"), 1)).collect()
    }

    fn compute(members: &[Member], previous: Option<&[NodeId]>) -> Vec<NodeId> {
        compute_owners(P, members, previous).expect("valid input")
    }

    fn loads(owners: &[NodeId], members: &[Member]) -> Vec<usize> {
        members
            .iter()
            .map(|m| owners.iter().filter(|o| **o == m.node_id).count())
            .collect()
    }

    fn max_over_mean(owners: &[NodeId], members: &[Member]) -> f64 {
        let counts = loads(owners, members);
        assert_eq!(
            counts.iter().sum::<usize>(),
            owners.len(),
            "owner outside members"
        );
        let max = counts.iter().copied().max().unwrap_or(0) as f64;
        max / (owners.len() as f64 / members.len() as f64)
    }

    fn moved(before: &[NodeId], after: &[NodeId]) -> Vec<usize> {
        (0..after.len())
            .filter(|&p| before[p] != after[p])
            .collect()
    }

    fn assert_weighted_shares(members: &[Member]) {
        let owners = compute(members, None);
        let total: f64 = members.iter().map(|m| f64::from(m.weight)).sum();
        for (m, count) in members.iter().zip(loads(&owners, members)) {
            let want = f64::from(m.weight) / total;
            let got = count as f64 / f64::from(P);
            assert!(
                (got - want).abs() <= 0.05 * want,
                "{}: share {got:.4}, want {want:.4}",
                m.node_id
            );
        }
    }

    #[test]
    fn balanced_from_scratch() {
        for n in 3..=50 {
            let members = equal_members(n);
            let ratio = max_over_mean(&compute(&members, None), &members);
            assert!(ratio <= 1.05, "N={n}: max/mean {ratio:.4}");
        }
    }

    #[test]
    fn adding_a_node_moves_only_its_share_to_it() {
        for n in 3..=50 {
            let before_members = equal_members(n);
            let before = compute(&before_members, None);
            let after_members = equal_members(n + 1);
            let after = compute(&after_members, Some(&before));
            let new_node = &after_members[n].node_id;
            let moved = moved(&before, &after);
            let bound = 1.05 * f64::from(P) / (n + 1) as f64;
            assert!(
                moved.len() as f64 <= bound,
                "N={n}: moved {} > {bound:.1}",
                moved.len()
            );
            assert!(
                moved.iter().all(|&p| after[p] == *new_node),
                "N={n}: moved elsewhere"
            );
            assert!(max_over_mean(&after, &after_members) <= 1.05);
        }
    }

    #[test]
    fn ring_owners_keep_their_partitions_up_to_capacity() {
        // The bounded-load pass in rounds: a member misses one of its ring partitions only when
        // it is full, and it is full of ring partitions before taking any spill-over.
        for n in [3usize, 10, 25, 50] {
            let members = equal_members(n);
            let ring = Ring::new(&members);
            let owners = compute(&members, None);
            let counts = loads(&owners, &members);
            for (m, member) in members.iter().enumerate() {
                let ring_share: Vec<u32> = (0..P)
                    .filter(|&p| ring.owner(partition_key(p)) == m)
                    .collect();
                let kept = ring_share
                    .iter()
                    .filter(|&&p| owners[p as usize] == member.node_id)
                    .count();
                assert_eq!(
                    kept,
                    ring_share.len().min(counts[m]),
                    "N={n} {}",
                    member.node_id
                );
            }
        }
    }

    #[test]
    fn rounding_alone_moves_nothing() {
        // The new node sorts first by id, so only the "held more" tie-break keeps the +1s where
        // the partitions already are: the new node then takes exactly its rounded-down share.
        for n in 3..=50 {
            let before_members = equal_members(n);
            let before = compute(&before_members, None);
            let mut after_members = vec![member("aaa-new", 1)];
            after_members.extend(before_members);
            let after = compute(&after_members, Some(&before));
            assert_eq!(moved(&before, &after).len(), P as usize / (n + 1), "N={n}");
        }
    }

    #[test]
    fn shedding_prefers_partitions_the_new_node_is_ring_first_for() {
        for n in [5usize, 20, 50] {
            let before_members = equal_members(n);
            let before = compute(&before_members, None);
            let after_members = equal_members(n + 1);
            let after = compute(&after_members, Some(&before));
            let ring = Ring::new(&after_members);
            let new_first = |p: usize| ring.owner(partition_key(p as u32)) == n;
            for old in &before_members {
                let held: Vec<usize> = (0..before.len())
                    .filter(|&p| before[p] == old.node_id)
                    .collect();
                let shed: Vec<usize> = held
                    .iter()
                    .copied()
                    .filter(|&p| after[p] != old.node_id)
                    .collect();
                let preferred = held.iter().filter(|&&p| new_first(p)).count();
                let shed_preferred = shed.iter().filter(|&&p| new_first(p)).count();
                assert_eq!(
                    shed_preferred,
                    preferred.min(shed.len()),
                    "N={n} {}",
                    old.node_id
                );
            }
        }
    }

    #[test]
    fn removing_a_node_moves_only_its_partitions() {
        for n in 3..=50 {
            let before_members = equal_members(n);
            let before = compute(&before_members, None);
            let gone = before_members[n / 2].node_id.clone();
            let after_members: Vec<Member> = before_members
                .iter()
                .filter(|m| m.node_id != gone)
                .cloned()
                .collect();
            let after = compute(&after_members, Some(&before));
            for p in moved(&before, &after) {
                assert_eq!(
                    before[p], gone,
                    "N={n}: partition {p} moved off a surviving node"
                );
            }
            assert!(after.iter().all(|o| *o != gone));
            assert!(max_over_mean(&after, &after_members) <= 1.05);
        }
    }

    #[test]
    fn churn_sequence_stays_balanced_and_minimal() {
        // Tables built from tables, not from scratch: grow 3 -> 30, then shrink from the middle.
        let mut members = equal_members(3);
        let mut owners = compute(&members, None);
        for n in 3..30 {
            members.push(member(&format!("node-{n:02}"), 1));
            let next = compute(&members, Some(&owners));
            let moved = moved(&owners, &next);
            assert!(moved.len() as f64 <= 1.05 * f64::from(P) / members.len() as f64);
            assert!(moved.iter().all(|&p| next[p] == members[n].node_id));
            owners = next;
        }
        while members.len() > 3 {
            let gone = members.remove(members.len() / 2).node_id;
            let next = compute(&members, Some(&owners));
            assert!(moved(&owners, &next).iter().all(|&p| owners[p] == gone));
            assert!(max_over_mean(&next, &members) <= 1.05);
            owners = next;
        }
    }

    #[test]
    fn weighted_shares() {
        assert_weighted_shares(&[
            member("a", 1),
            member("b", 2),
            member("c", 3),
            member("d", 4),
        ]);
        assert_weighted_shares(&[member("a", 1), member("b", 1), member("c", 5)]);
        // A fixed LCG so the mix is arbitrary yet the same on every run.
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mix: Vec<Member> = (0..20)
            .map(|i| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                member(&format!("w-{i}"), 1 + (state >> 61) as u32)
            })
            .collect();
        assert_weighted_shares(&mix);
    }

    #[test]
    fn weight_change_only_moves_to_the_grown_node() {
        let before_members = equal_members(10);
        let before = compute(&before_members, None);
        let mut after_members = before_members.clone();
        after_members[4].weight = 2;
        let after = compute(&after_members, Some(&before));
        let grown = &after_members[4].node_id;
        assert!(moved(&before, &after).iter().all(|&p| after[p] == *grown));
        let share = loads(&after, &after_members)[4] as f64 / f64::from(P);
        assert!((share - 2.0 / 11.0).abs() <= 0.05 * 2.0 / 11.0);
    }

    #[test]
    fn foreign_or_short_previous_is_tolerated() {
        let members = equal_members(7);
        // Previous names a departed node, piles everything on one member, and is too short.
        let mut previous: Vec<NodeId> = vec![members[0].node_id.clone(); 3000];
        previous.extend(std::iter::repeat_n(NodeId("gone".into()), 500));
        let owners = compute(&members, Some(&previous));
        assert_eq!(owners.len(), P as usize);
        assert!(max_over_mean(&owners, &members) <= 1.05);
        // Sticky: member 0 keeps as many of its old partitions as its capacity allows.
        let kept = (0..3000)
            .filter(|&p| owners[p] == members[0].node_id)
            .count();
        assert_eq!(kept, loads(&owners, &members)[0]);
    }

    #[test]
    fn deterministic_and_independent_of_member_order() {
        let members = equal_members(17);
        let first = compute(&members, None);
        assert_eq!(first, compute(&members, None));
        let mut reversed = members.clone();
        reversed.reverse();
        assert_eq!(first, compute(&reversed, None));
        let mut grown = members.clone();
        grown.push(member("node-99", 3));
        let next = compute(&grown, Some(&first));
        grown.rotate_left(5);
        assert_eq!(next, compute(&grown, Some(&first)));
    }

    #[test]
    fn errors() {
        assert_eq!(compute_owners(P, &[], None), Err(Error::NoMembers));
        assert_eq!(
            compute_owners(P, &[member("a", 1), member("b", 0)], None),
            Err(Error::ZeroWeight("b".into()))
        );
        assert_eq!(
            compute_owners(P, &[member("a", 1), member("b", 1), member("a", 2)], None),
            Err(Error::DuplicateMember("a".into()))
        );
        assert_eq!(
            compute_owners(0, &[member("a", 1)], None),
            Err(Error::NoPartitions)
        );
    }

    #[test]
    fn ring_preferences_list_every_member_once_owner_first() {
        let members: Vec<Member> = (0..9)
            .map(|i| member(&format!("r{i}"), 1 + i % 3))
            .collect();
        let ring = Ring::new(&members);
        assert_eq!(ring.member_count(), 9);
        assert_eq!(ring.point_count(), 64 * (3 + 6 + 9));
        for p in 0..500 {
            let key = partition_key(p);
            let prefs: Vec<usize> = ring.preferences(key).collect();
            assert_eq!(prefs[0], ring.owner(key));
            let mut sorted = prefs.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (0..9).collect::<Vec<_>>());
        }
        assert_eq!(
            ring.preferences(u64::MAX).next(),
            Some(ring.owner(u64::MAX))
        );
    }

    #[test]
    fn ring_size_is_capped() {
        let members = [member("a", u32::MAX), member("b", 1)];
        let ring = Ring::new(&members);
        assert!(ring.point_count() as u64 <= MAX_RING_POINTS + 2);
        assert_eq!(ring.preferences(0).count(), 2);
    }

    /// Figures for the design note: the ring alone vs the bounded-load table. Prints; asserts only
    /// sanity, so it documents rather than gates.
    #[test]
    fn ring_only_balance_figures() {
        use consistent_hash::{DefaultHash, Node, StaticHashRing};

        fn crate_ring(n: usize) -> Vec<NodeId> {
            let ring = StaticHashRing::new(
                DefaultHash,
                (0..n).map(|i| Node::new(format!("node-{i:02}")).quantity(160)),
            );
            (0..P)
                .map(|p| {
                    let node = ring.calc_candidates(&p).next().expect("non-empty ring");
                    NodeId(node.key.clone())
                })
                .collect()
        }
        fn herald_ring(n: usize) -> Vec<NodeId> {
            let members = equal_members(n);
            let ring = Ring::new(&members);
            (0..P)
                .map(|p| members[ring.owner(partition_key(p))].node_id.clone())
                .collect()
        }

        eprintln!("P={P}; moved = partitions changing owner on N -> N+1, as count and / (P/(N+1))");
        eprintln!(
            "{:>3} | {:>28} | {:>28} | {:>28}",
            "N", "consistent_hash 160 vnodes", "herald ring only 64 vnodes", "herald bounded-load"
        );
        for n in [3usize, 10, 25, 50] {
            let ideal = f64::from(P) / (n + 1) as f64;
            let members = equal_members(n);
            let grown = equal_members(n + 1);
            let mut cells = Vec::new();
            for (before, after) in [
                (crate_ring(n), crate_ring(n + 1)),
                (herald_ring(n), herald_ring(n + 1)),
                {
                    let before = compute(&members, None);
                    let after = compute(&grown, Some(&before));
                    (before, after)
                },
            ] {
                let ratio = max_over_mean(&before, &members);
                assert!(ratio >= 1.0);
                let moved = moved(&before, &after).len();
                cells.push(format!(
                    "max/mean {ratio:.3} moved {moved:>4} ({:.2}x)",
                    moved as f64 / ideal
                ));
            }
            eprintln!("{n:>3} | {} | {} | {}", cells[0], cells[1], cells[2]);
        }

        // How far the bounded-load table strays from the ring: partitions not on their ring owner.
        for n in [3usize, 10, 25, 50] {
            let members = equal_members(n);
            let ring = Ring::new(&members);
            let owners = compute(&members, None);
            let off = (0..P)
                .filter(|&p| members[ring.owner(partition_key(p))].node_id != owners[p as usize])
                .count();
            eprintln!(
                "N={n:>2}: bounded-load places {off} of {P} partitions ({:.1}%) off their ring owner",
                100.0 * off as f64 / f64::from(P)
            );
        }
    }
}
