//! The waterfall's progress, rebuilt from a message's event log.
//!
//! Pure: no I/O. The event log is the only truth; an owner that takes a partition over rebuilds
//! each active message's progress from it, so nothing about a waterfall lives only in memory.

use herald_proto::v1::{Event, EventKind, MessageStatus};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The step to run next.
    pub next_step: u32,
    /// A step whose intent was recorded but whose outcome never was (the owner died between).
    pub ambiguous: Option<(u32, String)>,
    /// The message already reached a terminal status.
    pub terminal: bool,
    /// Highest event sequence number so far.
    pub seq: u32,
    /// Whether any attempt was recorded (policy and counters ran before the first).
    pub started: bool,
}

/// The history of a message just accepted, as far as progress is concerned: its `accepted`
/// event at seq 1 (ids left empty: only kind, status and seq matter here).
pub fn fresh_history() -> Vec<Event> {
    vec![Event {
        kind: EventKind::EventAccepted as i32,
        status: MessageStatus::Pending as i32,
        seq: 1,
        ..Default::default()
    }]
}

pub fn is_terminal(status: MessageStatus) -> bool {
    !matches!(
        status,
        MessageStatus::Pending | MessageStatus::Deferred | MessageStatus::Unspecified
    )
}

impl Progress {
    pub fn from_events(events: &[Event]) -> Self {
        let mut progress = Progress::default();
        let mut open_attempt: Option<(u32, String)> = None;
        for event in events {
            progress.seq = progress.seq.max(event.seq);
            if is_terminal(event.status()) {
                progress.terminal = true;
            }
            let step = event.step.unwrap_or(0);
            match event.kind() {
                EventKind::EventAttempted => {
                    progress.started = true;
                    open_attempt = Some((step, event.attempt_id.clone()));
                    progress.next_step = step;
                }
                EventKind::EventSent
                | EventKind::EventDelivered
                | EventKind::EventRead
                | EventKind::EventFailed
                    if open_attempt.as_ref().is_some_and(|(s, _)| *s == step) =>
                {
                    open_attempt = None;
                }
                EventKind::EventAmbiguous => {
                    // The re-send after an ambiguous outcome opens a new attempt record.
                    open_attempt = None;
                }
                EventKind::EventFellBack | EventKind::EventSkipped => {
                    progress.started = true;
                    progress.next_step = progress.next_step.max(step + 1);
                }
                _ => {}
            }
        }
        progress.ambiguous = open_attempt;
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(kind: EventKind, step: Option<u32>, seq: u32, status: MessageStatus) -> Event {
        Event {
            kind: kind as i32,
            step,
            seq,
            status: status as i32,
            attempt_id: step.map(|s| format!("a{s}")).unwrap_or_default(),
            ..Default::default()
        }
    }

    #[test]
    fn fresh_message_starts_at_step_zero() {
        let p = Progress::from_events(&[event(
            EventKind::EventAccepted,
            None,
            1,
            MessageStatus::Pending,
        )]);
        assert_eq!(p.next_step, 0);
        assert!(!p.started && !p.terminal && p.ambiguous.is_none());
    }

    #[test]
    fn open_attempt_is_ambiguous() {
        let p = Progress::from_events(&[
            event(EventKind::EventAccepted, None, 1, MessageStatus::Pending),
            event(
                EventKind::EventAttempted,
                Some(0),
                2,
                MessageStatus::Pending,
            ),
            event(EventKind::EventFailed, Some(0), 3, MessageStatus::Pending),
            event(EventKind::EventFellBack, Some(0), 4, MessageStatus::Pending),
            event(
                EventKind::EventAttempted,
                Some(1),
                5,
                MessageStatus::Pending,
            ),
        ]);
        assert_eq!(p.next_step, 1);
        assert_eq!(p.ambiguous, Some((1, "a1".into())));
        assert_eq!(p.seq, 5);
    }

    #[test]
    fn fell_back_moves_on() {
        let p = Progress::from_events(&[
            event(EventKind::EventAccepted, None, 1, MessageStatus::Pending),
            event(
                EventKind::EventAttempted,
                Some(0),
                2,
                MessageStatus::Pending,
            ),
            event(EventKind::EventFailed, Some(0), 3, MessageStatus::Pending),
            event(EventKind::EventFellBack, Some(0), 4, MessageStatus::Pending),
        ]);
        assert_eq!(p.next_step, 1);
        assert!(p.ambiguous.is_none());
    }

    #[test]
    fn terminal_is_seen() {
        let p = Progress::from_events(&[
            event(EventKind::EventAccepted, None, 1, MessageStatus::Pending),
            event(
                EventKind::EventAttempted,
                Some(0),
                2,
                MessageStatus::Pending,
            ),
            event(EventKind::EventSent, Some(0), 3, MessageStatus::Pending),
            event(
                EventKind::EventDelivered,
                Some(0),
                4,
                MessageStatus::Delivered,
            ),
        ]);
        assert!(p.terminal);
    }
}
