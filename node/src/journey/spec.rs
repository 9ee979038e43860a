//! A journey's definition, checked field by field before anything is stored (pure).
//!
//! Owns every rule that rejects a `JourneySpec`: its events, its entry, each step (a send is
//! checked exactly as a single message is, under `spec.steps[i].send`), the step graph (every
//! step reachable from the first, no loop, every target named), its exits and its re-entry.
//! Every error is `INVALID_ARGUMENT` naming the field. Fills in the defaults (each send's
//! waterfall, the segment's `every_s`). Must never touch the store or the clock.

use std::collections::{BTreeMap, HashMap, HashSet};

use herald_proto::error::Error as Invalid;
use herald_proto::v1::{
    Channel, ConditionOp, ExitKind, JourneySpec, JourneyStep, MessageRequest, SegmentCondition,
    WaterfallStep, journey_step::Kind,
};

use crate::campaign::plan::{Segment, check_condition};
use crate::campaign::spec::{check_count, check_name, judge_templates};
use crate::content::template::{self, TemplateErrorKind};
use crate::policy::quiet_hours;

/// Most steps, events, properties per event, exits.
pub const STEPS_MAX: usize = 50;
pub const EVENTS_MAX: usize = 32;
pub const PROPERTIES_MAX: usize = 32;
pub const EXITS_MAX: usize = 16;
/// Longest wait, and longest re-entry cool-down: 400 days, in seconds.
pub const WAIT_MAX_S: u64 = 400 * 86_400;
/// How often a segment entry may be evaluated, and the default (daily).
pub const EVERY_MIN_S: u64 = 3_600;
pub const EVERY_MAX_S: u64 = 30 * 86_400;
pub const EVERY_DEFAULT_S: u64 = 86_400;
/// The target that ends a person's journey.
pub const END: &str = "end";
/// Template variables an entry event's properties become: `event_<property>`.
pub const EVENT_VAR_PREFIX: &str = "event_";
/// What a branch may ask about the journey's last sent message.
pub const ENGAGEMENTS: [&str; 5] = ["delivered", "read", "clicked", "converted", "replied"];

/// An event's or property's name: a lowercase letter, then lowercase letters, digits, `_`.
pub fn is_event_name(name: &str) -> bool {
    name.len() <= 64
        && name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn is_step_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name != END
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
}

/// The message a send step sends, as a single message would carry it (without recipient).
pub fn message_of(spec: &JourneySpec, step: &herald_proto::v1::SendStep) -> MessageRequest {
    MessageRequest {
        recipient_id: String::new(),
        idempotency_key: String::new(),
        class: spec.class,
        content: step.content.clone(),
        waterfall: step.waterfall.clone(),
        campaign_id: String::new(),
        cost_order: step.cost_order,
        variables: step.variables.clone(),
        topic: spec.topic.clone(),
        quiet_hours: step.quiet_hours.clone(),
        tag: String::new(),
        fall_back_when_paused: false,
    }
}

/// Checks `spec` and fills in its defaults.
pub fn validate(spec: &mut JourneySpec, max_message_bytes: usize) -> Result<(), Invalid> {
    check_name(&spec.name)?;
    let events = check_events(spec)?;
    check_entry(spec, &events)?;
    let targets = check_steps(spec, &events, max_message_bytes)?;
    check_graph(spec, &targets)?;
    check_exits(spec, &events)?;
    if spec.reentry_cooldown_s > WAIT_MAX_S {
        return Err(Invalid::invalid(
            "spec.reentry_cooldown_s",
            format!(
                "is {} s, at most {WAIT_MAX_S} (400 days; 0 = never again)",
                spec.reentry_cooldown_s
            ),
        ));
    }
    Ok(())
}

/// The journey's events by name, with their properties.
fn check_events(spec: &JourneySpec) -> Result<HashMap<String, Vec<String>>, Invalid> {
    check_count("spec.events", spec.events.len(), EVENTS_MAX)?;
    let mut events = HashMap::new();
    for (index, event) in spec.events.iter().enumerate() {
        let field = |name: &str| format!("spec.events[{index}].{name}");
        if !is_event_name(&event.name) {
            return Err(Invalid::invalid(
                field("name"),
                "1..=64 of [a-z0-9_], starting with a letter",
            ));
        }
        check_count(&field("properties"), event.properties.len(), PROPERTIES_MAX)?;
        let mut seen = HashSet::new();
        for (at, property) in event.properties.iter().enumerate() {
            if !is_event_name(property) {
                return Err(Invalid::invalid(
                    format!("spec.events[{index}].properties[{at}]"),
                    "1..=64 of [a-z0-9_], starting with a letter",
                ));
            }
            if !seen.insert(property.as_str()) {
                return Err(Invalid::invalid(
                    format!("spec.events[{index}].properties[{at}]"),
                    format!("repeats {property:?}"),
                ));
            }
        }
        if events
            .insert(event.name.clone(), event.properties.clone())
            .is_some()
        {
            return Err(Invalid::invalid(
                field("name"),
                format!("repeats {:?}", event.name),
            ));
        }
    }
    Ok(events)
}

fn check_entry(
    spec: &mut JourneySpec,
    events: &HashMap<String, Vec<String>>,
) -> Result<(), Invalid> {
    let Some(entry) = spec.entry.as_mut() else {
        return Err(Invalid::invalid(
            "spec.entry",
            "is required: an event, or a segment evaluated on a schedule",
        ));
    };
    match (entry.event.is_empty(), entry.segment.is_empty()) {
        (true, true) => {
            return Err(Invalid::invalid(
                "spec.entry",
                "is empty: set an event, or a segment",
            ));
        }
        (false, false) => {
            return Err(Invalid::invalid(
                "spec.entry",
                "an event or a segment, not both",
            ));
        }
        (false, true) => {
            if !events.contains_key(&entry.event) {
                return Err(Invalid::invalid(
                    "spec.entry.event",
                    format!(
                        "{:?} is not one of the journey's events (spec.events)",
                        entry.event
                    ),
                ));
            }
            if entry.every_s != 0 {
                return Err(Invalid::invalid(
                    "spec.entry.every_s",
                    "applies to a segment entry only",
                ));
            }
        }
        (true, false) => {
            Segment::compile("spec.entry.segment", &entry.segment)?;
            if entry.every_s == 0 {
                entry.every_s = EVERY_DEFAULT_S;
            }
            if !(EVERY_MIN_S..=EVERY_MAX_S).contains(&entry.every_s) {
                return Err(Invalid::invalid(
                    "spec.entry.every_s",
                    format!(
                        "is {} s, must be {EVERY_MIN_S}..={EVERY_MAX_S} (1 hour to 30 days)",
                        entry.every_s
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Where each step may go next, by index (`None` = the end).
type Targets = Vec<Vec<(String, Option<usize>)>>;

fn check_steps(
    spec: &mut JourneySpec,
    events: &HashMap<String, Vec<String>>,
    max_message_bytes: usize,
) -> Result<Targets, Invalid> {
    if spec.steps.is_empty() {
        return Err(Invalid::invalid(
            "spec.steps",
            "is empty: at least one send",
        ));
    }
    check_count("spec.steps", spec.steps.len(), STEPS_MAX)?;
    let mut by_name = HashMap::new();
    for (index, step) in spec.steps.iter().enumerate() {
        if !is_step_name(&step.name) {
            return Err(Invalid::invalid(
                format!("spec.steps[{index}].name"),
                "1..=32 of letters, digits, `-`, `_`, not \"end\"",
            ));
        }
        if by_name.insert(step.name.clone(), index).is_some() {
            return Err(Invalid::invalid(
                format!("spec.steps[{index}].name"),
                format!("repeats {:?}", step.name),
            ));
        }
    }
    // Entry-event properties a send may print, with stand-in values.
    let event_vars: BTreeMap<String, String> = spec
        .entry
        .as_ref()
        .and_then(|entry| events.get(&entry.event))
        .into_iter()
        .flatten()
        .map(|property| (format!("{EVENT_VAR_PREFIX}{property}"), "x".to_owned()))
        .collect();
    let resolve = |field: String, target: &str| -> Result<(String, Option<usize>), Invalid> {
        if target == END {
            return Ok((field, None));
        }
        match by_name.get(target) {
            Some(index) => Ok((field, Some(*index))),
            None => Err(Invalid::invalid(
                field,
                format!("{target:?} is not a step of this journey (nor \"end\")"),
            )),
        }
    };
    let count = spec.steps.len();
    let mut targets = Vec::with_capacity(count);
    let mut sends = 0;
    let journey = spec.clone();
    for (index, step) in spec.steps.iter_mut().enumerate() {
        let at = format!("spec.steps[{index}]");
        let following = || (index + 1 < count).then_some(index + 1);
        let next = |step: &JourneyStep| -> Result<Vec<(String, Option<usize>)>, Invalid> {
            if step.next.is_empty() {
                Ok(vec![(format!("{at}.next"), following())])
            } else {
                Ok(vec![resolve(format!("{at}.next"), &step.next)?])
            }
        };
        let step_targets = match step.kind.as_mut() {
            None => {
                return Err(Invalid::invalid(at, "needs one of send, wait, branch"));
            }
            Some(Kind::Send(send)) => {
                sends += 1;
                let prefix = format!("{at}.send");
                if send.waterfall.is_empty() {
                    send.waterfall = waterfall_for(send.content.as_ref());
                }
                let mut message = message_of(&journey, send);
                message.recipient_id = "journey".into();
                crate::validate::message(&prefix, &mut message, max_message_bytes)?;
                send.waterfall = message.waterfall;
                if let Some(content) = &send.content {
                    check_templates(&prefix, content, &send.variables, &event_vars)?;
                }
                next(step)?
            }
            Some(Kind::Wait(wait)) => {
                match (wait.duration_s, wait.until_local_time.is_empty()) {
                    (0, true) => {
                        return Err(Invalid::invalid(
                            format!("{at}.wait.duration_s"),
                            format!(
                                "is 0: a wait is 1..={WAIT_MAX_S} s (1 second to 400 days), or until_local_time"
                            ),
                        ));
                    }
                    (duration, true) if duration > WAIT_MAX_S => {
                        return Err(Invalid::invalid(
                            format!("{at}.wait.duration_s"),
                            format!("is {duration} s, at most {WAIT_MAX_S} (400 days)"),
                        ));
                    }
                    (_, true) => {}
                    (0, false) => {
                        quiet_hours::time_of_day(&wait.until_local_time).map_err(|e| {
                            Invalid::invalid(format!("{at}.wait.until_local_time"), e)
                        })?;
                    }
                    _ => {
                        return Err(Invalid::invalid(
                            format!("{at}.wait"),
                            "duration_s or until_local_time, not both",
                        ));
                    }
                }
                next(step)?
            }
            Some(Kind::Branch(branch)) => {
                if !step.next.is_empty() {
                    return Err(Invalid::invalid(
                        format!("{at}.next"),
                        "a branch goes to its then or otherwise step, not next",
                    ));
                }
                if branch.conditions.is_empty() {
                    return Err(Invalid::invalid(
                        format!("{at}.branch.conditions"),
                        "is empty: at least one condition",
                    ));
                }
                for (j, condition) in branch.conditions.iter().enumerate() {
                    check_branch_condition(&format!("{at}.branch.conditions[{j}]"), condition)?;
                }
                let mut both = Vec::with_capacity(2);
                for (name, target) in [("then", &branch.then), ("otherwise", &branch.otherwise)] {
                    let field = format!("{at}.branch.{name}");
                    if target.is_empty() {
                        return Err(Invalid::invalid(
                            field,
                            "is required (a step's name, or \"end\")",
                        ));
                    }
                    both.push(resolve(field, target)?);
                }
                both
            }
        };
        targets.push(step_targets);
    }
    if sends == 0 {
        return Err(Invalid::invalid("spec.steps", "has no send step"));
    }
    Ok(targets)
}

/// A send's default waterfall: push → email → SMS, each channel the content has (a journey's
/// step often speaks on one channel only; a channel without content would be refused).
fn waterfall_for(content: Option<&herald_proto::v1::Content>) -> Vec<WaterfallStep> {
    let Some(content) = content else {
        return crate::validate::default_waterfall();
    };
    let has = |channel: Channel| match channel {
        Channel::Push => content.push.is_some(),
        Channel::Email => content.email.is_some(),
        Channel::Sms => content.sms.is_some(),
        _ => false,
    };
    let steps: Vec<WaterfallStep> = crate::validate::default_waterfall()
        .into_iter()
        .filter(|step| has(step.channel()))
        .collect();
    if steps.is_empty() {
        // No content at all: the message's own rules say what is missing.
        crate::validate::default_waterfall()
    } else {
        steps
    }
}

fn check_branch_condition(at: &str, condition: &SegmentCondition) -> Result<(), Invalid> {
    let Some(kind) = condition.field.trim().strip_prefix("engagement.") else {
        return check_condition(at, condition);
    };
    if !ENGAGEMENTS.contains(&kind) {
        return Err(Invalid::invalid(
            format!("{at}.field"),
            format!(
                "unknown engagement {kind:?} (one of {})",
                ENGAGEMENTS.join(", ")
            ),
        ));
    }
    match condition.op() {
        ConditionOp::Exists | ConditionOp::NotExists if condition.values.is_empty() => Ok(()),
        ConditionOp::Exists | ConditionOp::NotExists => Err(Invalid::invalid(
            format!("{at}.values"),
            "EXISTS and NOT_EXISTS take no values",
        )),
        _ => Err(Invalid::invalid(
            format!("{at}.op"),
            "engagement.<kind> takes EXISTS or NOT_EXISTS",
        )),
    }
}

fn check_templates(
    prefix: &str,
    content: &herald_proto::v1::Content,
    step_vars: &BTreeMap<String, String>,
    event_vars: &BTreeMap<String, String>,
) -> Result<(), Invalid> {
    let mut vars = event_vars.clone();
    vars.extend(step_vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    let checked = template::check(content, &vars);
    // `event_…` can only come from the entry event: a name it does not carry is a mistake in
    // the definition, not a person's missing attribute.
    if let Err(error) = &checked
        && let TemplateErrorKind::UndefinedVariable(name) = &error.kind
        && name.starts_with(EVENT_VAR_PREFIX)
    {
        return Err(Invalid::invalid(
            format!("{prefix}.{}", error.field()),
            format!("{name:?} is not a property of the entry event (spec.events[…].properties)"),
        ));
    }
    judge_templates(prefix, checked)
}

/// Every step reachable from the first; no step reached again on its own path.
fn check_graph(spec: &JourneySpec, targets: &Targets) -> Result<(), Invalid> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut marks = vec![Mark::New; targets.len()];
    // Depth-first from the first step, iteratively: (step, next target to look at).
    let mut path: Vec<(usize, usize)> = vec![(0, 0)];
    marks[0] = Mark::OnPath;
    while let Some((step, at)) = path.last_mut() {
        let step = *step;
        match targets[step].get(*at) {
            None => {
                marks[step] = Mark::Done;
                path.pop();
            }
            Some((field, target)) => {
                *at += 1;
                let Some(target) = *target else { continue };
                match marks[target] {
                    Mark::New => {
                        marks[target] = Mark::OnPath;
                        path.push((target, 0));
                    }
                    Mark::OnPath => {
                        return Err(Invalid::invalid(
                            field.clone(),
                            format!(
                                "goes back to step {:?}: a journey's steps form no loop",
                                spec.steps[target].name
                            ),
                        ));
                    }
                    Mark::Done => {}
                }
            }
        }
    }
    if let Some(index) = marks.iter().position(|mark| *mark == Mark::New) {
        return Err(Invalid::invalid(
            format!("spec.steps[{index}]"),
            format!(
                "step {:?} is unreachable from the first step",
                spec.steps[index].name
            ),
        ));
    }
    Ok(())
}

fn check_exits(spec: &JourneySpec, events: &HashMap<String, Vec<String>>) -> Result<(), Invalid> {
    check_count("spec.exits", spec.exits.len(), EXITS_MAX)?;
    let entry_event = spec.entry.as_ref().map_or("", |entry| entry.event.as_str());
    for (index, exit) in spec.exits.iter().enumerate() {
        let field = |name: &str| format!("spec.exits[{index}].{name}");
        match exit.kind() {
            ExitKind::Unspecified => {
                return Err(Invalid::invalid(
                    field("kind"),
                    "is required (converted, clicked, replied, opted_out, erased, event)",
                ));
            }
            ExitKind::ExitEvent => {
                if exit.event.is_empty() {
                    return Err(Invalid::invalid(
                        field("event"),
                        "is required with EXIT_EVENT",
                    ));
                }
                if !events.contains_key(&exit.event) {
                    return Err(Invalid::invalid(
                        field("event"),
                        format!(
                            "{:?} is not one of the journey's events (spec.events)",
                            exit.event
                        ),
                    ));
                }
                if exit.event == entry_event {
                    return Err(Invalid::invalid(
                        field("event"),
                        format!("{:?} is the entry event", exit.event),
                    ));
                }
            }
            _ if !exit.event.is_empty() => {
                return Err(Invalid::invalid(
                    field("event"),
                    "applies to EXIT_EVENT only",
                ));
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
