//! # journey::flow: a person's way through a journey, as pure decisions
//!
//! Owns the rules of walking a (validated) definition: which step follows which, when a wait
//! ends, who may enter (re-entry cool-down), which signal ends whose journey, the message a
//! send step makes, and the funnel counts each transition adds. Must never read the store or a
//! clock: the walker hands in the time and the facts, and writes what this
//! module decides.

use std::collections::BTreeMap;

use chrono::{NaiveTime, TimeZone};
use chrono_tz::Tz;
use herald_proto::v1::{
    ExitKind, JourneyPerson, JourneyPersonStatus, JourneySpec, JourneyStep, MessageRequest,
    QuietHoursOverride, SendStep, WaitStep, journey_step,
};

/// The target that ends a person's journey.
pub const END: &str = "end";

/// What the person's current step asks for.
#[derive(Debug)]
pub enum Action<'a> {
    Send(&'a SendStep),
    Wait(&'a WaitStep),
    Branch {
        conditions: &'a [herald_proto::v1::SegmentCondition],
        then: &'a str,
        otherwise: &'a str,
    },
    /// The step named in the state is not in the definition (cannot happen for a validated,
    /// immutable definition; treated as the end).
    Missing,
}

pub fn step_named<'a>(spec: &'a JourneySpec, name: &str) -> Option<(usize, &'a JourneyStep)> {
    spec.steps.iter().enumerate().find(|(_, s)| s.name == name)
}

/// What `step` asks for.
pub fn action<'a>(spec: &'a JourneySpec, step: &str) -> Action<'a> {
    let Some((_, step)) = step_named(spec, step) else {
        return Action::Missing;
    };
    match &step.kind {
        Some(journey_step::Kind::Send(send)) => Action::Send(send),
        Some(journey_step::Kind::Wait(wait)) => Action::Wait(wait),
        Some(journey_step::Kind::Branch(branch)) => Action::Branch {
            conditions: &branch.conditions,
            then: &branch.then,
            otherwise: &branch.otherwise,
        },
        None => Action::Missing,
    }
}

/// The step after a send or a wait (`None` = the end).
pub fn next_after(spec: &JourneySpec, step: &str) -> Option<String> {
    let (index, step) = step_named(spec, step)?;
    match step.next.as_str() {
        "" => spec.steps.get(index + 1).map(|s| s.name.clone()),
        END => None,
        name => Some(name.to_owned()),
    }
}

/// A branch target as a step (`None` = the end).
pub fn target(name: &str) -> Option<String> {
    (name != END && !name.is_empty()).then(|| name.to_owned())
}

/// The check a transition makes: it applies only when the stored state is the one it read.
pub fn token(person: &JourneyPerson) -> String {
    format!("{}:{}:{}", person.entry, person.status, person.step)
}

/// When a wait that starts at `now_ms` ends. A local time of day is the next such time in
/// `zone` strictly after `now_ms` (a time skipped by a DST change moves to the next day).
pub fn wait_due(wait: &WaitStep, now_ms: i64, zone: Tz) -> i64 {
    if wait.duration_s > 0 {
        let ms = i64::try_from(wait.duration_s)
            .unwrap_or(i64::MAX / 1000)
            .saturating_mul(1000);
        return now_ms.saturating_add(ms);
    }
    let Ok(time) = NaiveTime::parse_from_str(wait.until_local_time.trim(), "%H:%M") else {
        // Validation admits only HH:MM; a day is the safe reading of anything else.
        return now_ms.saturating_add(86_400_000);
    };
    let Some(now) = chrono::DateTime::from_timestamp_millis(now_ms) else {
        return now_ms.saturating_add(86_400_000);
    };
    let local_date = now.with_timezone(&zone).date_naive();
    for days in 0..=2 {
        let Some(date) = local_date.checked_add_days(chrono::Days::new(days)) else {
            break;
        };
        if let Some(at) = zone.from_local_datetime(&date.and_time(time)).earliest() {
            let at_ms = at.timestamp_millis();
            if at_ms > now_ms {
                return at_ms;
            }
        }
    }
    now_ms.saturating_add(86_400_000)
}

/// Whether a person whose earlier state is `prior` may enter now.
pub fn may_enter(spec: &JourneySpec, prior: Option<&JourneyPerson>, now_ms: i64) -> bool {
    let Some(prior) = prior else {
        return true;
    };
    if prior.status() == JourneyPersonStatus::JourneyPersonActive || spec.reentry_cooldown_s == 0 {
        return false;
    }
    let cooldown_ms = i64::try_from(spec.reentry_cooldown_s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    now_ms >= prior.entered_at_unix_ms.saturating_add(cooldown_ms)
}

/// The state of a person entering at the first step.
pub fn entered(
    spec: &JourneySpec,
    journey_id: &str,
    recipient_id: &str,
    prior: Option<&JourneyPerson>,
    properties: BTreeMap<String, String>,
    now_ms: i64,
) -> JourneyPerson {
    JourneyPerson {
        journey_id: journey_id.to_owned(),
        recipient_id: recipient_id.to_owned(),
        entry: prior.map_or(0, |p| p.entry) + 1,
        step: spec
            .steps
            .first()
            .map(|s| s.name.clone())
            .unwrap_or_default(),
        status: JourneyPersonStatus::JourneyPersonActive as i32,
        entered_at_unix_ms: now_ms,
        properties: properties.into_iter().collect(),
        ..Default::default()
    }
}

/// The idempotency key of a send step's message: one message per person, entry and step,
/// however often the step is walked (a retry, a wait firing twice on a new owner).
pub fn idempotency_key(person: &JourneyPerson, step: &str) -> String {
    format!(
        "{}{}:{}:{}:{step}",
        crate::validate::JOURNEY_KEY_PREFIX,
        person.journey_id,
        person.recipient_id,
        person.entry
    )
}

/// The journey and step of a journey message's idempotency key (`None` for other messages).
pub fn journey_of_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix(crate::validate::JOURNEY_KEY_PREFIX)?;
    let (journey, rest) = rest.split_once(':')?;
    let (_, step) = rest.rsplit_once(':')?;
    Some((journey, step))
}

/// The message a send step makes for the person.
pub fn message(
    spec: &JourneySpec,
    step: &str,
    send: &SendStep,
    person: &JourneyPerson,
) -> MessageRequest {
    let mut variables: BTreeMap<String, String> = person
        .properties
        .iter()
        .map(|(name, value)| {
            (
                format!("{}{name}", super::spec::EVENT_VAR_PREFIX),
                value.clone(),
            )
        })
        .collect();
    variables.extend(send.variables.iter().map(|(k, v)| (k.clone(), v.clone())));
    MessageRequest {
        recipient_id: person.recipient_id.clone(),
        idempotency_key: idempotency_key(person, step),
        class: spec.class,
        content: send.content.clone(),
        waterfall: send.waterfall.clone(),
        cost_order: send.cost_order,
        variables,
        topic: spec.topic.clone(),
        quiet_hours: send
            .quiet_hours
            .clone()
            .filter(|q| *q != QuietHoursOverride::default()),
        ..Default::default()
    }
}

/// Something that may end a person's journey.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitSignal {
    /// A message of the journey was converted or clicked.
    Converted,
    Clicked,
    /// The person wrote back.
    Replied,
    /// The person opted out (`topic` empty = of everything).
    OptedOut {
        topic: String,
    },
    Erased,
    /// A reported event.
    Event(String),
}

/// The reason an exit is counted and shown under, when `signal` ends a journey of `spec`.
pub fn exit_reason(spec: &JourneySpec, signal: &ExitSignal) -> Option<String> {
    let listed = |kind: ExitKind| spec.exits.iter().any(|e| e.kind() == kind);
    match signal {
        ExitSignal::Converted => listed(ExitKind::ExitConverted).then(|| "converted".into()),
        ExitSignal::Clicked => listed(ExitKind::ExitClicked).then(|| "clicked".into()),
        ExitSignal::Replied => listed(ExitKind::ExitReplied).then(|| "replied".into()),
        // Opting out of the journey's topic, or of everything, always ends it.
        ExitSignal::OptedOut { topic } => {
            (topic.is_empty() || *topic == spec.topic).then(|| "opted_out".into())
        }
        ExitSignal::Erased => Some("erased".into()),
        ExitSignal::Event(name) => spec
            .exits
            .iter()
            .any(|e| e.kind() == ExitKind::ExitEvent && e.event == *name)
            .then(|| format!("event:{name}")),
    }
}

/// The exit kind and event a reason stands for (what `JourneyPerson` shows).
pub fn exit_kind(reason: &str) -> (ExitKind, String) {
    match reason {
        "converted" => (ExitKind::ExitConverted, String::new()),
        "clicked" => (ExitKind::ExitClicked, String::new()),
        "replied" => (ExitKind::ExitReplied, String::new()),
        "opted_out" => (ExitKind::ExitOptedOut, String::new()),
        "erased" => (ExitKind::ExitErased, String::new()),
        other => (
            ExitKind::ExitEvent,
            other.strip_prefix("event:").unwrap_or(other).to_owned(),
        ),
    }
}

/// Funnel counter names (fields of `keys::journey::funnel`).
pub mod funnel {
    pub const ENTERED: &str = "entered";
    pub const ACTIVE: &str = "active";
    pub const IN_WAIT: &str = "in_wait";
    pub const COMPLETED: &str = "completed";

    pub fn exited(reason: &str) -> String {
        format!("x:{reason}")
    }
    pub fn reached(step: &str) -> String {
        format!("r:{step}")
    }
    pub fn waiting(step: &str) -> String {
        format!("w:{step}")
    }
    pub fn sent(step: &str) -> String {
        format!("s:{step}")
    }
    pub fn delivered(step: &str) -> String {
        format!("d:{step}")
    }
    pub fn clicked(step: &str) -> String {
        format!("k:{step}")
    }
    pub fn converted(step: &str) -> String {
        format!("c:{step}")
    }
    pub fn refused(step: &str) -> String {
        format!("f:{step}")
    }
    pub fn exited_at(step: &str) -> String {
        format!("e:{step}")
    }
    /// Sends of a step per channel: `sc:<step>:<channel>`.
    pub fn sent_on(step: &str, channel: &str) -> String {
        format!("sc:{step}:{channel}")
    }
    pub const SENT_ON_PREFIX: &str = "sc:";
    pub fn suppressed(step: &str) -> String {
        format!("q:{step}")
    }
}

/// Whether a message's log shows it delivered (its status after an event is `Delivered`
/// from the event that delivered it on).
pub fn delivered(log: &[herald_proto::v1::Event]) -> bool {
    log.iter()
        .any(|e| e.status() == herald_proto::v1::MessageStatus::Delivered)
}

/// What appending `events` to a journey message's log adds to its journey's funnel (`None`
/// for other messages, or events that count nothing): applied with the append, so exactly
/// once per event. `delivered`: whether the log before them shows the message delivered
/// (updated: the delivery is counted once, at the event that made it).
pub fn message_tally(
    tenant: &herald_proto::TenantId,
    idempotency_key: &str,
    events: &[herald_proto::v1::Event],
    delivered: &mut bool,
) -> Option<herald_store::Tally> {
    use herald_proto::v1::{Channel, EventKind, MessageStatus};
    let (journey, step) = journey_of_key(idempotency_key)?;
    let mut deltas: Vec<(String, i64)> = Vec::new();
    for event in events {
        if !*delivered && event.status() == MessageStatus::Delivered {
            *delivered = true;
            deltas.push((funnel::delivered(step), 1));
        }
        match event.kind() {
            EventKind::EventSent => {
                let channel = match event.channel() {
                    Channel::Push => "push",
                    Channel::Email => "email",
                    Channel::Sms => "sms",
                    _ => "other",
                };
                deltas.push((funnel::sent_on(step, channel), 1));
            }
            EventKind::EventSuppressed => deltas.push((funnel::suppressed(step), 1)),
            _ => {}
        }
    }
    (!deltas.is_empty()).then(|| herald_store::Tally::AddFields {
        key: herald_store::keys::journey::funnel(tenant, journey),
        deltas,
    })
}

#[cfg(test)]
mod tests;
