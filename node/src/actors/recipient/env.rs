//! What every RecipientActor of a node uses: built once by the server and shared.
//!
//! Owns nothing but handles: the clock, the store, the event feed, the timer schedule, the
//! provider accounts' handle, the receipt counters, and the settings of runs. Must never grow
//! a handle an actor does not use (it is the actor's narrow context, not the node's).

use std::sync::Arc;
use std::time::Duration;

use herald_proto::NodeId;
use herald_proto::clock::SharedClock;
use herald_store::Store;

use crate::channels::Channels;
use crate::events::EventBus;
use crate::journey::walker::JourneyEnv;
use crate::links::LinkSigner;
use crate::receipts::index::ReceiptStats;
use crate::timers::Timers;

pub struct RecipientEnv {
    pub node_id: NodeId,
    pub clock: SharedClock,
    pub store: Arc<dyn Store>,
    pub events: EventBus,
    pub timers: Timers,
    pub channels: Channels,
    pub receipts: Arc<ReceiptStats>,
    /// What the person's journey jobs use.
    pub journeys: JourneyEnv,
    pub settings: RecipientSettings,
}

/// How runs behave (from the node config).
pub struct RecipientSettings {
    pub machine: crate::waterfall::Settings,
    /// How long a provider's message id stays matched to its attempt.
    pub receipt_index_ttl: Duration,
    /// One-click unsubscribe links for emails, when the node has a public URL.
    pub links: Option<LinkSigner>,
    /// Messenger-style session windows per account (hours), from `[channel_rules]`.
    pub session_windows: std::collections::BTreeMap<String, u32>,
}
