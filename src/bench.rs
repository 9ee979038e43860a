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
