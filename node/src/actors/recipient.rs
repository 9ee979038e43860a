//! # RecipientActor: one per active recipient
//!
//! Serialises everything that touches one person: the policy checks and the waterfall of each
//! of their messages run here, one message at a time, so no distributed lock is ever needed.
//! State lives in the store (the message's event log); the actor keeps none of it between
//! messages, so it can be passivated or moved at any time.
//!
//! Every step first records its intent (`attempted`) durably, then calls the provider with the
//! attempt id as idempotency key, then records the outcome. A write rejected by fencing means
//! the partition moved: the actor stops working on the message at once; the new owner resumes
//! it from the log. Must never call a provider for a step whose intent is not durable.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use herald_proto::v1::{
    Channel, ConsentState, EngagementKind, Event, EventKind, MessageClass, MessageStatus,
    Recipient, ReportStatus, StoredMessage, SuccessCondition, SuppressedContact, WaterfallStep,
};
use herald_proto::{MessageId, TenantId};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::warn;

use super::directory::Activity;
use super::waterfall::{Progress, Waiting};
use crate::auth::Tenant;
use crate::channels::StepCall;
use crate::context::{NodeContext, now_unix_ms};
use crate::timers::TimerEntry;
use herald_providers::Outcome;
use herald_store::{self as store, Fence, FencedOp, WriteOp, WriteOutcome};

/// Store errors are retried this many times (with backoff) before the message is dead-lettered.
const STORE_RETRIES_MAX: u32 = 8;

pub struct RecipientActor;

pub struct RecipientArgs {
    pub context: Weak<NodeContext>,
    pub tenant: TenantId,
    pub recipient_id: String,
    pub activity: Arc<Activity>,
}

pub struct RecipientState {
    args: RecipientArgs,
    /// Messages this activation already ran (hashes of their ids). A second job for one of
    /// them (a resume racing the original dispatch) must re-read the log instead of trusting
    /// the history it carries. Most actors run one message: the first few ids live inline,
    /// without an allocation; a hash collision only costs a re-read.
    seen_inline: [u64; SEEN_INLINE],
    seen_count: usize,
    seen_more: HashSet<u64>,
}

const SEEN_INLINE: usize = 4;

impl RecipientState {
    /// Records `message_id`; false when it was already recorded.
    fn first_time(&mut self, message_id: &str) -> bool {
        let hash = herald_proto::partition::key_hash("", message_id);
        let inline = self.seen_count.min(SEEN_INLINE);
        if self.seen_inline[..inline].contains(&hash) || self.seen_more.contains(&hash) {
            return false;
        }
        if self.seen_count < SEEN_INLINE {
            self.seen_inline[self.seen_count] = hash;
        } else {
            if self.seen_more.len() >= SEEN_MAX {
                self.seen_more.clear();
            }
            self.seen_more.insert(hash);
        }
        self.seen_count += 1;
        true
    }
}

/// Bound on `seen`; an actor that ran this many messages forgets them (jobs then re-read).
const SEEN_MAX: usize = 4096;

pub enum RecipientMsg {
    /// Run (or resume) a message's life from its event log.
    Run(Box<Job>),
    /// Change the recipient's consent ledger (an SMS keyword).
    Consent(Box<ConsentJob>),
}

/// A consent change for the recipient, with the one reply to send when it changed anything.
pub struct ConsentJob {
    pub tenant: Arc<Tenant>,
    pub recipient_id: String,
    pub fence: Fence,
    pub change: herald_proto::v1::ChannelConsent,
    /// `(provider account, text)`: sent once, only when the ledger changed.
    pub confirm: Option<(String, String)>,
    pub reply: Option<tokio::sync::oneshot::Sender<ReportStatus>>,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

pub struct Job {
    pub tenant: Arc<Tenant>,
    pub message: Arc<StoredMessage>,
    pub fence: Fence,
    /// The message's event log so far: `Some([accepted])` for a new message; `None` when the
    /// actor must read it from the store (resumed messages: the log may have grown since the
    /// job was queued, e.g. by a run of the same message queued before it).
    pub history: Option<Vec<Event>>,
    /// The recipient as read when the message was accepted; `None` = read it from the store.
    pub recipient: Option<Recipient>,
    /// Admission permit, released when the job is done.
    pub permit: tokio::sync::OwnedSemaphorePermit,
    /// A receipt or engagement report to apply instead of running the waterfall.
    pub signal: Option<Signal>,
    /// The message's acceptance, not written yet: the actor writes it with the message's first
    /// write (one store round trip instead of two) and answers the router, which acks the
    /// client only then. `None` = already accepted.
    pub accept: Option<PendingAccept>,
}

/// A new message's acceptance, carried to its actor (see [`Job::accept`]).
pub struct PendingAccept {
    /// The `AcceptMessage` op (its `guards` are set when it is written).
    pub op: FencedOp,
    /// Copies of the `accepted` event for watchers (usually none).
    pub watched: Vec<Event>,
    /// The accept's outcome, or why it was not written.
    pub reply: tokio::sync::oneshot::Sender<Result<WriteOutcome, String>>,
}

impl PendingAccept {
    fn answer(self, outcome: Result<WriteOutcome, String>) {
        // The router may have given up (its caller went away): nothing to do then.
        let _ = self.reply.send(outcome);
    }
}

/// A receipt or engagement report for one of the recipient's messages.
pub struct Signal {
    /// The attempt's step; `None` = the message's latest attempt.
    pub step: Option<u32>,
    pub kind: EngagementKind,
    pub detail: String,
    pub reply_text: String,
    /// `api` or the provider account it came from.
    pub source: String,
    /// Where the verdict goes (the router waits for it).
    pub reply: Option<tokio::sync::oneshot::Sender<ReportStatus>>,
}

impl Actor for RecipientActor {
    type Msg = RecipientMsg;
    type State = RecipientState;
    type Arguments = RecipientArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RecipientArgs,
    ) -> Result<RecipientState, ActorProcessingErr> {
        Ok(RecipientState {
            args,
            seen_inline: [0; SEEN_INLINE],
            seen_count: 0,
            seen_more: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut RecipientState,
    ) -> Result<(), ActorProcessingErr> {
        let mut job = match message {
            RecipientMsg::Run(job) => job,
            RecipientMsg::Consent(mut job) => {
                if let Some(context) = state.args.context.upgrade() {
                    let verdict = match apply_consent(&context, &job).await {
                        Ok(verdict) => verdict,
                        Err(error) => {
                            warn!(%error, "consent change failed");
                            ReportStatus::Unspecified
                        }
                    };
                    if let Some(reply) = job.reply.take() {
                        let _ = reply.send(verdict);
                    }
                }
                state.args.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
                return Ok(());
            }
        };
        if let Some(context) = state.args.context.upgrade() {
            if !state.first_time(&job.message.message_id) {
                job.history = None;
                job.recipient = None;
            }
            // Boxed: the waterfall's future is several KiB; inline, every idle actor's task
            // would keep that much memory for as long as the actor lives.
            let history = job.history.take();
            match job.signal.take() {
                Some(signal) => Box::pin(apply_signal(&context, &job, signal)).await,
                None => {
                    let recipient = job.recipient.take();
                    let accept = job.accept.take();
                    Box::pin(run_with_retries(&context, &job, history, recipient, accept)).await
                }
            }
            state
                .args
                .activity
                .last_active_ms
                .store(context.directory.elapsed_ms(), Ordering::Relaxed);
        }
        state.args.activity.in_flight.fetch_sub(1, Ordering::AcqRel);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
enum RunError {
    #[error("fenced: partition moved")]
    Fenced,
    /// The message was not new (a duplicate or an idempotency conflict): nothing to run.
    #[error("not accepted: the idempotency key belongs to an earlier message")]
    NotAccepted,
    #[error("store: {0}")]
    Store(#[from] store::Error),
    /// The log moved on since this run read it (see `WriteOp::AppendEvents`).
    #[error("stale log: the stored log ends at seq {last_seq}")]
    Stale { last_seq: u32 },
}

/// Runs `job` from `history` (the log as the job carried it; `None` = read it from the store).
/// `recipient`: as read at acceptance, and `accept`: the acceptance still to write, both for
/// the first run only (a retry re-reads the recipient and finds the message in the log, or
/// not at all).
async fn run_with_retries(
    context: &NodeContext,
    job: &Job,
    history: Option<Vec<Event>>,
    mut recipient: Option<Recipient>,
    mut accept: Option<PendingAccept>,
) {
    let mut history = match history {
        Some(history) => history,
        None => match load_history(context, job).await {
            Some(history) => history,
            None => return,
        },
    };
    for attempt in 0..=STORE_RETRIES_MAX {
        match run(context, job, &history, recipient.take(), accept.take()).await {
            Ok(()) | Err(RunError::Fenced) | Err(RunError::NotAccepted) => return,
            Err(error) => {
                warn!(message_id = %job.message.message_id, attempt, %error, "message run failed; retrying from the log");
                tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(6))).await;
                // Rebuild from the log: the failed write may or may not have been applied. No
                // log: the message was never accepted (its acceptance failed with this run), or
                // the store stays unreachable; it is left to the next owner's resume.
                match load_history(context, job).await {
                    Some(reloaded) => history = reloaded,
                    None => return,
                }
            }
        }
    }
    // Dead letter: the message ends, with the error, instead of looping forever.
    let mut log = EventLog::new(context, job, &history);
    log.push(
        EventKind::EventFailed,
        None,
        Channel::Unspecified,
        "",
        "dead_letter: store kept failing",
        MessageStatus::Failed,
    );
    if let Err(error) = log.flush(true, Vec::new()).await {
        warn!(message_id = %job.message.message_id, %error, "dead-letter record failed; the message stays active for the next owner");
    }
}

/// The message's log as stored now; `None` when the message is gone.
async fn load_history(context: &NodeContext, job: &Job) -> Option<Vec<Event>> {
    let id = MessageId(job.message.message_id.clone());
    for attempt in 0..=STORE_RETRIES_MAX {
        match context.store.get_message(&job.tenant.id, &id).await {
            Ok(Some(record)) => return Some(record.events),
            Ok(None) => return None,
            Err(error) => {
                warn!(message_id = %id, attempt, %error, "reading message log failed");
                tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(6))).await;
            }
        }
    }
    None
}

/// Buffers a message's new events and writes them fenced, in order. A pending acceptance
/// goes out with the first write, guarding it.
struct EventLog<'a> {
    context: &'a NodeContext,
    job: &'a Job,
    seq: u32,
    pending: Vec<Event>,
    accept: Option<PendingAccept>,
}

impl Drop for EventLog<'_> {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.answer(Err("the message's first write did not happen".to_owned()));
        }
    }
}

impl<'a> EventLog<'a> {
    fn new(context: &'a NodeContext, job: &'a Job, history: &[Event]) -> Self {
        Self {
            context,
            job,
            seq: Progress::from_events(history).seq,
            pending: Vec::with_capacity(4),
            accept: None,
        }
    }

    /// Writes the pending acceptance now, alone: before anything that may wait long (a rate
    /// limit's slot, a remote admission), so the client's ack never waits for it.
    async fn settle_accept(&mut self) -> Result<(), RunError> {
        if self.accept.is_none() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.pending);
        let result = self.write(Vec::new(), false, Vec::new()).await;
        self.pending = events;
        result.map(|_| ())
    }

    fn push(
        &mut self,
        kind: EventKind,
        step: Option<u32>,
        channel: Channel,
        attempt_id: &str,
        reason: &str,
        status: MessageStatus,
    ) -> &mut Event {
        self.seq += 1;
        let message = &self.job.message;
        self.pending.push(Event {
            message_id: message.message_id.clone(),
            recipient_id: message
                .request
                .as_ref()
                .map(|r| r.recipient_id.clone())
                .unwrap_or_default(),
            kind: kind as i32,
            at_unix_ms: now_unix_ms(),
            step,
            channel: channel as i32,
            attempt_id: attempt_id.to_string(),
            reason: reason.to_string(),
            node_id: self.context.node_id.0.clone(),
            epoch: self.job.fence.epoch.0,
            partition: message.partition,
            status: status as i32,
            provider: String::new(),
            seq: self.seq,
            due_unix_ms: 0,
            cost_micros: 0,
        });
        let last = self.pending.len() - 1;
        &mut self.pending[last]
    }

    async fn flush(
        &mut self,
        terminal: bool,
        extra: Vec<FencedOp>,
    ) -> Result<Vec<WriteOutcome>, RunError> {
        let events = std::mem::take(&mut self.pending);
        if events.is_empty() && !terminal && extra.is_empty() && self.accept.is_none() {
            return Ok(Vec::new());
        }
        self.write(events, terminal, extra).await
    }

    /// Writes `extra` then `events` (and the pending acceptance first, guarding both).
    /// Returns the outcomes of `extra` and of the append, in that order.
    async fn write(
        &mut self,
        events: Vec<Event>,
        terminal: bool,
        mut extra: Vec<FencedOp>,
    ) -> Result<Vec<WriteOutcome>, RunError> {
        // Copies only of what a watcher wants (usually nothing): the events themselves go to
        // the store.
        let watched = self.context.events.wanted(&events);
        let append = FencedOp {
            fence: self.job.fence,
            op: WriteOp::AppendEvents {
                tenant: self.job.tenant.id.clone(),
                message_id: MessageId(self.job.message.message_id.clone()),
                events,
                terminal,
            },
        };
        let Some(PendingAccept {
            op: mut accept_op,
            watched: accept_watched,
            reply,
        }) = self.accept.take()
        else {
            extra.push(append);
            let outcomes = self.context.store.write(extra).await?;
            check_outcomes(&outcomes)?;
            self.context.events.publish(&self.job.tenant.id, &watched);
            return Ok(outcomes);
        };
        // [accept, append, extra...]: the append right after the accept shares its RPUSH.
        if let WriteOp::AcceptMessage { guards, .. } = &mut accept_op.op {
            *guards = extra.len() + 1;
        }
        let extras = extra.len();
        let mut ops = Vec::with_capacity(extras + 2);
        ops.push(accept_op);
        ops.push(append);
        ops.extend(extra);
        let mut outcomes = match self.context.store.write(ops).await {
            Ok(outcomes) if outcomes.len() == extras + 2 => outcomes,
            Ok(outcomes) => {
                let _ = reply.send(Err(format!(
                    "store: {} outcomes for {} ops",
                    outcomes.len(),
                    extras + 2
                )));
                return Err(RunError::Store(store::Error::Corrupt {
                    key: "write outcomes".to_owned(),
                    reason: "wrong count".to_owned(),
                }));
            }
            Err(error) => {
                let _ = reply.send(Err(format!("store: {error}")));
                return Err(error.into());
            }
        };
        let accepted = outcomes.remove(0);
        let new = matches!(
            accepted,
            WriteOutcome::Accepted {
                duplicate: false,
                ..
            }
        );
        let fenced = matches!(accepted, WriteOutcome::Fenced { .. });
        let _ = reply.send(Ok(accepted));
        if fenced {
            return Err(RunError::Fenced);
        }
        if !new {
            return Err(RunError::NotAccepted);
        }
        check_outcomes(&outcomes)?;
        self.context
            .events
            .publish(&self.job.tenant.id, &accept_watched);
        self.context.events.publish(&self.job.tenant.id, &watched);
        // The old order: extra first, then the append.
        outcomes.rotate_left(1);
        Ok(outcomes)
    }
}

/// A fenced op means the partition moved; a refused append means the log is not what this
/// run read (an earlier write of it landed late): both stop the run before anything else.
fn check_outcomes(outcomes: &[WriteOutcome]) -> Result<(), RunError> {
    for outcome in outcomes {
        match outcome {
            WriteOutcome::Fenced { .. } => return Err(RunError::Fenced),
            WriteOutcome::SeqConflict { last_seq } => {
                return Err(RunError::Stale {
                    last_seq: *last_seq,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn channel_name(channel: Channel) -> String {
    channel.as_str_name().to_ascii_lowercase()
}

/// Why a step cannot run for this recipient, if it cannot.
fn skip_reason(
    recipient: &Recipient,
    channel: Channel,
    class: MessageClass,
    topic: &str,
) -> Option<String> {
    let has_contact = match channel {
        Channel::Push => !recipient.push_tokens.is_empty(),
        Channel::Email => !recipient.email.is_empty(),
        Channel::Sms => !recipient.phone.is_empty(),
        Channel::Unspecified => false,
    };
    // Lowercase channel name for reasons; built only when there is a reason to give.
    let name = || channel_name(channel);
    if !has_contact {
        return Some(format!("no_contact_point{{channel={}}}", name()));
    }
    if crate::channels::contact_point(recipient, channel, None).is_none() {
        let why = recipient
            .suppressed
            .iter()
            .find(|s| s.channel == channel as i32)
            .map(|s| s.reason.as_str())
            .unwrap_or("unknown");
        return Some(format!("suppressed{{channel={}, reason={why}}}", name()));
    }
    crate::policy::consent::verdict(recipient, channel as i32, &name(), class, topic)
}

/// Re-runs the message at `due_unix_ms` (the durable part is the `waiting` event).
fn schedule(context: &NodeContext, job: &Job, due_unix_ms: i64) {
    context.timers.schedule(TimerEntry {
        due_unix_ms,
        tenant: job.tenant.clone(),
        message: job.message.clone(),
        fence: job.fence,
    });
}

/// When a marketing message must wait for the recipient's local window: `(wake time on the
/// real clock, the reason with the zones and times used)`. Zones: the recipient's own > those
/// of the phone prefix (the window common to all) > the tenant's default.
fn quiet_hours_deferral(
    context: &NodeContext,
    job: &Job,
    recipient: &Recipient,
) -> Option<(i64, String)> {
    use crate::policy::quiet_hours::{Verdict, evaluate, spread};
    use crate::policy::timezones::{ZoneSource, resolve};
    let offset = context.config.policy_clock_offset_ms;
    let now = chrono::DateTime::from_timestamp_millis(now_unix_ms().saturating_add(offset))?;
    let tenant = &job.tenant;
    // The message's (campaign's) own window, else the tenant's.
    let own = job
        .message
        .request
        .as_ref()
        .and_then(|r| r.quiet_hours.as_ref());
    let own_window = match own {
        Some(o) if o.disabled => return None,
        Some(o) => {
            crate::policy::quiet_hours::Window::from_parts(&o.start, &o.end, o.no_weekend).ok()
        }
        None => None,
    };
    let window = match &own_window {
        Some(window) => window,
        None => tenant.quiet_hours.as_ref()?,
    };
    let (zones, source) = resolve(&recipient.time_zone, &recipient.phone, tenant.time_zone);
    let mut source = match source {
        ZoneSource::Explicit => "recipient".to_owned(),
        ZoneSource::PhonePrefix { prefix } => format!("phone_prefix:+{prefix}"),
        ZoneSource::TenantDefault => "tenant_default".to_owned(),
    };
    let mut verdict = evaluate(window, &zones, now);
    if matches!(verdict, Verdict::NoCommonWindow { .. }) {
        verdict = evaluate(window, &[tenant.time_zone], now);
        source = "tenant_default(no common window in the phone's zones)".to_owned();
    }
    let Verdict::Closed {
        opens_at, reason, ..
    } = verdict
    else {
        return None;
    };
    let wake = spread(
        opens_at,
        chrono::TimeDelta::milliseconds(tenant.quiet_hours_spread_ms),
        &job.message.message_id,
    );
    let due = wake.timestamp_millis().saturating_sub(offset);
    Some((
        due,
        format!(
            "quiet_hours{{{reason}, zones_from={source}, wake_at={}}}",
            wake.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        ),
    ))
}

/// Why `account`'s messenger-style rules keep this message from it, if they do: outside the
/// session window without a tag, or over the account's unique-recipients tier.
async fn channel_rule_block(
    context: &NodeContext,
    job: &Job,
    recipient: &Recipient,
    tag: &str,
    account: &str,
) -> Option<String> {
    let rules = context.config.channel_rules.get(account);
    if let Some(rules) = rules
        && rules.session_window_h > 0
        && tag.is_empty()
    {
        let last = context
            .store
            .get_value(&herald_store::keys::value::last_inbound(
                &job.tenant.id,
                &recipient.id,
            ))
            .await
            .ok()
            .flatten()
            .and_then(|v| String::from_utf8_lossy(&v).parse::<i64>().ok());
        let window_ms = i64::from(rules.session_window_h) * 3_600_000;
        let open = last.is_some_and(|at| now_unix_ms() - at < window_ms);
        if !open {
            return Some(format!(
                "session_window{{account={account}, hours={}, last_inbound_unix_ms={}, tag=none}}",
                rules.session_window_h,
                last.map(|t| t.to_string())
                    .unwrap_or_else(|| "never".into())
            ));
        }
    }
    if context.channels.has_warmup(account) {
        match context.channels.admit_warmup(account).await {
            Ok(admission) if admission.refused => {
                return Some(format!(
                    "warmup_quota{{account={account}, quota_today={}, sent_today={}}}",
                    admission.limit, admission.count
                ));
            }
            Ok(_) => {}
            Err(error) => {
                return Some(format!(
                    "warmup_quota{{account={account}, unknown: {error}}}"
                ));
            }
        }
    }
    if context.channels.has_tier(account) {
        match context
            .channels
            .admit_tier(account, &job.tenant.id.0, &recipient.id)
            .await
        {
            Ok(admission) if admission.refused => {
                return Some(format!(
                    "tier_limit{{account={account}, unique_recipients_24h={}, tier={}}}",
                    admission.count, admission.limit
                ));
            }
            Ok(_) => {}
            Err(error) => {
                return Some(format!("tier_limit{{account={account}, unknown: {error}}}"));
            }
        }
    }
    None
}

/// Records that `step` was skipped, and why (the reason also decides, when no step is left,
/// whether the message ends suppressed or failed).
fn record_skip(
    log: &mut EventLog<'_>,
    skipped: &mut Vec<String>,
    step: u32,
    channel: Channel,
    reason: String,
) {
    log.push(
        EventKind::EventSkipped,
        Some(step),
        channel,
        "",
        &reason,
        MessageStatus::Pending,
    );
    skipped.push(reason);
}

/// How often a message held by a paused breaker looks again.
const BREAKER_RECHECK_MS: i64 = 2_000;

fn campaign_breaker_key(job: &Job) -> Option<String> {
    let campaign = job.message.request.as_ref()?.campaign_id.as_str();
    (!campaign.is_empty()).then(|| crate::channels::campaign_key(&job.tenant.id.0, campaign))
}

/// The paused breaker (the message's campaign, or `account`) that holds this send, if any.
fn paused_breaker(
    context: &NodeContext,
    job: &Job,
    account: &str,
) -> Option<herald_proto::v1::BreakerStatus> {
    if !context.channels.any_paused() {
        return None;
    }
    campaign_breaker_key(job)
        .and_then(|key| context.channels.paused(&key))
        .or_else(|| {
            context
                .channels
                .paused(&crate::channels::sender_key(account))
        })
}

/// Counts a signal for the message's campaign and for `account`.
fn observe_breakers(
    context: &NodeContext,
    job: &Job,
    account: &str,
    channel: Channel,
    signal: crate::policy::block_rate::Signal,
) {
    if let Some(key) = campaign_breaker_key(job) {
        context.channels.observe(&key, channel, signal);
    }
    if let Some(key) = context.channels.account(account).map(|a| &a.breaker_key) {
        context.channels.observe(key, channel, signal);
    } else if !account.is_empty() {
        context
            .channels
            .observe(&crate::channels::sender_key(account), channel, signal);
    }
}

/// The recipient with `address` suppressed on `channel`, and the fenced write that stores it.
fn suppress(
    job: &Job,
    recipient: &Recipient,
    channel: Channel,
    address: &str,
    reason: &str,
) -> (Recipient, FencedOp) {
    let mut updated = recipient.clone();
    if !updated
        .suppressed
        .iter()
        .any(|s| s.channel == channel as i32 && s.address == address)
    {
        updated.suppressed.push(SuppressedContact {
            channel: channel as i32,
            address: address.to_owned(),
            reason: reason.to_owned(),
            at_unix_ms: now_unix_ms(),
        });
    }
    let op = FencedOp {
        fence: job.fence,
        op: WriteOp::PutRecipient {
            tenant: job.tenant.id.clone(),
            recipient: updated.clone(),
        },
    };
    (updated, op)
}

fn step_timeout_ms(context: &NodeContext, spec: &WaterfallStep) -> i64 {
    let ms = if spec.timeout_ms > 0 {
        u64::from(spec.timeout_ms)
    } else {
        context.config.default_step_timeout_ms
    };
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Records that the wait of `waiting` ran out (and the fallback, when there is a next step).
fn time_out(log: &mut EventLog<'_>, steps: &[WaterfallStep], waiting: &Waiting, now: i64) {
    let spec = steps.get(waiting.step as usize);
    let channel = spec.map(|s| s.channel()).unwrap_or_default();
    let condition = spec
        .map(|s| s.success().as_str_name().to_ascii_lowercase())
        .unwrap_or_default();
    log.context
        .timers
        .stats
        .timeouts
        .fetch_add(1, Ordering::Relaxed);
    let reason = format!(
        "timeout{{condition={condition}, waited_ms={}, due_unix_ms={}}}",
        now.saturating_sub(waiting.since_unix_ms),
        waiting.due_unix_ms
    );
    log.push(
        EventKind::EventFailed,
        Some(waiting.step),
        channel,
        &waiting.attempt_id,
        &reason,
        MessageStatus::Pending,
    );
    if (waiting.step as usize) + 1 < steps.len() {
        log.push(
            EventKind::EventFellBack,
            Some(waiting.step),
            channel,
            &waiting.attempt_id,
            &format!("{} step timed out", channel_name(channel)),
            MessageStatus::Pending,
        );
    }
}

async fn run(
    context: &NodeContext,
    job: &Job,
    history: &[Event],
    recipient: Option<Recipient>,
    accept: Option<PendingAccept>,
) -> Result<(), RunError> {
    let progress = Progress::from_events(history);
    let mut log = EventLog::new(context, job, history);
    log.accept = accept;
    if progress.terminal {
        // Already done; make sure it left the active set.
        log.flush(true, Vec::new()).await?;
        return Ok(());
    }
    let Some(request) = job.message.request.as_ref() else {
        log.push(
            EventKind::EventFailed,
            None,
            Channel::Unspecified,
            "",
            "corrupt_message: no request",
            MessageStatus::Failed,
        );
        log.flush(true, Vec::new()).await?;
        return Ok(());
    };
    // A wait or a deferral that has not run out: only the timer is rebuilt (after a takeover
    // or a stale timer), nothing is written.
    let sleeping_until = progress
        .waiting
        .as_ref()
        .map(|w| w.due_unix_ms)
        .or(progress.deferred_until);
    if let Some(due) = sleeping_until
        && now_unix_ms() < due
    {
        schedule(context, job, due);
        return Ok(());
    }
    let class = request.class();
    let recipient = match recipient {
        Some(recipient) => Some(recipient),
        None => {
            context
                .store
                .get_recipient(&job.tenant.id, &request.recipient_id)
                .await?
        }
    };
    let Some(recipient) = recipient else {
        log.push(
            EventKind::EventFailed,
            None,
            Channel::Unspecified,
            "",
            "recipient_erased",
            MessageStatus::Failed,
        );
        log.flush(true, Vec::new()).await?;
        return Ok(());
    };

    let mut extra_first_write = Vec::new();
    if !progress.started {
        let counter = FencedOp {
            fence: job.fence,
            op: WriteOp::IncrCounter {
                key: herald_store::keys::value::daily_messages(
                    &job.tenant.id,
                    &recipient.id,
                    now_unix_ms() / 86_400_000,
                ),
                delta: 1,
                ttl: Duration::from_secs(2 * 86_400),
            },
        };
        extra_first_write.push(counter);
    }

    // Preferences and frequency caps (marketing only; re-checked at every wake until the first
    // attempt): a muted topic or a reached cap suppresses the message, with the values used.
    let mut sends = None;
    if class == MessageClass::Marketing
        && progress.attempts.is_empty()
        && progress.ambiguous.is_none()
    {
        let history = load_sends(context, job, &recipient.id).await?;
        if let Some(reason) = marketing_block(job, &recipient, &request.topic, &history) {
            log.push(
                EventKind::EventSuppressed,
                None,
                Channel::Unspecified,
                "",
                &reason,
                MessageStatus::Suppressed,
            );
            log.flush(true, extra_first_write).await?;
            return Ok(());
        }
        sends = Some(history);
    }

    // Quiet hours: marketing waits for the recipient's local window (re-checked at every wake
    // until the first attempt).
    if class == MessageClass::Marketing
        && progress.attempts.is_empty()
        && progress.ambiguous.is_none()
        && let Some((due, reason)) = quiet_hours_deferral(context, job, &recipient)
    {
        log.push(
            EventKind::EventDeferred,
            None,
            Channel::Unspecified,
            "",
            &reason,
            MessageStatus::Deferred,
        )
        .due_unix_ms = due;
        log.flush(false, extra_first_write).await?;
        schedule(context, job, due);
        return Ok(());
    }

    let steps = &request.waterfall;
    let mut step = progress.next_step;
    let mut resend: Option<String> = None;
    if let Some(waiting) = &progress.waiting {
        time_out(&mut log, steps, waiting, now_unix_ms());
        step = waiting.step + 1;
    } else if let Some((ambiguous_step, attempt_id)) = progress.ambiguous {
        log.push(
            EventKind::EventAmbiguous,
            Some(ambiguous_step),
            steps
                .get(ambiguous_step as usize)
                .map(|s| s.channel())
                .unwrap_or_default(),
            &attempt_id,
            "outcome_unknown: owner changed between intent and outcome; one re-send with the same attempt id",
            MessageStatus::Pending,
        );
        step = ambiguous_step;
        resend = Some(attempt_id);
    }
    let attempted_before = !progress.attempts.is_empty();
    // Boxed: inline, the walk's ~3 KB state would be copied into each caller's future and
    // again on every move of it (perf: memmove was 12% of the process).
    Box::pin(walk(
        context,
        job,
        &mut log,
        recipient,
        step,
        resend,
        extra_first_write,
        attempted_before,
        sends,
    ))
    .await
}

/// Marketing sends to a recipient over the last week (for sliding-window caps).
const SENDS_KEEP: Duration = Duration::from_secs(8 * 86_400);

/// The recipient's recent marketing sends: `at_ms:channel` entries separated by `;`.
async fn load_sends(
    context: &NodeContext,
    job: &Job,
    recipient_id: &str,
) -> Result<Vec<crate::policy::caps::SentRecord>, RunError> {
    let bytes = context
        .store
        .get_value(&herald_store::keys::value::marketing_sends(
            &job.tenant.id,
            recipient_id,
        ))
        .await?
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes);
    let horizon = now_unix_ms() - SENDS_KEEP.as_millis() as i64;
    Ok(text
        .split(';')
        .filter_map(|entry| {
            let (at, channel) = entry.split_once(':')?;
            Some(crate::policy::caps::SentRecord {
                at_ms: at.parse().ok()?,
                channel: Channel::try_from(channel.parse::<i32>().ok()?).ok()?,
                marketing: true,
            })
        })
        .filter(|s| s.at_ms > horizon)
        .collect())
}

/// The write that records one more marketing send on `channel`.
fn record_send(
    job: &Job,
    recipient_id: &str,
    history: &[crate::policy::caps::SentRecord],
    channel: Channel,
) -> FencedOp {
    let mut text: String = history
        .iter()
        .map(|s| format!("{}:{};", s.at_ms, s.channel as i32))
        .collect();
    text.push_str(&format!("{}:{}", now_unix_ms(), channel as i32));
    FencedOp {
        fence: job.fence,
        op: WriteOp::PutValue {
            key: herald_store::keys::value::marketing_sends(&job.tenant.id, recipient_id),
            value: text.into_bytes(),
            ttl: SENDS_KEEP,
        },
    }
}

/// Why a marketing message may not go at all: a topic the person muted, or the tenant's caps.
fn marketing_block(
    job: &Job,
    recipient: &Recipient,
    topic: &str,
    history: &[crate::policy::caps::SentRecord],
) -> Option<String> {
    if !topic.is_empty()
        && let Some(preferences) = &recipient.preferences
        && preferences.muted_topics.iter().any(|t| t == topic)
    {
        return Some(format!("preference{{muted_topic={topic}}}"));
    }
    let exceeded =
        crate::policy::caps::check_scoped(history, &job.tenant.marketing_caps, now_unix_ms())
            .err()?;
    Some(format!(
        "frequency_cap{{count={}, max={}, window_s={}, retry_at_unix_ms={}}}",
        exceeded.count,
        exceeded.rule.max,
        exceeded.rule.window.as_secs(),
        exceeded
            .retry_at_ms
            .map(|t| t.to_string())
            .unwrap_or_else(|| "never".into())
    ))
}

/// The person's own limit on `channel` for marketing, if reached: the step is skipped.
fn channel_limit(
    recipient: &Recipient,
    channel: Channel,
    history: &[crate::policy::caps::SentRecord],
) -> Option<String> {
    use crate::policy::caps::{CapRule, CapScope, DAY, WEEK};
    let preferences = recipient.preferences.as_ref()?;
    let limits = match channel {
        Channel::Push => preferences.push.as_ref(),
        Channel::Email => preferences.email.as_ref(),
        Channel::Sms => preferences.sms.as_ref(),
        Channel::Unspecified => None,
    }?;
    let rules: Vec<CapRule> = [(limits.max_per_day, DAY), (limits.max_per_week, WEEK)]
        .into_iter()
        .filter_map(|(max, window)| {
            max.map(|max| CapRule {
                max,
                window,
                scope: CapScope::Channel(channel),
            })
        })
        .collect();
    let exceeded = crate::policy::caps::check_scoped(history, &rules, now_unix_ms()).err()?;
    Some(format!(
        "preference_limit{{channel={}, count={}, max={}, window_s={}}}",
        channel_name(channel),
        exceeded.count,
        exceeded.rule.max,
        exceeded.rule.window.as_secs()
    ))
}

/// Runs the waterfall from `step` until a step succeeds, a step waits for its receipt, or no
/// step is left. `extra` is written with the first flush. `attempted_before`: an earlier run
/// already made an attempt (so running out of steps is a failure, not a suppression).
#[allow(clippy::too_many_arguments)]
async fn walk(
    context: &NodeContext,
    job: &Job,
    log: &mut EventLog<'_>,
    mut recipient: Recipient,
    mut step: u32,
    mut resend: Option<String>,
    mut extra: Vec<FencedOp>,
    attempted_before: bool,
    sends: Option<Vec<crate::policy::caps::SentRecord>>,
) -> Result<(), RunError> {
    let mut attempted = attempted_before;
    let mut skipped: Vec<String> = Vec::new();
    let Some(request) = job.message.request.as_ref() else {
        return Ok(());
    };
    let class = request.class();
    let no_content = herald_proto::v1::Content::default();
    let content = request.content.as_ref().unwrap_or(&no_content);
    // Templates were checked at submit; the recipient's attributes may have changed since.
    let content = if crate::content::template::has_templates(content) {
        let vars = crate::content::template::merge_vars(&recipient.attributes, &request.variables);
        match crate::content::template::render(content, &vars) {
            Ok(rendered) => rendered,
            Err(error) => {
                log.push(
                    EventKind::EventFailed,
                    None,
                    Channel::Unspecified,
                    "",
                    &format!("template{{field={}, error={}}}", error.field(), error),
                    MessageStatus::Failed,
                );
                log.flush(true, extra).await?;
                return Ok(());
            }
        }
    } else {
        std::borrow::Cow::Borrowed(content)
    };
    let content = content.as_ref();
    let list_unsubscribe =
        crate::links::unsubscribe(&context.config, &job.tenant.id.0, &job.message.message_id);
    let steps = &request.waterfall;
    while (step as usize) < steps.len() {
        let spec = &steps[step as usize];
        let channel = spec.channel();
        if resend.is_none()
            && let Some(reason) =
                skip_reason(&recipient, channel, class, &request.topic).or_else(|| {
                    sends
                        .as_deref()
                        .and_then(|history| channel_limit(&recipient, channel, history))
                })
        {
            record_skip(log, &mut skipped, step, channel, reason);
            step += 1;
            continue;
        }
        let mut chain = context.channels.chain(channel, &spec.provider_account);
        // A sender the person stopped (an SMS STOP to that number) is never used for them.
        let before = chain.len();
        chain.retain(|account| {
            !crate::policy::consent::sender_opted_out(
                &recipient,
                channel as i32,
                account.provider.name(),
            )
        });
        // The client's ack must not wait for a slot or an owner's answer: a message not yet
        // accepted is accepted first, on its own, when any of this may wait.
        if log.accept.is_some()
            && chain.iter().any(|account| {
                let name = account.provider.name();
                context.config.channel_rules.contains_key(name)
                    || context.channels.may_wait(name, &job.tenant.id.0)
            })
        {
            log.settle_accept().await?;
        }
        // Messenger-style rules of the accounts: the session window and the tier.
        let mut rule_reasons = Vec::new();
        if resend.is_none()
            && chain.iter().any(|account| {
                let name = account.provider.name();
                context.config.channel_rules.contains_key(name)
                    || context.channels.has_warmup(name)
                    || context.channels.has_tier(name)
            })
        {
            let mut kept = Vec::with_capacity(chain.len());
            for account in chain {
                match channel_rule_block(
                    context,
                    job,
                    &recipient,
                    &request.tag,
                    account.provider.name(),
                )
                .await
                {
                    Some(reason) => rule_reasons.push(reason),
                    None => kept.push(account),
                }
            }
            chain = kept;
        }
        if chain.is_empty() && !rule_reasons.is_empty() {
            let reason = rule_reasons.join("; ");
            record_skip(log, &mut skipped, step, channel, reason);
            step += 1;
            continue;
        }
        if before > 0 && chain.is_empty() && resend.is_none() {
            let reason = format!(
                "opted_out{{channel={}, scope=every_sender_of_the_channel}}",
                channel_name(channel)
            );
            record_skip(log, &mut skipped, step, channel, reason);
            step += 1;
            continue;
        }
        let Some(first) = chain.first() else {
            log.push(
                EventKind::EventSkipped,
                Some(step),
                channel,
                "",
                &format!("no_provider_account{{channel={}}}", channel_name(channel)),
                MessageStatus::Pending,
            );
            step += 1;
            continue;
        };
        // The send slot first (it may be a while at a low rate), then the breakers, so a pause
        // stops messages that were waiting for their slot too.
        let first_slot_taken = context
            .channels
            .acquire_for(first.provider.name(), &job.tenant.id.0)
            .await
            .is_ok();
        // Block-rate breakers: a paused campaign or sender makes the message wait (or, for a
        // paused sender when the message asks, go on to the next step).
        if resend.is_none()
            && let Some(paused) = paused_breaker(context, job, first.provider.name())
        {
            if request.fall_back_when_paused && paused.key.starts_with("sender:") {
                let reason = format!(
                    "breaker_paused{{key={}, ratio={:.4}, sample={}, pause_threshold={}}}",
                    paused.key, paused.ratio, paused.sample, paused.pause_threshold
                );
                record_skip(log, &mut skipped, step, channel, reason);
                step += 1;
                continue;
            }
            context.channels.count_deferred();
            let due = now_unix_ms() + BREAKER_RECHECK_MS;
            log.push(
                EventKind::EventDeferred,
                Some(step),
                channel,
                "",
                &format!(
                    "breaker_paused{{key={}, ratio={:.4}, sample={}, pause_threshold={}}}",
                    paused.key, paused.ratio, paused.sample, paused.pause_threshold
                ),
                MessageStatus::Deferred,
            )
            .due_unix_ms = due;
            log.flush(false, std::mem::take(&mut extra)).await?;
            schedule(context, job, due);
            return Ok(());
        }
        attempted = true;
        let attempt_id = resend
            .take()
            .unwrap_or_else(|| format!("{}.{step}", job.message.message_id));
        log.push(
            EventKind::EventAttempted,
            Some(step),
            channel,
            &attempt_id,
            "",
            MessageStatus::Pending,
        )
        .provider = first.provider.name().to_owned();
        log.flush(false, std::mem::take(&mut extra)).await?;

        let delivery = context
            .channels
            .send(
                &chain,
                StepCall {
                    attempt_id: &attempt_id,
                    message_id: &job.message.message_id,
                    recipient: &recipient,
                    channel,
                    content,
                    list_unsubscribe: if channel == Channel::Email {
                        list_unsubscribe.as_ref()
                    } else {
                        None
                    },
                    first_slot_taken,
                    tenant: &job.tenant.id.0,
                },
            )
            .await;
        let trail = if delivery.trail.is_empty() {
            String::new()
        } else {
            format!(", after={{{}}}", delivery.trail)
        };
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
                let mut index = Vec::new();
                if let Some(history) = &sends {
                    index.push(record_send(job, &recipient.id, history, channel));
                }
                if let Some(account) = context.channels.account(&delivery.account)
                    && account.provider.late_receipts()
                    && !provider_message_id.is_empty()
                {
                    index.push(crate::receipts::index_op(
                        context,
                        job,
                        &delivery.account,
                        &provider_message_id,
                        step,
                    ));
                }
                observe_breakers(
                    context,
                    job,
                    &delivery.account,
                    channel,
                    crate::policy::block_rate::Signal::Delivered,
                );
                let sent = log.push(
                    EventKind::EventSent,
                    Some(step),
                    channel,
                    &attempt_id,
                    &format!("provider_message_id={provider_message_id}{trail}"),
                    MessageStatus::Pending,
                );
                sent.provider = delivery.account.clone();
                sent.cost_micros = crate::content::attempt_cost(
                    &context.config.prices,
                    channel,
                    content,
                    &recipient,
                );
                if wants_delivery && delivered {
                    log.push(
                        EventKind::EventDelivered,
                        Some(step),
                        channel,
                        &attempt_id,
                        "",
                        MessageStatus::Pending,
                    );
                    if wants_read && read {
                        log.push(
                            EventKind::EventRead,
                            Some(step),
                            channel,
                            &attempt_id,
                            "",
                            MessageStatus::Pending,
                        );
                    }
                }
                if satisfied {
                    if let Some(last) = log.pending.last_mut() {
                        last.status = MessageStatus::Delivered as i32;
                    }
                    log.flush(true, index).await?;
                    return Ok(());
                }
                let due = now_unix_ms().saturating_add(step_timeout_ms(context, spec));
                log.push(
                    EventKind::EventWaiting,
                    Some(step),
                    channel,
                    &attempt_id,
                    &format!(
                        "waiting{{condition={}}}",
                        condition.as_str_name().to_ascii_lowercase()
                    ),
                    MessageStatus::Pending,
                )
                .due_unix_ms = due;
                log.flush(false, index).await?;
                schedule(context, job, due);
                return Ok(());
            }
            Outcome::Ambiguous { reason } => {
                // Maybe accepted: never re-sent blindly. A receipt resolves it; otherwise the
                // step times out like any unanswered step.
                log.push(
                    EventKind::EventAmbiguous,
                    Some(step),
                    channel,
                    &attempt_id,
                    &format!("provider_outcome_unknown{{{reason}}}{trail}"),
                    MessageStatus::Pending,
                )
                .provider = delivery.account.clone();
                let due = now_unix_ms().saturating_add(step_timeout_ms(context, spec));
                log.push(
                    EventKind::EventWaiting,
                    Some(step),
                    channel,
                    &attempt_id,
                    "waiting{condition=receipt_after_ambiguous_outcome}",
                    MessageStatus::Pending,
                )
                .due_unix_ms = due;
                log.flush(false, Vec::new()).await?;
                schedule(context, job, due);
                return Ok(());
            }
            Outcome::Rejected {
                reason,
                contact_invalid,
            } => {
                if contact_invalid && !delivery.to.is_empty() {
                    let (updated, op) = suppress(job, &recipient, channel, &delivery.to, &reason);
                    recipient = updated;
                    extra.push(op);
                    format!("rejected{{{reason}, contact_suppressed=true}}{trail}")
                } else {
                    format!("rejected{{{reason}}}{trail}")
                }
            }
            Outcome::Unavailable { reason, .. } => format!("unavailable{{{reason}}}{trail}"),
        };
        log.push(
            EventKind::EventFailed,
            Some(step),
            channel,
            &attempt_id,
            &failure,
            MessageStatus::Pending,
        )
        .provider = delivery.account;
        if (step as usize) + 1 < steps.len() {
            log.push(
                EventKind::EventFellBack,
                Some(step),
                channel,
                &attempt_id,
                &format!("{} step failed", channel_name(channel)),
                MessageStatus::Pending,
            );
        }
        step += 1;
    }
    let by_policy = |r: &String| {
        r.starts_with("opted_out")
            || r.starts_with("no_opt_in")
            || r.starts_with("suppressed")
            || r.starts_with("preference")
            || r.starts_with("session_window")
            || r.starts_with("tier_limit")
    };
    if !attempted && skipped.iter().any(by_policy) {
        // Nothing was sent because policy forbade it: the message is suppressed, with why.
        log.push(
            EventKind::EventSuppressed,
            None,
            Channel::Unspecified,
            "",
            &format!("every_step_skipped{{{}}}", skipped.join("; ")),
            MessageStatus::Suppressed,
        );
    } else {
        log.push(
            EventKind::EventFailed,
            None,
            Channel::Unspecified,
            "",
            "waterfall_exhausted",
            MessageStatus::Failed,
        );
    }
    log.flush(true, extra).await?;
    Ok(())
}

/// Applies a consent change; sends its confirmation once when it changed the ledger.
async fn apply_consent(context: &NodeContext, job: &ConsentJob) -> Result<ReportStatus, RunError> {
    let Some(recipient) = context
        .store
        .get_recipient(&job.tenant.id, &job.recipient_id)
        .await?
    else {
        return Ok(ReportStatus::ReportUnknown);
    };
    let mut updated = recipient;
    let mut changed = crate::policy::consent::set(&mut updated, job.change.clone());
    // START after STOPALL: the keyword opt-out of every sender is lifted too.
    if job.change.state() == ConsentState::OptedIn {
        let stopall = updated
            .consent
            .iter()
            .find(|c| {
                c.channel == job.change.channel
                    && c.topic.is_empty()
                    && c.sender.is_empty()
                    && c.source == job.change.source
                    && c.state() == ConsentState::OptedOut
            })
            .cloned();
        if let Some(mut entry) = stopall {
            entry.state = ConsentState::OptedIn as i32;
            entry.at_unix_ms = job.change.at_unix_ms;
            changed |= crate::policy::consent::set(&mut updated, entry);
        }
    }
    if !changed {
        return Ok(ReportStatus::ReportDuplicate);
    }
    if job.change.state() == ConsentState::OptedOut
        && let Some((account, _)) = &job.confirm
    {
        context.channels.observe(
            &crate::channels::sender_key(account),
            Channel::try_from(job.change.channel).unwrap_or_default(),
            crate::policy::block_rate::Signal::OptOut,
        );
    }
    let outcomes = context
        .store
        .write(vec![FencedOp {
            fence: job.fence,
            op: WriteOp::PutRecipient {
                tenant: job.tenant.id.clone(),
                recipient: updated.clone(),
            },
        }])
        .await?;
    if outcomes
        .iter()
        .any(|o| matches!(o, WriteOutcome::Fenced { .. }))
    {
        return Err(RunError::Fenced);
    }
    if let Some((account, text)) = &job.confirm
        && let Some(account) = context.channels.account(account)
        && !updated.phone.is_empty()
    {
        let content = herald_proto::v1::Content {
            sms: Some(herald_proto::v1::SmsContent { text: text.clone() }),
            ..Default::default()
        };
        let attempt_id = format!("consent.{}", ulid::Ulid::new());
        let outcome = account
            .provider
            .send(herald_providers::Attempt {
                attempt_id: &attempt_id,
                message_id: "",
                recipient_key: &updated.id,
                channel: Channel::Sms,
                to: &updated.phone,
                content: &content,
                list_unsubscribe: None,
            })
            .await;
        if !matches!(outcome, Outcome::Accepted { .. }) {
            warn!(%attempt_id, ?outcome, "keyword confirmation not accepted");
        }
    }
    Ok(ReportStatus::ReportApplied)
}

/// Applies a receipt or engagement report and answers the router.
async fn apply_signal(context: &NodeContext, job: &Job, mut signal: Signal) {
    let reply = signal.reply.take();
    let mut verdict = ReportStatus::Unspecified;
    for attempt in 0..=STORE_RETRIES_MAX {
        match apply_signal_once(context, job, &signal).await {
            Ok(status) => {
                verdict = status;
                break;
            }
            Err(RunError::Fenced) => break,
            Err(error) => {
                warn!(message_id = %job.message.message_id, attempt, %error, "applying a receipt failed; retrying");
                tokio::time::sleep(Duration::from_millis(50u64 << attempt.min(6))).await;
            }
        }
    }
    context.receipts_stats.count(verdict);
    if let Some(reply) = reply {
        let _ = reply.send(verdict);
    }
}

fn is_positive(kind: EngagementKind) -> bool {
    matches!(
        kind,
        EngagementKind::EngagementDelivered
            | EngagementKind::EngagementRead
            | EngagementKind::EngagementClicked
            | EngagementKind::EngagementConverted
    )
}

fn is_failure(kind: EngagementKind) -> bool {
    matches!(
        kind,
        EngagementKind::EngagementBouncedHard
            | EngagementKind::EngagementBouncedSoft
            | EngagementKind::EngagementBlocked
            | EngagementKind::EngagementFailed
            | EngagementKind::EngagementExpired
    )
}

/// The event kind that records an informational signal.
fn signal_event_kind(kind: EngagementKind) -> EventKind {
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

fn kind_name(kind: EngagementKind) -> String {
    kind.as_str_name()
        .trim_start_matches("ENGAGEMENT_")
        .to_ascii_lowercase()
}

async fn apply_signal_once(
    context: &NodeContext,
    job: &Job,
    signal: &Signal,
) -> Result<ReportStatus, RunError> {
    let Some(history) = load_history(context, job).await else {
        return Ok(ReportStatus::ReportUnknown);
    };
    let Some(request) = job.message.request.as_ref() else {
        return Ok(ReportStatus::ReportUnknown);
    };
    let progress = Progress::from_events(&history);
    let record = match signal.step {
        Some(step) => progress.attempt(step),
        None => progress.last_attempt(),
    };
    let Some(record) = record.cloned() else {
        return Ok(ReportStatus::ReportUnknown);
    };
    let step = record.step;
    let Some(spec) = request.waterfall.get(step as usize) else {
        return Ok(ReportStatus::ReportUnknown);
    };
    let channel = spec.channel();
    let kind = signal.kind;
    let duplicate = match kind {
        EngagementKind::EngagementDelivered => record.delivered,
        EngagementKind::EngagementRead => record.read,
        _ => false,
    };
    if duplicate {
        return Ok(ReportStatus::ReportDuplicate);
    }
    let note = format!(
        "receipt{{kind={}, source={}{}{}}}",
        kind_name(kind),
        signal.source,
        if signal.detail.is_empty() { "" } else { ", " },
        signal.detail
    );
    let attempt_id = record.attempt_id.clone();
    let mut log = EventLog::new(context, job, &history);
    let waiting_here = progress.waiting.as_ref().is_some_and(|w| w.step == step);

    if waiting_here && is_positive(kind) {
        // The step reached (at least) delivery.
        let read = kind != EngagementKind::EngagementDelivered;
        if !record.delivered {
            log.push(
                EventKind::EventDelivered,
                Some(step),
                channel,
                &attempt_id,
                &note,
                MessageStatus::Pending,
            );
        }
        if read && !record.read {
            log.push(
                EventKind::EventRead,
                Some(step),
                channel,
                &attempt_id,
                &note,
                MessageStatus::Pending,
            );
        }
        if matches!(
            kind,
            EngagementKind::EngagementClicked | EngagementKind::EngagementConverted
        ) {
            log.push(
                signal_event_kind(kind),
                Some(step),
                channel,
                &attempt_id,
                &note,
                MessageStatus::Pending,
            );
        }
        let satisfied = spec.success() != SuccessCondition::Read || read;
        if satisfied && let Some(last) = log.pending.last_mut() {
            last.status = MessageStatus::Delivered as i32;
        }
        log.flush(satisfied, Vec::new()).await?;
        return Ok(ReportStatus::ReportApplied);
    }

    if waiting_here && is_failure(kind) {
        let mut extra = Vec::new();
        let mut recipient = context
            .store
            .get_recipient(&job.tenant.id, &request.recipient_id)
            .await?;
        let kills_contact = kind == EngagementKind::EngagementBouncedHard;
        if kind != EngagementKind::EngagementFailed && kind != EngagementKind::EngagementExpired {
            log.push(
                signal_event_kind(kind),
                Some(step),
                channel,
                &attempt_id,
                &note,
                MessageStatus::Pending,
            );
        }
        log.push(
            EventKind::EventFailed,
            Some(step),
            channel,
            &attempt_id,
            &note,
            MessageStatus::Pending,
        );
        if (step as usize) + 1 < request.waterfall.len() {
            log.push(
                EventKind::EventFellBack,
                Some(step),
                channel,
                &attempt_id,
                &format!("{} step failed by receipt", channel_name(channel)),
                MessageStatus::Pending,
            );
        }
        if kills_contact
            && let Some(current) = &recipient
            && let Some(address) = crate::channels::contact_point(current, channel, None)
        {
            let address = address.to_owned();
            let (updated, op) = suppress(job, current, channel, &address, &kind_name(kind));
            recipient = Some(updated);
            extra.push(op);
        }
        match recipient {
            Some(recipient) => {
                // Boxed, as in `run`.
                Box::pin(walk(
                    context,
                    job,
                    &mut log,
                    recipient,
                    step + 1,
                    None,
                    extra,
                    true,
                    None,
                ))
                .await?;
            }
            None => {
                log.push(
                    EventKind::EventFailed,
                    None,
                    Channel::Unspecified,
                    "",
                    "recipient_erased",
                    MessageStatus::Failed,
                );
                log.flush(true, extra).await?;
            }
        }
        return Ok(ReportStatus::ReportApplied);
    }

    if record.given_up && (is_positive(kind) || is_failure(kind)) {
        // The waterfall already left this step: recorded and counted, never acted on.
        log.push(
            EventKind::EventLateReceipt,
            Some(step),
            channel,
            &attempt_id,
            &note,
            progress.status,
        );
        log.flush(progress.terminal, Vec::new()).await?;
        return Ok(ReportStatus::ReportLate);
    }

    // Information about a step that succeeded (or about the person's reaction): recorded with
    // the message's status unchanged. An unsubscribe or a complaint also changes the consent
    // ledger (and a complaint suppresses the address) in the same write.
    let negative = match kind {
        EngagementKind::EngagementComplained => Some(crate::policy::block_rate::Signal::Complaint),
        EngagementKind::EngagementBlocked => Some(crate::policy::block_rate::Signal::Block),
        EngagementKind::EngagementUnsubscribed => Some(crate::policy::block_rate::Signal::OptOut),
        _ => None,
    };
    if let Some(signal) = negative {
        observe_breakers(context, job, &record.provider, channel, signal);
    }
    let mut extra = Vec::new();
    if matches!(
        kind,
        EngagementKind::EngagementUnsubscribed | EngagementKind::EngagementComplained
    ) && let Some(mut recipient) = context
        .store
        .get_recipient(&job.tenant.id, &request.recipient_id)
        .await?
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
                at_unix_ms: now_unix_ms(),
                sender: String::new(),
            },
        );
        if kind == EngagementKind::EngagementComplained
            && let Some(address) = crate::channels::contact_point(&recipient, channel, None)
        {
            let address = address.to_owned();
            let (updated, _) = suppress(job, &recipient, channel, &address, "complained");
            recipient = updated;
            changed = true;
        }
        if changed {
            extra.push(FencedOp {
                fence: job.fence,
                op: WriteOp::PutRecipient {
                    tenant: job.tenant.id.clone(),
                    recipient,
                },
            });
        }
    }
    log.push(
        signal_event_kind(kind),
        Some(step),
        channel,
        &attempt_id,
        &note,
        progress.status,
    );
    log.flush(progress.terminal, extra).await?;
    Ok(ReportStatus::ReportApplied)
}
