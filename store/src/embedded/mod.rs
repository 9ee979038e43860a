//! # store::embedded: the single-process backend (`herald up`)
//!
//! Owns [`EmbeddedStore`]: an in-memory copy of the whole state (maps behind one `parking_lot`
//! mutex whose critical sections only move already-built values in and out) and, with a data
//! directory, an append-only log that makes it durable. Same semantics as the Redis backend
//! (the backend suite, `testsuite`, checks both), including fencing, idempotency, guards
//! (accepts and `Require`s, nested), tallies and TTLs. Hash fields are kept as Redis keeps
//! them (integers as decimal text), sorted sets in byte order. TTLs are checked lazily against
//! the clock when a key is read, and expired keys (idempotency keys, counters, values, ended
//! messages, hashes, lists and sorted sets) are swept a few at a time on every write, so
//! memory does not grow with expired keys.
//!
//! It must never be opened by two processes on one data directory (nothing enforces this:
//! the second would corrupt the log), and never serve a cluster: leases here are only in this
//! process's memory.
//!
//! ## Layout
//! - this file: the store (open, the [`Store`] impl: locking, leases, waiting for durability).
//! - `state`: the in-memory state and how ops change it (`state/write.rs`: the checks of a
//!   call; `state/records.rs`: hashes, lists and sorted sets; `state/snapshot.rs`:
//!   compaction; apply and the sweep in `state.rs`).
//! - `log`: the log on disk ([`log_format`], framing, replay, compaction, the flusher).
//!
//! ## What survives a restart (with a data directory)
//! Kept: recipients (and erasures), messages, their event logs, the active (non-terminal) sets
//! of partitions, idempotency keys and counters until their expiry (expiries are wall-clock
//! times, so they keep running while the process is down), partition fencing epochs, blobs
//! and API keys, hashes, lists and sorted sets (the recipient indexes among them) until
//! their expiry. Dropped: partition leases and singleton leases; a restarted process
//! re-acquires them, and the kept fencing epochs still reject writers at older epochs.
//! Without a data directory nothing survives.
//!
//! ## The log
//! File `herald-store.log` in the data directory. Each record is
//! `[u32 LE payload length][u32 LE FNV-1a-32 of the payload][payload]`, the payload a
//! [`log_format::LogRecord`] (prost) of the *effects* of one call (ops that were fenced or were
//! duplicates leave no trace; a counter increment, a hash field increment and a take are
//! logged as their resulting values; a hash, list or sorted set that expired is logged as
//! dropped when the sweep removes it or a write starts it anew, so replay never writes into
//! what had expired). Records are appended in the order the calls changed memory. Group
//! commit: calls queue their records and one blocking flusher writes everything queued with
//! one `write` + `fdatasync`; a call returns once the flusher has synced its record (and every
//! record before it, so a duplicate's ack never gets ahead of the original's). An op that
//! fails (a hash field that must be an integer and is not) stops its call with an error; the
//! ops before it stay applied and are made durable first, as in the Redis script. On open the log is replayed; a torn final record
//! (short, bad checksum at the end, or a zero-filled tail) is cut off; a bad record followed by
//! good data is an error ([`crate::Error::Corrupt`]) rather than silent loss. When the log is
//! more than twice the size of a snapshot of the state (and at least 8 MiB), it is rewritten
//! as that snapshot (temp file, fsync, rename) at open. If a flush fails, the store refuses
//! every later write (memory and disk have diverged); restarting replays what reached the disk.

mod log;
mod state;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_proto::v1::Recipient;
use herald_proto::{Epoch, MessageId, NodeId, PartitionId, TenantId};
use parking_lot::Mutex;

use self::log::{Log, check_record_len, encode_entry};
use self::log_format::{Entry, PutApiKey, PutBlob, SetFence};
use self::state::write::{Prepared, prepare};
use self::state::{Lease, SWEEP_BUDGET, State, deadline, get2, ttl_ms, unix_ms};
#[cfg(feature = "failpoints")]
use crate::failpoint::{self, Call};
use crate::{FencedOp, MessageRecord, Result, Store, WriteOutcome};

pub use self::log::{LOG_FILE, log_format};

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
        let bytes = log::read(&path)?;
        let now_ms = unix_ms();
        let mut state = State::default();
        let good = log::replay(&bytes, &path, |entry| state.apply(entry, now_ms))?;
        let log_len = bytes.len();
        drop(bytes);

        let compacted = log::compact(dir, &path, log_len, good, || state.snapshot(now_ms))?;
        // Cut a torn tail (a compacted log has none), so new records follow the last good one.
        let cut_to = (!compacted && good < log_len).then_some(good as u64);
        let log = Log::open(dir, path, cut_to)?;
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                state: Mutex::new(state),
                log: Some(log),
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
            state.check_poisoned()?;
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
        log.wait_durable(seq).await
    }
}

impl Inner {
    /// Writes and syncs queued records until none are left (runs on a blocking thread; at most
    /// one at a time, guarded by the state's `flushing` flag).
    fn flush_loop(&self) {
        let Some(log) = &self.log else { return };
        log.flush_loop(
            || self.state.lock().take_pending(),
            |reason| self.state.lock().poison(reason),
        );
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
        #[cfg(feature = "failpoints")]
        failpoint::inject(failpoint::BEFORE_COMMIT, Call::Write).await?;
        let (outcomes, seq, start_flusher) = {
            let mut state = self.inner.state.lock();
            state.check_poisoned()?;
            let mut record = Vec::new();
            state.sweep(now_ms, SWEEP_BUDGET, durable, &mut record);
            let outcomes = state.write_ops(prepared, now_ms, durable, &mut record);
            let (seq, start_flusher) = state.append(record);
            (outcomes, seq, start_flusher)
        };
        self.after_append(seq, start_flusher).await?;
        // An op that failed (a hash field that is not an integer) stopped the call; what
        // applied before it is durable now, as in Redis.
        let outcomes = outcomes?;
        // Applied and durable: from here on an error leaves the caller not knowing that.
        #[cfg(feature = "failpoints")]
        failpoint::inject(failpoint::AFTER_COMMIT, Call::Write).await?;
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
        #[cfg(feature = "failpoints")]
        failpoint::inject(failpoint::GET_MESSAGE, Call::Read).await?;
        let state = self.inner.state.lock();
        let Some(message) = get2(&state.messages, tenant.as_str(), message_id.as_str()) else {
            return Ok(None);
        };
        // Past its retention but not swept yet (sweeps run with writes).
        if state.message_expired(tenant.as_str(), message_id.as_str(), unix_ms()) {
            return Ok(None);
        }
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
            state.check_poisoned()?;
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

    async fn put_api_key(&self, record: &crate::ApiKeyRecord) -> Result<()> {
        self.commit_entries(vec![Entry::PutApiKey(PutApiKey {
            key_sha256_hex: record.key_sha256_hex.clone(),
            tenant: record.tenant.clone(),
            record: Some(record.clone()),
        })])
        .await
    }

    async fn delete_values(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.commit_entries(vec![Entry::DeleteValues(log_format::DeleteValues {
            keys: keys.to_vec(),
        })])
        .await
    }

    async fn fields(&self, key: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.inner.state.lock().records.fields(key, unix_ms()))
    }

    async fn some_fields(&self, key: &str, fields: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        Ok(self
            .inner
            .state
            .lock()
            .records
            .some_fields(key, fields, unix_ms()))
    }

    async fn records(&self, key: &str, start: u64, count: u64) -> Result<Vec<Vec<u8>>> {
        Ok(self
            .inner
            .state
            .lock()
            .records
            .records(key, start, count, unix_ms()))
    }

    async fn record_count(&self, key: &str) -> Result<u64> {
        Ok(self.inner.state.lock().records.record_count(key, unix_ms()))
    }

    async fn members_after(
        &self,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> Result<Vec<String>> {
        Ok(self
            .inner
            .state
            .lock()
            .records
            .members_after(key, after, count, unix_ms()))
    }

    async fn member_count(&self, key: &str) -> Result<u64> {
        Ok(self.inner.state.lock().records.member_count(key, unix_ms()))
    }

    async fn expire(&self, keys: &[String], ttl: Duration) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let durable = self.durable();
        if durable {
            // Each name at most three times in one ExpireRecords entry, with its framing.
            check_record_len(keys.iter().map(|k| 3 * (k.len() + 8)).sum::<usize>() + 32)?;
        }
        let now_ms = unix_ms();
        let expires_ms = now_ms.saturating_add(ttl_ms(ttl));
        let (seq, start_flusher) = {
            let mut state = self.inner.state.lock();
            state.check_poisoned()?;
            let record = state.expire_records(keys, expires_ms, now_ms, durable);
            state.append(record)
        };
        self.after_append(seq, start_flusher).await
    }

    async fn redact_messages(&self, tenant: &TenantId, recipient_id: &str) -> Result<u64> {
        let count = {
            let state = self.inner.state.lock();
            state.messages.get(tenant.as_str()).map_or(0, |messages| {
                messages
                    .values()
                    .filter(|m| {
                        m.request
                            .as_ref()
                            .is_some_and(|r| r.recipient_id == recipient_id)
                    })
                    .count() as u64
            })
        };
        // Applying the entry redacts (in memory now, and again on replay).
        self.commit_entries(vec![Entry::Redact(log_format::Redact {
            tenant: tenant.0.clone(),
            recipient_id: recipient_id.to_owned(),
        })])
        .await?;
        Ok(count)
    }

    async fn api_keys(&self) -> Result<Vec<crate::ApiKeyRecord>> {
        Ok(self
            .inner
            .state
            .lock()
            .api_key_records
            .values()
            .cloned()
            .collect())
    }
}
