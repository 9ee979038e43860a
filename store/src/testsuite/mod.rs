//! # testsuite: the one suite every [`Store`] backend must pass
//!
//! Each case is a `pub async fn(Arc<dyn Store>)`; [`crate::backend_suite!`] runs every case
//! against a backend (a new store per case). This crate runs it against Redis (a real
//! `redis-server` per test, see [`RedisServer`]), the embedded store in memory, and the embedded
//! store on disk; a new backend adds one `backend_suite!` line.
//!
//! Owns the cases and the helpers they share (ops, records, assertions). It must never return
//! errors (it panics, as a test cannot go on without its store) and never be used by
//! production code: it is built only with the `testsuite` feature and for this crate's own
//! tests.
//!
//! ## Layout
//! - this file: the shared helpers (ops, a bounded poll: `eventually`), [`crate::backend_suite!`]
//!   and [`redis_store`].
//! - `writes`: fencing, recipients, concurrent writers.
//! - `messages`: idempotent acceptance, event logs and active sets, expected seqs, a counter
//!   with its append, accepts guarding the ops after them.
//! - `leases`: partition leases (ttl, renewal, release) and singleton leases.
//! - `values`: counters, expiring values, blobs and API keys.
//! - `records`: hashes, lists and sorted sets (reads, paging, expiry), the partitions'
//!   recipient indexes, `Fence::NONE`.
//! - `guards`: `Require` (field is, take), nested guards, tallies with their append.
//! - `redis_server`: [`RedisServer`], a throwaway `redis-server`.
//! - `specific` (this crate's tests only): the backend-specific tests (restart, torn log,
//!   compaction, script reload, TLS) and throughput checks (`#[ignore]`d: `cargo test
//!   --release -p herald-store throughput -- --ignored --nocapture`).
//! - `failpoints` (feature `failpoints`): a case per failpoint of the store, run by
//!   `failpoint_suite!` in a test binary of their own (a configured failpoint is process-wide).

#[cfg(feature = "failpoints")]
pub mod failpoints;
mod guards;
mod leases;
mod messages;
mod records;
mod redis_server;
mod values;
mod writes;

pub use guards::{append_tallies, nested_guards, require_field_is, require_take};
pub use leases::{lease_ttl_expiry, renew_returns_only_held, singleton_lease};
pub use messages::{
    accept_with_guarded_ops, appends_expect_the_next_seq, counter_then_append,
    ended_messages_expire_after_their_retention, erasure_redacts_messages_and_deletes_values,
    events_and_active_set, idempotency,
};
pub use records::{
    expiring_records, fence_none_is_never_fenced, hash_fields, lists_of_records,
    partition_recipient_index, sorted_set_members,
};
pub use redis_server::{REDIS_SERVER_ENV, RedisServer, RedisTls};
pub use values::{blobs_and_api_keys, counters, expiring_values};
pub use writes::{concurrent_writers, fencing, recipients};

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

/// An API key record of [`tenant`] (`revoked_unix_ms` 0 = active).
pub(crate) fn api_key(id: &str, digest: &str, revoked_unix_ms: i64) -> crate::ApiKeyRecord {
    crate::ApiKeyRecord {
        id: id.to_owned(),
        tenant: tenant().0,
        key_sha256_hex: digest.to_owned(),
        label: format!("label of {id}"),
        created_unix_ms: 1,
        revoked_unix_ms,
    }
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
        ..Default::default()
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
            retention: Duration::ZERO,
            tallies: Vec::new(),
        },
    }
}

/// An append that applies `tallies` with itself.
fn append_tallied(
    fence: Fence,
    message_id: &str,
    events: Vec<Event>,
    tallies: Vec<crate::Tally>,
) -> FencedOp {
    let mut op = append(fence, message_id, events, false);
    if let WriteOp::AppendEvents { tallies: t, .. } = &mut op.op {
        *t = tallies;
    }
    op
}

/// Polls `check` until it holds, for at most `within`; panics naming `what` otherwise. For
/// states a backend reaches by itself (an expiry), instead of sleeping a fixed time.
async fn eventually<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A terminal append whose message expires `retention` after it.
fn append_ending(
    fence: Fence,
    message_id: &str,
    events: Vec<Event>,
    retention: Duration,
) -> FencedOp {
    let mut op = append(fence, message_id, events, true);
    if let WriteOp::AppendEvents { retention: r, .. } = &mut op.op {
        *r = retention;
    }
    op
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

/// Runs every case of the suite against one backend.
///
/// `backend_suite!(on_memory, async { (guard, store) })` makes a module `on_memory` with one
/// `#[tokio::test]` per case; the constructor expression is written as in the calling module,
/// `store` is an `Arc<dyn Store>` and `guard` lives as long as the case (a server, a
/// directory). Every case is listed here, by topic (the module that holds it).
#[macro_export]
macro_rules! backend_suite {
    ($module:ident, $make:expr) => {
        $crate::backend_suite!(@cases $module, $make;
            // writes: fencing, recipients, many writers at once.
            fencing,
            recipients,
            concurrent_writers,
            // messages: idempotency, event logs, expected seqs, guarded ops.
            idempotency,
            events_and_active_set,
            counter_then_append,
            appends_expect_the_next_seq,
            accept_with_guarded_ops,
            ended_messages_expire_after_their_retention,
            erasure_redacts_messages_and_deletes_values,
            // leases: partition leases and singleton leases.
            lease_ttl_expiry,
            renew_returns_only_held,
            singleton_lease,
            // values: counters, expiring values, blobs and API keys.
            counters,
            expiring_values,
            blobs_and_api_keys,
            // records: hashes, lists, sorted sets, their expiry, recipient indexes.
            hash_fields,
            lists_of_records,
            sorted_set_members,
            expiring_records,
            partition_recipient_index,
            fence_none_is_never_fenced,
            // guards: Require, nested guards, tallies with their append.
            require_field_is,
            require_take,
            nested_guards,
            append_tallies,
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
mod specific;
