//! # breaker: a sender's or campaign's block-rate breaker (owner side, pure)
//!
//! Owns one key's [`BlockRate`] and the translation of reports into it: every node counts what
//! it sees (accepted sends as deliveries; complaint, block and unsubscribe receipts; SMS STOPs)
//! and reports the counts to the key's ChannelActor every report interval; each report is
//! applied here and answered with the breaker's state. Deliveries are counted at acceptance
//! (receipts are optional and late). A question about a breaker nothing was reported to yet
//! (a `Breakers.Get` before any traffic) is answered closed, without creating it.
//!
//! A new owner (after a failover) starts from empty counts and not paused: a pause in force is
//! re-established by the next reports only if the traffic still crosses the threshold
//! (documented limit). Pure: callers pass `now` (unix ms from the injected clock).

use std::collections::BTreeMap;

use herald_proto::v1::{BreakerReport, BreakerStatus, Channel};

use crate::policy::block_rate::{BlockRate, Level, Signal, Thresholds};

/// Observations counted per report at most (a report is 200 ms of one node's traffic).
const SIGNALS_PER_REPORT_MAX: u64 = 1_000_000;

#[derive(Clone, Debug)]
pub struct Breaker {
    /// Per channel (by name), thresholds overriding [`Thresholds::for_channel`].
    overrides: BTreeMap<String, Thresholds>,
    /// Created by the first report that names a channel.
    rate: Option<BlockRate>,
}

/// What applying a report did.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub status: BreakerStatus,
    /// The report made the breaker pause (it was not paused before).
    pub paused_now: bool,
    /// The report resumed a paused breaker.
    pub resumed: bool,
}

impl Breaker {
    pub fn new(overrides: BTreeMap<String, Thresholds>) -> Self {
        Self {
            overrides,
            rate: None,
        }
    }

    fn thresholds(&self, channel: Channel) -> Thresholds {
        let name = channel.as_str_name().to_ascii_lowercase();
        self.overrides
            .get(&name)
            .copied()
            .unwrap_or_else(|| Thresholds::for_channel(channel))
    }

    /// Applies a report (counts, or a resume) at `now_ms` and answers the state.
    pub fn apply(&mut self, report: &BreakerReport, now_ms: i64) -> Applied {
        let channel = Channel::try_from(report.channel).unwrap_or(Channel::Unspecified);
        if self.rate.is_none() && channel == Channel::Unspecified {
            // A question about a breaker nothing was reported to yet: it is closed.
            let thresholds = self.thresholds(channel);
            return Applied {
                status: BreakerStatus {
                    key: report.key.clone(),
                    level: "ok".to_owned(),
                    warn_threshold: thresholds.warn,
                    pause_threshold: thresholds.pause,
                    ..Default::default()
                },
                paused_now: false,
                resumed: false,
            };
        }
        let thresholds = self.thresholds(channel);
        let rate = self.rate.get_or_insert_with(|| BlockRate::new(thresholds));
        for (signal, count) in [
            (Signal::Delivered, report.delivered),
            (Signal::Block, report.blocks),
            (Signal::Complaint, report.complaints),
            (Signal::OptOut, report.opt_outs),
        ] {
            for _ in 0..count.min(SIGNALS_PER_REPORT_MAX) {
                rate.observe(signal, now_ms);
            }
        }
        let resumed = report.resume && rate.resume().is_some();
        let was_paused = rate.is_paused();
        let level = rate.evaluate(now_ms);
        let paused_now = !was_paused && rate.is_paused();
        let thresholds = *rate.thresholds();
        let (name, ratio, sample) = match level {
            Level::Ok => {
                let counts = rate.counts(now_ms);
                ("ok", counts.ratio(), counts.delivered)
            }
            Level::Warn { ratio, sample, .. } => ("warn", ratio, sample),
            Level::Pause { ratio, sample, .. } => ("pause", ratio, sample),
        };
        Applied {
            status: BreakerStatus {
                key: report.key.clone(),
                paused: rate.is_paused(),
                level: name.to_owned(),
                ratio,
                sample,
                warn_threshold: thresholds.warn,
                pause_threshold: thresholds.pause,
                paused_at_unix_ms: rate.paused().map(|p| p.at_ms).unwrap_or(0),
            },
            paused_now,
            resumed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::clock::{Clock, ManualClock};
    use std::time::Duration;

    fn report(delivered: u64, complaints: u64) -> BreakerReport {
        BreakerReport {
            key: "campaign:acme:spring".into(),
            channel: Channel::Email as i32,
            delivered,
            complaints,
            ..Default::default()
        }
    }

    #[test]
    fn complaints_pause_until_resumed() {
        let clock = ManualClock::new(1_700_000_000_000);
        let mut breaker = Breaker::new(BTreeMap::new());
        // Nothing reported yet: a question is answered closed, with the channel's defaults.
        let question = breaker.apply(
            &BreakerReport {
                key: "campaign:acme:spring".into(),
                ..Default::default()
            },
            clock.now_unix_ms(),
        );
        assert_eq!(question.status.level, "ok");
        assert!(!question.status.paused);
        // 1,000 deliveries, 2 complaints: 0.2 % warns (email: warn 0.1 %, pause 0.3 %).
        let warned = breaker.apply(&report(1_000, 2), clock.now_unix_ms());
        assert_eq!(warned.status.level, "warn");
        assert!(!warned.paused_now);
        clock.advance(Duration::from_secs(1));
        let paused = breaker.apply(&report(0, 2), clock.now_unix_ms());
        assert!(paused.paused_now && paused.status.paused);
        assert_eq!(paused.status.level, "pause");
        assert_eq!(paused.status.paused_at_unix_ms, clock.now_unix_ms());
        assert!((paused.status.ratio - 0.004).abs() < 1e-9);
        // Latched: more clean traffic does not lift it.
        let still = breaker.apply(&report(5_000, 0), clock.now_unix_ms());
        assert!(still.status.paused && !still.paused_now);
        // A resume does, and forgets the counts.
        let resumed = breaker.apply(
            &BreakerReport {
                resume: true,
                ..report(0, 0)
            },
            clock.now_unix_ms(),
        );
        assert!(resumed.resumed && !resumed.status.paused);
        assert_eq!(resumed.status.sample, 0);
    }

    #[test]
    fn overrides_replace_a_channels_thresholds() {
        let strict = Thresholds {
            warn: 0.1,
            pause: 0.2,
            min_sample: 1,
            window: Duration::from_secs(60),
        };
        let mut breaker = Breaker::new(BTreeMap::from([("email".to_owned(), strict)]));
        let applied = breaker.apply(&report(10, 3), 1_000);
        assert!(applied.status.paused);
        assert_eq!(applied.status.pause_threshold, 0.2);
    }
}
