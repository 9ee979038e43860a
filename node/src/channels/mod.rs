//! # channels: provider accounts, rate limits, tiers, warm-ups, breakers and circuits
//!
//! Owns everything per channel key, cluster-wide and on this node:
//!
//! - **ChannelActor** ([`actor`]): one ractor actor per key — a provider account, a tenant's
//!   quota on one (`account@tenant`), or a campaign (`campaign:<tenant>:<id>`) — on the owner
//!   of `partition_of("__channels", key)` ([`partition`]), fenced by that partition's lease like
//!   everything else: spawned on demand while this node holds the fence ([`registry`]), stopped
//!   when the partition is lost ([`Channels::stop_partitions`]). It owns the key's rate-limit
//!   schedule ([`schedule`]: slots as delays, never more than a horizon ahead; a new owner's
//!   first slot one horizon after it started), the unique-recipients tier ([`tier`]), the
//!   warm-up day's count ([`warmup`]), the sender's or campaign's block-rate breaker
//!   ([`breaker`]) and the cluster view of the account's circuit ([`circuit`]).
//! - **Handles** ([`handle`]): other components reach an actor only through a handle — its
//!   `ActorRef` when this node owns the key, a call on the `Forward.Channels` stream when
//!   another node does — retried against newer tables on `wrong_owner` or an unreachable owner.
//!   The node-local parts live beside them: leased slots ([`slots`]: small leases, no round trip
//!   per message; a slot is used at its time or dropped, never late), and breaker counts
//!   reported every 200 ms with the answers cached ([`report`]: senders never wait for a pause
//!   check).
//! - **Failover and circuits** ([`failover`], [`accounts`], [`circuit`]): a step's call down
//!   its account chain with retries, backoff and `Retry-After`; each account's circuit breaker
//!   on the node making the calls (N consecutive failures open it at once; one half-open probe
//!   after the open period). Nodes report their circuit openings (and recoveries) to the
//!   account's actor with their periodic report; its answer is the account's cluster-wide
//!   open-until, and a node treats an account the cluster reports open as open — so a provider
//!   outage one node saw is skipped by every node within a report interval, while the node that
//!   saw it skips it at once.
//!
//! Built from [`ChannelsConfig`] and a narrow [`ChannelsContext`] (node id, ownership, peers,
//! clock, shutdown) by [`ChannelsConfig::build`]; it owns its provider-event channel
//! ([`Channels::take_provider_events`]) and its one task (the report loop).
//!
//! Must never import the node's context, router, actors or config (the node config imports
//! this module's types), never grant a slot for a partition this node does not hold the fence
//! of, never let a limited send through without a slot, and never block a send on a breaker
//! round trip.

pub mod accounts;
pub mod actor;
pub mod breaker;
pub mod circuit;
pub mod config;
pub mod error;
pub mod failover;
pub mod handle;
pub mod keys;
pub mod registry;
pub mod report;
pub mod schedule;
pub mod service;
pub mod slots;
pub mod stats;
pub mod tier;
pub mod warmup;

#[cfg(test)]
mod tests;

pub use accounts::{Account, AccountStats};
pub use circuit::CircuitState;
pub use config::{
    ChainsConfig, ChannelRules, ChannelsConfig, FailoverConfig, ProviderAccountConfig,
    SANDBOX_ACCOUNT,
};
pub use error::Error;
pub use failover::{Delivery, StepCall};
pub use keys::{campaign_key, partition, sender_key, tenant_key};
pub use report::REPORT_INTERVAL;
pub use schedule::HORIZON;
pub use service::{Channels, ChannelsContext};
pub use stats::ChannelStats;
pub use tier::Admission;
