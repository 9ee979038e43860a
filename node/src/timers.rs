//! # timers: durable waits, fired on time by the partition's owner
//!
//! The durable part of a timer is the `waiting` event in the message's log (with its
//! `due_unix_ms`), written fenced together with the step's outcome; the message stays in its
//! partition's active set while it waits. This module holds only the in-memory schedule of the
//! timers of this node's partitions: one task with a heap, not a task per timer.
//!
//! A takeover rebuilds the schedule without any timer-specific read: the new owner resumes
//! every active message of the partitions it acquired, and the `RecipientActor` reschedules
//! those still waiting (or times them out at once when they are overdue).
//!
//! A timer firing never acts by itself: it queues a run of the message on its actor, which
//! re-reads the log and decides (a receipt may have ended the wait; a stale or duplicate timer
//! finds nothing to do). Timers of partitions this node no longer owns are dropped when they
//! fire. Must never write to the store.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_proto::v1::StoredMessage;
use tokio::sync::{mpsc, watch};

use crate::auth::Tenant;
use crate::context::{NodeContext, now_unix_ms};
use crate::router;
use herald_store::Fence;

/// A message to re-run at `due_unix_ms`.
pub struct TimerEntry {
    pub due_unix_ms: i64,
    pub tenant: Arc<Tenant>,
    pub message: Arc<StoredMessage>,
    pub fence: Fence,
}

#[derive(Default)]
pub struct TimerStats {
    pub scheduled: AtomicU64,
    pub fired: AtomicU64,
    /// Fired for a partition this node no longer owns (the new owner has its own).
    pub dropped: AtomicU64,
    /// Largest delay between due time and firing seen so far, in ms.
    pub max_late_ms: AtomicI64,
    /// Steps that timed out waiting for their success condition (recorded by the actors).
    pub timeouts: AtomicU64,
}

/// Handle to the node's timer schedule.
pub struct Timers {
    queue: mpsc::UnboundedSender<TimerEntry>,
    pub stats: Arc<TimerStats>,
}

impl Timers {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<TimerEntry>) {
        let (queue, rx) = mpsc::unbounded_channel();
        (
            Self {
                queue,
                stats: Arc::default(),
            },
            rx,
        )
    }

    pub fn schedule(&self, entry: TimerEntry) {
        self.stats.scheduled.fetch_add(1, Ordering::Relaxed);
        // Closed only at shutdown; the next owner resumes the message from its log.
        let _ = self.queue.send(entry);
    }

    /// Timers scheduled and not yet fired.
    pub fn pending(&self) -> u64 {
        let scheduled = self.stats.scheduled.load(Ordering::Relaxed);
        let done = self.stats.fired.load(Ordering::Relaxed);
        scheduled.saturating_sub(done)
    }
}

/// Runs the schedule until `shutdown` or until the node's context is gone.
pub async fn run(
    context: Weak<NodeContext>,
    mut queue: mpsc::UnboundedReceiver<TimerEntry>,
    stats: Arc<TimerStats>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut heap: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
    let mut entries: HashMap<u64, TimerEntry> = HashMap::new();
    let mut next_id = 0u64;
    loop {
        let now = now_unix_ms();
        while let Some(Reverse((due, id))) = heap.peek().copied() {
            if due > now {
                break;
            }
            heap.pop();
            if let Some(entry) = entries.remove(&id) {
                stats.fired.fetch_add(1, Ordering::Relaxed);
                stats
                    .max_late_ms
                    .fetch_max(now.saturating_sub(due), Ordering::Relaxed);
                let Some(context) = context.upgrade() else {
                    return;
                };
                fire(&context, entry, &stats);
            }
        }
        let sleep = heap
            .peek()
            .map(|Reverse((due, _))| Duration::from_millis(due.saturating_sub(now).max(1) as u64))
            .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            received = queue.recv() => match received {
                Some(entry) => {
                    next_id += 1;
                    heap.push(Reverse((entry.due_unix_ms, next_id)));
                    entries.insert(next_id, entry);
                }
                None => return,
            },
            _ = tokio::time::sleep(sleep) => {}
            _ = shutdown.changed() => return,
        }
    }
}

fn fire(context: &Arc<NodeContext>, entry: TimerEntry, stats: &TimerStats) {
    let owned = context
        .ownership
        .fence(entry.fence.partition)
        .is_some_and(|fence| fence.epoch == entry.fence.epoch);
    if !owned {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let context = context.clone();
    // Admission may make this wait; the schedule must not.
    tokio::spawn(async move {
        let Ok(permit) = context.admission.clone().acquire_owned().await else {
            return;
        };
        router::dispatch(
            &context,
            entry.tenant,
            entry.message,
            entry.fence,
            None,
            None,
            permit,
            None,
        );
    });
}
