//! # store::redis: the Redis backend (clusters)
//!
//! Owns the Redis key layout, the Lua scripts that make fenced writes and lease changes atomic,
//! and the group committer that turns thousands of concurrent [`Store::write`] calls into a few
//! `EVALSHA` round trips. It must never parse keys back (except active-set members, see below),
//! never write a partition's state outside the fenced write script, and never retry a write
//! whose outcome is unknown (a timed-out script may have run; the caller decides).
//!
//! ## Keys
//! The layout is in [`crate::keys`] (one table for every key of every backend).
//!
//! ## Writes: group commit and the write script
//! [`Store::write`] encodes its ops into flat `ARGV` entries (prost bytes, decimal numbers,
//! prebuilt keys; never JSON) in the caller's task, and queues them on a bounded channel. One
//! committer task takes everything queued (up to [`RedisOptions::max_batch_ops`] ops and
//! [`RedisOptions::max_batch_bytes`] bytes) and runs it as ONE `EVALSHA` of [`WRITE_SCRIPT`].
//! Up to [`RedisOptions::commits_in_flight`] scripts are pipelined on the multiplexed
//! connection; while they run, new calls queue up, so batches grow with load. Each caller gets
//! its outcomes through a oneshot channel. A call's ops are never split across batches (unless
//! the call alone exceeds the batch limit; then its chunks are committed one after the other),
//! so the ops of one call are applied in order. Dropping a `write` future does not withdraw
//! ops already queued: they are applied, and their outcomes discarded.
//!
//! The script walks the ops; for each it reads the partition's fence (cached for the script:
//! writes never change fences) and rejects the op with `{stored}` when the stored epoch is newer
//! than the op's, else applies it. Replies per op: `0` done, `1` accepted, a bulk string (the
//! idempotency record already there: duplicate or conflict, decided here by its hash), an
//! integer (counter value) or `{stored}` (fenced).
//!
//! Redis does not roll a script back: if one op fails with a Redis error (only possible when
//! something else wrote our keys with the wrong type), the ops before it stay applied and every
//! caller of that batch gets the error. Epochs and counters go through Lua numbers (doubles):
//! exact below 2^53.
//!
//! This backend needs a single Redis primary (a batch spans many partitions), not Redis Cluster.
//! Durability is Redis's own (AOF `appendfsync` on the server decides what "durable" means).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use herald_proto::v1::{Event, Recipient, StoredMessage};
use herald_proto::{Epoch, MessageId, NodeId, PartitionId, TenantId};
use prost::Message;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::keys::{COUNTER_SEGMENT, EVENTS_SEGMENT, IDEMPOTENCY_SEGMENT, RedisKeys, VALUE_SEGMENT};
use crate::{Error, FencedOp, MessageRecord, Result, Store, WriteOp, WriteOutcome};

/// Applies a batch of fenced ops. `ARGV[1]` is the key prefix; then each op is
/// `code, partition, epoch, fields...`:
/// - `R` put recipient: key, bytes
/// - `X` erase recipient: key
/// - `B` accept message (the idempotency check, the message and its `accepted` event, the
///   active set), guarding the ops after it, with the message's first append and counter
///   folded in when they follow it (fields in the script)
/// - `E` append events: events key, active member to remove (empty = none; the encoder always
///   sends none: terminal messages are retired in bulk, see `Retiring`), expected seq of the
///   first event ('' = no check; a mismatch answers `{'seq', last seq}`), count, event bytes...
/// - `F` a counter and the append after it (the counter applies only with the append)
/// - `C` counter: key, delta, ttl ms
/// - `S` expiring value: key, bytes, ttl ms
pub const WRITE_SCRIPT: &str = include_str!("scripts/write.lua");

/// `ARGV`: prefix, node, epoch, ttl ms, partitions... Returns the acquired partitions.
pub const ACQUIRE_SCRIPT: &str = include_str!("scripts/acquire_leases.lua");

/// `ARGV`: prefix, node, ttl ms, partitions... Returns the partitions still held.
pub const RENEW_SCRIPT: &str = include_str!("scripts/renew_leases.lua");

/// `ARGV`: prefix, node, partitions... Deletes the leases `node` holds.
pub const RELEASE_SCRIPT: &str = include_str!("scripts/release_leases.lua");

/// `KEYS[1]`: the singleton key; `ARGV`: holder, ttl ms. Returns the holder after the call.
pub const SINGLETON_SCRIPT: &str = include_str!("scripts/singleton_lease.lua");

/// Largest ttl passed to Redis (~35 years): `PX` rejects values that overflow its clock.
const MAX_TTL_MS: u64 = 1 << 40;
/// Separator inside idempotency values and active-set members (never in a ULID).
const SEP: char = '\x1f';
const SEP_BYTES: &[u8] = b"\x1f";

/// Settings of the Redis backend. A node's config sets `key_prefix` as `store.key_prefix` and
/// `tuning` as `[store.redis]`; the control plane, whose store traffic is a few ops per second,
/// uses the default tuning with its own `key_prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisOptions {
    /// Prefix of every key, so several clusters (or tests) can share one Redis.
    pub key_prefix: String,
    /// How writes are grouped into commit scripts.
    pub tuning: RedisTuning,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "herald".to_owned(),
            tuning: RedisTuning::default(),
        }
    }
}

/// How the store groups writes into commit scripts: a node's `[store.redis]`. The defaults are
/// the measured ones (docs/configuration.md has the figures). [`RedisTuning::validate`] bounds
/// each knob so that a config typo cannot stall Redis (which runs one script at a time) or the
/// node; tests may go below the bounds.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTuning {
    /// Most ops in one commit script (bounds the script's run time: Redis is single-threaded).
    pub max_batch_ops: usize,
    /// Most argument bytes in one commit script. An op larger than this is committed alone.
    pub max_batch_bytes: usize,
    /// Commit scripts pipelined at once on the connection.
    pub commits_in_flight: usize,
    /// `write` calls waiting for the committer before callers wait for room (backpressure).
    pub queue_capacity: usize,
    /// Time limit of one Redis command, ms; a timed-out write has an unknown outcome (the
    /// message is retried from its log).
    pub response_timeout_ms: u64,
    /// Time limit of one connection attempt, ms.
    pub connect_timeout_ms: u64,
}

impl Default for RedisTuning {
    fn default() -> Self {
        RedisTuning {
            max_batch_ops: 1024,
            max_batch_bytes: 4 << 20,
            commits_in_flight: 4,
            queue_capacity: 8192,
            response_timeout_ms: 5_000,
            connect_timeout_ms: 2_000,
        }
    }
}

impl RedisTuning {
    /// The first knob out of its range, as `store.redis.<key> must be in <range>`.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let checks: [(&str, u64, std::ops::RangeInclusive<u64>); 6] = [
            ("max_batch_ops", self.max_batch_ops as u64, 1..=65_536),
            (
                "max_batch_bytes",
                self.max_batch_bytes as u64,
                (64 << 10)..=(64 << 20),
            ),
            ("commits_in_flight", self.commits_in_flight as u64, 1..=64),
            ("queue_capacity", self.queue_capacity as u64, 1..=1_000_000),
            (
                "response_timeout_ms",
                self.response_timeout_ms,
                100..=600_000,
            ),
            ("connect_timeout_ms", self.connect_timeout_ms, 100..=600_000),
        ];
        for (key, value, range) in checks {
            if !range.contains(&value) {
                return Err(format!(
                    "store.redis.{key} must be in {}..={} (got {value})",
                    range.start(),
                    range.end()
                ));
            }
        }
        Ok(())
    }
}

/// Group-commit figures since the store was connected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Commit scripts run.
    pub batches: u64,
    /// Ops they carried.
    pub ops: u64,
}

/// The Redis [`Store`]. Cheap to share behind an `Arc`; dropping it stops its committer once
/// the queued writes are done.
pub struct RedisStore {
    conn: ConnectionManager,
    keys: Arc<RedisKeys>,
    queue: mpsc::Sender<Request>,
    max_batch_ops: usize,
    acquire: Script,
    renew: Script,
    release: Script,
    singleton: Script,
    stats: Arc<Stats>,
    retiring: Arc<Retiring>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.keys.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects (one multiplexed connection that reconnects by itself), loads the scripts and
    /// starts the committer task. Must be called inside a Tokio runtime.
    pub async fn connect(url: &str, options: RedisOptions) -> Result<RedisStore> {
        let client = ::redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(Duration::from_millis(
                options.tuning.response_timeout_ms.max(1),
            )))
            .set_connection_timeout(Some(Duration::from_millis(
                options.tuning.connect_timeout_ms.max(1),
            )));
        let mut conn = ConnectionManager::new_with_config(client, config).await?;
        let write = Script::new(WRITE_SCRIPT);
        let acquire = Script::new(ACQUIRE_SCRIPT);
        let renew = Script::new(RENEW_SCRIPT);
        let release = Script::new(RELEASE_SCRIPT);
        let singleton = Script::new(SINGLETON_SCRIPT);
        // Loaded once here; EVALSHA reloads on NOSCRIPT (a restarted or flushed Redis).
        for script in [&write, &acquire, &renew, &release, &singleton] {
            script.load_async(&mut conn).await?;
        }
        let keys = Arc::new(RedisKeys {
            prefix: options.key_prefix.clone(),
        });
        let stats = Arc::new(Stats::default());
        let (queue, rx) = mpsc::channel(options.tuning.queue_capacity.max(1));
        let committer = Committer {
            conn: conn.clone(),
            script: write,
            prefix: options.key_prefix.clone(),
            max_ops: options.tuning.max_batch_ops.max(1),
            max_bytes: options.tuning.max_batch_bytes.max(1),
            in_flight: Arc::new(Semaphore::new(options.tuning.commits_in_flight.max(1))),
            stats: stats.clone(),
        };
        tokio::spawn(committer.run(rx));
        let retiring = Arc::new(Retiring::default());
        tokio::spawn(Retiring::run(
            Arc::downgrade(&retiring),
            conn.clone(),
            keys.clone(),
        ));
        Ok(RedisStore {
            conn,
            keys,
            queue,
            max_batch_ops: options.tuning.max_batch_ops.max(1),
            acquire,
            renew,
            release,
            singleton,
            stats,
            retiring,
        })
    }

    /// Group-commit figures (batches run and ops carried) since connect.
    pub fn commit_stats(&self) -> CommitStats {
        CommitStats {
            batches: self.stats.batches.load(Ordering::Relaxed),
            ops: self.stats.ops.load(Ordering::Relaxed),
        }
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut conn = self.conn.clone();
        Ok(::redis::cmd("GET").arg(key).query_async(&mut conn).await?)
    }

    /// Runs a lease script over `partitions` and parses the partitions it returns.
    async fn lease_script(
        &self,
        script: &Script,
        head: &[&str],
        partitions: &[PartitionId],
    ) -> Result<Value> {
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(script.get_hash())
            .arg(0)
            .arg(&self.keys.prefix)
            .arg(head);
        for p in partitions {
            cmd.arg(p.0);
        }
        let mut conn = self.conn.clone();
        Ok(eval(&mut conn, &cmd, script).await?)
    }
}

#[derive(Default)]
struct Stats {
    batches: AtomicU64,
    ops: AtomicU64,
}

/// Terminal messages waiting to leave their partitions' active sets: partition → members.
/// Taken out in bulk every [`RETIRE_EVERY`] by a task of the store (and by
/// [`Store::retire_pending`]). Losing them (a crash) only leaves terminal messages listed as
/// active; the next owner resumes them, finds them terminal and retires them again.
#[derive(Default)]
struct Retiring {
    members: parking_lot::Mutex<std::collections::HashMap<u32, Vec<Vec<u8>>>>,
}

/// How often buffered retirements are applied.
const RETIRE_EVERY: Duration = Duration::from_millis(200);

impl Retiring {
    /// Buffers the messages that `ops` made terminal (only those whose append was applied).
    fn note(&self, ops: &[FencedOp], outcomes: &[WriteOutcome]) {
        let mut members = None;
        for (op, outcome) in ops.iter().zip(outcomes) {
            if let WriteOp::AppendEvents {
                tenant,
                message_id,
                terminal: true,
                ..
            } = &op.op
                && *outcome == WriteOutcome::Done
            {
                let mut member = Vec::with_capacity(tenant.0.len() + 1 + message_id.0.len());
                member.extend_from_slice(tenant.0.as_bytes());
                member.extend_from_slice(SEP_BYTES);
                member.extend_from_slice(message_id.0.as_bytes());
                members
                    .get_or_insert_with(|| self.members.lock())
                    .entry(op.fence.partition.0)
                    .or_default()
                    .push(member);
            }
        }
    }

    /// Applies what is buffered: one `SREM` per partition, pipelined.
    async fn flush(&self, conn: &ConnectionManager, keys: &RedisKeys) -> Result<()> {
        let batch = std::mem::take(&mut *self.members.lock());
        if batch.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (partition, members) in &batch {
            pipe.cmd("SREM")
                .arg(keys.active(PartitionId(*partition)))
                .arg(members)
                .ignore();
        }
        let mut conn = conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Applies buffered retirements every [`RETIRE_EVERY`] until the store is dropped.
    async fn run(
        retiring: std::sync::Weak<Retiring>,
        conn: ConnectionManager,
        keys: Arc<RedisKeys>,
    ) {
        let mut tick = tokio::time::interval(RETIRE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(retiring) = retiring.upgrade() else {
                return;
            };
            if let Err(error) = retiring.flush(&conn, &keys).await {
                // Harmless: the messages stay listed as active until a resume retires them.
                tracing::debug!(%error, "retiring terminal messages from active sets failed");
            }
        }
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis())
        .unwrap_or(MAX_TTL_MS)
        .clamp(1, MAX_TTL_MS)
}

/// The `ARGV` entries of some ops, flat: one buffer, one end offset per entry.
#[derive(Default)]
struct Args {
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
    fn append_to(&self, cmd: &mut Cmd) {
        let mut start = 0;
        for &end in &self.ends {
            cmd.arg(&self.buf[start..end]);
            start = end;
        }
    }
}

/// How to read one op's reply.
enum Expect {
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

/// `events key, '' (the active member: retired in bulk instead), expected seq ('' = none),
/// count, events...` of an append op.
fn push_append(
    args: &mut Args,
    keys: &RedisKeys,
    tenant: &TenantId,
    message_id: &MessageId,
    events: &[Event],
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
            WriteOp::AppendEvents { events, .. } => {
                bytes += events.iter().map(Message::encoded_len).sum::<usize>();
                entries += events.len();
            }
            WriteOp::PutRecipient { recipient, .. } => bytes += recipient.encoded_len(),
            WriteOp::PutValue { value, .. } => bytes += value.len(),
            WriteOp::EraseRecipient { .. } | WriteOp::IncrCounter { .. } => {}
        }
    }
    (bytes, entries)
}

fn encode_ops(keys: &RedisKeys, ops: &[FencedOp]) -> (Args, Vec<Expect>) {
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
                        terminal: _,
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
            push_append(&mut args, keys, tenant, message_id, events);
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
            let guarded_end = index.saturating_add(*guards).min(ops.len());
            // The message's own append right after its accept joins the accept's RPUSH.
            let folded = match ops.get(index) {
                Some(FencedOp {
                    fence: next_fence,
                    op:
                        WriteOp::AppendEvents {
                            tenant,
                            message_id,
                            events,
                            terminal,
                        },
                }) if next_fence == fence
                    && index < guarded_end
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
        let code: &[u8] = match op {
            WriteOp::PutRecipient { .. } => b"R",
            WriteOp::EraseRecipient { .. } => b"X",
            // Encoded above (a `B` op, with what it guards); never reaches here.
            WriteOp::AcceptMessage { .. } => continue,
            WriteOp::AppendEvents { .. } => b"E",
            WriteOp::IncrCounter { .. } => b"C",
            WriteOp::PutValue { .. } => b"S",
        };
        args.push(code);
        args.push_u64(u64::from(fence.partition.0));
        args.push_u64(fence.epoch.0);
        match op {
            WriteOp::PutRecipient { tenant, recipient } => {
                args.push(keys.recipient(tenant, &recipient.id).as_bytes());
                args.push_message(recipient);
                expect.push(Expect::Done);
            }
            WriteOp::EraseRecipient {
                tenant,
                recipient_id,
            } => {
                args.push(keys.recipient(tenant, recipient_id).as_bytes());
                expect.push(Expect::Done);
            }
            WriteOp::AcceptMessage { .. } => {}
            WriteOp::AppendEvents {
                tenant,
                message_id,
                events,
                terminal: _,
            } => {
                push_append(&mut args, keys, tenant, message_id, events);
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
        }
    }
    (args, expect)
}

/// Reads one op's reply from the write script.
fn decode_outcome(expect: &Expect, value: Value) -> Result<WriteOutcome> {
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

/// `EVALSHA`, loading the script once more when Redis does not know it (restart, flush). The
/// retry is safe: a NOSCRIPT reply means nothing ran.
async fn eval(conn: &mut ConnectionManager, cmd: &Cmd, script: &Script) -> RedisResult<Value> {
    match cmd.query_async::<Value>(conn).await {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            script.load_async(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

fn partitions_from(value: Value) -> Result<Vec<PartitionId>> {
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

/// One `write` call (or one chunk of a very large one) waiting for the committer.
struct Request {
    /// Partitions of the ops, distinct, for the script's one fence read.
    partitions: Vec<u32>,
    args: Args,
    expect: Vec<Expect>,
    reply: oneshot::Sender<Result<Vec<WriteOutcome>>>,
}

struct Committer {
    conn: ConnectionManager,
    script: Script,
    prefix: String,
    max_ops: usize,
    max_bytes: usize,
    in_flight: Arc<Semaphore>,
    stats: Arc<Stats>,
}

impl Committer {
    async fn run(self, mut rx: mpsc::Receiver<Request>) {
        let this = Arc::new(self);
        let mut carry: Option<Request> = None;
        loop {
            let first = match carry.take() {
                Some(request) => request,
                None => match rx.recv().await {
                    Some(request) => request,
                    None => break,
                },
            };
            // Wait for a commit slot *before* draining the queue: whatever arrives while the
            // pipelined commits run joins this batch (that is the group commit).
            let Ok(permit) = this.in_flight.clone().acquire_owned().await else {
                break;
            };
            let mut ops = first.expect.len();
            let mut bytes = first.args.buf.len();
            let mut batch = vec![first];
            while ops < this.max_ops && bytes < this.max_bytes {
                let Ok(next) = rx.try_recv() else { break };
                if ops + next.expect.len() > this.max_ops
                    || bytes + next.args.buf.len() > this.max_bytes
                {
                    carry = Some(next);
                    break;
                }
                ops += next.expect.len();
                bytes += next.args.buf.len();
                batch.push(next);
            }
            let this = this.clone();
            tokio::spawn(async move {
                this.commit(batch, ops, bytes).await;
                drop(permit);
            });
        }
    }

    async fn commit(&self, batch: Vec<Request>, ops: usize, bytes: usize) {
        let argc: usize = batch.iter().map(|r| r.args.ends.len()).sum();
        let mut cmd = Cmd::with_capacity(argc + 4, bytes + self.prefix.len() + 64);
        let mut partitions: Vec<u32> = batch
            .iter()
            .flat_map(|r| r.partitions.iter().copied())
            .collect();
        partitions.sort_unstable();
        partitions.dedup();
        cmd.arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(0)
            .arg(&self.prefix)
            .arg(partitions.len());
        for partition in &partitions {
            cmd.arg(*partition);
        }
        for request in &batch {
            request.args.append_to(&mut cmd);
        }
        let mut conn = self.conn.clone();
        let reply = eval(&mut conn, &cmd, &self.script).await;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.ops.fetch_add(ops as u64, Ordering::Relaxed);
        match reply {
            Ok(Value::Array(items)) if items.len() == ops => {
                let mut items = items.into_iter();
                for request in batch {
                    let outcomes: Result<Vec<WriteOutcome>> = request
                        .expect
                        .iter()
                        .zip(items.by_ref())
                        .map(|(expect, value)| decode_outcome(expect, value))
                        .collect();
                    // The caller may have given up (dropped its future): nothing to do then.
                    let _ = request.reply.send(outcomes);
                }
            }
            Ok(other) => {
                let reason = match &other {
                    Value::Array(items) => format!("{} replies for {ops} ops", items.len()),
                    other => format!("unexpected reply {other:?}"),
                };
                for request in batch {
                    let _ = request.reply.send(Err(Error::Corrupt {
                        key: "write script reply".to_owned(),
                        reason: reason.clone(),
                    }));
                }
            }
            Err(e) => {
                for request in batch {
                    let _ = request.reply.send(Err(Error::Redis(e.clone())));
                }
            }
        }
    }
}

fn decode<M: prost::Message + Default>(key: &str, bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

fn utf8(key: &str, bytes: Vec<u8>) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| Error::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    })
}

/// `ops` in chunks of at most `max` ops, never separating an accept from the ops it guards
/// (such a group is one chunk, however long).
fn chunks(ops: &[FencedOp], max: usize) -> Vec<&[FencedOp]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut index = 0;
    while index < ops.len() {
        let group = match &ops[index].op {
            WriteOp::AcceptMessage { guards, .. } => 1 + (*guards).min(ops.len() - index - 1),
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

#[async_trait]
impl Store for RedisStore {
    async fn write(&self, ops: Vec<FencedOp>) -> Result<Vec<WriteOutcome>> {
        let mut outcomes = Vec::with_capacity(ops.len());
        // Chunks of one call are committed one after the other, so its ops apply in order.
        for chunk in chunks(&ops, self.max_batch_ops) {
            let (args, expect) = encode_ops(&self.keys, chunk);
            let mut partitions: Vec<u32> = chunk.iter().map(|op| op.fence.partition.0).collect();
            partitions.sort_unstable();
            partitions.dedup();
            let (reply, rx) = oneshot::channel();
            self.queue
                .send(Request {
                    partitions,
                    args,
                    expect,
                    reply,
                })
                .await
                .map_err(|_| Error::Closed)?;
            let chunk_outcomes = rx.await.map_err(|_| Error::Closed)??;
            self.retiring.note(chunk, &chunk_outcomes);
            outcomes.extend(chunk_outcomes);
        }
        Ok(outcomes)
    }

    async fn retire_pending(&self) -> Result<()> {
        self.retiring.flush(&self.conn, &self.keys).await
    }

    async fn get_recipient(
        &self,
        tenant: &TenantId,
        recipient_id: &str,
    ) -> Result<Option<Recipient>> {
        let key = self.keys.recipient(tenant, recipient_id);
        match self.get_bytes(&key).await? {
            Some(bytes) => Ok(Some(decode(&key, &bytes)?)),
            None => Ok(None),
        }
    }

    async fn get_recipients(
        &self,
        tenant: &TenantId,
        ids: &[String],
    ) -> Result<Vec<Option<Recipient>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // One MGET instead of one GET per recipient: a batch of 1,000 is one round trip.
        let keys = self.keys.recipients(tenant, ids);
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = ::redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut conn)
            .await?;
        keys.iter()
            .zip(values)
            .map(|(key, value)| value.map(|bytes| decode(key, &bytes)).transpose())
            .collect()
    }

    async fn missing_recipients(&self, tenant: &TenantId, ids: &[String]) -> Result<Vec<usize>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        // EXISTS counts every argument, so all exist iff the count is ids.len(): no values are
        // copied or decoded on the (common) valid path.
        let keys = self.keys.recipients(tenant, ids);
        let mut conn = self.conn.clone();
        let count: usize = ::redis::cmd("EXISTS")
            .arg(&keys)
            .query_async(&mut conn)
            .await?;
        if count == ids.len() {
            return Ok(Vec::new());
        }
        Ok(super::missing_indexes(
            &self.get_recipients(tenant, ids).await?,
        ))
    }

    async fn get_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> Result<Option<MessageRecord>> {
        let events_key = self.keys.events(tenant.as_str(), message_id.as_str());
        let mut conn = self.conn.clone();
        // One LRANGE: the log's first element is the message, the rest its events.
        let mut log: Vec<Vec<u8>> = ::redis::cmd("LRANGE")
            .arg(&events_key)
            .arg(0)
            .arg(-1)
            .query_async(&mut conn)
            .await?;
        if log.is_empty() {
            return Ok(None);
        }
        let message: StoredMessage = decode(&events_key, &log.remove(0))?;
        let events = log
            .iter()
            .map(|bytes| decode::<Event>(&events_key, bytes))
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(MessageRecord { message, events }))
    }

    async fn active_messages(&self, partition: PartitionId) -> Result<Vec<(TenantId, MessageId)>> {
        let key = self.keys.active(partition);
        let mut conn = self.conn.clone();
        let members: Vec<Vec<u8>> = ::redis::cmd("SMEMBERS")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        members
            .into_iter()
            .map(|member| {
                let member = utf8(&key, member)?;
                match member.rsplit_once(SEP) {
                    Some((tenant, id)) => {
                        Ok((TenantId(tenant.to_owned()), MessageId(id.to_owned())))
                    }
                    None => Err(Error::Corrupt {
                        key: key.clone(),
                        reason: format!("member without separator: {member:?}"),
                    }),
                }
            })
            .collect()
    }

    async fn acquire_leases(
        &self,
        node: &NodeId,
        epoch: Epoch,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> Result<Vec<PartitionId>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let head = [
            node.as_str(),
            &epoch.0.to_string(),
            &ttl_ms(ttl).to_string(),
        ];
        partitions_from(self.lease_script(&self.acquire, &head, partitions).await?)
    }

    async fn renew_leases(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> Result<Vec<PartitionId>> {
        if partitions.is_empty() {
            return Ok(Vec::new());
        }
        let head = [node.as_str(), &ttl_ms(ttl).to_string()];
        partitions_from(self.lease_script(&self.renew, &head, partitions).await?)
    }

    async fn release_leases(&self, node: &NodeId, partitions: &[PartitionId]) -> Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        self.lease_script(&self.release, &[node.as_str()], partitions)
            .await?;
        Ok(())
    }

    async fn partition_epoch(&self, partition: PartitionId) -> Result<Epoch> {
        let key = self.keys.fences();
        let mut conn = self.conn.clone();
        let value: Option<Vec<u8>> = ::redis::cmd("HGET")
            .arg(&key)
            .arg(partition.0)
            .query_async(&mut conn)
            .await?;
        match value {
            None => Ok(Epoch(0)),
            Some(bytes) => {
                let text = utf8(&key, bytes)?;
                text.parse().map(Epoch).map_err(|_| Error::Corrupt {
                    key,
                    reason: format!("not an epoch: {text:?}"),
                })
            }
        }
    }

    async fn try_singleton_lease(&self, name: &str, holder: &str, ttl: Duration) -> Result<String> {
        let key = self.keys.singleton(name);
        let mut cmd = ::redis::cmd("EVALSHA");
        cmd.arg(self.singleton.get_hash())
            .arg(1)
            .arg(&key)
            .arg(holder)
            .arg(ttl_ms(ttl));
        let mut conn = self.conn.clone();
        match eval(&mut conn, &cmd, &self.singleton).await? {
            Value::BulkString(bytes) => utf8(&key, bytes),
            other => Err(Error::Corrupt {
                key,
                reason: format!("unexpected singleton reply {other:?}"),
            }),
        }
    }

    async fn singleton_holder(&self, name: &str) -> Result<Option<String>> {
        let key = self.keys.singleton(name);
        match self.get_bytes(&key).await? {
            Some(bytes) => Ok(Some(utf8(&key, bytes)?)),
            None => Ok(None),
        }
    }

    async fn put_blob(&self, name: &str, value: Vec<u8>) -> Result<()> {
        let mut conn = self.conn.clone();
        ::redis::cmd("SET")
            .arg(self.keys.blob(name))
            .arg(value)
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(&self.keys.blob(name)).await
    }

    async fn get_value(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.get_bytes(&self.keys.value(key)).await
    }

    async fn tenant_for_api_key(&self, key_sha256_hex: &str) -> Result<Option<TenantId>> {
        let key = self.keys.api_keys();
        let mut conn = self.conn.clone();
        let tenant: Option<Vec<u8>> = ::redis::cmd("HGET")
            .arg(&key)
            .arg(key_sha256_hex)
            .query_async(&mut conn)
            .await?;
        tenant.map(|t| utf8(&key, t).map(TenantId)).transpose()
    }

    async fn put_api_key(&self, key_sha256_hex: &str, tenant: &TenantId) -> Result<()> {
        let mut conn = self.conn.clone();
        ::redis::cmd("HSET")
            .arg(self.keys.api_keys())
            .arg(key_sha256_hex)
            .arg(tenant.as_str())
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn options_defaults_and_unknown_fields() {
        let options: RedisOptions = toml::from_str("key_prefix = \"x\"").expect("valid options");
        assert_eq!(options.key_prefix, "x");
        assert_eq!(options.tuning.max_batch_ops, 1024);
        assert_eq!(options.tuning.commits_in_flight, 4);
        assert!(toml::from_str::<RedisOptions>("max_batch = 3").is_err());
    }

    #[test]
    fn chunks_never_separate_an_accept_from_its_guarded_ops() {
        let fence = crate::Fence {
            partition: PartitionId(1),
            epoch: Epoch(1),
        };
        let counter = || FencedOp {
            fence,
            op: WriteOp::IncrCounter {
                key: "k".into(),
                delta: 1,
                ttl: Duration::from_secs(1),
            },
        };
        let accept = |guards| FencedOp {
            fence,
            op: WriteOp::AcceptMessage {
                message: Arc::new(StoredMessage::default()),
                accepted: Event::default(),
                idempotency_ttl: Duration::from_secs(1),
                guards,
            },
        };
        let lengths = |ops: &[FencedOp], max| {
            chunks(ops, max)
                .iter()
                .map(|chunk| chunk.len())
                .collect::<Vec<_>>()
        };
        let plain: Vec<FencedOp> = (0..5).map(|_| counter()).collect();
        assert_eq!(lengths(&plain, 2), vec![2, 2, 1]);
        // [c, accept+2, c, c] in chunks of 2: the guarded group of 3 stays whole.
        let ops = vec![
            counter(),
            accept(2),
            counter(),
            counter(),
            counter(),
            counter(),
        ];
        assert_eq!(lengths(&ops, 2), vec![1, 3, 2]);
        // Guards past the end of the call cover what is there.
        let ops = vec![counter(), accept(9), counter()];
        assert_eq!(lengths(&ops, 2), vec![1, 2]);
        assert_eq!(lengths(&[], 2), Vec::<usize>::new());
    }

    #[test]
    fn skipped_reply_decodes() {
        let outcome = decode_outcome(
            &Expect::Counter,
            Value::Array(vec![Value::BulkString(b"skipped".to_vec())]),
        );
        assert_eq!(outcome.expect("decodes"), WriteOutcome::Skipped);
    }

    #[test]
    fn fenced_reply_decodes() {
        let outcome = decode_outcome(&Expect::Done, Value::Array(vec![Value::Int(6)]));
        assert_eq!(
            outcome.expect("decodes"),
            WriteOutcome::Fenced { stored: Epoch(6) }
        );
    }
}
