//! `herald`: the one binary. Subcommands run a local cluster (`up`), a real node or control
//! replica (`node`, `control`), send a message (`send`), show the cluster (`cluster status`) and
//! benchmark (`bench waterfall`).

mod bench;
mod campaign_file;
mod campaigns;
mod journey_file;
mod journeys;
mod local;
mod operator;
mod up;
mod up_journey;
mod workload;

// glibc malloc spent ~40% of the benchmark's CPU in lock contention and chunk consolidation
// (perf); mimalloc's per-thread heaps remove most of it. Built with `no_thp`: with transparent
// huge pages every fresh 2 MiB region was zeroed on first touch (perf: clear_page_erms ~30%).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};
use herald_node::config::SandboxConfig;
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::{Channel, GetMessageRequest, MessageClass, SendRequest, WaterfallStep};

use crate::workload::{authed, connect};

#[derive(Parser)]
#[command(
    name = "herald",
    version,
    // Help fits an 80-column terminal, whatever the terminal says it is.
    term_width = 80,
    max_term_width = 80,
    about = "Herald: a distributed, actor-based delivery cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a control plane and nodes on this machine and a demo campaign with a live funnel.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Redis URL; without it the embedded store is used.
        #[arg(long)]
        redis: Option<String>,
        /// Demo messages to send (0 = none).
        #[arg(long, default_value_t = 5000)]
        demo: usize,
        /// Sandbox provider latency per call, in ms.
        #[arg(long, default_value_t = 20)]
        sandbox_latency_ms: u64,
        /// Sandbox delivery receipts arrive this long after acceptance, in ms (0 = at once,
        /// in the provider's answer).
        #[arg(long, default_value_t = 150)]
        sandbox_receipt_delay_ms: u64,
        /// Share of successful push attempts whose delivery receipt never comes, so the push
        /// step times out and the waterfall falls back to email.
        #[arg(long, default_value_t = 0.15)]
        push_silent_share: f64,
        /// How long the demo's push step waits for its delivery receipt, in ms.
        #[arg(long, default_value_t = 2000)]
        push_timeout_ms: u32,
        /// Demo messages submitted per second (0 = as fast as possible).
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        /// Stop once the demo is done instead of serving until Ctrl-C.
        #[arg(long)]
        exit_when_done: bool,
        /// End with one JSON line of the funnel.
        #[arg(long)]
        json: bool,
        /// Partitions of the local cluster.
        #[arg(long, default_value_t = 4096)]
        partitions: u32,
        /// Demo a journey instead of a campaign: `--demo` people enter a 60-day win-back
        /// (push, 30 days, email, 30 days, SMS) played out at two days a second.
        #[arg(long)]
        demo_journey: bool,
    },
    /// Run one node (config file + HERALD_* environment overrides).
    Node {
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Run one control plane replica (config file + HERALD_* environment overrides).
    Control {
        #[arg(long, env = "HERALD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Send one message from the shell and wait for its terminal state.
    Send {
        /// A node's address.
        #[arg(long, default_value = "127.0.0.1:7500")]
        addr: String,
        #[arg(long, env = "HERALD_API_KEY")]
        api_key: String,
        #[arg(long)]
        recipient: String,
        /// Text used for every channel's content.
        #[arg(long)]
        text: String,
        /// Comma-separated channels in waterfall order (push,email,sms).
        #[arg(long, default_value = "push,email,sms")]
        channels: String,
        #[arg(long)]
        marketing: bool,
        #[arg(long, default_value = "")]
        idempotency_key: String,
        /// Seconds to wait for a terminal state (0 = don't wait).
        #[arg(long, default_value_t = 10)]
        wait_s: u64,
    },
    /// Create or replace a recipient (all given channels opted in).
    Recipient {
        /// A node's address.
        #[arg(long, default_value = "127.0.0.1:7500")]
        addr: String,
        #[arg(long, env = "HERALD_API_KEY")]
        api_key: String,
        #[arg(long)]
        id: String,
        #[arg(long)]
        email: Option<String>,
        /// E.164, e.g. +12125551234.
        #[arg(long)]
        phone: Option<String>,
        /// An FCM registration token.
        #[arg(long)]
        push_token: Option<String>,
        /// IANA time zone, e.g. Europe/Berlin.
        #[arg(long)]
        time_zone: Option<String>,
    },
    /// Cluster operations.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// API keys of the public API: create, list, revoke (an operator certificate).
    Keys {
        /// A control replica's address.
        #[arg(long, default_value = "127.0.0.1:7400", global = true)]
        control: String,
        #[command(flatten)]
        tls: operator::OperatorTls,
        #[command(subcommand)]
        command: operator::KeysCommand,
    },
    /// Campaigns: create from a file, start, pause, resume, cancel, status, watch.
    Campaign {
        /// A node's address.
        #[arg(long, default_value = "127.0.0.1:7500", global = true)]
        addr: String,
        #[arg(long, env = "HERALD_API_KEY", global = true)]
        api_key: Option<String>,
        #[command(subcommand)]
        command: campaigns::CampaignCommand,
    },
    /// Journeys: create from a file, get, list, pause, resume, archive.
    Journey {
        /// A node's address.
        #[arg(long, default_value = "127.0.0.1:7500", global = true)]
        addr: String,
        #[arg(long, env = "HERALD_API_KEY", global = true)]
        api_key: Option<String>,
        #[command(subcommand)]
        command: journeys::JourneyCommand,
    },
    /// Tenants' prepaid credits: show, top-up (an operator certificate).
    Credits {
        /// A control replica's address.
        #[arg(long, default_value = "127.0.0.1:7400", global = true)]
        control: String,
        #[command(flatten)]
        tls: operator::OperatorTls,
        #[command(subcommand)]
        command: operator::CreditsCommand,
    },
    /// The cluster CA and the certificates of nodes, control replicas and operators.
    Certs {
        #[command(subcommand)]
        command: operator::CertsCommand,
    },
    /// Benchmarks (see shared/bench/WORKLOAD.md).
    Bench {
        #[command(subcommand)]
        command: BenchCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Nodes, partitions per node, epoch, leader.
    Status {
        /// A control replica's address.
        #[arg(long, default_value = "127.0.0.1:7400")]
        control: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        tls: operator::OperatorTls,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// The waterfall-N workload on a local cluster; prints one JSON line.
    Waterfall {
        #[arg(long, default_value_t = 100_000)]
        n: usize,
        /// Redis URL; without it the embedded store is used.
        #[arg(long)]
        redis: Option<String>,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 4096)]
        partitions: u32,
        /// Plaintext between the nodes (to measure what mTLS costs).
        #[arg(long)]
        no_mtls: bool,
    },
    /// An unpaced campaign over N recipients through the full path; prints one JSON line.
    Campaign {
        #[arg(long, default_value_t = 1_000_000)]
        recipients: usize,
        /// Redis URL; without it the embedded store is used.
        #[arg(long)]
        redis: Option<String>,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 4096)]
        partitions: u32,
    },
    /// People entering a 90-day journey wait: memory and store bytes per waiting person;
    /// prints one JSON line.
    JourneyWaits {
        #[arg(long, default_value_t = 1_000_000)]
        people: usize,
        /// Redis URL (the store bytes are Redis' figures).
        #[arg(long)]
        redis: String,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value_t = 4096)]
        partitions: u32,
    },
}

fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERALD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Failpoints (feature `failpoints`): the ones `FAILPOINTS` names are configured for the whole
/// process (the scenario lives as long as `main`), and a failpoint's `panic` ends the process
/// as a `kill -9` would. A panic alone would not: a store point panics on a blocking thread, a
/// recipient point in an actor, and the runtime or the actor system would carry on.
#[cfg(feature = "failpoints")]
mod failpoints {
    /// The exit code of a process killed by SIGKILL (128 + 9), which a death here imitates.
    pub const EXIT_CODE: i32 = 137;

    /// Configures the failpoints of `FAILPOINTS` and installs the panic hook. Keep the answer
    /// alive: dropping it removes every failpoint.
    pub fn setup() -> fail::FailScenario<'static> {
        let scenario = fail::FailScenario::setup();
        let others = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| match failpoint_of(info.payload()) {
            Some(name) => {
                tracing::error!(failpoint = name, "failpoint: the node exits here");
                std::process::exit(EXIT_CODE);
            }
            None => others(info),
        }));
        scenario
    }

    /// The failpoint a panic came from: the `fail` crate panics with `failpoint <name> panic`
    /// for the `panic` action without a message.
    fn failpoint_of(payload: &(dyn std::any::Any + Send)) -> Option<&str> {
        let text = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())?;
        let name = text.strip_prefix("failpoint ")?.strip_suffix(" panic")?;
        (!name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
    }

    #[cfg(test)]
    mod tests {
        use super::failpoint_of;

        #[test]
        fn a_failpoint_panic_names_its_failpoint() {
            let panic = std::panic::catch_unwind(|| {
                fail::cfg("test::point", "panic").expect("configure");
                fail::fail_point!("test::point");
            })
            .expect_err("the failpoint panics");
            fail::remove("test::point");
            assert_eq!(failpoint_of(panic.as_ref()), Some("test::point"));
            assert_eq!(failpoint_of(&"index out of bounds"), None);
            assert_eq!(failpoint_of(&String::from("failpoint  panic")), None);
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    #[cfg(feature = "failpoints")]
    let _failpoints = failpoints::setup();
    let cli = Cli::parse();
    match cli.command {
        Command::Up {
            nodes,
            redis,
            demo,
            sandbox_latency_ms,
            sandbox_receipt_delay_ms,
            push_silent_share,
            push_timeout_ms,
            rate,
            exit_when_done,
            json,
            partitions,
            demo_journey,
        } => {
            init_tracing("warn");
            let sandbox = SandboxConfig {
                latency_ms: sandbox_latency_ms,
                receipt_delay_ms: sandbox_receipt_delay_ms,
                push_silent_share,
                read_share: 0.3,
                ..Default::default()
            };
            let pace = (rate > 0).then_some(rate);
            up::up(up::UpOptions {
                nodes,
                redis,
                demo,
                sandbox,
                push_timeout_ms,
                pace,
                exit_when_done,
                json,
                partitions,
                demo_journey,
            })
            .await
        }
        Command::Node { config } => {
            init_tracing("info");
            run_node(config).await
        }
        Command::Control { config } => {
            init_tracing("info");
            run_control(config).await
        }
        Command::Send {
            addr,
            api_key,
            recipient,
            text,
            channels,
            marketing,
            idempotency_key,
            wait_s,
        } => {
            send(
                &addr,
                &api_key,
                recipient,
                text,
                &channels,
                marketing,
                idempotency_key,
                wait_s,
            )
            .await
        }
        Command::Cluster {
            command: ClusterCommand::Status { control, json, tls },
        } => operator::cluster_status(&control, json, &tls).await,
        Command::Certs { command } => operator::certs(command),
        Command::Campaign {
            addr,
            api_key,
            command,
        } => {
            init_tracing("warn");
            campaigns::run(&addr, &required_api_key(api_key)?, command).await
        }
        Command::Journey {
            addr,
            api_key,
            command,
        } => {
            init_tracing("warn");
            journeys::run(&addr, &required_api_key(api_key)?, command).await
        }
        Command::Credits {
            control,
            tls,
            command,
        } => operator::credits(&control, &tls, command).await,
        Command::Keys {
            control,
            tls,
            command,
        } => operator::keys(&control, &tls, command).await,
        Command::Recipient {
            addr,
            api_key,
            id,
            email,
            phone,
            push_token,
            time_zone,
        } => put_recipient(&addr, &api_key, id, email, phone, push_token, time_zone).await,
        Command::Bench {
            command:
                BenchCommand::Waterfall {
                    n,
                    redis,
                    nodes,
                    partitions,
                    no_mtls,
                },
        } => {
            init_tracing("error");
            bench::bench_waterfall(n, redis, nodes, partitions, !no_mtls).await
        }
        Command::Bench {
            command:
                BenchCommand::JourneyWaits {
                    people,
                    redis,
                    nodes,
                    partitions,
                },
        } => {
            init_tracing("error");
            bench::bench_journey_waits(people, redis, nodes, partitions).await
        }
        Command::Bench {
            command:
                BenchCommand::Campaign {
                    recipients,
                    redis,
                    nodes,
                    partitions,
                },
        } => {
            init_tracing("error");
            bench::bench_campaign(recipients, redis, nodes, partitions).await
        }
    }
}

/// A gRPC error as the CLI prints it: its code, then its message (which names the field).
/// The API key a tenant command needs (`--api-key` or `HERALD_API_KEY`).
fn required_api_key(api_key: Option<String>) -> Result<String> {
    api_key.ok_or_else(|| anyhow::anyhow!("--api-key (or HERALD_API_KEY) is required"))
}

pub(crate) fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}: {}", status.code(), status.message())
}

async fn run_node(config: Option<PathBuf>) -> Result<()> {
    use herald_node::config::{NodeConfig, load, relevant_env, top_level_keys};
    let env = relevant_env(&top_level_keys::<NodeConfig>(), std::env::vars());
    let config: NodeConfig = load(config.as_deref(), env)?;
    // Before connecting to the store, so a bad value is reported at once.
    config.validate()?;
    let store = herald_node::server::open_store(&config.store).await?;
    let node = herald_node::server::Node::start(config, store).await?;
    tracing::info!(addr = %node.local_addr, node = %node.node_id(), "serving");
    wait_for_signal().await?;
    node.shutdown().await;
    Ok(())
}

async fn run_control(config: Option<PathBuf>) -> Result<()> {
    // The file holds `ControlConfig` plus the two store keys. serde cannot combine `flatten`
    // with `deny_unknown_fields` (keys went missing or typos passed silently), so: read the
    // file as a table with the HERALD_* overrides applied, take the store keys out, and
    // deserialize the rest strictly, so an unknown or misspelt key is an error naming it.
    let origin = config
        .as_deref()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "(environment)".into());
    let invalid = |message: String| herald_node::config::Error::Invalid {
        origin: origin.clone(),
        message,
    };
    let mut keys = herald_node::config::top_level_keys::<herald_control::ControlConfig>();
    keys.extend(["redis_url", "key_prefix", "redis_ca"].map(str::to_string));
    let env = herald_node::config::relevant_env(&keys, std::env::vars());
    let mut table: toml::Table = herald_node::config::load(config.as_deref(), env)?;
    let mut take_string = |key: &str| -> Result<Option<String>, herald_node::config::Error> {
        match table.remove(key) {
            None => Ok(None),
            Some(toml::Value::String(value)) => Ok(Some(value)),
            Some(other) => Err(invalid(format!(
                "{key} must be a string, found {}",
                other.type_str()
            ))),
        }
    };
    // Where the leader lease and the table live; must match the nodes' `[store]`.
    let redis_url = take_string("redis_url")?;
    let key_prefix = take_string("key_prefix")?;
    let redis_ca = take_string("redis_ca")?.map(PathBuf::from);
    let control: herald_control::ControlConfig =
        toml::Value::Table(table)
            .try_into()
            .map_err(|error: toml::de::Error| {
                // The message names the key: "unknown field `x`, expected one of …" or
                // "invalid type: …\nin `x`".
                let mut message = error.to_string().trim_end().to_owned();
                if message.starts_with("unknown field") {
                    message.push_str(", or the store keys `redis_url`, `key_prefix`, `redis_ca`");
                }
                invalid(message)
            })?;
    // Before connecting to the store, so a bad value is reported at once.
    control.validate()?;
    let store = herald_node::server::open_store(&herald_node::config::StoreConfig {
        redis_url: redis_url.clone(),
        data_dir: None,
        key_prefix,
        redis_ca,
        ..Default::default()
    })
    .await?;
    if redis_url.is_none() {
        tracing::warn!("no redis_url: the control plane keeps its table in memory only");
    }
    let control = herald_control::ControlPlane::start(control, store).await?;
    tracing::info!(addr = %control.local_addr(), "control plane serving");
    wait_for_signal().await?;
    control.shutdown().await?;
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn send(
    addr: &str,
    api_key: &str,
    recipient: String,
    text: String,
    channels: &str,
    marketing: bool,
    idempotency_key: String,
    wait_s: u64,
) -> Result<()> {
    let mut waterfall = Vec::new();
    for name in channels.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let channel = match name {
            "push" => Channel::Push,
            "email" => Channel::Email,
            "sms" => Channel::Sms,
            other => bail!("unknown channel {other:?} (push, email, sms)"),
        };
        waterfall.push(WaterfallStep {
            channel: channel as i32,
            ..Default::default()
        });
    }
    let mut message = herald::demo::demo_message(recipient, idempotency_key);
    message.waterfall = waterfall;
    message.class = if marketing {
        MessageClass::Marketing as i32
    } else {
        MessageClass::Transactional as i32
    };
    if let Some(content) = message.content.as_mut() {
        if let Some(push) = content.push.as_mut() {
            push.body = text.clone();
        }
        if let Some(email) = content.email.as_mut() {
            email.text_body = text.clone();
        }
        if let Some(sms) = content.sms.as_mut() {
            sms.text = text;
        }
    }
    let mut client = DeliveryClient::new(connect(addr).await?);
    let reply = client
        .send(authed(
            SendRequest {
                message: Some(message),
            },
            api_key,
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "message {} {}",
        reply.message_id,
        if reply.duplicate {
            "(duplicate)"
        } else {
            "accepted"
        }
    );
    if wait_s == 0 {
        return Ok(());
    }
    let deadline = Instant::now() + Duration::from_secs(wait_s);
    loop {
        let view = client
            .get_message(authed(
                GetMessageRequest {
                    message_id: reply.message_id.clone(),
                },
                api_key,
            )?)
            .await
            .map_err(status_error)?
            .into_inner();
        let status = view
            .message
            .as_ref()
            .map(|m| m.status())
            .unwrap_or_default();
        if herald_proto::status::is_terminal(status) || Instant::now() > deadline {
            for event in &view.events {
                println!(
                    "  #{:<2} {:<16} step {:<2} {:<6} {}",
                    event.seq,
                    event
                        .kind()
                        .as_str_name()
                        .trim_start_matches("EVENT_")
                        .to_lowercase(),
                    event
                        .step
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| "-".into()),
                    event.channel().as_str_name().to_lowercase(),
                    event.reason
                );
            }
            println!(
                "status {}",
                status.as_str_name().trim_start_matches("MESSAGE_STATUS_")
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn put_recipient(
    addr: &str,
    api_key: &str,
    id: String,
    email: Option<String>,
    phone: Option<String>,
    push_token: Option<String>,
    time_zone: Option<String>,
) -> Result<()> {
    use herald_proto::v1::recipients_client::RecipientsClient;
    use herald_proto::v1::{
        ChannelConsent, ConsentState, PushPlatform, PushToken, Recipient, UpsertRecipientRequest,
    };
    let mut consent = Vec::new();
    let mut opt_in = |channel: Channel| {
        consent.push(ChannelConsent {
            channel: channel as i32,
            state: ConsentState::OptedIn as i32,
            ..Default::default()
        })
    };
    if push_token.is_some() {
        opt_in(Channel::Push);
    }
    if email.is_some() {
        opt_in(Channel::Email);
    }
    if phone.is_some() {
        opt_in(Channel::Sms);
    }
    let recipient = Recipient {
        id,
        push_tokens: push_token
            .map(|token| PushToken {
                token,
                platform: PushPlatform::Fcm as i32,
            })
            .into_iter()
            .collect(),
        email: email.unwrap_or_default(),
        phone: phone.unwrap_or_default(),
        time_zone: time_zone.unwrap_or_default(),
        consent,
        ..Default::default()
    };
    let mut client = RecipientsClient::new(connect(addr).await?);
    let reply = client
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(recipient),
            },
            api_key,
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "recipient {} stored",
        reply.recipient.map(|r| r.id).unwrap_or_default()
    );
    Ok(())
}
