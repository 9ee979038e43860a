//! # store::redis::commit: the group committer and bulk retirement
//!
//! Owns the two tasks a `RedisStore` starts: [`Committer`], which takes the [`Request`]s that
//! `write` calls queue, groups what is queued into batches (bounded in ops and bytes) and runs
//! each batch as one `EVALSHA` of the write script, at most `commits_in_flight` at once, handing
//! every caller its outcomes; and [`Retiring`], which takes terminal messages out of their
//! partitions' active sets in bulk. The failpoints `store::before_commit` and
//! `store::after_commit` are evaluated around a batch's `EVALSHA` (see the crate docs,
//! "Failpoints").
//!
//! It must never split one request across batches or reorder them, and never retry a batch:
//! its outcome may be unknown (a timed-out script may have run), so an error goes to every
//! caller of the batch and they decide.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::{Cmd, Script, Value};
use herald_proto::PartitionId;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::encode::{Args, Expect, SEP_BYTES, decode_outcome};
#[cfg(feature = "failpoints")]
use crate::failpoint::{self, Call};
use crate::keys::RedisKeys;
use crate::{Error, FencedOp, Result, WriteOp, WriteOutcome};

/// One `write` call (or one chunk of a very large one) waiting for the committer.
pub(super) struct Request {
    /// Partitions of the ops, distinct, for the script's one fence read.
    pub(super) partitions: Vec<u32>,
    pub(super) args: Args,
    pub(super) expect: Vec<Expect>,
    pub(super) reply: oneshot::Sender<Result<Vec<WriteOutcome>>>,
}

pub(super) struct Committer {
    pub(super) conn: ConnectionManager,
    pub(super) script: Script,
    pub(super) prefix: String,
    pub(super) max_ops: usize,
    pub(super) max_bytes: usize,
    pub(super) in_flight: Arc<Semaphore>,
    pub(super) stats: Arc<Stats>,
}

impl Committer {
    pub(super) async fn run(self, mut rx: mpsc::Receiver<Request>) {
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
            let mut bytes = first.args.byte_len();
            let mut batch = vec![first];
            while ops < this.max_ops && bytes < this.max_bytes {
                let Ok(next) = rx.try_recv() else { break };
                if ops + next.expect.len() > this.max_ops
                    || bytes + next.args.byte_len() > this.max_bytes
                {
                    carry = Some(next);
                    break;
                }
                ops += next.expect.len();
                bytes += next.args.byte_len();
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
        let argc: usize = batch.iter().map(|r| r.args.entry_count()).sum();
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
        #[cfg(feature = "failpoints")]
        if failpoint::inject(failpoint::BEFORE_COMMIT, Call::Write)
            .await
            .is_err()
        {
            // Not sent: nothing applied.
            return fail_all(batch, || failpoint::timed_out(Call::Write));
        }
        let mut conn = self.conn.clone();
        let reply = super::eval(&mut conn, &cmd, &self.script).await;
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
        self.stats.ops.fetch_add(ops as u64, Ordering::Relaxed);
        #[cfg(feature = "failpoints")]
        if failpoint::inject(failpoint::AFTER_COMMIT, Call::Write)
            .await
            .is_err()
        {
            // The reply arrived: the ops are applied (unless it is an error), no caller learns it.
            return fail_all(batch, || failpoint::timed_out(Call::Write));
        }
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

/// Answers every caller of `batch` with `error()` (errors are not `Clone`).
#[cfg(feature = "failpoints")]
fn fail_all(batch: Vec<Request>, error: impl Fn() -> Error) {
    for request in batch {
        // The caller may have given up (dropped its future): nothing to do then.
        let _ = request.reply.send(Err(error()));
    }
}

/// Group-commit counters, read by `RedisStore::commit_stats`.
#[derive(Default)]
pub(super) struct Stats {
    pub(super) batches: AtomicU64,
    pub(super) ops: AtomicU64,
}

/// Terminal messages waiting to leave their partitions' active sets: partition → members.
/// Taken out in bulk every [`RETIRE_EVERY`] by a task of the store (and by
/// [`crate::Store::retire_pending`]). Losing them (a crash) only leaves terminal messages listed as
/// active; the next owner resumes them, finds them terminal and retires them again.
#[derive(Default)]
pub(super) struct Retiring {
    members: parking_lot::Mutex<std::collections::HashMap<u32, Vec<Vec<u8>>>>,
    /// Ended messages whose log expires: `(tenant, message id, retention ms)`.
    expiring: parking_lot::Mutex<Vec<(String, String, u64)>>,
}

/// How often buffered retirements are applied.
const RETIRE_EVERY: Duration = Duration::from_millis(200);

impl Retiring {
    /// Buffers the messages that `ops` made terminal (only those whose append was applied).
    pub(super) fn note(&self, ops: &[FencedOp], outcomes: &[WriteOutcome]) {
        let mut members = None;
        for (op, outcome) in ops.iter().zip(outcomes) {
            if let WriteOp::AppendEvents {
                tenant,
                message_id,
                terminal: true,
                retention,
                ..
            } = &op.op
                && *outcome == WriteOutcome::Done
            {
                if !retention.is_zero() {
                    self.expiring.lock().push((
                        tenant.0.clone(),
                        message_id.0.clone(),
                        u64::try_from(retention.as_millis())
                            .unwrap_or(u64::MAX)
                            .max(1),
                    ));
                }
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

    /// Applies what is buffered: one `SREM` per partition and one `PEXPIRE … NX` per ended
    /// message (`NX`: the first retention holds; a resumed message retired again does not
    /// extend it), pipelined.
    pub(super) async fn flush(&self, conn: &ConnectionManager, keys: &RedisKeys) -> Result<()> {
        let batch = std::mem::take(&mut *self.members.lock());
        let expiring = std::mem::take(&mut *self.expiring.lock());
        if batch.is_empty() && expiring.is_empty() {
            return Ok(());
        }
        let mut pipe = ::redis::pipe();
        for (partition, members) in &batch {
            pipe.cmd("SREM")
                .arg(keys.active(PartitionId(*partition)))
                .arg(members)
                .ignore();
        }
        for (tenant, message_id, retention_ms) in &expiring {
            pipe.cmd("PEXPIRE")
                .arg(keys.events(tenant, message_id))
                .arg(*retention_ms)
                .arg("NX")
                .ignore();
        }
        let mut conn = conn.clone();
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    /// Applies buffered retirements every [`RETIRE_EVERY`] until the store is dropped.
    pub(super) async fn run(
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
