//! # herald-node: the data plane
//!
//! A request's path, in six files: [`api`] (decode, authenticate, validate) → [`router`]
//! (local or forwarded to the partition's owner) → [`actors::recipient`] (the RecipientActor:
//! policy and the waterfall) → [`providers`] (sandbox, and real adapters), with [`store`] beside
//! them and [`ownership`] deciding which partitions this node may write.
//!
//! ## Layout
//! - [`server`]: assembles a node (gRPC server, loops) and shuts it down gracefully.
//! - [`membership`]: joins the control plane, heartbeats, follows the partition table.
//! - [`ownership`]: the table, partition leases and fences.
//! - [`peers`]: node-to-node links (one connection per peer; Forward and Channels streams).
//! - [`actors`]: RecipientActor and its directory (activation, passivation).
//! - [`channels`]: provider accounts and chains, the ChannelActors (rate limits, tiers,
//!   warm-ups, block-rate breakers, circuits) and their handles, failover of a step's call.
//! - [`timers`]: the in-memory schedule of durable waits (the durable part is in the log).
//! - [`receipts`]: matching receipts and engagement reports to attempts.
//! - [`http`]: provider callbacks and `/metrics`.
//! - [`validate`], [`auth`], [`config`], [`events`], [`watch`].
//!
//! ## Failpoints
//! With the `failpoints` feature (the `fail` crate; compiled out by default) the node evaluates
//! the points below, in the windows of a message's life and of partition ownership; the feature
//! also turns on the store's (`store::get_message`, `store::before_commit`,
//! `store::after_commit`: see `herald_store`'s "Failpoints"). Configure them with `fail::cfg`
//! in-process, or `FAILPOINTS=name=actions;…` for a `herald` binary built with its
//! `failpoints` feature (it reads the variable at start). Actions: `return` as listed; `sleep(ms)`
//! and `pause` stall the task at the point; `panic` panics there — and in the `herald` binary
//! every failpoint's `panic` ends the process at once with exit code 137, as a `kill -9` would
//! (its panic hook: a store point panics on a blocking thread, which alone would end nothing).
//! A count (`1*return`, `1*panic`) fires the action on the first hits only.
//! - `recipient::after_intent` (`actors::recipient::walk`): the step's attempt intent is
//!   durable, the provider is not called yet. `return`: the process exits (137).
//! - `recipient::before_outcome` (same place): the provider answered, its outcome is not
//!   recorded yet. `return`: the process exits (137).
//! - `ownership::renew_leases` ([`ownership::RENEW_LEASES`]): in the lease loop's renew tick
//!   while leases are held, before the store is asked. `return`: this renewal is skipped, as if
//!   it had failed.
//! - `ownership::hand_off` ([`ownership::HAND_OFF`]): in a planned hand-off (the table moved
//!   partitions away, or the node is shutting down), after the partitions' actors stopped and
//!   before their leases are released. `return`: the release is skipped; the next owner waits
//!   for the leases to expire.
//!
//! The root package's `tests/failpoints.rs` makes a node of a real cluster die in each window
//! and checks that nothing acked is lost and no provider call is repeated unrecorded.

pub mod actors;
pub mod api;
pub mod auth;
pub mod channels;
pub mod config;
pub mod content;

pub mod events;
pub mod http;
pub mod intake;
pub mod items;
pub mod links;
pub mod membership;
pub mod ownership;
pub mod peers;
pub mod policy;
pub mod reason;
pub mod receipts;
pub use herald_providers as providers;
pub mod router;
pub mod server;

pub mod timers;
pub mod validate;
pub mod watch;
pub mod waterfall;
