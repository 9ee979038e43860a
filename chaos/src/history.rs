//! Invariant checks over message event logs.
//!
//! - Invariant 1: every acked message reached exactly one terminal state (one event carries a
//!   terminal status, and it is the last one).
//! - Invariant 2: at most one provider attempt per (message, step), plus at most one per
//!   recorded `ambiguous` outcome of that step.
//! - Invariant 3: a step starts only after the previous one ended (failed/skipped/fell back).
//! - Invariant 5 (as far as logs show it): every event was recorded by a node allowed to own the
//!   message's partition, and the partition is the one the hash gives.
//! - Event sequence numbers are gap-free from 1.

use std::collections::HashMap;

use herald_proto::v1::{EventKind, GetMessageResponse, MessageStatus};

/// Terminal statuses: the message's life is over.
pub fn is_terminal(status: MessageStatus) -> bool {
    !matches!(
        status,
        MessageStatus::Pending | MessageStatus::Deferred | MessageStatus::Unspecified
    )
}

#[derive(Debug, thiserror::Error)]
#[error("message {message_id}: {rule}: {detail}")]
pub struct Violation {
    pub message_id: String,
    pub rule: &'static str,
    pub detail: String,
}

/// What the history shows, for reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub messages: usize,
    pub attempts: usize,
    pub ambiguous: usize,
    pub fallbacks: usize,
    pub delivered: usize,
    pub failed: usize,
    pub suppressed: usize,
    /// Steps that timed out waiting for their receipt.
    pub timeouts: usize,
    /// Largest and smallest `timed out − due` seen, in ms (a timer firing late or early).
    pub max_timeout_late_ms: i64,
    pub min_timeout_late_ms: i64,
    /// Receipts recorded after their step was given up.
    pub late_receipts: usize,
}

/// The facts a checker needs about the cluster.
pub struct Expectations<'a> {
    /// The partition a message must have (from the partition hash of its recipient).
    pub partition_of: &'a dyn Fn(&str) -> u32,
    /// The nodes that may have acted for a partition during the run.
    pub allowed_owners: &'a dyn Fn(u32) -> Vec<String>,
}

fn compact(log: &GetMessageResponse) -> String {
    log.events
        .iter()
        .map(|e| {
            format!(
                "#{} {:?} step={:?} node={} epoch={} status={:?}",
                e.seq,
                e.kind(),
                e.step,
                e.node_id,
                e.epoch,
                e.status()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Checks every log; returns the first violation found, or a summary.
pub fn check<'a>(
    logs: impl IntoIterator<Item = &'a GetMessageResponse>,
    expect: &Expectations<'_>,
) -> Result<Summary, Violation> {
    let mut summary = Summary::default();
    for log in logs {
        let view = log.message.clone().unwrap_or_default();
        let id = view.message_id.clone();
        let violation = |rule: &'static str, detail: String| Violation {
            message_id: id.clone(),
            rule,
            detail: format!("{detail} [{}]", compact(log)),
        };
        summary.messages += 1;
        let expected = (expect.partition_of)(&view.recipient_id);
        if view.partition != expected {
            return Err(violation(
                "partition",
                format!("stored {} but the hash gives {expected}", view.partition),
            ));
        }
        // Exactly one terminal state: once reached, every later event (receipts, engagement)
        // keeps it, and no attempt follows.
        let Some(first_terminal) = log.events.iter().position(|e| is_terminal(e.status())) else {
            return Err(violation(
                "exactly one terminal state",
                "none reached".into(),
            ));
        };
        let final_status = log.events[first_terminal].status();
        if let Some(later) = log.events[first_terminal..]
            .iter()
            .find(|e| e.status() != final_status || e.kind() == EventKind::EventAttempted)
        {
            return Err(violation(
                "exactly one terminal state",
                format!(
                    "event #{} ({:?}, {:?}) after the terminal state {final_status:?}",
                    later.seq,
                    later.kind(),
                    later.status()
                ),
            ));
        }
        match log.events.last().map(|e| e.status()) {
            Some(MessageStatus::Delivered) => summary.delivered += 1,
            Some(MessageStatus::Suppressed) => summary.suppressed += 1,
            _ => summary.failed += 1,
        }
        for (index, event) in log.events.iter().enumerate() {
            if event.seq as usize != index + 1 {
                return Err(violation(
                    "gap-free seq",
                    format!("event {index} has seq {}", event.seq),
                ));
            }
        }
        let owners = (expect.allowed_owners)(view.partition);
        if let Some(event) = log.events.iter().find(|e| !owners.contains(&e.node_id)) {
            return Err(violation(
                "owner acted",
                format!(
                    "event by {} but partition {} belongs to {owners:?}",
                    event.node_id, view.partition
                ),
            ));
        }
        let mut waiting_due: HashMap<u32, i64> = HashMap::new();
        let mut per_step: HashMap<u32, (usize, usize)> = HashMap::new();
        let mut open_step: Option<u32> = None;
        let mut highest_started: Option<u32> = None;
        for event in &log.events {
            let step = event.step.unwrap_or(u32::MAX);
            match event.kind() {
                EventKind::EventAttempted => {
                    per_step.entry(step).or_default().0 += 1;
                    if let Some(previous) = highest_started
                        && step > previous
                        && open_step == Some(previous)
                    {
                        return Err(violation(
                            "fallback after the previous step ended",
                            format!("step {step} started while step {previous} was open"),
                        ));
                    }
                    open_step = Some(step);
                    highest_started = Some(highest_started.map_or(step, |h| h.max(step)));
                }
                EventKind::EventAmbiguous => {
                    per_step.entry(step).or_default().1 += 1;
                    summary.ambiguous += 1;
                }
                EventKind::EventWaiting => {
                    waiting_due.insert(step, event.due_unix_ms);
                }
                EventKind::EventFailed | EventKind::EventSkipped | EventKind::EventFellBack => {
                    if event.kind() == EventKind::EventFellBack {
                        summary.fallbacks += 1;
                    }
                    if event.kind() == EventKind::EventFailed
                        && event.reason.starts_with("timeout{")
                        && let Some(due) = waiting_due.get(&step)
                    {
                        let late = event.at_unix_ms - due;
                        if summary.timeouts == 0 {
                            summary.max_timeout_late_ms = late;
                            summary.min_timeout_late_ms = late;
                        }
                        summary.timeouts += 1;
                        summary.max_timeout_late_ms = summary.max_timeout_late_ms.max(late);
                        summary.min_timeout_late_ms = summary.min_timeout_late_ms.min(late);
                    }
                    // A step stays open through `sent` and `waiting` until it fails, is
                    // skipped or the message ends.
                    if open_step == Some(step) {
                        open_step = None;
                    }
                }
                EventKind::EventLateReceipt => summary.late_receipts += 1,
                _ => {}
            }
        }
        for (step, (tries, ambiguities)) in per_step {
            if tries > 1 + ambiguities {
                return Err(violation(
                    "at most one attempt per step",
                    format!(
                        "step {step} attempted {tries} times with {ambiguities} ambiguous outcomes"
                    ),
                ));
            }
            summary.attempts += tries;
        }
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::{Event, MessageView};

    fn event(seq: u32, kind: EventKind, step: Option<u32>, status: MessageStatus) -> Event {
        Event {
            seq,
            kind: kind as i32,
            step,
            status: status as i32,
            node_id: "n1".into(),
            ..Default::default()
        }
    }

    fn log(events: Vec<Event>) -> GetMessageResponse {
        GetMessageResponse {
            message: Some(MessageView {
                message_id: "m1".into(),
                recipient_id: "r1".into(),
                partition: 7,
                ..Default::default()
            }),
            events,
        }
    }

    fn expect_ok() -> (impl Fn(&str) -> u32, impl Fn(u32) -> Vec<String>) {
        (|_: &str| 7u32, |_: u32| vec!["n1".to_string()])
    }

    fn run(log: &GetMessageResponse) -> Result<Summary, Violation> {
        let (partition_of, owners) = expect_ok();
        check(
            [log],
            &Expectations {
                partition_of: &partition_of,
                allowed_owners: &owners,
            },
        )
    }

    #[test]
    fn a_clean_fallback_passes() {
        use EventKind::*;
        use MessageStatus::*;
        let summary = run(&log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventAttempted, Some(0), Pending),
            event(3, EventFailed, Some(0), Pending),
            event(4, EventFellBack, Some(0), Pending),
            event(5, EventAttempted, Some(1), Pending),
            event(6, EventSent, Some(1), Delivered),
        ]))
        .expect("valid");
        assert_eq!(summary.attempts, 2);
        assert_eq!(summary.fallbacks, 1);
        assert_eq!(summary.delivered, 1);
    }

    #[test]
    fn violations_are_caught() {
        use EventKind::*;
        use MessageStatus::*;
        // Duplicate attempt without an ambiguous record.
        let duplicate = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventAttempted, Some(0), Pending),
            event(3, EventAttempted, Some(0), Pending),
            event(4, EventSent, Some(0), Delivered),
        ]);
        assert_eq!(
            run(&duplicate).expect_err("dup").rule,
            "at most one attempt per step"
        );
        // The same with the ambiguous record is allowed.
        let recorded = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventAttempted, Some(0), Pending),
            event(3, EventAmbiguous, Some(0), Pending),
            event(4, EventAttempted, Some(0), Pending),
            event(5, EventSent, Some(0), Delivered),
        ]);
        assert_eq!(run(&recorded).expect("ok").ambiguous, 1);
        // Two terminal states.
        let twice = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventSent, Some(0), Delivered),
            event(3, EventFailed, None, Failed),
        ]);
        assert_eq!(
            run(&twice).expect_err("twice").rule,
            "exactly one terminal state"
        );
        // An attempt after the end.
        let after = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventAttempted, Some(0), Pending),
            event(3, EventSent, Some(0), Delivered),
            event(4, EventAttempted, Some(1), Delivered),
        ]);
        assert_eq!(
            run(&after).expect_err("after").rule,
            "exactly one terminal state"
        );
        // A receipt after the end keeps the status: fine.
        let late = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventAttempted, Some(0), Pending),
            event(3, EventSent, Some(0), Delivered),
            event(4, EventDelivered, Some(0), Delivered),
        ]);
        assert!(run(&late).is_ok());
        // The next step while the previous one still waits for its receipt.
        let waiting = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventAttempted, Some(0), Pending),
            event(3, EventSent, Some(0), Pending),
            event(4, EventWaiting, Some(0), Pending),
            event(5, EventAttempted, Some(1), Pending),
            event(6, EventSent, Some(1), Delivered),
        ]);
        assert_eq!(
            run(&waiting).expect_err("waiting").rule,
            "fallback after the previous step ended"
        );
        // Not terminal.
        let open = log(vec![event(1, EventAccepted, None, Pending)]);
        assert!(run(&open).is_err());
        // Next step while the previous is open.
        let early = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventAttempted, Some(0), Pending),
            event(3, EventAttempted, Some(1), Pending),
            event(4, EventSent, Some(1), Delivered),
        ]);
        assert_eq!(
            run(&early).expect_err("early").rule,
            "fallback after the previous step ended"
        );
        // Seq gap.
        let gap = log(vec![
            event(1, EventAccepted, None, Pending),
            event(3, EventSent, Some(0), Delivered),
        ]);
        assert_eq!(run(&gap).expect_err("gap").rule, "gap-free seq");
        // Wrong node.
        let mut foreign = log(vec![
            event(1, EventAccepted, None, Pending),
            event(2, EventSent, Some(0), Delivered),
        ]);
        foreign.events[1].node_id = "n9".into();
        assert_eq!(run(&foreign).expect_err("foreign").rule, "owner acted");
    }
}
