//! # bench: `herald bench waterfall`, the waterfall-N workload of shared/bench/WORKLOAD.md
//!
//! Owns starting the local cluster for a run, seeding (not timed), driving the workload and
//! printing one JSON line. Must never print anything but that line on stdout (progress goes to
//! stderr), so runs can be collected with `>> results.jsonl`.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use herald_node::config::SandboxConfig;
use serde_json::json;

use crate::local::{DEMO_API_KEY, LocalCluster, LocalOptions, peak_rss_kib};
use crate::workload::{self, percentile};

pub(crate) async fn bench_waterfall(
    n: usize,
    redis: Option<String>,
    nodes: usize,
    partitions: u32,
    mtls: bool,
) -> Result<()> {
    if n == 0 {
        bail!("--n must be at least 1");
    }
    let store_name = if redis.is_some() { "redis" } else { "embedded" };
    let cluster = LocalCluster::start(LocalOptions {
        nodes,
        redis_url: redis,
        // A fresh prefix per run (a shared Redis may hold earlier runs); short, because Redis
        // hashes and compares whole keys on every lookup.
        key_prefix: Some(format!("hb{:08x}", rand::random::<u32>())),
        sandbox: SandboxConfig::default(),
        partition_count: partitions,
        mtls,
        policy_clock: None,
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let addrs = cluster.node_addrs();
    eprintln!("bench waterfall: seeding {n} recipients (not timed)");
    workload::create_recipients(&addrs, DEMO_API_KEY, "r", n).await?;
    let calls_before = cluster.provider_calls();
    eprintln!("bench waterfall: {n} messages, {nodes} nodes, {store_name} store");
    let report = workload::run_messages(
        &addrs,
        DEMO_API_KEY,
        "r",
        n,
        Duration::from_secs(600),
        true,
        // The instrument reads the nodes' terminal-event feeds in process.
        workload::Observer::InProcess(
            cluster
                .nodes
                .iter()
                .map(|node| node.subscribe_events(true))
                .collect(),
        ),
        None,
        None,
    )
    .await
    .context("running the workload")?;
    let attempts = cluster.provider_calls() - calls_before;
    let elapsed = report.elapsed.as_secs_f64();
    let line = json!({
        "system": "herald",
        "workload": "waterfall",
        "n": n,
        "nodes": nodes,
        "store": store_name,
        "mtls": mtls,
        "total_s": (elapsed * 1000.0).round() / 1000.0,
        "msgs_per_s": (n as f64 / elapsed).round(),
        "attempts": attempts,
        "p50_ms": (percentile(&report.latencies_ms, 0.50) * 10.0).round() / 10.0,
        "p99_ms": (percentile(&report.latencies_ms, 0.99) * 10.0).round() / 10.0,
        "max_ms": (percentile(&report.latencies_ms, 1.0) * 10.0).round() / 10.0,
        "delivered_push": report.funnel.delivered_push,
        "delivered_email": report.funnel.delivered_email,
        "delivered_sms": report.funnel.delivered_sms,
        "failed": report.funnel.failed,
        "peak_rss_mib": peak_rss_kib().map(|k| k / 1024),
    });
    println!("{line}");
    cluster.shutdown().await;
    Ok(())
}

/// `herald bench campaign`: an unpaced campaign through the full path (slices, acceptance,
/// the waterfall, the books) over `recipients` seeded recipients. Prints one JSON line:
/// `msgs_per_s` from the start to the last message's end, `submitted_per_s` to the last
/// member's submission, the funnel, the peak RSS, and the checkpoint lag (members the funnel
/// counted beyond what the slices' checkpoints say, sampled every second: a checkpoint is
/// written in the write that submits, so it should stay 0).
pub(crate) async fn bench_campaign(
    recipients: usize,
    redis: Option<String>,
    nodes: usize,
    partitions: u32,
) -> Result<()> {
    use herald_proto::v1::campaigns_client::CampaignsClient;
    use herald_proto::v1::{CampaignState, CreateCampaignRequest, TopUpCreditsRequest};
    use std::time::Instant;

    if recipients == 0 {
        bail!("--recipients must be at least 1");
    }
    let store_name = if redis.is_some() { "redis" } else { "embedded" };
    let key_prefix = format!("hb{:08x}", rand::random::<u32>());
    let cluster = LocalCluster::start(LocalOptions {
        nodes,
        redis_url: redis.clone(),
        key_prefix: Some(key_prefix.clone()),
        sandbox: SandboxConfig::default(),
        partition_count: partitions,
        mtls: true,
        policy_clock: None,
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let addrs = cluster.node_addrs();
    eprintln!("bench campaign: seeding {recipients} recipients (not timed)");
    workload::create_recipients(&addrs, DEMO_API_KEY, "r", recipients).await?;
    cluster
        .operator_control()
        .await?
        .top_up_credits(TopUpCreditsRequest {
            tenant: crate::local::DEMO_TENANT.into(),
            amount_micros: recipients as u64 * 1_000_000,
            note: "bench".into(),
        })
        .await
        .map_err(crate::status_error)?;
    let address = addrs.first().context("no node")?;
    let mut campaigns = CampaignsClient::new(workload::connect(address).await?);
    let spec = herald::demo::demo_campaign("bench", Vec::new(), None);
    let id = campaigns
        .create_campaign(workload::authed(
            CreateCampaignRequest { spec: Some(spec) },
            DEMO_API_KEY,
        )?)
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .campaign_id;
    let uploading = Instant::now();
    let ids = (0..recipients).map(|i| Ok(format!("r{i}")));
    crate::campaigns::upload_ids(&mut campaigns, DEMO_API_KEY, &id, ids).await?;
    let upload_s = uploading.elapsed().as_secs_f64();
    eprintln!("bench campaign: {recipients} ids uploaded in {upload_s:.1}s; starting");
    // The slices' checkpoints, read beside the funnel (lag = funnel ahead of checkpoints).
    let store = herald_store::open(&herald_store::StoreConfig {
        redis_url: redis,
        key_prefix: Some(key_prefix),
        ..Default::default()
    })
    .await?;
    let tenant = herald_proto::TenantId(crate::local::DEMO_TENANT.into());
    let started = Instant::now();
    crate::campaigns::command_call(&mut campaigns, DEMO_API_KEY, &id, "start").await?;
    let mut checkpoint_lag = 0u64;
    loop {
        let view = crate::campaigns::get(&mut campaigns, DEMO_API_KEY, &id, false).await?;
        let funnel = view.funnel.clone().unwrap_or_default();
        if view.state() == CampaignState::Completed {
            break;
        }
        // Only one store (embedded) or a shared Redis can be read here. The funnel was read
        // before the checkpoints: every member it counts must be in a checkpoint already (they
        // are written together), so any excess is a checkpoint that lagged.
        if store_name == "redis" {
            let slices = store
                .fields(&herald_store::keys::campaign::slices(&tenant, &id))
                .await?;
            let done: u64 = slices
                .iter()
                .filter(|(name, _)| name.starts_with("done:"))
                .map(|(_, v)| u64::try_from(herald_store::campaign::int(Some(v))).unwrap_or(0))
                .sum();
            let processed = funnel.planned.saturating_sub(funnel.remaining);
            checkpoint_lag = checkpoint_lag.max(processed.saturating_sub(done));
        }
        eprintln!(
            "bench campaign: {}/{} processed, {} sent",
            funnel.planned.saturating_sub(funnel.remaining),
            funnel.planned,
            funnel.sent
        );
        if started.elapsed() > Duration::from_secs(3_600) {
            bail!("the campaign did not complete within an hour");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let submit_s = started.elapsed().as_secs_f64();
    // Then every message to its end (the campaign holds no credits for any in flight).
    let view = loop {
        let view = crate::campaigns::get(&mut campaigns, DEMO_API_KEY, &id, false).await?;
        if view.credits.is_some_and(|c| c.held_micros == 0) {
            break view;
        }
        if started.elapsed() > Duration::from_secs(3_600) {
            bail!("the campaign's messages did not end within an hour");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let total_s = started.elapsed().as_secs_f64();
    let funnel = view.funnel.clone().unwrap_or_default();
    let line = json!({
        "system": "herald",
        "workload": "campaign",
        "recipients": recipients,
        "nodes": nodes,
        "store": store_name,
        "upload_s": (upload_s * 1000.0).round() / 1000.0,
        "submit_s": (submit_s * 1000.0).round() / 1000.0,
        "total_s": (total_s * 1000.0).round() / 1000.0,
        "submitted_per_s": (funnel.submitted as f64 / submit_s).round(),
        "msgs_per_s": (funnel.submitted as f64 / total_s).round(),
        "planned": funnel.planned,
        "submitted": funnel.submitted,
        "sent": funnel.sent,
        "delivered": funnel.delivered,
        "checkpoint_lag": if store_name == "redis" { json!(checkpoint_lag) } else { json!(null) },
        "peak_rss_mib": peak_rss_kib().map(|k| k / 1024),
    });
    println!("{line}");
    cluster.shutdown().await;
    Ok(())
}

/// `herald bench journey-waits`: `people` people enter a journey whose first step is a 90-day
/// wait, through the full path on a local cluster with Redis; prints one JSON line with the
/// entry rate, the process's memory before and after (no actor is held for a wait), and the
/// store bytes each waiting person costs (Redis `used_memory`, and `MEMORY USAGE` of one
/// person's state and of the wait sets).
pub(crate) async fn bench_journey_waits(
    people: usize,
    redis: String,
    nodes: usize,
    partitions: u32,
) -> Result<()> {
    use futures::StreamExt;
    use std::time::Instant;

    if people == 0 {
        bail!("--people must be at least 1");
    }
    let key_prefix = format!("hb{:08x}", rand::random::<u32>());
    let cluster = LocalCluster::start(LocalOptions {
        nodes,
        redis_url: Some(redis.clone()),
        key_prefix: Some(key_prefix.clone()),
        sandbox: SandboxConfig::default(),
        partition_count: partitions,
        mtls: true,
        policy_clock: None,
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let mut redis_conn = ::redis::Client::open(redis.as_str())
        .context("--redis")?
        .get_multiplexed_async_connection()
        .await
        .context("connecting to Redis")?;
    let addrs = cluster.node_addrs();
    let mut clients = Vec::new();
    for address in &addrs {
        clients.push(herald_proto::v1::journeys_client::JourneysClient::new(
            workload::connect(address).await?,
        ));
    }
    let spec = herald::demo::demo_wait_journey(90);
    let journey = clients[0]
        .clone()
        .create_journey(workload::authed(
            herald_proto::v1::CreateJourneyRequest { spec: Some(spec) },
            DEMO_API_KEY,
        )?)
        .await
        .map_err(crate::status_error)?
        .into_inner()
        .journey_id;
    let rss_before = current_rss_kib();
    let memory_before = used_memory(&mut redis_conn).await?;
    eprintln!("bench journey-waits: {people} people entering a 90-day wait, {nodes} nodes");
    let started = Instant::now();
    let entered = futures::stream::iter(0..people)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            async move {
                let request = workload::authed(
                    herald_proto::v1::ReportEventRequest {
                        recipient_id: format!("p{i}"),
                        event: "inactive_90d".into(),
                        properties: Default::default(),
                    },
                    DEMO_API_KEY,
                )?;
                for _ in 0..10 {
                    match client.report_event(request_clone(&request)).await {
                        Ok(answer) => {
                            return Ok::<usize, anyhow::Error>(answer.into_inner().entered.len());
                        }
                        Err(status) if status.code() == tonic::Code::Unavailable => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(status) => return Err(crate::status_error(status)),
                    }
                }
                bail!("p{i}: still unavailable")
            }
        })
        .buffer_unordered(256)
        .enumerate()
        .fold(
            Ok::<usize, anyhow::Error>(0),
            |total, (done, entered)| async move {
                if done > 0 && done % 100_000 == 0 {
                    eprintln!("bench journey-waits: {done}/{people}");
                }
                Ok(total? + entered?)
            },
        )
        .await?;
    let enter_s = started.elapsed().as_secs_f64();
    // Idle actors passivate within a second; none is kept for a wait.
    let passivated = Instant::now();
    while cluster
        .nodes
        .iter()
        .map(|n| n.actors_active())
        .sum::<usize>()
        > 0
        && passivated.elapsed() < Duration::from_secs(30)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let actors_active: usize = cluster.nodes.iter().map(|n| n.actors_active()).sum();
    let rss_after = current_rss_kib();
    let memory_after = used_memory(&mut redis_conn).await?;
    let person_key = format!(
        "{key_prefix}:h:{}",
        herald_store::keys::journey::person(
            &herald_proto::TenantId(crate::local::DEMO_TENANT.into()),
            &journey,
            "p1"
        )
    );
    let person_bytes: Option<u64> = ::redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(&person_key)
        .query_async(&mut redis_conn)
        .await?;
    let mut wait_set_bytes = 0u64;
    for partition in 0..partitions {
        let key = format!(
            "{key_prefix}:z:{}",
            herald_store::keys::journey::waits(herald_proto::PartitionId(partition))
        );
        let bytes: Option<u64> = ::redis::cmd("MEMORY")
            .arg("USAGE")
            .arg(&key)
            .query_async(&mut redis_conn)
            .await?;
        wait_set_bytes += bytes.unwrap_or(0);
    }
    let line = json!({
        "system": "herald",
        "workload": "journey-waits",
        "people": people,
        "entered": entered,
        "nodes": nodes,
        "store": "redis",
        "enter_s": (enter_s * 10.0).round() / 10.0,
        "entries_per_s": (people as f64 / enter_s).round(),
        "actors_active_after": actors_active,
        "rss_before_mib": rss_before.map(|k| k / 1024),
        "rss_after_mib": rss_after.map(|k| k / 1024),
        "peak_rss_mib": peak_rss_kib().map(|k| k / 1024),
        "redis_bytes_per_person": memory_after.saturating_sub(memory_before) / people as u64,
        "state_hash_bytes": person_bytes,
        "wait_member_bytes": wait_set_bytes / people as u64,
    });
    println!("{line}");
    cluster.shutdown().await;
    Ok(())
}

fn request_clone<T: Clone>(request: &tonic::Request<T>) -> tonic::Request<T> {
    let mut copy = tonic::Request::new(request.get_ref().clone());
    *copy.metadata_mut() = request.metadata().clone();
    copy
}

async fn used_memory(conn: &mut ::redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = ::redis::cmd("INFO").arg("memory").query_async(conn).await?;
    info.lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .context("INFO memory has no used_memory")
}

/// The process's resident memory now, in KiB.
fn current_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
