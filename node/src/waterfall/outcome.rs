//! What a provider's answer to a step's call does: the step succeeds, waits for its receipt
//! (a durable timer), or fails and the waterfall goes on to the next step.

use herald_proto::v1::{EventKind, MessageStatus, SuccessCondition};
use herald_providers::Outcome;

use super::run::{Phase, mark_last, record};
use super::{Cx, Draft, Effect, Run, StateWrite, Step};
use crate::channels::Delivery;
use crate::policy::block_rate::Signal;
use crate::reason::{FallBack, Reason};

impl Run {
    /// The provider chain's answer to [`super::Next::Call`].
    pub fn on_delivery(
        mut self,
        cx: &Cx<'_>,
        delivery: Delivery,
        now_ms: i64,
    ) -> (Option<Run>, Step) {
        let mut effects = Vec::new();
        let Phase::Calling { chain, attempt_id } =
            std::mem::replace(&mut self.phase, Phase::Walking)
        else {
            return (None, Step::done(effects));
        };
        let Some(request) = cx.request() else {
            return (None, Step::done(effects));
        };
        let step = self.step;
        let steps = &request.waterfall;
        let Some(spec) = steps.get(step as usize) else {
            return (None, Step::done(effects));
        };
        let channel = spec.channel();
        let trail = delivery.trail;
        let failure = match delivery.outcome {
            Outcome::Accepted {
                provider_message_id,
                delivered,
                read,
            } => {
                let condition = spec.success();
                let wants_delivery = matches!(
                    condition,
                    SuccessCondition::Delivered | SuccessCondition::Read
                );
                let wants_read = condition == SuccessCondition::Read;
                let satisfied = match condition {
                    SuccessCondition::Delivered => delivered,
                    SuccessCondition::Read => read,
                    _ => true,
                };
                if let Some(history) = &self.sends {
                    effects.push(Effect::Write(StateWrite::RecordSend {
                        channel,
                        at_unix_ms: now_ms,
                        history: history.clone(),
                    }));
                }
                let late_receipts = chain
                    .iter()
                    .any(|a| a.name == delivery.account && a.late_receipts);
                if late_receipts && !provider_message_id.is_empty() {
                    effects.push(Effect::Write(StateWrite::IndexReceipt {
                        account: delivery.account.clone(),
                        provider_message_id: provider_message_id.clone(),
                        step,
                    }));
                }
                effects.push(Effect::Observe {
                    account: delivery.account.clone(),
                    channel,
                    signal: Signal::Delivered,
                });
                let mut sent = Draft::new(
                    EventKind::EventSent,
                    Some(step),
                    channel,
                    MessageStatus::Pending,
                )
                .attempt(&attempt_id)
                .reason(Reason::Sent {
                    provider_message_id,
                    trail,
                })
                .provider(&delivery.account);
                sent.cost_micros = crate::content::attempt_cost(
                    &cx.settings.prices,
                    channel,
                    &self.content(cx),
                    &self.recipient,
                );
                record(&mut effects, sent);
                if wants_delivery && delivered {
                    record(
                        &mut effects,
                        Draft::new(
                            EventKind::EventDelivered,
                            Some(step),
                            channel,
                            MessageStatus::Pending,
                        )
                        .attempt(&attempt_id),
                    );
                    if wants_read && read {
                        record(
                            &mut effects,
                            Draft::new(
                                EventKind::EventRead,
                                Some(step),
                                channel,
                                MessageStatus::Pending,
                            )
                            .attempt(&attempt_id),
                        );
                    }
                }
                if satisfied {
                    mark_last(&mut effects, MessageStatus::Delivered);
                    effects.push(Effect::Flush { terminal: true });
                } else {
                    let due = now_ms.saturating_add(cx.settings.step_timeout_ms(spec.timeout_ms));
                    record(
                        &mut effects,
                        Draft::new(
                            EventKind::EventWaiting,
                            Some(step),
                            channel,
                            MessageStatus::Pending,
                        )
                        .attempt(&attempt_id)
                        .reason(Reason::Waiting { condition })
                        .due(due),
                    );
                    effects.push(Effect::Flush { terminal: false });
                    effects.push(Effect::Schedule { due_unix_ms: due });
                }
                return (None, Step::done(effects));
            }
            Outcome::Ambiguous { reason } => {
                // Maybe accepted: never re-sent blindly. A receipt resolves it; otherwise the
                // step times out like any unanswered step.
                record(
                    &mut effects,
                    Draft::new(
                        EventKind::EventAmbiguous,
                        Some(step),
                        channel,
                        MessageStatus::Pending,
                    )
                    .attempt(&attempt_id)
                    .reason(Reason::ProviderOutcomeUnknown {
                        detail: reason,
                        trail,
                    })
                    .provider(&delivery.account),
                );
                let due = now_ms.saturating_add(cx.settings.step_timeout_ms(spec.timeout_ms));
                record(
                    &mut effects,
                    Draft::new(
                        EventKind::EventWaiting,
                        Some(step),
                        channel,
                        MessageStatus::Pending,
                    )
                    .attempt(&attempt_id)
                    .reason(Reason::WaitingAfterAmbiguous)
                    .due(due),
                );
                effects.push(Effect::Flush { terminal: false });
                effects.push(Effect::Schedule { due_unix_ms: due });
                return (None, Step::done(effects));
            }
            Outcome::Rejected {
                reason,
                contact_invalid,
            } => {
                let suppress = contact_invalid && !delivery.to.is_empty();
                if suppress {
                    self.recipient = crate::policy::contact::suppress(
                        &self.recipient,
                        channel,
                        &delivery.to,
                        &reason,
                        now_ms,
                    );
                    effects.push(Effect::Write(StateWrite::PutRecipient(Box::new(
                        self.recipient.clone(),
                    ))));
                }
                Reason::Rejected {
                    detail: reason,
                    contact_suppressed: suppress,
                    trail,
                }
            }
            Outcome::Unavailable { reason, .. } => Reason::Unavailable {
                detail: reason,
                trail,
            },
        };
        let mut failed = Draft::new(
            EventKind::EventFailed,
            Some(step),
            channel,
            MessageStatus::Pending,
        )
        .attempt(&attempt_id)
        .reason(failure)
        .provider(&delivery.account);
        // The provider refused the attempt: a campaign gets its price back (the event names it).
        failed.cost_micros = self.campaign_price(cx, channel);
        record(&mut effects, failed);
        if (step as usize) + 1 < steps.len() {
            record(
                &mut effects,
                Draft::new(
                    EventKind::EventFellBack,
                    Some(step),
                    channel,
                    MessageStatus::Pending,
                )
                .attempt(&attempt_id)
                .reason(Reason::FellBack {
                    channel,
                    cause: FallBack::Failed,
                }),
            );
        }
        self.step += 1;
        let next = self.walk(cx, now_ms, &mut effects);
        self.finish(Step { effects, next })
    }
}
