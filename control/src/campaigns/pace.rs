//! The cluster-wide pace of a campaign and its split among nodes (pure).
//!
//! Owns three decisions: the campaign's target rate (a fixed rate, or "spread over" = what
//! remains over the time left), the correction that makes up a shortfall of the last
//! [`WINDOW`] (a node died, slices were moving) without overshooting, and the split of the rate
//! among nodes by the members each has ready, re-made on every report. Must never do I/O or
//! read a clock.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The window the pace is held over.
pub const WINDOW: Duration = Duration::from_secs(10);
/// A shortfall is made up over about this long (well inside [`WINDOW`]).
const CATCH_UP: Duration = Duration::from_secs(2);
/// The correction never moves the rate by more than this share of the target.
const MAX_CORRECTION: f64 = 0.3;
/// Below this window length the measured rate is noise: no correction yet.
const MIN_MEASURED: Duration = Duration::from_secs(2);

/// The target rate: `per_second`, or the remaining members over the time left of
/// `spread_over_s` (never below 1 message per second while any remain). `None` = unpaced.
pub fn target_rate(
    per_second: u32,
    spread_over_s: u64,
    remaining: u64,
    ran_ms: i64,
) -> Option<f64> {
    if per_second > 0 {
        return Some(f64::from(per_second));
    }
    if spread_over_s == 0 {
        return None;
    }
    let left_s = (spread_over_s as f64 - ran_ms as f64 / 1000.0).max(1.0);
    Some((remaining as f64 / left_s).max(1.0))
}

/// Samples of a campaign's paced submissions, to measure the rate of the last window.
#[derive(Debug, Default)]
pub struct Measured {
    samples: VecDeque<(Instant, u64)>,
}

impl Measured {
    /// Records the campaign's total of paced submissions at `at`. The measure starts with the
    /// first submission: the time slices take to plan before it is no shortfall to make up.
    pub fn observe(&mut self, at: Instant, total: u64) {
        if self.samples.is_empty() && total == 0 {
            return;
        }
        if self
            .samples
            .front()
            .is_some_and(|(_, first)| *first == 0 && total > 0)
        {
            self.samples.clear();
        }
        self.samples.push_back((at, total));
        while let Some((first, _)) = self.samples.front() {
            if at.saturating_duration_since(*first) > WINDOW {
                self.samples.pop_front();
            } else {
                break;
            }
        }
    }

    /// Forgets the history (the campaign paused: a pause is no shortfall).
    pub fn reset(&mut self) {
        self.samples.clear();
    }

    /// The rate to ask of the nodes: `target`, corrected by the shortfall (or excess) of the
    /// measured window, at most ±[`MAX_CORRECTION`] of it.
    pub fn corrected(&self, target: f64) -> f64 {
        let (Some((first_at, first)), Some((last_at, last))) =
            (self.samples.front(), self.samples.back())
        else {
            return target;
        };
        let span = last_at.saturating_duration_since(*first_at);
        if span < MIN_MEASURED {
            return target;
        }
        let expected = target * span.as_secs_f64();
        let actual = last.saturating_sub(*first) as f64;
        let correction = (expected - actual) / CATCH_UP.as_secs_f64();
        let bound = target * MAX_CORRECTION;
        (target + correction.clamp(-bound, bound)).max(0.0)
    }
}

/// Splits `rate` among nodes in proportion to their weights (members ready); nodes without
/// a report weigh the mean of those with one (they may have slices not reported yet), and
/// when nobody has anything ready every node gets an equal share.
pub fn split(rate: f64, weights: &[Option<f64>]) -> Vec<f64> {
    if weights.is_empty() {
        return Vec::new();
    }
    let known: Vec<f64> = weights.iter().flatten().copied().collect();
    let mean = if known.is_empty() {
        1.0
    } else {
        known.iter().sum::<f64>() / known.len() as f64
    };
    let filled: Vec<f64> = weights.iter().map(|w| w.unwrap_or(mean)).collect();
    let total: f64 = filled.iter().sum();
    if total <= 0.0 {
        let share = rate / weights.len() as f64;
        return vec![share; weights.len()];
    }
    filled.iter().map(|w| rate * w / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_rate_or_what_remains_over_the_time_left() {
        assert_eq!(target_rate(2_000, 0, 9, 0), Some(2_000.0));
        assert_eq!(target_rate(0, 0, 9, 0), None);
        // 36,000 members over an hour, half an hour gone with 9,000 left: 5/s.
        assert_eq!(target_rate(0, 3_600, 9_000, 1_800_000), Some(5.0));
        // Past the time: everything left as fast as 1/s per member left.
        assert_eq!(target_rate(0, 60, 300, 120_000), Some(300.0));
        assert_eq!(target_rate(0, 60, 0, 0), Some(1.0));
    }

    #[test]
    fn a_shortfall_is_made_up_within_bounds() {
        let start = Instant::now();
        let mut measured = Measured::default();
        // Nothing submitted yet (slices planning): no measure, no shortfall.
        measured.observe(start, 0);
        measured.observe(start + Duration::from_secs(3), 0);
        assert!(measured.samples.is_empty());
        measured.observe(start, 1);
        assert_eq!(measured.corrected(100.0), 100.0);
        // 5 s at half the rate: 250 short, made up over 2 s, capped at +30%.
        measured.observe(start + Duration::from_secs(5), 251);
        assert_eq!(measured.corrected(100.0), 130.0);
        // On pace: no correction.
        let mut on_pace = Measured::default();
        on_pace.observe(start, 1);
        on_pace.observe(start + Duration::from_secs(4), 401);
        assert_eq!(on_pace.corrected(100.0), 100.0);
        // Ahead: slowed down (40 over, made up over 2 s), by at most 30%.
        let mut ahead = Measured::default();
        ahead.observe(start, 1);
        ahead.observe(start + Duration::from_secs(4), 441);
        assert!((ahead.corrected(100.0) - 80.0).abs() < 1e-9);
        // Old samples leave the window.
        measured.observe(start + Duration::from_secs(14), 1_151);
        assert_eq!(measured.samples.len(), 2);
        measured.reset();
        assert_eq!(measured.corrected(100.0), 100.0);
    }

    #[test]
    fn the_rate_splits_by_what_is_ready() {
        let shares = split(900.0, &[Some(100.0), Some(200.0), None]);
        // The unreported node weighs the mean (150).
        assert_eq!(shares, vec![200.0, 400.0, 300.0]);
        assert_eq!(
            split(90.0, &[Some(0.0), Some(0.0), Some(0.0)]),
            vec![30.0; 3]
        );
        assert_eq!(split(10.0, &[None, None]), vec![5.0, 5.0]);
        assert!(split(10.0, &[]).is_empty());
        let total: f64 = split(2_000.0, &[Some(3.0), Some(7.0), None, Some(1.0)])
            .iter()
            .sum();
        assert!((total - 2_000.0).abs() < 1e-6);
    }
}
