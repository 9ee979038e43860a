//! Campaign rules on a node in this process, on the embedded store and a manual clock: bad
//! input (every field named, nothing stored), local time in five zones, credits running out
//! and topped up, the end of a campaign, the holdout's lift.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use chrono_tz::Tz;
use herald::demo::{demo_campaign, demo_recipient};
use herald_proto::v1::campaigns_client::CampaignsClient;
use herald_proto::v1::engagement_client::EngagementClient;
use herald_proto::v1::{
    Audience, CampaignSpec, CampaignState, CampaignView, ConditionOp, EngagementKind,
    EngagementReport, EventKind, ListCampaignsRequest, Pace, ReportRequest, ReportStatus, Schedule,
    SegmentCondition, SendWindow, UpsertRecipientsRequest, Variant,
};
use herald_store::campaign::Outcome;
use herald_testkit::campaigns::{self, audit_by_outcomes, identity_holds};
use herald_testkit::cluster::{API_KEY, TENANT, authed};
use herald_testkit::eventually::eventually;
use herald_testkit::in_process::InProcess;
use tonic::transport::Channel;

#[path = "common/campaign_checks.rs"]
mod checks;
use checks::{check_ledger, check_members};

const WAIT: Duration = Duration::from_secs(30);

async fn start() -> InProcess {
    InProcess::start(|config| {
        // Credits below are counted in SMS prices; a flat table keeps the sums readable.
        config.prices = herald_node::content::pricing::PriceTable::from_toml(
            "[push]\ndefault = 0.001\n[email]\ndefault = 0.002\n[sms]\ndefault = 0.01\n",
        )
        .expect("prices");
    })
    .await
}

async fn upsert(cluster: &InProcess, recipients: Vec<herald_proto::v1::Recipient>) {
    let mut client = cluster.recipients().await;
    for chunk in recipients.chunks(1_000) {
        client
            .upsert_recipients(authed(
                UpsertRecipientsRequest {
                    recipients: chunk.to_vec(),
                },
                API_KEY,
            ))
            .await
            .expect("upsert");
    }
}

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}")).collect()
}

async fn wait_view(
    api: &mut CampaignsClient<Channel>,
    id: &str,
    what: &str,
    done: impl Fn(&CampaignView) -> bool,
) -> CampaignView {
    eventually(what, WAIT, || {
        let mut api = api.clone();
        let id = id.to_owned();
        let done = &done;
        async move {
            let view = campaigns::get(&mut api, API_KEY, &id).await.ok()?;
            done(&view).then_some(view)
        }
    })
    .await
}

/// A campaign that `change` makes invalid is refused with INVALID_ARGUMENT naming `field`, and
/// nothing is stored.
async fn refused(change: impl FnOnce(&mut CampaignSpec, i64), field: &str) {
    let cluster = start().await;
    let mut api = cluster.campaigns().await;
    let mut spec = demo_campaign("bad", Vec::new(), None);
    change(&mut spec, cluster.now_unix_ms());
    let status = campaigns::create(&mut api, API_KEY, spec)
        .await
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains(field),
        "{:?} does not name {field}",
        status.message()
    );
    let listed = api
        .list_campaigns(authed(ListCampaignsRequest::default(), API_KEY))
        .await
        .expect("list")
        .into_inner();
    assert!(listed.campaigns.is_empty(), "nothing stored: {listed:?}");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_audience_is_refused() {
    refused(
        |spec, _| spec.audience = Some(Audience::default()),
        "spec.audience",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_segment_field_is_refused() {
    refused(
        |spec, _| {
            spec.audience = Some(Audience {
                list: false,
                segment: vec![SegmentCondition {
                    field: "shoe_size".into(),
                    op: ConditionOp::Equals as i32,
                    values: vec!["9".into()],
                }],
            })
        },
        "spec.audience.segment[0].field",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pace_of_zero_is_refused() {
    refused(
        |spec, _| {
            spec.pace = Some(Pace {
                per_second: 0,
                spread_over_s: 0,
            })
        },
        "spec.pace.per_second",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_pace_is_refused() {
    refused(
        |spec, _| {
            spec.pace = Some(Pace {
                per_second: 50_000_000,
                spread_over_s: 0,
            })
        },
        "spec.pace.per_second",
    )
    .await;
    refused(
        |spec, _| {
            spec.pace = Some(Pace {
                per_second: 0,
                spread_over_s: 5,
            })
        },
        "spec.pace.spread_over_s",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_in_the_past_is_refused() {
    refused(
        |spec, now| {
            spec.schedule = Some(Schedule {
                start_at_unix_ms: now - 86_400_000,
                ..Default::default()
            })
        },
        "spec.schedule.start_at_unix_ms",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_time_zone_is_refused() {
    refused(
        |spec, _| {
            spec.schedule = Some(Schedule {
                default_time_zone: "Mars/Olympus_Mons".into(),
                ..Default::default()
            })
        },
        "spec.schedule.default_time_zone",
    )
    .await;
    refused(
        |spec, _| {
            spec.audience = Some(Audience {
                list: true,
                segment: vec![SegmentCondition {
                    field: "time_zone".into(),
                    op: ConditionOp::In as i32,
                    values: vec!["Europe/Berlin".into(), "Atlantis/Capital".into()],
                }],
            })
        },
        "spec.audience.segment[0].values[1]",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variant_weights_that_do_not_sum_are_refused() {
    refused(
        |spec, _| {
            spec.variants = vec![
                Variant {
                    name: "a".into(),
                    weight: 60,
                    content: None,
                },
                Variant {
                    name: "b".into(),
                    weight: 30,
                    content: None,
                },
            ]
        },
        "spec.variants",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holdout_of_100_percent_is_refused() {
    refused(
        |spec, _| spec.holdout_percent = 100.0,
        "spec.holdout_percent",
    )
    .await;
}

/// A list campaign without members cannot start; once cancelled nothing more is allowed
/// (FAILED_PRECONDITION naming `campaign_id`), nor is anything added to its list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_on_a_cancelled_campaign_fail_their_precondition() {
    let cluster = start().await;
    let mut api = cluster.campaigns().await;
    let created = campaigns::create(&mut api, API_KEY, demo_campaign("valid", Vec::new(), None))
        .await
        .expect("create");
    let id = created.campaign_id;
    let status = campaigns::command(&mut api, API_KEY, &id, "start")
        .await
        .expect_err("an empty list");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("audience"), "{status:?}");
    let status = campaigns::upload(&mut api, API_KEY, &id, vec!["ok".into(), String::new()])
        .await
        .expect_err("an empty id");
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("chunks[0].recipient_ids[1]"),
        "{status:?}"
    );
    campaigns::command(&mut api, API_KEY, &id, "cancel")
        .await
        .expect("cancel");
    for verb in ["start", "pause", "resume", "cancel"] {
        let status = campaigns::command(&mut api, API_KEY, &id, verb)
            .await
            .expect_err(verb);
        assert_eq!(
            status.code(),
            tonic::Code::FailedPrecondition,
            "{verb} on a cancelled campaign: {status:?}"
        );
        assert!(status.message().contains("campaign_id"), "{status:?}");
    }
    let status = campaigns::upload(&mut api, API_KEY, &id, vec!["r1".into()])
        .await
        .expect_err("upload to a cancelled campaign");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    let status = campaigns::get(&mut api, API_KEY, "no-such-campaign")
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    cluster.shutdown().await;
}

/// "At 10:00 in each recipient's own time, only between 09:00 and 12:00": five zones from
/// UTC-8 to UTC+9, the clock moved half an hour at a time. Everyone is submitted in the half
/// hour their 10:00 falls in, and every message is sent inside its recipient's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_time_reaches_each_zone_inside_its_own_window() {
    let cluster = start().await;
    cluster.top_up(1_000_000_000).await;
    let zones = [
        "America/Los_Angeles",
        "America/New_York",
        "Europe/London",
        "Asia/Kolkata",
        "Asia/Tokyo",
    ];
    let recipients: Vec<_> = (0..25)
        .map(|i| {
            let mut recipient = demo_recipient(format!("r{i}"), i);
            recipient.time_zone = zones[i % zones.len()].into();
            recipient
        })
        .collect();
    upsert(&cluster, recipients.clone()).await;
    let mut spec = demo_campaign("local", Vec::new(), None);
    spec.schedule = Some(Schedule {
        local_time: "10:00".into(),
        windows: vec![SendWindow {
            start: "09:00".into(),
            end: "12:00".into(),
        }],
        ..Default::default()
    });
    let mut api = cluster.campaigns().await;
    let id = campaigns::create(&mut api, API_KEY, spec)
        .await
        .expect("create")
        .campaign_id;
    campaigns::upload(&mut api, API_KEY, &id, ids(25))
        .await
        .expect("upload");
    let started = cluster.now_unix_ms();
    campaigns::command(&mut api, API_KEY, &id, "start")
        .await
        .expect("start");
    // When each member is due: their next 10:00, from the start.
    let due: Vec<i64> = recipients
        .iter()
        .map(|r| {
            let zone: Tz = r.time_zone.parse().expect("zone");
            let start = DateTime::<Utc>::from_timestamp_millis(started).expect("time");
            let local = start.with_timezone(&zone);
            let today = local
                .date_naive()
                .and_hms_opt(10, 0, 0)
                .expect("10:00")
                .and_local_timezone(zone)
                .single()
                .expect("no DST change in January");
            let at = if today.with_timezone(&Utc) >= start {
                today
            } else {
                today + chrono::TimeDelta::days(1)
            };
            at.timestamp_millis()
        })
        .collect();
    // 52 half hours: 26 hours, past London's next 10:00 (22 hours after the start).
    for _ in 0..52 {
        cluster.advance(Duration::from_secs(1_800));
        let now = cluster.now_unix_ms();
        let expected = due.iter().filter(|d| **d <= now).count() as u64;
        // Each submitted message must also have been sent (or failed) before the clock moves
        // on: its events are dated by the clock when they happen.
        let view = wait_view(&mut api, &id, &format!("{expected} due by now"), |view| {
            let funnel = view.funnel.clone().unwrap_or_default();
            funnel.submitted + funnel.suppressed == expected
                && funnel.sent + funnel.failed >= funnel.submitted
        })
        .await;
        assert!(identity_holds(&view.funnel.unwrap_or_default()));
    }
    wait_view(&mut api, &id, "completed", |view| {
        view.state() == CampaignState::Completed
    })
    .await;
    let audit = audit_by_outcomes(
        &*cluster.store,
        TENANT,
        &id,
        cluster.node.ownership().partition_count(),
    )
    .await;
    check_members(&audit, &ids(25));
    for recipient in &recipients {
        let zone: Tz = recipient.time_zone.parse().expect("zone");
        let message = &audit.messages[&recipient.id][0];
        // When it was handed over and sent; receipts come when the person's device says.
        let sending = [
            EventKind::EventAccepted,
            EventKind::EventAttempted,
            EventKind::EventSent,
        ];
        for event in message
            .events
            .iter()
            .filter(|e| sending.contains(&e.kind()))
        {
            let local = DateTime::<Utc>::from_timestamp_millis(event.at_unix_ms)
                .expect("time")
                .with_timezone(&zone);
            let minutes = local.hour() * 60 + local.minute();
            assert!(
                (10 * 60..12 * 60).contains(&minutes),
                "{}: {:?} at {local} in {}",
                recipient.id,
                event.kind(),
                zone.name()
            );
        }
    }
    cluster.shutdown().await;
}

/// A budget smaller than the campaign: it pauses with `credits_exhausted` at an exact member
/// (the balance never below zero), a top-up and a resume finish it, and the ledger equals the
/// attempts' prices in the event logs to the micro-unit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credits_run_out_then_a_top_up_finishes_the_campaign() {
    let cluster = start().await;
    let n = 400;
    upsert(
        &cluster,
        (0..n).map(|i| demo_recipient(format!("r{i}"), i)).collect(),
    )
    .await;
    // The worst case of a member is every step (0.001 + 0.002 + 0.01 = 0.013): 0.5 units
    // hold about 38 members at once; it runs out long before 400.
    cluster.top_up(500_000).await;
    let mut api = cluster.campaigns().await;
    let id = campaigns::create(&mut api, API_KEY, demo_campaign("budget", Vec::new(), None))
        .await
        .expect("create")
        .campaign_id;
    campaigns::upload(&mut api, API_KEY, &id, ids(n))
        .await
        .expect("upload");
    campaigns::command(&mut api, API_KEY, &id, "start")
        .await
        .expect("start");
    let paused = wait_view(&mut api, &id, "paused for credits", |view| {
        view.state() == CampaignState::Paused
    })
    .await;
    assert_eq!(paused.state_reason, "credits_exhausted");
    let credits = |cluster: &InProcess| {
        let store = cluster.store.clone();
        async move {
            let fields = store
                .fields(&herald_store::keys::campaign::credits(
                    &herald_proto::TenantId(TENANT.into()),
                ))
                .await
                .expect("credits");
            fields
                .iter()
                .find(|(f, _)| f == "available")
                .map_or(0, |(_, v)| herald_store::campaign::int(Some(v)))
        }
    };
    assert!(
        credits(&cluster).await >= 0,
        "the balance never goes negative"
    );
    let funnel = paused.funnel.clone().unwrap_or_default();
    assert!(funnel.remaining > 0, "stopped early: {funnel:?}");
    assert!(identity_holds(&funnel));
    // Nobody skipped: whoever was processed has an outcome, the rest none yet.
    let before = audit_by_outcomes(
        &*cluster.store,
        TENANT,
        &id,
        cluster.node.ownership().partition_count(),
    )
    .await;
    assert_eq!(
        before.outcomes.len() as u64,
        funnel.planned - funnel.remaining,
        "every processed member has its outcome"
    );
    cluster.top_up(100_000_000).await;
    campaigns::command(&mut api, API_KEY, &id, "resume")
        .await
        .expect("resume");
    let done = wait_view(&mut api, &id, "completed, messages settled", |view| {
        view.state() == CampaignState::Completed && view.credits.is_some_and(|c| c.held_micros == 0)
    })
    .await;
    let audit = audit_by_outcomes(
        &*cluster.store,
        TENANT,
        &id,
        cluster.node.ownership().partition_count(),
    )
    .await;
    check_members(&audit, &ids(n));
    check_ledger(&audit, &id);
    let spent = done.credits.unwrap_or_default().spent_micros;
    assert!(spent > 500_000, "spent more than the first budget: {spent}");
    assert!(credits(&cluster).await >= 0);
    cluster.shutdown().await;
}

/// Past its end-by time nobody more is messaged: the rest is counted `expired`, per member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_expires_after_end_by() {
    let cluster = start().await;
    cluster.top_up(1_000_000_000).await;
    upsert(
        &cluster,
        (0..20)
            .map(|i| {
                let mut recipient = demo_recipient(format!("r{i}"), i);
                // Half of them in a zone whose 10:00 is after the end.
                recipient.time_zone = if i % 2 == 0 {
                    "Europe/London".into()
                } else {
                    "Asia/Tokyo".into()
                };
                recipient
            })
            .collect(),
    )
    .await;
    let mut spec = demo_campaign("ends", Vec::new(), None);
    // The clock starts at 12:00 UTC: London's next 10:00 is in 22 h, Tokyo's in 13 h.
    spec.schedule = Some(Schedule {
        local_time: "10:00".into(),
        ..Default::default()
    });
    spec.end_by_unix_ms = cluster.now_unix_ms() + 16 * 3_600_000;
    let mut api = cluster.campaigns().await;
    let id = campaigns::create(&mut api, API_KEY, spec)
        .await
        .expect("create")
        .campaign_id;
    campaigns::upload(&mut api, API_KEY, &id, ids(20))
        .await
        .expect("upload");
    campaigns::command(&mut api, API_KEY, &id, "start")
        .await
        .expect("start");
    cluster.advance(Duration::from_secs(14 * 3_600));
    wait_view(&mut api, &id, "Tokyo sent", |view| {
        view.funnel.clone().unwrap_or_default().submitted == 10
    })
    .await;
    cluster.advance(Duration::from_secs(3 * 3_600));
    let view = wait_view(&mut api, &id, "the rest expired", |view| {
        view.state() == CampaignState::Completed
    })
    .await;
    let funnel = view.funnel.unwrap_or_default();
    assert_eq!((funnel.submitted, funnel.expired), (10, 10), "{funnel:?}");
    assert_eq!(view.state_reason, "end_by");
    let audit = audit_by_outcomes(
        &*cluster.store,
        TENANT,
        &id,
        cluster.node.ownership().partition_count(),
    )
    .await;
    check_members(&audit, &ids(20));
    for i in (0..20).step_by(2) {
        assert_eq!(audit.outcomes[&format!("r{i}")], Outcome::Expired);
    }
    cluster.shutdown().await;
}

/// A holdout gets nothing but is counted; conversions reported by campaign and recipient are
/// counted once per member, for its variant or for the holdout, and give each variant's lift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holdout_gives_each_variant_its_lift() {
    let cluster = start().await;
    cluster.top_up(1_000_000_000).await;
    let n = 300;
    upsert(
        &cluster,
        (0..n).map(|i| demo_recipient(format!("r{i}"), i)).collect(),
    )
    .await;
    let mut spec = demo_campaign("lift", Vec::new(), None);
    spec.holdout_percent = 20.0;
    spec.variants = vec![
        Variant {
            name: "a".into(),
            weight: 50,
            content: None,
        },
        Variant {
            name: "b".into(),
            weight: 50,
            content: None,
        },
    ];
    let mut api = cluster.campaigns().await;
    let id = campaigns::create(&mut api, API_KEY, spec)
        .await
        .expect("create")
        .campaign_id;
    campaigns::upload(&mut api, API_KEY, &id, ids(n))
        .await
        .expect("upload");
    campaigns::command(&mut api, API_KEY, &id, "start")
        .await
        .expect("start");
    wait_view(&mut api, &id, "completed", |view| {
        view.state() == CampaignState::Completed
    })
    .await;
    let audit = audit_by_outcomes(
        &*cluster.store,
        TENANT,
        &id,
        cluster.node.ownership().partition_count(),
    )
    .await;
    // Half of every group converts, each reported twice (the second is a duplicate).
    let mut expected: std::collections::HashMap<String, u64> = Default::default();
    let mut reports = Vec::new();
    for (index, (recipient, outcome)) in audit.outcomes.iter().enumerate() {
        if index % 2 == 1 {
            continue;
        }
        let group = match outcome {
            Outcome::Submitted { variant, .. } => variant.clone(),
            Outcome::HeldOut { .. } => "holdout".into(),
            _ => continue,
        };
        *expected.entry(group).or_default() += 1;
        reports.push(EngagementReport {
            kind: EngagementKind::EngagementConverted as i32,
            campaign_id: id.clone(),
            recipient_id: recipient.clone(),
            ..Default::default()
        });
    }
    let mut engagement: EngagementClient<Channel> = cluster.engagement().await;
    for round in 0..2 {
        let answer = engagement
            .report(authed(
                ReportRequest {
                    reports: reports.clone(),
                },
                API_KEY,
            ))
            .await
            .expect("report")
            .into_inner();
        for (report, result) in reports.iter().zip(&answer.results) {
            let held_out = matches!(
                audit.outcomes.get(&report.recipient_id),
                Some(Outcome::HeldOut { .. })
            );
            // A held-out member's conversion is counted once (the second is a duplicate);
            // a messaged member's is recorded on its message each time, like any conversion
            // report, and counted once in the funnel.
            let wanted = if round == 1 && held_out {
                ReportStatus::ReportDuplicate
            } else {
                ReportStatus::ReportApplied
            };
            assert_eq!(
                result.status(),
                wanted,
                "round {round}: {report:?} → {result:?}"
            );
        }
    }
    let view = wait_view(&mut api, &id, "conversions counted", |view| {
        view.variants.iter().map(|v| v.converted).sum::<u64>() == reports.len() as u64
    })
    .await;
    for variant in &view.variants {
        assert_eq!(
            variant.converted,
            expected.get(&variant.variant).copied().unwrap_or(0),
            "{variant:?}"
        );
        assert!(variant.members > 0, "{variant:?}");
    }
    let holdout = view
        .variants
        .iter()
        .find(|v| v.variant == "holdout")
        .expect("a holdout row");
    let funnel = view.funnel.unwrap_or_default();
    assert_eq!(holdout.members, funnel.held_out);
    assert!(
        (funnel.held_out as f64 / n as f64 - 0.2).abs() < 0.08,
        "{funnel:?}"
    );
    for variant in view.variants.iter().filter(|v| v.variant != "holdout") {
        let expected_lift =
            (variant.conversion_rate - holdout.conversion_rate) / holdout.conversion_rate;
        assert!((variant.lift - expected_lift).abs() < 1e-9, "{variant:?}");
    }
    cluster.shutdown().await;
}
