//! A store that stalls must not give one step two outcomes (in process, on the manual clock,
//! with the store's failpoints; built with `--features failpoints`).
//!
//! The defect: with Redis stalled, a message's reads and writes timed out; the run retried from
//! a log read that could be older than a write that had timed out and landed anyway, beside the
//! handling of the step's receipt, so the push's delivery receipt and the push step's timeout
//! were both committed on top of the same seq, and the waterfall went on to email although the
//! push was delivered. Now a message's log has one writer, every append carries the seq it
//! expects, and a failed write is retried as the same write. Here the receipt and the timer
//! arrive together while the store's reads time out, or while a write's outcome is lost after
//! it landed: one outcome, a gap-free sequence, never a second channel after a success.

use std::time::Duration;

use herald::demo::{demo_message, demo_recipient};
use herald_proto::v1::{
    Channel, EngagementKind, EngagementReport, EventKind, GetMessageResponse, MessageStatus,
    ReportRequest, ReportStatus, SuccessCondition, UpsertRecipientRequest, WaterfallStep,
};
use herald_providers::sandbox::SandboxProvider;
use herald_testkit::cluster::{API_KEY, authed};
use herald_testkit::delivery::{send, wait_for_log, wait_terminal};
use herald_testkit::in_process::InProcess;

const SETTLE: Duration = Duration::from_secs(30);

/// The failpoint registry is the process's: one scenario at a time.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Removes every store failpoint when the scenario ends, also when it panics.
struct Failpoints;

impl Drop for Failpoints {
    fn drop(&mut self) {
        for name in herald_store::failpoint::ALL {
            fail::remove(name);
        }
    }
}

/// Sends one push-then-email message whose push is accepted and never receipted by the
/// provider, and waits until the push step waits for its delivery.
async fn waiting_message(cluster: &InProcess, id: &str) -> String {
    cluster
        .recipients()
        .await
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(demo_recipient(id.to_owned(), 1)),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");
    let mut message = demo_message(id.to_owned(), format!("k-{id}"));
    message.waterfall = vec![
        WaterfallStep {
            channel: Channel::Push as i32,
            success: SuccessCondition::Delivered as i32,
            timeout_ms: 60_000,
            ..Default::default()
        },
        WaterfallStep {
            channel: Channel::Email as i32,
            success: SuccessCondition::Accepted as i32,
            ..Default::default()
        },
    ];
    let api = cluster.delivery().await;
    let sent = send(&api, API_KEY, message).await.expect("send");
    wait_for_log(
        &api,
        API_KEY,
        &sent.message_id,
        "push waiting",
        SETTLE,
        |log| {
            log.events
                .iter()
                .any(|e| e.kind() == EventKind::EventWaiting)
        },
    )
    .await;
    sent.message_id
}

fn reachable(prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| {
            SandboxProvider::succeeds(id, Channel::Push)
                && SandboxProvider::succeeds(id, Channel::Email)
        })
        .expect("a reachable id")
}

async fn start() -> InProcess {
    InProcess::start(|config| {
        config.sandbox.receipt_delay_ms = 100;
        config.sandbox.push_silent_share = 1.0;
    })
    .await
}

/// The delivery receipt of the push and the push's timeout arrive at once.
async fn receipt_and_timer(cluster: &InProcess, message_id: &str) -> ReportStatus {
    let mut engagement = cluster.engagement().await;
    let attempt_id = format!("{message_id}.0");
    let report = tokio::spawn(async move {
        // A client retries what answers UNAVAILABLE (the API's own read may time out too).
        let mut tries = 0;
        loop {
            let reply = engagement
                .report(authed(
                    ReportRequest {
                        reports: vec![EngagementReport {
                            attempt_id: attempt_id.clone(),
                            kind: EngagementKind::EngagementDelivered as i32,
                            ..Default::default()
                        }],
                    },
                    API_KEY,
                ))
                .await;
            match reply {
                Err(status) if status.code() == tonic::Code::Unavailable && tries < 20 => {
                    tries += 1;
                }
                other => return other,
            }
        }
    });
    cluster.advance(Duration::from_secs(60));
    let reply = report
        .await
        .expect("report task")
        .expect("report answered")
        .into_inner();
    reply.results[0].status()
}

/// One outcome for the push step, and nothing after a success.
fn one_outcome(log: &GetMessageResponse) {
    let seqs: Vec<u32> = log.events.iter().map(|e| e.seq).collect();
    let expected: Vec<u32> = (1..=log.events.len() as u32).collect();
    assert_eq!(seqs, expected, "gap-free sequence: {:?}", log.events);
    // The message turns terminal once; after that only records (a late receipt) follow, with
    // the status unchanged.
    let first_terminal = log
        .events
        .iter()
        .position(|e| herald_proto::status::is_terminal(e.status()))
        .expect("terminal");
    for later in &log.events[first_terminal + 1..] {
        assert_eq!(
            later.kind(),
            EventKind::EventLateReceipt,
            "{:?}",
            log.events
        );
        assert_eq!(later.status(), log.events[first_terminal].status());
    }
    let push_delivered = log
        .events
        .iter()
        .any(|e| e.kind() == EventKind::EventDelivered && e.step == Some(0));
    let push_failed = log
        .events
        .iter()
        .any(|e| e.kind() == EventKind::EventFailed && e.step == Some(0));
    assert!(
        !(push_delivered && push_failed),
        "the push step has two outcomes: {:?}",
        log.events
    );
    let email_attempted = log
        .events
        .iter()
        .any(|e| e.kind() == EventKind::EventAttempted && e.step == Some(1));
    assert_eq!(
        email_attempted, push_failed,
        "email goes exactly when the push failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_timing_out_while_the_receipt_and_the_timer_arrive() {
    let _turn = TURN.lock().await;
    let _cleanup = Failpoints;
    let cluster = start().await;
    let message_id = waiting_message(&cluster, &reachable("reads")).await;
    // The next reads of any log time out (the receipt's and the timer's run both read).
    fail::cfg(herald_store::failpoint::GET_MESSAGE, "3*return").expect("failpoint");
    let verdict = receipt_and_timer(&cluster, &message_id).await;
    let api = cluster.delivery().await;
    let log = wait_terminal(&api, API_KEY, &message_id, SETTLE).await;
    one_outcome(&log);
    // Whichever came first decided; the other changed nothing but a record.
    match verdict {
        ReportStatus::ReportApplied => assert_eq!(
            log.events.last().map(|e| e.status()),
            Some(MessageStatus::Delivered)
        ),
        ReportStatus::ReportLate => assert!(
            log.events
                .iter()
                .any(|e| e.kind() == EventKind::EventFellBack)
        ),
        other => panic!("receipt answered {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_landed_but_timed_out_is_not_written_twice() {
    let _turn = TURN.lock().await;
    let _cleanup = Failpoints;
    let cluster = start().await;
    let message_id = waiting_message(&cluster, &reachable("landed")).await;
    // The receipt's write lands and its caller hears a timeout: the retry of the same write
    // finds it there (its expected seq is taken) instead of deciding again.
    fail::cfg(herald_store::failpoint::AFTER_COMMIT, "1*return").expect("failpoint");
    let mut engagement = cluster.engagement().await;
    let reply = engagement
        .report(authed(
            ReportRequest {
                reports: vec![EngagementReport {
                    attempt_id: format!("{message_id}.0"),
                    kind: EngagementKind::EngagementDelivered as i32,
                    ..Default::default()
                }],
            },
            API_KEY,
        ))
        .await
        .expect("report")
        .into_inner();
    assert_eq!(reply.results[0].status(), ReportStatus::ReportApplied);
    // Then the push's timer comes due: the message is delivered, nothing else happens.
    let fired = cluster.node.timers_fired();
    cluster.advance(Duration::from_secs(60));
    herald_testkit::eventually::eventually("the push's timer fired", SETTLE, || async {
        (cluster.node.timers_fired() > fired).then_some(())
    })
    .await;
    let api = cluster.delivery().await;
    let log = wait_terminal(&api, API_KEY, &message_id, SETTLE).await;
    one_outcome(&log);
    let kinds: Vec<EventKind> = log.events.iter().map(|e| e.kind()).collect();
    assert_eq!(
        kinds,
        vec![
            EventKind::EventAccepted,
            EventKind::EventAttempted,
            EventKind::EventSent,
            EventKind::EventWaiting,
            EventKind::EventDelivered,
        ],
        "the delivery recorded once, no timeout, no email"
    );
    assert_eq!(
        log.events.last().map(|e| e.status()),
        Some(MessageStatus::Delivered)
    );
}
