//! # journey::waits: the journey waits of the partitions this node serves, paged from the store
//!
//! Owns firing waits on time without holding them: each partition's waits are a due-ordered
//! sorted set in the store ([`super::person::WaitMember`]); the pager keeps, per served
//! partition, only the due time of the earliest wait it knows of, reads the head of the set
//! when that time comes (or when it knows nothing yet: a partition just taken over), and hands
//! each due member to the person's actor ([`WakeSink`]). A wait of 90 days costs store bytes
//! and nothing here. A takeover needs no special path: the new owner reads the head of the set,
//! so an overdue wait fires at once and none is lost; the actor's checked transition makes a
//! second firing change nothing.
//!
//! Must never change a wait itself (only the person's actor does, with its state) and never
//! hold more than `in_flight_max` fired waits at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use herald_proto::PartitionId;
use herald_proto::clock::SharedClock;
use herald_store::{Fence, Store};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};
use tracing::warn;

use super::person::{WaitMember, waits_key};
use crate::ownership::Ownership;

/// How the pager behaves.
#[derive(Clone, Copy, Debug)]
pub struct WaitSettings {
    /// How often it looks (real time): the most a wait fires late, store stalls aside.
    pub tick: Duration,
    /// Members read per page.
    pub page: usize,
    /// Fired waits not yet handled, at most, per node.
    pub in_flight_max: usize,
}

impl Default for WaitSettings {
    fn default() -> Self {
        WaitSettings {
            tick: Duration::from_millis(100),
            page: 256,
            in_flight_max: 2048,
        }
    }
}

/// Where due waits go: the person's actor (the intake, in production).
pub trait WakeSink: Send + Sync {
    /// Hands `member` to its person's actor. `ticket` goes with the job and tells the pager
    /// the wait was handled when it is dropped (handled, refused or abandoned alike).
    fn wake(&self, fence: Fence, member: WaitMember, ticket: WakeTicket);
}

/// Tells the pager, when dropped, that a fired wait was handled.
pub struct WakeTicket {
    partition: PartitionId,
    member: String,
    done: mpsc::UnboundedSender<(PartitionId, String)>,
}

impl Drop for WakeTicket {
    fn drop(&mut self) {
        let _ = self
            .done
            .send((self.partition, std::mem::take(&mut self.member)));
    }
}

/// What the pager knows of one served partition.
struct Known {
    /// The earliest due time it knows of; `i64::MIN` = read the head; `i64::MAX` = empty.
    next_due: i64,
    in_flight: HashSet<String>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: SharedClock,
    settings: WaitSettings,
    partitions: Mutex<HashMap<PartitionId, Known>>,
    /// The sum of the partitions' `in_flight`.
    in_flight: AtomicUsize,
    /// Some tenant has a journey (see `journeys_exist`).
    journeys_exist: AtomicBool,
    changed: Notify,
}

/// The pager's handle (cheap to clone).
#[derive(Clone)]
pub struct JourneyWaits {
    inner: Arc<Inner>,
}

impl JourneyWaits {
    pub fn new(store: Arc<dyn Store>, clock: SharedClock, settings: WaitSettings) -> Self {
        JourneyWaits {
            inner: Arc::new(Inner {
                store,
                clock,
                settings,
                partitions: Mutex::new(HashMap::new()),
                in_flight: AtomicUsize::new(0),
                journeys_exist: AtomicBool::new(false),
                changed: Notify::new(),
            }),
        }
    }

    /// A wait due at `due_unix_ms` was written in `partition`.
    pub fn added(&self, partition: PartitionId, due_unix_ms: i64) {
        let mut partitions = self.inner.partitions.lock();
        if let Some(known) = partitions.get_mut(&partition)
            && due_unix_ms < known.next_due
        {
            known.next_due = due_unix_ms;
        }
        drop(partitions);
        self.inner.changed.notify_one();
    }

    /// Waits known to be in flight (for tests and metrics).
    pub fn in_flight(&self) -> usize {
        self.inner.in_flight.load(Ordering::Acquire)
    }

    fn at_capacity(&self) -> bool {
        self.in_flight() >= self.inner.settings.in_flight_max
    }

    /// Read `partition`'s head at the next look.
    fn reread(&self, partition: PartitionId) {
        if let Some(known) = self.inner.partitions.lock().get_mut(&partition) {
            known.next_due = i64::MIN;
        }
    }

    /// Pages the served partitions' waits until shutdown.
    pub async fn run(
        self,
        ownership: Arc<Ownership>,
        sink: Arc<dyn WakeSink>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut ticker = tokio::time::interval(self.inner.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = self.inner.changed.notified() => {}
                handled = done_rx.recv() => {
                    if let Some(handled) = handled {
                        self.handled(handled);
                    }
                }
                _ = shutdown.changed() => return,
            }
            while let Ok(handled) = done_rx.try_recv() {
                self.handled(handled);
            }
            if *shutdown.borrow() {
                return;
            }
            self.page(&ownership, &*sink, &done_tx).await;
        }
    }

    /// A fired wait was handled: read the partition's head again (the wait may still be there
    /// if its walk could not finish; the next one may be earlier than what was known).
    fn handled(&self, (partition, member): (PartitionId, String)) {
        let mut partitions = self.inner.partitions.lock();
        if let Some(known) = partitions.get_mut(&partition) {
            if known.in_flight.remove(&member) {
                self.inner.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            known.next_due = i64::MIN;
        }
    }

    /// Whether any tenant has a journey (until one does, no partition can have a wait and the
    /// pager reads nothing: a cluster without journeys pays no read per partition, not even
    /// when it takes partitions over). Once true, it stays true.
    async fn journeys_exist(&self) -> bool {
        if self.inner.journeys_exist.load(Ordering::Acquire) {
            return true;
        }
        let found = self
            .inner
            .store
            .members_after(&herald_store::keys::journey::tenants(), None, 1)
            .await
            .is_ok_and(|tenants| !tenants.is_empty());
        if found {
            self.inner.journeys_exist.store(true, Ordering::Release);
        }
        found
    }

    /// One look at every served partition whose earliest wait is due.
    async fn page(
        &self,
        ownership: &Ownership,
        sink: &dyn WakeSink,
        done: &mpsc::UnboundedSender<(PartitionId, String)>,
    ) {
        if !self.journeys_exist().await {
            return;
        }
        let served = ownership.served();
        let now = self.inner.clock.now_unix_ms();
        let due: Vec<Fence> = {
            let mut partitions = self.inner.partitions.lock();
            let serving: HashSet<PartitionId> = served.iter().map(|f| f.partition).collect();
            let in_flight = &self.inner.in_flight;
            partitions.retain(|p, known| {
                let keep = serving.contains(p);
                if !keep {
                    in_flight.fetch_sub(known.in_flight.len(), Ordering::AcqRel);
                }
                keep
            });
            served
                .iter()
                .filter(|fence| {
                    let known = partitions.entry(fence.partition).or_insert(Known {
                        next_due: i64::MIN,
                        in_flight: HashSet::new(),
                    });
                    // Taken for reading: waits added meanwhile lower it again.
                    let due = known.next_due <= now;
                    if due {
                        known.next_due = i64::MAX;
                    }
                    due
                })
                .copied()
                .collect()
        };
        for (index, fence) in due.iter().enumerate() {
            if self.at_capacity() {
                // Handled waits free room; these partitions are read at a later look.
                for fence in &due[index..] {
                    self.reread(fence.partition);
                }
                return;
            }
            if let Err(error) = self.read_head(*fence, now, sink, done).await {
                warn!(partition = %fence.partition, %error, "reading journey waits failed");
                self.reread(fence.partition);
            }
        }
    }

    /// Reads `fence`'s partition from its head, fires what is due, and notes the next due.
    async fn read_head(
        &self,
        fence: Fence,
        now: i64,
        sink: &dyn WakeSink,
        done: &mpsc::UnboundedSender<(PartitionId, String)>,
    ) -> Result<(), herald_store::Error> {
        let key = waits_key(fence.partition);
        let page = self.inner.settings.page;
        let mut after: Option<String> = None;
        let next_due = loop {
            let members = self
                .inner
                .store
                .members_after(&key, after.as_deref(), page)
                .await?;
            let full = members.len() == page;
            let mut upcoming = None;
            for member in members.iter() {
                let Some(wait) = WaitMember::parse(member) else {
                    continue;
                };
                if wait.due_unix_ms > now {
                    upcoming = Some(wait.due_unix_ms);
                    break;
                }
                let fire = {
                    let mut partitions = self.inner.partitions.lock();
                    let Some(known) = partitions.get_mut(&fence.partition) else {
                        // Not served any more.
                        return Ok(());
                    };
                    let new = known.in_flight.insert(member.clone());
                    if new {
                        self.inner.in_flight.fetch_add(1, Ordering::AcqRel);
                    }
                    new
                };
                if fire {
                    let ticket = WakeTicket {
                        partition: fence.partition,
                        member: member.clone(),
                        done: done.clone(),
                    };
                    sink.wake(fence, wait, ticket);
                }
                if self.at_capacity() {
                    self.reread(fence.partition);
                    return Ok(());
                }
            }
            if let Some(due) = upcoming {
                break due;
            }
            if !full {
                break i64::MAX;
            }
            after = members.last().cloned();
        };
        let mut partitions = self.inner.partitions.lock();
        if let Some(known) = partitions.get_mut(&fence.partition) {
            // A wait added while the page was read may be earlier: keep the earlier one.
            known.next_due = known.next_due.min(next_due);
        }
        Ok(())
    }
}
