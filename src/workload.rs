//! The demo and benchmark workload: N recipients, N messages through the default waterfall,
//! watched to their terminal states. Talks to the cluster only through its public gRPC API.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use herald::demo::{demo_message, demo_recipient};
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    Channel, MessageRequest, MessageStatus, Recipient, SendBatchRequest, UpsertRecipientsRequest,
};
use parking_lot::Mutex;
use serde::Serialize;
use tonic::transport::Channel as GrpcChannel;

const BATCH: usize = 1000;
/// `SendBatch` calls in flight. Enough to keep every node busy without queueing thousands of
/// acked-but-waiting messages. Waterfall-100000 on Redis, three alternating runs each: 4, 6
/// and 8 gave the same throughput (21.5–23k msgs/s, within noise), with p99 310 / 440 /
/// 600 ms and peak RSS 290 / 340 / 365 MiB; 32 had p99 2.3 s and 510 MiB.
const BATCHES_IN_FLIGHT: usize = 4;

pub fn authed<T>(message: T, api_key: &str) -> Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {api_key}")
            .parse()
            .context("api key is not valid metadata")?,
    );
    Ok(request)
}

/// A channel to a node's public API: plaintext, or TLS when `HERALD_API_CA` names the CA of
/// the API's certificate (`[api_tls]`), presenting `HERALD_API_CERT`/`HERALD_API_KEY` when the
/// API requires client certificates.
pub async fn connect(address: &str) -> Result<GrpcChannel> {
    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    let read = |var: &str| -> Result<Option<Vec<u8>>> {
        match std::env::var_os(var) {
            Some(path) => std::fs::read(&path)
                .with_context(|| format!("{var}={}", path.to_string_lossy()))
                .map(Some),
            None => Ok(None),
        }
    };
    let endpoint = match read("HERALD_API_CA")? {
        Some(ca) => {
            let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
            if let (Some(cert), Some(key)) = (read("HERALD_API_CERT")?, read("HERALD_API_KEY")?) {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            Endpoint::from_shared(format!("https://{address}"))?.tls_config(tls)?
        }
        None => Endpoint::from_shared(format!("http://{address}"))?,
    };
    let channel = endpoint
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .connect()
        .await
        .with_context(|| format!("connecting to {address}"))?;
    Ok(channel)
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Funnel {
    pub submitted: u64,
    pub terminal: u64,
    pub delivered_push: u64,
    pub delivered_email: u64,
    pub delivered_sms: u64,
    pub failed: u64,
    pub suppressed: u64,
    pub expired: u64,
    /// Suppressed messages by the rule that stopped them (`frequency_cap`, `opted_out`, ...).
    pub suppressed_by_reason: std::collections::BTreeMap<String, u64>,
}

#[derive(Default)]
struct Tracker {
    funnel: Funnel,
    submitted_at: HashMap<String, Instant>,
    finished_at: HashMap<String, Instant>,
}

pub struct Report {
    pub funnel: Funnel,
    pub elapsed: Duration,
    pub latencies_ms: Vec<f64>,
}

/// Creates `n` recipients named `{prefix}{i}` (all channels, opted in), round-robin over nodes.
pub async fn create_recipients(
    addrs: &[String],
    api_key: &str,
    prefix: &str,
    n: usize,
) -> Result<()> {
    let mut clients = Vec::new();
    for address in addrs {
        clients.push(RecipientsClient::new(connect(address).await?));
    }
    let batches: Vec<(usize, usize)> = (0..n)
        .step_by(BATCH)
        .map(|s| (s, (s + BATCH).min(n)))
        .collect();
    let results =
        futures::stream::iter(batches.into_iter().enumerate().map(|(b, (start, end))| {
            let mut client = clients[b % clients.len()].clone();
            let recipients: Vec<Recipient> = (start..end)
                .map(|i| demo_recipient(format!("{prefix}{i}"), i))
                .collect();
            async move {
                client
                    .upsert_recipients(authed(UpsertRecipientsRequest { recipients }, api_key)?)
                    .await
                    .context("upserting recipients")?;
                Ok::<_, anyhow::Error>(())
            }
        }))
        .buffer_unordered(BATCHES_IN_FLIGHT)
        .collect::<Vec<_>>()
        .await;
    results.into_iter().collect()
}

/// Where terminal events are observed.
pub enum Observer {
    /// The nodes' own terminal-event feeds, in process (benchmarks: the instrument should not
    /// cost the system under test two extra gRPC hops per message).
    InProcess(Vec<tokio::sync::broadcast::Receiver<Arc<herald_node::events::TenantEvent>>>),
}

/// How often the in-process observer collects terminal events: the resolution of its latencies.
const IN_PROCESS_OBSERVER_TICK: Duration = Duration::from_millis(2);

type EventStream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<herald_proto::v1::Event, String>> + Send>>;

fn observe(observer: Observer) -> EventStream {
    match observer {
        Observer::InProcess(mut receivers) => {
            // Drained on a clock rather than awaited: an awaiting receiver makes every terminal
            // event wake this runtime from the node's thread (a syscall per message, ~4% of
            // the bench's CPU in perf). A terminal state is then seen up to one tick late,
            // which is the instrument's resolution. The feed's buffer (`watch_buffer`, 65,536)
            // holds far more than a tick's events.
            let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(IN_PROCESS_OBSERVER_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    if events_tx.is_closed() {
                        return;
                    }
                    let mut batch = Vec::new();
                    for receiver in &mut receivers {
                        loop {
                            match receiver.try_recv() {
                                Ok(item) => batch.push(Ok(item.event.clone())),
                                Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                                Err(error) => {
                                    let _ = events_tx.send(vec![Err(error.to_string())]);
                                    return;
                                }
                            }
                        }
                    }
                    if !batch.is_empty() && events_tx.send(batch).is_err() {
                        return;
                    }
                }
            });
            Box::pin(
                tokio_stream::wrappers::UnboundedReceiverStream::new(events_rx)
                    .flat_map(futures::stream::iter),
            )
        }
    }
}

/// Sends one message to each of `n` recipients and waits for every terminal state.
// The CLI flags map one to one onto these parameters.
#[allow(clippy::too_many_arguments)]
pub async fn run_messages(
    addrs: &[String],
    api_key: &str,
    prefix: &str,
    n: usize,
    timeout: Duration,
    progress: bool,
    observer: Observer,
    pace_per_s: Option<u32>,
    waterfall: Option<Vec<herald_proto::v1::WaterfallStep>>,
) -> Result<Report> {
    let tracker = Arc::new(Mutex::new(Tracker::default()));
    // Watch first, so no terminal event is missed.
    let mut events = observe(observer);
    let watch_tracker = tracker.clone();
    let watch_task = tokio::spawn(async move {
        while let Some(event) = events.next().await {
            let event = match event {
                Ok(event) => event,
                Err(reason) => return Err(anyhow::anyhow!("watch ended: {reason}")),
            };
            let now = Instant::now();
            let mut t = watch_tracker.lock();
            if t.finished_at
                .insert(event.message_id.clone(), now)
                .is_some()
            {
                continue;
            }
            t.funnel.terminal += 1;
            match (event.status(), event.channel()) {
                (MessageStatus::Delivered, Channel::Push) => t.funnel.delivered_push += 1,
                (MessageStatus::Delivered, Channel::Email) => t.funnel.delivered_email += 1,
                (MessageStatus::Delivered, Channel::Sms) => t.funnel.delivered_sms += 1,
                (MessageStatus::Suppressed, _) => {
                    t.funnel.suppressed += 1;
                    // Named by the rule itself, also when every step was skipped by one.
                    let reason = event.reason.trim_start_matches("every_step_skipped{");
                    let rule = reason
                        .split(['{', ':'])
                        .next()
                        .unwrap_or("unknown")
                        .to_owned();
                    *t.funnel.suppressed_by_reason.entry(rule).or_default() += 1;
                }
                (MessageStatus::Expired, _) => t.funnel.expired += 1,
                _ => t.funnel.failed += 1,
            }
        }
        Ok(())
    });

    let mut clients = Vec::new();
    for address in addrs {
        clients.push(
            DeliveryClient::new(connect(address).await?)
                .max_decoding_message_size(64 * 1024 * 1024),
        );
    }
    let started = Instant::now();
    let run_id = ulid::Ulid::new().to_string();
    // Paced (the demo): batches of a tenth of a second's worth, one at a time, on a schedule.
    let (batch_size, in_flight) = match pace_per_s {
        Some(rate) => (((rate / 10) as usize).clamp(1, BATCH), 1),
        None => (BATCH, BATCHES_IN_FLIGHT),
    };
    let batches: Vec<(usize, usize)> = (0..n)
        .step_by(batch_size)
        .map(|s| (s, (s + batch_size).min(n)))
        .collect();
    let submit_tracker = tracker.clone();
    let submit = futures::stream::iter(batches.into_iter().enumerate().map(|(b, (start, end))| {
        let due = pace_per_s
            .map(|rate| started + Duration::from_secs_f64(start as f64 / f64::from(rate.max(1))));
        let mut client = clients[b % clients.len()].clone();
        let messages: Vec<MessageRequest> = (start..end)
            .map(|i| {
                let mut message = demo_message(format!("{prefix}{i}"), format!("{run_id}-{i}"));
                if let Some(waterfall) = &waterfall {
                    message.waterfall = waterfall.clone();
                }
                message
            })
            .collect();
        let tracker = submit_tracker.clone();
        async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            let sent_at = Instant::now();
            let reply = client
                .send_batch(authed(SendBatchRequest { messages }, api_key)?)
                .await
                .context("sending a batch")?
                .into_inner();
            if let Some(failed) = reply.results.iter().find_map(|r| r.error.as_ref()) {
                anyhow::bail!(
                    "a message of the batch was not accepted: {}",
                    failed.message
                );
            }
            let mut t = tracker.lock();
            t.funnel.submitted += reply.results.len() as u64;
            for result in reply.results {
                t.submitted_at.insert(result.message_id, sent_at);
            }
            Ok::<_, anyhow::Error>(())
        }
    }))
    .buffer_unordered(in_flight)
    .collect::<Vec<_>>();

    let progress_tracker = tracker.clone();
    let progress_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            if progress {
                let f = progress_tracker.lock().funnel.clone();
                eprintln!(
                    "  {:>6.1}s  submitted {:>8}  terminal {:>8}  push {:>8}  email {:>7}  sms {:>7}  failed {:>6}",
                    started.elapsed().as_secs_f64(),
                    f.submitted,
                    f.terminal,
                    f.delivered_push,
                    f.delivered_email,
                    f.delivered_sms,
                    f.failed + f.suppressed + f.expired
                );
            }
        }
    });
    for result in submit.await {
        result?;
    }
    let deadline = Instant::now() + timeout;
    let elapsed = loop {
        {
            let t = tracker.lock();
            if t.funnel.terminal >= n as u64 {
                let last = t
                    .finished_at
                    .values()
                    .max()
                    .copied()
                    .unwrap_or_else(Instant::now);
                break last.duration_since(started);
            }
        }
        if watch_task.is_finished() {
            progress_task.abort();
            return match watch_task.await {
                Ok(Err(error)) => Err(error),
                _ => Err(anyhow::anyhow!("watch stream ended early")),
            };
        }
        if Instant::now() > deadline {
            progress_task.abort();
            let t = tracker.lock();
            bail!(
                "timed out after {timeout:?}: {} of {n} messages terminal",
                t.funnel.terminal
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    progress_task.abort();
    watch_task.abort();
    let t = tracker.lock();
    let mut latencies_ms: Vec<f64> = t
        .finished_at
        .iter()
        .filter_map(|(id, done)| {
            let sent = t.submitted_at.get(id)?;
            Some(done.saturating_duration_since(*sent).as_secs_f64() * 1000.0)
        })
        .collect();
    latencies_ms.sort_by(|a, b| a.total_cmp(b));
    Ok(Report {
        funnel: t.funnel.clone(),
        elapsed,
        latencies_ms,
    })
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64) * p).floor() as usize;
    sorted[index.min(sorted.len() - 1)]
}
