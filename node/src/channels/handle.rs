//! # handle: reaching a key's ChannelActor, here or on its owner
//!
//! Owns the one way other components reach a ChannelActor: a [`ChannelHandle`] that is a local
//! `ActorRef` when this node owns the key's partition (under its fence), or a remote call over
//! the internal `Channels` stream when another node does — never the router's recipient items.
//! Callers cannot tell the two apart: both answer the same typed replies, and both fail with
//! `wrong_owner{epoch}` / unavailable when the key is moving, which [`Handles::call`] retries
//! against newer tables until the owner wait runs out. Also the serving side: calls other nodes
//! sent here run against this node's actors ([`Handles::serve`]), never forwarded again.
//!
//! Must never spawn an actor for a partition this node does not hold the fence of.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use herald_proto::v1::{
    BreakerReport, ChannelCall, ChannelCallBatch, ChannelReply, ChannelReplyBatch, PermitGrant,
    ReportReply, SlotRequest, TierAdmission, WarmupAdmission, channel_call, channel_reply,
};
use herald_proto::{Epoch, NodeId, PartitionId};
use herald_store::Fence;
use ractor::ActorRef;

use super::actor::ChannelMsg;
use super::error::Error;
use super::keys::partition;
use super::registry::Registry;
use super::schedule::Grant;
use super::stats::ChannelStats;
use super::tier::Admission;
use crate::ownership::Ownership;
use crate::peers::Peers;

/// How long one call to an actor may take (its handlers do no I/O: this is a stuck actor).
const ACTOR_CALL_TIMEOUT_MS: u64 = 5_000;

/// Between retries of a call, at most this long without a newer table.
const RETRY_WAIT: Duration = Duration::from_millis(100);

/// Where the ChannelActor of a key runs, as seen from this node.
pub enum ChannelHandle {
    /// Here, under this fence.
    Local {
        actor: ActorRef<ChannelMsg>,
        fence: Fence,
    },
    /// On the node at `address` (in the table at `epoch`).
    Remote { address: String, epoch: Epoch },
}

/// Finds ChannelActors and calls them.
pub struct Handles {
    node_id: NodeId,
    ownership: Arc<Ownership>,
    peers: Peers,
    registry: Registry,
    owner_wait: Duration,
    stats: Arc<ChannelStats>,
}

impl Handles {
    pub fn new(
        node_id: NodeId,
        ownership: Arc<Ownership>,
        peers: Peers,
        registry: Registry,
        owner_wait: Duration,
        stats: Arc<ChannelStats>,
    ) -> Self {
        Self {
            node_id,
            ownership,
            peers,
            registry,
            owner_wait,
            stats,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The handle of `key`'s actor in the current table (waiting up to the owner wait for
    /// this node's own lease when the table gives the partition to it).
    pub async fn handle(&self, key: &str) -> Result<ChannelHandle, Error> {
        let table = self.ownership.table();
        if table.partition_count == 0 || table.is_empty() {
            return Err(Error::NoTable);
        }
        let partition = partition(key, table.partition_count);
        let owner = table.owner(partition).ok_or(Error::NoOwner(partition))?;
        if owner.node_id != self.node_id.0 {
            return Ok(ChannelHandle::Remote {
                address: owner.address.clone(),
                epoch: table.epoch,
            });
        }
        let fence = self.local_fence(partition).await?;
        let actor = self.registry.actor(key, fence)?;
        Ok(ChannelHandle::Local { actor, fence })
    }

    async fn local_fence(&self, partition: PartitionId) -> Result<Fence, Error> {
        self.ownership
            .fence_or_wait(partition, self.owner_wait)
            .await
            .map_err(|error| match error {
                herald_proto::error::Error::WrongOwner { epoch } => Error::WrongOwner { epoch },
                other => Error::Unavailable(other.to_string()),
            })
    }

    /// One call to `key`'s actor, once (the caller decides about retries).
    pub async fn call_once(
        &self,
        key: &str,
        op: channel_call::Op,
    ) -> Result<channel_reply::Result, Error> {
        let handle = self.handle(key).await?;
        self.call_handle(&handle, key, op).await
    }

    /// One call to `key`'s actor, retried on `wrong_owner` and unreachable owners against newer
    /// tables until the owner wait runs out.
    pub async fn call(
        &self,
        key: &str,
        op: channel_call::Op,
    ) -> Result<channel_reply::Result, Error> {
        let deadline = tokio::time::Instant::now() + self.owner_wait;
        let mut tables = self.ownership.subscribe_table();
        loop {
            match self.call_once(key, op.clone()).await {
                Err(error) if error.is_retryable() && tokio::time::Instant::now() < deadline => {
                    tracing::debug!(key, %error, "channel call retry");
                    let _ = tokio::time::timeout(RETRY_WAIT, tables.changed()).await;
                }
                other => return other,
            }
        }
    }

    async fn call_handle(
        &self,
        handle: &ChannelHandle,
        key: &str,
        op: channel_call::Op,
    ) -> Result<channel_reply::Result, Error> {
        match handle {
            ChannelHandle::Local { actor, fence } => {
                let result = call_actor(actor, *fence, key, op).await;
                if result.is_err() {
                    self.registry.forget(key, actor);
                }
                result
            }
            ChannelHandle::Remote { address, epoch } => {
                let call = ChannelCall {
                    key: key.to_owned(),
                    op: Some(op),
                };
                let mut replies = self.remote(address, *epoch, vec![call]).await?;
                reply_result(replies.pop())
            }
        }
    }

    async fn remote(
        &self,
        address: &str,
        epoch: Epoch,
        calls: Vec<ChannelCall>,
    ) -> Result<Vec<ChannelReply>, Error> {
        self.stats
            .remote_calls
            .fetch_add(calls.len() as u64, Ordering::Relaxed);
        // Boxed: the gRPC call's future is large, and the send path that awaits it (up to the
        // recipient actor's handler) would carry it inline also when no remote call is made.
        Box::pin(self.peers.channel_calls(address, epoch, calls))
            .await
            .map_err(|source| Error::Peer {
                address: address.to_owned(),
                source,
            })
    }

    /// Several calls at once (the report loop): local ones straight to their actors, remote
    /// ones in one batch per owner. One result per call, in order; no retries.
    pub async fn call_many(
        &self,
        calls: Vec<ChannelCall>,
    ) -> Vec<Result<channel_reply::Result, Error>> {
        let mut results: Vec<Option<Result<channel_reply::Result, Error>>> =
            (0..calls.len()).map(|_| None).collect();
        let mut local = Vec::new();
        let mut remote: HashMap<(String, Epoch), Vec<(usize, ChannelCall)>> = HashMap::new();
        for (index, call) in calls.into_iter().enumerate() {
            match self.handle(&call.key).await {
                Ok(ChannelHandle::Remote { address, epoch }) => {
                    remote
                        .entry((address, epoch))
                        .or_default()
                        .push((index, call));
                }
                Ok(handle) => local.push((index, handle, call)),
                Err(error) => results[index] = Some(Err(error)),
            }
        }
        let locals = local.into_iter().map(|(index, handle, call)| async move {
            let result = match call.op {
                Some(op) => self.call_handle(&handle, &call.key, op).await,
                None => Err(Error::Protocol("empty")),
            };
            (index, result)
        });
        let remotes = remote
            .into_iter()
            .map(|((address, epoch), batch)| async move {
                let (indices, calls): (Vec<usize>, Vec<ChannelCall>) = batch.into_iter().unzip();
                match self.remote(&address, epoch, calls).await {
                    Ok(replies) => indices
                        .into_iter()
                        .zip(replies)
                        .map(|(index, reply)| (index, reply_result(Some(reply))))
                        .collect::<Vec<_>>(),
                    Err(error) => indices
                        .into_iter()
                        .map(|index| (index, Err(error.clone())))
                        .collect(),
                }
            });
        let (locals, remotes) = futures::join!(
            futures::future::join_all(locals),
            futures::future::join_all(remotes)
        );
        for (index, result) in locals.into_iter().chain(remotes.into_iter().flatten()) {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or(Err(Error::Protocol("unanswered"))))
            .collect()
    }

    /// The serving side: runs calls other nodes routed here against this node's actors;
    /// `wrong_owner{epoch}` for keys this node does not own.
    pub async fn serve(&self, batch: ChannelCallBatch) -> ChannelReplyBatch {
        let count = self.ownership.partition_count();
        let replies = batch.calls.into_iter().map(|call| async move {
            let result = async {
                if count == 0 {
                    return Err(Error::NoTable);
                }
                let op = call.op.ok_or(Error::Protocol("empty"))?;
                let fence = self.local_fence(partition(&call.key, count)).await?;
                let actor = self.registry.actor(&call.key, fence)?;
                let handle = ChannelHandle::Local { actor, fence };
                self.call_handle(&handle, &call.key, op).await
            }
            .await;
            ChannelReply {
                result: Some(match result {
                    Ok(result) => result,
                    Err(error) => channel_reply::Result::Error(error.to_wire()),
                }),
            }
        });
        ChannelReplyBatch {
            batch_id: batch.batch_id,
            replies: futures::future::join_all(replies).await,
        }
    }
}

/// One call to a local actor.
async fn call_actor(
    actor: &ActorRef<ChannelMsg>,
    fence: Fence,
    key: &str,
    op: channel_call::Op,
) -> Result<channel_reply::Result, Error> {
    let failed = |error: String| Error::Actor {
        key: key.to_owned(),
        reason: error,
    };
    let result = match op {
        channel_call::Op::Slots(SlotRequest { count }) => ractor::call_t!(
            actor,
            ChannelMsg::Slots,
            ACTOR_CALL_TIMEOUT_MS,
            count,
            fence
        )
        .map(|grant| channel_reply::Result::Grant(grant_reply(grant)))
        .map_err(|e| failed(e.to_string()))?,
        channel_call::Op::Tier(TierAdmission { recipient }) => {
            ractor::call_t!(actor, ChannelMsg::Tier, ACTOR_CALL_TIMEOUT_MS, recipient)
                .map(|admission| channel_reply::Result::Grant(admission_reply(admission)))
                .map_err(|e| failed(e.to_string()))?
        }
        channel_call::Op::Warmup(WarmupAdmission {}) => {
            ractor::call_t!(actor, ChannelMsg::Warmup, ACTOR_CALL_TIMEOUT_MS)
                .map(|admission| channel_reply::Result::Grant(admission_reply(admission)))
                .map_err(|e| failed(e.to_string()))?
        }
        channel_call::Op::Report(report) => {
            ractor::call_t!(actor, ChannelMsg::Report, ACTOR_CALL_TIMEOUT_MS, report)
                .map(channel_reply::Result::Report)
                .map_err(|e| failed(e.to_string()))?
        }
    };
    Ok(result)
}

fn reply_result(reply: Option<ChannelReply>) -> Result<channel_reply::Result, Error> {
    match reply.and_then(|r| r.result) {
        Some(channel_reply::Result::Error(error)) => Err(Error::from_wire(error)),
        Some(result) => Ok(result),
        None => Err(Error::Protocol("empty")),
    }
}

fn grant_reply(grant: Grant) -> PermitGrant {
    PermitGrant {
        delays_us: grant.delays_us,
        retry_after_us: grant.retry_after_us,
        ..Default::default()
    }
}

fn admission_reply(admission: Admission) -> PermitGrant {
    PermitGrant {
        refused: admission.refused,
        tier: admission.limit,
        unique: admission.count,
        ..Default::default()
    }
}

/// The admission a grant carries.
pub fn admission_of(grant: &PermitGrant) -> Admission {
    Admission {
        refused: grant.refused,
        limit: grant.tier,
        count: grant.unique,
    }
}

/// The typed calls (what the rest of the component uses).
impl Handles {
    pub async fn slots(&self, key: &str, count: u32) -> Result<PermitGrant, Error> {
        match self
            .call_once(key, channel_call::Op::Slots(SlotRequest { count }))
            .await?
        {
            channel_reply::Result::Grant(grant) => Ok(grant),
            _ => Err(Error::Protocol("slots")),
        }
    }

    pub async fn admit_tier(&self, key: &str, recipient: &str) -> Result<Admission, Error> {
        let op = channel_call::Op::Tier(TierAdmission {
            recipient: recipient.to_owned(),
        });
        match self.call(key, op).await? {
            channel_reply::Result::Grant(grant) => Ok(admission_of(&grant)),
            _ => Err(Error::Protocol("tier")),
        }
    }

    pub async fn admit_warmup(&self, key: &str) -> Result<Admission, Error> {
        let op = channel_call::Op::Warmup(WarmupAdmission {});
        match self.call(key, op).await? {
            channel_reply::Result::Grant(grant) => Ok(admission_of(&grant)),
            _ => Err(Error::Protocol("warm-up")),
        }
    }

    pub async fn report(&self, key: &str, report: BreakerReport) -> Result<ReportReply, Error> {
        match self.call(key, channel_call::Op::Report(report)).await? {
            channel_reply::Result::Report(reply) => Ok(reply),
            _ => Err(Error::Protocol("report")),
        }
    }
}
