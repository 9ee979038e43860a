//! # failover: one waterfall step's call down its account chain
//!
//! Owns the retry loop of one step, over the accounts of its chain in order:
//!
//! - `Unavailable` (5xx, throttled, refused): retry the same account with full-jitter
//!   exponential backoff that honours `Retry-After`, up to `tries_per_account`; then the next
//!   account of the channel.
//! - An open circuit (this node's, or the cluster's view of the account): skip the account at
//!   once.
//! - `Rejected`: final for the step (another account would refuse the same content or
//!   contact point).
//! - `Ambiguous` (the request went out, no answer): final for the step — the provider may have
//!   accepted it, so it is never re-sent blindly, neither here nor on another account; the
//!   waterfall waits for a receipt until the step's timeout.
//!
//! Before each call it waits for the account's (and the tenant's) send slot. It must never
//! record events (the actor does) nor pick contact points against policy (the actor passes the
//! recipient; here only the address matching each account's platform is chosen).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_proto::clock::Clock;
use herald_proto::v1::{Channel, Content, Recipient};
use herald_providers::{Attempt, ListUnsubscribe, Outcome};
use rand::Rng;

use super::accounts::Account;
use super::config::FailoverConfig;
use super::handle::Handles;
use super::slots::Slots;
use crate::policy::contact::contact_point;

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

/// What a step's call uses of the component.
pub struct Step<'a> {
    pub config: &'a FailoverConfig,
    pub slots: &'a Slots,
    pub handles: &'a Handles,
    pub clock: &'a dyn Clock,
}

impl Step<'_> {
    /// Runs one step's call down `chain` (see the module docs).
    pub async fn send(&self, chain: &[Arc<Account>], call: StepCall<'_>) -> Delivery {
        let config = self.config;
        let mut trail = Vec::new();
        let mut calls = 0;
        let mut last: Option<Delivery> = None;
        for (account_index, account) in chain.iter().enumerate() {
            let name = account.name();
            let Some(to) = contact_point(call.recipient, call.channel, account.platform()) else {
                trail.push(format!("{name}: no usable contact point"));
                continue;
            };
            for try_index in 0..config.tries_per_account.max(1) {
                if !account.allow(self.clock.now_unix_ms()) {
                    account.stats.skipped_open.fetch_add(1, Ordering::Relaxed);
                    trail.push(format!("{name}: circuit open"));
                    break;
                }
                // The account's cluster-wide rate: wait for a send slot.
                let slot_taken = call.first_slot_taken && account_index == 0 && try_index == 0;
                if !slot_taken
                    && let Err(error) = self
                        .slots
                        .acquire_for(self.handles, name, call.tenant)
                        .await
                {
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
                let now = self.clock.now_unix_ms();
                let delivery = |outcome: Outcome, trail: &[String]| Delivery {
                    account: name.to_owned(),
                    outcome,
                    to: to.to_owned(),
                    trail: trail.join("; "),
                    calls,
                };
                match &outcome {
                    Outcome::Accepted { .. } => {
                        account.record(true, now);
                        account.stats.accepted.fetch_add(1, Ordering::Relaxed);
                        return delivery(outcome, &trail);
                    }
                    Outcome::Rejected { .. } => {
                        // The provider answered: healthy, whatever it thought of the message.
                        account.record(true, now);
                        account.stats.rejected.fetch_add(1, Ordering::Relaxed);
                        return delivery(outcome, &trail);
                    }
                    Outcome::Ambiguous { .. } => {
                        account.record(false, now);
                        account.stats.ambiguous.fetch_add(1, Ordering::Relaxed);
                        return delivery(outcome, &trail);
                    }
                    Outcome::Unavailable {
                        reason,
                        retry_after,
                    } => {
                        account.record(false, now);
                        account.stats.unavailable.fetch_add(1, Ordering::Relaxed);
                        trail.push(format!(
                            "{name}: unavailable ({reason}), try {}",
                            try_index + 1
                        ));
                        let retry_after = *retry_after;
                        last = Some(delivery(outcome, &trail));
                        if try_index + 1 >= config.tries_per_account {
                            break;
                        }
                        let wait = match retry_after {
                            Some(wait)
                                if wait > Duration::from_millis(config.retry_after_max_ms) =>
                            {
                                // Asked to wait longer than we may: try the next account.
                                break;
                            }
                            Some(wait) => wait,
                            None => backoff(config, try_index),
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
}

/// Full jitter: uniform in `[0, min(max, base · 2^try)]`.
fn backoff(config: &FailoverConfig, try_index: u32) -> Duration {
    let ceiling = config
        .backoff_base_ms
        .saturating_mul(1u64 << try_index.min(20))
        .min(config.backoff_max_ms);
    Duration::from_millis(rand::rng().random_range(0..=ceiling))
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::PushPlatform;

    #[test]
    fn backoff_is_bounded_by_the_ceiling() {
        let config = FailoverConfig {
            backoff_base_ms: 100,
            backoff_max_ms: 250,
            ..Default::default()
        };
        for try_index in 0..30 {
            let ceiling = 100u64.saturating_mul(1 << try_index.min(20)).min(250);
            assert!(backoff(&config, try_index) <= Duration::from_millis(ceiling));
        }
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
