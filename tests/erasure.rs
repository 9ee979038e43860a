//! Erasure that erases, on real processes: a `herald node` on a real `redis-server` stores a
//! person (phone, email, push token, name) and delivers them messages with bodies through the
//! sandbox providers; after `EraseRecipient`, a scan of **every key and every value** in Redis
//! finds none of it. Before the erasure the same scan finds them (the scan can fail).

use std::time::Duration;

use herald_proto::v1::{
    Channel, ChannelConsent, ConsentState, Content, EmailContent, EraseRecipientRequest, EventKind,
    MessageClass, MessageRequest, PushContent, PushPlatform, PushToken, Recipient, SmsContent,
    SuccessCondition, UpsertRecipientRequest, WaterfallStep,
};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, authed};
use herald_testkit::delivery::{get_message, send, wait_all_terminal};

const PHONE: &str = "+14155550142";
const EMAIL: &str = "zebulon.quux@example.org";
const PUSH_TOKEN: &str = "push-token-zq-7781";
const NAME: &str = "Zebulon Quux";
const BODY: &str = "your lab result Q-55123 is ready";

/// What must not survive: the phone with and without `+`, and the rest as they were given.
fn needles() -> Vec<&'static str> {
    vec![PHONE, &PHONE[1..], EMAIL, PUSH_TOKEN, NAME, BODY]
}

fn person() -> Recipient {
    Recipient {
        id: "r-erase".into(),
        phone: PHONE.into(),
        email: EMAIL.into(),
        push_tokens: vec![PushToken {
            token: PUSH_TOKEN.into(),
            platform: PushPlatform::Fcm as i32,
        }],
        attributes: [("name".to_owned(), NAME.to_owned())].into(),
        consent: [Channel::Push, Channel::Email, Channel::Sms]
            .into_iter()
            .map(|channel| ChannelConsent {
                channel: channel as i32,
                state: ConsentState::OptedIn as i32,
                ..Default::default()
            })
            // An opt-out of one sender's SMS: it must outlive the erasure (as a keyed hash).
            .chain(std::iter::once(ChannelConsent {
                channel: Channel::Sms as i32,
                state: ConsentState::OptedOut as i32,
                sender: PROMO_SENDER.into(),
                ..Default::default()
            }))
            .collect(),
        ..Default::default()
    }
}

const PROMO_SENDER: &str = "promo-sender";

fn message(key: &str, channel: Channel) -> MessageRequest {
    MessageRequest {
        recipient_id: "r-erase".into(),
        idempotency_key: key.into(),
        class: MessageClass::Transactional as i32,
        content: Some(Content {
            push: Some(PushContent {
                title: "Hello {{name}}".into(),
                body: BODY.into(),
                data: Default::default(),
            }),
            email: Some(EmailContent {
                subject: "For {{name}}".into(),
                text_body: BODY.into(),
                html_body: String::new(),
            }),
            sms: Some(SmsContent { text: BODY.into() }),
        }),
        waterfall: vec![WaterfallStep {
            channel: channel as i32,
            success: SuccessCondition::Accepted as i32,
            ..Default::default()
        }],
        variables: [("name".to_owned(), NAME.to_owned())].into(),
        ..Default::default()
    }
}

/// Every key of Redis and its value(s), as bytes, whatever its type.
async fn dump(url: &str) -> Vec<(String, Vec<Vec<u8>>)> {
    let mut conn = redis::Client::open(url)
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .expect("SCAN");
        keys.extend(batch);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    let mut out = Vec::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .expect("TYPE");
        let command = match kind.as_str() {
            "string" => redis::cmd("GET").arg(&key).clone(),
            "list" => redis::cmd("LRANGE").arg(&key).arg(0).arg(-1).clone(),
            "set" => redis::cmd("SMEMBERS").arg(&key).clone(),
            "hash" => redis::cmd("HGETALL").arg(&key).clone(),
            "zset" => redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES")
                .clone(),
            "none" => continue, // expired between SCAN and TYPE
            other => panic!("{key}: a {other} Herald does not write"),
        };
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => {
                let value: Option<Vec<u8>> = command.query_async(&mut conn).await.expect("GET");
                value.into_iter().collect()
            }
            _ => command.query_async(&mut conn).await.expect("read"),
        };
        out.push((key, values));
    }
    out
}

/// Where each needle turns up: `(needle, key)`.
fn findings(dump: &[(String, Vec<Vec<u8>>)]) -> Vec<(&'static str, String)> {
    let mut found = Vec::new();
    for needle in needles() {
        for (key, values) in dump {
            let in_value = values
                .iter()
                .any(|v| v.windows(needle.len()).any(|w| w == needle.as_bytes()));
            if key.contains(needle) || in_value {
                found.push((needle, key.clone()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_erasure_no_key_or_value_in_redis_names_the_person() {
    let cluster = Cluster::start(1, NodeSpec::default()).await;
    cluster
        .recipients(0)
        .await
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(person()),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");
    let client = cluster.delivery(0).await;
    let mut ids = Vec::new();
    for (key, channel) in [
        ("k-erase-push", Channel::Push),
        ("k-erase-email", Channel::Email),
        ("k-erase-sms", Channel::Sms),
    ] {
        ids.push(
            send(&client, API_KEY, message(key, channel))
                .await
                .expect("send")
                .message_id,
        );
    }
    wait_all_terminal(&client, API_KEY, &ids, Duration::from_secs(60)).await;

    let before = findings(&dump(&cluster.redis.url()).await);
    for needle in needles() {
        assert!(
            before.iter().any(|(n, _)| *n == needle),
            "before erasure the scan finds {needle:?} (else it proves nothing): {before:?}"
        );
    }
    assert!(
        before.iter().all(|(_, key)| !key.contains(&PHONE[1..])),
        "no key names the phone number even before erasure: {before:?}"
    );

    let erased = cluster
        .recipients(0)
        .await
        .erase_recipient(authed(
            EraseRecipientRequest {
                id: "r-erase".into(),
            },
            API_KEY,
        ))
        .await
        .expect("erase")
        .into_inner();
    assert!(erased.erased);

    let after = findings(&dump(&cluster.redis.url()).await);
    assert!(after.is_empty(), "left after erasure: {after:#?}");

    // The opt-out outlives the person: a new record with the same number, whose upsert does
    // not mention that sender, inherits it.
    let again = cluster
        .recipients(0)
        .await
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(Recipient {
                    id: "r-again".into(),
                    phone: PHONE.into(),
                    ..Default::default()
                }),
            },
            API_KEY,
        ))
        .await
        .expect("upsert again")
        .into_inner()
        .recipient
        .expect("recipient");
    let kept = again
        .consent
        .iter()
        .find(|c| c.channel() == Channel::Sms && c.sender == PROMO_SENDER)
        .unwrap_or_else(|| panic!("the opt-out is remembered: {:?}", again.consent));
    assert_eq!(kept.state(), ConsentState::OptedOut);
    assert_eq!(kept.source, "erasure(api)");

    // The messages stay, without content; their events stay and say `redacted`.
    for id in &ids {
        let log = get_message(&client, API_KEY, id).await.expect("kept");
        assert!(
            log.events
                .iter()
                .any(|e| e.kind() == EventKind::EventAttempted),
            "the events stay: {log:?}"
        );
        assert!(
            log.events
                .iter()
                .all(|e| e.reason.is_empty() || e.reason == "redacted"),
            "{:?}",
            log.events
        );
    }
}
