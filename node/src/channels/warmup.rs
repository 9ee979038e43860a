//! # warmup: an account's daily quota while it warms up (owner side, pure)
//!
//! Owns the warm-up of a new sending domain or number: the most sends per UTC day, day by day
//! from its first day (`warmup_daily = [50, 100, 250]` from `warmup_start`); after the last day no
//! daily limit. Before the first day the first day's quota applies (an account not warmed up
//! yet is the one to hold back most). The count restarts with each UTC day.
//!
//! Pure: callers pass `now` (calendar time from the injected clock). Must never count a send
//! it refused.

use super::tier::Admission;

const DAY_MS: i64 = 86_400_000;

/// A first warm-up day that is not a date.
#[derive(Debug, thiserror::Error)]
#[error("warmup_start {start:?}: {source} (expected YYYY-MM-DD)")]
pub struct StartError {
    start: String,
    source: chrono::ParseError,
}

/// A warm-up schedule: the quota of day `i` (UTC) after `start_day`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warmup {
    /// Days since the Unix epoch of the first warm-up day.
    pub start_day: i64,
    pub daily: Vec<u32>,
}

impl Warmup {
    /// A schedule starting on `start` (`YYYY-MM-DD`, UTC).
    pub fn parse(start: &str, daily: Vec<u32>) -> Result<Self, StartError> {
        let day =
            chrono::NaiveDate::parse_from_str(start, "%Y-%m-%d").map_err(|source| StartError {
                start: start.to_owned(),
                source,
            })?;
        let start_day = day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp().div_euclid(86_400))
            .unwrap_or(0);
        Ok(Self { start_day, daily })
    }

    /// The quota of day `today`, if the schedule limits it.
    fn quota(&self, today: i64) -> Option<u32> {
        let index = usize::try_from(today - self.start_day).unwrap_or(0);
        self.daily.get(index).copied()
    }
}

/// Sends admitted on one UTC day under a warm-up.
#[derive(Clone, Debug)]
pub struct WarmupCounter {
    schedule: Warmup,
    day: i64,
    sent: u32,
}

impl WarmupCounter {
    pub fn new(schedule: Warmup) -> Self {
        Self {
            schedule,
            day: i64::MIN,
            sent: 0,
        }
    }

    /// One more send at `now_ms`? `limit` is today's quota, `count` the sends admitted today;
    /// a day without a quota admits with both 0.
    pub fn admit(&mut self, now_ms: i64) -> Admission {
        let today = now_ms.div_euclid(DAY_MS);
        let Some(quota) = self.schedule.quota(today) else {
            return Admission::default();
        };
        if self.day != today {
            self.day = today;
            self.sent = 0;
        }
        let admitted = self.sent < quota;
        if admitted {
            self.sent += 1;
        }
        Admission {
            refused: !admitted,
            limit: quota,
            count: self.sent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::clock::{Clock, ManualClock};
    use std::time::Duration;

    #[test]
    fn quota_grows_by_day_and_counts_per_utc_day() {
        let start = Warmup::parse("2026-11-20", vec![2, 3]).expect("valid");
        // 2026-11-20T23:00:00Z.
        let clock = ManualClock::new((start.start_day * 86_400 + 23 * 3_600) * 1_000);
        let mut counter = WarmupCounter::new(start);
        let verdicts: Vec<bool> = (0..3)
            .map(|_| counter.admit(clock.now_unix_ms()).refused)
            .collect();
        assert_eq!(verdicts, vec![false, false, true]);
        assert_eq!(counter.admit(clock.now_unix_ms()).limit, 2);
        // One hour later it is the next UTC day: three sends.
        clock.advance(Duration::from_secs(3_600));
        let admitted = (0..5)
            .filter(|_| !counter.admit(clock.now_unix_ms()).refused)
            .count();
        assert_eq!(admitted, 3);
        // After the schedule: no daily limit.
        clock.advance(Duration::from_secs(86_400));
        assert!((0..100).all(|_| !counter.admit(clock.now_unix_ms()).refused));
        // Before it: the first day's quota.
        let mut early = WarmupCounter::new(Warmup::parse("2030-01-01", vec![1]).expect("valid"));
        let verdicts: Vec<bool> = (0..2)
            .map(|_| early.admit(clock.now_unix_ms()).refused)
            .collect();
        assert_eq!(verdicts, vec![false, true]);
    }

    #[test]
    fn a_bad_start_day_is_named() {
        let error = Warmup::parse("20-11-2026", vec![1]).expect_err("invalid");
        assert!(
            error
                .to_string()
                .starts_with("warmup_start \"20-11-2026\": "),
            "{error}"
        );
    }
}
