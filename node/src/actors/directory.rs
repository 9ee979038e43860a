//! Recipient actor directory: activation on demand, passivation when idle.
//!
//! Owns the map `(tenant, recipient) → RecipientActor` of this node. A message for a recipient
//! without an actor spawns one; an actor with no queued work for `actor_idle_ms` is stopped
//! (its state lives in the store). The in-flight counter is raised under the map's lock before a
//! send, so passivation can never drop a message. Must never hold the lock across an await.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::Weak;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald_proto::{PartitionId, TenantId};
use parking_lot::Mutex;
use ractor::ActorRef;

use tracing::warn;

use super::recipient::{RecipientActor, RecipientArgs, RecipientMsg};
use crate::context::NodeContext;

pub type RecipientKey = (TenantId, String);

struct Entry {
    actor: ActorRef<RecipientMsg>,
    partition: PartitionId,
    activity: Arc<Activity>,
}

/// Shared between the directory and one actor.
pub struct Activity {
    pub in_flight: AtomicUsize,
    pub last_active_ms: AtomicU64,
}

pub struct RecipientDirectory {
    entries: Mutex<HashMap<RecipientKey, Entry>>,
    started: Instant,
}

impl Default for RecipientDirectory {
    fn default() -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            started: Instant::now(),
        }
    }
}

impl RecipientDirectory {
    pub fn elapsed_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    pub fn active(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether the recipient's actor has nothing queued or running (or is not active): a job
    /// handed to it now starts at once.
    pub fn is_idle(&self, key: &RecipientKey) -> bool {
        self.entries
            .lock()
            .get(key)
            .is_none_or(|entry| entry.activity.in_flight.load(Ordering::Acquire) == 0)
    }

    /// Hands `message` to the recipient's actor, activating it when needed.
    pub fn dispatch(
        &self,
        context: &Arc<NodeContext>,
        key: RecipientKey,
        partition: PartitionId,
        message: RecipientMsg,
    ) {
        let mut message = message;
        let mut entries = self.entries.lock();
        for _ in 0..2 {
            let entry = match entries.get(&key) {
                Some(entry) => entry,
                None => {
                    let activity = Arc::new(Activity {
                        in_flight: AtomicUsize::new(0),
                        last_active_ms: AtomicU64::new(self.elapsed_ms()),
                    });
                    let args = RecipientArgs {
                        context: Arc::downgrade(context),
                        tenant: key.0.clone(),
                        recipient_id: key.1.clone(),
                        activity: activity.clone(),
                    };
                    match ractor::ActorRuntime::spawn_instant(None, RecipientActor, args) {
                        Ok((actor, _join)) => {
                            entries.insert(
                                key.clone(),
                                Entry {
                                    actor,
                                    partition,
                                    activity,
                                },
                            );
                        }
                        Err(error) => {
                            warn!(%error, "recipient actor spawn failed");
                            return;
                        }
                    }
                    match entries.get(&key) {
                        Some(entry) => entry,
                        None => return,
                    }
                }
            };
            entry.activity.in_flight.fetch_add(1, Ordering::AcqRel);
            match entry.actor.send_message(message) {
                Ok(()) => return,
                Err(ractor::MessagingErr::SendErr(returned)) => {
                    // The actor stopped (crash or stop); drop it and activate a fresh one.
                    message = returned;
                    entries.remove(&key);
                }
                Err(error) => {
                    warn!(%error, "recipient actor unreachable");
                    entries.remove(&key);
                    return;
                }
            }
        }
    }

    /// Stops the actors of `partitions` and waits until their current work is done.
    pub async fn stop_partitions(&self, partitions: &HashSet<PartitionId>) {
        let stopping: Vec<ActorRef<RecipientMsg>> = {
            let mut entries = self.entries.lock();
            let keys: Vec<RecipientKey> = entries
                .iter()
                .filter(|(_, e)| partitions.contains(&e.partition))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| entries.remove(&k).map(|e| e.actor))
                .collect()
        };
        let waits = stopping.into_iter().map(|actor| async move {
            let _ = actor
                .stop_and_wait(
                    Some("partition moved".into()),
                    Some(Duration::from_secs(30)),
                )
                .await;
        });
        futures::future::join_all(waits).await;
    }

    /// Stops actors idle for longer than `idle`.
    pub fn passivate_idle(&self, idle: Duration) -> usize {
        let now = self.elapsed_ms();
        let idle_ms = idle.as_millis() as u64;
        let mut entries = self.entries.lock();
        let before = entries.len();
        // In place: no key is copied (this sweeps every active recipient several times a
        // second).
        entries.retain(|_, entry| {
            let idle = entry.activity.in_flight.load(Ordering::Acquire) == 0
                && now.saturating_sub(entry.activity.last_active_ms.load(Ordering::Relaxed))
                    >= idle_ms;
            if idle {
                entry.actor.stop(None);
            }
            !idle
        });
        before - entries.len()
    }

    /// Runs passivation until the context is gone.
    pub async fn run_passivation(context: Weak<NodeContext>, idle: Duration) {
        let mut tick = tokio::time::interval(
            idle.min(Duration::from_secs(1))
                .max(Duration::from_millis(50)),
        );
        loop {
            tick.tick().await;
            let Some(context) = context.upgrade() else {
                return;
            };
            context.directory.passivate_idle(idle);
        }
    }
}
