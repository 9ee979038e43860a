//! The node's shared, read-mostly context: what every actor and API handler may reach.
//!
//! Built once at node start and passed as `Arc<NodeContext>`. Holds handles only; it owns no
//! loop and spawns nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_proto::NodeId;

use crate::actors::directory::RecipientDirectory;
use crate::auth::Authenticator;
use crate::channels::Channels;
use crate::config::NodeConfig;
use crate::events::EventBus;
use crate::ownership::Ownership;
use crate::receipts::ReceiptStats;
use crate::timers::Timers;
use herald_store::Store;

pub struct NodeContext {
    pub node_id: NodeId,
    pub config: NodeConfig,
    pub store: Arc<dyn Store>,
    pub ownership: Arc<Ownership>,
    pub events: EventBus,
    pub auth: Authenticator,
    pub directory: RecipientDirectory,
    /// Provider accounts and chains, rate limits, tiers, warm-ups, block-rate breakers and
    /// circuits: the ChannelActors and their handles.
    pub channels: Channels,
    /// The in-memory schedule of this node's durable timers.
    pub timers: Timers,
    pub receipts_stats: ReceiptStats,
    /// Permits for messages in progress (see `max_messages_in_progress`).
    pub admission: Arc<tokio::sync::Semaphore>,
    /// Permits for receipts and consent changes at once: their own pool, so they are never
    /// starved by messages that hold `admission` while they wait (for a rate-limit slot, say).
    pub signal_admission: Arc<tokio::sync::Semaphore>,
}

impl NodeContext {
    pub fn route_timeout(&self) -> Duration {
        Duration::from_millis(self.config.route_timeout_ms)
    }

    pub fn idempotency_ttl(&self) -> Duration {
        Duration::from_secs(self.config.idempotency_ttl_s)
    }
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
