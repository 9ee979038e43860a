//! # service: the channels component, built and running
//!
//! Owns the assembled component: [`ChannelsConfig::build`] turns the config and a narrow
//! [`ChannelsContext`] (node id, ownership, peers, clock, shutdown) into [`Channels`], a cheap
//! handle over shared state, and spawns the one task it needs (the report loop, which ends with
//! the shutdown signal or when the last handle is dropped). Everything the rest of the node
//! does with provider accounts, rate limits, tiers, warm-ups, breakers and circuits goes
//! through the methods here.
//!
//! Must never hold the node's context: it gets the handles it uses, and callers get it.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use herald_proto::clock::SharedClock;
use herald_proto::v1::{
    BreakerReport, BreakerStatus, Channel, ChannelCallBatch, ChannelReplyBatch,
};
use herald_proto::{NodeId, PartitionId};
use herald_providers::ProviderEvent;
use herald_providers::sandbox::SandboxProvider;
use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};

use super::accounts::{Account, Accounts};
use super::circuit::CircuitState;
use super::config::{BuildError, ChannelsConfig, FailoverConfig, Rules};
use super::error::Error;
use super::failover::{Delivery, Step, StepCall};
use super::handle::Handles;
use super::keys::actor_key;
use super::registry::Registry;
use super::report::{REPORT_INTERVAL, Reports};
use super::slots::Slots;
use super::stats::ChannelStats;
use super::tier::Admission;
use crate::ownership::Ownership;
use crate::peers::Peers;
use crate::policy::block_rate::Signal;

/// Provider events (receipts, inbound texts) buffered before adapters wait.
const PROVIDER_EVENTS_MAX: usize = 4096;

/// What the component needs of its node.
pub struct ChannelsContext {
    pub node_id: NodeId,
    /// Which partitions this node serves (placement and fences of the actors).
    pub ownership: Arc<Ownership>,
    /// The node's link pool (remote calls to other nodes' actors).
    pub peers: Peers,
    /// Calendar time for the tier's window, warm-up days, breaker windows.
    pub clock: SharedClock,
    /// Ends the component's task.
    pub shutdown: watch::Receiver<bool>,
}

/// The channels component (cheap to clone).
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

struct Inner {
    accounts: Accounts,
    rules: Arc<Rules>,
    failover: FailoverConfig,
    handles: Handles,
    slots: Slots,
    reports: Reports,
    clock: SharedClock,
    stats: Arc<ChannelStats>,
    /// What adapters report on their own connections, until the node takes it.
    provider_events: Mutex<Option<mpsc::Receiver<ProviderEvent>>>,
}

impl ChannelsConfig {
    /// Builds the accounts (starting adapters that keep connections), the actor registry and
    /// the handles, and starts the report loop.
    pub async fn build(&self, cx: ChannelsContext) -> Result<Channels, BuildError> {
        let rules = Arc::new(Rules::from_config(self)?);
        let (events, provider_events) = mpsc::channel(PROVIDER_EVENTS_MAX);
        let accounts = Accounts::build(self, events).await?;
        let stats = Arc::new(ChannelStats::default());
        let registry = Registry::new(
            cx.ownership.clone(),
            rules.clone(),
            cx.clock.clone(),
            stats.clone(),
        );
        let handles = Handles::new(
            cx.node_id,
            cx.ownership,
            cx.peers,
            registry,
            self.owner_wait,
            stats.clone(),
        );
        let inner = Arc::new(Inner {
            accounts,
            slots: Slots::new(rules.limits.clone(), stats.clone()),
            rules,
            failover: self.failover.clone(),
            handles,
            reports: Reports::default(),
            clock: cx.clock,
            stats,
            provider_events: Mutex::new(Some(provider_events)),
        });
        tokio::spawn(run_reports(Arc::downgrade(&inner), cx.shutdown));
        Ok(Channels { inner })
    }
}

/// Reports every [`REPORT_INTERVAL`] until `shutdown`, or until the component is dropped.
async fn run_reports(inner: Weak<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let now = inner.clock.now_unix_ms();
        inner
            .reports
            .round(&inner.handles, &inner.accounts, now)
            .await;
    }
}

impl Channels {
    /// The receiver of what adapters report on their own connections (SMPP receipts and
    /// inbound texts, the sandbox's delayed receipts): handed out once.
    pub fn take_provider_events(&self) -> Option<mpsc::Receiver<ProviderEvent>> {
        self.inner.provider_events.lock().take()
    }

    pub fn account(&self, name: &str) -> Option<&Arc<Account>> {
        self.inner.accounts.account(name)
    }

    /// Every account, sorted by name.
    pub fn accounts(&self) -> Vec<&Arc<Account>> {
        let mut accounts: Vec<_> = self.inner.accounts.iter().collect();
        accounts.sort_by(|a, b| a.name().cmp(b.name()));
        accounts
    }

    /// The accounts a step tries, in order: the step's own account first (when it names one),
    /// then the channel's others.
    pub fn chain(&self, channel: Channel, preferred: &str) -> Vec<Arc<Account>> {
        self.inner.accounts.chain(channel, preferred)
    }

    /// Whether `channel` has any account.
    pub fn serves(&self, channel: Channel) -> bool {
        self.inner.accounts.serves(channel)
    }

    /// The built-in sandbox account (its call counter).
    pub fn sandbox(&self) -> &Arc<SandboxProvider> {
        self.inner.accounts.sandbox()
    }

    /// The account's circuit as this node treats it (its own, or open while the cluster
    /// reports it open).
    pub fn circuit_state(&self, account: &Account) -> CircuitState {
        account.circuit_state(self.inner.clock.now_unix_ms())
    }

    pub fn has_warmup(&self, account: &str) -> bool {
        self.inner.rules.warmups.contains_key(account)
    }

    pub fn has_tier(&self, account: &str) -> bool {
        self.inner.rules.tiers.contains_key(account)
    }

    /// Whether sending through `account` may wait here: for a slot (a rate limit or the
    /// tenant's quota on it) or for the owner's answer (warm-up, tier).
    pub fn may_wait(&self, account: &str, tenant: &str) -> bool {
        self.has_warmup(account)
            || self.has_tier(account)
            || self.inner.slots.may_wait(account, tenant)
    }

    /// Whether a send through `account` waits for a send slot (a rate limit on it, or the
    /// tenant's quota on it).
    pub fn rate_limited(&self, account: &str, tenant: &str) -> bool {
        self.inner.slots.may_wait(account, tenant)
    }

    /// One SMS straight through `account`: a keyword's confirmation, the HELP reply. No
    /// waterfall, no slot, no retries. `None` when there is no such account.
    pub async fn send_text(
        &self,
        account: &str,
        attempt_id: &str,
        recipient_key: &str,
        to: &str,
        text: &str,
    ) -> Option<herald_providers::Outcome> {
        let account = self.account(account)?;
        let content = herald_proto::v1::Content {
            sms: Some(herald_proto::v1::SmsContent {
                text: text.to_owned(),
            }),
            ..Default::default()
        };
        Some(
            account
                .provider
                .send(herald_providers::Attempt {
                    attempt_id,
                    message_id: "",
                    recipient_key,
                    channel: Channel::Sms,
                    to,
                    content: &content,
                    list_unsubscribe: None,
                })
                .await,
        )
    }

    /// Whether `code` in a failure receipt of `account` means the contact point is dead.
    pub fn is_dead_contact(&self, account: &str, code: &str) -> bool {
        self.inner
            .rules
            .dead_contact_errors
            .get(account)
            .is_some_and(|codes| codes.iter().any(|c| c == code))
    }

    /// One more send of `account` today within its warm-up quota? (admitted when it has none)
    pub async fn admit_warmup(&self, account: &str) -> Result<Admission, Error> {
        if !self.has_warmup(account) {
            return Ok(Admission::default());
        }
        self.inner.handles.admit_warmup(account).await
    }

    /// May `account` message this recipient within its unique-recipients tier? (admitted when
    /// it has none) Only a hash of tenant and recipient leaves this node.
    pub async fn admit_tier(
        &self,
        account: &str,
        tenant: &str,
        recipient_id: &str,
    ) -> Result<Admission, Error> {
        if !self.has_tier(account) {
            return Ok(Admission::default());
        }
        let key = format!(
            "{:016x}",
            herald_proto::partition::key_hash(tenant, recipient_id)
        );
        self.inner.handles.admit_tier(account, &key).await
    }

    /// Waits for a send slot of `account` (and of the tenant's quota on it).
    pub async fn acquire_for(&self, account: &str, tenant: &str) -> Result<(), Error> {
        self.inner
            .slots
            .acquire_for(&self.inner.handles, account, tenant)
            .await
    }

    /// Runs one step's call down `chain` (retries, circuits, failover; see `failover`).
    pub async fn send(&self, chain: &[Arc<Account>], call: StepCall<'_>) -> Delivery {
        let step = Step {
            config: &self.inner.failover,
            slots: &self.inner.slots,
            handles: &self.inner.handles,
            clock: self.inner.clock.as_ref(),
        };
        step.send(chain, call).await
    }

    /// Counts one signal for the breaker `key` (reported with the next round).
    pub fn observe(&self, key: &str, channel: Channel, signal: Signal) {
        let now = self.inner.clock.now_unix_ms();
        self.inner.reports.observe(key, channel, signal, now);
    }

    /// The cached state of breaker `key` when it is paused (never a round trip).
    pub fn paused(&self, key: &str) -> Option<BreakerStatus> {
        self.inner.reports.paused(key)
    }

    /// Whether any breaker this node knows of is paused (the senders' fast path).
    pub fn any_paused(&self) -> bool {
        self.inner.reports.any_paused()
    }

    /// Every breaker state this node has seen (for `/metrics`).
    pub fn breaker_states(&self) -> Vec<BreakerStatus> {
        self.inner.reports.states()
    }

    /// Asks breaker `key`'s actor for its state, resuming it first when `resume`.
    pub async fn breaker(&self, key: &str, resume: bool) -> Result<BreakerStatus, Error> {
        let report = BreakerReport {
            key: key.to_owned(),
            resume,
            ..Default::default()
        };
        let reply = self.inner.handles.report(actor_key(key), report).await?;
        let status = reply.breaker.ok_or(Error::Protocol("report"))?;
        self.inner.reports.cache(status.clone());
        Ok(status)
    }

    /// A send deferred by a paused breaker (counted for `/metrics`).
    pub fn count_deferred(&self) {
        self.inner
            .stats
            .deferred_sends
            .fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> &ChannelStats {
        &self.inner.stats
    }

    /// Runs calls another node routed here (the `Forward.Channels` RPC).
    pub async fn serve(&self, batch: ChannelCallBatch) -> ChannelReplyBatch {
        self.inner.handles.serve(batch).await
    }

    /// Stops the actors of `partitions` (the node lost them); called before their leases are
    /// released.
    pub async fn stop_partitions(&self, partitions: &HashSet<PartitionId>) {
        self.inner
            .handles
            .registry()
            .stop_partitions(partitions)
            .await;
    }

    /// Keys whose actor runs on this node.
    pub fn hosted_keys(&self) -> Vec<String> {
        self.inner.handles.registry().keys()
    }
}
