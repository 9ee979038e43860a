//! # campaign_file: the campaign file of `herald campaign create --file`
//!
//! Owns the TOML form of a campaign (`deploy/examples/campaign.toml` documents every key):
//! its types, with unknown keys refused and named, and their translation into the API's
//! `CampaignSpec` (RFC 3339 times, durations such as `6h`, channel and operator names). The
//! API validates the result again, naming `spec.` fields. Must never talk to a node.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use herald_proto::v1::{
    Audience, CampaignSpec, Channel, ConditionOp, Content, EmailContent, MessageClass, Pace,
    PushContent, QuietHoursOverride, Schedule, SegmentCondition, SendWindow, SmsContent,
    SuccessCondition, Variant, WaterfallStep,
};
use serde::Deserialize;

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
pub(crate) enum ClassName {
    #[default]
    Marketing,
    Transactional,
}

impl ClassName {
    pub(crate) fn class(&self) -> MessageClass {
        match self {
            ClassName::Marketing => MessageClass::Marketing,
            ClassName::Transactional => MessageClass::Transactional,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContentFile {
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
pub(crate) struct StepFile {
    channel: String,
    /// accepted (default), delivered, read.
    success: Option<String>,
    /// How long to wait for the success condition ("2h", "90s").
    timeout: Option<String>,
    provider_account: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QuietFile {
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
pub(crate) struct ConditionFile {
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

pub(crate) fn duration_ms(field: &str, text: &str) -> Result<i64> {
    herald_node::campaign::plan::parse_duration(text)
        .ok_or_else(|| anyhow!("{field}: {text:?} is not a duration such as 90s, 30m, 6h, 7d"))
}

pub(crate) fn channel(field: &str, name: &str) -> Result<Channel> {
    match name {
        "push" => Ok(Channel::Push),
        "email" => Ok(Channel::Email),
        "sms" => Ok(Channel::Sms),
        other => bail!("{field}: {other:?} is not a channel (push, email, sms)"),
    }
}

pub(crate) fn op(field: &str, name: &str) -> Result<ConditionOp> {
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

pub(crate) fn content(file: ContentFile) -> Content {
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
pub(crate) fn read_file(path: &Path) -> Result<(CampaignSpec, Option<PathBuf>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let file: CampaignFile =
        toml::from_str(&text).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    to_spec(file, base)
}

/// A waterfall as the file writes it (`prefix` names it in errors: `waterfall`,
/// `steps[2].send.waterfall`).
pub(crate) fn waterfall(prefix: &str, steps: Vec<StepFile>) -> Result<Vec<WaterfallStep>> {
    let mut waterfall = Vec::new();
    for (index, step) in steps.into_iter().enumerate() {
        let at = |name: &str| format!("{prefix}[{index}].{name}");
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
    Ok(waterfall)
}

/// Segment conditions as the file writes them (`prefix` names them in errors).
pub(crate) fn conditions(
    prefix: &str,
    conditions: Vec<ConditionFile>,
) -> Result<Vec<SegmentCondition>> {
    let mut segment = Vec::new();
    for (index, condition) in conditions.into_iter().enumerate() {
        segment.push(SegmentCondition {
            op: op(&format!("{prefix}[{index}].op"), &condition.op)? as i32,
            field: condition.field,
            values: condition.values,
        });
    }
    Ok(segment)
}

/// Quiet hours as the file writes them.
pub(crate) fn quiet_hours(file: Option<QuietFile>) -> Option<QuietHoursOverride> {
    file.map(|q| QuietHoursOverride {
        start: q.start,
        end: q.end,
        no_weekend: q.no_weekend,
        disabled: false,
    })
}

fn to_spec(file: CampaignFile, base: &Path) -> Result<(CampaignSpec, Option<PathBuf>)> {
    let waterfall = waterfall("waterfall", file.waterfall)?;
    let segment = conditions("audience.segment", file.audience.segment)?;
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
        class: file.class.class() as i32,
        topic: file.topic,
        content: Some(content(file.content)),
        waterfall,
        cost_order: file.cost_order,
        variables: file.variables,
        quiet_hours: quiet_hours(file.quiet_hours),
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
