//! # ownership: which partitions this node serves, and the leases that prove it
//!
//! Owns the node's view of the partition table (newest epoch only, never an older one), the
//! serving state of each partition (the epoch at which its lease was acquired = the fence of its
//! writes), and the lease loop: acquire what the table gives this node, renew what it holds,
//! release what the table took away — after the partition's actors have stopped.
//!
//! Must never serve a partition without holding its lease, and never write with any fence but
//! the one recorded at acquisition.
//!
//! Failpoints (feature `failpoints`, listed in the crate docs): [`RENEW_LEASES`] in the renew
//! tick, [`HAND_OFF`] in a planned hand-off.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_proto::error::Error;
use herald_proto::v1::{NodeInfo, PartitionTable};
use herald_proto::{Epoch, NodeId, PartitionId};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use herald_store::{Fence, Store};

/// Failpoint in the renew tick, before the store is asked to renew the held leases. `return`:
/// this renewal is skipped, as if the store call had failed (the leases age; a run of them
/// lets the leases expire while the node still serves).
pub const RENEW_LEASES: &str = "ownership::renew_leases";
/// Failpoint in a planned hand-off, once the partitions' actors stopped and before their leases
/// are released. `return`: the release is skipped, as if it had failed (the next owner waits
/// for the leases to expire).
pub const HAND_OFF: &str = "ownership::hand_off";

/// Evaluates failpoint `name`: `true` when its action is `return`. Run on the blocking pool,
/// as the store runs its points: `sleep` and `pause` stall the lease loop, never a runtime
/// worker. Always `false` without the `failpoints` feature.
async fn failpoint(name: &'static str) -> bool {
    #[cfg(feature = "failpoints")]
    {
        let point = move || {
            fail::fail_point!(name, |_| true);
            false
        };
        match tokio::task::spawn_blocking(point).await {
            Ok(hit) => hit,
            Err(error) => match error.try_into_panic() {
                // A `panic` action panics in the lease loop, as an inline `fail_point!` would.
                Ok(panic) => std::panic::resume_unwind(panic),
                // The runtime is shutting down.
                Err(_) => false,
            },
        }
    }
    #[cfg(not(feature = "failpoints"))]
    {
        let _ = name;
        false
    }
}

/// An immutable partition table with lookups.
#[derive(Debug, Default)]
pub struct RoutingTable {
    pub epoch: Epoch,
    pub partition_count: u32,
    pub nodes: Vec<NodeInfo>,
    owners: Vec<u32>,
}

impl RoutingTable {
    pub fn from_proto(table: PartitionTable) -> Self {
        Self {
            epoch: Epoch(table.epoch),
            partition_count: table.partition_count,
            nodes: table.nodes,
            owners: table.owners,
        }
    }

    /// The owner of a partition; `None` while the table has no owner for it (empty cluster).
    pub fn owner(&self, partition: PartitionId) -> Option<&NodeInfo> {
        let index = *self.owners.get(partition.index())?;
        self.nodes.get(index as usize)
    }

    pub fn partitions_of<'a>(&'a self, node: &'a str) -> impl Iterator<Item = PartitionId> + 'a {
        self.owners
            .iter()
            .enumerate()
            .filter_map(move |(p, owner)| {
                let info = self.nodes.get(*owner as usize)?;
                (info.node_id == node).then_some(PartitionId(p as u32))
            })
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }
}

/// Told when partitions start or stop being served here.
pub trait PartitionLifecycle: Send + Sync + 'static {
    /// The lease was acquired: resume the partition's active messages.
    fn acquired(&self, partitions: Vec<(PartitionId, Epoch)>);
    /// The partition is no longer served here: stop its actors. The lease is released when the
    /// returned future completes.
    fn lost(&self, partitions: Vec<PartitionId>) -> futures::future::BoxFuture<'static, ()>;
}

#[derive(Clone, Debug)]
pub struct LeaseTimings {
    pub ttl: Duration,
    pub renew_interval: Duration,
    pub acquire_retry: Duration,
}

/// Shared, cheap to read from any task.
pub struct Ownership {
    node_id: NodeId,
    partition_count: AtomicU64,
    table: watch::Sender<Arc<RoutingTable>>,
    /// 0 = not served here; otherwise the epoch at which the lease was acquired.
    serving: parking_lot::RwLock<Vec<AtomicU64>>,
    /// Bumped on every serving-state change, so waiters can re-check.
    changes: watch::Sender<u64>,
}

impl Ownership {
    pub fn new(node_id: NodeId) -> Arc<Self> {
        Arc::new(Self {
            node_id,
            partition_count: AtomicU64::new(0),
            table: watch::channel(Arc::new(RoutingTable::default())).0,
            serving: parking_lot::RwLock::new(Vec::new()),
            changes: watch::channel(0).0,
        })
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    pub fn table(&self) -> Arc<RoutingTable> {
        self.table.borrow().clone()
    }

    pub fn subscribe_table(&self) -> watch::Receiver<Arc<RoutingTable>> {
        self.table.subscribe()
    }

    pub fn partition_count(&self) -> u32 {
        self.partition_count.load(Ordering::Acquire) as u32
    }

    /// The fence of a partition served here.
    pub fn fence(&self, partition: PartitionId) -> Option<Fence> {
        let serving = self.serving.read();
        let epoch = serving.get(partition.index())?.load(Ordering::Acquire);
        (epoch != 0).then_some(Fence {
            partition,
            epoch: Epoch(epoch),
        })
    }

    /// Every partition served here, with its fence.
    pub fn served(&self) -> Vec<Fence> {
        self.serving
            .read()
            .iter()
            .enumerate()
            .filter_map(|(index, epoch)| {
                let epoch = epoch.load(Ordering::Acquire);
                (epoch != 0).then_some(Fence {
                    partition: PartitionId(index as u32),
                    epoch: Epoch(epoch),
                })
            })
            .collect()
    }

    pub fn serving_count(&self) -> u32 {
        self.serving
            .read()
            .iter()
            .filter(|e| e.load(Ordering::Relaxed) != 0)
            .count() as u32
    }

    fn set_serving(&self, partition: PartitionId, epoch: u64) {
        if let Some(slot) = self.serving.read().get(partition.index()) {
            slot.store(epoch, Ordering::Release);
        }
        self.changes.send_modify(|v| *v += 1);
    }

    /// Resolves a partition for a write here: its fence when served here, `WrongOwner` when the
    /// table gives it to another node, and otherwise waits (bounded) for the lease.
    pub async fn fence_or_wait(
        &self,
        partition: PartitionId,
        timeout: Duration,
    ) -> Result<Fence, Error> {
        // Fast path first: the common case needs no subscription.
        if let Some(fence) = self.fence(partition) {
            return Ok(fence);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changes = self.changes.subscribe();
        let mut tables = self.table.subscribe();
        loop {
            if let Some(fence) = self.fence(partition) {
                return Ok(fence);
            }
            let table = self.table();
            match table.owner(partition) {
                Some(owner) if owner.node_id != self.node_id.0 => {
                    return Err(Error::WrongOwner { epoch: table.epoch });
                }
                _ => {}
            }
            tokio::select! {
                _ = changes.changed() => {}
                _ = tables.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(Error::Unavailable(format!(
                        "partition {partition} is not served yet (epoch {})",
                        table.epoch
                    )));
                }
            }
        }
    }

    /// Installs a newer table; older or equal epochs are ignored. Returns whether it was newer.
    pub fn install_table(&self, table: PartitionTable) -> bool {
        let current = self.table();
        if table.epoch <= current.epoch.0 && !current.is_empty() {
            return false;
        }
        let count = table.partition_count;
        {
            let mut serving = self.serving.write();
            if serving.len() != count as usize {
                if !serving.is_empty() {
                    warn!(old = serving.len(), new = count, "partition count changed");
                }
                *serving = (0..count).map(|_| AtomicU64::new(0)).collect();
            }
        }
        self.partition_count
            .store(u64::from(count), Ordering::Release);
        self.table
            .send_replace(Arc::new(RoutingTable::from_proto(table)));
        true
    }

    /// Runs the lease loop until `shutdown` fires; then stops every partition and releases.
    pub async fn run_leases(
        self: Arc<Self>,
        store: Arc<dyn Store>,
        lifecycle: Arc<dyn PartitionLifecycle>,
        timings: LeaseTimings,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tables = self.table.subscribe();
        let mut renew = tokio::time::interval(timings.renew_interval);
        renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retry = tokio::time::interval(timings.acquire_retry);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Partitions the table gives us but whose lease we do not hold yet.
        let mut wanted: BTreeSet<PartitionId> = BTreeSet::new();
        // Partitions whose lease we hold.
        let mut held: BTreeSet<PartitionId> = BTreeSet::new();
        loop {
            tokio::select! {
                changed = tables.changed() => {
                    if changed.is_err() { break; }
                    let table = self.table();
                    let mine: BTreeSet<PartitionId> = table.partitions_of(&self.node_id.0).collect();
                    let lost: Vec<PartitionId> = held.iter().filter(|p| !mine.contains(p)).copied().collect();
                    wanted = mine.iter().filter(|p| !held.contains(p)).copied().collect();
                    if !lost.is_empty() {
                        self.give_up(&store, &lifecycle, &lost).await;
                        for p in &lost { held.remove(p); }
                    }
                    self.try_acquire(&store, &lifecycle, &timings, table.epoch, &mut wanted, &mut held).await;
                }
                _ = retry.tick(), if !wanted.is_empty() => {
                    let epoch = self.table().epoch;
                    self.try_acquire(&store, &lifecycle, &timings, epoch, &mut wanted, &mut held).await;
                }
                _ = renew.tick() => {
                    if held.is_empty() { continue; }
                    if failpoint(RENEW_LEASES).await {
                        warn!(failpoint = RENEW_LEASES, "lease renewal skipped");
                        continue;
                    }
                    let all: Vec<PartitionId> = held.iter().copied().collect();
                    match store.renew_leases(&self.node_id, &all, timings.ttl).await {
                        Ok(still) => {
                            let still: BTreeSet<PartitionId> = still.into_iter().collect();
                            let lost: Vec<PartitionId> = all.into_iter().filter(|p| !still.contains(p)).collect();
                            if !lost.is_empty() {
                                warn!(count = lost.len(), "leases lost; stopping those partitions");
                                for p in &lost { self.set_serving(*p, 0); held.remove(p); }
                                lifecycle.lost(lost.clone()).await;
                                // The table may still give them to us: try again.
                                let table = self.table();
                                for p in lost {
                                    if table.owner(p).is_some_and(|o| o.node_id == self.node_id.0) {
                                        wanted.insert(p);
                                    }
                                }
                            }
                        }
                        Err(error) => warn!(%error, "lease renewal failed"),
                    }
                }
                _ = shutdown.changed() => break,
            }
        }
        let all: Vec<PartitionId> = held.iter().copied().collect();
        if !all.is_empty() {
            self.give_up(&store, &lifecycle, &all).await;
        }
        info!(node = %self.node_id, "lease loop stopped");
    }

    async fn give_up(
        &self,
        store: &Arc<dyn Store>,
        lifecycle: &Arc<dyn PartitionLifecycle>,
        partitions: &[PartitionId],
    ) {
        for p in partitions {
            self.set_serving(*p, 0);
        }
        lifecycle.lost(partitions.to_vec()).await;
        if failpoint(HAND_OFF).await {
            warn!(
                failpoint = HAND_OFF,
                count = partitions.len(),
                "lease release skipped"
            );
            return;
        }
        if let Err(error) = store.release_leases(&self.node_id, partitions).await {
            // The leases then expire on their own; the new owner waits for that.
            warn!(%error, count = partitions.len(), "lease release failed");
        }
        debug!(count = partitions.len(), "partitions released");
    }

    async fn try_acquire(
        &self,
        store: &Arc<dyn Store>,
        lifecycle: &Arc<dyn PartitionLifecycle>,
        timings: &LeaseTimings,
        epoch: Epoch,
        wanted: &mut BTreeSet<PartitionId>,
        held: &mut BTreeSet<PartitionId>,
    ) {
        if wanted.is_empty() {
            return;
        }
        let request: Vec<PartitionId> = wanted.iter().copied().collect();
        match store
            .acquire_leases(&self.node_id, epoch, &request, timings.ttl)
            .await
        {
            Ok(acquired) => {
                if acquired.is_empty() {
                    return;
                }
                let mut gained = Vec::with_capacity(acquired.len());
                for p in acquired {
                    wanted.remove(&p);
                    held.insert(p);
                    gained.push((p, epoch));
                }
                // Resume first (the actors load active messages), then open for new requests:
                // ordering among messages of one recipient is kept by its actor either way.
                for (p, e) in &gained {
                    self.set_serving(*p, e.0);
                }
                info!(node = %self.node_id, %epoch, count = gained.len(), waiting = wanted.len(), "partitions acquired");
                lifecycle.acquired(gained);
            }
            Err(error) => warn!(%error, "lease acquisition failed"),
        }
    }
}
