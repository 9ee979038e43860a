//! # testsuite::writes: fencing, recipients and many writers at once
//!
//! Owns the cases about what every write must respect: the fence (a stale owner changes
//! nothing), recipient records, and group commit under load (every caller gets its own
//! outcomes, in order). Must never depend on one backend's internals: cases see only
//! [`Store`].

use std::sync::Arc;

use herald_proto::v1::EventKind;
use herald_proto::{Epoch, MessageId, PartitionId, TenantId};

use super::{
    LONG, accept, accepted, active_ids, append, event, event_kinds, fence, incr, message, node,
    put_recipient, recipient, tenant, write,
};
use crate::{FencedOp, Store, WriteOp, WriteOutcome};

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
