//! # channels: the node's handle to its provider accounts
//!
//! Owns what the recipient actors and the API ask of provider accounts: the chain a step
//! tries, the channel rules of an account (warm-up, tier), a send slot, the failover call down
//! the chain, the breakers' cached pauses and the signals they count, and direct sends
//! (keyword confirmations). Must never decide policy (the waterfall does) and never block a
//! send on a round trip to check a pause (the cache answers).
//!
//! Transitional: this wraps `failover`, `rate_limits` and `breakers` behind one handle until
//! the ChannelActor replaces them; callers see only this handle.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_proto::v1::{
    BreakerReport, BreakerStatus, Channel, Content, PermitGrant, PermitRequest, SmsContent,
};
use herald_providers::{Attempt, Outcome};
use herald_store::Fence;

use crate::breakers::{campaign_key, sender_key};
use crate::context::NodeContext;
use crate::failover::{Account, Delivery, ProviderRegistry, StepCall};
use crate::policy::block_rate::Signal;
use crate::reason::{ChannelRule, Pause, Reason};
use crate::waterfall::AccountInfo;

pub struct Channels {
    registry: ProviderRegistry,
    /// Session windows per account (hours), from `[channel_rules]`.
    session_windows: std::collections::BTreeMap<String, u32>,
    legacy: Arc<NodeContext>,
    sandbox: Arc<herald_providers::sandbox::SandboxProvider>,
}

fn pause_of(status: BreakerStatus) -> Pause {
    Pause {
        key: status.key,
        ratio: status.ratio,
        sample: status.sample,
        pause_threshold: status.pause_threshold,
    }
}

impl Channels {
    pub fn new(
        registry: ProviderRegistry,
        session_windows: std::collections::BTreeMap<String, u32>,
        legacy: Arc<NodeContext>,
        sandbox: Arc<herald_providers::sandbox::SandboxProvider>,
    ) -> Self {
        Self {
            registry,
            session_windows,
            legacy,
            sandbox,
        }
    }

    /// The accounts a step tries, as the waterfall sees them.
    pub fn chain(&self, channel: Channel, preferred: &str, tenant: &str) -> Vec<AccountInfo> {
        let limits = &self.legacy.rate_limits;
        self.registry
            .chain(channel, preferred)
            .into_iter()
            .map(|account| {
                let name = account.provider.name();
                AccountInfo {
                    name: name.to_owned(),
                    session_window_h: self.session_windows.get(name).copied().unwrap_or(0),
                    warmup: limits.has_warmup(name),
                    tier: limits.has_tier(name),
                    // `may_wait` first: it answers without allocating when nothing is limited.
                    rate_limited: limits.may_wait(name, tenant)
                        && (limits.is_limited(name)
                            || limits.is_limited(&crate::rate_limits::RateLimits::tenant_key(
                                name, tenant,
                            ))),
                    late_receipts: account.provider.late_receipts(),
                }
            })
            .collect()
    }

    /// The paused breaker holding a send through `account`: the campaign's, else the
    /// account's.
    pub fn paused(&self, tenant: &str, campaign_id: &str, account: &str) -> Option<Pause> {
        let breakers = &self.legacy.breakers;
        if !breakers.any_paused() {
            return None;
        }
        let campaign = (!campaign_id.is_empty())
            .then(|| campaign_key(tenant, campaign_id))
            .and_then(|key| breakers.paused(&key));
        campaign
            .or_else(|| breakers.paused(&sender_key(account)))
            .map(pause_of)
    }

    /// The warm-up and tier verdicts of `account` for a recipient (`recipient_key`: a hash of
    /// tenant and recipient id).
    pub async fn check_rules(&self, account: &AccountInfo, recipient_key: &str) -> Option<Reason> {
        let limits = &self.legacy.rate_limits;
        let name = &account.name;
        if account.warmup {
            match limits.admit_warmup(name).await {
                Ok(grant) if grant.refused => {
                    return Some(Reason::WarmupQuota {
                        account: name.clone(),
                        quota_today: grant.tier,
                        sent_today: grant.unique,
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    return Some(Reason::RuleUnknown {
                        rule: ChannelRule::Warmup,
                        account: name.clone(),
                        error,
                    });
                }
            }
        }
        if account.tier {
            match limits.admit(name, recipient_key).await {
                Ok(grant) if grant.refused => {
                    return Some(Reason::TierLimit {
                        account: name.clone(),
                        unique_recipients_24h: grant.unique,
                        tier: grant.tier,
                    });
                }
                Ok(_) => {}
                Err(error) => {
                    return Some(Reason::RuleUnknown {
                        rule: ChannelRule::Tier,
                        account: name.clone(),
                        error,
                    });
                }
            }
        }
        None
    }

    /// Waits for a send slot of `account` (and of the tenant's quota on it); false when none
    /// could be had.
    pub async fn acquire_slot(&self, account: &str, tenant: &str) -> bool {
        self.legacy
            .rate_limits
            .acquire_for(account, tenant)
            .await
            .is_ok()
    }

    /// The step's call down its account chain (retries, backoff, circuits, the next account).
    pub async fn call(&self, accounts: &[String], call: StepCall<'_>) -> Delivery {
        let chain: Vec<Arc<Account>> = accounts
            .iter()
            .filter_map(|name| self.registry.account(name).cloned())
            .collect();
        self.registry
            .send(&chain, call, &self.legacy.rate_limits)
            .await
    }

    /// Counts a signal for the message's campaign (if any) and for `account`.
    pub fn observe(
        &self,
        tenant: &str,
        campaign_id: &str,
        account: &str,
        channel: Channel,
        signal: Signal,
    ) {
        let breakers = &self.legacy.breakers;
        if !campaign_id.is_empty() {
            breakers.observe(&campaign_key(tenant, campaign_id), channel, signal);
        }
        if let Some(key) = self.registry.account(account).map(|a| &a.breaker_key) {
            breakers.observe(key, channel, signal);
        } else if !account.is_empty() {
            breakers.observe(&sender_key(account), channel, signal);
        }
    }

    /// A send was held by a paused breaker (a metric).
    pub fn count_deferred_send(&self) {
        self.legacy
            .breakers
            .stats
            .deferred_sends
            .fetch_add(1, Ordering::Relaxed);
    }

    /// One SMS straight through `account` (keyword confirmations, HELP): no waterfall, no
    /// retries. `None` when there is no such account.
    pub async fn send_text(
        &self,
        account: &str,
        attempt_id: &str,
        recipient_key: &str,
        to: &str,
        text: &str,
    ) -> Option<Outcome> {
        let account = self.registry.account(account)?;
        let content = Content {
            sms: Some(SmsContent {
                text: text.to_owned(),
            }),
            ..Default::default()
        };
        Some(
            account
                .provider
                .send(Attempt {
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

    pub fn has_account(&self, name: &str) -> bool {
        self.registry.account(name).is_some()
    }

    /// Every account (for metrics).
    pub fn accounts(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.registry.accounts()
    }

    /// The state of a campaign's or sender's breaker, asked of its owner; `resume` clears a
    /// pause.
    pub async fn breaker(
        &self,
        tenant: &str,
        campaign_id: &str,
        sender: &str,
        resume: bool,
    ) -> Result<BreakerStatus, String> {
        let key = if campaign_id.is_empty() {
            sender_key(sender)
        } else {
            campaign_key(tenant, campaign_id)
        };
        self.legacy
            .breakers
            .report(BreakerReport {
                key,
                resume,
                ..Default::default()
            })
            .await
    }

    /// Every breaker state this node knows (for metrics).
    pub fn breaker_states(&self) -> Vec<BreakerStatus> {
        self.legacy.breakers.states()
    }

    /// Pauses and deferred sends (for metrics).
    pub fn breaker_counts(&self) -> (u64, u64) {
        let stats = &self.legacy.breakers.stats;
        (
            stats.pauses.load(Ordering::Relaxed),
            stats.deferred_sends.load(Ordering::Relaxed),
        )
    }

    /// Calls the sandbox provider answered (billing cross-checks in benchmarks).
    pub fn sandbox_calls(&self) -> u64 {
        self.sandbox.calls()
    }

    /// Owner side of a remote slot or rule request.
    pub fn serve_permits(&self, request: &PermitRequest, fence: Fence) -> PermitGrant {
        let limits = &self.legacy.rate_limits;
        if request.daily {
            limits.admit_daily(&request.account)
        } else if request.recipient.is_empty() {
            PermitGrant {
                delays_us: limits.grant(&request.account, request.count.min(1024), fence),
                ..Default::default()
            }
        } else {
            limits.admit_local(&request.account, &request.recipient)
        }
    }

    /// Owner side of a remote breaker report.
    pub fn serve_breaker(&self, report: &BreakerReport, fence: Fence) -> BreakerStatus {
        self.legacy.breakers.apply(report, fence)
    }
}
