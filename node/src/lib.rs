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
//!   control plane link (joins, heartbeats with campaign progress, tables and campaign
//!   assignments); node-to-node links (one connection per peer).
//! - [`campaign`]: the campaigns this node runs — a CampaignActor per running campaign ×
//!   served partition (its slice), the pure plan of a member, a campaign message's books
//!   (funnel and credits written with its events); [`control_link`]: campaign commands to the
//!   control plane's leader.
//! - [`timers`], [`receipts`], [`events`], [`watch`], [`http`], [`links`], [`content`],
//!   [`auth`], [`config`], [`validate`].
//!
//! Time: every decision on calendar time reads the injected clock
//! ([`herald_proto::clock`]); tests run a node on a manual one (see the test kit).
//! Modules form no import cycle: lower layers (policy, waterfall, channels, store) never import
//! the actors, the intake, the router or the server.
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
pub mod admission;
pub mod api;
pub mod auth;
pub mod campaign;
pub mod channels;
pub mod config;
pub mod contact_index;
pub mod content;
pub mod control_link;

pub mod events;
pub mod http;
pub mod intake;
pub mod items;
pub mod journey;
pub mod links;
pub mod membership;
pub mod metrics;
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
