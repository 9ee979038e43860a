//! # journeys: `herald journey …`
//!
//! Owns the commands (create from a journey file — see `journey_file` — get, list, pause,
//! resume, archive) and how a journey is printed (80 columns). Talks to a node's public API
//! only.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use clap::Subcommand;
use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::{
    CreateJourneyRequest, JourneyRequest, JourneyState, JourneyView, ListJourneysRequest,
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

fn print_view(view: &JourneyView) {
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
            Some(Kind::Wait(wait)) if wait.until_local_time.is_empty() => {
                format!("wait {} s", wait.duration_s)
            }
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
}
