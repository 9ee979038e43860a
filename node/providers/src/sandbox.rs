//! The sandbox provider: deterministic outcomes for demos, benchmarks and chaos tests.
//!
//! Outcome by recipient, as `shared/bench/WORKLOAD.md` defines it:
//! `fnv1a32(recipient_id) % 10` → 0–6 push succeeds; 7–8 push fails, email succeeds;
//! 9 push and email fail, SMS succeeds. Accepted sandbox messages count as delivered and read.
//! It never talks to the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald_proto::partition::fnv1a32;
use herald_proto::v1::Channel;

use serde::{Deserialize, Serialize};

use crate::{Attempt, Outcome, Provider};

/// The sandbox provider (demos, benchmarks, chaos): outcomes are deterministic per recipient.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Added latency per provider call, in milliseconds.
    pub latency_ms: u64,
}

pub struct SandboxProvider {
    latency: Duration,
    calls: AtomicU64,
}

impl SandboxProvider {
    pub fn new(config: &SandboxConfig) -> Self {
        Self {
            latency: Duration::from_millis(config.latency_ms),
            calls: AtomicU64::new(0),
        }
    }

    /// Provider calls made so far (billing cross-check).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// The deterministic verdict for a recipient and channel.
    pub fn succeeds(recipient_id: &str, channel: Channel) -> bool {
        let bucket = fnv1a32(recipient_id.as_bytes()) % 10;
        match channel {
            Channel::Push => bucket <= 6,
            Channel::Email => bucket <= 8,
            Channel::Sms => true,
            Channel::Unspecified => false,
        }
    }
}

#[async_trait]
impl Provider for SandboxProvider {
    fn name(&self) -> &str {
        "sandbox"
    }

    fn kind(&self) -> &'static str {
        "sandbox"
    }

    fn channel(&self) -> Channel {
        Channel::Unspecified
    }

    async fn send(&self, attempt: Attempt<'_>) -> Outcome {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        if Self::succeeds(attempt.recipient_key, attempt.channel) {
            Outcome::Accepted {
                provider_message_id: format!("sbx-{}", attempt.attempt_id),
                delivered: true,
                read: true,
            }
        } else {
            Outcome::rejected("sandbox_undeliverable")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_split_is_70_20_10() {
        let mut buckets = [0u32; 3];
        for i in 0..10_000 {
            let id = format!("r{i}");
            if SandboxProvider::succeeds(&id, Channel::Push) {
                buckets[0] += 1;
            } else if SandboxProvider::succeeds(&id, Channel::Email) {
                buckets[1] += 1;
            } else {
                buckets[2] += 1;
            }
        }
        assert!((6700..7300).contains(&buckets[0]), "{buckets:?}");
        assert!((1700..2300).contains(&buckets[1]), "{buckets:?}");
        assert!((800..1200).contains(&buckets[2]), "{buckets:?}");
    }
}
