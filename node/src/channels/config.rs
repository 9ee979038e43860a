//! # config: what the channels component is built from
//!
//! Owns the configuration types of provider accounts and everything per channel: the accounts
//! (`[providers.<name>]`), the chains (`[channels]`), retries and circuits (`[failover]`), rate
//! limits (`[rate_limits]`, `rate_limit_margin`), messenger-style rules (`[channel_rules]`),
//! block-rate thresholds (`[block_rate]`) and the built-in sandbox account; and [`Rules`], the
//! checked digest of them each ChannelActor gets its part of. The node's config imports these
//! types for its fields (never the reverse).
//!
//! Must never let a misconfiguration through silently: a warm-up without a valid start day
//! fails the build with a message naming the account and field.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_providers::apns::ApnsConfig;
use herald_providers::fcm::FcmConfig;
use herald_providers::sandbox::SandboxConfig;
use herald_providers::smpp::SmppConfig;
use herald_providers::smtp::SmtpConfig;
use herald_providers::twilio::TwilioConfig;
use serde::{Deserialize, Serialize};

use super::keys::CAMPAIGN_PREFIX;
use super::warmup::Warmup;
use crate::policy::block_rate::Thresholds;

/// The built-in account's name.
pub const SANDBOX_ACCOUNT: &str = "sandbox";

/// One provider account (`[providers.<name>]`); `kind` selects the adapter.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ProviderAccountConfig {
    /// The sandbox (any channel): deterministic outcomes, optional receipts.
    Sandbox(SandboxConfig),
    /// Push through Firebase Cloud Messaging (HTTP v1, service-account OAuth).
    Fcm(FcmConfig),
    /// Push through Apple Push Notification service (HTTP/2, ES256 token auth).
    Apns(ApnsConfig),
    /// Email over SMTP (pooled connections); SendGrid-style event webhooks at
    /// `/callbacks/<name>/events`.
    Smtp(SmtpConfig),
    /// SMS over SMPP 3.4 (one bound transceiver session; receipts arrive on it).
    Smpp(SmppConfig),
    /// SMS over a Twilio-compatible HTTP API; status callbacks at `/callbacks/<name>/status`,
    /// incoming messages at `/callbacks/<name>/inbound`.
    Twilio(TwilioConfig),
}

/// Per channel, its accounts in failover order (`[channels]`). Empty = the built-in
/// `sandbox` account.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChainsConfig {
    pub push: Vec<String>,
    pub email: Vec<String>,
    pub sms: Vec<String>,
}

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

/// Messenger-style rules of one provider account (`[channel_rules.<account>]`). The session
/// window is enforced by the recipient's actor (it reads the person's last inbound message);
/// the tier, the warm-up and the dead-contact codes by this component.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelRules {
    /// Warm-up schedule of a new sending domain or number: the most sends per UTC day, day by
    /// day from `warmup_start` (`warmup_daily = [50, 100, 250, 500, 1000]`); after the last day
    /// no daily limit. Sends beyond the day's quota skip this account (the waterfall goes on).
    pub warmup_daily: Vec<u32>,
    /// First day of the warm-up (`"2026-11-20"`, UTC). Required with `warmup_daily`.
    pub warmup_start: Option<String>,
    /// Error codes in this account's failure receipts that mean the number (or address) is dead
    /// (SMPP `err:` values, e.g. `["001", "0C1"]`): the contact point is then suppressed, as
    /// after a hard bounce. Twilio's 30005/30006 are known without configuration.
    pub dead_contact_errors: Vec<String>,
    /// Session window, hours: more than this long after the person's last inbound message,
    /// only tagged messages (`MessageRequest.tag`) may go through this account. 0 = no rule.
    pub session_window_h: u32,
    /// The account's tier: at most this many distinct recipients in any 24 hours (as
    /// WhatsApp's 250 / 1k / 10k / 100k tiers). 0 = no limit. Counted cluster-wide by the
    /// account's ChannelActor.
    pub unique_recipients_per_day: u32,
}

/// The channels component's configuration (built by the node config from its fields).
#[derive(Clone, Debug, Default)]
pub struct ChannelsConfig {
    /// The built-in `sandbox` account.
    pub sandbox: SandboxConfig,
    /// Provider accounts by name.
    pub providers: BTreeMap<String, ProviderAccountConfig>,
    /// Per channel, the accounts in failover order.
    pub chains: ChainsConfig,
    pub failover: FailoverConfig,
    /// Sends per second per account, or per tenant on an account (`account@tenant`).
    pub rate_limits: BTreeMap<String, f64>,
    /// Share of each rate kept free (0..0.5).
    pub rate_limit_margin: f64,
    /// Per account: its tier, warm-up and dead-contact codes (and the session window, which
    /// this component does not use).
    pub channel_rules: BTreeMap<String, ChannelRules>,
    /// Block-rate thresholds per channel name, replacing the built-in ones.
    pub block_rate: BTreeMap<String, Thresholds>,
    /// How long a call waits for the owner of a key's partition to take its lease (and a
    /// caller retries against newer tables) before it fails.
    pub owner_wait: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("providers.{account}: {problem}")]
    Invalid { account: String, problem: String },
    #[error("channels.{channel}: account {account:?} is not configured under [providers]")]
    UnknownAccount { channel: String, account: String },
    #[error("channel_rules.{account}: {problem}")]
    Rule { account: String, problem: String },
}

/// The checked rules of every key, from [`ChannelsConfig`].
#[derive(Clone, Debug, Default)]
pub struct Rules {
    /// Key (account or `account@tenant`) → sends per second after the margin.
    pub limits: BTreeMap<String, f64>,
    /// Account → distinct recipients allowed in any 24 hours.
    pub tiers: BTreeMap<String, u32>,
    pub warmups: BTreeMap<String, Warmup>,
    /// Account → error codes of dead contact points.
    pub dead_contact_errors: BTreeMap<String, Vec<String>>,
    /// Per channel name, block-rate thresholds overriding the built-in ones.
    pub thresholds: BTreeMap<String, Thresholds>,
}

/// What one ChannelActor enforces.
#[derive(Clone, Debug, Default)]
pub struct KeyRules {
    pub rate: Option<f64>,
    pub tier: Option<u32>,
    pub warmup: Option<Warmup>,
    pub thresholds: BTreeMap<String, Thresholds>,
}

impl Rules {
    pub fn from_config(config: &ChannelsConfig) -> Result<Self, BuildError> {
        let keep = 1.0 - config.rate_limit_margin.clamp(0.0, 0.5);
        let mut rules = Rules {
            limits: config
                .rate_limits
                .iter()
                .filter(|(_, rate)| **rate > 0.0 && rate.is_finite())
                .map(|(key, rate)| (key.clone(), rate * keep))
                .collect(),
            thresholds: config.block_rate.clone(),
            ..Default::default()
        };
        for (account, account_rules) in &config.channel_rules {
            if account_rules.unique_recipients_per_day > 0 {
                rules
                    .tiers
                    .insert(account.clone(), account_rules.unique_recipients_per_day);
            }
            if !account_rules.dead_contact_errors.is_empty() {
                rules
                    .dead_contact_errors
                    .insert(account.clone(), account_rules.dead_contact_errors.clone());
            }
            if account_rules.warmup_daily.is_empty() {
                continue;
            }
            let rule = |problem: String| BuildError::Rule {
                account: account.clone(),
                problem,
            };
            let start = account_rules
                .warmup_start
                .as_deref()
                .ok_or_else(|| rule("warmup_start is required with warmup_daily".into()))?;
            let warmup = Warmup::parse(start, account_rules.warmup_daily.clone())
                .map_err(|e| rule(e.to_string()))?;
            rules.warmups.insert(account.clone(), warmup);
        }
        Ok(rules)
    }

    /// The part of the rules the ChannelActor of `key` enforces: a campaign's actor holds only
    /// its breaker; a tenant quota only its rate.
    pub fn for_key(&self, key: &str) -> KeyRules {
        let thresholds = self.thresholds.clone();
        if key.starts_with(CAMPAIGN_PREFIX) {
            return KeyRules {
                thresholds,
                ..Default::default()
            };
        }
        KeyRules {
            rate: self.limits.get(key).copied(),
            tier: self.tiers.get(key).copied(),
            warmup: self.warmups.get(key).cloned(),
            thresholds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_lowers_the_rate_and_rules_go_to_their_keys() {
        let config = ChannelsConfig {
            rate_limits: BTreeMap::from([("sms".to_owned(), 50.0), ("sms@acme".to_owned(), 10.0)]),
            rate_limit_margin: 0.04,
            channel_rules: BTreeMap::from([(
                "sms".to_owned(),
                ChannelRules {
                    unique_recipients_per_day: 250,
                    warmup_daily: vec![10],
                    warmup_start: Some("2026-01-01".into()),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let rules = Rules::from_config(&config).expect("valid");
        let sms = rules.for_key("sms");
        assert!((sms.rate.expect("limited") - 48.0).abs() < 1e-9);
        assert_eq!(sms.tier, Some(250));
        assert!(sms.warmup.is_some());
        let quota = rules.for_key("sms@acme");
        assert!((quota.rate.expect("limited") - 9.6).abs() < 1e-9);
        assert_eq!(quota.tier, None);
        let campaign = rules.for_key("campaign:acme:sms");
        assert!(campaign.rate.is_none() && campaign.tier.is_none());
    }

    #[test]
    fn a_warmup_without_its_start_is_refused_by_name() {
        let config = ChannelsConfig {
            channel_rules: BTreeMap::from([(
                "mail".to_owned(),
                ChannelRules {
                    warmup_daily: vec![10],
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let error = Rules::from_config(&config).expect_err("invalid");
        assert_eq!(
            error.to_string(),
            "channel_rules.mail: warmup_start is required with warmup_daily"
        );
    }
}
