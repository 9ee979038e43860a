//! One run of a message through its waterfall: from the log's state to the next durable
//! point (terminal, waiting for a receipt, deferred), pausing at each long effect.
//!
//! A run starts from the log ([`triage`], then [`Run::start`]), or after a failure receipt
//! ([`Run::after_failure`]), and walks the steps: gates, channel rules ([`Next::AskRules`]), a
//! send slot ([`Next::Slot`]), pauses, the attempt intent (flushed before the call), the call
//! ([`Next::Call`]) and what its answer means. Each `on_*` method takes the answer of the long
//! effect the run waits for. Pure: see the module docs of [`crate::waterfall`].

use std::borrow::Cow;

use chrono::DateTime;
use herald_proto::v1::{
    Channel, Content, EventKind, MessageClass, MessageStatus, Recipient, StoredMessage,
};

use super::{AccountInfo, Cx, Draft, Effect, Next, Progress, StateWrite, Step, Waiting};
use crate::policy::caps::SentRecord;
use crate::policy::gates::{self, PauseVerdict, QuietHoursPolicy};
use crate::reason::{FallBack, Reason, condition_name};

/// What a message's log says to do when it is run.
#[derive(Clone, Debug, PartialEq)]
pub enum Triage {
    /// Already terminal: make sure it left its partition's active set, nothing else.
    Retire,
    /// The stored message has no request: it fails.
    Corrupt(Step),
    /// Waiting or deferred and not due yet: only its timer is rebuilt (after a takeover or a
    /// stale timer); nothing is written.
    Sleep { due_unix_ms: i64 },
    /// Run it: read the recipient and, when `sends`, the person's recent marketing sends (the
    /// caps of a marketing message that has not made an attempt yet).
    Go { sends: bool },
}

/// The first decision of a run, before anything is read.
pub fn triage(message: &StoredMessage, progress: &Progress, now_ms: i64) -> Triage {
    if progress.terminal {
        return Triage::Retire;
    }
    let Some(request) = message.request.as_ref() else {
        return Triage::Corrupt(Step::done(vec![
            Effect::Record(
                Draft::new(
                    EventKind::EventFailed,
                    None,
                    Channel::Unspecified,
                    MessageStatus::Failed,
                )
                .reason(Reason::CorruptMessage),
            ),
            Effect::Flush { terminal: true },
        ]));
    };
    let sleeping_until = progress
        .waiting
        .as_ref()
        .map(|w| w.due_unix_ms)
        .or(progress.deferred_until);
    if let Some(due) = sleeping_until
        && now_ms < due
    {
        return Triage::Sleep { due_unix_ms: due };
    }
    Triage::Go {
        sends: request.class() == MessageClass::Marketing
            && progress.attempts.is_empty()
            && progress.ambiguous.is_none(),
    }
}

/// Where a run stands between inputs.
#[derive(Clone, Debug)]
pub(super) enum Phase {
    /// Walking the steps (never seen between inputs).
    Walking,
    /// Waiting for the channel rules of `chain` (`before`: the chain's length before the
    /// person's sender opt-outs were taken out).
    Rules {
        chain: Vec<AccountInfo>,
        before: usize,
    },
    /// Waiting for the first account's send slot.
    Slot { chain: Vec<AccountInfo> },
    /// The intent is durable; waiting for the provider chain's answer.
    Calling {
        chain: Vec<AccountInfo>,
        attempt_id: String,
    },
    /// Nothing more to do in this run.
    Finished,
}

/// One run's state between long effects. Owns what it changed (the recipient, after a
/// suppression); everything else is read from [`Cx`] at each input.
#[derive(Clone, Debug)]
pub struct Run {
    pub(super) step: u32,
    /// The attempt to send again with its own id (its outcome was lost with an owner).
    pub(super) resend: Option<String>,
    /// An attempt was made (in this run or an earlier one): running out of steps fails.
    pub(super) attempted: bool,
    /// Policy and rule skips of this run, for the message's final reason.
    pub(super) skipped: Vec<Reason>,
    pub(super) recipient: Recipient,
    /// The person's recent marketing sends, when caps apply to this message.
    pub(super) sends: Option<Vec<SentRecord>>,
    /// The content rendered for the recipient, when it has templates.
    pub(super) rendered: Option<Content>,
    pub(super) phase: Phase,
}

pub(super) fn record(effects: &mut Vec<Effect>, draft: Draft) {
    effects.push(Effect::Record(draft));
}

/// Sets the status of the last event recorded since the last flush (the one that ends the
/// message).
pub(super) fn mark_last(effects: &mut [Effect], status: MessageStatus) {
    for effect in effects.iter_mut().rev() {
        match effect {
            Effect::Record(draft) => {
                draft.status = status;
                return;
            }
            Effect::Flush { .. } => return,
            _ => {}
        }
    }
}

fn failed(effects: &mut Vec<Effect>, reason: Reason) {
    record(
        effects,
        Draft::new(
            EventKind::EventFailed,
            None,
            Channel::Unspecified,
            MessageStatus::Failed,
        )
        .reason(reason),
    );
    effects.push(Effect::Flush { terminal: true });
}

/// Records that `waiting` ran out (and the fallback, when a step is left).
fn time_out(cx: &Cx<'_>, effects: &mut Vec<Effect>, waiting: &Waiting, now_ms: i64) {
    let steps = cx.request().map_or(&[][..], |r| r.waterfall.as_slice());
    let spec = steps.get(waiting.step as usize);
    let channel = spec.map(|s| s.channel()).unwrap_or_default();
    let condition = spec
        .map(|s| condition_name(s.success()))
        .unwrap_or_default();
    effects.push(Effect::CountTimeout);
    record(
        effects,
        Draft::new(
            EventKind::EventFailed,
            Some(waiting.step),
            channel,
            MessageStatus::Pending,
        )
        .attempt(&waiting.attempt_id)
        .reason(Reason::Timeout {
            condition,
            waited_ms: now_ms.saturating_sub(waiting.since_unix_ms),
            due_unix_ms: waiting.due_unix_ms,
        }),
    );
    if (waiting.step as usize) + 1 < steps.len() {
        record(
            effects,
            Draft::new(
                EventKind::EventFellBack,
                Some(waiting.step),
                channel,
                MessageStatus::Pending,
            )
            .attempt(&waiting.attempt_id)
            .reason(Reason::FellBack {
                channel,
                cause: FallBack::TimedOut,
            }),
        );
    }
}

impl Run {
    fn new(recipient: Recipient, step: u32, attempted: bool) -> Run {
        Run {
            step,
            resend: None,
            attempted,
            skipped: Vec::new(),
            recipient,
            sends: None,
            rendered: None,
            phase: Phase::Walking,
        }
    }

    /// The recipient as the run knows it (with its suppressions of this run).
    pub fn recipient(&self) -> &Recipient {
        &self.recipient
    }

    /// The content the call sends (rendered for the recipient when it has templates).
    pub fn content<'a>(&'a self, cx: &Cx<'a>) -> Cow<'a, Content> {
        match &self.rendered {
            Some(content) => Cow::Borrowed(content),
            None => match cx.request().and_then(|r| r.content.as_ref()) {
                Some(content) => Cow::Borrowed(content),
                None => Cow::Owned(Content::default()),
            },
        }
    }

    /// Starts a run from the log (`triage` said [`Triage::Go`]). `recipient`: as stored now
    /// (`None` = erased); `sends`: read when triage asked for them. Returns the run when it
    /// waits for a long effect.
    pub fn start(
        cx: &Cx<'_>,
        progress: &Progress,
        recipient: Option<Recipient>,
        sends: Option<Vec<SentRecord>>,
        now_ms: i64,
    ) -> (Option<Run>, Step) {
        let mut effects = Vec::new();
        let Some(request) = cx.request() else {
            failed(&mut effects, Reason::CorruptMessage);
            return (None, Step::done(effects));
        };
        let Some(recipient) = recipient else {
            failed(&mut effects, Reason::RecipientErased);
            return (None, Step::done(effects));
        };
        if !progress.started {
            effects.push(Effect::Write(StateWrite::CountMessage));
        }
        // Preferences, caps and quiet hours: marketing only, re-checked at every wake until the
        // first attempt.
        let first_marketing = request.class() == MessageClass::Marketing
            && progress.attempts.is_empty()
            && progress.ambiguous.is_none();
        let mut kept_sends = None;
        if first_marketing {
            let sends = sends.unwrap_or_default();
            let blocked = gates::muted_topic(&recipient, &request.topic)
                .or_else(|| gates::frequency_cap(&sends, &cx.tenant.marketing_caps, now_ms));
            if let Some(reason) = blocked {
                record(
                    &mut effects,
                    Draft::new(
                        EventKind::EventSuppressed,
                        None,
                        Channel::Unspecified,
                        MessageStatus::Suppressed,
                    )
                    .reason(reason),
                );
                effects.push(Effect::Flush { terminal: true });
                return (None, Step::done(effects));
            }
            let offset = cx.settings.policy_clock_offset_ms;
            let deferral =
                DateTime::from_timestamp_millis(now_ms.saturating_add(offset)).and_then(|now| {
                    gates::quiet_hours(
                        request.quiet_hours.as_ref(),
                        QuietHoursPolicy {
                            window: cx.tenant.quiet_hours.as_ref(),
                            default_zone: cx.tenant.time_zone,
                            spread_ms: cx.tenant.quiet_hours_spread_ms,
                        },
                        &recipient,
                        now,
                        &cx.message.message_id,
                    )
                });
            if let Some((wake, reason)) = deferral {
                let due = wake.timestamp_millis().saturating_sub(offset);
                record(
                    &mut effects,
                    Draft::new(
                        EventKind::EventDeferred,
                        None,
                        Channel::Unspecified,
                        MessageStatus::Deferred,
                    )
                    .reason(reason)
                    .due(due),
                );
                effects.push(Effect::Flush { terminal: false });
                effects.push(Effect::Schedule { due_unix_ms: due });
                return (None, Step::done(effects));
            }
            kept_sends = Some(sends);
        }

        let mut run = Run::new(recipient, progress.next_step, !progress.attempts.is_empty());
        run.sends = kept_sends;
        if let Some(waiting) = &progress.waiting {
            time_out(cx, &mut effects, waiting, now_ms);
            run.step = waiting.step + 1;
        } else if let Some((step, attempt_id)) = &progress.ambiguous {
            let channel = request
                .waterfall
                .get(*step as usize)
                .map(|s| s.channel())
                .unwrap_or_default();
            record(
                &mut effects,
                Draft::new(
                    EventKind::EventAmbiguous,
                    Some(*step),
                    channel,
                    MessageStatus::Pending,
                )
                .attempt(attempt_id)
                .reason(Reason::OwnerChanged),
            );
            run.step = *step;
            run.resend = Some(attempt_id.clone());
        }
        run.begin(cx, now_ms, effects)
    }

    /// Goes on after a failure receipt ended `step - 1`: the walk resumes at `step`.
    pub fn after_failure(
        cx: &Cx<'_>,
        recipient: Recipient,
        step: u32,
        now_ms: i64,
        effects: Vec<Effect>,
    ) -> (Option<Run>, Step) {
        Run::new(recipient, step, true).begin(cx, now_ms, effects)
    }

    /// Renders the content, then walks.
    fn begin(mut self, cx: &Cx<'_>, now_ms: i64, mut effects: Vec<Effect>) -> (Option<Run>, Step) {
        use crate::content::template;
        let request = cx.request();
        let content = request.and_then(|r| r.content.as_ref());
        // Templates were checked at submit; the recipient's attributes may have changed since.
        if let (Some(request), Some(content)) = (request, content)
            && template::has_templates(content)
        {
            let vars = template::merge_vars(&self.recipient.attributes, &request.variables);
            match template::render(content, &vars) {
                Ok(rendered) => self.rendered = Some(rendered.into_owned()),
                Err(error) => {
                    failed(
                        &mut effects,
                        Reason::Template {
                            field: error.field().to_owned(),
                            error: error.to_string(),
                        },
                    );
                    return (None, Step::done(effects));
                }
            }
        }
        let next = self.walk(cx, now_ms, &mut effects);
        self.finish(Step { effects, next })
    }

    pub(super) fn finish(self, step: Step) -> (Option<Run>, Step) {
        if step.next == Next::Done {
            (None, step)
        } else {
            (Some(self), step)
        }
    }

    /// The channel rules' verdicts, one per account of [`Next::AskRules`], in order.
    pub fn on_rules(
        mut self,
        cx: &Cx<'_>,
        verdicts: Vec<Option<Reason>>,
        now_ms: i64,
    ) -> (Option<Run>, Step) {
        let mut effects = Vec::new();
        let Phase::Rules { chain, before } = std::mem::replace(&mut self.phase, Phase::Walking)
        else {
            return (None, Step::done(effects));
        };
        let mut kept = Vec::with_capacity(chain.len());
        let mut reasons = Vec::new();
        let mut verdicts = verdicts.into_iter();
        for account in chain {
            match verdicts.next().flatten() {
                Some(reason) => reasons.push(reason),
                None => kept.push(account),
            }
        }
        let next = match self.choose(cx, now_ms, &mut effects, kept, reasons, before) {
            Some(next) => next,
            None => self.walk(cx, now_ms, &mut effects),
        };
        self.finish(Step { effects, next })
    }

    /// The first account's slot: `taken` when it was had (not when waiting for it failed).
    pub fn on_slot(mut self, cx: &Cx<'_>, taken: bool, now_ms: i64) -> (Option<Run>, Step) {
        let mut effects = Vec::new();
        let Phase::Slot { chain } = std::mem::replace(&mut self.phase, Phase::Walking) else {
            return (None, Step::done(effects));
        };
        let next = match self.attempt(cx, now_ms, &mut effects, chain, taken) {
            Some(next) => next,
            None => self.walk(cx, now_ms, &mut effects),
        };
        self.finish(Step { effects, next })
    }

    /// Records a skip of the current step and moves on. `policy`: the reason counts toward
    /// the message's final reason.
    fn skip(&mut self, effects: &mut Vec<Effect>, channel: Channel, reason: Reason, counts: bool) {
        record(
            effects,
            Draft::new(
                EventKind::EventSkipped,
                Some(self.step),
                channel,
                MessageStatus::Pending,
            )
            .reason(reason.clone()),
        );
        if counts {
            self.skipped.push(reason);
        }
        self.step += 1;
    }

    /// Walks from the current step until a long effect, or the end of the run.
    pub(super) fn walk(&mut self, cx: &Cx<'_>, now_ms: i64, effects: &mut Vec<Effect>) -> Next {
        let Some(request) = cx.request() else {
            return Next::Done;
        };
        let class = request.class();
        loop {
            let Some(spec) = request.waterfall.get(self.step as usize) else {
                return self.exhausted(effects);
            };
            let channel = spec.channel();
            if self.resend.is_none() {
                let blocked = gates::contact(&self.recipient, channel)
                    .or_else(|| gates::consent(&self.recipient, channel, class, &request.topic))
                    .or_else(|| {
                        self.sends.as_deref().and_then(|sends| {
                            gates::channel_limit(&self.recipient, channel, sends, now_ms)
                        })
                    });
                if let Some(reason) = blocked {
                    self.skip(effects, channel, reason, true);
                    continue;
                }
            }
            let mut chain = cx.accounts.chain(channel, &spec.provider_account);
            // A sender the person stopped (an SMS STOP to that number) is never used for them.
            let before = chain.len();
            chain.retain(|account| {
                !crate::policy::consent::sender_opted_out(
                    &self.recipient,
                    channel as i32,
                    &account.name,
                )
            });
            if self.resend.is_none() && chain.iter().any(AccountInfo::has_rules) {
                self.phase = Phase::Rules {
                    chain: chain.clone(),
                    before,
                };
                return Next::AskRules {
                    step: self.step,
                    accounts: chain,
                };
            }
            if let Some(next) = self.choose(cx, now_ms, effects, chain, Vec::new(), before) {
                return next;
            }
        }
    }

    /// With the accounts the rules kept: skip the step, or go for the first account's slot.
    /// `None`: the step was skipped, walk on.
    fn choose(
        &mut self,
        cx: &Cx<'_>,
        now_ms: i64,
        effects: &mut Vec<Effect>,
        chain: Vec<AccountInfo>,
        mut rule_reasons: Vec<Reason>,
        before: usize,
    ) -> Option<Next> {
        let channel = self.channel(cx);
        if chain.is_empty() && !rule_reasons.is_empty() {
            let reason = if rule_reasons.len() == 1 {
                rule_reasons.remove(0)
            } else {
                Reason::Rules(rule_reasons)
            };
            self.skip(effects, channel, reason, true);
            return None;
        }
        if before > 0 && chain.is_empty() && self.resend.is_none() {
            self.skip(
                effects,
                channel,
                Reason::EverySenderOptedOut { channel },
                true,
            );
            return None;
        }
        let Some(first) = chain.first() else {
            self.skip(
                effects,
                channel,
                Reason::NoProviderAccount { channel },
                false,
            );
            return None;
        };
        if first.rate_limited {
            let account = first.name.clone();
            self.phase = Phase::Slot { chain };
            return Some(Next::Slot {
                step: self.step,
                account,
            });
        }
        self.attempt(cx, now_ms, effects, chain, true)
    }

    /// With the first account's slot: the pauses, then the intent and the call. `None`: the
    /// step was skipped (a paused sender), walk on.
    fn attempt(
        &mut self,
        cx: &Cx<'_>,
        now_ms: i64,
        effects: &mut Vec<Effect>,
        chain: Vec<AccountInfo>,
        slot_taken: bool,
    ) -> Option<Next> {
        let request = cx.request()?;
        let channel = self.channel(cx);
        let first = chain.first()?.name.clone();
        if self.resend.is_none() {
            // After the slot: a pause also stops messages that were waiting for their slot.
            let paused = cx.accounts.paused(&request.campaign_id, &first);
            match gates::pause(paused, request.fall_back_when_paused) {
                PauseVerdict::Go => {}
                PauseVerdict::Skip(reason) => {
                    self.skip(effects, channel, reason, true);
                    return None;
                }
                PauseVerdict::Defer(reason) => {
                    effects.push(Effect::CountDeferredSend);
                    let due = now_ms.saturating_add(cx.settings.breaker_recheck_ms);
                    record(
                        effects,
                        Draft::new(
                            EventKind::EventDeferred,
                            Some(self.step),
                            channel,
                            MessageStatus::Deferred,
                        )
                        .reason(reason)
                        .due(due),
                    );
                    effects.push(Effect::Flush { terminal: false });
                    effects.push(Effect::Schedule { due_unix_ms: due });
                    self.phase = Phase::Finished;
                    return Some(Next::Done);
                }
            }
        }
        self.attempted = true;
        let attempt_id = self
            .resend
            .take()
            .unwrap_or_else(|| format!("{}.{}", cx.message.message_id, self.step));
        let mut intent = Draft::new(
            EventKind::EventAttempted,
            Some(self.step),
            channel,
            MessageStatus::Pending,
        )
        .attempt(&attempt_id)
        .provider(&first);
        // A campaign pays for its attempts from its credits at the intent: the price is in
        // the event that charges it.
        intent.cost_micros = self.campaign_price(cx, channel);
        record(effects, intent);
        // The intent is durable before the provider hears of the attempt.
        effects.push(Effect::Flush { terminal: false });
        let accounts = chain.iter().map(|a| a.name.clone()).collect();
        self.phase = Phase::Calling {
            chain,
            attempt_id: attempt_id.clone(),
        };
        Some(Next::Call {
            step: self.step,
            attempt_id,
            accounts,
            first_slot_taken: slot_taken,
        })
    }

    /// What an attempt on `channel` costs a campaign's message (0 for any other message: its
    /// attempts are billed by their `sent` events only).
    pub(super) fn campaign_price(&self, cx: &Cx<'_>, channel: Channel) -> u64 {
        if cx.message.campaign.is_none() {
            return 0;
        }
        crate::content::attempt_cost(
            &cx.settings.prices,
            channel,
            &self.content(cx),
            &self.recipient,
        )
    }

    fn channel(&self, cx: &Cx<'_>) -> Channel {
        cx.request()
            .and_then(|r| r.waterfall.get(self.step as usize))
            .map(|s| s.channel())
            .unwrap_or_default()
    }

    /// No step left: suppressed when policy skipped them all and nothing was attempted, else
    /// failed.
    fn exhausted(&mut self, effects: &mut Vec<Effect>) -> Next {
        self.phase = Phase::Finished;
        if !self.attempted && self.skipped.iter().any(Reason::is_policy) {
            record(
                effects,
                Draft::new(
                    EventKind::EventSuppressed,
                    None,
                    Channel::Unspecified,
                    MessageStatus::Suppressed,
                )
                .reason(Reason::EveryStepSkipped(std::mem::take(&mut self.skipped))),
            );
        } else {
            record(
                effects,
                Draft::new(
                    EventKind::EventFailed,
                    None,
                    Channel::Unspecified,
                    MessageStatus::Failed,
                )
                .reason(Reason::WaterfallExhausted),
            );
        }
        effects.push(Effect::Flush { terminal: true });
        Next::Done
    }
}
