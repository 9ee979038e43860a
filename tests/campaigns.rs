//! Campaigns on a real cluster: Redis, two control replicas and three nodes as processes.
//!
//! The headline test runs a paced campaign over 100,000 recipients (`HERALD_CAMPAIGN_RECIPIENTS`
//! and `HERALD_CAMPAIGN_PACE` change the size and the pace), kills a node and then the leading
//! control replica while it runs, and checks from the store's own records — every message log
//! scanned, not looked up — that every member got exactly one message of the campaign or one
//! counted non-send, that the funnel identity held at every sampled moment, that the pace held
//! within ±5% in every full 10 s window, and that the credit ledger equals the attempts' prices
//! in the event logs to the micro-unit.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use herald::demo::{demo_campaign, demo_recipient};
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    CampaignState, CampaignView, EventKind, LedgerKind, TopUpCreditsRequest,
    UpsertRecipientsRequest,
};
use herald_store::campaign::Outcome;
use herald_store::redis::{RedisOptions, RedisStore};
use herald_testkit::campaigns::{self, Audit, accepted_per_window, identity_holds};
use herald_testkit::cluster::{
    API_KEY, Cluster, ClusterOptions, NodeSpec, TENANT, authed, channel,
};
use herald_testkit::eventually::eventually;
use parking_lot::Mutex;

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

/// Every member: exactly one message of the campaign (the one its outcome names), or a counted
/// non-send with no message; nobody else got one. Returns the counts by outcome.
fn check_members(audit: &Audit, audience: &[String]) -> HashMap<&'static str, u64> {
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    for id in audience {
        let messages = audit.messages.get(id).map_or(&[][..], |m| m.as_slice());
        match audit.outcomes.get(id) {
            Some(Outcome::Submitted { message_id, .. }) => {
                assert_eq!(
                    messages.len(),
                    1,
                    "{id}: {} messages of the campaign in the store",
                    messages.len()
                );
                assert_eq!(
                    &messages[0].message_id, message_id,
                    "{id}: its outcome's message"
                );
                assert!(messages[0].accepted_at().is_some(), "{id}: accepted");
                *counts.entry("submitted").or_default() += 1;
            }
            Some(other) => {
                assert!(messages.is_empty(), "{id}: {other:?} but messaged");
                let name = match other {
                    Outcome::HeldOut { .. } => "held_out",
                    Outcome::Suppressed { .. } => "suppressed",
                    Outcome::Expired => "expired",
                    Outcome::Submitted { .. } => "submitted",
                };
                *counts.entry(name).or_default() += 1;
            }
            None => panic!("{id}: no outcome (missing from the campaign)"),
        }
    }
    let outside = audit
        .messages
        .keys()
        .filter(|id| !audience.contains(id))
        .count();
    assert_eq!(
        outside, 0,
        "messages of the campaign to people outside its audience"
    );
    counts
}

/// The ledger's settles net of refunds equal the prices of the attempts in the event logs: each
/// attempt's intent carries its price once (a re-send of the same attempt is not charged
/// again), a refused attempt's `failed` event carries it back, and every attempt that was not
/// refused was billed by its `sent` event at the same price.
fn check_ledger(audit: &Audit, campaign_id: &str) {
    let mut settled = 0u64;
    let mut refunded = 0u64;
    for entry in audit.ledger.iter().filter(|e| e.campaign_id == campaign_id) {
        match entry.kind() {
            LedgerKind::LedgerSettle => settled += entry.amount_micros,
            LedgerKind::LedgerRefund => refunded += entry.amount_micros,
            _ => {}
        }
    }
    let mut intents = 0u64;
    let mut refunds = 0u64;
    let mut sent = 0u64;
    for message in audit.messages.values().flatten() {
        let mut charged = std::collections::HashSet::new();
        let mut refused = std::collections::HashSet::new();
        let mut sent_attempts = std::collections::HashSet::new();
        for event in &message.events {
            match event.kind() {
                EventKind::EventAttempted if charged.insert(event.attempt_id.clone()) => {
                    intents += event.cost_micros;
                }
                EventKind::EventFailed
                    if event.cost_micros > 0 && refused.insert(event.attempt_id.clone()) =>
                {
                    refunds += event.cost_micros;
                }
                EventKind::EventSent if sent_attempts.insert(event.attempt_id.clone()) => {
                    sent += event.cost_micros;
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        settled, intents,
        "ledger settles = attempts' prices in the logs"
    );
    assert_eq!(
        refunded, refunds,
        "ledger refunds = refused attempts' prices"
    );
    assert_eq!(
        settled - refunded,
        sent,
        "net of refunds, the ledger is what the sent attempts were billed"
    );
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
