//! Assertions the campaign tests share: every member got exactly one message of the
//! campaign or one counted non-send, and the credit ledger equals the attempts' prices in the
//! event logs.

use std::collections::{HashMap, HashSet};

use herald_proto::v1::{EventKind, LedgerKind};
use herald_store::campaign::Outcome;
use herald_testkit::campaigns::Audit;

/// Every member: exactly one message of the campaign (the one its outcome names), or a counted
/// non-send with no message; nobody else got one. Returns the counts by outcome.
pub fn check_members(audit: &Audit, audience: &[String]) -> HashMap<&'static str, u64> {
    let mut counts: HashMap<&'static str, u64> = HashMap::new();
    for id in audience {
        let messages = audit.messages.get(id).map_or(&[][..], |m| m.as_slice());
        match audit.outcomes.get(id) {
            Some(Outcome::Submitted { message_id, .. }) => {
                assert_eq!(
                    messages.len(),
                    1,
                    "{id}: {} messages of the campaign in the store",
                    messages.len()
                );
                assert_eq!(
                    &messages[0].message_id, message_id,
                    "{id}: its outcome's message"
                );
                assert!(messages[0].accepted_at().is_some(), "{id}: accepted");
                *counts.entry("submitted").or_default() += 1;
            }
            Some(other) => {
                assert!(messages.is_empty(), "{id}: {other:?} but messaged");
                let name = match other {
                    Outcome::HeldOut { .. } => "held_out",
                    Outcome::Suppressed { .. } => "suppressed",
                    Outcome::Expired => "expired",
                    Outcome::Submitted { .. } => "submitted",
                };
                *counts.entry(name).or_default() += 1;
            }
            None => panic!("{id}: no outcome (missing from the campaign)"),
        }
    }
    let outside = audit
        .messages
        .keys()
        .filter(|id| !audience.contains(id))
        .count();
    assert_eq!(
        outside, 0,
        "messages of the campaign to people outside its audience"
    );
    counts
}

/// The ledger's settles net of refunds equal the prices of the attempts in the event logs: each
/// attempt's intent carries its price once (a re-send of the same attempt is not charged
/// again), a refused attempt's `failed` event carries it back, and every attempt that was not
/// refused was billed by its `sent` event at the same price.
pub fn check_ledger(audit: &Audit, campaign_id: &str) {
    let mut settled = 0u64;
    let mut refunded = 0u64;
    for entry in audit.ledger.iter().filter(|e| e.campaign_id == campaign_id) {
        match entry.kind() {
            LedgerKind::LedgerSettle => settled += entry.amount_micros,
            LedgerKind::LedgerRefund => refunded += entry.amount_micros,
            _ => {}
        }
    }
    let mut intents = 0u64;
    let mut refunds = 0u64;
    let mut sent = 0u64;
    for message in audit.messages.values().flatten() {
        let mut charged = HashSet::new();
        let mut refused = HashSet::new();
        let mut sent_attempts = HashSet::new();
        for event in &message.events {
            match event.kind() {
                EventKind::EventAttempted if charged.insert(event.attempt_id.clone()) => {
                    intents += event.cost_micros;
                }
                EventKind::EventFailed
                    if event.cost_micros > 0 && refused.insert(event.attempt_id.clone()) =>
                {
                    refunds += event.cost_micros;
                }
                EventKind::EventSent if sent_attempts.insert(event.attempt_id.clone()) => {
                    sent += event.cost_micros;
                }
                _ => {}
            }
        }
    }
    assert_eq!(
        settled, intents,
        "ledger settles = attempts' prices in the logs"
    );
    assert_eq!(
        refunded, refunds,
        "ledger refunds = refused attempts' prices"
    );
    assert_eq!(
        settled - refunded,
        sent,
        "net of refunds, the ledger is what the sent attempts were billed"
    );
}
