//! # actors: one actor per active recipient (ractor)
//!
//! - [`recipient::RecipientActor`]: serialises everything that touches one person.
//! - [`directory::RecipientDirectory`]: activation on demand, passivation when idle.
//! - [`waterfall`]: the pure state machine rebuilt from a message's event log.

pub mod directory;
pub mod recipient;
