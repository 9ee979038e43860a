//! # reason: why a message did what it did, as values
//!
//! Owns [`Reason`], the typed explanation carried by every event that needs one (a skip, a
//! deferral, a suppression, an outcome), and its rendering: the text in `Event.reason` is made
//! here and nowhere else, so tests, events and metrics agree on it. Gates and the waterfall
//! state machine return `Reason`s; the actor stores their text.
//!
//! The rendered forms are part of the API (clients and the chaos checker read them): each
//! variant documents its text, and a change of text is a change of contract. Must never render
//! a contact point, a message body or an inbound text.

use std::fmt;

use herald_proto::v1::{Channel, ChannelConsent, EngagementKind, SuccessCondition};

/// Lowercase channel name as used in reasons (`push`, `email`, `sms`).
pub fn channel_name(channel: Channel) -> &'static str {
    match channel {
        Channel::Push => "push",
        Channel::Email => "email",
        Channel::Sms => "sms",
        Channel::Unspecified => "unspecified",
    }
}

/// Lowercase success condition (`accepted`, `delivered`, `read`).
pub fn condition_name(condition: SuccessCondition) -> String {
    condition.as_str_name().to_ascii_lowercase()
}

/// Lowercase engagement kind without its prefix (`delivered`, `bounced_hard`, ...).
pub fn kind_name(kind: EngagementKind) -> String {
    kind.as_str_name()
        .trim_start_matches("ENGAGEMENT_")
        .to_ascii_lowercase()
}

/// Where a quiet-hours evaluation took its time zones from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ZonesFrom {
    /// The recipient's own `time_zone`.
    Recipient,
    /// The zones of the phone number's prefix (`+1212`).
    PhonePrefix { prefix: String },
    /// The tenant's default zone.
    TenantDefault,
    /// The tenant's default, because the phone's zones have no window in common.
    TenantDefaultNoCommonWindow,
}

/// A consent ledger entry as a reason names it (no contact point in it).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ConsentEntry {
    pub topic: String,
    pub sender: String,
    pub source: String,
    pub at_unix_ms: i64,
}

impl From<&ChannelConsent> for ConsentEntry {
    fn from(entry: &ChannelConsent) -> Self {
        ConsentEntry {
            topic: entry.topic.clone(),
            sender: entry.sender.clone(),
            source: entry.source.clone(),
            at_unix_ms: entry.at_unix_ms,
        }
    }
}

/// A block-rate breaker's state as a pause reason names it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pause {
    /// `campaign:<tenant>:<id>` or `sender:<account>`.
    pub key: String,
    pub ratio: f64,
    pub sample: u64,
    pub pause_threshold: f64,
}

impl Pause {
    /// Whether the paused breaker is a sender's (the message may then go on to its next step
    /// when it asks to, `fall_back_when_paused`); a campaign's pause always holds the message.
    pub fn is_sender(&self) -> bool {
        self.key.starts_with("sender:")
    }
}

/// Why an event happened. The `Display` text of each variant is the event's `reason`.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    // --- The message as a whole -------------------------------------------------------------
    /// `dead_letter: store kept failing`
    DeadLetter,
    /// `corrupt_message: no request`
    CorruptMessage,
    /// `recipient_erased`
    RecipientErased,
    /// `template{field=…, error=…}`: a template failed to render at send time.
    Template { field: String, error: String },
    /// `frequency_cap{count=…, max=…, window_s=…, retry_at_unix_ms=…|never}`
    FrequencyCap {
        count: u32,
        max: u32,
        window_s: u64,
        retry_at_unix_ms: Option<i64>,
    },
    /// `preference{muted_topic=…}`
    MutedTopic { topic: String },
    /// `quiet_hours{<rule>, zones_from=…, wake_at=…}`
    QuietHours {
        /// What the window evaluation found (zones, local times, the next opening).
        rule: String,
        zones_from: ZonesFrom,
        /// RFC 3339, whole seconds, UTC.
        wake_at: String,
    },
    /// `outcome_unknown: owner changed between intent and outcome; one re-send with the same
    /// attempt id`
    OwnerChanged,
    /// `every_step_skipped{<reason>; <reason>…}`: policy let no step go.
    EveryStepSkipped(Vec<Reason>),
    /// `waterfall_exhausted`
    WaterfallExhausted,

    // --- Why a step was skipped ------------------------------------------------------------
    /// `no_contact_point{channel=…}`
    NoContactPoint { channel: Channel },
    /// `suppressed{channel=…, reason=…}`: the contact point is dead (bounce, complaint…).
    Suppressed { channel: Channel, why: String },
    /// `opted_out{channel=…[, topic=…][, sender=…][, source=…][, at_unix_ms=…]}`
    OptedOut {
        channel: Channel,
        entry: ConsentEntry,
    },
    /// `no_opt_in{channel=…, class=marketing[, topic=…], consent=unset}`
    NoOptIn { channel: Channel, topic: String },
    /// `opted_out{channel=…, scope=every_sender_of_the_channel}`: the person stopped every
    /// account the step could use.
    EverySenderOptedOut { channel: Channel },
    /// `preference_limit{channel=…, count=…, max=…, window_s=…}`
    ChannelLimit {
        channel: Channel,
        count: u32,
        max: u32,
        window_s: u64,
    },
    /// `session_window{account=…, hours=…, last_inbound_unix_ms=…|never, tag=none}`
    SessionWindow {
        account: String,
        hours: u32,
        last_inbound_unix_ms: Option<i64>,
    },
    /// `warmup_quota{account=…, quota_today=…, sent_today=…}`
    WarmupQuota {
        account: String,
        quota_today: u32,
        sent_today: u32,
    },
    /// `tier_limit{account=…, unique_recipients_24h=…, tier=…}`
    TierLimit {
        account: String,
        unique_recipients_24h: u32,
        tier: u32,
    },
    /// `warmup_quota{account=…, unknown: …}` / `tier_limit{account=…, unknown: …}`: the
    /// account's owner could not be asked.
    RuleUnknown {
        rule: ChannelRule,
        account: String,
        error: String,
    },
    /// Several accounts' rules, each blocking one account: `<reason>; <reason>`.
    Rules(Vec<Reason>),
    /// `no_provider_account{channel=…}`
    NoProviderAccount { channel: Channel },
    /// `breaker_paused{key=…, ratio=…, sample=…, pause_threshold=…}`
    BreakerPaused(Pause),

    // --- What a step came to ---------------------------------------------------------------
    /// `provider_message_id=…[, after={…}]`
    Sent {
        provider_message_id: String,
        trail: String,
    },
    /// `waiting{condition=…}`
    Waiting { condition: SuccessCondition },
    /// `waiting{condition=receipt_after_ambiguous_outcome}`
    WaitingAfterAmbiguous,
    /// `provider_outcome_unknown{…}[, after={…}]`
    ProviderOutcomeUnknown { detail: String, trail: String },
    /// `rejected{…[, contact_suppressed=true]}[, after={…}]`
    Rejected {
        detail: String,
        contact_suppressed: bool,
        trail: String,
    },
    /// `unavailable{…}[, after={…}]`
    Unavailable { detail: String, trail: String },
    /// `timeout{condition=…, waited_ms=…, due_unix_ms=…}`
    Timeout {
        condition: String,
        waited_ms: i64,
        due_unix_ms: i64,
    },
    /// `<channel> step failed`, `<channel> step timed out`, `<channel> step failed by receipt`
    FellBack { channel: Channel, cause: FallBack },
    /// `receipt{kind=…, source=…[, <detail>]}`
    Receipt {
        kind: EngagementKind,
        source: String,
        detail: String,
    },
}

/// Which messenger-style rule of an account a reason is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelRule {
    Warmup,
    Tier,
}

/// Why a waterfall moved on to its next step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FallBack {
    Failed,
    TimedOut,
    FailedByReceipt,
}

impl Reason {
    /// Whether this skip is policy's decision (consent, suppression, preferences, channel
    /// rules): a message whose every step was skipped for such reasons ends `suppressed`, not
    /// `failed`.
    pub fn is_policy(&self) -> bool {
        match self {
            Reason::OptedOut { .. }
            | Reason::EverySenderOptedOut { .. }
            | Reason::NoOptIn { .. }
            | Reason::Suppressed { .. }
            | Reason::MutedTopic { .. }
            | Reason::ChannelLimit { .. }
            | Reason::SessionWindow { .. }
            | Reason::TierLimit { .. } => true,
            Reason::RuleUnknown { rule, .. } => *rule == ChannelRule::Tier,
            // The first account's reason decides, as the joined text starts with it.
            Reason::Rules(reasons) => reasons.first().is_some_and(Reason::is_policy),
            _ => false,
        }
    }
}

/// The short name of a rendered reason, for counts by reason (a campaign's suppressions):
/// the name before its values (`frequency_cap{…}` → `frequency_cap`); for a message whose
/// every step was skipped, the first step's reason (`every_step_skipped{no_opt_in{…}; …}` →
/// `no_opt_in`). Empty text is `unknown`.
pub fn label_of(text: &str) -> String {
    let name = |t: &str| -> String {
        let end = t.find(['{', ':', ' ', ';']).unwrap_or(t.len());
        t[..end].to_owned()
    };
    let outer = name(text);
    if outer == "every_step_skipped"
        && let Some(inner) = text.get(outer.len() + 1..)
    {
        let first = name(inner);
        if !first.is_empty()
            && first
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        {
            return first;
        }
    }
    if outer.is_empty() {
        "unknown".to_owned()
    } else {
        outer
    }
}

/// Appends `, after={trail}` when there is a trail of earlier tries.
fn after(f: &mut fmt::Formatter<'_>, trail: &str) -> fmt::Result {
    if trail.is_empty() {
        Ok(())
    } else {
        write!(f, ", after={{{trail}}}")
    }
}

fn joined(f: &mut fmt::Formatter<'_>, reasons: &[Reason]) -> fmt::Result {
    for (index, reason) in reasons.iter().enumerate() {
        if index > 0 {
            f.write_str("; ")?;
        }
        write!(f, "{reason}")?;
    }
    Ok(())
}

impl fmt::Display for ZonesFrom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZonesFrom::Recipient => f.write_str("recipient"),
            ZonesFrom::PhonePrefix { prefix } => write!(f, "phone_prefix:+{prefix}"),
            ZonesFrom::TenantDefault => f.write_str("tenant_default"),
            ZonesFrom::TenantDefaultNoCommonWindow => {
                f.write_str("tenant_default(no common window in the phone's zones)")
            }
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::DeadLetter => f.write_str("dead_letter: store kept failing"),
            Reason::CorruptMessage => f.write_str("corrupt_message: no request"),
            Reason::RecipientErased => f.write_str("recipient_erased"),
            Reason::Template { field, error } => {
                write!(f, "template{{field={field}, error={error}}}")
            }
            Reason::FrequencyCap {
                count,
                max,
                window_s,
                retry_at_unix_ms,
            } => {
                write!(
                    f,
                    "frequency_cap{{count={count}, max={max}, window_s={window_s}, retry_at_unix_ms="
                )?;
                match retry_at_unix_ms {
                    Some(at) => write!(f, "{at}}}"),
                    None => f.write_str("never}"),
                }
            }
            Reason::MutedTopic { topic } => write!(f, "preference{{muted_topic={topic}}}"),
            Reason::QuietHours {
                rule,
                zones_from,
                wake_at,
            } => write!(
                f,
                "quiet_hours{{{rule}, zones_from={zones_from}, wake_at={wake_at}}}"
            ),
            Reason::OwnerChanged => f.write_str(
                "outcome_unknown: owner changed between intent and outcome; one re-send with the same attempt id",
            ),
            Reason::EveryStepSkipped(reasons) => {
                f.write_str("every_step_skipped{")?;
                joined(f, reasons)?;
                f.write_str("}")
            }
            Reason::WaterfallExhausted => f.write_str("waterfall_exhausted"),
            Reason::NoContactPoint { channel } => {
                write!(f, "no_contact_point{{channel={}}}", channel_name(*channel))
            }
            Reason::Suppressed { channel, why } => write!(
                f,
                "suppressed{{channel={}, reason={why}}}",
                channel_name(*channel)
            ),
            Reason::OptedOut { channel, entry } => {
                write!(f, "opted_out{{channel={}", channel_name(*channel))?;
                if !entry.topic.is_empty() {
                    write!(f, ", topic={}", entry.topic)?;
                }
                if !entry.sender.is_empty() {
                    write!(f, ", sender={}", entry.sender)?;
                }
                if !entry.source.is_empty() {
                    write!(f, ", source={}", entry.source)?;
                }
                if entry.at_unix_ms > 0 {
                    write!(f, ", at_unix_ms={}", entry.at_unix_ms)?;
                }
                f.write_str("}")
            }
            Reason::NoOptIn { channel, topic } => {
                write!(
                    f,
                    "no_opt_in{{channel={}, class=marketing",
                    channel_name(*channel)
                )?;
                if !topic.is_empty() {
                    write!(f, ", topic={topic}")?;
                }
                f.write_str(", consent=unset}")
            }
            Reason::EverySenderOptedOut { channel } => write!(
                f,
                "opted_out{{channel={}, scope=every_sender_of_the_channel}}",
                channel_name(*channel)
            ),
            Reason::ChannelLimit {
                channel,
                count,
                max,
                window_s,
            } => write!(
                f,
                "preference_limit{{channel={}, count={count}, max={max}, window_s={window_s}}}",
                channel_name(*channel)
            ),
            Reason::SessionWindow {
                account,
                hours,
                last_inbound_unix_ms,
            } => {
                write!(
                    f,
                    "session_window{{account={account}, hours={hours}, last_inbound_unix_ms="
                )?;
                match last_inbound_unix_ms {
                    Some(at) => write!(f, "{at}")?,
                    None => f.write_str("never")?,
                }
                f.write_str(", tag=none}")
            }
            Reason::WarmupQuota {
                account,
                quota_today,
                sent_today,
            } => write!(
                f,
                "warmup_quota{{account={account}, quota_today={quota_today}, sent_today={sent_today}}}"
            ),
            Reason::TierLimit {
                account,
                unique_recipients_24h,
                tier,
            } => write!(
                f,
                "tier_limit{{account={account}, unique_recipients_24h={unique_recipients_24h}, tier={tier}}}"
            ),
            Reason::RuleUnknown {
                rule,
                account,
                error,
            } => {
                let name = match rule {
                    ChannelRule::Warmup => "warmup_quota",
                    ChannelRule::Tier => "tier_limit",
                };
                write!(f, "{name}{{account={account}, unknown: {error}}}")
            }
            Reason::Rules(reasons) => joined(f, reasons),
            Reason::NoProviderAccount { channel } => {
                write!(f, "no_provider_account{{channel={}}}", channel_name(*channel))
            }
            Reason::BreakerPaused(pause) => write!(
                f,
                "breaker_paused{{key={}, ratio={:.4}, sample={}, pause_threshold={}}}",
                pause.key, pause.ratio, pause.sample, pause.pause_threshold
            ),
            Reason::Sent {
                provider_message_id,
                trail,
            } => {
                write!(f, "provider_message_id={provider_message_id}")?;
                after(f, trail)
            }
            Reason::Waiting { condition } => {
                write!(f, "waiting{{condition={}}}", condition_name(*condition))
            }
            Reason::WaitingAfterAmbiguous => {
                f.write_str("waiting{condition=receipt_after_ambiguous_outcome}")
            }
            Reason::ProviderOutcomeUnknown { detail, trail } => {
                write!(f, "provider_outcome_unknown{{{detail}}}")?;
                after(f, trail)
            }
            Reason::Rejected {
                detail,
                contact_suppressed,
                trail,
            } => {
                if *contact_suppressed {
                    write!(f, "rejected{{{detail}, contact_suppressed=true}}")?;
                } else {
                    write!(f, "rejected{{{detail}}}")?;
                }
                after(f, trail)
            }
            Reason::Unavailable { detail, trail } => {
                write!(f, "unavailable{{{detail}}}")?;
                after(f, trail)
            }
            Reason::Timeout {
                condition,
                waited_ms,
                due_unix_ms,
            } => write!(
                f,
                "timeout{{condition={condition}, waited_ms={waited_ms}, due_unix_ms={due_unix_ms}}}"
            ),
            Reason::FellBack { channel, cause } => {
                let what = match cause {
                    FallBack::Failed => "failed",
                    FallBack::TimedOut => "timed out",
                    FallBack::FailedByReceipt => "failed by receipt",
                };
                write!(f, "{} step {what}", channel_name(*channel))
            }
            Reason::Receipt {
                kind,
                source,
                detail,
            } => {
                write!(f, "receipt{{kind={}, source={source}", kind_name(*kind))?;
                if !detail.is_empty() {
                    write!(f, ", {detail}")?;
                }
                f.write_str("}")
            }
        }
    }
}

#[cfg(test)]
mod label_tests {
    use super::label_of;

    #[test]
    fn labels_name_the_reason_without_its_values() {
        assert_eq!(label_of("frequency_cap{count=2, max=1}"), "frequency_cap");
        assert_eq!(
            label_of("every_step_skipped{no_opt_in{channel=sms}; suppressed{channel=push}}"),
            "no_opt_in"
        );
        assert_eq!(label_of("recipient_erased"), "recipient_erased");
        assert_eq!(label_of("dead_letter: store kept failing"), "dead_letter");
        assert_eq!(label_of(""), "unknown");
        assert_eq!(label_of("every_step_skipped{}"), "every_step_skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The texts clients and the chaos checker read: one example of each, spelled out.
    #[test]
    fn every_reason_renders_its_documented_text() {
        let cases: Vec<(Reason, &str)> = vec![
            (Reason::DeadLetter, "dead_letter: store kept failing"),
            (Reason::CorruptMessage, "corrupt_message: no request"),
            (Reason::RecipientErased, "recipient_erased"),
            (
                Reason::Template {
                    field: "content.sms.text".into(),
                    error: "undefined variable".into(),
                },
                "template{field=content.sms.text, error=undefined variable}",
            ),
            (
                Reason::FrequencyCap {
                    count: 1,
                    max: 1,
                    window_s: 3600,
                    retry_at_unix_ms: Some(7),
                },
                "frequency_cap{count=1, max=1, window_s=3600, retry_at_unix_ms=7}",
            ),
            (
                Reason::FrequencyCap {
                    count: 0,
                    max: 0,
                    window_s: 60,
                    retry_at_unix_ms: None,
                },
                "frequency_cap{count=0, max=0, window_s=60, retry_at_unix_ms=never}",
            ),
            (
                Reason::MutedTopic {
                    topic: "deals".into(),
                },
                "preference{muted_topic=deals}",
            ),
            (
                Reason::QuietHours {
                    rule: "quiet hours: 23:00 UTC".into(),
                    zones_from: ZonesFrom::PhonePrefix {
                        prefix: "1212".into(),
                    },
                    wake_at: "2026-01-01T08:00:00Z".into(),
                },
                "quiet_hours{quiet hours: 23:00 UTC, zones_from=phone_prefix:+1212, wake_at=2026-01-01T08:00:00Z}",
            ),
            (
                Reason::EveryStepSkipped(vec![
                    Reason::NoContactPoint {
                        channel: Channel::Push,
                    },
                    Reason::NoOptIn {
                        channel: Channel::Sms,
                        topic: "deals".into(),
                    },
                ]),
                "every_step_skipped{no_contact_point{channel=push}; no_opt_in{channel=sms, class=marketing, topic=deals, consent=unset}}",
            ),
            (
                Reason::Suppressed {
                    channel: Channel::Sms,
                    why: "bounced_hard".into(),
                },
                "suppressed{channel=sms, reason=bounced_hard}",
            ),
            (
                Reason::OptedOut {
                    channel: Channel::Sms,
                    entry: ConsentEntry {
                        topic: String::new(),
                        sender: "smpp-main".into(),
                        source: "sms_keyword".into(),
                        at_unix_ms: 5,
                    },
                },
                "opted_out{channel=sms, sender=smpp-main, source=sms_keyword, at_unix_ms=5}",
            ),
            (
                Reason::EverySenderOptedOut {
                    channel: Channel::Sms,
                },
                "opted_out{channel=sms, scope=every_sender_of_the_channel}",
            ),
            (
                Reason::ChannelLimit {
                    channel: Channel::Email,
                    count: 1,
                    max: 1,
                    window_s: 86_400,
                },
                "preference_limit{channel=email, count=1, max=1, window_s=86400}",
            ),
            (
                Reason::SessionWindow {
                    account: "smpp-main".into(),
                    hours: 24,
                    last_inbound_unix_ms: None,
                },
                "session_window{account=smpp-main, hours=24, last_inbound_unix_ms=never, tag=none}",
            ),
            (
                Reason::Rules(vec![
                    Reason::WarmupQuota {
                        account: "a".into(),
                        quota_today: 2,
                        sent_today: 2,
                    },
                    Reason::TierLimit {
                        account: "b".into(),
                        unique_recipients_24h: 2,
                        tier: 2,
                    },
                ]),
                "warmup_quota{account=a, quota_today=2, sent_today=2}; tier_limit{account=b, unique_recipients_24h=2, tier=2}",
            ),
            (
                Reason::RuleUnknown {
                    rule: ChannelRule::Tier,
                    account: "a".into(),
                    error: "no owner".into(),
                },
                "tier_limit{account=a, unknown: no owner}",
            ),
            (
                Reason::BreakerPaused(Pause {
                    key: "sender:mail".into(),
                    ratio: 0.05,
                    sample: 40,
                    pause_threshold: 0.003,
                }),
                "breaker_paused{key=sender:mail, ratio=0.0500, sample=40, pause_threshold=0.003}",
            ),
            (
                Reason::Sent {
                    provider_message_id: "p1".into(),
                    trail: "fcm-a: unavailable (503), try 1".into(),
                },
                "provider_message_id=p1, after={fcm-a: unavailable (503), try 1}",
            ),
            (
                Reason::Waiting {
                    condition: SuccessCondition::Delivered,
                },
                "waiting{condition=delivered}",
            ),
            (
                Reason::Rejected {
                    detail: "invalid number".into(),
                    contact_suppressed: true,
                    trail: String::new(),
                },
                "rejected{invalid number, contact_suppressed=true}",
            ),
            (
                Reason::Unavailable {
                    detail: "503".into(),
                    trail: String::new(),
                },
                "unavailable{503}",
            ),
            (
                Reason::Timeout {
                    condition: "delivered".into(),
                    waited_ms: 2000,
                    due_unix_ms: 9,
                },
                "timeout{condition=delivered, waited_ms=2000, due_unix_ms=9}",
            ),
            (
                Reason::FellBack {
                    channel: Channel::Push,
                    cause: FallBack::TimedOut,
                },
                "push step timed out",
            ),
            (
                Reason::FellBack {
                    channel: Channel::Email,
                    cause: FallBack::FailedByReceipt,
                },
                "email step failed by receipt",
            ),
            (
                Reason::Receipt {
                    kind: EngagementKind::EngagementBouncedHard,
                    source: "api".into(),
                    detail: String::new(),
                },
                "receipt{kind=bounced_hard, source=api}",
            ),
        ];
        for (reason, text) in cases {
            assert_eq!(reason.to_string(), text);
        }
    }

    #[test]
    fn policy_skips_are_told_from_other_skips() {
        assert!(
            Reason::NoOptIn {
                channel: Channel::Sms,
                topic: String::new()
            }
            .is_policy()
        );
        assert!(
            !Reason::NoContactPoint {
                channel: Channel::Sms
            }
            .is_policy()
        );
        assert!(
            !Reason::WarmupQuota {
                account: "a".into(),
                quota_today: 1,
                sent_today: 1
            }
            .is_policy()
        );
        assert!(
            !Reason::BreakerPaused(Pause {
                key: "sender:a".into(),
                ratio: 0.0,
                sample: 0,
                pause_threshold: 0.0
            })
            .is_policy()
        );
    }
}
