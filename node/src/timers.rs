//! # timers: durable waits, fired on time by the partition's owner
//!
//! The durable part of a timer is the `waiting` (or `deferred`) event in the message's log,
//! with its `due_unix_ms`, written fenced with the step's outcome; the message stays in its
//! partition's active set while it waits. This module holds only the in-memory schedule of the
//! timers of this node's partitions: one task with a heap, not a task per timer, on the node's
//! [`Clock`](herald_proto::clock::Clock) (tests advance a manual one).
//!
//! A takeover rebuilds the schedule without any timer-specific read: the new owner resumes
//! every active message of the partitions it acquired, and the `RecipientActor` reschedules
//! those still waiting (or times them out at once when they are overdue).
//!
//! A timer firing never acts by itself: it hands the message to its [`TimerTarget`] (the
//! recipients' directory), whose actor re-reads the log and decides (a receipt may have ended
//! the wait; a stale or duplicate timer finds nothing to do). Timers of partitions this node no
//! longer owns are dropped when they fire. Must never write to the store.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use herald_proto::clock::SharedClock;
use herald_proto::v1::StoredMessage;
use herald_store::Fence;
use tokio::sync::{mpsc, watch};

use crate::auth::Tenant;
use crate::ownership::Ownership;

/// A message to re-run at `due_unix_ms`.
pub struct TimerEntry {
    pub due_unix_ms: i64,
    pub tenant: Arc<Tenant>,
    pub message: Arc<StoredMessage>,
    pub fence: Fence,
}

/// Who runs a message whose timer fired.
pub trait TimerTarget: Send + Sync + 'static {
    /// Runs `entry`'s message again (it must not block: admission may wait, the schedule not).
    fn due(&self, entry: TimerEntry);
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

/// Handle to the node's timer schedule (cheap to clone).
#[derive(Clone)]
pub struct Timers {
    queue: mpsc::UnboundedSender<TimerEntry>,
    stats: Arc<TimerStats>,
}

/// The schedule's task, started once its target exists ([`TimerLoop::run`]).
pub struct TimerLoop {
    queue: mpsc::UnboundedReceiver<TimerEntry>,
    stats: Arc<TimerStats>,
    clock: SharedClock,
}

impl Timers {
    /// The handle, and the loop to run (the loop needs the target, which needs the handle).
    pub fn new(clock: SharedClock) -> (Timers, TimerLoop) {
        let (queue, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(TimerStats::default());
        (
            Timers {
                queue,
                stats: stats.clone(),
            },
            TimerLoop {
                queue: rx,
                stats,
                clock,
            },
        )
    }

    pub fn schedule(&self, entry: TimerEntry) {
        self.stats.scheduled.fetch_add(1, Ordering::Relaxed);
        // Closed only at shutdown; the next owner resumes the message from its log.
        let _ = self.queue.send(entry);
    }

    pub fn stats(&self) -> &Arc<TimerStats> {
        &self.stats
    }

    /// Timers scheduled and not yet fired.
    pub fn pending(&self) -> u64 {
        let scheduled = self.stats.scheduled.load(Ordering::Relaxed);
        let done = self.stats.fired.load(Ordering::Relaxed);
        scheduled.saturating_sub(done)
    }
}

/// Without a due timer, the loop still looks at the clock this often (a manual clock may
/// jump; a real one never needs it).
const IDLE_UNIX_MS: i64 = 3_600_000;

impl TimerLoop {
    /// Runs the schedule until `shutdown`.
    pub async fn run(
        mut self,
        ownership: Arc<Ownership>,
        target: Arc<dyn TimerTarget>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut heap: BinaryHeap<Reverse<(i64, u64)>> = BinaryHeap::new();
        let mut entries: HashMap<u64, TimerEntry> = HashMap::new();
        let mut next_id = 0u64;
        loop {
            let now = self.clock.now_unix_ms();
            while let Some(Reverse((due, id))) = heap.peek().copied() {
                if due > now {
                    break;
                }
                heap.pop();
                if let Some(entry) = entries.remove(&id) {
                    self.stats.fired.fetch_add(1, Ordering::Relaxed);
                    self.stats
                        .max_late_ms
                        .fetch_max(now.saturating_sub(due), Ordering::Relaxed);
                    let owned = ownership
                        .fence(entry.fence.partition)
                        .is_some_and(|fence| fence.epoch == entry.fence.epoch);
                    if owned {
                        target.due(entry);
                    } else {
                        self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            let wake_at = heap
                .peek()
                .map(|Reverse((due, _))| *due)
                .unwrap_or(now.saturating_add(IDLE_UNIX_MS));
            tokio::select! {
                received = self.queue.recv() => match received {
                    Some(entry) => {
                        next_id += 1;
                        heap.push(Reverse((entry.due_unix_ms, next_id)));
                        entries.insert(next_id, entry);
                    }
                    None => return,
                },
                _ = self.clock.sleep_until(wake_at) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
