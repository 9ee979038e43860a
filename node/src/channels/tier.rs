//! # tier: an account's unique-recipients-per-24h limit (owner side, pure)
//!
//! Owns the count of distinct recipients an account messaged in any 24 hours (as WhatsApp's
//! 250 / 1k / 10k / 100k tiers): a recipient already messaged in the window is always admitted
//! (and its time refreshed); a new one only while the window holds fewer than the tier.
//!
//! Pure: callers pass `now` (calendar time from the injected clock, ms since the Unix epoch).
//! Must never see a recipient id: the key is a hash of tenant and recipient.

use std::collections::HashMap;

/// A tier's window: any 24 hours.
pub const TIER_WINDOW_MS: i64 = 24 * 3_600_000;

/// An owner's verdict on one more send under a quota (a tier or a warm-up day).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Admission {
    pub refused: bool,
    /// The quota: the tier, or today's warm-up quota.
    pub limit: u32,
    /// Distinct recipients in the window, or sends admitted today.
    pub count: u32,
}

#[derive(Clone, Debug)]
pub struct Tier {
    limit: u32,
    /// Recipient key → last admitted (ms).
    recipients: HashMap<String, i64>,
}

impl Tier {
    pub fn new(limit: u32) -> Self {
        Self {
            limit,
            recipients: HashMap::new(),
        }
    }

    /// May the account message `recipient` at `now_ms`?
    pub fn admit(&mut self, recipient: &str, now_ms: i64) -> Admission {
        self.recipients
            .retain(|_, last| now_ms - *last < TIER_WINDOW_MS);
        let known = self.recipients.contains_key(recipient);
        let admitted = known || (self.recipients.len() as u64) < u64::from(self.limit);
        if admitted {
            self.recipients.insert(recipient.to_owned(), now_ms);
        }
        Admission {
            refused: !admitted,
            limit: self.limit,
            count: u32::try_from(self.recipients.len()).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::clock::{Clock, ManualClock};
    use std::time::Duration;

    #[test]
    fn known_recipients_pass_new_ones_wait_for_the_window() {
        let clock = ManualClock::new(1_700_000_000_000);
        let mut tier = Tier::new(2);
        assert!(!tier.admit("a", clock.now_unix_ms()).refused);
        assert!(!tier.admit("b", clock.now_unix_ms()).refused);
        let third = tier.admit("c", clock.now_unix_ms());
        assert_eq!(
            third,
            Admission {
                refused: true,
                limit: 2,
                count: 2
            }
        );
        // A recipient of the window is always admitted.
        clock.advance(Duration::from_secs(3_600));
        assert!(!tier.admit("a", clock.now_unix_ms()).refused);
        // 24 h after `b` (but not `a`, refreshed an hour later) a new recipient fits.
        clock.advance(Duration::from_secs(23 * 3_600));
        let later = tier.admit("c", clock.now_unix_ms());
        assert!(!later.refused, "{later:?}");
        assert_eq!(later.count, 2, "a and c");
    }
}
