//! # testsuite: the one suite every [`Store`] backend must pass
//!
//! Each case is a `pub async fn(Arc<dyn Store>)`; [`crate::backend_suite!`] runs every case
//! against a backend (a new store per case). This crate runs it against Redis (a real
//! `redis-server` per test, see [`RedisServer`]), the embedded store in memory, and the embedded
//! store on disk; a new backend adds one `backend_suite!` line. Backend-specific tests (restart,
//! torn log, script reload) and throughput checks (`#[ignore]`d: `cargo test --release -p
//! herald-store throughput -- --ignored --nocapture`) are at the end.
//!
//! Built only with the `testsuite` feature (and for this crate's own tests): it panics instead
//! of returning errors, as a test cannot go on without its store.

mod redis_server;

pub use redis_server::{REDIS_SERVER_ENV, RedisServer};

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1::{Event, EventKind, MessageRequest, Recipient, StoredMessage};
use herald_proto::{Epoch, MessageId, NodeId, PartitionId, TenantId};

use crate::redis::{RedisOptions, RedisStore};
use crate::{Fence, FencedOp, Store, WriteOp, WriteOutcome};

const LONG: Duration = Duration::from_secs(60);
const SHORT: Duration = Duration::from_millis(200);
/// Comfortably past `SHORT`, also on a loaded machine.
const PAST_SHORT: Duration = Duration::from_millis(450);

fn tenant() -> TenantId {
    TenantId("acme".to_owned())
}

fn node(name: &str) -> NodeId {
    NodeId(name.to_owned())
}

fn fence(partition: u32, epoch: u64) -> Fence {
    Fence {
        partition: PartitionId(partition),
        epoch: Epoch(epoch),
    }
}

fn message(id: &str, key: &str, payload_hash: u64, partition: u32) -> StoredMessage {
    StoredMessage {
        message_id: id.to_owned(),
        tenant: tenant().0,
        request: Some(MessageRequest {
            recipient_id: format!("r-{id}"),
            idempotency_key: key.to_owned(),
            ..Default::default()
        }),
        partition,
        created_unix_ms: 1_700_000_000_000,
        payload_hash,
    }
}

fn event(message_id: &str, kind: EventKind, seq: u32) -> Event {
    Event {
        message_id: message_id.to_owned(),
        recipient_id: format!("r-{message_id}"),
        kind: kind as i32,
        at_unix_ms: 1_700_000_000_000 + i64::from(seq),
        node_id: "n1".to_owned(),
        seq,
        ..Default::default()
    }
}

fn accept(fence: Fence, message: StoredMessage, ttl: Duration) -> FencedOp {
    guarded_accept(fence, message, ttl, 0)
}

fn guarded_accept(fence: Fence, message: StoredMessage, ttl: Duration, guards: usize) -> FencedOp {
    let accepted = event(&message.message_id, EventKind::EventAccepted, 1);
    FencedOp {
        fence,
        op: WriteOp::AcceptMessage {
            message: Arc::new(message),
            accepted,
            idempotency_ttl: ttl,
            guards,
        },
    }
}

fn append(fence: Fence, message_id: &str, events: Vec<Event>, terminal: bool) -> FencedOp {
    FencedOp {
        fence,
        op: WriteOp::AppendEvents {
            tenant: tenant(),
            message_id: MessageId(message_id.to_owned()),
            events,
            terminal,
        },
    }
}

fn recipient(id: &str, email: &str) -> Recipient {
    Recipient {
        id: id.to_owned(),
        email: email.to_owned(),
        ..Default::default()
    }
}

fn put_recipient(fence: Fence, recipient: Recipient) -> FencedOp {
    FencedOp {
        fence,
        op: WriteOp::PutRecipient {
            tenant: tenant(),
            recipient,
        },
    }
}

fn incr(fence: Fence, key: &str, delta: i64, ttl: Duration) -> FencedOp {
    FencedOp {
        fence,
        op: WriteOp::IncrCounter {
            key: key.to_owned(),
            delta,
            ttl,
        },
    }
}

fn accepted(id: &str, duplicate: bool) -> WriteOutcome {
    WriteOutcome::Accepted {
        message_id: MessageId(id.to_owned()),
        duplicate,
    }
}

async fn write(store: &dyn Store, ops: Vec<FencedOp>) -> Vec<WriteOutcome> {
    store.write(ops).await.expect("write")
}

async fn active_ids(store: &dyn Store, partition: u32) -> HashSet<String> {
    store.retire_pending().await.expect("retire pending");
    store
        .active_messages(PartitionId(partition))
        .await
        .expect("active messages")
        .into_iter()
        .map(|(t, m)| {
            assert_eq!(t, tenant());
            m.0
        })
        .collect()
}

async fn event_kinds(store: &dyn Store, id: &str) -> Vec<i32> {
    store
        .get_message(&tenant(), &MessageId(id.to_owned()))
        .await
        .expect("get message")
        .expect("message exists")
        .events
        .iter()
        .map(|e| e.kind)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The suite.

pub async fn fencing(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let (a, b) = (node("a"), node("b"));
    let p = PartitionId(3);
    assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(0));
    assert_eq!(
        store
            .acquire_leases(&a, Epoch(5), &[p], LONG)
            .await
            .expect("acquire"),
        vec![p]
    );
    assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(5));
    // A's lease is live: B cannot take it, even at a newer epoch, and the epoch stays.
    assert!(
        store
            .acquire_leases(&b, Epoch(6), &[p], LONG)
            .await
            .expect("acquire")
            .is_empty()
    );
    assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(5));
    assert_eq!(
        write(
            store,
            vec![put_recipient(fence(3, 5), recipient("r1", "old@x"))]
        )
        .await,
        vec![WriteOutcome::Done]
    );

    store.release_leases(&a, &[p]).await.expect("release");
    assert_eq!(
        store
            .acquire_leases(&b, Epoch(6), &[p], LONG)
            .await
            .expect("acquire"),
        vec![p]
    );
    assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(6));

    // A keeps running at epoch 5: every kind of write is rejected and changes nothing.
    let stale = fence(3, 5);
    let outcomes = write(
        store,
        vec![
            put_recipient(stale, recipient("r1", "new@x")),
            FencedOp {
                fence: stale,
                op: WriteOp::EraseRecipient {
                    tenant: tenant(),
                    recipient_id: "r1".to_owned(),
                },
            },
            accept(stale, message("m1", "k1", 1, 3), LONG),
            append(
                stale,
                "m1",
                vec![event("m1", EventKind::EventSent, 2)],
                true,
            ),
            incr(stale, "c", 1, LONG),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![WriteOutcome::Fenced { stored: Epoch(6) }; 5]);
    let r1 = store.get_recipient(&tenant(), "r1").await.expect("get");
    assert_eq!(r1.map(|r| r.email), Some("old@x".to_owned()));
    assert!(
        store
            .get_message(&tenant(), &MessageId("m1".into()))
            .await
            .expect("get")
            .is_none()
    );
    assert!(active_ids(store, 3).await.is_empty());
    // The counter was never created: B's increment by 0 reads 0.
    assert_eq!(
        write(store, vec![incr(fence(3, 6), "c", 0, LONG)]).await,
        vec![WriteOutcome::Counter(0)]
    );

    // Equal and newer epochs are accepted; writes never move the fence.
    assert_eq!(
        write(
            store,
            vec![
                put_recipient(fence(3, 6), recipient("r1", "b@x")),
                put_recipient(fence(3, 7), recipient("r2", "c@x")),
            ]
        )
        .await,
        vec![WriteOutcome::Done, WriteOutcome::Done]
    );
    assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(6));

    // A holder may re-acquire (extend) at its epoch; nobody acquires at an older epoch.
    assert_eq!(
        store
            .acquire_leases(&b, Epoch(6), &[p], LONG)
            .await
            .expect("acquire"),
        vec![p]
    );
    store.release_leases(&b, &[p]).await.expect("release");
    assert!(
        store
            .acquire_leases(&a, Epoch(4), &[p], LONG)
            .await
            .expect("acquire")
            .is_empty()
    );
    assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(6));
    // Fences are per partition.
    assert_eq!(
        write(
            store,
            vec![put_recipient(fence(4, 1), recipient("r3", "d@x"))]
        )
        .await,
        vec![WriteOutcome::Done]
    );
}

pub async fn lease_ttl_expiry(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let (a, b) = (node("a"), node("b"));
    let p = PartitionId(9);
    assert_eq!(
        store
            .acquire_leases(&a, Epoch(1), &[p], SHORT)
            .await
            .expect("acquire"),
        vec![p]
    );
    assert!(
        store
            .acquire_leases(&b, Epoch(2), &[p], LONG)
            .await
            .expect("acquire")
            .is_empty()
    );
    tokio::time::sleep(PAST_SHORT).await;
    // A never renewed: its lease ran out and B takes over at the next epoch.
    assert_eq!(
        store
            .acquire_leases(&b, Epoch(2), &[p], LONG)
            .await
            .expect("acquire"),
        vec![p]
    );
    assert!(
        store
            .renew_leases(&a, &[p], LONG)
            .await
            .expect("renew")
            .is_empty()
    );
    assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(2));
    assert_eq!(
        write(store, vec![incr(fence(9, 1), "x", 1, LONG)]).await,
        vec![WriteOutcome::Fenced { stored: Epoch(2) }]
    );
    // A renewed lease outlives its first ttl.
    let q = PartitionId(10);
    store
        .acquire_leases(&a, Epoch(1), &[q], SHORT)
        .await
        .expect("acquire");
    tokio::time::sleep(SHORT / 2).await;
    assert_eq!(
        store.renew_leases(&a, &[q], LONG).await.expect("renew"),
        vec![q]
    );
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        store.renew_leases(&a, &[q], LONG).await.expect("renew"),
        vec![q]
    );
}

pub async fn renew_returns_only_held(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let (a, b, c) = (node("a"), node("b"), node("c"));
    let ps: Vec<PartitionId> = (0..5).map(PartitionId).collect();
    assert_eq!(
        store
            .acquire_leases(&a, Epoch(1), &ps[1..3], LONG)
            .await
            .expect("acquire"),
        ps[1..3].to_vec()
    );
    assert_eq!(
        store
            .acquire_leases(&b, Epoch(1), &ps[3..4], LONG)
            .await
            .expect("acquire"),
        vec![ps[3]]
    );
    assert_eq!(
        store.renew_leases(&a, &ps, LONG).await.expect("renew"),
        ps[1..3].to_vec()
    );
    // Releasing someone else's lease does nothing.
    store
        .release_leases(&a, &[ps[2], ps[3]])
        .await
        .expect("release");
    assert_eq!(
        store.renew_leases(&b, &[ps[3]], LONG).await.expect("renew"),
        vec![ps[3]]
    );
    assert_eq!(
        store.renew_leases(&a, &ps, LONG).await.expect("renew"),
        vec![ps[1]]
    );
    assert!(
        store
            .renew_leases(&c, &ps, LONG)
            .await
            .expect("renew")
            .is_empty()
    );

    // A node takes a whole table's worth of partitions in one call.
    let many: Vec<PartitionId> = (0..1400).map(PartitionId).collect();
    let got = store
        .acquire_leases(&c, Epoch(2), &many, LONG)
        .await
        .expect("acquire");
    let expected: Vec<PartitionId> = many
        .iter()
        .copied()
        .filter(|p| *p != ps[1] && *p != ps[3])
        .collect();
    assert_eq!(got, expected);
    assert_eq!(
        store.renew_leases(&c, &many, LONG).await.expect("renew"),
        expected
    );
    assert_eq!(
        store
            .partition_epoch(PartitionId(1399))
            .await
            .expect("epoch"),
        Epoch(2)
    );
    assert_eq!(store.partition_epoch(ps[1]).await.expect("epoch"), Epoch(1));
    store.release_leases(&c, &many).await.expect("release");
    assert!(
        store
            .renew_leases(&c, &many, LONG)
            .await
            .expect("renew")
            .is_empty()
    );
    assert!(
        store
            .acquire_leases(&c, Epoch(2), &[], LONG)
            .await
            .expect("acquire")
            .is_empty()
    );
}

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

pub async fn recipients(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(1, 1);
    assert!(
        store
            .get_recipient(&tenant(), "r1")
            .await
            .expect("get")
            .is_none()
    );
    let mut r1 = recipient("r1", "a@x");
    r1.phone = "+12125551234".to_owned();
    write(store, vec![put_recipient(f, r1.clone())]).await;
    assert_eq!(
        store.get_recipient(&tenant(), "r1").await.expect("get"),
        Some(r1)
    );
    write(store, vec![put_recipient(f, recipient("r1", "b@x"))]).await;
    assert_eq!(
        store.get_recipient(&tenant(), "r1").await.expect("get"),
        Some(recipient("r1", "b@x"))
    );
    // Ids may contain the key separator.
    write(store, vec![put_recipient(f, recipient("r:2", "c@x"))]).await;
    assert_eq!(
        store.get_recipient(&tenant(), "r:2").await.expect("get"),
        Some(recipient("r:2", "c@x"))
    );
    assert!(
        store
            .get_recipient(&TenantId("globex".into()), "r1")
            .await
            .expect("get")
            .is_none()
    );
    let erase = FencedOp {
        fence: f,
        op: WriteOp::EraseRecipient {
            tenant: tenant(),
            recipient_id: "r1".to_owned(),
        },
    };
    assert_eq!(write(store, vec![erase]).await, vec![WriteOutcome::Done]);
    assert!(
        store
            .get_recipient(&tenant(), "r1")
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        store
            .get_recipient(&tenant(), "r:2")
            .await
            .expect("get")
            .is_some()
    );
}

pub async fn counters(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(1, 1);
    let outcomes = write(
        store,
        vec![
            incr(f, "cap:r1", 1, SHORT),
            incr(f, "cap:r1", 2, LONG),
            incr(f, "cap:r1", -1, LONG),
            incr(f, "cap:r2", 7, LONG),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Counter(1),
            WriteOutcome::Counter(3),
            WriteOutcome::Counter(2),
            WriteOutcome::Counter(7),
        ]
    );
    // The ttl runs from creation: later increments do not extend it.
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        write(
            store,
            vec![incr(f, "cap:r1", 5, LONG), incr(f, "cap:r2", 1, LONG)]
        )
        .await,
        vec![WriteOutcome::Counter(5), WriteOutcome::Counter(8)]
    );
}

fn put_value(fence: Fence, key: &str, value: &[u8], ttl: Duration) -> FencedOp {
    FencedOp {
        fence,
        op: WriteOp::PutValue {
            key: key.to_owned(),
            value: value.to_vec(),
            ttl,
        },
    }
}

/// Expiring values: written fenced, replaced by a later write, gone after their ttl.
pub async fn expiring_values(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(2, 5);
    store
        .acquire_leases(&node("a"), Epoch(5), &[PartitionId(2)], LONG)
        .await
        .expect("acquire");
    assert_eq!(store.get_value("rcpt:x").await.expect("get"), None);
    let outcomes = write(
        store,
        vec![
            put_value(f, "rcpt:a", b"first", LONG),
            put_value(f, "rcpt:a", b"second", LONG),
            put_value(f, "rcpt:short", b"gone soon", SHORT),
            // A stale writer changes nothing.
            put_value(fence(2, 4), "rcpt:b", b"stale", LONG),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Done,
            WriteOutcome::Done,
            WriteOutcome::Done,
            WriteOutcome::Fenced { stored: Epoch(5) },
        ]
    );
    assert_eq!(
        store.get_value("rcpt:a").await.expect("get").as_deref(),
        Some(&b"second"[..])
    );
    assert_eq!(store.get_value("rcpt:b").await.expect("get"), None);
    assert!(store.get_value("rcpt:short").await.expect("get").is_some());
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(store.get_value("rcpt:short").await.expect("get"), None);
    assert!(store.get_value("rcpt:a").await.expect("get").is_some());
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

pub async fn singleton_lease(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert_eq!(
        store.singleton_holder("leader").await.expect("holder"),
        None
    );
    assert_eq!(
        store
            .try_singleton_lease("leader", "c1", SHORT)
            .await
            .expect("try"),
        "c1"
    );
    assert_eq!(
        store
            .try_singleton_lease("leader", "c2", LONG)
            .await
            .expect("try"),
        "c1"
    );
    assert_eq!(
        store.singleton_holder("leader").await.expect("holder"),
        Some("c1".to_owned())
    );
    // Names are independent.
    assert_eq!(
        store
            .try_singleton_lease("other", "c2", LONG)
            .await
            .expect("try"),
        "c2"
    );
    // The holder renews; a renewal outlives the first ttl.
    tokio::time::sleep(SHORT / 2).await;
    assert_eq!(
        store
            .try_singleton_lease("leader", "c1", SHORT)
            .await
            .expect("try"),
        "c1"
    );
    tokio::time::sleep(SHORT * 3 / 4).await;
    assert_eq!(
        store
            .try_singleton_lease("leader", "c2", LONG)
            .await
            .expect("try"),
        "c1"
    );
    // The leader dies (stops renewing): after the ttl another replica takes over.
    tokio::time::sleep(PAST_SHORT).await;
    assert_eq!(
        store.singleton_holder("leader").await.expect("holder"),
        None
    );
    assert_eq!(
        store
            .try_singleton_lease("leader", "c2", LONG)
            .await
            .expect("try"),
        "c2"
    );
    assert_eq!(
        store
            .try_singleton_lease("leader", "c1", LONG)
            .await
            .expect("try"),
        "c2"
    );
}

pub async fn blobs_and_api_keys(store: Arc<dyn Store>) {
    let store = store.as_ref();
    assert_eq!(store.get_blob("table").await.expect("get"), None);
    store.put_blob("table", vec![1, 2, 3]).await.expect("put");
    store
        .put_blob("table", vec![0, 255, 7, 0])
        .await
        .expect("put");
    assert_eq!(
        store.get_blob("table").await.expect("get"),
        Some(vec![0, 255, 7, 0])
    );
    store.put_blob("empty", Vec::new()).await.expect("put");
    assert_eq!(
        store.get_blob("empty").await.expect("get"),
        Some(Vec::new())
    );

    let digest = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert_eq!(store.tenant_for_api_key(digest).await.expect("get"), None);
    store.put_api_key(digest, &tenant()).await.expect("put");
    assert_eq!(
        store.tenant_for_api_key(digest).await.expect("get"),
        Some(tenant())
    );
    assert_eq!(store.tenant_for_api_key("00").await.expect("get"), None);
}

/// 200 tasks × 50 ops (in calls of 10) at once: every caller gets its own outcomes, in order.
pub async fn concurrent_writers(store: Arc<dyn Store>) {
    const TASKS: usize = 200;
    const OPS: usize = 50;
    const PER_CALL: usize = 10;
    let p = PartitionId(7);
    store
        .acquire_leases(&node("n1"), Epoch(3), &[p], LONG)
        .await
        .expect("acquire");
    let current = fence(7, 3);
    let stale = fence(7, 2);
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut shared_values = Vec::new();
            let mut own_sum = 0;
            for call in 0..OPS / PER_CALL {
                let mut ops = Vec::new();
                let mut expected = Vec::new();
                let mut shared_at = Vec::new();
                for k in 0..PER_CALL {
                    let j = call * PER_CALL + k;
                    let id = format!("m-{t}-{j}");
                    match j % 5 {
                        0 => {
                            ops.push(incr(current, "shared", 1, LONG));
                            shared_at.push(k);
                        }
                        1 => {
                            ops.push(accept(current, message(&id, &id, j as u64, 7), LONG));
                            expected.push((k, accepted(&id, false)));
                        }
                        2 => {
                            let prev = format!("m-{t}-{}", j - 1);
                            let sent = event(&prev, EventKind::EventSent, 2);
                            ops.push(append(current, &prev, vec![sent], t % 2 == 0));
                            expected.push((k, WriteOutcome::Done));
                        }
                        3 => {
                            ops.push(accept(stale, message(&id, &id, 0, 7), LONG));
                            expected.push((k, WriteOutcome::Fenced { stored: Epoch(3) }));
                        }
                        _ => {
                            own_sum += j as i64;
                            ops.push(incr(current, &format!("own-{t}"), j as i64, LONG));
                            expected.push((k, WriteOutcome::Counter(own_sum)));
                        }
                    }
                }
                let outcomes = store.write(ops).await.expect("write");
                assert_eq!(outcomes.len(), PER_CALL);
                for (k, want) in expected {
                    assert_eq!(outcomes[k], want, "task {t} call {call} op {k}");
                }
                for k in shared_at {
                    match outcomes[k] {
                        WriteOutcome::Counter(v) => shared_values.push(v),
                        ref other => panic!("task {t}: shared counter gave {other:?}"),
                    }
                }
            }
            shared_values
        }));
    }
    let mut shared_values = Vec::new();
    for task in tasks {
        shared_values.extend(task.await.expect("task"));
    }
    // Each increment by 1 saw a distinct value: outcomes went to the right callers.
    shared_values.sort_unstable();
    let total = (TASKS * OPS / 5) as i64;
    assert_eq!(shared_values, (1..=total).collect::<Vec<_>>());

    let active = active_ids(store.as_ref(), 7).await;
    assert_eq!(
        active.len(),
        TASKS / 2 * OPS / 5,
        "odd tasks' messages stay active"
    );
    for t in [0, 1, TASKS - 1] {
        let id = format!("m-{t}-1");
        assert_eq!(
            event_kinds(store.as_ref(), &id).await,
            vec![EventKind::EventAccepted as i32, EventKind::EventSent as i32]
        );
        assert_eq!(active.contains(&id), t % 2 == 1);
        assert!(
            store
                .get_message(&tenant(), &MessageId(format!("m-{t}-3")))
                .await
                .expect("get")
                .is_none()
        );
    }
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

/// Runs every case of the suite against one backend: `backend_suite!(on_memory, async {
/// (guard, store) })`, the expression written as in the calling module, makes a module `on_memory` with one `#[tokio::test]` per case; `store` is
/// an `Arc<dyn Store>` and `guard` lives as long as the case (a server, a directory).
#[macro_export]
macro_rules! backend_suite {
    ($module:ident, $make:expr) => {
        $crate::backend_suite!(@cases $module, $make;
            fencing,
            lease_ttl_expiry,
            renew_returns_only_held,
            idempotency,
            events_and_active_set,
            recipients,
            counters,
            expiring_values,
            counter_then_append,
            appends_expect_the_next_seq,
            accept_with_guarded_ops,
            singleton_lease,
            blobs_and_api_keys,
            concurrent_writers,
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
                    $crate::testsuite::$case(store).await;
                }
            )*
        }
    };
}

/// A store on its own `redis-server` (the server stops when the returned guard drops).
pub async fn redis_store(options: RedisOptions) -> (RedisServer, RedisStore) {
    let server = RedisServer::start();
    let store = RedisStore::connect(&server.url(), options)
        .await
        .expect("connect to the test redis");
    (server, store)
}

#[cfg(test)]
mod backends {
    use std::sync::Arc;

    use super::redis_store;
    use crate::Store;
    use crate::embedded::EmbeddedStore;

    crate::backend_suite!(on_redis, async {
        let (server, store) = redis_store(Default::default()).await;
        (server, Arc::new(store) as Arc<dyn Store>)
    });
    crate::backend_suite!(on_memory, async {
        let store = EmbeddedStore::open(None).expect("open");
        ((), Arc::new(store) as Arc<dyn Store>)
    });
    crate::backend_suite!(on_disk, async {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(Some(dir.path())).expect("open");
        (dir, Arc::new(store) as Arc<dyn Store>)
    });
}

#[cfg(test)]
mod specific {
    use std::time::Instant;

    use super::*;
    use crate::embedded::EmbeddedStore;
    use crate::redis::RedisTuning;

    // ---------------------------------------------------------------------------------------------
    // Backend-specific.

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_restart_keeps_durable_state_and_drops_leases() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = PartitionId(4);
        {
            let store = EmbeddedStore::open(Some(dir.path())).expect("open");
            store
                .acquire_leases(&node("a"), Epoch(4), &[p], LONG)
                .await
                .expect("acquire");
            let f = fence(4, 4);
            write(
                &store,
                vec![
                    accept(f, message("m1", "k1", 1, 4), LONG),
                    accept(f, message("m2", "k2", 2, 4), LONG),
                    append(f, "m1", vec![event("m1", EventKind::EventSent, 2)], false),
                    append(f, "m2", vec![event("m2", EventKind::EventFailed, 2)], true),
                    put_recipient(f, recipient("r1", "a@x")),
                    put_recipient(f, recipient("r2", "b@x")),
                    FencedOp {
                        fence: f,
                        op: WriteOp::EraseRecipient {
                            tenant: tenant(),
                            recipient_id: "r2".to_owned(),
                        },
                    },
                    incr(f, "c", 3, LONG),
                    incr(f, "c", 4, LONG),
                    incr(f, "short", 1, Duration::from_millis(1)),
                ],
            )
            .await;
            store.put_blob("table", vec![9, 9]).await.expect("blob");
            store.put_api_key("abc", &tenant()).await.expect("api key");
            store
                .try_singleton_lease("leader", "c1", LONG)
                .await
                .expect("singleton");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let store = EmbeddedStore::open(Some(dir.path())).expect("reopen");
        assert_eq!(
            event_kinds(&store, "m1").await,
            vec![EventKind::EventAccepted as i32, EventKind::EventSent as i32]
        );
        assert_eq!(
            event_kinds(&store, "m2").await,
            vec![
                EventKind::EventAccepted as i32,
                EventKind::EventFailed as i32
            ]
        );
        assert_eq!(
            active_ids(&store, 4).await,
            HashSet::from(["m1".to_owned()])
        );
        assert_eq!(
            store.get_recipient(&tenant(), "r1").await.expect("get"),
            Some(recipient("r1", "a@x"))
        );
        assert!(
            store
                .get_recipient(&tenant(), "r2")
                .await
                .expect("get")
                .is_none()
        );
        assert_eq!(
            store.get_blob("table").await.expect("blob"),
            Some(vec![9, 9])
        );
        assert_eq!(
            store.tenant_for_api_key("abc").await.expect("key"),
            Some(tenant())
        );
        // The fence survived; the leases did not.
        assert_eq!(store.partition_epoch(p).await.expect("epoch"), Epoch(4));
        assert_eq!(
            store.singleton_holder("leader").await.expect("holder"),
            None
        );
        assert!(
            store
                .renew_leases(&node("a"), &[p], LONG)
                .await
                .expect("renew")
                .is_empty()
        );
        assert!(
            store
                .acquire_leases(&node("b"), Epoch(3), &[p], LONG)
                .await
                .expect("acq")
                .is_empty()
        );
        assert_eq!(
            store
                .acquire_leases(&node("b"), Epoch(4), &[p], LONG)
                .await
                .expect("acquire"),
            vec![p]
        );
        let f = fence(4, 4);
        assert_eq!(
            write(
                &store,
                vec![
                    accept(f, message("m3", "k1", 1, 4), LONG),
                    incr(f, "c", 1, LONG),
                    incr(f, "short", 1, LONG),
                    put_recipient(fence(4, 3), recipient("r1", "z@x")),
                ]
            )
            .await,
            vec![
                accepted("m1", true),
                WriteOutcome::Counter(8),
                WriteOutcome::Counter(1),
                WriteOutcome::Fenced { stored: Epoch(4) },
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_torn_tail_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::embedded::LOG_FILE);
        {
            let store = EmbeddedStore::open(Some(dir.path())).expect("open");
            write(
                &store,
                vec![put_recipient(fence(1, 1), recipient("r1", "a@x"))],
            )
            .await;
        }
        let good_len = std::fs::metadata(&path).expect("log").len();
        // A crash in the middle of a record: a header announcing 100 bytes, then 10 of them.
        let mut torn = std::fs::read(&path).expect("read log");
        torn.extend_from_slice(&100u32.to_le_bytes());
        torn.extend_from_slice(&[0xAB; 14]);
        std::fs::write(&path, &torn).expect("write log");
        {
            let store = EmbeddedStore::open(Some(dir.path())).expect("open torn");
            assert_eq!(
                std::fs::metadata(&path).expect("log").len(),
                good_len,
                "tail cut"
            );
            assert!(
                store
                    .get_recipient(&tenant(), "r1")
                    .await
                    .expect("get")
                    .is_some()
            );
            write(
                &store,
                vec![put_recipient(fence(1, 1), recipient("r2", "b@x"))],
            )
            .await;
        }
        // A zero-filled tail (file extended, data never written) is torn too.
        let mut zeroed = std::fs::read(&path).expect("read log");
        zeroed.extend_from_slice(&[0; 64]);
        std::fs::write(&path, &zeroed).expect("write log");
        let store = EmbeddedStore::open(Some(dir.path())).expect("open zeroed");
        assert!(
            store
                .get_recipient(&tenant(), "r1")
                .await
                .expect("get")
                .is_some()
        );
        assert!(
            store
                .get_recipient(&tenant(), "r2")
                .await
                .expect("get")
                .is_some()
        );
        drop(store);

        // Damage followed by good data is refused, not skipped.
        let mut bytes = std::fs::read(&path).expect("read log");
        bytes[9] ^= 0xFF;
        std::fs::write(&path, &bytes).expect("write log");
        assert!(matches!(
            EmbeddedStore::open(Some(dir.path())),
            Err(crate::Error::Corrupt { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded_log_is_compacted_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(crate::embedded::LOG_FILE);
        {
            let store = EmbeddedStore::open(Some(dir.path())).expect("open");
            // ~12 MiB of overwrites of one 100 KiB blob.
            for i in 0..120u8 {
                store
                    .put_blob("table", vec![i; 100 << 10])
                    .await
                    .expect("blob");
            }
            write(
                &store,
                vec![accept(fence(1, 1), message("m1", "k1", 1, 1), LONG)],
            )
            .await;
        }
        assert!(std::fs::metadata(&path).expect("log").len() > 10 << 20);
        let store = EmbeddedStore::open(Some(dir.path())).expect("reopen");
        assert!(
            std::fs::metadata(&path).expect("log").len() < 1 << 20,
            "compacted"
        );
        assert_eq!(
            store.get_blob("table").await.expect("blob"),
            Some(vec![119; 100 << 10])
        );
        assert_eq!(
            active_ids(&store, 1).await,
            HashSet::from(["m1".to_owned()])
        );
        assert_eq!(
            event_kinds(&store, "m1").await,
            vec![EventKind::EventAccepted as i32]
        );
        drop(store);
        let store = EmbeddedStore::open(Some(dir.path())).expect("reopen compacted");
        assert_eq!(
            write(
                &store,
                vec![accept(fence(1, 1), message("m2", "k1", 1, 1), LONG)]
            )
            .await,
            vec![accepted("m1", true)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_reloads_flushed_scripts() {
        let (server, store) = redis_store(Default::default()).await;
        let client = ::redis::Client::open(server.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        ::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec_async(&mut conn)
            .await
            .expect("script flush");
        assert_eq!(
            write(&store, vec![incr(fence(1, 0), "c", 2, LONG)]).await,
            vec![WriteOutcome::Counter(2)]
        );
        ::redis::cmd("SCRIPT")
            .arg("FLUSH")
            .exec_async(&mut conn)
            .await
            .expect("script flush");
        assert_eq!(
            store
                .acquire_leases(&node("a"), Epoch(1), &[PartitionId(1)], LONG)
                .await
                .expect("acq"),
            vec![PartitionId(1)]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_key_prefixes_isolate_stores() {
        let server = RedisServer::start();
        let options = |prefix: &str| RedisOptions {
            key_prefix: prefix.to_owned(),
            ..Default::default()
        };
        let one = RedisStore::connect(&server.url(), options("one"))
            .await
            .expect("connect");
        let two = RedisStore::connect(&server.url(), options("two"))
            .await
            .expect("connect");
        one.acquire_leases(&node("a"), Epoch(5), &[PartitionId(1)], LONG)
            .await
            .expect("acq");
        assert_eq!(
            two.partition_epoch(PartitionId(1)).await.expect("epoch"),
            Epoch(0)
        );
        assert_eq!(
            write(&two, vec![incr(fence(1, 1), "c", 1, LONG)]).await,
            vec![WriteOutcome::Counter(1)]
        );
    }

    /// Small batches and a single commit slot still give every caller its outcomes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_tiny_batches() {
        let options = RedisOptions {
            tuning: RedisTuning {
                max_batch_ops: 3,
                max_batch_bytes: 64,
                commits_in_flight: 1,
                queue_capacity: 2,
                ..Default::default()
            },
            ..Default::default()
        };
        let (_server, store) = redis_store(options).await;
        let store: Arc<dyn Store> = Arc::new(store);
        concurrent_writers(store).await;
    }

    // ---------------------------------------------------------------------------------------------
    // Throughput (ignored by default; run in release mode).

    const THROUGHPUT_OPS: usize = 100_000;
    /// The throughput tests take turns: run side by side they would measure each other.
    static THROUGHPUT_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    const THROUGHPUT_TASKS: usize = 500;

    /// `THROUGHPUT_OPS` single-op AppendEvents calls from `THROUGHPUT_TASKS` tasks; returns ops/s.
    async fn append_throughput(store: Arc<dyn Store>) -> f64 {
        let per_task = THROUGHPUT_OPS / THROUGHPUT_TASKS;
        let started = Instant::now();
        let mut tasks = Vec::with_capacity(THROUGHPUT_TASKS);
        for t in 0..THROUGHPUT_TASKS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_task {
                    let id = format!("01JTHROUGHPUT{t:05}{i:06}");
                    let mut sent = event(&id, EventKind::EventSent, 2);
                    sent.attempt_id = format!("{id}-0");
                    sent.provider = "sandbox".to_owned();
                    let partition = ((t * per_task + i) % 4096) as u32;
                    let op = append(fence(partition, 0), &id, vec![sent], false);
                    let outcomes = store.write(vec![op]).await.expect("write");
                    assert_eq!(outcomes, vec![WriteOutcome::Done]);
                }
            }));
        }
        for task in tasks {
            task.await.expect("task");
        }
        (per_task * THROUGHPUT_TASKS) as f64 / started.elapsed().as_secs_f64()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "throughput figure; run with --release --ignored --nocapture"]
    async fn throughput_redis_append_events() {
        let _turn = THROUGHPUT_TURN.lock().await;
        let (server, store) = redis_store(Default::default()).await;
        let store = Arc::new(store);
        let rate = append_throughput(store.clone()).await;
        let stats = store.commit_stats();
        // The server's own time in the write script, to tell Redis cost from client cost.
        let client = ::redis::Client::open(server.url()).expect("client");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect");
        let info: String = ::redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut conn)
            .await
            .expect("info");
        let script_usec: f64 = info
            .lines()
            .find(|l| l.starts_with("cmdstat_evalsha:"))
            .and_then(|l| l.split(',').find_map(|f| f.strip_prefix("usec=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        println!(
            "redis: {rate:.0} ops/s ({} ops in {} batches, {:.1} ops/batch; \
         redis-server spent {:.2} us/op in the script)",
            stats.ops,
            stats.batches,
            stats.ops as f64 / stats.batches.max(1) as f64,
            script_usec / stats.ops.max(1) as f64
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "throughput figure; run with --release --ignored --nocapture"]
    async fn throughput_embedded_append_events() {
        let _turn = THROUGHPUT_TURN.lock().await;
        let memory = append_throughput(Arc::new(EmbeddedStore::open(None).expect("open"))).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let disk = EmbeddedStore::open(Some(dir.path())).expect("open");
        let disk = append_throughput(Arc::new(disk)).await;
        println!("embedded: {memory:.0} ops/s in memory, {disk:.0} ops/s with the log (fdatasync)");
    }
}
