//! A campaign's definition, checked field by field before anything is stored (pure).
//!
//! Owns every rule that rejects a `CampaignSpec`: the message part as a single message has it
//! (content, waterfall, class, topic, quiet hours — the same rules, named under `spec.`), the
//! audience, the segment, the schedule, the pace, the variants, the holdout and the end. Every
//! error is `INVALID_ARGUMENT` naming the field (`spec.variants[1].weight`). Fills in the
//! defaults a single message gets (the waterfall). Must never touch the store or the clock.

use std::collections::HashSet;

use chrono_tz::Tz;
use herald_proto::error::Error as Invalid;
use herald_proto::v1::{CampaignSpec, MessageRequest};

use super::plan::Segment;
use crate::content::template::{self, TemplateErrorKind};
use crate::policy::quiet_hours::{self, Window};

/// Longest campaign name, in bytes.
pub const NAME_MAX_BYTES: usize = 200;
/// Most variants.
pub const VARIANTS_MAX: usize = 16;
/// Most send windows.
pub const WINDOWS_MAX: usize = 4;
/// Highest pace, messages per second.
pub const PACE_MAX_PER_S: u32 = 100_000;
/// Shortest and longest "spread over".
pub const SPREAD_MIN_S: u64 = 60;
pub const SPREAD_MAX_S: u64 = 30 * 86_400;
/// A start time this far in the past is still "now" (clocks of clients and nodes differ).
pub const START_SLACK_MS: i64 = 60_000;

/// The message a campaign sends, as a single message would carry it (without recipient).
pub fn message_of(spec: &CampaignSpec) -> MessageRequest {
    MessageRequest {
        recipient_id: String::new(),
        idempotency_key: String::new(),
        class: spec.class,
        content: spec.content.clone(),
        waterfall: spec.waterfall.clone(),
        campaign_id: String::new(),
        cost_order: spec.cost_order,
        variables: spec.variables.clone(),
        topic: spec.topic.clone(),
        quiet_hours: spec.quiet_hours.clone(),
        tag: spec.tag.clone(),
        fall_back_when_paused: false,
    }
}

fn check_templates(
    prefix: &str,
    content: &herald_proto::v1::Content,
    vars: &std::collections::BTreeMap<String, String>,
) -> Result<(), Invalid> {
    judge_templates(prefix, template::check(content, vars))
}

/// What a template check means for a definition (a campaign's, a journey step's): an
/// undefined variable passes — recipients' attributes fill it in at send time, and a member
/// without one is counted suppressed (`template`), not the whole definition refused — any
/// other error is the field's.
pub fn judge_templates(
    prefix: &str,
    checked: Result<(), template::TemplateError>,
) -> Result<(), Invalid> {
    match checked {
        Ok(()) => Ok(()),
        Err(error)
            if matches!(
                error.kind,
                TemplateErrorKind::UndefinedVariable(_) | TemplateErrorKind::Undefined(_)
            ) =>
        {
            Ok(())
        }
        Err(error) => Err(error.into_invalid(prefix)),
    }
}

/// A campaign's or journey's name (`spec.name`): required, at most [`NAME_MAX_BYTES`].
pub fn check_name(name: &str) -> Result<(), Invalid> {
    if name.trim().is_empty() {
        return Err(Invalid::invalid("spec.name", "is required"));
    }
    if name.len() > NAME_MAX_BYTES || name.chars().any(char::is_control) {
        return Err(Invalid::invalid(
            "spec.name",
            format!("at most {NAME_MAX_BYTES} bytes, no control characters"),
        ));
    }
    Ok(())
}

/// A list of `len` items at `field` holds at most `max`.
pub fn check_count(field: &str, len: usize, max: usize) -> Result<(), Invalid> {
    if len > max {
        return Err(Invalid::invalid(field, format!("has {len}, at most {max}")));
    }
    Ok(())
}

/// Checks `spec` (as of `now_ms`) and fills in its defaults.
pub fn validate(
    spec: &mut CampaignSpec,
    max_message_bytes: usize,
    now_ms: i64,
) -> Result<(), Invalid> {
    check_name(&spec.name)?;
    // The message part: exactly a single message's rules, under `spec.`.
    let mut message = message_of(spec);
    message.recipient_id = "campaign".into();
    crate::validate::message("spec", &mut message, max_message_bytes)?;
    spec.waterfall = message.waterfall.clone();
    if let Some(content) = &spec.content {
        check_templates("spec", content, &spec.variables)?;
    }

    let audience = spec.audience.clone().unwrap_or_default();
    if !audience.list && audience.segment.is_empty() {
        return Err(Invalid::invalid(
            "spec.audience",
            "is empty: an uploaded list (list = true), a segment, or both",
        ));
    }
    Segment::compile("spec.audience.segment", &audience.segment)?;

    if let Some(schedule) = &spec.schedule {
        if schedule.start_at_unix_ms < 0 {
            return Err(Invalid::invalid(
                "spec.schedule.start_at_unix_ms",
                "must be a time (ms since the Unix epoch) or 0 for now",
            ));
        }
        if schedule.start_at_unix_ms > 0 && schedule.start_at_unix_ms < now_ms - START_SLACK_MS {
            return Err(Invalid::invalid(
                "spec.schedule.start_at_unix_ms",
                "is in the past (0 starts now)",
            ));
        }
        if !schedule.local_time.is_empty() {
            quiet_hours::time_of_day(&schedule.local_time)
                .map_err(|e| Invalid::invalid("spec.schedule.local_time", e))?;
        }
        if schedule.windows.len() > WINDOWS_MAX {
            return Err(Invalid::invalid(
                "spec.schedule.windows",
                format!("has {}, at most {WINDOWS_MAX}", schedule.windows.len()),
            ));
        }
        for (index, window) in schedule.windows.iter().enumerate() {
            Window::from_parts(&window.start, &window.end, false)
                .map_err(|e| Invalid::invalid(format!("spec.schedule.windows[{index}]"), e))?;
        }
        if !schedule.default_time_zone.is_empty()
            && schedule.default_time_zone.parse::<Tz>().is_err()
        {
            return Err(Invalid::invalid(
                "spec.schedule.default_time_zone",
                format!(
                    "unknown time zone {:?} (an IANA name such as Europe/Berlin)",
                    schedule.default_time_zone
                ),
            ));
        }
    }

    if let Some(pace) = &spec.pace {
        match (pace.per_second, pace.spread_over_s) {
            (0, 0) => {
                return Err(Invalid::invalid(
                    "spec.pace.per_second",
                    format!(
                        "is 0: set 1..={PACE_MAX_PER_S} messages per second, or spread_over_s (leave pace out for no pace)"
                    ),
                ));
            }
            (rate, 0) if rate > PACE_MAX_PER_S => {
                return Err(Invalid::invalid(
                    "spec.pace.per_second",
                    format!("is {rate}, at most {PACE_MAX_PER_S} messages per second"),
                ));
            }
            (0, spread) if !(SPREAD_MIN_S..=SPREAD_MAX_S).contains(&spread) => {
                return Err(Invalid::invalid(
                    "spec.pace.spread_over_s",
                    format!(
                        "is {spread} s, must be {SPREAD_MIN_S}..={SPREAD_MAX_S} (1 minute to 30 days)"
                    ),
                ));
            }
            (_, 0) | (0, _) => {}
            _ => {
                return Err(Invalid::invalid(
                    "spec.pace",
                    "per_second or spread_over_s, not both",
                ));
            }
        }
    }

    check_count("spec.variants", spec.variants.len(), VARIANTS_MAX)?;
    let mut names = HashSet::new();
    let mut total = 0u32;
    for (index, variant) in spec.variants.iter().enumerate() {
        let field = |name: &str| format!("spec.variants[{index}].{name}");
        let ok_name = !variant.name.is_empty()
            && variant.name.len() <= 32
            && variant
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'));
        if !ok_name || variant.name == herald_store::campaign::HOLDOUT {
            return Err(Invalid::invalid(
                field("name"),
                "1..=32 of letters, digits, `-`, `_`, not \"holdout\"",
            ));
        }
        if !names.insert(variant.name.as_str()) {
            return Err(Invalid::invalid(
                field("name"),
                format!("repeats {:?}", variant.name),
            ));
        }
        if variant.weight == 0 || variant.weight > 100 {
            return Err(Invalid::invalid(
                field("weight"),
                "must be 1..=100 (percent)",
            ));
        }
        total += variant.weight;
        if let Some(content) = &variant.content {
            let mut message = message_of(spec);
            message.recipient_id = "campaign".into();
            message.content = Some(content.clone());
            crate::validate::message(
                &format!("spec.variants[{index}]"),
                &mut message,
                max_message_bytes,
            )?;
            check_templates(&format!("spec.variants[{index}]"), content, &spec.variables)?;
        }
    }
    if !spec.variants.is_empty() && total != 100 {
        return Err(Invalid::invalid(
            "spec.variants",
            format!("weights sum to {total}, they must sum to 100"),
        ));
    }
    if !spec.holdout_percent.is_finite()
        || spec.holdout_percent < 0.0
        || spec.holdout_percent >= 100.0
    {
        return Err(Invalid::invalid(
            "spec.holdout_percent",
            format!(
                "is {}, must be at least 0 and below 100",
                spec.holdout_percent
            ),
        ));
    }
    if spec.end_by_unix_ms < 0 || (spec.end_by_unix_ms > 0 && spec.end_by_unix_ms <= now_ms) {
        return Err(Invalid::invalid(
            "spec.end_by_unix_ms",
            "is in the past (0 = no end)",
        ));
    }
    let start = spec.schedule.as_ref().map_or(0, |s| s.start_at_unix_ms);
    if spec.end_by_unix_ms > 0 && spec.end_by_unix_ms <= start {
        return Err(Invalid::invalid(
            "spec.end_by_unix_ms",
            "is before the start (spec.schedule.start_at_unix_ms)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::{
        Audience, Content, MessageClass, Pace, Schedule, SegmentCondition, SendWindow, SmsContent,
        Variant, WaterfallStep,
    };

    const NOW: i64 = 1_800_000_000_000;

    pub(crate) fn valid() -> CampaignSpec {
        CampaignSpec {
            name: "spring".into(),
            class: MessageClass::Marketing as i32,
            content: Some(Content {
                sms: Some(SmsContent {
                    text: "Hi {{ first_name }}".into(),
                }),
                ..Default::default()
            }),
            waterfall: vec![WaterfallStep {
                channel: herald_proto::v1::Channel::Sms as i32,
                ..Default::default()
            }],
            audience: Some(Audience {
                list: true,
                segment: Vec::new(),
            }),
            ..Default::default()
        }
    }

    fn field_of(spec: CampaignSpec) -> String {
        let mut spec = spec;
        match validate(&mut spec, 64 * 1024, NOW) {
            Err(Invalid::InvalidArgument { field, .. }) => field,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn a_valid_spec_passes_with_defaults_filled_in() {
        let mut spec = valid();
        spec.waterfall.clear();
        spec.content = Some(Content {
            push: Some(herald_proto::v1::PushContent {
                body: "b".into(),
                ..Default::default()
            }),
            email: Some(herald_proto::v1::EmailContent {
                subject: "s".into(),
                text_body: "t".into(),
                ..Default::default()
            }),
            sms: Some(SmsContent { text: "x".into() }),
        });
        validate(&mut spec, 64 * 1024, NOW).expect("valid");
        assert_eq!(spec.waterfall.len(), 3, "the default waterfall");
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut cases: Vec<(CampaignSpec, &str)> = Vec::new();
        let with = |f: &dyn Fn(&mut CampaignSpec)| {
            let mut spec = valid();
            f(&mut spec);
            spec
        };
        cases.push((with(&|s| s.name.clear()), "spec.name"));
        cases.push((with(&|s| s.audience = None), "spec.audience"));
        cases.push((
            with(&|s| {
                s.audience = Some(Audience {
                    list: false,
                    segment: vec![SegmentCondition {
                        field: "shoe_size".into(),
                        op: herald_proto::v1::ConditionOp::Equals as i32,
                        values: vec!["9".into()],
                    }],
                })
            }),
            "spec.audience.segment[0].field",
        ));
        cases.push((
            with(&|s| {
                s.pace = Some(Pace {
                    per_second: 0,
                    spread_over_s: 0,
                })
            }),
            "spec.pace.per_second",
        ));
        cases.push((
            with(&|s| {
                s.pace = Some(Pace {
                    per_second: 10_000_000,
                    spread_over_s: 0,
                })
            }),
            "spec.pace.per_second",
        ));
        cases.push((
            with(&|s| {
                s.pace = Some(Pace {
                    per_second: 0,
                    spread_over_s: 5,
                })
            }),
            "spec.pace.spread_over_s",
        ));
        cases.push((
            with(&|s| {
                s.schedule = Some(Schedule {
                    start_at_unix_ms: NOW - 3_600_000,
                    ..Default::default()
                })
            }),
            "spec.schedule.start_at_unix_ms",
        ));
        cases.push((
            with(&|s| {
                s.schedule = Some(Schedule {
                    default_time_zone: "Mars/Olympus".into(),
                    ..Default::default()
                })
            }),
            "spec.schedule.default_time_zone",
        ));
        cases.push((
            with(&|s| {
                s.schedule = Some(Schedule {
                    local_time: "25:00".into(),
                    ..Default::default()
                })
            }),
            "spec.schedule.local_time",
        ));
        cases.push((
            with(&|s| {
                s.schedule = Some(Schedule {
                    windows: vec![SendWindow {
                        start: "09:00".into(),
                        end: "09:00".into(),
                    }],
                    ..Default::default()
                })
            }),
            "spec.schedule.windows[0]",
        ));
        let variant = |name: &str, weight| Variant {
            name: name.into(),
            weight,
            content: None,
        };
        cases.push((
            with(&|s| s.variants = vec![variant("a", 50), variant("b", 40)]),
            "spec.variants",
        ));
        cases.push((
            with(&|s| s.variants = vec![variant("a", 50), variant("a", 50)]),
            "spec.variants[1].name",
        ));
        cases.push((
            with(&|s| s.variants = vec![variant("holdout", 100)]),
            "spec.variants[0].name",
        ));
        cases.push((with(&|s| s.holdout_percent = 100.0), "spec.holdout_percent"));
        cases.push((with(&|s| s.holdout_percent = -1.0), "spec.holdout_percent"));
        cases.push((
            with(&|s| s.holdout_percent = f64::NAN),
            "spec.holdout_percent",
        ));
        cases.push((with(&|s| s.end_by_unix_ms = NOW - 1), "spec.end_by_unix_ms"));
        cases.push((
            with(&|s| s.waterfall[0].channel = 9),
            "spec.waterfall[0].channel",
        ));
        cases.push((
            with(&|s| {
                s.content = Some(Content {
                    sms: Some(SmsContent {
                        text: "{% for %}".into(),
                    }),
                    ..Default::default()
                })
            }),
            "spec.content.sms.text",
        ));
        for (spec, field) in cases {
            assert_eq!(field_of(spec), field);
        }
    }
}
