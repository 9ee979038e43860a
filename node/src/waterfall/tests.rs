//! The waterfall state machine, in process: every state a message's log can be in, crossed with
//! every input (a run or a timer, the answers of the long effects, receipts), without a store,
//! a socket or a clock.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use herald_proto::TenantId;
use herald_proto::v1::{
    Channel, ChannelConsent, Content, EngagementKind, Event, EventKind, MessageClass,
    MessageRequest, MessageStatus, PushContent, PushToken, Recipient, ReportStatus, SmsContent,
    StoredMessage, SuccessCondition, WaterfallStep,
};
use herald_providers::Outcome;

use super::receipt::{self, Signal};
use super::*;
use crate::auth::Tenant;
use crate::channels::Delivery;
use crate::config::TenantConfig;
use crate::policy::caps::SentRecord;
use crate::reason::{Pause, Reason};

const NOW: i64 = 1_767_268_800_000; // 2026-01-01T12:00:00Z
const MESSAGE: &str = "01JMSG";

// --- The world the machine looks at ---------------------------------------------------------

#[derive(Default)]
struct FakeAccounts {
    chains: HashMap<i32, Vec<AccountInfo>>,
    paused: Option<Pause>,
}

impl Accounts for FakeAccounts {
    fn chain(&self, channel: Channel, preferred: &str) -> Vec<AccountInfo> {
        let mut chain = self
            .chains
            .get(&(channel as i32))
            .cloned()
            .unwrap_or_default();
        if let Some(index) = chain.iter().position(|a| a.name == preferred) {
            let account = chain.remove(index);
            chain.insert(0, account);
        }
        chain
    }

    fn paused(&self, _campaign_id: &str, _account: &str) -> Option<Pause> {
        self.paused.clone()
    }
}

fn account(name: &str) -> AccountInfo {
    AccountInfo {
        name: name.into(),
        ..Default::default()
    }
}

fn accounts() -> FakeAccounts {
    FakeAccounts {
        chains: HashMap::from([
            (Channel::Push as i32, vec![account("fcm")]),
            (Channel::Email as i32, vec![account("mail")]),
            (
                Channel::Sms as i32,
                vec![account("sms-a"), account("sms-b")],
            ),
        ]),
        paused: None,
    }
}

fn settings() -> Settings {
    Settings {
        default_step_timeout_ms: 2_000,
        breaker_recheck_ms: 2_000,
        policy_clock_offset_ms: 0,
        prices: Arc::new(crate::content::pricing::PriceTable::builtin()),
    }
}

/// A tenant without quiet hours and without caps (the tests that need them say so).
fn tenant() -> Tenant {
    let mut config = TenantConfig::new("acme", Vec::new());
    config.quiet_hours_enabled = false;
    config.marketing_daily_cap = 0;
    Tenant::from_config(&config)
}

fn step(channel: Channel, success: SuccessCondition) -> WaterfallStep {
    WaterfallStep {
        channel: channel as i32,
        success: success as i32,
        ..Default::default()
    }
}

fn push_email_sms() -> Vec<WaterfallStep> {
    vec![
        step(Channel::Push, SuccessCondition::Delivered),
        step(Channel::Email, SuccessCondition::Accepted),
        step(Channel::Sms, SuccessCondition::Accepted),
    ]
}

fn message(waterfall: Vec<WaterfallStep>, class: MessageClass) -> StoredMessage {
    StoredMessage {
        message_id: MESSAGE.into(),
        tenant: "acme".into(),
        partition: 1,
        created_unix_ms: NOW,
        payload_hash: 0,
        request: Some(MessageRequest {
            recipient_id: "r1".into(),
            idempotency_key: "k".into(),
            class: class as i32,
            waterfall,
            content: Some(Content {
                push: Some(PushContent {
                    title: "t".into(),
                    body: "b".into(),
                    data: Default::default(),
                }),
                sms: Some(SmsContent { text: "hi".into() }),
                email: None,
            }),
            ..Default::default()
        }),
        campaign: None,
    }
}

fn opted_in(channel: Channel) -> ChannelConsent {
    ChannelConsent {
        channel: channel as i32,
        state: herald_proto::v1::ConsentState::OptedIn as i32,
        ..Default::default()
    }
}

fn person() -> Recipient {
    Recipient {
        id: "r1".into(),
        email: "r1@example.com".into(),
        phone: "+12125550123".into(),
        push_tokens: vec![PushToken {
            token: "tok".into(),
            platform: 0,
        }],
        consent: vec![
            opted_in(Channel::Push),
            opted_in(Channel::Email),
            opted_in(Channel::Sms),
        ],
        ..Default::default()
    }
}

// --- Logs (the states) -----------------------------------------------------------------------

fn event(kind: EventKind, step: Option<u32>, status: MessageStatus) -> Event {
    Event {
        kind: kind as i32,
        step,
        status: status as i32,
        attempt_id: step.map(|s| format!("{MESSAGE}.{s}")).unwrap_or_default(),
        ..Default::default()
    }
}

/// A log from its events, numbered from 1 (gap-free, as the store keeps it).
fn log(events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .enumerate()
        .map(|(i, mut e)| {
            e.seq = i as u32 + 1;
            if e.at_unix_ms == 0 {
                e.at_unix_ms = NOW - 10_000;
            }
            e
        })
        .collect()
}

fn accepted() -> Event {
    event(EventKind::EventAccepted, None, MessageStatus::Pending)
}

fn fresh() -> Vec<Event> {
    log(vec![accepted()])
}

/// Push (step 0) sent and waiting for its delivery until `due`.
fn waiting_on_push(due: i64) -> Vec<Event> {
    let mut waiting = event(EventKind::EventWaiting, Some(0), MessageStatus::Pending);
    waiting.due_unix_ms = due;
    log(vec![
        accepted(),
        event(EventKind::EventAttempted, Some(0), MessageStatus::Pending),
        event(EventKind::EventSent, Some(0), MessageStatus::Pending),
        waiting,
    ])
}

/// The intent of step 0 is durable, its outcome never was (the owner died in between).
fn open_attempt() -> Vec<Event> {
    log(vec![
        accepted(),
        event(EventKind::EventAttempted, Some(0), MessageStatus::Pending),
    ])
}

fn deferred(due: i64) -> Vec<Event> {
    let mut deferral = event(EventKind::EventDeferred, None, MessageStatus::Deferred);
    deferral.due_unix_ms = due;
    log(vec![accepted(), deferral])
}

fn delivered_by_push() -> Vec<Event> {
    log(vec![
        accepted(),
        event(EventKind::EventAttempted, Some(0), MessageStatus::Pending),
        event(EventKind::EventSent, Some(0), MessageStatus::Pending),
        event(EventKind::EventDelivered, Some(0), MessageStatus::Delivered),
    ])
}

/// Push timed out and fell back; email (step 1) is waiting.
fn fell_back_to_email(due: i64) -> Vec<Event> {
    let mut waiting = event(EventKind::EventWaiting, Some(1), MessageStatus::Pending);
    waiting.due_unix_ms = due;
    log(vec![
        accepted(),
        event(EventKind::EventAttempted, Some(0), MessageStatus::Pending),
        event(EventKind::EventSent, Some(0), MessageStatus::Pending),
        event(EventKind::EventFailed, Some(0), MessageStatus::Pending),
        event(EventKind::EventFellBack, Some(0), MessageStatus::Pending),
        event(EventKind::EventAttempted, Some(1), MessageStatus::Pending),
        event(EventKind::EventSent, Some(1), MessageStatus::Pending),
        waiting,
    ])
}

// --- Driving a run ----------------------------------------------------------------------------

fn accepted_by(account: &str, delivered: bool, read: bool) -> Delivery {
    delivery(
        account,
        Outcome::Accepted {
            provider_message_id: format!("p-{account}"),
            delivered,
            read,
        },
    )
}

fn delivery(account: &str, outcome: Outcome) -> Delivery {
    Delivery {
        account: account.into(),
        outcome,
        to: "addr".into(),
        trail: String::new(),
        calls: 1,
    }
}

/// The answers the long effects give, in order of asking.
#[derive(Default)]
struct Answers {
    rules: VecDeque<Vec<Option<Reason>>>,
    slots: VecDeque<bool>,
    deliveries: VecDeque<Delivery>,
}

/// Everything a run did, effects in order, and the long effects it asked for.
#[derive(Default, Debug)]
struct Trace {
    effects: Vec<Effect>,
    asked: Vec<Next>,
}

impl Trace {
    fn drafts(&self) -> Vec<&Draft> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Record(d) => Some(d),
                _ => None,
            })
            .collect()
    }

    fn kinds(&self) -> Vec<(EventKind, Option<u32>)> {
        self.drafts().iter().map(|d| (d.kind, d.step)).collect()
    }

    fn reasons(&self) -> Vec<String> {
        self.drafts()
            .iter()
            .filter_map(|d| d.reason.as_ref().map(ToString::to_string))
            .collect()
    }

    fn final_status(&self) -> MessageStatus {
        self.drafts()
            .last()
            .map_or(MessageStatus::Unspecified, |d| d.status)
    }

    fn writes(&self) -> Vec<&StateWrite> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Write(w) => Some(w),
                _ => None,
            })
            .collect()
    }

    fn scheduled(&self) -> Vec<i64> {
        self.effects
            .iter()
            .filter_map(|e| match e {
                Effect::Schedule { due_unix_ms } => Some(*due_unix_ms),
                _ => None,
            })
            .collect()
    }

    fn calls(&self) -> Vec<&Next> {
        self.asked
            .iter()
            .filter(|n| matches!(n, Next::Call { .. }))
            .collect()
    }

    /// The invariants every run keeps, whatever the state and input.
    fn check(&self) {
        let mut terminal_flushed = false;
        let mut intent_pending = false;
        let mut intent_durable = false;
        let mut terminal_statuses = 0;
        for effect in &self.effects {
            match effect {
                Effect::Record(draft) => {
                    assert!(
                        !terminal_flushed,
                        "an event after the terminal flush: {draft:?}\n{self:#?}"
                    );
                    if is_terminal(draft.status) {
                        terminal_statuses += 1;
                    }
                    if draft.kind == EventKind::EventAttempted {
                        intent_pending = true;
                    }
                }
                Effect::Flush { terminal } => {
                    if intent_pending {
                        intent_durable = true;
                        intent_pending = false;
                    }
                    terminal_flushed |= *terminal;
                }
                _ => {}
            }
        }
        assert!(terminal_statuses <= 1, "two terminal events: {self:#?}");
        if !self.calls().is_empty() {
            assert!(intent_durable, "a call before its intent was durable");
        }
    }
}

fn cx<'a>(
    message: &'a StoredMessage,
    tenant: &'a Tenant,
    settings: &'a Settings,
    accounts: &'a FakeAccounts,
) -> Cx<'a> {
    Cx {
        message,
        tenant,
        settings,
        accounts,
    }
}

/// Feeds the run its answers until it is done.
fn drive(cx: &Cx<'_>, started: (Option<Run>, Step), mut answers: Answers, trace: &mut Trace) {
    let (mut run, mut step) = started;
    loop {
        trace.effects.extend(step.effects);
        let next = step.next;
        if next != Next::Done {
            trace.asked.push(next.clone());
        }
        let Some(current) = run.take() else {
            assert_eq!(next, Next::Done, "a long effect without a run to answer");
            return;
        };
        (run, step) = match next {
            Next::Done => panic!("a run left waiting after Done"),
            Next::AskRules { accounts, .. } => {
                let verdicts = answers
                    .rules
                    .pop_front()
                    .unwrap_or_else(|| vec![None; accounts.len()]);
                current.on_rules(cx, verdicts, NOW)
            }
            Next::Slot { .. } => {
                let taken = answers.slots.pop_front().unwrap_or(true);
                current.on_slot(cx, taken, NOW)
            }
            Next::Call { accounts, .. } => {
                let delivery = answers
                    .deliveries
                    .pop_front()
                    .unwrap_or_else(|| accepted_by(&accounts[0], false, false));
                current.on_delivery(cx, delivery, NOW)
            }
        };
    }
}

/// Runs a message from `events` with `recipient` and the answers; checks the invariants.
fn run_from(
    cx: &Cx<'_>,
    events: &[Event],
    recipient: Option<Recipient>,
    sends: Option<Vec<SentRecord>>,
    answers: Answers,
) -> Trace {
    let progress = Progress::from_events(events);
    let mut trace = Trace::default();
    match triage(cx.message, &progress, NOW) {
        Triage::Retire => trace.effects.push(Effect::Flush { terminal: true }),
        Triage::Corrupt(step) => trace.effects.extend(step.effects),
        Triage::Sleep { due_unix_ms } => trace.effects.push(Effect::Schedule { due_unix_ms }),
        Triage::Go { sends: wanted } => {
            let sends = if wanted {
                sends.or(Some(Vec::new()))
            } else {
                None
            };
            let started = Run::start(cx, &progress, recipient, sends, NOW);
            drive(cx, started, answers, &mut trace);
        }
    }
    trace.check();
    trace
}

fn receipt_on(
    cx: &Cx<'_>,
    events: &[Event],
    kind: EngagementKind,
    step: Option<u32>,
    recipient: Option<Recipient>,
    answers: Answers,
) -> (ReportStatus, Trace) {
    let progress = Progress::from_events(events);
    let signal = Signal {
        step,
        kind,
        detail: String::new(),
        source: "api".into(),
    };
    let applied = receipt::apply(cx, &progress, &signal, recipient, NOW);
    let mut trace = Trace::default();
    drive(cx, (applied.run, applied.step), answers, &mut trace);
    trace.check();
    (applied.verdict, trace)
}

fn answers_deliveries(deliveries: Vec<Delivery>) -> Answers {
    Answers {
        deliveries: deliveries.into(),
        ..Default::default()
    }
}

use EventKind::*;

// --- A fresh message, run ---------------------------------------------------------------------

#[test]
fn fresh_step_accepted_ends_delivered() {
    let m = message(
        vec![step(Channel::Push, SuccessCondition::Accepted)],
        MessageClass::Transactional,
    );
    let (t, s, a) = (tenant(), settings(), accounts());
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![(EventAttempted, Some(0)), (EventSent, Some(0))]
    );
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
    assert_eq!(trace.writes(), vec![&StateWrite::CountMessage]);
    assert_eq!(
        trace.calls(),
        vec![&Next::Call {
            step: 0,
            attempt_id: format!("{MESSAGE}.0"),
            accounts: vec!["fcm".into()],
            first_slot_taken: true,
        }]
    );
    assert!(trace.reasons()[0].starts_with("provider_message_id=p-fcm"));
    assert!(trace.effects.contains(&Effect::Observe {
        account: "fcm".into(),
        channel: Channel::Push,
        signal: crate::policy::block_rate::Signal::Delivered
    }));
}

#[test]
fn fresh_step_waiting_for_delivery_sets_a_durable_timer() {
    let m = message(push_email_sms(), MessageClass::Transactional);
    let (t, s, a) = (tenant(), settings(), accounts());
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventAttempted, Some(0)),
            (EventSent, Some(0)),
            (EventWaiting, Some(0))
        ]
    );
    let waiting = trace.drafts()[2];
    assert_eq!(waiting.due_unix_ms, NOW + 2_000);
    assert_eq!(trace.scheduled(), vec![NOW + 2_000]);
    assert_eq!(trace.final_status(), MessageStatus::Pending);
    assert_eq!(trace.reasons()[1], "waiting{condition=delivered}");
}

#[test]
fn fresh_step_delivered_or_read_at_once() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        answers_deliveries(vec![accepted_by("fcm", true, false)]),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventAttempted, Some(0)),
            (EventSent, Some(0)),
            (EventDelivered, Some(0))
        ]
    );
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
    let m = message(
        vec![step(Channel::Push, SuccessCondition::Read)],
        MessageClass::Transactional,
    );
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        answers_deliveries(vec![accepted_by("fcm", true, true)]),
    );
    assert_eq!(
        trace.kinds().last(),
        Some(&(EventRead, Some(0))),
        "{trace:#?}"
    );
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
}

#[test]
fn fresh_rejected_falls_back_and_a_dead_contact_is_suppressed() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let dead = delivery(
        "fcm",
        Outcome::Rejected {
            reason: "unregistered".into(),
            contact_invalid: true,
        },
    );
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        answers_deliveries(vec![dead, accepted_by("mail", false, false)]),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventAttempted, Some(0)),
            (EventFailed, Some(0)),
            (EventFellBack, Some(0)),
            (EventAttempted, Some(1)),
            (EventSent, Some(1)),
        ]
    );
    assert_eq!(
        trace.reasons()[0],
        "rejected{unregistered, contact_suppressed=true}"
    );
    assert_eq!(trace.reasons()[1], "push step failed");
    let suppressed = trace.writes().into_iter().find_map(|w| match w {
        StateWrite::PutRecipient(r) => Some(r.clone()),
        _ => None,
    });
    let suppressed = suppressed.expect("the dead token is suppressed");
    assert_eq!(suppressed.suppressed[0].address, "addr");
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
}

#[test]
fn fresh_unavailable_everywhere_exhausts_the_waterfall() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(
        vec![step(Channel::Sms, SuccessCondition::Accepted)],
        MessageClass::Transactional,
    );
    let down = delivery("sms-a", Outcome::unavailable("503"));
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        answers_deliveries(vec![down]),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventAttempted, Some(0)),
            (EventFailed, Some(0)),
            (EventFailed, None)
        ]
    );
    assert_eq!(
        trace.reasons(),
        vec!["unavailable{503}", "waterfall_exhausted"]
    );
    assert_eq!(trace.final_status(), MessageStatus::Failed);
}

#[test]
fn fresh_ambiguous_outcome_waits_for_a_receipt_and_is_never_resent() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let lost = delivery(
        "fcm",
        Outcome::Ambiguous {
            reason: "timeout".into(),
        },
    );
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        answers_deliveries(vec![lost]),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventAttempted, Some(0)),
            (EventAmbiguous, Some(0)),
            (EventWaiting, Some(0))
        ]
    );
    assert_eq!(trace.calls().len(), 1);
    assert_eq!(
        trace.reasons(),
        vec![
            "provider_outcome_unknown{timeout}",
            "waiting{condition=receipt_after_ambiguous_outcome}"
        ]
    );
    assert_eq!(trace.scheduled(), vec![NOW + 2_000]);
}

#[test]
fn fresh_gates_skip_steps_and_policy_suppresses_when_nothing_is_left() {
    let (t, s, a) = (tenant(), settings(), accounts());
    // No push token: the push step is skipped, email goes.
    let m = message(push_email_sms(), MessageClass::Transactional);
    let mut no_token = person();
    no_token.push_tokens.clear();
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(no_token),
        None,
        Answers::default(),
    );
    assert_eq!(trace.kinds()[0], (EventSkipped, Some(0)));
    assert_eq!(trace.reasons()[0], "no_contact_point{channel=push}");
    assert_eq!(trace.kinds()[1], (EventAttempted, Some(1)));
    // Marketing without any opt-in: every step skipped by policy → suppressed.
    let m = message(push_email_sms(), MessageClass::Marketing);
    let mut nobody = person();
    nobody.consent.clear();
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(nobody),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventSkipped, Some(0)),
            (EventSkipped, Some(1)),
            (EventSkipped, Some(2)),
            (EventSuppressed, None)
        ]
    );
    assert!(trace.calls().is_empty());
    assert_eq!(trace.final_status(), MessageStatus::Suppressed);
    assert!(trace.reasons()[3].starts_with("every_step_skipped{no_opt_in{channel=push"));
}

#[test]
fn fresh_without_any_account_fails_rather_than_suppresses() {
    let (t, s) = (tenant(), settings());
    let none = FakeAccounts::default();
    let m = message(
        vec![step(Channel::Email, SuccessCondition::Accepted)],
        MessageClass::Transactional,
    );
    let trace = run_from(
        &cx(&m, &t, &s, &none),
        &fresh(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.reasons(),
        vec!["no_provider_account{channel=email}", "waterfall_exhausted"]
    );
    assert_eq!(trace.final_status(), MessageStatus::Failed);
}

#[test]
fn fresh_marketing_muted_topic_and_caps_suppress_the_message() {
    let (s, a) = (settings(), accounts());
    let mut m = message(push_email_sms(), MessageClass::Marketing);
    if let Some(r) = m.request.as_mut() {
        r.topic = "deals".into();
    }
    let mut muted = person();
    muted.preferences = Some(herald_proto::v1::Preferences {
        muted_topics: vec!["deals".into()],
        ..Default::default()
    });
    let t = tenant();
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(muted),
        None,
        Answers::default(),
    );
    assert_eq!(trace.kinds(), vec![(EventSuppressed, None)]);
    assert_eq!(trace.reasons(), vec!["preference{muted_topic=deals}"]);
    assert_eq!(trace.writes(), vec![&StateWrite::CountMessage]);
    // A tenant cap of one an hour, one send 10 minutes ago.
    let mut config = TenantConfig::new("acme", Vec::new());
    config.quiet_hours_enabled = false;
    config.marketing_daily_cap = 0;
    config.marketing_caps = vec![crate::config::CapConfig {
        max: 1,
        window_s: 3600,
    }];
    let capped = Tenant::from_config(&config);
    let recent = vec![SentRecord {
        at_ms: NOW - 600_000,
        channel: Channel::Push,
        marketing: true,
    }];
    let trace = run_from(
        &cx(&m, &capped, &s, &a),
        &fresh(),
        Some(person()),
        Some(recent),
        Answers::default(),
    );
    assert_eq!(trace.final_status(), MessageStatus::Suppressed);
    assert_eq!(
        trace.reasons(),
        vec![format!(
            "frequency_cap{{count=1, max=1, window_s=3600, retry_at_unix_ms={}}}",
            NOW - 600_000 + 3_600_000
        )]
    );
}

#[test]
fn fresh_marketing_own_channel_limit_skips_the_step() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Marketing);
    let mut limited = person();
    limited.preferences = Some(herald_proto::v1::Preferences {
        push: Some(herald_proto::v1::ChannelLimits {
            max_per_day: Some(1),
            max_per_week: None,
        }),
        ..Default::default()
    });
    let recent = vec![SentRecord {
        at_ms: NOW - 1_000,
        channel: Channel::Push,
        marketing: true,
    }];
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(limited),
        Some(recent),
        Answers::default(),
    );
    assert_eq!(
        trace.reasons()[0],
        "preference_limit{channel=push, count=1, max=1, window_s=86400}"
    );
    assert_eq!(trace.kinds()[1], (EventAttempted, Some(1)));
    assert!(
        trace.writes().iter().any(|w| matches!(
            w,
            StateWrite::RecordSend { channel: Channel::Email, history, .. } if history.len() == 1
        )),
        "the marketing send is recorded for the caps"
    );
}

#[test]
fn fresh_marketing_at_night_is_deferred_to_the_local_morning() {
    let (s, a) = (settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Marketing);
    let mut config = TenantConfig::new("acme", Vec::new());
    config.marketing_daily_cap = 0;
    config.quiet_hours_spread_s = 0;
    let t = Tenant::from_config(&config);
    let mut night_owl = person();
    // 12:00 UTC is 23:00 in Sydney (summer time): closed until 08:00 there.
    night_owl.time_zone = "Australia/Sydney".into();
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(night_owl),
        None,
        Answers::default(),
    );
    assert_eq!(trace.kinds(), vec![(EventDeferred, None)]);
    let due = trace.drafts()[0].due_unix_ms;
    assert_eq!(due, NOW + 9 * 3_600_000, "08:00 in Sydney");
    assert_eq!(trace.scheduled(), vec![due]);
    assert_eq!(trace.final_status(), MessageStatus::Deferred);
    assert!(trace.reasons()[0].contains("zones_from=recipient"));
    assert!(trace.calls().is_empty());
}

#[test]
fn fresh_template_that_no_longer_renders_fails_the_message() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let mut m = message(push_email_sms(), MessageClass::Transactional);
    if let Some(content) = m.request.as_mut().and_then(|r| r.content.as_mut()) {
        content.sms = Some(SmsContent {
            text: "Hi {{ first_name }}".into(),
        });
    }
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(trace.kinds(), vec![(EventFailed, None)]);
    assert!(trace.reasons()[0].starts_with("template{field=content.sms.text"));
    assert!(trace.calls().is_empty());
}

#[test]
fn fresh_for_an_erased_recipient_fails() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        None,
        None,
        Answers::default(),
    );
    assert_eq!(trace.reasons(), vec!["recipient_erased"]);
    assert_eq!(trace.final_status(), MessageStatus::Failed);
}

// --- Channel rules, slots, pauses -------------------------------------------------------------

fn with_rules(mut accounts: FakeAccounts) -> FakeAccounts {
    for chain in accounts.chains.values_mut() {
        for account in chain {
            account.session_window_h = 24;
            account.tier = true;
        }
    }
    accounts
}

#[test]
fn rules_block_one_account_the_next_goes() {
    let (t, s) = (tenant(), settings());
    let a = with_rules(accounts());
    let m = message(
        vec![step(Channel::Sms, SuccessCondition::Accepted)],
        MessageClass::Transactional,
    );
    let blocked = Reason::TierLimit {
        account: "sms-a".into(),
        unique_recipients_24h: 2,
        tier: 2,
    };
    let answers = Answers {
        rules: VecDeque::from([vec![Some(blocked), None]]),
        deliveries: VecDeque::from([accepted_by("sms-b", false, false)]),
        ..Default::default()
    };
    let trace = run_from(&cx(&m, &t, &s, &a), &fresh(), Some(person()), None, answers);
    assert!(matches!(&trace.asked[0], Next::AskRules { accounts, .. } if accounts.len() == 2));
    assert!(
        matches!(&trace.calls()[0], Next::Call { accounts, .. } if accounts == &vec!["sms-b".to_string()])
    );
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
}

#[test]
fn rules_blocking_every_account_skip_the_step_with_every_reason() {
    let (t, s) = (tenant(), settings());
    let a = with_rules(accounts());
    let m = message(
        vec![step(Channel::Sms, SuccessCondition::Accepted)],
        MessageClass::Transactional,
    );
    let window = |account: &str| Reason::SessionWindow {
        account: account.into(),
        hours: 24,
        last_inbound_unix_ms: None,
    };
    let answers = Answers {
        rules: VecDeque::from([vec![Some(window("sms-a")), Some(window("sms-b"))]]),
        ..Default::default()
    };
    let trace = run_from(&cx(&m, &t, &s, &a), &fresh(), Some(person()), None, answers);
    assert_eq!(
        trace.reasons()[0],
        "session_window{account=sms-a, hours=24, last_inbound_unix_ms=never, tag=none}; session_window{account=sms-b, hours=24, last_inbound_unix_ms=never, tag=none}"
    );
    assert_eq!(trace.final_status(), MessageStatus::Suppressed);
}

#[test]
fn a_stopped_sender_is_never_used_and_all_stopped_skips() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(
        vec![step(Channel::Sms, SuccessCondition::Accepted)],
        MessageClass::Transactional,
    );
    let stop = |sender: &str| ChannelConsent {
        channel: Channel::Sms as i32,
        state: herald_proto::v1::ConsentState::OptedOut as i32,
        sender: sender.into(),
        ..Default::default()
    };
    let mut stopped_a = person();
    stopped_a.consent.push(stop("sms-a"));
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(stopped_a.clone()),
        None,
        Answers::default(),
    );
    assert!(
        matches!(&trace.calls()[0], Next::Call { accounts, .. } if accounts == &vec!["sms-b".to_string()])
    );
    let mut stopped_all = stopped_a;
    stopped_all.consent.push(stop("sms-b"));
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(stopped_all),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.reasons()[0],
        "opted_out{channel=sms, scope=every_sender_of_the_channel}"
    );
    assert_eq!(trace.final_status(), MessageStatus::Suppressed);
}

#[test]
fn a_rate_limited_account_waits_for_its_slot_before_the_intent() {
    let (t, s) = (tenant(), settings());
    let mut a = accounts();
    for account in a.chains.values_mut().flatten() {
        account.rate_limited = true;
    }
    let m = message(
        vec![step(Channel::Sms, SuccessCondition::Accepted)],
        MessageClass::Transactional,
    );
    let answers = Answers {
        slots: VecDeque::from([false]),
        ..Default::default()
    };
    let trace = run_from(&cx(&m, &t, &s, &a), &fresh(), Some(person()), None, answers);
    assert_eq!(
        trace.asked[0],
        Next::Slot {
            step: 0,
            account: "sms-a".into()
        }
    );
    // Nothing recorded before the slot: the intent comes after it.
    assert!(matches!(
        &trace.asked[1],
        Next::Call {
            first_slot_taken: false,
            ..
        }
    ));
}

fn paused(key: &str) -> Pause {
    Pause {
        key: key.into(),
        ratio: 0.02,
        sample: 100,
        pause_threshold: 0.003,
    }
}

#[test]
fn a_paused_campaign_defers_a_paused_sender_may_fall_back() {
    let (t, s) = (tenant(), settings());
    let mut a = accounts();
    a.paused = Some(paused("campaign:acme:c1"));
    let m = message(push_email_sms(), MessageClass::Transactional);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(trace.kinds(), vec![(EventDeferred, Some(0))]);
    assert_eq!(trace.scheduled(), vec![NOW + 2_000]);
    assert!(trace.effects.contains(&Effect::CountDeferredSend));
    assert_eq!(trace.final_status(), MessageStatus::Deferred);
    // A paused sender with fall_back_when_paused: the step is skipped, and (still paused) so
    // is every other step → the message fails (a pause is not policy).
    a.paused = Some(paused("sender:fcm"));
    let mut m = m;
    if let Some(r) = m.request.as_mut() {
        r.fall_back_when_paused = true;
    }
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert!(trace.reasons()[0].starts_with("breaker_paused{key=sender:fcm"));
    assert_eq!(trace.final_status(), MessageStatus::Failed);
}

// --- Deferred, waiting, open attempt, terminal: run (a timer, a takeover) ---------------------

#[test]
fn deferred_not_due_only_rebuilds_its_timer() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Marketing);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &deferred(NOW + 60_000),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.effects,
        vec![Effect::Schedule {
            due_unix_ms: NOW + 60_000
        }]
    );
}

#[test]
fn deferred_due_runs_without_counting_the_message_again() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Marketing);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &deferred(NOW - 1),
        Some(person()),
        None,
        Answers::default(),
    );
    assert!(!trace.writes().contains(&&StateWrite::CountMessage));
    assert_eq!(trace.kinds()[0], (EventAttempted, Some(0)));
}

#[test]
fn waiting_not_due_only_rebuilds_its_timer() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &waiting_on_push(NOW + 5),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.effects,
        vec![Effect::Schedule {
            due_unix_ms: NOW + 5
        }]
    );
}

#[test]
fn waiting_due_times_out_and_falls_back() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &waiting_on_push(NOW - 1),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventFailed, Some(0)),
            (EventFellBack, Some(0)),
            (EventAttempted, Some(1)),
            (EventSent, Some(1))
        ]
    );
    assert_eq!(
        trace.reasons()[0],
        format!(
            "timeout{{condition=delivered, waited_ms=10000, due_unix_ms={}}}",
            NOW - 1
        )
    );
    assert_eq!(trace.reasons()[1], "push step timed out");
    assert!(trace.effects.contains(&Effect::CountTimeout));
    assert!(!trace.writes().contains(&&StateWrite::CountMessage));
}

#[test]
fn waiting_due_on_the_last_step_fails_the_message() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(
        vec![step(Channel::Push, SuccessCondition::Delivered)],
        MessageClass::Transactional,
    );
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &waiting_on_push(NOW - 1),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![(EventFailed, Some(0)), (EventFailed, None)]
    );
    assert_eq!(trace.final_status(), MessageStatus::Failed);
}

#[test]
fn open_attempt_is_resent_once_with_its_own_id() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Marketing);
    // Even with consent now withdrawn, the re-send of an attempt that may have gone out is not
    // gated again: it is the same attempt.
    let mut withdrawn = person();
    withdrawn.consent.clear();
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &open_attempt(),
        Some(withdrawn),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventAmbiguous, Some(0)),
            (EventAttempted, Some(0)),
            (EventSent, Some(0)),
            (EventWaiting, Some(0))
        ]
    );
    assert!(trace.reasons()[0].starts_with("outcome_unknown: owner changed"));
    assert!(
        matches!(&trace.calls()[..], [Next::Call { attempt_id, .. }] if attempt_id == &format!("{MESSAGE}.0"))
    );
}

#[test]
fn terminal_retires_and_corrupt_fails() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let trace = run_from(
        &cx(&m, &t, &s, &a),
        &delivered_by_push(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(trace.effects, vec![Effect::Flush { terminal: true }]);
    let mut corrupt = m.clone();
    corrupt.request = None;
    let trace = run_from(
        &cx(&corrupt, &t, &s, &a),
        &fresh(),
        Some(person()),
        None,
        Answers::default(),
    );
    assert_eq!(trace.reasons(), vec!["corrupt_message: no request"]);
}

// --- Receipts ---------------------------------------------------------------------------------

#[test]
fn receipts_on_the_waiting_step() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let cx = cx(&m, &t, &s, &a);
    let waiting = waiting_on_push(NOW + 2_000);
    // Delivered satisfies DELIVERED.
    let (verdict, trace) = receipt_on(
        &cx,
        &waiting,
        EngagementKind::EngagementDelivered,
        Some(0),
        None,
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportApplied);
    assert_eq!(trace.kinds(), vec![(EventDelivered, Some(0))]);
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
    assert_eq!(trace.reasons(), vec!["receipt{kind=delivered, source=api}"]);
    // Clicked implies delivered and read.
    let (_, trace) = receipt_on(
        &cx,
        &waiting,
        EngagementKind::EngagementClicked,
        None,
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventDelivered, Some(0)),
            (EventRead, Some(0)),
            (EventClicked, Some(0))
        ]
    );
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
    // A hard bounce: recorded, failed, fallen back, the token suppressed, email goes.
    let (verdict, trace) = receipt_on(
        &cx,
        &waiting,
        EngagementKind::EngagementBouncedHard,
        Some(0),
        Some(person()),
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportApplied);
    assert_eq!(
        trace.kinds(),
        vec![
            (EventBounced, Some(0)),
            (EventFailed, Some(0)),
            (EventFellBack, Some(0)),
            (EventAttempted, Some(1)),
            (EventSent, Some(1))
        ]
    );
    assert_eq!(trace.reasons()[2], "push step failed by receipt");
    assert!(matches!(trace.writes()[0], StateWrite::PutRecipient(r) if r.suppressed.len() == 1));
    // A failure receipt for an erased recipient ends the message.
    let (_, trace) = receipt_on(
        &cx,
        &waiting,
        EngagementKind::EngagementFailed,
        Some(0),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![
            (EventFailed, Some(0)),
            (EventFellBack, Some(0)),
            (EventFailed, None)
        ]
    );
    assert_eq!(
        trace.reasons().last().map(String::as_str),
        Some("recipient_erased")
    );
}

#[test]
fn receipts_for_a_read_condition_wait_for_the_read() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(
        vec![step(Channel::Push, SuccessCondition::Read)],
        MessageClass::Transactional,
    );
    let cx = cx(&m, &t, &s, &a);
    let waiting = waiting_on_push(NOW + 2_000);
    let (_, trace) = receipt_on(
        &cx,
        &waiting,
        EngagementKind::EngagementDelivered,
        Some(0),
        None,
        Answers::default(),
    );
    assert_eq!(trace.kinds(), vec![(EventDelivered, Some(0))]);
    assert_eq!(
        trace.final_status(),
        MessageStatus::Pending,
        "still waiting for the read"
    );
    let (_, trace) = receipt_on(
        &cx,
        &waiting,
        EngagementKind::EngagementRead,
        Some(0),
        None,
        Answers::default(),
    );
    assert_eq!(
        trace.kinds(),
        vec![(EventDelivered, Some(0)), (EventRead, Some(0))]
    );
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
}

#[test]
fn receipts_after_the_step_was_given_up_are_late_and_change_nothing() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let cx = cx(&m, &t, &s, &a);
    let moved_on = fell_back_to_email(NOW + 2_000);
    for kind in [
        EngagementKind::EngagementDelivered,
        EngagementKind::EngagementBouncedHard,
    ] {
        let (verdict, trace) = receipt_on(
            &cx,
            &moved_on,
            kind,
            Some(0),
            Some(person()),
            Answers::default(),
        );
        assert_eq!(verdict, ReportStatus::ReportLate, "{kind:?}");
        assert_eq!(trace.kinds(), vec![(EventLateReceipt, Some(0))]);
        assert_eq!(trace.final_status(), MessageStatus::Pending);
        assert!(trace.calls().is_empty() && trace.writes().is_empty());
    }
    // The waiting email step still takes its own receipt.
    let (verdict, trace) = receipt_on(
        &cx,
        &moved_on,
        EngagementKind::EngagementDelivered,
        Some(1),
        None,
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportApplied);
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
}

#[test]
fn receipts_after_success_are_information_duplicates_are_not_applied() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let cx = cx(&m, &t, &s, &a);
    let done = delivered_by_push();
    let (verdict, trace) = receipt_on(
        &cx,
        &done,
        EngagementKind::EngagementDelivered,
        Some(0),
        None,
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportDuplicate);
    assert!(trace.effects.is_empty());
    // A read of a delivered message: recorded, status stays delivered, never a second channel.
    let (verdict, trace) = receipt_on(
        &cx,
        &done,
        EngagementKind::EngagementRead,
        Some(0),
        None,
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportApplied);
    assert_eq!(trace.kinds(), vec![(EventRead, Some(0))]);
    assert_eq!(trace.final_status(), MessageStatus::Delivered);
    assert!(trace.calls().is_empty());
    // A failure receipt after success (a late bounce): recorded, nothing else.
    let (_, trace) = receipt_on(
        &cx,
        &done,
        EngagementKind::EngagementBouncedSoft,
        Some(0),
        Some(person()),
        Answers::default(),
    );
    assert_eq!(trace.kinds(), vec![(EventBounced, Some(0))]);
    assert!(trace.calls().is_empty() && trace.writes().is_empty());
}

#[test]
fn unsubscribes_and_complaints_change_the_ledger_and_count_for_the_breakers() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let mut done = delivered_by_push();
    done[2].provider = "fcm".into();
    let m = message(push_email_sms(), MessageClass::Transactional);
    let cx = cx(&m, &t, &s, &a);
    let (verdict, trace) = receipt_on(
        &cx,
        &done,
        EngagementKind::EngagementUnsubscribed,
        Some(0),
        Some(person()),
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportApplied);
    let updated = match trace.writes()[..] {
        [StateWrite::PutRecipient(r)] => r.clone(),
        _ => panic!("{trace:#?}"),
    };
    assert!(
        updated
            .consent
            .iter()
            .any(|c| c.channel == Channel::Push as i32
                && c.topic == crate::policy::consent::ALL_MARKETING
                && c.state() == herald_proto::v1::ConsentState::OptedOut)
    );
    assert!(trace.effects.contains(&Effect::Observe {
        account: "fcm".into(),
        channel: Channel::Push,
        signal: crate::policy::block_rate::Signal::OptOut
    }));
    let (_, trace) = receipt_on(
        &cx,
        &done,
        EngagementKind::EngagementComplained,
        Some(0),
        Some(person()),
        Answers::default(),
    );
    let updated = match trace.writes()[..] {
        [StateWrite::PutRecipient(r)] => r.clone(),
        _ => panic!("{trace:#?}"),
    };
    assert_eq!(updated.suppressed[0].reason, "complained");
}

#[test]
fn receipts_without_a_matching_attempt_are_unknown() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let cx = cx(&m, &t, &s, &a);
    let (verdict, trace) = receipt_on(
        &cx,
        &fresh(),
        EngagementKind::EngagementDelivered,
        None,
        None,
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportUnknown);
    assert!(trace.effects.is_empty());
    let (verdict, _) = receipt_on(
        &cx,
        &waiting_on_push(NOW),
        EngagementKind::EngagementDelivered,
        Some(2),
        None,
        Answers::default(),
    );
    assert_eq!(verdict, ReportStatus::ReportUnknown);
}

// --- The whole matrix -------------------------------------------------------------------------

/// Every state × every input: the invariants hold (no event after the terminal one, at most
/// one terminal status, the intent durable before each call), and nothing goes to a later
/// channel once a step succeeded.
#[test]
fn every_state_with_every_input_keeps_the_invariants() {
    let (t, s, a) = (tenant(), settings(), accounts());
    let m = message(push_email_sms(), MessageClass::Transactional);
    let cx = cx(&m, &t, &s, &a);
    let states: Vec<(&str, Vec<Event>)> = vec![
        ("fresh", fresh()),
        ("deferred, due", deferred(NOW - 1)),
        ("deferred, not due", deferred(NOW + 1)),
        ("open attempt", open_attempt()),
        ("waiting, due", waiting_on_push(NOW - 1)),
        ("waiting, not due", waiting_on_push(NOW + 1)),
        ("fell back, waiting", fell_back_to_email(NOW + 1)),
        ("delivered", delivered_by_push()),
    ];
    let outcomes: Vec<(&str, Outcome)> = vec![
        (
            "accepted",
            Outcome::Accepted {
                provider_message_id: "p".into(),
                delivered: false,
                read: false,
            },
        ),
        (
            "delivered",
            Outcome::Accepted {
                provider_message_id: "p".into(),
                delivered: true,
                read: true,
            },
        ),
        ("rejected", Outcome::rejected("no")),
        (
            "dead contact",
            Outcome::Rejected {
                reason: "dead".into(),
                contact_invalid: true,
            },
        ),
        ("unavailable", Outcome::unavailable("503")),
        (
            "ambiguous",
            Outcome::Ambiguous {
                reason: "timeout".into(),
            },
        ),
    ];
    let kinds = [
        EngagementKind::EngagementDelivered,
        EngagementKind::EngagementRead,
        EngagementKind::EngagementClicked,
        EngagementKind::EngagementBouncedHard,
        EngagementKind::EngagementBouncedSoft,
        EngagementKind::EngagementFailed,
        EngagementKind::EngagementBlocked,
        EngagementKind::EngagementComplained,
        EngagementKind::EngagementUnsubscribed,
    ];
    let mut pairs = 0;
    for (state, events) in &states {
        let progress = Progress::from_events(events);
        let succeeded = progress.terminal;
        // A run (a timer or a takeover), with each provider answer for every call.
        for (name, outcome) in &outcomes {
            let answers = Answers {
                deliveries: (0..3)
                    .map(|i| delivery(["fcm", "mail", "sms-a"][i], outcome.clone()))
                    .collect(),
                ..Default::default()
            };
            let trace = run_from(&cx, events, Some(person()), None, answers);
            if succeeded {
                assert!(trace.calls().is_empty(), "{state} / {name}: {trace:#?}");
            }
            pairs += 1;
        }
        // Each receipt on each step the log knows.
        for kind in kinds {
            for step in [None, Some(0), Some(1)] {
                let (_, trace) =
                    receipt_on(&cx, events, kind, step, Some(person()), Answers::default());
                if succeeded {
                    assert!(
                        trace.calls().is_empty(),
                        "{state} / {kind:?}: a second channel after a success"
                    );
                }
                pairs += 1;
            }
        }
    }
    assert_eq!(pairs, states.len() * (outcomes.len() + kinds.len() * 3));
}

#[test]
fn tenant_defaults_are_what_the_tests_assume() {
    let t = Tenant::defaults(TenantId("x".into()));
    assert!(t.quiet_hours.is_some(), "quiet hours are on by default");
    assert!(tenant().quiet_hours.is_none());
}
