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
//! - this file: the shared helpers, [`crate::backend_suite!`], [`redis_store`], and at the end
//!   the backend-specific tests (restart, torn log, compaction, script reload) and throughput
//!   checks (`#[ignore]`d: `cargo test --release -p herald-store throughput -- --ignored
//!   --nocapture`).
//! - `writes`: fencing, recipients, concurrent writers.
//! - `messages`: idempotent acceptance, event logs and active sets, expected seqs, a counter
//!   with its append, accepts guarding the ops after them.
//! - `leases`: partition leases (ttl, renewal, release) and singleton leases.
//! - `values`: counters, expiring values, blobs and API keys.
//! - `redis_server`: [`RedisServer`], a throwaway `redis-server`.
//! - `failpoints` (feature `failpoints`): a case per failpoint of the store, run by
//!   `failpoint_suite!` in a test binary of their own (a configured failpoint is process-wide).

#[cfg(feature = "failpoints")]
pub mod failpoints;
mod leases;
mod messages;
mod redis_server;
mod values;
mod writes;

pub use leases::{lease_ttl_expiry, renew_returns_only_held, singleton_lease};
pub use messages::{
    accept_with_guarded_ops, appends_expect_the_next_seq, counter_then_append,
    ended_messages_expire_after_their_retention, erasure_redacts_messages_and_deletes_values,
    events_and_active_set, idempotency,
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
        },
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
            store
                .put_api_key(&api_key("k1", "abc", 0))
                .await
                .expect("api key");
            store
                .put_api_key(&api_key("k2", "def", 7))
                .await
                .expect("revoked api key");
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
        assert_eq!(store.tenant_for_api_key("def").await.expect("key"), None);
        assert_eq!(
            store.api_keys().await.expect("records"),
            vec![api_key("k1", "abc", 0), api_key("k2", "def", 7)]
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

    /// A CA and a server certificate for 127.0.0.1, written into `dir`.
    fn tls_files(dir: &std::path::Path, name: &str) -> crate::testsuite::RedisTls {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("params")
            .signed_by(&key, &issuer)
            .expect("cert");
        let files = crate::testsuite::RedisTls {
            cert: dir.join(format!("{name}-server.pem")),
            key: dir.join(format!("{name}-server.key")),
            ca: dir.join(format!("{name}-ca.pem")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write");
        std::fs::write(&files.key, key.serialize_pem()).expect("write");
        std::fs::write(&files.ca, ca.pem()).expect("write");
        files
    }

    /// `rediss://` to a `redis-server --tls-port`: verified against the configured CA, refused
    /// with another CA, and a CA with a plaintext URL is a config error naming the key.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rediss_verifies_the_server_against_the_ca() {
        let dir = tempfile::tempdir().expect("dir");
        let tls = tls_files(dir.path(), "real");
        let other = tls_files(dir.path(), "other");
        let server = RedisServer::start_tls(&tls);
        let url = server.tls_url().expect("tls port");
        let store = RedisStore::connect(
            &url,
            RedisOptions {
                tls_ca: Some(tls.ca.clone()),
                ..Default::default()
            },
        )
        .await
        .expect("rediss with the server's CA");
        assert_eq!(
            write(&store, vec![incr(fence(1, 1), "c", 1, LONG)]).await,
            vec![WriteOutcome::Counter(1)]
        );

        let wrong = RedisStore::connect(
            &url,
            RedisOptions {
                tls_ca: Some(other.ca.clone()),
                tuning: crate::redis::RedisTuning {
                    connect_timeout_ms: 2000,
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .expect_err("a server certificate of another CA is refused");
        assert!(
            wrong.to_string().to_lowercase().contains("certificate"),
            "{wrong}"
        );

        let plaintext_with_ca = RedisStore::connect(
            &server.url(),
            RedisOptions {
                tls_ca: Some(tls.ca.clone()),
                ..Default::default()
            },
        )
        .await
        .expect_err("a CA with redis:// is a mistake");
        assert!(
            plaintext_with_ca.to_string().contains("store.redis_ca"),
            "{plaintext_with_ca}"
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
