//! # accounts: provider accounts and channel chains from the node's configuration
//!
//! Owns turning `[providers.<name>]` tables (each with a `kind`) and `[channels]` lists into a
//! [`ProviderRegistry`]. Adapters that keep a connection (SMPP) are started here and report
//! receipts and inbound messages on the one [`ProviderEvents`] channel the node consumes.
//!
//! Must never let a misconfiguration through silently: an unknown account in a channel list,
//! an account of the wrong channel, or an adapter that cannot be built fails the node's start
//! with a message naming the account and field.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use herald_proto::v1::Channel;
use herald_providers::apns::{ApnsConfig, ApnsProvider};
use herald_providers::fcm::{FcmConfig, FcmProvider};
use herald_providers::sandbox::{SandboxConfig, SandboxProvider};
use herald_providers::smpp::{SmppConfig, SmppProvider};
use herald_providers::smtp::{SmtpConfig, SmtpProvider};
use herald_providers::twilio::{TwilioConfig, TwilioProvider};
use herald_providers::{Provider, ProviderEvents};
use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::failover::ProviderRegistry;

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
pub struct ChannelsConfig {
    pub push: Vec<String>,
    pub email: Vec<String>,
    pub sms: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("providers.{account}: {problem}")]
    Invalid { account: String, problem: String },
    #[error("channels.{channel}: account {account:?} is not configured under [providers]")]
    UnknownAccount { channel: String, account: String },
}

/// What a node's provider setup consists of.
pub struct Accounts {
    pub registry: ProviderRegistry,
    /// The built-in sandbox account (`sandbox`), for its call counter.
    pub sandbox: Arc<SandboxProvider>,
}

/// The built-in account's name.
pub const SANDBOX_ACCOUNT: &str = "sandbox";

pub async fn build(config: &NodeConfig, events: ProviderEvents) -> Result<Accounts, AccountError> {
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
            return Err(AccountError::Invalid {
                account: name.clone(),
                problem:
                    "the name `sandbox` is the built-in account (configure it under [sandbox])"
                        .into(),
            });
        }
        let invalid = |e: herald_providers::ConfigError| AccountError::Invalid {
            account: name.clone(),
            problem: e.to_string(),
        };
        let provider: Arc<dyn Provider> = match account {
            ProviderAccountConfig::Sandbox(sandbox) => {
                Arc::new(SandboxProvider::named(name, sandbox, Some(events.clone())))
            }
            ProviderAccountConfig::Fcm(fcm) => {
                Arc::new(FcmProvider::new(name.clone(), fcm).await.map_err(invalid)?)
            }
            ProviderAccountConfig::Apns(apns) => Arc::new(
                ApnsProvider::new(name.clone(), apns)
                    .await
                    .map_err(invalid)?,
            ),
            ProviderAccountConfig::Smtp(smtp) => {
                Arc::new(SmtpProvider::new(name.clone(), smtp).map_err(invalid)?)
            }
            ProviderAccountConfig::Smpp(smpp) => Arc::new(
                SmppProvider::new(name.clone(), smpp.clone(), events.clone())
                    .await
                    .map_err(invalid)?,
            ),
            ProviderAccountConfig::Twilio(twilio) => {
                Arc::new(TwilioProvider::new(name.clone(), twilio).map_err(invalid)?)
            }
        };
        names.insert(name.clone(), provider.channel());
        providers.push(provider);
    }
    let mut chains = HashMap::new();
    for (channel, list) in [
        (Channel::Push, &config.channels.push),
        (Channel::Email, &config.channels.email),
        (Channel::Sms, &config.channels.sms),
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
                    return Err(AccountError::UnknownAccount {
                        channel: channel_name,
                        account: account.clone(),
                    });
                }
                Some(serves) if *serves != Channel::Unspecified && *serves != channel => {
                    return Err(AccountError::Invalid {
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
        chains.insert(channel, list);
    }
    Ok(Accounts {
        registry: ProviderRegistry::new(providers, chains, config.failover.clone()),
        sandbox,
    })
}
