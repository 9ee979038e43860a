//! # policy: the rules between a useful message and spam
//!
//! Pure decisions (no I/O, no store, no clock of their own: callers pass `now`), each in its own
//! module, applied by the `RecipientActor` in the order of ARCHITECTURE.md: consent →
//! suppression → preferences → frequency caps → quiet hours → the waterfall.
//!
//! - [`timezones`]: phone prefix → IANA time zones (the shipped libphonenumber data file).
//! - [`quiet_hours`]: the recipient's local sending window, DST-aware, several zones at once.
//! - [`consent`]: the consent ledger and what it allows.
//! - [`keywords`]: STOP / START / HELP in inbound texts.
//! - [`caps`]: sliding-window frequency caps and recipients' own limits.
//! - [`block_rate`]: the block/complaint/opt-out ratio breaker of a sender or campaign.
//!
//! Every decision explains itself: verdicts carry the rule and the values used, so events can
//! say exactly why a message was deferred, skipped or suppressed. Must never log contact points
//! or message text.

pub mod block_rate;
pub mod caps;
pub mod consent;
pub mod contact;
pub mod gates;
pub mod keywords;
pub mod quiet_hours;
pub mod timezones;
