//! # caps: sliding-window frequency caps and recipients' own limits
//!
//! Owns two decisions, both pure (callers pass the send history and `now`; nothing here reads a
//! clock or a store):
//!
//! - [`check`]: would one more send break a frequency cap ("at most 3 marketing messages in any
//!   7 days", "at most 1 email per day")?
//! - [`preference_verdict`]: does the recipient's own [`Preferences`] (topics opted out of,
//!   per-channel daily/weekly maxima) allow this message?
//!
//! Must never log contact points or message text; verdicts carry only rules, counts and times.
//!
//! ## Windows
//!
//! A window is *sliding*, not calendar: a send at `t` counts against a rule of window `w` at `now`
//! while `now - w < t`, i.e. the window is the half-open interval `(now - w, now]` (a send exactly
//! `w` ago has just left it). Sends recorded in the future of `now` (another node's clock ahead of
//! ours) count too: they happened, and ignoring them would let a burst through. "Per day" in
//! [`Preferences`] therefore means "in any 24 hours": calendar days would need the recipient's
//! time zone, which `quiet_hours` owns, and would allow 2N sends around midnight.
//!
//! ## Scope
//!
//! [`check`] applies every rule it is given to the one history it is given: the caller passes the
//! sends of the rules' [`CapScope`] (the tenant's marketing sends to this recipient for
//! [`CapScope::TenantMarketing`], the recipient's sends on that channel for
//! [`CapScope::Channel`]) and calls it once per scope. [`check_scoped`] does that filtering itself
//! from a recipient's whole [`SentRecord`] history, for rules of mixed scopes. The scope is carried
//! into the verdict so an event can say which cap it was.
//!
//! ## Suppress, not defer
//!
//! A rejection carries `retry_at_ms`, the earliest time the cap would allow the send, so a caller
//! *could* defer. The `RecipientActor` must **suppress** instead (the product decision: a capped
//! marketing message is skipped, not queued, or caps would only delay floods), and put
//! `retry_at_ms` in the event so operators can see when the recipient is reachable again.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_proto::v1::Channel;
use serde::{Deserialize, Serialize};

/// What a cap counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CapScope {
    /// The tenant's marketing messages to one recipient (the tenant-wide marketing cap).
    TenantMarketing,
    /// Every message to one recipient on one channel (the recipient's own limit).
    Channel(Channel),
}

/// At most `max` sends in any `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapRule {
    /// Sends allowed in any window; 0 allows none.
    pub max: u32,
    /// Length of the sliding window.
    pub window: Duration,
    /// What the rule counts (see the module docs: the caller passes that history).
    pub scope: CapScope,
}

impl CapScope {
    /// Whether `send` counts against a rule of this scope.
    pub fn counts(&self, send: &SentRecord) -> bool {
        match self {
            CapScope::TenantMarketing => send.marketing,
            CapScope::Channel(channel) => send.channel == *channel,
        }
    }
}

/// One earlier send to a recipient, as caps see it (no content, no contact point).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SentRecord {
    /// When it was sent, unix ms.
    pub at_ms: i64,
    /// The channel it went out on.
    pub channel: Channel,
    /// Whether it was a marketing message (transactional ones do not count against the tenant's
    /// marketing cap, but do count against the recipient's per-channel limits).
    pub marketing: bool,
}

impl CapRule {
    fn window_ms(&self) -> i64 {
        i64::try_from(self.window.as_millis()).unwrap_or(i64::MAX)
    }
}

/// One more send would break `rule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "frequency cap: {count} sends in the last {window_ms} ms, at most {max} allowed",
    window_ms = rule.window.as_millis(),
    max = rule.max
)]
pub struct CapExceeded {
    /// The rule that binds (of several broken rules, the one that stays broken longest).
    pub rule: CapRule,
    /// Sends of the history inside the rule's window at `now`.
    pub count: u32,
    /// The oldest send inside the window; `None` when the window is empty (only with `max == 0`).
    pub oldest_in_window_ms: Option<i64>,
    /// The earliest time the rule allows one more send, assuming no send in between: when
    /// enough of the oldest sends have left the window that `count < max` (with `count == max`,
    /// the usual case, that is when the oldest one leaves). `None` = never (`max == 0`).
    pub retry_at_ms: Option<i64>,
}

/// Whether one more send at `now_ms` keeps every rule; if not, the binding rule.
///
/// `sent_at`: unix ms of earlier sends in the rules' scope, in any order. Of several broken rules
/// the verdict names the one with the latest `retry_at_ms` (never beats any time): the other
/// broken rules clear no later, so deferring to it would clear them all (time alone cannot break a
/// rule that holds now).
pub fn check(sent_at: &[i64], rules: &[CapRule], now_ms: i64) -> Result<(), CapExceeded> {
    binding(
        rules
            .iter()
            .filter_map(|rule| check_rule(sent_at, rule, now_ms)),
    )
}

/// Like [`check`] for rules of any scopes, each counting the sends of `history` its scope counts.
pub fn check_scoped(
    history: &[SentRecord],
    rules: &[CapRule],
    now_ms: i64,
) -> Result<(), CapExceeded> {
    binding(rules.iter().filter_map(|rule| {
        let sent_at: Vec<i64> = history
            .iter()
            .filter(|send| rule.scope.counts(send))
            .map(|send| send.at_ms)
            .collect();
        check_rule(&sent_at, rule, now_ms)
    }))
}

/// Of the broken rules, the one that clears last (see [`check`]).
fn binding(broken: impl Iterator<Item = CapExceeded>) -> Result<(), CapExceeded> {
    let mut binding: Option<CapExceeded> = None;
    for exceeded in broken {
        let later = match (&binding, exceeded.retry_at_ms) {
            (None, _) => true,
            (Some(b), retry) => match (b.retry_at_ms, retry) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(old), Some(new)) => new > old,
            },
        };
        if later {
            binding = Some(exceeded);
        }
    }
    binding.map_or(Ok(()), Err)
}

fn check_rule(sent_at: &[i64], rule: &CapRule, now_ms: i64) -> Option<CapExceeded> {
    let window_start = now_ms.saturating_sub(rule.window_ms());
    let mut inside: Vec<i64> = sent_at
        .iter()
        .copied()
        .filter(|t| *t > window_start)
        .collect();
    let count = u32::try_from(inside.len()).unwrap_or(u32::MAX);
    if count < rule.max {
        return None;
    }
    inside.sort_unstable();
    let oldest_in_window_ms = inside.first().copied();
    // `count - max + 1` sends must leave before `count < max`; the last of them is the one at
    // index `count - max` of the sorted window.
    let retry_at_ms = if rule.max == 0 {
        None
    } else {
        let index = (count - rule.max) as usize;
        inside
            .get(index)
            .map(|t| t.saturating_add(rule.window_ms()))
    };
    Some(CapExceeded {
        rule: *rule,
        count,
        oldest_in_window_ms,
        retry_at_ms,
    })
}

/// Drops sends that no window up to `longest_window` can count any more (at `now_ms` or later).
/// Keeps order otherwise.
pub fn prune(sent_at: &mut Vec<i64>, longest_window: Duration, now_ms: i64) {
    let window_ms = i64::try_from(longest_window.as_millis()).unwrap_or(i64::MAX);
    let window_start = now_ms.saturating_sub(window_ms);
    sent_at.retain(|t| *t > window_start);
}

/// A recipient's own limits on one channel. `None` = no limit; `Some(0)` = none at all.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelLimits {
    /// At most this many messages on the channel in any 24 hours.
    #[serde(default)]
    pub max_per_day: Option<u32>,
    /// At most this many messages on the channel in any 7 days.
    #[serde(default)]
    pub max_per_week: Option<u32>,
}

/// What a recipient asked for: topics they do not want, and how often each channel may be used.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Topics (tenant-defined ids, matched exactly) the recipient opted out of, on every channel.
    #[serde(default)]
    pub opted_out_topics: BTreeSet<String>,
    /// Limits on push notifications.
    #[serde(default)]
    pub push: ChannelLimits,
    /// Limits on emails.
    #[serde(default)]
    pub email: ChannelLimits,
    /// Limits on SMS.
    #[serde(default)]
    pub sms: ChannelLimits,
}

/// A day, as the sliding window of "per day" limits.
pub const DAY: Duration = Duration::from_secs(86_400);
/// A week, as the sliding window of "per week" limits.
pub const WEEK: Duration = Duration::from_secs(7 * 86_400);

impl Preferences {
    /// The recipient's limits on `channel` (none for `Channel::Unspecified`).
    pub fn limits(&self, channel: Channel) -> Option<&ChannelLimits> {
        match channel {
            Channel::Push => Some(&self.push),
            Channel::Email => Some(&self.email),
            Channel::Sms => Some(&self.sms),
            Channel::Unspecified => None,
        }
    }

    /// The recipient's limits on `channel` as cap rules of scope [`CapScope::Channel`].
    pub fn cap_rules(&self, channel: Channel) -> Vec<CapRule> {
        let Some(limits) = self.limits(channel) else {
            return Vec::new();
        };
        [(limits.max_per_day, DAY), (limits.max_per_week, WEEK)]
            .into_iter()
            .filter_map(|(max, window)| {
                max.map(|max| CapRule {
                    max,
                    window,
                    scope: CapScope::Channel(channel),
                })
            })
            .collect()
    }

    /// Whether the recipient opted out of `topic`.
    pub fn opted_out_of(&self, topic: &str) -> bool {
        self.opted_out_topics.contains(topic)
    }
}

/// Why the recipient's preferences stop a message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PreferenceBlock {
    /// The recipient opted out of the message's topic.
    #[error("recipient opted out of topic {topic:?}")]
    TopicOptedOut {
        /// The topic (a tenant-defined id, not personal data).
        topic: String,
    },
    /// The recipient's own per-channel limit is reached.
    #[error(transparent)]
    ChannelLimit(CapExceeded),
}

/// Whether the recipient's preferences allow one more message on `channel` about `topic` at
/// `now_ms`. `sent_on_channel`: unix ms of earlier sends to the recipient on `channel` (any
/// order; a week of history is enough, see [`prune`] with [`WEEK`]). `topic: None` = the message
/// has no topic, so only the channel limits apply. The topic is checked first: an opt-out is
/// permanent, a limit only for a while.
pub fn preference_verdict(
    prefs: &Preferences,
    channel: Channel,
    topic: Option<&str>,
    sent_on_channel: &[i64],
    now_ms: i64,
) -> Result<(), PreferenceBlock> {
    if let Some(topic) = topic
        && prefs.opted_out_of(topic)
    {
        return Err(PreferenceBlock::TopicOptedOut {
            topic: topic.to_owned(),
        });
    }
    check(sent_on_channel, &prefs.cap_rules(channel), now_ms).map_err(PreferenceBlock::ChannelLimit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HOUR_MS: i64 = 3_600_000;
    const DAY_MS: i64 = 24 * HOUR_MS;

    fn rule(max: u32, window_ms: u64) -> CapRule {
        CapRule {
            max,
            window: Duration::from_millis(window_ms),
            scope: CapScope::TenantMarketing,
        }
    }

    #[test]
    fn under_the_cap_is_allowed() {
        let now = 10 * DAY_MS;
        let sends = [now - 3 * HOUR_MS, now - 2 * HOUR_MS];
        assert_eq!(check(&sends, &[rule(3, DAY_MS as u64)], now), Ok(()));
        assert_eq!(check(&[], &[rule(1, DAY_MS as u64)], now), Ok(()));
        assert_eq!(check(&sends, &[], now), Ok(()));
    }

    #[test]
    fn at_the_cap_is_rejected_until_the_oldest_leaves() {
        let now = 10 * DAY_MS;
        let sends = [now - 2 * HOUR_MS, now - 5 * HOUR_MS, now - 30 * HOUR_MS];
        let r = rule(2, DAY_MS as u64);
        let err = check(&sends, &[r], now).expect_err("two in the last day");
        assert_eq!(err.rule, r);
        assert_eq!(err.count, 2);
        assert_eq!(err.oldest_in_window_ms, Some(now - 5 * HOUR_MS));
        assert_eq!(err.retry_at_ms, Some(now - 5 * HOUR_MS + DAY_MS));
        assert_eq!(
            err.to_string(),
            "frequency cap: 2 sends in the last 86400000 ms, at most 2 allowed"
        );
        // At retry_at the oldest has left (half-open window), one ms before it has not.
        let retry = err.retry_at_ms.expect("retry");
        assert!(check(&sends, &[r], retry - 1).is_err());
        assert_eq!(check(&sends, &[r], retry), Ok(()));
    }

    #[test]
    fn over_the_cap_retries_when_enough_have_left() {
        let now = 10 * DAY_MS;
        // Four sends in the window, max 2: three must leave, the third oldest decides.
        let sends = [now - 1, now - 4, now - 2, now - 3];
        let err = check(&sends, &[rule(2, 100)], now).expect_err("over");
        assert_eq!(err.count, 4);
        assert_eq!(err.oldest_in_window_ms, Some(now - 4));
        assert_eq!(err.retry_at_ms, Some(now - 2 + 100));
        assert_eq!(check(&sends, &[rule(2, 100)], now - 2 + 100), Ok(()));
    }

    #[test]
    fn zero_max_never_allows() {
        let err = check(&[], &[rule(0, 1000)], 5).expect_err("max 0");
        assert_eq!(err.count, 0);
        assert_eq!(err.oldest_in_window_ms, None);
        assert_eq!(err.retry_at_ms, None);
    }

    #[test]
    fn binding_rule_is_the_one_that_clears_last() {
        let now = 100 * DAY_MS;
        let sends = [now - HOUR_MS, now - 3 * DAY_MS];
        let daily = rule(1, DAY_MS as u64);
        let weekly = rule(2, 7 * DAY_MS as u64);
        let err = check(&sends, &[daily, weekly], now).expect_err("both");
        assert_eq!(err.rule, weekly);
        assert_eq!(err.retry_at_ms, Some(now - 3 * DAY_MS + 7 * DAY_MS));
        let never = rule(0, 1);
        assert_eq!(
            check(&sends, &[never, daily, weekly], now).map_err(|e| e.rule),
            Err(never)
        );
    }

    #[test]
    fn future_sends_count() {
        let now = 1_000_000;
        assert!(check(&[now + 50], &[rule(1, 1000)], now).is_err());
    }

    #[test]
    fn prune_keeps_what_a_window_can_count() {
        let now = 10_000;
        let mut sends = vec![now - 5000, now - 1000, now - 999, now + 1, 0];
        prune(&mut sends, Duration::from_millis(1000), now);
        assert_eq!(sends, vec![now - 999, now + 1]);
    }

    #[test]
    fn preferences_block_topics_then_limits() {
        let now = 50 * DAY_MS;
        let prefs: Preferences = serde_json::from_str(
            r#"{"opted_out_topics": ["promotions"], "email": {"max_per_day": 1}}"#,
        )
        .expect("prefs parse");
        assert_eq!(
            preference_verdict(&prefs, Channel::Email, Some("promotions"), &[], now),
            Err(PreferenceBlock::TopicOptedOut {
                topic: "promotions".into()
            })
        );
        assert_eq!(
            preference_verdict(&prefs, Channel::Email, Some("orders"), &[], now),
            Ok(())
        );
        let sent = [now - HOUR_MS];
        match preference_verdict(&prefs, Channel::Email, None, &sent, now) {
            Err(PreferenceBlock::ChannelLimit(e)) => {
                assert_eq!(e.rule.scope, CapScope::Channel(Channel::Email));
                assert_eq!(e.rule.window, DAY);
                assert_eq!(e.retry_at_ms, Some(now - HOUR_MS + DAY_MS));
            }
            other => panic!("expected a channel limit, got {other:?}"),
        }
        // Other channels have no limits.
        assert_eq!(
            preference_verdict(&prefs, Channel::Sms, None, &sent, now),
            Ok(())
        );
        assert!(serde_json::from_str::<Preferences>(r#"{"fax": {}}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Preferences>("{}").expect("empty"),
            Preferences::default()
        );
    }

    fn rules() -> impl Strategy<Value = Vec<CapRule>> {
        proptest::collection::vec((0u32..5, 1u64..500).prop_map(|(m, w)| rule(m, w)), 1..4)
    }

    /// Sends (in the last `window_ms`, by a cap-respecting stream) in `(now - window, now]`.
    fn in_window(sends: &[i64], window_ms: i64, now: i64) -> usize {
        sends
            .iter()
            .filter(|t| **t > now - window_ms && **t <= now)
            .count()
    }

    #[test]
    fn scoped_rules_count_their_own_sends() {
        let now = 10 * DAY_MS;
        let send = |at_ms, channel, marketing| SentRecord {
            at_ms,
            channel,
            marketing,
        };
        let history = [
            send(now - HOUR_MS, Channel::Email, false),
            send(now - 2 * HOUR_MS, Channel::Sms, true),
            send(now - 3 * HOUR_MS, Channel::Push, true),
        ];
        let marketing = rule(2, DAY_MS as u64);
        let email = CapRule {
            max: 1,
            window: DAY,
            scope: CapScope::Channel(Channel::Email),
        };
        let sms = CapRule {
            scope: CapScope::Channel(Channel::Sms),
            max: 2,
            ..email
        };
        let err = check_scoped(&history, &[sms, marketing], now).expect_err("2 marketing");
        assert_eq!((err.rule, err.count), (marketing, 2));
        let err = check_scoped(&history, &[sms, email], now).expect_err("1 email");
        assert_eq!((err.rule, err.count), (email, 1));
        assert_eq!(check_scoped(&history, &[sms], now), Ok(()));
    }

    proptest! {
        #[test]
        fn scoped_agrees_with_check_on_one_scope(
            rules in rules(),
            sends in proptest::collection::vec(0i64..2000, 0..30),
            now in 0i64..2500,
        ) {
            let history: Vec<SentRecord> = sends
                .iter()
                .map(|at_ms| SentRecord { at_ms: *at_ms, channel: Channel::Sms, marketing: true })
                .collect();
            prop_assert_eq!(check_scoped(&history, &rules, now), check(&sends, &rules, now));
        }

        #[test]
        fn accepted_stream_never_exceeds_any_window(
            rules in rules(),
            gaps in proptest::collection::vec(0i64..60, 1..200),
        ) {
            let mut accepted: Vec<i64> = Vec::new();
            let mut now = 1_000_000i64;
            let longest = rules.iter().map(|r| r.window).max().expect("non-empty");
            for gap in gaps {
                now += gap;
                if check(&accepted, &rules, now).is_ok() {
                    accepted.push(now);
                }
                prune(&mut accepted, longest, now);
                // Every window ending at now, for every rule, holds at most max sends.
                for r in &rules {
                    prop_assert!(
                        in_window(&accepted, r.window.as_millis() as i64, now) <= r.max as usize
                    );
                }
            }
        }

        #[test]
        fn rejection_explains_itself(
            rules in rules(),
            sends in proptest::collection::vec(0i64..2000, 0..30),
            now in 0i64..2500,
        ) {
            if let Err(e) = check(&sends, &rules, now) {
                let window = e.rule.window.as_millis() as i64;
                prop_assert_eq!(e.count as usize, sends.iter().filter(|t| **t > now - window).count());
                prop_assert!(e.count >= e.rule.max);
                if let Some(retry) = e.retry_at_ms {
                    prop_assert!(retry > now);
                    // Waiting until retry_at clears every rule (no sends in between).
                    prop_assert_eq!(check(&sends, &rules, retry), Ok(()));
                } else {
                    prop_assert_eq!(e.rule.max, 0);
                }
            } else {
                for r in &rules {
                    let window = r.window.as_millis() as i64;
                    prop_assert!(sends.iter().filter(|t| **t > now - window).count() < r.max as usize);
                }
            }
        }

        #[test]
        fn adding_sends_never_turns_a_rejection_into_acceptance(
            rules in rules(),
            sends in proptest::collection::vec(0i64..2000, 0..30),
            extra in proptest::collection::vec(0i64..2000, 1..10),
            now in 0i64..2500,
        ) {
            if check(&sends, &rules, now).is_err() {
                let mut more = sends.clone();
                more.extend(extra);
                prop_assert!(check(&more, &rules, now).is_err());
            }
        }
    }
}
