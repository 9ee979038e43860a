//! # testsuite::guards: `Require`, nested guards and tallies
//!
//! Owns the cases about ops that apply only together with a check: `Require` (a field holds a
//! value, a take from a balance that never goes negative) guarding the ops after it, guards
//! nested in guards (accepts included), and tallies that apply only with their append. Must
//! never depend on one backend's internals: cases see only [`Store`].

use std::sync::Arc;

use herald_proto::v1::EventKind;
use herald_proto::{Epoch, MessageId, PartitionId};

use super::records::{
    DONE, SKIPPED, UNMET, add_fields, all_records, field, field_is, missing, owned, push_record,
    set_fields, sorted_fields, take,
};
use super::{
    LONG, accept, accepted, append_tallied, event, fence, guarded_accept, incr, message, node,
    tenant, write,
};
use crate::{Fence, FencedOp, Store, Tally, WriteOutcome};

/// `Require` with `FieldIs` (and `Missing`): holds → it and its guarded ops apply; unmet
/// (another value, a missing field, even against an empty value; for `Missing`, a field that
/// exists) or fenced → its guarded ops answer `Skipped` and nothing of them applies.
pub async fn require_field_is(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(2, 1);
    write(store, vec![set_fields(f, "cmp", &[("run", b"running")])]).await;
    let guarded = |check: FencedOp, tag: &str| {
        vec![
            check,
            add_fields(f, "cmp", &[("n:sent", 1)]),
            push_record(f, "log", tag.as_bytes()),
        ]
    };
    let outcomes = write(
        store,
        guarded(field_is(f, "cmp", "run", b"running", 2), "1"),
    )
    .await;
    assert_eq!(outcomes, vec![DONE, DONE, DONE]);
    let outcomes = write(store, guarded(field_is(f, "cmp", "run", b"paused", 2), "2")).await;
    assert_eq!(outcomes, vec![UNMET, SKIPPED, SKIPPED]);
    // A missing field holds nothing: not even the empty value.
    let outcomes = write(store, guarded(field_is(f, "cmp", "gone", b"", 2), "3")).await;
    assert_eq!(outcomes, vec![UNMET, SKIPPED, SKIPPED]);
    let outcomes = write(
        store,
        guarded(field_is(f, "nope", "run", b"running", 2), "4"),
    )
    .await;
    assert_eq!(outcomes, vec![UNMET, SKIPPED, SKIPPED]);
    // Guards past the end of the call cover what is there; ops after the range still apply.
    let outcomes = write(
        store,
        vec![
            field_is(f, "cmp", "run", b"paused", 1),
            add_fields(f, "cmp", &[("n:sent", 1)]),
            push_record(f, "log", b"5"),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![UNMET, SKIPPED, DONE]);
    let outcomes = write(store, vec![field_is(f, "cmp", "run", b"paused", 9)]).await;
    assert_eq!(outcomes, vec![UNMET]);
    assert_eq!(field(store, "cmp", "n:sent").await, Some(b"1".to_vec()));
    assert_eq!(
        all_records(store, "log").await,
        vec![b"1".to_vec(), b"5".to_vec()]
    );

    // `Missing` holds while the field does not exist (in a missing hash too): write-once.
    let once = |key: &str, value: &[u8]| {
        vec![
            missing(f, key, "plan", 1),
            set_fields(f, key, &[("plan", value)]),
        ]
    };
    assert_eq!(write(store, once("cmp", b"a")).await, vec![DONE, DONE]);
    assert_eq!(write(store, once("cmp", b"b")).await, vec![UNMET, SKIPPED]);
    assert_eq!(field(store, "cmp", "plan").await, Some(b"a".to_vec()));
    // An empty value is a value: the field exists.
    write(store, vec![set_fields(f, "cmp2", &[("plan", b"")])]).await;
    assert_eq!(write(store, once("cmp2", b"c")).await, vec![UNMET, SKIPPED]);
    assert_eq!(field(store, "cmp2", "plan").await, Some(Vec::new()));

    // A newer owner: the Require is fenced and what it guards skipped, although it holds.
    store
        .acquire_leases(&node("b"), Epoch(4), &[PartitionId(2)], LONG)
        .await
        .expect("acquire");
    let outcomes = write(
        store,
        guarded(field_is(f, "cmp", "run", b"running", 2), "6"),
    )
    .await;
    assert_eq!(
        outcomes,
        vec![WriteOutcome::Fenced { stored: Epoch(4) }, SKIPPED, SKIPPED]
    );
    assert_eq!(field(store, "cmp", "n:sent").await, Some(b"1".to_vec()));
    assert_eq!(store.record_count("log").await.expect("count"), 2);
}

/// `Require` with `Take`: holds when the field (missing = 0) is at least the amount and then
/// takes exactly that; never lets it go negative; concurrent takes never take more than there
/// is.
pub async fn require_take(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = Fence::NONE;
    let spend = |amount: i64| {
        vec![
            take(f, "credits", "available", amount, 1),
            add_fields(f, "credits", &[("spent", amount)]),
        ]
    };
    // Nothing there: a take of anything is unmet; taking 0 holds and creates nothing.
    assert_eq!(write(store, spend(5)).await, vec![UNMET, SKIPPED]);
    assert_eq!(
        write(store, vec![take(f, "credits", "available", 0, 0)]).await,
        vec![DONE]
    );
    assert!(store.fields("credits").await.expect("fields").is_empty());

    write(store, vec![add_fields(f, "credits", &[("available", 100)])]).await;
    assert_eq!(write(store, spend(30)).await, vec![DONE, DONE]);
    assert_eq!(write(store, spend(80)).await, vec![UNMET, SKIPPED]);
    assert_eq!(write(store, spend(70)).await, vec![DONE, DONE]);
    assert_eq!(write(store, spend(1)).await, vec![UNMET, SKIPPED]);
    assert_eq!(
        sorted_fields(store, "credits").await,
        owned(&[("available", b"0"), ("spent", b"100")])
    );

    // 40 concurrent takes of 1 from a balance of 25: exactly 25 hold.
    write(store, vec![add_fields(f, "credits", &[("available", 25)])]).await;
    let takes = (0..40).map(|_| store.write(spend(1)));
    let mut held = 0;
    for outcomes in futures::future::join_all(takes).await {
        match outcomes.expect("write").as_slice() {
            [DONE, DONE] => held += 1,
            [UNMET, SKIPPED] => {}
            other => panic!("a take answered {other:?}"),
        }
    }
    assert_eq!(held, 25);
    assert_eq!(
        sorted_fields(store, "credits").await,
        owned(&[("available", b"0"), ("spent", b"125")])
    );
}

/// Guards nest: an inner unmet `Require` skips only its own range; an outer unmet one skips
/// everything inside it (inner guards included); accepts and `Require`s guard each other; an
/// inner range never reaches past the outer one.
pub async fn nested_guards(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(4, 1);
    write(
        store,
        vec![
            set_fields(f, "cmp", &[("run", b"running")]),
            add_fields(f, "cr", &[("available", 3)]),
        ],
    )
    .await;
    let nested = |run: &[u8], amount: i64| {
        vec![
            field_is(f, "cmp", "run", run, 4),
            add_fields(f, "cmp", &[("outer", 1)]),
            take(f, "cr", "available", amount, 1),
            add_fields(f, "cmp", &[("inner", 1)]),
            push_record(f, "trail", b"outer"),
            add_fields(f, "cmp", &[("after", 1)]),
        ]
    };
    // Outer holds, inner unmet: only the inner range is skipped.
    assert_eq!(
        write(store, nested(b"running", 5)).await,
        vec![DONE, DONE, UNMET, SKIPPED, DONE, DONE]
    );
    // Both hold.
    assert_eq!(write(store, nested(b"running", 2)).await, vec![DONE; 6]);
    // Outer unmet: everything inside is skipped, the inner take too (nothing taken).
    assert_eq!(
        write(store, nested(b"paused", 1)).await,
        vec![UNMET, SKIPPED, SKIPPED, SKIPPED, SKIPPED, DONE]
    );
    assert_eq!(
        sorted_fields(store, "cmp").await,
        owned(&[
            ("after", b"3"),
            ("inner", b"1"),
            ("outer", b"2"),
            ("run", b"running")
        ])
    );
    assert_eq!(field(store, "cr", "available").await, Some(b"1".to_vec()));
    assert_eq!(store.record_count("trail").await.expect("count"), 2);

    // An inner range that would reach past the outer one ends with it.
    assert_eq!(
        write(
            store,
            vec![
                field_is(f, "cmp", "run", b"running", 1),
                field_is(f, "cmp", "run", b"paused", 5),
                add_fields(f, "cmp", &[("after", 1)]),
            ]
        )
        .await,
        vec![DONE, UNMET, DONE]
    );

    // An accept inside a Require: skipped with it, the message not stored.
    let accept_inside = |run: &[u8], id: &str| {
        vec![
            field_is(f, "cmp", "run", run, 2),
            guarded_accept(f, message(id, id, 1, 4), LONG, 1),
            incr(f, "freq:nested", 1, LONG),
        ]
    };
    assert_eq!(
        write(store, accept_inside(b"paused", "m-n1")).await,
        vec![UNMET, SKIPPED, SKIPPED]
    );
    assert_eq!(
        store
            .get_message(&tenant(), &MessageId("m-n1".into()))
            .await
            .expect("get"),
        None
    );
    assert_eq!(
        write(store, accept_inside(b"running", "m-n2")).await,
        vec![DONE, accepted("m-n2", false), WriteOutcome::Counter(1)]
    );
    // A Require inside an accept: skipped after a duplicate; its own range when unmet.
    let require_inside = |id: &str| {
        vec![
            guarded_accept(f, message(id, "k-n3", 3, 4), LONG, 2),
            field_is(f, "cmp", "run", b"paused", 1),
            add_fields(f, "cmp", &[("inside", 1)]),
        ]
    };
    assert_eq!(
        write(store, require_inside("m-n3")).await,
        vec![accepted("m-n3", false), UNMET, SKIPPED]
    );
    assert_eq!(
        write(store, require_inside("m-n4")).await,
        vec![accepted("m-n3", true), SKIPPED, SKIPPED]
    );
    assert_eq!(field(store, "cmp", "inside").await, None);
}

/// Tallies apply with their append, in the same step: not when the append is fenced or
/// answers `SeqConflict`; with a counter before the append and under a guarding accept too.
pub async fn append_tallies(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(5, 1);
    write(store, vec![accept(f, message("m-t", "k-t", 1, 5), LONG)]).await;
    let tallies = |tag: &str| {
        vec![
            Tally::AddFields {
                key: "funnel".to_owned(),
                deltas: vec![("sent".to_owned(), 1), ("cost".to_owned(), 7)],
            },
            Tally::PushRecord {
                key: "ledger".to_owned(),
                record: tag.as_bytes().to_vec(),
            },
        ]
    };
    let sent = |seq| vec![event("m-t", EventKind::EventSent, seq)];
    assert_eq!(
        write(store, vec![append_tallied(f, "m-t", sent(2), tallies("a"))]).await,
        vec![DONE]
    );
    let counted = |sent: &[u8], cost: &[u8]| owned(&[("cost", cost), ("sent", sent)]);
    assert_eq!(sorted_fields(store, "funnel").await, counted(b"1", b"7"));
    assert_eq!(all_records(store, "ledger").await, vec![b"a".to_vec()]);
    // The same append again: SeqConflict, and its tallies did not apply.
    assert_eq!(
        write(store, vec![append_tallied(f, "m-t", sent(2), tallies("b"))]).await,
        vec![WriteOutcome::SeqConflict { last_seq: 2 }]
    );
    // With a counter before it: both apply, or neither.
    let with_counter = |seq, tag: &str| {
        vec![
            incr(f, "freq:t", 1, LONG),
            append_tallied(f, "m-t", sent(seq), tallies(tag)),
        ]
    };
    assert_eq!(
        write(store, with_counter(3, "c")).await,
        vec![WriteOutcome::Counter(1), DONE]
    );
    let conflict = WriteOutcome::SeqConflict { last_seq: 3 };
    assert_eq!(
        write(store, with_counter(3, "d")).await,
        vec![conflict.clone(), conflict]
    );
    assert_eq!(sorted_fields(store, "funnel").await, counted(b"2", b"14"));
    assert_eq!(
        all_records(store, "ledger").await,
        vec![b"a".to_vec(), b"c".to_vec()]
    );
    // A message's first append, guarded by its accept: applied with a new message only.
    let first_write = |id: &str| {
        vec![
            guarded_accept(f, message(id, "k-t2", 2, 5), LONG, 1),
            append_tallied(
                f,
                id,
                vec![event(id, EventKind::EventAttempted, 2)],
                tallies(id),
            ),
        ]
    };
    assert_eq!(
        write(store, first_write("m-t2")).await,
        vec![accepted("m-t2", false), DONE]
    );
    assert_eq!(
        write(store, first_write("m-t3")).await,
        vec![accepted("m-t2", true), SKIPPED]
    );
    assert_eq!(sorted_fields(store, "funnel").await, counted(b"3", b"21"));
    assert_eq!(
        all_records(store, "ledger").await,
        vec![b"a".to_vec(), b"c".to_vec(), b"m-t2".to_vec()]
    );
    let seqs = store
        .get_message(&tenant(), &MessageId("m-t2".into()))
        .await
        .expect("get")
        .expect("stored")
        .events
        .iter()
        .map(|e| e.seq)
        .collect::<Vec<_>>();
    assert_eq!(seqs, vec![1, 2]);
    // Fenced: neither the append nor its tallies.
    store
        .acquire_leases(&node("newer"), Epoch(6), &[PartitionId(5)], LONG)
        .await
        .expect("acquire");
    assert_eq!(
        write(store, vec![append_tallied(f, "m-t", sent(4), tallies("e"))]).await,
        vec![WriteOutcome::Fenced { stored: Epoch(6) }]
    );
    assert_eq!(sorted_fields(store, "funnel").await, counted(b"3", b"21"));
    assert_eq!(store.record_count("ledger").await.expect("count"), 3);
    // Tallies without events (nothing to check) apply with the empty append.
    let empty = append_tallied(fence(5, 6), "m-t", Vec::new(), tallies("f"));
    assert_eq!(write(store, vec![empty]).await, vec![DONE]);
    assert_eq!(sorted_fields(store, "funnel").await, counted(b"4", b"28"));
}
