//! # campaigns: `herald campaign …` — its commands and its live progress
//!
//! Owns the commands (create from a campaign file — see `campaign_file` — start, pause,
//! resume, cancel, status, watch with a live progress bar and the funnel, list, member), the
//! upload of a list (streamed in chunks of 10,000 ids, never held whole) and how a campaign
//! is printed (80 columns). Talks to a node's public API only; must never print a contact
//! point.

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use futures::StreamExt;
use herald_proto::v1::campaigns_client::CampaignsClient;
use herald_proto::v1::{
    AudienceChunk, CampaignRequest, CampaignState, CampaignView, Channel, CreateCampaignRequest,
    GetCampaignMemberRequest, GetCampaignRequest, ListCampaignsRequest, WatchCampaignRequest,
};
use tonic::transport::Channel as GrpcChannel;

use crate::campaign_file::read_file;
use crate::status_error;
use crate::workload::{authed, connect};

/// Ids per `AddAudience` chunk.
const CHUNK: usize = 10_000;

#[derive(Subcommand)]
pub(crate) enum CampaignCommand {
    /// Create a campaign from a file (and upload its list); prints its id and estimate.
    Create {
        #[arg(long)]
        file: PathBuf,
        /// Start it right after the upload.
        #[arg(long)]
        start: bool,
    },
    /// Start a created campaign (reserves credits for its estimate).
    Start { id: String },
    /// Stop submitting, cluster-wide, before this returns.
    Pause { id: String },
    /// Go on from where each slice stopped.
    Resume { id: String },
    /// End it: the rest is counted cancelled.
    Cancel { id: String },
    /// State, funnel, variants, credits.
    Status {
        id: String,
        #[arg(long)]
        json: bool,
        /// Each slice's progress too.
        #[arg(long)]
        slices: bool,
    },
    /// A live progress bar and funnel until the campaign ends (Ctrl-C leaves it running).
    Watch { id: String },
    /// The tenant's campaigns, newest first.
    List {
        /// Only those in this state (draft, scheduled, running, paused, completed,
        /// cancelled).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// What the campaign did for one recipient, and why.
    Member { id: String, recipient: String },
}

pub(crate) async fn client(addr: &str) -> Result<CampaignsClient<GrpcChannel>> {
    Ok(CampaignsClient::new(connect(addr).await?))
}

pub(crate) async fn run(addr: &str, api_key: &str, command: CampaignCommand) -> Result<()> {
    let mut campaigns = client(addr).await?;
    match command {
        CampaignCommand::Create { file, start } => {
            let (spec, list) = read_file(&file)?;
            let created = campaigns
                .create_campaign(authed(CreateCampaignRequest { spec: Some(spec) }, api_key)?)
                .await
                .map_err(status_error)?
                .into_inner();
            let id = created.campaign_id.clone();
            println!("campaign {id} created");
            if let Some(list) = list {
                let (uploaded, added) = upload(&mut campaigns, api_key, &id, &list).await?;
                println!("audience: {uploaded} ids uploaded, {added} new");
            }
            let view = get(&mut campaigns, api_key, &id, false).await?;
            print_estimate(&view);
            if start {
                let view = command_call(&mut campaigns, api_key, &id, "start").await?;
                println!("started: {}", state_line(&view));
            } else {
                println!("start it with: herald campaign start {id}");
            }
        }
        CampaignCommand::Start { id } => {
            let view = command_call(&mut campaigns, api_key, &id, "start").await?;
            println!("{}", state_line(&view));
        }
        CampaignCommand::Pause { id } => {
            let view = command_call(&mut campaigns, api_key, &id, "pause").await?;
            println!("{}", state_line(&view));
        }
        CampaignCommand::Resume { id } => {
            let view = command_call(&mut campaigns, api_key, &id, "resume").await?;
            println!("{}", state_line(&view));
        }
        CampaignCommand::Cancel { id } => {
            let view = command_call(&mut campaigns, api_key, &id, "cancel").await?;
            println!("{}", state_line(&view));
        }
        CampaignCommand::Status { id, json, slices } => {
            let view = get(&mut campaigns, api_key, &id, slices).await?;
            if json {
                println!("{}", view_json(&view));
            } else {
                print_view(&view);
                if slices {
                    for slice in &view.slice_progress {
                        println!(
                            "  slice {:>5}  {:>8} / {:<8}",
                            slice.partition, slice.done, slice.size
                        );
                    }
                }
            }
        }
        CampaignCommand::Watch { id } => watch(&mut campaigns, api_key, &id, true).await?,
        CampaignCommand::List { state, limit } => {
            let state = match state.as_deref() {
                None => CampaignState::Unspecified,
                Some(name) => CampaignState::from_str_name(&format!(
                    "CAMPAIGN_STATE_{}",
                    name.to_ascii_uppercase()
                ))
                .ok_or_else(|| anyhow!("--state: {name:?} is not a campaign state"))?,
            };
            let list = campaigns
                .list_campaigns(authed(
                    ListCampaignsRequest {
                        limit,
                        state: state as i32,
                    },
                    api_key,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            for view in &list.campaigns {
                let name = view.spec.as_ref().map_or("", |s| s.name.as_str());
                let funnel = view.funnel.clone().unwrap_or_default();
                println!(
                    "{}  {:<10} {:>9}/{:<9} {}",
                    view.campaign_id,
                    state_name(view.state()),
                    funnel.planned - funnel.remaining.min(funnel.planned),
                    funnel.planned,
                    truncate(name, 20)
                );
            }
        }
        CampaignCommand::Member { id, recipient } => {
            let member = campaigns
                .get_campaign_member(authed(
                    GetCampaignMemberRequest {
                        campaign_id: id,
                        recipient_id: recipient,
                    },
                    api_key,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            println!("outcome  {}", member.outcome);
            for (name, value) in [
                ("message", &member.message_id),
                ("variant", &member.variant),
                ("reason", &member.reason),
            ] {
                if !value.is_empty() {
                    println!("{name:<8} {value}");
                }
            }
        }
    }
    Ok(())
}

/// Streams the ids of `list` (one per line; blank lines and `#` comments skipped) in chunks.
async fn upload(
    campaigns: &mut CampaignsClient<GrpcChannel>,
    api_key: &str,
    id: &str,
    list: &Path,
) -> Result<(u64, u64)> {
    let file = std::fs::File::open(list).with_context(|| format!("reading {}", list.display()))?;
    let path = list.to_owned();
    let ids = std::io::BufReader::new(file)
        .lines()
        .map(move |line| line.with_context(|| format!("reading {}", path.display())))
        .filter(|line| {
            line.as_ref()
                .map_or(true, |l| !l.trim().is_empty() && !l.trim().starts_with('#'))
        })
        .map(|line| line.map(|l| l.trim().to_owned()));
    upload_ids(campaigns, api_key, id, ids).await
}

/// Streams `ids` to the campaign's list in chunks of [`CHUNK`] (read on a blocking thread:
/// a file, or generated): never all in memory. Returns (received, new).
pub(crate) async fn upload_ids(
    campaigns: &mut CampaignsClient<GrpcChannel>,
    api_key: &str,
    id: &str,
    ids: impl Iterator<Item = Result<String>> + Send + 'static,
) -> Result<(u64, u64)> {
    let (tx, rx) = tokio::sync::mpsc::channel::<AudienceChunk>(2);
    let id = id.to_owned();
    let reader = tokio::task::spawn_blocking(move || -> Result<()> {
        let mut chunk = Vec::with_capacity(CHUNK);
        let mut first = true;
        let send = |chunk: Vec<String>, first: &mut bool| {
            let campaign_id = if *first { id.clone() } else { String::new() };
            *first = false;
            tx.blocking_send(AudienceChunk {
                campaign_id,
                recipient_ids: chunk,
            })
            .is_ok()
        };
        for next in ids {
            chunk.push(next?);
            if chunk.len() == CHUNK && !send(std::mem::take(&mut chunk), &mut first) {
                return Ok(());
            }
        }
        if !chunk.is_empty() || first {
            send(chunk, &mut first);
        }
        Ok(())
    });
    let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
    let response = campaigns
        .add_audience(authed(stream, api_key)?)
        .await
        .map_err(status_error)?
        .into_inner();
    reader.await.context("reading the ids")??;
    Ok((response.received, response.added))
}

pub(crate) async fn get(
    campaigns: &mut CampaignsClient<GrpcChannel>,
    api_key: &str,
    id: &str,
    slices: bool,
) -> Result<CampaignView> {
    Ok(campaigns
        .get_campaign(authed(
            GetCampaignRequest {
                campaign_id: id.to_owned(),
                slices,
            },
            api_key,
        )?)
        .await
        .map_err(status_error)?
        .into_inner())
}

pub(crate) async fn command_call(
    campaigns: &mut CampaignsClient<GrpcChannel>,
    api_key: &str,
    id: &str,
    verb: &str,
) -> Result<CampaignView> {
    let request = authed(
        CampaignRequest {
            campaign_id: id.to_owned(),
        },
        api_key,
    )?;
    let answer = match verb {
        "start" => campaigns.start_campaign(request).await,
        "pause" => campaigns.pause_campaign(request).await,
        "resume" => campaigns.resume_campaign(request).await,
        _ => campaigns.cancel_campaign(request).await,
    };
    Ok(answer.map_err(status_error)?.into_inner())
}

/// Follows a campaign to its end: a progress bar on a terminal, a line every few seconds
/// otherwise.
pub(crate) async fn watch(
    campaigns: &mut CampaignsClient<GrpcChannel>,
    api_key: &str,
    id: &str,
    print_end: bool,
) -> Result<()> {
    let mut stream = campaigns
        .watch_campaign(authed(
            WatchCampaignRequest {
                campaign_id: id.to_owned(),
                interval_ms: 500,
            },
            api_key,
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    let terminal = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::new(0);
    if terminal {
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:30} {pos:>8}/{len:<8} {per_sec:>9} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut last_line = std::time::Instant::now() - Duration::from_secs(60);
    let mut last: Option<CampaignView> = None;
    while let Some(view) = stream.next().await {
        let view = view.map_err(status_error)?;
        let funnel = view.funnel.clone().unwrap_or_default();
        let processed = funnel.planned.saturating_sub(funnel.remaining);
        bar.set_length(funnel.planned);
        bar.set_position(processed);
        bar.set_message(state_name(view.state()).to_owned());
        if !terminal && last_line.elapsed() >= Duration::from_secs(2) {
            eprintln!("{}", state_line(&view));
            last_line = std::time::Instant::now();
        }
        last = Some(view);
    }
    bar.finish_and_clear();
    if let Some(view) = last.filter(|_| print_end) {
        print_view(&view);
    }
    Ok(())
}

fn state_name(state: CampaignState) -> &'static str {
    match state {
        CampaignState::Draft => "draft",
        CampaignState::Scheduled => "scheduled",
        CampaignState::Running => "running",
        CampaignState::Paused => "paused",
        CampaignState::Completed => "completed",
        CampaignState::Cancelled => "cancelled",
        CampaignState::Unspecified => "unknown",
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("{cut}…")
    }
}

/// `running  42,000/100,000 processed (credits_exhausted)`.
fn state_line(view: &CampaignView) -> String {
    let funnel = view.funnel.clone().unwrap_or_default();
    let processed = funnel.planned.saturating_sub(funnel.remaining);
    let mut line = format!(
        "{} {}  {processed}/{} processed",
        view.campaign_id,
        state_name(view.state()),
        funnel.planned
    );
    if !view.state_reason.is_empty() {
        line.push_str(&format!(" ({})", view.state_reason));
    }
    line
}

fn units(micros: u64) -> String {
    format!("{:.4}", micros as f64 / 1_000_000.0)
}

fn print_estimate(view: &CampaignView) {
    let Some(estimate) = &view.estimate else {
        return;
    };
    println!(
        "estimate: {} members, expected {} credits, worst case {} (from {} sampled)",
        estimate.audience,
        units(estimate.expected_micros),
        units(estimate.worst_micros),
        estimate.sample
    );
}

/// The funnel as an 80-column table.
pub(crate) fn print_view(view: &CampaignView) {
    let name = view.spec.as_ref().map_or("", |s| s.name.as_str());
    println!("{}  {}", view.campaign_id, truncate(name, 40));
    println!("{}", state_line(view));
    let f = view.funnel.clone().unwrap_or_default();
    println!(
        "  planned     {:>10}   held out   {:>10}",
        f.planned, f.held_out
    );
    println!(
        "  submitted   {:>10}   suppressed {:>10}",
        f.submitted, f.suppressed
    );
    println!(
        "  expired     {:>10}   cancelled  {:>10}",
        f.expired, f.cancelled
    );
    println!(
        "  remaining   {:>10}   failed     {:>10}",
        f.remaining, f.failed
    );
    for (reason, count) in &f.suppressed_by_reason {
        println!("    suppressed: {:<24} {count:>10}", truncate(reason, 24));
    }
    println!("  channel         sent  delivered       read    clicked  converted");
    for row in &f.channels {
        let channel = Channel::try_from(row.channel).unwrap_or_default();
        println!(
            "  {:<8} {:>10} {:>10} {:>10} {:>10} {:>10}",
            channel.as_str_name().to_ascii_lowercase(),
            row.sent,
            row.delivered,
            row.read,
            row.clicked,
            row.converted
        );
    }
    for variant in &view.variants {
        println!(
            "  variant {:<10} members {:>9}  converted {:>7} ({:.2}%, lift {:+.1}%)",
            truncate(&variant.variant, 10),
            variant.members,
            variant.converted,
            variant.conversion_rate * 100.0,
            variant.lift * 100.0
        );
    }
    if let Some(credits) = &view.credits {
        println!(
            "  credits: spent {}, held {}, reserved {}",
            units(credits.spent_micros),
            units(credits.held_micros),
            units(credits.reserved_micros)
        );
    }
}

fn view_json(view: &CampaignView) -> serde_json::Value {
    let f = view.funnel.clone().unwrap_or_default();
    let credits = view.credits.unwrap_or_default();
    serde_json::json!({
        "campaign_id": view.campaign_id,
        "state": state_name(view.state()),
        "state_reason": view.state_reason,
        "planned": f.planned,
        "held_out": f.held_out,
        "suppressed": f.suppressed,
        "suppressed_by_reason": f.suppressed_by_reason,
        "submitted": f.submitted,
        "expired": f.expired,
        "cancelled": f.cancelled,
        "remaining": f.remaining,
        "sent": f.sent,
        "delivered": f.delivered,
        "failed": f.failed,
        "converted": f.converted,
        "spent_micros": credits.spent_micros,
        "held_micros": credits.held_micros,
        "reserved_micros": credits.reserved_micros,
    })
}
