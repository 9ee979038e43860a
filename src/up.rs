//! # up: `herald up` — a local cluster and its demo campaign
//!
//! Owns starting the local cluster (control plane and nodes on loopback, mutual TLS with a
//! throwaway CA), printing where everything is and the next commands to try, and the demo: the
//! demo recipients, credits for the demo tenant, and one campaign to all of them through
//! push → email → SMS, watched live to its end (a progress bar on a terminal), then its funnel.
//! Serves until Ctrl-C (or exits when done, for scripts).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use herald::demo::{demo_campaign, demo_waterfall};
use herald_node::config::SandboxConfig;
use herald_proto::v1::campaigns_client::CampaignsClient;
use herald_proto::v1::{CampaignState, CampaignView, CreateCampaignRequest, TopUpCreditsRequest};
use serde_json::json;
use tonic::transport::Channel as GrpcChannel;

use crate::campaigns::{command_call, get, print_view, upload_ids, watch};
use crate::local::{DEMO_API_KEY, DEMO_TENANT, LocalCluster, LocalOptions};
use crate::status_error;
use crate::workload::{authed, connect};

/// What `herald up`'s flags say.
pub(crate) struct UpOptions {
    pub nodes: usize,
    pub redis: Option<String>,
    pub demo: usize,
    pub sandbox: SandboxConfig,
    pub push_timeout_ms: u32,
    pub pace: Option<u32>,
    pub exit_when_done: bool,
    pub json: bool,
    pub partitions: u32,
    /// Run the journey demo (people entering the win-back) instead of the campaign.
    pub demo_journey: bool,
}

/// Credits the demo tenant gets: far more than the demo spends (1 unit per recipient).
const DEMO_CREDITS_PER_RECIPIENT_MICROS: u64 = 1_000_000;

pub(crate) async fn up(options: UpOptions) -> Result<()> {
    let store_name = if options.redis.is_some() {
        "redis"
    } else {
        "embedded"
    };
    eprintln!(
        "herald up: control plane + {} nodes on loopback, {store_name} store,",
        options.nodes
    );
    eprintln!("           sandbox providers, mutual TLS with a throwaway CA");
    let cluster = LocalCluster::start(LocalOptions {
        nodes: options.nodes,
        redis_url: options.redis.clone(),
        key_prefix: Some(format!("herald-up-{}", ulid::Ulid::new())),
        sandbox: options.sandbox.clone(),
        partition_count: options.partitions,
        mtls: true,
        // The journey demo plays 60 days out in half a minute.
        policy_clock: options
            .demo_journey
            .then(|| (crate::up_journey::rate(), now_unix_ms())),
    })
    .await?;
    cluster.wait_ready(Duration::from_secs(30)).await?;
    let addrs = cluster.node_addrs();
    let first = addrs.first().cloned().unwrap_or_default();
    if let Some(control) = &cluster.control {
        eprintln!("  control  {} (mutual TLS)", control.local_addr());
        if let Some(dir) = cluster.certs_dir() {
            eprintln!("  certs    {}", dir.display());
        }
    }
    for (node, address) in cluster.nodes.iter().zip(&addrs) {
        eprintln!("  {:<8} {address}", node.node_id().as_str());
    }
    eprintln!("  api key  {DEMO_API_KEY} (tenant {DEMO_TENANT})");
    let mut summary = None;
    if options.demo > 0 && options.demo_journey {
        summary = Some(crate::up_journey::demo(&addrs, options.demo).await?);
    } else if options.demo > 0 {
        summary = Some(demo(&cluster, &addrs, &options).await?);
    }
    eprintln!("try:");
    eprintln!("  export HERALD_API_KEY={DEMO_API_KEY}");
    eprintln!("  herald campaign list --addr {first}");
    eprintln!("  herald journey list --addr {first}");
    eprintln!("  herald send --addr {first} --recipient demo-r0 --text hi");
    if let (Some(control), Some(dir)) = (&cluster.control, cluster.certs_dir()) {
        eprintln!(
            "  herald credits show --tenant {DEMO_TENANT} --control {} \\",
            control.local_addr()
        );
        eprintln!("      --tls-dir {}", dir.display());
    }
    if let Some(line) = summary
        && options.json
    {
        println!("{line}");
    }
    if !options.exit_when_done {
        eprintln!("serving; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    cluster.shutdown().await;
    Ok(())
}

/// The demo: recipients, credits, a campaign to all of them, watched to its end. Returns the
/// one JSON line of its funnel.
async fn demo(
    cluster: &LocalCluster,
    addrs: &[String],
    options: &UpOptions,
) -> Result<serde_json::Value> {
    let n = options.demo;
    eprintln!("demo: creating {n} recipients");
    crate::workload::create_recipients(addrs, DEMO_API_KEY, "demo-r", n).await?;
    let mut control = cluster.operator_control().await?;
    control
        .top_up_credits(TopUpCreditsRequest {
            tenant: DEMO_TENANT.into(),
            amount_micros: n as u64 * DEMO_CREDITS_PER_RECIPIENT_MICROS,
            note: "herald up demo".into(),
        })
        .await
        .map_err(status_error)?;
    let address = addrs.first().context("no node")?;
    let mut campaigns = CampaignsClient::new(connect(address).await?);
    let spec = demo_campaign(
        "herald up demo",
        demo_waterfall(options.push_timeout_ms),
        options.pace,
    );
    let created = campaigns
        .create_campaign(authed(
            CreateCampaignRequest { spec: Some(spec) },
            DEMO_API_KEY,
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    let id = created.campaign_id;
    let ids = (0..n).map(|i| Ok(format!("demo-r{i}")));
    upload_ids(&mut campaigns, DEMO_API_KEY, &id, ids).await?;
    let pace = options
        .pace
        .map_or("unpaced".to_owned(), |p| format!("{p} msg/s"));
    eprintln!(
        "demo: campaign {id} to {n} recipients ({pace}), push (delivered within {} ms)",
        options.push_timeout_ms
    );
    eprintln!("      → email → SMS; watch it: herald campaign watch {id}");
    let started = Instant::now();
    command_call(&mut campaigns, DEMO_API_KEY, &id, "start").await?;
    watch(&mut campaigns, DEMO_API_KEY, &id, false).await?;
    eprintln!("demo: everyone submitted; waiting for the last messages to end");
    let view = settled(&mut campaigns, &id, Duration::from_secs(60)).await?;
    let elapsed = started.elapsed().as_secs_f64();
    print_view(&view);
    let timeouts = cluster.step_timeouts();
    eprintln!(
        "  push timed out {timeouts:>8} (no delivery receipt in {} ms; fell back)",
        options.push_timeout_ms
    );
    eprintln!(
        "  receipts       {:>8} (delivery and read receipts applied)",
        cluster.receipts_applied()
    );
    let f = view.funnel.clone().unwrap_or_default();
    let channel = |c: herald_proto::v1::Channel| {
        f.channels
            .iter()
            .find(|r| r.channel == c as i32)
            .map_or(0, |r| r.delivered)
    };
    Ok(json!({
        "campaign_id": id,
        "planned": f.planned,
        "submitted": f.submitted,
        "delivered_push": channel(herald_proto::v1::Channel::Push),
        "delivered_email": channel(herald_proto::v1::Channel::Email),
        "delivered_sms": channel(herald_proto::v1::Channel::Sms),
        "failed": f.failed,
        "suppressed": f.suppressed,
        "expired": f.expired,
        "push_timeouts": timeouts,
        "attempts": cluster.provider_calls(),
        "spent_micros": view.credits.map_or(0, |c| c.spent_micros),
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
    }))
}

/// The campaign once every message it submitted has ended (its funnel's outcomes add up), or
/// as it is after `timeout`.
async fn settled(
    campaigns: &mut CampaignsClient<GrpcChannel>,
    id: &str,
    timeout: Duration,
) -> Result<CampaignView> {
    let deadline = Instant::now() + timeout;
    loop {
        let view = get(campaigns, DEMO_API_KEY, id, false).await?;
        let f = view.funnel.clone().unwrap_or_default();
        let ended = view.state() == CampaignState::Completed
            && f.delivered + f.failed >= f.submitted
            && view.credits.as_ref().is_none_or(|c| c.held_micros == 0);
        if ended || Instant::now() >= deadline {
            return Ok(view);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
