//! Time-dependent rules on a manual clock, in process (a control plane and a node of this test
//! process, on the embedded store): a step timeout falling back, a quiet-hours deferral and its
//! wake-up, a sliding cap window — and an ack that never waits for a provider. No sleeps: the
//! test advances the clock and waits on states.

use std::time::{Duration, Instant};

use herald::demo::{demo_message, demo_recipient};
use herald_node::config::CapConfig;
use herald_proto::v1::{
    Channel, EventKind, GetMessageResponse, MessageClass, MessageRequest, MessageStatus, Recipient,
    SuccessCondition, UpsertRecipientRequest, WaterfallStep,
};
use herald_providers::sandbox::SandboxProvider;
use herald_testkit::cluster::{API_KEY, authed};
use herald_testkit::delivery::{get_message, send, send_batch, wait_for_log, wait_terminal};
use herald_testkit::in_process::{InProcess, START_UNIX_MS};

const SETTLE: Duration = Duration::from_secs(20);
const HOUR: Duration = Duration::from_secs(3600);

/// A recipient id the sandbox can reach on every channel.
fn reachable(prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| {
            [Channel::Push, Channel::Email, Channel::Sms]
                .into_iter()
                .all(|channel| SandboxProvider::succeeds(id, channel))
        })
        .expect("a reachable id")
}

async fn upsert(cluster: &InProcess, recipient: Recipient) {
    cluster
        .recipients()
        .await
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(recipient),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");
}

fn step(channel: Channel, success: SuccessCondition, timeout_ms: u32) -> WaterfallStep {
    WaterfallStep {
        channel: channel as i32,
        success: success as i32,
        timeout_ms,
        ..Default::default()
    }
}

fn kinds(log: &GetMessageResponse) -> Vec<(EventKind, Option<u32>)> {
    log.events.iter().map(|e| (e.kind(), e.step)).collect()
}

fn has(log: &GetMessageResponse, kind: EventKind) -> bool {
    log.events.iter().any(|e| e.kind() == kind)
}

fn seq_gap_free(log: &GetMessageResponse) {
    let seqs: Vec<u32> = log.events.iter().map(|e| e.seq).collect();
    let expected: Vec<u32> = (1..=log.events.len() as u32).collect();
    assert_eq!(seqs, expected, "gap-free sequence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_timeout_falls_back_when_the_clock_passes_it() {
    let cluster = InProcess::start(|config| {
        // Pushes are accepted, and their delivery receipt never comes.
        config.sandbox.receipt_delay_ms = 100;
        config.sandbox.push_silent_share = 1.0;
    })
    .await;
    let id = reachable("timeout");
    upsert(&cluster, demo_recipient(id.clone(), 1)).await;
    let mut message = demo_message(id, "k-timeout".into());
    message.waterfall = vec![
        step(Channel::Push, SuccessCondition::Delivered, 60_000),
        step(Channel::Email, SuccessCondition::Accepted, 0),
    ];
    let api = cluster.delivery().await;
    let sent = send(&api, API_KEY, message).await.expect("send");
    let waiting = wait_for_log(
        &api,
        API_KEY,
        &sent.message_id,
        "push waiting",
        SETTLE,
        |log| has(log, EventKind::EventWaiting),
    )
    .await;
    let due = waiting
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventWaiting)
        .map(|e| e.due_unix_ms)
        .expect("waiting");
    assert_eq!(
        due,
        START_UNIX_MS + 60_000,
        "the wait is on the manual clock"
    );

    cluster.advance(Duration::from_secs(60));
    let log = wait_terminal(&api, API_KEY, &sent.message_id, SETTLE).await;
    assert_eq!(
        kinds(&log),
        vec![
            (EventKind::EventAccepted, None),
            (EventKind::EventAttempted, Some(0)),
            (EventKind::EventSent, Some(0)),
            (EventKind::EventWaiting, Some(0)),
            (EventKind::EventFailed, Some(0)),
            (EventKind::EventFellBack, Some(0)),
            (EventKind::EventAttempted, Some(1)),
            (EventKind::EventSent, Some(1)),
        ]
    );
    let timeout = &log.events[4];
    assert_eq!(
        timeout.reason,
        format!(
            "timeout{{condition=delivered, waited_ms=60000, due_unix_ms={}}}",
            START_UNIX_MS + 60_000
        )
    );
    assert_eq!(timeout.at_unix_ms, START_UNIX_MS + 60_000);
    assert_eq!(
        log.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
    seq_gap_free(&log);
    assert_eq!(cluster.node.step_timeouts(), 1);
}

fn marketing_sms(recipient_id: &str, key: &str) -> MessageRequest {
    let mut message = demo_message(recipient_id.to_owned(), key.to_owned());
    message.class = MessageClass::Marketing as i32;
    message.waterfall = vec![step(Channel::Sms, SuccessCondition::Accepted, 0)];
    message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_defer_to_the_local_morning_and_wake_then() {
    let cluster = InProcess::start(|config| {
        config.tenants[0].quiet_hours_spread_s = 0;
    })
    .await;
    // 12:00 UTC is 04:00 in Los Angeles: the 08:00–21:00 window opens in four hours.
    let id = reachable("quiet");
    let mut person = demo_recipient(id.clone(), 2);
    person.time_zone = "America/Los_Angeles".into();
    upsert(&cluster, person).await;
    let api = cluster.delivery().await;
    let sent = send(&api, API_KEY, marketing_sms(&id, "k-quiet"))
        .await
        .expect("send");
    let deferred = wait_for_log(&api, API_KEY, &sent.message_id, "deferred", SETTLE, |log| {
        has(log, EventKind::EventDeferred)
    })
    .await;
    let wake = START_UNIX_MS + 4 * 3_600_000;
    let deferral = deferred.events.last().expect("deferral");
    assert_eq!(deferral.status(), MessageStatus::Deferred);
    assert_eq!(deferral.due_unix_ms, wake);
    assert!(
        deferral.reason.starts_with("quiet_hours{")
            && deferral.reason.contains("zones_from=recipient")
            && deferral.reason.contains("wake_at=2026-01-05T16:00:00Z"),
        "{}",
        deferral.reason
    );

    // A minute short of the window: still deferred (a run before the due time only rebuilds
    // its timer), then the window opens and the message goes at exactly the due time.
    cluster.advance(4 * HOUR - Duration::from_secs(60));
    let early = get_message(&api, API_KEY, &sent.message_id)
        .await
        .expect("get");
    assert_eq!(early.events.len(), deferred.events.len());
    cluster.advance(Duration::from_secs(60));
    let log = wait_terminal(&api, API_KEY, &sent.message_id, SETTLE).await;
    let attempted = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventAttempted)
        .expect("attempted after the wake-up");
    assert_eq!(attempted.at_unix_ms, wake, "woken at the window's start");
    assert_eq!(
        log.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
    seq_gap_free(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cap_window_slides_with_the_clock() {
    let cluster = InProcess::start(|config| {
        let tenant = &mut config.tenants[0];
        tenant.quiet_hours_enabled = false;
        tenant.marketing_daily_cap = 0;
        tenant.marketing_caps = vec![CapConfig {
            max: 1,
            window_s: 3600,
        }];
    })
    .await;
    let id = reachable("cap");
    upsert(&cluster, demo_recipient(id.clone(), 3)).await;
    let api = cluster.delivery().await;
    let outcome = |key: &'static str| {
        let api = api.clone();
        let id = id.clone();
        async move {
            let sent = send(&api, API_KEY, marketing_sms(&id, key))
                .await
                .expect("send");
            wait_terminal(&api, API_KEY, &sent.message_id, SETTLE).await
        }
    };
    let first = outcome("k-cap-1").await;
    assert_eq!(
        first.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
    let retry_at = START_UNIX_MS + 3_600_000;
    let capped =
        format!("frequency_cap{{count=1, max=1, window_s=3600, retry_at_unix_ms={retry_at}}}");
    let second = outcome("k-cap-2").await;
    assert_eq!(
        second.events.last().map(|e| (e.status(), e.reason.clone())),
        Some((MessageStatus::Suppressed, capped.clone()))
    );
    // 59 minutes later the first send is still in the window.
    cluster.advance(HOUR - Duration::from_secs(60));
    let third = outcome("k-cap-3").await;
    assert_eq!(
        third.events.last().map(|e| (e.status(), e.reason.clone())),
        Some((MessageStatus::Suppressed, capped))
    );
    // An hour after it, it has left the window.
    cluster.advance(Duration::from_secs(60));
    let fourth = outcome("k-cap-4").await;
    assert_eq!(
        fourth.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
}

/// The ack means durable, nothing more: a batch of 300 messages to one idle recipient, through
/// a provider that takes 5 s per call, is acked before the provider has answered once (it used
/// to wait for 299 calls: 25 minutes here, 6.4 s at the sandbox's 20 ms). So is a batch to
/// recipients behind a rate limit of one send a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_never_waits_for_a_provider_or_a_slot() {
    let cluster = InProcess::start(|config| {
        config.sandbox.latency_ms = 5_000;
        config.rate_limits = [("sandbox".to_owned(), 1.0)].into();
    })
    .await;
    let api = cluster.delivery().await;
    let id = reachable("busy");
    upsert(&cluster, demo_recipient(id.clone(), 4)).await;
    let batch: Vec<MessageRequest> = (0..300)
        .map(|i| {
            let mut message = demo_message(id.clone(), format!("k-busy-{i}"));
            message.waterfall = vec![step(Channel::Sms, SuccessCondition::Accepted, 0)];
            message
        })
        .collect();
    let started = Instant::now();
    let results = tokio::time::timeout(Duration::from_secs(20), send_batch(&api, API_KEY, batch))
        .await
        .expect("acked within a client's 20 s deadline")
        .expect("send batch");
    let calls_at_ack = cluster.node.sandbox_calls();
    eprintln!(
        "ACK: 300 messages to one recipient acked in {:?}, {calls_at_ack} provider calls started",
        started.elapsed()
    );
    assert_eq!(results.len(), 300);
    assert!(results.iter().all(|r| r.error.is_none() && !r.duplicate));
    assert!(
        calls_at_ack <= 1,
        "the ack waited for {calls_at_ack} provider calls"
    );
    // Every message is durable: its log is there, accepted, and (but for the first) queued.
    for result in &results[..10] {
        let log = get_message(&api, API_KEY, &result.message_id)
            .await
            .expect("stored");
        assert_eq!(log.events[0].kind(), EventKind::EventAccepted);
    }

    // Distinct idle recipients behind a rate limit of one send a second.
    let mut batch = Vec::new();
    for i in 0..20 {
        let id = reachable(&format!("slot{i}"));
        upsert(&cluster, demo_recipient(id.clone(), 10 + i)).await;
        let mut message = demo_message(id, format!("k-slot-{i}"));
        message.waterfall = vec![step(Channel::Sms, SuccessCondition::Accepted, 0)];
        batch.push(message);
    }
    let before = cluster.node.sandbox_calls();
    let results = tokio::time::timeout(Duration::from_secs(20), send_batch(&api, API_KEY, batch))
        .await
        .expect("acked within a client's 20 s deadline")
        .expect("send batch");
    assert!(results.iter().all(|r| r.error.is_none()));
    assert!(cluster.node.sandbox_calls() - before <= 2);
}
