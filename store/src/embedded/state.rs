//! # store::embedded::state: the embedded store's memory
//!
//! Owns [`State`], the whole state in maps, and every rule of how ops change it:
//! [`prepare`](write::prepare) (an op into its effect and that effect's log encoding, outside
//! the lock), [`State::write_ops`] (the checks: fences, expected seqs, idempotency,
//! `Require`s, guarded ops; then [`State::apply`]), the bounded sweep of expired keys, the
//! queue of records for the flusher, and [`State::snapshot`] (the durable state as log
//! records, for compaction). Replay applies entries through the same [`State::apply`], so
//! memory after a restart equals memory before it.
//!
//! ## Layout
//! - this file: the maps, [`State::apply`], the sweep, the flusher's queue.
//! - `write`: [`prepare`](write::prepare) and [`State::write_ops`] (the checks of a call).
//! - `records`: hashes, lists and sorted sets (reads, checks, their effects and expiry).
//! - `snapshot`: the durable state as log records (compaction).
//!
//! It must never do I/O, wait or take a lock: the store holds the state's mutex around these
//! calls, so each must be a short, bounded step over values already built.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald_proto::v1::{Event, Recipient, StoredMessage};
use herald_proto::{Epoch, MessageId, PartitionId};

use super::log::encode_entry;
use super::log::log_format::{
    Accept, AddMembers, Append, DeleteValues, DropRecords, Entry, EraseRecipient, ExpireRecords,
    Field, PushRecords, PutApiKey, PutBlob, PutIdempotency, PutMessage, PutRecipient, PutValue,
    Redact, SetCounter, SetFence, SetFields,
};
use crate::{Error, Fence, FencedOp, Result, WriteOp, WriteOutcome};
use records::{Kind, Records};

/// Snapshot records are cut at about this size.
const SNAPSHOT_RECORD_BYTES: usize = 1 << 20;
/// Expired keys removed per write call, so a sweep never makes a long critical section.
pub(super) const SWEEP_BUDGET: usize = 64;
/// Longest ttl honoured (~35 years), as in the Redis backend.
const MAX_TTL_MS: u64 = 1 << 40;

pub(super) type ByTenant<V> = HashMap<String, HashMap<String, V>>;

mod records;
mod snapshot;
pub(super) mod write;

pub(super) fn get2<'a, V>(map: &'a ByTenant<V>, tenant: &str, id: &str) -> Option<&'a V> {
    map.get(tenant)?.get(id)
}

fn insert2<V>(map: &mut ByTenant<V>, tenant: &str, id: &str, value: V) {
    match map.get_mut(tenant) {
        Some(inner) => {
            inner.insert(id.to_owned(), value);
        }
        None => {
            map.entry(tenant.to_owned())
                .or_default()
                .insert(id.to_owned(), value);
        }
    }
}

fn remove2<V>(map: &mut ByTenant<V>, tenant: &str, id: &str) -> Option<V> {
    let inner = map.get_mut(tenant)?;
    let removed = inner.remove(id);
    if inner.is_empty() {
        map.remove(tenant);
    }
    removed
}

struct Idempotency {
    message_id: String,
    payload_hash: u64,
    expires_ms: u64,
}

struct Counter {
    value: i64,
    expires_ms: u64,
}

pub(super) struct Lease {
    pub(super) holder: String,
    pub(super) until: Instant,
}

enum Expiring {
    Idempotency {
        tenant: String,
        key: String,
    },
    /// An ended message and its log (retention).
    Message {
        tenant: String,
        id: String,
    },
    Counter(String),
    Value(String),
    /// A hash, a list or a sorted set ([`crate::Store::expire`]).
    Record {
        kind: Kind,
        name: String,
    },
}

/// Everything the embedded store holds. The durable part is rebuilt from the log on open.
#[derive(Default)]
pub(super) struct State {
    // Durable (rebuilt from the log).
    pub(super) recipients: ByTenant<Recipient>,
    pub(super) messages: ByTenant<StoredMessage>,
    pub(super) events: ByTenant<Vec<Event>>,
    idempotency: ByTenant<Idempotency>,
    /// partition → members `(tenant, message_id)`.
    pub(super) active: HashMap<u32, HashSet<(String, String)>>,
    fences: HashMap<u32, u64>,
    counters: HashMap<String, Counter>,
    /// Expiring values (`WriteOp::PutValue`): bytes and expiry (unix ms).
    pub(super) values: HashMap<String, (Vec<u8>, u64)>,
    pub(super) blobs: HashMap<String, Vec<u8>>,
    /// digest → tenant, for the keys not revoked.
    pub(super) api_keys: HashMap<String, String>,
    /// Ended messages' expiry (unix ms), by `(tenant, message id)`.
    message_expiry: HashMap<(String, String), u64>,
    /// id → record, revoked ones included.
    pub(super) api_key_records: BTreeMap<String, crate::ApiKeyRecord>,
    /// Hashes, lists and sorted sets, with their expiries.
    pub(super) records: Records,
    /// `(expiry unix ms, tiebreak)` → key, for the bounded sweep.
    expiries: BTreeMap<(u64, u64), Expiring>,
    next_expiry: u64,
    // Not durable.
    pub(super) leases: HashMap<u32, Lease>,
    pub(super) singletons: HashMap<String, Lease>,
    // Log bookkeeping.
    /// Records (payloads) not yet taken by the flusher, in order.
    pending: Vec<Vec<u8>>,
    /// Sequence number of the last record appended (records are numbered from 1).
    appended: u64,
    /// A flusher is running; it will take `pending` before it stops.
    flushing: bool,
    /// A flush failed: refuse writes.
    poisoned: Option<String>,
}

pub(super) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub(super) fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MS)
        .clamp(1, MAX_TTL_MS)
}

pub(super) fn deadline(now: Instant, ttl: Duration) -> Instant {
    let ttl = Duration::from_millis(ttl_ms(ttl));
    now.checked_add(ttl).unwrap_or(now)
}

fn idempotency_key(message: &StoredMessage) -> &str {
    message
        .request
        .as_ref()
        .map(|r| r.idempotency_key.as_str())
        .unwrap_or_default()
}

impl State {
    fn track_expiry(&mut self, expires_ms: u64, what: Expiring) {
        self.next_expiry += 1;
        self.expiries.insert((expires_ms, self.next_expiry), what);
    }

    /// Removes up to `budget` expired idempotency keys and counters.
    /// Hashes, lists and sorted sets it removes are logged (in `record`, when `durable`): a
    /// replay must not merge a later write into one of them (see `records`).
    pub(super) fn sweep(
        &mut self,
        now_ms: u64,
        budget: usize,
        durable: bool,
        record: &mut Vec<u8>,
    ) {
        let mut dropped = DropRecords::default();
        for _ in 0..budget {
            let Some(entry) = self.expiries.first_entry() else {
                break;
            };
            let expires_ms = entry.key().0;
            if expires_ms > now_ms {
                break;
            }
            // The key may have been replaced since (a new counter after expiry): only remove
            // the value this index entry was made for.
            match entry.remove() {
                Expiring::Idempotency { tenant, key } => {
                    if get2(&self.idempotency, &tenant, &key)
                        .is_some_and(|i| i.expires_ms == expires_ms)
                    {
                        remove2(&mut self.idempotency, &tenant, &key);
                    }
                }
                Expiring::Counter(key) => {
                    if self
                        .counters
                        .get(&key)
                        .is_some_and(|c| c.expires_ms == expires_ms)
                    {
                        self.counters.remove(&key);
                    }
                }
                Expiring::Value(key) => {
                    if self.values.get(&key).is_some_and(|v| v.1 == expires_ms) {
                        self.values.remove(&key);
                    }
                }
                Expiring::Message { tenant, id } => {
                    let key = (tenant, id);
                    if self.message_expiry.get(&key) == Some(&expires_ms) {
                        self.message_expiry.remove(&key);
                        self.forget_message(&key.0, &key.1);
                    }
                }
                Expiring::Record { kind, name } => {
                    if self.records.expires_ms(kind, &name) == Some(expires_ms) {
                        self.records.remove(kind, &name);
                        match kind {
                            Kind::Hash => dropped.hashes.push(name),
                            Kind::List => dropped.lists.push(name),
                            Kind::Set => dropped.sets.push(name),
                        }
                    }
                }
            }
        }
        if durable && dropped != DropRecords::default() {
            let (_, encoded) = encode_entry(Entry::DropRecords(dropped));
            record.extend_from_slice(&encoded);
        }
    }

    /// Redacts `recipient_id`'s messages in `tenant`; returns how many.
    pub(super) fn redact(&mut self, tenant: &str, recipient_id: &str) -> u64 {
        let Some(messages) = self.messages.get_mut(tenant) else {
            return 0;
        };
        let mut redacted = 0;
        for (id, message) in messages.iter_mut() {
            if message
                .request
                .as_ref()
                .is_none_or(|r| r.recipient_id != recipient_id)
            {
                continue;
            }
            crate::redact_message(message);
            if let Some(log) = self.events.get_mut(tenant).and_then(|m| m.get_mut(id)) {
                for event in log {
                    crate::redact_event(event);
                }
            }
            redacted += 1;
        }
        redacted
    }

    /// Whether an ended message is past its retention at `now_ms`.
    pub(super) fn message_expired(&self, tenant: &str, id: &str, now_ms: u64) -> bool {
        self.message_expiry
            .get(&(tenant.to_owned(), id.to_owned()))
            .is_some_and(|expires| *expires <= now_ms)
    }

    /// Drops a message and its log (retention).
    fn forget_message(&mut self, tenant: &str, id: &str) {
        if let Some(messages) = self.messages.get_mut(tenant) {
            messages.remove(id);
            if messages.is_empty() {
                self.messages.remove(tenant);
            }
        }
        if let Some(logs) = self.events.get_mut(tenant) {
            logs.remove(id);
            if logs.is_empty() {
                self.events.remove(tenant);
            }
        }
    }

    /// Applies one effect unconditionally (checks happen before, in [`State::write_op`]).
    /// Replay goes through here too, so memory after a restart equals memory before it.
    pub(super) fn apply(&mut self, entry: Entry, now_ms: u64) {
        match entry {
            Entry::PutRecipient(PutRecipient {
                tenant,
                recipient,
                index_partition,
            }) => {
                if let Some(recipient) = recipient {
                    let id = recipient.id.clone();
                    if let Some(partition) = index_partition {
                        self.records.index_recipient(&tenant, partition, id.clone());
                    }
                    insert2(&mut self.recipients, &tenant, &id, recipient);
                }
            }
            Entry::EraseRecipient(EraseRecipient {
                tenant,
                recipient_id,
                index_partition,
            }) => {
                if let Some(partition) = index_partition {
                    self.records
                        .unindex_recipient(&tenant, partition, &recipient_id);
                }
                remove2(&mut self.recipients, &tenant, &recipient_id);
            }
            Entry::ExpireRecords(ExpireRecords {
                hashes,
                lists,
                sets,
                expires_unix_ms,
            }) => {
                // Kept even when already past (on replay): a later entry of the log may still
                // write into it, as that write did before it expired; the sweep drops it.
                let named = [(Kind::Hash, hashes), (Kind::List, lists), (Kind::Set, sets)];
                for (kind, names) in named {
                    for name in names {
                        if self.records.set_expiry(kind, &name, expires_unix_ms) {
                            self.track_expiry(expires_unix_ms, Expiring::Record { kind, name });
                        }
                    }
                }
            }
            entry @ (Entry::SetFields(_)
            | Entry::PushRecords(_)
            | Entry::AddMembers(_)
            | Entry::RemoveMembers(_)
            | Entry::DropRecords(_)) => self.records.apply(entry),
            Entry::Accept(Accept {
                message,
                accepted,
                partition,
                idempotency_expires_unix_ms,
            }) => {
                let Some(message) = message else { return };
                let key = idempotency_key(&message);
                if !key.is_empty() && idempotency_expires_unix_ms > now_ms {
                    let record = Idempotency {
                        message_id: message.message_id.clone(),
                        payload_hash: message.payload_hash,
                        expires_ms: idempotency_expires_unix_ms,
                    };
                    let key = key.to_owned();
                    insert2(&mut self.idempotency, &message.tenant, &key, record);
                    self.track_expiry(
                        idempotency_expires_unix_ms,
                        Expiring::Idempotency {
                            tenant: message.tenant.clone(),
                            key,
                        },
                    );
                }
                let (tenant, id) = (message.tenant.clone(), message.message_id.clone());
                if let Some(accepted) = accepted {
                    match self.events.get_mut(&tenant).and_then(|m| m.get_mut(&id)) {
                        Some(log) => log.push(accepted),
                        None => insert2(&mut self.events, &tenant, &id, vec![accepted]),
                    }
                }
                insert2(&mut self.messages, &tenant, &id, message);
                self.active
                    .entry(partition)
                    .or_default()
                    .insert((tenant, id));
            }
            Entry::Append(Append {
                tenant,
                message_id,
                events,
                terminal,
                partition,
                expires_unix_ms,
            }) => {
                if terminal && let Some(set) = self.active.get_mut(&partition) {
                    set.remove(&(tenant.clone(), message_id.clone()));
                    if set.is_empty() {
                        self.active.remove(&partition);
                    }
                }
                if expires_unix_ms != 0 {
                    let key = (tenant.clone(), message_id.clone());
                    // The first retention holds: a late append does not extend it.
                    let expires = *self.message_expiry.entry(key).or_insert(expires_unix_ms);
                    if expires <= now_ms {
                        self.message_expiry
                            .remove(&(tenant.clone(), message_id.clone()));
                        self.forget_message(&tenant, &message_id);
                        return;
                    }
                    if expires == expires_unix_ms {
                        self.track_expiry(
                            expires,
                            Expiring::Message {
                                tenant: tenant.clone(),
                                id: message_id.clone(),
                            },
                        );
                    }
                }
                if !events.is_empty() {
                    match self
                        .events
                        .get_mut(&tenant)
                        .and_then(|m| m.get_mut(&message_id))
                    {
                        Some(log) => log.extend(events),
                        None => insert2(&mut self.events, &tenant, &message_id, events),
                    }
                }
            }
            Entry::SetCounter(SetCounter {
                key,
                value,
                expires_unix_ms,
            }) => {
                if expires_unix_ms <= now_ms {
                    self.counters.remove(&key);
                    return;
                }
                let fresh = self
                    .counters
                    .get(&key)
                    .is_none_or(|c| c.expires_ms != expires_unix_ms);
                if fresh {
                    self.track_expiry(expires_unix_ms, Expiring::Counter(key.clone()));
                }
                self.counters.insert(
                    key,
                    Counter {
                        value,
                        expires_ms: expires_unix_ms,
                    },
                );
            }
            Entry::PutValue(PutValue {
                key,
                value,
                expires_unix_ms,
            }) => {
                if expires_unix_ms <= now_ms {
                    self.values.remove(&key);
                    return;
                }
                self.track_expiry(expires_unix_ms, Expiring::Value(key.clone()));
                self.values.insert(key, (value, expires_unix_ms));
            }
            Entry::Redact(Redact {
                tenant,
                recipient_id,
            }) => {
                self.redact(&tenant, &recipient_id);
            }
            Entry::DeleteValues(DeleteValues { keys }) => {
                for key in keys {
                    self.values.remove(&key);
                }
            }
            Entry::SetFence(SetFence { partition, epoch }) => {
                let stored = self.fences.entry(partition).or_default();
                *stored = (*stored).max(epoch);
            }
            Entry::PutBlob(PutBlob { name, value }) => {
                self.blobs.insert(name, value);
            }
            Entry::PutApiKey(PutApiKey {
                key_sha256_hex,
                tenant,
                record,
            }) => match record {
                Some(record) if record.is_revoked() => {
                    self.api_keys.remove(&record.key_sha256_hex);
                    self.api_key_records.insert(record.id.clone(), record);
                }
                Some(record) => {
                    self.api_keys.insert(key_sha256_hex, tenant);
                    self.api_key_records.insert(record.id.clone(), record);
                }
                None => {
                    self.api_keys.insert(key_sha256_hex, tenant);
                }
            },
            Entry::PutMessage(PutMessage {
                message,
                active_partition,
            }) => {
                let Some(message) = message else { return };
                let (tenant, id) = (message.tenant.clone(), message.message_id.clone());
                insert2(&mut self.messages, &tenant, &id, message);
                if let Some(partition) = active_partition {
                    self.active
                        .entry(partition)
                        .or_default()
                        .insert((tenant, id));
                }
            }
            Entry::PutIdempotency(PutIdempotency {
                tenant,
                key,
                message_id,
                payload_hash,
                expires_unix_ms,
            }) => {
                if expires_unix_ms <= now_ms {
                    return;
                }
                let record = Idempotency {
                    message_id,
                    payload_hash,
                    expires_ms: expires_unix_ms,
                };
                insert2(&mut self.idempotency, &tenant, &key, record);
                self.track_expiry(expires_unix_ms, Expiring::Idempotency { tenant, key });
            }
        }
    }

    pub(super) fn stored_epoch(&self, partition: PartitionId) -> u64 {
        self.fences.get(&partition.0).copied().unwrap_or(0)
    }

    /// Refuses writes once a flush failed (memory and disk have diverged).
    pub(super) fn check_poisoned(&self) -> Result<()> {
        match &self.poisoned {
            Some(reason) => Err(Error::Io(std::io::Error::other(format!(
                "store refuses writes after a failed log write: {reason}"
            )))),
            None => Ok(()),
        }
    }

    /// Marks the state as diverged from the disk: every later write is refused.
    pub(super) fn poison(&mut self, reason: String) {
        self.poisoned = Some(reason);
    }

    /// The flusher's next batch: every queued record and the sequence number of the last.
    /// `None` when nothing is queued; the flusher then stops (the next append starts one).
    pub(super) fn take_pending(&mut self) -> Option<(Vec<Vec<u8>>, u64)> {
        if self.pending.is_empty() {
            self.flushing = false;
            return None;
        }
        Some((std::mem::take(&mut self.pending), self.appended))
    }

    /// Queues `record` for the flusher. Returns the sequence number the caller must wait for
    /// (the last record appended, even when this call appended none: an op that saw another
    /// call's effect must not be acked before that effect is durable) and whether the caller
    /// must start the flusher.
    pub(super) fn append(&mut self, record: Vec<u8>) -> (u64, bool) {
        if record.is_empty() {
            return (self.appended, false);
        }
        self.pending.push(record);
        self.appended += 1;
        let start_flusher = !self.flushing;
        self.flushing = true;
        (self.appended, start_flusher)
    }
}
