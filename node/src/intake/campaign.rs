//! A campaign slice's submissions, on the owner of their partition.
//!
//! A slice writes its members' acceptances itself, in one atomic write with the campaign's
//! checks (running, the slice's cursor, each member's credit hold) and counts; the intake
//! builds each acceptance exactly as it builds a client's (the message, its `accepted` event,
//! the idempotency record) and, once the write is durable, hands each new message to its
//! recipient's actor like any other. Must never write: the slice does, with its checks.

use std::sync::Arc;

use herald_proto::v1::{
    CampaignSend, Event, EventKind, MessageRequest, MessageStatus, Recipient, StoredMessage,
};
use herald_store::{Fence, WriteOp};

use super::{Intake, payload_hash};
use crate::actors::recipient::RecipientMsg;
use crate::auth::Tenant;

/// A campaign member's message, ready to be accepted inside the slice's write.
pub struct CampaignAcceptance {
    pub stored: Arc<StoredMessage>,
    /// The `AcceptMessage` op (`guards` set by the slice).
    pub op: WriteOp,
    /// Copies of the `accepted` event for watchers (usually none).
    watched: Vec<Event>,
}

impl Intake {
    /// The acceptance of `request` for `campaign`, in the partition of `fence`.
    pub fn campaign_acceptance(
        &self,
        tenant: &Tenant,
        request: MessageRequest,
        campaign: CampaignSend,
        fence: Fence,
    ) -> CampaignAcceptance {
        let message_id = ulid::Ulid::new().to_string();
        let now = self.clock.now_unix_ms();
        let accepted = Event {
            message_id: message_id.clone(),
            recipient_id: request.recipient_id.clone(),
            kind: EventKind::EventAccepted as i32,
            at_unix_ms: now,
            node_id: self.node_id.0.clone(),
            epoch: fence.epoch.0,
            partition: fence.partition.0,
            status: MessageStatus::Pending as i32,
            seq: 1,
            ..Default::default()
        };
        let stored = Arc::new(StoredMessage {
            message_id,
            tenant: tenant.id.0.clone(),
            payload_hash: payload_hash(&request),
            partition: fence.partition.0,
            created_unix_ms: now,
            request: Some(request),
            campaign: Some(campaign),
        });
        let watched = self.events.wanted(std::slice::from_ref(&accepted));
        let op = WriteOp::AcceptMessage {
            message: stored.clone(),
            accepted,
            idempotency_ttl: self.settings.idempotency_ttl,
            guards: 0,
        };
        CampaignAcceptance {
            stored,
            op,
            watched,
        }
    }

    /// Permits to run `n` more messages on this node, taken before a slice writes them: an
    /// unpaced campaign goes as fast as the node runs messages, never piling up accepted
    /// messages that wait. `None` when the node is shutting down.
    pub async fn admit_campaign_messages(
        &self,
        n: usize,
    ) -> Option<Vec<tokio::sync::OwnedSemaphorePermit>> {
        self.directory.admit_many(n).await
    }

    /// Starts an accepted campaign message (its acceptance is durable): its actor runs it.
    pub fn start_accepted(
        &self,
        tenant: &Arc<Tenant>,
        acceptance: CampaignAcceptance,
        recipient: Option<Recipient>,
        fence: Fence,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        self.events.publish(&tenant.id, &acceptance.watched);
        let recipient_id = acceptance
            .stored
            .request
            .as_ref()
            .map(|r| r.recipient_id.clone())
            .unwrap_or_default();
        self.directory.dispatch(
            (tenant.id.clone(), recipient_id),
            fence.partition,
            RecipientMsg::Run(Box::new(Self::job(
                tenant,
                acceptance.stored,
                fence,
                recipient,
                permit,
                None,
            ))),
        );
    }
}
