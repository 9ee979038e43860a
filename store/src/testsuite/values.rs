//! # testsuite::values: counters, expiring values, blobs and API keys
//!
//! Owns the cases about the store's small records: counters (ttl from creation), expiring
//! values (fenced, replaced, gone after their ttl), opaque blobs and API keys. Must never
//! depend on one backend's internals: cases see only [`Store`].

use std::sync::Arc;

use herald_proto::{Epoch, PartitionId};

use super::{LONG, PAST_SHORT, SHORT, api_key, fence, incr, node, put_value, tenant, write};
use crate::{Store, WriteOutcome};

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
    let mut record = api_key("key-1", digest, 0);
    store.put_api_key(&record).await.expect("put");
    assert_eq!(
        store.tenant_for_api_key(digest).await.expect("get"),
        Some(tenant())
    );
    assert_eq!(store.tenant_for_api_key("00").await.expect("get"), None);
    assert_eq!(store.api_keys().await.expect("list"), vec![record.clone()]);
    // Revoked: the digest resolves to nothing; the record stays, marked.
    record.revoked_unix_ms = 42;
    store.put_api_key(&record).await.expect("revoke");
    assert_eq!(store.tenant_for_api_key(digest).await.expect("get"), None);
    assert_eq!(store.api_keys().await.expect("list"), vec![record]);
}
