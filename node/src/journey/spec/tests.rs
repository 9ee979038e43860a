use herald_proto::v1::{
    Content, EmailContent, ExitKind, JourneyEntry, JourneyEvent, JourneyExit, JourneySpec,
    JourneyStep, PushContent, SendStep, WaitStep, journey_step::Kind,
};

use super::*;

fn send(name: &str, body: &str) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(Kind::Send(SendStep {
            content: Some(Content {
                push: Some(PushContent {
                    title: "Hi".into(),
                    body: body.into(),
                    ..Default::default()
                }),
                email: Some(EmailContent {
                    subject: "Hi".into(),
                    text_body: body.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        })),
        next: String::new(),
    }
}

fn wait(name: &str, duration_s: u64) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(Kind::Wait(WaitStep {
            duration_s,
            until_local_time: String::new(),
        })),
        next: String::new(),
    }
}

fn cart() -> JourneySpec {
    JourneySpec {
        name: "cart".into(),
        class: herald_proto::v1::MessageClass::Transactional as i32,
        topic: String::new(),
        events: vec![
            JourneyEvent {
                name: "cart_abandoned".into(),
                properties: vec!["total".into()],
            },
            JourneyEvent {
                name: "purchased".into(),
                properties: vec![],
            },
        ],
        entry: Some(JourneyEntry {
            event: "cart_abandoned".into(),
            ..Default::default()
        }),
        steps: vec![
            wait("hour", 3_600),
            send("push", "Your cart: {{ event_total }}"),
            wait("day", 86_400),
            send("email", "Still there?"),
        ],
        exits: vec![JourneyExit {
            kind: ExitKind::ExitEvent as i32,
            event: "purchased".into(),
        }],
        reentry_cooldown_s: 0,
    }
}

fn field_of(spec: JourneySpec) -> String {
    let mut spec = spec;
    match validate(&mut spec, 64 * 1024) {
        Err(Invalid::InvalidArgument { field, .. }) => field,
        other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
    }
}

#[test]
fn a_cart_journey_passes_and_gets_its_waterfalls() {
    let mut spec = cart();
    validate(&mut spec, 64 * 1024).expect("valid");
    let Some(Kind::Send(send)) = &spec.steps[1].kind else {
        panic!("a send")
    };
    assert!(!send.waterfall.is_empty(), "the default waterfall");
}

#[test]
fn an_unreachable_step_is_named() {
    let mut spec = cart();
    spec.steps[1].next = "email".into();
    assert_eq!(field_of(spec), "spec.steps[2]");
}

#[test]
fn a_loop_is_named_at_the_edge_that_closes_it() {
    let mut spec = cart();
    spec.steps[3].next = "hour".into();
    assert_eq!(field_of(spec), "spec.steps[3].next");
}

#[test]
fn waits_of_zero_and_over_400_days_are_refused() {
    let mut spec = cart();
    spec.steps[0] = wait("hour", 0);
    assert_eq!(field_of(spec), "spec.steps[0].wait.duration_s");
    let mut spec = cart();
    spec.steps[2] = wait("day", WAIT_MAX_S + 1);
    assert_eq!(field_of(spec), "spec.steps[2].wait.duration_s");
    let mut spec = cart();
    spec.steps[2] = wait("day", WAIT_MAX_S);
    validate(&mut spec, 64 * 1024).expect("400 days is the longest wait");
}

#[test]
fn an_exit_on_an_undefined_event_is_named() {
    let mut spec = cart();
    spec.exits[0].event = "ordered".into();
    assert_eq!(field_of(spec), "spec.exits[0].event");
}

#[test]
fn a_template_property_the_entry_event_lacks_is_named() {
    let mut spec = cart();
    spec.steps[1] = send("push", "{{ event_coupon }}");
    assert!(field_of(spec).starts_with("spec.steps[1].send.content."));
}

#[test]
fn a_branch_on_an_unknown_field_is_named() {
    let mut spec = cart();
    spec.steps[2] = JourneyStep {
        name: "day".into(),
        kind: Some(Kind::Branch(herald_proto::v1::BranchStep {
            conditions: vec![herald_proto::v1::SegmentCondition {
                field: "engagement.opened".into(),
                op: herald_proto::v1::ConditionOp::Exists as i32,
                values: vec![],
            }],
            then: "end".into(),
            otherwise: "email".into(),
        })),
        next: String::new(),
    };
    assert_eq!(field_of(spec), "spec.steps[2].branch.conditions[0].field");
}
