//! # herald-store: Herald's state of record
//!
//! Owns durable state: recipients, accepted messages and their event logs, idempotency keys,
//! counters, expiring values (receipt indexes), partition leases and fencing epochs, the
//! control plane's leader lease and table, and named hashes, lists and sorted sets (a
//! campaign's records and funnel, a tenant's credits and ledger, the partitions' recipient
//! indexes).
//!
//! One trait, [`Store`], two backends: [`redis::RedisStore`] (clusters) and
//! [`embedded::EmbeddedStore`] (a single process). Both pass the same test suite
//! ([`testsuite`], behind the `testsuite` feature), so callers cannot tell them apart. Every key
//! format is in [`keys`]; the Redis backend's Lua scripts are the files in `src/scripts/`.
//!
//! Rules every backend keeps:
//! - **Fencing**: every write for a partition carries a [`Fence`] — the partition and the epoch
//!   at which the writer *acquired its lease* (not its latest table epoch). The write is
//!   rejected with [`WriteOutcome::Fenced`] when the stored epoch of that partition is newer.
//!   The check and the write are one atomic step (a Lua script in Redis).
//!   [`Fence::NONE`] is never rejected: for state that is no partition's (written by the
//!   control plane's leader).
//! - **Atomic acceptance**: the idempotency check and the message insert are one atomic step.
//! - **Guards**: an accept ([`WriteOp::AcceptMessage`]) and a [`WriteOp::Require`] guard the
//!   next `guards` ops of their call: checked and applied in one atomic step with them; when
//!   the guard does not apply (a duplicate, an unmet check, a fence) each guarded op answers
//!   [`WriteOutcome::Skipped`] and changes nothing. Guards nest (an inner guard's range ends
//!   at the latest with the outer one's), and a guard is never split from its ops.
//! - **Tallies**: an append's [`Tally`]s apply in the same step as the append and only when
//!   it applies (never when fenced or on a `SeqConflict`), so a retried append never counts
//!   twice.
//! - **Records**: hash fields that ops add to are integers kept as decimal text (what
//!   [`Store::fields`] returns on every backend); sorted sets are read in byte order with a
//!   cursor; [`Store::expire`] gives a name's hash, list and sorted set a ttl, and a write
//!   after it expired starts a new record.
//! - **Group commit**: [`Store::write`] may be called by thousands of actors at once; backends
//!   coalesce concurrent calls into few round trips. A call returns only when its ops are
//!   durable (acked means durable).
//!
//! The store must never make policy decisions or hold per-recipient locks: the RecipientActor
//! serialises everything that touches one person.
//!
//! ## Failpoints
//! With the `failpoints` feature (the `fail` crate; compiled out by default) both backends
//! evaluate the points below, named in [`failpoint`]. Configure them with `fail::cfg(name,
//! actions)` (or `FAILPOINTS=name=actions` and `fail::FailScenario::setup`). A `return` (its
//! argument ignored) answers [`Error::Io`] of kind `TimedOut` whose message starts with
//! `failpoint:`; `sleep(ms)` and `pause` stall the calls at the point (run off the async
//! runtime: only those calls wait); `panic` panics in the caller; no action, no effect.
//! - `store::get_message` ([`failpoint::GET_MESSAGE`]): at the start of
//!   [`Store::get_message`]. `return`: `Err` ("failpoint: store read timed out"), nothing read.
//! - `store::before_commit` ([`failpoint::BEFORE_COMMIT`]): in [`Store::write`], just before a
//!   commit is sent or applied (Redis: in the committer, before a batch's `EVALSHA`; embedded:
//!   before the call takes the state lock). `return`: every caller of that batch (Redis) or
//!   that call (embedded) gets `Err` ("failpoint: store write timed out"); nothing is applied.
//! - `store::after_commit` ([`failpoint::AFTER_COMMIT`]): once the commit ran (Redis: the
//!   script's reply arrived; embedded: the ops are applied and durable). `return`: the same
//!   `Err`, although the ops WERE applied: the write whose outcome its caller cannot know. A
//!   retry then meets its own write: an append answers [`WriteOutcome::SeqConflict`] (its
//!   tallies do not apply again), an accept a duplicate, and an increment counts again. (Redis also leaves that batch's
//!   terminal messages in their active sets until a resume retires them.)
//!
//! The cases in `testsuite::failpoints` show each point on every backend; `cargo test -p
//! herald-store --features failpoints` runs them in their own test binary
//! (`tests/failpoints.rs`), away from the tests that configure none.
//!
//! ## Layout
//! - this file: the [`Store`] trait, its ops and outcomes, [`Error`], [`StoreConfig`] and
//!   [`open`].
//! - [`keys`]: every key name and the Redis layout.
//! - [`failpoint`]: the failpoint names, the injected error, running a point from async code.
//! - [`redis`]: the Redis backend. `redis/mod.rs`: the store, the scripts, the `Store` impl;
//!   `redis/options.rs`: its options and tuning; `redis/encode.rs`: ops into the write
//!   script's arguments and its replies into outcomes (pure; unit tests in
//!   `redis/encode/unit.rs`); `redis/commit.rs`: the group committer and the bulk retirement
//!   of terminal messages. The Lua scripts are the files in `src/scripts/`.
//! - [`embedded`]: the in-process backend. `embedded/mod.rs`: the store and its `Store` impl;
//!   `embedded/state.rs`: the in-memory state, how entries change it, the sweep;
//!   `embedded/state/write.rs`: the checks of a write call (fences, seqs, guards);
//!   `embedded/state/records.rs`: hashes, lists and sorted sets; `embedded/state/snapshot.rs`:
//!   the state as log records (compaction); `embedded/log.rs`: the append-only log (format,
//!   framing, replay, compaction, the flusher).
//! - [`testsuite`] (feature `testsuite`): the suite every backend passes, one file per topic
//!   (`writes`, `messages`, `leases`, `values`, `records`, `guards`; `failpoints` with that
//!   feature), and [`testsuite::RedisServer`], a throwaway `redis-server` for tests;
//!   `specific`: this crate's backend-specific tests.
//!
//! Siblings depend one way only (`redis::commit` uses `redis::encode`, `embedded::state` uses
//! `embedded::log`, its `write`, `records` and `snapshot` use `state`, never the other way),
//! so no two modules import each other.

pub mod campaign;
pub mod embedded;
pub mod failpoint;
pub mod keys;
pub mod redis;
#[cfg(any(test, feature = "testsuite"))]
pub mod testsuite;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_proto::v1::{Event, Recipient, StoredMessage};
use herald_proto::{Epoch, MessageId, NodeId, PartitionId, TenantId};
use serde::{Deserialize, Serialize};

/// Store failures that are not per-op outcomes (those are [`WriteOutcome`]s).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("corrupt record {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("store is shutting down")]
    Closed,
    /// A setting of the store cannot be used (names the config key).
    #[error("{field} {reason}")]
    Config { field: &'static str, reason: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The fencing token of a partition write: the partition and the epoch at which the writer
/// acquired the partition's lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fence {
    pub partition: PartitionId,
    pub epoch: Epoch,
}

impl Fence {
    /// The fence of a write that is not partition state (a campaign's definition and run
    /// state, a tenant's credit balance, written by the control plane's leader): it is never
    /// rejected. Partition state must never be written with it.
    pub const NONE: Fence = Fence {
        partition: PartitionId(0),
        epoch: Epoch(u64::MAX),
    };
}

/// One fenced write.
#[derive(Clone, Debug)]
pub struct FencedOp {
    pub fence: Fence,
    pub op: WriteOp,
}

#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Insert or replace a recipient. The recipient joins its partition's recipient index
    /// ([`keys::value::partition_recipients`] of the op's fence partition, a sorted set read
    /// with [`Store::members_after`]): what segments are evaluated over.
    PutRecipient {
        tenant: TenantId,
        recipient: Recipient,
    },
    /// Delete a recipient's record (personal data) and its entry in its partition's recipient
    /// index. Messages and events stay (they hold ids only).
    EraseRecipient {
        tenant: TenantId,
        recipient_id: String,
    },
    /// Accept a message: in one atomic step, check the tenant-scoped idempotency key
    /// (`message.request.idempotency_key`, kept for `idempotency_ttl`); if new, store the
    /// message, append `accepted` to its event log and add it to the partition's active set.
    /// Same key + same `payload_hash` → `Accepted { duplicate: true }` with the first id;
    /// same key + other hash → `Conflict`.
    ///
    /// `guards`: the next `guards` ops of the same call apply only when this accept stores a
    /// new message; after a duplicate, a conflict or a fenced accept they are not applied and
    /// answer [`WriteOutcome::Skipped`]. The recipient actor uses this to write a message's
    /// acceptance together with its first steps (one write instead of two), without ever
    /// applying those steps to a message that was not new.
    AcceptMessage {
        /// Shared with the actor that runs the message: no deep copy on the hot path.
        message: Arc<StoredMessage>,
        accepted: Event,
        idempotency_ttl: Duration,
        guards: usize,
    },
    /// Append events to a message's log. `terminal` removes the message from its partition's
    /// active set: in the same step, or soon after in bulk ([`Store::retire_pending`]).
    ///
    /// **Expected sequence**: the first event's `seq` must be the next one of the log (the
    /// `accepted` event is seq 1, every append continues gap-free), else nothing is appended
    /// and the op answers [`WriteOutcome::SeqConflict`] with the log's last seq. A message's log
    /// has one writer at a time; this check makes a stale writer (one whose earlier write
    /// timed out and landed anyway, or one that read an old log) fail instead of forking the
    /// log, as the fence does for a stale owner. An empty `events` is not checked.
    AppendEvents {
        tenant: TenantId,
        message_id: MessageId,
        events: Vec<Event>,
        terminal: bool,
        /// With `terminal`: the message and its log expire this long after the append (the
        /// tenant's `retention_days`); zero = kept until deleted. Later appends (late receipts)
        /// do not extend it.
        retention: Duration,
        /// Applied in the same atomic step as the append, and only when the append applies
        /// (not when it is fenced or answers `SeqConflict`): counters and audit records that
        /// must agree with the log exactly (a campaign's funnel, a credit ledger). Usually
        /// empty.
        tallies: Vec<Tally>,
    },
    /// Set `key` to `value`, expiring `ttl` after this write (replaces an earlier value and
    /// its expiry). Indexes that must be found without the partition, e.g. a provider's
    /// message id → the attempt it belongs to.
    PutValue {
        key: String,
        value: Vec<u8>,
        ttl: Duration,
    },
    /// Add `delta` to a counter that expires `ttl` after its creation; returns the new value.
    /// Directly followed by an `AppendEvents` under the same fence in one call, it applies only
    /// when that append does (both answer `Fenced` or `SeqConflict` together): a message's
    /// first write counts the message exactly once.
    IncrCounter {
        key: String,
        delta: i64,
        ttl: Duration,
    },
    /// Guards the next `guards` ops of the same call: they apply only when `check` holds, in
    /// the same atomic step as the check. Answers `Done` when it holds (a [`Check::Take`] has
    /// then taken its amount), else [`WriteOutcome::Unmet`], and each guarded op answers
    /// [`WriteOutcome::Skipped`]. A fenced `Require` answers `Fenced` and skips its guarded
    /// ops too. Guards nest: a guarded `Require` (or accept) guards its own ops, which count
    /// among the outer guard's. Like an accept's guarded ops, a `Require` and what it guards
    /// are never split across round trips.
    Require { check: Check, guards: usize },
    /// Adds each delta to its integer field of the hash `key` (a missing hash or field
    /// counts as 0). Answers `Done`. Kept until the hash is expired ([`Store::expire`]).
    AddFields {
        key: String,
        deltas: Vec<(String, i64)>,
    },
    /// Sets fields of the hash `key` (replacing their values). Answers `Done`.
    SetFields {
        key: String,
        fields: Vec<(String, Vec<u8>)>,
    },
    /// Appends one record to the list `key` (an audit trail, read with
    /// [`Store::records`]). Answers `Done`.
    PushRecord { key: String, record: Vec<u8> },
    /// Adds members to the sorted set `key`, whose members are ordered by their bytes (read
    /// with [`Store::members_after`]); members already there are left alone. Answers
    /// `Counter(n)` with the number of members that were new.
    AddMembers { key: String, members: Vec<String> },
    /// Takes members out of the sorted set `key` (members not there are ignored). Answers
    /// `Done`.
    RemoveMembers { key: String, members: Vec<String> },
}

/// A condition a [`WriteOp::Require`] checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Check {
    /// Field `field` of the hash `key` holds exactly `value` (a missing field holds nothing,
    /// so it never equals a value, not even an empty one).
    FieldIs {
        key: String,
        field: String,
        value: Vec<u8>,
    },
    /// The integer field `field` of the hash `key` (missing = 0) is at least `amount`; when it
    /// is, `amount` is subtracted from it (a hold on a balance that never goes negative).
    Take {
        key: String,
        field: String,
        amount: i64,
    },
    /// Field `field` of the hash `key` does not exist (what is written once, e.g. a slice's
    /// plan, is written by one writer only).
    Missing { key: String, field: String },
}

/// What an append applies with itself (see [`WriteOp::AppendEvents::tallies`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tally {
    /// As [`WriteOp::AddFields`].
    AddFields {
        key: String,
        deltas: Vec<(String, i64)>,
    },
    /// As [`WriteOp::PushRecord`].
    PushRecord { key: String, record: Vec<u8> },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteOutcome {
    Done,
    Accepted {
        message_id: MessageId,
        duplicate: bool,
    },
    /// The idempotency key belongs to `message_id` with a different payload.
    Conflict {
        message_id: MessageId,
    },
    Counter(i64),
    /// Rejected: the partition is owned at a newer epoch.
    Fenced {
        stored: Epoch,
    },
    /// Not applied: guarded by an accept that did not store a new message.
    Skipped,
    /// Not applied: the append's first event is not the next of the log, whose last event is
    /// `last_seq` (see [`WriteOp::AppendEvents`]).
    SeqConflict {
        last_seq: u32,
    },
    /// A [`WriteOp::Require`] whose check did not hold (its guarded ops were skipped).
    Unmet,
}

/// A message as stored, with its event log in order.
#[derive(Clone, Debug, PartialEq)]
pub struct MessageRecord {
    pub message: StoredMessage,
    pub events: Vec<Event>,
}

/// Indexes of the `None`s: the recipients a batched read did not find.
pub fn missing_indexes(found: &[Option<Recipient>]) -> Vec<usize> {
    found
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_none())
        .map(|(i, _)| i)
        .collect()
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies `ops` (each atomically, fenced) and returns one outcome per op, in order.
    /// Returns only when every op is durable.
    async fn write(&self, ops: Vec<FencedOp>) -> Result<Vec<WriteOutcome>>;

    /// [`Store::write`] of ops the caller keeps (to retry the very same write after an error
    /// whose outcome is unknown). A backend that only encodes ops writes them from the borrow;
    /// the default copies them.
    async fn write_shared(&self, ops: &[FencedOp]) -> Result<Vec<WriteOutcome>> {
        self.write(ops.to_vec()).await
    }

    async fn get_recipient(
        &self,
        tenant: &TenantId,
        recipient_id: &str,
    ) -> Result<Option<Recipient>>;

    /// Several recipients at once (one round trip where the backend can), in order of `ids`.
    async fn get_recipients(
        &self,
        tenant: &TenantId,
        ids: &[String],
    ) -> Result<Vec<Option<Recipient>>> {
        let reads = ids.iter().map(|id| self.get_recipient(tenant, id));
        futures::future::join_all(reads).await.into_iter().collect()
    }

    /// Indexes into `ids` of recipients that do not exist (validation: "missing recipient").
    async fn missing_recipients(&self, tenant: &TenantId, ids: &[String]) -> Result<Vec<usize>> {
        Ok(missing_indexes(&self.get_recipients(tenant, ids).await?))
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Option<MessageRecord>>;

    /// Non-terminal messages of a partition (a new owner resumes them). A message that just
    /// became terminal may still be listed for a moment (see [`Store::retire_pending`]); the
    /// owner that resumes it finds it terminal in its log and ends it again.
    async fn active_messages(&self, partition: PartitionId) -> Result<Vec<(TenantId, MessageId)>>;

    /// Takes the messages that became terminal out of their active sets now. A backend may do
    /// this lazily, in bulk (Redis: every 200 ms, one `SREM` per partition instead of one per
    /// message inside the write script); the rest do it in the write itself.
    async fn retire_pending(&self) -> Result<()> {
        Ok(())
    }

    /// Takes or extends the lease of each partition for `node` at `epoch`. A partition is
    /// acquired when its lease is free or already `node`'s, and its stored epoch is not newer
    /// than `epoch`; the stored epoch becomes `max(stored, epoch)`. Returns the acquired ones.
    async fn acquire_leases(
        &self,
        node: &NodeId,
        epoch: Epoch,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> Result<Vec<PartitionId>>;

    /// Extends the leases `node` still holds; returns those it holds (the rest were lost).
    async fn renew_leases(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> Result<Vec<PartitionId>>;

    /// Gives up leases held by `node` (others' leases are left alone).
    async fn release_leases(&self, node: &NodeId, partitions: &[PartitionId]) -> Result<()>;

    /// The stored fencing epoch of a partition (0 when never acquired).
    async fn partition_epoch(&self, partition: PartitionId) -> Result<Epoch>;

    /// Takes or renews the named singleton lease (the control plane's leader lease).
    /// Returns the holder after the call (`holder` when it got or kept the lease).
    async fn try_singleton_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<String>;

    /// Current holder of the named singleton lease.
    async fn singleton_holder(&self, name: &str) -> Result<Option<String>>;

    /// Saves an opaque blob (the control plane's latest partition table).
    async fn put_blob(&self, name: &str, value: Vec<u8>) -> Result<()>;

    async fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>>;

    /// A value written by [`WriteOp::PutValue`], unless it expired.
    async fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// The tenant of an API key, by the key's SHA-256 hex digest (keys kept in the store).
    async fn tenant_for_api_key(&self, key_sha256_hex: &str) -> Result<Option<TenantId>>;

    /// Writes an API key's record: while it is not revoked its digest resolves to its tenant;
    /// once revoked it resolves to nothing and the record stays (who had which key, and when).
    async fn put_api_key(&self, record: &ApiKeyRecord) -> Result<()>;

    /// Every API key record (revoked ones included), by id.
    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>>;

    /// Deletes expiring values (indexes that name a person: on erasure, or when a recipient's
    /// phone number changes). Not fenced: deleting twice is harmless.
    async fn delete_values(&self, keys: &[String]) -> Result<()>;

    /// Every field of the hash `key` (none when it does not exist), in no particular order.
    /// One atomic read: a snapshot of fields that writes change together.
    async fn fields(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Some fields of the hash `key`, in the order of `fields` (`None` = missing).
    async fn some_fields(&self, key: &str, fields: &[String]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Up to `count` records of the list `key` from index `start` (0 = the oldest), in order.
    async fn records(&self, key: &str, start: u64, count: u64) -> Result<Vec<Vec<u8>>>;

    /// How many records the list `key` holds.
    async fn record_count(&self, key: &str) -> Result<u64>;

    /// Up to `count` members of the sorted set `key` in byte order, starting after `after`
    /// (`None` = from the first). A cursor: pass the last member of one page to get the next.
    async fn members_after(
        &self,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>>;

    /// How many members the sorted set `key` holds.
    async fn member_count(&self, key: &str) -> Result<u64>;

    /// Makes hashes, lists and sorted sets (by the names their ops gave them) expire `ttl`
    /// from now; a key that does not exist is ignored. Not fenced. Retention of what a
    /// campaign leaves (audiences, schedules, outcomes) once it ended.
    async fn expire(&self, keys: &[String], ttl: Duration) -> Result<()>;

    /// Redacts every stored message of `recipient_id` in `tenant` ([`redact_message`],
    /// [`redact_event`]); returns how many it redacted. Scans the tenant's messages (erasure is
    /// rare; retention bounds how many there are). Not fenced: redacting twice changes nothing.
    async fn redact_messages(&self, tenant: &TenantId, recipient_id: &str) -> Result<u64>;
}

/// What a redacted event's reason says.
pub const REDACTED: &str = "redacted";

/// Clears what a message holds of a person: its content (bodies, subjects, push data) and its
/// template variables. Ids, class, campaign, waterfall and times stay (they prove what was
/// sent when, not to whom or what). Returns whether anything changed.
pub fn redact_message(message: &mut StoredMessage) -> bool {
    let Some(request) = message.request.as_mut() else {
        return false;
    };
    let changed = request.content.is_some() || !request.variables.is_empty();
    request.content = None;
    request.variables.clear();
    changed
}

/// Clears an event's free text (a reason may quote a provider's answer or a reply): it says
/// [`REDACTED`]. Kind, status, channel, provider, times and costs stay. Returns whether
/// anything changed.
pub fn redact_event(event: &mut Event) -> bool {
    if event.reason == REDACTED || event.reason.is_empty() {
        return false;
    }
    event.reason = REDACTED.to_owned();
    true
}

/// An API key as the store holds it: never the key itself, only its SHA-256.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ApiKeyRecord {
    /// Public identifier (shown by `herald keys list`, named by `herald keys revoke`).
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub tenant: String,
    /// SHA-256 of the key, hex.
    #[prost(string, tag = "3")]
    pub key_sha256_hex: String,
    /// What the operator said the key is for.
    #[prost(string, tag = "4")]
    pub label: String,
    #[prost(int64, tag = "5")]
    pub created_unix_ms: i64,
    /// 0 = active.
    #[prost(int64, tag = "6")]
    pub revoked_unix_ms: i64,
}

impl ApiKeyRecord {
    pub fn is_revoked(&self) -> bool {
        self.revoked_unix_ms != 0
    }
}

/// Where state lives (a node's `[store]`).
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Redis URL (`redis://host:port/db`). Set = Redis is the state of record (clusters).
    /// Unset = the embedded store (single process only).
    pub redis_url: Option<String>,
    /// Embedded store: directory of its append-only log. Unset = memory only.
    pub data_dir: Option<PathBuf>,
    /// Key prefix in Redis, so several clusters can share one Redis.
    pub key_prefix: Option<String>,
    /// With a `rediss://` URL: the CA certificate (PEM) the server's certificate must chain
    /// to. Unset = the system's roots.
    pub redis_ca: Option<PathBuf>,
    /// Tuning of the Redis store's group commit (`[store.redis]`). Ignored on the embedded
    /// store.
    pub redis: redis::RedisTuning,
}

impl StoreConfig {
    /// The Redis store's options: `[store.redis]` and `key_prefix`.
    pub fn redis_options(&self) -> redis::RedisOptions {
        let mut options = redis::RedisOptions {
            tuning: self.redis.clone(),
            tls_ca: self.redis_ca.clone(),
            ..Default::default()
        };
        if let Some(prefix) = &self.key_prefix {
            options.key_prefix = prefix.clone();
        }
        options
    }
}

/// Opens the store `config` names: Redis when `redis_url` is set, else embedded.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>> {
    match &config.redis_url {
        Some(url) => Ok(Arc::new(
            redis::RedisStore::connect(url, config.redis_options()).await?,
        )),
        None => Ok(Arc::new(embedded::EmbeddedStore::open(
            config.data_dir.as_deref(),
        )?)),
    }
}
