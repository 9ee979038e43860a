//! # campaigns: `herald campaign …` — a campaign file, its commands, its live progress
//!
//! Owns the campaign file (TOML, `deploy/examples/campaign.toml` documents every key; unknown
//! keys are refused and named) and its translation into the API's `CampaignSpec`, the upload
//! of its list (streamed in chunks of 10,000 ids, never held whole), and the commands: create,
//! start, pause, resume, cancel, status, watch (a live progress bar and the funnel), list and
//! member. Talks to a node's public API only; must never print a contact point.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use futures::StreamExt;
use herald_proto::v1::campaigns_client::CampaignsClient;
use herald_proto::v1::{
    Audience, AudienceChunk, CampaignRequest, CampaignSpec, CampaignState, CampaignView, Channel,
    ConditionOp, Content, CreateCampaignRequest, EmailContent, GetCampaignMemberRequest,
    GetCampaignRequest, ListCampaignsRequest, MessageClass, Pace, PushContent, QuietHoursOverride,
    Schedule, SegmentCondition, SendWindow, SmsContent, SuccessCondition, Variant,
    WatchCampaignRequest, WaterfallStep,
};
use serde::Deserialize;
use tonic::transport::Channel as GrpcChannel;

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

// ---- The campaign file ------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CampaignFile {
    name: String,
    #[serde(default)]
    class: ClassName,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    tag: String,
    content: ContentFile,
    #[serde(default)]
    waterfall: Vec<StepFile>,
    #[serde(default)]
    cost_order: bool,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    quiet_hours: Option<QuietFile>,
    audience: AudienceFile,
    schedule: Option<ScheduleFile>,
    pace: Option<PaceFile>,
    #[serde(default)]
    variants: Vec<VariantFile>,
    #[serde(default)]
    holdout_percent: f64,
    /// RFC 3339.
    end_by: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ClassName {
    #[default]
    Marketing,
    Transactional,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentFile {
    push: Option<PushFile>,
    email: Option<EmailFile>,
    sms: Option<SmsFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PushFile {
    #[serde(default)]
    title: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailFile {
    subject: String,
    #[serde(default)]
    text: String,
    #[serde(default)]
    html: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SmsFile {
    text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepFile {
    channel: String,
    /// accepted (default), delivered, read.
    success: Option<String>,
    /// How long to wait for the success condition ("2h", "90s").
    timeout: Option<String>,
    provider_account: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuietFile {
    start: String,
    end: String,
    #[serde(default)]
    no_weekend: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AudienceFile {
    /// A file of recipient ids, one per line (relative to the campaign file).
    list: Option<PathBuf>,
    #[serde(default)]
    segment: Vec<ConditionFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionFile {
    field: String,
    op: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScheduleFile {
    start_at: Option<String>,
    local_time: Option<String>,
    #[serde(default)]
    windows: Vec<WindowFile>,
    default_time_zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    start: String,
    end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PaceFile {
    per_second: Option<u32>,
    spread_over: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct VariantFile {
    name: String,
    weight: u32,
    content: Option<ContentFile>,
}

fn rfc3339(field: &str, text: &str) -> Result<i64> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|e| anyhow!("{field}: {text:?} is not an RFC 3339 time ({e})"))
}

fn duration_ms(field: &str, text: &str) -> Result<i64> {
    herald_node::campaign::plan::parse_duration(text)
        .ok_or_else(|| anyhow!("{field}: {text:?} is not a duration such as 90s, 30m, 6h, 7d"))
}

fn channel(field: &str, name: &str) -> Result<Channel> {
    match name {
        "push" => Ok(Channel::Push),
        "email" => Ok(Channel::Email),
        "sms" => Ok(Channel::Sms),
        other => bail!("{field}: {other:?} is not a channel (push, email, sms)"),
    }
}

fn op(field: &str, name: &str) -> Result<ConditionOp> {
    Ok(match name {
        "equals" => ConditionOp::Equals,
        "not_equals" => ConditionOp::NotEquals,
        "in" => ConditionOp::In,
        "exists" => ConditionOp::Exists,
        "not_exists" => ConditionOp::NotExists,
        "older_than" => ConditionOp::OlderThan,
        "within" => ConditionOp::Within,
        other => bail!(
            "{field}: {other:?} is not an operator (equals, not_equals, in, exists, not_exists, older_than, within)"
        ),
    })
}

fn content(file: ContentFile) -> Content {
    Content {
        push: file.push.map(|p| PushContent {
            title: p.title,
            body: p.body,
            data: p.data,
        }),
        email: file.email.map(|e| EmailContent {
            subject: e.subject,
            text_body: e.text,
            html_body: e.html,
        }),
        sms: file.sms.map(|s| SmsContent { text: s.text }),
    }
}

/// A campaign file's spec, and the path of its list (if any), resolved next to the file.
fn read_file(path: &Path) -> Result<(CampaignSpec, Option<PathBuf>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: CampaignFile =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    to_spec(file, base)
}

fn to_spec(file: CampaignFile, base: &Path) -> Result<(CampaignSpec, Option<PathBuf>)> {
    let mut waterfall = Vec::new();
    for (index, step) in file.waterfall.into_iter().enumerate() {
        let at = |name: &str| format!("waterfall[{index}].{name}");
        let success = match step.success.as_deref() {
            None | Some("accepted") => SuccessCondition::Accepted,
            Some("delivered") => SuccessCondition::Delivered,
            Some("read") => SuccessCondition::Read,
            Some(other) => bail!(
                "{}: {other:?} is not a success condition (accepted, delivered, read)",
                at("success")
            ),
        };
        let timeout_ms = match &step.timeout {
            Some(text) => u32::try_from(duration_ms(&at("timeout"), text)?)
                .map_err(|_| anyhow!("{}: too long", at("timeout")))?,
            None => 0,
        };
        waterfall.push(WaterfallStep {
            channel: channel(&at("channel"), &step.channel)? as i32,
            success: success as i32,
            timeout_ms,
            provider_account: step.provider_account.unwrap_or_default(),
        });
    }
    let mut segment = Vec::new();
    for (index, condition) in file.audience.segment.into_iter().enumerate() {
        segment.push(SegmentCondition {
            op: op(&format!("audience.segment[{index}].op"), &condition.op)? as i32,
            field: condition.field,
            values: condition.values,
        });
    }
    let list = file.audience.list.map(|l| base.join(l));
    let schedule = match file.schedule {
        Some(s) => Some(Schedule {
            start_at_unix_ms: match &s.start_at {
                Some(text) => rfc3339("schedule.start_at", text)?,
                None => 0,
            },
            local_time: s.local_time.unwrap_or_default(),
            windows: s
                .windows
                .into_iter()
                .map(|w| SendWindow {
                    start: w.start,
                    end: w.end,
                })
                .collect(),
            default_time_zone: s.default_time_zone.unwrap_or_default(),
        }),
        None => None,
    };
    let pace = match file.pace {
        Some(PaceFile {
            per_second,
            spread_over,
        }) => Some(Pace {
            per_second: per_second.unwrap_or(0),
            spread_over_s: match &spread_over {
                Some(text) => (duration_ms("pace.spread_over", text)? / 1000) as u64,
                None => 0,
            },
        }),
        None => None,
    };
    let spec = CampaignSpec {
        name: file.name,
        class: match file.class {
            ClassName::Marketing => MessageClass::Marketing,
            ClassName::Transactional => MessageClass::Transactional,
        } as i32,
        topic: file.topic,
        content: Some(content(file.content)),
        waterfall,
        cost_order: file.cost_order,
        variables: file.variables,
        quiet_hours: file.quiet_hours.map(|q| QuietHoursOverride {
            start: q.start,
            end: q.end,
            no_weekend: q.no_weekend,
            disabled: false,
        }),
        tag: file.tag,
        audience: Some(Audience {
            list: list.is_some(),
            segment,
        }),
        schedule,
        pace,
        variants: file
            .variants
            .into_iter()
            .map(|v| Variant {
                name: v.name,
                weight: v.weight,
                content: v.content.map(content),
            })
            .collect(),
        holdout_percent: file.holdout_percent,
        end_by_unix_ms: match &file.end_by {
            Some(text) => rfc3339("end_by", text)?,
            None => 0,
        },
    };
    Ok((spec, list))
}

// ---- Commands ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_reads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/campaign.toml");
        let (spec, list) = read_file(&path).expect("the example is a valid campaign file");
        assert_eq!(spec.name, "Win-back, December");
        assert!(list.is_some_and(|l| l.ends_with("audience.txt")));
        assert!(spec.pace.is_some());
        assert_eq!(spec.variants.len(), 2);
        let mut spec = spec;
        herald_node::campaign::spec::validate(&mut spec, 64 * 1024, 0)
            .expect("the example passes the API's validation");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let read = |text: &str| -> String {
            let file: Result<CampaignFile, _> = toml::from_str(text);
            match file {
                Err(e) => e.to_string(),
                Ok(file) => match to_spec(file, Path::new(".")) {
                    Err(e) => e.to_string(),
                    Ok(_) => String::new(),
                },
            }
        };
        let base = "name = \"x\"\n[content.sms]\ntext = \"t\"\n[audience]\nlist = \"l.txt\"\n";
        assert!(read(base).is_empty());
        assert!(read(&format!("colour = 1\n{base}")).contains("colour"));
        assert!(
            read(&format!("{base}[pace]\nspread_over = \"6 hours\"\n"))
                .contains("pace.spread_over")
        );
        assert!(read(&format!("end_by = \"tomorrow\"\n{base}")).contains("end_by"));
        assert!(
            read(&format!("{base}[[waterfall]]\nchannel = \"fax\"\n"))
                .contains("waterfall[0].channel")
        );
        assert!(
            read(&format!(
                "{base}[[audience.segment]]\nfield = \"country\"\nop = \"like\"\n"
            ))
            .contains("audience.segment[0].op")
        );
    }
}
