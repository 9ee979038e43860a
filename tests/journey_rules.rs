//! Journeys' definitions over the public API, in process: every bad definition refused with
//! INVALID_ARGUMENT naming its field and nothing stored; the lifecycle (active ⇄ paused →
//! archived) with FAILED_PRECONDITION where a state does not allow a change; one tenant never
//! sees another's journeys.

use herald_node::config::TenantConfig;
use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::{
    BranchStep, ConditionOp, Content, CreateJourneyRequest, EmailContent, ExitKind, JourneyEntry,
    JourneyEvent, JourneyExit, JourneyRequest, JourneySpec, JourneyState, JourneyStep, JourneyView,
    ListJourneysRequest, MessageClass, PushContent, SegmentCondition, SendStep, SmsContent,
    WaitStep, journey_step::Kind,
};
use herald_testkit::cluster::{API_KEY, OTHER_API_KEY, authed, herald_bin};
use herald_testkit::in_process::InProcess;
use tonic::transport::Channel;

const DAY_S: u64 = 86_400;

async fn start() -> InProcess {
    InProcess::start(|config| {
        config
            .tenants
            .push(TenantConfig::new("globex", vec![OTHER_API_KEY.into()]));
    })
    .await
}

fn send(name: &str, content: Content) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(Kind::Send(SendStep {
            content: Some(content),
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

/// The win-back of the issue: push now, email at 30 days, SMS at 60 unless the email was
/// clicked; a purchase or a conversion ends it.
fn win_back() -> JourneySpec {
    JourneySpec {
        name: "win-back".into(),
        class: MessageClass::Marketing as i32,
        topic: "offers".into(),
        events: vec![JourneyEvent {
            name: "purchased".into(),
            properties: vec!["order_total".into()],
        }],
        entry: Some(JourneyEntry {
            segment: vec![SegmentCondition {
                field: "last_engaged".into(),
                op: ConditionOp::OlderThan as i32,
                values: vec!["30d".into()],
            }],
            ..Default::default()
        }),
        steps: vec![
            send(
                "miss-you",
                Content {
                    push: Some(PushContent {
                        title: "We miss you".into(),
                        body: "See what is new.".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            wait("wait-30", 30 * DAY_S),
            send(
                "offer",
                Content {
                    email: Some(EmailContent {
                        subject: "20% off".into(),
                        text_body: "Hello {{ first_name }}, 20% off.".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
            ),
            wait("wait-60", 30 * DAY_S),
            JourneyStep {
                name: "clicked-offer".into(),
                kind: Some(Kind::Branch(BranchStep {
                    conditions: vec![SegmentCondition {
                        field: "engagement.clicked".into(),
                        op: ConditionOp::Exists as i32,
                        values: vec![],
                    }],
                    then: "end".into(),
                    otherwise: "last-call".into(),
                })),
                next: String::new(),
            },
            send(
                "last-call",
                Content {
                    sms: Some(SmsContent {
                        text: "Last chance: 20% off ends Sunday.".into(),
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
        reentry_cooldown_s: 180 * DAY_S,
    }
}

async fn create(
    api: &mut JourneysClient<Channel>,
    key: &str,
    spec: JourneySpec,
) -> Result<JourneyView, tonic::Status> {
    api.create_journey(authed(CreateJourneyRequest { spec: Some(spec) }, key))
        .await
        .map(|r| r.into_inner())
}

async fn listed(api: &mut JourneysClient<Channel>, key: &str, state: JourneyState) -> Vec<String> {
    api.list_journeys(authed(
        ListJourneysRequest {
            limit: 0,
            state: state as i32,
        },
        key,
    ))
    .await
    .expect("list")
    .into_inner()
    .journeys
    .into_iter()
    .map(|view| view.journey_id)
    .collect()
}

/// A journey that `change` makes invalid is refused with INVALID_ARGUMENT naming `field`,
/// and nothing is stored.
async fn refused(change: impl FnOnce(&mut JourneySpec), field: &str) {
    let cluster = start().await;
    let mut api = cluster.journeys().await;
    let mut spec = win_back();
    change(&mut spec);
    let status = create(&mut api, API_KEY, spec).await.expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "{:?} does not name {field}",
        status.message()
    );
    let stored = listed(&mut api, API_KEY, JourneyState::Unspecified).await;
    assert!(stored.is_empty(), "nothing stored: {stored:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_step_is_refused() {
    // "offer" goes straight to the end: the second wait, the branch and the SMS are never
    // reached; the first of them is named.
    refused(|spec| spec.steps[2].next = "end".into(), "spec.steps[3]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_of_zero_is_refused() {
    refused(
        |spec| spec.steps[1] = wait("wait-30", 0),
        "spec.steps[1].wait.duration_s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_over_400_days_is_refused() {
    refused(
        |spec| spec.steps[3] = wait("wait-60", 400 * DAY_S + 1),
        "spec.steps[3].wait.duration_s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branch_on_an_unknown_field_is_refused() {
    refused(
        |spec| {
            if let Some(Kind::Branch(branch)) = &mut spec.steps[4].kind {
                branch.conditions[0].field = "shoe_size".into();
            }
        },
        "spec.steps[4].branch.conditions[0].field",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_event_never_defined_is_refused() {
    refused(
        |spec| spec.exits[1].event = "ordered".into(),
        "spec.exits[1].event",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_and_a_missing_target_are_refused() {
    refused(
        |spec| spec.steps[5].next = "wait-30".into(),
        "spec.steps[5].next",
    )
    .await;
    refused(
        |spec| {
            if let Some(Kind::Branch(branch)) = &mut spec.steps[4].kind {
                branch.otherwise = "sms".into();
            }
        },
        "spec.steps[4].branch.otherwise",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_on_an_undefined_event_is_refused() {
    refused(
        |spec| {
            spec.entry = Some(JourneyEntry {
                event: "cart_abandoned".into(),
                ..Default::default()
            })
        },
        "spec.entry.event",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_that_fails_a_message_rule_is_named_under_its_step() {
    refused(
        |spec| {
            if let Some(Kind::Send(send)) = &mut spec.steps[5].kind {
                send.content = Some(Content::default());
            }
        },
        "spec.steps[5].send",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_journey_is_stored_and_moves_through_its_states() {
    let cluster = start().await;
    let mut api = cluster.journeys().await;
    let created = create(&mut api, API_KEY, win_back()).await.expect("create");
    assert_eq!(created.state(), JourneyState::Active);
    let id = created.journey_id.clone();
    let spec = created.spec.clone().expect("spec");
    // Defaults filled in: the segment's schedule, each send's waterfall.
    assert_eq!(spec.entry.as_ref().map(|e| e.every_s), Some(DAY_S));
    let Some(Kind::Send(first)) = &spec.steps[0].kind else {
        panic!("a send")
    };
    assert!(!first.waterfall.is_empty());

    let request = |id: &str| {
        authed(
            JourneyRequest {
                journey_id: id.into(),
            },
            API_KEY,
        )
    };
    let mut read = api
        .get_journey(request(&id))
        .await
        .expect("get")
        .into_inner();
    // Get adds the funnel (nobody entered yet).
    let funnel = read.funnel.take().expect("a funnel");
    let steps = created.spec.as_ref().map_or(0, |s| s.steps.len());
    assert_eq!((funnel.entered, funnel.steps.len()), (0, steps));
    assert_eq!(read, created, "read back as created");

    let paused = api
        .pause_journey(request(&id))
        .await
        .expect("pause")
        .into_inner();
    assert_eq!(paused.state(), JourneyState::Paused);
    let again = api
        .pause_journey(request(&id))
        .await
        .expect_err("paused already");
    assert_eq!(again.code(), tonic::Code::FailedPrecondition, "{again:?}");
    assert!(again.message().contains("paused"), "{again:?}");
    assert_eq!(
        listed(&mut api, API_KEY, JourneyState::Paused).await,
        std::slice::from_ref(&id)
    );
    assert!(
        listed(&mut api, API_KEY, JourneyState::Active)
            .await
            .is_empty()
    );

    let resumed = api
        .resume_journey(request(&id))
        .await
        .expect("resume")
        .into_inner();
    assert_eq!(resumed.state(), JourneyState::Active);
    let archived = api
        .archive_journey(request(&id))
        .await
        .expect("archive")
        .into_inner();
    assert_eq!(archived.state(), JourneyState::Archived);
    for status in [
        api.resume_journey(request(&id))
            .await
            .expect_err("archived"),
        api.pause_journey(request(&id)).await.expect_err("archived"),
        api.archive_journey(request(&id))
            .await
            .expect_err("archived"),
    ] {
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("archived"), "{status:?}");
    }
    let read = api
        .get_journey(request(&id))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(read.state(), JourneyState::Archived);
    assert_eq!(read.spec, created.spec, "the definition never changes");

    // Newest first.
    let second = create(&mut api, API_KEY, win_back()).await.expect("create");
    assert_eq!(
        listed(&mut api, API_KEY, JourneyState::Unspecified).await,
        [second.journey_id.clone(), id.clone()]
    );

    let missing = api
        .get_journey(request("01JX0000000000000000000000"))
        .await
        .expect_err("unknown");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
    let bad = api.get_journey(request("")).await.expect_err("no id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument, "{bad:?}");
    assert!(bad.message().contains("journey_id"), "{bad:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_never_sees_another_tenants_journeys() {
    let cluster = start().await;
    let mut api = cluster.journeys().await;
    let created = create(&mut api, API_KEY, win_back()).await.expect("create");
    let theirs = authed(
        JourneyRequest {
            journey_id: created.journey_id.clone(),
        },
        OTHER_API_KEY,
    );
    let status = api.archive_journey(theirs).await.expect_err("not theirs");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert!(
        listed(&mut api, OTHER_API_KEY, JourneyState::Unspecified)
            .await
            .is_empty()
    );
    let unauthenticated = api
        .list_journeys(tonic::Request::new(ListJourneysRequest::default()))
        .await
        .expect_err("no key");
    assert_eq!(unauthenticated.code(), tonic::Code::Unauthenticated);
    cluster.shutdown().await;
}

/// `herald journey …` against a real node: the documented example file is created, listed,
/// paused and archived; a file the API refuses fails with the field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_the_example_and_changes_its_state() {
    let cluster = start().await;
    let addr = cluster.node.local_addr.to_string();
    let herald = |args: Vec<String>| {
        let addr = addr.clone();
        async move {
            let mut command = tokio::process::Command::new(herald_bin());
            command
                .arg("journey")
                .args(&args)
                .args(["--addr", &addr, "--api-key", API_KEY])
                .env_remove("HERALD_API_KEY")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true);
            let output = tokio::time::timeout(std::time::Duration::from_secs(40), command.output())
                .await
                .unwrap_or_else(|_| panic!("herald journey {args:?} did not finish in time"))
                .expect("run herald");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            (output.status.success(), stdout, stderr)
        }
    };
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/journey.toml");
    let (ok, stdout, stderr) = herald(vec!["create".into(), "--file".into(), example.into()]).await;
    assert!(ok, "create failed:\n{stdout}\n{stderr}");
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("journey ")?.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("no id in:\n{stdout}"))
        .to_owned();
    assert!(
        stdout.contains("last-call"),
        "the steps are printed:\n{stdout}"
    );
    assert!(
        stdout.lines().all(|line| line.chars().count() <= 80),
        "80 columns:\n{stdout}"
    );

    let (ok, stdout, stderr) = herald(vec!["pause".into(), id.clone()]).await;
    assert!(ok && stdout.contains("paused"), "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = herald(vec!["list".into(), "--state".into(), "paused".into()]).await;
    assert!(ok && stdout.contains(&id), "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = herald(vec!["archive".into(), id.clone()]).await;
    assert!(ok && stdout.contains("archived"), "{stdout}\n{stderr}");
    let (ok, stdout, stderr) = herald(vec!["resume".into(), id.clone()]).await;
    assert!(!ok && stderr.contains("archived"), "{stdout}\n{stderr}");

    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    let text = std::fs::read_to_string(example)
        .expect("the example")
        .replacen("wait = \"30d\"", "wait = \"0d\"", 1);
    std::fs::write(&bad, text).expect("write the bad file");
    let (ok, stdout, stderr) = herald(vec![
        "create".into(),
        "--file".into(),
        bad.to_string_lossy().into_owned(),
    ])
    .await;
    assert!(
        !ok && stderr.contains("spec.steps[1].wait.duration_s"),
        "{stdout}\n{stderr}"
    );
    let (_, stdout, _) = herald(vec!["list".into()]).await;
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the first one stored:\n{stdout}"
    );

    // The same journey entered on an event: report it, read the person, see the funnel.
    let by_event = dir.path().join("by_event.toml");
    let text = std::fs::read_to_string(example).expect("the example");
    let start = text.find("[entry]").expect("an [entry] table");
    let end = text[start..].find("\n]\n").expect("the segment's end") + start + 3;
    let text = format!(
        "{}[entry]\nevent = \"inactive\"\n{}",
        &text[..start],
        &text[end..]
    )
    .replacen(
        "[[events]]\nname = \"purchased\"",
        "[[events]]\nname = \"inactive\"\n\n[[events]]\nname = \"purchased\"",
        1,
    );
    std::fs::write(&by_event, text).expect("write the event file");
    let (ok, stdout, stderr) = herald(vec![
        "create".into(),
        "--file".into(),
        by_event.to_string_lossy().into_owned(),
    ])
    .await;
    assert!(ok, "{stdout}\n{stderr}");
    let id = stdout
        .lines()
        .find_map(|line| line.strip_prefix("journey ")?.strip_suffix(" created"))
        .unwrap_or_else(|| panic!("no id in:\n{stdout}"))
        .to_owned();
    let report = |event: &str| {
        vec![
            "report".to_owned(),
            "--recipient".into(),
            "cli-r1".into(),
            "--event".into(),
            event.into(),
            "--property".into(),
            "order_total=12".into(),
        ]
    };
    let (ok, stdout, stderr) = herald(report("inactive")).await;
    assert!(
        ok && stdout.contains(&format!("entered: {id}")),
        "{stdout}\n{stderr}"
    );
    let (ok, stdout, stderr) = herald(vec!["person".into(), id.clone(), "cli-r1".into()]).await;
    assert!(
        ok && stdout.contains("active at wait-30") && stdout.contains("miss-you"),
        "{stdout}\n{stderr}"
    );
    let (ok, stdout, stderr) = herald(report("purchased")).await;
    assert!(
        ok && stdout.contains(&format!("exited:  {id}")),
        "{stdout}\n{stderr}"
    );
    let (ok, stdout, stderr) = herald(vec!["get".into(), id.clone()]).await;
    assert!(
        ok && stdout.contains("exited: event:purchased 1") && stdout.contains("reached"),
        "{stdout}\n{stderr}"
    );
    assert!(
        stdout.lines().all(|line| line.chars().count() <= 80),
        "80 columns:\n{stdout}"
    );
    let (ok, stdout, stderr) = herald(vec![
        "report".into(),
        "--recipient".into(),
        "cli-r1".into(),
        "--event".into(),
        "Bad Event".into(),
    ])
    .await;
    assert!(!ok && stderr.contains("event"), "{stdout}\n{stderr}");
    cluster.shutdown().await;
}
