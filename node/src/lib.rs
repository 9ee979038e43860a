//! # herald-node: the data plane
//!
//! ## A `Send`, file by file
//! 1. [`api::delivery`] decodes the call, takes the tenant from the API key ([`auth`]),
//!    validates every field ([`validate`]; templates in [`content`]).
//! 2. [`router`] finds the owner of the recipient's partition ([`ownership`]) and hands the item
//!    to this node's intake or, in one batch per owner, over the peer's `Forward` stream
//!    ([`peers`]; the owner's side is [`api::forward`]).
//! 3. [`intake`], on the owner, accepts the message (the idempotency check and the message
//!    with its `accepted` event, one fenced write: acked means durable) and hands it to its
//!    recipient's actor ([`actors::directory`]).
//! 4. [`actors::recipient`] (the RecipientActor) runs it through the pure state machine in
//!    [`waterfall`] — each gate a pure function of [`policy::gates`], each reason a typed
//!    [`reason::Reason`] — and applies the effects: events to its log, durable timers
//!    ([`timers`]), and the long effects.
//! 5. [`channels`] answers the step's channel rules and its rate-limit slot (the account's
//!    ChannelActor, here or on its owner node) and calls the provider down the account chain
//!    (retries, circuits, failover) through an adapter of [`providers`].
//! 6. The actor's log ([`actors::recipient`]'s `log`) writes the outcome fenced, with the seq it
//!    expects, into [`herald_store`]; receipts come back through [`receipts`] (webhooks in
//!    [`http`]) and go the same way to the same actor.
//!
//! ## Layout
//! - [`server`]: the only module that sees every component: builds each from its config and
//!   the few handles it uses, binds the gRPC server, spawns the loops, shuts down gracefully.
//! - [`api`]: the tonic services (decode, authenticate, call a handle, map errors).
//! - [`router`], [`items`]: routing recipient items to their partition's owner.
//! - [`intake`]: the owner's side of routed items (acceptance, upserts, signals, resumes).
//! - [`actors`]: the RecipientActor and its directory (activation, passivation, admission).
//! - [`waterfall`]: a message's life as a pure state machine; [`reason`]: why, as values.
//! - [`policy`]: pure rules (consent, contact points, caps, quiet hours, keywords, block
//!   rate) and the [`policy::gates`].
//! - [`channels`]: provider accounts, ChannelActors (rate limits, tiers, warm-ups, breakers,
//!   circuits) and their handles, failover of a step's call.
//! - [`ownership`], [`membership`], [`peers`]: the partition table, leases and fences; the
//!   control plane link; node-to-node links (one connection per peer).
//! - [`timers`], [`receipts`], [`events`], [`watch`], [`http`], [`links`], [`content`],
//!   [`auth`], [`config`], [`validate`].
//!
//! Time: every decision on calendar time reads the injected clock
//! ([`herald_proto::clock`]); tests run a node on a manual one (see the test kit).
//! Modules form no import cycle: lower layers (policy, waterfall, channels, store) never import
//! the actors, the intake, the router or the server.

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
