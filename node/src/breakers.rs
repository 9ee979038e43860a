//! # breakers: block-rate breakers per campaign and per sender
//!
//! Owns the cluster's block/complaint/opt-out breakers. Each breaker (key `campaign:<tenant>:<id>`
//! or `sender:<account>`) has exactly one owner: the node owning `partition_of("__breakers",
//! key)`, fenced by the same leases as recipients. Every node counts what it sees (accepted
//! sends as deliveries; complaint, block and unsubscribe receipts; SMS STOPs) and reports the
//! counts to the owners every [`REPORT_INTERVAL`]; each reply carries the breaker's state, which
//! the node caches. A sender checks that cache before each attempt: a paused campaign or sender
//! makes the message wait (deferred, re-checked on a durable timer) until `Breakers.Resume`.
//!
//! Deliveries are counted at acceptance (receipts are optional and late); the ratio is
//! negatives / accepted over the breaker's window. A new owner (after a failover) starts from
//! empty counts and not paused: a pause that was in force is re-established by the next
//! reports only if the traffic still crosses the threshold — documented limit.
//!
//! Must never block a send on a round trip: senders read the cache only.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{OnceLock, Weak};
use std::time::Duration;

use herald_proto::partition::partition_of;
use herald_proto::v1::{
    BreakerReport, BreakerStatus, Channel, ForwardItem, forward_item, forward_result,
};
use herald_proto::{Epoch, PartitionId};
use parking_lot::Mutex;
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::context::{NodeContext, now_unix_ms};
use crate::peers::{KeyOwner, Peers};
use crate::policy::block_rate::{BlockRate, Level, Signal, Thresholds};
use herald_store::Fence;

/// The reserved tenant under which breakers are placed on the partition table.
pub const BREAKERS_TENANT: &str = "__breakers";

/// How often counts go to the owners (and paused states come back).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(200);

/// How long a key stays reported (with zero counts) after its last activity, so its state keeps
/// coming back.
const KEEP_WATCHING_MS: i64 = 10 * 60 * 1000;

pub fn campaign_key(tenant: &str, campaign_id: &str) -> String {
    format!("campaign:{tenant}:{campaign_id}")
}

pub fn sender_key(account: &str) -> String {
    format!("sender:{account}")
}

/// Counts not yet reported, per key.
#[derive(Clone, Copy, Default)]
struct Pending {
    channel: i32,
    delivered: u64,
    blocks: u64,
    complaints: u64,
    opt_outs: u64,
    last_active_ms: i64,
}

struct Owned {
    rate: BlockRate,
    epoch: Epoch,
}

#[derive(Default)]
pub struct BreakerStats {
    pub pauses: AtomicU64,
    pub deferred_sends: AtomicU64,
}

pub struct Breakers {
    /// Per channel (by name), thresholds overriding [`Thresholds::for_channel`].
    overrides: BTreeMap<String, Thresholds>,
    owned: Mutex<HashMap<String, Owned>>,
    pending: Mutex<HashMap<String, Pending>>,
    /// The last state seen per key (this node's cache).
    states: Mutex<HashMap<String, BreakerStatus>>,
    peers: Peers,
    context: OnceLock<Weak<NodeContext>>,
    pub stats: BreakerStats,
    /// Paused breakers in `states` (0 = senders skip the lookups).
    paused_count: AtomicU64,
}

impl Breakers {
    pub fn new(overrides: &BTreeMap<String, Thresholds>) -> Self {
        Self {
            overrides: overrides.clone(),
            owned: Mutex::new(HashMap::new()),
            pending: Mutex::new(HashMap::new()),
            states: Mutex::new(HashMap::new()),
            peers: Peers::default(),
            context: OnceLock::new(),
            stats: BreakerStats::default(),
            paused_count: AtomicU64::new(0),
        }
    }

    pub fn bind(&self, context: Weak<NodeContext>) {
        let _ = self.context.set(context);
    }

    fn thresholds(&self, channel: Channel) -> Thresholds {
        let name = channel.as_str_name().to_ascii_lowercase();
        self.overrides
            .get(&name)
            .copied()
            .unwrap_or_else(|| Thresholds::for_channel(channel))
    }

    pub fn partition(key: &str, partition_count: u32) -> PartitionId {
        partition_of(BREAKERS_TENANT, key, partition_count)
    }

    /// Counts one signal for `key` (reported with the next round).
    pub fn observe(&self, key: &str, channel: Channel, signal: Signal) {
        let mut pending = self.pending.lock();
        // The common case (a key already counted) allocates nothing.
        let entry = match pending.get_mut(key) {
            Some(entry) => entry,
            None => pending.entry(key.to_owned()).or_default(),
        };
        entry.channel = channel as i32;
        entry.last_active_ms = now_unix_ms();
        match signal {
            Signal::Delivered => entry.delivered += 1,
            Signal::Block => entry.blocks += 1,
            Signal::Complaint => entry.complaints += 1,
            Signal::OptOut => entry.opt_outs += 1,
        }
    }

    /// The cached state of `key` when it is paused.
    pub fn paused(&self, key: &str) -> Option<BreakerStatus> {
        if self.paused_count.load(Ordering::Relaxed) == 0 {
            return None;
        }
        self.states.lock().get(key).filter(|s| s.paused).cloned()
    }

    /// Whether any breaker this node knows of is paused (the senders' fast path).
    pub fn any_paused(&self) -> bool {
        self.paused_count.load(Ordering::Relaxed) > 0
    }

    /// Every cached state (for `/metrics`).
    pub fn states(&self) -> Vec<BreakerStatus> {
        let mut all: Vec<_> = self.states.lock().values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Owner side: applies a report (or a resume) and answers the state.
    pub fn apply(&self, report: &BreakerReport, fence: Fence) -> BreakerStatus {
        let channel = Channel::try_from(report.channel).unwrap_or(Channel::Unspecified);
        let now = now_unix_ms();
        let mut owned = self.owned.lock();
        if !owned.contains_key(&report.key) && channel == Channel::Unspecified {
            // A question about a breaker nothing was reported to yet: it is closed.
            let thresholds = self.thresholds(channel);
            return BreakerStatus {
                key: report.key.clone(),
                level: "ok".to_owned(),
                warn_threshold: thresholds.warn,
                pause_threshold: thresholds.pause,
                ..Default::default()
            };
        }
        let entry = owned.entry(report.key.clone()).or_insert_with(|| Owned {
            rate: BlockRate::new(self.thresholds(channel)),
            epoch: fence.epoch,
        });
        if entry.epoch != fence.epoch {
            entry.epoch = fence.epoch;
        }
        for (signal, count) in [
            (Signal::Delivered, report.delivered),
            (Signal::Block, report.blocks),
            (Signal::Complaint, report.complaints),
            (Signal::OptOut, report.opt_outs),
        ] {
            for _ in 0..count.min(1_000_000) {
                entry.rate.observe(signal, now);
            }
        }
        if report.resume && entry.rate.resume().is_some() {
            warn!(key = %report.key, "block-rate breaker resumed");
        }
        let was_paused = entry.rate.is_paused();
        let level = entry.rate.evaluate(now);
        if !was_paused && entry.rate.is_paused() {
            self.stats.pauses.fetch_add(1, Ordering::Relaxed);
            warn!(key = %report.key, ?level, "block-rate breaker paused");
        }
        let thresholds = *entry.rate.thresholds();
        let (name, ratio, sample) = match level {
            Level::Ok => {
                let counts = entry.rate.counts(now);
                ("ok", counts.ratio(), counts.delivered)
            }
            Level::Warn { ratio, sample, .. } => ("warn", ratio, sample),
            Level::Pause { ratio, sample, .. } => ("pause", ratio, sample),
        };
        BreakerStatus {
            key: report.key.clone(),
            paused: entry.rate.is_paused(),
            level: name.to_owned(),
            ratio,
            sample,
            warn_threshold: thresholds.warn,
            pause_threshold: thresholds.pause,
            paused_at_unix_ms: entry.rate.paused().map(|p| p.at_ms).unwrap_or(0),
        }
    }

    /// Sends one report to the owner of its key; returns the state.
    pub async fn report(&self, report: BreakerReport) -> Result<BreakerStatus, String> {
        let context = self
            .context
            .get()
            .and_then(Weak::upgrade)
            .ok_or_else(|| "node shutting down".to_owned())?;
        let owner =
            crate::peers::key_owner(&context, |count| Self::partition(&report.key, count)).await?;
        let status = match owner {
            KeyOwner::Local(fence) => self.apply(&report, fence),
            KeyOwner::Remote { address, epoch } => {
                let item = ForwardItem {
                    tenant: BREAKERS_TENANT.to_owned(),
                    op: Some(forward_item::Op::Breaker(report)),
                };
                match self.peers.forward_one(&address, epoch, item).await? {
                    forward_result::Result::Breaker(status) => status,
                    forward_result::Result::Error(error) => return Err(error.message),
                    _ => return Err("unexpected reply to a breaker report".into()),
                }
            }
        };
        let mut states = self.states.lock();
        states.insert(status.key.clone(), status.clone());
        let paused = states.values().filter(|s| s.paused).count();
        self.paused_count.store(paused as u64, Ordering::Relaxed);
        Ok(status)
    }

    /// Reports every key with counts or recent activity; runs until `shutdown`.
    pub async fn run(context: Weak<NodeContext>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(REPORT_INTERVAL);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let Some(context) = context.upgrade() else {
                return;
            };
            let breakers = &context.breakers;
            let now = now_unix_ms();
            let batch: Vec<(String, Pending)> = {
                let mut pending = breakers.pending.lock();
                pending.retain(|_, p| now - p.last_active_ms < KEEP_WATCHING_MS);
                pending
                    .iter_mut()
                    .map(|(key, p)| {
                        let taken = *p;
                        p.delivered = 0;
                        p.blocks = 0;
                        p.complaints = 0;
                        p.opt_outs = 0;
                        (key.clone(), taken)
                    })
                    .collect()
            };
            for (key, counts) in batch {
                let report = BreakerReport {
                    key: key.clone(),
                    channel: counts.channel,
                    delivered: counts.delivered,
                    blocks: counts.blocks,
                    complaints: counts.complaints,
                    opt_outs: counts.opt_outs,
                    resume: false,
                };
                if let Err(error) = breakers.report(report).await {
                    debug!(%key, %error, "breaker report failed; counts kept for the next round");
                    let mut pending = breakers.pending.lock();
                    let entry = pending.entry(key).or_default();
                    entry.delivered += counts.delivered;
                    entry.blocks += counts.blocks;
                    entry.complaints += counts.complaints;
                    entry.opt_outs += counts.opt_outs;
                    entry.channel = counts.channel;
                    entry.last_active_ms = entry.last_active_ms.max(counts.last_active_ms);
                }
            }
        }
    }
}
