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
//! Running them: a person's way through the steps as pure decisions ([`flow`]), their stored
//! state and waits ([`person`]), the jobs their RecipientActor runs ([`walker`]), the pager
//! that fires due waits from the store ([`waits`]), the rounds that enter people matching a
//! segment ([`entries`]) and the path of a journey's messages into the intake ([`submit`]).

pub mod book;
pub mod entries;
pub mod flow;
pub mod person;
pub mod spec;
pub mod submit;
pub mod waits;
pub mod walker;
