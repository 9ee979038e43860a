//! # gates: may this message (or this step) go now?
//!
//! Owns one pure function per policy gate, in the order ARCHITECTURE.md applies them: contact
//! point and suppression → consent → preferences → frequency caps → quiet hours → the channel
//! rules of each account (session window) → pauses (block-rate breakers). Each takes exactly
//! the facts it needs (the recipient, the sends of the last week, `now`) and answers `None`
//! (go) or a typed [`Reason`] with the values it used. The waterfall state machine calls them;
//! the actor reads the facts.
//!
//! Must never do I/O, read a clock (callers pass `now`), or keep state.

use chrono::{DateTime, TimeDelta, Utc};
use chrono_tz::Tz;
use herald_proto::v1::{Channel, MessageClass, QuietHoursOverride, Recipient};

use crate::policy::caps::{self, CapRule, CapScope, DAY, SentRecord, WEEK};
use crate::policy::contact;
use crate::policy::quiet_hours::{self, Verdict, Window};
use crate::policy::timezones::{self, ZoneSource};
use crate::reason::{Pause, Reason, ZonesFrom};

/// The step's channel has an address, and it is not suppressed.
pub fn contact(recipient: &Recipient, channel: Channel) -> Option<Reason> {
    if !contact::has_address(recipient, channel) {
        return Some(Reason::NoContactPoint { channel });
    }
    if contact::contact_point(recipient, channel, None).is_none() {
        let why = recipient
            .suppressed
            .iter()
            .find(|s| s.channel == channel as i32)
            .map_or("unknown", |s| s.reason.as_str());
        return Some(Reason::Suppressed {
            channel,
            why: why.to_owned(),
        });
    }
    None
}

/// The consent ledger allows `class`/`topic` on `channel` from some sender.
pub fn consent(
    recipient: &Recipient,
    channel: Channel,
    class: MessageClass,
    topic: &str,
) -> Option<Reason> {
    crate::policy::consent::verdict(recipient, channel, class, topic)
}

/// The person did not mute the message's topic (marketing; the whole message).
pub fn muted_topic(recipient: &Recipient, topic: &str) -> Option<Reason> {
    let preferences = recipient.preferences.as_ref()?;
    (!topic.is_empty() && preferences.muted_topics.iter().any(|t| t == topic)).then(|| {
        Reason::MutedTopic {
            topic: topic.to_owned(),
        }
    })
}

/// The tenant's sliding-window caps allow one more marketing message at `now_ms`.
pub fn frequency_cap(sends: &[SentRecord], rules: &[CapRule], now_ms: i64) -> Option<Reason> {
    let exceeded = caps::check_scoped(sends, rules, now_ms).err()?;
    Some(Reason::FrequencyCap {
        count: exceeded.count,
        max: exceeded.rule.max,
        window_s: exceeded.rule.window.as_secs(),
        retry_at_unix_ms: exceeded.retry_at_ms,
    })
}

/// The person's own per-channel limit allows one more marketing message on `channel`.
pub fn channel_limit(
    recipient: &Recipient,
    channel: Channel,
    sends: &[SentRecord],
    now_ms: i64,
) -> Option<Reason> {
    let preferences = recipient.preferences.as_ref()?;
    let limits = match channel {
        Channel::Push => preferences.push.as_ref(),
        Channel::Email => preferences.email.as_ref(),
        Channel::Sms => preferences.sms.as_ref(),
        Channel::Unspecified => None,
    }?;
    let rules: Vec<CapRule> = [(limits.max_per_day, DAY), (limits.max_per_week, WEEK)]
        .into_iter()
        .filter_map(|(max, window)| {
            max.map(|max| CapRule {
                max,
                window,
                scope: CapScope::Channel(channel),
            })
        })
        .collect();
    let exceeded = caps::check_scoped(sends, &rules, now_ms).err()?;
    Some(Reason::ChannelLimit {
        channel,
        count: exceeded.count,
        max: exceeded.rule.max,
        window_s: exceeded.rule.window.as_secs(),
    })
}

/// The tenant's side of quiet hours: its window (`None` = no quiet hours), default zone, and
/// the spread of wake-ups after a window opens.
#[derive(Clone, Copy, Debug)]
pub struct QuietHoursPolicy<'a> {
    pub window: Option<&'a Window>,
    pub default_zone: Tz,
    pub spread_ms: i64,
}

/// A marketing message outside the recipient's local window: when to wake it (on the policy
/// clock `now` is on) and why. `own`: the message's own window, if it has one; `key`: what the
/// wake-up jitter is derived from (the message id).
pub fn quiet_hours(
    own: Option<&QuietHoursOverride>,
    tenant: QuietHoursPolicy<'_>,
    recipient: &Recipient,
    now: DateTime<Utc>,
    key: &str,
) -> Option<(DateTime<Utc>, Reason)> {
    let own_window = match own {
        Some(o) if o.disabled => return None,
        Some(o) => Window::from_parts(&o.start, &o.end, o.no_weekend).ok(),
        None => None,
    };
    let window = match &own_window {
        Some(window) => window,
        None => tenant.window?,
    };
    let (zones, source) =
        timezones::resolve(&recipient.time_zone, &recipient.phone, tenant.default_zone);
    let mut zones_from = match source {
        ZoneSource::Explicit => ZonesFrom::Recipient,
        ZoneSource::PhonePrefix { prefix } => ZonesFrom::PhonePrefix { prefix },
        ZoneSource::TenantDefault => ZonesFrom::TenantDefault,
    };
    let mut verdict = quiet_hours::evaluate(window, &zones, now);
    if matches!(verdict, Verdict::NoCommonWindow { .. }) {
        verdict = quiet_hours::evaluate(window, &[tenant.default_zone], now);
        zones_from = ZonesFrom::TenantDefaultNoCommonWindow;
    }
    let Verdict::Closed {
        opens_at, reason, ..
    } = verdict
    else {
        return None;
    };
    let wake = quiet_hours::spread(opens_at, TimeDelta::milliseconds(tenant.spread_ms), key);
    Some((
        wake,
        Reason::QuietHours {
            rule: reason,
            zones_from,
            wake_at: wake.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
    ))
}

/// A messenger-style session window of `hours` on `account`: an untagged message goes only
/// within `hours` of the person's last inbound message.
pub fn session_window(
    account: &str,
    hours: u32,
    tagged: bool,
    last_inbound_unix_ms: Option<i64>,
    now_ms: i64,
) -> Option<Reason> {
    if hours == 0 || tagged {
        return None;
    }
    let window_ms = i64::from(hours) * 3_600_000;
    let open = last_inbound_unix_ms.is_some_and(|at| now_ms - at < window_ms);
    (!open).then(|| Reason::SessionWindow {
        account: account.to_owned(),
        hours,
        last_inbound_unix_ms,
    })
}

/// What a paused breaker does to a step.
#[derive(Clone, Debug, PartialEq)]
pub enum PauseVerdict {
    /// Nothing paused: send.
    Go,
    /// A paused sender, and the message asked to go on: skip the step.
    Skip(Reason),
    /// Wait for the resume (re-checked on a durable timer).
    Defer(Reason),
}

/// The step's campaign or sender breaker: `paused` is the one in force, if any.
pub fn pause(paused: Option<Pause>, fall_back_when_paused: bool) -> PauseVerdict {
    match paused {
        None => PauseVerdict::Go,
        Some(pause) if fall_back_when_paused && pause.is_sender() => {
            PauseVerdict::Skip(Reason::BreakerPaused(pause))
        }
        Some(pause) => PauseVerdict::Defer(Reason::BreakerPaused(pause)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::{
        ChannelConsent, ChannelLimits, ConsentState, Preferences, PushToken, SuppressedContact,
    };

    fn person() -> Recipient {
        Recipient {
            id: "r".into(),
            email: "a@example.com".into(),
            phone: "+12125550123".into(),
            push_tokens: vec![PushToken {
                token: "t".into(),
                platform: 0,
            }],
            consent: vec![ChannelConsent {
                channel: Channel::Email as i32,
                state: ConsentState::OptedIn as i32,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn contact_needs_an_address_that_is_not_suppressed() {
        let mut r = person();
        assert_eq!(contact(&r, Channel::Email), None);
        r.email.clear();
        assert_eq!(
            contact(&r, Channel::Email).map(|r| r.to_string()),
            Some("no_contact_point{channel=email}".into())
        );
        let mut r = person();
        r.suppressed.push(SuppressedContact {
            channel: Channel::Sms as i32,
            address: r.phone.clone(),
            reason: "bounced_hard".into(),
            at_unix_ms: 1,
        });
        assert_eq!(
            contact(&r, Channel::Sms).map(|r| r.to_string()),
            Some("suppressed{channel=sms, reason=bounced_hard}".into())
        );
    }

    #[test]
    fn consent_asks_marketing_for_an_opt_in() {
        let r = person();
        assert_eq!(
            consent(&r, Channel::Email, MessageClass::Marketing, ""),
            None
        );
        assert!(matches!(
            consent(&r, Channel::Sms, MessageClass::Marketing, "deals"),
            Some(Reason::NoOptIn { .. })
        ));
        assert_eq!(
            consent(&r, Channel::Sms, MessageClass::Transactional, ""),
            None
        );
    }

    #[test]
    fn preferences_mute_topics_and_limit_channels() {
        let mut r = person();
        r.preferences = Some(Preferences {
            muted_topics: vec!["deals".into()],
            email: Some(ChannelLimits {
                max_per_day: Some(1),
                max_per_week: None,
            }),
            ..Default::default()
        });
        assert_eq!(
            muted_topic(&r, "deals").map(|r| r.to_string()),
            Some("preference{muted_topic=deals}".into())
        );
        assert_eq!(muted_topic(&r, "news"), None);
        assert_eq!(muted_topic(&r, ""), None);
        let now = 10 * 86_400_000;
        let sent = |at_ms| SentRecord {
            at_ms,
            channel: Channel::Email,
            marketing: true,
        };
        assert_eq!(channel_limit(&r, Channel::Email, &[], now), None);
        assert_eq!(
            channel_limit(&r, Channel::Email, &[sent(now - 1_000)], now).map(|r| r.to_string()),
            Some("preference_limit{channel=email, count=1, max=1, window_s=86400}".into())
        );
        // A day later the window slid past it.
        assert_eq!(
            channel_limit(&r, Channel::Email, &[sent(now - 86_400_001)], now),
            None
        );
        assert_eq!(
            channel_limit(&r, Channel::Sms, &[sent(now - 1_000)], now),
            None
        );
    }

    #[test]
    fn frequency_caps_slide() {
        let rule = CapRule {
            max: 1,
            window: std::time::Duration::from_secs(3600),
            scope: CapScope::TenantMarketing,
        };
        let sent = SentRecord {
            at_ms: 1_000,
            channel: Channel::Push,
            marketing: true,
        };
        assert_eq!(
            frequency_cap(&[sent], &[rule], 2_000).map(|r| r.to_string()),
            Some("frequency_cap{count=1, max=1, window_s=3600, retry_at_unix_ms=3601000}".into())
        );
        assert_eq!(frequency_cap(&[sent], &[rule], 3_601_000), None);
    }

    #[test]
    fn quiet_hours_defer_to_the_local_morning() {
        let window = Window::default();
        let tenant = QuietHoursPolicy {
            window: Some(&window),
            default_zone: chrono_tz::UTC,
            spread_ms: 0,
        };
        let mut r = person();
        r.time_zone = "America/New_York".into();
        // 03:00 UTC = 22:00 or 23:00 in New York: closed until 08:00 there.
        let night = DateTime::parse_from_rfc3339("2026-01-10T03:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        let (wake, reason) = quiet_hours(None, tenant, &r, night, "m").expect("closed");
        assert_eq!(wake.to_rfc3339(), "2026-01-10T13:00:00+00:00");
        let text = reason.to_string();
        assert!(
            text.starts_with("quiet_hours{") && text.contains("zones_from=recipient"),
            "{text}"
        );
        // Noon in New York: open.
        let noon = DateTime::parse_from_rfc3339("2026-01-10T17:00:00Z")
            .expect("time")
            .with_timezone(&Utc);
        assert!(quiet_hours(None, tenant, &r, noon, "m").is_none());
        // The message may switch them off.
        let off = QuietHoursOverride {
            disabled: true,
            ..Default::default()
        };
        assert!(quiet_hours(Some(&off), tenant, &r, night, "m").is_none());
        // No tenant window, no quiet hours.
        let none = QuietHoursPolicy {
            window: None,
            ..tenant
        };
        assert!(quiet_hours(None, none, &r, night, "m").is_none());
    }

    #[test]
    fn session_windows_need_a_recent_inbound_or_a_tag() {
        let hour = 3_600_000;
        assert_eq!(session_window("wa", 0, false, None, hour), None);
        assert_eq!(session_window("wa", 24, true, None, hour), None);
        assert_eq!(
            session_window("wa", 24, false, Some(0), 23 * hour),
            None,
            "inside the window"
        );
        assert_eq!(
            session_window("wa", 24, false, None, hour).map(|r| r.to_string()),
            Some(
                "session_window{account=wa, hours=24, last_inbound_unix_ms=never, tag=none}".into()
            )
        );
        assert!(session_window("wa", 24, false, Some(0), 24 * hour).is_some());
    }

    #[test]
    fn pauses_hold_or_skip() {
        let sender = Pause {
            key: "sender:mail".into(),
            ratio: 0.01,
            sample: 10,
            pause_threshold: 0.003,
        };
        let campaign = Pause {
            key: "campaign:acme:c1".into(),
            ..sender.clone()
        };
        assert_eq!(pause(None, true), PauseVerdict::Go);
        assert!(matches!(
            pause(Some(sender.clone()), true),
            PauseVerdict::Skip(_)
        ));
        assert!(matches!(pause(Some(sender), false), PauseVerdict::Defer(_)));
        assert!(matches!(
            pause(Some(campaign), true),
            PauseVerdict::Defer(_)
        ));
    }
}
