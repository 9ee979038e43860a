//! The node's live event feed: every event an actor here records, after it is durable.
//!
//! Owns fan-out to `WatchMessages` subscribers. The event log in the store is the record; this
//! feed is best effort and bounded: a subscriber that falls behind by more than the buffer is
//! told it lagged. Must never block an actor.

use std::sync::Arc;

use herald_proto::TenantId;
use herald_proto::v1::Event;
use tokio::sync::broadcast;

#[derive(Clone, Debug)]
pub struct TenantEvent {
    pub tenant: TenantId,
    pub event: Event,
}

#[derive(Clone)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<TenantEvent>>,
}

impl EventBus {
    pub fn new(buffer: usize) -> Self {
        Self {
            sender: broadcast::channel(buffer.max(16)).0,
        }
    }

    pub fn publish(&self, tenant: &TenantId, events: &[Event]) {
        // Skip the clones when nobody watches (the common case under load).
        if self.sender.receiver_count() == 0 {
            return;
        }
        for event in events {
            let _ = self.sender.send(Arc::new(TenantEvent {
                tenant: tenant.clone(),
                event: event.clone(),
            }));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<TenantEvent>> {
        self.sender.subscribe()
    }
}
