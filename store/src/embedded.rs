//! # store::embedded: the single-process backend (`herald up`)
//!
//! Owns an in-memory copy of the whole state (maps behind one `parking_lot` mutex whose
//! critical sections only move already-built values in and out) and, with a data directory, an
//! append-only log that makes it durable. Same semantics as the Redis backend (the shared suite
//! in `store::tests` checks both), including fencing, idempotency and TTLs. TTLs are checked
//! lazily against the clock when a key is read, and expired idempotency keys and counters are
//! swept a few at a time on every write, so memory does not grow with expired keys.
//!
//! It must never be opened by two processes on one data directory (nothing enforces this:
//! the second would corrupt the log), and never serve a cluster: leases here are only in this
//! process's memory.
//!
//! ## What survives a restart (with a data directory)
//! Kept: recipients (and erasures), messages, their event logs, the active (non-terminal) sets
//! of partitions, idempotency keys and counters until their expiry (expiries are wall-clock
//! times, so they keep running while the process is down), partition fencing epochs, blobs
//! and API keys. Dropped: partition leases and singleton leases; a restarted process
//! re-acquires them, and the kept fencing epochs still reject writers at older epochs.
//! Without a data directory nothing survives.
//!
//! ## The log
//! File `herald-store.log` in the data directory. Each record is
//! `[u32 LE payload length][u32 LE FNV-1a-32 of the payload][payload]`, the payload a
//! [`LogRecord`] (prost) of the *effects* of one call (ops that were fenced or were duplicates
//! leave no trace; a counter increment is logged as its resulting value). Records are appended
//! in the order the calls changed memory. Group commit: calls queue their records and one
//! blocking flusher writes everything queued with one `write` + `fdatasync`; a call returns
//! once the flusher has synced its record (and every record before it, so a duplicate's ack
//! never gets ahead of the original's). On open the log is replayed; a torn final record (short,
//! bad checksum at the end, or a zero-filled tail) is cut off; a bad record followed by good
//! data is an error ([`Error::Corrupt`]) rather than silent loss. When the log is more than
//! twice the size of a snapshot of the state, it is rewritten as that snapshot (temp file,
//! fsync, rename) at open. If a flush fails, the store refuses every later write (memory and
//! disk have diverged); restarting replays what reached the disk.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herald_proto::partition::fnv1a32;
use herald_proto::v1::{Event, Recipient, StoredMessage};
use herald_proto::{Epoch, MessageId, NodeId, PartitionId, TenantId};
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::watch;

use super::{Error, Fence, FencedOp, MessageRecord, Result, Store, WriteOp, WriteOutcome};

/// Name of the log file inside the data directory.
pub const LOG_FILE: &str = "herald-store.log";
const HEADER_LEN: usize = 8;
/// Larger records are treated as damage: no call writes that much at once.
const MAX_RECORD_LEN: usize = 256 << 20;
/// Logs smaller than this are never compacted (not worth a rewrite at every start).
const COMPACT_MIN_BYTES: u64 = 8 << 20;
/// Snapshot records are cut at about this size.
const SNAPSHOT_RECORD_BYTES: usize = 1 << 20;
/// Expired keys removed per write call, so a sweep never makes a long critical section.
const SWEEP_BUDGET: usize = 64;
/// Longest ttl honoured (~35 years), as in the Redis backend.
const MAX_TTL_MS: u64 = 1 << 40;

/// The log's record format. Public for tools that inspect a data directory.
pub mod log_format {
    use herald_proto::v1::{Event, Recipient, StoredMessage};

    /// One log record: the effects of one call, applied in order on replay.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogRecord {
        #[prost(message, repeated, tag = "1")]
        pub entries: Vec<LogEntry>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LogEntry {
        #[prost(oneof = "Entry", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
        pub entry: Option<Entry>,
    }

    #[derive(Clone, PartialEq, prost::Oneof)]
    #[expect(
        clippy::large_enum_variant,
        reason = "log entries live briefly, one at a time; boxing the message would add an allocation per accept"
    )]
    pub enum Entry {
        #[prost(message, tag = "1")]
        PutRecipient(PutRecipient),
        #[prost(message, tag = "2")]
        EraseRecipient(EraseRecipient),
        #[prost(message, tag = "3")]
        Accept(Accept),
        #[prost(message, tag = "4")]
        Append(Append),
        #[prost(message, tag = "5")]
        SetCounter(SetCounter),
        #[prost(message, tag = "6")]
        SetFence(SetFence),
        #[prost(message, tag = "7")]
        PutBlob(PutBlob),
        #[prost(message, tag = "8")]
        PutApiKey(PutApiKey),
        /// Snapshot only: a message without its events.
        #[prost(message, tag = "9")]
        PutMessage(PutMessage),
        /// Snapshot only: a live idempotency key.
        #[prost(message, tag = "10")]
        PutIdempotency(PutIdempotency),
        #[prost(message, tag = "11")]
        PutValue(PutValue),
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutRecipient {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(message, optional, tag = "2")]
        pub recipient: Option<Recipient>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct EraseRecipient {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub recipient_id: String,
    }

    /// An accepted message: its idempotency key (from the request) until the expiry, the
    /// message, its `accepted` event, and membership of the partition's active set.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Accept {
        #[prost(message, optional, tag = "1")]
        pub message: Option<StoredMessage>,
        #[prost(message, optional, tag = "2")]
        pub accepted: Option<Event>,
        #[prost(uint32, tag = "3")]
        pub partition: u32,
        #[prost(uint64, tag = "4")]
        pub idempotency_expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Append {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub message_id: String,
        #[prost(message, repeated, tag = "3")]
        pub events: Vec<Event>,
        /// Removes the message from `partition`'s active set.
        #[prost(bool, tag = "4")]
        pub terminal: bool,
        #[prost(uint32, tag = "5")]
        pub partition: u32,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetCounter {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(int64, tag = "2")]
        pub value: i64,
        #[prost(uint64, tag = "3")]
        pub expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct SetFence {
        #[prost(uint32, tag = "1")]
        pub partition: u32,
        #[prost(uint64, tag = "2")]
        pub epoch: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutBlob {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutApiKey {
        #[prost(string, tag = "1")]
        pub key_sha256_hex: String,
        #[prost(string, tag = "2")]
        pub tenant: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutMessage {
        #[prost(message, optional, tag = "1")]
        pub message: Option<StoredMessage>,
        /// The partition whose active set holds the message (none: terminal).
        #[prost(uint32, optional, tag = "2")]
        pub active_partition: Option<u32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutIdempotency {
        #[prost(string, tag = "1")]
        pub tenant: String,
        #[prost(string, tag = "2")]
        pub key: String,
        #[prost(string, tag = "3")]
        pub message_id: String,
        #[prost(fixed64, tag = "4")]
        pub payload_hash: u64,
        #[prost(uint64, tag = "5")]
        pub expires_unix_ms: u64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PutValue {
        #[prost(string, tag = "1")]
        pub key: String,
        #[prost(bytes = "vec", tag = "2")]
        pub value: Vec<u8>,
        #[prost(uint64, tag = "3")]
        pub expires_unix_ms: u64,
    }
}

use log_format::{
    Accept, Append, Entry, EraseRecipient, LogEntry, LogRecord, PutApiKey, PutBlob, PutIdempotency,
    PutMessage, PutRecipient, PutValue, SetCounter, SetFence,
};

/// The in-process [`Store`]. Cheap to share behind an `Arc`.
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedStore")
            .field("log", &self.inner.log.as_ref().map(|log| &log.path))
            .finish_non_exhaustive()
    }
}

struct Inner {
    state: Mutex<State>,
    log: Option<Log>,
}

struct Log {
    path: PathBuf,
    /// Only the (single) flusher writes; the mutex just makes that visible to the compiler.
    file: Mutex<File>,
    status: watch::Sender<LogStatus>,
}

#[derive(Clone, Debug, Default)]
struct LogStatus {
    /// Sequence number of the last record synced to disk.
    durable: u64,
    /// Set once a flush failed; no record after it will ever be durable.
    failed: Option<String>,
}

type ByTenant<V> = HashMap<String, HashMap<String, V>>;

fn get2<'a, V>(map: &'a ByTenant<V>, tenant: &str, id: &str) -> Option<&'a V> {
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

struct Lease {
    holder: String,
    until: Instant,
}

enum Expiring {
    Idempotency { tenant: String, key: String },
    Counter(String),
    Value(String),
}

#[derive(Default)]
struct State {
    // Durable (rebuilt from the log).
    recipients: ByTenant<Recipient>,
    messages: ByTenant<StoredMessage>,
    events: ByTenant<Vec<Event>>,
    idempotency: ByTenant<Idempotency>,
    /// partition → members `(tenant, message_id)`.
    active: HashMap<u32, HashSet<(String, String)>>,
    fences: HashMap<u32, u64>,
    counters: HashMap<String, Counter>,
    /// Expiring values (`WriteOp::PutValue`): bytes and expiry (unix ms).
    values: HashMap<String, (Vec<u8>, u64)>,
    blobs: HashMap<String, Vec<u8>>,
    api_keys: HashMap<String, String>,
    /// `(expiry unix ms, tiebreak)` → key, for the bounded sweep.
    expiries: BTreeMap<(u64, u64), Expiring>,
    next_expiry: u64,
    // Not durable.
    leases: HashMap<u32, Lease>,
    singletons: HashMap<String, Lease>,
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

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MS)
        .clamp(1, MAX_TTL_MS)
}

fn deadline(now: Instant, ttl: Duration) -> Instant {
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
    fn sweep(&mut self, now_ms: u64, budget: usize) {
        for _ in 0..budget {
            let Some(entry) = self.expiries.first_entry() else {
                return;
            };
            let expires_ms = entry.key().0;
            if expires_ms > now_ms {
                return;
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
            }
        }
    }

    /// Applies one effect unconditionally (checks happen before, in [`State::write_op`]).
    /// Replay goes through here too, so memory after a restart equals memory before it.
    fn apply(&mut self, entry: Entry, now_ms: u64) {
        match entry {
            Entry::PutRecipient(PutRecipient { tenant, recipient }) => {
                if let Some(recipient) = recipient {
                    let id = recipient.id.clone();
                    insert2(&mut self.recipients, &tenant, &id, recipient);
                }
            }
            Entry::EraseRecipient(EraseRecipient {
                tenant,
                recipient_id,
            }) => {
                remove2(&mut self.recipients, &tenant, &recipient_id);
            }
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
            }) => {
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
                if terminal && let Some(set) = self.active.get_mut(&partition) {
                    set.remove(&(tenant, message_id));
                    if set.is_empty() {
                        self.active.remove(&partition);
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
            }) => {
                self.api_keys.insert(key_sha256_hex, tenant);
            }
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

    fn stored_epoch(&self, partition: PartitionId) -> u64 {
        self.fences.get(&partition.0).copied().unwrap_or(0)
    }

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

    /// Checks and applies one op; appends its effect to `record` (when durable).
    fn write_op(
        &mut self,
        op: Prepared,
        now_ms: u64,
        durable: bool,
        record: &mut Vec<u8>,
    ) -> WriteOutcome {
        let stored = self.stored_epoch(op.fence.partition);
        if stored > op.fence.epoch.0 {
            return WriteOutcome::Fenced {
                stored: Epoch(stored),
            };
        }
        if let PreparedKind::Effect {
            entry: Entry::Append(append),
            ..
        } = &op.kind
            && let Some(conflict) = self.seq_conflict(append)
        {
            return conflict;
        }
        match op.kind {
            PreparedKind::Effect { entry, encoded } => {
                let outcome = match &entry {
                    Entry::Accept(accept) => {
                        if let Some(outcome) = self.prior_acceptance(accept, now_ms) {
                            return outcome;
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
                    _ => WriteOutcome::Done,
                };
                record.extend_from_slice(&encoded);
                self.apply(entry, now_ms);
                outcome
            }
            PreparedKind::Counter { key, delta, ttl_ms } => {
                let (value, expires_unix_ms) = match self.counters.get(&key) {
                    Some(c) if c.expires_ms > now_ms => {
                        (c.value.saturating_add(delta), c.expires_ms)
                    }
                    _ => (delta, now_ms.saturating_add(ttl_ms)),
                };
                let entry = SetCounter {
                    key,
                    value,
                    expires_unix_ms,
                };
                let entry = Entry::SetCounter(entry);
                let entry = if durable {
                    let (entry, encoded) = encode_entry(entry);
                    record.extend_from_slice(&encoded);
                    entry
                } else {
                    entry
                };
                self.apply(entry, now_ms);
                WriteOutcome::Counter(value)
            }
        }
    }

    /// Queues `record` for the flusher. Returns the sequence number the caller must wait for
    /// (the last record appended, even when this call appended none: an op that saw another
    /// call's effect must not be acked before that effect is durable) and whether the caller
    /// must start the flusher.
    fn append(&mut self, record: Vec<u8>) -> (u64, bool) {
        if record.is_empty() {
            return (self.appended, false);
        }
        self.pending.push(record);
        self.appended += 1;
        let start_flusher = !self.flushing;
        self.flushing = true;
        (self.appended, start_flusher)
    }

    /// The whole durable state as log records (compaction).
    fn snapshot(&self, now_ms: u64) -> Vec<Vec<u8>> {
        let mut entries: Vec<Entry> = Vec::new();
        for (&partition, &epoch) in &self.fences {
            entries.push(Entry::SetFence(SetFence { partition, epoch }));
        }
        for (tenant, recipients) in &self.recipients {
            for recipient in recipients.values() {
                entries.push(Entry::PutRecipient(PutRecipient {
                    tenant: tenant.clone(),
                    recipient: Some(recipient.clone()),
                }));
            }
        }
        let mut active_in: HashMap<(&str, &str), u32> = HashMap::new();
        for (&partition, members) in &self.active {
            for (tenant, id) in members {
                active_in.insert((tenant.as_str(), id.as_str()), partition);
            }
        }
        for (tenant, messages) in &self.messages {
            for (id, message) in messages {
                entries.push(Entry::PutMessage(PutMessage {
                    message: Some(message.clone()),
                    active_partition: active_in.get(&(tenant.as_str(), id.as_str())).copied(),
                }));
            }
        }
        for (tenant, logs) in &self.events {
            for (id, events) in logs {
                entries.push(Entry::Append(Append {
                    tenant: tenant.clone(),
                    message_id: id.clone(),
                    events: events.clone(),
                    terminal: false,
                    partition: 0,
                }));
            }
        }
        for (tenant, keys) in &self.idempotency {
            for (key, record) in keys {
                if record.expires_ms > now_ms {
                    entries.push(Entry::PutIdempotency(PutIdempotency {
                        tenant: tenant.clone(),
                        key: key.clone(),
                        message_id: record.message_id.clone(),
                        payload_hash: record.payload_hash,
                        expires_unix_ms: record.expires_ms,
                    }));
                }
            }
        }
        for (key, counter) in &self.counters {
            if counter.expires_ms > now_ms {
                entries.push(Entry::SetCounter(SetCounter {
                    key: key.clone(),
                    value: counter.value,
                    expires_unix_ms: counter.expires_ms,
                }));
            }
        }
        for (key, (value, expires_unix_ms)) in &self.values {
            if *expires_unix_ms > now_ms {
                entries.push(Entry::PutValue(PutValue {
                    key: key.clone(),
                    value: value.clone(),
                    expires_unix_ms: *expires_unix_ms,
                }));
            }
        }
        for (name, value) in &self.blobs {
            entries.push(Entry::PutBlob(PutBlob {
                name: name.clone(),
                value: value.clone(),
            }));
        }
        for (key_sha256_hex, tenant) in &self.api_keys {
            entries.push(Entry::PutApiKey(PutApiKey {
                key_sha256_hex: key_sha256_hex.clone(),
                tenant: tenant.clone(),
            }));
        }
        let mut records = Vec::new();
        let mut record = Vec::new();
        for entry in entries {
            let (_, encoded) = encode_entry(entry);
            record.extend_from_slice(&encoded);
            if record.len() >= SNAPSHOT_RECORD_BYTES {
                records.push(std::mem::take(&mut record));
            }
        }
        if !record.is_empty() {
            records.push(record);
        }
        records
    }
}

/// Encodes one effect as a one-entry [`LogRecord`] and hands the entry back. Encoded records
/// concatenate into a valid record (protobuf merges repeated fields), so a call's record is
/// the concatenation of its applied ops' encodings: built outside the lock, copied inside.
fn encode_entry(entry: Entry) -> (Entry, Vec<u8>) {
    let mut record = LogRecord {
        entries: vec![LogEntry { entry: Some(entry) }],
    };
    let encoded = record.encode_to_vec();
    match record.entries.pop().and_then(|e| e.entry) {
        Some(entry) => (entry, encoded),
        // We just put it there.
        None => unreachable!("encode_entry lost its entry"),
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "short-lived, and nearly every op is an Effect: boxing would only add an allocation"
)]
enum PreparedKind {
    /// An op whose effect is known before the lock (`encoded` is empty without a log).
    Effect { entry: Entry, encoded: Vec<u8> },
    /// A counter's effect depends on the stored value.
    Counter {
        key: String,
        delta: i64,
        ttl_ms: u64,
    },
}

struct Prepared {
    fence: Fence,
    kind: PreparedKind,
    /// An accept's guarded ops (see [`WriteOp::AcceptMessage`]); 0 for every other op.
    guards: usize,
}

impl Prepared {
    /// The most this op can add to its call's log record.
    fn record_len_bound(&self) -> usize {
        match &self.kind {
            PreparedKind::Effect { encoded, .. } => encoded.len(),
            // A SetCounter entry: the key plus a few varints and tags.
            PreparedKind::Counter { key, .. } => key.len() + 48,
        }
    }
}

/// Turns an op into its effect (and its log encoding) outside the lock.
fn prepare(op: FencedOp, now_ms: u64, durable: bool) -> Prepared {
    let FencedOp { fence, op } = op;
    let mut guards = 0;
    let entry = match op {
        WriteOp::PutRecipient { tenant, recipient } => Entry::PutRecipient(PutRecipient {
            tenant: tenant.0,
            recipient: Some(recipient),
        }),
        WriteOp::EraseRecipient {
            tenant,
            recipient_id,
        } => Entry::EraseRecipient(EraseRecipient {
            tenant: tenant.0,
            recipient_id,
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
        } => Entry::Append(Append {
            tenant: tenant.0,
            message_id: message_id.0,
            events,
            terminal,
            partition: fence.partition.0,
        }),
        WriteOp::PutValue { key, value, ttl } => Entry::PutValue(PutValue {
            key,
            value,
            expires_unix_ms: now_ms.saturating_add(ttl_ms(ttl)),
        }),
        WriteOp::IncrCounter { key, delta, ttl } => {
            return Prepared {
                fence,
                kind: PreparedKind::Counter {
                    key,
                    delta,
                    ttl_ms: ttl_ms(ttl),
                },
                guards: 0,
            };
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
    }
}

/// Appends one framed record to `out`.
fn frame(payload: &[u8], out: &mut Vec<u8>) {
    // Callers refuse records over MAX_RECORD_LEN (see `check_record_len`), so this never
    // saturates; if it did, replay would see damage rather than a wrong length.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&fnv1a32(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    let word: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(word))
}

/// Replays `bytes` into `state`. Returns the length of the good prefix (shorter than `bytes`
/// when a torn final record was found).
fn replay(bytes: &[u8], state: &mut State, now_ms: u64, path: &Path) -> Result<usize> {
    let corrupt = |at: usize, reason: String| Error::Corrupt {
        key: format!("{}@{at}", path.display()),
        reason,
    };
    let mut at = 0;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn_tail = || rest.iter().all(|b| *b == 0);
        let (Some(len), Some(sum)) = (read_u32(bytes, at), read_u32(bytes, at + 4)) else {
            return Ok(at); // a header cut short: torn
        };
        let len = len as usize;
        let end = at + HEADER_LEN + len;
        if end > bytes.len() {
            return Ok(at); // a payload cut short: torn
        }
        let payload = &bytes[at + HEADER_LEN..end];
        if len == 0 || len > MAX_RECORD_LEN || fnv1a32(payload) != sum {
            if end == bytes.len() || torn_tail() {
                return Ok(at);
            }
            return Err(corrupt(at, "bad record followed by more data".to_owned()));
        }
        let record = LogRecord::decode(payload).map_err(|e| corrupt(at, e.to_string()))?;
        for entry in record.entries.into_iter().filter_map(|e| e.entry) {
            state.apply(entry, now_ms);
        }
        at = end;
    }
    Ok(at)
}

/// fsyncs a directory so a created or renamed file's name is durable. Best effort: some
/// platforms cannot open directories; the data itself is synced separately.
fn sync_dir(dir: &Path) {
    if let Ok(dir) = File::open(dir) {
        let _ = dir.sync_all();
    }
}

impl EmbeddedStore {
    /// Opens the store. With `data_dir` (created when missing), replays its log and appends to
    /// it; without, the store lives in memory only.
    pub fn open(data_dir: Option<&Path>) -> Result<EmbeddedStore> {
        let Some(dir) = data_dir else {
            return Ok(EmbeddedStore {
                inner: Arc::new(Inner {
                    state: Mutex::new(State::default()),
                    log: None,
                }),
            });
        };
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e.into()),
        };
        let now_ms = unix_ms();
        let mut state = State::default();
        let good = replay(&bytes, &mut state, now_ms, &path)?;
        let log_len = bytes.len();
        drop(bytes);

        let mut compacted = false;
        if log_len as u64 >= COMPACT_MIN_BYTES {
            let records = state.snapshot(now_ms);
            let mut snapshot = Vec::new();
            for record in &records {
                frame(record, &mut snapshot);
            }
            if snapshot.len() * 2 < good {
                let tmp = dir.join(format!("{LOG_FILE}.tmp"));
                let mut file = File::create(&tmp)?;
                file.write_all(&snapshot)?;
                file.sync_all()?;
                drop(file);
                std::fs::rename(&tmp, &path)?;
                sync_dir(dir);
                compacted = true;
            }
        }
        if !compacted && good < log_len {
            // Cut the torn tail, so new records follow the last good one.
            let file = OpenOptions::new().write(true).open(&path)?;
            file.set_len(good as u64)?;
            file.sync_all()?;
        }
        let existed = path.exists();
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        if !existed {
            sync_dir(dir);
        }
        let (status, _) = watch::channel(LogStatus::default());
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                log: Some(Log {
                    path,
                    file: Mutex::new(file),
                    status,
                }),
            }),
        })
    }

    fn durable(&self) -> bool {
        self.inner.log.is_some()
    }

    /// Applies effects that need no check (blobs, API keys) and waits until they are durable.
    async fn commit_entries(&self, entries: Vec<Entry>) -> Result<()> {
        let now_ms = unix_ms();
        let mut encoded = Vec::new();
        let mut ready = Vec::with_capacity(entries.len());
        for entry in entries {
            if self.durable() {
                let (entry, bytes) = encode_entry(entry);
                encoded.extend_from_slice(&bytes);
                ready.push(entry);
            } else {
                ready.push(entry);
            }
        }
        check_record_len(encoded.len())?;
        let (seq, start_flusher) = {
            let mut state = self.inner.state.lock();
            check_poisoned(&state)?;
            for entry in ready {
                state.apply(entry, now_ms);
            }
            state.append(encoded)
        };
        self.after_append(seq, start_flusher).await
    }

    /// Starts the flusher when asked to, then waits until record `seq` is durable.
    async fn after_append(&self, seq: u64, start_flusher: bool) -> Result<()> {
        let Some(log) = &self.inner.log else {
            return Ok(());
        };
        if start_flusher {
            let inner = self.inner.clone();
            // Spawned, not run by the caller: a caller that gives up cannot strand the flush.
            tokio::task::spawn_blocking(move || inner.flush_loop());
        }
        if seq == 0 {
            return Ok(());
        }
        let mut rx = log.status.subscribe();
        let status = rx
            .wait_for(|s| s.durable >= seq || s.failed.is_some())
            .await
            .map_err(|_| Error::Closed)?;
        if status.durable >= seq {
            Ok(())
        } else {
            Err(Error::Io(std::io::Error::other(format!(
                "store log write failed: {}",
                status.failed.as_deref().unwrap_or("unknown")
            ))))
        }
    }
}

/// Refuses a call whose log record could exceed [`MAX_RECORD_LEN`] *before* it changes
/// anything: replay treats larger records as damage.
fn check_record_len(upper_bound: usize) -> Result<()> {
    if upper_bound > MAX_RECORD_LEN {
        return Err(Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!(
                "a write of about {upper_bound} bytes exceeds the store log's record limit of \
                 {MAX_RECORD_LEN} bytes; split it"
            ),
        )));
    }
    Ok(())
}

fn check_poisoned(state: &State) -> Result<()> {
    match &state.poisoned {
        Some(reason) => Err(Error::Io(std::io::Error::other(format!(
            "store refuses writes after a failed log write: {reason}"
        )))),
        None => Ok(()),
    }
}

impl Inner {
    /// Writes and syncs queued records until none are left (runs on a blocking thread; at most
    /// one at a time, guarded by `State::flushing`).
    fn flush_loop(&self) {
        let Some(log) = &self.log else { return };
        loop {
            let (records, upto) = {
                let mut state = self.state.lock();
                if state.pending.is_empty() {
                    state.flushing = false;
                    return;
                }
                (std::mem::take(&mut state.pending), state.appended)
            };
            let mut out = Vec::with_capacity(records.iter().map(|r| r.len() + HEADER_LEN).sum());
            for record in &records {
                frame(record, &mut out);
            }
            let written = {
                let mut file = log.file.lock();
                file.write_all(&out).and_then(|()| file.sync_data())
            };
            match written {
                Ok(()) => log.status.send_modify(|s| s.durable = upto),
                Err(e) => {
                    let reason = format!("{}: {e}", log.path.display());
                    tracing::error!(%reason, "embedded store: log write failed; refusing writes");
                    // `flushing` stays set: nothing more is written after a failed record.
                    self.state.lock().poisoned = Some(reason.clone());
                    log.status.send_modify(|s| s.failed = Some(reason));
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn write(&self, ops: Vec<FencedOp>) -> Result<Vec<WriteOutcome>> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let durable = self.durable();
        let now_ms = unix_ms();
        let prepared: Vec<Prepared> = ops
            .into_iter()
            .map(|op| prepare(op, now_ms, durable))
            .collect();
        if durable {
            check_record_len(prepared.iter().map(Prepared::record_len_bound).sum())?;
        }
        let (outcomes, seq, start_flusher) = {
            let mut state = self.inner.state.lock();
            check_poisoned(&state)?;
            state.sweep(now_ms, SWEEP_BUDGET);
            let mut record = Vec::new();
            let mut skipping = 0;
            let mut outcomes: Vec<WriteOutcome> = Vec::with_capacity(prepared.len());
            let mut ops = prepared.into_iter().peekable();
            while let Some(op) = ops.next() {
                if skipping > 0 {
                    skipping -= 1;
                    outcomes.push(WriteOutcome::Skipped);
                    continue;
                }
                // A counter directly before an append under its fence counts only with it.
                if matches!(op.kind, PreparedKind::Counter { .. })
                    && let Some(next) = ops.peek()
                    && next.fence == op.fence
                    && let PreparedKind::Effect {
                        entry: Entry::Append(append),
                        ..
                    } = &next.kind
                    && let Some(conflict) = state.seq_conflict(append)
                {
                    outcomes.push(conflict.clone());
                    outcomes.push(conflict);
                    ops.next();
                    continue;
                }
                let guards = op.guards;
                let outcome = state.write_op(op, now_ms, durable, &mut record);
                if !matches!(
                    outcome,
                    WriteOutcome::Accepted {
                        duplicate: false,
                        ..
                    }
                ) {
                    skipping = guards;
                }
                outcomes.push(outcome);
            }
            let (seq, start_flusher) = state.append(record);
            (outcomes, seq, start_flusher)
        };
        self.after_append(seq, start_flusher).await?;
        Ok(outcomes)
    }

    async fn get_recipient(
        &self,
        tenant: &TenantId,
        recipient_id: &str,
    ) -> Result<Option<Recipient>> {
        let state = self.inner.state.lock();
        Ok(get2(&state.recipients, tenant.as_str(), recipient_id).cloned())
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Option<MessageRecord>> {
        let state = self.inner.state.lock();
        let Some(message) = get2(&state.messages, tenant.as_str(), message_id.as_str()) else {
            return Ok(None);
        };
        Ok(Some(MessageRecord {
            message: message.clone(),
            events: get2(&state.events, tenant.as_str(), message_id.as_str())
                .cloned()
                .unwrap_or_default(),
        }))
    }

    async fn active_messages(&self, partition: PartitionId) -> Result<Vec<(TenantId, MessageId)>> {
        let state = self.inner.state.lock();
        Ok(state
            .active
            .get(&partition.0)
            .map(|members| {
                members
                    .iter()
                    .map(|(t, m)| (TenantId(t.clone()), MessageId(m.clone())))
                    .collect()
            })
            .unwrap_or_default())
    }

    async fn acquire_leases(
        &self,
        node: &NodeId,
        epoch: Epoch,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> Result<Vec<PartitionId>> {
        let now = Instant::now();
        let now_ms = unix_ms();
        let durable = self.durable();
        if durable {
            // A SetFence entry with its framing takes at most 24 bytes.
            check_record_len(partitions.len().saturating_mul(24))?;
        }
        let until = deadline(now, ttl);
        let (acquired, seq, start_flusher) = {
            let mut state = self.inner.state.lock();
            check_poisoned(&state)?;
            let mut acquired = Vec::new();
            let mut record = Vec::new();
            for &partition in partitions {
                let free = state
                    .leases
                    .get(&partition.0)
                    .is_none_or(|l| l.until <= now || l.holder == node.as_str());
                let stored = state.stored_epoch(partition);
                if !free || stored > epoch.0 {
                    continue;
                }
                state.leases.insert(
                    partition.0,
                    Lease {
                        holder: node.0.clone(),
                        until,
                    },
                );
                if stored < epoch.0 {
                    let entry = Entry::SetFence(SetFence {
                        partition: partition.0,
                        epoch: epoch.0,
                    });
                    let entry = if durable {
                        let (entry, encoded) = encode_entry(entry);
                        record.extend_from_slice(&encoded);
                        entry
                    } else {
                        entry
                    };
                    state.apply(entry, now_ms);
                }
                acquired.push(partition);
            }
            let (seq, start_flusher) = state.append(record);
            (acquired, seq, start_flusher)
        };
        // The raised fences must be durable before the caller writes at the new epoch.
        self.after_append(seq, start_flusher).await?;
        Ok(acquired)
    }

    async fn renew_leases(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> Result<Vec<PartitionId>> {
        let now = Instant::now();
        let until = deadline(now, ttl);
        let mut state = self.inner.state.lock();
        let mut held = Vec::new();
        for &partition in partitions {
            if let Some(lease) = state.leases.get_mut(&partition.0)
                && lease.until > now
                && lease.holder == node.as_str()
            {
                lease.until = until;
                held.push(partition);
            }
        }
        Ok(held)
    }

    async fn release_leases(&self, node: &NodeId, partitions: &[PartitionId]) -> Result<()> {
        let mut state = self.inner.state.lock();
        for partition in partitions {
            if state
                .leases
                .get(&partition.0)
                .is_some_and(|l| l.holder == node.as_str())
            {
                state.leases.remove(&partition.0);
            }
        }
        Ok(())
    }

    async fn partition_epoch(&self, partition: PartitionId) -> Result<Epoch> {
        Ok(Epoch(self.inner.state.lock().stored_epoch(partition)))
    }

    async fn try_singleton_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<String> {
        let now = Instant::now();
        let mut state = self.inner.state.lock();
        if let Some(lease) = state.singletons.get(name)
            && lease.until > now
            && lease.holder != holder
        {
            return Ok(lease.holder.clone());
        }
        state.singletons.insert(
            name.to_owned(),
            Lease {
                holder: holder.to_owned(),
                until: deadline(now, ttl),
            },
        );
        Ok(holder.to_owned())
    }

    async fn singleton_holder(&self, name: &str) -> Result<Option<String>> {
        let now = Instant::now();
        let state = self.inner.state.lock();
        Ok(state
            .singletons
            .get(name)
            .filter(|l| l.until > now)
            .map(|l| l.holder.clone()))
    }

    async fn put_blob(&self, name: &str, value: Vec<u8>) -> Result<()> {
        self.commit_entries(vec![Entry::PutBlob(PutBlob {
            name: name.to_owned(),
            value,
        })])
        .await
    }

    async fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let now_ms = unix_ms();
        Ok(self
            .inner
            .state
            .lock()
            .values
            .get(key)
            .filter(|(_, expires)| *expires > now_ms)
            .map(|(value, _)| value.clone()))
    }

    async fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.inner.state.lock().blobs.get(name).cloned())
    }

    async fn tenant_for_api_key(&self, key_sha256_hex: &str) -> Result<Option<TenantId>> {
        Ok(self
            .inner
            .state
            .lock()
            .api_keys
            .get(key_sha256_hex)
            .map(|t| TenantId(t.clone())))
    }

    async fn put_api_key(&self, key_sha256_hex: &str, tenant: &TenantId) -> Result<()> {
        self.commit_entries(vec![Entry::PutApiKey(PutApiKey {
            key_sha256_hex: key_sha256_hex.to_owned(),
            tenant: tenant.0.clone(),
        })])
        .await
    }
}
