//! # journeys: `herald journey …`
//!
//! Owns the commands (create from a journey file — see `journey_file` — get with the funnel,
//! list, pause, resume, archive, report an event, a person's state) and how they are printed
//! (80 columns). Talks to a node's public API
//! only.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::{
    CreateJourneyRequest, JourneyFunnel, JourneyPerson, JourneyPersonRequest, JourneyPersonStatus,
    JourneyRequest, JourneyState, JourneyView, ListJourneysRequest, ReportEventRequest,
    journey_step::Kind,
};

use crate::journey_file::read_file;
use crate::status_error;
use crate::workload::{authed, connect};

#[derive(Subcommand)]
pub(crate) enum JourneyCommand {
    /// Create a journey from a file (see deploy/examples/journey.toml); prints its id.
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// A journey's state and steps.
    Get {
        id: String,
    },
    /// The tenant's journeys, newest first.
    List {
        /// Only those in this state (active, paused, archived).
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// No one enters and no step runs until it is resumed.
    Pause {
        id: String,
    },
    Resume {
        id: String,
    },
    /// End it for good: no one enters it any more.
    Archive {
        id: String,
    },
    /// Report an event about a person: they enter the journeys it starts and leave the ones
    /// it ends.
    Report {
        /// The person's recipient id.
        #[arg(long)]
        recipient: String,
        /// The event's name, as the journeys define it (e.g. cart_abandoned).
        #[arg(long)]
        event: String,
        /// A property of the event, NAME=VALUE (repeatable).
        #[arg(long = "property", value_parser = property)]
        properties: Vec<(String, String)>,
    },
    /// Where one person is in a journey: status, step, wait, what was sent.
    Person {
        id: String,
        recipient: String,
    },
}

fn property(text: &str) -> Result<(String, String)> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| anyhow!("{text:?} is not NAME=VALUE"))?;
    Ok((name.trim().to_owned(), value.to_owned()))
}

pub(crate) async fn run(addr: &str, api_key: &str, command: JourneyCommand) -> Result<()> {
    let mut journeys = JourneysClient::new(connect(addr).await?);
    let request = |id: String| authed(JourneyRequest { journey_id: id }, api_key);
    let view = match command {
        JourneyCommand::Create { file } => {
            let spec = read_file(&file)?;
            let view = journeys
                .create_journey(authed(CreateJourneyRequest { spec: Some(spec) }, api_key)?)
                .await
                .map_err(status_error)?
                .into_inner();
            println!("journey {} created", view.journey_id);
            view
        }
        JourneyCommand::Get { id } => journeys
            .get_journey(request(id)?)
            .await
            .map_err(status_error)?
            .into_inner(),
        JourneyCommand::List { state, limit } => {
            let state = match state.as_deref() {
                None => JourneyState::Unspecified,
                Some(name) => JourneyState::from_str_name(&format!(
                    "JOURNEY_STATE_{}",
                    name.to_ascii_uppercase()
                ))
                .ok_or_else(|| {
                    anyhow!("--state: {name:?} is not a state (active, paused, archived)")
                })?,
            };
            let list = journeys
                .list_journeys(authed(
                    ListJourneysRequest {
                        limit,
                        state: state as i32,
                    },
                    api_key,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            if list.journeys.is_empty() {
                println!("no journeys");
            }
            for view in &list.journeys {
                println!("{}", summary_line(view));
            }
            return Ok(());
        }
        JourneyCommand::Pause { id } => journeys
            .pause_journey(request(id)?)
            .await
            .map_err(status_error)?
            .into_inner(),
        JourneyCommand::Resume { id } => journeys
            .resume_journey(request(id)?)
            .await
            .map_err(status_error)?
            .into_inner(),
        JourneyCommand::Archive { id } => journeys
            .archive_journey(request(id)?)
            .await
            .map_err(status_error)?
            .into_inner(),
        JourneyCommand::Report {
            recipient,
            event,
            properties,
        } => {
            let answer = journeys
                .report_event(authed(
                    ReportEventRequest {
                        recipient_id: recipient,
                        event,
                        properties: properties.into_iter().collect(),
                    },
                    api_key,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            let list = |ids: &[String]| {
                if ids.is_empty() {
                    "none".to_owned()
                } else {
                    ids.join(", ")
                }
            };
            println!("entered: {}", list(&answer.entered));
            println!("exited:  {}", list(&answer.exited));
            return Ok(());
        }
        JourneyCommand::Person { id, recipient } => {
            let person = journeys
                .get_journey_person(authed(
                    JourneyPersonRequest {
                        journey_id: id,
                        recipient_id: recipient,
                    },
                    api_key,
                )?)
                .await
                .map_err(status_error)?
                .into_inner();
            print_person(&person);
            return Ok(());
        }
    };
    print_view(&view);
    Ok(())
}

fn state_name(view: &JourneyView) -> String {
    view.state()
        .as_str_name()
        .trim_start_matches("JOURNEY_STATE_")
        .to_ascii_lowercase()
}

/// One line per journey: id, state, name (cut to fit 80 columns).
fn summary_line(view: &JourneyView) -> String {
    let name = view.spec.as_ref().map_or("", |spec| spec.name.as_str());
    let name: String = name.chars().take(40).collect();
    format!("{}  {:<8}  {name}", view.journey_id, state_name(view))
}

pub(crate) fn print_view(view: &JourneyView) {
    println!("{}", summary_line(view));
    let Some(spec) = &view.spec else { return };
    if let Some(entry) = &spec.entry {
        if entry.event.is_empty() {
            println!(
                "  entry: segment of {} conditions, every {} s",
                entry.segment.len(),
                entry.every_s
            );
        } else {
            println!("  entry: event {}", entry.event);
        }
    }
    for step in &spec.steps {
        let what = match &step.kind {
            Some(Kind::Send(send)) => format!("send ({} waterfall steps)", send.waterfall.len()),
            Some(Kind::Wait(wait)) if wait.until_local_time.is_empty() => match wait.duration_s {
                s if s % 86_400 == 0 => format!("wait {} days", s / 86_400),
                s if s % 3_600 == 0 => format!("wait {} h", s / 3_600),
                s => format!("wait {s} s"),
            },
            Some(Kind::Wait(wait)) => format!("wait until {} local", wait.until_local_time),
            Some(Kind::Branch(branch)) => {
                format!(
                    "branch: then {}, otherwise {}",
                    branch.then, branch.otherwise
                )
            }
            None => "?".into(),
        };
        let next = if step.next.is_empty() {
            String::new()
        } else {
            format!(" -> {}", step.next)
        };
        let line: String = format!("  {:<20} {what}{next}", step.name)
            .chars()
            .take(80)
            .collect();
        println!("{line}");
    }
    println!("  exits: {}", spec.exits.len());
    if let Some(funnel) = &view.funnel {
        print_funnel(funnel);
    }
}

fn print_funnel(funnel: &JourneyFunnel) {
    println!(
        "  entered {}  active {}  in wait {}  completed {}",
        funnel.entered, funnel.active, funnel.in_wait, funnel.completed
    );
    if !funnel.exited.is_empty() {
        let exits: Vec<String> = funnel
            .exited
            .iter()
            .map(|(reason, count)| format!("{reason} {count}"))
            .collect();
        let line: String = format!("  exited: {}", exits.join(", "))
            .chars()
            .take(80)
            .collect();
        println!("{line}");
    }
    println!(
        "  {:<18}{:>8}{:>8}{:>8}{:>10}{:>8}{:>10}{:>8}",
        "step", "reached", "waiting", "sent", "delivered", "clicked", "converted", "exited"
    );
    for step in &funnel.steps {
        let name: String = step.step.chars().take(18).collect();
        println!(
            "  {name:<18}{:>8}{:>8}{:>8}{:>10}{:>8}{:>10}{:>8}",
            step.reached,
            step.in_wait,
            step.sent,
            step.delivered,
            step.clicked,
            step.converted,
            step.exited
        );
    }
}

fn print_person(person: &JourneyPerson) {
    let status = person
        .status()
        .as_str_name()
        .trim_start_matches("JOURNEY_PERSON_")
        .to_ascii_lowercase();
    println!(
        "{} in {}: {status} at {} (entry {})",
        person.recipient_id, person.journey_id, person.step, person.entry
    );
    if person.status() == JourneyPersonStatus::JourneyPersonExited {
        let kind = person
            .exit_kind()
            .as_str_name()
            .trim_start_matches("EXIT_")
            .to_ascii_lowercase();
        println!("  ended by: {kind} {}", person.exit_event);
    }
    if person.wait_due_unix_ms > 0 {
        println!("  waits until {}", time_text(person.wait_due_unix_ms));
    }
    for sent in &person.sent {
        let what = if sent.refused.is_empty() {
            format!("message {}", sent.message_id)
        } else {
            let reason: String = sent.refused.chars().take(40).collect();
            format!("refused: {reason}")
        };
        println!("  {:<18} {what}", sent.step);
    }
}

/// A policy-clock time as UTC text (the clock may run ahead of the wall clock in demos).
fn time_text(unix_ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(unix_ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| unix_ms.to_string())
}
