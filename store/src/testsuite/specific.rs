//! # testsuite::specific: tests of one backend, and throughput figures
//!
//! Owns what the shared suite cannot say about every backend: the embedded store's restart,
//! torn log and compaction, the Redis store's script reload, TLS, key prefixes and tiny
//! batches, and the throughput checks (`#[ignore]`d: `cargo test --release -p herald-store
//! throughput -- --ignored --nocapture`). Built only for this crate's own tests.

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

/// What `checks` expects of a store written by [`write_records`].
async fn check_records(store: &EmbeddedStore) {
    use super::records::{all_members, all_records, owned, sorted_fields};
    assert_eq!(
        sorted_fields(store, "cmp").await,
        owned(&[("def", b"spec"), ("n", b"5"), ("run", b"running")])
    );
    assert_eq!(
        sorted_fields(store, "credits").await,
        owned(&[("available", b"6")])
    );
    assert_eq!(
        all_records(store, "ledger").await,
        vec![b"x".to_vec(), b"y".to_vec(), b"tally".to_vec()]
    );
    assert_eq!(all_members(store, "aud").await, ["a", "b", "c"]);
    let index = crate::keys::value::partition_recipients(&tenant(), 2);
    assert_eq!(all_members(store, &index).await, ["r1"]);
    assert_eq!(
        sorted_fields(store, "funnel").await,
        owned(&[("sent", b"1")])
    );
    // Expired and written again: only the new write.
    assert_eq!(sorted_fields(store, "short").await, owned(&[("n", b"1")]));
    assert_eq!(store.record_count("short").await.expect("count"), 0);
    // Written into before it expired, then expired: gone (replay does not revive it).
    assert!(store.fields("merged").await.expect("fields").is_empty());
    assert_eq!(store.get_value("v").await.expect("value"), None, "deleted");
    let redacted = store
        .get_message(&tenant(), &MessageId("m-rec".into()))
        .await
        .expect("get")
        .expect("kept");
    assert_eq!(redacted.events[1].reason, crate::REDACTED);
}

/// Hashes, lists, sorted sets (and the recipient indexes), tallies, expiries and drops of
/// expired records, for [`check_records`].
async fn write_records(store: &EmbeddedStore) {
    use super::records::{add_fields, add_members, push_record, set_fields, take};
    let f = fence(2, 1);
    let mut sent = event("m-rec", EventKind::EventSent, 2);
    sent.reason = "provider said: hi Ada".into();
    let tallies = vec![
        crate::Tally::AddFields {
            key: "funnel".into(),
            deltas: vec![("sent".into(), 1)],
        },
        crate::Tally::PushRecord {
            key: "ledger".into(),
            record: b"tally".to_vec(),
        },
    ];
    let erase = FencedOp {
        fence: f,
        op: WriteOp::EraseRecipient {
            tenant: tenant(),
            recipient_id: "r2".into(),
        },
    };
    let outcomes = write(
        store,
        vec![
            set_fields(f, "cmp", &[("def", b"spec"), ("run", b"running")]),
            add_fields(f, "cmp", &[("n", 2), ("n", 3)]),
            add_fields(f, "credits", &[("available", 10)]),
            take(f, "credits", "available", 4, 0),
            push_record(f, "ledger", b"x"),
            push_record(f, "ledger", b"y"),
            add_members(f, "aud", &["c", "a", "b"]),
            put_recipient(f, recipient("r1", "a@x")),
            put_recipient(f, recipient("r2", "b@x")),
            erase,
            accept(f, message("m-rec", "k-rec", 1, 2), LONG),
            super::append_tallied(f, "m-rec", vec![sent], tallies),
            put_value(f, "v", b"gone", LONG),
            set_fields(f, "short", &[("old", b"1")]),
            push_record(f, "short", b"old"),
        ],
    )
    .await;
    assert!(
        outcomes
            .iter()
            .all(|o| !matches!(o, WriteOutcome::Fenced { .. }))
    );
    store.delete_values(&["v".into()]).await.expect("delete");
    let recipient_id = message("m-rec", "", 0, 2)
        .request
        .map(|r| r.recipient_id)
        .unwrap_or_default();
    store
        .redact_messages(&tenant(), &recipient_id)
        .await
        .expect("redact");
    let short = Duration::from_millis(200);
    store
        .expire(&["short".into()], short)
        .await
        .expect("expire");
    eventually("short expires", Duration::from_secs(10), || async {
        store.fields("short").await.expect("fields").is_empty()
    })
    .await;
    write(store, vec![add_fields(f, "short", &[("n", 1)])]).await;
    // Last: expires after a write into it, with no write after (no sweep logs its drop).
    write(store, vec![set_fields(f, "merged", &[("a", b"1")])]).await;
    store
        .expire(&["merged".into()], short)
        .await
        .expect("expire");
    write(store, vec![set_fields(f, "merged", &[("b", b"1")])]).await;
    eventually("merged expires", Duration::from_secs(10), || async {
        store.fields("merged").await.expect("fields").is_empty()
    })
    .await;
}

/// Records, the recipient index, tallies, expiries, deleted values and redactions survive a
/// restart (replay) and a compaction (snapshot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_restart_and_compaction_keep_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = EmbeddedStore::open(Some(dir.path())).expect("open");
        write_records(&store).await;
        check_records(&store).await;
    }
    {
        let store = EmbeddedStore::open(Some(dir.path())).expect("reopen");
        check_records(&store).await;
        // Enough log for a compaction at the next open (as in the compaction test).
        for i in 0..90u8 {
            store
                .put_blob("filler", vec![i; 100 << 10])
                .await
                .expect("blob");
        }
    }
    let path = dir.path().join(crate::embedded::LOG_FILE);
    let store = EmbeddedStore::open(Some(dir.path())).expect("reopen and compact");
    assert!(
        std::fs::metadata(&path).expect("log").len() < 1 << 20,
        "compacted"
    );
    check_records(&store).await;
    drop(store);
    let store = EmbeddedStore::open(Some(dir.path())).expect("reopen compacted");
    check_records(&store).await;
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

/// The id and partition of the `i`th message of task `t` in the throughput tests.
fn throughput_message(t: usize, i: usize, per_task: usize) -> (String, u32) {
    let id = format!("01JTHROUGHPUT{t:05}{i:06}");
    (id, ((t * per_task + i) % 4096) as u32)
}

/// Runs `op(t, i)` for every message of every task, `THROUGHPUT_TASKS` tasks at once, each
/// call answering `want`; returns calls per second.
async fn throughput_calls(
    store: &Arc<dyn Store>,
    op: fn(usize, usize, usize) -> FencedOp,
    want: fn(&str) -> WriteOutcome,
) -> f64 {
    let per_task = THROUGHPUT_OPS / THROUGHPUT_TASKS;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(THROUGHPUT_TASKS);
    for t in 0..THROUGHPUT_TASKS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let (id, _) = throughput_message(t, i, per_task);
                let outcomes = store.write(vec![op(t, i, per_task)]).await.expect("write");
                assert_eq!(outcomes, vec![want(&id)]);
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    (per_task * THROUGHPUT_TASKS) as f64 / started.elapsed().as_secs_f64()
}

/// Accepts the messages the throughput tests append to (appends expect the next seq of a
/// message that exists), untimed.
async fn accept_throughput_messages(store: &Arc<dyn Store>) {
    let op = |t, i, per_task| {
        let (id, partition) = throughput_message(t, i, per_task);
        accept(fence(partition, 0), message(&id, "", 0, partition), LONG)
    };
    throughput_calls(store, op, |id| accepted(id, false)).await;
}

/// `THROUGHPUT_OPS` single-op AppendEvents calls (each a message's next event, no tallies)
/// from `THROUGHPUT_TASKS` tasks; returns ops/s.
async fn append_throughput(store: &Arc<dyn Store>) -> f64 {
    let op = |t, i, per_task| {
        let (id, partition) = throughput_message(t, i, per_task);
        let mut sent = event(&id, EventKind::EventSent, 2);
        sent.attempt_id = format!("{id}-0");
        sent.provider = "sandbox".to_owned();
        append(fence(partition, 0), &id, vec![sent], false)
    };
    throughput_calls(store, op, |_| WriteOutcome::Done).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput figure; run with --release --ignored --nocapture"]
async fn throughput_redis_append_events() {
    let _turn = THROUGHPUT_TURN.lock().await;
    let (server, store) = redis_store(Default::default()).await;
    let store = Arc::new(store);
    let shared: Arc<dyn Store> = store.clone();
    accept_throughput_messages(&shared).await;
    // The server's own time in the write script, to tell Redis cost from client cost: counted
    // from here (the appends only).
    let client = ::redis::Client::open(server.url()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    ::redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .exec_async(&mut conn)
        .await
        .expect("reset stats");
    let before = store.commit_stats();
    let rate = append_throughput(&shared).await;
    let after = store.commit_stats();
    let (ops, batches) = (after.ops - before.ops, after.batches - before.batches);
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
        "redis: {rate:.0} ops/s ({ops} ops in {batches} batches, {:.1} ops/batch; \
         redis-server spent {:.2} us/op in the script)",
        ops as f64 / batches.max(1) as f64,
        script_usec / ops.max(1) as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput figure; run with --release --ignored --nocapture"]
async fn throughput_embedded_append_events() {
    let _turn = THROUGHPUT_TURN.lock().await;
    let memory: Arc<dyn Store> = Arc::new(EmbeddedStore::open(None).expect("open"));
    accept_throughput_messages(&memory).await;
    let memory = append_throughput(&memory).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let disk: Arc<dyn Store> = Arc::new(EmbeddedStore::open(Some(dir.path())).expect("open"));
    accept_throughput_messages(&disk).await;
    let disk = append_throughput(&disk).await;
    println!("embedded: {memory:.0} ops/s in memory, {disk:.0} ops/s with the log (fdatasync)");
}
