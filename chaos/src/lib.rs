//! # herald-chaos: the judge of a run's history
//!
//! Owns the checks of ARCHITECTURE.md's invariants over what a cluster recorded: every acked
//! message's event log, as `GetMessage` returns it. Tests and chaos scenarios collect the logs;
//! [`history::check`] says whether the invariants held and counts what happened. It must never
//! talk to a cluster itself: it judges data, so the same judge serves every scenario.

pub mod history;
