//! # directory: recipient actors, activated on demand, passivated when idle
//!
//! Owns the map `(tenant, recipient) → RecipientActor` of this node and the admission of work
//! into it: at most `messages` messages and `signals` receipts or consent changes in progress
//! (each its own pool, so receipts are never starved by messages waiting for slots). A job for
//! a recipient without an actor spawns one; an actor with nothing queued for `idle` is stopped
//! (its state lives in the store). The in-flight counter is raised under the map's lock before
//! a send, so passivation can never drop a job, and [`RecipientDirectory::dispatch_if_idle`]
//! hands a job over only to an actor with nothing queued or running, in one step.
//!
//! Must never hold the lock across an await.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald_proto::{PartitionId, TenantId};
use parking_lot::Mutex;
use ractor::ActorRef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tracing::warn;

use super::recipient::{Activity, Job, RecipientActor, RecipientArgs, RecipientEnv, RecipientMsg};
use crate::timers::{TimerEntry, TimerTarget};

pub type RecipientKey = (TenantId, String);

struct Entry {
    actor: ActorRef<RecipientMsg>,
    partition: PartitionId,
    activity: Arc<Activity>,
}

/// How much work may be in progress on this node at once.
#[derive(Clone, Copy, Debug)]
pub struct Admission {
    /// Messages (new, resumed, woken by timers).
    pub messages: usize,
    /// Receipts and consent changes.
    pub signals: usize,
}

pub struct RecipientDirectory {
    entries: Mutex<HashMap<RecipientKey, Entry>>,
    started: Instant,
    env: Arc<RecipientEnv>,
    messages: Arc<Semaphore>,
    signals: Arc<Semaphore>,
}

impl RecipientDirectory {
    pub fn new(env: Arc<RecipientEnv>, admission: Admission) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(HashMap::new()),
            started: Instant::now(),
            env,
            messages: Arc::new(Semaphore::new(admission.messages.max(1))),
            signals: Arc::new(Semaphore::new(admission.signals.max(1))),
        })
    }

    /// What the actors use (the node's receipt counters, its channels…).
    pub fn env(&self) -> &Arc<RecipientEnv> {
        &self.env
    }

    /// A permit for one more message in progress; waits while the node is saturated. `None`
    /// when the node is shutting down.
    pub async fn admit(&self) -> Option<OwnedSemaphorePermit> {
        self.messages.clone().acquire_owned().await.ok()
    }

    /// `n` permits at once, one per message (fair: a batch waits its turn whole, so batches
    /// waiting for permits never hold some and starve each other). `None` when shutting down.
    pub async fn admit_many(&self, n: usize) -> Option<Vec<OwnedSemaphorePermit>> {
        if n == 0 {
            return Some(Vec::new());
        }
        let n32 = u32::try_from(n).ok()?;
        let mut all = self.messages.clone().acquire_many_owned(n32).await.ok()?;
        let mut permits = Vec::with_capacity(n);
        for _ in 1..n {
            permits.push(all.split(1)?);
        }
        permits.push(all);
        Some(permits)
    }

    /// A permit for one more receipt or consent change in progress.
    pub async fn admit_signal(&self) -> Option<OwnedSemaphorePermit> {
        self.signals.clone().acquire_owned().await.ok()
    }

    pub fn active(&self) -> usize {
        self.entries.lock().len()
    }

    /// Hands `message` to the recipient's actor, activating it when needed.
    pub fn dispatch(&self, key: RecipientKey, partition: PartitionId, message: RecipientMsg) {
        let mut entries = self.entries.lock();
        self.send_locked(&mut entries, key, partition, message);
    }

    /// Hands `message` over only when the recipient's actor has nothing queued or running (or
    /// is not active): then it starts at once, before any job dispatched after it. Gives the
    /// message back otherwise.
    pub fn dispatch_if_idle(
        &self,
        key: RecipientKey,
        partition: PartitionId,
        message: RecipientMsg,
    ) -> Result<(), RecipientMsg> {
        let mut entries = self.entries.lock();
        let busy = entries
            .get(&key)
            .is_some_and(|entry| entry.activity.in_flight.load(Ordering::Acquire) > 0);
        if busy {
            return Err(message);
        }
        self.send_locked(&mut entries, key, partition, message);
        Ok(())
    }

    fn send_locked(
        &self,
        entries: &mut HashMap<RecipientKey, Entry>,
        key: RecipientKey,
        partition: PartitionId,
        message: RecipientMsg,
    ) {
        let mut message = message;
        for _ in 0..2 {
            let entry = match entries.get(&key) {
                Some(entry) => entry,
                None => {
                    let activity = Arc::new(Activity::new(self.started));
                    let args = RecipientArgs {
                        env: self.env.clone(),
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

    /// Stops the actors of `partitions` once their current job is done (a planned move
    /// finishes in-flight work; what is queued resumes on the new owner from the log).
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
        let now = self.started.elapsed().as_millis() as u64;
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

    /// Runs passivation until `shutdown`.
    pub async fn run_passivation(
        self: Arc<Self>,
        idle: Duration,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(
            idle.min(Duration::from_secs(1))
                .max(Duration::from_millis(50)),
        );
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.passivate_idle(idle);
        }
    }

    /// Queues a run of `message` from its log (a resume, a timer), once admitted.
    pub fn run_from_log(self: &Arc<Self>, entry: TimerEntry) {
        let directory = self.clone();
        tokio::spawn(async move {
            let Some(permit) = directory.admit().await else {
                return;
            };
            let key = (
                entry.tenant.id.clone(),
                entry
                    .message
                    .request
                    .as_ref()
                    .map(|r| r.recipient_id.clone())
                    .unwrap_or_default(),
            );
            let partition = entry.fence.partition;
            directory.dispatch(
                key,
                partition,
                RecipientMsg::Run(Box::new(Job {
                    tenant: entry.tenant,
                    message: entry.message,
                    fence: entry.fence,
                    history: None,
                    recipient: None,
                    permit,
                    accept: None,
                })),
            );
        });
    }
}

/// A fired timer runs its message again (admission may wait; the schedule does not).
pub struct TimerRuns(pub Arc<RecipientDirectory>);

impl TimerTarget for TimerRuns {
    fn due(&self, entry: TimerEntry) {
        self.0.run_from_log(entry);
    }
}
