//! The sandbox provider: deterministic outcomes for demos, benchmarks and chaos tests.
//!
//! Verdict by recipient, as `shared/bench/WORKLOAD.md` defines it:
//! `fnv1a32(recipient_id) % 10` → 0–6 push succeeds; 7–8 push fails, email succeeds;
//! 9 push and email fail, SMS succeeds.
//!
//! On top of the verdict, optional behaviour for demos and chaos (all off by default, all
//! decided by hashes of the recipient and attempt, so a run can be repeated):
//! - latency: a fixed part plus uniform jitter;
//! - `unavailable_share`: calls answered "unavailable" (as a 503), which the node retries;
//! - receipts: with `receipt_delay_ms = 0` the answer itself says delivered and read (no
//!   receipts follow); otherwise a delivery receipt arrives after the delay, a read receipt
//!   after twice the delay for `read_share` of them, and `push_silent_share` of successful push
//!   attempts never get a receipt (their step times out);
//! - `complaint_share` and `block_share` of calls (exactly: every 1/share-th call, after
//!   `negatives_after_calls`) get a complaint or block receipt.
//!
//! It never talks to the network.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald_proto::partition::fnv1a32;
use herald_proto::v1::Channel;
use serde::{Deserialize, Serialize};

use crate::{Attempt, Outcome, Provider, ProviderEvent, ProviderEvents, Receipt, ReceiptKind};

/// The sandbox provider (demos, benchmarks, chaos): outcomes are deterministic per recipient.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxConfig {
    /// Added latency per provider call, in milliseconds.
    pub latency_ms: u64,
    /// Extra latency, uniform in `0..=latency_jitter_ms` (decided by attempt id).
    pub latency_jitter_ms: u64,
    /// Share (0..1) of calls answered "unavailable" (like a 503); the node retries them.
    pub unavailable_share: f64,
    /// 0 = the answer itself reports delivered and read (no later receipts). Otherwise a
    /// delivery receipt arrives this many ms after acceptance.
    pub receipt_delay_ms: u64,
    /// With receipts: share (0..1) of delivered attempts that also get a read receipt.
    pub read_share: f64,
    /// With receipts: share (0..1) of successful push attempts that never get a receipt, so
    /// the step times out and the waterfall falls back.
    pub push_silent_share: f64,
    /// With receipts: share (0..1) of delivered attempts that get a complaint receipt.
    pub complaint_share: f64,
    /// With receipts: share (0..1) of delivered attempts that get a block receipt.
    pub block_share: f64,
    /// Complaints and blocks start only after this many calls to the account (a campaign
    /// that turns bad midway, for breaker tests and demos).
    pub negatives_after_calls: u64,
}

pub struct SandboxProvider {
    name: String,
    config: SandboxConfig,
    events: Option<ProviderEvents>,
    calls: AtomicU64,
}

/// A deterministic draw in `[0, 1)` from `parts`.
fn draw(parts: &[&str]) -> f64 {
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0xFF);
    }
    f64::from(fnv1a32(&bytes) % 1_000_000) / 1_000_000.0
}

impl SandboxProvider {
    pub fn new(config: &SandboxConfig) -> Self {
        Self::named("sandbox", config, None)
    }

    /// A sandbox account called `name`; receipts (when configured) go to `events`.
    pub fn named(name: &str, config: &SandboxConfig, events: Option<ProviderEvents>) -> Self {
        Self {
            name: name.to_owned(),
            config: config.clone(),
            events,
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

    /// Whether a successful push to this recipient stays silent (no receipt ever).
    pub fn push_silent(&self, recipient_id: &str) -> bool {
        self.config.receipt_delay_ms > 0
            && draw(&[recipient_id, "silent"]) < self.config.push_silent_share
    }

    /// `call`: this call's number (1-based) on the account.
    fn later_receipts(&self, attempt: &Attempt<'_>, provider_message_id: &str, call: u64) {
        let Some(events) = self.events.clone() else {
            return;
        };
        if attempt.channel == Channel::Push && self.push_silent(attempt.recipient_key) {
            return;
        }
        let delay = Duration::from_millis(self.config.receipt_delay_ms);
        let mut receipts = vec![(delay, ReceiptKind::Delivered)];
        let key = attempt.attempt_id;
        if draw(&[key, "read"]) < self.config.read_share {
            receipts.push((delay * 2, ReceiptKind::Read));
        }
        // Complaints and blocks: exactly their share of calls (every 1/share-th call), so a
        // breaker test crosses its threshold at a known point.
        let every = |share: f64| {
            share > 0.0
                && (call as f64 * share).floor() > (call.saturating_sub(1) as f64 * share).floor()
        };
        let negatives = call > self.config.negatives_after_calls;
        if negatives && every(self.config.complaint_share) {
            receipts.push((delay * 3, ReceiptKind::Complained));
        } else if negatives && every(self.config.block_share) {
            receipts.push((delay * 3, ReceiptKind::Blocked));
        }
        let provider = self.name.clone();
        let provider_message_id = provider_message_id.to_owned();
        tokio::spawn(async move {
            let mut waited = Duration::ZERO;
            for (at, kind) in receipts {
                tokio::time::sleep(at.saturating_sub(waited)).await;
                waited = at;
                let receipt = Receipt {
                    provider: provider.clone(),
                    provider_message_id: provider_message_id.clone(),
                    kind,
                    detail: "sandbox".to_owned(),
                    error_code: None,
                };
                if events.send(ProviderEvent::Receipt(receipt)).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[async_trait]
impl Provider for SandboxProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "sandbox"
    }

    fn channel(&self) -> Channel {
        Channel::Unspecified
    }

    fn late_receipts(&self) -> bool {
        self.config.receipt_delay_ms > 0 && self.events.is_some()
    }

    async fn send(&self, attempt: Attempt<'_>) -> Outcome {
        let call = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let mut latency = Duration::from_millis(self.config.latency_ms);
        if self.config.latency_jitter_ms > 0 {
            let jitter =
                draw(&[attempt.attempt_id, "latency"]) * self.config.latency_jitter_ms as f64;
            latency += Duration::from_millis(jitter as u64);
        }
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        if self.config.unavailable_share > 0.0 {
            let call = call.to_string();
            if draw(&[attempt.attempt_id, &call, "unavailable"]) < self.config.unavailable_share {
                return Outcome::unavailable("sandbox 503");
            }
        }
        if !Self::succeeds(attempt.recipient_key, attempt.channel) {
            return Outcome::rejected("sandbox_undeliverable");
        }
        let provider_message_id = format!("sbx-{}", attempt.attempt_id);
        if self.late_receipts() {
            self.later_receipts(&attempt, &provider_message_id, call);
            return Outcome::Accepted {
                provider_message_id,
                delivered: false,
                read: false,
            };
        }
        Outcome::Accepted {
            provider_message_id,
            delivered: true,
            read: true,
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

    #[test]
    fn silent_share_is_roughly_the_configured_one() {
        let sandbox = SandboxProvider::named(
            "s",
            &SandboxConfig {
                receipt_delay_ms: 10,
                push_silent_share: 0.2,
                ..Default::default()
            },
            None,
        );
        let silent = (0..10_000)
            .filter(|i| sandbox.push_silent(&format!("r{i}")))
            .count();
        assert!((1700..2300).contains(&silent), "{silent}");
    }

    #[tokio::test]
    async fn delayed_receipts_arrive_on_the_events_channel() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(16);
        let sandbox = SandboxProvider::named(
            "sbx",
            &SandboxConfig {
                receipt_delay_ms: 20,
                read_share: 1.0,
                ..Default::default()
            },
            Some(tx),
        );
        let content = herald_proto::v1::Content::default();
        // r0 falls in a push-success bucket? Find one that does.
        let recipient = (0..100)
            .map(|i| format!("r{i}"))
            .find(|r| SandboxProvider::succeeds(r, Channel::Push))
            .expect("a push-success recipient");
        let outcome = sandbox
            .send(Attempt {
                attempt_id: "m1.0",
                message_id: "m1",
                recipient_key: &recipient,
                channel: Channel::Push,
                to: "token",
                content: &content,
                list_unsubscribe: None,
            })
            .await;
        assert_eq!(
            outcome,
            Outcome::Accepted {
                provider_message_id: "sbx-m1.0".into(),
                delivered: false,
                read: false
            }
        );
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let event = tokio::time::timeout(Duration::from_secs(2), rx.recv())
                .await
                .expect("in time")
                .expect("event");
            match event {
                ProviderEvent::Receipt(r) => {
                    assert_eq!(r.provider_message_id, "sbx-m1.0");
                    kinds.push(r.kind);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(kinds, vec![ReceiptKind::Delivered, ReceiptKind::Read]);
    }
}
