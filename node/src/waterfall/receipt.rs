//! What a receipt or an engagement report does to a message.
//!
//! A delivery or read that satisfies the waiting step ends the message; a bounce, a failure
//! receipt or a block of the waiting step falls back to the next step (a hard bounce
//! suppresses the address first); a receipt for a step the waterfall already left is recorded
//! as `late_receipt` and changes nothing; anything else (a click, a read after the message
//! ended, an unsubscribe, a complaint) is recorded with the message's status unchanged, and an
//! unsubscribe or complaint changes the consent ledger in the same write. Pure.

use herald_proto::v1::{
    Channel, ConsentState, EngagementKind, EventKind, MessageStatus, Recipient, ReportStatus,
    SuccessCondition,
};

use super::{Cx, Draft, Effect, Progress, Run, StateWrite, Step};
use crate::policy::block_rate::Signal as BreakerSignal;
use crate::reason::{FallBack, Reason, kind_name};

/// A receipt or report for one of the message's attempts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signal {
    /// The attempt's step; `None` = the message's latest attempt.
    pub step: Option<u32>,
    pub kind: EngagementKind,
    pub detail: String,
    /// `api`, or the provider account it came from.
    pub source: String,
}

/// What a receipt came to.
#[derive(Debug)]
pub struct Applied {
    pub verdict: ReportStatus,
    pub step: Step,
    /// The walk on to the next step, after a failure of the waiting step.
    pub run: Option<Run>,
}

impl Applied {
    fn only(verdict: ReportStatus) -> Applied {
        Applied {
            verdict,
            step: Step::done(Vec::new()),
            run: None,
        }
    }
}

pub fn is_positive(kind: EngagementKind) -> bool {
    matches!(
        kind,
        EngagementKind::EngagementDelivered
            | EngagementKind::EngagementRead
            | EngagementKind::EngagementClicked
            | EngagementKind::EngagementConverted
    )
}

pub fn is_failure(kind: EngagementKind) -> bool {
    matches!(
        kind,
        EngagementKind::EngagementBouncedHard
            | EngagementKind::EngagementBouncedSoft
            | EngagementKind::EngagementBlocked
            | EngagementKind::EngagementFailed
            | EngagementKind::EngagementExpired
    )
}

/// Whether applying `kind` may need the recipient (a suppression, a consent change, a walk on
/// to the next step): the actor reads it only then.
pub fn needs_recipient(kind: EngagementKind) -> bool {
    is_failure(kind)
        || matches!(
            kind,
            EngagementKind::EngagementUnsubscribed | EngagementKind::EngagementComplained
        )
}

/// The event kind that records a signal.
fn event_kind(kind: EngagementKind) -> EventKind {
    match kind {
        EngagementKind::EngagementDelivered => EventKind::EventDelivered,
        EngagementKind::EngagementRead => EventKind::EventRead,
        EngagementKind::EngagementClicked => EventKind::EventClicked,
        EngagementKind::EngagementConverted => EventKind::EventConverted,
        EngagementKind::EngagementBouncedHard | EngagementKind::EngagementBouncedSoft => {
            EventKind::EventBounced
        }
        EngagementKind::EngagementComplained => EventKind::EventComplained,
        EngagementKind::EngagementBlocked => EventKind::EventBlocked,
        EngagementKind::EngagementUnsubscribed => EventKind::EventUnsubscribed,
        EngagementKind::EngagementReplied => EventKind::EventReplied,
        EngagementKind::EngagementFailed
        | EngagementKind::EngagementExpired
        | EngagementKind::EngagementOptedIn
        | EngagementKind::Unspecified => EventKind::EventLateReceipt,
    }
}

/// Applies `signal` to the message whose log is `progress`. `recipient`: as stored now, read
/// when [`needs_recipient`] says so (`None` otherwise, or when erased).
pub fn apply(
    cx: &Cx<'_>,
    progress: &Progress,
    signal: &Signal,
    recipient: Option<Recipient>,
    now_ms: i64,
) -> Applied {
    let Some(request) = cx.request() else {
        return Applied::only(ReportStatus::ReportUnknown);
    };
    let record = match signal.step {
        Some(step) => progress.attempt(step),
        None => progress.last_attempt(),
    };
    let Some(record) = record else {
        return Applied::only(ReportStatus::ReportUnknown);
    };
    let step = record.step;
    let Some(spec) = request.waterfall.get(step as usize) else {
        return Applied::only(ReportStatus::ReportUnknown);
    };
    let channel = spec.channel();
    let kind = signal.kind;
    let duplicate = match kind {
        EngagementKind::EngagementDelivered => record.delivered,
        EngagementKind::EngagementRead => record.read,
        _ => false,
    };
    if duplicate {
        return Applied::only(ReportStatus::ReportDuplicate);
    }
    let note = Reason::Receipt {
        kind,
        source: signal.source.clone(),
        detail: signal.detail.clone(),
    };
    let event = |kind: EventKind, status: MessageStatus| {
        Effect::Record(
            Draft::new(kind, Some(step), channel, status)
                .attempt(&record.attempt_id)
                .reason(note.clone()),
        )
    };
    let mut effects = Vec::new();
    if matches!(
        kind,
        EngagementKind::EngagementRead
            | EngagementKind::EngagementClicked
            | EngagementKind::EngagementConverted
            | EngagementKind::EngagementReplied
    ) {
        effects.push(Effect::Write(StateWrite::Engaged { at_unix_ms: now_ms }));
    }
    let waiting_here = progress.waiting.as_ref().is_some_and(|w| w.step == step);

    if waiting_here && is_positive(kind) {
        // The step reached (at least) delivery.
        let read = kind != EngagementKind::EngagementDelivered;
        if !record.delivered {
            effects.push(event(EventKind::EventDelivered, MessageStatus::Pending));
        }
        if read && !record.read {
            effects.push(event(EventKind::EventRead, MessageStatus::Pending));
        }
        if matches!(
            kind,
            EngagementKind::EngagementClicked | EngagementKind::EngagementConverted
        ) {
            effects.push(event(event_kind(kind), MessageStatus::Pending));
        }
        let satisfied = spec.success() != SuccessCondition::Read || read;
        if satisfied && let Some(Effect::Record(last)) = effects.last_mut() {
            last.status = MessageStatus::Delivered;
        }
        effects.push(Effect::Flush {
            terminal: satisfied,
        });
        return Applied {
            verdict: ReportStatus::ReportApplied,
            step: Step::done(effects),
            run: None,
        };
    }

    if waiting_here && is_failure(kind) {
        if kind != EngagementKind::EngagementFailed && kind != EngagementKind::EngagementExpired {
            effects.push(event(event_kind(kind), MessageStatus::Pending));
        }
        effects.push(event(EventKind::EventFailed, MessageStatus::Pending));
        if (step as usize) + 1 < request.waterfall.len() {
            effects.push(Effect::Record(
                Draft::new(
                    EventKind::EventFellBack,
                    Some(step),
                    channel,
                    MessageStatus::Pending,
                )
                .attempt(&record.attempt_id)
                .reason(Reason::FellBack {
                    channel,
                    cause: FallBack::FailedByReceipt,
                }),
            ));
        }
        let Some(mut recipient) = recipient else {
            effects.push(Effect::Record(
                Draft::new(
                    EventKind::EventFailed,
                    None,
                    Channel::Unspecified,
                    MessageStatus::Failed,
                )
                .reason(Reason::RecipientErased),
            ));
            effects.push(Effect::Flush { terminal: true });
            return Applied {
                verdict: ReportStatus::ReportApplied,
                step: Step::done(effects),
                run: None,
            };
        };
        if kind == EngagementKind::EngagementBouncedHard
            && let Some(address) = crate::policy::contact::contact_point(&recipient, channel, None)
        {
            let address = address.to_owned();
            recipient = crate::policy::contact::suppress(
                &recipient,
                channel,
                &address,
                &kind_name(kind),
                now_ms,
            );
            effects.push(Effect::Write(StateWrite::PutRecipient(Box::new(
                recipient.clone(),
            ))));
        }
        let (run, step) = Run::after_failure(cx, recipient, step + 1, now_ms, effects);
        return Applied {
            verdict: ReportStatus::ReportApplied,
            step,
            run,
        };
    }

    if record.given_up && (is_positive(kind) || is_failure(kind)) {
        // The waterfall already left this step: recorded and counted, never acted on.
        effects.push(event(EventKind::EventLateReceipt, progress.status));
        effects.push(Effect::Flush {
            terminal: progress.terminal,
        });
        return Applied {
            verdict: ReportStatus::ReportLate,
            step: Step::done(effects),
            run: None,
        };
    }

    // Information about a step that succeeded (or about the person's reaction): recorded with
    // the message's status unchanged. An unsubscribe or a complaint also changes the consent
    // ledger (and a complaint suppresses the address) in the same write.
    let negative = match kind {
        EngagementKind::EngagementComplained => Some(BreakerSignal::Complaint),
        EngagementKind::EngagementBlocked => Some(BreakerSignal::Block),
        EngagementKind::EngagementUnsubscribed => Some(BreakerSignal::OptOut),
        _ => None,
    };
    if let Some(signal) = negative {
        effects.push(Effect::Observe {
            account: record.provider.clone(),
            channel,
            signal,
        });
    }
    if matches!(
        kind,
        EngagementKind::EngagementUnsubscribed | EngagementKind::EngagementComplained
    ) && let Some(mut recipient) = recipient
    {
        let topic = if request.topic.is_empty() {
            crate::policy::consent::ALL_MARKETING.to_owned()
        } else {
            request.topic.clone()
        };
        let source = if kind == EngagementKind::EngagementComplained {
            "complaint".to_owned()
        } else {
            signal.source.clone()
        };
        let mut changed = crate::policy::consent::set(
            &mut recipient,
            herald_proto::v1::ChannelConsent {
                channel: channel as i32,
                state: ConsentState::OptedOut as i32,
                topic,
                source,
                at_unix_ms: now_ms,
                sender: String::new(),
            },
        );
        if kind == EngagementKind::EngagementComplained
            && let Some(address) = crate::policy::contact::contact_point(&recipient, channel, None)
        {
            let address = address.to_owned();
            recipient = crate::policy::contact::suppress(
                &recipient,
                channel,
                &address,
                "complained",
                now_ms,
            );
            changed = true;
        }
        if changed {
            effects.push(Effect::Write(StateWrite::PutRecipient(Box::new(recipient))));
        }
    }
    effects.push(event(event_kind(kind), progress.status));
    effects.push(Effect::Flush {
        terminal: progress.terminal,
    });
    Applied {
        verdict: ReportStatus::ReportApplied,
        step: Step::done(effects),
        run: None,
    }
}
