//! # store::embedded::state::write: the checks of a `write` call
//!
//! Owns [`prepare`] (an op into its effect and that effect's log encoding, outside the lock)
//! and [`State::write_ops`]: the checks every op passes before its effect, in the order the
//! Redis write script makes them (fences, expected seqs, idempotency, `Require`s, guarded
//! ops with nesting, a counter that counts only with its append), then the effects through
//! [`State::apply`]. Must never do I/O or wait: it runs under the store's lock.

use super::super::log::encode_entry;
use super::*;
use crate::{Check, Tally};

impl State {
    /// The outcome of an acceptance whose idempotency key is already live, if it is.
    fn prior_acceptance(&self, accept: &Accept, now_ms: u64) -> Option<WriteOutcome> {
        let message = accept.message.as_ref()?;
        let key = idempotency_key(message);
        if key.is_empty() {
            return None;
        }
        let prior = get2(&self.idempotency, &message.tenant, key)?;
        if prior.expires_ms <= now_ms {
            return None;
        }
        let message_id = MessageId(prior.message_id.clone());
        Some(if prior.payload_hash == message.payload_hash {
            WriteOutcome::Accepted {
                message_id,
                duplicate: true,
            }
        } else {
            WriteOutcome::Conflict { message_id }
        })
    }

    /// The outcome of an append whose first event is not the next of its log (see
    /// [`WriteOp::AppendEvents`]), `None` when it is.
    fn seq_conflict(&self, append: &Append) -> Option<WriteOutcome> {
        let first = append.events.first()?;
        let last_seq = get2(&self.events, &append.tenant, &append.message_id)
            .map_or(0, |log| u32::try_from(log.len()).unwrap_or(u32::MAX));
        (first.seq != last_seq.saturating_add(1)).then_some(WriteOutcome::SeqConflict { last_seq })
    }

    /// Checks and applies one op; appends its effects to `record` (when durable). An error
    /// (a hash field that must be an integer and is not) leaves what applied before it.
    fn write_op(
        &mut self,
        op: Prepared,
        now_ms: u64,
        durable: bool,
        record: &mut Vec<u8>,
    ) -> Result<WriteOutcome> {
        let stored = self.stored_epoch(op.fence.partition);
        if stored > op.fence.epoch.0 {
            return Ok(WriteOutcome::Fenced {
                stored: Epoch(stored),
            });
        }
        if let PreparedKind::Effect {
            entry: Entry::Append(append),
            ..
        } = &op.kind
            && let Some(conflict) = self.seq_conflict(append)
        {
            return Ok(conflict);
        }
        match op.kind {
            PreparedKind::Effect { entry, encoded } => {
                let outcome = match &entry {
                    Entry::Accept(accept) => {
                        if let Some(outcome) = self.prior_acceptance(accept, now_ms) {
                            return Ok(outcome);
                        }
                        WriteOutcome::Accepted {
                            message_id: MessageId(
                                accept
                                    .message
                                    .as_ref()
                                    .map(|m| m.message_id.clone())
                                    .unwrap_or_default(),
                            ),
                            duplicate: false,
                        }
                    }
                    Entry::AddMembers(AddMembers { key, members }) => {
                        WriteOutcome::Counter(self.records.new_members(key, members, now_ms))
                    }
                    _ => WriteOutcome::Done,
                };
                self.before_effect(&entry, now_ms, durable, record);
                record.extend_from_slice(&encoded);
                self.apply(entry, now_ms);
                if !op.tallies.is_empty() {
                    self.tallies(op.tallies, now_ms, durable, record)?;
                }
                Ok(outcome)
            }
            PreparedKind::Counter { key, delta, ttl_ms } => {
                let (value, expires_unix_ms) = match self.counters.get(&key) {
                    Some(c) if c.expires_ms > now_ms => {
                        (c.value.saturating_add(delta), c.expires_ms)
                    }
                    _ => (delta, now_ms.saturating_add(ttl_ms)),
                };
                let entry = Entry::SetCounter(SetCounter {
                    key,
                    value,
                    expires_unix_ms,
                });
                self.commit(entry, now_ms, durable, record);
                Ok(WriteOutcome::Counter(value))
            }
            PreparedKind::AddFields { key, deltas } => {
                if let Some(entry) = self.records.add_fields(key, &deltas, now_ms)? {
                    self.before_effect(&entry, now_ms, durable, record);
                    self.commit(entry, now_ms, durable, record);
                }
                Ok(WriteOutcome::Done)
            }
            PreparedKind::Require(check) => {
                let (holds, effect) = self.records.check(check, now_ms)?;
                if let Some(entry) = effect {
                    self.before_effect(&entry, now_ms, durable, record);
                    self.commit(entry, now_ms, durable, record);
                }
                Ok(if holds {
                    WriteOutcome::Done
                } else {
                    WriteOutcome::Unmet
                })
            }
        }
    }

    /// Before `entry` adds to a hash, a list or a sorted set that has expired: drops it (the
    /// drop logged), so the write starts a new record without expiry, as in Redis, and a
    /// replay does the same.
    fn before_effect(&mut self, entry: &Entry, now_ms: u64, durable: bool, record: &mut Vec<u8>) {
        if let Some(drop) = self.records.drop_before(entry, now_ms) {
            self.commit(Entry::DropRecords(drop), now_ms, durable, record);
        }
    }

    /// Applies an append's tallies, one after the other (see `WriteOp::AppendEvents`); like
    /// the script, an error leaves those before it applied.
    fn tallies(
        &mut self,
        tallies: Vec<Tally>,
        now_ms: u64,
        durable: bool,
        record: &mut Vec<u8>,
    ) -> Result<()> {
        for tally in tallies {
            let entry = match tally {
                Tally::AddFields { key, deltas } => {
                    self.records.add_fields(key, &deltas, now_ms)?
                }
                Tally::PushRecord {
                    key,
                    record: pushed,
                } => Some(Entry::PushRecords(PushRecords {
                    key,
                    records: vec![pushed],
                })),
            };
            if let Some(entry) = entry {
                self.before_effect(&entry, now_ms, durable, record);
                self.commit(entry, now_ms, durable, record);
            }
        }
        Ok(())
    }

    /// Gives the live records named `names` (every kind) the expiry `expires_ms`
    /// ([`crate::Store::expire`]); returns the log record (empty when none exists or not
    /// `durable`).
    pub(in crate::embedded) fn expire_records(
        &mut self,
        names: &[String],
        expires_ms: u64,
        now_ms: u64,
        durable: bool,
    ) -> Vec<u8> {
        let mut record = Vec::new();
        if let Some(entry) = self.records.expiring(names, expires_ms, now_ms) {
            self.commit(Entry::ExpireRecords(entry), now_ms, durable, &mut record);
        }
        record
    }

    /// Checks and applies the ops of one `write` call, in order, appending the effects of
    /// those that applied to `record` (when `durable`). Returns one outcome per op, or the
    /// error that stopped the call (the ops before it stay applied, their effects in
    /// `record`, as in the Redis script).
    pub(in crate::embedded) fn write_ops(
        &mut self,
        prepared: Vec<Prepared>,
        now_ms: u64,
        durable: bool,
        record: &mut Vec<u8>,
    ) -> Result<Vec<WriteOutcome>> {
        let ranges = guard_ranges(&prepared);
        let mut skipping = 0;
        let mut outcomes: Vec<WriteOutcome> = Vec::with_capacity(prepared.len());
        let mut ops = prepared.into_iter().enumerate().peekable();
        while let Some((at, op)) = ops.next() {
            if skipping > 0 {
                skipping -= 1;
                outcomes.push(WriteOutcome::Skipped);
                continue;
            }
            let (guards, scope_end) = ranges.as_ref().map_or((0, usize::MAX), |ranges| ranges[at]);
            // A counter directly before an append under its fence (in the same guarded range:
            // the script folds only those) counts only with it.
            if matches!(op.kind, PreparedKind::Counter { .. })
                && at + 1 < scope_end
                && let Some((_, next)) = ops.peek()
                && next.fence == op.fence
                && let PreparedKind::Effect {
                    entry: Entry::Append(append),
                    ..
                } = &next.kind
                && let Some(conflict) = self.seq_conflict(append)
            {
                outcomes.push(conflict.clone());
                outcomes.push(conflict);
                ops.next();
                continue;
            }
            let outcome = self.write_op(op, now_ms, durable, record)?;
            // A guard that did not apply (a duplicate, conflicting or fenced accept; an unmet
            // or fenced `Require`) skips its range.
            let applied = matches!(
                outcome,
                WriteOutcome::Done
                    | WriteOutcome::Accepted {
                        duplicate: false,
                        ..
                    }
            );
            if guards > 0 && !applied {
                skipping = guards;
            }
            outcomes.push(outcome);
        }
        Ok(outcomes)
    }

    /// Logs (when `durable`) and applies an effect that needs no further check.
    fn commit(&mut self, entry: Entry, now_ms: u64, durable: bool, record: &mut Vec<u8>) {
        let entry = if durable {
            let (entry, encoded) = encode_entry(entry);
            record.extend_from_slice(&encoded);
            entry
        } else {
            entry
        };
        self.apply(entry, now_ms);
    }
}

/// For each op, when some op of the call guards others: how many ops it guards (its
/// `guards`, cut at the end of the range of the guard around it, as the Redis encoding cuts
/// it), and the end of the innermost guarded range it is in. `None` when no op guards any
/// (nearly every call: no allocation).
fn guard_ranges(ops: &[Prepared]) -> Option<Vec<(usize, usize)>> {
    if ops.iter().all(|op| op.guards == 0) {
        return None;
    }
    let mut ends: Vec<usize> = Vec::new();
    let mut ranges = Vec::with_capacity(ops.len());
    for (at, op) in ops.iter().enumerate() {
        while ends.last().is_some_and(|end| *end <= at) {
            ends.pop();
        }
        let scope_end = ends.last().copied().unwrap_or(ops.len());
        let own_end = (at + 1).saturating_add(op.guards).min(scope_end);
        if own_end > at + 1 {
            ends.push(own_end);
        }
        ranges.push((own_end - (at + 1), scope_end));
    }
    Some(ranges)
}

#[expect(
    clippy::large_enum_variant,
    reason = "short-lived, and nearly every op is an Effect: boxing would only add an allocation"
)]
pub(in crate::embedded) enum PreparedKind {
    /// An op whose effect is known before the lock (`encoded` is empty without a log).
    Effect { entry: Entry, encoded: Vec<u8> },
    /// A counter's effect depends on the stored value.
    Counter {
        key: String,
        delta: i64,
        ttl_ms: u64,
    },
    /// So do increments of hash fields (logged as the resulting values).
    AddFields {
        key: String,
        deltas: Vec<(String, i64)>,
    },
    /// A check, and for a take its effect.
    Require(Check),
}

/// One op, ready to be checked and applied under the lock.
pub(in crate::embedded) struct Prepared {
    fence: Fence,
    kind: PreparedKind,
    /// The ops it guards: an accept's or a `Require`'s `guards`; 0 for every other op.
    guards: usize,
    /// An append's tallies (empty for every other op).
    tallies: Vec<Tally>,
}

impl Prepared {
    /// The most this op can add to its call's log record.
    pub(in crate::embedded) fn record_len_bound(&self) -> usize {
        // Tallies and record ops: their entries, a drop of an expired record (its name) and
        // small fields (a few varints).
        let tallies: usize = self
            .tallies
            .iter()
            .map(|tally| match tally {
                Tally::AddFields { key, deltas } => {
                    2 * key.len() + 64 + deltas.iter().map(|(f, _)| f.len() + 40).sum::<usize>()
                }
                Tally::PushRecord { key, record } => 2 * key.len() + record.len() + 64,
            })
            .sum();
        tallies
            + match &self.kind {
                // An effect that adds to a record may first drop it (expired): its name again.
                PreparedKind::Effect {
                    entry:
                        Entry::SetFields(_)
                        | Entry::PushRecords(_)
                        | Entry::AddMembers(_)
                        | Entry::PutRecipient(_),
                    encoded,
                } => 2 * encoded.len() + 64,
                PreparedKind::Effect { encoded, .. } => encoded.len(),
                // A SetCounter entry: the key plus a few varints and tags.
                PreparedKind::Counter { key, .. } => key.len() + 48,
                PreparedKind::AddFields { key, deltas } => {
                    2 * key.len() + 64 + deltas.iter().map(|(f, _)| f.len() + 40).sum::<usize>()
                }
                PreparedKind::Require(Check::Take { key, field, .. }) => {
                    2 * key.len() + field.len() + 64
                }
                PreparedKind::Require(Check::FieldIs { .. } | Check::Missing { .. }) => 0,
            }
    }
}

/// Turns an op into its effect (and its log encoding) outside the lock.
pub(in crate::embedded) fn prepare(op: FencedOp, now_ms: u64, durable: bool) -> Prepared {
    let FencedOp { fence, op } = op;
    let mut guards = 0;
    let mut tallies = Vec::new();
    let entry = match op {
        WriteOp::PutRecipient { tenant, recipient } => Entry::PutRecipient(PutRecipient {
            tenant: tenant.0,
            recipient: Some(recipient),
            index_partition: Some(fence.partition.0),
        }),
        WriteOp::EraseRecipient {
            tenant,
            recipient_id,
        } => Entry::EraseRecipient(EraseRecipient {
            tenant: tenant.0,
            recipient_id,
            index_partition: Some(fence.partition.0),
        }),
        WriteOp::AcceptMessage {
            message,
            accepted,
            idempotency_ttl,
            guards: guarded,
        } => {
            guards = guarded;
            Entry::Accept(Accept {
                message: Some(Arc::unwrap_or_clone(message)),
                accepted: Some(accepted),
                partition: fence.partition.0,
                idempotency_expires_unix_ms: now_ms.saturating_add(ttl_ms(idempotency_ttl)),
            })
        }
        WriteOp::AppendEvents {
            tenant,
            message_id,
            events,
            terminal,
            retention,
            tallies: appended,
        } => {
            tallies = appended;
            Entry::Append(Append {
                tenant: tenant.0,
                message_id: message_id.0,
                events,
                terminal,
                partition: fence.partition.0,
                expires_unix_ms: if terminal && !retention.is_zero() {
                    now_ms.saturating_add(ttl_ms(retention)).max(1)
                } else {
                    0
                },
            })
        }
        WriteOp::PutValue { key, value, ttl } => Entry::PutValue(PutValue {
            key,
            value,
            expires_unix_ms: now_ms.saturating_add(ttl_ms(ttl)),
        }),
        WriteOp::SetFields { key, fields } => Entry::SetFields(SetFields {
            key,
            fields: fields
                .into_iter()
                .map(|(name, value)| Field { name, value })
                .collect(),
        }),
        WriteOp::PushRecord { key, record } => Entry::PushRecords(PushRecords {
            key,
            records: vec![record],
        }),
        WriteOp::AddMembers { key, members } => Entry::AddMembers(AddMembers { key, members }),
        WriteOp::RemoveMembers { key, members } => {
            Entry::RemoveMembers(super::super::log::log_format::RemoveMembers { key, members })
        }
        WriteOp::IncrCounter { key, delta, ttl } => {
            let kind = PreparedKind::Counter {
                key,
                delta,
                ttl_ms: ttl_ms(ttl),
            };
            return Prepared::checked(fence, kind, 0);
        }
        WriteOp::AddFields { key, deltas } => {
            return Prepared::checked(fence, PreparedKind::AddFields { key, deltas }, 0);
        }
        WriteOp::Require { check, guards } => {
            return Prepared::checked(fence, PreparedKind::Require(check), guards);
        }
    };
    let (entry, encoded) = if durable {
        encode_entry(entry)
    } else {
        (entry, Vec::new())
    };
    Prepared {
        fence,
        kind: PreparedKind::Effect { entry, encoded },
        guards,
        tallies,
    }
}

impl Prepared {
    /// An op whose effect is worked out under the lock.
    fn checked(fence: Fence, kind: PreparedKind, guards: usize) -> Prepared {
        Prepared {
            fence,
            kind,
            guards,
            tallies: Vec::new(),
        }
    }
}
