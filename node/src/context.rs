//! The node's shared, read-mostly context: what every actor and API handler may reach.
//!
//! Built once at node start and passed as `Arc<NodeContext>`. Holds handles only; it owns no
//! loop and spawns nothing.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_proto::NodeId;
use herald_proto::v1::Channel;

use crate::actors::directory::RecipientDirectory;
use crate::auth::Authenticator;
use crate::config::NodeConfig;
use crate::events::EventBus;
use crate::ownership::Ownership;
use crate::store::Store;
use herald_providers::Provider;

pub struct NodeContext {
    pub node_id: NodeId,
    pub config: NodeConfig,
    pub store: Arc<dyn Store>,
    pub ownership: Arc<Ownership>,
    pub events: EventBus,
    pub auth: Authenticator,
    pub directory: RecipientDirectory,
    pub push: Arc<dyn Provider>,
    pub email: Arc<dyn Provider>,
    pub sms: Arc<dyn Provider>,
    /// Permits for messages in progress (see `max_messages_in_progress`).
    pub admission: Arc<tokio::sync::Semaphore>,
    /// The sandbox provider, for its call counter (billing cross-checks in benchmarks).
    pub sandbox: Arc<herald_providers::sandbox::SandboxProvider>,
}

impl NodeContext {
    pub fn provider(&self, channel: Channel) -> Option<&Arc<dyn Provider>> {
        match channel {
            Channel::Push => Some(&self.push),
            Channel::Email => Some(&self.email),
            Channel::Sms => Some(&self.sms),
            Channel::Unspecified => None,
        }
    }

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
