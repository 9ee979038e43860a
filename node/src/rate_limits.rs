//! # rate_limits: cluster-wide provider rate limits (the ChannelActor's schedule)
//!
//! Owns, for each rate-limited provider account (`[rate_limits]` in the node config), one
//! schedule of send slots in the whole cluster: it lives on the node that owns the account's
//! partition (`partition_of("__channels", account)`, placed by the partition table like any
//! recipient, fenced by the same leases), so a limit has exactly one owner. Other nodes lease
//! slots from it in small batches over the `Forward` stream; a slot is a point in time, given
//! as a delay from the grant (no clock agreement needed), spaced `1 / rate` apart, never more
//! than [`HORIZON`] ahead. A sender waits for its slot, then calls the provider; a slot it
//! could not use in time is dropped, never used late (that could bunch sends).
//!
//! Failover: a new owner (a takeover, or a rebalance at a new epoch) starts its schedule
//! [`HORIZON`] after it took the partition, so slots the previous owner granted can never
//! overlap with its own. Must never let a send through without a slot when the account is
//! limited, and never grant a slot for a partition this node does not hold the lease of.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use herald_proto::partition::partition_of;
use herald_proto::v1::{ForwardItem, PermitGrant, PermitRequest, forward_item, forward_result};
use herald_proto::{Epoch, PartitionId};
use parking_lot::Mutex;
use tokio::time::Instant;
use tracing::debug;

use crate::context::NodeContext;
use crate::peers::{KeyOwner, Peers};
use herald_store::Fence;

/// The reserved tenant under which channel accounts are placed on the partition table.
pub const CHANNELS_TENANT: &str = "__channels";

/// How far ahead the owner schedules slots (and how long a new owner waits before its first).
pub const HORIZON: Duration = Duration::from_secs(1);

/// A slot more than this late (the sender was slow to get to it) is dropped, not used.
const SLOT_TOLERANCE: Duration = Duration::from_millis(5);

/// How long a sender keeps asking for slots before it gives up with an error (a backlog at a
/// low rate can be long: 3,000 messages at 50/s wait a minute).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no send slot for {account} within {timeout:?}: {reason}")]
    Timeout {
        account: String,
        timeout: Duration,
        reason: String,
    },
    #[error("node shutting down")]
    Closed,
}

/// The owner side: one account's schedule.
struct Schedule {
    next_free: Instant,
    epoch: Epoch,
}

#[derive(Default)]
pub struct RateStats {
    /// Slots granted by this node (as owner).
    pub granted: AtomicU64,
    /// Slots used by this node's senders.
    pub used: AtomicU64,
    /// Slots dropped because the sender got to them too late.
    pub dropped: AtomicU64,
    /// Requests for slots sent to another node.
    pub remote_requests: AtomicU64,
}

/// The owner side of an account's unique-recipients tier: recipient key → last admitted (ms).
struct Tier {
    recipients: HashMap<String, i64>,
}

/// A warm-up schedule: the quota of day `i` (UTC) after `start_day`.
pub struct Warmup {
    /// Days since the Unix epoch of the first warm-up day.
    pub start_day: i64,
    pub daily: Vec<u32>,
}

/// A tier's window: any 24 hours.
const TIER_WINDOW_MS: i64 = 24 * 3_600_000;

pub struct RateLimits {
    /// Account → sends per second (after the safety margin).
    limits: BTreeMap<String, f64>,
    /// Account → distinct recipients allowed in any 24 hours.
    tiers: BTreeMap<String, u32>,
    tier_state: Mutex<HashMap<String, Tier>>,
    warmups: BTreeMap<String, Warmup>,
    /// Per account: (UTC day, sends admitted that day).
    warmup_state: Mutex<HashMap<String, (i64, u32)>>,
    owned: Mutex<HashMap<String, Schedule>>,
    /// Per account, the slots this node leased and has not used yet.
    leased: Mutex<HashMap<String, Arc<tokio::sync::Mutex<VecDeque<Instant>>>>>,
    peers: Peers,
    context: OnceLock<Weak<NodeContext>>,
    pub stats: RateStats,
}

impl RateLimits {
    /// `limits`: account → sends per second; `margin` (0..0.5): the share kept free so that
    /// network jitter between the grant and the provider never puts one send too many into a
    /// second.
    pub fn new(limits: &BTreeMap<String, f64>, margin: f64) -> Self {
        Self::with_tiers(limits, margin, &BTreeMap::new())
    }

    /// Also with unique-recipients-per-24h tiers per account.
    pub fn with_tiers(
        limits: &BTreeMap<String, f64>,
        margin: f64,
        tiers: &BTreeMap<String, u32>,
    ) -> Self {
        let keep = 1.0 - margin.clamp(0.0, 0.5);
        Self {
            tiers: tiers
                .iter()
                .filter(|(_, tier)| **tier > 0)
                .map(|(a, t)| (a.clone(), *t))
                .collect(),
            tier_state: Mutex::new(HashMap::new()),
            warmups: BTreeMap::new(),
            warmup_state: Mutex::new(HashMap::new()),
            limits: limits
                .iter()
                .filter(|(_, rate)| **rate > 0.0)
                .map(|(account, rate)| (account.clone(), rate * keep))
                .collect(),
            owned: Mutex::new(HashMap::new()),
            leased: Mutex::new(HashMap::new()),
            peers: Peers::default(),
            context: OnceLock::new(),
            stats: RateStats::default(),
        }
    }

    /// Gives the limiter its node (for the partition table and the local grant path).
    pub fn bind(&self, context: Weak<NodeContext>) {
        let _ = self.context.set(context);
    }

    pub fn is_limited(&self, account: &str) -> bool {
        self.limits.contains_key(account)
    }

    /// The partition that places `account`'s schedule.
    pub fn partition(account: &str, partition_count: u32) -> PartitionId {
        partition_of(CHANNELS_TENANT, account, partition_count)
    }

    /// Owner side: up to `count` slots of `account`, as delays from now (µs). `fence` proves
    /// this node holds the account's partition.
    pub fn grant(&self, account: &str, count: u32, fence: Fence) -> Vec<u64> {
        let Some(rate) = self.limits.get(account) else {
            return vec![0; count as usize];
        };
        let interval = Duration::from_secs_f64(1.0 / rate);
        let now = Instant::now();
        let mut owned = self.owned.lock();
        let schedule = owned.entry(account.to_owned()).or_insert(Schedule {
            next_free: now + HORIZON,
            epoch: fence.epoch,
        });
        if schedule.epoch != fence.epoch {
            // The partition changed hands since this schedule was last used: another node may
            // have granted slots up to HORIZON ahead.
            schedule.next_free = schedule.next_free.max(now + HORIZON);
            schedule.epoch = fence.epoch;
        }
        let mut delays = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let slot = schedule.next_free.max(now);
            if slot > now + HORIZON {
                break;
            }
            schedule.next_free = slot + interval;
            delays.push(u64::try_from((slot - now).as_micros()).unwrap_or(u64::MAX));
        }
        self.stats
            .granted
            .fetch_add(delays.len() as u64, Ordering::Relaxed);
        delays
    }

    /// Owner side: may `account` message `recipient` within its tier? Returns the grant with
    /// `refused`, the tier and the distinct recipients of the last 24 hours.
    pub fn admit_local(&self, account: &str, recipient: &str) -> PermitGrant {
        let Some(tier) = self.tiers.get(account).copied() else {
            return PermitGrant::default();
        };
        let now = crate::context::now_unix_ms();
        let mut states = self.tier_state.lock();
        let state = states.entry(account.to_owned()).or_insert_with(|| Tier {
            recipients: HashMap::new(),
        });
        state
            .recipients
            .retain(|_, last| now - *last < TIER_WINDOW_MS);
        let known = state.recipients.contains_key(recipient);
        let admitted = known || (state.recipients.len() as u64) < u64::from(tier);
        if admitted {
            state.recipients.insert(recipient.to_owned(), now);
        }
        PermitGrant {
            delays_us: Vec::new(),
            refused: !admitted,
            tier,
            unique: u32::try_from(state.recipients.len()).unwrap_or(u32::MAX),
        }
    }

    /// With warm-up schedules per account.
    pub fn with_warmups(mut self, warmups: BTreeMap<String, Warmup>) -> Self {
        self.warmups = warmups;
        self
    }

    pub fn has_warmup(&self, account: &str) -> bool {
        self.warmups.contains_key(account)
    }

    /// Owner side: one more send of `account` today within its warm-up quota? `tier` in the
    /// answer is today's quota, `unique` the sends admitted today.
    pub fn admit_daily(&self, account: &str) -> PermitGrant {
        let Some(warmup) = self.warmups.get(account) else {
            return PermitGrant::default();
        };
        let today = crate::context::now_unix_ms().div_euclid(86_400_000);
        let index = usize::try_from(today - warmup.start_day).unwrap_or(0);
        let Some(quota) = warmup.daily.get(index).copied() else {
            return PermitGrant::default();
        };
        let mut states = self.warmup_state.lock();
        let state = states.entry(account.to_owned()).or_insert((today, 0));
        if state.0 != today {
            *state = (today, 0);
        }
        let admitted = state.1 < quota;
        if admitted {
            state.1 += 1;
        }
        PermitGrant {
            delays_us: Vec::new(),
            refused: !admitted,
            tier: quota,
            unique: state.1,
        }
    }

    /// Sender side: asks the owner for one more send of `account` within today's warm-up.
    pub async fn admit_warmup(&self, account: &str) -> Result<PermitGrant, String> {
        if !self.has_warmup(account) {
            return Ok(PermitGrant::default());
        }
        self.ask_with(account, 0, "", true).await
    }

    pub fn has_tier(&self, account: &str) -> bool {
        self.tiers.contains_key(account)
    }

    /// Sender side: asks the owner whether `account` may message `recipient` (tier).
    pub async fn admit(&self, account: &str, recipient: &str) -> Result<PermitGrant, String> {
        if !self.has_tier(account) {
            return Ok(PermitGrant::default());
        }
        self.ask(account, 0, recipient).await
    }

    /// Slots asked for at once: about 50 ms worth, at least 1, at most 64.
    fn batch(&self, account: &str) -> u32 {
        let rate = self.limits.get(account).copied().unwrap_or(1.0);
        ((rate / 20.0).ceil() as u32).clamp(1, 64)
    }

    /// The key of a tenant's own quota on an account (`[rate_limits] "smpp-main@acme" = 10`).
    pub fn tenant_key(account: &str, tenant: &str) -> String {
        format!("{account}@{tenant}")
    }

    /// Whether sending through `account` may wait here: for a slot (a rate limit or the
    /// tenant's quota on it) or for the owner's answer (warm-up, tier).
    pub fn may_wait(&self, account: &str, tenant: &str) -> bool {
        self.has_warmup(account)
            || self.has_tier(account)
            || (!self.limits.is_empty()
                && (self.is_limited(account)
                    || self.is_limited(&Self::tenant_key(account, tenant))))
    }

    /// Sender side: waits for a slot of `account` and, when the tenant has its own quota on it,
    /// for a slot of that quota too.
    pub async fn acquire_for(&self, account: &str, tenant: &str) -> Result<(), Error> {
        if self.limits.is_empty() {
            return Ok(());
        }
        let quota = Self::tenant_key(account, tenant);
        if self.is_limited(&quota) {
            self.acquire(&quota).await?;
        }
        self.acquire(account).await
    }

    /// Sender side: waits for a slot of `account` (at once when it is not limited).
    pub async fn acquire(&self, account: &str) -> Result<(), Error> {
        if !self.is_limited(account) {
            return Ok(());
        }
        let queue = self
            .leased
            .lock()
            .entry(account.to_owned())
            .or_default()
            .clone();
        let deadline = Instant::now() + ACQUIRE_TIMEOUT;
        let mut last_error = String::from("schedule full");
        loop {
            let slot = {
                let mut slots = queue.lock().await;
                let now = Instant::now();
                while slots.front().is_some_and(|s| *s + SLOT_TOLERANCE < now) {
                    slots.pop_front();
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                if slots.is_empty() {
                    match self.request(account, self.batch(account)).await {
                        Ok(delays) => {
                            let granted_at = Instant::now();
                            slots.extend(
                                delays
                                    .into_iter()
                                    .map(|d| granted_at + Duration::from_micros(d)),
                            );
                        }
                        Err(error) => last_error = error,
                    }
                }
                slots.pop_front()
            };
            match slot {
                Some(slot) => {
                    tokio::time::sleep_until(slot).await;
                    // A busy runtime wakes sleepers late, all at once: a slot overslept is
                    // given up rather than used together with its successors.
                    if Instant::now() > slot + SLOT_TOLERANCE {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    self.stats.used.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                None => {
                    if Instant::now() > deadline {
                        return Err(Error::Timeout {
                            account: account.to_owned(),
                            timeout: ACQUIRE_TIMEOUT,
                            reason: last_error,
                        });
                    }
                    // The schedule is full for the next second, or the owner is moving.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// Asks the owner of `account`'s partition for `count` slots.
    async fn request(&self, account: &str, count: u32) -> Result<Vec<u64>, String> {
        self.ask(account, count, "").await.map(|g| g.delays_us)
    }

    /// One question to the owner of `account`'s partition: slots, or (with `recipient`) a tier
    /// admission.
    async fn ask(&self, account: &str, count: u32, recipient: &str) -> Result<PermitGrant, String> {
        self.ask_with(account, count, recipient, false).await
    }

    async fn ask_with(
        &self,
        account: &str,
        count: u32,
        recipient: &str,
        daily: bool,
    ) -> Result<PermitGrant, String> {
        let context = self
            .context
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| "node shutting down".to_owned())?;
        let (address, epoch) =
            match crate::peers::key_owner(&context, |n| Self::partition(account, n)).await? {
                KeyOwner::Local(fence) => {
                    if daily {
                        return Ok(self.admit_daily(account));
                    }
                    if !recipient.is_empty() {
                        return Ok(self.admit_local(account, recipient));
                    }
                    return Ok(PermitGrant {
                        delays_us: self.grant(account, count, fence),
                        ..Default::default()
                    });
                }
                KeyOwner::Remote { address, epoch } => (address, epoch),
            };
        self.stats.remote_requests.fetch_add(1, Ordering::Relaxed);
        let item = ForwardItem {
            tenant: CHANNELS_TENANT.to_owned(),
            op: Some(forward_item::Op::Permits(PermitRequest {
                account: account.to_owned(),
                count,
                recipient: recipient.to_owned(),
                daily,
            })),
        };
        match self.peers.forward_one(&address, epoch, item).await? {
            forward_result::Result::Permits(grant) => Ok(grant),
            forward_result::Result::Error(error) => {
                debug!(account, code = error.code, "slot request refused");
                Err(error.message)
            }
            _ => Err("unexpected reply to a slot request".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fence(epoch: u64) -> Fence {
        Fence {
            partition: PartitionId(1),
            epoch: Epoch(epoch),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_and_bounded_by_the_horizon() {
        let limits = RateLimits::new(&BTreeMap::from([("sms".to_owned(), 50.0)]), 0.0);
        // A new owner waits one horizon before its first slot.
        let first = limits.grant("sms", 10, fence(1));
        assert_eq!(first, vec![1_000_000], "only the slot at the horizon");
        tokio::time::advance(HORIZON).await;
        let slots = limits.grant("sms", 100, fence(1));
        // 20 ms apart, at most one second ahead.
        assert_eq!(slots.len(), 50, "{slots:?}");
        assert_eq!(slots[0], 20_000);
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], 20_000);
        }
        // A new epoch (the partition moved and came back) waits a horizon again.
        let after = limits.grant("sms", 5, fence(2));
        assert!(after.iter().all(|d| *d >= 1_000_000), "{after:?}");
        // Unlimited accounts always get slots at once.
        assert_eq!(limits.grant("push", 3, fence(1)), vec![0, 0, 0]);
    }

    #[test]
    fn warmup_quota_grows_by_day_and_counts_per_day() {
        let today = crate::context::now_unix_ms().div_euclid(86_400_000);
        let schedule = |start_day| {
            RateLimits::new(&BTreeMap::new(), 0.0).with_warmups(BTreeMap::from([(
                "mail".to_owned(),
                Warmup {
                    start_day,
                    daily: vec![2, 3],
                },
            )]))
        };
        // Day 0: two sends.
        let first_day = schedule(today);
        let verdicts: Vec<bool> = (0..3)
            .map(|_| first_day.admit_daily("mail").refused)
            .collect();
        assert_eq!(verdicts, vec![false, false, true]);
        assert_eq!(first_day.admit_daily("mail").tier, 2);
        // Day 1: three.
        let second_day = schedule(today - 1);
        let admitted = (0..5)
            .filter(|_| !second_day.admit_daily("mail").refused)
            .count();
        assert_eq!(admitted, 3);
        // After the schedule: no daily limit.
        let done = schedule(today - 2);
        assert!((0..100).all(|_| !done.admit_daily("mail").refused));
        // Other accounts: none.
        assert!(!done.admit_daily("sms").refused);
    }

    #[test]
    fn margin_lowers_the_rate() {
        let limits = RateLimits::new(&BTreeMap::from([("sms".to_owned(), 50.0)]), 0.04);
        assert!((limits.limits["sms"] - 48.0).abs() < 1e-9);
        assert_eq!(limits.batch("sms"), 3);
    }
}
