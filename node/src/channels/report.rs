//! # report: block-rate counts and circuit changes going to the ChannelActors
//!
//! Owns this node's side of the breakers: the counts not yet reported, per breaker key
//! (accepted sends as deliveries; complaint, block and unsubscribe receipts; SMS STOPs), the
//! cached state of every breaker this node reported to, and one report round
//! ([`Reports::round`], every [`REPORT_INTERVAL`] by the component's loop): every key with
//! counts or recent activity, and every account with a circuit change or recent calls, goes to
//! its actor (remote ones in one batch per owner); each answer's breaker state and cluster
//! circuit are cached. A sender checks the cache only: a paused campaign or sender makes the
//! message wait (deferred, re-checked on a durable timer) until `Breakers.Resume`.
//!
//! Must never block a send on a round trip, and never lose counts to a failed report (they
//! are kept for the next round).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_proto::v1::channel_reply;
use herald_proto::v1::{BreakerReport, BreakerStatus, Channel, ChannelCall, channel_call};
use parking_lot::Mutex;
use tracing::debug;

use super::accounts::Accounts;
use super::circuit::CircuitEvent;
use super::handle::Handles;
use super::keys::actor_key;
use crate::policy::block_rate::Signal;

/// How often counts go to the owners (and paused states come back).
pub const REPORT_INTERVAL: Duration = Duration::from_millis(200);

/// How long a key stays reported (with zero counts) after its last activity, so its state keeps
/// coming back.
const KEEP_WATCHING_MS: i64 = 10 * 60 * 1000;

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

impl Pending {
    fn add(&mut self, other: &Pending) {
        self.delivered += other.delivered;
        self.blocks += other.blocks;
        self.complaints += other.complaints;
        self.opt_outs += other.opt_outs;
        self.channel = other.channel;
        self.last_active_ms = self.last_active_ms.max(other.last_active_ms);
    }
}

/// One report of a round, and what to do with its answer.
struct Outgoing {
    report: BreakerReport,
    /// The breaker counts that went with it (put back if the report fails).
    counts: Option<Pending>,
    /// The circuit change that went with it (put back if the report fails).
    circuit: Option<(String, CircuitEvent)>,
    /// The account whose cluster circuit the answer tells.
    account: Option<String>,
}

#[derive(Default)]
pub struct Reports {
    pending: Mutex<HashMap<String, Pending>>,
    /// The last state seen per breaker key (this node's cache).
    states: Mutex<HashMap<String, BreakerStatus>>,
    /// Paused breakers in `states` (0 = senders skip the lookups).
    paused_count: AtomicU64,
}

impl Reports {
    /// Counts one signal for `key` at `now_ms` (reported with the next round).
    pub fn observe(&self, key: &str, channel: Channel, signal: Signal, now_ms: i64) {
        let mut pending = self.pending.lock();
        // The common case (a key already counted) allocates nothing.
        let entry = match pending.get_mut(key) {
            Some(entry) => entry,
            None => pending.entry(key.to_owned()).or_default(),
        };
        entry.channel = channel as i32;
        entry.last_active_ms = now_ms;
        match signal {
            Signal::Delivered => entry.delivered += 1,
            Signal::Block => entry.blocks += 1,
            Signal::Complaint => entry.complaints += 1,
            Signal::OptOut => entry.opt_outs += 1,
        }
    }

    /// The cached state of `key` when it is paused.
    pub fn paused(&self, key: &str) -> Option<BreakerStatus> {
        if !self.any_paused() {
            return None;
        }
        self.states.lock().get(key).filter(|s| s.paused).cloned()
    }

    /// Whether any breaker this node knows of is paused (the senders' fast path).
    pub fn any_paused(&self) -> bool {
        self.paused_count.load(Ordering::Relaxed) > 0
    }

    /// Every cached state, by key.
    pub fn states(&self) -> Vec<BreakerStatus> {
        let mut all: Vec<_> = self.states.lock().values().cloned().collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Caches an answer.
    pub fn cache(&self, status: BreakerStatus) {
        let mut states = self.states.lock();
        states.insert(status.key.clone(), status);
        let paused = states.values().filter(|s| s.paused).count();
        self.paused_count.store(paused as u64, Ordering::Relaxed);
    }

    fn is_cached(&self, key: &str) -> bool {
        self.states.lock().contains_key(key)
    }

    /// One report round at `now_ms`.
    pub async fn round(&self, handles: &Handles, accounts: &Accounts, now_ms: i64) {
        let mut outgoing: HashMap<String, Outgoing> = {
            let mut pending = self.pending.lock();
            pending.retain(|_, p| now_ms - p.last_active_ms < KEEP_WATCHING_MS);
            pending
                .iter_mut()
                .map(|(key, p)| {
                    let taken = *p;
                    p.delivered = 0;
                    p.blocks = 0;
                    p.complaints = 0;
                    p.opt_outs = 0;
                    let report = BreakerReport {
                        key: key.clone(),
                        channel: taken.channel,
                        delivered: taken.delivered,
                        blocks: taken.blocks,
                        complaints: taken.complaints,
                        opt_outs: taken.opt_outs,
                        ..Default::default()
                    };
                    let outgoing = Outgoing {
                        report,
                        counts: Some(taken),
                        circuit: None,
                        account: None,
                    };
                    (key.clone(), outgoing)
                })
                .collect()
        };
        // Accounts in use, or with a circuit change: their actor tells the cluster's circuit.
        for account in accounts.iter() {
            let event = account.take_circuit_event();
            if event.is_none() && now_ms - account.last_used_ms() >= KEEP_WATCHING_MS {
                continue;
            }
            let entry = outgoing
                .entry(account.breaker_key.clone())
                .or_insert_with(|| Outgoing {
                    report: BreakerReport {
                        key: account.breaker_key.clone(),
                        ..Default::default()
                    },
                    counts: None,
                    circuit: None,
                    account: None,
                });
            entry.account = Some(account.name().to_owned());
            match event {
                Some(CircuitEvent::Opened { until_unix_ms }) => {
                    entry.report.circuit_open_until_unix_ms = until_unix_ms;
                }
                Some(CircuitEvent::Recovered) => entry.report.circuit_recovered = true,
                None => {}
            }
            entry.circuit = event.map(|e| (account.name().to_owned(), e));
        }
        if outgoing.is_empty() {
            return;
        }
        let outgoing: Vec<Outgoing> = outgoing.into_values().collect();
        let calls = outgoing
            .iter()
            .map(|o| ChannelCall {
                key: actor_key(&o.report.key).to_owned(),
                op: Some(channel_call::Op::Report(o.report.clone())),
            })
            .collect();
        let results = handles.call_many(calls).await;
        for (sent, result) in outgoing.into_iter().zip(results) {
            match result {
                Ok(channel_reply::Result::Report(reply)) => {
                    if let Some(account) = sent.account.as_deref().and_then(|a| accounts.account(a))
                    {
                        account.set_cluster_open_until(reply.circuit_open_until_unix_ms);
                    }
                    if let Some(status) = reply.breaker {
                        // A circuit-only report asks about a breaker this node never counted
                        // for: its answer is only worth keeping if it was cached already.
                        if sent.counts.is_some() || self.is_cached(&status.key) {
                            self.cache(status);
                        }
                    }
                }
                other => {
                    if let Err(error) = &other {
                        debug!(key = %sent.report.key, %error, "report failed; kept for the next round");
                    }
                    self.put_back(&sent, accounts);
                }
            }
        }
    }

    fn put_back(&self, sent: &Outgoing, accounts: &Accounts) {
        if let Some(counts) = &sent.counts {
            self.pending
                .lock()
                .entry(sent.report.key.clone())
                .or_default()
                .add(counts);
        }
        if let Some((name, event)) = &sent.circuit
            && let Some(account) = accounts.account(name)
        {
            account.restore_circuit_event(*event);
        }
    }
}
