//! # eventually: wait for a state, never for a fixed time
//!
//! Owns the one polling loop of the black-box tests. A test that needs the system to reach a
//! state (a message terminal, a node serving its partitions, a peer having received an SMS)
//! hands a probe to [`eventually`] (the probe answers `Some` once the state is reached) or
//! [`eventually_ok`] (`Ok` once reached, `Err` describing what it saw instead). The probe runs at
//! once, then again after a short, growing pause ([`FIRST_INTERVAL`] doubling up to
//! [`MAX_INTERVAL`]): fast when the state comes quickly, light on the system under test when it
//! takes long. The last probe runs at the deadline, so a wait never gives up before its timeout.
//!
//! It must never stand in for a fixed sleep: wait on a state, never on a duration. (A test that
//! checks that nothing happens for a while still sleeps, and says so.) On timeout it panics with
//! what was awaited and the elapsed time, and [`eventually_ok`] adds the last observed state; a
//! caller that wants to add more (say, the processes' logs) uses [`try_eventually`].
//!
//! Time is [`tokio::time`], so a test on paused time waits no real time.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// The pause after the first probe that did not see the state.
pub const FIRST_INTERVAL: Duration = Duration::from_millis(10);
/// The longest pause between two probes (the pause doubles from [`FIRST_INTERVAL`] up to it).
pub const MAX_INTERVAL: Duration = Duration::from_millis(200);

/// A wait that ran out of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut<E> {
    /// From the start of the wait to the end of the last probe.
    pub elapsed: Duration,
    /// How many times the probe ran.
    pub probes: usize,
    /// What the last probe saw instead of the state.
    pub last: E,
}

impl<E: fmt::Display> fmt::Display for TimedOut<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not reached in {:?} ({} probes); last observed: {}",
            self.elapsed, self.probes, self.last
        )
    }
}

/// Runs `probe` until it answers `Ok`, or until `timeout` has passed: then the error says how
/// long it waited and what the last probe answered. The building block of [`eventually`] and
/// [`eventually_ok`], for callers that add their own diagnostics on timeout.
pub async fn try_eventually<T, E, F, Fut>(timeout: Duration, mut probe: F) -> Result<T, TimedOut<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut interval = FIRST_INTERVAL;
    let mut probes = 0;
    loop {
        probes += 1;
        let last = match probe().await {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(TimedOut {
                elapsed: now - started,
                probes,
                last,
            });
        }
        // Never sleep past the deadline: the last probe runs at it.
        tokio::time::sleep(interval.min(deadline - now)).await;
        interval = (interval * 2).min(MAX_INTERVAL);
    }
}

/// Waits until `probe` answers `Some`, and returns what it answered.
///
/// # Panics
/// When `timeout` passes first: the message names `what` and the elapsed time.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let waited = try_eventually(timeout, || {
        let seen = probe();
        async move { seen.await.ok_or(()) }
    })
    .await;
    match waited {
        Ok(value) => value,
        Err(timed_out) => panic!(
            "{what}: not reached in {:?} (timeout {timeout:?}, {} probes)",
            timed_out.elapsed, timed_out.probes
        ),
    }
}

/// Waits until `probe` answers `Ok`, and returns what it answered; `Err` describes the state the
/// probe saw instead.
///
/// # Panics
/// When `timeout` passes first: the message names `what`, the elapsed time and the last `Err`.
pub async fn eventually_ok<T, E, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    E: fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match try_eventually(timeout, probe).await {
        Ok(value) => value,
        Err(timed_out) => panic!("{what}: {timed_out} (timeout {timeout:?})"),
    }
}

/// [`eventually`] for a check that needs no `await`, such as a look at an in-process test peer.
///
/// # Panics
/// When `timeout` passes before `check` holds: the message names `what` and the elapsed time.
pub async fn eventually_holds(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    eventually(what, timeout, || std::future::ready(check().then_some(()))).await;
}

/// Probes `probe` every `every` for `window` and returns every value seen, in order: for a
/// check that something does NOT happen (a paused campaign submits nothing more), which a
/// wait for a state cannot express. Bounded by `window`; the test asserts on the values.
pub async fn observe_for<T, F, Fut>(window: Duration, every: Duration, mut probe: F) -> Vec<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let started = Instant::now();
    let mut seen = vec![probe().await];
    while started.elapsed() < window {
        tokio::time::sleep(every).await;
        seen.push(probe().await);
    }
    seen
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    /// A probe that sees the state on its `ready_at`-th call, counting its calls.
    fn ready_after(calls: &Cell<usize>, ready_at: usize) -> impl Future<Output = Option<usize>> {
        calls.set(calls.get() + 1);
        let n = calls.get();
        std::future::ready((n >= ready_at).then_some(n))
    }

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_some_and_stops_probing() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let value = eventually("ready", Duration::from_secs(5), || ready_after(&calls, 5)).await;
        assert_eq!(value, 5);
        assert_eq!(calls.get(), 5, "no probe after the state was seen");
        // Four pauses, each twice the one before: 10 + 20 + 40 + 80 ms of (paused) time.
        assert_eq!(started.elapsed(), Duration::from_millis(150));
    }

    #[tokio::test(start_paused = true)]
    async fn a_state_already_reached_costs_no_pause() {
        let calls = Cell::new(0);
        let started = Instant::now();
        eventually("ready", Duration::from_secs(5), || ready_after(&calls, 1)).await;
        assert_eq!(calls.get(), 1);
        assert_eq!(started.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn the_pause_grows_up_to_its_cap_and_the_last_probe_runs_at_the_deadline() {
        let calls = Cell::new(0);
        let started = Instant::now();
        let outcome: Result<(), TimedOut<usize>> = try_eventually(Duration::from_secs(1), || {
            calls.set(calls.get() + 1);
            std::future::ready(Err(calls.get()))
        })
        .await;
        // Probes at 0, 10, 30, 70, 150, 310 (the pause now capped at 200), 510, 710, 910 and
        // at the deadline, 1000 ms.
        let timed_out = outcome.expect_err("never ready");
        assert_eq!(timed_out.probes, 10);
        assert_eq!(timed_out.last, 10, "the error carries the last observation");
        assert_eq!(timed_out.elapsed, Duration::from_secs(1));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(expected = "the cluster to be ready: not reached in 2s (timeout 2s")]
    async fn a_timeout_panics_naming_what_was_awaited_and_the_time() {
        eventually::<(), _, _>("the cluster to be ready", Duration::from_secs(2), || {
            std::future::ready(None)
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    #[should_panic(
        expected = "message m1 terminal: not reached in 3s (20 probes); last observed: \
                               status=PENDING after 20 looks (timeout 3s)"
    )]
    async fn eventually_ok_panics_with_the_last_observed_state() {
        let calls = Cell::new(0);
        eventually_ok::<(), _, _, _>("message m1 terminal", Duration::from_secs(3), || {
            calls.set(calls.get() + 1);
            std::future::ready(Err(format!("status=PENDING after {} looks", calls.get())))
        })
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_ok_returns_the_first_ok() {
        let calls = Cell::new(0);
        let value = eventually_ok("ready", Duration::from_secs(1), || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            std::future::ready(if n == 3 { Ok(n) } else { Err(n) })
        })
        .await;
        assert_eq!(value, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn eventually_holds_waits_for_a_plain_check() {
        let mut calls = 0;
        eventually_holds("three looks", Duration::from_secs(1), || {
            calls += 1;
            calls == 3
        })
        .await;
        assert_eq!(calls, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_waits_uses_up_the_timeout_too() {
        // Each probe takes 400 ms: probes at 0 (ends 400), 410 (ends 810), 830 (ends 1230,
        // past the deadline): three probes, and the wait ends after the last one.
        let calls = Cell::new(0);
        let outcome: Result<(), TimedOut<()>> = try_eventually(Duration::from_secs(1), || {
            calls.set(calls.get() + 1);
            async {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Err(())
            }
        })
        .await;
        let timed_out = outcome.expect_err("never ready");
        assert_eq!(timed_out.probes, 3);
        assert_eq!(timed_out.elapsed, Duration::from_millis(1230));
    }
}
