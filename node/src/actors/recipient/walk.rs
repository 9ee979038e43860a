//! A job's run through the waterfall machine: read what it asks for, apply its effects in
//! order, perform its long effects, and start over from the log when the log moved on.
//!
//! Before any long effect (channel rules, a slot, the provider call) whatever is pending is
//! flushed: a new message's acceptance therefore never waits for one, and a step's intent is
//! durable before its call. Failed writes are retried as the same write (see `log`); failed
//! reads restart the run from the log, which is safe because nothing was decided on them yet.

use herald_proto::MessageId;
use herald_proto::v1::{Channel, Event, ReportStatus};
use tracing::{debug, warn};

use super::log::{Log, Stop, backoff, decode_sends};
use super::{Job, RecipientEnv, SignalJob};
use crate::channels::{Delivery, StepCall, campaign_key, sender_key};
use crate::policy::caps::SentRecord;
use crate::policy::gates;
use crate::reason::{ChannelRule, Pause, Reason};
use crate::timers::TimerEntry;
use crate::waterfall::{
    AccountInfo, Accounts, Cx, Draft, Effect, Next, Progress, Run, Step, Triage, receipt, triage,
};

/// A job starts over from its log at most this many times (store errors, a log that moved).
const RESTARTS_MAX: u32 = 8;

/// The machine's view of the provider accounts for one tenant.
struct View<'a> {
    env: &'a RecipientEnv,
    tenant: &'a str,
}

impl Accounts for View<'_> {
    fn chain(&self, channel: Channel, preferred: &str) -> Vec<AccountInfo> {
        let channels = &self.env.channels;
        channels
            .chain(channel, preferred)
            .iter()
            .map(|account| {
                let name = account.name();
                AccountInfo {
                    name: name.to_owned(),
                    session_window_h: self
                        .env
                        .settings
                        .session_windows
                        .get(name)
                        .copied()
                        .unwrap_or(0),
                    warmup: channels.has_warmup(name),
                    tier: channels.has_tier(name),
                    rate_limited: channels.rate_limited(name, self.tenant),
                    late_receipts: account.provider.late_receipts(),
                }
            })
            .collect()
    }

    fn paused(&self, campaign_id: &str, account: &str) -> Option<Pause> {
        let channels = &self.env.channels;
        if !channels.any_paused() {
            return None;
        }
        (!campaign_id.is_empty())
            .then(|| campaign_key(self.tenant, campaign_id))
            .and_then(|key| channels.paused(&key))
            .or_else(|| channels.paused(&sender_key(account)))
            .map(|status| Pause {
                key: status.key,
                ratio: status.ratio,
                sample: status.sample,
                pause_threshold: status.pause_threshold,
            })
    }
}

/// Counts a signal for the message's campaign (if any) and for `account`'s sender breaker.
pub(super) fn observe(
    env: &RecipientEnv,
    tenant: &str,
    campaign_id: &str,
    account: &str,
    channel: Channel,
    signal: crate::policy::block_rate::Signal,
) {
    let channels = &env.channels;
    if !campaign_id.is_empty() {
        channels.observe(&campaign_key(tenant, campaign_id), channel, signal);
    }
    match channels.account(account) {
        Some(known) => channels.observe(&known.breaker_key, channel, signal),
        None if !account.is_empty() => channels.observe(&sender_key(account), channel, signal),
        None => {}
    }
}

/// The warm-up and tier verdicts of `account` for the recipient (asked of the account's
/// owner).
async fn check_rules(
    env: &RecipientEnv,
    tenant: &str,
    account: &AccountInfo,
    recipient_id: &str,
) -> Option<Reason> {
    let name = &account.name;
    if account.warmup {
        match env.channels.admit_warmup(name).await {
            Ok(admission) if admission.refused => {
                return Some(Reason::WarmupQuota {
                    account: name.clone(),
                    quota_today: admission.limit,
                    sent_today: admission.count,
                });
            }
            Ok(_) => {}
            Err(error) => {
                return Some(Reason::RuleUnknown {
                    rule: ChannelRule::Warmup,
                    account: name.clone(),
                    error: error.to_string(),
                });
            }
        }
    }
    if account.tier {
        match env.channels.admit_tier(name, tenant, recipient_id).await {
            Ok(admission) if admission.refused => {
                return Some(Reason::TierLimit {
                    account: name.clone(),
                    unique_recipients_24h: admission.count,
                    tier: admission.limit,
                });
            }
            Ok(_) => {}
            Err(error) => {
                return Some(Reason::RuleUnknown {
                    rule: ChannelRule::Tier,
                    account: name.clone(),
                    error: error.to_string(),
                });
            }
        }
    }
    None
}

/// A window of a message's life where a failpoint test makes this node die, as a `kill -9`
/// would (`FAILPOINTS=recipient::after_intent=return`); with the failpoint `sleep(…)`, it
/// stalls there instead. Compiled out without the `failpoints` feature.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
fn die_here(name: &'static str) {
    fail::fail_point!(name, |_| {
        tracing::error!(failpoint = name, "failpoint: the node exits here");
        std::process::exit(137)
    });
}

/// Runs `job` from its log until a durable point.
pub async fn run_job(env: &RecipientEnv, mut job: Job) {
    let mut history = job.history.take();
    let mut recipient = job.recipient.take();
    let mut accept = job.accept.take();
    for attempt in 0..=RESTARTS_MAX {
        let events = match history.take() {
            Some(events) => events,
            None => match read_log(env, &job).await {
                Some(events) => events,
                // The message was never accepted, or the store stays unreachable: left to the
                // next run (a resume, a timer).
                None => return,
            },
        };
        let progress = Progress::from_events(&events);
        let mut log = Log::new(progress.seq, accept.take()).after(&job.message, &events);
        match run_once(env, &job, &progress, &mut log, recipient.take()).await {
            Ok(()) | Err(Stop::Fenced) | Err(Stop::NotAccepted) => return,
            Err(Stop::Stale { last_seq }) => {
                debug!(message_id = %job.message.message_id, last_seq, "log moved on; reading it again");
            }
            Err(Stop::Store(error)) => {
                warn!(message_id = %job.message.message_id, attempt, %error, "message run failed; running it again from the log");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    dead_letter(env, &job).await;
}

async fn run_once(
    env: &RecipientEnv,
    job: &Job,
    progress: &Progress,
    log: &mut Log,
    recipient: Option<herald_proto::v1::Recipient>,
) -> Result<(), Stop> {
    let view = View {
        env,
        tenant: &job.tenant.id.0,
    };
    let cx = Cx {
        message: &job.message,
        tenant: &job.tenant,
        settings: &env.settings.machine,
        accounts: &view,
    };
    match triage(&job.message, progress, env.clock.now_unix_ms()) {
        Triage::Retire => log.flush(env, job, true).await,
        Triage::Corrupt(step) => drive(env, job, &cx, log, None, step).await,
        Triage::Sleep { due_unix_ms } => {
            schedule(env, job, due_unix_ms);
            Ok(())
        }
        Triage::Go { sends } => {
            let recipient = match recipient {
                Some(recipient) => Some(recipient),
                None => {
                    env.store
                        .get_recipient(&job.tenant.id, job.recipient_id())
                        .await?
                }
            };
            let sends = match sends {
                true => Some(read_sends(env, job).await?),
                false => None,
            };
            let (run, step) = Run::start(&cx, progress, recipient, sends, env.clock.now_unix_ms());
            drive(env, job, &cx, log, run, step).await
        }
    }
}

/// Applies a run's steps and performs its long effects until the run is done.
async fn drive(
    env: &RecipientEnv,
    job: &Job,
    cx: &Cx<'_>,
    log: &mut Log,
    run: Option<Run>,
    step: Step,
) -> Result<(), Stop> {
    let (mut run, mut step) = (run, step);
    loop {
        apply(env, job, log, step.effects).await?;
        let Some(current) = run.take() else {
            return Ok(());
        };
        // Before a long effect, what is pending becomes durable (a new message's acceptance
        // too: its ack never waits for the effect).
        log.flush(env, job, false).await?;
        (run, step) = match step.next {
            Next::Done => return Ok(()),
            Next::AskRules { accounts, .. } => {
                let verdicts = ask_rules(env, job, current.recipient(), &accounts).await;
                current.on_rules(cx, verdicts, env.clock.now_unix_ms())
            }
            Next::Slot { account, .. } => {
                let taken = env
                    .channels
                    .acquire_for(&account, &job.tenant.id.0)
                    .await
                    .is_ok();
                current.on_slot(cx, taken, env.clock.now_unix_ms())
            }
            Next::Call {
                step: index,
                attempt_id,
                accounts,
                first_slot_taken,
            } => {
                die_here("recipient::after_intent");
                let delivery = call(
                    env,
                    job,
                    cx,
                    &current,
                    index,
                    &attempt_id,
                    &accounts,
                    first_slot_taken,
                )
                .await;
                die_here("recipient::before_outcome");
                current.on_delivery(cx, delivery, env.clock.now_unix_ms())
            }
        };
    }
}

async fn apply(
    env: &RecipientEnv,
    job: &Job,
    log: &mut Log,
    effects: Vec<Effect>,
) -> Result<(), Stop> {
    for effect in effects {
        match effect {
            Effect::Record(draft) => log.push(env, job, draft),
            Effect::Write(write) => log.stage(env, job, write),
            Effect::Flush { terminal } => log.flush(env, job, terminal).await?,
            Effect::Schedule { due_unix_ms } => schedule(env, job, due_unix_ms),
            Effect::Observe {
                account,
                channel,
                signal,
            } => observe(
                env,
                &job.tenant.id.0,
                job.campaign_id(),
                &account,
                channel,
                signal,
            ),
            Effect::CountTimeout => {
                env.timers
                    .stats()
                    .timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Effect::CountDeferredSend => env.channels.count_deferred(),
        }
    }
    Ok(())
}

/// Runs the message again at `due_unix_ms` (the durable part is the event just flushed).
fn schedule(env: &RecipientEnv, job: &Job, due_unix_ms: i64) {
    env.timers.schedule(TimerEntry {
        due_unix_ms,
        tenant: job.tenant.clone(),
        message: job.message.clone(),
        fence: job.fence,
    });
}

/// The channel rules of each account, in order: the session window (a read here), then the
/// warm-up and the tier (asked of the account's owner).
async fn ask_rules(
    env: &RecipientEnv,
    job: &Job,
    recipient: &herald_proto::v1::Recipient,
    accounts: &[AccountInfo],
) -> Vec<Option<Reason>> {
    let tagged = job
        .message
        .request
        .as_ref()
        .is_some_and(|r| !r.tag.is_empty());
    let mut last_inbound: Option<Option<i64>> = None;
    let mut verdicts = Vec::with_capacity(accounts.len());
    for account in accounts {
        if !account.has_rules() {
            verdicts.push(None);
            continue;
        }
        let mut verdict = None;
        if account.session_window_h > 0 && !tagged {
            let last = match last_inbound {
                Some(last) => last,
                None => {
                    let key =
                        herald_store::keys::value::last_inbound(&job.tenant.id, &recipient.id);
                    // Unreadable = unknown = outside the window: only tagged messages go.
                    let read = env
                        .store
                        .get_value(&key)
                        .await
                        .ok()
                        .flatten()
                        .and_then(|v| String::from_utf8_lossy(&v).parse::<i64>().ok());
                    last_inbound = Some(read);
                    read
                }
            };
            verdict = gates::session_window(
                &account.name,
                account.session_window_h,
                tagged,
                last,
                env.clock.now_unix_ms(),
            );
        }
        if verdict.is_none() {
            verdict = check_rules(env, &job.tenant.id.0, account, &recipient.id).await;
        }
        verdicts.push(verdict);
    }
    verdicts
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call's parts, named at the one call site"
)]
async fn call(
    env: &RecipientEnv,
    job: &Job,
    cx: &Cx<'_>,
    run: &Run,
    step: u32,
    attempt_id: &str,
    accounts: &[String],
    first_slot_taken: bool,
) -> Delivery {
    let channel = job
        .steps()
        .get(step as usize)
        .map(|s| s.channel())
        .unwrap_or_default();
    let content = run.content(cx);
    let list_unsubscribe = match (channel, &env.settings.links) {
        (Channel::Email, Some(links)) => {
            Some(links.unsubscribe(&job.tenant.id.0, &job.message.message_id))
        }
        _ => None,
    };
    let chain: Vec<_> = accounts
        .iter()
        .filter_map(|name| env.channels.account(name).cloned())
        .collect();
    env.channels
        .send(
            &chain,
            StepCall {
                attempt_id,
                message_id: &job.message.message_id,
                recipient: run.recipient(),
                channel,
                content: &content,
                list_unsubscribe: list_unsubscribe.as_ref(),
                first_slot_taken,
                tenant: &job.tenant.id.0,
            },
        )
        .await
}

/// The message's log as stored now; `None` when the message is gone or the store stays
/// unreachable.
async fn read_log(env: &RecipientEnv, job: &Job) -> Option<Vec<Event>> {
    let id = MessageId(job.message.message_id.clone());
    for attempt in 0..=RESTARTS_MAX {
        match env.store.get_message(&job.tenant.id, &id).await {
            Ok(Some(record)) => return Some(record.events),
            Ok(None) => return None,
            Err(error) => {
                warn!(message_id = %id, attempt, %error, "reading message log failed");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    None
}

async fn read_sends(env: &RecipientEnv, job: &Job) -> Result<Vec<SentRecord>, Stop> {
    let key = herald_store::keys::value::marketing_sends(&job.tenant.id, job.recipient_id());
    let bytes = env.store.get_value(&key).await?.unwrap_or_default();
    Ok(decode_sends(&bytes, env.clock.now_unix_ms()))
}

/// The message ends, with the error, instead of looping forever.
async fn dead_letter(env: &RecipientEnv, job: &Job) {
    let Some(events) = read_log(env, job).await else {
        return;
    };
    let progress = Progress::from_events(&events);
    if progress.terminal {
        return;
    }
    let mut log = Log::new(progress.seq, None).after(&job.message, &events);
    log.push(
        env,
        job,
        Draft::new(
            herald_proto::v1::EventKind::EventFailed,
            None,
            Channel::Unspecified,
            herald_proto::v1::MessageStatus::Failed,
        )
        .reason(Reason::DeadLetter),
    );
    if let Err(error) = log.flush(env, job, true).await {
        warn!(message_id = %job.message.message_id, %error, "dead-letter record failed; the message stays active for the next owner");
    }
}

/// Applies a receipt and answers its verdict. When the receipt's own writes are durable but
/// its walk on could not finish (the store failed, the log moved), the message is run again
/// from its log: the receipt is not applied twice.
pub async fn signal_job(env: &RecipientEnv, signal_job: SignalJob) {
    let SignalJob {
        mut job,
        signal,
        reply,
    } = signal_job;
    let mut verdict = ReportStatus::Unspecified;
    let mut resume = false;
    for attempt in 0..=RESTARTS_MAX {
        let Some(events) = read_log(env, &job).await else {
            verdict = ReportStatus::ReportUnknown;
            break;
        };
        let progress = Progress::from_events(&events);
        let recipient = if receipt::needs_recipient(signal.kind) {
            match env
                .store
                .get_recipient(&job.tenant.id, job.recipient_id())
                .await
            {
                Ok(recipient) => recipient,
                Err(error) => {
                    warn!(message_id = %job.message.message_id, attempt, %error, "reading the recipient for a receipt failed; retrying");
                    tokio::time::sleep(backoff(attempt)).await;
                    continue;
                }
            }
        } else {
            None
        };
        let view = View {
            env,
            tenant: &job.tenant.id.0,
        };
        let cx = Cx {
            message: &job.message,
            tenant: &job.tenant,
            settings: &env.settings.machine,
            accounts: &view,
        };
        let applied = receipt::apply(&cx, &progress, &signal, recipient, env.clock.now_unix_ms());
        let mut log = Log::new(progress.seq, None).after(&job.message, &events);
        match drive(env, &job, &cx, &mut log, applied.run, applied.step).await {
            Ok(()) => {
                verdict = applied.verdict;
                break;
            }
            Err(Stop::Fenced) | Err(Stop::NotAccepted) => break,
            Err(_) if log.wrote => {
                verdict = applied.verdict;
                resume = true;
                break;
            }
            Err(Stop::Stale { .. }) => {}
            Err(Stop::Store(error)) => {
                warn!(message_id = %job.message.message_id, attempt, %error, "applying a receipt failed; retrying");
                tokio::time::sleep(backoff(attempt)).await;
            }
        }
    }
    env.receipts.count(verdict);
    let _ = reply.send(verdict);
    // A conversion usually comes after the message ended (LATE): it counts for journeys too.
    if matches!(
        verdict,
        ReportStatus::ReportApplied | ReportStatus::ReportLate
    ) {
        super::journeys::engaged(env, &job, signal.kind).await;
    }
    if resume {
        job.history = None;
        job.recipient = None;
        Box::pin(run_job(env, job)).await;
    }
}
