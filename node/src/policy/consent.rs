//! Consent: may this message go to this person on this channel (and topic, and sender)?
//!
//! The ledger is the recipient's `consent` list: the current state per channel, optionally
//! narrowed to a topic and/or a sender, with its source and time; `consent_history` keeps every
//! change. Rules, most specific first:
//! - an opt-out for the channel as a whole (no topic, no sender) stops every message;
//! - an opt-out for a sender (an SMS STOP to that number) stops every message from that sender;
//! - an opt-out for a topic stops marketing messages of that topic, and one for the topic `*`
//!   stops every marketing message of the channel;
//! - marketing needs an opt-in for the channel (the topic's own entry wins over the
//!   channel-wide one); transactional messages need no opt-in.

use herald_proto::v1::{Channel, ChannelConsent, ConsentState, MessageClass, Recipient};

use crate::reason::{ConsentEntry, Reason};

/// The topic of an opt-out from every marketing message of a channel (a one-click unsubscribe
/// from a message without a topic): transactional messages still go.
pub const ALL_MARKETING: &str = "*";

/// Audit entries kept per recipient (the oldest are dropped first).
pub const HISTORY_MAX: usize = 200;

/// Why `recipient` may not get a message of `class`/`topic` on `channel` (any sender), if not.
pub fn verdict(
    recipient: &Recipient,
    channel: Channel,
    class: MessageClass,
    topic: &str,
) -> Option<Reason> {
    let channel_value = channel as i32;
    let entries = || {
        recipient
            .consent
            .iter()
            .filter(move |c| c.channel == channel_value)
    };
    let opted_out = |entry: &ChannelConsent| Reason::OptedOut {
        channel,
        entry: ConsentEntry::from(entry),
    };
    if let Some(out) = entries()
        .find(|c| c.topic.is_empty() && c.sender.is_empty() && c.state() == ConsentState::OptedOut)
    {
        return Some(opted_out(out));
    }
    if class != MessageClass::Marketing {
        return None;
    }
    if let Some(out) = entries().find(|c| {
        ((!topic.is_empty() && c.topic == topic) || c.topic == ALL_MARKETING)
            && c.sender.is_empty()
            && c.state() == ConsentState::OptedOut
    }) {
        return Some(opted_out(out));
    }
    let topic_in = !topic.is_empty()
        && entries()
            .any(|c| c.topic == topic && c.sender.is_empty() && c.state() == ConsentState::OptedIn);
    let channel_in = entries()
        .any(|c| c.topic.is_empty() && c.sender.is_empty() && c.state() == ConsentState::OptedIn);
    if topic_in || channel_in {
        return None;
    }
    Some(Reason::NoOptIn {
        channel,
        topic: topic.to_owned(),
    })
}

/// Whether `sender` (a provider account) is opted out for this recipient on `channel`.
pub fn sender_opted_out(recipient: &Recipient, channel: i32, sender: &str) -> bool {
    recipient
        .consent
        .iter()
        .any(|c| c.channel == channel && c.sender == sender && c.state() == ConsentState::OptedOut)
}

/// Sets the ledger entry for (channel, topic, sender) to `state` and records the change in the
/// history. Returns false (and changes nothing) when the state is already that.
pub fn set(recipient: &mut Recipient, mut entry: ChannelConsent) -> bool {
    let same_key = |c: &ChannelConsent| {
        c.channel == entry.channel && c.topic == entry.topic && c.sender == entry.sender
    };
    if let Some(current) = recipient.consent.iter_mut().find(|c| same_key(c)) {
        if current.state == entry.state {
            return false;
        }
        *current = entry.clone();
    } else {
        recipient.consent.push(entry.clone());
    }
    entry.topic = entry.topic.clone();
    push_history(recipient, entry);
    true
}

pub fn push_history(recipient: &mut Recipient, entry: ChannelConsent) {
    recipient.consent_history.push(entry);
    let excess = recipient.consent_history.len().saturating_sub(HISTORY_MAX);
    if excess > 0 {
        recipient.consent_history.drain(..excess);
    }
}

/// Carries the ledger from `prior` into a client's upsert `next`: entries whose state did not
/// change keep their source and time; changed and new ones get `source = "api"` and `now`, and
/// are appended to the history; the history itself is kept. Herald-set entries (a STOP, a
/// one-click unsubscribe, a complaint) the client did not mention stay.
pub fn merge_upsert(prior: Option<&Recipient>, next: &mut Recipient, now_ms: i64) {
    let empty = Recipient::default();
    let prior = prior.unwrap_or(&empty);
    next.consent_history = prior.consent_history.clone();
    let mut changes = Vec::new();
    for entry in &mut next.consent {
        let before = prior.consent.iter().find(|c| {
            c.channel == entry.channel && c.topic == entry.topic && c.sender == entry.sender
        });
        match before {
            Some(before) if before.state == entry.state => {
                entry.source = before.source.clone();
                entry.at_unix_ms = before.at_unix_ms;
            }
            _ => {
                entry.source = "api".to_owned();
                entry.at_unix_ms = now_ms;
                changes.push(entry.clone());
            }
        }
    }
    // Herald's own entries (a STOP, an unsubscribe link, a complaint) stay unless the client
    // names the same entry: only a new explicit consent replaces them.
    for kept in prior
        .consent
        .iter()
        .filter(|c| c.source != "api" && !c.source.is_empty())
    {
        let mentioned = next
            .consent
            .iter()
            .any(|c| c.channel == kept.channel && c.topic == kept.topic && c.sender == kept.sender);
        if !mentioned {
            next.consent.push(kept.clone());
        }
    }
    for change in changes {
        push_history(next, change);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, sender: &str, state: ConsentState) -> ChannelConsent {
        ChannelConsent {
            channel: Channel::Sms as i32,
            state: state as i32,
            topic: topic.into(),
            sender: sender.into(),
            source: "test".into(),
            at_unix_ms: 1,
        }
    }

    fn person(consent: Vec<ChannelConsent>) -> Recipient {
        Recipient {
            id: "r".into(),
            consent,
            ..Default::default()
        }
    }

    const SMS: i32 = Channel::Sms as i32;

    #[test]
    fn marketing_needs_an_opt_in_transactional_does_not() {
        let nobody = person(vec![]);
        assert!(verdict(&nobody, Channel::Sms, MessageClass::Marketing, "").is_some());
        assert!(verdict(&nobody, Channel::Sms, MessageClass::Transactional, "").is_none());
        let topic_only = person(vec![entry("deals", "", ConsentState::OptedIn)]);
        assert!(verdict(&topic_only, Channel::Sms, MessageClass::Marketing, "deals").is_none());
        assert!(verdict(&topic_only, Channel::Sms, MessageClass::Marketing, "news").is_some());
    }

    #[test]
    fn opt_outs_by_scope() {
        let all_out = person(vec![entry("", "", ConsentState::OptedOut)]);
        let reason = verdict(&all_out, Channel::Sms, MessageClass::Transactional, "").expect("out");
        let reason = reason.to_string();
        assert!(reason.starts_with("opted_out{channel=sms"), "{reason}");
        let topic_out = person(vec![
            entry("", "", ConsentState::OptedIn),
            entry("deals", "", ConsentState::OptedOut),
        ]);
        assert!(verdict(&topic_out, Channel::Sms, MessageClass::Marketing, "deals").is_some());
        assert!(verdict(&topic_out, Channel::Sms, MessageClass::Marketing, "news").is_none());
        assert!(
            verdict(
                &topic_out,
                Channel::Sms,
                MessageClass::Transactional,
                "deals"
            )
            .is_none()
        );
        let stopped = person(vec![
            entry("", "", ConsentState::OptedIn),
            entry("", "smpp-main", ConsentState::OptedOut),
        ]);
        assert!(sender_opted_out(&stopped, SMS, "smpp-main"));
        assert!(!sender_opted_out(&stopped, SMS, "twilio-backup"));
    }

    #[test]
    fn set_records_history_once_per_change() {
        let mut r = person(vec![]);
        assert!(set(&mut r, entry("", "s", ConsentState::OptedOut)));
        assert!(!set(&mut r, entry("", "s", ConsentState::OptedOut)));
        assert!(set(&mut r, entry("", "s", ConsentState::OptedIn)));
        assert_eq!(r.consent.len(), 1);
        assert_eq!(r.consent_history.len(), 2);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn arb_entry() -> impl Strategy<Value = ChannelConsent> {
            (
                prop_oneof![Just(""), Just("deals"), Just("news"), Just(ALL_MARKETING)],
                prop_oneof![Just(""), Just("smpp-main")],
                prop_oneof![Just(ConsentState::OptedIn), Just(ConsentState::OptedOut)],
                prop_oneof![Just("api"), Just("sms_keyword"), Just("complaint")],
            )
                .prop_map(|(topic, sender, state, source)| ChannelConsent {
                    channel: SMS,
                    state: state as i32,
                    topic: topic.into(),
                    sender: sender.into(),
                    source: source.into(),
                    at_unix_ms: 1,
                })
        }

        /// The rules, written out once more from the module docs.
        fn model(ledger: &[ChannelConsent], class: MessageClass, topic: &str) -> bool {
            let is = |e: &ChannelConsent, t: &str, state: ConsentState| {
                e.topic == t && e.sender.is_empty() && e.state() == state
            };
            if ledger.iter().any(|e| is(e, "", ConsentState::OptedOut)) {
                return false;
            }
            if class == MessageClass::Transactional {
                return true;
            }
            let topic_out = ledger.iter().any(|e| {
                (!topic.is_empty() && is(e, topic, ConsentState::OptedOut))
                    || is(e, ALL_MARKETING, ConsentState::OptedOut)
            });
            let opted_in = ledger.iter().any(|e| is(e, "", ConsentState::OptedIn))
                || (!topic.is_empty()
                    && ledger.iter().any(|e| is(e, topic, ConsentState::OptedIn)));
            !topic_out && opted_in
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn verdict_follows_the_rules(
                entries in proptest::collection::vec(arb_entry(), 0..6),
                marketing in any::<bool>(),
                topic in prop_oneof![Just(""), Just("deals"), Just("news")],
            ) {
                let mut recipient = person(vec![]);
                for entry in entries {
                    set(&mut recipient, entry);
                }
                let class = if marketing { MessageClass::Marketing } else { MessageClass::Transactional };
                let allowed = verdict(&recipient, Channel::Sms, class, topic).is_none();
                prop_assert_eq!(allowed, model(&recipient.consent, class, topic));
                // A sender-specific STOP never blocks at the channel level, only that sender.
                if recipient.consent.iter().all(|c| !c.sender.is_empty() || c.state() == ConsentState::OptedIn) && !marketing {
                    prop_assert!(allowed);
                }
            }

            #[test]
            fn history_records_every_change_and_only_changes(
                entries in proptest::collection::vec(arb_entry(), 0..20),
            ) {
                let mut recipient = person(vec![]);
                let mut changes = 0;
                for entry in entries {
                    if set(&mut recipient, entry) {
                        changes += 1;
                    }
                }
                prop_assert_eq!(recipient.consent_history.len(), changes);
                // One ledger entry per (channel, topic, sender).
                let mut keys: Vec<_> = recipient.consent.iter().map(|c| (c.topic.clone(), c.sender.clone())).collect();
                let count = keys.len();
                keys.sort();
                keys.dedup();
                prop_assert_eq!(keys.len(), count);
            }

            #[test]
            fn upserts_never_drop_heralds_entries(
                prior_entries in proptest::collection::vec(arb_entry(), 0..6),
                next_entries in proptest::collection::vec(arb_entry(), 0..6),
            ) {
                let mut prior = person(vec![]);
                for entry in prior_entries {
                    set(&mut prior, entry);
                }
                let mut next = person(vec![]);
                for mut entry in next_entries {
                    entry.source = String::new();
                    if !next.consent.iter().any(|c| c.topic == entry.topic && c.sender == entry.sender) {
                        next.consent.push(entry);
                    }
                }
                merge_upsert(Some(&prior), &mut next, 7);
                for kept in prior.consent.iter().filter(|c| c.source != "api") {
                    let present = next.consent.iter().any(|c| c.topic == kept.topic && c.sender == kept.sender);
                    prop_assert!(present, "{:?} was dropped", kept);
                }
                prop_assert!(next.consent_history.len() >= prior.consent_history.len());
            }
        }
    }

    #[test]
    fn upserts_keep_sources_and_herald_entries() {
        let mut prior = person(vec![
            entry("", "", ConsentState::OptedIn),
            entry("", "smpp-main", ConsentState::OptedOut),
        ]);
        prior.consent[0].source = "api".into();
        prior.consent[0].at_unix_ms = 5;
        let mut next = person(vec![
            ChannelConsent {
                channel: SMS,
                state: ConsentState::OptedIn as i32,
                ..Default::default()
            },
            ChannelConsent {
                channel: Channel::Email as i32,
                state: ConsentState::OptedIn as i32,
                ..Default::default()
            },
        ]);
        merge_upsert(Some(&prior), &mut next, 99);
        assert_eq!(
            next.consent[0].at_unix_ms, 5,
            "unchanged entry keeps its time"
        );
        assert_eq!(next.consent[1].source, "api");
        assert_eq!(next.consent[1].at_unix_ms, 99);
        assert!(sender_opted_out(&next, SMS, "smpp-main"), "the STOP stays");
        assert_eq!(next.consent_history.len(), 1);
    }
}
