//! # testsuite::leases: partition leases and singleton leases
//!
//! Owns the cases about leases: their ttl, renewal (only what a node still holds), release,
//! acquisition raising the fencing epoch, and the control plane's singleton lease. Must never
//! depend on one backend's internals: cases see only [`Store`].

use std::sync::Arc;

use herald_proto::{Epoch, PartitionId};

use super::{LONG, PAST_SHORT, SHORT, fence, incr, node, write};
use crate::{Store, WriteOutcome};

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
