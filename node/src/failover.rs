//! # failover: provider accounts per channel, retries and circuit breakers
//!
//! Owns the node's provider accounts (built from `[providers.<name>]` in the config), the
//! ordered account list of each channel, one circuit breaker per account, and the retry loop
//! of one waterfall step:
//!
//! - `Unavailable` (5xx, throttled, refused): retry the same account with full-jitter
//!   exponential backoff that honours `Retry-After`, up to `tries_per_account`; then the next
//!   account of the channel.
//! - An open circuit: skip the account at once.
//! - `Rejected`: final for the step (another account would refuse the same content or
//!   contact point).
//! - `Ambiguous` (the request went out, no answer): final for the step — the provider may have
//!   accepted it, so it is never re-sent blindly, neither here nor on another account; the
//!   waterfall waits for a receipt until the step's timeout.
//!
//! It must never record events (the actor does) nor pick contact points against policy (the
//! actor passes the recipient; here only the address matching each account's platform is
//! chosen).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_proto::v1::{Channel, Content, PushPlatform, Recipient};
use herald_providers::{Attempt, ListUnsubscribe, Outcome, Provider};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Retry and circuit-breaker settings (`[failover]` in the node config).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FailoverConfig {
    /// Calls per account for one step before moving to the next account (first try included).
    pub tries_per_account: u32,
    /// Backoff base: the n-th retry waits a random time in `[0, min(max, base·2^n)]`.
    pub backoff_base_ms: u64,
    /// Backoff ceiling per wait.
    pub backoff_max_ms: u64,
    /// A `Retry-After` longer than this moves to the next account instead of waiting.
    pub retry_after_max_ms: u64,
    /// Consecutive failures (unavailable or ambiguous) that open an account's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe call is let through.
    pub breaker_open_ms: u64,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        Self {
            tries_per_account: 3,
            backoff_base_ms: 100,
            backoff_max_ms: 2_000,
            retry_after_max_ms: 5_000,
            breaker_failures: 5,
            breaker_open_ms: 30_000,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The metric value: 0 closed, 1 open, 2 half-open.
    pub fn as_metric(self) -> u8 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::HalfOpen => 2,
        }
    }
}

struct BreakerInner {
    state: BreakerState,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
}

/// One account's circuit breaker: closed → (N consecutive failures) → open → (after the open
/// period) half-open with one probe → closed on success, open again on failure.
pub struct CircuitBreaker {
    inner: Mutex<BreakerInner>,
    failures_to_open: u32,
    open_for: Duration,
}

impl CircuitBreaker {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            inner: Mutex::new(BreakerInner {
                state: BreakerState::Closed,
                consecutive_failures: 0,
                open_until: None,
                probe_in_flight: false,
            }),
            failures_to_open: failures_to_open.max(1),
            open_for,
        }
    }

    pub fn state(&self) -> BreakerState {
        let mut inner = self.inner.lock();
        Self::refresh(&mut inner);
        inner.state
    }

    fn refresh(inner: &mut BreakerInner) {
        if inner.state == BreakerState::Open
            && inner
                .open_until
                .is_some_and(|until| Instant::now() >= until)
        {
            inner.state = BreakerState::HalfOpen;
            inner.probe_in_flight = false;
        }
    }

    /// May a call go out now? In half-open state only one probe at a time.
    pub fn allow(&self) -> bool {
        let mut inner = self.inner.lock();
        Self::refresh(&mut inner);
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen if inner.probe_in_flight => false,
            BreakerState::HalfOpen => {
                inner.probe_in_flight = true;
                true
            }
        }
    }

    pub fn record(&self, healthy: bool) {
        let mut inner = self.inner.lock();
        inner.probe_in_flight = false;
        if healthy {
            inner.state = BreakerState::Closed;
            inner.consecutive_failures = 0;
            inner.open_until = None;
            return;
        }
        inner.consecutive_failures = inner.consecutive_failures.saturating_add(1);
        if inner.state == BreakerState::HalfOpen
            || inner.consecutive_failures >= self.failures_to_open
        {
            inner.state = BreakerState::Open;
            inner.open_until = Some(Instant::now() + self.open_for);
        }
    }
}

/// Calls per account by result, for metrics.
#[derive(Default)]
pub struct AccountStats {
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unavailable: AtomicU64,
    pub ambiguous: AtomicU64,
    pub skipped_open: AtomicU64,
}

pub struct Account {
    pub provider: Arc<dyn Provider>,
    /// The account's block-rate breaker key (`sender:<name>`), built once.
    pub breaker_key: String,
    pub breaker: CircuitBreaker,
    pub stats: AccountStats,
}

impl Account {
    /// The push platform whose tokens this account can reach (`None` = any, e.g. sandbox).
    fn platform(&self) -> Option<PushPlatform> {
        match self.provider.kind() {
            "fcm" => Some(PushPlatform::Fcm),
            "apns" => Some(PushPlatform::Apns),
            _ => None,
        }
    }
}

/// What one step's provider call(s) came to.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The account whose answer is `outcome` (empty when no account could be tried).
    pub account: String,
    pub outcome: Outcome,
    /// The contact point `outcome` is about (for suppression on `contact_invalid`).
    pub to: String,
    /// Earlier tries and skipped accounts, e.g. `fcm-a: unavailable (503) x3; fcm-b: circuit open`.
    pub trail: String,
    /// Provider calls made (each try counts).
    pub calls: u32,
}

/// Everything a step's call needs besides the address.
pub struct StepCall<'a> {
    pub attempt_id: &'a str,
    pub message_id: &'a str,
    pub recipient: &'a Recipient,
    pub channel: Channel,
    pub content: &'a Content,
    pub list_unsubscribe: Option<&'a ListUnsubscribe>,
    /// The caller already waited for the first account's rate-limit slot (so it could check
    /// breakers right before the send): the first try uses it.
    pub first_slot_taken: bool,
    /// The tenant (its own quota on an account, if configured, applies too).
    pub tenant: &'a str,
}

pub struct ProviderRegistry {
    accounts: HashMap<String, Arc<Account>>,
    /// Per channel (by enum value), its accounts in failover order.
    chains: HashMap<i32, Vec<String>>,
    config: FailoverConfig,
}

impl ProviderRegistry {
    /// `accounts` in configuration order; `chains` per channel (account names, validated by
    /// the caller).
    pub fn new(
        accounts: Vec<Arc<dyn Provider>>,
        chains: HashMap<Channel, Vec<String>>,
        config: FailoverConfig,
    ) -> Self {
        let accounts = accounts
            .into_iter()
            .map(|provider| {
                let account = Account {
                    breaker_key: crate::breakers::sender_key(provider.name()),
                    provider,
                    breaker: CircuitBreaker::new(
                        config.breaker_failures,
                        Duration::from_millis(config.breaker_open_ms),
                    ),
                    stats: AccountStats::default(),
                };
                (account.provider.name().to_owned(), Arc::new(account))
            })
            .collect();
        let chains = chains
            .into_iter()
            .map(|(channel, names)| (channel as i32, names))
            .collect();
        Self {
            accounts,
            chains,
            config,
        }
    }

    pub fn account(&self, name: &str) -> Option<&Arc<Account>> {
        self.accounts.get(name)
    }

    pub fn accounts(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.accounts.values()
    }

    /// Whether `channel` has any account.
    pub fn serves(&self, channel: Channel) -> bool {
        self.chains
            .get(&(channel as i32))
            .is_some_and(|c| !c.is_empty())
    }

    /// The accounts a step tries, in order: the step's own account first (when it names one),
    /// then the channel's others.
    pub fn chain(&self, channel: Channel, preferred: &str) -> Vec<Arc<Account>> {
        let mut chain = Vec::new();
        if let Some(account) = self.accounts.get(preferred) {
            chain.push(account.clone());
        }
        for name in self.chains.get(&(channel as i32)).into_iter().flatten() {
            if name != preferred
                && let Some(account) = self.accounts.get(name)
            {
                chain.push(account.clone());
            }
        }
        chain
    }

    /// Runs one step's call down its account chain (see the module docs).
    pub async fn send(
        &self,
        chain: &[Arc<Account>],
        call: StepCall<'_>,
        limits: &crate::rate_limits::RateLimits,
    ) -> Delivery {
        let mut trail = Vec::new();
        let mut calls = 0;
        let mut last: Option<Delivery> = None;
        for (account_index, account) in chain.iter().enumerate() {
            let name = account.provider.name();
            let Some(to) = contact_point(call.recipient, call.channel, account.platform()) else {
                trail.push(format!("{name}: no usable contact point"));
                continue;
            };
            for try_index in 0..self.config.tries_per_account.max(1) {
                if !account.breaker.allow() {
                    account.stats.skipped_open.fetch_add(1, Ordering::Relaxed);
                    trail.push(format!("{name}: circuit open"));
                    break;
                }
                // The account's cluster-wide rate: wait for a send slot.
                let slot_taken = call.first_slot_taken && account_index == 0 && try_index == 0;
                if !slot_taken && let Err(error) = limits.acquire_for(name, call.tenant).await {
                    trail.push(format!("{name}: {error}"));
                    last = Some(Delivery {
                        account: name.to_owned(),
                        outcome: Outcome::unavailable(error.to_string()),
                        to: to.to_owned(),
                        trail: String::new(),
                        calls,
                    });
                    break;
                }
                calls += 1;
                let outcome = account
                    .provider
                    .send(Attempt {
                        attempt_id: call.attempt_id,
                        message_id: call.message_id,
                        recipient_key: &call.recipient.id,
                        channel: call.channel,
                        to,
                        content: call.content,
                        list_unsubscribe: call.list_unsubscribe,
                    })
                    .await;
                let delivery = |outcome: Outcome, trail: &[String]| Delivery {
                    account: name.to_owned(),
                    outcome,
                    to: to.to_owned(),
                    trail: trail.join("; "),
                    calls,
                };
                match &outcome {
                    Outcome::Accepted { .. } => {
                        account.breaker.record(true);
                        account.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        return delivery(outcome, &trail);
                    }
                    Outcome::Rejected { .. } => {
                        // The provider answered: healthy, whatever it thought of the message.
                        account.breaker.record(true);
                        account.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        return delivery(outcome, &trail);
                    }
                    Outcome::Ambiguous { .. } => {
                        account.breaker.record(false);
                        account.stats.ambiguous.fetch_add(1, Ordering::Relaxed);
                        return delivery(outcome, &trail);
                    }
                    Outcome::Unavailable {
                        reason,
                        retry_after,
                    } => {
                        account.breaker.record(false);
                        account.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                        trail.push(format!(
                            "{name}: unavailable ({reason}), try {}",
                            try_index + 1
                        ));
                        let retry_after = *retry_after;
                        last = Some(delivery(outcome, &trail));
                        if try_index + 1 >= self.config.tries_per_account {
                            break;
                        }
                        let wait = match retry_after {
                            Some(wait)
                                if wait > Duration::from_millis(self.config.retry_after_max_ms) =>
                            {
                                // Asked to wait longer than we may: try the next account.
                                break;
                            }
                            Some(wait) => wait,
                            None => self.backoff(try_index),
                        };
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        match last {
            Some(mut last) => {
                last.trail = trail.join("; ");
                last.calls = calls;
                last
            }
            None => Delivery {
                account: String::new(),
                outcome: Outcome::unavailable(if trail.is_empty() {
                    "no provider account for this channel".to_owned()
                } else {
                    trail.join("; ")
                }),
                to: String::new(),
                trail: trail.join("; "),
                calls,
            },
        }
    }

    /// Full jitter: uniform in `[0, min(max, base · 2^try)]`.
    fn backoff(&self, try_index: u32) -> Duration {
        let ceiling = self
            .config
            .backoff_base_ms
            .saturating_mul(1u64 << try_index.min(20))
            .min(self.config.backoff_max_ms);
        Duration::from_millis(rand::rng().random_range(0..=ceiling))
    }
}

/// The address `channel` sends to for this recipient, skipping suppressed ones; for push, the
/// first token of `platform` (any platform when `None`).
pub fn contact_point(
    recipient: &Recipient,
    channel: Channel,
    platform: Option<PushPlatform>,
) -> Option<&str> {
    let suppressed = |address: &str| {
        recipient
            .suppressed
            .iter()
            .any(|s| s.channel == channel as i32 && s.address == address)
    };
    let address = match channel {
        Channel::Push => recipient
            .push_tokens
            .iter()
            .filter(|t| platform.is_none_or(|p| t.platform() == p))
            .map(|t| t.token.as_str())
            .find(|t| !suppressed(t))?,
        Channel::Email => {
            Some(recipient.email.as_str()).filter(|a| !a.is_empty() && !suppressed(a))?
        }
        Channel::Sms => {
            Some(recipient.phone.as_str()).filter(|a| !a.is_empty() && !suppressed(a))?
        }
        Channel::Unspecified => return None,
    };
    Some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_after_failures_and_probes_once() {
        let breaker = CircuitBreaker::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            assert!(breaker.allow());
            breaker.record(false);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow());
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(breaker.allow(), "one probe");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.record(false);
        assert_eq!(breaker.state(), BreakerState::Open);
        std::thread::sleep(Duration::from_millis(60));
        assert!(breaker.allow());
        breaker.record(true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow() && breaker.allow());
    }

    #[test]
    fn contact_points_skip_suppressed_and_other_platforms() {
        use herald_proto::v1::{PushToken, SuppressedContact};
        let recipient = Recipient {
            id: "r".into(),
            push_tokens: vec![
                PushToken {
                    token: "apns-1".into(),
                    platform: PushPlatform::Apns as i32,
                },
                PushToken {
                    token: "fcm-dead".into(),
                    platform: PushPlatform::Fcm as i32,
                },
                PushToken {
                    token: "fcm-2".into(),
                    platform: PushPlatform::Fcm as i32,
                },
            ],
            email: "a@example.com".into(),
            suppressed: vec![
                SuppressedContact {
                    channel: Channel::Push as i32,
                    address: "fcm-dead".into(),
                    reason: "unregistered".into(),
                    at_unix_ms: 1,
                },
                SuppressedContact {
                    channel: Channel::Email as i32,
                    address: "a@example.com".into(),
                    reason: "bounced_hard".into(),
                    at_unix_ms: 1,
                },
            ],
            ..Default::default()
        };
        assert_eq!(
            contact_point(&recipient, Channel::Push, Some(PushPlatform::Fcm)),
            Some("fcm-2")
        );
        assert_eq!(
            contact_point(&recipient, Channel::Push, Some(PushPlatform::Apns)),
            Some("apns-1")
        );
        assert_eq!(
            contact_point(&recipient, Channel::Push, None),
            Some("apns-1")
        );
        assert_eq!(contact_point(&recipient, Channel::Email, None), None);
        assert_eq!(contact_point(&recipient, Channel::Sms, None), None);
    }
}
