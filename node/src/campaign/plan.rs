//! What a campaign decides for one member, before anything is sent (pure).
//!
//! Owns the segment filter ([`Segment`]: compiled and checked once, field by field, then
//! matched against each recipient), the member's group (held out, or which variant: a hash of
//! the campaign and the person, so every owner decides the same), when the member is due in
//! their own local time ([`LocalSchedule`]: the campaign's `local_time` and send windows over the
//! zones quiet hours use), and what their message may cost (the hold: every step they have a
//! contact point for; the expectation: the first step they can be reached on).
//!
//! Must never do I/O or read a clock (`now` is an input), and never log a contact point.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveTime, TimeDelta, Utc};
use chrono_tz::Tz;
use herald_proto::error::Error as Invalid;
use herald_proto::v1::{
    CampaignSpec, Channel, ConditionOp, ConsentState, Content, MessageClass, Recipient,
    SegmentCondition,
};

use crate::content::pricing::{PriceTable, country_of_phone};
use crate::policy::quiet_hours::{self, Verdict, Window};
use crate::policy::{consent, contact, timezones};

/// Most conditions in a segment.
pub const SEGMENT_MAX: usize = 32;
/// Most values of one condition.
pub const VALUES_MAX: usize = 256;
/// Longest duration a condition may name.
const DURATION_MAX_MS: i64 = 3_650 * 86_400_000;

/// What one condition tests.
#[derive(Clone, Debug, PartialEq)]
enum Test {
    Attribute(String),
    Consent { channel: Channel, topic: String },
    Contact(Channel),
    TimeZone,
    Country,
    LastEngaged,
}

#[derive(Clone, Debug, PartialEq)]
struct Condition {
    test: Test,
    op: ConditionOp,
    values: Vec<String>,
    /// OLDER_THAN / WITHIN: the duration in ms.
    duration_ms: i64,
}

/// A compiled segment: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Segment {
    conditions: Vec<Condition>,
}

const FIELDS: &str = "attributes.<name>, consent.<channel>[.<topic>], contact.<channel>, \
                      time_zone, country, last_engaged";

fn channel_named(name: &str) -> Option<Channel> {
    match name {
        "push" => Some(Channel::Push),
        "email" => Some(Channel::Email),
        "sms" => Some(Channel::Sms),
        _ => None,
    }
}

/// `30d`, `12h`, `90m`, `45s` in ms.
pub fn parse_duration(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let ms = match unit {
        'd' => number.checked_mul(86_400_000)?,
        'h' => number.checked_mul(3_600_000)?,
        'm' => number.checked_mul(60_000)?,
        's' => number.checked_mul(1_000)?,
        _ => return None,
    };
    (ms > 0 && ms <= DURATION_MAX_MS).then_some(ms)
}

impl Segment {
    /// Checks every condition (`prefix` is their field path, `spec.audience.segment`).
    pub fn compile(prefix: &str, conditions: &[SegmentCondition]) -> Result<Segment, Invalid> {
        if conditions.len() > SEGMENT_MAX {
            return Err(Invalid::invalid(
                prefix,
                format!("has {} conditions, at most {SEGMENT_MAX}", conditions.len()),
            ));
        }
        let mut compiled = Vec::with_capacity(conditions.len());
        for (index, condition) in conditions.iter().enumerate() {
            let at = format!("{prefix}[{index}]");
            compiled.push(compile_one(&at, condition)?);
        }
        Ok(Segment {
            conditions: compiled,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Whether a condition reads when the person last engaged (kept apart from the
    /// recipient's record: see `estimate::fill_engagement`).
    pub fn uses_engagement(&self) -> bool {
        self.conditions.iter().any(|c| c.test == Test::LastEngaged)
    }

    /// Whether `recipient` is in the segment at `now`.
    pub fn matches(&self, recipient: &Recipient, now_ms: i64) -> bool {
        self.conditions.iter().all(|c| c.holds(recipient, now_ms))
    }
}

/// Checks one segment condition alone (`at` is its path, e.g. `spec.steps[2].branch.conditions[0]`):
/// what a journey's branch shares with a segment.
pub fn check_condition(at: &str, condition: &SegmentCondition) -> Result<(), Invalid> {
    compile_one(at, condition).map(|_| ())
}

fn compile_one(at: &str, condition: &SegmentCondition) -> Result<Condition, Invalid> {
    let field = condition.field.trim();
    let test = if let Some(name) = field.strip_prefix("attributes.") {
        if name.is_empty() || name.len() > 64 {
            return Err(Invalid::invalid(
                format!("{at}.field"),
                "an attribute name is 1..=64 bytes",
            ));
        }
        Test::Attribute(name.to_owned())
    } else if let Some(rest) = field.strip_prefix("consent.") {
        let (channel, topic) = rest.split_once('.').unwrap_or((rest, ""));
        let channel = channel_named(channel).ok_or_else(|| {
            Invalid::invalid(
                format!("{at}.field"),
                "consent.<channel>: push, email or sms",
            )
        })?;
        if !topic.is_empty() {
            crate::validate::check_topic(|| format!("{at}.field"), topic)?;
        }
        Test::Consent {
            channel,
            topic: topic.to_owned(),
        }
    } else if let Some(channel) = field.strip_prefix("contact.") {
        Test::Contact(channel_named(channel).ok_or_else(|| {
            Invalid::invalid(
                format!("{at}.field"),
                "contact.<channel>: push, email or sms",
            )
        })?)
    } else {
        match field {
            "time_zone" => Test::TimeZone,
            "country" => Test::Country,
            "last_engaged" => Test::LastEngaged,
            other => {
                return Err(Invalid::invalid(
                    format!("{at}.field"),
                    format!("unknown field {other:?} (one of {FIELDS})"),
                ));
            }
        }
    };
    let op = ConditionOp::try_from(condition.op).unwrap_or(ConditionOp::Unspecified);
    let allowed: &[ConditionOp] = match &test {
        Test::Attribute(_) | Test::TimeZone => &[
            ConditionOp::Equals,
            ConditionOp::NotEquals,
            ConditionOp::In,
            ConditionOp::Exists,
            ConditionOp::NotExists,
        ],
        Test::Consent { .. } => &[ConditionOp::Equals, ConditionOp::NotEquals],
        Test::Contact(_) => &[ConditionOp::Exists, ConditionOp::NotExists],
        Test::Country => &[ConditionOp::Equals, ConditionOp::NotEquals, ConditionOp::In],
        Test::LastEngaged => &[ConditionOp::OlderThan, ConditionOp::Within],
    };
    if !allowed.contains(&op) {
        let names: Vec<&str> = allowed.iter().map(|o| o.as_str_name()).collect();
        return Err(Invalid::invalid(
            format!("{at}.op"),
            format!("{field} takes {}", names.join(", ")),
        ));
    }
    let values = condition.values.clone();
    let wanted = match op {
        ConditionOp::Exists | ConditionOp::NotExists => 0..=0,
        ConditionOp::In => 1..=VALUES_MAX,
        _ => 1..=1,
    };
    if !wanted.contains(&values.len()) {
        return Err(Invalid::invalid(
            format!("{at}.values"),
            format!(
                "{} takes {} value(s), got {}",
                op.as_str_name(),
                if wanted.end() == &0 {
                    "no".to_owned()
                } else if wanted.start() == wanted.end() {
                    "1".to_owned()
                } else {
                    format!("1..={VALUES_MAX}")
                },
                values.len()
            ),
        ));
    }
    if let Some((index, _)) = values
        .iter()
        .enumerate()
        .find(|(_, v)| v.len() > 256 || v.chars().any(char::is_control))
    {
        return Err(Invalid::invalid(
            format!("{at}.values[{index}]"),
            "at most 256 bytes, no control characters",
        ));
    }
    let mut duration_ms = 0;
    match &test {
        Test::Consent { .. }
            if !matches!(values[0].as_str(), "opted_in" | "opted_out" | "none") =>
        {
            return Err(Invalid::invalid(
                format!("{at}.values[0]"),
                "consent is opted_in, opted_out or none",
            ));
        }
        Test::LastEngaged => {
            duration_ms = parse_duration(&values[0]).ok_or_else(|| {
                Invalid::invalid(
                    format!("{at}.values[0]"),
                    "a duration such as 30d, 12h, 90m or 45s (at most 3650d)",
                )
            })?;
        }
        Test::TimeZone
            if matches!(
                op,
                ConditionOp::Equals | ConditionOp::NotEquals | ConditionOp::In
            ) =>
        {
            if let Some((index, _)) = values
                .iter()
                .enumerate()
                .find(|(_, v)| v.parse::<Tz>().is_err())
            {
                return Err(Invalid::invalid(
                    format!("{at}.values[{index}]"),
                    "an IANA time zone such as Europe/Berlin",
                ));
            }
        }
        _ => {}
    }
    Ok(Condition {
        test,
        op,
        values,
        duration_ms,
    })
}

impl Condition {
    fn holds(&self, recipient: &Recipient, now_ms: i64) -> bool {
        let value: Option<String> = match &self.test {
            Test::Attribute(name) => recipient.attributes.get(name).cloned(),
            Test::TimeZone => Some(recipient.time_zone.clone()).filter(|z| !z.is_empty()),
            Test::Country => country_of_phone(&recipient.phone),
            Test::Consent { channel, topic } => Some(consent_state(recipient, *channel, topic)),
            Test::Contact(channel) => {
                contact::contact_point(recipient, *channel, None).map(|_| String::new())
            }
            Test::LastEngaged => {
                let last = recipient.last_engaged_unix_ms;
                let engaged_within = last > 0 && now_ms.saturating_sub(last) < self.duration_ms;
                return match self.op {
                    ConditionOp::Within => engaged_within,
                    _ => !engaged_within,
                };
            }
        };
        match self.op {
            ConditionOp::Exists => value.is_some(),
            ConditionOp::NotExists => value.is_none(),
            ConditionOp::Equals => value.as_deref() == Some(self.values[0].as_str()),
            ConditionOp::NotEquals => value.as_deref() != Some(self.values[0].as_str()),
            ConditionOp::In => value.is_some_and(|v| self.values.contains(&v)),
            _ => false,
        }
    }
}

/// `opted_in`, `opted_out` or `none`: the entry for (channel, topic), else the channel's.
fn consent_state(recipient: &Recipient, channel: Channel, topic: &str) -> String {
    let entry = |topic: &str| {
        recipient
            .consent
            .iter()
            .find(|c| c.channel == channel as i32 && c.topic == topic && c.sender.is_empty())
    };
    let found = if topic.is_empty() {
        entry("")
    } else {
        entry(topic).or_else(|| entry(""))
    };
    match found.map(|c| c.state()) {
        Some(ConsentState::OptedIn) => "opted_in",
        Some(ConsentState::OptedOut) => "opted_out",
        _ => "none",
    }
    .to_owned()
}

/// Which group a member is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    HeldOut,
    /// The index of the variant (0 for a campaign without variants).
    Variant(usize),
}

/// A member's group: the same on every node, for every run of the campaign.
pub fn group(campaign_id: &str, recipient_id: &str, spec: &CampaignSpec) -> Group {
    let hash = herald_proto::partition::key_hash(campaign_id, recipient_id);
    // Parts per million: holdout_percent has at most 4 decimals that matter.
    let ppm = (spec.holdout_percent * 10_000.0).round() as u64;
    if hash % 1_000_000 < ppm {
        return Group::HeldOut;
    }
    if spec.variants.is_empty() {
        return Group::Variant(0);
    }
    let point = (hash >> 24) % 100;
    let mut upto = 0u64;
    for (index, variant) in spec.variants.iter().enumerate() {
        upto += u64::from(variant.weight);
        if point < upto {
            return Group::Variant(index);
        }
    }
    Group::Variant(spec.variants.len() - 1)
}

/// When members are due in their own day: a time of day and send windows.
#[derive(Clone, Debug, Default)]
pub struct LocalSchedule {
    local_time: Option<NaiveTime>,
    windows: Vec<Window>,
}

/// When a member may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    At(i64),
    /// Their zones share no instant of the windows (a number with zones far apart).
    Never,
}

impl LocalSchedule {
    /// From the spec's schedule (already validated: see `campaign::spec`).
    pub fn of(spec: &CampaignSpec) -> LocalSchedule {
        let Some(schedule) = &spec.schedule else {
            return LocalSchedule::default();
        };
        LocalSchedule {
            local_time: (!schedule.local_time.is_empty())
                .then(|| quiet_hours::time_of_day(&schedule.local_time).ok())
                .flatten(),
            windows: schedule
                .windows
                .iter()
                .filter_map(|w| Window::from_parts(&w.start, &w.end, false).ok())
                .collect(),
        }
    }

    /// Nothing depends on the member's zone: everyone is due at the start.
    pub fn is_flat(&self) -> bool {
        self.local_time.is_none() && self.windows.is_empty()
    }

    /// When a member in `zones` is due, at or after `from_ms`: the first `local_time` in every
    /// zone (the latest of them), then the first instant inside a window.
    pub fn due(&self, zones: &[Tz], from_ms: i64) -> Due {
        let mut at = from_ms;
        if let Some(time) = self.local_time {
            for zone in zones {
                let next = next_local_time(time, *zone, from_ms);
                at = at.max(next);
            }
        }
        match self.window_opening(zones, at) {
            Some(opening) => Due::At(opening),
            None => Due::Never,
        }
    }

    /// The first instant at or after `at_ms` inside a window in every zone (`at_ms` itself
    /// when it is; `None` when none comes within a week).
    pub fn window_opening(&self, zones: &[Tz], at_ms: i64) -> Option<i64> {
        if self.windows.is_empty() {
            return Some(at_ms);
        }
        let at = DateTime::<Utc>::from_timestamp_millis(at_ms)?;
        let mut best: Option<i64> = None;
        for window in &self.windows {
            let opening = match quiet_hours::evaluate(window, zones, at) {
                Verdict::Open => Some(at_ms),
                Verdict::Closed { opens_at, .. } => Some(opens_at.timestamp_millis()),
                Verdict::NoCommonWindow { .. } => None,
            };
            if let Some(opening) = opening {
                best = Some(best.map_or(opening, |b: i64| b.min(opening)));
            }
        }
        best
    }
}

/// The first instant at or after `from_ms` whose wall time in `zone` is `time` (a time that a
/// spring-forward skips is the first instant after the gap).
fn next_local_time(time: NaiveTime, zone: Tz, from_ms: i64) -> i64 {
    let Some(from) = DateTime::<Utc>::from_timestamp_millis(from_ms) else {
        return from_ms;
    };
    // A one-minute window starting at `time`: quiet hours' evaluation already handles DST gaps
    // and overlaps exactly.
    let end = time + TimeDelta::minutes(1);
    let Ok(window) = Window::from_parts(
        &quiet_hours::format_time(time),
        &quiet_hours::format_time(end),
        false,
    ) else {
        return from_ms;
    };
    match quiet_hours::evaluate(&window, &[zone], from) {
        Verdict::Open => from_ms,
        Verdict::Closed { opens_at, .. } => opens_at.timestamp_millis(),
        Verdict::NoCommonWindow { .. } => from_ms,
    }
}

/// The zones a member's local time is read in (as quiet hours read them).
pub fn zones_of(recipient: &Recipient, tenant_zone: Tz) -> Vec<Tz> {
    timezones::resolve(&recipient.time_zone, &recipient.phone, tenant_zone).0
}

/// What a member's message may cost, in micro-units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cost {
    /// Every step the member has a usable contact point for (the hold).
    pub worst: u64,
    /// The first step they can be reached on (contact point, and consent for marketing).
    pub expected: u64,
    /// The channel of the expected step.
    pub expected_channel: Option<Channel>,
}

/// The cost of `content` (rendered for the member) through `steps` for `recipient`.
pub fn cost(
    prices: &PriceTable,
    class: MessageClass,
    topic: &str,
    steps: &[Channel],
    content: &Content,
    recipient: &Recipient,
) -> (Cost, BTreeMap<i32, u64>) {
    let mut cost = Cost::default();
    let mut per_channel = BTreeMap::new();
    for channel in steps {
        if contact::contact_point(recipient, *channel, None).is_none() {
            continue;
        }
        let price = crate::content::attempt_cost(prices, *channel, content, recipient);
        cost.worst += price;
        *per_channel.entry(*channel as i32).or_insert(0) += price;
        if cost.expected_channel.is_none()
            && consent::verdict(recipient, *channel, class, topic).is_none()
        {
            cost.expected = price;
            cost.expected_channel = Some(*channel);
        }
    }
    (cost, per_channel)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::{ChannelConsent, Schedule, SendWindow, Variant};

    fn condition(field: &str, op: ConditionOp, values: &[&str]) -> SegmentCondition {
        SegmentCondition {
            field: field.into(),
            op: op as i32,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn field_of(error: Invalid) -> String {
        match error {
            Invalid::InvalidArgument { field, .. } => field,
            other => panic!("not invalid input: {other:?}"),
        }
    }

    #[test]
    fn every_bad_condition_names_its_field() {
        let cases = [
            (
                condition("shoe_size", ConditionOp::Equals, &["9"]),
                "seg[0].field",
            ),
            (
                condition("consent.fax", ConditionOp::Equals, &["opted_in"]),
                "seg[0].field",
            ),
            (
                condition("contact.pigeon", ConditionOp::Exists, &[]),
                "seg[0].field",
            ),
            (
                condition("last_engaged", ConditionOp::Equals, &["30d"]),
                "seg[0].op",
            ),
            (
                condition("last_engaged", ConditionOp::OlderThan, &["30x"]),
                "seg[0].values[0]",
            ),
            (
                condition("consent.sms", ConditionOp::Equals, &["maybe"]),
                "seg[0].values[0]",
            ),
            (
                condition("attributes.plan", ConditionOp::Equals, &[]),
                "seg[0].values",
            ),
            (
                condition("contact.sms", ConditionOp::Exists, &["x"]),
                "seg[0].values",
            ),
            (
                condition("time_zone", ConditionOp::In, &["Mars/Olympus"]),
                "seg[0].values[0]",
            ),
        ];
        for (bad, field) in cases {
            let error = Segment::compile("seg", std::slice::from_ref(&bad)).expect_err("rejected");
            assert_eq!(field_of(error), field, "{bad:?}");
        }
    }

    #[test]
    fn segments_filter_on_attributes_consent_contact_and_recency() {
        let now = 100 * 86_400_000;
        let segment = Segment::compile(
            "seg",
            &[
                condition("attributes.plan", ConditionOp::In, &["pro", "team"]),
                condition("consent.sms.deals", ConditionOp::Equals, &["opted_in"]),
                condition("contact.sms", ConditionOp::Exists, &[]),
                condition("last_engaged", ConditionOp::OlderThan, &["30d"]),
            ],
        )
        .expect("valid");
        let mut recipient = Recipient {
            id: "r".into(),
            phone: "+12125550100".into(),
            attributes: [("plan".to_string(), "pro".to_string())].into(),
            consent: vec![ChannelConsent {
                channel: Channel::Sms as i32,
                state: ConsentState::OptedIn as i32,
                ..Default::default()
            }],
            last_engaged_unix_ms: now - 31 * 86_400_000,
            ..Default::default()
        };
        assert!(segment.matches(&recipient, now));
        recipient.last_engaged_unix_ms = now - 29 * 86_400_000;
        assert!(!segment.matches(&recipient, now), "engaged recently");
        recipient.last_engaged_unix_ms = 0;
        assert!(
            segment.matches(&recipient, now),
            "never engaged counts as inactive"
        );
        recipient.attributes.insert("plan".into(), "free".into());
        assert!(!segment.matches(&recipient, now));
    }

    #[test]
    fn groups_are_deterministic_and_follow_the_weights() {
        let spec = CampaignSpec {
            holdout_percent: 10.0,
            variants: vec![
                Variant {
                    name: "a".into(),
                    weight: 70,
                    content: None,
                },
                Variant {
                    name: "b".into(),
                    weight: 30,
                    content: None,
                },
            ],
            ..Default::default()
        };
        let mut counts = [0usize; 3];
        for i in 0..20_000 {
            let id = format!("r{i}");
            let first = group("c1", &id, &spec);
            assert_eq!(first, group("c1", &id, &spec));
            match first {
                Group::HeldOut => counts[2] += 1,
                Group::Variant(v) => counts[v] += 1,
            }
        }
        // 10% held out; of the rest 70/30 — within 1.5 points on 20,000.
        let share = |n: usize| n as f64 / 20_000.0;
        assert!((share(counts[2]) - 0.10).abs() < 0.015, "{counts:?}");
        assert!((share(counts[0]) - 0.63).abs() < 0.015, "{counts:?}");
        assert!((share(counts[1]) - 0.27).abs() < 0.015, "{counts:?}");
    }

    fn at(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .expect("time")
            .timestamp_millis()
    }

    #[test]
    fn local_time_is_each_zone_own_and_windows_hold() {
        let spec = CampaignSpec {
            schedule: Some(Schedule {
                local_time: "10:00".into(),
                windows: vec![SendWindow {
                    start: "09:00".into(),
                    end: "12:00".into(),
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let schedule = LocalSchedule::of(&spec);
        assert!(!schedule.is_flat());
        let start = at("2026-06-01T12:00:00Z");
        let tokyo: Tz = "Asia/Tokyo".parse().expect("zone");
        let la: Tz = "America/Los_Angeles".parse().expect("zone");
        // Tokyo is at 21:00: its next 10:00 is tomorrow 01:00 UTC.
        assert_eq!(
            schedule.due(&[tokyo], start),
            Due::At(at("2026-06-02T01:00:00Z"))
        );
        // Los Angeles is at 05:00 (PDT): 10:00 today is 17:00 UTC.
        assert_eq!(
            schedule.due(&[la], start),
            Due::At(at("2026-06-01T17:00:00Z"))
        );
        // Both candidate zones (a number whose prefix spans them): the later local time...
        let only_time = LocalSchedule::of(&CampaignSpec {
            schedule: Some(Schedule {
                local_time: "10:00".into(),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            only_time.due(&[tokyo, la], start),
            Due::At(at("2026-06-02T01:00:00Z"))
        );
        // ...but no instant is inside 09:00-12:00 in both: such a member is never due.
        assert_eq!(schedule.due(&[tokyo, la], start), Due::Never);
        // Late for the window (13:00 in Los Angeles): the next opening, tomorrow 09:00.
        assert_eq!(
            schedule.window_opening(&[la], at("2026-06-01T20:00:00Z")),
            Some(at("2026-06-02T16:00:00Z"))
        );
        assert_eq!(
            schedule.window_opening(&[la], at("2026-06-01T17:30:00Z")),
            Some(at("2026-06-01T17:30:00Z"))
        );
        assert!(LocalSchedule::default().is_flat());
        assert_eq!(LocalSchedule::default().due(&[la], start), Due::At(start));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30d"), Some(30 * 86_400_000));
        assert_eq!(parse_duration("90m"), Some(5_400_000));
        assert_eq!(parse_duration("0d"), None);
        assert_eq!(parse_duration("3651d"), None);
        assert_eq!(parse_duration("d"), None);
        assert_eq!(parse_duration("5w"), None);
    }
}
