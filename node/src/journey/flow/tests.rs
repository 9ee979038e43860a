use herald_proto::v1::{
    BranchStep, JourneyEntry, JourneyExit, JourneyStep, SendStep, WaitStep, journey_step,
};

use super::*;

fn send(name: &str) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(journey_step::Kind::Send(SendStep::default())),
        next: String::new(),
    }
}

fn wait(name: &str, days: u64) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(journey_step::Kind::Wait(WaitStep {
            duration_s: days * 86_400,
            until_local_time: String::new(),
        })),
        next: String::new(),
    }
}

fn win_back() -> JourneySpec {
    JourneySpec {
        name: "win-back".into(),
        topic: "offers".into(),
        entry: Some(JourneyEntry {
            event: "inactive".into(),
            ..Default::default()
        }),
        steps: vec![
            send("push"),
            wait("wait-30", 30),
            JourneyStep {
                name: "clicked".into(),
                kind: Some(journey_step::Kind::Branch(BranchStep {
                    conditions: Vec::new(),
                    then: "end".into(),
                    otherwise: "email".into(),
                })),
                next: String::new(),
            },
            send("email"),
        ],
        exits: vec![
            JourneyExit {
                kind: ExitKind::ExitConverted as i32,
                event: String::new(),
            },
            JourneyExit {
                kind: ExitKind::ExitEvent as i32,
                event: "purchased".into(),
            },
        ],
        reentry_cooldown_s: 10,
        ..Default::default()
    }
}

#[test]
fn steps_follow_the_list_their_next_and_the_end() {
    let mut spec = win_back();
    assert_eq!(next_after(&spec, "push").as_deref(), Some("wait-30"));
    assert_eq!(next_after(&spec, "email"), None);
    spec.steps[0].next = "email".into();
    assert_eq!(next_after(&spec, "push").as_deref(), Some("email"));
    spec.steps[0].next = END.into();
    assert_eq!(next_after(&spec, "push"), None);
    assert_eq!(target("end"), None);
    assert_eq!(target("email").as_deref(), Some("email"));
    assert!(matches!(action(&spec, "clicked"), Action::Branch { .. }));
    assert!(matches!(action(&spec, "gone"), Action::Missing));
}

#[test]
fn a_wait_ends_after_its_duration_or_at_the_next_local_time() {
    let thirty = WaitStep {
        duration_s: 30 * 86_400,
        until_local_time: String::new(),
    };
    assert_eq!(
        wait_due(&thirty, 1_000, chrono_tz::UTC),
        1_000 + 30 * 86_400_000
    );
    let nine = WaitStep {
        duration_s: 0,
        until_local_time: "09:00".into(),
    };
    // 2026-01-15 10:00 UTC = 11:00 in Berlin: the next 09:00 there is tomorrow 08:00 UTC.
    let now = chrono::Utc
        .with_ymd_and_hms(2026, 1, 15, 10, 0, 0)
        .single()
        .map(|t| t.timestamp_millis())
        .unwrap_or_default();
    let due = wait_due(&nine, now, chrono_tz::Europe::Berlin);
    assert_eq!(due - now, 22 * 3_600_000);
    // Earlier the same day: today.
    let early = now - 4 * 3_600_000; // 07:00 Berlin
    assert_eq!(
        wait_due(&nine, early, chrono_tz::Europe::Berlin) - early,
        2 * 3_600_000
    );
}

#[test]
fn entry_is_once_or_after_the_cool_down_and_never_while_active() {
    let mut spec = win_back();
    let first = entered(&spec, "j", "r", None, BTreeMap::new(), 1_000);
    assert_eq!((first.entry, first.step.as_str()), (1, "push"));
    assert!(may_enter(&spec, None, 0));
    assert!(!may_enter(&spec, Some(&first), 1_000_000), "still active");
    let mut ended = first.clone();
    ended.status = JourneyPersonStatus::JourneyPersonCompleted as i32;
    assert!(!may_enter(&spec, Some(&ended), 10_999));
    assert!(may_enter(&spec, Some(&ended), 11_000));
    assert_eq!(
        entered(&spec, "j", "r", Some(&ended), BTreeMap::new(), 11_000).entry,
        2
    );
    spec.reentry_cooldown_s = 0;
    assert!(!may_enter(&spec, Some(&ended), i64::MAX));
}

#[test]
fn exits_end_only_the_journeys_that_list_them_but_opt_outs_and_erasure_always() {
    let spec = win_back();
    assert_eq!(
        exit_reason(&spec, &ExitSignal::Converted).as_deref(),
        Some("converted")
    );
    assert_eq!(exit_reason(&spec, &ExitSignal::Clicked), None);
    assert_eq!(exit_reason(&spec, &ExitSignal::Replied), None);
    assert_eq!(
        exit_reason(&spec, &ExitSignal::Event("purchased".into())).as_deref(),
        Some("event:purchased")
    );
    assert_eq!(
        exit_reason(&spec, &ExitSignal::Event("inactive".into())),
        None
    );
    let opted_out = |topic: &str| ExitSignal::OptedOut {
        topic: topic.into(),
    };
    assert!(exit_reason(&spec, &opted_out("")).is_some());
    assert!(exit_reason(&spec, &opted_out("offers")).is_some());
    assert!(exit_reason(&spec, &opted_out("news")).is_none());
    assert_eq!(
        exit_reason(&spec, &ExitSignal::Erased).as_deref(),
        Some("erased")
    );
    assert_eq!(
        exit_kind("event:purchased"),
        (ExitKind::ExitEvent, "purchased".into())
    );
}

#[test]
fn a_send_step_has_one_key_per_person_entry_and_step_with_the_event_as_variables() {
    let spec = win_back();
    let mut properties = BTreeMap::new();
    properties.insert("cart_total".to_owned(), "42".to_owned());
    let person = entered(&spec, "01J", "ann:1", None, properties, 0);
    let send = SendStep::default();
    let message = message(&spec, "push", &send, &person);
    assert_eq!(message.idempotency_key, "journey:01J:ann:1:1:push");
    assert_eq!(
        journey_of_key(&message.idempotency_key),
        Some(("01J", "push"))
    );
    assert_eq!(journey_of_key("campaign:x:y"), None);
    assert_eq!(
        message
            .variables
            .get("event_cart_total")
            .map(String::as_str),
        Some("42")
    );
    assert_eq!(message.topic, "offers");
    assert_eq!(message.quiet_hours, None);
}

#[test]
fn the_token_changes_with_every_transition() {
    let spec = win_back();
    let person = entered(&spec, "j", "r", None, BTreeMap::new(), 0);
    let mut moved = person.clone();
    moved.step = "wait-30".into();
    let mut ended = moved.clone();
    ended.status = JourneyPersonStatus::JourneyPersonExited as i32;
    let mut again = person.clone();
    again.entry = 2;
    let tokens = [token(&person), token(&moved), token(&ended), token(&again)];
    for (i, a) in tokens.iter().enumerate() {
        for b in &tokens[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn a_journey_messages_events_count_for_its_step_once() {
    use herald_proto::v1::{Channel, Event, EventKind, MessageStatus};
    let event = |kind: EventKind, status: MessageStatus, channel: Channel| Event {
        kind: kind as i32,
        status: status as i32,
        channel: channel as i32,
        ..Default::default()
    };
    let tenant = herald_proto::TenantId("acme".into());
    let events = [
        event(
            EventKind::EventAttempted,
            MessageStatus::Pending,
            Channel::Push,
        ),
        // Accepted by the provider counts as delivered: one send, one delivery.
        event(
            EventKind::EventSent,
            MessageStatus::Delivered,
            Channel::Push,
        ),
        // A late receipt and a read after it count nothing more.
        event(
            EventKind::EventLateReceipt,
            MessageStatus::Delivered,
            Channel::Push,
        ),
        event(
            EventKind::EventRead,
            MessageStatus::Delivered,
            Channel::Push,
        ),
    ];
    let mut delivered = false;
    let Some(herald_store::Tally::AddFields { key, deltas }) =
        message_tally(&tenant, "journey:01J:ann:1:push", &events, &mut delivered)
    else {
        panic!("a journey message counts");
    };
    assert_eq!(key, "jfn:acme:01J");
    assert_eq!(
        deltas,
        vec![("d:push".to_owned(), 1), ("sc:push:push".to_owned(), 1)]
    );
    // Counted once: a later append (a receipt for the delivered message) counts no delivery.
    let receipt = [event(
        EventKind::EventDelivered,
        MessageStatus::Delivered,
        Channel::Push,
    )];
    assert!(delivered);
    assert!(message_tally(&tenant, "journey:01J:ann:1:push", &receipt, &mut delivered).is_none());
    let mut fresh = false;
    assert!(message_tally(&tenant, "campaign:c:ann", &events, &mut fresh).is_none());
    assert!(message_tally(&tenant, "journey:01J:ann:1:push", &events[..1], &mut fresh).is_none());
}
