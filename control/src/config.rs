//! # config: what an operator can tune on a control replica
//!
//! Owns [`ControlConfig`], its defaults and its validation. It must never hold runtime state or
//! open anything: [`crate::ControlPlane::start`] validates it and the other modules read it.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;

/// Largest `partition_count` accepted: every table carries one owner per partition, and every
/// node holds one lease per owned partition, so the count is bounded like everything else.
pub const MAX_PARTITION_COUNT: u32 = 65_536;

/// Longest `control_id` accepted (it is stored as the leader lease holder and shown to SREs).
pub const MAX_CONTROL_ID_LEN: usize = 128;

/// Settings of one control replica. Every replica of a cluster must agree on
/// `partition_count`; the timing fields should agree too (the leader's values are the ones
/// nodes see).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// This replica's name, unique among the cluster's control replicas: it is the holder of the
    /// leader lease and the `leader_id` nodes and SREs see. Two replicas with the same id would
    /// both believe they lead, so the default embeds the process id
    /// (`<hostname>-<pid>`, or `control-1` when the hostname is unknown).
    pub control_id: String,
    /// Address the gRPC server (Control, health, reflection) binds. Port 0 picks a free port
    /// (tests); [`crate::ControlHandle::local_addr`] tells which.
    pub listen_addr: SocketAddr,
    /// Number of partitions P. Fixed when a cluster is created: the stored table records it,
    /// and a replica configured with another count refuses to start rather than remap every
    /// recipient.
    pub partition_count: u32,
    /// How often nodes must heartbeat; sent to every node in `JoinResponse`.
    pub heartbeat_interval_ms: u64,
    /// A node silent for longer than this is declared dead and its partitions move to the
    /// others. Must cover a few heartbeats so one lost heartbeat does not evict a node; the
    /// default (2 s) leaves ~3 s of the 5 s failover budget for the new owners to take the
    /// partition leases.
    pub failure_timeout_ms: u64,
    /// Time-to-live of the leader lease in the store: how long the cluster may go without a
    /// leader when the leader dies without releasing it.
    pub leader_lease_ttl_ms: u64,
    /// How often the leader renews its lease and followers try to take it. At most half the
    /// TTL, so a single failed renewal does not cost the leadership.
    pub leader_renew_interval_ms: u64,
    /// How often the leader looks at its live campaigns: starts scheduled ones, completes
    /// finished ones, pauses those whose credits ran out, and re-splits each campaign's pace
    /// among the nodes. Smaller = the pace follows a node's loss sooner.
    pub campaign_tick_ms: u64,
    /// How long what an ended campaign kept per member (its audience, schedules and each
    /// member's outcome) stays after the campaign settled; its record and funnel stay.
    pub campaign_retention_days: u32,
    /// Mutual TLS of the Control service: `[tls] ca, cert, key` (a control certificate:
    /// `herald certs issue --control <id>`), or `mode = "off"` on a test machine. With TLS,
    /// a node may join, beat and leave only under the name its certificate carries.
    pub tls: herald_tls::ClusterTls,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            control_id: default_control_id(),
            listen_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7400)),
            partition_count: 4096,
            heartbeat_interval_ms: 500,
            failure_timeout_ms: 2000,
            leader_lease_ttl_ms: 3000,
            leader_renew_interval_ms: 1000,
            campaign_tick_ms: 250,
            campaign_retention_days: 30,
            tls: herald_tls::ClusterTls::default(),
        }
    }
}

impl ControlConfig {
    /// Rejects settings under which the control plane cannot keep its promises.
    pub fn validate(&self) -> Result<(), Error> {
        let invalid = |field: &'static str, reason: String| Err(Error::Config { field, reason });
        if self.control_id.is_empty() || self.control_id.len() > MAX_CONTROL_ID_LEN {
            return invalid(
                "control_id",
                format!("must be 1..={MAX_CONTROL_ID_LEN} bytes"),
            );
        }
        if self
            .control_id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}' | '='))
        {
            // It is embedded in `not_leader{leader=<id>}` messages that clients parse.
            return invalid(
                "control_id",
                "must not contain whitespace, control characters, '{', '}' or '='".into(),
            );
        }
        if self.partition_count == 0 || self.partition_count > MAX_PARTITION_COUNT {
            return invalid(
                "partition_count",
                format!("must be 1..={MAX_PARTITION_COUNT}"),
            );
        }
        if self.heartbeat_interval_ms == 0 {
            return invalid("heartbeat_interval_ms", "must be > 0".into());
        }
        if self.failure_timeout_ms < 2 * self.heartbeat_interval_ms {
            return invalid(
                "failure_timeout_ms",
                format!(
                    "must be at least 2 × heartbeat_interval_ms ({})",
                    2 * self.heartbeat_interval_ms
                ),
            );
        }
        if self.leader_renew_interval_ms == 0 {
            return invalid("leader_renew_interval_ms", "must be > 0".into());
        }
        if self.leader_lease_ttl_ms < 2 * self.leader_renew_interval_ms {
            return invalid(
                "leader_lease_ttl_ms",
                format!(
                    "must be at least 2 × leader_renew_interval_ms ({})",
                    2 * self.leader_renew_interval_ms
                ),
            );
        }
        if !(50..=10_000).contains(&self.campaign_tick_ms) {
            return invalid("campaign_tick_ms", "must be 50..=10000".into());
        }
        if !(1..=3_650).contains(&self.campaign_retention_days) {
            return invalid("campaign_retention_days", "must be 1..=3650".into());
        }
        match self.tls.files() {
            Err(herald_tls::Error::Config { field, reason }) => invalid(field, reason),
            Err(other) => invalid("tls", other.to_string()),
            Ok(_) => Ok(()),
        }
    }

    pub fn campaign_tick(&self) -> Duration {
        Duration::from_millis(self.campaign_tick_ms)
    }

    pub fn campaign_retention(&self) -> Duration {
        Duration::from_secs(u64::from(self.campaign_retention_days) * 86_400)
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    pub fn failure_timeout(&self) -> Duration {
        Duration::from_millis(self.failure_timeout_ms)
    }

    pub fn leader_lease_ttl(&self) -> Duration {
        Duration::from_millis(self.leader_lease_ttl_ms)
    }

    pub fn leader_renew_interval(&self) -> Duration {
        Duration::from_millis(self.leader_renew_interval_ms)
    }
}

/// `<hostname>-<pid>`: unique per process on a host, and readable in `ClusterStatus`.
fn default_control_id() -> String {
    let hostname = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| {
            !h.is_empty()
                && h.len() < MAX_CONTROL_ID_LEN - 12
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        });
    match hostname {
        Some(host) => format!("{host}-{}", std::process::id()),
        None => "control-1".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_once_tls_has_its_files() {
        // The default is mutual TLS: without certificates it names the missing file.
        match ControlConfig::default().validate() {
            Err(Error::Config { field, .. }) => assert_eq!(field, "tls.ca"),
            other => panic!("unexpected {other:?}"),
        }
        let config = ControlConfig {
            tls: herald_tls::ClusterTls::off(),
            ..ControlConfig::default()
        };
        assert!(config.validate().is_ok(), "{config:?}");
        assert_eq!(config.partition_count, 4096);
        assert_eq!(config.listen_addr.port(), 7400);
    }

    #[test]
    fn unknown_fields_are_rejected_and_missing_ones_defaulted() {
        let parsed: ControlConfig =
            serde_json::from_str(r#"{"control_id":"c1","failure_timeout_ms":900}"#)
                .expect("valid config");
        assert_eq!(parsed.control_id, "c1");
        assert_eq!(parsed.failure_timeout_ms, 900);
        assert_eq!(parsed.heartbeat_interval_ms, 500);
        assert!(serde_json::from_str::<ControlConfig>(r#"{"failure_timeout":900}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let config = ControlConfig {
            leader_lease_ttl_ms: 1000,
            leader_renew_interval_ms: 800,
            tls: herald_tls::ClusterTls::off(),
            ..ControlConfig::default()
        };
        match config.validate() {
            Err(Error::Config { field, .. }) => assert_eq!(field, "leader_lease_ttl_ms"),
            other => panic!("unexpected {other:?}"),
        }
        let config = ControlConfig {
            control_id: "a b".into(),
            ..ControlConfig::default()
        };
        assert!(config.validate().is_err());
    }
}
