//! # store::redis::options: the Redis backend's settings
//!
//! Owns [`RedisOptions`] (key prefix, TLS CA, tuning), [`RedisTuning`] (how writes are grouped
//! into commit scripts, with the bounds a config must keep), [`CommitStats`], and the client
//! a URL and the options make (`rediss://` verified against the configured CA). Must never
//! connect or do I/O beyond reading the CA file.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Settings of the Redis backend. A node's config sets `key_prefix` as `store.key_prefix` and
/// `tuning` as `[store.redis]`; the control plane, whose store traffic is a few ops per second,
/// uses the default tuning with its own `key_prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisOptions {
    /// Prefix of every key, so several clusters (or tests) can share one Redis.
    pub key_prefix: String,
    /// For `rediss://`: the CA certificate (PEM) that must have signed the server's
    /// certificate. Unset = the system's roots.
    pub tls_ca: Option<std::path::PathBuf>,
    /// How writes are grouped into commit scripts.
    pub tuning: RedisTuning,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "herald".to_owned(),
            tls_ca: None,
            tuning: RedisTuning::default(),
        }
    }
}

/// How the store groups writes into commit scripts: a node's `[store.redis]`. The defaults are
/// the measured ones (docs/configuration.md has the figures). [`RedisTuning::validate`] bounds
/// each knob so that a config typo cannot stall Redis (which runs one script at a time) or the
/// node; tests may go below the bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTuning {
    /// Most ops in one commit script (bounds the script's run time: Redis is single-threaded).
    pub max_batch_ops: usize,
    /// Most argument bytes in one commit script. An op larger than this is committed alone.
    pub max_batch_bytes: usize,
    /// Commit scripts pipelined at once on the connection.
    pub commits_in_flight: usize,
    /// `write` calls waiting for the committer before callers wait for room (backpressure).
    pub queue_capacity: usize,
    /// Time limit of one Redis command, ms; a timed-out write has an unknown outcome (the
    /// message is retried from its log).
    pub response_timeout_ms: u64,
    /// Time limit of one connection attempt, ms.
    pub connect_timeout_ms: u64,
}

impl Default for RedisTuning {
    fn default() -> Self {
        RedisTuning {
            max_batch_ops: 1024,
            max_batch_bytes: 4 << 20,
            commits_in_flight: 4,
            queue_capacity: 8192,
            response_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
        }
    }
}

impl RedisTuning {
    /// The first knob out of its range, as `store.redis.<key> must be in <range>`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let checks: [(&str, u64, std::ops::RangeInclusive<u64>); 6] = [
            ("max_batch_ops", self.max_batch_ops as u64, 1..=65_536),
            (
                "max_batch_bytes",
                self.max_batch_bytes as u64,
                (64 << 10)..=(64 << 20),
            ),
            ("commits_in_flight", self.commits_in_flight as u64, 1..=64),
            ("queue_capacity", self.queue_capacity as u64, 1..=1_000_000),
            (
                "response_timeout_ms",
                self.response_timeout_ms,
                100..=600_000,
            ),
            ("connect_timeout_ms", self.connect_timeout_ms, 100..=600_000),
        ];
        for (key, value, range) in checks {
            if !range.contains(&value) {
                return Err(format!(
                    "store.redis.{key} must be in {}..={} (got {value})",
                    range.start(),
                    range.end()
                ));
            }
        }
        Ok(())
    }
}

/// Group-commit figures since the store was connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Commit scripts run.
    pub batches: u64,
    /// Ops they carried.
    pub ops: u64,
}

/// A client for `url`: `rediss://` verifies the server's certificate against `tls_ca` (or the
/// system's roots); `tls_ca` with a plaintext URL is a mistake worth stopping for.
pub(super) fn client(url: &str, options: &RedisOptions) -> Result<::redis::Client> {
    let tls = url.starts_with("rediss://");
    match (&options.tls_ca, tls) {
        (Some(ca), true) => {
            let root_cert = std::fs::read(ca).map_err(|e| Error::Config {
                field: "store.redis_ca",
                reason: format!("{}: {e}", ca.display()),
            })?;
            Ok(::redis::Client::build_with_tls(
                url,
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(root_cert),
                },
            )?)
        }
        (Some(_), false) => Err(Error::Config {
            field: "store.redis_ca",
            reason: "is set but store.redis_url is not rediss:// (TLS)".to_owned(),
        }),
        (None, _) => Ok(::redis::Client::open(url)?),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn options_defaults_and_unknown_fields() {
        let options: RedisOptions = toml::from_str("key_prefix = \"x\"").expect("valid options");
        assert_eq!(options.key_prefix, "x");
        assert_eq!(options.tuning.max_batch_ops, 1024);
        assert_eq!(options.tuning.commits_in_flight, 4);
        assert!(toml::from_str::<RedisOptions>("max_batch = 3").is_err());
    }
}
