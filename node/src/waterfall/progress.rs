//! The waterfall's progress, rebuilt from a message's event log.
//!
//! Pure: no I/O. The event log is the only truth; an owner that takes a partition over rebuilds
//! each active message's progress from it, so nothing about a waterfall lives only in memory.

use herald_proto::status::is_terminal;
use herald_proto::v1::{Event, EventKind, MessageStatus};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The step to run next.
    pub next_step: u32,
    /// A step whose intent was recorded but whose outcome never was (the owner died between).
    pub ambiguous: Option<(u32, String)>,
    /// The message already reached a terminal status.
    pub terminal: bool,
    /// The status after the last event.
    pub status: MessageStatus,
    /// Highest event sequence number so far.
    pub seq: u32,
    /// Whether any attempt was recorded (policy and counters ran before the first).
    pub started: bool,
    /// The step sent (or ambiguous) and now waiting for its success condition.
    pub waiting: Option<Waiting>,
    /// Every step that had an attempt, in step order.
    pub attempts: Vec<StepRecord>,
    /// A policy deferral (quiet hours) not yet followed by anything: the message sleeps until
    /// this time (ms since the Unix epoch, real clock).
    pub deferred_until: Option<i64>,
}

/// A durable timer: the step times out at `due_unix_ms` unless a receipt satisfies it first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Waiting {
    pub step: u32,
    pub attempt_id: String,
    pub due_unix_ms: i64,
    /// When the wait started (the `waiting` event), for the timeout's reason.
    pub since_unix_ms: i64,
}

/// What the log says about one step's attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepRecord {
    pub step: u32,
    pub attempt_id: String,
    /// The account that took the attempt (from `sent`, else from `attempted`).
    pub provider: String,
    pub delivered: bool,
    pub read: bool,
    pub clicked: bool,
    /// The waterfall gave this step up (`failed` or `fell_back` for it): later receipts for it
    /// are late.
    pub given_up: bool,
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

impl Progress {
    pub fn from_events(events: &[Event]) -> Self {
        let mut progress = Progress::default();
        let mut open_attempt: Option<(u32, String)> = None;
        for event in events {
            progress.seq = progress.seq.max(event.seq);
            progress.deferred_until = match event.kind() {
                EventKind::EventDeferred => {
                    // Policy and counters ran before the deferral.
                    progress.started = true;
                    Some(event.due_unix_ms)
                }
                _ => None,
            };
            progress.status = event.status();
            if is_terminal(event.status()) {
                progress.terminal = true;
            }
            let step = event.step.unwrap_or(0);
            let has_step = event.step.is_some();
            match event.kind() {
                EventKind::EventAttempted => {
                    progress.started = true;
                    open_attempt = Some((step, event.attempt_id.clone()));
                    progress.next_step = step;
                    progress.waiting = None;
                    let record = progress.record_mut(step);
                    record.attempt_id = event.attempt_id.clone();
                    if record.provider.is_empty() {
                        record.provider = event.provider.clone();
                    }
                }
                EventKind::EventSent => {
                    if open_attempt.as_ref().is_some_and(|(s, _)| *s == step) {
                        open_attempt = None;
                    }
                    if !event.provider.is_empty() {
                        progress.record_mut(step).provider = event.provider.clone();
                    }
                }
                EventKind::EventDelivered if has_step => {
                    if open_attempt.as_ref().is_some_and(|(s, _)| *s == step) {
                        open_attempt = None;
                    }
                    progress.record_mut(step).delivered = true;
                }
                EventKind::EventRead if has_step => {
                    let record = progress.record_mut(step);
                    record.delivered = true;
                    record.read = true;
                }
                EventKind::EventClicked | EventKind::EventConverted if has_step => {
                    let record = progress.record_mut(step);
                    record.delivered = true;
                    record.read = true;
                    record.clicked = true;
                }
                EventKind::EventFailed if has_step => {
                    if open_attempt.as_ref().is_some_and(|(s, _)| *s == step) {
                        open_attempt = None;
                    }
                    if progress.waiting.as_ref().is_some_and(|w| w.step == step) {
                        progress.waiting = None;
                    }
                    progress.record_mut(step).given_up = true;
                }
                EventKind::EventAmbiguous => {
                    // Closes the open intent: either a re-send follows (a new `attempted`
                    // with the same id) or a wait for a receipt (`waiting`).
                    open_attempt = None;
                }
                EventKind::EventWaiting => {
                    progress.waiting = Some(Waiting {
                        step,
                        attempt_id: event.attempt_id.clone(),
                        due_unix_ms: event.due_unix_ms,
                        since_unix_ms: event.at_unix_ms,
                    });
                }
                EventKind::EventFellBack | EventKind::EventSkipped => {
                    progress.started = true;
                    progress.next_step = progress.next_step.max(step + 1);
                    if progress.waiting.as_ref().is_some_and(|w| w.step == step) {
                        progress.waiting = None;
                    }
                    if event.kind() == EventKind::EventFellBack {
                        progress.record_mut(step).given_up = true;
                    }
                }
                _ => {}
            }
        }
        if progress.terminal {
            progress.waiting = None;
        }
        progress.ambiguous = open_attempt;
        progress
    }

    fn record_mut(&mut self, step: u32) -> &mut StepRecord {
        let index = match self.attempts.iter().position(|r| r.step == step) {
            Some(index) => index,
            None => {
                self.attempts.push(StepRecord {
                    step,
                    ..Default::default()
                });
                self.attempts.len() - 1
            }
        };
        &mut self.attempts[index]
    }

    /// The record of `step`'s attempt, if it had one.
    pub fn attempt(&self, step: u32) -> Option<&StepRecord> {
        self.attempts.iter().find(|r| r.step == step)
    }

    /// The latest step that had an attempt.
    pub fn last_attempt(&self) -> Option<&StepRecord> {
        self.attempts.iter().max_by_key(|r| r.step)
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

    fn waiting(step: u32, seq: u32, due: i64) -> Event {
        Event {
            due_unix_ms: due,
            ..event(
                EventKind::EventWaiting,
                Some(step),
                seq,
                MessageStatus::Pending,
            )
        }
    }

    #[test]
    fn waiting_is_a_timer_until_a_failure_or_fallback() {
        let mut log = vec![
            event(EventKind::EventAccepted, None, 1, MessageStatus::Pending),
            event(
                EventKind::EventAttempted,
                Some(0),
                2,
                MessageStatus::Pending,
            ),
            event(EventKind::EventSent, Some(0), 3, MessageStatus::Pending),
            waiting(0, 4, 9_000),
        ];
        let p = Progress::from_events(&log);
        let w = p.waiting.expect("waiting");
        assert_eq!(
            (w.step, w.due_unix_ms, w.attempt_id.as_str()),
            (0, 9_000, "a0")
        );
        assert!(p.ambiguous.is_none());
        log.push(event(
            EventKind::EventDelivered,
            Some(0),
            5,
            MessageStatus::Pending,
        ));
        let p = Progress::from_events(&log);
        assert!(
            p.waiting.is_some(),
            "delivered does not end a wait for READ"
        );
        assert!(p.attempt(0).expect("record").delivered);
        log.push(event(
            EventKind::EventFailed,
            Some(0),
            6,
            MessageStatus::Pending,
        ));
        log.push(event(
            EventKind::EventFellBack,
            Some(0),
            7,
            MessageStatus::Pending,
        ));
        let p = Progress::from_events(&log);
        assert!(p.waiting.is_none());
        assert!(p.attempt(0).expect("record").given_up);
        assert_eq!(p.next_step, 1);
    }

    #[test]
    fn ambiguous_then_waiting_is_not_re_sent() {
        let p = Progress::from_events(&[
            event(EventKind::EventAccepted, None, 1, MessageStatus::Pending),
            event(
                EventKind::EventAttempted,
                Some(0),
                2,
                MessageStatus::Pending,
            ),
            event(
                EventKind::EventAmbiguous,
                Some(0),
                3,
                MessageStatus::Pending,
            ),
            waiting(0, 4, 5_000),
        ]);
        assert!(p.ambiguous.is_none());
        assert_eq!(p.waiting.map(|w| w.step), Some(0));
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
