//! A campaign message's books: what each append of its log does to the campaign's funnel and
//! credits, written with that append (pure).
//!
//! Owns the translation of a campaign message's events into tallies: the first attempt
//! intent of each attempt settles its price from the message's hold (a ledger `SETTLE`), an
//! attempt the provider refused (its `failed` event carries the price) is refunded to the hold
//! once (`REFUND`); an attempt whose outcome stayed unknown stays charged, each stage (sent per attempt; delivered, read, clicked, converted once per
//! message) is counted per channel and variant, a suppressed or expired end moves the member
//! out of `submitted`, and the end releases what the hold kept back to the campaign's
//! reservation. The store applies the tallies only with the append, so a refused or retried
//! append never counts twice.
//!
//! Must never do I/O, read a clock or decide anything about the message: it only counts what
//! the log says.

use std::collections::{HashMap, HashSet};

use herald_proto::TenantId;
use herald_proto::v1::{
    Channel, Event, EventKind, LedgerEntry, LedgerKind, MessageStatus, StoredMessage,
};
use herald_store::Tally;
use herald_store::campaign::{self as layout, Stage, balance, count, credit};
use herald_store::keys;

/// One campaign message's books, as far as its log goes.
#[derive(Clone, Debug)]
pub struct Books {
    tenant: TenantId,
    campaign_id: String,
    message_id: String,
    variant: String,
    hold: u64,
    /// attempt id → the price settled for it, and how much of it came out of the hold (the
    /// rest, only when prices changed since the hold was made, out of the reservation).
    settled: HashMap<String, (u64, u64)>,
    refunded: HashSet<String>,
    /// Attempts whose `sent` was counted.
    sent: HashSet<String>,
    /// Stages counted once per message.
    stages: HashSet<Stage>,
    ended: bool,
}

impl Books {
    /// The books of `message` after `log` (its events so far); `None` for a message no
    /// campaign submitted.
    pub fn open(message: &StoredMessage, log: &[Event]) -> Option<Books> {
        let send = message.campaign.as_ref()?;
        let mut books = Books {
            tenant: TenantId(message.tenant.clone()),
            campaign_id: send.campaign_id.clone(),
            message_id: message.message_id.clone(),
            variant: send.variant.clone(),
            hold: send.hold_micros,
            settled: HashMap::new(),
            refunded: HashSet::new(),
            sent: HashSet::new(),
            stages: HashSet::new(),
            ended: false,
        };
        // Replaying the log into the books; the tallies it makes were written long ago.
        let _ = books.tallies(log);
        Some(books)
    }

    /// What settled attempts (net of refunds) took out of the hold.
    fn held_used(&self) -> u64 {
        self.settled
            .iter()
            .filter(|(attempt, _)| !self.refunded.contains(*attempt))
            .map(|(_, (_, from_hold))| *from_hold)
            .sum()
    }

    /// The tallies of appending `events`, and the books after them.
    pub fn tallies(&mut self, events: &[Event]) -> Vec<Tally> {
        let record = keys::campaign::record(&self.tenant, &self.campaign_id);
        let mut deltas: Vec<(String, i64)> = Vec::new();
        let mut spent: i64 = 0;
        let mut ledger: Vec<LedgerEntry> = Vec::new();
        let mut add = |deltas: &mut Vec<(String, i64)>, field: String, delta: i64| match deltas
            .iter_mut()
            .find(|(name, _)| *name == field)
        {
            Some((_, value)) => *value += delta,
            None => deltas.push((field, delta)),
        };
        for event in events {
            let channel = event.channel();
            let attempt = event.attempt_id.as_str();
            match event.kind() {
                EventKind::EventAttempted
                    if !attempt.is_empty() && !self.settled.contains_key(attempt) =>
                {
                    let price = event.cost_micros;
                    let from_hold = price.min(self.hold.saturating_sub(self.held_used()));
                    self.settled.insert(attempt.to_owned(), (price, from_hold));
                    if price > 0 {
                        add(&mut deltas, credit::HELD.into(), -signed(from_hold));
                        add(
                            &mut deltas,
                            credit::RESERVED.into(),
                            -signed(price - from_hold),
                        );
                        add(&mut deltas, credit::SPENT.into(), signed(price));
                        spent += signed(price);
                        ledger.push(self.entry(LedgerKind::LedgerSettle, price, attempt, event));
                    }
                }
                EventKind::EventSent if !attempt.is_empty() && !self.sent.contains(attempt) => {
                    self.sent.insert(attempt.to_owned());
                    add(
                        &mut deltas,
                        layout::stage_field(Stage::Sent, &self.variant, channel),
                        1,
                    );
                }
                EventKind::EventFailed if !attempt.is_empty() && event.cost_micros > 0 => {
                    let (price, from_hold) = self.settled.get(attempt).copied().unwrap_or((0, 0));
                    // The machine prices a `failed` event only when the provider refused the
                    // attempt's call (a re-send after an ambiguous outcome included: the
                    // provider saw the same attempt id, so its refusal is the answer).
                    let refundable = !self.refunded.contains(attempt) && price > 0;
                    if refundable {
                        // All of it: the event names the price the machine computed for the
                        // attempt, the books what was settled; they agree on one price table.
                        self.refunded.insert(attempt.to_owned());
                        add(&mut deltas, credit::SPENT.into(), -signed(price));
                        add(&mut deltas, credit::HELD.into(), signed(from_hold));
                        add(
                            &mut deltas,
                            credit::RESERVED.into(),
                            signed(price - from_hold),
                        );
                        spent -= signed(price);
                        ledger.push(self.entry(LedgerKind::LedgerRefund, price, attempt, event));
                    }
                }
                EventKind::EventRead => {
                    self.stage(&mut deltas, &mut add, Stage::Read, channel);
                }
                EventKind::EventClicked => {
                    self.stage(&mut deltas, &mut add, Stage::Clicked, channel);
                }
                EventKind::EventConverted => {
                    let first = self.stage(&mut deltas, &mut add, Stage::Converted, channel);
                    if first {
                        add(&mut deltas, layout::converted_field(&self.variant), 1);
                    }
                }
                _ => {}
            }
            if !self.ended && herald_proto::status::is_terminal(event.status()) {
                self.ended = true;
                match event.status() {
                    MessageStatus::Delivered => {
                        self.stage(&mut deltas, &mut add, Stage::Delivered, channel);
                    }
                    MessageStatus::Failed => {
                        add(&mut deltas, layout::failed_field(&self.variant), 1)
                    }
                    MessageStatus::Suppressed => {
                        add(&mut deltas, count::SUBMITTED.into(), -1);
                        add(&mut deltas, count::SUPPRESSED.into(), 1);
                        add(
                            &mut deltas,
                            layout::suppressed_by(&crate::reason::label_of(&event.reason)),
                            1,
                        );
                    }
                    MessageStatus::Expired => {
                        add(&mut deltas, count::SUBMITTED.into(), -1);
                        add(&mut deltas, count::EXPIRED.into(), 1);
                    }
                    _ => {}
                }
                // What the hold kept back goes back to the campaign's reservation.
                let left = self.hold.saturating_sub(self.held_used());
                if left > 0 {
                    add(&mut deltas, credit::HELD.into(), -signed(left));
                    add(&mut deltas, credit::RESERVED.into(), signed(left));
                }
            }
        }
        deltas.retain(|(_, delta)| *delta != 0);
        let mut tallies = Vec::new();
        if !deltas.is_empty() {
            tallies.push(Tally::AddFields {
                key: record,
                deltas,
            });
        }
        if spent != 0 {
            tallies.push(Tally::AddFields {
                key: keys::campaign::credits(&self.tenant),
                deltas: vec![(balance::SPENT.to_owned(), spent)],
            });
        }
        let ledger_key = keys::campaign::ledger(&self.tenant);
        for entry in ledger {
            tallies.push(Tally::PushRecord {
                key: ledger_key.clone(),
                record: layout::encode_ledger(&entry),
            });
        }
        tallies
    }

    /// Counts `stage` on `channel` once per message; whether it was counted now.
    fn stage(
        &mut self,
        deltas: &mut Vec<(String, i64)>,
        add: &mut impl FnMut(&mut Vec<(String, i64)>, String, i64),
        stage: Stage,
        channel: Channel,
    ) -> bool {
        if !self.stages.insert(stage) {
            return false;
        }
        add(
            deltas,
            layout::stage_field(stage, &self.variant, channel),
            1,
        );
        true
    }

    fn entry(&self, kind: LedgerKind, amount: u64, attempt: &str, event: &Event) -> LedgerEntry {
        LedgerEntry {
            kind: kind as i32,
            amount_micros: amount,
            at_unix_ms: event.at_unix_ms,
            campaign_id: self.campaign_id.clone(),
            message_id: self.message_id.clone(),
            attempt_id: attempt.to_owned(),
            note: String::new(),
        }
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::CampaignSend;

    fn message(hold: u64) -> StoredMessage {
        StoredMessage {
            message_id: "m1".into(),
            tenant: "acme".into(),
            campaign: Some(CampaignSend {
                campaign_id: "c1".into(),
                variant: "a".into(),
                hold_micros: hold,
            }),
            ..Default::default()
        }
    }

    fn event(kind: EventKind, attempt: &str, channel: Channel, status: MessageStatus) -> Event {
        Event {
            kind: kind as i32,
            attempt_id: attempt.into(),
            channel: channel as i32,
            status: status as i32,
            ..Default::default()
        }
    }

    fn priced(mut event: Event, cost: u64) -> Event {
        event.cost_micros = cost;
        event
    }

    /// Sums every field delta of the tallies (all keys together) and counts ledger kinds.
    fn sums(tallies: &[Tally]) -> (HashMap<String, i64>, Vec<LedgerKind>) {
        let mut fields = HashMap::new();
        let mut kinds = Vec::new();
        for tally in tallies {
            match tally {
                Tally::AddFields { key, deltas } => {
                    for (field, delta) in deltas {
                        *fields.entry(format!("{key}/{field}")).or_insert(0) += delta;
                    }
                }
                Tally::PushRecord { record, .. } => {
                    kinds.push(layout::decode_ledger(record).expect("entry").kind());
                }
            }
        }
        (fields, kinds)
    }

    #[test]
    fn a_message_without_campaign_has_no_books() {
        let mut plain = message(0);
        plain.campaign = None;
        assert!(Books::open(&plain, &[]).is_none());
    }

    #[test]
    fn settle_refund_and_release_balance_to_the_hold() {
        let mut books = Books::open(&message(10_000), &[]).expect("books");
        // Push refused by the provider: settled, then refunded.
        let tallies = books.tallies(&[
            priced(
                event(
                    EventKind::EventAttempted,
                    "m1.0",
                    Channel::Push,
                    MessageStatus::Pending,
                ),
                1_000,
            ),
            priced(
                event(
                    EventKind::EventFailed,
                    "m1.0",
                    Channel::Push,
                    MessageStatus::Pending,
                ),
                1_000,
            ),
        ]);
        let (fields, kinds) = sums(&tallies);
        assert_eq!(
            kinds,
            vec![LedgerKind::LedgerSettle, LedgerKind::LedgerRefund]
        );
        assert_eq!(fields.get("cmp:acme:c1/c:spent").copied().unwrap_or(0), 0);
        assert_eq!(fields.get("cmp:acme:c1/c:held").copied().unwrap_or(0), 0);
        // SMS sent and the message delivered: settled, counted, the rest of the hold back.
        let tallies = books.tallies(&[
            priced(
                event(
                    EventKind::EventAttempted,
                    "m1.1",
                    Channel::Sms,
                    MessageStatus::Pending,
                ),
                7_500,
            ),
            priced(
                event(
                    EventKind::EventSent,
                    "m1.1",
                    Channel::Sms,
                    MessageStatus::Delivered,
                ),
                7_500,
            ),
        ]);
        let (fields, kinds) = sums(&tallies);
        assert_eq!(kinds, vec![LedgerKind::LedgerSettle]);
        assert_eq!(fields["cmp:acme:c1/c:spent"], 7_500);
        // Held: -7,500 settled, -2,500 released; reserved +2,500.
        assert_eq!(fields["cmp:acme:c1/c:held"], -10_000);
        assert_eq!(fields["cmp:acme:c1/c:reserved"], 2_500);
        assert_eq!(fields["credits:acme/spent"], 7_500);
        assert_eq!(fields["cmp:acme:c1/f:sent:a:3"], 1);
        assert_eq!(fields["cmp:acme:c1/f:delivered:a:3"], 1);
        // A resend of the same attempt settles nothing again; late stages count once.
        let again = books.tallies(&[
            priced(
                event(
                    EventKind::EventAttempted,
                    "m1.1",
                    Channel::Sms,
                    MessageStatus::Delivered,
                ),
                7_500,
            ),
            event(
                EventKind::EventClicked,
                "m1.1",
                Channel::Sms,
                MessageStatus::Delivered,
            ),
            event(
                EventKind::EventClicked,
                "m1.1",
                Channel::Sms,
                MessageStatus::Delivered,
            ),
        ]);
        let (fields, kinds) = sums(&again);
        assert!(kinds.is_empty());
        assert_eq!(fields["cmp:acme:c1/f:clicked:a:3"], 1);
        assert_eq!(fields.len(), 1);
    }

    #[test]
    fn an_unknown_outcome_stays_charged_a_refusal_is_refunded_once() {
        let mut books = Books::open(&message(5_000), &[]).expect("books");
        // Ambiguous, then the step timed out (an unpriced failure): charged.
        let tallies = books.tallies(&[
            priced(
                event(
                    EventKind::EventAttempted,
                    "m1.0",
                    Channel::Email,
                    MessageStatus::Pending,
                ),
                100,
            ),
            event(
                EventKind::EventAmbiguous,
                "m1.0",
                Channel::Email,
                MessageStatus::Pending,
            ),
            event(
                EventKind::EventFailed,
                "m1.0",
                Channel::Email,
                MessageStatus::Pending,
            ),
        ]);
        let (fields, kinds) = sums(&tallies);
        assert_eq!(kinds, vec![LedgerKind::LedgerSettle]);
        assert_eq!(fields["cmp:acme:c1/c:spent"], 100);
        // Ambiguous, re-sent with the same attempt id and refused: refunded, once.
        let tallies = books.tallies(&[
            priced(
                event(
                    EventKind::EventAttempted,
                    "m1.1",
                    Channel::Sms,
                    MessageStatus::Pending,
                ),
                700,
            ),
            event(
                EventKind::EventAmbiguous,
                "m1.1",
                Channel::Sms,
                MessageStatus::Pending,
            ),
            priced(
                event(
                    EventKind::EventAttempted,
                    "m1.1",
                    Channel::Sms,
                    MessageStatus::Pending,
                ),
                700,
            ),
            priced(
                event(
                    EventKind::EventFailed,
                    "m1.1",
                    Channel::Sms,
                    MessageStatus::Pending,
                ),
                700,
            ),
            priced(
                event(
                    EventKind::EventFailed,
                    "m1.1",
                    Channel::Sms,
                    MessageStatus::Failed,
                ),
                700,
            ),
        ]);
        let (fields, kinds) = sums(&tallies);
        assert_eq!(
            kinds,
            vec![LedgerKind::LedgerSettle, LedgerKind::LedgerRefund]
        );
        assert_eq!(fields.get("cmp:acme:c1/c:spent").copied().unwrap_or(0), 0);
        assert_eq!(fields["cmp:acme:c1/f:failed:a"], 1);
        // The rest of the hold (5,000 - 100 charged) goes back.
        assert_eq!(fields["cmp:acme:c1/c:reserved"], 4_900);
    }

    #[test]
    fn a_suppressed_end_leaves_submitted_for_its_reason() {
        let mut books = Books::open(&message(0), &[]).expect("books");
        let mut suppressed = event(
            EventKind::EventSuppressed,
            "",
            Channel::Unspecified,
            MessageStatus::Suppressed,
        );
        suppressed.reason = "every_step_skipped{no_opt_in{channel=sms}}".into();
        let (fields, _) = sums(&books.tallies(&[suppressed]));
        assert_eq!(fields["cmp:acme:c1/n:submitted"], -1);
        assert_eq!(fields["cmp:acme:c1/n:suppressed"], 1);
        assert_eq!(fields["cmp:acme:c1/s:no_opt_in"], 1);
    }

    #[test]
    fn replaying_the_log_counts_nothing_twice() {
        let log = vec![
            priced(
                event(
                    EventKind::EventAttempted,
                    "m1.0",
                    Channel::Push,
                    MessageStatus::Pending,
                ),
                10,
            ),
            event(
                EventKind::EventSent,
                "m1.0",
                Channel::Push,
                MessageStatus::Pending,
            ),
        ];
        let mut books = Books::open(&message(100), &log).expect("books");
        let (fields, kinds) = sums(&books.tallies(&[event(
            EventKind::EventDelivered,
            "m1.0",
            Channel::Push,
            MessageStatus::Delivered,
        )]));
        assert!(kinds.is_empty());
        assert_eq!(fields["cmp:acme:c1/f:delivered:a:1"], 1);
        assert_eq!(fields["cmp:acme:c1/c:reserved"], 90);
        assert!(!fields.contains_key("cmp:acme:c1/f:sent:a:1"));
    }
}
