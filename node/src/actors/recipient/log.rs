//! A message's log as one run writes it: pending events and state, and the fenced write that
//! makes them durable.
//!
//! Owns turning the machine's drafts into events (ids, time, node, epoch, the next seq) and
//! its state writes into store ops, and the flush: one fenced write with the append (carrying
//! the seq it expects), the state beside it, and a new message's acceptance when it is still to
//! be written (so a message's acceptance and first steps cost one round trip). A flush that
//! fails is retried as the very same write, never re-decided from a read that may be older
//! than the write that failed: if the first try landed after all, the retry's append is refused
//! with the log ending exactly where it would, which is taken as success.
//!
//! Must never write without the job's fence, never let an append through that does not
//! continue the log, and never answer an acceptance before it is durable.

use std::time::Duration;

use herald_proto::MessageId;
use herald_proto::v1::{Event, StoredMessage};
use herald_store::{FencedOp, WriteOp, WriteOutcome, keys};
use tracing::warn;

use super::{AcceptAnswer, AcceptError, Job, PendingAccept, RecipientEnv};
use crate::campaign::books::Books;
use crate::policy::caps::SentRecord;
use crate::receipts::index::AttemptRef;
use crate::waterfall::{Draft, StateWrite};

/// A failed write is tried again this many times (with backoff) before the run gives up.
pub const WRITE_RETRIES_MAX: u32 = 8;

/// Marketing sends kept per recipient (for sliding-window caps).
pub const SENDS_KEEP: Duration = Duration::from_secs(8 * 86_400);

/// How long a person's last engagement is kept (longer than any segment looks back).
const ENGAGED_KEEP: Duration = Duration::from_secs(3_650 * 86_400);

/// How long the day's message counter lives.
const DAILY_COUNTER_TTL: Duration = Duration::from_secs(2 * 86_400);

/// Why a run stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    /// The partition moved: the new owner resumes the message from its log.
    #[error("fenced: partition moved")]
    Fenced,
    /// The message was not new (a duplicate or an idempotency conflict): nothing to run.
    #[error("not accepted: the idempotency key belongs to an earlier message")]
    NotAccepted,
    /// The log is not what this run read: it must be read again.
    #[error("stale log: the stored log ends at seq {last_seq}")]
    Stale { last_seq: u32 },
    #[error("store: {0}")]
    Store(#[from] herald_store::Error),
}

/// Backoff before retry `attempt` (0-based).
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(50u64 << attempt.min(6))
}

pub struct Log {
    /// The last seq of the log as this run knows it.
    seq: u32,
    events: Vec<Event>,
    /// State written beside the append; a counter is kept apart, next to the append, so the
    /// store counts it only with the append.
    writes: Vec<FencedOp>,
    counter: Option<FencedOp>,
    accept: Option<PendingAccept>,
    /// A campaign message's funnel and credits, counted with each append.
    books: Option<Books>,
    /// Whether the log shows the message delivered (a journey's message counts its delivery
    /// once, at the event that made it).
    delivered: bool,
    /// Something of this run is durable already.
    pub wrote: bool,
}

impl Drop for Log {
    fn drop(&mut self) {
        if let Some(accept) = self.accept.take() {
            accept.answer.send(Err(AcceptError::NotWritten));
        }
    }
}

impl Log {
    /// A log that continues after `seq`; `accept`: the message's acceptance, to write with the
    /// first flush.
    pub fn new(seq: u32, accept: Option<PendingAccept>) -> Log {
        Log {
            seq,
            events: Vec::with_capacity(4),
            writes: Vec::new(),
            counter: None,
            accept,
            books: None,
            delivered: false,
            wrote: false,
        }
    }

    /// Continues `history` (the log so far): its books (a campaign message's) and what it
    /// already shows.
    pub fn after(mut self, message: &StoredMessage, history: &[Event]) -> Log {
        self.books = Books::open(message, history);
        self.delivered = crate::journey::flow::delivered(history);
        self
    }

    /// Whether anything waits to be flushed.
    pub fn has_pending(&self) -> bool {
        !self.events.is_empty()
            || !self.writes.is_empty()
            || self.counter.is_some()
            || self.accept.is_some()
    }

    pub fn push(&mut self, env: &RecipientEnv, job: &Job, draft: Draft) {
        self.seq += 1;
        let message = &job.message;
        self.events.push(Event {
            message_id: message.message_id.clone(),
            recipient_id: job.recipient_id().to_owned(),
            kind: draft.kind as i32,
            at_unix_ms: env.clock.now_unix_ms(),
            step: draft.step,
            channel: draft.channel as i32,
            attempt_id: draft.attempt_id,
            reason: draft.reason.map(|r| r.to_string()).unwrap_or_default(),
            node_id: env.node_id.0.clone(),
            epoch: job.fence.epoch.0,
            partition: message.partition,
            status: draft.status as i32,
            provider: draft.provider,
            seq: self.seq,
            due_unix_ms: draft.due_unix_ms,
            cost_micros: draft.cost_micros,
        });
    }

    /// Stages a state write for the next flush.
    pub fn stage(&mut self, env: &RecipientEnv, job: &Job, write: StateWrite) {
        let tenant = &job.tenant.id;
        let fence = job.fence;
        let op = match write {
            StateWrite::CountMessage => {
                let day = env.clock.now_unix_ms().div_euclid(86_400_000);
                self.counter = Some(FencedOp {
                    fence,
                    op: WriteOp::IncrCounter {
                        key: keys::value::daily_messages(tenant, job.recipient_id(), day),
                        delta: 1,
                        ttl: DAILY_COUNTER_TTL,
                    },
                });
                return;
            }
            StateWrite::PutRecipient(recipient) => WriteOp::PutRecipient {
                tenant: tenant.clone(),
                recipient: *recipient,
            },
            StateWrite::RecordSend {
                channel,
                at_unix_ms,
                history,
            } => WriteOp::PutValue {
                key: keys::value::marketing_sends(tenant, job.recipient_id()),
                value: encode_sends(&history, channel as i32, at_unix_ms),
                ttl: SENDS_KEEP,
            },
            StateWrite::Engaged { at_unix_ms } => WriteOp::PutValue {
                key: keys::value::last_engaged(tenant, job.recipient_id()),
                value: at_unix_ms.to_string().into_bytes(),
                ttl: ENGAGED_KEEP,
            },
            StateWrite::IndexReceipt {
                account,
                provider_message_id,
                step,
            } => {
                let attempt = AttemptRef {
                    tenant: tenant.clone(),
                    recipient_id: job.recipient_id().to_owned(),
                    message_id: job.message.message_id.clone(),
                    step,
                };
                self.writes.push(attempt.index_op(
                    fence,
                    &account,
                    &provider_message_id,
                    env.settings.receipt_index_ttl,
                ));
                return;
            }
        };
        self.writes.push(FencedOp { fence, op });
    }

    /// Writes what is pending (and the acceptance, when still to be written), as one fenced
    /// write; `terminal` takes the message out of its partition's active set.
    pub async fn flush(
        &mut self,
        env: &RecipientEnv,
        job: &Job,
        terminal: bool,
    ) -> Result<(), Stop> {
        if !terminal && !self.has_pending() {
            return Ok(());
        }
        let events = std::mem::take(&mut self.events);
        let end_seq = self.seq;
        // A failed flush ends the run (it starts over from the log, with books of its own),
        // so counting before the write is safe.
        let mut tallies = match self.books.as_mut() {
            Some(books) => books.tallies(&events),
            None => Vec::new(),
        };
        // A journey's message counts for its step's funnel with the same append.
        if let Some(request) = job.message.request.as_ref()
            && let Some(tally) = crate::journey::flow::message_tally(
                &job.tenant.id,
                &request.idempotency_key,
                &events,
                &mut self.delivered,
            )
        {
            tallies.push(tally);
        }
        // Copies only of what a watcher wants (usually nothing).
        let watched = env.events.wanted(&events);
        let append = FencedOp {
            fence: job.fence,
            op: WriteOp::AppendEvents {
                tenant: job.tenant.id.clone(),
                message_id: MessageId(job.message.message_id.clone()),
                events,
                terminal,
                retention: job.tenant.retention,
                tallies,
            },
        };
        let mut writes = std::mem::take(&mut self.writes);
        let counter = self.counter.take();
        let accept = self.accept.take();
        // [accept, append, counter, state...] or [state..., counter, append]: the store folds
        // a counter next to its append (and an append next to its accept) into one op.
        let (accept, accept_op): (Option<AcceptAnswer>, _) = match accept {
            Some(PendingAccept { op, answer }) => (Some(answer), Some(op)),
            None => (None, None),
        };
        let ops: Vec<FencedOp> = match accept_op {
            Some(mut op) => {
                let guarded = 1 + usize::from(counter.is_some()) + writes.len();
                if let WriteOp::AcceptMessage { guards, .. } = &mut op.op {
                    *guards = guarded;
                }
                let mut ops = Vec::with_capacity(guarded + 1);
                ops.push(op);
                ops.push(append);
                ops.extend(counter);
                ops.append(&mut writes);
                ops
            }
            None => {
                writes.extend(counter);
                writes.push(append);
                writes
            }
        };
        let outcome = write_until_known(env, job, ops, accept.is_some(), end_seq).await;
        match (outcome, accept) {
            (Ok(outcomes), Some(mut pending)) => {
                let accept_watched = std::mem::take(&mut pending.watched);
                let answer = outcomes.first().cloned();
                let new = matches!(
                    answer,
                    Some(WriteOutcome::Accepted {
                        duplicate: false,
                        ..
                    })
                );
                match answer {
                    Some(answer) => pending.send(Ok(answer.clone())),
                    None => pending.send(Err(AcceptError::NotWritten)),
                }
                if !new {
                    return Err(match outcomes.first() {
                        Some(WriteOutcome::Fenced { .. }) => Stop::Fenced,
                        _ => Stop::NotAccepted,
                    });
                }
                check(&outcomes[1..], end_seq)?;
                env.events.publish(&job.tenant.id, &accept_watched);
            }
            (Ok(outcomes), None) => check(&outcomes, end_seq)?,
            (Err(error), Some(pending)) => {
                pending.send(Err(AcceptError::Store(error.to_string())));
                return Err(Stop::Store(error));
            }
            (Err(error), None) => return Err(Stop::Store(error)),
        }
        self.wrote = true;
        env.events.publish(&job.tenant.id, &watched);
        Ok(())
    }
}

/// A fenced op means the partition moved; a refused append means the log is not what this run
/// read.
fn check(outcomes: &[WriteOutcome], end_seq: u32) -> Result<(), Stop> {
    for outcome in outcomes {
        match outcome {
            WriteOutcome::Fenced { .. } => return Err(Stop::Fenced),
            WriteOutcome::SeqConflict { last_seq } if *last_seq != end_seq => {
                return Err(Stop::Stale {
                    last_seq: *last_seq,
                });
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes `ops`, retrying the same write on store errors. A retry that finds its own first
/// try landed (the append refused with the log ending at `end_seq`; the acceptance a duplicate
/// of this very message) is answered as if the first try had been.
async fn write_until_known(
    env: &RecipientEnv,
    job: &Job,
    ops: Vec<FencedOp>,
    with_accept: bool,
    end_seq: u32,
) -> Result<Vec<WriteOutcome>, herald_store::Error> {
    let mut attempt = 0;
    loop {
        // A retry must send the very same ops (same seqs): the store writes from a borrow.
        let result = env.store.write_shared(&ops).await;
        match result {
            Ok(mut outcomes) => {
                if attempt > 0 {
                    landed_earlier(&mut outcomes, job, with_accept, end_seq);
                }
                return Ok(outcomes);
            }
            Err(error) if attempt < WRITE_RETRIES_MAX => {
                warn!(
                    message_id = %job.message.message_id,
                    attempt,
                    %error,
                    "writing the message's log failed; retrying the same write"
                );
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Rewrites the outcomes of a retry whose first try landed: this message's acceptance is new,
/// its append done.
fn landed_earlier(outcomes: &mut [WriteOutcome], job: &Job, with_accept: bool, end_seq: u32) {
    let own_accept = with_accept
        && matches!(
            outcomes.first(),
            Some(WriteOutcome::Accepted { message_id, duplicate: true })
                if message_id.0 == job.message.message_id
        );
    for (index, outcome) in outcomes.iter_mut().enumerate() {
        match outcome {
            WriteOutcome::Accepted {
                duplicate: duplicate @ true,
                ..
            } if index == 0 && own_accept => *duplicate = false,
            WriteOutcome::Skipped if own_accept => *outcome = WriteOutcome::Done,
            WriteOutcome::SeqConflict { last_seq } if *last_seq == end_seq => {
                *outcome = WriteOutcome::Done;
            }
            _ => {}
        }
    }
}

/// The recipient's recent marketing sends: `at_ms:channel` entries separated by `;`.
pub fn decode_sends(bytes: &[u8], now_ms: i64) -> Vec<SentRecord> {
    let text = String::from_utf8_lossy(bytes);
    let horizon = now_ms - SENDS_KEEP.as_millis() as i64;
    text.split(';')
        .filter_map(|entry| {
            let (at, channel) = entry.split_once(':')?;
            Some(SentRecord {
                at_ms: at.parse().ok()?,
                channel: herald_proto::v1::Channel::try_from(channel.parse::<i32>().ok()?).ok()?,
                marketing: true,
            })
        })
        .filter(|s| s.at_ms > horizon)
        .collect()
}

fn encode_sends(history: &[SentRecord], channel: i32, at_ms: i64) -> Vec<u8> {
    let mut text: String = history
        .iter()
        .map(|s| format!("{}:{};", s.at_ms, s.channel as i32))
        .collect();
    text.push_str(&format!("{at_ms}:{channel}"));
    text.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::Channel;

    #[test]
    fn sends_round_trip_and_age_out() {
        let now = 10 * 86_400_000;
        let history = vec![SentRecord {
            at_ms: now - 1_000,
            channel: Channel::Push,
            marketing: true,
        }];
        let bytes = encode_sends(&history, Channel::Sms as i32, now);
        let back = decode_sends(&bytes, now);
        assert_eq!(back.len(), 2);
        assert_eq!(back[1].channel, Channel::Sms);
        // Nine days later both are past the horizon.
        assert!(decode_sends(&bytes, now + 9 * 86_400_000).is_empty());
        assert!(decode_sends(b"garbage;1:x", now).is_empty());
    }
}
