//! # circuit: provider accounts' circuit breakers, on the node and as the cluster sees them
//!
//! Owns two pure state machines:
//!
//! - [`Circuit`], one per account on each node that makes the calls: closed → (N consecutive
//!   failures, unavailable or ambiguous) → open **at once** → (after the open period)
//!   half-open with one probe call → closed on success, open again on failure. It also keeps
//!   the one [`CircuitEvent`] not yet reported to the account's ChannelActor.
//! - [`ClusterCircuit`], in the account's ChannelActor: the latest open-until any node reported,
//!   cleared by a report of recovery. Handles cache its answer and skip an account the cluster
//!   reports open, so an outage one node saw is skipped by all within a report interval.
//!
//! Pure: callers pass the time (tokio's monotonic `Instant` for the node's open period; unix ms
//! from the injected clock for what crosses nodes). Must never let more than one probe out at a
//! time in half-open state.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    /// The metric value: 0 closed, 1 open, 2 half-open.
    pub fn as_metric(self) -> u8 {
        match self {
            CircuitState::Closed => 0,
            CircuitState::Open => 1,
            CircuitState::HalfOpen => 2,
        }
    }
}

/// What a node tells the account's ChannelActor about its circuit (the latest change only).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CircuitEvent {
    /// Opened, until this time (ms since the Unix epoch).
    Opened { until_unix_ms: i64 },
    /// Closed again after being open (a probe, or a call that was already out, succeeded).
    Recovered,
}

/// One account's circuit breaker on this node.
#[derive(Clone, Debug)]
pub struct Circuit {
    state: CircuitState,
    consecutive_failures: u32,
    open_until: Option<Instant>,
    probe_in_flight: bool,
    failures_to_open: u32,
    open_for: Duration,
    unreported: Option<CircuitEvent>,
}

impl Circuit {
    pub fn new(failures_to_open: u32, open_for: Duration) -> Self {
        Self {
            state: CircuitState::Closed,
            consecutive_failures: 0,
            open_until: None,
            probe_in_flight: false,
            failures_to_open: failures_to_open.max(1),
            open_for,
            unreported: None,
        }
    }

    /// The state at `now` (an open circuit whose period ended is half-open).
    pub fn state(&mut self, now: Instant) -> CircuitState {
        self.refresh(now);
        self.state
    }

    fn refresh(&mut self, now: Instant) {
        if self.state == CircuitState::Open && self.open_until.is_some_and(|until| now >= until) {
            self.state = CircuitState::HalfOpen;
            self.probe_in_flight = false;
        }
    }

    /// May a call go out at `now`? In half-open state only one probe at a time.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refresh(now);
        match self.state {
            CircuitState::Closed => true,
            CircuitState::Open => false,
            CircuitState::HalfOpen if self.probe_in_flight => false,
            CircuitState::HalfOpen => {
                self.probe_in_flight = true;
                true
            }
        }
    }

    /// The outcome of a call: `healthy` when the provider answered (accepted or rejected).
    pub fn record(&mut self, healthy: bool, now: Instant, now_unix_ms: i64) {
        self.probe_in_flight = false;
        if healthy {
            if self.state != CircuitState::Closed {
                self.unreported = Some(CircuitEvent::Recovered);
            }
            self.state = CircuitState::Closed;
            self.consecutive_failures = 0;
            self.open_until = None;
            return;
        }
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        if self.state == CircuitState::HalfOpen
            || self.consecutive_failures >= self.failures_to_open
        {
            self.state = CircuitState::Open;
            self.open_until = Some(now + self.open_for);
            let open_ms = i64::try_from(self.open_for.as_millis()).unwrap_or(i64::MAX);
            self.unreported = Some(CircuitEvent::Opened {
                until_unix_ms: now_unix_ms.saturating_add(open_ms),
            });
        }
    }

    /// The change not reported yet, taken for a report.
    pub fn take_event(&mut self) -> Option<CircuitEvent> {
        self.unreported.take()
    }

    /// Puts back an event whose report failed, unless a newer one happened meanwhile.
    pub fn restore_event(&mut self, event: CircuitEvent) {
        if self.unreported.is_none() {
            self.unreported = Some(event);
        }
    }
}

/// The account's circuit as the cluster sees it (kept by its ChannelActor).
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterCircuit {
    open_until_unix_ms: i64,
}

impl ClusterCircuit {
    /// Applies a node's report.
    pub fn apply(&mut self, event: Option<CircuitEvent>) {
        match event {
            Some(CircuitEvent::Opened { until_unix_ms }) => {
                self.open_until_unix_ms = self.open_until_unix_ms.max(until_unix_ms);
            }
            Some(CircuitEvent::Recovered) => self.open_until_unix_ms = 0,
            None => {}
        }
    }

    /// Until when the account is open cluster-wide at `now_ms`; 0 = not open.
    pub fn open_until(&self, now_ms: i64) -> i64 {
        if self.open_until_unix_ms > now_ms {
            self.open_until_unix_ms
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_failures_and_probes_once() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let mut circuit = Circuit::new(3, Duration::from_millis(50));
        for _ in 0..2 {
            assert!(circuit.allow(at(0)));
            circuit.record(false, at(0), 1_000);
        }
        assert_eq!(circuit.state(at(0)), CircuitState::Closed);
        assert_eq!(circuit.take_event(), None);
        assert!(circuit.allow(at(0)));
        circuit.record(false, at(0), 1_000);
        // Open at once on the third failure, and the event for the cluster says until when.
        assert_eq!(circuit.state(at(0)), CircuitState::Open);
        assert!(!circuit.allow(at(10)));
        assert_eq!(
            circuit.take_event(),
            Some(CircuitEvent::Opened {
                until_unix_ms: 1_050
            })
        );
        assert_eq!(circuit.state(at(60)), CircuitState::HalfOpen);
        assert!(circuit.allow(at(60)), "one probe");
        assert!(!circuit.allow(at(60)), "only one probe at a time");
        circuit.record(false, at(60), 1_060);
        assert_eq!(circuit.state(at(60)), CircuitState::Open);
        assert!(circuit.allow(at(120)));
        circuit.record(true, at(120), 1_120);
        assert_eq!(circuit.state(at(120)), CircuitState::Closed);
        assert!(circuit.allow(at(120)) && circuit.allow(at(120)));
        // The latest change is what gets reported.
        assert_eq!(circuit.take_event(), Some(CircuitEvent::Recovered));
        circuit.restore_event(CircuitEvent::Recovered);
        assert_eq!(circuit.take_event(), Some(CircuitEvent::Recovered));
    }

    #[test]
    fn a_failed_report_never_hides_a_newer_change() {
        let now = Instant::now();
        let mut circuit = Circuit::new(1, Duration::from_secs(30));
        circuit.record(false, now, 0);
        let opened = circuit.take_event().expect("opened");
        circuit.record(true, now, 10);
        circuit.restore_event(opened);
        assert_eq!(circuit.take_event(), Some(CircuitEvent::Recovered));
    }

    #[test]
    fn the_cluster_view_keeps_the_latest_opening_until_a_recovery() {
        let mut cluster = ClusterCircuit::default();
        assert_eq!(cluster.open_until(0), 0);
        cluster.apply(Some(CircuitEvent::Opened {
            until_unix_ms: 5_000,
        }));
        cluster.apply(Some(CircuitEvent::Opened {
            until_unix_ms: 4_000,
        }));
        cluster.apply(None);
        assert_eq!(cluster.open_until(1_000), 5_000);
        assert_eq!(cluster.open_until(5_000), 0, "expired");
        cluster.apply(Some(CircuitEvent::Recovered));
        assert_eq!(cluster.open_until(1_000), 0);
    }
}
