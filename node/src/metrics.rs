//! # metrics: the node's Prometheus exposition (`GET /metrics`)
//!
//! Owns what the node exposes to Prometheus and how: every series is read at scrape time from
//! the counters the components keep (channels, receipts, timers, the recipient directory) and
//! encoded by `prometheus-client`, which escapes label values — a campaign id may hold `"` or
//! `\`, and one unescaped value makes the whole scrape unparseable.
//!
//! Must never label a series with a value a client chooses freely without a bound: breaker keys
//! name campaigns, so only the paused breakers and the highest ratios of the others are labelled
//! ([`LABELLED_BREAKERS`] in all); the rest are counted. Never labels with a recipient, a
//! contact point or a message id.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_proto::NodeId;
use herald_proto::v1::BreakerStatus;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeCounterValue, EncodeGaugeValue, EncodeLabelSet, EncodeMetric,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::actors::directory::RecipientDirectory;
use crate::channels::Channels;
use crate::receipts::Receipts;
use crate::timers::Timers;

/// Most breakers given their own series per node (paused first, then by ratio).
pub const LABELLED_BREAKERS: usize = 20;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// What a scrape reads.
pub struct NodeMetrics {
    pub node_id: NodeId,
    pub receipts: Arc<Receipts>,
    pub channels: Channels,
    pub timers: Timers,
    pub directory: Arc<RecipientDirectory>,
}

impl fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("node_id", &self.node_id.0)
            .finish_non_exhaustive()
    }
}

/// A registry that reads `metrics` at every scrape.
pub fn registry(metrics: NodeMetrics) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(metrics));
    registry
}

/// The text exposition of `registry` (Prometheus text format 0.0.4).
pub fn exposition(registry: &Registry) -> Result<String, fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    Ok(out)
}

/// The breakers that get their own series, and how many breakers there are by level.
pub struct BreakerSeries {
    pub labelled: Vec<BreakerStatus>,
    pub paused: u64,
    pub watching: u64,
}

/// Picks at most `limit` breakers to label: paused ones first (by key), then the highest
/// ratios; the rest only count.
pub fn breaker_series(mut states: Vec<BreakerStatus>, limit: usize) -> BreakerSeries {
    let paused = states.iter().filter(|s| s.paused).count() as u64;
    let watching = states.len() as u64 - paused;
    states.sort_by(|a, b| {
        b.paused
            .cmp(&a.paused)
            .then(b.ratio.total_cmp(&a.ratio))
            .then_with(|| a.key.cmp(&b.key))
    });
    states.truncate(limit);
    states.sort_by(|a, b| a.key.cmp(&b.key));
    BreakerSeries {
        labelled: states,
        paused,
        watching,
    }
}

/// One family: its descriptor, then one sample per label set.
struct Family<'a, 'e> {
    encoder: &'a mut DescriptorEncoder<'e>,
}

impl<'e> Family<'_, 'e> {
    fn samples<S: EncodeLabelSet, M: EncodeMetric>(
        &mut self,
        name: &str,
        help: &str,
        metric_type: MetricType,
        samples: impl IntoIterator<Item = (S, M)>,
    ) -> fmt::Result {
        let mut family = self
            .encoder
            .encode_descriptor(name, help, None, metric_type)?;
        for (labels, metric) in samples {
            metric.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn gauges<S: EncodeLabelSet, N: EncodeGaugeValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (S, N)>,
    ) -> fmt::Result {
        let samples = samples.into_iter().map(|(s, n)| (s, ConstGauge::new(n)));
        self.samples(name, help, MetricType::Gauge, samples)
    }

    fn counters<S: EncodeLabelSet, N: EncodeCounterValue>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (S, N)>,
    ) -> fmt::Result {
        let samples = samples.into_iter().map(|(s, n)| (s, ConstCounter::new(n)));
        self.samples(name, help, MetricType::Counter, samples)
    }
}

impl Collector for NodeMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let node = self.node_id.0.as_str();
        let mut out = Family {
            encoder: &mut encoder,
        };
        let accounts = self.channels.accounts();
        out.gauges(
            "herald_provider_circuit_state",
            "Circuit breaker per provider account: 0 closed, 1 open, 2 half-open.",
            accounts.iter().map(|account| {
                (
                    [
                        ("node", node),
                        ("account", account.provider.name()),
                        ("kind", account.provider.kind()),
                    ],
                    u32::from(self.channels.circuit_state(account).as_metric()),
                )
            }),
        )?;
        out.counters(
            "herald_provider_calls",
            "Provider calls by result.",
            accounts.iter().flat_map(|account| {
                let stats = &account.stats;
                [
                    ("accepted", &stats.accepted),
                    ("rejected", &stats.rejected),
                    ("unavailable", &stats.unavailable),
                    ("ambiguous", &stats.ambiguous),
                    ("circuit_open", &stats.skipped_open),
                ]
                .map(|(result, value)| {
                    (
                        [
                            ("node", node),
                            ("account", account.provider.name()),
                            ("result", result),
                        ],
                        value.load(Ordering::Relaxed),
                    )
                })
            }),
        )?;

        let breakers = breaker_series(self.channels.breaker_states(), LABELLED_BREAKERS);
        out.gauges(
            "herald_breakers",
            "Block-rate breakers this node has seen, by state (all of them, labelled or not).",
            [
                ([("node", node), ("state", "paused")], breakers.paused),
                ([("node", node), ("state", "watching")], breakers.watching),
            ],
        )?;
        out.gauges(
            "herald_breaker_paused",
            "Block-rate breakers as last seen by this node: 1 paused. Paused ones and the highest ratios only.",
            breakers.labelled.iter().map(|state| {
                (
                    [("node", node), ("key", state.key.as_str())],
                    u32::from(state.paused),
                )
            }),
        )?;
        out.gauges(
            "herald_breaker_ratio",
            "Negatives / deliveries in the breaker's window (the same breakers as herald_breaker_paused).",
            breakers
                .labelled
                .iter()
                .map(|state| ([("node", node), ("key", state.key.as_str())], state.ratio)),
        )?;
        let stats = self.channels.stats();
        out.counters(
            "herald_breaker_pauses",
            "Block-rate breakers that paused on this node's actors.",
            [([("node", node)], stats.pauses.load(Ordering::Relaxed))],
        )?;
        out.counters(
            "herald_breaker_deferred_sends",
            "Sends deferred because a breaker was paused.",
            [(
                [("node", node)],
                stats.deferred_sends.load(Ordering::Relaxed),
            )],
        )?;

        let receipts = &self.receipts.stats;
        out.counters(
            "herald_receipts",
            "Receipts and engagement reports by verdict.",
            [
                ("applied", &receipts.applied),
                ("late", &receipts.late),
                ("duplicate", &receipts.duplicate),
                ("unknown", &receipts.unknown),
                ("failed", &receipts.failed),
            ]
            .map(|(verdict, value)| {
                (
                    [("node", node), ("verdict", verdict)],
                    value.load(Ordering::Relaxed),
                )
            }),
        )?;
        out.counters(
            "herald_inbound_messages",
            "Inbound messages (replies) received from providers.",
            [([("node", node)], receipts.inbound.load(Ordering::Relaxed))],
        )?;

        let timers = self.timers.stats();
        out.gauges(
            "herald_timers_pending",
            "Timers scheduled on this node and not yet fired.",
            [([("node", node)], self.timers.pending())],
        )?;
        out.counters(
            "herald_timers_fired",
            "Timers fired on this node.",
            [([("node", node)], timers.fired.load(Ordering::Relaxed))],
        )?;
        out.counters(
            "herald_timers_dropped",
            "Timers fired for a partition this node no longer owns.",
            [([("node", node)], timers.dropped.load(Ordering::Relaxed))],
        )?;
        out.counters(
            "herald_step_timeouts",
            "Waterfall steps that timed out waiting for their receipt.",
            [([("node", node)], timers.timeouts.load(Ordering::Relaxed))],
        )?;
        out.gauges(
            "herald_timer_max_lateness_seconds",
            "Largest delay between a timer's due time and its firing.",
            [(
                [("node", node)],
                timers.max_late_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            )],
        )?;
        out.gauges(
            "herald_actors_active",
            "Recipient actors alive on this node.",
            [([("node", node)], self.directory.active() as u64)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(key: &str, paused: bool, ratio: f64) -> BreakerStatus {
        BreakerStatus {
            key: key.to_owned(),
            paused,
            ratio,
            ..Default::default()
        }
    }

    #[test]
    fn breaker_series_are_bounded_paused_first() {
        let mut states: Vec<_> = (0..500)
            .map(|i| {
                status(
                    &format!("campaign:acme:c{i:03}"),
                    false,
                    f64::from(i) / 1000.0,
                )
            })
            .collect();
        states.push(status("campaign:acme:zz-paused", true, 0.01));
        let series = breaker_series(states, LABELLED_BREAKERS);
        assert_eq!(series.labelled.len(), LABELLED_BREAKERS);
        assert_eq!((series.paused, series.watching), (1, 500));
        assert!(
            series
                .labelled
                .iter()
                .any(|s| s.key == "campaign:acme:zz-paused")
        );
        // The rest are the highest ratios.
        assert!(
            series
                .labelled
                .iter()
                .filter(|s| !s.paused)
                .all(|s| s.ratio >= 0.480),
            "{:?}",
            series.labelled.iter().map(|s| &s.key).collect::<Vec<_>>()
        );
    }

    #[test]
    fn hostile_label_values_are_escaped() {
        #[derive(Debug)]
        struct Hostile;
        impl Collector for Hostile {
            fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
                Family {
                    encoder: &mut encoder,
                }
                .gauges(
                    "herald_breaker_paused",
                    "help",
                    [
                        ([("key", "campaign:acme:spring\"sale")], 1u32),
                        ([("key", "campaign:acme:a\\b")], 1u32),
                    ],
                )
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Hostile));
        let text = exposition(&registry).expect("encodes");
        assert!(
            text.contains(r#"herald_breaker_paused{key="campaign:acme:spring\"sale"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"herald_breaker_paused{key="campaign:acme:a\\b"} 1"#),
            "{text}"
        );
    }
}
