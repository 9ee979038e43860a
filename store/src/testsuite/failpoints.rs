//! # testsuite::failpoints: the store's failpoints, on every backend (feature `failpoints`)
//!
//! Owns one case per failpoint (and one for a stalled commit, one for an append with tallies
//! whose outcome was lost), run on a backend by [`crate::failpoint_suite!`] as the backend
//! suite is by [`crate::backend_suite!`]. A case configures the point itself, inside a
//! [`Scenario`]: the failpoint registry is process-wide, so the cases of one process take
//! turns, and every point is removed when a case ends, also when it panics.
//!
//! It must never run in a test binary whose other tests use a store: a configured point would
//! hit them too. This crate runs it in its own binary (`tests/failpoints.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_proto::MessageId;
use herald_proto::v1::EventKind;

use super::{
    LONG, accept, accepted, append, append_tallied, event, event_kinds, fence, incr, message,
    tenant,
};
use crate::failpoint::{AFTER_COMMIT, ALL, BEFORE_COMMIT, GET_MESSAGE};
use crate::{Error, Store, Tally, WriteOutcome};

/// A case's turn with the failpoints: held for the whole case. Dropping it (at the end, or
/// while a case panics) removes every store failpoint, which also releases a paused call.
pub struct Scenario {
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Scenario {
    /// Waits for the turn, then starts from no failpoint configured.
    pub async fn start() -> Scenario {
        static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
        let turn = TURN.lock().await;
        remove_all();
        Scenario { _turn: turn }
    }

    /// Sets `actions` (`fail` syntax: `return`, `sleep(300)`, `pause`, ...) on failpoint `name`.
    pub fn set(&self, name: &str, actions: &str) {
        fail::cfg(name, actions)
            .unwrap_or_else(|e| panic!("failpoint {name}: bad actions {actions:?}: {e}"));
    }

    pub fn remove(&self, name: &str) {
        fail::remove(name);
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        remove_all();
    }
}

fn remove_all() {
    for name in ALL {
        fail::remove(name);
    }
}

/// Panics unless `result` is the error an injected `return` answers.
fn assert_injected<T: std::fmt::Debug>(result: crate::Result<T>, what: &str) {
    match result {
        Err(Error::Io(e))
            if e.kind() == std::io::ErrorKind::TimedOut
                && e.to_string().starts_with("failpoint: store") => {}
        other => panic!("{what}: expected the injected timeout, got {other:?}"),
    }
}

async fn seqs(store: &dyn Store, id: &str) -> Vec<u32> {
    store
        .get_message(&tenant(), &MessageId(id.to_owned()))
        .await
        .expect("get message")
        .expect("message exists")
        .events
        .iter()
        .map(|e| e.seq)
        .collect()
}

/// `store::get_message`: reads time out while it is set (writes go on), and work again once
/// it is removed.
pub async fn get_message_times_out(store: Arc<dyn Store>) {
    let scenario = Scenario::start().await;
    let store = store.as_ref();
    let f = fence(1, 1);
    let outcomes = store
        .write(vec![accept(f, message("m-read", "k-read", 1, 1), LONG)])
        .await
        .expect("write");
    assert_eq!(outcomes, vec![accepted("m-read", false)]);

    scenario.set(GET_MESSAGE, "return");
    let read = store
        .get_message(&tenant(), &MessageId("m-read".into()))
        .await;
    assert_injected(read, "get_message");
    // Only reads of messages are hit: a write goes through meanwhile.
    let sent = event("m-read", EventKind::EventSent, 2);
    let outcomes = store
        .write(vec![append(f, "m-read", vec![sent], false)])
        .await
        .expect("write while reads time out");
    assert_eq!(outcomes, vec![WriteOutcome::Done]);

    scenario.remove(GET_MESSAGE);
    assert_eq!(seqs(store, "m-read").await, vec![1, 2]);
}

/// `store::before_commit`: every caller fails and nothing is applied; once it is removed the
/// same writes succeed.
pub async fn before_commit_applies_nothing(store: Arc<dyn Store>) {
    let scenario = Scenario::start().await;
    let f = fence(2, 1);
    let outcomes = store
        .write(vec![accept(f, message("m-before", "k-before", 1, 2), LONG)])
        .await
        .expect("write");
    assert_eq!(outcomes, vec![accepted("m-before", false)]);
    let first_append = || {
        let attempted = event("m-before", EventKind::EventAttempted, 2);
        vec![
            incr(f, "freq:before", 1, LONG),
            append(f, "m-before", vec![attempted], false),
        ]
    };

    scenario.set(BEFORE_COMMIT, "return");
    // Concurrent callers (one batch or several on Redis): each gets the error.
    let callers = (0..8).map(|i| {
        let store = store.clone();
        tokio::spawn(async move {
            let id = format!("m-before-{i}");
            store
                .write(vec![accept(f, message(&id, &id, 1, 2), LONG)])
                .await
        })
    });
    for caller in futures::future::join_all(callers).await {
        assert_injected(caller.expect("caller"), "concurrent accept");
    }
    assert_injected(store.write(first_append()).await, "append");

    scenario.remove(BEFORE_COMMIT);
    for i in 0..8 {
        let id = MessageId(format!("m-before-{i}"));
        let stored = store.get_message(&tenant(), &id).await.expect("get");
        assert_eq!(stored, None, "{id:?} was not applied");
    }
    assert_eq!(seqs(store.as_ref(), "m-before").await, vec![1]);
    // The retry is the first write that lands: the counter counts once.
    let outcomes = store.write(first_append()).await.expect("retry");
    assert_eq!(outcomes, vec![WriteOutcome::Counter(1), WriteOutcome::Done]);
    assert_eq!(seqs(store.as_ref(), "m-before").await, vec![1, 2]);
}

/// `store::after_commit`: the caller gets an error although its ops were applied; a retry
/// meets its own write (an append: `SeqConflict`; an accept: a duplicate; an increment counts
/// again).
pub async fn after_commit_applies_but_fails(store: Arc<dyn Store>) {
    let scenario = Scenario::start().await;
    let store = store.as_ref();
    let f = fence(3, 1);
    let outcomes = store
        .write(vec![accept(f, message("m-after", "k-after", 1, 3), LONG)])
        .await
        .expect("write");
    assert_eq!(outcomes, vec![accepted("m-after", false)]);
    let delivered = || {
        let delivered = event("m-after", EventKind::EventDelivered, 2);
        vec![append(f, "m-after", vec![delivered], true)]
    };
    let second = || vec![accept(f, message("m-after-2", "k-after-2", 2, 3), LONG)];

    scenario.set(AFTER_COMMIT, "return");
    assert_injected(store.write(delivered()).await, "append");
    assert_injected(store.write(second()).await, "accept");
    assert_injected(
        store.write(vec![incr(f, "freq:after", 1, LONG)]).await,
        "increment",
    );

    scenario.remove(AFTER_COMMIT);
    // Everything landed.
    assert_eq!(
        event_kinds(store, "m-after").await,
        vec![
            EventKind::EventAccepted as i32,
            EventKind::EventDelivered as i32
        ]
    );
    assert_eq!(seqs(store, "m-after-2").await, vec![1]);
    // The retries find their own writes.
    assert_eq!(
        store.write(delivered()).await.expect("retry append"),
        vec![WriteOutcome::SeqConflict { last_seq: 2 }]
    );
    assert_eq!(
        store.write(second()).await.expect("retry accept"),
        vec![accepted("m-after-2", true)]
    );
    assert_eq!(
        store
            .write(vec![incr(f, "freq:after", 1, LONG)])
            .await
            .expect("retry increment"),
        vec![WriteOutcome::Counter(2)],
        "the increment that failed had counted"
    );
}

/// `store::after_commit` with an append that carries tallies: the caller gets an error
/// although the append and its tallies were applied; the retry answers `SeqConflict` and does
/// not apply them again.
pub async fn after_commit_tallies_apply_once(store: Arc<dyn Store>) {
    let scenario = Scenario::start().await;
    let store = store.as_ref();
    let f = fence(5, 1);
    let outcomes = store
        .write(vec![accept(f, message("m-tally", "k-tally", 1, 5), LONG)])
        .await
        .expect("write");
    assert_eq!(outcomes, vec![accepted("m-tally", false)]);
    let delivered = || {
        let tallies = vec![
            Tally::AddFields {
                key: "funnel:fp".to_owned(),
                deltas: vec![("delivered".to_owned(), 1)],
            },
            Tally::PushRecord {
                key: "ledger:fp".to_owned(),
                record: b"settle m-tally".to_vec(),
            },
        ];
        let delivered = event("m-tally", EventKind::EventDelivered, 2);
        vec![append_tallied(f, "m-tally", vec![delivered], tallies)]
    };

    scenario.set(AFTER_COMMIT, "return");
    assert_injected(store.write(delivered()).await, "append with tallies");
    scenario.remove(AFTER_COMMIT);

    assert_eq!(seqs(store, "m-tally").await, vec![1, 2]);
    assert_eq!(
        store.write(delivered()).await.expect("retry"),
        vec![WriteOutcome::SeqConflict { last_seq: 2 }]
    );
    let counted = store
        .some_fields("funnel:fp", &["delivered".to_owned()])
        .await
        .expect("fields");
    assert_eq!(counted, vec![Some(b"1".to_vec())], "counted once");
    assert_eq!(
        store.record_count("ledger:fp").await.expect("records"),
        1,
        "recorded once"
    );
}

/// `store::before_commit` with `sleep` and `pause`: a stalled store. Its writers wait (and
/// then succeed); reads go on meanwhile.
pub async fn stalled_commit_resumes(store: Arc<dyn Store>) {
    const STALL: Duration = Duration::from_millis(300);
    let scenario = Scenario::start().await;
    let f = fence(4, 1);
    let outcomes = store
        .write(vec![accept(f, message("m-stall", "k-stall", 1, 4), LONG)])
        .await
        .expect("write");
    assert_eq!(outcomes, vec![accepted("m-stall", false)]);

    scenario.set(BEFORE_COMMIT, &format!("sleep({})", STALL.as_millis()));
    let started = Instant::now();
    let attempted = event("m-stall", EventKind::EventAttempted, 2);
    let outcomes = store
        .write(vec![append(f, "m-stall", vec![attempted], false)])
        .await
        .expect("a slow write still succeeds");
    assert_eq!(outcomes, vec![WriteOutcome::Done]);
    assert!(started.elapsed() >= STALL, "the write waited at the point");

    scenario.set(BEFORE_COMMIT, "pause");
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let sent = event("m-stall", EventKind::EventSent, 3);
            store
                .write(vec![append(f, "m-stall", vec![sent], false)])
                .await
        })
    };
    tokio::time::sleep(STALL).await;
    assert!(!writer.is_finished(), "a paused write waits");
    // Reads are not stalled, and the paused write is not applied.
    assert_eq!(seqs(store.as_ref(), "m-stall").await, vec![1, 2]);

    scenario.remove(BEFORE_COMMIT);
    let outcomes = tokio::time::timeout(Duration::from_secs(10), writer)
        .await
        .expect("the write resumes once the point is removed")
        .expect("writer")
        .expect("write");
    assert_eq!(outcomes, vec![WriteOutcome::Done]);
    assert_eq!(seqs(store.as_ref(), "m-stall").await, vec![1, 2, 3]);
}

/// Runs every failpoint case against one backend, as [`crate::backend_suite!`] runs the
/// suite: `failpoint_suite!(on_memory, async { (guard, store) })`. Only in a test binary of
/// its own (see the module docs).
#[macro_export]
macro_rules! failpoint_suite {
    ($module:ident, $make:expr) => {
        $crate::failpoint_suite!(@cases $module, $make;
            get_message_times_out,
            before_commit_applies_nothing,
            after_commit_applies_but_fails,
            after_commit_tallies_apply_once,
            stalled_commit_resumes,
        );
    };
    (@cases $module:ident, $make:expr; $($case:ident),* $(,)?) => {
        mod $module {
            // The constructor expression is written in the caller's module.
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (_guard, store) = $make.await;
                    $crate::testsuite::failpoints::$case(store).await;
                }
            )*
        }
    };
}
