//! A node dies in each window of a message's life and of partition ownership, and nothing is
//! lost: the failpoints of the node and the store (feature `failpoints`, see `herald_node`'s
//! "Failpoints"), in a real cluster of processes — `redis-server`, `herald control` and two
//! `herald node`s talking real gRPC, their SMS account a Twilio adapter calling the fake Twilio
//! peer in this test process, which logs every request with its idempotency token (the attempt
//! id), so provider calls are counted across processes.
//!
//! Every scenario starts `node-0` (the survivor), creates the recipients, then starts `node-1`
//! (the doomed node) with `FAILPOINTS` naming one window, and makes it reach that window: a
//! message to a recipient of one of its partitions, a lease renewal, or a SIGTERM (scale-in).
//! `node-1` dies there (exit code 137, as a `kill -9`); `node-0` takes its partitions over when
//! the leases expire and resumes their messages. Then, over every message acked:
//! - each log is terminal and the chaos history checker passes (`herald_chaos::history`:
//!   invariants 1, 2, 3 and 5 as logs show them, gap-free sequence numbers);
//! - per step one outcome (at most one `sent`, `failed`, `skipped`, `fell_back`, `waiting`,
//!   `ambiguous`);
//! - per attempt id the provider got at most one request, or two when the log records that
//!   attempt `ambiguous` (invariant 2); every request it got belongs to an attempt of a log;
//! - the window was really hit (the scenario's own checks: which node recorded what, how many
//!   requests the attempt that was in the window got).
//!
//! Built only with the feature (`cargo test -p herald --features failpoints --test
//! failpoints`): the `herald` binary the cluster runs must have the failpoints compiled in.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use herald_proto::partition::partition_of;
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::{
    Channel, ChannelConsent, ConsentState, Content, EventKind, GetMessageResponse, MessageClass,
    MessageRequest, PartitionTable, Recipient, SmsContent, SuccessCondition,
    UpsertRecipientsRequest, WaterfallStep,
};
use herald_providers::peers::twilio::{TwilioPeer, TwilioPeerConfig};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, TENANT, authed};
use herald_testkit::delivery::{describe, send, wait_all_terminal, wait_for_log};
use herald_testkit::eventually::eventually_ok;
use tonic::transport::Channel as GrpcChannel;

/// Recipients created per scenario (about half of them on each node once `node-1` joined).
const RECIPIENTS: usize = 24;
/// How many messages the timer scenarios send to recipients of the doomed node's partitions.
const DOOMED_MESSAGES: usize = 3;
/// The survivor and the doomed node.
const SURVIVOR: usize = 0;
const DOOMED: usize = 1;
/// What the panic hook and `die_here` log when a failpoint ends the process.
const DEATH_LINE: &str = "failpoint: the node exits here";
/// A SIGKILL's exit code (128 + 9), which a failpoint's death imitates.
const KILLED: i32 = 137;
/// Bounds of the waits: a join or a takeover takes seconds (2 s heartbeats, 2 s leases).
const JOIN: Duration = Duration::from_secs(30);
const DEATH: Duration = Duration::from_secs(30);
const ACK: Duration = Duration::from_secs(45);
const SETTLE: Duration = Duration::from_secs(45);
/// A waiting step's timeout: long enough for a join or a takeover to happen first.
const WAIT_STEP_MS: u32 = 6_000;

/// A cluster whose SMS goes to the fake Twilio, with the survivor up and the recipients made.
struct Scenario {
    cluster: Cluster,
    twilio: TwilioPeer,
    spec: NodeSpec,
    delivery: DeliveryClient<GrpcChannel>,
    started: Instant,
    name: &'static str,
}

impl Scenario {
    async fn start(name: &'static str) -> Scenario {
        let started = Instant::now();
        let twilio = TwilioPeer::start(TwilioPeerConfig::default())
            .await
            .expect("twilio peer");
        let spec = NodeSpec {
            tables: format!(
                r#"
[providers.sms-http]
kind = "twilio"
base_url = "{base}"
account_sid = "{sid}"
auth_token = "{token}"
from = "+15550001111"

[channels]
sms = ["sms-http"]
"#,
                base = twilio.base_url(),
                sid = twilio.account_sid(),
                token = twilio.auth_token(),
            ),
            ..Default::default()
        };
        let cluster = Cluster::start(1, spec.clone()).await;
        let recipients = (0..RECIPIENTS).map(recipient).collect();
        cluster
            .recipients(SURVIVOR)
            .await
            .upsert_recipients(authed(UpsertRecipientsRequest { recipients }, API_KEY))
            .await
            .expect("upsert recipients");
        let delivery = cluster.delivery(SURVIVOR).await;
        Scenario {
            cluster,
            twilio,
            spec,
            delivery,
            started,
            name,
        }
    }

    /// Starts the doomed node with `FAILPOINTS=<failpoints>`; does not wait for it.
    fn join_doomed(&mut self, failpoints: &str) {
        let spec = NodeSpec {
            env: vec![("FAILPOINTS".into(), failpoints.into())],
            ..self.spec.clone()
        };
        assert_eq!(self.cluster.add_node(&spec), DOOMED);
    }

    /// Recipients whose partitions `node` owns in `table`.
    fn recipients_of(&self, table: &PartitionTable, node: usize) -> Vec<String> {
        let node_id = format!("node-{node}");
        (0..RECIPIENTS)
            .map(recipient_id)
            .filter(|r| {
                let p = partition_of(TENANT, r, table.partition_count).0 as usize;
                table.nodes[table.owners[p] as usize].node_id == node_id
            })
            .collect()
    }

    /// Sends `message` through the survivor until it is acked, retrying with the same
    /// idempotency key (the owner may be dying or its partition moving); returns the id.
    async fn send_acked(&self, message: MessageRequest) -> String {
        let key = &message.idempotency_key;
        let message = &message;
        eventually_ok(&format!("message {key} acked"), ACK, || async move {
            match send(&self.delivery, API_KEY, message.clone()).await {
                Ok(answer) => Ok(answer.message_id),
                Err(status) => {
                    assert!(
                        !matches!(
                            status.code(),
                            tonic::Code::InvalidArgument | tonic::Code::AlreadyExists
                        ),
                        "{key}: {status:?}"
                    );
                    Err(format!("{:?}: {}", status.code(), status.message()))
                }
            }
        })
        .await
    }

    /// Sends one message per recipient at once; returns the acked ids in the same order.
    async fn send_all(&self, messages: Vec<MessageRequest>) -> Vec<String> {
        futures::future::join_all(messages.into_iter().map(|m| self.send_acked(m))).await
    }

    /// Waits until the doomed node has died at `failpoint`: exit code 137 and the line that
    /// names the failpoint in its log.
    async fn wait_death(&mut self, failpoint: &str) {
        let status = self.cluster.nodes[DOOMED].wait_exit(DEATH).await;
        let log = self.cluster.nodes[DOOMED].log_text();
        assert_eq!(
            status.code(),
            Some(KILLED),
            "node-1 exited {status:?}:\n{log}"
        );
        assert!(
            log.lines()
                .any(|line| line.contains(DEATH_LINE) && line.contains(failpoint)),
            "node-1 did not die at {failpoint}:\n{log}"
        );
    }

    /// Waits until the survivor serves every partition alone.
    async fn wait_takeover(&self) {
        self.cluster.wait_ready(1, JOIN).await;
    }

    /// Waits until every message of `ids` is terminal, then checks the invariants over the logs
    /// and the provider's requests; returns the logs by id.
    async fn settle(&self, ids: &[String]) -> HashMap<String, GetMessageResponse> {
        let logs = wait_all_terminal(&self.delivery, API_KEY, ids, SETTLE).await;
        check(
            &logs,
            &self.twilio.request_tokens(),
            self.cluster.partition_count,
        );
        eprintln!(
            "{}: {} messages terminal, {} provider requests, {:.1} s",
            self.name,
            logs.len(),
            self.twilio.request_tokens().len(),
            self.started.elapsed().as_secs_f64()
        );
        logs
    }

    /// Requests the provider got with `attempt_id` as idempotency token.
    fn requests_for(&self, attempt_id: &str) -> usize {
        count(&self.twilio.request_tokens(), attempt_id)
    }
}

fn recipient_id(index: usize) -> String {
    format!("r{index}")
}

fn recipient(index: usize) -> Recipient {
    Recipient {
        id: recipient_id(index),
        phone: format!("+14155550{:03}", 100 + index),
        consent: vec![ChannelConsent {
            channel: Channel::Sms as i32,
            state: ConsentState::OptedIn as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// One transactional SMS. `wait_ms` 0: the step succeeds once the provider accepts; else it
/// waits that long for a delivery receipt, which never comes (the peer sends no callbacks), and
/// the message fails on its durable timer.
fn sms(recipient_id: &str, key: &str, wait_ms: u32) -> MessageRequest {
    let success = match wait_ms {
        0 => SuccessCondition::Accepted,
        _ => SuccessCondition::Delivered,
    };
    MessageRequest {
        recipient_id: recipient_id.into(),
        idempotency_key: key.into(),
        class: MessageClass::Transactional as i32,
        content: Some(Content {
            sms: Some(SmsContent {
                text: "Your code is 123456".into(),
            }),
            ..Default::default()
        }),
        waterfall: vec![WaterfallStep {
            channel: Channel::Sms as i32,
            success: success as i32,
            timeout_ms: wait_ms,
            provider_account: String::new(),
        }],
        ..Default::default()
    }
}

fn count(tokens: &[Option<String>], attempt_id: &str) -> usize {
    tokens
        .iter()
        .filter(|t| t.as_deref() == Some(attempt_id))
        .count()
}

/// The invariants over every log and the provider's requests (see the file's docs).
fn check(logs: &HashMap<String, GetMessageResponse>, tokens: &[Option<String>], partitions: u32) {
    let partition = |r: &str| partition_of(TENANT, r, partitions).0;
    // Both nodes may have owned any partition during a scenario.
    let owners = |_: u32| vec![node_id(SURVIVOR), node_id(DOOMED)];
    let summary = herald_chaos::history::check(
        logs.values(),
        &herald_chaos::history::Expectations {
            partition_of: &partition,
            allowed_owners: &owners,
        },
    )
    .unwrap_or_else(|violation| panic!("invariant violated: {violation}"));
    assert_eq!(summary.messages, logs.len());
    let mut attempts: Vec<String> = Vec::new();
    for log in logs.values() {
        let mut outcomes: HashMap<(Option<u32>, i32), usize> = HashMap::new();
        let mut ambiguous: HashMap<&str, usize> = HashMap::new();
        for event in &log.events {
            let kind = event.kind();
            if matches!(
                kind,
                EventKind::EventSent
                    | EventKind::EventFailed
                    | EventKind::EventSkipped
                    | EventKind::EventFellBack
                    | EventKind::EventWaiting
                    | EventKind::EventAmbiguous
            ) {
                *outcomes.entry((event.step, kind as i32)).or_default() += 1;
            }
            if kind == EventKind::EventAmbiguous {
                *ambiguous.entry(event.attempt_id.as_str()).or_default() += 1;
            }
        }
        if let Some(((step, kind), n)) = outcomes.iter().find(|(_, n)| **n > 1) {
            panic!(
                "step {step:?}: {n} events {:?}: {}",
                EventKind::try_from(*kind),
                describe(log)
            );
        }
        for event in &log.events {
            if event.kind() != EventKind::EventAttempted {
                continue;
            }
            let id = event.attempt_id.as_str();
            assert!(!id.is_empty(), "an attempt without id: {}", describe(log));
            let allowed = 1 + ambiguous.get(id).copied().unwrap_or(0);
            let got = count(tokens, id);
            assert!(
                got <= allowed,
                "attempt {id}: {got} provider requests, {allowed} allowed: {}",
                describe(log)
            );
            let sent = log
                .events
                .iter()
                .any(|e| e.kind() == EventKind::EventSent && e.attempt_id == id);
            assert!(
                !sent || got >= 1,
                "attempt {id} recorded sent without a request: {}",
                describe(log)
            );
            attempts.push(id.to_owned());
        }
    }
    for token in tokens {
        assert!(
            token.as_ref().is_some_and(|t| attempts.contains(t)),
            "the provider got a request of no attempt in the logs: {token:?}"
        );
    }
}

fn node_id(index: usize) -> String {
    format!("node-{index}")
}

/// The events of `kind` in `log`.
fn events(log: &GetMessageResponse, kind: EventKind) -> Vec<&herald_proto::v1::Event> {
    log.events.iter().filter(|e| e.kind() == kind).collect()
}

/// The `failed` events of the message's step (its end, `waterfall_exhausted`, has no step).
fn step_failures(log: &GetMessageResponse) -> Vec<&herald_proto::v1::Event> {
    events(log, EventKind::EventFailed)
        .into_iter()
        .filter(|e| e.step == Some(0))
        .collect()
}

/// The message windows: `node-1` joins with `failpoints`, then one message goes to a recipient
/// of its partitions and one to a recipient of the survivor's, at once; `node-1` dies at the
/// window. Returns the scenario and the log of the message to `node-1`'s recipient.
async fn die_at_a_message(
    name: &'static str,
    failpoint: &str,
    actions: &str,
) -> (Scenario, GetMessageResponse) {
    let mut s = Scenario::start(name).await;
    s.join_doomed(&format!("{failpoint}={actions}"));
    s.cluster.wait_ready(2, JOIN).await;
    let table = s.cluster.table().await;
    let doomed = s.recipients_of(&table, DOOMED);
    let survivor = s.recipients_of(&table, SURVIVOR);
    assert!(
        !doomed.is_empty() && !survivor.is_empty(),
        "{doomed:?} {survivor:?}"
    );
    let ids = s
        .send_all(vec![
            sms(&doomed[0], &key(name, &doomed[0]), 0),
            sms(&survivor[0], &key(name, &survivor[0]), 0),
        ])
        .await;
    s.wait_death(failpoint).await;
    s.wait_takeover().await;
    let mut logs = s.settle(&ids).await;
    let log = logs.remove(&ids[0]).expect("the doomed message's log");
    (s, log)
}

/// The idempotency key of a scenario's message to `recipient`.
fn key(scenario: &str, recipient: &str) -> String {
    format!("{scenario}-{recipient}")
}

/// The attempt that was open when `node-1` died: the one `node-1` recorded and `node-0` found
/// open (`ambiguous`, owner changed) and sent again with the same id.
fn resent(log: &GetMessageResponse) -> String {
    let attempt = events(log, EventKind::EventAmbiguous)
        .first()
        .map(|e| e.attempt_id.clone())
        .unwrap_or_else(|| panic!("no attempt was left open by node-1: {}", describe(log)));
    let attempted = events(log, EventKind::EventAttempted);
    assert!(
        attempted
            .iter()
            .any(|e| e.attempt_id == attempt && e.node_id == node_id(DOOMED)),
        "the open attempt was node-1's: {}",
        describe(log)
    );
    let ambiguous = events(log, EventKind::EventAmbiguous);
    assert_eq!(ambiguous.len(), 1, "{}", describe(log));
    assert_eq!(ambiguous[0].node_id, node_id(SURVIVOR), "{}", describe(log));
    assert!(
        events(log, EventKind::EventSent)
            .iter()
            .any(|e| e.attempt_id == attempt && e.node_id == node_id(SURVIVOR)),
        "the survivor sent the open attempt again and recorded it: {}",
        describe(log)
    );
    attempt
}

/// Dies after the intent is durable, before the provider call (`return`: `die_here` exits).
/// The new owner records the open attempt `ambiguous` and sends it once: one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_after_the_intent_before_the_provider_call() {
    let (s, log) = die_at_a_message("after_intent", "recipient::after_intent", "1*return").await;
    let attempt = resent(&log);
    assert_eq!(s.requests_for(&attempt), 1, "{}", describe(&log));
}

/// Dies after the provider answered, before the outcome is written (`panic`: the binary's
/// panic hook exits). The new owner records `ambiguous` and sends again with the same attempt
/// id: the provider got that attempt twice, the second time recorded as allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_after_the_provider_answered_before_the_outcome() {
    let (s, log) = die_at_a_message("before_outcome", "recipient::before_outcome", "1*panic").await;
    let attempt = resent(&log);
    assert_eq!(s.requests_for(&attempt), 2, "{}", describe(&log));
}

/// Dies in its first group commit, before it is sent (the message's acceptance with its
/// intent): nothing of it is applied, nothing was acked; the client's retry with the same key is
/// accepted by the new owner, which sends the message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_before_a_group_commit() {
    let (s, log) = die_at_a_message("before_commit", "store::before_commit", "1*panic").await;
    // node-1's commit never landed: it recorded nothing.
    assert!(
        log.events.iter().all(|e| e.node_id == node_id(SURVIVOR)),
        "{}",
        describe(&log)
    );
    // No attempt was left open: the one attempt was sent once, nothing ambiguous.
    assert!(
        events(&log, EventKind::EventAmbiguous).is_empty(),
        "{}",
        describe(&log)
    );
    let attempts = events(&log, EventKind::EventAttempted);
    assert_eq!(attempts.len(), 1, "{}", describe(&log));
    assert_eq!(
        s.requests_for(&attempts[0].attempt_id),
        1,
        "{}",
        describe(&log)
    );
}

/// Dies in its first group commit, after Redis applied it and before any caller learnt it:
/// acceptances and intents are durable though never acked. The retries are answered as
/// duplicates of the same messages (one message per key); the new owner finds each intent open,
/// records it `ambiguous` and sends it: one request (node-1 never called the provider).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_after_a_group_commit() {
    let (s, log) = die_at_a_message("after_commit", "store::after_commit", "1*panic").await;
    let attempt = resent(&log);
    let accepted = events(&log, EventKind::EventAccepted);
    assert_eq!(accepted.len(), 1, "{}", describe(&log));
    assert_eq!(accepted[0].node_id, node_id(DOOMED), "{}", describe(&log));
    assert_eq!(s.requests_for(&attempt), 1, "{}", describe(&log));
    // The key is one message: sent again, it answers the id the retry got.
    let view = log.message.clone().expect("the message's view");
    let again = send(
        &s.delivery,
        API_KEY,
        sms(
            &view.recipient_id,
            &key("after_commit", &view.recipient_id),
            0,
        ),
    )
    .await
    .expect("send again");
    assert!(again.duplicate, "{again:?}");
    assert_eq!(again.message_id, view.message_id);
}

/// Messages wait on durable timers on `node-0`; `node-1` joins, takes half of the partitions
/// (and their timers) over in a planned move, and dies at its first lease renewal. `node-0`
/// takes them back once the leases expire and fires every timer once: each message fails on
/// its step timeout, its one attempt sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_while_renewing_its_leases() {
    let mut s = Scenario::start("renew_leases").await;
    let messages = (0..RECIPIENTS)
        .map(|i| {
            sms(
                &recipient_id(i),
                &key("renew_leases", &recipient_id(i)),
                WAIT_STEP_MS,
            )
        })
        .collect();
    let ids = s.send_all(messages).await;
    for id in &ids {
        wait_for_log(&s.delivery, API_KEY, id, "waiting", SETTLE, |log| {
            !events(log, EventKind::EventWaiting).is_empty()
        })
        .await;
    }
    s.join_doomed("ownership::renew_leases=1*panic");
    s.wait_death("ownership::renew_leases").await;
    let doomed_log = s.cluster.nodes[DOOMED].log_text();
    assert!(
        doomed_log.contains("partitions acquired"),
        "node-1 died before it held a lease:\n{doomed_log}"
    );
    s.wait_takeover().await;
    let logs = s.settle(&ids).await;
    for log in logs.values() {
        let failed = step_failures(log);
        assert!(
            failed.len() == 1 && failed[0].reason.starts_with("timeout{"),
            "{}",
            describe(log)
        );
        for attempt in events(log, EventKind::EventAttempted) {
            assert_eq!(s.requests_for(&attempt.attempt_id), 1, "{}", describe(log));
        }
    }
}

/// Scale-in: messages wait on durable timers on `node-1`; it is asked to leave (SIGTERM) and
/// dies in the planned hand-off, its actors stopped but its leases not released. `node-0` takes
/// the partitions over once the leases expire and fires the timers: each message fails on its
/// step timeout recorded by `node-0`, its one attempt (node-1's) sent once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dies_in_the_hand_off_when_asked_to_leave() {
    let mut s = Scenario::start("hand_off").await;
    s.join_doomed("ownership::hand_off=1*panic");
    s.cluster.wait_ready(2, JOIN).await;
    let table = s.cluster.table().await;
    let doomed = s.recipients_of(&table, DOOMED);
    assert!(doomed.len() >= DOOMED_MESSAGES, "{doomed:?}");
    let messages = doomed[..DOOMED_MESSAGES]
        .iter()
        .map(|r| sms(r, &key("hand_off", r), WAIT_STEP_MS))
        .collect();
    let ids = s.send_all(messages).await;
    for id in &ids {
        wait_for_log(
            &s.delivery,
            API_KEY,
            id,
            "waiting on node-1",
            SETTLE,
            |log| {
                events(log, EventKind::EventWaiting)
                    .iter()
                    .any(|e| e.node_id == node_id(DOOMED))
            },
        )
        .await;
    }
    s.cluster.nodes[DOOMED].terminate();
    s.wait_death("ownership::hand_off").await;
    s.wait_takeover().await;
    let logs = s.settle(&ids).await;
    for log in logs.values() {
        let failed = step_failures(log);
        assert!(
            failed.len() == 1
                && failed[0].reason.starts_with("timeout{")
                && failed[0].node_id == node_id(SURVIVOR),
            "the survivor fired the timer: {}",
            describe(log)
        );
        for attempt in events(log, EventKind::EventAttempted) {
            assert_eq!(attempt.node_id, node_id(DOOMED), "{}", describe(log));
            assert_eq!(s.requests_for(&attempt.attempt_id), 1, "{}", describe(log));
        }
    }
}
