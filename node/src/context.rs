//! The context the rate limits and breakers bind to after construction (transitional: the
//! ChannelActor replaces both, and this module with them). Nothing else may use it.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use herald_proto::NodeId;

use crate::config::NodeConfig;
use crate::ownership::Ownership;

pub struct NodeContext {
    pub node_id: NodeId,
    pub config: NodeConfig,
    pub ownership: Arc<Ownership>,
    /// Cluster-wide provider rate limits (owner schedules and leased slots).
    pub rate_limits: crate::rate_limits::RateLimits,
    /// Block-rate breakers per campaign and sender (owner side and this node's cache).
    pub breakers: crate::breakers::Breakers,
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
