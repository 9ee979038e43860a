//! # store::redis: the Redis backend (clusters)
//!
//! Owns [`RedisStore`] (connecting, loading the Lua scripts, the [`Store`] impl: reads and the
//! lease scripts directly, writes through the group committer), its settings ([`RedisOptions`],
//! [`RedisTuning`]) and the scripts ([`WRITE_SCRIPT`] and the lease scripts, the files in
//! `src/scripts/`). It must never parse keys back (except active-set members, see below), never
//! write a partition's state outside the fenced write script, and never retry a write whose
//! outcome is unknown (a timed-out script may have run; the caller decides).
//!
//! ## Layout
//! - this file: the store, the scripts, the [`Store`] impl.
//! - `options`: its settings ([`RedisOptions`], [`RedisTuning`]), [`CommitStats`], the client
//!   a URL and the options make (TLS).
//! - `encode`: ops into the write script's flat `ARGV`, its replies back into outcomes, and the
//!   cutting of very large calls into chunks; pure functions, no I/O.
//! - `commit`: the group committer (one `EVALSHA` per batch, the `store::before_commit` and
//!   `store::after_commit` failpoints around it) and `Retiring` (terminal messages leave their
//!   active sets in bulk).
//!
//! ## Keys
//! The layout is in [`crate::keys`] (one table for every key of every backend).
//!
//! ## Writes: group commit and the write script
//! [`Store::write`] encodes its ops into flat `ARGV` entries (prost bytes, decimal numbers,
//! prebuilt keys; never JSON) in the caller's task, and queues them on a bounded channel. One
//! committer task takes everything queued (up to [`RedisTuning::max_batch_ops`] ops and
//! [`RedisTuning::max_batch_bytes`] bytes) and runs it as ONE `EVALSHA` of [`WRITE_SCRIPT`].
//! Up to [`RedisTuning::commits_in_flight`] scripts are pipelined on the multiplexed
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
//! integer (counter value, members added), `{stored}` (fenced), `{'seq', last}` (an append
//! that is not the log's next), `{'unmet'}` (a `Require` that did not hold) or `{'skipped'}`
//! (guarded by an accept or a `Require` that did not apply). A guard's ops follow it in
//! `ARGV` with the number of entries and replies they take, so a failed guard skips them in
//! one step, nested guards included.
//!
//! Hashes, lists and sorted sets (`AddFields`, `SetFields`, `PushRecord`, `AddMembers`,
//! tallies, the partitions' recipient indexes) are plain Redis types under `:h:`, `:l:` and
//! `:z:` ([`crate::keys`]); their reads (`fields`, `records`, `members_after`, ...) are single
//! commands, and [`Store::expire`] one pipelined `PEXPIRE` per key. A hash field that must be
//! an integer (`AddFields`, a take) and is not fails the script (Redis's own `HINCRBY` error).
//!
//! Redis does not roll a script back: if one op fails with a Redis error (only possible when
//! something else wrote our keys with the wrong type), the ops before it stay applied and every
//! caller of that batch gets the error. Epochs and counters go through Lua numbers (doubles):
//! exact below 2^53.
//!
//! This backend needs a single Redis primary (a batch spans many partitions), not Redis Cluster.
//! Durability is Redis's own (AOF `appendfsync` on the server decides what "durable" means).

mod commit;
mod encode;
mod options;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, Value};
use async_trait::async_trait;
use herald_proto::v1::{Event, Recipient, StoredMessage};
use herald_proto::{Epoch, MessageId, NodeId, PartitionId, TenantId};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::keys::RedisKeys;
use crate::{ApiKeyRecord, Error, FencedOp, MessageRecord, Result, Store, WriteOutcome};
use commit::{Committer, Request, Retiring, Stats};
use encode::{SEP, chunks, decode, encode_ops, partitions_from, ttl_ms, utf8};
use options::client;
pub use options::{CommitStats, RedisOptions, RedisTuning};

/// Largest index `LRANGE` takes.
const MAX_LIST_INDEX: u64 = i64::MAX as u64;

/// Applies a batch of fenced ops. `ARGV[1]` is the key prefix, `ARGV[2]` the number of
/// distinct partitions and then those partitions; then each op is
/// `code, partition, epoch, fields...`:
/// - `R` put recipient: key, bytes, the partition's recipient index (sorted set key),
///   recipient id (`ZADD NX` score 0)
/// - `X` erase recipient: key, the partition's recipient index, recipient id (`ZREM`)
/// - `B` accept message (the idempotency check, the message and its `accepted` event, the
///   active set), guarding the ops after it, with the message's first append (one without
///   tallies) and counter folded in when they follow it (fields in the script)
/// - `E` append events: events key, active member to remove (empty = none; the encoder always
///   sends none: terminal messages are retired in bulk, see `Retiring`), expected seq of the
///   first event ('' = no check; a mismatch answers `{'seq', last seq}`), count, event
///   bytes..., then `t`, the number of entries of its tallies (`0` = none), and those `t`
///   entries: `A`, hash key, pair count, (field, delta)... or `P`, list key, record. The
///   tallies apply only when the append does.
/// - `F` a counter and the append after it (the counter applies only with the append):
///   counter key, delta, ttl ms, then the fields of an `E`
/// - `C` counter: key, delta, ttl ms
/// - `S` expiring value: key, bytes, ttl ms
/// - `G` require (see [`crate::WriteOp::Require`]): check (`=` field is, `T` take, `!`
///   missing), hash key, field, value (`=`), amount (`T`, decimal) or '' (`!`), skip_args,
///   skip_replies. Unmet answers
///   `{'unmet'}`; unmet or fenced, the next `skip_args` entries (the guarded ops, nested
///   guards included) are skipped, each of their `skip_replies` replies `{'skipped'}`
/// - `H` add fields: hash key, pair count, (field, delta)... (`HINCRBY` each)
/// - `W` set fields: hash key, pair count, (field, value)... (`HSET`)
/// - `L` push record: list key, record (`RPUSH`)
/// - `Z` add members: sorted set key, count, members... (`ZADD NX`, score 0); replies how many
///   were new
pub const WRITE_SCRIPT: &str = include_str!("../scripts/write.lua");

/// `ARGV`: prefix, node, epoch, ttl ms, partitions... Returns the acquired partitions.
pub const ACQUIRE_SCRIPT: &str = include_str!("../scripts/acquire_leases.lua");

/// `ARGV`: prefix, node, ttl ms, partitions... Returns the partitions still held.
pub const RENEW_SCRIPT: &str = include_str!("../scripts/renew_leases.lua");

/// `ARGV`: prefix, node, partitions... Deletes the leases `node` holds.
pub const RELEASE_SCRIPT: &str = include_str!("../scripts/release_leases.lua");

/// `KEYS[1]`: the singleton key; `ARGV`: holder, ttl ms. Returns the holder after the call.
pub const SINGLETON_SCRIPT: &str = include_str!("../scripts/singleton_lease.lua");

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
        let client = client(url, &options)?;
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

#[async_trait]
impl Store for RedisStore {
    async fn write(&self, ops: Vec<FencedOp>) -> Result<Vec<WriteOutcome>> {
        self.write_shared(&ops).await
    }

    /// Ops are only encoded, never kept: the caller keeps them (no copy for a retry).
    async fn write_shared(&self, ops: &[FencedOp]) -> Result<Vec<WriteOutcome>> {
        let mut outcomes = Vec::with_capacity(ops.len());
        // Chunks of one call are committed one after the other, so its ops apply in order.
        for chunk in chunks(ops, self.max_batch_ops) {
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
        #[cfg(feature = "failpoints")]
        crate::failpoint::inject(crate::failpoint::GET_MESSAGE, crate::failpoint::Call::Read)
            .await?;
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

    async fn put_api_key(&self, record: &ApiKeyRecord) -> Result<()> {
        let mut conn = self.conn.clone();
        let mut pipe = ::redis::pipe();
        pipe.atomic().hset(
            self.keys.api_key_records(),
            &record.id,
            prost::Message::encode_to_vec(record),
        );
        if record.is_revoked() {
            pipe.hdel(self.keys.api_keys(), &record.key_sha256_hex);
        } else {
            pipe.hset(
                self.keys.api_keys(),
                &record.key_sha256_hex,
                record.tenant.as_str(),
            );
        }
        pipe.exec_async(&mut conn).await?;
        Ok(())
    }

    async fn delete_values(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let names: Vec<String> = keys.iter().map(|k| self.keys.value(k)).collect();
        ::redis::cmd("DEL")
            .arg(&names)
            .exec_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn fields(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let key = self.keys.hash(key);
        let mut conn = self.conn.clone();
        let stored: Vec<(Vec<u8>, Vec<u8>)> = ::redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        stored
            .into_iter()
            .map(|(field, value)| Ok((utf8(&key, field)?, value)))
            .collect()
    }

    async fn some_fields(&self, key: &str, fields: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if fields.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        Ok(::redis::cmd("HMGET")
            .arg(self.keys.hash(key))
            .arg(fields)
            .query_async(&mut conn)
            .await?)
    }

    async fn records(&self, key: &str, start: u64, count: u64) -> Result<Vec<Vec<u8>>> {
        // LRANGE's stop is inclusive, and negative indexes count from the end: never pass one.
        if count == 0 || start > MAX_LIST_INDEX {
            return Ok(Vec::new());
        }
        let stop = start.saturating_add(count - 1).min(MAX_LIST_INDEX);
        let mut conn = self.conn.clone();
        Ok(::redis::cmd("LRANGE")
            .arg(self.keys.list(key))
            .arg(start)
            .arg(stop)
            .query_async(&mut conn)
            .await?)
    }

    async fn record_count(&self, key: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(::redis::cmd("LLEN")
            .arg(self.keys.list(key))
            .query_async(&mut conn)
            .await?)
    }

    async fn members_after(
        &self,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let key = self.keys.set(key);
        // `(member` is exclusive; `-` is before every member.
        let min = match after {
            Some(after) => format!("({after}"),
            None => "-".to_owned(),
        };
        let mut conn = self.conn.clone();
        let members: Vec<Vec<u8>> = ::redis::cmd("ZRANGE")
            .arg(&key)
            .arg(min)
            .arg("+")
            .arg("BYLEX")
            .arg("LIMIT")
            .arg(0)
            .arg(count)
            .query_async(&mut conn)
            .await?;
        members
            .into_iter()
            .map(|member| utf8(&key, member))
            .collect()
    }

    async fn member_count(&self, key: &str) -> Result<u64> {
        let mut conn = self.conn.clone();
        Ok(::redis::cmd("ZCARD")
            .arg(self.keys.set(key))
            .query_async(&mut conn)
            .await?)
    }

    async fn expire(&self, keys: &[String], ttl: Duration) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let ttl_ms = ttl_ms(ttl);
        let mut pipe = ::redis::pipe();
        for name in keys {
            for key in [
                self.keys.hash(name),
                self.keys.list(name),
                self.keys.set(name),
            ] {
                pipe.cmd("PEXPIRE").arg(key).arg(ttl_ms).ignore();
            }
        }
        let mut conn = self.conn.clone();
        pipe.exec_async(&mut conn).await?;
        Ok(())
    }

    async fn redact_messages(&self, tenant: &TenantId, recipient_id: &str) -> Result<u64> {
        let pattern = format!("{}*", glob_escape(&self.keys.events(tenant.as_str(), "")));
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut redacted = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await?;
            redacted += self
                .redact_logs(&mut conn, tenant, recipient_id, &keys)
                .await?;
            if next == 0 {
                return Ok(redacted);
            }
            cursor = next;
        }
    }

    async fn api_keys(&self) -> Result<Vec<ApiKeyRecord>> {
        let key = self.keys.api_key_records();
        let mut conn = self.conn.clone();
        let stored: Vec<(String, Vec<u8>)> = ::redis::cmd("HGETALL")
            .arg(&key)
            .query_async(&mut conn)
            .await?;
        let mut records = stored
            .into_iter()
            .map(|(_, bytes)| {
                <ApiKeyRecord as prost::Message>::decode(bytes.as_slice()).map_err(|e| {
                    Error::Corrupt {
                        key: key.clone(),
                        reason: e.to_string(),
                    }
                })
            })
            .collect::<Result<Vec<_>>>()?;
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }
}

impl RedisStore {
    /// Redacts those of `keys` (message logs) whose message belongs to `recipient_id`: each
    /// changed entry is rewritten in place with `LSET` (appends only add at the end, so indexes
    /// stay valid while the message runs).
    async fn redact_logs(
        &self,
        conn: &mut ConnectionManager,
        tenant: &TenantId,
        recipient_id: &str,
        keys: &[String],
    ) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut heads = ::redis::pipe();
        for key in keys {
            heads.cmd("LINDEX").arg(key).arg(0);
        }
        let heads: Vec<Option<Vec<u8>>> = heads.query_async(conn).await?;
        let mut redacted = 0;
        for (key, head) in keys.iter().zip(heads) {
            let Some(head) = head else { continue };
            let mut message = decode::<StoredMessage>(key, &head)?;
            let mine = message.tenant == tenant.as_str()
                && message
                    .request
                    .as_ref()
                    .is_some_and(|r| r.recipient_id == recipient_id);
            if !mine {
                continue;
            }
            let entries: Vec<Vec<u8>> = ::redis::cmd("LRANGE")
                .arg(key)
                .arg(1)
                .arg(-1)
                .query_async(conn)
                .await?;
            let mut rewrite = ::redis::pipe();
            let mut changed = false;
            if crate::redact_message(&mut message) {
                changed = true;
                rewrite
                    .cmd("LSET")
                    .arg(key)
                    .arg(0)
                    .arg(prost::Message::encode_to_vec(&message))
                    .ignore();
            }
            for (index, bytes) in entries.iter().enumerate() {
                let mut event = decode::<Event>(key, bytes)?;
                if crate::redact_event(&mut event) {
                    changed = true;
                    rewrite
                        .cmd("LSET")
                        .arg(key)
                        .arg(index + 1)
                        .arg(prost::Message::encode_to_vec(&event))
                        .ignore();
                }
            }
            if changed {
                rewrite.exec_async(conn).await?;
            }
            redacted += 1;
        }
        Ok(redacted)
    }
}

/// `text` with Redis glob metacharacters escaped, for `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
