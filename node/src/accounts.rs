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
use herald_providers::sandbox::{SandboxConfig, SandboxProvider};
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
                problem: "the name `sandbox` is the built-in account (configure it under [sandbox])"
                    .into(),
            });
        }
        let provider: Arc<dyn Provider> = match account {
            ProviderAccountConfig::Sandbox(sandbox) => Arc::new(SandboxProvider::named(
                name,
                sandbox,
                Some(events.clone()),
            )),
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
