//! # quiet_hours: send only inside the recipient's local sending window
//!
//! Owns the sending-window rule: a [`Window`] (tenant/campaign config: local start and end time,
//! optionally no weekends), [`evaluate`] of a window against the recipient's candidate zones
//! (from [`super::timezones::resolve`]) at `now`, and [`spread`], the deterministic jitter that
//! keeps deferred messages from all leaving at the same second when a window opens.
//!
//! Semantics, exactly: an instant is *open in a zone* when the zone's local wall-clock time at
//! that instant is inside the window (`start <= time < end`, or for an overnight window
//! `start > end`, `time >= start || time < end`) and, with `no_weekend`, the local date is not a
//! Saturday or Sunday. An instant is *open* when it is open in EVERY candidate zone: where a
//! phone prefix maps to several zones we only send in the window common to all of them, so no
//! candidate is messaged in its quiet hours. Consequences at DST changes, all by construction:
//! a window start that falls into a spring-forward gap (02:30 on a day that jumps 02:00 → 03:00)
//! opens at the first instant after the gap (03:00); a start in a fall-back overlap opens at the
//! earlier of the two instants with that wall time; and a window whose end lies in the repeated
//! hour re-opens for the part of the repeated hour that is inside the window again.
//!
//! Pure: no clock (callers pass `now`), no I/O, no logging. Verdicts explain themselves (zones,
//! local times, window) but never contain contact points.

use chrono::{DateTime, NaiveTime, Offset, TimeDelta, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How far ahead [`evaluate`] looks for the next instant open in every zone. One week plus a
/// day covers every weekly pattern (weekends included) from any starting point.
pub const SEARCH_HORIZON_DAYS: i64 = 8;

const DAY: i64 = 86_400;
/// Offsets are sampled this far apart to find DST transitions (then bisected to the second);
/// two transitions of one zone less than 6 hours apart do not occur in the tz database.
const TRANSITION_PROBE: i64 = 6 * 3_600;
/// At most this many zones are named in a verdict's `local_now` and `reason` (a +1 number
/// without a known area code has 40+ candidates).
const REASON_MAX_ZONES: usize = 5;

const DEFAULT_START: NaiveTime = hms(8, 0);
const DEFAULT_END: NaiveTime = hms(21, 0);

const fn hms(hour: u32, min: u32) -> NaiveTime {
    match NaiveTime::from_hms_opt(hour, min, 0) {
        Some(t) => t,
        None => NaiveTime::MIN,
    }
}

fn default_start() -> NaiveTime {
    DEFAULT_START
}

fn default_end() -> NaiveTime {
    DEFAULT_END
}

/// A local sending window (tenant or campaign config), e.g. `start = "08:00"`, `end = "21:00"`.
///
/// Times are wall-clock times in each recipient zone, written `"HH:MM"` (or `"HH:MM:SS"`).
/// `start > end` is an overnight window (`"22:00"`–`"06:00"` is open from 22:00 to 06:00 the
/// next morning); `end = "00:00"` means until midnight. `start == end` is rejected by
/// [`Window::validate`] (an empty window; to send at any time, set the tenant's `quiet_hours_enabled = false`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Local time the window opens, inclusive (`"HH:MM"`). Default `"08:00"`.
    #[serde(default = "default_start", with = "hhmm")]
    pub start: NaiveTime,
    /// Local time the window closes, exclusive (`"HH:MM"`). Default `"21:00"`. Earlier than
    /// `start` = an overnight window; `"00:00"` = until midnight.
    #[serde(default = "default_end", with = "hhmm")]
    pub end: NaiveTime,
    /// Also closed all day on local Saturdays and Sundays (the recipient's local date at the
    /// instant of sending; an overnight window from Friday 22:00 is cut at Saturday 00:00 and
    /// resumes Monday 00:00). Default `false`.
    #[serde(default)]
    pub no_weekend: bool,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            start: DEFAULT_START,
            end: DEFAULT_END,
            no_weekend: false,
        }
    }
}

/// Why a [`Window`] is not usable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error(
        "sending window start and end are both {at}: the window would be empty (for an \
         overnight window put start after end, e.g. 22:00-06:00; to send at any time, \
         set quiet_hours_enabled = false)"
    )]
    Empty { at: String },
    #[error("sending window {field} {at:?} has a fraction of a second; use whole seconds")]
    FractionalSecond { field: &'static str, at: String },
}

impl Window {
    /// Checks what serde cannot: a non-empty window of whole seconds.
    /// A window from `"HH:MM"` texts (a message's own quiet hours), validated.
    pub fn from_parts(start: &str, end: &str, no_weekend: bool) -> Result<Self, String> {
        let window = Window {
            start: hhmm::parse(start).map_err(|e| format!("start: {e}"))?,
            end: hhmm::parse(end).map_err(|e| format!("end: {e}"))?,
            no_weekend,
        };
        window.validate().map_err(|e| e.to_string())?;
        Ok(window)
    }

    pub fn validate(&self) -> Result<(), WindowError> {
        for (field, t) in [("start", self.start), ("end", self.end)] {
            if t.nanosecond() != 0 {
                return Err(WindowError::FractionalSecond {
                    field,
                    at: t.to_string(),
                });
            }
        }
        if self.start == self.end {
            return Err(WindowError::Empty {
                at: hhmm::format(self.start),
            });
        }
        Ok(())
    }

    fn start_secs(&self) -> i64 {
        i64::from(self.start.num_seconds_from_midnight())
    }

    fn end_secs(&self) -> i64 {
        i64::from(self.end.num_seconds_from_midnight())
    }

    /// Whether a local second of the day is inside the window (weekends aside).
    fn contains_time_of_day(&self, secs: i64) -> bool {
        let (start, end) = (self.start_secs(), self.end_secs());
        if start < end {
            start <= secs && secs < end
        } else if start > end {
            secs >= start || secs < end
        } else {
            false
        }
    }

    /// The open local intervals `[a, b)` of local day `day` (days since 1970-01-01, in local
    /// seconds since the epoch).
    fn local_intervals(&self, day: i64) -> impl Iterator<Item = (i64, i64)> {
        let closed_day = self.no_weekend && is_weekend(day);
        let (start, end) = (self.start_secs(), self.end_secs());
        let base = day * DAY;
        let parts = if closed_day || start == end {
            [None, None]
        } else if start < end {
            [Some((base + start, base + end)), None]
        } else {
            [Some((base, base + end)), Some((base + start, base + DAY))]
        };
        parts.into_iter().flatten().filter(|(a, b)| a < b)
    }

    fn label(&self) -> String {
        let weekdays = if self.no_weekend { ", weekdays" } else { "" };
        format!(
            "{}-{}{weekdays}",
            hhmm::format(self.start),
            hhmm::format(self.end)
        )
    }
}

/// Saturday or Sunday, for a day number counted from 1970-01-01 (a Thursday).
fn is_weekend(day: i64) -> bool {
    // Monday = 0 … Sunday = 6.
    (day + 3).rem_euclid(7) >= 5
}

/// The decision of [`evaluate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Inside the window in every zone: send now.
    Open,
    /// Outside the window in at least one zone: defer to `opens_at` (the earliest instant after
    /// `now` that is inside the window in every zone; add [`spread`] jitter).
    Closed {
        opens_at: DateTime<Utc>,
        /// Local time in each zone, e.g. `"23:00 America/New_York"` (comma-separated; after
        /// 5 zones, `"and N more"`).
        local_now: String,
        /// The rule and values used, for the event that records the deferral.
        reason: String,
    },
    /// No instant within [`SEARCH_HORIZON_DAYS`] is inside the window in every zone: the
    /// candidate zones are too far apart for this window (e.g. 09:00-12:00 in both Pacific/Guam
    /// and Pacific/Honolulu), or the window is empty, or no zone was given. The caller should
    /// evaluate again with the tenant's default zone alone (and record that it did) rather than
    /// never sending.
    NoCommonWindow {
        /// Local time in each zone, as in [`Verdict::Closed`].
        local_now: String,
        reason: String,
    },
}

/// Evaluates `window` for a recipient with candidate `zones` at `now` (see the module docs for
/// the exact rule, DST included). Cost when closed: per zone, a few dozen offset lookups over
/// the 8-day horizon, then a linear intersection of the zones' open intervals.
pub fn evaluate(window: &Window, zones: &[Tz], now: DateTime<Utc>) -> Verdict {
    // Whole seconds suffice: offsets and window bounds are whole seconds, so an instant is open
    // exactly when the start of its second is.
    let t = now.timestamp();
    let local_now = zones_text(zones, |tz| {
        format!("{} {}", now.with_timezone(tz).format("%H:%M"), tz.name())
    });
    if zones.is_empty() {
        return Verdict::NoCommonWindow {
            local_now,
            reason: "no time zone to evaluate the sending window in".into(),
        };
    }
    if window.start_secs() == window.end_secs() {
        return Verdict::NoCommonWindow {
            local_now,
            reason: format!("the sending window {} is empty", window.label()),
        };
    }
    let closed: Vec<Tz> = zones
        .iter()
        .copied()
        .filter(|tz| !is_open_in(window, *tz, t))
        .collect();
    if closed.is_empty() {
        return Verdict::Open;
    }

    let horizon = t
        .saturating_add(SEARCH_HORIZON_DAYS * DAY)
        .min(DateTime::<Utc>::MAX_UTC.timestamp());
    let mut common = vec![(t, horizon)];
    for tz in zones {
        common = intersect(&common, &open_intervals(window, *tz, t, horizon));
        if common.is_empty() {
            break;
        }
    }
    let why_closed = closed_zones_text(window, &closed, now);
    // `t` is closed, so every common interval starts after it.
    let opens_at = common
        .first()
        .and_then(|(start, _)| DateTime::from_timestamp(*start, 0));
    match opens_at {
        Some(opens_at) => {
            let local_open = zones_text(zones, |tz| {
                format!(
                    "{} {}",
                    opens_at.with_timezone(tz).format("%a %H:%M"),
                    tz.name()
                )
            });
            Verdict::Closed {
                opens_at,
                local_now,
                reason: format!(
                    "quiet hours: {why_closed}; next instant inside {} in every zone: {} ({local_open})",
                    window.label(),
                    opens_at.format("%Y-%m-%dT%H:%M:%SZ"),
                ),
            }
        }
        None => Verdict::NoCommonWindow {
            local_now,
            reason: format!(
                "quiet hours: {why_closed}; no instant in the next {SEARCH_HORIZON_DAYS} days is \
                 inside {} in all of {}",
                window.label(),
                zones_text(zones, |tz| tz.name().to_owned()),
            ),
        },
    }
}

/// `opens_at` plus a deterministic jitter in `[0, period)` (millisecond steps) derived from
/// `key` (e.g. the message id), so the messages deferred to one window opening leave spread over
/// `period` instead of in one spike, and a retried evaluation of the same message lands on the
/// same instant. A zero or negative `period` returns `opens_at`. Keep `period` short against the
/// window (minutes): the result is not re-checked against the window's end.
pub fn spread(opens_at: DateTime<Utc>, period: TimeDelta, key: &str) -> DateTime<Utc> {
    let Ok(period_ms) = u64::try_from(period.num_milliseconds()) else {
        return opens_at;
    };
    if period_ms == 0 {
        return opens_at;
    }
    // SHA-256 rather than std's hasher: the jitter must stay the same across nodes and Rust
    // versions.
    let digest = Sha256::digest(key.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let jitter_ms = u64::from_be_bytes(first) % period_ms;
    i64::try_from(jitter_ms)
        .ok()
        .and_then(|ms| opens_at.checked_add_signed(TimeDelta::milliseconds(ms)))
        .unwrap_or(opens_at)
}

/// UTC offset of `tz` at the instant `secs` (seconds since the epoch), in seconds.
fn offset_at(tz: Tz, secs: i64) -> i64 {
    match DateTime::from_timestamp(secs, 0) {
        Some(utc) => i64::from(
            tz.offset_from_utc_datetime(&utc.naive_utc())
                .fix()
                .local_minus_utc(),
        ),
        // Unreachable for instants of a `DateTime<Utc>` and the clamped horizon.
        None => 0,
    }
}

/// The open rule of the module docs at the instant `secs`.
fn is_open_in(window: &Window, tz: Tz, secs: i64) -> bool {
    let local = secs + offset_at(tz, secs);
    let day = local.div_euclid(DAY);
    !(window.no_weekend && is_weekend(day)) && window.contains_time_of_day(local.rem_euclid(DAY))
}

/// The stretches `[start, end, offset)` of constant UTC offset of `tz` covering `[from, to)`.
fn constant_offset_spans(tz: Tz, from: i64, to: i64) -> Vec<(i64, i64, i64)> {
    let mut spans = Vec::new();
    let mut span_start = from;
    let mut offset = offset_at(tz, from);
    let mut probe = from;
    while probe < to {
        let next = probe.saturating_add(TRANSITION_PROBE).min(to);
        if offset_at(tz, next) == offset {
            probe = next;
            continue;
        }
        // Bisect to the first second with the new offset.
        let (mut lo, mut hi) = (probe, next);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if offset_at(tz, mid) == offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        if hi >= to {
            break;
        }
        spans.push((span_start, hi, offset));
        span_start = hi;
        offset = offset_at(tz, hi);
        probe = hi;
    }
    spans.push((span_start, to, offset));
    spans
}

/// The instants of `[from, to)` open in `tz`, as sorted, disjoint, non-adjacent intervals.
fn open_intervals(window: &Window, tz: Tz, from: i64, to: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (span_start, span_end, offset) in constant_offset_spans(tz, from, to) {
        // Within the span local time is `instant + offset`: map each local open interval back.
        let first_day = (span_start + offset).div_euclid(DAY);
        let last_day = (span_end - 1 + offset).div_euclid(DAY);
        for day in first_day..=last_day {
            for (a, b) in window.local_intervals(day) {
                let start = (a - offset).max(span_start);
                let end = (b - offset).min(span_end);
                if start >= end {
                    continue;
                }
                match out.last_mut() {
                    Some(last) if last.1 >= start => last.1 = last.1.max(end),
                    _ => out.push((start, end)),
                }
            }
        }
    }
    out
}

/// Intersection of two sorted lists of disjoint intervals.
fn intersect(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        let start = a[i].0.max(b[j].0);
        let end = a[i].1.min(b[j].1);
        if start < end {
            out.push((start, end));
        }
        if a[i].1 < b[j].1 {
            i += 1;
        } else {
            j += 1;
        }
    }
    out
}

/// Up to [`REASON_MAX_ZONES`] zones rendered by `render`, then how many more.
fn zones_text(zones: &[Tz], render: impl Fn(&Tz) -> String) -> String {
    let mut text = zones
        .iter()
        .take(REASON_MAX_ZONES)
        .map(render)
        .collect::<Vec<_>>()
        .join(", ");
    if zones.len() > REASON_MAX_ZONES {
        text.push_str(&format!(" and {} more", zones.len() - REASON_MAX_ZONES));
    }
    text
}

/// "closed in America/New_York (local Tue 23:00, outside 08:00-21:00)".
fn closed_zones_text(window: &Window, closed: &[Tz], now: DateTime<Utc>) -> String {
    let listed = zones_text(closed, |tz| {
        let local = now.with_timezone(tz);
        let local_secs = now.timestamp() + offset_at(*tz, now.timestamp());
        let why = if window.no_weekend && is_weekend(local_secs.div_euclid(DAY)) {
            "a weekend day".to_owned()
        } else {
            format!("outside {}", window.label())
        };
        format!("{} (local {}, {why})", tz.name(), local.format("%a %H:%M"))
    });
    format!("closed in {listed}")
}

/// A time of day written `"HH:MM"` (or `"HH:MM:SS"`), strictly.
pub fn time_of_day(text: &str) -> Result<NaiveTime, String> {
    hhmm::parse(text)
}

/// `"HH:MM"` (with `":SS"` when there are seconds).
pub fn format_time(t: NaiveTime) -> String {
    hhmm::format(t)
}

/// serde for `NaiveTime` as `"HH:MM"` / `"HH:MM:SS"` (chrono's own serde feature is off).
mod hhmm {
    use chrono::{NaiveTime, Timelike};
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// `"08:00"`, or `"08:00:30"` when there are seconds.
    pub fn format(t: NaiveTime) -> String {
        if t.second() == 0 {
            format!("{:02}:{:02}", t.hour(), t.minute())
        } else {
            format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
        }
    }

    /// Strict: two digits per field, 00-23 hours, 00-59 minutes and seconds.
    pub fn parse(text: &str) -> Result<NaiveTime, String> {
        let bad = || format!("expected a time of day \"HH:MM\" (00:00 to 23:59), got {text:?}");
        let mut fields = [0u32; 3];
        let parts: Vec<&str> = text.split(':').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(bad());
        }
        for (field, part) in fields.iter_mut().zip(&parts) {
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            *field = part.parse().map_err(|_| bad())?;
        }
        NaiveTime::from_hms_opt(fields[0], fields[1], fields[2])
            .filter(|t| t.nanosecond() == 0)
            .ok_or_else(bad)
    }

    pub fn serialize<S: Serializer>(t: &NaiveTime, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<NaiveTime, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::timezones::zones_for_phone;
    use chrono::Datelike;
    use chrono_tz::America::{Boise, Los_Angeles, New_York, St_Johns};
    use chrono_tz::Asia::{Kathmandu, Kolkata};
    use chrono_tz::Australia::{Lord_Howe, Sydney};
    use chrono_tz::Europe::{London, Moscow};
    use chrono_tz::Pacific::{Apia, Chatham, Guam, Honolulu};
    use proptest::prelude::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("test instant")
            .with_timezone(&Utc)
    }

    fn window(start: &str, end: &str, no_weekend: bool) -> Window {
        Window {
            start: hhmm::parse(start).expect("test start"),
            end: hhmm::parse(end).expect("test end"),
            no_weekend,
        }
    }

    fn opens_at(verdict: &Verdict) -> DateTime<Utc> {
        match verdict {
            Verdict::Closed { opens_at, .. } => *opens_at,
            other => panic!("expected Closed, got {other:?}"),
        }
    }

    /// Independent oracle: chrono's own local time against the window, in every zone.
    fn open_everywhere(w: &Window, zones: &[Tz], at: DateTime<Utc>) -> bool {
        zones.iter().all(|tz| {
            let local = at.with_timezone(tz);
            let weekend = matches!(local.weekday(), chrono::Weekday::Sat | chrono::Weekday::Sun);
            let time = local.time();
            let inside = if w.start < w.end {
                w.start <= time && time < w.end
            } else {
                time >= w.start || time < w.end
            };
            inside && !(w.no_weekend && weekend)
        })
    }

    #[test]
    fn new_york_number_at_23_00_is_deferred_to_08_00_next_day() {
        let zones = zones_for_phone("+12125550100").expect("+1 212 is New York");
        assert_eq!(zones, &[New_York][..]);
        // Tuesday 2026-11-24 23:00 EST.
        let now = utc("2026-11-25T04:00:00Z");
        let verdict = evaluate(&Window::default(), zones, now);
        let Verdict::Closed {
            opens_at,
            local_now,
            reason,
        } = &verdict
        else {
            panic!("expected Closed, got {verdict:?}");
        };
        assert_eq!(
            *opens_at,
            utc("2026-11-25T13:00:00Z"),
            "08:00 EST Wednesday"
        );
        assert_eq!(local_now, "23:00 America/New_York");
        for needle in [
            "America/New_York",
            "23:00",
            "08:00-21:00",
            "Wed 08:00",
            "2026-11-25T13:00:00Z",
        ] {
            assert!(
                reason.contains(needle),
                "{needle:?} missing from {reason:?}"
            );
        }
        assert!(!reason.contains("5550100"), "no phone number in the reason");

        let period = TimeDelta::minutes(15);
        let sent = spread(*opens_at, period, "01JDMESSAGEID");
        assert!(sent >= *opens_at && sent < *opens_at + period, "{sent}");
        assert_eq!(
            sent,
            spread(*opens_at, period, "01JDMESSAGEID"),
            "deterministic"
        );
        assert_eq!(evaluate(&Window::default(), zones, sent), Verdict::Open);
    }

    #[test]
    fn inside_the_window_is_open() {
        let now = utc("2026-11-24T15:00:00Z"); // 10:00 EST
        assert_eq!(
            evaluate(&Window::default(), &[New_York], now),
            Verdict::Open
        );
        // 20:59:59.9 is still inside, 21:00:00 is not.
        let before_end = utc("2026-11-25T01:59:59.900Z");
        assert_eq!(
            evaluate(&Window::default(), &[New_York], before_end),
            Verdict::Open
        );
        let end = utc("2026-11-25T02:00:00Z");
        assert_eq!(
            opens_at(&evaluate(&Window::default(), &[New_York], end)),
            utc("2026-11-25T13:00:00Z")
        );
    }

    #[test]
    fn new_york_08_00_across_dst_changes() {
        let w = Window::default();
        // Spring forward 2026-03-08 02:00 EST -> 03:00 EDT: 08:00 is EDT (UTC-4).
        assert_eq!(
            opens_at(&evaluate(&w, &[New_York], utc("2026-03-08T05:00:00Z"))),
            utc("2026-03-08T12:00:00Z")
        );
        // The evening before is still EST (UTC-5).
        assert_eq!(
            opens_at(&evaluate(&w, &[New_York], utc("2026-03-07T02:00:00Z"))),
            utc("2026-03-07T13:00:00Z")
        );
        // Fall back 2026-11-01 02:00 EDT -> 01:00 EST: 08:00 is EST (UTC-5).
        assert_eq!(
            opens_at(&evaluate(&w, &[New_York], utc("2026-11-01T04:00:00Z"))),
            utc("2026-11-01T13:00:00Z")
        );
        assert_eq!(
            opens_at(&evaluate(&w, &[New_York], utc("2026-10-31T02:00:00Z"))),
            utc("2026-10-31T12:00:00Z")
        );
    }

    #[test]
    fn start_in_a_spring_forward_gap_opens_after_the_gap() {
        // 02:30 does not exist on 2026-03-08 in New York: the window opens at 03:00 EDT.
        let w = window("02:30", "06:00", false);
        let verdict = evaluate(&w, &[New_York], utc("2026-03-08T05:00:00Z"));
        assert_eq!(opens_at(&verdict), utc("2026-03-08T07:00:00Z"));
        assert_eq!(
            evaluate(&w, &[New_York], utc("2026-03-08T07:00:00Z")),
            Verdict::Open
        );
        assert_ne!(
            evaluate(&w, &[New_York], utc("2026-03-08T06:59:59Z")),
            Verdict::Open
        );
    }

    #[test]
    fn start_in_a_fall_back_overlap_opens_at_the_earlier_instant() {
        // 01:30 happens twice on 2026-11-01 in New York: 05:30Z (EDT) and 06:30Z (EST).
        let w = window("01:30", "06:00", false);
        assert_eq!(
            opens_at(&evaluate(&w, &[New_York], utc("2026-11-01T04:00:00Z"))),
            utc("2026-11-01T05:30:00Z")
        );
        // A window ending in the repeated hour re-opens when the wall clock goes back into it.
        let w = window("00:30", "01:30", false);
        let after_first_end = utc("2026-11-01T05:45:00Z"); // 01:45 EDT
        assert_eq!(
            opens_at(&evaluate(&w, &[New_York], after_first_end)),
            utc("2026-11-01T06:00:00Z") // 01:00 EST
        );
    }

    #[test]
    fn moscow_today_and_its_2011_and_2014_changes() {
        let w = Window::default();
        // No DST today: UTC+3 all year.
        for (now, open) in [
            ("2026-01-15T00:00:00Z", "2026-01-15T05:00:00Z"),
            ("2026-07-15T00:00:00Z", "2026-07-15T05:00:00Z"),
        ] {
            assert_eq!(opens_at(&evaluate(&w, &[Moscow], utc(now))), utc(open));
        }
        // 2011-03-27 02:00 MSK (UTC+3) -> 03:00 MSD (UTC+4), kept all year since.
        assert_eq!(
            opens_at(&evaluate(&w, &[Moscow], utc("2011-03-26T22:00:00Z"))),
            utc("2011-03-27T04:00:00Z")
        );
        assert_eq!(
            opens_at(&evaluate(&w, &[Moscow], utc("2011-03-25T22:00:00Z"))),
            utc("2011-03-26T05:00:00Z")
        );
        let gap = window("02:30", "06:00", false);
        assert_eq!(
            opens_at(&evaluate(&gap, &[Moscow], utc("2011-03-26T22:00:00Z"))),
            utc("2011-03-26T23:00:00Z")
        );
        // 2014-10-26 02:00 (UTC+4) -> 01:00 (UTC+3): 01:30 twice, the earlier one wins.
        let overlap = window("01:30", "06:00", false);
        assert_eq!(
            opens_at(&evaluate(&overlap, &[Moscow], utc("2014-10-25T20:30:00Z"))),
            utc("2014-10-25T21:30:00Z")
        );
    }

    #[test]
    fn a_skipped_day_is_crossed() {
        // Samoa skipped 2011-12-30 (UTC-10 -> UTC+14 at midnight).
        let now = utc("2011-12-30T08:00:00Z"); // Thu 2011-12-29 22:00 local
        assert_eq!(
            opens_at(&evaluate(&Window::default(), &[Apia], now)),
            utc("2011-12-30T18:00:00Z") // Sat 2011-12-31 08:00 local
        );
    }

    #[test]
    fn overnight_and_until_midnight_windows() {
        let night = window("22:00", "06:00", false);
        let zones = [Tz::UTC];
        assert_eq!(
            opens_at(&evaluate(&night, &zones, utc("2026-11-24T20:00:00Z"))),
            utc("2026-11-24T22:00:00Z")
        );
        assert_eq!(
            evaluate(&night, &zones, utc("2026-11-24T23:00:00Z")),
            Verdict::Open
        );
        assert_eq!(
            evaluate(&night, &zones, utc("2026-11-25T05:59:59Z")),
            Verdict::Open
        );
        assert_eq!(
            opens_at(&evaluate(&night, &zones, utc("2026-11-25T06:00:00Z"))),
            utc("2026-11-25T22:00:00Z")
        );
        // With no_weekend, Friday night is cut at Saturday 00:00 and resumes Monday 00:00.
        let night_weekdays = window("22:00", "06:00", true);
        assert_eq!(
            opens_at(&evaluate(
                &night_weekdays,
                &zones,
                utc("2026-11-28T00:00:00Z")
            )),
            utc("2026-11-30T00:00:00Z")
        );
        let evening = window("18:00", "00:00", false);
        assert_eq!(
            evaluate(&evening, &zones, utc("2026-11-24T23:59:59Z")),
            Verdict::Open
        );
        assert_eq!(
            opens_at(&evaluate(&evening, &zones, utc("2026-11-25T00:00:00Z"))),
            utc("2026-11-25T18:00:00Z")
        );
    }

    #[test]
    fn weekends_are_closed_when_asked() {
        let w = window("08:00", "21:00", true);
        // Saturday 2026-11-28 10:00 EST.
        let verdict = evaluate(&w, &[New_York], utc("2026-11-28T15:00:00Z"));
        assert_eq!(
            opens_at(&verdict),
            utc("2026-11-30T13:00:00Z"),
            "Monday 08:00"
        );
        let Verdict::Closed { reason, .. } = verdict else {
            unreachable!()
        };
        assert!(reason.contains("weekend"), "{reason}");
        assert_eq!(
            evaluate(&Window::default(), &[New_York], utc("2026-11-28T15:00:00Z")),
            Verdict::Open
        );
    }

    #[test]
    fn several_zones_of_a_prefix_give_the_common_window() {
        let zones = zones_for_phone("+12082001234").expect("+1 208 2");
        assert_eq!(zones, &[Boise, Los_Angeles][..]);
        let w = Window::default();
        // 08:30 in Boise (MST) is 07:30 in Los Angeles: wait for 08:00 Los Angeles.
        let verdict = evaluate(&w, zones, utc("2026-11-24T15:30:00Z"));
        assert_eq!(opens_at(&verdict), utc("2026-11-24T16:00:00Z"));
        let Verdict::Closed {
            local_now, reason, ..
        } = verdict
        else {
            unreachable!()
        };
        assert_eq!(local_now, "08:30 America/Boise, 07:30 America/Los_Angeles");
        assert!(reason.contains("closed in America/Los_Angeles"), "{reason}");
        assert!(!reason.contains("closed in America/Boise"), "{reason}");
        // 20:30 in Boise is open in both; 21:30 in Boise is closed there until 08:00 LA.
        assert_eq!(
            evaluate(&w, zones, utc("2026-11-25T03:30:00Z")),
            Verdict::Open
        );
        assert_eq!(
            opens_at(&evaluate(&w, zones, utc("2026-11-25T04:30:00Z"))),
            utc("2026-11-25T16:00:00Z")
        );
    }

    #[test]
    fn zones_without_a_common_window() {
        let w = window("09:00", "12:00", false);
        let verdict = evaluate(&w, &[Guam, Honolulu], utc("2026-11-24T12:00:00Z"));
        let Verdict::NoCommonWindow { reason, .. } = &verdict else {
            panic!("expected NoCommonWindow, got {verdict:?}");
        };
        assert!(reason.contains("Pacific/Guam") && reason.contains("Pacific/Honolulu"));
        // The default window does have a common part (Guam is 20 h ahead, i.e. 4 h behind).
        assert_ne!(
            std::mem::discriminant(&evaluate(
                &Window::default(),
                &[Guam, Honolulu],
                utc("2026-11-24T12:00:00Z")
            )),
            std::mem::discriminant(&verdict)
        );
        assert!(matches!(
            evaluate(&Window::default(), &[], utc("2026-11-24T12:00:00Z")),
            Verdict::NoCommonWindow { .. }
        ));
    }

    #[test]
    fn whole_north_american_list_is_bounded() {
        // A +1 number without a known area code: 40+ zones, from Guam to St. John's.
        let zones = zones_for_phone("+19995550100").expect("+1");
        let verdict = evaluate(&Window::default(), zones, utc("2026-11-24T12:00:00Z"));
        match verdict {
            Verdict::Closed {
                reason, local_now, ..
            }
            | Verdict::NoCommonWindow { reason, local_now } => {
                assert!(reason.contains("more"), "zone list is capped: {reason}");
                assert!(reason.len() < 1_000, "{reason}");
                assert!(local_now.ends_with("and 37 more"), "{local_now}");
            }
            Verdict::Open => panic!("12:00 UTC is night in Guam and Honolulu"),
        }
    }

    #[test]
    fn window_config() {
        let w: Window = toml::from_str("").expect("defaults");
        assert_eq!(w, Window::default());
        assert_eq!(w.start, hms(8, 0));
        assert_eq!(w.end, hms(21, 0));
        assert!(!w.no_weekend);
        let w: Window = toml::from_str("start = \"07:30\"\nend = \"20:15:30\"\nno_weekend = true")
            .expect("toml");
        assert_eq!(
            w,
            Window {
                start: hms(7, 30),
                end: hhmm::parse("20:15:30").expect("t"),
                no_weekend: true
            }
        );
        let json = serde_json::to_string(&w).expect("json");
        assert_eq!(
            json,
            r#"{"start":"07:30","end":"20:15:30","no_weekend":true}"#
        );
        assert_eq!(
            serde_json::from_str::<Window>(&json).expect("round trip"),
            w
        );
        for bad in [
            "8:00",
            "24:00",
            "08:60",
            "08",
            "08:00:60",
            "08:00:00:00",
            "ab:cd",
            " 08:00",
        ] {
            let text = format!("start = {bad:?}");
            let err = toml::from_str::<Window>(&text).expect_err(bad).to_string();
            assert!(err.contains("HH:MM"), "{bad}: {err}");
        }
        assert!(
            toml::from_str::<Window>("quiet = true").is_err(),
            "unknown field"
        );

        assert_eq!(Window::default().validate(), Ok(()));
        assert_eq!(window("22:00", "06:00", false).validate(), Ok(()));
        let err = window("08:00", "08:00", false)
            .validate()
            .expect_err("empty");
        assert!(err.to_string().contains("08:00"), "{err}");
        let fractional = Window {
            start: NaiveTime::from_hms_milli_opt(8, 0, 0, 500).expect("t"),
            ..Window::default()
        };
        assert!(matches!(
            fractional.validate(),
            Err(WindowError::FractionalSecond { .. })
        ));
        assert!(matches!(
            evaluate(
                &window("08:00", "08:00", false),
                &[New_York],
                utc("2026-11-24T12:00:00Z")
            ),
            Verdict::NoCommonWindow { .. }
        ));
    }

    #[test]
    fn spread_is_deterministic_and_bounded() {
        let at = utc("2026-11-25T13:00:00Z");
        let period = TimeDelta::minutes(10);
        let mut distinct = std::collections::BTreeSet::new();
        for i in 0..200 {
            let sent = spread(at, period, &format!("msg-{i}"));
            assert!(sent >= at && sent < at + period);
            distinct.insert(sent);
        }
        assert!(distinct.len() > 150, "keys spread out: {}", distinct.len());
        assert_eq!(spread(at, TimeDelta::zero(), "k"), at);
        assert_eq!(spread(at, TimeDelta::minutes(-5), "k"), at);
        assert_eq!(spread(at, TimeDelta::milliseconds(1), "k"), at);
    }

    const ZONES: [Tz; 15] = [
        New_York,
        Los_Angeles,
        Boise,
        St_Johns,
        Moscow,
        London,
        Kolkata,
        Kathmandu,
        Sydney,
        Lord_Howe,
        Chatham,
        Guam,
        Honolulu,
        Apia,
        Tz::UTC,
    ];

    fn any_window() -> impl Strategy<Value = Window> {
        (0u32..1440, 0u32..1440, any::<bool>())
            .prop_filter("non-empty", |(s, e, _)| s != e)
            .prop_map(|(s, e, no_weekend)| Window {
                start: hms(s / 60, s % 60),
                end: hms(e / 60, e % 60),
                no_weekend,
            })
    }

    /// Windows with quarter-hour bounds around the night hours where DST changes happen.
    fn night_window() -> impl Strategy<Value = Window> {
        (0u32..20, 1u32..40, any::<bool>()).prop_map(|(s, len, no_weekend)| {
            let start = s * 15;
            let end = (start + len * 15) % 1440;
            Window {
                start: hms(start / 60, start % 60),
                end: hms(end / 60, end % 60),
                no_weekend,
            }
        })
    }

    fn instant(secs: i64, nanos: u32) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, nanos).expect("instant in range")
    }

    /// The properties of the module docs, checked against the oracle.
    fn check(w: &Window, zones: &[Tz], now: DateTime<Utc>) -> Result<(), TestCaseError> {
        let verdict = evaluate(w, zones, now);
        let open_now = open_everywhere(w, zones, now);
        prop_assert_eq!(verdict == Verdict::Open, open_now, "{:?}", verdict);
        match verdict {
            Verdict::Open => {}
            Verdict::Closed { opens_at, .. } => {
                prop_assert!(opens_at > now);
                prop_assert!(opens_at <= now + TimeDelta::days(SEARCH_HORIZON_DAYS));
                prop_assert!(open_everywhere(w, zones, opens_at));
                prop_assert_eq!(evaluate(w, zones, opens_at), Verdict::Open);
                // Earliest: the second before is closed, and so is a grid in between.
                prop_assert!(!open_everywhere(w, zones, opens_at - TimeDelta::seconds(1)));
                let gap = opens_at - now;
                for k in 1..128 {
                    let at = now + gap * k / 128;
                    prop_assert!(
                        !open_everywhere(w, zones, at),
                        "open at {} before {}",
                        at,
                        opens_at
                    );
                }
            }
            Verdict::NoCommonWindow { .. } => {
                prop_assert!(zones.len() > 1, "a single zone always has a window");
                for k in 0..(SEARCH_HORIZON_DAYS * 24 * 4) {
                    let at = now + TimeDelta::minutes(15 * k);
                    prop_assert!(!open_everywhere(w, zones, at), "open at {}", at);
                }
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn prop_random_instants_windows_and_zones(
            secs in 946_684_800i64..2_051_222_400, // 2000 .. 2035
            nanos in prop_oneof![Just(0u32), 0u32..1_000_000_000],
            w in any_window(),
            zones in prop::sample::subsequence(ZONES.to_vec(), 1..=3),
        ) {
            check(&w, &zones, instant(secs, nanos))?;
        }

        #[test]
        fn prop_dst_edges_new_york_and_moscow(
            change in prop::sample::select(vec![
                1_772_953_200i64, // 2026-03-08T07:00Z New York spring forward
                1_793_512_800,    // 2026-11-01T06:00Z New York fall back
                1_301_180_400,    // 2011-03-26T23:00Z Moscow UTC+3 -> UTC+4
                1_414_274_400,    // 2014-10-25T22:00Z Moscow UTC+4 -> UTC+3
            ]),
            delta in -3 * DAY..DAY,
            w in night_window(),
            zones in prop::sample::select(vec![vec![New_York], vec![Moscow], vec![New_York, Moscow]]),
        ) {
            check(&w, &zones, instant(change + delta, 0))?;
        }

        #[test]
        fn prop_several_zones_are_the_intersection(
            secs in 1_767_225_600i64..1_798_761_600, // 2026
            w in any_window(),
        ) {
            let now = instant(secs, 0);
            let both = evaluate(&w, &[Boise, Los_Angeles], now);
            let boise = evaluate(&w, &[Boise], now);
            let la = evaluate(&w, &[Los_Angeles], now);
            prop_assert_eq!(both == Verdict::Open, boise == Verdict::Open && la == Verdict::Open);
            if let Verdict::Closed { opens_at, .. } = both {
                for single in [boise, la] {
                    if let Verdict::Closed { opens_at: single_opens, .. } = single {
                        prop_assert!(opens_at >= single_opens);
                    }
                }
            }
            check(&w, &[Boise, Los_Angeles], now)?;
        }
    }
}
