//! # stats: the counters of this node's channels, for `/metrics` and tests
//!
//! Owns plain atomic counters; incremented by the actors (owner side) and the handles (sender
//! side) of this node. Must never be used for a decision.

use std::sync::atomic::AtomicU64;

#[derive(Debug, Default)]
pub struct ChannelStats {
    /// Block-rate breakers that paused on this node's actors.
    pub pauses: AtomicU64,
    /// Sends deferred because a breaker was paused.
    pub deferred_sends: AtomicU64,
    /// Slots granted by this node's actors.
    pub slots_granted: AtomicU64,
    /// Slots used by this node's senders.
    pub slots_used: AtomicU64,
    /// Slots dropped because the sender got to them too late.
    pub slots_dropped: AtomicU64,
    /// Calls made to ChannelActors on other nodes.
    pub remote_calls: AtomicU64,
}
