//! # testsuite::messages: accepting messages and appending to their logs
//!
//! Owns the cases about a message's life in the store: idempotent acceptance, event logs and
//! the active sets, appends that expect the next seq, a counter that applies only with its
//! append, and accepts that guard the ops after them. Must never depend on one backend's
//! internals: cases see only [`Store`].

use std::collections::HashSet;
use std::sync::Arc;

use herald_proto::v1::{Event, EventKind};
use herald_proto::{Epoch, MessageId, NodeId, PartitionId};

use super::{
    LONG, PAST_SHORT, SHORT, accept, accepted, active_ids, append, append_ending, event,
    event_kinds, fence, guarded_accept, incr, message, node, put_value, tenant, write,
};
use crate::{Store, WriteOutcome};

pub async fn idempotency(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(2, 1);
    assert_eq!(
        write(store, vec![accept(f, message("m1", "k", 11, 2), LONG)]).await,
        vec![accepted("m1", false)]
    );
    // Same key, same payload: the first message, flagged duplicate; nothing new stored.
    assert_eq!(
        write(store, vec![accept(f, message("m2", "k", 11, 2), LONG)]).await,
        vec![accepted("m1", true)]
    );
    // Same key, other payload: conflict naming the first message.
    assert_eq!(
        write(store, vec![accept(f, message("m3", "k", 12, 2), LONG)]).await,
        vec![WriteOutcome::Conflict {
            message_id: MessageId("m1".to_owned())
        }]
    );
    for id in ["m2", "m3"] {
        assert!(
            store
                .get_message(&tenant(), &MessageId(id.into()))
                .await
                .expect("get")
                .is_none()
        );
    }
    assert_eq!(
        event_kinds(store, "m1").await,
        vec![EventKind::EventAccepted as i32]
    );
    assert_eq!(active_ids(store, 2).await, HashSet::from(["m1".to_owned()]));
    let record = store
        .get_message(&tenant(), &MessageId("m1".into()))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(record.message, message("m1", "k", 11, 2));

    // Both in one call: the second sees the first.
    assert_eq!(
        write(
            store,
            vec![
                accept(f, message("m4", "k4", 1, 2), LONG),
                accept(f, message("m5", "k4", 1, 2), LONG),
            ]
        )
        .await,
        vec![accepted("m4", false), accepted("m4", true)]
    );
    // No key: no deduplication.
    assert_eq!(
        write(
            store,
            vec![
                accept(f, message("m6", "", 1, 2), LONG),
                accept(f, message("m7", "", 1, 2), LONG),
            ]
        )
        .await,
        vec![accepted("m6", false), accepted("m7", false)]
    );
    // Keys are per tenant.
    let mut other = message("m8", "k", 11, 2);
    other.tenant = "globex".to_owned();
    assert_eq!(
        write(store, vec![accept(f, other, LONG)]).await,
        vec![accepted("m8", false)]
    );
    // A key expires after its ttl; then it is free again.
    assert_eq!(
        write(store, vec![accept(f, message("m9", "k9", 1, 2), SHORT)]).await,
        vec![accepted("m9", false)]
    );
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        write(store, vec![accept(f, message("m10", "k9", 2, 2), LONG)]).await,
        vec![accepted("m10", false)]
    );
}

pub async fn events_and_active_set(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(5, 2);
    write(
        store,
        vec![
            accept(f, message("m1", "k1", 1, 5), LONG),
            accept(f, message("m2", "k2", 2, 5), LONG),
            accept(fence(6, 2), message("m3", "k3", 3, 6), LONG),
        ],
    )
    .await;
    assert_eq!(
        active_ids(store, 5).await,
        HashSet::from(["m1".into(), "m2".into()])
    );
    assert_eq!(active_ids(store, 6).await, HashSet::from(["m3".into()]));
    assert!(active_ids(store, 7).await.is_empty());

    let outcomes = write(
        store,
        vec![
            append(
                f,
                "m1",
                vec![
                    event("m1", EventKind::EventAttempted, 2),
                    event("m1", EventKind::EventSent, 3),
                ],
                false,
            ),
            append(
                f,
                "m1",
                vec![event("m1", EventKind::EventDelivered, 4)],
                true,
            ),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![WriteOutcome::Done, WriteOutcome::Done]);
    let record = store
        .get_message(&tenant(), &MessageId("m1".into()))
        .await
        .expect("get")
        .expect("stored");
    let seqs: Vec<u32> = record.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4]);
    assert_eq!(record.events[3], event("m1", EventKind::EventDelivered, 4));
    assert_eq!(active_ids(store, 5).await, HashSet::from(["m2".into()]));

    // A long log in one op, then a terminal op without events.
    let many: Vec<Event> = (2..602)
        .map(|s| event("m2", EventKind::EventDeferred, s))
        .collect();
    write(store, vec![append(f, "m2", many, false)]).await;
    write(store, vec![append(f, "m2", Vec::new(), true)]).await;
    let record = store
        .get_message(&tenant(), &MessageId("m2".into()))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(record.events.len(), 601);
    assert!(
        record
            .events
            .iter()
            .enumerate()
            .all(|(i, e)| e.seq == i as u32 + 1)
    );
    assert!(active_ids(store, 5).await.is_empty());
    assert_eq!(active_ids(store, 6).await, HashSet::from(["m3".into()]));
    assert!(
        store
            .get_message(&tenant(), &MessageId("nope".into()))
            .await
            .expect("get")
            .is_none()
    );
}

/// An actor's first write: a counter and an append under one fence (Redis sends them as one
/// op). Each keeps its own outcome, and fencing rejects both.
pub async fn counter_then_append(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(3, 1);
    write(store, vec![accept(f, message("m-ca", "k-ca", 1, 3), LONG)]).await;
    let outcomes = write(
        store,
        vec![
            incr(f, "freq:ca", 1, LONG),
            append(
                f,
                "m-ca",
                vec![event("m-ca", EventKind::EventAttempted, 2)],
                false,
            ),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![WriteOutcome::Counter(1), WriteOutcome::Done]);
    let outcomes = write(
        store,
        vec![
            incr(f, "freq:ca", 1, LONG),
            append(
                f,
                "m-ca",
                vec![event("m-ca", EventKind::EventSent, 3)],
                true,
            ),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![WriteOutcome::Counter(2), WriteOutcome::Done]);
    assert!(
        !active_ids(store, 3).await.contains("m-ca"),
        "terminal left the active set"
    );
    // A newer owner takes partition 3: both ops of the stale writer are rejected.
    let node = NodeId("newer".into());
    let taken = store
        .acquire_leases(&node, Epoch(5), &[PartitionId(3)], LONG)
        .await
        .expect("acquire");
    assert_eq!(taken, vec![PartitionId(3)]);
    let outcomes = write(
        store,
        vec![
            incr(f, "freq:ca", 1, LONG),
            append(
                f,
                "m-ca",
                vec![event("m-ca", EventKind::EventRead, 4)],
                false,
            ),
        ],
    )
    .await;
    let fenced = WriteOutcome::Fenced { stored: Epoch(5) };
    assert_eq!(outcomes, vec![fenced.clone(), fenced]);
    assert_eq!(
        event_kinds(store, "m-ca").await,
        vec![
            EventKind::EventAccepted as i32,
            EventKind::EventAttempted as i32,
            EventKind::EventSent as i32
        ]
    );
    let newer = fence(3, 5);
    assert_eq!(
        write(store, vec![incr(newer, "freq:ca", 1, LONG)]).await,
        vec![WriteOutcome::Counter(3)],
        "the fenced increment changed nothing"
    );
}

/// Appends carry the seq they expect: a stale writer's append (one that read an older log, or
/// whose earlier write landed after it gave up) is refused with the log's last seq and
/// changes nothing, also when it comes with a counter.
pub async fn appends_expect_the_next_seq(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(6, 1);
    write(
        store,
        vec![accept(f, message("m-seq", "k-seq", 1, 6), LONG)],
    )
    .await;
    let waiting = event("m-seq", EventKind::EventWaiting, 2);
    assert_eq!(
        write(store, vec![append(f, "m-seq", vec![waiting], false)]).await,
        vec![WriteOutcome::Done]
    );
    // Two writers both saw the log end at seq 2; the first wins, the second is refused.
    let delivered = event("m-seq", EventKind::EventDelivered, 3);
    let timed_out = event("m-seq", EventKind::EventFailed, 3);
    assert_eq!(
        write(store, vec![append(f, "m-seq", vec![delivered], true)]).await,
        vec![WriteOutcome::Done]
    );
    assert_eq!(
        write(
            store,
            vec![
                incr(f, "freq:seq", 1, LONG),
                append(f, "m-seq", vec![timed_out], false)
            ]
        )
        .await,
        vec![
            WriteOutcome::SeqConflict { last_seq: 3 },
            WriteOutcome::SeqConflict { last_seq: 3 }
        ]
    );
    // A gap is refused too; an empty append is not checked.
    let ahead = event("m-seq", EventKind::EventRead, 9);
    assert_eq!(
        write(store, vec![append(f, "m-seq", vec![ahead], false)]).await,
        vec![WriteOutcome::SeqConflict { last_seq: 3 }]
    );
    assert_eq!(
        write(store, vec![append(f, "m-seq", Vec::new(), true)]).await,
        vec![WriteOutcome::Done]
    );
    // An append to a message that was never accepted is refused (nothing to continue).
    let orphan = event("m-none", EventKind::EventSent, 2);
    assert_eq!(
        write(store, vec![append(f, "m-none", vec![orphan], false)]).await,
        vec![WriteOutcome::SeqConflict { last_seq: 0 }]
    );
    let record = store
        .get_message(&tenant(), &MessageId("m-seq".into()))
        .await
        .expect("get")
        .expect("stored");
    let seqs: Vec<u32> = record.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3], "gap-free, one outcome");
    assert_eq!(
        record.events.last().map(|e| e.kind()),
        Some(EventKind::EventDelivered)
    );
    assert_eq!(
        write(store, vec![incr(f, "freq:seq", 1, LONG)]).await,
        vec![WriteOutcome::Counter(1)],
        "the refused append's counter did not count"
    );
    assert!(
        store
            .get_message(&tenant(), &MessageId("m-none".into()))
            .await
            .expect("get")
            .is_none()
    );
}

/// An accept guarding the ops after it: applied with a new message (the append folded or
/// not, terminal or not), skipped after a duplicate, a conflict or a fenced accept.
pub async fn accept_with_guarded_ops(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(5, 1);
    let first_write = |id: &str, key: &str, hash: u64, terminal: bool| {
        vec![
            guarded_accept(f, message(id, key, hash, 5), LONG, 3),
            append(
                f,
                id,
                vec![event(id, EventKind::EventAttempted, 2)],
                terminal,
            ),
            incr(f, "freq:guard", 1, LONG),
            put_value(f, &format!("index:{id}"), id.as_bytes(), LONG),
        ]
    };
    // New: everything applies; the outcomes are one per op.
    let outcomes = write(store, first_write("m-g1", "k-g1", 1, false)).await;
    assert_eq!(
        outcomes,
        vec![
            accepted("m-g1", false),
            WriteOutcome::Done,
            WriteOutcome::Counter(1),
            WriteOutcome::Done
        ]
    );
    assert_eq!(
        event_kinds(store, "m-g1").await,
        vec![
            EventKind::EventAccepted as i32,
            EventKind::EventAttempted as i32
        ]
    );
    assert!(active_ids(store, 5).await.contains("m-g1"));
    assert_eq!(
        store.get_value("index:m-g1").await.expect("get"),
        Some(b"m-g1".to_vec())
    );
    // The same key and payload again (another id): a duplicate; the guarded ops are skipped.
    let outcomes = write(store, first_write("m-g2", "k-g1", 1, false)).await;
    assert_eq!(
        outcomes,
        vec![
            accepted("m-g1", true),
            WriteOutcome::Skipped,
            WriteOutcome::Skipped,
            WriteOutcome::Skipped
        ]
    );
    // Another payload: a conflict, skipped the same way.
    let outcomes = write(store, first_write("m-g3", "k-g1", 2, false)).await;
    assert_eq!(
        outcomes[0],
        WriteOutcome::Conflict {
            message_id: MessageId("m-g1".into())
        }
    );
    assert!(outcomes[1..].iter().all(|o| *o == WriteOutcome::Skipped));
    for id in ["m-g2", "m-g3"] {
        let stored = store
            .get_message(&tenant(), &MessageId(id.into()))
            .await
            .expect("get");
        assert_eq!(stored, None, "{id} was not stored");
        assert_eq!(
            store.get_value(&format!("index:{id}")).await.expect("get"),
            None
        );
    }
    assert!(!active_ids(store, 5).await.contains("m-g2"));
    // The counter moved once, for the new message only.
    assert_eq!(
        write(store, vec![incr(f, "freq:guard", 0, LONG)]).await,
        vec![WriteOutcome::Counter(1)]
    );
    // A terminal first write: stored, and never in the active set.
    let outcomes = write(store, first_write("m-g4", "k-g4", 4, true)).await;
    assert_eq!(outcomes[0], accepted("m-g4", false));
    assert!(!active_ids(store, 5).await.contains("m-g4"));
    assert_eq!(event_kinds(store, "m-g4").await.len(), 2);
    // Guarded ops that are not the message's append (nothing to fold) apply too.
    let outcomes = write(
        store,
        vec![
            guarded_accept(f, message("m-g5", "", 5, 5), LONG, 1),
            incr(f, "freq:guard", 1, LONG),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![accepted("m-g5", false), WriteOutcome::Counter(3)]
    );
    assert!(active_ids(store, 5).await.contains("m-g5"));
    // A newer owner: the accept is fenced and its guarded ops skipped.
    store
        .acquire_leases(&node("newer"), Epoch(9), &[PartitionId(5)], LONG)
        .await
        .expect("acquire");
    let outcomes = write(store, first_write("m-g6", "k-g6", 6, false)).await;
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Fenced { stored: Epoch(9) },
            WriteOutcome::Skipped,
            WriteOutcome::Skipped,
            WriteOutcome::Skipped
        ]
    );
    assert_eq!(
        store
            .get_message(&tenant(), &MessageId("m-g6".into()))
            .await
            .expect("get"),
        None
    );
}

/// An ended message and its log expire their retention after the terminal append (late
/// appends do not extend it); a message without retention and an active one stay.
pub async fn ended_messages_expire_after_their_retention(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(8, 1);
    write(
        store,
        vec![
            accept(f, message("r1", "kr1", 1, 8), LONG),
            accept(f, message("r2", "kr2", 2, 8), LONG),
            accept(f, message("r3", "kr3", 3, 8), LONG),
        ],
    )
    .await;
    write(
        store,
        vec![
            append_ending(
                f,
                "r1",
                vec![event("r1", EventKind::EventDelivered, 2)],
                SHORT,
            ),
            append(
                f,
                "r2",
                vec![event("r2", EventKind::EventDelivered, 2)],
                true,
            ),
        ],
    )
    .await;
    store.retire_pending().await.expect("retire pending");
    let get = |id: &'static str| async move {
        store
            .get_message(&tenant(), &MessageId(id.into()))
            .await
            .expect("get")
    };
    assert!(get("r1").await.is_some(), "kept until its retention ends");
    // A late receipt's append: the first retention holds.
    write(
        store,
        vec![append(
            f,
            "r1",
            vec![event("r1", EventKind::EventDelivered, 3)],
            false,
        )],
    )
    .await;
    tokio::time::sleep(PAST_SHORT).await;
    // Sweeps of the embedded store run with writes.
    write(store, vec![put_value(f, "nudge", b"x", LONG)]).await;
    assert!(get("r1").await.is_none(), "gone after its retention");
    assert!(get("r2").await.is_some(), "no retention: kept");
    assert!(get("r3").await.is_some(), "active: kept");
    assert_eq!(active_ids(store, 8).await, HashSet::from(["r3".into()]));
}

/// Erasure: a recipient's messages lose their content, variables and events' free text (the
/// events themselves stay, saying `redacted`); other recipients' messages are untouched;
/// deleted values are gone. Redacting twice changes nothing.
pub async fn erasure_redacts_messages_and_deletes_values(store: Arc<dyn Store>) {
    use herald_proto::v1::{Content, SmsContent};
    let store = store.as_ref();
    let f = fence(9, 1);
    let with_body = |id: &str, key: &str, hash: u64| {
        let mut m = message(id, key, hash, 9);
        let request = m.request.as_mut().expect("request");
        request.content = Some(Content {
            sms: Some(SmsContent {
                text: "Hi Ada, your code is 1234".into(),
            }),
            ..Default::default()
        });
        request.variables.insert("name".into(), "Ada".into());
        m
    };
    // "e1" and "e2" belong to recipient r-e1 (the helper names recipients after messages).
    let mut second = with_body("e2", "ke2", 2);
    second.request.as_mut().expect("request").recipient_id = "r-e1".into();
    write(
        store,
        vec![
            accept(f, with_body("e1", "ke1", 1), LONG),
            accept(f, second, LONG),
            accept(f, with_body("other", "kother", 3), LONG),
            put_value(f, "phone:acme:digest", b"r-e1", LONG),
        ],
    )
    .await;
    let mut replied = event("e1", EventKind::EventReplied, 2);
    replied.reason = "reply: Ada here".into();
    write(store, vec![append(f, "e1", vec![replied], false)]).await;

    assert_eq!(
        store
            .redact_messages(&tenant(), "r-e1")
            .await
            .expect("redact"),
        2
    );
    let get = |id: &'static str| async move {
        store
            .get_message(&tenant(), &MessageId(id.into()))
            .await
            .expect("get")
            .expect("kept")
    };
    for id in ["e1", "e2"] {
        let record = get(id).await;
        let request = record.message.request.expect("request");
        assert!(request.content.is_none(), "{id}: content cleared");
        assert!(request.variables.is_empty(), "{id}: variables cleared");
        assert!(
            record
                .events
                .iter()
                .all(|e| e.reason.is_empty() || e.reason == crate::REDACTED),
            "{id}: {:?}",
            record.events
        );
    }
    assert_eq!(get("e1").await.events.len(), 2, "events stay");
    assert_eq!(get("e1").await.events[1].reason, crate::REDACTED);
    let untouched = get("other").await.message.request.expect("request");
    assert!(untouched.content.is_some() && !untouched.variables.is_empty());
    // Twice: nothing more to change, the count is still of the recipient's messages.
    assert_eq!(
        store
            .redact_messages(&tenant(), "r-e1")
            .await
            .expect("again"),
        2
    );
    assert_eq!(
        store
            .redact_messages(&tenant(), "r-nobody")
            .await
            .expect("none"),
        0
    );

    store
        .delete_values(&["phone:acme:digest".to_owned()])
        .await
        .expect("delete");
    assert_eq!(
        store.get_value("phone:acme:digest").await.expect("get"),
        None
    );
}
