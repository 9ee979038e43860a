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

/// Two feeds: every event, and terminal events only (most watchers want only outcomes, and a
/// separate feed keeps them from lagging behind the 5–7 events of each message's life).
#[derive(Clone)]
pub struct EventBus {
    all: broadcast::Sender<Arc<TenantEvent>>,
    terminal: broadcast::Sender<Arc<TenantEvent>>,
}

impl EventBus {
    pub fn new(buffer: usize) -> Self {
        Self {
            all: broadcast::channel(buffer.max(16)).0,
            terminal: broadcast::channel(buffer.max(16)).0,
        }
    }

    pub fn publish(&self, tenant: &TenantId, events: &[Event]) {
        let all = self.all.receiver_count() > 0;
        let terminal = self.terminal.receiver_count() > 0;
        // Skip the clones when nobody watches (the common case under load).
        if !all && !terminal {
            return;
        }
        for event in events {
            let is_terminal = crate::waterfall::is_terminal(event.status());
            if !all && !is_terminal {
                continue;
            }
            let item = Arc::new(TenantEvent {
                tenant: tenant.clone(),
                event: event.clone(),
            });
            if terminal && is_terminal {
                let _ = self.terminal.send(item.clone());
            }
            if all {
                let _ = self.all.send(item);
            }
        }
    }

    /// Copies of the events some subscriber would receive (none when nobody watches).
    pub fn wanted(&self, events: &[Event]) -> Vec<Event> {
        let all = self.all.receiver_count() > 0;
        let terminal = self.terminal.receiver_count() > 0;
        if !all && !terminal {
            return Vec::new();
        }
        events
            .iter()
            .filter(|e| all || crate::waterfall::is_terminal(e.status()))
            .cloned()
            .collect()
    }

    pub fn subscribe(&self, terminal_only: bool) -> broadcast::Receiver<Arc<TenantEvent>> {
        if terminal_only {
            self.terminal.subscribe()
        } else {
            self.all.subscribe()
        }
    }
}
