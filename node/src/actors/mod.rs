//! # actors: one actor per active recipient (ractor)
//!
//! - [`recipient::RecipientActor`]: serialises everything that touches one person.
//! - [`directory::RecipientDirectory`]: activation on demand, passivation when idle, admission.
pub mod directory;
pub mod recipient;
