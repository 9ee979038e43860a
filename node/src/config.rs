//! Node configuration: one TOML file plus `HERALD_*` environment overrides.
//!
//! Owns the shape and defaults of every node knob (documented per field; README lists them).
//! Must never read anything but the file and the environment: no store, no network.
//!
//! Environment overrides: `HERALD_<KEY>` sets top-level key `<key>` (lowercased), and `__`
//! descends into tables: `HERALD_SANDBOX__LATENCY_MS=5` sets `sandbox.latency_ms`. Values are
//! parsed as TOML (`5`, `true`, `"text"`, `["a","b"]`); a value that is not valid TOML is taken
//! as a string. Only variables whose first segment names a key of the config are applied
//! ([`relevant_env`]): `HERALD_API_KEY` (the CLI's) or the `HERALD_CONTROL_PORT` that
//! Kubernetes injects for a Service must not stop a node from starting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Loads `T` from an optional TOML file, then applies `HERALD_*` overrides from `env`.
pub fn load<T: DeserializeOwned>(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, Error> {
    let mut root = match path {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })?;
            text.parse::<toml::Table>().map_err(|e| Error::Invalid {
                origin: path.display().to_string(),
                message: e.to_string(),
            })?
        }
        None => toml::Table::new(),
    };
    for (name, value) in env {
        let Some(key) = name.strip_prefix("HERALD_") else {
            continue;
        };
        // HERALD_CONFIG names the file itself; HERALD_LOG the log filter.
        if key.is_empty() || key == "CONFIG" || key == "LOG" {
            continue;
        }
        let path: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
        let parsed = format!("v = {value}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or(toml::Value::String(value));
        set_path(&mut root, &path, parsed);
    }
    T::deserialize(toml::Value::Table(root)).map_err(|e| Error::Invalid {
        origin: path
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "(environment)".into()),
        message: e.to_string(),
    })
}

/// The top-level keys of a config type, from its default value.
pub fn top_level_keys<T: serde::Serialize + Default>() -> Vec<String> {
    match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// The `HERALD_*` variables of `env` whose first segment is one of `keys` (plus everything that
/// is not `HERALD_*`, which [`load`] ignores anyway).
pub fn relevant_env(
    keys: &[String],
    env: impl IntoIterator<Item = (String, String)>,
) -> Vec<(String, String)> {
    env.into_iter()
        .filter(|(name, _)| {
            let Some(key) = name.strip_prefix("HERALD_") else {
                return false;
            };
            let first = key
                .split("__")
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            keys.contains(&first)
        })
        .collect()
}

fn set_path(table: &mut toml::Table, path: &[String], value: toml::Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        table.insert(first.clone(), value);
        return;
    }
    let entry = table
        .entry(first.clone())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if !entry.is_table() {
        *entry = toml::Value::Table(toml::Table::new());
    }
    if let toml::Value::Table(inner) = entry {
        set_path(inner, rest, value);
    }
}

/// A tenant and its API keys.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Tenant id: prefixes every stored key of the tenant.
    pub id: String,
    /// API keys of the tenant, sent as `authorization: Bearer <key>`. Keep the file private.
    #[serde(default)]
    pub api_keys: Vec<String>,
    /// Marketing messages per recipient per UTC day before further ones are suppressed
    /// (`frequency_cap`). 0 = no cap.
    #[serde(default = "default_marketing_daily_cap")]
    pub marketing_daily_cap: u32,
    /// More sliding-window caps on marketing messages per recipient, e.g.
    /// `marketing_caps = [{ max = 1, window_s = 3600 }]` (at most one an hour), on top of
    /// `marketing_daily_cap` (which is the 24-hour window).
    #[serde(default)]
    pub marketing_caps: Vec<CapConfig>,
    /// Marketing messages go out only inside the recipient's local window (`[tenants.quiet_hours]
    /// start = "08:00", end = "21:00", no_weekend = false`). Transactional messages ignore it.
    #[serde(default)]
    pub quiet_hours: crate::policy::quiet_hours::Window,
    /// `false` = no quiet hours for this tenant (marketing goes at any local time).
    #[serde(default = "default_true")]
    pub quiet_hours_enabled: bool,
    /// The time zone of recipients with neither a time zone nor a phone number that tells one
    /// (IANA name).
    #[serde(default = "default_time_zone")]
    pub default_time_zone: String,
    /// Deferred messages wake at the window's start plus a jitter spread over this many
    /// seconds, so a morning does not start with a spike.
    #[serde(default = "default_quiet_hours_spread_s")]
    pub quiet_hours_spread_s: u64,
    /// Admission on the public API, per node: at most this many units a second for the tenant
    /// (a call is one unit, a batch one per item); over it the call is refused
    /// `RESOURCE_EXHAUSTED` and changes nothing, while other tenants' calls still pass.
    /// 0 = no limit.
    #[serde(default)]
    pub admission_per_s: u32,
    /// Units the tenant may spend at once above its rate (a full bucket). 0 = one second's
    /// worth (`admission_per_s`).
    #[serde(default)]
    pub admission_burst: u32,
    /// Days an ended message (delivered, failed, suppressed, cancelled) and its event log are
    /// kept in the store; then they expire. Fractions are allowed (`0.5` = 12 hours).
    #[serde(default = "default_retention_days")]
    pub retention_days: f64,
}

fn default_retention_days() -> f64 {
    30.0
}

/// At most `max` marketing messages to one recipient in any `window_s` seconds.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CapConfig {
    pub max: u32,
    pub window_s: u64,
}

impl TenantConfig {
    /// A tenant with these keys and every other setting at its default.
    pub fn new(id: impl Into<String>, api_keys: Vec<String>) -> Self {
        Self {
            id: id.into(),
            api_keys,
            marketing_daily_cap: default_marketing_daily_cap(),
            marketing_caps: Vec::new(),
            quiet_hours: Default::default(),
            quiet_hours_enabled: true,
            default_time_zone: default_time_zone(),
            quiet_hours_spread_s: default_quiet_hours_spread_s(),
            admission_per_s: 0,
            admission_burst: 0,
            retention_days: default_retention_days(),
        }
    }

    /// Checks what serde cannot: the time zone name and the quiet-hours window.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: String| Error::Invalid {
            origin: format!("tenant {}", self.id),
            message,
        };
        self.default_time_zone
            .parse::<chrono_tz::Tz>()
            .map_err(|_| {
                invalid(format!(
                    "default_time_zone {:?} is not an IANA time zone",
                    self.default_time_zone
                ))
            })?;
        self.quiet_hours
            .validate()
            .map_err(|e| invalid(format!("quiet_hours: {e}")))?;
        if !(self.retention_days > 0.0 && self.retention_days <= 3650.0) {
            return Err(invalid(format!(
                "retention_days must be more than 0 and at most 3650, not {}",
                self.retention_days
            )));
        }
        Ok(())
    }
}

fn default_marketing_daily_cap() -> u32 {
    5
}

fn default_true() -> bool {
    true
}

fn default_time_zone() -> String {
    "UTC".into()
}

fn default_quiet_hours_spread_s() -> u64 {
    900
}

pub use herald_store::StoreConfig;

use crate::channels::config::{
    ChainsConfig, ChannelRules, ChannelsConfig, FailoverConfig, ProviderAccountConfig,
    SANDBOX_ACCOUNT,
};

/// Replies to SMS keywords (`[sms_keywords]`). Empty = no reply.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmsKeywordReplies {
    /// After STOP (and its synonyms): the one confirmation the person gets.
    pub stop_reply: String,
    /// After START / UNSTOP.
    pub start_reply: String,
    /// After HELP.
    pub help_reply: String,
}

impl Default for SmsKeywordReplies {
    fn default() -> Self {
        Self {
            stop_reply: "You are unsubscribed and will get no more messages from this number. Reply START to resubscribe.".into(),
            start_reply: "You are subscribed again. Reply STOP to unsubscribe, HELP for help.".into(),
            help_reply: "Reply STOP to unsubscribe, START to resubscribe.".into(),
        }
    }
}
pub use herald_providers::sandbox::SandboxConfig;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Unique, stable node name. Default: the name in the node's certificate (`tls.cert`),
    /// or `node-<listen port>` without TLS. With TLS, a set `node_id` must match the
    /// certificate.
    pub node_id: Option<String>,
    /// Address the public gRPC API binds (Delivery, Recipients, Engagement, Breakers,
    /// health, reflection). Clients authenticate with API keys.
    pub listen_addr: SocketAddr,
    /// Address clients use to reach the public API. Default: `listen_addr`.
    pub advertise_addr: Option<String>,
    /// Address the internal gRPC server binds (node-to-node traffic, mutual TLS). Only other
    /// nodes need to reach it (see docs/security.md).
    pub internal_listen_addr: SocketAddr,
    /// Address other nodes use to reach `internal_listen_addr`. Default: that address.
    pub internal_advertise_addr: Option<String>,
    /// Mutual TLS of the internal planes: `[tls] ca, cert, key` (the default mode, `mtls`,
    /// requires them), or `mode = "off"` on a test machine.
    pub tls: herald_tls::ClusterTls,
    /// TLS of the public API (`[api_tls] cert, key`, optional `client_ca`). Unset = plaintext
    /// (behind a TLS-terminating proxy, or on a private network).
    pub api_tls: herald_tls::public::ApiTls,
    /// Control plane replicas (`host:port`); the node follows whichever leads.
    pub control_addrs: Vec<String>,
    /// Relative capacity: a node of weight 2 owns twice the partitions of weight 1.
    pub weight: u32,
    pub store: StoreConfig,
    /// Tenants and their API keys.
    pub tenants: Vec<TenantConfig>,
    /// A TOML file with more `[[tenants]]`, e.g. mounted from a secret.
    pub tenants_file: Option<PathBuf>,
    /// Also accept API keys registered in the store (by SHA-256 digest; `herald keys`).
    pub api_keys_in_store: bool,
    /// How long a node trusts a store key it has looked up before it asks the store again: a
    /// revoked key is refused by every node at most this long after `herald keys revoke`.
    pub api_key_recheck_ms: u64,
    /// Partition lease time to live. A dead node's partitions are taken over at most this long
    /// after its last renewal.
    pub lease_ttl_ms: u64,
    /// How often leases are renewed (must be well below `lease_ttl_ms`).
    pub lease_renew_interval_ms: u64,
    /// How often a partition the table gives this node is retried while another holds its lease.
    pub lease_acquire_retry_ms: u64,
    /// A recipient actor with nothing to do for this long is stopped (its state is in the store).
    pub actor_idle_ms: u64,
    /// How long idempotency keys are kept, in seconds (default 7 days).
    pub idempotency_ttl_s: u64,
    /// Largest accepted message (encoded), in bytes.
    pub max_message_bytes: usize,
    /// Most messages in one `SendBatch` (and recipients in one `UpsertRecipients`).
    pub batch_max: usize,
    /// How long a request may wait for routing (owner changes, lease take-over) before failing.
    pub route_timeout_ms: u64,
    /// Events buffered per `WatchMessages` subscriber before it is told it lagged.
    pub watch_buffer: usize,
    /// Admission control: messages being worked on by this node's actors at once. Beyond it,
    /// acks of new messages wait (they are durable already), so an overload slows clients
    /// down instead of piling actors up in memory.
    pub max_messages_in_progress: usize,
    /// The built-in `sandbox` provider account (serves every channel without its own list).
    pub sandbox: SandboxConfig,
    /// Provider accounts by name: `[providers.<name>]` with `kind = "sandbox" | ...` and the
    /// adapter's own fields.
    pub providers: BTreeMap<String, ProviderAccountConfig>,
    /// Per channel, the accounts to use in failover order. Empty = `["sandbox"]`.
    pub channels: ChainsConfig,
    /// Retries and circuit breakers of provider calls.
    pub failover: FailoverConfig,
    /// A waterfall step's wait for its success condition when the step gives no timeout, ms.
    pub default_step_timeout_ms: u64,
    /// How long a provider message id stays matchable to its attempt (receipts), seconds.
    pub receipt_index_ttl_s: u64,
    /// Address of the HTTP listener for provider callbacks and `/metrics`. Unset = none.
    pub http_listen_addr: Option<SocketAddr>,
    /// The URL at which recipients and providers reach `http_listen_addr` from outside (e.g.
    /// `https://herald.example.com`). With `link_secret`, emails carry one-click unsubscribe
    /// headers (RFC 8058) pointing at `<public_url>/unsubscribe/...`.
    pub public_url: Option<String>,
    /// Key of the HMAC that signs unsubscribe links (the same on every node; keep it secret).
    pub link_secret: Option<String>,
    /// Key of the HMAC under which contact points become index key names (the phone index of
    /// inbound SMS): the same on every node; keep it secret. Unset = a well-known key (start-up
    /// warns). Changing it orphans the index until each recipient is upserted again.
    pub contact_index_secret: Option<String>,
    /// Cluster-wide send rates per provider account, per second (`[rate_limits] smpp-main = 30`),
    /// and per tenant on an account (`"smpp-main@acme" = 10`: acme's own quota, on top of the
    /// account's). One node (the owner of the key's partition) schedules every send of a key.
    pub rate_limits: BTreeMap<String, f64>,
    /// Messenger-style rules per provider account (`[channel_rules.wa-main] session_window_h =
    /// 24, unique_recipients_per_day = 1000`).
    pub channel_rules: BTreeMap<String, ChannelRules>,
    /// Block-rate breaker thresholds per channel (`[block_rate.email] warn = 0.001, pause =
    /// 0.003, min_sample = 1000, window_ms = 86400000`), replacing the built-in ones of that
    /// channel as a whole.
    pub block_rate: BTreeMap<String, crate::policy::block_rate::Thresholds>,
    /// Share of each rate kept free (0..0.5) so that network jitter between a slot and the
    /// provider never puts one send too many into a second.
    pub rate_limit_margin: f64,
    /// Shifts the clock that policy decisions (quiet hours) read, in ms. For tests and demos
    /// of time-dependent rules only; timers and leases always use the real clock. Default 0.
    pub policy_clock_offset_ms: i64,
    /// Runs the clock of journeys (their waits and local times of day) this many times
    /// faster than real time, so that a 90-day journey plays out in minutes. For tests and
    /// demos only (86400 = a day per second); every node of a cluster must use the same rate
    /// and anchor. Default 1.
    pub policy_clock_rate: u32,
    /// The instant (ms since the Unix epoch) from which an accelerated policy clock runs
    /// ahead: its time is `anchor + (now - anchor) × rate`. Required when
    /// `policy_clock_rate` is above 1.
    pub policy_clock_anchor_unix_ms: Option<i64>,
    /// Replies to SMS keywords (STOP, START, HELP), sent once from the number the keyword was
    /// sent to.
    pub sms_keywords: SmsKeywordReplies,
    /// Price table for cost units per attempt and `cost_order` waterfalls (`[prices.sms]
    /// default = 0.0079`, `[prices.sms.countries] GB = 0.04`, ...). Default: a built-in,
    /// illustrative table.
    pub prices: crate::content::pricing::PriceTable,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            node_id: None,
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 7500)),
            advertise_addr: None,
            internal_listen_addr: SocketAddr::from(([127, 0, 0, 1], 7501)),
            internal_advertise_addr: None,
            tls: herald_tls::ClusterTls::default(),
            api_tls: herald_tls::public::ApiTls::default(),
            control_addrs: vec!["127.0.0.1:7400".into()],
            weight: 1,
            store: StoreConfig::default(),
            tenants: Vec::new(),
            tenants_file: None,
            api_keys_in_store: false,
            api_key_recheck_ms: 2000,
            lease_ttl_ms: 2000,
            lease_renew_interval_ms: 650,
            lease_acquire_retry_ms: 100,
            actor_idle_ms: 250,
            idempotency_ttl_s: 7 * 24 * 3600,
            max_message_bytes: 64 * 1024,
            batch_max: 1000,
            route_timeout_ms: 20_000,
            watch_buffer: 65_536,
            max_messages_in_progress: 2_000,
            sandbox: SandboxConfig::default(),
            providers: BTreeMap::new(),
            channels: ChainsConfig::default(),
            failover: FailoverConfig::default(),
            default_step_timeout_ms: 300_000,
            receipt_index_ttl_s: 7 * 24 * 3600,
            http_listen_addr: None,
            public_url: None,
            link_secret: None,
            contact_index_secret: None,
            policy_clock_offset_ms: 0,
            policy_clock_rate: 1,
            policy_clock_anchor_unix_ms: None,
            rate_limits: BTreeMap::new(),
            rate_limit_margin: 0.04,
            block_rate: BTreeMap::new(),
            channel_rules: BTreeMap::new(),
            sms_keywords: SmsKeywordReplies::default(),
            prices: Default::default(),
        }
    }
}

/// The fastest the policy clock may run (a year in about 4 s).
pub const POLICY_CLOCK_RATE_MAX: u32 = 10_000_000;

impl NodeConfig {
    /// The channels component's part of the config.
    pub fn channels_config(&self) -> ChannelsConfig {
        ChannelsConfig {
            sandbox: self.sandbox.clone(),
            providers: self.providers.clone(),
            chains: self.channels.clone(),
            failover: self.failover.clone(),
            rate_limits: self.rate_limits.clone(),
            rate_limit_margin: self.rate_limit_margin,
            channel_rules: self.channel_rules.clone(),
            block_rate: self.block_rate.clone(),
            owner_wait: std::time::Duration::from_millis(self.lease_ttl_ms),
        }
    }

    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("node-{}", self.listen_addr.port()))
    }

    /// Checks relations between knobs that serde cannot.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |message: &str| Error::Invalid {
            origin: "node config".into(),
            message: message.into(),
        };
        if self.weight == 0 {
            return Err(invalid("weight must be at least 1"));
        }
        self.store
            .redis
            .validate()
            .map_err(|message| invalid(&message))?;
        if self.lease_renew_interval_ms * 2 > self.lease_ttl_ms {
            return Err(invalid(
                "lease_renew_interval_ms must be at most half of lease_ttl_ms",
            ));
        }
        if self.batch_max == 0 || self.batch_max > 10_000 {
            return Err(invalid("batch_max must be in 1..=10000"));
        }
        if self.api_key_recheck_ms == 0 || self.api_key_recheck_ms > 60_000 {
            return Err(invalid("api_key_recheck_ms must be in 1..=60000"));
        }
        if !(0.0..=0.5).contains(&self.rate_limit_margin) {
            return Err(invalid("rate_limit_margin must be in 0..=0.5"));
        }
        if self.policy_clock_rate == 0 || self.policy_clock_rate > POLICY_CLOCK_RATE_MAX {
            return Err(invalid(&format!(
                "policy_clock_rate must be in 1..={POLICY_CLOCK_RATE_MAX}"
            )));
        }
        if self.policy_clock_rate > 1 && self.policy_clock_anchor_unix_ms.is_none() {
            return Err(invalid(
                "policy_clock_anchor_unix_ms is required when policy_clock_rate is above 1 \
                 (the same instant on every node)",
            ));
        }
        for (account, rate) in &self.rate_limits {
            if !(*rate > 0.0 && rate.is_finite()) {
                return Err(Error::Invalid {
                    origin: "node config".into(),
                    message: format!(
                        "rate_limits.{account}: must be a positive number of sends per second"
                    ),
                });
            }
            // `account@tenant` = that tenant's own quota on the account.
            let account = account.split_once('@').map_or(account.as_str(), |(a, _)| a);
            if account != SANDBOX_ACCOUNT && !self.providers.contains_key(account) {
                return Err(Error::Invalid {
                    origin: "node config".into(),
                    message: format!(
                        "rate_limits.{account}: no such provider account under [providers]"
                    ),
                });
            }
        }
        for (channel, thresholds) in &self.block_rate {
            if !matches!(channel.as_str(), "push" | "email" | "sms") {
                return Err(Error::Invalid {
                    origin: "node config".into(),
                    message: format!(
                        "block_rate.{channel}: the channel must be push, email or sms"
                    ),
                });
            }
            thresholds.validate().map_err(|e| Error::Invalid {
                origin: "node config".into(),
                message: format!("block_rate.{channel}: {e}"),
            })?;
            if thresholds.warn > thresholds.pause {
                return Err(Error::Invalid {
                    origin: "node config".into(),
                    message: format!("block_rate.{channel}: warn must not exceed pause"),
                });
            }
        }
        if self.public_url.is_some() != self.link_secret.is_some() {
            return Err(invalid(
                "public_url and link_secret go together (unsubscribe links need both)",
            ));
        }
        if let Some(url) = &self.public_url {
            let loopback =
                url.starts_with("http://127.0.0.1") || url.starts_with("http://localhost");
            if !url.starts_with("https://") && !loopback {
                return Err(invalid(
                    "public_url must be https:// (RFC 8058 unsubscribe links); http only to a loopback host",
                ));
            }
        }
        if self
            .contact_index_secret
            .as_ref()
            .is_some_and(|s| s.len() < 16)
        {
            return Err(invalid(
                "contact_index_secret must be at least 16 characters",
            ));
        }
        if self.link_secret.as_ref().is_some_and(|s| s.len() < 16) {
            return Err(invalid("link_secret must be at least 16 characters"));
        }
        if self.control_addrs.is_empty() {
            return Err(invalid(
                "control_addrs must name at least one control replica",
            ));
        }
        if self.listen_addr == self.internal_listen_addr && self.listen_addr.port() != 0 {
            return Err(invalid(
                "internal_listen_addr must differ from listen_addr (the internal plane has its own port)",
            ));
        }
        self.tls.files().map_err(|e| invalid(&e.to_string()))?;
        self.api_tls
            .enabled()
            .map_err(|e| invalid(&e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_store::redis::RedisTuning;

    #[test]
    fn env_overrides_nested_keys() {
        let env = vec![
            ("HERALD_WEIGHT".to_string(), "3".to_string()),
            ("HERALD_SANDBOX__LATENCY_MS".to_string(), "7".to_string()),
            ("HERALD_NODE_ID".to_string(), "n9".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let config: NodeConfig = load(None, env).expect("config");
        assert_eq!(config.weight, 3);
        assert_eq!(config.sandbox.latency_ms, 7);
        assert_eq!(config.node_id(), "n9");
    }

    #[test]
    fn foreign_herald_variables_are_ignored() {
        let keys = top_level_keys::<NodeConfig>();
        assert!(keys.contains(&"node_id".to_string()) && keys.contains(&"sandbox".to_string()));
        let env = relevant_env(
            &keys,
            vec![
                ("HERALD_API_KEY".to_string(), "k".to_string()),
                (
                    "HERALD_CONTROL_PORT".to_string(),
                    "tcp://10.0.0.1:7400".to_string(),
                ),
                ("HERALD_WEIGHT".to_string(), "2".to_string()),
            ],
        );
        let config: NodeConfig = load(None, env).expect("config");
        assert_eq!(config.weight, 2);
    }

    /// `[store.redis]` reaches the Redis store's options, from the file and from the
    /// environment; the defaults are the store's own.
    #[test]
    fn store_redis_tuning_reaches_the_store_options() {
        let defaults = NodeConfig::default().store.redis_options();
        assert_eq!(defaults, herald_store::redis::RedisOptions::default());

        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(
            &path,
            "[tls]\nmode = \"off\"\n[store]\nkey_prefix = \"blue\"\n[store.redis]\nmax_batch_ops = 256\n\
             max_batch_bytes = 1048576\ncommits_in_flight = 2\nqueue_capacity = 100\n\
             response_timeout_ms = 1500\n",
        )
        .expect("write config");
        let env = vec![(
            "HERALD_STORE__REDIS__CONNECT_TIMEOUT_MS".to_string(),
            "900".to_string(),
        )];
        let config: NodeConfig = load(Some(&path), env).expect("config");
        config.validate().expect("valid");
        let options = config.store.redis_options();
        assert_eq!(
            options,
            herald_store::redis::RedisOptions {
                key_prefix: "blue".into(),
                tls_ca: None,
                tuning: RedisTuning {
                    max_batch_ops: 256,
                    max_batch_bytes: 1 << 20,
                    commits_in_flight: 2,
                    queue_capacity: 100,
                    response_timeout_ms: 1500,
                    connect_timeout_ms: 900,
                },
            }
        );
    }

    #[test]
    fn store_redis_tuning_out_of_range_names_the_key() {
        for (variable, value, expected) in [
            (
                "HERALD_STORE__REDIS__MAX_BATCH_OPS",
                "0",
                "store.redis.max_batch_ops must be in 1..=65536 (got 0)",
            ),
            (
                "HERALD_STORE__REDIS__COMMITS_IN_FLIGHT",
                "1000",
                "store.redis.commits_in_flight must be in 1..=64 (got 1000)",
            ),
            (
                "HERALD_STORE__REDIS__MAX_BATCH_BYTES",
                "10",
                "store.redis.max_batch_bytes must be in 65536..=67108864 (got 10)",
            ),
            (
                "HERALD_STORE__REDIS__RESPONSE_TIMEOUT_MS",
                "0",
                "store.redis.response_timeout_ms must be in 100..=600000 (got 0)",
            ),
        ] {
            let env = vec![(variable.to_string(), value.to_string())];
            let config: NodeConfig = load(None, env).expect("parses");
            let error = config.validate().expect_err("out of range");
            assert!(error.to_string().contains(expected), "{error}");
        }
        let env = vec![("HERALD_STORE__REDIS__NO_SUCH".to_string(), "1".to_string())];
        let error = load::<NodeConfig>(None, env).expect_err("unknown key");
        assert!(error.to_string().contains("no_such"), "{error}");
    }

    /// The shipped example is a valid config, and its `[store.redis]` spells out the defaults.
    #[test]
    fn deploy_example_config_is_valid() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/config/node.toml");
        let config: NodeConfig = load(Some(&path), Vec::new()).expect("deploy/config/node.toml");
        config.validate().expect("valid");
        assert_eq!(config.store.redis, RedisTuning::default());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let env = vec![("HERALD_NO_SUCH_KNOB".to_string(), "1".to_string())];
        let error = load::<NodeConfig>(None, env).expect_err("must fail");
        assert!(error.to_string().contains("no_such_knob"), "{error}");
    }
}
