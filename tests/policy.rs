//! Policy end to end: a real `redis-server`, `herald control` and a `herald node` process whose
//! SMS account is an SMPP session to an SMSC (rusmpp-based peer, in this test process).
//!
//! STOP arrives the way it does in production — a mobile-originated `deliver_sm` on the bound
//! session — and the person is opted out of that sender, gets exactly one confirmation, and the
//! next marketing SMS is suppressed (nothing reaches the SMSC). START opts back in.

use std::time::{Duration, Instant};

use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    Channel, ChannelConsent, ConsentState, Content, EventKind, GetMessageResponse,
    GetRecipientRequest, MessageClass, MessageRequest, MessageStatus, Recipient, SendRequest,
    SmsContent, SuccessCondition, UpsertRecipientRequest, WaterfallStep,
};
use herald_providers::peers::smsc::{Smsc, SmscConfig};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, authed, channel};
use herald_testkit::delivery::{get_message, send_until_terminal, wait_all_terminal, wait_for_log};
use herald_testkit::eventually::{eventually_holds, eventually_ok, try_eventually};
use tonic::transport::Channel as GrpcChannel;

const PHONE: &str = "+14155550199";
const SENDER: &str = "12345";
const SETTLE: Duration = Duration::from_secs(20);

async fn start() -> (Cluster, Smsc) {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let tables = format!(
        r#"
[providers.smpp-main]
kind = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "herald"
password = "secret"
source_addr = "{SENDER}"

[channels]
sms = ["smpp-main"]
"#,
        port = smsc.port()
    );
    let cluster = Cluster::start(
        1,
        NodeSpec {
            // Noon in California, whatever the time here: quiet hours stay out of this test.
            top: format!(
                "policy_clock_offset_ms = {}",
                offset_to_local(chrono_tz::America::Los_Angeles, 12)
            ),
            tables,
            ..Default::default()
        },
    )
    .await;
    (cluster, smsc)
}

/// The shift that makes the policy clock read `hour`:00 today in `zone`.
fn offset_to_local(zone: chrono_tz::Tz, hour: u32) -> i64 {
    use chrono::TimeZone;
    let real_now = chrono::Utc::now();
    let local = real_now.with_timezone(&zone).date_naive();
    let target = zone
        .from_local_datetime(&local.and_hms_opt(hour, 0, 0).expect("time"))
        .earliest()
        .expect("the hour exists");
    target.timestamp_millis() - real_now.timestamp_millis()
}

fn marketing_sms(key: &str) -> MessageRequest {
    MessageRequest {
        recipient_id: "r-stop".into(),
        idempotency_key: key.into(),
        class: MessageClass::Marketing as i32,
        content: Some(Content {
            sms: Some(SmsContent {
                text: "Sale today".into(),
            }),
            ..Default::default()
        }),
        waterfall: vec![WaterfallStep {
            channel: Channel::Sms as i32,
            success: SuccessCondition::Accepted as i32,
            timeout_ms: 0,
            provider_account: String::new(),
        }],
        ..Default::default()
    }
}

/// Sends [`marketing_sms`] with `key` and waits until it is terminal.
async fn send_and_wait(delivery: &DeliveryClient<GrpcChannel>, key: &str) -> GetMessageResponse {
    send_until_terminal(delivery, API_KEY, marketing_sms(key), SETTLE).await
}

async fn recipient(recipients: &mut RecipientsClient<GrpcChannel>) -> Recipient {
    recipients
        .get_recipient(authed(
            GetRecipientRequest {
                id: "r-stop".into(),
            },
            API_KEY,
        ))
        .await
        .expect("get recipient")
        .into_inner()
}

/// Submits to `PHONE` seen by the SMSC so far.
fn to_phone(smsc: &Smsc) -> Vec<String> {
    smsc.log()
        .into_iter()
        .filter(|r| r.destination.ends_with(&PHONE[1..]))
        .map(|r| r.text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_over_smpp_opts_out_confirms_once_and_suppresses_marketing() {
    let (cluster, smsc) = start().await;
    let channel = channel(&cluster.node_addrs[0]).await;
    let delivery = DeliveryClient::new(channel.clone());
    let mut recipients = RecipientsClient::new(channel);
    recipients
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(Recipient {
                    id: "r-stop".into(),
                    phone: PHONE.into(),
                    consent: vec![ChannelConsent {
                        channel: Channel::Sms as i32,
                        state: ConsentState::OptedIn as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");

    // Opted in: the marketing SMS goes out over SMPP.
    let log = send_and_wait(&delivery, "m-1").await;
    assert_eq!(
        log.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
    eventually_holds("first SMS at the SMSC", SETTLE, || {
        to_phone(&smsc).len() == 1
    })
    .await;

    // STOP as a mobile-originated deliver_sm (odd casing and spacing on purpose).
    smsc.send_mo(PHONE, SENDER, "  sToP \n").expect("mo");
    eventually_holds("one confirmation", SETTLE, || to_phone(&smsc).len() == 2).await;
    let person = recipient(&mut recipients).await;
    let entry = person
        .consent
        .iter()
        .find(|c| c.channel == Channel::Sms as i32 && c.sender == "smpp-main")
        .expect("a STOP entry for the sender");
    assert_eq!(entry.state(), ConsentState::OptedOut);
    assert_eq!(entry.source, "sms_keyword");
    assert!(entry.at_unix_ms > 0);
    assert!(
        person
            .consent_history
            .iter()
            .any(|c| c.source == "sms_keyword" && c.state() == ConsentState::OptedOut),
        "the change is in the audit trail: {:?}",
        person.consent_history
    );
    let confirmation = &to_phone(&smsc)[1];
    assert!(confirmation.contains("unsubscribed"), "{confirmation}");

    // A second STOP changes nothing and sends no second confirmation.
    smsc.send_mo(PHONE, SENDER, "STOP").expect("mo");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(to_phone(&smsc).len(), 2, "confirmation sent once");

    // The next marketing SMS is suppressed: it explains why and nothing reaches the SMSC.
    let log = send_and_wait(&delivery, "m-2").await;
    let last = log.events.last().expect("events");
    assert_eq!(last.status(), MessageStatus::Suppressed, "{:?}", log.events);
    assert_eq!(last.kind(), EventKind::EventSuppressed);
    assert!(
        last.reason.contains("opted_out{channel=sms"),
        "{}",
        last.reason
    );
    assert!(
        log.events
            .iter()
            .all(|e| e.kind() != EventKind::EventAttempted),
        "no attempt after STOP"
    );
    assert_eq!(to_phone(&smsc).len(), 2);

    // START opts back in (with its own confirmation); marketing flows again.
    smsc.send_mo(PHONE, SENDER, "START").expect("mo");
    eventually_holds("start confirmation", SETTLE, || to_phone(&smsc).len() == 3).await;
    let log = send_and_wait(&delivery, "m-3").await;
    assert_eq!(
        log.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
    eventually_holds("SMS after START", SETTLE, || to_phone(&smsc).len() == 4).await;

    // STOPALL from a number as SMSCs often give it (no `+`) leaves every sender; START lifts it.
    smsc.send_mo(&PHONE[1..], SENDER, "stopall").expect("mo");
    eventually_holds("stopall confirmation", SETTLE, || {
        to_phone(&smsc).len() == 5
    })
    .await;
    let person = recipient(&mut recipients).await;
    assert!(
        person
            .consent
            .iter()
            .any(|c| c.channel == Channel::Sms as i32
                && c.sender.is_empty()
                && c.state() == ConsentState::OptedOut
                && c.source == "sms_keyword"),
        "{:?}",
        person.consent
    );
    smsc.send_mo(PHONE, SENDER, "START").expect("mo");
    eventually_holds("start confirmation", SETTLE, || to_phone(&smsc).len() == 6).await;
    let person = recipient(&mut recipients).await;
    assert!(
        person
            .consent
            .iter()
            .filter(|c| c.channel == Channel::Sms as i32)
            .all(|c| c.state() == ConsentState::OptedIn),
        "{:?}",
        person.consent
    );
    // A client upsert that does not mention Herald's entries keeps them (the STOP history too).
    let before = recipient(&mut recipients).await;
    assert!(
        before.consent_history.len() >= 4,
        "{:?}",
        before.consent_history
    );
}

/// Quiet hours with a controllable clock: the node's policy clock reads 23:00 in New York. A
/// marketing message to a +1 212 number is deferred to 08:00 New York time (plus the spread);
/// a transactional one goes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_marketing_to_the_morning_and_let_transactional_through() {
    use chrono::{TimeZone, Timelike};
    let new_york = chrono_tz::America::New_York;
    // The policy clock reads 23:00 in New York today.
    let offset_ms = offset_to_local(new_york, 23);
    let cluster = Cluster::start(
        1,
        NodeSpec {
            top: format!("policy_clock_offset_ms = {offset_ms}"),
            ..Default::default()
        },
    )
    .await;
    let channel = channel(&cluster.node_addrs[0]).await;
    let mut delivery = DeliveryClient::new(channel.clone());
    let mut recipients = RecipientsClient::new(channel);
    recipients
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(Recipient {
                    id: "r-stop".into(),
                    // No time zone: inferred from +1 212 (New York).
                    phone: "+12125550143".into(),
                    consent: vec![ChannelConsent {
                        channel: Channel::Sms as i32,
                        state: ConsentState::OptedIn as i32,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");

    let marketing = delivery
        .send(authed(
            SendRequest {
                message: Some(marketing_sms("q-marketing")),
            },
            API_KEY,
        ))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    let is_deferred = |e: &herald_proto::v1::Event| e.kind() == EventKind::EventDeferred;
    let log = wait_for_log(&delivery, API_KEY, &marketing, "deferred", SETTLE, |log| {
        log.events.iter().any(is_deferred)
    })
    .await;
    let deferred = log
        .events
        .iter()
        .find(|e| is_deferred(e))
        .cloned()
        .expect("the deferred event");
    assert_eq!(deferred.status(), MessageStatus::Deferred);
    assert!(
        log.events
            .iter()
            .all(|e| e.kind() != EventKind::EventAttempted)
    );
    // Due at 08:00 New York (9 hours after the policy clock's 23:00) plus at most the 15-minute
    // spread, on the real clock.
    let policy_at = deferred.at_unix_ms + offset_ms;
    let wake_policy = chrono::Utc
        .timestamp_millis_opt(deferred.due_unix_ms + offset_ms)
        .single()
        .expect("due")
        .with_timezone(&new_york);
    assert_eq!(
        wake_policy.hour(),
        8,
        "wakes at 08:xx New York: {wake_policy}"
    );
    assert!(
        wake_policy.minute() < 15,
        "spread within 15 minutes: {wake_policy}"
    );
    let waited = deferred.due_unix_ms + offset_ms - policy_at;
    assert!(
        (9 * 3_600_000 - 60_000..9 * 3_600_000 + 16 * 60_000).contains(&waited),
        "deferred {waited} ms"
    );
    assert!(
        deferred.reason.contains("America/New_York") && deferred.reason.contains("08:00"),
        "the reason explains itself: {}",
        deferred.reason
    );
    assert!(
        deferred.reason.contains("phone_prefix:+1212"),
        "{}",
        deferred.reason
    );
    assert!(
        !deferred.reason.contains("5550143"),
        "no phone number in reasons"
    );

    // A campaign's own window (22:00-23:30) lets it go at 23:00; a bad one is refused.
    let mut evening = marketing_sms("q-evening");
    evening.quiet_hours = Some(herald_proto::v1::QuietHoursOverride {
        start: "22:00".into(),
        end: "23:30".into(),
        ..Default::default()
    });
    let mut broken = evening.clone();
    broken.idempotency_key = "q-broken".into();
    if let Some(q) = broken.quiet_hours.as_mut() {
        q.end = "25:00".into();
    }
    let refused = delivery
        .send(authed(
            SendRequest {
                message: Some(broken),
            },
            API_KEY,
        ))
        .await
        .expect_err("bad window");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("message.quiet_hours"),
        "{}",
        refused.message()
    );
    let id = delivery
        .send(authed(
            SendRequest {
                message: Some(evening),
            },
            API_KEY,
        ))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    wait_for_log(
        &delivery,
        API_KEY,
        &id,
        "evening campaign delivered",
        SETTLE,
        |log| log.events.last().map(|e| e.status()) == Some(MessageStatus::Delivered),
    )
    .await;

    // Transactional: at once.
    let mut transactional = marketing_sms("q-transactional");
    transactional.class = MessageClass::Transactional as i32;
    let id = delivery
        .send(authed(
            SendRequest {
                message: Some(transactional),
            },
            API_KEY,
        ))
        .await
        .expect("send")
        .into_inner()
        .message_id;
    let log = wait_for_log(
        &delivery,
        API_KEY,
        &id,
        "transactional delivered",
        SETTLE,
        |log| log.events.last().map(|e| e.status()) == Some(MessageStatus::Delivered),
    )
    .await;
    assert!(
        log.events
            .iter()
            .all(|e| e.kind() != EventKind::EventDeferred)
    );
}

/// The most sends the SMSC saw in any one-second window (by its own receive clock).
fn busiest_second(smsc: &Smsc) -> (usize, u64) {
    let mut times: Vec<u64> = smsc.log().iter().map(|r| r.since_start_ms).collect();
    times.sort_unstable();
    let mut best = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= 1000 {
            start += 1;
        }
        best = best.max(end - start + 1);
    }
    let span = match (times.first(), times.last()) {
        (Some(first), Some(last)) => last - first,
        _ => 0,
    };
    (best, span)
}

async fn submit_sms(cluster: &Cluster, prefix: &str, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for (b, start) in (0..n).step_by(100).enumerate() {
        let node = b % cluster.node_addrs.len();
        let channel = channel(&cluster.node_addrs[node]).await;
        let mut recipients = RecipientsClient::new(channel.clone());
        let mut delivery = DeliveryClient::new(channel);
        let end = (start + 100).min(n);
        let people: Vec<Recipient> = (start..end)
            .map(|i| Recipient {
                id: format!("{prefix}{i}"),
                phone: format!("+1212{:07}", 2_000_000 + i),
                consent: vec![ChannelConsent {
                    channel: Channel::Sms as i32,
                    state: ConsentState::OptedIn as i32,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        recipients
            .upsert_recipients(authed(
                herald_proto::v1::UpsertRecipientsRequest { recipients: people },
                API_KEY,
            ))
            .await
            .expect("upsert recipients");
        let messages = (start..end)
            .map(|i| {
                let mut m = marketing_sms(&format!("{prefix}-k{i}"));
                m.recipient_id = format!("{prefix}{i}");
                m.class = MessageClass::Transactional as i32;
                m
            })
            .collect();
        let reply = delivery
            .send_batch(authed(
                herald_proto::v1::SendBatchRequest { messages },
                API_KEY,
            ))
            .await
            .expect("send batch")
            .into_inner();
        ids.extend(reply.results.into_iter().map(|r| r.message_id));
    }
    ids
}

/// Multi-process rate limit: 3 nodes, one SMS sender limited to 50/s, 3,000 messages submitted
/// across the nodes; the SMSC's own receive log never shows more than 50 in a second, and the
/// run takes close to the ideal 60 s. Then again while the node that owns the sender's schedule
/// is killed with -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sms_rate_limit_holds_across_nodes_and_through_failover() {
    const N: usize = 3_000;
    const RATE: usize = 50;
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let tables = format!(
        r#"
[providers.smpp-main]
kind = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "herald"
password = "secret"
source_addr = "{SENDER}"

[channels]
sms = ["smpp-main"]

[rate_limits]
smpp-main = {RATE}
"#,
        port = smsc.port()
    );
    let cluster = Cluster::start(
        3,
        NodeSpec {
            tables,
            ..Default::default()
        },
    )
    .await;

    // Phase 1: no failures.
    let started = Instant::now();
    let ids = submit_sms(&cluster, "rl-a-", N).await;
    wait_all_terminal(
        &cluster.delivery(0).await,
        API_KEY,
        &ids,
        Duration::from_secs(150),
    )
    .await;
    let elapsed = started.elapsed();
    let (busiest, span_ms) = busiest_second(&smsc);
    let received = smsc.log().len();
    eprintln!(
        "RATE: {received} SMS at the SMSC in {:.1} s (first to last {:.1} s; ideal {} s); busiest second {busiest} (limit {RATE})",
        elapsed.as_secs_f64(),
        span_ms as f64 / 1000.0,
        N / RATE
    );
    assert_eq!(received, N);
    assert!(
        busiest as f64 <= RATE as f64 * 1.01,
        "a second had {busiest} sends"
    );
    // The limit is the contract; how close the schedule comes to it is measured by the
    // benchmarks. Here only a gross under-use fails (a schedule that lost its leases or
    // slots), with room for a loaded CI machine (seen: 68 s for an ideal 60 s).
    let ideal_ms = (N / RATE) as u64 * 1000;
    assert!(
        span_ms <= ideal_ms + ideal_ms / 2,
        "took {span_ms} ms, ideal {ideal_ms} ms"
    );

    // Phase 2: kill -9 the node that schedules the sender, mid-run.
    let table = cluster.table().await;
    let partition = herald_node::channels::partition("smpp-main", table.owners.len() as u32);
    let owner_index = table.owners[partition.0 as usize] as usize;
    let owner = table.nodes[owner_index].node_id.clone();
    let victim: usize = owner
        .trim_start_matches("node-")
        .parse()
        .expect("node index");
    let survivor = (victim + 1) % 3;
    let before = smsc.log().len();
    let submitted_at = Instant::now();
    let ids = submit_sms(&cluster, "rl-b-", N).await;
    tokio::time::sleep(Duration::from_secs(15).saturating_sub(submitted_at.elapsed())).await;
    cluster.nodes[victim].kill_9();
    eprintln!("RATE: killed {owner}, the owner of the sender's schedule");
    wait_all_terminal(
        &cluster.delivery(survivor).await,
        API_KEY,
        &ids,
        Duration::from_secs(180),
    )
    .await;
    let log = smsc.log();
    let mut times: Vec<u64> = log[before..].iter().map(|r| r.since_start_ms).collect();
    times.sort_unstable();
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..times.len() {
        while times[end] - times[start] >= 1000 {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    let span_ms = times.last().copied().unwrap_or(0) - times.first().copied().unwrap_or(0);
    eprintln!(
        "RATE: with the kill, {} SMS (≥ {N}: an attempt cut off by the kill is re-sent once) in {:.1} s; busiest second {busiest}",
        times.len(),
        span_ms as f64 / 1000.0
    );
    assert!(times.len() >= N);
    // Arrival times at the peer, on a machine busy with the takeover: one send of jitter is
    // allowed here (seen once: 51). What this phase guards against, two schedules granting
    // at once after the kill, would show as nearly twice the rate.
    assert!(
        busiest <= RATE + 1,
        "a second had {busiest} sends during the failover"
    );
}

/// Frequency caps on sliding windows and the person's own preferences: the tenant allows one
/// marketing message an hour; a muted topic is suppressed; a channel limit skips that step and
/// the waterfall goes on. Transactional messages skip the marketing caps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caps_and_preferences_explain_what_they_stop() {
    let cluster = Cluster::start(
        1,
        NodeSpec {
            top: format!(
                "policy_clock_offset_ms = {}",
                offset_to_local(chrono_tz::America::New_York, 12)
            ),
            tenant: "marketing_caps = [{ max = 1, window_s = 3600 }]".into(),
            ..Default::default()
        },
    )
    .await;
    let channel = channel(&cluster.node_addrs[0]).await;
    let delivery = DeliveryClient::new(channel.clone());
    let mut recipients = RecipientsClient::new(channel);
    let opted_in = |channel: Channel| ChannelConsent {
        channel: channel as i32,
        state: ConsentState::OptedIn as i32,
        ..Default::default()
    };
    recipients
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(Recipient {
                    id: "r-stop".into(),
                    email: "caps@example.com".into(),
                    phone: "+12125550144".into(),
                    consent: vec![opted_in(Channel::Email), opted_in(Channel::Sms)],
                    preferences: Some(herald_proto::v1::Preferences {
                        muted_topics: vec!["deals".into()],
                        email: Some(herald_proto::v1::ChannelLimits {
                            max_per_day: Some(0),
                            max_per_week: None,
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");
    let email_then_sms = |key: &str, topic: &str, class: MessageClass| {
        let mut m = marketing_sms(key);
        m.class = class as i32;
        m.topic = topic.into();
        if let Some(content) = m.content.as_mut() {
            content.email = Some(herald_proto::v1::EmailContent {
                subject: "Hello".into(),
                text_body: "News".into(),
                html_body: String::new(),
            });
        }
        m.waterfall = vec![
            WaterfallStep {
                channel: Channel::Email as i32,
                success: SuccessCondition::Accepted as i32,
                ..Default::default()
            },
            WaterfallStep {
                channel: Channel::Sms as i32,
                success: SuccessCondition::Accepted as i32,
                ..Default::default()
            },
        ];
        m
    };
    let run = |request: MessageRequest| send_until_terminal(&delivery, API_KEY, request, SETTLE);
    // The person's email limit (0 a day) skips the email step; SMS carries it.
    let first = run(email_then_sms("c-1", "news", MessageClass::Marketing)).await;
    let skipped = first
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventSkipped)
        .expect("email skipped");
    assert!(
        skipped.reason.starts_with("preference_limit{channel=email"),
        "{}",
        skipped.reason
    );
    assert_eq!(
        first.events.last().map(|e| (e.status(), e.channel())),
        Some((MessageStatus::Delivered, Channel::Sms))
    );
    // One marketing message an hour: the second is suppressed, saying when it could go.
    let second = run(email_then_sms("c-2", "news", MessageClass::Marketing)).await;
    let last = second.events.last().expect("events");
    assert_eq!(last.status(), MessageStatus::Suppressed);
    assert!(
        last.reason
            .starts_with("frequency_cap{count=1, max=1, window_s=3600, retry_at_unix_ms="),
        "{}",
        last.reason
    );
    // A muted topic.
    let muted = run(email_then_sms("c-3", "deals", MessageClass::Marketing)).await;
    assert_eq!(
        muted.events.last().map(|e| e.reason.as_str()),
        Some("preference{muted_topic=deals}")
    );
    // Transactional messages skip marketing caps and preferences.
    let transactional = run(email_then_sms("c-4", "", MessageClass::Transactional)).await;
    assert_eq!(
        transactional.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
}

/// The sandbox's accepted calls, from the node's `/metrics`.
async fn accepted_calls(http: &str) -> u64 {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .find(|l| {
            l.starts_with("herald_provider_calls_total{")
                && l.contains("account=\"sandbox\"")
                && l.contains("result=\"accepted\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Block-rate breaker: a marketing campaign whose complaints turn up to 0.5% midway pauses
/// within one evaluation window of crossing the 0.3% threshold; nothing is sent while it is
/// paused; resuming lets the campaign go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn complaints_pause_the_campaign_until_resumed() {
    use herald_proto::v1::breakers_client::BreakersClient;
    use herald_proto::v1::{BreakerRequest, EmailContent};
    const N: usize = 4_000;
    let cluster = Cluster::start(
        1,
        NodeSpec {
            // 8 messages at a time, 20 ms a call: at most 400 sends a second, so the campaign
            // takes about 10 s and the pause comes midway.
            sandbox_latency_ms: 20,
            sandbox: "receipt_delay_ms = 50\ncomplaint_share = 0.005\nnegatives_after_calls = 1000"
                .into(),
            top: format!(
                "policy_clock_offset_ms = {}\nmax_messages_in_progress = 8",
                offset_to_local(chrono_tz::America::New_York, 12)
            ),
            tables: "[block_rate.email]\nwarn = 0.001\npause = 0.003\nmin_sample = 500\nwindow_ms = 3600000\n".into(),
            http: true,
            ..Default::default()
        },
    )
    .await;
    let http = cluster.http_addrs[0].clone();
    let channel = channel(&cluster.node_addrs[0]).await;
    let mut breakers = BreakersClient::new(channel.clone());
    let mut recipients = RecipientsClient::new(channel.clone());
    let mut delivery = DeliveryClient::new(channel);
    for start in (0..N).step_by(500) {
        let people = (start..start + 500)
            .map(|i| Recipient {
                id: format!("br-{i}"),
                email: format!("br{i}@example.com"),
                consent: vec![ChannelConsent {
                    channel: Channel::Email as i32,
                    state: ConsentState::OptedIn as i32,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        recipients
            .upsert_recipients(authed(
                herald_proto::v1::UpsertRecipientsRequest { recipients: people },
                API_KEY,
            ))
            .await
            .expect("upsert");
    }
    let mut message_ids = Vec::with_capacity(N);
    for start in (0..N).step_by(500) {
        let messages = (start..start + 500)
            .map(|i| MessageRequest {
                recipient_id: format!("br-{i}"),
                idempotency_key: format!("br-k{i}"),
                class: MessageClass::Marketing as i32,
                campaign_id: "spring".into(),
                content: Some(Content {
                    email: Some(EmailContent {
                        subject: "Spring sale".into(),
                        text_body: "Everything must go".into(),
                        html_body: String::new(),
                    }),
                    ..Default::default()
                }),
                waterfall: vec![WaterfallStep {
                    channel: Channel::Email as i32,
                    success: SuccessCondition::Accepted as i32,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let sent = delivery
            .send_batch(authed(
                herald_proto::v1::SendBatchRequest { messages },
                API_KEY,
            ))
            .await
            .expect("send batch")
            .into_inner();
        message_ids.extend(sent.results.into_iter().map(|r| r.message_id));
    }
    let campaign = || BreakerRequest {
        campaign_id: "spring".into(),
        sender: String::new(),
    };
    let paused = eventually_ok("campaign paused", Duration::from_secs(120), || {
        let mut breakers = breakers.clone();
        async move {
            let status = breakers
                .get(authed(campaign(), API_KEY))
                .await
                .expect("breaker")
                .into_inner();
            if status.paused {
                Ok(status)
            } else {
                Err(format!("{status:?}"))
            }
        }
    })
    .await;
    eprintln!("BREAKER: paused {paused:?}");
    assert_eq!(paused.level, "pause");
    // Crossed 0.3% and caught at once (the breaker evaluates every report, 200 ms): complaints
    // run at 0.5% of calls after the first 1,000, so the ratio is past 0.3% but still well
    // below the raw 0.5% when it pauses, and a good part of the campaign is held back.
    assert!(paused.ratio >= 0.003 && paused.ratio < 0.005, "{paused:?}");
    assert!((1_000..N as u64).contains(&paused.sample), "{paused:?}");

    // Nothing goes out while paused (after this node's cache caught up).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let held = accepted_calls(&http).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(accepted_calls(&http).await, held, "sends while paused");
    assert!(
        (held as usize) < N,
        "the pause held back part of the campaign"
    );
    let bad_request = breakers
        .resume(authed(BreakerRequest::default(), API_KEY))
        .await
        .expect_err("one of campaign_id and sender");
    assert_eq!(bad_request.code(), tonic::Code::InvalidArgument);

    // Resume (the campaign, and the sandbox sender that paused on the same traffic): sending
    // goes on.
    let resumed = breakers
        .resume(authed(campaign(), API_KEY))
        .await
        .expect("resume")
        .into_inner();
    assert!(!resumed.paused);
    breakers
        .resume(authed(
            BreakerRequest {
                campaign_id: String::new(),
                sender: "sandbox".into(),
            },
            API_KEY,
        ))
        .await
        .expect("resume sender");
    let wanted = held + 20.min(N as u64 - held);
    let http_addr = &http;
    let resumed = try_eventually(Duration::from_secs(60), || async move {
        let now = accepted_calls(http_addr).await;
        if now >= wanted {
            Ok(now)
        } else {
            Err(format!("{now} accepted, held at {held}"))
        }
    })
    .await;
    let now = match resumed {
        Ok(now) => now,
        Err(timed_out) => {
            // What the held messages and the node's breaker cache say, for the failure report.
            let mut waiting = Vec::new();
            for id in &message_ids {
                let log = get_message(&delivery, API_KEY, id).await.expect("get");
                if !herald_testkit::delivery::is_terminal_log(&log) {
                    waiting.push(format!(
                        "{id}: {}",
                        herald_testkit::delivery::describe(&log)
                    ));
                }
            }
            let metrics = reqwest::get(format!("http://{http}/metrics"))
                .await
                .expect("metrics")
                .text()
                .await
                .expect("metrics body");
            let breakers: Vec<&str> = metrics
                .lines()
                .filter(|l| l.contains("breaker") || l.contains("deferred") || l.contains("timer"))
                .collect();
            panic!(
                "sending resumed: {timed_out}\n{} messages not terminal, first: {:#?}\nmetrics: {breakers:#?}\nnode log: {}",
                waiting.len(),
                &waiting[..waiting.len().min(5)],
                herald_testkit::cluster::tail(&cluster.nodes[0].log_text(), 60),
            );
        }
    };
    eprintln!("BREAKER: held at {held} sends while paused; {now} after the resume");
}

/// Messenger-style channel rules on an SMPP account: outside the 24-hour session window (the
/// person never wrote) only tagged messages go; a reply opens the window; the account's tier
/// admits at most 2 distinct recipients a day.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_window_and_tier_limit() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let tables = format!(
        r#"
[providers.smpp-main]
kind = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "herald"
password = "secret"
source_addr = "{SENDER}"

[channels]
sms = ["smpp-main"]

[channel_rules.smpp-main]
session_window_h = 24
unique_recipients_per_day = 2
"#,
        port = smsc.port()
    );
    let cluster = Cluster::start(
        1,
        NodeSpec {
            tables,
            ..Default::default()
        },
    )
    .await;
    let channel = channel(&cluster.node_addrs[0]).await;
    let delivery = DeliveryClient::new(channel.clone());
    let mut recipients = RecipientsClient::new(channel);
    let phones = ["+12125550171", "+12125550172", "+12125550173"];
    for (i, phone) in phones.iter().enumerate() {
        recipients
            .upsert_recipient(authed(
                UpsertRecipientRequest {
                    recipient: Some(Recipient {
                        id: format!("sw-{i}"),
                        phone: (*phone).into(),
                        ..Default::default()
                    }),
                },
                API_KEY,
            ))
            .await
            .expect("upsert");
    }
    let message = |i: usize, key: &str, tag: &str| {
        let mut m = marketing_sms(key);
        m.recipient_id = format!("sw-{i}");
        m.class = MessageClass::Transactional as i32;
        m.tag = tag.into();
        m
    };
    let outcome = async |m: MessageRequest| {
        send_until_terminal(&delivery, API_KEY, m, SETTLE)
            .await
            .events
            .last()
            .cloned()
            .unwrap_or_default()
    };
    // Never wrote, untagged: outside the session window.
    let last = outcome(message(0, "sw-1", "")).await;
    assert_eq!(last.status(), MessageStatus::Suppressed);
    assert!(
        last.reason
            .contains("session_window{account=smpp-main, hours=24, last_inbound_unix_ms=never"),
        "{}",
        last.reason
    );
    // Tagged: goes (recipient 1 of the tier).
    assert_eq!(
        outcome(message(0, "sw-2", "ACCOUNT_UPDATE")).await.status(),
        MessageStatus::Delivered
    );
    // A reply opens the window: untagged goes now.
    smsc.send_mo(&phones[0][1..], SENDER, "thanks!")
        .expect("mo");
    let outcome = &outcome;
    let mut attempt = 0;
    eventually_ok("the reply opens the window", SETTLE, || {
        let untagged = message(0, &format!("sw-3-{attempt}"), "");
        attempt += 1;
        async move {
            let last = outcome(untagged).await;
            if last.status() == MessageStatus::Delivered {
                Ok(())
            } else {
                Err(last.reason)
            }
        }
    })
    .await;
    // Tier of 2 distinct recipients a day: the second gets in, the third does not, the first
    // still does.
    assert_eq!(
        outcome(message(1, "sw-4", "ACCOUNT_UPDATE")).await.status(),
        MessageStatus::Delivered
    );
    let third = outcome(message(2, "sw-5", "ACCOUNT_UPDATE")).await;
    assert_eq!(third.status(), MessageStatus::Suppressed);
    assert!(
        third
            .reason
            .contains("tier_limit{account=smpp-main, unique_recipients_24h=2, tier=2}"),
        "{}",
        third.reason
    );
    assert_eq!(
        outcome(message(0, "sw-6", "ACCOUNT_UPDATE")).await.status(),
        MessageStatus::Delivered
    );
}

/// A tenant's own quota on an account: `"sandbox@acme" = 20` holds acme to 20 sends a second
/// (counted from the provider's answers recorded in the events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_quota_on_an_account() {
    const N: usize = 100;
    let cluster = Cluster::start(
        1,
        NodeSpec {
            sandbox_latency_ms: 1,
            tables: "[rate_limits]\n\"sandbox@acme\" = 20\n".into(),
            ..Default::default()
        },
    )
    .await;
    let ids = submit_sms(&cluster, "tq-", N).await;
    let started = Instant::now();
    wait_all_terminal(
        &cluster.delivery(0).await,
        API_KEY,
        &ids,
        Duration::from_secs(60),
    )
    .await;
    let delivery = cluster.delivery(0).await;
    let mut sent_at = Vec::new();
    for id in &ids {
        let log = get_message(&delivery, API_KEY, id).await.expect("get");
        sent_at.extend(
            log.events
                .iter()
                .filter(|e| e.kind() == EventKind::EventSent)
                .map(|e| e.at_unix_ms),
        );
    }
    sent_at.sort_unstable();
    let mut busiest = 0;
    let mut start = 0;
    for end in 0..sent_at.len() {
        while sent_at[end] - sent_at[start] >= 1000 {
            start += 1;
        }
        busiest = busiest.max(end - start + 1);
    }
    eprintln!(
        "QUOTA: {} sends in {:.1} s, busiest second {busiest}",
        sent_at.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sent_at.len(), N);
    // 20/s less the 4% margin; one extra for where a window's edge falls between the slot and
    // the recorded answer.
    assert!(busiest <= 21, "busiest second {busiest}");
    assert!(started.elapsed() >= Duration::from_secs(4));
}

/// A dead number, from the carrier's error code in an SMPP delivery receipt (`stat:UNDELIV
/// err:001`, configured as dead for the account): the number is suppressed with its reason, and
/// the next message skips it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_number_receipts_suppress_the_number() {
    const DEAD: &str = "+12125550188";
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    smsc.set_receipt_stat(&DEAD[1..], "UNDELIV", "001");
    smsc.set_receipt_stat(DEAD, "UNDELIV", "001");
    let tables = format!(
        r#"
[providers.smpp-main]
kind = "smpp"
host = "127.0.0.1"
port = {port}
system_id = "herald"
password = "secret"
source_addr = "{SENDER}"

[channels]
sms = ["smpp-main"]

[channel_rules.smpp-main]
dead_contact_errors = ["001"]
"#,
        port = smsc.port()
    );
    let cluster = Cluster::start(
        1,
        NodeSpec {
            tables,
            ..Default::default()
        },
    )
    .await;
    let channel = channel(&cluster.node_addrs[0]).await;
    let delivery = DeliveryClient::new(channel.clone());
    let mut recipients = RecipientsClient::new(channel);
    recipients
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(Recipient {
                    id: "r-stop".into(),
                    phone: DEAD.into(),
                    ..Default::default()
                }),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");
    let mut first = marketing_sms("dead-1");
    first.class = MessageClass::Transactional as i32;
    first.waterfall[0].success = SuccessCondition::Delivered as i32;
    first.waterfall[0].timeout_ms = 20_000;
    let log = send_until_terminal(&delivery, API_KEY, first, SETTLE).await;
    assert!(
        log.events
            .iter()
            .any(|e| e.kind() == EventKind::EventBounced && e.reason.contains("err=001")),
        "{:?}",
        log.events
    );
    let person = recipient(&mut recipients).await;
    assert!(
        person
            .suppressed
            .iter()
            .any(|s| s.channel == Channel::Sms as i32
                && s.address == DEAD
                && s.reason == "bounced_hard"),
        "{:?}",
        person.suppressed
    );
    let mut second = marketing_sms("dead-2");
    second.class = MessageClass::Transactional as i32;
    let last = send_until_terminal(&delivery, API_KEY, second, SETTLE)
        .await
        .events
        .last()
        .cloned()
        .unwrap_or_default();
    assert_eq!(last.status(), MessageStatus::Suppressed);
    assert!(
        last.reason
            .contains("suppressed{channel=sms, reason=bounced_hard}"),
        "{}",
        last.reason
    );
    assert_eq!(smsc.log().len(), 1, "nothing more went to the dead number");
}
