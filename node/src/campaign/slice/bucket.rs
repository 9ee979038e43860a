//! The slice's share of the node's pace: a token bucket whose rate the node's runner sets
//! (its share of the campaign's pace, split among its slices by what each has ready).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::CLOCK_POLL;

/// The slice's share of the node's pace: a token bucket the runner sets the rate of.
pub struct Bucket {
    state: Mutex<BucketState>,
}

struct BucketState {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            state: Mutex::new(BucketState {
                rate: 0.0,
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }
}

impl Bucket {
    fn refill(state: &mut BucketState) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.at).as_secs_f64();
        state.at = now;
        // At most a second of tokens (and one): a slice that waited a moment loses little, and
        // the node's thousands of slices cannot burst together.
        let cap = state.rate.max(1.0);
        state.tokens = (state.tokens + elapsed * state.rate).min(cap);
    }

    /// Sets the rate (messages per second) from now on.
    pub fn set_rate(&self, rate: f64) {
        let mut state = self.state.lock();
        Self::refill(&mut state);
        state.rate = rate.max(0.0);
    }

    /// Takes up to `wanted` whole tokens; returns how many.
    pub(super) fn take(&self, wanted: usize) -> usize {
        let mut state = self.state.lock();
        Self::refill(&mut state);
        let whole = state.tokens.floor().max(0.0) as usize;
        let taken = whole.min(wanted);
        state.tokens -= taken as f64;
        taken
    }

    /// Gives back tokens taken and not used.
    pub(super) fn give_back(&self, tokens: usize) {
        self.state.lock().tokens += tokens as f64;
    }

    /// How long until a whole token is there.
    pub(super) fn wait(&self) -> Duration {
        let mut state = self.state.lock();
        Self::refill(&mut state);
        if state.rate <= 0.0 {
            return CLOCK_POLL;
        }
        let missing = (1.0 - state.tokens).max(0.0);
        Duration::from_secs_f64(missing / state.rate).clamp(Duration::from_millis(1), CLOCK_POLL)
    }
}
