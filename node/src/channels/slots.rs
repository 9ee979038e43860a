//! # slots: the send slots this node leased (sender side of the rate limits)
//!
//! Owns, per rate-limited key, the slots this node leased from the key's ChannelActor and has
//! not used yet, and the line of senders waiting for them. Slots are leased in small batches
//! (about 50 ms of the rate, never more than senders are waiting for), so a limit holds
//! cluster-wide without a round trip per message. Senders wait in arrival order; one of them at
//! a time (the fetcher) asks the owner for the whole line, hands the slots out in order, and
//! passes its role on when it got its own. When the owner's schedule is full for the next
//! second, its answer says when it has room again, and the fetcher alone sleeps until then —
//! waiting senders are woken only to be handed a slot. (Every waiting sender used to poll the
//! owner every 20 ms; under load those wake-ups were what made sleepers miss their slots.)
//!
//! A slot is used at its time or dropped, never late (a late one could bunch sends into one
//! second): a sender that wakes more than [`SLOT_TOLERANCE`] after its slot gives it up and
//! takes the next. Must never let a send through without a slot when its key is limited.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::error::Error;
use super::handle::Handles;
use super::keys::tenant_key;
use super::schedule::lease_size;
use super::stats::ChannelStats;

/// A slot more than this late (the sender was slow to get to it) is dropped, not used.
pub const SLOT_TOLERANCE: Duration = Duration::from_millis(5);

/// How long a sender keeps asking for slots before it gives up with an error (a backlog at a
/// low rate can be long: 3,000 messages at 50/s wait a minute).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(600);

/// Between asks after a failed one (the owner is moving, or unreachable).
const RETRY_AFTER_ERROR: Duration = Duration::from_millis(20);

/// Bounds on the owner's "room again in" hint.
const RETRY_HINT_MIN: Duration = Duration::from_millis(2);
const RETRY_HINT_MAX: Duration = Duration::from_millis(200);

/// One key's leased slots and the senders waiting for one.
#[derive(Default)]
struct Lease {
    state: Mutex<LeaseState>,
}

#[derive(Default)]
struct LeaseState {
    slots: VecDeque<Instant>,
    /// Senders waiting, in arrival order; each gets a slot, or the fetcher's role.
    waiters: VecDeque<oneshot::Sender<Turn>>,
    /// Whether a sender is asking the owner (at most one per key and node).
    fetching: bool,
    /// The fetcher asks nobody before this (the schedule is full until then, or it failed).
    quiet_until: Option<Instant>,
    last_error: Option<Error>,
}

/// What a waiting sender is handed.
enum Turn {
    Slot(Instant),
    /// Ask the owner for the waiting senders (the previous fetcher got its slot, or left).
    Fetch,
}

impl LeaseState {
    /// Drops the slots that are too late to use at `now`; returns how many.
    fn drop_late(&mut self, now: Instant) -> u64 {
        let mut dropped = 0;
        while self
            .slots
            .front()
            .is_some_and(|s| *s + SLOT_TOLERANCE < now)
        {
            self.slots.pop_front();
            dropped += 1;
        }
        dropped
    }

    /// Hands leased slots to waiting senders, in order.
    fn hand_out(&mut self) {
        while !self.waiters.is_empty() {
            let Some(slot) = self.slots.pop_front() else {
                return;
            };
            let Some(waiter) = self.waiters.pop_front() else {
                self.slots.push_front(slot);
                return;
            };
            if let Err(Turn::Slot(slot)) = waiter.send(Turn::Slot(slot)) {
                // That sender left (timed out, or its actor stopped): the next one gets it.
                self.slots.push_front(slot);
            }
        }
    }

    /// The fetcher leaves: the next waiting sender asks next, or nobody is asking.
    fn pass_fetch(&mut self) {
        while let Some(waiter) = self.waiters.pop_front() {
            if waiter.send(Turn::Fetch).is_ok() {
                return;
            }
        }
        self.fetching = false;
    }
}

/// Holds the fetcher's role; gives it on when dropped (also when the sender is cancelled).
struct Fetching<'a>(&'a Lease);

impl Drop for Fetching<'_> {
    fn drop(&mut self) {
        self.0.state.lock().pass_fetch();
    }
}

pub struct Slots {
    /// Key → sends per second (after the margin): the keys that need slots.
    limits: BTreeMap<String, f64>,
    leases: Mutex<HashMap<String, Arc<Lease>>>,
    stats: Arc<ChannelStats>,
}

impl Slots {
    pub fn new(limits: BTreeMap<String, f64>, stats: Arc<ChannelStats>) -> Self {
        Self {
            limits,
            leases: Mutex::new(HashMap::new()),
            stats,
        }
    }

    pub fn is_limited(&self, key: &str) -> bool {
        self.limits.contains_key(key)
    }

    /// Whether any key is limited (the senders' fast path).
    pub fn any_limited(&self) -> bool {
        !self.limits.is_empty()
    }

    /// Whether sending through `account` for `tenant` waits for a slot.
    pub fn may_wait(&self, account: &str, tenant: &str) -> bool {
        self.any_limited()
            && (self.is_limited(account) || self.is_limited(&tenant_key(account, tenant)))
    }

    /// Waits for a slot of `account` and, when the tenant has its own quota on it, for a slot
    /// of that quota first.
    pub async fn acquire_for(
        &self,
        handles: &Handles,
        account: &str,
        tenant: &str,
    ) -> Result<(), Error> {
        if !self.any_limited() {
            return Ok(());
        }
        let quota = tenant_key(account, tenant);
        if self.is_limited(&quota) {
            self.acquire(handles, &quota).await?;
        }
        self.acquire(handles, account).await
    }

    /// Waits for a slot of `key` (at once when it is not limited).
    pub async fn acquire(&self, handles: &Handles, key: &str) -> Result<(), Error> {
        let Some(rate) = self.limits.get(key).copied() else {
            return Ok(());
        };
        let lease = self
            .leases
            .lock()
            .entry(key.to_owned())
            .or_default()
            .clone();
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        loop {
            let slot = self.next_slot(handles, key, rate, &lease, deadline).await?;
            tokio::time::sleep_until(slot).await;
            // A busy runtime wakes sleepers late, all at once: a slot overslept is given up
            // rather than used together with its successors.
            if Instant::now() > slot + SLOT_TOLERANCE {
                self.stats.slots_dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            self.stats.slots_used.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
    }

    /// This sender's next slot: a leased one, or one it waits for in line (asking the owner
    /// itself when it is its turn to).
    async fn next_slot(
        &self,
        handles: &Handles,
        key: &str,
        rate: f64,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<Instant, Error> {
        enum Next {
            Ready(Instant),
            Fetch,
            Wait(oneshot::Receiver<Turn>),
        }
        let next = {
            let mut state = lease.state.lock();
            let dropped = state.drop_late(Instant::now());
            self.stats
                .slots_dropped
                .fetch_add(dropped, Ordering::Relaxed);
            if state.waiters.is_empty()
                && let Some(slot) = state.slots.pop_front()
            {
                Next::Ready(slot)
            } else if !state.fetching {
                state.fetching = true;
                Next::Fetch
            } else {
                let (turn, wait) = oneshot::channel();
                state.waiters.push_back(turn);
                Next::Wait(wait)
            }
        };
        let wait = match next {
            Next::Ready(slot) => return Ok(slot),
            Next::Fetch => return self.fetch(handles, key, rate, lease, deadline).await,
            Next::Wait(wait) => wait,
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(Turn::Slot(slot))) => Ok(slot),
            Ok(Ok(Turn::Fetch)) => self.fetch(handles, key, rate, lease, deadline).await,
            // The lease's state is never dropped while a sender waits on it.
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::SlotTimeout {
                account: key.to_owned(),
                timeout: ACQUIRE_TIMEOUT,
                reason: lease
                    .state
                    .lock()
                    .last_error
                    .as_ref()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "schedule full".into()),
            }),
        }
    }

    /// The fetcher's turn: asks the owner for the senders in line (never more: a slot nobody
    /// takes is a send lost), hands the slots out in order, and keeps one for itself; asks
    /// again when the owner's schedule has room, until it got its own.
    async fn fetch(
        &self,
        handles: &Handles,
        key: &str,
        rate: f64,
        lease: &Lease,
        deadline: Instant,
    ) -> Result<Instant, Error> {
        let _role = Fetching(lease);
        loop {
            let (quiet_until, count) = {
                let state = lease.state.lock();
                let wanted = u32::try_from(state.waiters.len() + 1).unwrap_or(u32::MAX);
                (state.quiet_until, lease_size(rate).min(wanted))
            };
            if let Some(until) = quiet_until
                && Instant::now() < until
            {
                tokio::time::sleep_until(until.min(deadline)).await;
            }
            if Instant::now() >= deadline {
                let reason = lease
                    .state
                    .lock()
                    .last_error
                    .as_ref()
                    .map(|e| e.to_string());
                return Err(Error::SlotTimeout {
                    account: key.to_owned(),
                    timeout: ACQUIRE_TIMEOUT,
                    reason: reason.unwrap_or_else(|| "schedule full".into()),
                });
            }
            let answer = handles.slots(key, count).await;
            let granted_at = Instant::now();
            let mut state = lease.state.lock();
            match answer {
                Ok(grant) => {
                    state.slots.extend(
                        grant
                            .delays_us
                            .iter()
                            .map(|d| granted_at + Duration::from_micros(*d)),
                    );
                    state.last_error = None;
                    state.quiet_until = (grant.delays_us.len() < count as usize).then(|| {
                        granted_at
                            + Duration::from_micros(grant.retry_after_us)
                                .clamp(RETRY_HINT_MIN, RETRY_HINT_MAX)
                    });
                }
                Err(error) => {
                    tracing::debug!(key, %error, "slot request failed");
                    state.last_error = Some(error);
                    state.quiet_until = Some(granted_at + RETRY_AFTER_ERROR);
                }
            }
            // The fetcher came first: its slot is the earliest.
            if let Some(slot) = state.slots.pop_front() {
                state.hand_out();
                // `_role` passes the fetcher's role on as it drops.
                return Ok(slot);
            }
        }
    }
}
