//! Journeys running, in process on a manual clock: people enter on a reported event, each send
//! step goes through the intake once (its idempotency key), waits fire when the clock reaches
//! them (paged from the store), exits end a journey at once even in the middle of a wait, a
//! conversion counts for the last step the person received, re-entry follows the rules, a paused
//! journey lets no one in, and every bad event is refused field by field with nothing changed.

use std::collections::BTreeMap;
use std::time::Duration;

use herald::demo::demo_recipient;
use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::{
    ConditionOp, Content, EmailContent, EngagementKind, EngagementReport, ExitKind, JourneyEntry,
    JourneyEvent, JourneyExit, JourneyPerson, JourneyPersonStatus, JourneyRequest, JourneySpec,
    JourneyStep, MessageClass, PushContent, ReportEventRequest, ReportEventResponse, ReportRequest,
    SegmentCondition, SmsContent, UpsertRecipientsRequest, journey_step::Kind,
};
use herald_testkit::cluster::{API_KEY, authed};
use herald_testkit::eventually::eventually;
use herald_testkit::in_process::InProcess;
use herald_testkit::journeys::{self, send, sent_steps, wait_days};
use tonic::transport::Channel;

const DAY: Duration = Duration::from_secs(86_400);
const WAIT: Duration = Duration::from_secs(20);

/// An abandoned cart over 60 days: a push now, an email at 30 days, an SMS at 60; a purchase
/// or a conversion ends it.
fn cart() -> BTreeMap<String, String> {
    BTreeMap::from([("cart_total".to_owned(), "$42".to_owned())])
}

async fn report(
    api: &mut JourneysClient<Channel>,
    recipient: &str,
    event: &str,
) -> Result<ReportEventResponse, tonic::Status> {
    journeys::report(api, API_KEY, recipient, event, cart()).await
}

async fn person(
    api: &mut JourneysClient<Channel>,
    journey: &str,
    recipient: &str,
) -> Result<JourneyPerson, tonic::Status> {
    journeys::person(api, API_KEY, journey, recipient).await
}

fn cart_journey(reentry_cooldown_s: u64) -> JourneySpec {
    JourneySpec {
        name: "cart".into(),
        class: MessageClass::Marketing as i32,
        topic: "offers".into(),
        events: vec![
            JourneyEvent {
                name: "cart_abandoned".into(),
                properties: vec!["cart_total".into()],
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
            send(
                "push",
                Content {
                    push: Some(PushContent {
                        title: "Still thinking?".into(),
                        body: "Your cart of {{ event_cart_total }} is waiting.".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            wait_days("wait-30", 30),
            send(
                "email",
                Content {
                    email: Some(EmailContent {
                        subject: "10% off your cart".into(),
                        text_body: "Your cart of {{ event_cart_total }}, 10% off.".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            wait_days("wait-60", 30),
            send(
                "sms",
                Content {
                    sms: Some(SmsContent {
                        text: "Last call for your cart.".into(),
                    }),
                    ..Default::default()
                },
            ),
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
        reentry_cooldown_s,
    }
}

async fn start_with(cluster: &InProcess, spec: JourneySpec, people: usize) -> String {
    let mut recipients = cluster.recipients().await;
    recipients
        .upsert_recipients(authed(
            UpsertRecipientsRequest {
                // Noon where they live: quiet hours (which apply to every send) are open.
                recipients: (0..people)
                    .map(|i| {
                        let mut recipient = demo_recipient(format!("r{i}"), i);
                        recipient.time_zone = "Europe/London".into();
                        recipient
                    })
                    .collect(),
            },
            API_KEY,
        ))
        .await
        .expect("upsert");
    let mut api = cluster.journeys().await;
    journeys::create(&mut api, API_KEY, spec)
        .await
        .expect("create")
        .journey_id
}

/// Waits until `recipient` has sent `steps` (and is at `step`).
async fn wait_for_steps(
    api: &JourneysClient<Channel>,
    journey: &str,
    recipient: &str,
    steps: &[&str],
) -> JourneyPerson {
    eventually(&format!("{recipient} sent {steps:?}"), WAIT, || {
        let mut api = api.clone();
        async move {
            let found = person(&mut api, journey, recipient).await.ok()?;
            (sent_steps(&found) == steps).then_some(found)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn people_walk_the_steps_on_the_clock_and_exits_end_them_at_once() {
    let cluster = InProcess::start(|_| {}).await;
    let journey = start_with(&cluster, cart_journey(0), 3).await;
    let mut api = cluster.journeys().await;
    let entry_time = cluster.now_unix_ms();

    for r in ["r0", "r1", "r2"] {
        let answer = report(&mut api, r, "cart_abandoned").await.expect("report");
        assert_eq!(answer.entered, vec![journey.clone()], "{r}");
        assert!(answer.exited.is_empty());
    }
    // Entered, pushed, and waiting 30 days, all before the answer.
    let r0 = person(&mut api, &journey, "r0").await.expect("r0");
    assert_eq!(r0.status(), JourneyPersonStatus::JourneyPersonActive);
    assert_eq!((r0.entry, r0.step.as_str()), (1, "wait-30"));
    assert_eq!(sent_steps(&r0), ["push"]);
    assert_eq!(r0.wait_due_unix_ms, entry_time + 30 * 86_400_000);
    assert_eq!(
        r0.properties.get("cart_total").map(String::as_str),
        Some("$42")
    );
    let delivery = cluster.delivery().await;
    let message = herald_testkit::delivery::get_message(&delivery, API_KEY, &r0.sent[0].message_id)
        .await
        .expect("the push is a message");
    let view_of_message = message.message.expect("message view");
    assert_eq!(
        view_of_message.idempotency_key,
        format!("journey:{journey}:r0:1:push")
    );
    // Entering again while active does nothing.
    let again = report(&mut api, "r0", "cart_abandoned")
        .await
        .expect("report");
    assert!(again.entered.is_empty());

    // r1 buys during the wait: ended at once, wait gone.
    let bought = report(&mut api, "r1", "purchased").await.expect("purchase");
    assert_eq!(bought.exited, vec![journey.clone()]);
    let r1 = person(&mut api, &journey, "r1").await.expect("r1");
    assert_eq!(r1.status(), JourneyPersonStatus::JourneyPersonExited);
    assert_eq!(
        (r1.exit_kind(), r1.exit_event.as_str()),
        (ExitKind::ExitEvent, "purchased")
    );
    assert_eq!(r1.wait_due_unix_ms, 0);

    // r2 converts on the push: the journey ends, the conversion counts for the push.
    let r2 = person(&mut api, &journey, "r2").await.expect("r2");
    herald_testkit::delivery::wait_terminal(&delivery, API_KEY, &r2.sent[0].message_id, WAIT).await;
    let mut engagement = cluster.engagement().await;
    let verdict = engagement
        .report(authed(
            ReportRequest {
                reports: vec![EngagementReport {
                    message_id: r2.sent[0].message_id.clone(),
                    kind: EngagementKind::EngagementConverted as i32,
                    ..Default::default()
                }],
            },
            API_KEY,
        ))
        .await
        .expect("conversion")
        .into_inner();
    assert_eq!(
        verdict.results.first().map(|r| r.status()),
        Some(herald_proto::v1::ReportStatus::ReportLate),
        "{verdict:?}"
    );
    eventually("r2's journey ends on its conversion", WAIT, || {
        let mut api = api.clone();
        let journey = journey.clone();
        async move {
            let r2 = person(&mut api, &journey, "r2").await.ok()?;
            (r2.status() == JourneyPersonStatus::JourneyPersonExited
                && r2.exit_kind() == ExitKind::ExitConverted)
                .then_some(())
        }
    })
    .await;

    // Thirty days on: the email, then thirty more: the SMS and the end. Only r0.
    cluster.advance(30 * DAY);
    let r0 = wait_for_steps(&api, &journey, "r0", &["push", "email"]).await;
    assert_eq!(r0.step, "wait-60");
    cluster.advance(30 * DAY);
    let r0 = wait_for_steps(&api, &journey, "r0", &["push", "email", "sms"]).await;
    assert_eq!(r0.status(), JourneyPersonStatus::JourneyPersonCompleted);
    for r in ["r1", "r2"] {
        let ended = person(&mut api, &journey, r).await.expect("ended");
        assert_eq!(
            sent_steps(&ended),
            ["push"],
            "{r} got nothing after its exit"
        );
    }

    let funnel = journeys::get(&mut api, API_KEY, &journey)
        .await
        .expect("get")
        .funnel
        .expect("funnel");
    assert_eq!(
        (
            funnel.entered,
            funnel.active,
            funnel.in_wait,
            funnel.completed
        ),
        (3, 0, 0, 1)
    );
    assert_eq!(funnel.exited.get("event:purchased"), Some(&1));
    assert_eq!(funnel.exited.get("converted"), Some(&1));
    let step = |name: &str| {
        funnel
            .steps
            .iter()
            .find(|s| s.step == name)
            .cloned()
            .unwrap_or_default()
    };
    assert_eq!((step("push").reached, step("push").sent), (3, 3));
    assert_eq!(step("push").converted, 1);
    assert_eq!(step("wait-30").exited, 2);
    assert_eq!((step("email").sent, step("sms").sent), (1, 1));
    assert_eq!(step("wait-60").in_wait, 0);
    // Attempts per channel, counted with the events that record them.
    let by_channel = eventually("the push step's attempts counted", WAIT, || {
        let mut api = api.clone();
        let journey = journey.clone();
        async move {
            let funnel = journeys::get(&mut api, API_KEY, &journey)
                .await
                .ok()?
                .funnel?;
            let push = funnel.steps.into_iter().find(|s| s.step == "push")?;
            (!push.sent_by_channel.is_empty()).then_some(push.sent_by_channel)
        }
    })
    .await;
    assert!(
        by_channel.keys().all(|channel| channel == "push") && by_channel["push"] <= 3,
        "{by_channel:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_entry_waits_for_the_cool_down_and_a_paused_journey_lets_no_one_in() {
    let cluster = InProcess::start(|_| {}).await;
    let journey = start_with(&cluster, cart_journey(7 * 86_400), 1).await;
    let mut api = cluster.journeys().await;
    let request = JourneyRequest {
        journey_id: journey.clone(),
    };
    api.pause_journey(authed(request.clone(), API_KEY))
        .await
        .expect("pause");
    let paused = report(&mut api, "r0", "cart_abandoned")
        .await
        .expect("report");
    assert!(paused.entered.is_empty());
    assert_eq!(
        person(&mut api, &journey, "r0").await.map_err(|s| s.code()),
        Err(tonic::Code::NotFound)
    );
    api.resume_journey(authed(request, API_KEY))
        .await
        .expect("resume");
    assert_eq!(
        report(&mut api, "r0", "cart_abandoned")
            .await
            .expect("report")
            .entered,
        vec![journey.clone()]
    );
    report(&mut api, "r0", "purchased").await.expect("purchase");
    // Inside the cool-down: no second entry; after it: entry 2, with its own messages.
    cluster.advance(6 * DAY);
    assert!(
        report(&mut api, "r0", "cart_abandoned")
            .await
            .expect("report")
            .entered
            .is_empty()
    );
    cluster.advance(DAY);
    assert_eq!(
        report(&mut api, "r0", "cart_abandoned")
            .await
            .expect("report")
            .entered,
        vec![journey.clone()]
    );
    let second = person(&mut api, &journey, "r0").await.expect("r0");
    assert_eq!((second.entry, sent_steps(&second)), (2, vec!["push"]));
    // Erasure ends the journey and forgets the entry event's properties.
    assert!(!second.properties.is_empty());
    let mut recipients = cluster.recipients().await;
    recipients
        .erase_recipient(authed(
            herald_proto::v1::EraseRecipientRequest { id: "r0".into() },
            API_KEY,
        ))
        .await
        .expect("erase");
    eventually("r0's journey ends on erasure", WAIT, || {
        let mut api = api.clone();
        let journey = journey.clone();
        async move {
            let r0 = person(&mut api, &journey, "r0").await.ok()?;
            (r0.exit_kind() == ExitKind::ExitErased && r0.properties.is_empty()).then_some(())
        }
    })
    .await;
    cluster.shutdown().await;
}

/// A change that makes a reported event bad.
type Change = Box<dyn Fn(&mut ReportEventRequest)>;

/// Each bad field of a reported event is refused with INVALID_ARGUMENT naming it, and nobody
/// enters anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_event_is_refused_field_by_field_and_changes_nothing() {
    let cluster = InProcess::start(|_| {}).await;
    let journey = start_with(&cluster, cart_journey(0), 1).await;
    let mut api = cluster.journeys().await;
    let good = || {
        let mut properties = std::collections::BTreeMap::new();
        properties.insert("cart_total".to_owned(), "$1".to_owned());
        ReportEventRequest {
            recipient_id: "r0".into(),
            event: "cart_abandoned".into(),
            properties,
        }
    };
    let cases: Vec<(&str, Change)> = vec![
        ("recipient_id", Box::new(|r| r.recipient_id.clear())),
        (
            "recipient_id",
            Box::new(|r| r.recipient_id = "x".repeat(300)),
        ),
        ("event", Box::new(|r| r.event = "Cart-Abandoned".into())),
        ("event", Box::new(|r| r.event.clear())),
        (
            "properties",
            Box::new(|r| {
                for i in 0..33 {
                    r.properties.insert(format!("p{i}"), String::new());
                }
            }),
        ),
        (
            "properties[\"Bad Name\"]",
            Box::new(|r| {
                r.properties.insert("Bad Name".into(), String::new());
            }),
        ),
        (
            "properties[\"cart_total\"]",
            Box::new(|r| {
                r.properties.insert("cart_total".into(), "x".repeat(1_025));
            }),
        ),
    ];
    for (field, change) in cases {
        let mut request = good();
        change(&mut request);
        let status = api
            .report_event(authed(request, API_KEY))
            .await
            .expect_err(field);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{field}: {status:?}"
        );
        assert!(
            status.message().contains(field),
            "{field}: {}",
            status.message()
        );
    }
    assert_eq!(
        person(&mut api, &journey, "r0").await.map_err(|s| s.code()),
        Err(tonic::Code::NotFound)
    );
    // The person read names its fields too.
    let status = person(&mut api, "", "r0").await.expect_err("no journey id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("journey_id"), "{status:?}");
    let status = person(&mut api, &journey, "")
        .await
        .expect_err("no recipient");
    assert!(status.message().contains("recipient_id"), "{status:?}");
    // An event no journey knows is no error: nothing happens.
    let nothing = report(&mut api, "r0", "newsletter_read")
        .await
        .expect("report");
    assert!(nothing.entered.is_empty() && nothing.exited.is_empty());
    // A client cannot borrow a journey's idempotency keys.
    let delivery = cluster.delivery().await;
    let mut message =
        herald::demo::demo_message("r0".into(), format!("journey:{journey}:r0:1:push"));
    message.class = MessageClass::Transactional as i32;
    let status = herald_testkit::delivery::send(&delivery, API_KEY, message)
        .await
        .expect_err("reserved prefix");
    assert!(status.message().contains("idempotency_key"), "{status:?}");
    cluster.shutdown().await;
}

/// A journey entered by a segment: each round enters the people who match it then (and only
/// them); a person who matches later enters at a later round; an active person is not entered
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_segment_enters_the_people_it_matches_round_after_round() {
    let cluster = InProcess::start(|_| {}).await;
    let tiered = |i: usize, tier: &str| {
        let mut recipient = demo_recipient(format!("r{i}"), i);
        recipient.time_zone = "Europe/London".into();
        if !tier.is_empty() {
            recipient.attributes.insert("tier".into(), tier.into());
        }
        recipient
    };
    let recipients = cluster.recipients().await;
    let upsert = |people: Vec<herald_proto::v1::Recipient>| {
        let mut recipients = recipients.clone();
        async move {
            recipients
                .upsert_recipients(authed(
                    UpsertRecipientsRequest { recipients: people },
                    API_KEY,
                ))
                .await
                .expect("upsert");
        }
    };
    upsert(vec![
        tiered(0, "gold"),
        tiered(1, "gold"),
        tiered(2, "silver"),
        tiered(3, ""),
    ])
    .await;
    let mut spec = cart_journey(0);
    spec.events.retain(|e| e.name == "purchased");
    spec.entry = Some(JourneyEntry {
        segment: vec![SegmentCondition {
            field: "attributes.tier".into(),
            op: ConditionOp::Equals as i32,
            values: vec!["gold".into()],
        }],
        every_s: 86_400,
        ..Default::default()
    });
    for step in &mut spec.steps {
        if let Some(Kind::Send(send)) = &mut step.kind {
            send.variables
                .insert("event_cart_total".into(), "your cart".into());
        }
    }
    let mut api = cluster.journeys().await;
    let journey = journeys::create(&mut api, API_KEY, spec)
        .await
        .expect("create")
        .journey_id;
    for r in ["r0", "r1"] {
        let entered = wait_for_steps(&api, &journey, r, &["push"]).await;
        assert_eq!(entered.entry, 1);
    }
    for r in ["r2", "r3"] {
        assert_eq!(
            person(&mut api, &journey, r).await.map_err(|s| s.code()),
            Err(tonic::Code::NotFound),
            "{r} does not match"
        );
    }
    // r2 becomes gold: the next day's round enters them; r0 (active) is not entered again.
    upsert(vec![tiered(2, "gold")]).await;
    cluster.advance(DAY);
    wait_for_steps(&api, &journey, "r2", &["push"]).await;
    let r0 = person(&mut api, &journey, "r0").await.expect("r0");
    assert_eq!(r0.entry, 1);
    let funnel = journeys::get(&mut api, API_KEY, &journey)
        .await
        .expect("get")
        .funnel
        .expect("funnel");
    assert_eq!(funnel.entered, 3);
    drop(recipients);
    cluster.shutdown().await;
}

/// A wait until a time of day in the person's own zone, then a branch on the engagement of
/// the last message: the branch takes the way the message's own log says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_time_wait_and_an_engagement_branch_follow_the_person() {
    let cluster = InProcess::start(|_| {}).await;
    let people = 6;
    let mut spec = cart_journey(0);
    // push, then wait until 09:00 their time, then: delivered? email : sms.
    spec.steps = vec![
        spec.steps[0].clone(),
        JourneyStep {
            name: "morning".into(),
            kind: Some(Kind::Wait(herald_proto::v1::WaitStep {
                duration_s: 0,
                until_local_time: "09:00".into(),
            })),
            next: String::new(),
        },
        JourneyStep {
            name: "if-delivered".into(),
            kind: Some(Kind::Branch(herald_proto::v1::BranchStep {
                conditions: vec![SegmentCondition {
                    field: "engagement.delivered".into(),
                    op: ConditionOp::Exists as i32,
                    values: vec![],
                }],
                then: "email".into(),
                otherwise: "sms".into(),
            })),
            next: String::new(),
        },
        JourneyStep {
            next: "end".into(),
            ..spec.steps[2].clone()
        },
        spec.steps[4].clone(),
    ];
    let journey = start_with(&cluster, spec, people).await;
    let mut api = cluster.journeys().await;
    let delivery = cluster.delivery().await;
    let start = cluster.now_unix_ms();
    let mut delivered = Vec::new();
    for i in 0..people {
        let r = format!("r{i}");
        report(&mut api, &r, "cart_abandoned")
            .await
            .expect("report");
        let person = person(&mut api, &journey, &r).await.expect("entered");
        // 12:00 UTC is 12:00 in London in January: the next 09:00 there is 21 h later.
        assert_eq!(
            (person.step.as_str(), person.wait_due_unix_ms),
            ("morning", start + 21 * 3_600_000),
            "{r}"
        );
        let log = herald_testkit::delivery::wait_terminal(
            &delivery,
            API_KEY,
            &person.sent[0].message_id,
            WAIT,
        )
        .await;
        delivered.push(
            herald_testkit::delivery::last_status(&log)
                == herald_proto::v1::MessageStatus::Delivered,
        );
    }
    cluster.advance(Duration::from_secs(21 * 3_600));
    for (i, delivered) in delivered.iter().enumerate() {
        let expected = if *delivered {
            ["push", "email"]
        } else {
            ["push", "sms"]
        };
        let person = wait_for_steps(&api, &journey, &format!("r{i}"), &expected).await;
        assert_eq!(person.status(), JourneyPersonStatus::JourneyPersonCompleted);
        assert_eq!(
            person.sent[1].waited_until_unix_ms,
            start + 21 * 3_600_000,
            "the send records the wait it followed"
        );
    }
    cluster.shutdown().await;
}

/// `herald up --demo-journey`: the win-back over the demo's people on the accelerated clock,
/// to its end, as a user runs it (a real process, three nodes, the embedded store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_up_demo_journey_plays_the_win_back_to_its_end() {
    let people: u64 = 100;
    let mut command = tokio::process::Command::new(herald_testkit::cluster::herald_bin());
    command
        .args(["up", "--demo-journey", "--demo", &people.to_string()])
        .args(["--exit-when-done", "--json", "--partitions", "256"])
        .env_remove("HERALD_API_KEY")
        .env_remove("HERALD_CONFIG")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .expect("herald up --demo-journey finished in time")
        .expect("run herald");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let line = stdout.lines().last().unwrap_or_default();
    let summary: serde_json::Value = serde_json::from_str(line).expect("one JSON line");
    let converters = people.div_ceil(10);
    assert_eq!(summary["entered"], people, "{summary}");
    assert_eq!(summary["completed"], people - converters, "{summary}");
    assert_eq!(
        summary["exited"]["event:purchased"], converters,
        "{summary}"
    );
    assert_eq!(
        summary["sent"]["last-call"],
        people - converters,
        "{summary}"
    );
    assert!(
        stderr.contains("day") && stderr.contains("in wait"),
        "the live funnel:\n{stderr}"
    );
    assert!(
        stdout.contains(&format!("entered {people}")),
        "the final funnel:\n{stdout}"
    );
    let report = stdout.lines().filter(|l| !l.starts_with('{'));
    assert!(
        stderr
            .lines()
            .chain(report)
            .all(|line| line.chars().count() <= 80),
        "80 columns:\n{stdout}\n{stderr}"
    );
}
