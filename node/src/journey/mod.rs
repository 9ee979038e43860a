//! # journey: journeys' definitions and their lifecycle
//!
//! Owns what a journey is before anyone walks it: its definition, checked field by field
//! ([`spec`]), and its stored form with its lifecycle (ACTIVE ⇄ PAUSED → ARCHIVED) in
//! [`book`]. A definition never changes once stored; a lifecycle change is checked against the
//! state it leaves in the same atomic step as it is written, so two racing calls cannot both
//! apply.
//!
//! Must never write partition state (definitions are the tenant's, not a partition's) and
//! never keep a definition in memory as the truth: every read goes to the store, so all nodes
//! answer alike.
//!
//! Running journeys (entries, per-person state with durable waits, exits, the funnel per step)
//! is not built yet: see the README's "Journeys" section for what exists.

pub mod book;
pub mod spec;
