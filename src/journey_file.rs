//! # journey_file: the journey file of `herald journey create --file`
//!
//! Owns the TOML form of a journey (`deploy/examples/journey.toml` documents every key): its
//! types, with unknown keys refused and named, and their translation into the API's
//! `JourneySpec` (durations such as `30d`, operator and exit names). Content, waterfalls,
//! quiet hours and conditions are written as in a campaign file (`campaign_file`). The API
//! validates the result again, naming `spec.` fields. Must never talk to a node.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use herald_proto::v1::{
    BranchStep, ExitKind, JourneyEntry, JourneyEvent, JourneyExit, JourneySpec, JourneyStep,
    SendStep, WaitStep, journey_step::Kind,
};
use serde::Deserialize;

use crate::campaign_file::{
    ClassName, ConditionFile, ContentFile, QuietFile, StepFile, conditions, content, quiet_hours,
    waterfall,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JourneyFile {
    name: String,
    #[serde(default)]
    class: ClassName,
    #[serde(default)]
    topic: String,
    #[serde(default)]
    events: Vec<EventFile>,
    entry: EntryFile,
    steps: Vec<StepEntryFile>,
    #[serde(default)]
    exits: Vec<ExitFile>,
    /// Absent = a person enters at most once.
    reentry_cooldown: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    name: String,
    #[serde(default)]
    properties: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryFile {
    event: Option<String>,
    #[serde(default)]
    segment: Vec<ConditionFile>,
    /// How often the segment is evaluated ("1d").
    every: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StepEntryFile {
    name: String,
    send: Option<SendFile>,
    /// A duration ("30d").
    wait: Option<String>,
    /// "HH:MM" in the person's zone.
    wait_until: Option<String>,
    branch: Option<BranchFile>,
    next: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SendFile {
    content: ContentFile,
    #[serde(default)]
    waterfall: Vec<StepFile>,
    #[serde(default)]
    cost_order: bool,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    quiet_hours: Option<QuietFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BranchFile {
    conditions: Vec<ConditionFile>,
    then: String,
    otherwise: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExitFile {
    /// converted, clicked, replied, opted_out, erased, event.
    on: String,
    event: Option<String>,
}

/// Seconds of a duration such as `90s`, `30m`, `6h`, `30d` (0 and long ones pass: the API
/// says what is allowed, naming the field).
fn seconds(field: &str, text: &str) -> Result<u64> {
    let text = text.trim();
    let parsed = text.char_indices().last().and_then(|(at, unit)| {
        let number: u64 = text[..at].parse().ok()?;
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3_600,
            'd' => 86_400,
            _ => return None,
        };
        number.checked_mul(scale)
    });
    parsed.ok_or_else(|| anyhow!("{field}: {text:?} is not a duration such as 90s, 30m, 6h, 30d"))
}

fn exit_kind(field: &str, name: &str) -> Result<ExitKind> {
    Ok(match name {
        "converted" => ExitKind::ExitConverted,
        "clicked" => ExitKind::ExitClicked,
        "replied" => ExitKind::ExitReplied,
        "opted_out" => ExitKind::ExitOptedOut,
        "erased" => ExitKind::ExitErased,
        "event" => ExitKind::ExitEvent,
        other => bail!(
            "{field}: {other:?} is not an exit (converted, clicked, replied, opted_out, erased, event)"
        ),
    })
}

/// A journey file's spec.
pub(crate) fn read_file(path: &Path) -> Result<JourneySpec> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: JourneyFile =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    to_spec(file)
}

fn to_step(index: usize, step: StepEntryFile) -> Result<JourneyStep> {
    let at = format!("steps[{index}]");
    let kinds = [
        step.send.is_some(),
        step.wait.is_some(),
        step.wait_until.is_some(),
        step.branch.is_some(),
    ];
    if kinds.iter().filter(|set| **set).count() != 1 {
        bail!("{at}: needs exactly one of send, wait, wait_until, branch");
    }
    let kind = if let Some(send) = step.send {
        Kind::Send(SendStep {
            content: Some(content(send.content)),
            waterfall: waterfall(&format!("{at}.send.waterfall"), send.waterfall)?,
            cost_order: send.cost_order,
            variables: send.variables,
            quiet_hours: quiet_hours(send.quiet_hours),
        })
    } else if let Some(wait) = step.wait {
        Kind::Wait(WaitStep {
            duration_s: seconds(&format!("{at}.wait"), &wait)?,
            until_local_time: String::new(),
        })
    } else if let Some(until) = step.wait_until {
        Kind::Wait(WaitStep {
            duration_s: 0,
            until_local_time: until,
        })
    } else if let Some(branch) = step.branch {
        Kind::Branch(BranchStep {
            conditions: conditions(&format!("{at}.branch.conditions"), branch.conditions)?,
            then: branch.then,
            otherwise: branch.otherwise,
        })
    } else {
        bail!("{at}: needs exactly one of send, wait, wait_until, branch");
    };
    Ok(JourneyStep {
        name: step.name,
        kind: Some(kind),
        next: step.next.unwrap_or_default(),
    })
}

fn to_spec(file: JourneyFile) -> Result<JourneySpec> {
    let entry = JourneyEntry {
        event: file.entry.event.unwrap_or_default(),
        segment: conditions("entry.segment", file.entry.segment)?,
        every_s: match &file.entry.every {
            Some(text) => seconds("entry.every", text)?,
            None => 0,
        },
    };
    let steps = file
        .steps
        .into_iter()
        .enumerate()
        .map(|(index, step)| to_step(index, step))
        .collect::<Result<Vec<_>>>()?;
    let mut exits = Vec::new();
    for (index, exit) in file.exits.into_iter().enumerate() {
        exits.push(JourneyExit {
            kind: exit_kind(&format!("exits[{index}].on"), &exit.on)? as i32,
            event: exit.event.unwrap_or_default(),
        });
    }
    Ok(JourneySpec {
        name: file.name,
        class: file.class.class() as i32,
        topic: file.topic,
        events: file
            .events
            .into_iter()
            .map(|e| JourneyEvent {
                name: e.name,
                properties: e.properties,
            })
            .collect(),
        entry: Some(entry),
        steps,
        exits,
        reentry_cooldown_s: match &file.reentry_cooldown {
            Some(text) => seconds("reentry_cooldown", text)?,
            None => 0,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_reads_and_passes_validation() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/journey.toml");
        let mut spec = read_file(&path).expect("the example is a valid journey file");
        assert_eq!(spec.name, "Win-back 30/60/90");
        assert_eq!(spec.steps.len(), 7);
        herald_node::journey::spec::validate(&mut spec, 64 * 1024)
            .expect("the example passes the API's validation");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let read = |text: &str| -> String {
            match toml::from_str::<JourneyFile>(text) {
                Err(e) => e.to_string(),
                Ok(file) => match to_spec(file) {
                    Err(e) => e.to_string(),
                    Ok(_) => String::new(),
                },
            }
        };
        let base = "name = \"x\"\n[entry]\nevent = \"e\"\n";
        let step = "[[steps]]\nname = \"s\"\n";
        assert!(read(&format!("{base}{step}wait = \"1d\"\n")).is_empty());
        assert!(read(&format!("colour = 1\n{base}{step}wait = \"1d\"\n")).contains("colour"));
        assert!(read(&format!("{base}{step}wait = \"a month\"\n")).contains("steps[0].wait"));
        assert!(
            read(&format!(
                "{base}{step}wait = \"1d\"\nwait_until = \"10:00\"\n"
            ))
            .contains("steps[0]: needs exactly one")
        );
        assert!(
            read(&format!(
                "{base}{step}wait = \"1d\"\n[[exits]]\non = \"bought\"\n"
            ))
            .contains("exits[0].on")
        );
    }
}
