//! Black-box tests of the public API over gRPC against real processes (`redis-server`,
//! `herald control`, 1–2 `herald node`s): idempotency, bad input (right code, the field named,
//! nothing stored), a message's life through the waterfall, `WatchMessages`, erasure, health and
//! reflection, fencing of a node acting on a stale epoch, and the CLI.
//!
//! Every wait is bounded: waits for a state go through the test kit's `eventually`, stream reads
//! and child processes have timeouts.

use std::ops::RangeInclusive;
use std::process::Stdio;
use std::time::{Duration, Instant};

use herald::demo::{demo_message, demo_recipient};
use herald_proto::partition::{fnv1a32, partition_of};
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    Channel, EraseRecipientRequest, Event, EventKind, GetRecipientRequest, MessageClass,
    MessageRequest, MessageStatus, PartitionTable, Recipient, SendRequest, UpsertRecipientRequest,
    UpsertRecipientsRequest, WatchMessagesRequest, WaterfallStep,
};
use herald_testkit::cluster::{
    self as support, API_KEY, Cluster, NodeSpec, OTHER_API_KEY, TENANT, authed,
};
use herald_testkit::delivery::{get_message, is_terminal, send, send_batch, wait_terminal};
use herald_testkit::eventually::eventually_ok;
use tonic::transport::Channel as GrpcChannel;
use tonic::{Code, Status};

/// How long a message may take to reach a terminal state (sandbox latency is a few ms).
const TERMINAL_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one read of a watch stream may block.
const STREAM_TIMEOUT: Duration = Duration::from_secs(15);
/// Route timeout of the node in the fencing test (the default is 20 s).
const FENCING_ROUTE_TIMEOUT_MS: u64 = 3_000;

type Delivery = DeliveryClient<GrpcChannel>;
type Recipients = RecipientsClient<GrpcChannel>;

async fn start(nodes: usize) -> Cluster {
    let started = Instant::now();
    let cluster = Cluster::start(
        nodes,
        NodeSpec {
            sandbox_latency_ms: 1,
            ..Default::default()
        },
    )
    .await;
    eprintln!("{nodes}-node cluster ready in {:?}", started.elapsed());
    cluster
}

/// The sandbox outcome bucket of a recipient: 0–6 push works, 7–8 push fails and email works,
/// 9 only SMS works.
fn bucket(id: &str) -> u32 {
    fnv1a32(id.as_bytes()) % 10
}

/// The first id `{prefix}-{i}` whose sandbox bucket is in `buckets` and that `accept` takes.
fn pick_id(prefix: &str, buckets: RangeInclusive<u32>, accept: impl Fn(&str) -> bool) -> String {
    (0..100_000)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| buckets.contains(&bucket(id)) && accept(id))
        .expect("an id with the wanted bucket")
}

fn owner_of(table: &PartitionTable, recipient_id: &str) -> String {
    let partition = partition_of(TENANT, recipient_id, table.partition_count);
    let index = table.owners[partition.0 as usize] as usize;
    table.nodes[index].node_id.clone()
}

async fn upsert(client: &mut Recipients, key: &str, recipient: Recipient) {
    let id = recipient.id.clone();
    client
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(recipient),
            },
            key,
        ))
        .await
        .unwrap_or_else(|s| panic!("upsert recipient {id}: {s:?}"));
}

async fn get_recipient(client: &mut Recipients, key: &str, id: &str) -> Result<Recipient, Status> {
    client
        .get_recipient(authed(GetRecipientRequest { id: id.to_string() }, key))
        .await
        .map(tonic::Response::into_inner)
}

/// The error of a call that must fail with INVALID_ARGUMENT naming `field`.
#[track_caller]
fn expect_invalid<T: std::fmt::Debug>(result: Result<T, Status>, field: &str) -> Status {
    let status = match result {
        Ok(reply) => panic!("expected INVALID_ARGUMENT naming {field}, got Ok({reply:?})"),
        Err(status) => status,
    };
    assert_eq!(
        status.code(),
        Code::InvalidArgument,
        "expected INVALID_ARGUMENT naming {field}: {status:?}"
    );
    assert!(
        status.message().contains(&format!("invalid {field}:")),
        "the error must name {field}: {:?}",
        status.message()
    );
    status
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(result: Result<T, Status>, code: Code, what: &str) -> Status {
    match result {
        Ok(reply) => panic!("{what}: expected {code:?}, got Ok({reply:?})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{what}: {status:?}");
            status
        }
    }
}

/// Proves nothing is stored under `key`: a valid message with that key is new, not a duplicate
/// (nor a conflict).
async fn assert_key_unused(client: &Delivery, recipient_id: &str, key: &str) {
    let reply = send(
        client,
        API_KEY,
        demo_message(recipient_id.to_string(), key.to_string()),
    )
    .await
    .unwrap_or_else(|s| panic!("valid send with key {key} after a rejection: {s:?}"));
    assert!(
        !reply.duplicate,
        "idempotency key {key} was stored by a rejected request (message {})",
        reply.message_id
    );
}

async fn redis_conn(cluster: &Cluster) -> redis::aio::MultiplexedConnection {
    redis::Client::open(cluster.redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis")
}

/// Number of stored messages of a tenant (one event-log key per message).
async fn stored_messages(conn: &mut redis::aio::MultiplexedConnection, tenant: &str) -> usize {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("herald:e:{tenant}:*"))
        .query_async(conn)
        .await
        .expect("KEYS");
    keys.len()
}

/// What a test expects of an event: its kind, channel and waterfall step.
type Shape = (EventKind, Channel, Option<u32>);

fn shape(events: &[Event]) -> Vec<Shape> {
    events
        .iter()
        .map(|e| (e.kind(), e.channel(), e.step))
        .collect()
}

#[track_caller]
fn assert_seq_gap_free(events: &[Event]) {
    let seqs: Vec<u32> = events.iter().map(|e| e.seq).collect();
    let expected: Vec<u32> = (1..=events.len() as u32).collect();
    assert_eq!(seqs, expected, "event seq must be 1..n without gaps");
}

// ---------------------------------------------------------------------------------------------
// 1. Idempotency
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_send() {
    let cluster = start(2).await;
    let d0 = cluster.delivery(0).await;
    let d1 = cluster.delivery(1).await;
    let mut r0 = cluster.recipients(0).await;
    let mut conn = redis_conn(&cluster).await;

    // --- Send: same key twice (through different nodes) → one message, same id.
    upsert(&mut r0, API_KEY, demo_recipient("idem-r".into(), 1)).await;
    let message = demo_message("idem-r".into(), "idem-key-1".into());
    let first = send(&d0, API_KEY, message.clone())
        .await
        .expect("first send");
    assert!(!first.duplicate, "first send is not a duplicate");
    assert!(!first.message_id.is_empty());
    let second = send(&d1, API_KEY, message.clone())
        .await
        .expect("second send");
    assert!(
        second.duplicate,
        "second send with the same key is a duplicate"
    );
    assert_eq!(second.message_id, first.message_id, "same key → same id");
    assert_eq!(
        stored_messages(&mut conn, TENANT).await,
        1,
        "two sends with one key store one message"
    );

    // Same key, other payload → ALREADY_EXISTS naming idempotency_key.
    let mut other = message.clone();
    if let Some(sms) = other.content.as_mut().and_then(|c| c.sms.as_mut()) {
        sms.text = "A different text".into();
    }
    let status = expect_code(
        send(&d0, API_KEY, other.clone()).await,
        Code::AlreadyExists,
        "same key, other payload",
    );
    assert!(
        status.message().contains("message.idempotency_key"),
        "the conflict must name message.idempotency_key: {:?}",
        status.message()
    );
    assert_eq!(stored_messages(&mut conn, TENANT).await, 1);

    // GetMessage of the id works, from either node.
    for client in [&d0, &d1] {
        let got = get_message(client, API_KEY, &first.message_id)
            .await
            .expect("get the message");
        let view = got.message.expect("a message view");
        assert_eq!(view.message_id, first.message_id);
        assert_eq!(view.recipient_id, "idem-r");
        assert_eq!(view.idempotency_key, "idem-key-1");
        assert_eq!(
            got.events.first().map(Event::kind),
            Some(EventKind::EventAccepted)
        );
    }

    // Keys are tenant-scoped: the same key under another tenant is another message.
    upsert(&mut r0, OTHER_API_KEY, demo_recipient("idem-r".into(), 1)).await;
    let globex = send(&d1, OTHER_API_KEY, message.clone())
        .await
        .expect("send under the other tenant");
    assert!(!globex.duplicate, "keys are tenant-scoped");
    assert_ne!(globex.message_id, first.message_id);
    // ... and messages are tenant-scoped too.
    expect_code(
        get_message(&d0, API_KEY, &globex.message_id).await,
        Code::NotFound,
        "acme reading a globex message",
    );
    expect_code(
        get_message(&d0, OTHER_API_KEY, &first.message_id).await,
        Code::NotFound,
        "globex reading an acme message",
    );
    assert_eq!(stored_messages(&mut conn, TENANT).await, 1);
    assert_eq!(stored_messages(&mut conn, "globex").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_send_batch() {
    let cluster = start(2).await;
    let d0 = cluster.delivery(0).await;
    let d1 = cluster.delivery(1).await;
    let mut r0 = cluster.recipients(0).await;
    let mut conn = redis_conn(&cluster).await;

    // The same batch twice (through different nodes) → the same ids, the second time all
    // duplicates; the batch spans both nodes' partitions.
    let base = stored_messages(&mut conn, TENANT).await;
    let table = cluster.table().await;
    let ids: Vec<String> = (0..6)
        .map(|i| {
            let owner = format!("node-{}", i % 2);
            pick_id(&format!("idem-b{i}"), 0..=9, |id| {
                owner_of(&table, id) == owner
            })
        })
        .collect();
    r0.upsert_recipients(authed(
        UpsertRecipientsRequest {
            recipients: ids
                .iter()
                .enumerate()
                .map(|(i, id)| demo_recipient(id.clone(), i))
                .collect(),
        },
        API_KEY,
    ))
    .await
    .expect("upsert batch recipients");
    let batch: Vec<MessageRequest> = ids
        .iter()
        .map(|id| demo_message(id.clone(), format!("key-{id}")))
        .collect();
    let first = send_batch(&d0, API_KEY, batch.clone())
        .await
        .expect("first batch");
    assert_eq!(first.len(), batch.len());
    assert!(first.iter().all(|r| !r.duplicate), "{first:?}");
    let mut unique: Vec<&String> = first.iter().map(|r| &r.message_id).collect();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), batch.len(), "one message per key");
    let again = send_batch(&d1, API_KEY, batch.clone())
        .await
        .expect("repeated batch");
    assert!(again.iter().all(|r| r.duplicate), "{again:?}");
    assert_eq!(
        again.iter().map(|r| &r.message_id).collect::<Vec<_>>(),
        first.iter().map(|r| &r.message_id).collect::<Vec<_>>(),
        "a repeated batch answers the same ids in request order"
    );
    assert_eq!(stored_messages(&mut conn, TENANT).await, base + batch.len());

    // The same key twice inside one batch: one message, the second a duplicate.
    let twice = vec![
        demo_message(ids[0].clone(), "key-in-batch-twice".into()),
        demo_message(ids[0].clone(), "key-in-batch-twice".into()),
    ];
    let replies = send_batch(&d0, API_KEY, twice)
        .await
        .expect("batch with one key twice");
    assert_eq!(replies[0].message_id, replies[1].message_id);
    assert!(!replies[0].duplicate);
    assert!(replies[1].duplicate);
    let base = base + batch.len() + 1;
    assert_eq!(stored_messages(&mut conn, TENANT).await, base);

    // A batch reusing a key with another payload: that item gets ALREADY_EXISTS naming its key
    // (and the id holding the key); the other items of the batch keep their own results, so a
    // client learns the ids of what was accepted (delivery.proto, SendBatch).
    let mut conflicting = batch[3].clone();
    conflicting.class = MessageClass::Marketing as i32;
    let fresh = demo_message(ids[0].clone(), "key-fresh-in-conflicting-batch".into());
    let replies = send_batch(
        &d0,
        API_KEY,
        vec![fresh.clone(), batch[1].clone(), conflicting],
    )
    .await
    .expect("a batch past validation answers per message");
    assert_eq!(replies.len(), 3);
    assert!(
        replies[0].error.is_none() && !replies[0].duplicate,
        "{:?}",
        replies[0]
    );
    assert!(
        replies[1].error.is_none() && replies[1].duplicate,
        "{:?}",
        replies[1]
    );
    let error = replies[2]
        .error
        .as_ref()
        .expect("the conflicting item has an error");
    assert_eq!(error.code, Code::AlreadyExists as i32, "{error:?}");
    assert!(
        error.message.contains("messages[2].idempotency_key"),
        "the conflict must name messages[2].idempotency_key: {:?}",
        error.message
    );
    assert_eq!(
        replies[2].message_id, first[3].message_id,
        "the id holding the key"
    );
    // Exactly the fresh message was stored; the conflicting one changed nothing.
    assert_eq!(stored_messages(&mut conn, TENANT).await, base + 1);
    let again = send_batch(&d0, API_KEY, vec![fresh])
        .await
        .expect("resend of the fresh message");
    assert!(again[0].duplicate && again[0].message_id == replies[0].message_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_conflict_reads_the_same_through_forwarding() {
    let cluster = start(2).await;
    let d0 = cluster.delivery(0).await;
    let mut r0 = cluster.recipients(0).await;
    // The conflict error reads the same whether the owner is the receiving node or another
    // one (the request is forwarded): it names the field and the message already there.
    let table = cluster.table().await;
    for owner in ["node-0", "node-1"] {
        let id = pick_id(&format!("idem-{owner}"), 0..=9, |id| {
            owner_of(&table, id) == owner
        });
        upsert(&mut r0, API_KEY, demo_recipient(id.clone(), 2)).await;
        let message = demo_message(id.clone(), format!("key-{id}"));
        let accepted = send(&d0, API_KEY, message.clone()).await.expect("send");
        let mut other = message;
        other.class = MessageClass::Marketing as i32;
        let status = expect_code(
            send(&d0, API_KEY, other).await,
            Code::AlreadyExists,
            &format!("conflict on a partition of {owner}"),
        );
        // Once wrapped twice when forwarded; the forwarded error now carries the bare id.
        assert_eq!(
            status.message(),
            format!(
                "message.idempotency_key: already used with a different payload (message {})",
                accepted.message_id
            ),
            "conflict on a partition of {owner} (received by node-0)"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. Bad input: the right code, the field named, nothing stored
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_names_the_field_and_stores_nothing() {
    let cluster = start(1).await;
    let mut d = cluster.delivery(0).await;
    let mut r = cluster.recipients(0).await;
    let mut conn = redis_conn(&cluster).await;
    let good = demo_recipient("bad-r".into(), 3);
    upsert(&mut r, API_KEY, good.clone()).await;
    // As stored: Herald stamps the consent ledger (source, time, audit trail).
    let good = get_recipient(&mut r, API_KEY, "bad-r")
        .await
        .expect("get bad-r");
    let valid = |key: &str| demo_message("bad-r".into(), key.into());

    // --- Authentication.
    let status = expect_code(
        send(&d, "no-such-key", valid("k-unknown-api-key")).await,
        Code::Unauthenticated,
        "unknown api key",
    );
    assert!(status.message().contains("unknown api key"), "{status:?}");
    let status = expect_code(
        d.send(tonic::Request::new(SendRequest {
            message: Some(valid("k-no-authorization")),
        }))
        .await,
        Code::Unauthenticated,
        "missing authorization",
    );
    assert!(status.message().contains("authorization"), "{status:?}");
    expect_code(
        r.upsert_recipient(tonic::Request::new(UpsertRecipientRequest {
            recipient: Some(demo_recipient("unauth-r".into(), 4)),
        }))
        .await,
        Code::Unauthenticated,
        "upsert without authorization",
    );
    expect_code(
        r.upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(demo_recipient("unauth-r".into(), 4)),
            },
            "no-such-key",
        ))
        .await,
        Code::Unauthenticated,
        "upsert with an unknown key",
    );
    expect_code(
        get_recipient(&mut r, API_KEY, "unauth-r").await,
        Code::NotFound,
        "recipient of a rejected upsert",
    );
    expect_code(
        get_recipient(&mut r, "no-such-key", "bad-r").await,
        Code::Unauthenticated,
        "get with an unknown key",
    );
    assert_key_unused(&d, "bad-r", "k-unknown-api-key").await;
    assert_key_unused(&d, "bad-r", "k-no-authorization").await;

    // --- Missing / empty recipient.
    expect_invalid(
        send(&d, API_KEY, demo_message("ghost".into(), "k-ghost".into())).await,
        "message.recipient_id",
    );
    assert_key_unused(&d, "bad-r", "k-ghost").await;
    expect_invalid(
        send(&d, API_KEY, demo_message(String::new(), "k-empty-r".into())).await,
        "message.recipient_id",
    );
    assert_key_unused(&d, "bad-r", "k-empty-r").await;
    // A recipient of another tenant does not exist for this one.
    upsert(
        &mut r,
        OTHER_API_KEY,
        demo_recipient("globex-only".into(), 5),
    )
    .await;
    expect_invalid(
        send(
            &d,
            API_KEY,
            demo_message("globex-only".into(), "k-globex-only".into()),
        )
        .await,
        "message.recipient_id",
    );
    assert_key_unused(&d, "bad-r", "k-globex-only").await;

    // --- Recipient fields: rejected, and the recipient is not stored.
    type SpoilRecipient = fn(&mut Recipient);
    let cases: [(&str, SpoilRecipient, &str); 5] = [
        (
            "bad-phone-short",
            |r| r.phone = "12345".into(),
            "recipient.phone",
        ),
        (
            "bad-phone-e164",
            |r| r.phone = "+1999".into(),
            "recipient.phone",
        ),
        (
            "bad-email-plain",
            |r| r.email = "not-an-email".into(),
            "recipient.email",
        ),
        (
            "bad-email-nodot",
            |r| r.email = "a@b".into(),
            "recipient.email",
        ),
        (
            "bad-tz",
            |r| r.time_zone = "Mars/Olympus_Mons".into(),
            "recipient.time_zone",
        ),
    ];
    for (id, spoil, field) in cases {
        let mut recipient = demo_recipient(id.into(), 7);
        spoil(&mut recipient);
        expect_invalid(
            r.upsert_recipient(authed(
                UpsertRecipientRequest {
                    recipient: Some(recipient),
                },
                API_KEY,
            ))
            .await,
            field,
        );
        expect_code(
            get_recipient(&mut r, API_KEY, id).await,
            Code::NotFound,
            &format!("recipient {id} after a rejected upsert"),
        );
        // A bad update of an existing recipient changes nothing either.
        let mut update = good.clone();
        // What a client sends: Herald's own fields stay out.
        update.consent_history.clear();
        spoil(&mut update);
        expect_invalid(
            r.upsert_recipient(authed(
                UpsertRecipientRequest {
                    recipient: Some(update),
                },
                API_KEY,
            ))
            .await,
            field,
        );
        assert_eq!(
            get_recipient(&mut r, API_KEY, "bad-r")
                .await
                .expect("get bad-r"),
            good,
            "a rejected update changed the recipient ({field})"
        );
    }
    // Bulk upsert: the bad one's index is named; none of the good ones is stored.
    let mut recipients: Vec<Recipient> = (0..4)
        .map(|i| demo_recipient(format!("bulk-{i}"), i))
        .collect();
    recipients[2].email = "a@b".into();
    expect_invalid(
        r.upsert_recipients(authed(UpsertRecipientsRequest { recipients }, API_KEY))
            .await,
        "recipients[2].email",
    );
    for i in 0..4 {
        expect_code(
            get_recipient(&mut r, API_KEY, &format!("bulk-{i}")).await,
            Code::NotFound,
            "recipient of a rejected bulk upsert",
        );
    }
    let too_many: Vec<Recipient> = (0..1001)
        .map(|i| demo_recipient(format!("bulk-many-{i}"), i))
        .collect();
    expect_invalid(
        r.upsert_recipients(authed(
            UpsertRecipientsRequest {
                recipients: too_many,
            },
            API_KEY,
        ))
        .await,
        "recipients",
    );
    expect_invalid(
        r.upsert_recipients(authed(
            UpsertRecipientsRequest {
                recipients: Vec::new(),
            },
            API_KEY,
        ))
        .await,
        "recipients",
    );
    expect_code(
        get_recipient(&mut r, API_KEY, "bulk-many-0").await,
        Code::NotFound,
        "recipient of an oversized bulk upsert",
    );

    // --- Waterfall shape.
    let step = |channel: Channel| WaterfallStep {
        channel: channel as i32,
        ..Default::default()
    };
    let mut message = valid("k-empty-step");
    message.waterfall = vec![step(Channel::Push), step(Channel::Unspecified)];
    expect_invalid(
        send(&d, API_KEY, message).await,
        "message.waterfall[1].channel",
    );
    assert_key_unused(&d, "bad-r", "k-empty-step").await;
    let mut message = valid("k-repeated-step");
    message.waterfall = vec![
        step(Channel::Push),
        step(Channel::Email),
        step(Channel::Push),
    ];
    let status = expect_invalid(
        send(&d, API_KEY, message).await,
        "message.waterfall[2].channel",
    );
    assert!(status.message().contains("PUSH"), "{status:?}");
    assert_key_unused(&d, "bad-r", "k-repeated-step").await;
    let mut message = valid("k-push-twice");
    message.waterfall = vec![step(Channel::Push), step(Channel::Push)];
    expect_invalid(
        send(&d, API_KEY, message).await,
        "message.waterfall[1].channel",
    );
    assert_key_unused(&d, "bad-r", "k-push-twice").await;

    // --- Size and class.
    let mut message = valid("k-oversized");
    if let Some(email) = message.content.as_mut().and_then(|c| c.email.as_mut()) {
        email.html_body = "x".repeat(100 * 1024);
    }
    let status = expect_invalid(send(&d, API_KEY, message).await, "message.content");
    assert!(status.message().contains("65536"), "{status:?}");
    assert_key_unused(&d, "bad-r", "k-oversized").await;
    let mut message = valid("k-no-class");
    message.class = MessageClass::Unspecified as i32;
    expect_invalid(send(&d, API_KEY, message).await, "message.class");
    assert_key_unused(&d, "bad-r", "k-no-class").await;
    expect_invalid(
        d.send(authed(SendRequest { message: None }, API_KEY)).await,
        "message",
    );

    // --- Batches.
    let before = stored_messages(&mut conn, TENANT).await;
    let too_many: Vec<MessageRequest> = (0..1001)
        .map(|i| valid(&format!("k-too-many-{i}")))
        .collect();
    let status = expect_invalid(send_batch(&d, API_KEY, too_many).await, "messages");
    assert!(status.message().contains("1000"), "{status:?}");
    expect_invalid(send_batch(&d, API_KEY, Vec::new()).await, "messages");
    assert_eq!(stored_messages(&mut conn, TENANT).await, before);
    assert_key_unused(&d, "bad-r", "k-too-many-0").await;
    assert_key_unused(&d, "bad-r", "k-too-many-1000").await;

    // One bad message (each kind of fault in turn) rejects the batch and stores none of it.
    type Spoil = fn(&mut MessageRequest);
    let faults: [(&str, Spoil, &str); 4] = [
        (
            "missing-recipient",
            |m| m.recipient_id = "ghost-7".into(),
            "messages[7].recipient_id",
        ),
        (
            "empty-recipient",
            |m| m.recipient_id.clear(),
            "messages[7].recipient_id",
        ),
        (
            "empty-step",
            |m| {
                m.waterfall = vec![WaterfallStep::default()];
            },
            "messages[7].waterfall[0].channel",
        ),
        (
            "no-class",
            |m| m.class = MessageClass::Unspecified as i32,
            "messages[7].class",
        ),
    ];
    for (name, spoil, field) in faults {
        let before = stored_messages(&mut conn, TENANT).await;
        let mut batch: Vec<MessageRequest> = (0..10)
            .map(|i| valid(&format!("k-batch-{name}-{i}")))
            .collect();
        spoil(&mut batch[7]);
        expect_invalid(send_batch(&d, API_KEY, batch.clone()).await, field);
        assert_eq!(
            stored_messages(&mut conn, TENANT).await,
            before,
            "a rejected batch ({name}) stored messages"
        );
        // Re-sending the good ones with the same keys: all new.
        batch.remove(7);
        let replies = send_batch(&d, API_KEY, batch)
            .await
            .expect("the good part of the batch");
        assert!(
            replies.iter().all(|r| !r.duplicate),
            "a rejected batch ({name}) stored some of its messages: {replies:?}"
        );
        assert_eq!(stored_messages(&mut conn, TENANT).await, before + 9);
    }
}

// ---------------------------------------------------------------------------------------------
// 3. A message's life: fallback, skipped steps, event log
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_life_falls_back_and_skips() {
    use Channel::{Email, Push, Sms, Unspecified};
    use EventKind::{
        EventAccepted as Accepted, EventAttempted as Attempted, EventFailed as Failed,
        EventFellBack as FellBack, EventSent as Sent, EventSkipped as Skipped,
    };
    let cluster = start(1).await;
    let d = cluster.delivery(0).await;
    let mut r = cluster.recipients(0).await;

    // Push fails (bucket 7–8) → falls back to email, which is sent.
    let push_fails = pick_id("life-fb", 7..=8, |_| true);
    upsert(&mut r, API_KEY, demo_recipient(push_fails.clone(), 11)).await;
    // Push fails and there is no email address → email skipped, SMS sent.
    let no_email = pick_id("life-noemail", 7..=8, |_| true);
    let mut recipient = demo_recipient(no_email.clone(), 12);
    recipient.email.clear();
    upsert(&mut r, API_KEY, recipient).await;
    // Push and email fail (bucket 9) → SMS.
    let sms_only = pick_id("life-sms", 9..=9, |_| true);
    upsert(&mut r, API_KEY, demo_recipient(sms_only.clone(), 13)).await;
    // Push works (bucket 0–6).
    let push_works = pick_id("life-push", 0..=6, |_| true);
    upsert(&mut r, API_KEY, demo_recipient(push_works.clone(), 14)).await;

    let cases: Vec<(String, Vec<Shape>)> = vec![
        (
            push_fails.clone(),
            vec![
                (Accepted, Unspecified, None),
                (Attempted, Push, Some(0)),
                (Failed, Push, Some(0)),
                (FellBack, Push, Some(0)),
                (Attempted, Email, Some(1)),
                (Sent, Email, Some(1)),
            ],
        ),
        (
            no_email.clone(),
            vec![
                (Accepted, Unspecified, None),
                (Attempted, Push, Some(0)),
                (Failed, Push, Some(0)),
                (FellBack, Push, Some(0)),
                (Skipped, Email, Some(1)),
                (Attempted, Sms, Some(2)),
                (Sent, Sms, Some(2)),
            ],
        ),
        (
            sms_only.clone(),
            vec![
                (Accepted, Unspecified, None),
                (Attempted, Push, Some(0)),
                (Failed, Push, Some(0)),
                (FellBack, Push, Some(0)),
                (Attempted, Email, Some(1)),
                (Failed, Email, Some(1)),
                (FellBack, Email, Some(1)),
                (Attempted, Sms, Some(2)),
                (Sent, Sms, Some(2)),
            ],
        ),
        (
            push_works.clone(),
            vec![
                (Accepted, Unspecified, None),
                (Attempted, Push, Some(0)),
                (Sent, Push, Some(0)),
            ],
        ),
    ];
    let mut sent = Vec::new();
    for (recipient_id, _) in &cases {
        let reply = send(
            &d,
            API_KEY,
            demo_message(recipient_id.clone(), format!("life-key-{recipient_id}")),
        )
        .await
        .unwrap_or_else(|s| panic!("send to {recipient_id}: {s:?}"));
        sent.push(reply.message_id);
    }
    for ((recipient_id, expected), message_id) in cases.iter().zip(&sent) {
        let reply = wait_terminal(&d, API_KEY, message_id, TERMINAL_TIMEOUT).await;
        let view = reply.message.clone().expect("a message view");
        assert_eq!(
            view.status(),
            MessageStatus::Delivered,
            "{recipient_id} (bucket {}): {reply:#?}",
            bucket(recipient_id)
        );
        assert_eq!(view.recipient_id, *recipient_id);
        assert_eq!(
            shape(&reply.events),
            *expected,
            "event log of {recipient_id} (bucket {})",
            bucket(recipient_id)
        );
        assert_seq_gap_free(&reply.events);
        for event in &reply.events {
            assert_eq!(&event.message_id, message_id);
            assert_eq!(&event.recipient_id, recipient_id);
            assert_eq!(event.partition, view.partition);
        }
        // Only the last event carries the terminal status.
        let (last, before) = reply.events.split_last().expect("events");
        assert_eq!(last.status(), MessageStatus::Delivered);
        assert!(
            before.iter().all(|e| e.status() == MessageStatus::Pending),
            "{:?}",
            reply.events
        );
        // Each attempt has an id and a provider; its outcome carries the same id; a failure
        // says why.
        let mut attempt = String::new();
        for event in &reply.events {
            match event.kind() {
                Attempted => {
                    assert!(!event.attempt_id.is_empty(), "{event:?}");
                    assert_eq!(event.provider, "sandbox", "{event:?}");
                    attempt = event.attempt_id.clone();
                }
                Sent | Failed => {
                    assert_eq!(event.attempt_id, attempt, "{event:?}");
                    assert!(!event.reason.is_empty(), "{event:?}");
                }
                _ => {}
            }
        }
    }
    // The skipped email step says why.
    let reply = wait_terminal(&d, API_KEY, &sent[1], TERMINAL_TIMEOUT).await;
    let skipped = reply
        .events
        .iter()
        .find(|e| e.kind() == Skipped)
        .expect("a skipped event");
    assert!(
        skipped.reason.contains("no_contact_point"),
        "skip reason: {:?}",
        skipped.reason
    );

    // Unknown and empty message ids.
    expect_code(
        get_message(&d, API_KEY, "01ARZ3NDEKTSV4RRFFQ69G5FAV").await,
        Code::NotFound,
        "unknown message id",
    );
    expect_invalid(get_message(&d, API_KEY, "").await, "message_id");
}

// ---------------------------------------------------------------------------------------------
// 4. WatchMessages
// ---------------------------------------------------------------------------------------------

async fn next_event(stream: &mut tonic::Streaming<Event>, what: &str) -> Event {
    match tokio::time::timeout(STREAM_TIMEOUT, stream.message()).await {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => panic!("{what}: stream ended"),
        Ok(Err(status)) => panic!("{what}: stream failed: {status:?}"),
        Err(_) => panic!("{what}: no event within {STREAM_TIMEOUT:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_messages_streams_in_order_and_terminal_only() {
    let cluster = start(2).await;
    let table = cluster.table().await;
    // The recipient lives on node-1 while the watch runs through node-0: the stream is merged
    // across nodes.
    let watched = pick_id("watch", 7..=8, |id| owner_of(&table, id) == "node-1");
    let noise = pick_id("watch-noise", 0..=6, |id| owner_of(&table, id) == "node-1");
    let mut r = cluster.recipients(0).await;
    upsert(&mut r, API_KEY, demo_recipient(watched.clone(), 21)).await;
    upsert(&mut r, API_KEY, demo_recipient(noise.clone(), 22)).await;

    let mut d0 = cluster.delivery(0).await;
    let d1 = cluster.delivery(1).await;
    let watch = |terminal_only: bool| WatchMessagesRequest {
        message_id: String::new(),
        recipient_id: watched.clone(),
        terminal_only,
    };
    let mut all = d0
        .watch_messages(authed(watch(false), API_KEY))
        .await
        .expect("watch all events")
        .into_inner();
    let mut terminal = d0
        .watch_messages(authed(watch(true), API_KEY))
        .await
        .expect("watch terminal events")
        .into_inner();
    // Another tenant watching the same recipient id sees nothing of acme's messages.
    let mut other_tenant = d0
        .watch_messages(authed(watch(false), OTHER_API_KEY))
        .await
        .expect("watch as another tenant")
        .into_inner();

    let noise_id = send(
        &d1,
        API_KEY,
        demo_message(noise.clone(), "watch-noise-key".into()),
    )
    .await
    .expect("send noise")
    .message_id;
    let message_id = send(
        &d0,
        API_KEY,
        demo_message(watched.clone(), "watch-key".into()),
    )
    .await
    .expect("send watched")
    .message_id;

    let mut streamed = Vec::new();
    loop {
        let event = next_event(&mut all, "watch (all)").await;
        assert_eq!(event.recipient_id, watched, "the filter holds: {event:?}");
        assert_ne!(event.message_id, noise_id);
        let done = is_terminal(event.status());
        streamed.push(event);
        if done {
            break;
        }
    }
    assert_eq!(
        streamed.first().map(Event::kind),
        Some(EventKind::EventAccepted),
        "the stream starts with accepted: {streamed:?}"
    );
    assert_seq_gap_free(&streamed);
    let log = wait_terminal(&d0, API_KEY, &message_id, TERMINAL_TIMEOUT).await;
    assert_eq!(
        shape(&streamed),
        shape(&log.events),
        "the watch streams the whole log, in order"
    );
    assert!(streamed.iter().all(|e| e.message_id == message_id));

    let only = next_event(&mut terminal, "watch (terminal only)").await;
    assert_eq!(only.message_id, message_id);
    assert!(
        is_terminal(only.status()),
        "terminal_only streamed a non-terminal event: {only:?}"
    );
    assert_eq!(only.status(), MessageStatus::Delivered);
    assert_eq!(only.seq, log.events.len() as u32);

    // Nothing for the other tenant, and nothing more on the terminal-only stream.
    let quiet = Duration::from_millis(500);
    assert!(
        tokio::time::timeout(quiet, other_tenant.message())
            .await
            .is_err(),
        "another tenant's watch saw acme's events"
    );
    assert!(
        tokio::time::timeout(quiet, terminal.message())
            .await
            .is_err(),
        "terminal_only streamed more than the terminal event"
    );
}

// ---------------------------------------------------------------------------------------------
// 5. EraseRecipient
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erase_recipient_removes_it() {
    let cluster = start(1).await;
    let d = cluster.delivery(0).await;
    let mut r = cluster.recipients(0).await;
    let erase = |id: &str| authed(EraseRecipientRequest { id: id.to_string() }, API_KEY);

    upsert(&mut r, API_KEY, demo_recipient("erase-r".into(), 31)).await;
    upsert(&mut r, OTHER_API_KEY, demo_recipient("erase-r".into(), 31)).await;
    get_recipient(&mut r, API_KEY, "erase-r")
        .await
        .expect("recipient before erasure");
    let first = r
        .erase_recipient(erase("erase-r"))
        .await
        .expect("erase")
        .into_inner();
    assert!(first.erased, "the first erasure erases");
    expect_code(
        get_recipient(&mut r, API_KEY, "erase-r").await,
        Code::NotFound,
        "recipient after erasure",
    );
    let again = r
        .erase_recipient(erase("erase-r"))
        .await
        .expect("erase again")
        .into_inner();
    assert!(!again.erased, "nothing left to erase");
    let never = r
        .erase_recipient(erase("never-existed"))
        .await
        .expect("erase unknown")
        .into_inner();
    assert!(!never.erased);
    expect_invalid(r.erase_recipient(erase("")).await, "id");

    // Sending to the erased recipient is bad input, and stores nothing.
    expect_invalid(
        send(
            &d,
            API_KEY,
            demo_message("erase-r".into(), "erase-key".into()),
        )
        .await,
        "message.recipient_id",
    );
    // Erasure is tenant-scoped: globex's recipient of the same id is still there.
    get_recipient(&mut r, OTHER_API_KEY, "erase-r")
        .await
        .expect("the other tenant's recipient survives");
    // Upserting it again makes it sendable again, and the rejected key was not used.
    upsert(&mut r, API_KEY, demo_recipient("erase-r".into(), 31)).await;
    assert_key_unused(&d, "erase-r", "erase-key").await;
}

// ---------------------------------------------------------------------------------------------
// 6. Health and reflection
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest as ReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse as ReflectionResponse;

    let cluster = start(1).await;
    let channel = support::channel(&cluster.node_addrs[0]).await;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", "herald.v1.Delivery", "herald.v1.Recipients"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("health check {service:?}: {s:?}"))
            .into_inner();
        assert_eq!(
            reply.status(),
            ServingStatus::Serving,
            "health of {service:?}"
        );
    }
    expect_code(
        health
            .check(HealthCheckRequest {
                service: "no.such.Service".into(),
            })
            .await,
        Code::NotFound,
        "health of an unknown service",
    );

    let mut reflection = ServerReflectionClient::new(channel);
    let ask = |request: ReflectionRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![
            ask(ReflectionRequest::ListServices(String::new())),
            ask(ReflectionRequest::FileContainingSymbol(
                "herald.v1.Delivery".into(),
            )),
        ]))
        .await
        .expect("reflection stream")
        .into_inner();
    let first = tokio::time::timeout(STREAM_TIMEOUT, replies.message())
        .await
        .expect("reflection reply in time")
        .expect("reflection reply")
        .expect("a reflection reply");
    let Some(ReflectionResponse::ListServicesResponse(list)) = first.message_response else {
        panic!("expected a service list: {first:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for expected in ["herald.v1.Delivery", "herald.v1.Recipients"] {
        assert!(
            names.contains(&expected),
            "{expected} not listed: {names:?}"
        );
    }
    let second = tokio::time::timeout(STREAM_TIMEOUT, replies.message())
        .await
        .expect("reflection reply in time")
        .expect("reflection reply")
        .expect("a reflection reply");
    let Some(ReflectionResponse::FileDescriptorResponse(files)) = second.message_response else {
        panic!("expected file descriptors: {second:?}");
    };
    assert!(!files.file_descriptor_proto.is_empty());
}

// ---------------------------------------------------------------------------------------------
// 7. Fencing at the node level
// ---------------------------------------------------------------------------------------------

/// Upserts until it succeeds (the restarted node is taking its leases), bounded.
async fn upsert_when_served(cluster: &Cluster, recipient: Recipient) {
    let what = format!("node serves {}", recipient.id);
    let recipient = &recipient;
    eventually_ok(&what, Duration::from_secs(30), || async move {
        let mut client = cluster.recipients(0).await;
        match client
            .upsert_recipient(authed(
                UpsertRecipientRequest {
                    recipient: Some(recipient.clone()),
                },
                API_KEY,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(status) => Err(format!(
                "{status:?}\n{}",
                support::tail(&cluster.nodes[0].log_text(), 30)
            )),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_node_writes_are_rejected() {
    let mut cluster = start(1).await;
    cluster.restart_node(0, &format!("route_timeout_ms = {FENCING_ROUTE_TIMEOUT_MS}"));
    let fenced = "fence-r".to_string();
    let partition = partition_of(TENANT, &fenced, cluster.partition_count).0;
    let other = pick_id("fence-other", 0..=9, |id| {
        partition_of(TENANT, id, cluster.partition_count).0 != partition
    });
    let original = demo_recipient(fenced.clone(), 41);
    upsert_when_served(&cluster, original.clone()).await;
    // As stored: Herald stamps the consent ledger (source, time, audit trail).
    let original = get_recipient(&mut cluster.recipients(0).await, API_KEY, &fenced)
        .await
        .expect("get the fenced recipient");
    upsert_when_served(&cluster, demo_recipient(other.clone(), 42)).await;
    cluster.wait_ready(1, Duration::from_secs(30)).await;

    let mut conn = redis_conn(&cluster).await;
    // Fences live in one hash, partition → epoch (node/src/store/redis.rs).
    let fence_key = "herald:fences".to_string();
    let epoch: u64 = redis::cmd("HGET")
        .arg(&fence_key)
        .arg(partition)
        .query_async::<Option<u64>>(&mut conn)
        .await
        .expect("GET fence")
        .expect("the partition has a fence");
    assert!(epoch > 0);
    // A new owner took the partition at a much newer epoch.
    let _: u64 = redis::cmd("HSET")
        .arg(&fence_key)
        .arg(partition)
        .arg(epoch + 1000)
        .query_async(&mut conn)
        .await
        .expect("SET fence");
    let messages_before = stored_messages(&mut conn, TENANT).await;

    let d = cluster.delivery(0).await;
    let started = Instant::now();
    let result = send(
        &d,
        API_KEY,
        demo_message(fenced.clone(), "fence-key".into()),
    )
    .await;
    let elapsed = started.elapsed();
    let status = match result {
        Ok(reply) => panic!("a write at a stale epoch was accepted: {reply:?}"),
        Err(status) => status,
    };
    assert!(
        matches!(status.code(), Code::FailedPrecondition | Code::Unavailable),
        "stale-epoch send: {status:?}"
    );
    eprintln!(
        "fenced send rejected after {elapsed:?}: {:?} {}",
        status.code(),
        status.message()
    );
    assert!(
        elapsed < Duration::from_millis(FENCING_ROUTE_TIMEOUT_MS + 5_000),
        "rejection took {elapsed:?}"
    );
    // Nothing stored: no idempotency record, no message, no active entry.
    let exists: u32 = redis::cmd("EXISTS")
        .arg(format!("herald:i:{TENANT}:fence-key"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the fenced send stored its idempotency key");
    assert_eq!(stored_messages(&mut conn, TENANT).await, messages_before);
    let active: u32 = redis::cmd("SCARD")
        .arg(format!("herald:a:{partition}"))
        .query_async(&mut conn)
        .await
        .expect("SCARD");
    assert_eq!(active, 0, "the fenced partition got an active message");

    // A recipient update in the fenced partition is rejected too, and changes nothing.
    let mut update = original.clone();
    update.consent_history.clear();
    update.email = "changed@example.com".into();
    let mut r = cluster.recipients(0).await;
    let status = expect_code_any(
        r.upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(update),
            },
            API_KEY,
        ))
        .await,
        &[Code::FailedPrecondition, Code::Unavailable],
        "stale-epoch upsert",
    );
    eprintln!("fenced upsert rejected: {status:?}");
    assert_eq!(
        get_recipient(&mut r, API_KEY, &fenced)
            .await
            .expect("get the fenced recipient"),
        original,
        "a fenced upsert changed the recipient"
    );

    // Another partition still works end to end.
    let reply = send(
        &d,
        API_KEY,
        demo_message(other.clone(), "fence-other-key".into()),
    )
    .await
    .expect("send in an unfenced partition");
    assert!(!reply.duplicate);
    let log = wait_terminal(&d, API_KEY, &reply.message_id, TERMINAL_TIMEOUT).await;
    assert_eq!(
        log.message.expect("view").status(),
        MessageStatus::Delivered,
        "{:?}",
        log.events
    );
}

#[track_caller]
fn expect_code_any<T: std::fmt::Debug>(
    result: Result<T, Status>,
    codes: &[Code],
    what: &str,
) -> Status {
    match result {
        Ok(reply) => panic!("{what}: expected one of {codes:?}, got Ok({reply:?})"),
        Err(status) => {
            assert!(codes.contains(&status.code()), "{what}: {status:?}");
            status
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 8. CLI smoke
// ---------------------------------------------------------------------------------------------

async fn herald_cli(args: &[&str]) -> std::process::Output {
    let mut command = tokio::process::Command::new(support::herald_bin());
    command
        .args(args)
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_CONFIG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(40), command.output())
        .await
        .unwrap_or_else(|_| panic!("herald {args:?} did not finish in time"))
        .expect("run herald")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_send_and_cluster_status() {
    let cluster = start(1).await;
    let mut r = cluster.recipients(0).await;
    upsert(&mut r, API_KEY, demo_recipient("cli-r".into(), 51)).await;
    let addr = cluster.node_addrs[0].as_str();

    let output = herald_cli(&[
        "send",
        "--addr",
        addr,
        "--api-key",
        API_KEY,
        "--recipient",
        "cli-r",
        "--text",
        "hi",
        "--wait-s",
        "10",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "herald send failed: {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("status DELIVERED"),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    let output = herald_cli(&[
        "cluster",
        "status",
        "--control",
        &cluster.control_addr,
        "--tls-dir",
        cluster.certs.to_str().expect("utf-8 path"),
        "--json",
    ])
    .await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "herald cluster status failed: {:?}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let json: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("cluster status is not JSON ({e}):\n{stdout}"));
    let epoch = json["epoch"].as_u64().expect("a numeric epoch");
    assert!(epoch > 0, "{json}");
    assert_eq!(json["partition_count"].as_u64(), Some(4096), "{json}");
    let nodes = json["nodes"].as_array().expect("a nodes array");
    assert_eq!(nodes.len(), 1, "{json}");
    assert_eq!(nodes[0]["node_id"], "node-0", "{json}");
    assert_eq!(nodes[0]["address"], addr, "{json}");
    assert_eq!(nodes[0]["owned_partitions"].as_u64(), Some(4096), "{json}");
    assert_eq!(nodes[0]["applied_epoch"].as_u64(), Some(epoch), "{json}");

    let output = herald_cli(&[
        "send",
        "--addr",
        addr,
        "--api-key",
        "no-such-key",
        "--recipient",
        "cli-r",
        "--text",
        "hi",
        "--wait-s",
        "10",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "herald send with a bad key must fail; stdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("unauthenticated") || lower.contains("unknown api key"),
        "stderr must say why:\n{stderr}"
    );
}
