//! # registry: the ChannelActors this node hosts
//!
//! Owns the map `key → ChannelActor` of this node: an actor is spawned on demand, only while
//! this node holds the fence of the key's partition (checked under the map's lock, so a
//! partition being lost never gets a new actor after its stop), replaced when the fence's
//! epoch changed, and stopped with its partition ([`Registry::stop_partitions`], called by the
//! node's partition lifecycle before the lease is released). Must never hold the lock across an
//! await.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use herald_proto::PartitionId;
use herald_proto::clock::SharedClock;
use herald_store::Fence;
use parking_lot::Mutex;
use ractor::ActorRef;
use tracing::warn;

use super::actor::{ChannelActor, ChannelArgs, ChannelMsg};
use super::config::Rules;
use super::error::Error;
use super::stats::ChannelStats;
use crate::ownership::Ownership;

/// How long a stopping partition waits for its actors' current messages.
const STOP_WAIT: Duration = Duration::from_secs(5);

struct Entry {
    actor: ActorRef<ChannelMsg>,
    fence: Fence,
}

pub struct Registry {
    actors: Mutex<HashMap<String, Entry>>,
    ownership: Arc<Ownership>,
    rules: Arc<Rules>,
    clock: SharedClock,
    stats: Arc<ChannelStats>,
}

impl Registry {
    pub fn new(
        ownership: Arc<Ownership>,
        rules: Arc<Rules>,
        clock: SharedClock,
        stats: Arc<ChannelStats>,
    ) -> Self {
        Self {
            actors: Mutex::new(HashMap::new()),
            ownership,
            rules,
            clock,
            stats,
        }
    }

    /// The actor of `key` under `fence`, spawned if needed.
    pub fn actor(&self, key: &str, fence: Fence) -> Result<ActorRef<ChannelMsg>, Error> {
        let mut actors = self.actors.lock();
        if let Some(entry) = actors.get(key) {
            if entry.fence == fence {
                return Ok(entry.actor.clone());
            }
            // Spawned under another epoch: the partition moved away and back since.
            entry.actor.stop(Some("epoch changed".into()));
            actors.remove(key);
        }
        // Under the lock: `stop_partitions` runs after the fence is withdrawn, so it either
        // finds this actor or this check fails.
        if self.ownership.fence(fence.partition) != Some(fence) {
            return Err(Error::Unavailable(format!(
                "partition {} is not served here at epoch {}",
                fence.partition, fence.epoch
            )));
        }
        let args = ChannelArgs {
            key: key.to_owned(),
            rules: self.rules.for_key(key),
            fence,
            clock: self.clock.clone(),
            stats: self.stats.clone(),
        };
        let (actor, _join) = ractor::ActorRuntime::spawn_instant(None, ChannelActor, args)
            .map_err(|e| Error::Actor {
                key: key.to_owned(),
                reason: format!("spawn: {e}"),
            })?;
        actors.insert(
            key.to_owned(),
            Entry {
                actor: actor.clone(),
                fence,
            },
        );
        Ok(actor)
    }

    /// Forgets `actor` (it stopped or failed), so the next call spawns a fresh one.
    pub fn forget(&self, key: &str, actor: &ActorRef<ChannelMsg>) {
        let mut actors = self.actors.lock();
        if actors
            .get(key)
            .is_some_and(|e| e.actor.get_id() == actor.get_id())
        {
            actors.remove(key);
        }
    }

    /// Keys with an actor here (for tests and diagnostics).
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.actors.lock().keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Stops the actors of `partitions` and waits for their current message.
    pub async fn stop_partitions(&self, partitions: &HashSet<PartitionId>) {
        let stopping: Vec<(String, ActorRef<ChannelMsg>)> = {
            let mut actors = self.actors.lock();
            let keys: Vec<String> = actors
                .iter()
                .filter(|(_, e)| partitions.contains(&e.fence.partition))
                .map(|(k, _)| k.clone())
                .collect();
            keys.into_iter()
                .filter_map(|k| actors.remove(&k).map(|e| (k, e.actor)))
                .collect()
        };
        let waits = stopping.into_iter().map(|(key, actor)| async move {
            if let Err(error) = actor
                .stop_and_wait(Some("partition moved".into()), Some(STOP_WAIT))
                .await
            {
                warn!(%key, %error, "channel actor did not stop in time");
            }
        });
        futures::future::join_all(waits).await;
    }
}
