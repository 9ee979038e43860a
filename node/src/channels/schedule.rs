//! # schedule: one key's cluster-wide send slots (owner side, pure)
//!
//! Owns the arithmetic of a rate limit: a slot is a point in time, given as a delay from the
//! grant (no clock agreement between nodes needed), spaced `1 / rate` apart, never more than
//! [`HORIZON`] ahead. A new schedule (a new owner: a takeover, or a rebalance at a new epoch)
//! starts [`HORIZON`] after its creation, so slots the previous owner granted can never overlap
//! with its own; a schedule that sees a new epoch waits a horizon again.
//!
//! Pure: callers pass `now` (tokio's monotonic clock: pacing within a second is not calendar
//! time, and tests pause it). Must never grant a slot beyond the horizon.

use std::time::Duration;

use herald_proto::Epoch;
use tokio::time::Instant;

/// How far ahead the owner schedules slots (and how long a new owner waits before its first).
pub const HORIZON: Duration = Duration::from_secs(1);

/// The most slots one call may ask for.
pub const SLOTS_PER_CALL_MAX: u32 = 1024;

/// What one grant came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Grant {
    /// The slots, as delays from `now` (µs).
    pub delays_us: Vec<u64>,
    /// When fewer than asked were granted: how long until the next slot is within the horizon
    /// (µs from `now`); 0 otherwise.
    pub retry_after_us: u64,
}

#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    next_free: Instant,
    epoch: Epoch,
}

impl Schedule {
    /// A schedule of `rate` sends per second (after the safety margin), created at `now` by the
    /// owner at `epoch`.
    pub fn new(rate: f64, epoch: Epoch, now: Instant) -> Self {
        let rate = if rate.is_finite() && rate > 0.0 {
            rate
        } else {
            f64::MIN_POSITIVE
        };
        Self {
            interval: Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::MAX),
            next_free: now + HORIZON,
            epoch,
        }
    }

    /// The spacing of slots.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Up to `count` slots at `now`, by the owner at `epoch`.
    pub fn grant(&mut self, count: u32, epoch: Epoch, now: Instant) -> Grant {
        if self.epoch != epoch {
            // The partition changed hands since this schedule was last used: another node may
            // have granted slots up to HORIZON ahead.
            self.next_free = self.next_free.max(now + HORIZON);
            self.epoch = epoch;
        }
        let count = count.min(SLOTS_PER_CALL_MAX);
        let mut delays_us = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let slot = self.next_free.max(now);
            if slot > now + HORIZON {
                break;
            }
            self.next_free = slot + self.interval;
            delays_us.push(micros(slot - now));
        }
        let retry_after_us = if delays_us.len() < count as usize {
            // The next slot enters the horizon at `next_free - HORIZON`.
            micros(self.next_free.saturating_duration_since(now + HORIZON))
        } else {
            0
        };
        Grant {
            delays_us,
            retry_after_us,
        }
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Slots a node asks for at once: about 50 ms worth, at least 1, at most 64 (small leases: a
/// node never holds much of the cluster's rate, and no round trip per message).
pub fn lease_size(rate: f64) -> u32 {
    ((rate / 20.0).ceil() as u32).clamp(1, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_are_spaced_and_bounded_by_the_horizon() {
        let mut schedule = Schedule::new(50.0, Epoch(1), Instant::now());
        // A new owner waits one horizon before its first slot.
        let first = schedule.grant(10, Epoch(1), Instant::now());
        assert_eq!(
            first.delays_us,
            vec![1_000_000],
            "only the slot at the horizon"
        );
        assert_eq!(
            first.retry_after_us, 20_000,
            "the next slot enters the horizon in 20 ms"
        );
        tokio::time::advance(HORIZON).await;
        let slots = schedule.grant(100, Epoch(1), Instant::now()).delays_us;
        // 20 ms apart, at most one second ahead.
        assert_eq!(slots.len(), 50, "{slots:?}");
        assert_eq!(slots[0], 20_000);
        for pair in slots.windows(2) {
            assert_eq!(pair[1] - pair[0], 20_000);
        }
        // Full: nothing more until time moves.
        let full = schedule.grant(1, Epoch(1), Instant::now());
        assert!(full.delays_us.is_empty());
        assert_eq!(full.retry_after_us, 20_000);
        // A new epoch (the partition moved and came back) waits a horizon again.
        tokio::time::advance(Duration::from_millis(500)).await;
        let after = schedule.grant(5, Epoch(2), Instant::now()).delays_us;
        assert!(after.iter().all(|d| *d >= 1_000_000), "{after:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_schedule_grants_at_once_and_never_in_the_past() {
        let mut schedule = Schedule::new(10.0, Epoch(3), Instant::now());
        tokio::time::advance(Duration::from_secs(5)).await;
        let grant = schedule.grant(3, Epoch(3), Instant::now());
        assert_eq!(grant.delays_us, vec![0, 100_000, 200_000]);
        assert_eq!(grant.retry_after_us, 0);
    }

    #[test]
    fn lease_size_is_about_fifty_ms_of_the_rate() {
        assert_eq!(lease_size(48.0), 3);
        assert_eq!(lease_size(1.0), 1);
        assert_eq!(lease_size(100_000.0), 64);
    }
}
