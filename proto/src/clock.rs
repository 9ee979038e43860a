//! # clock: calendar time, injected
//!
//! Owns the one way Herald's components read wall-clock time: a [`Clock`] handed to each
//! component at construction. Production uses [`SystemClock`]; tests use a [`ManualClock`] and
//! advance it, so step timeouts, quiet hours, cap windows and warm-up days are tested without
//! sleeping.
//!
//! What it covers: every decision on calendar time (event timestamps, due times of durable
//! timers, local-time windows, sliding windows, UTC days). What it does not: pacing inside one
//! second (rate-limit slots, backoff, lease renewal intervals) uses tokio's monotonic clock,
//! which tests control with `tokio::time::pause`.
//!
//! Must never be read through anything but a `Clock` value: no component calls
//! `SystemTime::now()` for a decision.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;

/// A future that resolves when the clock has reached a time.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Calendar time for decisions.
pub trait Clock: Send + Sync + fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> i64;

    /// Resolves once [`Clock::now_unix_ms`] is at or past `at_unix_ms` (at once when it is).
    fn sleep_until(&self, at_unix_ms: i64) -> Sleep;
}

/// A clock as components hold it.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock)
    }
}

impl Clock for SystemClock {
    fn now_unix_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }

    fn sleep_until(&self, at_unix_ms: i64) -> Sleep {
        let wait = at_unix_ms.saturating_sub(self.now_unix_ms()).max(0);
        Box::pin(tokio::time::sleep(Duration::from_millis(wait as u64)))
    }
}

/// A clock that moves only when told to ([`ManualClock::advance`], [`ManualClock::set`]).
/// Sleepers wake when an advance reaches their time.
pub struct ManualClock {
    now: AtomicI64,
    moved: watch::Sender<i64>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_unix_ms", &self.now.load(Ordering::Acquire))
            .finish()
    }
}

impl ManualClock {
    /// A clock standing at `start_unix_ms`.
    pub fn new(start_unix_ms: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            now: AtomicI64::new(start_unix_ms),
            moved: watch::channel(start_unix_ms).0,
        })
    }

    /// Moves the clock forward by `by`.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let now = self.now.fetch_add(by, Ordering::AcqRel).saturating_add(by);
        self.moved.send_replace(now);
    }

    /// Sets the clock to `at_unix_ms` (never backwards: an earlier time is ignored).
    pub fn set(&self, at_unix_ms: i64) {
        let now = self
            .now
            .fetch_max(at_unix_ms, Ordering::AcqRel)
            .max(at_unix_ms);
        self.moved.send_replace(now);
    }

    /// This clock as components hold one.
    pub fn shared(self: &Arc<Self>) -> SharedClock {
        self.clone()
    }
}

impl Clock for ManualClock {
    fn now_unix_ms(&self) -> i64 {
        self.now.load(Ordering::Acquire)
    }

    fn sleep_until(&self, at_unix_ms: i64) -> Sleep {
        let mut moved = self.moved.subscribe();
        Box::pin(async move {
            // An error means the clock is gone: nobody can advance it any more, so the
            // sleeper would never wake; end the wait instead of hanging.
            let _ = moved.wait_for(|now| *now >= at_unix_ms).await;
        })
    }
}

/// A clock that runs `rate` times faster than `base` from `anchor_unix_ms` on: its time is
/// `anchor + (base − anchor) × rate`. The policy clock of journeys in tests and demos; every
/// process given the same anchor and rate reads the same time from its own wall clock.
#[derive(Debug)]
pub struct ScaledClock {
    base: SharedClock,
    anchor_unix_ms: i64,
    rate: i64,
}

impl ScaledClock {
    /// `rate` 1 answers `base` itself.
    pub fn shared(base: SharedClock, anchor_unix_ms: i64, rate: u32) -> SharedClock {
        if rate <= 1 {
            return base;
        }
        Arc::new(ScaledClock {
            base,
            anchor_unix_ms,
            rate: i64::from(rate),
        })
    }
}

impl Clock for ScaledClock {
    fn now_unix_ms(&self) -> i64 {
        let elapsed = self.base.now_unix_ms().saturating_sub(self.anchor_unix_ms);
        self.anchor_unix_ms
            .saturating_add(elapsed.saturating_mul(self.rate))
    }

    fn sleep_until(&self, at_unix_ms: i64) -> Sleep {
        let ahead = at_unix_ms.saturating_sub(self.anchor_unix_ms);
        // Rounded up: never wake before the scaled time is reached.
        let base_at = self
            .anchor_unix_ms
            .saturating_add(ahead.saturating_add(self.rate - 1).div_euclid(self.rate));
        self.base.sleep_until(base_at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scaled_clock_runs_ahead_from_its_anchor() {
        let base = Arc::new(ManualClock::new(1_000));
        let scaled = ScaledClock::shared(base.shared(), 1_000, 86_400);
        assert_eq!(scaled.now_unix_ms(), 1_000);
        base.advance(Duration::from_millis(1_000));
        // One real second is one day.
        assert_eq!(scaled.now_unix_ms(), 1_000 + 86_400_000);
        let same = ScaledClock::shared(base.shared(), 0, 1);
        assert_eq!(same.now_unix_ms(), base.now_unix_ms());
    }

    #[tokio::test]
    async fn manual_sleepers_wake_when_the_clock_reaches_them() {
        let clock = ManualClock::new(1_000);
        let sleep = clock.sleep_until(1_500);
        let waiter = tokio::spawn(sleep);
        clock.advance(Duration::from_millis(400));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woke before its time");
        clock.advance(Duration::from_millis(100));
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woke")
            .expect("task");
        assert_eq!(clock.now_unix_ms(), 1_500);
        clock.set(1_200);
        assert_eq!(clock.now_unix_ms(), 1_500, "never backwards");
        // Already due: at once.
        tokio::time::timeout(Duration::from_secs(5), clock.sleep_until(10))
            .await
            .expect("due at once");
    }
}
