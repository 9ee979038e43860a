//! # router: every request to the owner of its partition
//!
//! Owns the path from a validated request to the node that owns the recipient's partition:
//! local items run here ([`Router::execute_local`]); remote ones go in one batch per owner over
//! the Forward stream. `wrong_owner` and unreachable owners are retried against newer tables
//! until `route_timeout_ms`. Callers cannot tell local from remote.
//!
//! A new message whose recipient's actor is idle is not written here: its acceptance travels
//! with the job and the actor writes it together with the message's first write (one store
//! round trip instead of two, guarded so nothing of a duplicate is applied); the ack waits for
//! the actor's answer. Other messages are accepted here in one batched write, then handed over.
//!
//! Must never validate (the API did), never write without the partition's fence, and never
//! re-forward an item it received by Forward (the sender routes; the receiver owns or refuses).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use herald_proto::error::Error;
use herald_proto::partition::partition_of;
use herald_proto::v1::{
    Event, EventKind, ForwardItem, ForwardSignal, MessageRequest, MessageStatus, Recipient,
    ReportResult, ReportStatus, SendResponse, StoredMessage, forward_item, forward_result,
};
use herald_proto::{MessageId, PartitionId, TenantId};
use tracing::debug;

use crate::actors::recipient::{Job, PendingAccept, RecipientMsg, Signal};
use crate::auth::Tenant;
use crate::context::{NodeContext, now_unix_ms};
use crate::peers::Peers;
use herald_store::{Fence, FencedOp, WriteOp, WriteOutcome};

#[derive(Clone, Debug)]
pub enum Item {
    Send(MessageRequest),
    Upsert(Recipient),
    Erase(String),
    /// A receipt or engagement report for one of the recipient's messages.
    Signal(ForwardSignal),
}

#[derive(Clone, Debug)]
#[allow(
    clippy::large_enum_variant,
    reason = "one short-lived result per routed item; boxing would allocate per upsert"
)]
pub enum ItemResult {
    Sent(SendResponse),
    Recipient(Recipient),
    Erased(bool),
    Signal(ReportResult),
}

impl Item {
    fn recipient_id(&self) -> &str {
        match self {
            Item::Send(m) => &m.recipient_id,
            Item::Upsert(r) => &r.id,
            Item::Erase(id) => id,
            Item::Signal(signal) => &signal.recipient_id,
        }
    }

    pub fn into_forward(self, tenant: &TenantId) -> ForwardItem {
        let op = match self {
            Item::Send(m) => forward_item::Op::Send(m),
            Item::Upsert(r) => forward_item::Op::UpsertRecipient(r),
            Item::Erase(id) => forward_item::Op::EraseRecipient(id),
            Item::Signal(signal) => forward_item::Op::Signal(signal),
        };
        ForwardItem {
            tenant: tenant.0.clone(),
            op: Some(op),
        }
    }

    pub fn from_forward(item: ForwardItem) -> Option<(TenantId, Item)> {
        let item_op = match item.op? {
            forward_item::Op::Send(m) => Item::Send(m),
            forward_item::Op::UpsertRecipient(r) => Item::Upsert(r),
            forward_item::Op::EraseRecipient(id) => Item::Erase(id),
            forward_item::Op::Signal(signal) => Item::Signal(signal),
        };
        Some((TenantId(item.tenant), item_op))
    }
}

impl ItemResult {
    pub fn into_forward(self) -> forward_result::Result {
        match self {
            ItemResult::Sent(s) => forward_result::Result::Sent(s),
            ItemResult::Recipient(r) => forward_result::Result::Recipient(r),
            ItemResult::Erased(e) => forward_result::Result::Erased(e),
            ItemResult::Signal(r) => forward_result::Result::Signal(r),
        }
    }

    pub fn from_forward(result: Option<forward_result::Result>) -> Result<ItemResult, Error> {
        match result {
            Some(forward_result::Result::Sent(s)) => Ok(ItemResult::Sent(s)),
            Some(forward_result::Result::Recipient(r)) => Ok(ItemResult::Recipient(r)),
            Some(forward_result::Result::Erased(e)) => Ok(ItemResult::Erased(e)),
            Some(forward_result::Result::Signal(r)) => Ok(ItemResult::Signal(r)),
            Some(forward_result::Result::Error(e)) => {
                Err(Error::from_parts(e.code, e.message, e.epoch))
            }
            None => Err(Error::Internal("empty forward result".into())),
        }
    }
}

fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::WrongOwner { .. } | Error::Unavailable(_) | Error::Fenced { .. }
    )
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

#[derive(Clone)]
pub struct Router {
    context: Arc<NodeContext>,
    peers: Peers,
}

impl Router {
    pub fn new(context: Arc<NodeContext>, peers: Peers) -> Self {
        Self { context, peers }
    }

    pub fn context(&self) -> &Arc<NodeContext> {
        &self.context
    }

    /// Routes validated items to their owners; one result per item, in order.
    pub async fn route(
        &self,
        tenant: &Arc<Tenant>,
        items: Vec<Item>,
    ) -> Vec<Result<ItemResult, Error>> {
        let mut results: Vec<Option<Result<ItemResult, Error>>> =
            (0..items.len()).map(|_| None).collect();
        let deadline = tokio::time::Instant::now() + self.context.route_timeout();
        let mut tables = self.context.ownership.subscribe_table();
        let mut last_error: Option<String> = None;
        loop {
            let pending: Vec<usize> = (0..items.len()).filter(|i| results[*i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let reason = last_error
                    .clone()
                    .unwrap_or_else(|| "no owner reachable".into());
                for i in pending {
                    results[i] = Some(Err(Error::Unavailable(format!(
                        "routing timed out: {reason}"
                    ))));
                }
                break;
            }
            let table = self.context.ownership.table();
            let count = table.partition_count;
            let mut local: Vec<(usize, Item)> = Vec::new();
            let mut remote: HashMap<String, Vec<usize>> = HashMap::new();
            if count > 0 && !table.is_empty() {
                for i in pending {
                    let partition = partition_of(&tenant.id.0, items[i].recipient_id(), count);
                    match table.owner(partition) {
                        Some(owner) if owner.node_id == self.context.node_id.0 => {
                            local.push((i, items[i].clone()));
                        }
                        Some(owner) => remote.entry(owner.address.clone()).or_default().push(i),
                        None => {}
                    }
                }
            }
            let mut round = Vec::new();
            if !local.is_empty() {
                let this = self.clone();
                let tenant = tenant.clone();
                round.push(tokio::spawn(async move {
                    let deadline = Duration::from_millis(2 * this.context.config.lease_ttl_ms);
                    this.execute_local(&tenant, local, deadline).await
                }));
            }
            for (address, indices) in remote {
                let peers = self.peers.clone();
                let batch: Vec<ForwardItem> = indices
                    .iter()
                    .map(|i| items[*i].clone().into_forward(&tenant.id))
                    .collect();
                let epoch = table.epoch;
                round.push(tokio::spawn(async move {
                    match peers.forward(&address, epoch, batch).await {
                        Ok(replies) => indices
                            .into_iter()
                            .zip(
                                replies
                                    .into_iter()
                                    .map(|r| ItemResult::from_forward(r.result)),
                            )
                            .collect(),
                        Err(error) => indices
                            .into_iter()
                            .map(|i| {
                                (
                                    i,
                                    Err(Error::Unavailable(format!(
                                        "forward to {address}: {error}"
                                    ))),
                                )
                            })
                            .collect::<Vec<_>>(),
                    }
                }));
            }
            let mut retry = false;
            for handle in round {
                let Ok(outcomes) = handle.await else {
                    retry = true;
                    continue;
                };
                for (i, outcome) in outcomes {
                    match outcome {
                        Err(error) if retryable(&error) => {
                            debug!(%error, "routing retry");
                            last_error = Some(error.to_string());
                            retry = true;
                        }
                        other => results[i] = Some(other),
                    }
                }
            }
            if retry || results.iter().any(Option::is_none) {
                // Wait for a newer table, or a short while (an owner may be taking its lease).
                let _ = tokio::time::timeout(Duration::from_millis(100), tables.changed()).await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("unrouted item".into()))))
            .collect()
    }

    /// Runs items whose partitions this node should own. Items of partitions owned elsewhere get
    /// `WrongOwner`; items of partitions whose lease is still being taken wait up to `wait`.
    pub async fn execute_local(
        &self,
        tenant: &Arc<Tenant>,
        items: Vec<(usize, Item)>,
        wait: Duration,
    ) -> Vec<(usize, Result<ItemResult, Error>)> {
        let count = self.context.ownership.partition_count();
        let mut out = Vec::with_capacity(items.len());
        let mut ops: Vec<FencedOp> = Vec::with_capacity(items.len());
        let mut op_items: Vec<(usize, Item, PartitionId)> = Vec::with_capacity(items.len());
        let mut accepted_at: Vec<Option<(Arc<StoredMessage>, Vec<Event>)>> =
            Vec::with_capacity(items.len());
        let mut signals = Vec::new();
        let prior = self.prior_recipients(tenant, &items).await;
        // The actors need the recipients; one batched read here saves one read per message there.
        let send_recipients: Vec<String> = items
            .iter()
            .filter_map(|(_, item)| match item {
                Item::Send(request) => Some(request.recipient_id.clone()),
                _ => None,
            })
            .collect();
        let mut recipients: HashMap<String, Recipient> = HashMap::new();
        if !send_recipients.is_empty()
            && let Ok(found) = self
                .context
                .store
                .get_recipients(&tenant.id, &send_recipients)
                .await
        {
            for recipient in found.into_iter().flatten() {
                recipients.insert(recipient.id.clone(), recipient);
            }
        }
        // New messages whose recipient's actor is idle: the actor writes the acceptance with
        // the message's first write; the ack waits for that (see `PendingAccept`).
        let mut with_actor: Vec<(usize, PartitionId, Fence, AcceptAnswer)> = Vec::new();
        let mut actor_accepts: HashSet<String> = HashSet::new();
        for (index, item) in items {
            if count == 0 {
                out.push((
                    index,
                    Err(Error::Unavailable("no partition table yet".into())),
                ));
                continue;
            }
            let partition = partition_of(&tenant.id.0, item.recipient_id(), count);
            let fence = match self.context.ownership.fence_or_wait(partition, wait).await {
                Ok(fence) => fence,
                Err(error) => {
                    out.push((index, Err(error)));
                    continue;
                }
            };
            let mut item = item;
            if let Item::Signal(signal) = item {
                signals.push((index, signal, fence));
                continue;
            }
            let op = match &mut item {
                Item::Send(request) => {
                    let message_id = ulid::Ulid::new().to_string();
                    let recipient_id = request.recipient_id.clone();
                    // The request moves into the stored message; only its recipient id is
                    // needed here afterwards.
                    let request = std::mem::replace(
                        request,
                        MessageRequest {
                            recipient_id: request.recipient_id.clone(),
                            ..Default::default()
                        },
                    );
                    let stored = StoredMessage {
                        message_id: message_id.clone(),
                        tenant: tenant.id.0.clone(),
                        payload_hash: payload_hash(&request),
                        partition: partition.0,
                        created_unix_ms: now_unix_ms(),
                        request: Some(request),
                    };
                    let accepted = Event {
                        message_id,
                        recipient_id: stored
                            .request
                            .as_ref()
                            .map(|r| r.recipient_id.clone())
                            .unwrap_or_default(),
                        kind: EventKind::EventAccepted as i32,
                        at_unix_ms: stored.created_unix_ms,
                        node_id: self.context.node_id.0.clone(),
                        epoch: fence.epoch.0,
                        partition: partition.0,
                        status: MessageStatus::Pending as i32,
                        seq: 1,
                        ..Default::default()
                    };
                    let stored = Arc::new(stored);
                    // A copy of the event only when someone watches; the actor's history
                    // needs only its position in the log (`fresh_history`).
                    let watched = self.context.events.wanted(std::slice::from_ref(&accepted));
                    let accept = WriteOp::AcceptMessage {
                        message: stored.clone(),
                        accepted,
                        idempotency_ttl: self.context.idempotency_ttl(),
                        guards: 0,
                    };
                    let key = (tenant.id.clone(), recipient_id);
                    // A recipient's later messages in this batch follow its first through the
                    // actor, so they are accepted in request order.
                    if actor_accepts.contains(&key.1) || self.context.directory.is_idle(&key) {
                        actor_accepts.insert(key.1.clone());
                        // Admission control: the ack waits while the node is saturated.
                        let Ok(permit) = self.context.admission.clone().acquire_owned().await
                        else {
                            out.push((index, Err(Error::Unavailable("node shutting down".into()))));
                            continue;
                        };
                        let (reply, answer) = tokio::sync::oneshot::channel();
                        dispatch(
                            &self.context,
                            tenant.clone(),
                            stored,
                            fence,
                            Some(crate::actors::waterfall::fresh_history()),
                            recipients.remove(&key.1),
                            permit,
                            Some(PendingAccept {
                                op: FencedOp { fence, op: accept },
                                watched,
                                reply,
                            }),
                        );
                        with_actor.push((index, partition, fence, answer));
                        continue;
                    }
                    accepted_at.push(Some((stored, watched)));
                    accept
                }
                Item::Upsert(recipient) => {
                    let prior = prior.get(&recipient.id);
                    crate::policy::consent::merge_upsert(prior, recipient, now_unix_ms());
                    if let Some(prior) = prior {
                        keep_suppressions(prior, recipient);
                    }
                    accepted_at.push(None);
                    WriteOp::PutRecipient {
                        tenant: tenant.id.clone(),
                        recipient: recipient.clone(),
                    }
                }
                Item::Erase(recipient_id) => {
                    accepted_at.push(None);
                    WriteOp::EraseRecipient {
                        tenant: tenant.id.clone(),
                        recipient_id: recipient_id.clone(),
                    }
                }
                Item::Signal(_) => continue,
            };
            ops.push(FencedOp { fence, op });
            op_items.push((index, item, partition));
        }
        for (index, signal, fence) in signals {
            let status = self.deliver_signal(tenant, signal, fence).await;
            out.push((index, status.map(ItemResult::Signal)));
        }
        if ops.is_empty() {
            out.extend(accepted_by_actors(with_actor).await);
            return out;
        }
        // Erase answers whether there was anything to erase.
        let mut existed = HashMap::new();
        for (_, item, _) in &op_items {
            if let Item::Erase(id) = item {
                let found = self.context.store.get_recipient(&tenant.id, id).await;
                existed.insert(id.clone(), matches!(found, Ok(Some(_))));
            }
        }
        let fences: Vec<_> = ops.iter().map(|op| op.fence).collect();
        let outcomes = match self.context.store.write(ops).await {
            Ok(outcomes) => outcomes,
            Err(error) => {
                for (index, _, _) in op_items {
                    out.push((index, Err(Error::Unavailable(format!("store: {error}")))));
                }
                out.extend(accepted_by_actors(with_actor).await);
                return out;
            }
        };
        let mut phone_index = Vec::new();
        for ((((index, item, partition), outcome), accepted), fence) in op_items
            .into_iter()
            .zip(outcomes)
            .zip(accepted_at)
            .zip(fences)
        {
            let result = match (outcome, item) {
                (
                    WriteOutcome::Accepted {
                        message_id,
                        duplicate,
                    },
                    Item::Send(request),
                ) => {
                    if !duplicate && let Some((stored, watched)) = accepted {
                        self.context.events.publish(&tenant.id, &watched);
                        let recipient = recipients.remove(&request.recipient_id);
                        // Admission control: the ack waits while the node is saturated.
                        match self.context.admission.clone().acquire_owned().await {
                            Ok(permit) => self.dispatch(
                                tenant,
                                stored,
                                fence,
                                Some(crate::actors::waterfall::fresh_history()),
                                recipient,
                                permit,
                            ),
                            Err(_) => {
                                debug!("node shutting down; message resumes on the next owner")
                            }
                        }
                    }
                    Ok(ItemResult::Sent(SendResponse {
                        message_id: message_id.0,
                        duplicate,
                        error: None,
                    }))
                }
                (WriteOutcome::Fenced { stored }, _) => Err(Error::Fenced {
                    partition: partition.0,
                    stored: stored.0,
                    writer: fence.epoch.0,
                }),
                (WriteOutcome::Conflict { message_id }, Item::Send(_)) => {
                    Err(Error::IdempotencyConflict {
                        message_id: message_id.0,
                    })
                }
                (WriteOutcome::Done, Item::Upsert(recipient)) => {
                    if !recipient.phone.is_empty() {
                        phone_index.push(FencedOp {
                            fence,
                            op: WriteOp::PutValue {
                                key: herald_store::keys::value::phone_index(
                                    &tenant.id,
                                    &recipient.phone,
                                ),
                                value: recipient.id.clone().into_bytes(),
                                ttl: PHONE_INDEX_TTL,
                            },
                        });
                    }
                    Ok(ItemResult::Recipient(recipient))
                }
                (WriteOutcome::Done, Item::Erase(id)) => Ok(ItemResult::Erased(
                    existed.get(&id).copied().unwrap_or(false),
                )),
                (other, _) => Err(Error::Internal(format!(
                    "unexpected store outcome {other:?}"
                ))),
            };
            out.push((index, result));
        }
        if !phone_index.is_empty()
            && let Err(error) = self.context.store.write(phone_index).await
        {
            // The records are stored; only inbound keyword lookups miss them until the next
            // upsert.
            debug!(%error, "phone index write failed");
        }
        out.extend(accepted_by_actors(with_actor).await);
        out
    }

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
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return HashMap::new();
        }
        match self.context.store.get_recipients(&tenant.id, &ids).await {
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

    /// Hands a signal to the actor of its recipient and waits for the verdict.
    async fn deliver_signal(
        &self,
        tenant: &Arc<Tenant>,
        signal: ForwardSignal,
        fence: herald_store::Fence,
    ) -> Result<ReportResult, Error> {
        let unknown = |message_id: String| ReportResult {
            status: ReportStatus::ReportUnknown as i32,
            message_id,
        };
        if signal.message_id.is_empty() {
            return self.deliver_consent(tenant, signal, fence).await;
        }
        let record = load_message(&self.context, &tenant.id, &signal.message_id).await?;
        let Some(record) = record else {
            return Ok(unknown(signal.message_id));
        };
        let belongs = record
            .message
            .request
            .as_ref()
            .is_some_and(|r| r.recipient_id == signal.recipient_id);
        if !belongs {
            return Ok(unknown(signal.message_id));
        }
        let Ok(permit) = self.context.signal_admission.clone().acquire_owned().await else {
            return Err(Error::Unavailable("node shutting down".into()));
        };
        let (reply, verdict) = tokio::sync::oneshot::channel();
        let message_id = signal.message_id.clone();
        let key = (tenant.id.clone(), signal.recipient_id.clone());
        let job = Job {
            tenant: tenant.clone(),
            message: Arc::new(record.message),
            fence,
            history: None,
            recipient: None,
            permit,
            signal: Some(Signal {
                step: signal.step,
                kind: signal.kind(),
                detail: signal.detail,
                reply_text: signal.reply_text,
                source: signal.source,
                reply: Some(reply),
            }),
            accept: None,
        };
        self.context.directory.dispatch(
            &self.context,
            key,
            fence.partition,
            RecipientMsg::Run(Box::new(job)),
        );
        match tokio::time::timeout(self.context.route_timeout(), verdict).await {
            Ok(Ok(status)) if status != ReportStatus::Unspecified => Ok(ReportResult {
                status: status as i32,
                message_id,
            }),
            // The actor stopped on a fence (the partition moved) or gave up: let the caller
            // route again.
            Ok(_) => Err(Error::Unavailable(
                "receipt not applied; partition moving".into(),
            )),
            Err(_) => Err(Error::Unavailable("receipt not applied in time".into())),
        }
    }

    /// A recipient-level signal (an SMS keyword): a consent change for its actor.
    async fn deliver_consent(
        &self,
        tenant: &Arc<Tenant>,
        signal: ForwardSignal,
        fence: herald_store::Fence,
    ) -> Result<ReportResult, Error> {
        use herald_proto::v1::{ChannelConsent, ConsentState, EngagementKind};
        let replies = &self.context.config.sms_keywords;
        if signal.kind() == EngagementKind::EngagementReplied {
            // The person wrote to us: a messenger-style session window opens.
            let write = self
                .context
                .store
                .write(vec![FencedOp {
                    fence,
                    op: WriteOp::PutValue {
                        key: herald_store::keys::value::last_inbound(
                            &tenant.id,
                            &signal.recipient_id,
                        ),
                        value: now_unix_ms().to_string().into_bytes(),
                        ttl: Duration::from_secs(30 * 86_400),
                    },
                }])
                .await
                .map_err(|e| Error::Unavailable(format!("store: {e}")))?;
            let status = if write
                .iter()
                .any(|o| matches!(o, WriteOutcome::Fenced { .. }))
            {
                return Err(Error::Unavailable("partition moved".into()));
            } else {
                ReportStatus::ReportApplied
            };
            return Ok(ReportResult {
                status: status as i32,
                message_id: String::new(),
            });
        }
        let (state, reply) = match signal.kind() {
            EngagementKind::EngagementUnsubscribed => {
                (ConsentState::OptedOut, replies.stop_reply.clone())
            }
            EngagementKind::EngagementOptedIn => {
                (ConsentState::OptedIn, replies.start_reply.clone())
            }
            _ => {
                return Ok(ReportResult {
                    status: ReportStatus::ReportUnknown as i32,
                    message_id: String::new(),
                });
            }
        };
        let Ok(permit) = self.context.signal_admission.clone().acquire_owned().await else {
            return Err(Error::Unavailable("node shutting down".into()));
        };
        let (reply_tx, verdict) = tokio::sync::oneshot::channel();
        let confirm = (!reply.is_empty() && !signal.sender.is_empty())
            .then(|| (signal.sender.clone(), reply));
        // STOPALL leaves every sender of the channel; the confirmation still comes from the
        // number it was sent to.
        let scope = if signal.detail == "stopall" {
            String::new()
        } else {
            signal.sender.clone()
        };
        let job = crate::actors::recipient::ConsentJob {
            tenant: tenant.clone(),
            recipient_id: signal.recipient_id.clone(),
            fence,
            change: ChannelConsent {
                channel: signal.channel,
                state: state as i32,
                topic: String::new(),
                source: signal.source.clone(),
                at_unix_ms: now_unix_ms(),
                sender: scope,
            },
            confirm,
            reply: Some(reply_tx),
            permit,
        };
        self.context.directory.dispatch(
            &self.context,
            (tenant.id.clone(), signal.recipient_id),
            fence.partition,
            RecipientMsg::Consent(Box::new(job)),
        );
        match tokio::time::timeout(self.context.route_timeout(), verdict).await {
            Ok(Ok(status)) if status != ReportStatus::Unspecified => Ok(ReportResult {
                status: status as i32,
                message_id: String::new(),
            }),
            Ok(_) => Err(Error::Unavailable(
                "consent change not applied; partition moving".into(),
            )),
            Err(_) => Err(Error::Unavailable(
                "consent change not applied in time".into(),
            )),
        }
    }

    /// Hands a message to its recipient's actor (new, or resumed from the log).
    pub fn dispatch(
        &self,
        tenant: &Arc<Tenant>,
        message: Arc<StoredMessage>,
        fence: herald_store::Fence,
        history: Option<Vec<Event>>,
        recipient: Option<Recipient>,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        dispatch(
            &self.context,
            tenant.clone(),
            message,
            fence,
            history,
            recipient,
            permit,
            None,
        );
    }
}

#[allow(clippy::too_many_arguments)]
pub fn dispatch(
    context: &Arc<NodeContext>,
    tenant: Arc<Tenant>,
    message: Arc<StoredMessage>,
    fence: herald_store::Fence,
    history: Option<Vec<Event>>,
    recipient: Option<Recipient>,
    permit: tokio::sync::OwnedSemaphorePermit,
    accept: Option<PendingAccept>,
) {
    let recipient_id = message
        .request
        .as_ref()
        .map(|r| r.recipient_id.clone())
        .unwrap_or_default();
    let key = (tenant.id.clone(), recipient_id);
    context.directory.dispatch(
        context,
        key,
        fence.partition,
        RecipientMsg::Run(Box::new(Job {
            tenant,
            message,
            fence,
            history,
            recipient,
            permit,
            signal: None,
            accept,
        })),
    );
}

/// A recipient actor's answer about the acceptance it wrote (see `PendingAccept`).
type AcceptAnswer = tokio::sync::oneshot::Receiver<Result<WriteOutcome, String>>;

/// The results of the messages whose actors wrote their acceptance.
async fn accepted_by_actors(
    waiting: Vec<(usize, PartitionId, Fence, AcceptAnswer)>,
) -> Vec<(usize, Result<ItemResult, Error>)> {
    let mut out = Vec::with_capacity(waiting.len());
    for (index, partition, fence, answer) in waiting {
        let result = match answer.await {
            Ok(Ok(WriteOutcome::Accepted {
                message_id,
                duplicate,
            })) => Ok(ItemResult::Sent(SendResponse {
                message_id: message_id.0,
                duplicate,
                error: None,
            })),
            Ok(Ok(WriteOutcome::Conflict { message_id })) => Err(Error::IdempotencyConflict {
                message_id: message_id.0,
            }),
            Ok(Ok(WriteOutcome::Fenced { stored })) => Err(Error::Fenced {
                partition: partition.0,
                stored: stored.0,
                writer: fence.epoch.0,
            }),
            Ok(Ok(other)) => Err(Error::Internal(format!(
                "unexpected store outcome {other:?}"
            ))),
            Ok(Err(reason)) => Err(Error::Unavailable(reason)),
            Err(_) => Err(Error::Unavailable(
                "the recipient's actor stopped before the message was accepted".into(),
            )),
        };
        out.push((index, result));
    }
    out
}

/// How long a phone number stays findable (inbound keywords) after its recipient's last upsert.
const PHONE_INDEX_TTL: Duration = Duration::from_secs(400 * 86_400);

/// Carries `prior`'s suppressed contact points over to `next` (an upsert replaces the record,
/// but a suppression ends only by a new explicit consent): an entry stays while its address is
/// still in `next`, unless `next` opts its channel in where `prior` had not.
pub fn keep_suppressions(prior: &Recipient, next: &mut Recipient) {
    use herald_proto::v1::{Channel, ConsentState};
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

/// Loads a message by id (any node can: reads need no fence).
pub async fn load_message(
    context: &NodeContext,
    tenant: &TenantId,
    message_id: &str,
) -> Result<Option<herald_store::MessageRecord>, Error> {
    context
        .store
        .get_message(tenant, &MessageId(message_id.to_string()))
        .await
        .map_err(|e| Error::Unavailable(format!("store: {e}")))
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
