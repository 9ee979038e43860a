//! # block_rate: the block/complaint/opt-out breaker of a sender or campaign
//!
//! Owns one decision: is a sender (or campaign) annoying enough people that it must slow down
//! ([`Level::Warn`]) or stop ([`Level::Pause`])? It counts deliveries and negative signals
//! (spam complaints, opt-outs, blocks) in time buckets over a sliding window and compares
//! `negatives / delivered` with per-channel [`Thresholds`].
//!
//! Pure: no clock (callers pass every time, unix ms), no store, no I/O. One [`BlockRate`] per
//! sender or campaign, owned by whoever routes its sends. Must never log contact points or
//! message text: it only ever sees counts.
//!
//! ## Window
//!
//! The window is split into [`BUCKETS`] buckets of `ceil(window / BUCKETS)` ms each, bucket `n`
//! holding the signals of `[n * width, (n + 1) * width)`. At `now`, the window is now's bucket and
//! the `BUCKETS - 1` before it: it reaches between `window - width` and `window` into the past (a
//! precision of 1/60 of the window, which is what bounded memory costs). Signals stamped after
//! now's bucket (another node's clock ahead) are kept but only counted once `now` reaches them;
//! a signal older than what its bucket slot already holds is dropped ([`BlockRate::observe`]
//! returns `false`), since it is out of every window that slot can still be part of.
//!
//! ## Levels and the latch
//!
//! - Below `min_sample` deliveries in the window the level is [`Level::Ok`], whatever the ratio:
//!   one complaint out of ten emails is noise, not a verdict.
//! - At or above `warn`: [`Level::Warn`] (alert, do not stop).
//! - At or above `pause`: [`Level::Pause`], and the breaker **latches**: it stays paused, even if
//!   the ratio drops (which it will, since a paused sender stops delivering and complaints lag),
//!   until [`BlockRate::resume`], an explicit human or API decision after the cause is fixed.
//!   Resuming also forgets the counts, so a resumed sender is judged on fresh traffic.
//!
//! The ratio is negatives over deliveries *in the same window*; complaints about messages
//! delivered before the window still count (they are today's signal), so the ratio can exceed 1.
//! With no delivery in the window the ratio is 0.

use std::time::Duration;

use herald_proto::v1::Channel;
use serde::{Deserialize, Serialize};

/// Buckets per window.
pub const BUCKETS: usize = 60;

/// One observation about a sender's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Signal {
    /// A message reached the recipient (the denominator).
    Delivered,
    /// The recipient blocked the sender, or turned its notifications off.
    Block,
    /// The recipient reported the message as spam (email feedback loops, messenger reports).
    Complaint,
    /// The recipient opted out (STOP, unsubscribe link).
    OptOut,
}

/// When a sender's negative-signal ratio warns and when it pauses. In configuration the window is
/// written `window_ms`; there are no serde defaults because a partial override would silently mix
/// with another channel's values: start from [`Thresholds::for_channel`] instead.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    /// Ratio (negatives / delivered) at or above which the level is [`Level::Warn`].
    pub warn: f64,
    /// Ratio at or above which the breaker pauses the sender (and latches).
    pub pause: f64,
    /// Deliveries in the window below which the level is always [`Level::Ok`].
    pub min_sample: u32,
    /// Length of the sliding window (`window_ms` in configuration).
    #[serde(rename = "window_ms", with = "duration_ms")]
    pub window: Duration,
}

/// Thresholds that cannot work as a breaker.
#[derive(Clone, Copy, Debug, PartialEq, thiserror::Error)]
pub enum ThresholdsError {
    /// `warn` or `pause` is not a finite number in `(0, +inf)`.
    #[error("block-rate thresholds must be finite and positive (warn {warn}, pause {pause})")]
    NotPositive {
        /// The `warn` given.
        warn: f64,
        /// The `pause` given.
        pause: f64,
    },
    /// `warn` above `pause`: the breaker would pause without ever warning.
    #[error("block-rate warn {warn} is above pause {pause}")]
    WarnAbovePause {
        /// The `warn` given.
        warn: f64,
        /// The `pause` given.
        pause: f64,
    },
    /// A zero window counts nothing.
    #[error("block-rate window must be at least {BUCKETS} ms")]
    WindowTooShort,
}

impl Thresholds {
    /// Checks the thresholds make a working breaker (call when loading configuration).
    /// `min_sample` 0 is allowed (judge from the first delivery) though rarely wise.
    pub fn validate(&self) -> Result<(), ThresholdsError> {
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.warn) || !positive(self.pause) {
            return Err(ThresholdsError::NotPositive {
                warn: self.warn,
                pause: self.pause,
            });
        }
        if self.warn > self.pause {
            return Err(ThresholdsError::WarnAbovePause {
                warn: self.warn,
                pause: self.pause,
            });
        }
        if self.window.as_millis() < BUCKETS as u128 {
            return Err(ThresholdsError::WindowTooShort);
        }
        Ok(())
    }
}

/// `Duration` as whole milliseconds, as every other time knob in Herald's configuration.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

impl Thresholds {
    /// The defaults for `channel`:
    ///
    /// - **Email**, complaints: warn 0.1 %, pause 0.3 % over 24 h, from 1 000 deliveries. Gmail
    ///   and Yahoo's bulk-sender rules ask senders to stay under 0.1 % reported spam and never
    ///   reach 0.3 % (measured daily in Postmaster Tools); pausing at 0.3 % stops a sender before
    ///   the mailbox providers start junking its whole domain.
    /// - **SMS**, opt-outs: warn 1 %, pause 2 % over 24 h, from 200 deliveries. A healthy program
    ///   loses well under 1 % of recipients per send; several times that is the pattern carriers'
    ///   filters (and 10DLC campaign vetting) treat as unwanted traffic, and an opt-out burst is
    ///   the earliest sign of a bad list.
    /// - **Push**, blocks (notifications turned off, token revoked after a send): warn 2 %, pause
    ///   5 % over 24 h, from 500 deliveries. Looser than SMS because tokens also die for reasons
    ///   that have nothing to do with the message (new phone, reinstall).
    /// - **Unspecified** (and messenger channels until they have their own entry): the SMS values,
    ///   the stricter of the two person-to-person defaults.
    pub fn for_channel(channel: Channel) -> Self {
        const DAY: Duration = Duration::from_secs(86_400);
        match channel {
            Channel::Email => Thresholds {
                warn: 0.001,
                pause: 0.003,
                min_sample: 1_000,
                window: DAY,
            },
            Channel::Push => Thresholds {
                warn: 0.02,
                pause: 0.05,
                min_sample: 500,
                window: DAY,
            },
            Channel::Sms | Channel::Unspecified => Thresholds {
                warn: 0.01,
                pause: 0.02,
                min_sample: 200,
                window: DAY,
            },
        }
    }
}

/// Signals counted in a window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Deliveries.
    pub delivered: u64,
    /// Blocks.
    pub blocks: u64,
    /// Spam complaints.
    pub complaints: u64,
    /// Opt-outs.
    pub opt_outs: u64,
}

impl Counts {
    /// Blocks + complaints + opt-outs.
    pub fn negatives(&self) -> u64 {
        self.blocks
            .saturating_add(self.complaints)
            .saturating_add(self.opt_outs)
    }

    /// `negatives / delivered`, 0 without deliveries.
    pub fn ratio(&self) -> f64 {
        if self.delivered == 0 {
            0.0
        } else {
            self.negatives() as f64 / self.delivered as f64
        }
    }

    fn add(&mut self, signal: Signal) {
        let counter = match signal {
            Signal::Delivered => &mut self.delivered,
            Signal::Block => &mut self.blocks,
            Signal::Complaint => &mut self.complaints,
            Signal::OptOut => &mut self.opt_outs,
        };
        *counter = counter.saturating_add(1);
    }

    fn merge(&mut self, other: &Counts) {
        self.delivered = self.delivered.saturating_add(other.delivered);
        self.blocks = self.blocks.saturating_add(other.blocks);
        self.complaints = self.complaints.saturating_add(other.complaints);
        self.opt_outs = self.opt_outs.saturating_add(other.opt_outs);
    }
}

/// The breaker's verdict at a time, with the values it used.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Level {
    /// Send on.
    Ok,
    /// The ratio reached `warn`: alert the tenant, keep sending.
    Warn {
        /// negatives / delivered in the window.
        ratio: f64,
        /// Deliveries in the window.
        sample: u64,
        /// The `warn` threshold reached.
        threshold: f64,
    },
    /// Paused (latched): send nothing for this sender until [`BlockRate::resume`].
    Pause {
        /// negatives / delivered in the window now (may have dropped since the latch).
        ratio: f64,
        /// Deliveries in the window now.
        sample: u64,
        /// The `pause` threshold.
        threshold: f64,
    },
}

/// When and why the breaker latched.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paused {
    /// The `now` of the evaluation that crossed `pause`.
    pub at_ms: i64,
    /// The ratio then.
    pub ratio: f64,
    /// The deliveries in the window then.
    pub sample: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// The bucket number (`at.div_euclid(width)`) the counts belong to; `None` = never used.
    index: Option<i64>,
    counts: Counts,
}

/// The block/complaint/opt-out ratio of one sender or campaign over a sliding window, and its
/// pause latch.
#[derive(Clone, Debug)]
pub struct BlockRate {
    thresholds: Thresholds,
    width_ms: i64,
    buckets: Vec<Bucket>,
    paused: Option<Paused>,
}

impl BlockRate {
    /// An empty breaker (nothing observed, not paused).
    pub fn new(thresholds: Thresholds) -> Self {
        let window_ms = i64::try_from(thresholds.window.as_millis()).unwrap_or(i64::MAX);
        // Round up so the buckets together cover at least the window; at least 1 ms.
        let width_ms =
            (window_ms / BUCKETS as i64 + i64::from(window_ms % BUCKETS as i64 != 0)).max(1);
        BlockRate {
            thresholds,
            width_ms,
            buckets: vec![
                Bucket {
                    index: None,
                    counts: Counts::default(),
                };
                BUCKETS
            ],
            paused: None,
        }
    }

    /// The thresholds this breaker applies.
    pub fn thresholds(&self) -> &Thresholds {
        &self.thresholds
    }

    /// Width of one bucket, ms.
    pub fn bucket_ms(&self) -> i64 {
        self.width_ms
    }

    fn bucket_of(&self, at_ms: i64) -> (i64, usize) {
        let index = at_ms.div_euclid(self.width_ms);
        // rem_euclid of a positive modulus is in 0..BUCKETS.
        let slot = index.rem_euclid(BUCKETS as i64) as usize;
        (index, slot)
    }

    /// Counts `signal` at `at_ms`. `false` when it is too old to be in any window still counted
    /// (its slot already holds a later bucket), in which case nothing changes.
    pub fn observe(&mut self, signal: Signal, at_ms: i64) -> bool {
        let (index, slot) = self.bucket_of(at_ms);
        let Some(bucket) = self.buckets.get_mut(slot) else {
            return false;
        };
        match bucket.index {
            Some(held) if held > index => return false,
            Some(held) if held == index => {}
            _ => {
                bucket.index = Some(index);
                bucket.counts = Counts::default();
            }
        }
        bucket.counts.add(signal);
        true
    }

    /// The signals in the window at `now_ms` (see the module docs for its exact extent).
    pub fn counts(&self, now_ms: i64) -> Counts {
        let (current, _) = self.bucket_of(now_ms);
        let first = current - (BUCKETS as i64 - 1);
        let mut total = Counts::default();
        for bucket in &self.buckets {
            if let Some(index) = bucket.index
                && (first..=current).contains(&index)
            {
                total.merge(&bucket.counts);
            }
        }
        total
    }

    /// negatives / delivered in the window at `now_ms` (0 without deliveries).
    pub fn ratio(&self, now_ms: i64) -> f64 {
        self.counts(now_ms).ratio()
    }

    /// The level at `now_ms`; crossing `pause` (with at least `min_sample` deliveries) latches
    /// the breaker, and a latched breaker answers [`Level::Pause`] until [`BlockRate::resume`].
    pub fn evaluate(&mut self, now_ms: i64) -> Level {
        let counts = self.counts(now_ms);
        let ratio = counts.ratio();
        let sample = counts.delivered;
        let t = self.thresholds;
        if self.paused.is_some() {
            return Level::Pause {
                ratio,
                sample,
                threshold: t.pause,
            };
        }
        if sample < u64::from(t.min_sample) {
            return Level::Ok;
        }
        if ratio >= t.pause {
            self.paused = Some(Paused {
                at_ms: now_ms,
                ratio,
                sample,
            });
            Level::Pause {
                ratio,
                sample,
                threshold: t.pause,
            }
        } else if ratio >= t.warn {
            Level::Warn {
                ratio,
                sample,
                threshold: t.warn,
            }
        } else {
            Level::Ok
        }
    }

    /// Whether the latch is set.
    pub fn is_paused(&self) -> bool {
        self.paused.is_some()
    }

    /// When and why the latch was set, if it is.
    pub fn paused(&self) -> Option<Paused> {
        self.paused
    }

    /// Clears the latch **and the counts**, returning what the latch held. Forgetting the counts
    /// is deliberate: the window still holds the burst that paused the sender (the pause stopped
    /// new deliveries, so the ratio barely moves), and judging a resumed sender on it would
    /// re-pause it at the next evaluation. After a resume the sender needs `min_sample` fresh
    /// deliveries before it can be paused again.
    pub fn resume(&mut self) -> Option<Paused> {
        for bucket in &mut self.buckets {
            bucket.index = None;
            bucket.counts = Counts::default();
        }
        self.paused.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MINUTE: i64 = 60_000;

    fn small(warn: f64, pause: f64, min_sample: u32) -> Thresholds {
        Thresholds {
            warn,
            pause,
            min_sample,
            window: Duration::from_millis(60 * MINUTE as u64),
        }
    }

    fn feed(rate: &mut BlockRate, signal: Signal, n: usize, at: i64) {
        for _ in 0..n {
            assert!(rate.observe(signal, at));
        }
    }

    #[test]
    fn email_defaults_follow_gmail() {
        let t = Thresholds::for_channel(Channel::Email);
        assert_eq!((t.warn, t.pause, t.min_sample), (0.001, 0.003, 1_000));
        let t = Thresholds::for_channel(Channel::Sms);
        assert_eq!((t.warn, t.pause), (0.01, 0.02));
        assert!(t.warn < t.pause);
        let t = Thresholds::for_channel(Channel::Push);
        assert!(t.warn < t.pause);
    }

    #[test]
    fn thresholds_validate_and_read_from_config() {
        for channel in [
            Channel::Email,
            Channel::Sms,
            Channel::Push,
            Channel::Unspecified,
        ] {
            assert_eq!(Thresholds::for_channel(channel).validate(), Ok(()));
        }
        let t: Thresholds = serde_json::from_str(
            r#"{"warn": 0.01, "pause": 0.05, "min_sample": 100, "window_ms": 3600000}"#,
        )
        .expect("parse");
        assert_eq!(t.window, Duration::from_secs(3600));
        assert_eq!(
            serde_json::to_value(t).expect("ser")["window_ms"],
            serde_json::json!(3_600_000)
        );
        assert!(serde_json::from_str::<Thresholds>(r#"{"warn": 0.01}"#).is_err());
        let bad = |warn, pause, window_ms| {
            Thresholds {
                warn,
                pause,
                min_sample: 1,
                window: Duration::from_millis(window_ms),
            }
            .validate()
        };
        assert!(matches!(
            bad(0.05, 0.01, 60_000),
            Err(ThresholdsError::WarnAbovePause { .. })
        ));
        assert!(matches!(
            bad(f64::NAN, 0.01, 60_000),
            Err(ThresholdsError::NotPositive { .. })
        ));
        assert!(matches!(
            bad(0.0, 0.01, 60_000),
            Err(ThresholdsError::NotPositive { .. })
        ));
        assert_eq!(bad(0.01, 0.01, 59), Err(ThresholdsError::WindowTooShort));
    }

    #[test]
    fn levels_at_the_thresholds() {
        let now = 1_000 * MINUTE;
        let mut rate = BlockRate::new(Thresholds::for_channel(Channel::Email));
        feed(&mut rate, Signal::Delivered, 2_000, now - MINUTE);
        assert_eq!(rate.evaluate(now), Level::Ok);
        feed(&mut rate, Signal::Complaint, 2, now - MINUTE);
        assert_eq!(
            rate.evaluate(now),
            Level::Warn {
                ratio: 0.001,
                sample: 2_000,
                threshold: 0.001
            }
        );
        feed(&mut rate, Signal::Complaint, 4, now);
        assert_eq!(
            rate.evaluate(now),
            Level::Pause {
                ratio: 0.003,
                sample: 2_000,
                threshold: 0.003
            }
        );
        assert_eq!(
            rate.paused(),
            Some(Paused {
                at_ms: now,
                ratio: 0.003,
                sample: 2_000
            })
        );
    }

    #[test]
    fn below_min_sample_is_ok_whatever_the_ratio() {
        let now = 10 * MINUTE;
        let mut rate = BlockRate::new(small(0.01, 0.02, 100));
        feed(&mut rate, Signal::Delivered, 99, now);
        feed(&mut rate, Signal::OptOut, 50, now);
        assert_eq!(rate.evaluate(now), Level::Ok);
        assert!(rate.ratio(now) > 0.5);
        feed(&mut rate, Signal::Delivered, 1, now);
        assert!(matches!(rate.evaluate(now), Level::Pause { .. }));
    }

    #[test]
    fn latch_holds_after_the_window_passes_until_resume() {
        let now = 100 * MINUTE;
        let mut rate = BlockRate::new(small(0.01, 0.02, 10));
        feed(&mut rate, Signal::Delivered, 10, now);
        feed(&mut rate, Signal::Block, 1, now);
        assert!(matches!(rate.evaluate(now), Level::Pause { .. }));
        // Two windows later nothing is counted, yet it stays paused.
        let later = now + 120 * MINUTE;
        assert_eq!(rate.counts(later), Counts::default());
        assert_eq!(
            rate.evaluate(later),
            Level::Pause {
                ratio: 0.0,
                sample: 0,
                threshold: 0.02
            }
        );
        let paused = rate.resume().expect("was paused");
        assert_eq!(paused.at_ms, now);
        assert!(!rate.is_paused());
        assert_eq!(rate.evaluate(later), Level::Ok);
        assert_eq!(rate.resume(), None);
    }

    #[test]
    fn resume_forgets_the_burst() {
        let now = 100 * MINUTE;
        let mut rate = BlockRate::new(small(0.01, 0.02, 10));
        feed(&mut rate, Signal::Delivered, 10, now);
        feed(&mut rate, Signal::Complaint, 5, now);
        assert!(matches!(rate.evaluate(now), Level::Pause { .. }));
        rate.resume();
        assert_eq!(rate.counts(now), Counts::default());
        assert_eq!(rate.evaluate(now + 1), Level::Ok);
    }

    #[test]
    fn signals_leave_the_window_bucket_by_bucket() {
        let mut rate = BlockRate::new(small(0.01, 0.02, 1));
        assert_eq!(rate.bucket_ms(), MINUTE);
        rate.observe(Signal::Delivered, 0);
        rate.observe(Signal::OptOut, 0);
        assert_eq!(rate.counts(59 * MINUTE + MINUTE - 1).delivered, 1);
        assert_eq!(rate.counts(60 * MINUTE), Counts::default());
        // A signal older than what its slot holds is dropped, not mixed into a newer bucket.
        assert!(rate.observe(Signal::Delivered, 60 * MINUTE));
        assert!(!rate.observe(Signal::Delivered, 0));
        assert_eq!(rate.counts(60 * MINUTE).delivered, 1);
        // Future signals wait for now to reach them.
        assert!(rate.observe(Signal::Block, 61 * MINUTE));
        assert_eq!(rate.counts(60 * MINUTE).blocks, 0);
        assert_eq!(rate.counts(61 * MINUTE).blocks, 1);
    }

    #[test]
    fn odd_windows_round_buckets_up() {
        let rate = BlockRate::new(Thresholds {
            window: Duration::from_millis(61),
            ..small(0.1, 0.2, 1)
        });
        assert_eq!(rate.bucket_ms(), 2);
        let rate = BlockRate::new(Thresholds {
            window: Duration::ZERO,
            ..small(0.1, 0.2, 1)
        });
        assert_eq!(rate.bucket_ms(), 1);
    }

    fn signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            3 => Just(Signal::Delivered),
            1 => Just(Signal::Block),
            1 => Just(Signal::Complaint),
            1 => Just(Signal::OptOut),
        ]
    }

    proptest! {
        #[test]
        fn ratio_is_negatives_over_delivered_in_the_window(
            window_ms in 60i64..10_000,
            events in proptest::collection::vec((signal(), -5_000i64..30_000), 0..300),
            after in 0i64..15_000,
        ) {
            let mut rate = BlockRate::new(Thresholds {
                window: Duration::from_millis(window_ms as u64),
                ..small(0.01, 0.02, 1)
            });
            let width = rate.bucket_ms();
            for (s, at) in &events {
                rate.observe(*s, *at);
            }
            let now = events.iter().map(|(_, at)| *at).max().unwrap_or(0) + after;
            let current = now.div_euclid(width);
            let mut expected = Counts::default();
            for (s, at) in &events {
                let b = at.div_euclid(width);
                if b > current - BUCKETS as i64 && b <= current {
                    expected.add(*s);
                }
            }
            prop_assert_eq!(rate.counts(now), expected);
            prop_assert_eq!(rate.ratio(now), expected.ratio());
            let exact = if expected.delivered == 0 {
                0.0
            } else {
                expected.negatives() as f64 / expected.delivered as f64
            };
            prop_assert_eq!(rate.ratio(now), exact);
            // Bucketing loses at most one bucket: everything of the last `window - width` counts.
            let mut recent = Counts::default();
            for (s, at) in &events {
                if *at > now - (window_ms - width) && *at <= now {
                    recent.add(*s);
                }
            }
            let counted = rate.counts(now);
            prop_assert!(recent.delivered <= counted.delivered);
            prop_assert!(recent.negatives() <= counted.negatives());
        }

        #[test]
        fn below_min_sample_never_pauses(
            min_sample in 1u32..50,
            events in proptest::collection::vec((signal(), 0i64..100_000), 0..200),
        ) {
            let mut rate = BlockRate::new(small(0.0, 0.0, min_sample));
            let mut delivered = 0u32;
            let mut events = events;
            events.sort_by_key(|(_, at)| *at);
            for (s, at) in events {
                if s == Signal::Delivered {
                    if delivered + 1 >= min_sample {
                        continue;
                    }
                    delivered += 1;
                }
                rate.observe(s, at);
                prop_assert_eq!(rate.evaluate(at), Level::Ok);
            }
            prop_assert!(!rate.is_paused());
        }

        #[test]
        fn once_paused_stays_paused_until_resume(
            events in proptest::collection::vec((signal(), 0i64..20), 1..300),
            resume_at in 0usize..300,
        ) {
            let mut rate = BlockRate::new(small(0.05, 0.1, 5));
            let mut now = 0i64;
            let mut latched = false;
            for (i, (s, gap)) in events.into_iter().enumerate() {
                now += gap * MINUTE;
                rate.observe(s, now);
                if i == resume_at {
                    prop_assert_eq!(rate.resume().is_some(), latched);
                    latched = false;
                }
                let level = rate.evaluate(now);
                if latched {
                    prop_assert!(matches!(level, Level::Pause { .. }), "{:?}", level);
                }
                latched = matches!(level, Level::Pause { .. });
                prop_assert_eq!(rate.is_paused(), latched);
            }
        }
    }
}
