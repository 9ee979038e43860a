//! # store::redis::encode: ops into script arguments, replies into outcomes
//!
//! Owns the Rust side of the write script's wire format: [`Args`] (flat `ARGV` entries in one
//! buffer), the encoding of every [`WriteOp`] ([`encode_ops`], with its folds: a counter and
//! the append after it travel as one `F` op, an accept with its message's first append and
//! counter as one `B` op; an append's tallies travel after its events), the decoding of the
//! script's per-op replies ([`decode_outcome`]), of the lease scripts' partition lists and of
//! stored records, and [`chunks`], which cuts a very large call without separating a guard (an
//! accept or a `Require`) from the ops it guards.
//!
//! It must never do I/O or hold a connection: everything here is a pure function of its input
//! (unit-tested without Redis). The encoding must stay in step with `scripts/write.lua`.

use std::time::Duration;

use ::redis::{Cmd, Value};
use herald_proto::v1::{Event, StoredMessage};
use herald_proto::{Epoch, MessageId, PartitionId, TenantId};
use prost::Message;

use crate::keys::{
    COUNTER_SEGMENT, EVENTS_SEGMENT, HASH_SEGMENT, IDEMPOTENCY_SEGMENT, LIST_SEGMENT, RedisKeys,
    SET_SEGMENT, VALUE_SEGMENT,
};
use crate::{Check, Error, Fence, FencedOp, Result, Tally, WriteOp, WriteOutcome};

/// Largest ttl passed to Redis (~35 years): `PX` rejects values that overflow its clock.
const MAX_TTL_MS: u64 = 1 << 40;
/// Separator inside idempotency values and active-set members (never in a ULID).
pub(super) const SEP: char = '\x1f';
pub(super) const SEP_BYTES: &[u8] = b"\x1f";

pub(super) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MS)
        .clamp(1, MAX_TTL_MS)
}

/// The `ARGV` entries of some ops, flat: one buffer, one end offset per entry.
#[derive(Default)]
pub(super) struct Args {
    buf: Vec<u8>,
    ends: Vec<usize>,
}

impl Args {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.ends.push(self.buf.len());
    }
    /// One entry made of several pieces (a key), without building a String first.
    fn push_parts(&mut self, parts: &[&[u8]]) {
        for part in parts {
            self.buf.extend_from_slice(part);
        }
        self.ends.push(self.buf.len());
    }
    fn push_u64(&mut self, mut n: u64) {
        // Decimal digits straight into the buffer (this runs several times per op).
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[at..]);
    }
    fn push_i64(&mut self, n: i64) {
        if n < 0 {
            self.push(n.to_string().as_bytes());
        } else {
            self.push_u64(n.unsigned_abs());
        }
    }
    fn push_message(&mut self, message: &impl prost::Message) {
        // Encode straight into the shared buffer: no temporary Vec per message.
        self.buf.reserve(message.encoded_len());
        message.encode_raw(&mut self.buf);
        self.ends.push(self.buf.len());
    }
    /// Appends every entry of `other`.
    fn extend(&mut self, other: Args) {
        let base = self.buf.len();
        self.buf.extend_from_slice(&other.buf);
        self.ends
            .extend(other.ends.into_iter().map(|end| base + end));
    }
    /// Bytes of all entries (what a batch's byte limit counts).
    pub(super) fn byte_len(&self) -> usize {
        self.buf.len()
    }
    pub(super) fn entry_count(&self) -> usize {
        self.ends.len()
    }
    pub(super) fn append_to(&self, cmd: &mut Cmd) {
        let mut start = 0;
        for &end in &self.ends {
            cmd.arg(&self.buf[start..end]);
            start = end;
        }
    }
}

/// How to read one op's reply.
pub(super) enum Expect {
    Done,
    Accept { message_id: MessageId, hash: String },
    Counter,
}

/// `key, delta, ttl` of a counter op.
fn push_counter(args: &mut Args, keys: &RedisKeys, key: &str, delta: i64, ttl: Duration) {
    args.push_parts(&[keys.prefix.as_bytes(), COUNTER_SEGMENT, key.as_bytes()]);
    args.push_i64(delta);
    args.push_u64(ttl_ms(ttl));
}

/// `idempotency key ('' = none), value, ttl ms` of an accept; returns the payload hash as
/// stored in the value.
fn push_idempotency(
    args: &mut Args,
    keys: &RedisKeys,
    message: &StoredMessage,
    ttl: Duration,
) -> String {
    let idempotency_key = message
        .request
        .as_ref()
        .map(|r| r.idempotency_key.as_str())
        .unwrap_or_default();
    let hash = format!("{:016x}", message.payload_hash);
    if idempotency_key.is_empty() {
        args.push(b"");
    } else {
        args.push_parts(&[
            keys.prefix.as_bytes(),
            IDEMPOTENCY_SEGMENT,
            message.tenant.as_bytes(),
            b":",
            idempotency_key.as_bytes(),
        ]);
    }
    args.push_parts(&[message.message_id.as_bytes(), SEP_BYTES, hash.as_bytes()]);
    args.push_u64(ttl_ms(ttl));
    hash
}

fn push_events_key(args: &mut Args, keys: &RedisKeys, tenant: &str, message_id: &str) {
    args.push_parts(&[
        keys.prefix.as_bytes(),
        EVENTS_SEGMENT,
        tenant.as_bytes(),
        b":",
        message_id.as_bytes(),
    ]);
}

/// A message's member in its partition's active set.
fn push_active_member(args: &mut Args, tenant: &str, message_id: &str) {
    args.push_parts(&[tenant.as_bytes(), SEP_BYTES, message_id.as_bytes()]);
}

/// A record's key: the prefix, its segment (`:h:`, `:l:`, `:z:`) and its name.
fn push_record_key(args: &mut Args, keys: &RedisKeys, segment: &[u8], name: &str) {
    args.push_parts(&[keys.prefix.as_bytes(), segment, name.as_bytes()]);
}

/// `hash key, pair count, (field, delta)...` of `AddFields` and of an `A` tally.
fn push_deltas(args: &mut Args, keys: &RedisKeys, key: &str, deltas: &[(String, i64)]) {
    push_record_key(args, keys, HASH_SEGMENT, key);
    args.push_u64(deltas.len() as u64);
    for (field, delta) in deltas {
        args.push(field.as_bytes());
        args.push_i64(*delta);
    }
}

/// `tally entries, tallies...` after an append's events: the common case (none) is one `0`.
fn push_tallies(args: &mut Args, keys: &RedisKeys, tallies: &[Tally]) {
    // Entries of each tally: its kind and key, then a pair count and the pairs, or a record.
    let entries: usize = tallies
        .iter()
        .map(|tally| match tally {
            Tally::AddFields { deltas, .. } => 3 + 2 * deltas.len(),
            Tally::PushRecord { .. } => 3,
        })
        .sum();
    args.push_u64(entries as u64);
    for tally in tallies {
        match tally {
            Tally::AddFields { key, deltas } => {
                args.push(b"A");
                push_deltas(args, keys, key, deltas);
            }
            Tally::PushRecord { key, record } => {
                args.push(b"P");
                push_record_key(args, keys, LIST_SEGMENT, key);
                args.push(record);
            }
        }
    }
}

/// `events key, '' (the active member: retired in bulk instead), expected seq ('' = none),
/// count, events..., tally entries, tallies...` of an append op.
fn push_append(
    args: &mut Args,
    keys: &RedisKeys,
    tenant: &TenantId,
    message_id: &MessageId,
    events: &[Event],
    tallies: &[Tally],
) {
    push_events_key(args, keys, tenant.as_str(), message_id.as_str());
    // A terminal message leaves its active set in bulk, after the write (`Retiring`): one
    // SREM call per message inside the script cost more than the rest of its append.
    args.push(b"");
    match events.first() {
        Some(first) => args.push_u64(u64::from(first.seq)),
        None => args.push(b""),
    }
    args.push_u64(events.len() as u64);
    for event in events {
        args.push_message(event);
    }
    push_tallies(args, keys, tallies);
}

/// `recipient index key, recipient id` of a put or an erase: the partition's sorted set.
fn push_recipient_index(
    args: &mut Args,
    keys: &RedisKeys,
    fence: &Fence,
    tenant: &TenantId,
    id: &str,
) {
    let name = crate::keys::value::partition_recipients(tenant, fence.partition.0);
    push_record_key(args, keys, SET_SEGMENT, &name);
    args.push(id.as_bytes());
}

/// Roughly the argument bytes and entries of `ops`, so their buffers are sized once.
fn size_hint(ops: &[FencedOp]) -> (usize, usize) {
    let mut bytes = 0;
    let mut entries = 0;
    for op in ops {
        // Code, partition, epoch, keys and small fields.
        bytes += 160;
        entries += 16;
        match &op.op {
            WriteOp::AcceptMessage { message, .. } => bytes += message.encoded_len() + 128,
            WriteOp::AppendEvents {
                events, tallies, ..
            } => {
                bytes += events.iter().map(Message::encoded_len).sum::<usize>();
                entries += events.len();
                for tally in tallies {
                    match tally {
                        Tally::AddFields { deltas, .. } => {
                            bytes += 64 + deltas.iter().map(|(f, _)| f.len() + 20).sum::<usize>();
                            entries += 3 + 2 * deltas.len();
                        }
                        Tally::PushRecord { record, .. } => {
                            bytes += 64 + record.len();
                            entries += 3;
                        }
                    }
                }
            }
            WriteOp::PutRecipient { recipient, .. } => bytes += recipient.encoded_len(),
            WriteOp::PutValue { value, .. } => bytes += value.len(),
            WriteOp::Require { check, .. } => {
                bytes += match check {
                    Check::FieldIs { field, value, .. } => field.len() + value.len(),
                    Check::Take { field, .. } => field.len() + 20,
                    Check::Missing { field, .. } => field.len(),
                }
            }
            WriteOp::AddFields { deltas, .. } => {
                bytes += deltas.iter().map(|(f, _)| f.len() + 20).sum::<usize>();
                entries += 2 * deltas.len();
            }
            WriteOp::SetFields { fields, .. } => {
                bytes += fields.iter().map(|(f, v)| f.len() + v.len()).sum::<usize>();
                entries += 2 * fields.len();
            }
            WriteOp::PushRecord { record, .. } => bytes += record.len(),
            WriteOp::AddMembers { members, .. } | WriteOp::RemoveMembers { members, .. } => {
                bytes += members.iter().map(String::len).sum::<usize>();
                entries += members.len();
            }
            WriteOp::EraseRecipient { .. } | WriteOp::IncrCounter { .. } => {}
        }
    }
    (bytes, entries)
}

/// The ops a guard at `ops[index - 1]` guards: up to `guards` of them, never past the end of
/// `ops` (which is the end of an enclosing guard's range when this runs for one). Returns the
/// end of the range.
fn guarded_end(ops: &[FencedOp], index: usize, guards: usize) -> usize {
    index.saturating_add(guards).min(ops.len())
}

pub(super) fn encode_ops(keys: &RedisKeys, ops: &[FencedOp]) -> (Args, Vec<Expect>) {
    let (bytes, entries) = size_hint(ops);
    let mut args = Args {
        buf: Vec::with_capacity(bytes),
        ends: Vec::with_capacity(entries),
    };
    let mut expect = Vec::with_capacity(ops.len());
    let mut index = 0;
    while index < ops.len() {
        let FencedOp { fence, op } = &ops[index];
        index += 1;
        // A counter followed by an append under the same fence travels as one 'F' op.
        if let (
            WriteOp::IncrCounter { key, delta, ttl },
            Some(FencedOp {
                fence: next_fence,
                op:
                    WriteOp::AppendEvents {
                        tenant,
                        message_id,
                        events,
                        tallies,
                        ..
                    },
            }),
        ) = (op, ops.get(index))
            && next_fence == fence
        {
            index += 1;
            args.push(b"F");
            args.push_u64(u64::from(fence.partition.0));
            args.push_u64(fence.epoch.0);
            push_counter(&mut args, keys, key, *delta, *ttl);
            push_append(&mut args, keys, tenant, message_id, events, tallies);
            expect.push(Expect::Counter);
            expect.push(Expect::Done);
            continue;
        }
        if let WriteOp::AcceptMessage {
            message,
            accepted,
            idempotency_ttl,
            guards,
        } = op
        {
            let guarded_end = guarded_end(ops, index, *guards);
            // The message's own append right after its accept joins the accept's RPUSH (not
            // one with tallies: the script applies those only in an 'E' or 'F' op).
            let folded = match ops.get(index) {
                Some(FencedOp {
                    fence: next_fence,
                    op:
                        WriteOp::AppendEvents {
                            tenant,
                            message_id,
                            events,
                            terminal,
                            tallies,
                            ..
                        },
                }) if next_fence == fence
                    && index < guarded_end
                    && tallies.is_empty()
                    && tenant.as_str() == message.tenant
                    && message_id.as_str() == message.message_id =>
                {
                    Some((events, *terminal))
                }
                _ => None,
            };
            let mut rest = index + usize::from(folded.is_some());
            // So does a counter under the same fence (the frequency cap's increment).
            let counter = match ops.get(rest) {
                Some(FencedOp {
                    fence: next_fence,
                    op: WriteOp::IncrCounter { key, delta, ttl },
                }) if next_fence == fence && rest < guarded_end => Some((key, *delta, *ttl)),
                _ => None,
            };
            rest += usize::from(counter.is_some());
            let (guarded_args, guarded_expect) = encode_ops(keys, &ops[rest..guarded_end]);
            args.push(b"B");
            args.push_u64(u64::from(fence.partition.0));
            args.push_u64(fence.epoch.0);
            let hash = push_idempotency(&mut args, keys, message, *idempotency_ttl);
            push_events_key(&mut args, keys, &message.tenant, &message.message_id);
            if folded.is_some_and(|(_, terminal)| terminal) {
                args.push(b"");
            } else {
                push_active_member(&mut args, &message.tenant, &message.message_id);
            }
            args.push_u64(guarded_args.ends.len() as u64);
            let folded_replies = usize::from(folded.is_some()) + usize::from(counter.is_some());
            args.push_u64((folded_replies + guarded_expect.len()) as u64);
            args.push(if folded.is_some() { b"1" } else { b"0" });
            match counter {
                Some((key, delta, ttl)) => push_counter(&mut args, keys, key, delta, ttl),
                None => {
                    args.push(b"");
                    args.push(b"0");
                    args.push(b"0");
                }
            }
            let following = folded.map_or(&[][..], |(events, _)| events.as_slice());
            args.push_u64(2 + following.len() as u64);
            args.push_message(message.as_ref());
            args.push_message(accepted);
            for event in following {
                args.push_message(event);
            }
            expect.push(Expect::Accept {
                message_id: MessageId(message.message_id.clone()),
                hash,
            });
            if folded.is_some() {
                expect.push(Expect::Done);
            }
            if counter.is_some() {
                expect.push(Expect::Counter);
            }
            args.extend(guarded_args);
            expect.extend(guarded_expect);
            index = guarded_end;
            continue;
        }
        if let WriteOp::Require { check, guards } = op {
            let guarded_end = guarded_end(ops, index, *guards);
            // Encoded like the whole call, so guards inside the range nest.
            let (guarded_args, guarded_expect) = encode_ops(keys, &ops[index..guarded_end]);
            args.push(b"G");
            args.push_u64(u64::from(fence.partition.0));
            args.push_u64(fence.epoch.0);
            match check {
                Check::FieldIs { key, field, value } => {
                    args.push(b"=");
                    push_record_key(&mut args, keys, HASH_SEGMENT, key);
                    args.push(field.as_bytes());
                    args.push(value);
                }
                Check::Take { key, field, amount } => {
                    args.push(b"T");
                    push_record_key(&mut args, keys, HASH_SEGMENT, key);
                    args.push(field.as_bytes());
                    args.push_i64(*amount);
                }
                Check::Missing { key, field } => {
                    args.push(b"!");
                    push_record_key(&mut args, keys, HASH_SEGMENT, key);
                    args.push(field.as_bytes());
                    args.push(b"");
                }
            }
            args.push_u64(guarded_args.ends.len() as u64);
            args.push_u64(guarded_expect.len() as u64);
            expect.push(Expect::Done);
            args.extend(guarded_args);
            expect.extend(guarded_expect);
            index = guarded_end;
            continue;
        }
        let code: &[u8] = match op {
            WriteOp::PutRecipient { .. } => b"R",
            WriteOp::EraseRecipient { .. } => b"X",
            // Encoded above (a `B` or a `G` op, with what it guards); never reaches here.
            WriteOp::AcceptMessage { .. } | WriteOp::Require { .. } => continue,
            WriteOp::AppendEvents { .. } => b"E",
            WriteOp::IncrCounter { .. } => b"C",
            WriteOp::PutValue { .. } => b"S",
            WriteOp::AddFields { .. } => b"H",
            WriteOp::SetFields { .. } => b"W",
            WriteOp::PushRecord { .. } => b"L",
            WriteOp::AddMembers { .. } => b"Z",
            WriteOp::RemoveMembers { .. } => b"Y",
        };
        args.push(code);
        args.push_u64(u64::from(fence.partition.0));
        args.push_u64(fence.epoch.0);
        match op {
            WriteOp::PutRecipient { tenant, recipient } => {
                args.push(keys.recipient(tenant, &recipient.id).as_bytes());
                args.push_message(recipient);
                push_recipient_index(&mut args, keys, fence, tenant, &recipient.id);
                expect.push(Expect::Done);
            }
            WriteOp::EraseRecipient {
                tenant,
                recipient_id,
            } => {
                args.push(keys.recipient(tenant, recipient_id).as_bytes());
                push_recipient_index(&mut args, keys, fence, tenant, recipient_id);
                expect.push(Expect::Done);
            }
            WriteOp::AcceptMessage { .. } | WriteOp::Require { .. } => {}
            WriteOp::AppendEvents {
                tenant,
                message_id,
                events,
                tallies,
                ..
            } => {
                push_append(&mut args, keys, tenant, message_id, events, tallies);
                expect.push(Expect::Done);
            }
            WriteOp::IncrCounter { key, delta, ttl } => {
                push_counter(&mut args, keys, key, *delta, *ttl);
                expect.push(Expect::Counter);
            }
            WriteOp::PutValue { key, value, ttl } => {
                args.push_parts(&[keys.prefix.as_bytes(), VALUE_SEGMENT, key.as_bytes()]);
                args.push(value);
                args.push_u64(ttl_ms(*ttl));
                expect.push(Expect::Done);
            }
            WriteOp::AddFields { key, deltas } => {
                push_deltas(&mut args, keys, key, deltas);
                expect.push(Expect::Done);
            }
            WriteOp::SetFields { key, fields } => {
                push_record_key(&mut args, keys, HASH_SEGMENT, key);
                args.push_u64(fields.len() as u64);
                for (field, value) in fields {
                    args.push(field.as_bytes());
                    args.push(value);
                }
                expect.push(Expect::Done);
            }
            WriteOp::PushRecord { key, record } => {
                push_record_key(&mut args, keys, LIST_SEGMENT, key);
                args.push(record);
                expect.push(Expect::Done);
            }
            WriteOp::AddMembers { key, members } => {
                push_record_key(&mut args, keys, SET_SEGMENT, key);
                args.push_u64(members.len() as u64);
                for member in members {
                    args.push(member.as_bytes());
                }
                expect.push(Expect::Counter);
            }
            WriteOp::RemoveMembers { key, members } => {
                push_record_key(&mut args, keys, SET_SEGMENT, key);
                args.push_u64(members.len() as u64);
                for member in members {
                    args.push(member.as_bytes());
                }
                expect.push(Expect::Done);
            }
        }
    }
    (args, expect)
}

/// Reads one op's reply from the write script.
pub(super) fn decode_outcome(expect: &Expect, value: Value) -> Result<WriteOutcome> {
    let bad = |value: &Value| Error::Corrupt {
        key: "write script reply".to_owned(),
        reason: format!("unexpected reply {value:?}"),
    };
    if let Value::Array(items) = &value {
        return match items.as_slice() {
            [Value::Int(stored)] => Ok(WriteOutcome::Fenced {
                stored: Epoch(u64::try_from(*stored).map_err(|_| bad(&value))?),
            }),
            [Value::BulkString(word)] if word.as_slice() == b"skipped" => Ok(WriteOutcome::Skipped),
            [Value::BulkString(word)] if word.as_slice() == b"unmet" => Ok(WriteOutcome::Unmet),
            [Value::BulkString(word), Value::Int(last)] if word.as_slice() == b"seq" => {
                Ok(WriteOutcome::SeqConflict {
                    last_seq: u32::try_from(*last).map_err(|_| bad(&value))?,
                })
            }
            _ => Err(bad(&value)),
        };
    }
    match (expect, value) {
        (Expect::Done, Value::Int(0)) => Ok(WriteOutcome::Done),
        (Expect::Counter, Value::Int(n)) => Ok(WriteOutcome::Counter(n)),
        (Expect::Accept { message_id, .. }, Value::Int(1)) => Ok(WriteOutcome::Accepted {
            message_id: message_id.clone(),
            duplicate: false,
        }),
        (Expect::Accept { hash, .. }, Value::BulkString(prior)) => {
            let prior = String::from_utf8(prior).map_err(|e| Error::Corrupt {
                key: "idempotency record".to_owned(),
                reason: e.to_string(),
            })?;
            let Some((first, stored_hash)) = prior.rsplit_once(SEP) else {
                return Err(Error::Corrupt {
                    key: "idempotency record".to_owned(),
                    reason: format!("no separator in {prior:?}"),
                });
            };
            let message_id = MessageId(first.to_owned());
            if stored_hash == hash {
                Ok(WriteOutcome::Accepted {
                    message_id,
                    duplicate: true,
                })
            } else {
                Ok(WriteOutcome::Conflict { message_id })
            }
        }
        (_, value) => Err(bad(&value)),
    }
}

pub(super) fn partitions_from(value: Value) -> Result<Vec<PartitionId>> {
    let bad = |reason: String| Error::Corrupt {
        key: "lease script reply".to_owned(),
        reason,
    };
    let Value::Array(items) = value else {
        return Err(bad(format!("not an array: {value:?}")));
    };
    items
        .into_iter()
        .map(|item| match item {
            Value::Int(p) => u32::try_from(p)
                .map(PartitionId)
                .map_err(|_| bad(format!("bad partition {p}"))),
            other => Err(bad(format!("bad partition {other:?}"))),
        })
        .collect()
}

pub(super) fn decode<M: prost::Message + Default>(key: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

pub(super) fn utf8(key: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// `ops` in chunks of at most `max` ops, never separating a guard (an accept or a `Require`)
/// from the ops it guards (such a group, with the guards nested in it, is one chunk, however
/// long).
pub(super) fn chunks(ops: &[FencedOp], max: usize) -> Vec<&[FencedOp]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < ops.len() {
        let group = match &ops[index].op {
            WriteOp::AcceptMessage { guards, .. } | WriteOp::Require { guards, .. } => {
                1 + (*guards).min(ops.len() - index - 1)
            }
            _ => 1,
        };
        if index > start && index + group - start > max {
            out.push(&ops[start..index]);
            start = index;
        }
        index += group;
    }
    if start < ops.len() {
        out.push(&ops[start..]);
    }
    out
}

#[cfg(test)]
mod unit;
