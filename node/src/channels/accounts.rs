//! # accounts: provider accounts and channel chains
//!
//! Owns turning `[providers.<name>]` tables (each with a `kind`) and `[channels]` lists into
//! the node's [`Accounts`]: one [`Account`] per provider account (its adapter, its circuit on
//! this node, its cached cluster circuit, its call counters) and the ordered account list of
//! each channel. Adapters that keep a connection (SMPP) are started here and report receipts
//! and inbound messages on the provider-event channel the component owns.
//!
//! Must never let a misconfiguration through silently: an unknown account in a channel list,
//! an account of the wrong channel, or an adapter that cannot be built fails the node's start
//! with a message naming the account and field.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use herald_proto::v1::{Channel, PushPlatform};
use herald_providers::apns::ApnsProvider;
use herald_providers::fcm::FcmProvider;
use herald_providers::sandbox::SandboxProvider;
use herald_providers::smpp::SmppProvider;
use herald_providers::smtp::SmtpProvider;
use herald_providers::twilio::TwilioProvider;
use herald_providers::{Provider, ProviderEvents};
use parking_lot::Mutex;
use tokio::time::Instant;

use super::circuit::{Circuit, CircuitEvent, CircuitState};
use super::config::{BuildError, ChannelsConfig, ProviderAccountConfig, SANDBOX_ACCOUNT};
use super::keys::sender_key;

/// Calls per account by result, for metrics.
#[derive(Debug, Default)]
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
    pub stats: AccountStats,
    circuit: Mutex<Circuit>,
    /// When a step last called this account (ms): its circuit and breaker stay reported (and
    /// the cluster's view of them comes back) for a while after.
    last_used_ms: AtomicI64,
    /// Until when the cluster reports the account's circuit open (ms; 0 = not open), from the
    /// latest report's answer.
    cluster_open_until_ms: AtomicI64,
}

impl Account {
    fn new(provider: Arc<dyn Provider>, failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            breaker_key: sender_key(provider.name()),
            provider,
            stats: AccountStats::default(),
            circuit: Mutex::new(Circuit::new(failures_to_open, open_for)),
            last_used_ms: AtomicI64::new(0),
            cluster_open_until_ms: AtomicI64::new(0),
        }
    }

    pub fn name(&self) -> &str {
        self.provider.name()
    }

    /// The push platform whose tokens this account can reach (`None` = any, e.g. sandbox).
    pub fn platform(&self) -> Option<PushPlatform> {
        match self.provider.kind() {
            "fcm" => Some(PushPlatform::Fcm),
            "apns" => Some(PushPlatform::Apns),
            _ => None,
        }
    }

    /// May a call go out now? Not while the cluster reports the account open (another node
    /// saw the outage), nor while this node's circuit is open (one probe when half-open).
    pub fn allow(&self, now_ms: i64) -> bool {
        self.last_used_ms.store(now_ms, Ordering::Relaxed);
        // The cluster's view first: a skip must not take this node's half-open probe.
        if self.cluster_open(now_ms) {
            return false;
        }
        self.circuit.lock().allow(Instant::now())
    }

    /// The outcome of a call: `healthy` when the provider answered.
    pub fn record(&self, healthy: bool, now_ms: i64) {
        self.circuit.lock().record(healthy, Instant::now(), now_ms);
    }

    /// The circuit as this node treats it: its own state, or open while the cluster says so.
    pub fn circuit_state(&self, now_ms: i64) -> CircuitState {
        let local = self.circuit.lock().state(Instant::now());
        if local == CircuitState::Closed && self.cluster_open(now_ms) {
            CircuitState::Open
        } else {
            local
        }
    }

    fn cluster_open(&self, now_ms: i64) -> bool {
        self.cluster_open_until_ms.load(Ordering::Relaxed) > now_ms
    }

    pub fn last_used_ms(&self) -> i64 {
        self.last_used_ms.load(Ordering::Relaxed)
    }

    /// The circuit change to report, taken.
    pub fn take_circuit_event(&self) -> Option<CircuitEvent> {
        self.circuit.lock().take_event()
    }

    /// Puts back a change whose report failed.
    pub fn restore_circuit_event(&self, event: CircuitEvent) {
        self.circuit.lock().restore_event(event);
    }

    /// The cluster's answer about the account's circuit.
    pub fn set_cluster_open_until(&self, until_ms: i64) {
        self.cluster_open_until_ms
            .store(until_ms, Ordering::Relaxed);
    }
}

/// The node's provider accounts and each channel's chain of them.
pub struct Accounts {
    accounts: HashMap<String, Arc<Account>>,
    /// Per channel (by enum value), its accounts in failover order.
    chains: HashMap<i32, Vec<String>>,
    /// The built-in sandbox account, for its call counter.
    sandbox: Arc<SandboxProvider>,
}

impl Accounts {
    pub fn account(&self, name: &str) -> Option<&Arc<Account>> {
        self.accounts.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Account>> {
        self.accounts.values()
    }

    pub fn sandbox(&self) -> &Arc<SandboxProvider> {
        &self.sandbox
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

    /// Builds every account of `config`; adapters report on `events`.
    pub async fn build(
        config: &ChannelsConfig,
        events: ProviderEvents,
    ) -> Result<Self, BuildError> {
        let sandbox = Arc::new(SandboxProvider::named(
            SANDBOX_ACCOUNT,
            &config.sandbox,
            Some(events.clone()),
        ));
        let mut providers: Vec<Arc<dyn Provider>> = vec![sandbox.clone()];
        let mut names: BTreeMap<String, Channel> = BTreeMap::new();
        names.insert(SANDBOX_ACCOUNT.to_owned(), Channel::Unspecified);
        for (name, account) in &config.providers {
            if name == SANDBOX_ACCOUNT {
                return Err(BuildError::Invalid {
                    account: name.clone(),
                    problem:
                        "the name `sandbox` is the built-in account (configure it under [sandbox])"
                            .into(),
                });
            }
            let provider = build_provider(name, account, &events).await?;
            names.insert(name.clone(), provider.channel());
            providers.push(provider);
        }
        let mut chains = HashMap::new();
        for (channel, list) in [
            (Channel::Push, &config.chains.push),
            (Channel::Email, &config.chains.email),
            (Channel::Sms, &config.chains.sms),
        ] {
            let channel_name = channel.as_str_name().to_ascii_lowercase();
            let list = if list.is_empty() {
                vec![SANDBOX_ACCOUNT.to_owned()]
            } else {
                list.clone()
            };
            for account in &list {
                match names.get(account) {
                    None => {
                        return Err(BuildError::UnknownAccount {
                            channel: channel_name,
                            account: account.clone(),
                        });
                    }
                    Some(serves) if *serves != Channel::Unspecified && *serves != channel => {
                        return Err(BuildError::Invalid {
                            account: account.clone(),
                            problem: format!(
                                "is a {} account, listed under channels.{channel_name}",
                                serves.as_str_name().to_ascii_lowercase()
                            ),
                        });
                    }
                    Some(_) => {}
                }
            }
            chains.insert(channel as i32, list);
        }
        let open_for = Duration::from_millis(config.failover.breaker_open_ms);
        let accounts = providers
            .into_iter()
            .map(|provider| {
                let account = Account::new(provider, config.failover.breaker_failures, open_for);
                (account.name().to_owned(), Arc::new(account))
            })
            .collect();
        Ok(Self {
            accounts,
            chains,
            sandbox,
        })
    }
}

async fn build_provider(
    name: &str,
    account: &ProviderAccountConfig,
    events: &ProviderEvents,
) -> Result<Arc<dyn Provider>, BuildError> {
    let invalid = |e: herald_providers::ConfigError| BuildError::Invalid {
        account: name.to_owned(),
        problem: e.to_string(),
    };
    let name = name.to_owned();
    Ok(match account {
        ProviderAccountConfig::Sandbox(sandbox) => {
            Arc::new(SandboxProvider::named(&name, sandbox, Some(events.clone())))
        }
        ProviderAccountConfig::Fcm(fcm) => {
            Arc::new(FcmProvider::new(name, fcm).await.map_err(invalid)?)
        }
        ProviderAccountConfig::Apns(apns) => {
            Arc::new(ApnsProvider::new(name, apns).await.map_err(invalid)?)
        }
        ProviderAccountConfig::Smtp(smtp) => {
            Arc::new(SmtpProvider::new(name, smtp).map_err(invalid)?)
        }
        ProviderAccountConfig::Smpp(smpp) => Arc::new(
            SmppProvider::new(name, smpp.clone(), events.clone())
                .await
                .map_err(invalid)?,
        ),
        ProviderAccountConfig::Twilio(twilio) => {
            Arc::new(TwilioProvider::new(name, twilio).map_err(invalid)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::super::config::ChainsConfig;
    use super::*;

    #[tokio::test]
    async fn chains_name_their_accounts_and_default_to_the_sandbox() {
        let (events, _rx) = tokio::sync::mpsc::channel(1);
        let accounts = Accounts::build(&ChannelsConfig::default(), events.clone())
            .await
            .expect("built");
        let chain = accounts.chain(Channel::Sms, "");
        assert_eq!(chain.len(), 1);
        assert_eq!(chain[0].name(), SANDBOX_ACCOUNT);
        assert_eq!(chain[0].breaker_key, "sender:sandbox");
        assert!(accounts.serves(Channel::Push));
        let unknown = ChannelsConfig {
            chains: ChainsConfig {
                sms: vec!["nope".into()],
                ..Default::default()
            },
            ..Default::default()
        };
        let error = Accounts::build(&unknown, events)
            .await
            .err()
            .expect("unknown account");
        assert_eq!(
            error.to_string(),
            "channels.sms: account \"nope\" is not configured under [providers]"
        );
    }
}
