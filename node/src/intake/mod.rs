//! # intake: what a partition's owner does with a routed item
//!
//! Owns the owner's side of every recipient request, whether it came from this node's API or
//! over a peer's `Forward` stream: a message is **accepted** (the idempotency check and the
//! message with its `accepted` event, in one fenced write) and handed to its recipient's actor;
//! an upsert carries the prior record's consent ledger and suppressions over and refreshes the
//! phone index; an erasure removes the record; a receipt or consent signal goes to the
//! recipient's actor, whose verdict is the answer. It also resumes the active messages of
//! partitions this node just took over.
//!
//! Acked means durable, nothing more: an acceptance is written here, in one batched write per
//! call, except that a recipient's only message of a call, when its actor is idle, is handed
//! over with its acceptance still to write — the actor writes it with the message's first write
//! before any long effect, and no other job can be ahead of it. An ack never waits for a
//! provider, a rate-limit slot or another message's waterfall.
//!
//! ## Layout
//! - this file: accepting messages, upserts and erasures in one batched write.
//! - `journeys`: journey events and due waits to the person's actor.
//! - `signals`: receipts and consent signals to the recipient's actor, and its verdict.
//! - `resume`: the active messages of partitions just taken over.
//! - `campaign`: a campaign slice's acceptances (written by the slice with its checks) and
//!   starting them.
//! - `erasure`: what an erased recipient leaves behind: its index entries and messages'
//!   content go, proofs of its opt-outs stay (keyed hashes); new records inherit them.
//!
//! Must never validate (the API did), never write without the partition's fence, and never
//! forward an item (the sender routes; the owner owns or refuses).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::clock::SharedClock;
use herald_proto::error::Error;
use herald_proto::partition::partition_of;
use herald_proto::v1::{
    Channel, ConsentState, Event, EventKind, MessageRequest, MessageStatus, Recipient,
    SendResponse, StoredMessage,
};
use herald_proto::{MessageId, NodeId, PartitionId, TenantId};
use herald_store::{Fence, FencedOp, MessageRecord, Store, WriteOp, WriteOutcome};
use ractor::RpcReplyPort;
use tracing::debug;

use crate::actors::directory::RecipientDirectory;
use crate::actors::recipient::{AcceptAnswer, AcceptError, Job, PendingAccept, RecipientMsg};
use crate::auth::{Authenticator, Tenant};
use crate::config::SmsKeywordReplies;
use crate::events::EventBus;
use crate::items::{Item, ItemResult};
use crate::ownership::Ownership;

mod campaign;
mod erasure;
mod journeys;
mod resume;
mod signals;

/// A campaign member's message, ready to be accepted inside its slice's write.
pub type CampaignAcceptance = Acceptance;

/// How long a phone number stays findable (inbound keywords) after its recipient's last upsert.
const PHONE_INDEX_TTL: Duration = Duration::from_secs(400 * 86_400);

/// The intake's knobs (from the node config).
#[derive(Clone, Debug)]
pub struct IntakeSettings {
    /// How long idempotency keys are kept.
    pub idempotency_ttl: Duration,
    /// How long a receipt or consent change may wait for its actor's verdict.
    pub verdict_timeout: Duration,
    /// The one reply to STOP and START keywords.
    pub keyword_replies: SmsKeywordReplies,
}

pub struct Intake {
    /// Where the phone index keeps a number (a keyed hash).
    pub contact_index: crate::contact_index::ContactIndex,
    pub node_id: NodeId,
    pub store: Arc<dyn Store>,
    pub ownership: Arc<Ownership>,
    pub directory: Arc<RecipientDirectory>,
    pub tenants: Authenticator,
    pub events: EventBus,
    pub clock: SharedClock,
    pub settings: IntakeSettings,
}

/// Hash of a request's payload: tells a retry (same bytes) from a reuse of the key.
pub fn payload_hash(request: &MessageRequest) -> u64 {
    // XXH3-64 of the request's encoding: it only tells an honest retry from a reused key (no
    // adversary gains anything by colliding their own payloads), at a tenth of SHA-256's cost.
    // The encoding goes into a per-thread buffer: no allocation per message.
    thread_local! {
        static ENCODED: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    ENCODED.with(|buffer| {
        let mut buffer = buffer.borrow_mut();
        buffer.clear();
        prost::Message::encode_raw(request, &mut *buffer);
        xxhash_rust::xxh3::xxh3_64(&buffer)
    })
}

/// A reply port and the receiving end of its answer.
pub(crate) fn reply_port<T: Send + 'static>()
-> (RpcReplyPort<T>, ractor::concurrency::OneshotReceiver<T>) {
    let (tx, rx) = ractor::concurrency::oneshot();
    (tx.into(), rx)
}

/// An acceptance handed to an actor, and where its answer comes.
type AcceptReceiver = ractor::concurrency::OneshotReceiver<Result<WriteOutcome, AcceptError>>;

/// The result of an acceptance's write, for the client.
fn sent_result(
    outcome: WriteOutcome,
    partition: PartitionId,
    fence: Fence,
) -> Result<ItemResult, Error> {
    match outcome {
        WriteOutcome::Accepted {
            message_id,
            duplicate,
        } => Ok(ItemResult::Sent(SendResponse {
            message_id: message_id.0,
            duplicate,
            error: None,
        })),
        WriteOutcome::Conflict { message_id } => Err(Error::IdempotencyConflict {
            message_id: message_id.0,
        }),
        WriteOutcome::Fenced { stored } => Err(Error::Fenced {
            partition: partition.0,
            stored: stored.0,
            writer: fence.epoch.0,
        }),
        other => Err(Error::Internal(format!(
            "unexpected store outcome {other:?}"
        ))),
    }
}

/// A message ready to accept: the stored form, its `accepted` event (copied for watchers), and
/// the write.
pub struct Acceptance {
    pub(crate) stored: Arc<StoredMessage>,
    /// Copies of the `accepted` event for watchers (usually none).
    pub(crate) watched: Vec<Event>,
    /// The `AcceptMessage` op (its `guards` set by whoever writes it).
    pub(crate) op: WriteOp,
}

impl Intake {
    /// A message ready to accept (a campaign's, with `campaign`).
    fn acceptance(
        &self,
        tenant: &Tenant,
        request: MessageRequest,
        partition: PartitionId,
        fence: Fence,
        campaign: Option<herald_proto::v1::CampaignSend>,
    ) -> Acceptance {
        let message_id = ulid::Ulid::new().to_string();
        let now = self.clock.now_unix_ms();
        let accepted = Event {
            message_id: message_id.clone(),
            recipient_id: request.recipient_id.clone(),
            kind: EventKind::EventAccepted as i32,
            at_unix_ms: now,
            node_id: self.node_id.0.clone(),
            epoch: fence.epoch.0,
            partition: partition.0,
            status: MessageStatus::Pending as i32,
            seq: 1,
            ..Default::default()
        };
        let stored = Arc::new(StoredMessage {
            message_id,
            tenant: tenant.id.0.clone(),
            payload_hash: payload_hash(&request),
            partition: partition.0,
            created_unix_ms: now,
            request: Some(request),
            campaign,
        });
        // A copy of the event only when someone watches; the actor's history needs only its
        // position in the log (`fresh_history`).
        let watched = self.events.wanted(std::slice::from_ref(&accepted));
        let op = WriteOp::AcceptMessage {
            message: stored.clone(),
            accepted,
            idempotency_ttl: self.settings.idempotency_ttl,
            guards: 0,
        };
        Acceptance {
            stored,
            watched,
            op,
        }
    }

    pub(crate) fn job(
        tenant: &Arc<Tenant>,
        message: Arc<StoredMessage>,
        fence: Fence,
        recipient: Option<Recipient>,
        permit: tokio::sync::OwnedSemaphorePermit,
        accept: Option<PendingAccept>,
    ) -> Job {
        Job {
            tenant: tenant.clone(),
            message,
            fence,
            history: Some(crate::waterfall::fresh_history()),
            recipient,
            permit,
            accept,
        }
    }

    /// Runs items whose partitions this node should own. Items of partitions owned elsewhere get
    /// `WrongOwner`; items of partitions whose lease is still being taken wait up to `wait`.
    pub async fn execute(
        &self,
        tenant: &Arc<Tenant>,
        items: Vec<(usize, Item)>,
        wait: Duration,
    ) -> Vec<(usize, Result<ItemResult, Error>)> {
        let count = self.ownership.partition_count();
        let mut out = Vec::with_capacity(items.len());
        let mut ops: Vec<FencedOp> = Vec::with_capacity(items.len());
        let mut pending: Vec<(usize, PartitionId, Fence, Pending)> =
            Vec::with_capacity(items.len());
        let mut signals = Vec::new();
        let mut journey_events = Vec::new();
        // Phone index entries of numbers recipients no longer have: (key, recipient id).
        let mut stale_index: Vec<(String, String)> = Vec::new();
        let prior = self.prior_recipients(tenant, &items).await;
        let remembered = self.remembered_opt_outs(tenant, &items, &prior).await;
        // How many messages each recipient has in this call decides whether the first can
        // travel with its acceptance; the actors need the recipients, and one batched read here
        // saves one read per message there.
        let mut ids: Vec<String> = Vec::new();
        let alone: Vec<bool> = {
            let mut per_recipient: HashMap<&str, u32> = HashMap::with_capacity(items.len());
            for (_, item) in &items {
                if let Item::Send(request) = item {
                    let count = per_recipient
                        .entry(request.recipient_id.as_str())
                        .or_default();
                    if *count == 0 {
                        ids.push(request.recipient_id.clone());
                    }
                    *count += 1;
                }
            }
            items
                .iter()
                .map(|(_, item)| match item {
                    Item::Send(request) => {
                        per_recipient.get(request.recipient_id.as_str()) == Some(&1)
                    }
                    _ => false,
                })
                .collect()
        };
        let mut recipients: HashMap<String, Recipient> = HashMap::with_capacity(ids.len());
        if !ids.is_empty()
            && let Ok(found) = self.store.get_recipients(&tenant.id, &ids).await
        {
            for recipient in found.into_iter().flatten() {
                recipients.insert(recipient.id.clone(), recipient);
            }
        }
        let mut with_actor: Vec<(usize, PartitionId, Fence, AcceptReceiver)> = Vec::new();
        for ((index, item), alone) in items.into_iter().zip(alone) {
            if count == 0 {
                out.push((
                    index,
                    Err(Error::Unavailable("no partition table yet".into())),
                ));
                continue;
            }
            let partition = partition_of(&tenant.id.0, item.recipient_id(), count);
            let fence = match self.ownership.fence_or_wait(partition, wait).await {
                Ok(fence) => fence,
                Err(error) => {
                    out.push((index, Err(error)));
                    continue;
                }
            };
            match item {
                Item::Signal(signal) => signals.push((index, signal, fence)),
                Item::JourneyEvent(event) => journey_events.push((index, event, fence)),
                Item::Send(request) => {
                    let recipient_id = request.recipient_id.clone();
                    let acceptance = self.acceptance(tenant, request, partition, fence, None);
                    let acceptance = if alone {
                        match self
                            .hand_over(tenant, acceptance, partition, fence, &mut recipients)
                            .await
                        {
                            Ok(answer) => {
                                with_actor.push((index, partition, fence, answer));
                                continue;
                            }
                            Err(HandOver::ShuttingDown) => {
                                out.push((
                                    index,
                                    Err(Error::Unavailable("node shutting down".into())),
                                ));
                                continue;
                            }
                            Err(HandOver::Busy(acceptance)) => *acceptance,
                        }
                    } else {
                        acceptance
                    };
                    let Acceptance {
                        stored,
                        watched,
                        op,
                    } = acceptance;
                    ops.push(FencedOp { fence, op });
                    pending.push((
                        index,
                        partition,
                        fence,
                        Pending::Send {
                            stored,
                            watched,
                            recipient_id,
                        },
                    ));
                }
                Item::Upsert(mut recipient) => {
                    // A new record inherits the opt-outs an erased person left on its contact
                    // points.
                    let prior = prior
                        .get(&recipient.id)
                        .or_else(|| remembered.get(&recipient.id));
                    crate::policy::consent::merge_upsert(
                        prior,
                        &mut recipient,
                        self.clock.now_unix_ms(),
                    );
                    if let Some(prior) = prior {
                        keep_suppressions(prior, &mut recipient);
                        if !prior.phone.is_empty() && prior.phone != recipient.phone {
                            stale_index.push((
                                self.contact_index.phone_key(&tenant.id, &prior.phone),
                                recipient.id.clone(),
                            ));
                        }
                    }
                    ops.push(FencedOp {
                        fence,
                        op: WriteOp::PutRecipient {
                            tenant: tenant.id.clone(),
                            recipient: recipient.clone(),
                        },
                    });
                    pending.push((
                        index,
                        partition,
                        fence,
                        Pending::Upsert(Box::new(recipient)),
                    ));
                }
                Item::Erase(recipient_id) => {
                    // The person's traces first, then the record: a failure leaves the record,
                    // so the client's retry finds the phone number again.
                    if let Err(error) = self
                        .erase_traces(tenant, &recipient_id, prior.get(&recipient_id), fence)
                        .await
                    {
                        out.push((index, Err(error)));
                        continue;
                    }
                    // Their journeys end (and forget the entry events' properties) in turn
                    // with the actor's other jobs.
                    self.journey_job(
                        tenant,
                        recipient_id.clone(),
                        fence,
                        None,
                        crate::journey::walker::JobKind::Exit {
                            signal: crate::journey::flow::ExitSignal::Erased,
                            journey: None,
                        },
                    );
                    ops.push(FencedOp {
                        fence,
                        op: WriteOp::EraseRecipient {
                            tenant: tenant.id.clone(),
                            recipient_id: recipient_id.clone(),
                        },
                    });
                    pending.push((index, partition, fence, Pending::Erase(recipient_id)));
                }
            }
        }
        for (index, signal, fence) in signals {
            let status = self.deliver_signal(tenant, signal, fence).await;
            out.push((index, status.map(ItemResult::Signal)));
        }
        for (index, event, fence) in journey_events {
            let answer = self.deliver_journey_event(tenant, event, fence).await;
            out.push((index, answer.map(ItemResult::JourneyEvent)));
        }
        if !ops.is_empty() {
            out.extend(self.write_batch(tenant, ops, pending, recipients).await);
        }
        for (key, recipient_id) in stale_index {
            if let Err(error) = self.delete_index_entry(&key, &recipient_id).await {
                // Harmless but for privacy: the entry names a keyed hash and expires in 400 days.
                debug!(%error, "deleting a stale phone index entry failed");
            }
        }
        out.extend(accepted_by_actors(with_actor).await);
        out
    }

    /// Hands a message with its acceptance to its recipient's actor when the actor is idle.
    async fn hand_over(
        &self,
        tenant: &Arc<Tenant>,
        acceptance: Acceptance,
        partition: PartitionId,
        fence: Fence,
        recipients: &mut HashMap<String, Recipient>,
    ) -> Result<AcceptReceiver, HandOver> {
        // Admission control: the ack waits while the node is saturated.
        let Some(permit) = self.directory.admit().await else {
            return Err(HandOver::ShuttingDown);
        };
        let recipient_id = acceptance
            .stored
            .request
            .as_ref()
            .map(|r| r.recipient_id.clone())
            .unwrap_or_default();
        let (reply, answer) = reply_port();
        let Acceptance {
            stored,
            watched,
            op,
        } = acceptance;
        let job = Self::job(
            tenant,
            stored,
            fence,
            recipients.remove(&recipient_id),
            permit,
            Some(PendingAccept {
                op: FencedOp { fence, op },
                answer: AcceptAnswer { watched, reply },
            }),
        );
        let key = (tenant.id.clone(), recipient_id.clone());
        match self
            .directory
            .dispatch_if_idle(key, partition, RecipientMsg::Run(Box::new(job)))
        {
            Ok(()) => Ok(answer),
            Err(returned) => {
                // Busy: accepted here, with the others; the job's permit goes back with it.
                let RecipientMsg::Run(mut job) = returned else {
                    return Err(HandOver::ShuttingDown);
                };
                if let Some(recipient) = job.recipient.take() {
                    recipients.insert(recipient_id, recipient);
                }
                let Some(PendingAccept { op, answer }) = job.accept.take() else {
                    return Err(HandOver::ShuttingDown);
                };
                Err(HandOver::Busy(Box::new(Acceptance {
                    stored: job.message.clone(),
                    watched: answer.watched,
                    op: op.op,
                })))
            }
        }
    }

    /// Writes the acceptances, upserts and erasures of one call in one batch; hands each new
    /// message to its actor.
    async fn write_batch(
        &self,
        tenant: &Arc<Tenant>,
        ops: Vec<FencedOp>,
        pending: Vec<(usize, PartitionId, Fence, Pending)>,
        mut recipients: HashMap<String, Recipient>,
    ) -> Vec<(usize, Result<ItemResult, Error>)> {
        let mut out = Vec::with_capacity(pending.len());
        // Erase answers whether there was anything to erase.
        let mut existed = HashMap::new();
        for (_, _, _, item) in &pending {
            if let Pending::Erase(id) = item {
                let found = self.store.get_recipient(&tenant.id, id).await;
                existed.insert(id.clone(), matches!(found, Ok(Some(_))));
            }
        }
        let outcomes = match self.store.write(ops).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                return pending
                    .into_iter()
                    .map(|(index, ..)| (index, Err(Error::Unavailable(format!("store: {error}")))))
                    .collect();
            }
        };
        let mut phone_index = Vec::new();
        for ((index, partition, fence, item), outcome) in pending.into_iter().zip(outcomes) {
            let result = match (outcome, item) {
                (WriteOutcome::Fenced { stored }, _) => Err(Error::Fenced {
                    partition: partition.0,
                    stored: stored.0,
                    writer: fence.epoch.0,
                }),
                (
                    outcome @ WriteOutcome::Accepted { .. },
                    Pending::Send {
                        stored,
                        watched,
                        recipient_id,
                    },
                ) => {
                    if matches!(
                        outcome,
                        WriteOutcome::Accepted {
                            duplicate: false,
                            ..
                        }
                    ) {
                        self.events.publish(&tenant.id, &watched);
                        let recipient = recipients.remove(&recipient_id);
                        // Admission control: the ack waits while the node is saturated.
                        match self.directory.admit().await {
                            Some(permit) => self.directory.dispatch(
                                (tenant.id.clone(), recipient_id),
                                partition,
                                RecipientMsg::Run(Box::new(Self::job(
                                    tenant, stored, fence, recipient, permit, None,
                                ))),
                            ),
                            None => {
                                debug!("node shutting down; message resumes on the next owner")
                            }
                        }
                    }
                    sent_result(outcome, partition, fence)
                }
                (outcome @ WriteOutcome::Conflict { .. }, Pending::Send { .. }) => {
                    sent_result(outcome, partition, fence)
                }
                (WriteOutcome::Done, Pending::Upsert(recipient)) => {
                    if !recipient.phone.is_empty() {
                        phone_index.push(FencedOp {
                            fence,
                            op: WriteOp::PutValue {
                                key: self.contact_index.phone_key(&tenant.id, &recipient.phone),
                                value: recipient.id.clone().into_bytes(),
                                ttl: PHONE_INDEX_TTL,
                            },
                        });
                    }
                    Ok(ItemResult::Recipient(recipient))
                }
                (WriteOutcome::Done, Pending::Erase(id)) => Ok(ItemResult::Erased(
                    existed.get(&id).copied().unwrap_or(false),
                )),
                (other, _) => Err(Error::Internal(format!(
                    "unexpected store outcome {other:?}"
                ))),
            };
            out.push((index, result));
        }
        if !phone_index.is_empty()
            && let Err(error) = self.store.write(phone_index).await
        {
            // The records are stored; only inbound keyword lookups miss them until the next
            // upsert.
            debug!(%error, "phone index write failed");
        }
        out
    }
}

/// An item of a batched write, waiting for its outcome.
enum Pending {
    Send {
        stored: Arc<StoredMessage>,
        watched: Vec<Event>,
        recipient_id: String,
    },
    Upsert(Box<Recipient>),
    Erase(String),
}

/// Why a message was not handed over with its acceptance.
enum HandOver {
    /// Its actor has work queued or running: accepted by the intake instead.
    Busy(Box<Acceptance>),
    ShuttingDown,
}

impl Intake {
    /// The stored records of the recipients `items` upsert (their suppressions and consent
    /// ledger carry over).
    async fn prior_recipients(
        &self,
        tenant: &Arc<Tenant>,
        items: &[(usize, Item)],
    ) -> HashMap<String, Recipient> {
        let ids: Vec<String> = items
            .iter()
            .filter_map(|(_, item)| match item {
                Item::Upsert(r) => Some(r.id.clone()),
                Item::Erase(id) => Some(id.clone()),
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return HashMap::new();
        }
        match self.store.get_recipients(&tenant.id, &ids).await {
            Ok(found) => found
                .into_iter()
                .flatten()
                .map(|r| (r.id.clone(), r))
                .collect(),
            Err(error) => {
                debug!(%error, "reading prior recipients failed; suppressions may be lost");
                HashMap::new()
            }
        }
    }
}

/// The results of the messages whose actors wrote their acceptance.
async fn accepted_by_actors(
    waiting: Vec<(usize, PartitionId, Fence, AcceptReceiver)>,
) -> Vec<(usize, Result<ItemResult, Error>)> {
    let mut out = Vec::with_capacity(waiting.len());
    for (index, partition, fence, answer) in waiting {
        let result = match answer.await {
            Ok(Ok(outcome)) => sent_result(outcome, partition, fence),
            Ok(Err(error)) => Err(Error::Unavailable(error.to_string())),
            Err(_) => Err(Error::Unavailable(
                "the recipient's actor stopped before the message was accepted".into(),
            )),
        };
        out.push((index, result));
    }
    out
}

/// Loads a message by id (any node can: reads need no fence).
pub async fn load_message(
    store: &dyn Store,
    tenant: &TenantId,
    message_id: &str,
) -> Result<Option<MessageRecord>, Error> {
    store
        .get_message(tenant, &MessageId(message_id.to_string()))
        .await
        .map_err(|e| Error::Unavailable(format!("store: {e}")))
}

/// Carries `prior`'s suppressed contact points over to `next` (an upsert replaces the record,
/// but a suppression ends only by a new explicit consent): an entry stays while its address is
/// still in `next`, unless `next` opts its channel in where `prior` had not.
pub fn keep_suppressions(prior: &Recipient, next: &mut Recipient) {
    let opted_in = |r: &Recipient, channel: i32| {
        r.consent.iter().any(|c| {
            c.channel == channel
                && c.topic.is_empty()
                && c.sender.is_empty()
                && c.state() == ConsentState::OptedIn
        })
    };
    let still_there = |s: &herald_proto::v1::SuppressedContact| match Channel::try_from(s.channel) {
        Ok(Channel::Push) => next.push_tokens.iter().any(|t| t.token == s.address),
        Ok(Channel::Email) => next.email == s.address,
        Ok(Channel::Sms) => next.phone == s.address,
        _ => false,
    };
    let kept: Vec<_> = prior
        .suppressed
        .iter()
        .filter(|s| still_there(s))
        // A channel opted in now that was not before: a new explicit consent lifts it.
        .filter(|s| !opted_in(next, s.channel) || opted_in(prior, s.channel))
        .cloned()
        .collect();
    next.suppressed = kept;
}

#[cfg(test)]
mod suppression_tests {
    use super::*;
    use herald_proto::v1::{Channel, ChannelConsent, ConsentState, SuppressedContact};

    fn consent(state: ConsentState) -> Vec<ChannelConsent> {
        vec![ChannelConsent {
            channel: Channel::Email as i32,
            state: state as i32,
            ..Default::default()
        }]
    }

    fn bounced(email: &str, state: ConsentState) -> Recipient {
        Recipient {
            id: "r".into(),
            email: email.into(),
            consent: consent(state),
            suppressed: vec![SuppressedContact {
                channel: Channel::Email as i32,
                address: email.into(),
                reason: "bounced_hard".into(),
                at_unix_ms: 1,
            }],
            ..Default::default()
        }
    }

    #[test]
    fn suppressions_survive_an_upsert_until_a_new_opt_in() {
        let prior = bounced("a@example.com", ConsentState::OptedIn);
        // Same address, same consent: still suppressed.
        let mut next = Recipient {
            id: "r".into(),
            email: "a@example.com".into(),
            consent: consent(ConsentState::OptedIn),
            ..Default::default()
        };
        keep_suppressions(&prior, &mut next);
        assert_eq!(next.suppressed.len(), 1);
        // A new address: the old one's suppression no longer applies to anything.
        let mut moved = Recipient {
            email: "b@example.com".into(),
            ..next.clone()
        };
        keep_suppressions(&prior, &mut moved);
        assert!(moved.suppressed.is_empty());
        // Opted out before, opted in now: a new explicit consent reactivates.
        let prior = bounced("a@example.com", ConsentState::OptedOut);
        let mut again = Recipient {
            id: "r".into(),
            email: "a@example.com".into(),
            consent: consent(ConsentState::OptedIn),
            ..Default::default()
        };
        keep_suppressions(&prior, &mut again);
        assert!(again.suppressed.is_empty());
    }
}
