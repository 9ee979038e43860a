//! Campaigns on a real cluster: Redis, two control replicas and three nodes as processes.
//!
//! The headline test runs a paced campaign over 100,000 recipients (`HERALD_CAMPAIGN_RECIPIENTS`
//! and `HERALD_CAMPAIGN_PACE` change the size and the pace), kills a node and then the leading
//! control replica while it runs, and checks from the store's own records — every message log
//! scanned, not looked up — that every member got exactly one message of the campaign or one
//! counted non-send, that the funnel identity held at every sampled moment, that the pace held
//! within ±5% in every full 10 s window, and that the credit ledger equals the attempts' prices
//! in the event logs to the micro-unit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald::demo::{demo_campaign, demo_recipient};
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{CampaignState, CampaignView, TopUpCreditsRequest, UpsertRecipientsRequest};
use herald_store::redis::{RedisOptions, RedisStore};
use herald_testkit::campaigns::{self, accepted_per_window, identity_holds};
use herald_testkit::cluster::{
    API_KEY, Cluster, ClusterOptions, NodeSpec, TENANT, authed, channel,
};
use herald_testkit::eventually::eventually;
use parking_lot::Mutex;

#[path = "common/campaign_checks.rs"]
mod checks;
use checks::{check_ledger, check_members};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Creates recipients `r0..r{n}` (every channel opted in), 1,000 per call, a few calls at once.
async fn create_recipients(cluster: &Cluster, n: usize) {
    let mut clients = Vec::new();
    for address in &cluster.node_addrs {
        clients.push(RecipientsClient::new(channel(address).await));
    }
    let calls = (0..n).step_by(1_000).enumerate().map(|(call, start)| {
        let mut client = clients[call % clients.len()].clone();
        async move {
            let recipients = (start..(start + 1_000).min(n))
                .map(|i| demo_recipient(format!("r{i}"), i))
                .collect();
            client
                .upsert_recipients(authed(UpsertRecipientsRequest { recipients }, API_KEY))
                .await
                .expect("upsert recipients");
        }
    });
    futures::StreamExt::collect::<Vec<_>>(futures::StreamExt::buffer_unordered(
        futures::stream::iter(calls),
        4,
    ))
    .await;
}

async fn top_up(cluster: &Cluster, units: u64) {
    cluster
        .leader_client()
        .await
        .top_up_credits(TopUpCreditsRequest {
            tenant: TENANT.into(),
            amount_micros: units * 1_000_000,
            note: "test".into(),
        })
        .await
        .expect("top up");
}

fn processed(view: &CampaignView) -> u64 {
    let funnel = view.funnel.clone().unwrap_or_default();
    funnel.planned.saturating_sub(funnel.remaining)
}

/// The headline: a paced campaign through a node's and then the leader's death.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_campaign_outlives_a_node_and_the_leader() {
    let n = env_or("HERALD_CAMPAIGN_RECIPIENTS", 100_000);
    let pace = env_or("HERALD_CAMPAIGN_PACE", 2_000) as u32;
    let mut cluster = Cluster::start_with(ClusterOptions {
        nodes: 3,
        controls: 2,
        spec: NodeSpec {
            // Receipts in the provider's answer: the test is about the campaign, not waits.
            sandbox: "receipt_delay_ms = 0".into(),
            ..NodeSpec::default()
        },
        ..ClusterOptions::default()
    })
    .await;
    let started = Instant::now();
    // The audience: n people, and 50 ids nobody has (each counted suppressed).
    let real = n - 50;
    create_recipients(&cluster, real).await;
    eprintln!("{real} recipients in {:?}", started.elapsed());
    top_up(&cluster, 10 * n as u64).await;
    let mut api = campaigns::client(channel(&cluster.node_addrs[0]).await);
    let mut spec = demo_campaign(
        "outlives",
        herald_node::validate::default_waterfall(),
        Some(pace),
    );
    spec.holdout_percent = 5.0;
    let created = campaigns::create(&mut api, API_KEY, spec)
        .await
        .expect("create");
    let id = created.campaign_id.clone();
    let audience: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    let (received, added) = campaigns::upload(&mut api, API_KEY, &id, audience.clone())
        .await
        .expect("upload");
    assert_eq!((received, added), (n as u64, n as u64));
    campaigns::command(&mut api, API_KEY, &id, "start")
        .await
        .expect("start");

    // The funnel identity, sampled every 200 ms until the end.
    let done = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::<CampaignView>::new()));
    let sampler = {
        let done = done.clone();
        let samples = samples.clone();
        let mut api = api.clone();
        let id = id.clone();
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok(view) = campaigns::get(&mut api, API_KEY, &id).await {
                    samples.lock().push(view);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let run_limit = Duration::from_secs(60 + 3 * (n as u64) / u64::from(pace));
    let reach = |share: f64| {
        let api = api.clone();
        let id = id.clone();
        async move {
            eventually(
                &format!("{share} of the campaign processed"),
                run_limit,
                || {
                    let mut api = api.clone();
                    let id = id.clone();
                    async move {
                        let view = campaigns::get(&mut api, API_KEY, &id).await.ok()?;
                        (processed(&view) as f64 >= share * n as f64).then_some(())
                    }
                },
            )
            .await
        }
    };
    reach(0.3).await;
    cluster.nodes[2].kill();
    eprintln!("node-2 killed at {:?}", started.elapsed());
    reach(0.6).await;
    let leader = cluster.kill_leader().await;
    eprintln!(
        "control replica {leader} (the leader) killed at {:?}",
        started.elapsed()
    );
    let view = eventually("the campaign completed", run_limit, || {
        let mut api = api.clone();
        let id = id.clone();
        async move {
            let view = campaigns::get(&mut api, API_KEY, &id).await.ok()?;
            (view.state() == CampaignState::Completed).then_some(view)
        }
    })
    .await;
    // Credits settle as messages end; wait for every message to let go of its hold.
    let view = eventually("every message ended", Duration::from_secs(120), || {
        let mut api = api.clone();
        let id = id.clone();
        async move {
            let view = campaigns::get(&mut api, API_KEY, &id).await.ok()?;
            let credits = view.credits.unwrap_or_default();
            (credits.held_micros == 0).then_some(view)
        }
    })
    .await
    .max_by_state(view);
    done.store(true, Ordering::Relaxed);
    let _ = sampler.await;

    let samples = samples.lock().clone();
    assert!(
        samples.len() > 10,
        "sampled the funnel {} times",
        samples.len()
    );
    for sample in &samples {
        let funnel = sample.funnel.clone().unwrap_or_default();
        assert!(
            identity_holds(&funnel),
            "funnel identity broken: {funnel:?}"
        );
    }
    let funnel = view.funnel.clone().unwrap_or_default();
    assert_eq!(funnel.planned, n as u64, "{funnel:?}");
    assert_eq!(funnel.remaining, 0, "{funnel:?}");

    let store = RedisStore::connect(&cluster.redis.url(), RedisOptions::default())
        .await
        .expect("store");
    let audit = campaigns::audit(
        &store,
        &cluster.redis.url(),
        TENANT,
        &id,
        cluster.partition_count,
    )
    .await;
    let counts = check_members(&audit, &audience);
    eprintln!("per recipient: {counts:?}; funnel {funnel:?}");
    assert_eq!(
        counts.get("suppressed").copied().unwrap_or(0),
        50,
        "the unknown ids"
    );
    assert_eq!(
        counts.get("held_out").copied().unwrap_or(0),
        funnel.held_out
    );
    assert_eq!(
        counts.get("submitted").copied().unwrap_or(0),
        funnel.submitted + funnel.suppressed - 50,
        "submitted members: messages (some may end suppressed by policy)"
    );
    check_ledger(&audit, &id);

    // The pace: every full 10 s window within ±5% of 10 s at the pace.
    let windows = accepted_per_window(&audit, 10_000);
    eprintln!("accepted per 10 s window: {windows:?}");
    let target = f64::from(pace) * 10.0;
    for (index, count) in windows.iter().enumerate() {
        let off = (*count as f64 - target) / target;
        assert!(
            off.abs() <= 0.05,
            "window {index}: {count} accepted, {:.1}% off {target}",
            off * 100.0
        );
    }
}

trait Latest {
    fn max_by_state(self, other: CampaignView) -> CampaignView;
}

impl Latest for CampaignView {
    /// The later of two views of the same campaign (the one that processed more).
    fn max_by_state(self, other: CampaignView) -> CampaignView {
        if processed(&other) > processed(&self) {
            other
        } else {
            self
        }
    }
}

/// The campaign's view from node `index`, when it answers.
async fn view_of(
    api: &mut herald_proto::v1::campaigns_client::CampaignsClient<tonic::transport::Channel>,
    id: &str,
) -> Option<CampaignView> {
    campaigns::get(api, API_KEY, id).await.ok()
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A fourth node joins mid-campaign (slices move with their partitions); a pause stops every
/// submission before the call returns and a resume goes on from the checkpoints; nobody is
/// messaged twice. A cancelled campaign submits nothing more and counts the rest cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_a_pause_holds_and_a_cancel_ends() {
    let n = env_or("HERALD_CAMPAIGN_JOIN_RECIPIENTS", 20_000);
    let pace = 1_000;
    let spec = NodeSpec {
        sandbox: "receipt_delay_ms = 0".into(),
        ..NodeSpec::default()
    };
    let mut cluster = Cluster::start_with(ClusterOptions {
        nodes: 3,
        spec: spec.clone(),
        ..ClusterOptions::default()
    })
    .await;
    create_recipients(&cluster, n).await;
    top_up(&cluster, 10 * n as u64).await;
    let mut api = campaigns::client(channel(&cluster.node_addrs[0]).await);
    let created = campaigns::create(
        &mut api,
        API_KEY,
        demo_campaign(
            "joins",
            herald_node::validate::default_waterfall(),
            Some(pace),
        ),
    )
    .await
    .expect("create");
    let id = created.campaign_id.clone();
    let audience: Vec<String> = (0..n).map(|i| format!("r{i}")).collect();
    campaigns::upload(&mut api, API_KEY, &id, audience.clone())
        .await
        .expect("upload");
    campaigns::command(&mut api, API_KEY, &id, "start")
        .await
        .expect("start");
    let limit = Duration::from_secs(60 + 3 * (n as u64) / u64::from(pace));
    let reach = |share: f64| {
        let api = api.clone();
        let id = id.clone();
        async move {
            eventually(&format!("{share} processed"), limit, || {
                let mut api = api.clone();
                let id = id.clone();
                async move {
                    let view = view_of(&mut api, &id).await?;
                    (processed(&view) as f64 >= share * n as f64).then_some(())
                }
            })
            .await
        }
    };
    reach(0.25).await;
    cluster.add_node(&spec);
    cluster.wait_ready(4, Duration::from_secs(60)).await;
    eprintln!("a fourth node serves its partitions");
    reach(0.5).await;
    campaigns::command(&mut api, API_KEY, &id, "pause")
        .await
        .expect("pause");
    let returned = now_ms();
    // Nothing of the campaign moves after the pause returned, on any node.
    let seen = herald_testkit::eventually::observe_for(
        Duration::from_secs(2),
        Duration::from_millis(200),
        || {
            let mut api = api.clone();
            let id = id.clone();
            async move { view_of(&mut api, &id).await.map(|v| processed(&v)) }
        },
    )
    .await;
    assert!(
        seen.iter().all(|p| *p == seen[0]),
        "still submitting after the pause: {seen:?}"
    );
    let store = RedisStore::connect(&cluster.redis.url(), RedisOptions::default())
        .await
        .expect("store");
    let audit = campaigns::audit(
        &store,
        &cluster.redis.url(),
        TENANT,
        &id,
        cluster.partition_count,
    )
    .await;
    let late = audit
        .messages
        .values()
        .flatten()
        .filter(|m| m.accepted_at().is_some_and(|at| at > returned))
        .count();
    assert_eq!(late, 0, "messages submitted after the pause returned");
    campaigns::command(&mut api, API_KEY, &id, "resume")
        .await
        .expect("resume");
    eventually("completed after the resume", limit, || {
        let mut api = api.clone();
        let id = id.clone();
        async move {
            let view = view_of(&mut api, &id).await?;
            (view.state() == CampaignState::Completed).then_some(())
        }
    })
    .await;
    let audit = campaigns::audit(
        &store,
        &cluster.redis.url(),
        TENANT,
        &id,
        cluster.partition_count,
    )
    .await;
    let counts = check_members(&audit, &audience);
    eprintln!("per recipient: {counts:?}");
    let on_the_new_node = audit
        .messages
        .values()
        .flatten()
        .filter(|m| m.events.first().is_some_and(|e| e.node_id == "node-3"))
        .count();
    assert!(
        on_the_new_node > 0,
        "the fourth node ran slices it took over"
    );

    // Cancel: nothing more after the call, the rest counted cancelled.
    let second = campaigns::create(
        &mut api,
        API_KEY,
        demo_campaign("cancelled", Vec::new(), Some(pace)),
    )
    .await
    .expect("create")
    .campaign_id;
    campaigns::upload(&mut api, API_KEY, &second, audience.clone())
        .await
        .expect("upload");
    campaigns::command(&mut api, API_KEY, &second, "start")
        .await
        .expect("start");
    let api2 = api.clone();
    let second2 = second.clone();
    eventually("some of it processed", limit, || {
        let mut api = api2.clone();
        let id = second2.clone();
        async move {
            let view = view_of(&mut api, &id).await?;
            (processed(&view) >= 2_000).then_some(())
        }
    })
    .await;
    let cancelled = campaigns::command(&mut api, API_KEY, &second, "cancel")
        .await
        .expect("cancel");
    let returned = now_ms();
    assert_eq!(cancelled.state(), CampaignState::Cancelled);
    let seen = herald_testkit::eventually::observe_for(
        Duration::from_secs(2),
        Duration::from_millis(200),
        || {
            let mut api = api.clone();
            let id = second.clone();
            async move { view_of(&mut api, &id).await.and_then(|v| v.funnel) }
        },
    )
    .await;
    let last = seen.last().cloned().flatten().expect("a funnel");
    // Messages already submitted go on (sent, delivered, a policy's suppression move between
    // the stages), but nobody more is processed: what was handed over stays what it was.
    let handed = |f: &herald_proto::v1::CampaignFunnel| {
        (
            f.planned,
            f.remaining,
            f.cancelled,
            f.held_out,
            f.submitted + f.suppressed,
        )
    };
    assert!(
        seen.iter().flatten().all(|f| handed(f) == handed(&last)),
        "moving after the cancel: {seen:?}"
    );
    assert!(identity_holds(&last), "{last:?}");
    assert_eq!(last.remaining, 0, "{last:?}");
    assert!(last.cancelled > 0, "{last:?}");
    let audit = campaigns::audit(
        &store,
        &cluster.redis.url(),
        TENANT,
        &second,
        cluster.partition_count,
    )
    .await;
    let late = audit
        .messages
        .values()
        .flatten()
        .filter(|m| m.accepted_at().is_some_and(|at| at > returned))
        .count();
    assert_eq!(late, 0, "messages submitted after the cancel returned");
    assert_eq!(
        audit.outcomes.len() as u64 + last.cancelled,
        n as u64,
        "every member processed or cancelled"
    );
}
