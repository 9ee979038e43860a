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
