//! A campaign slice's submissions, on the owner of their partition.
//!
//! A slice writes its members' acceptances itself, in one atomic write with the campaign's
//! checks (running, the slice's cursor, each member's credit hold) and counts; the intake
//! builds each acceptance exactly as it builds a client's (the message, its `accepted` event,
//! the idempotency record) and, once the write is durable, hands each new message to its
//! recipient's actor like any other. Must never write: the slice does, with its checks.

use std::sync::Arc;

use herald_proto::v1::{CampaignSend, MessageRequest, Recipient};
use herald_store::Fence;

use super::{Acceptance, Intake};
use crate::actors::recipient::RecipientMsg;
use crate::auth::Tenant;

impl Intake {
    /// The acceptance of `request` for `campaign`, in the partition of `fence` (as a client's
    /// message is accepted; the slice sets its `guards` and writes it).
    pub fn campaign_acceptance(
        &self,
        tenant: &Tenant,
        request: MessageRequest,
        campaign: CampaignSend,
        fence: Fence,
    ) -> Acceptance {
        self.acceptance(tenant, request, fence.partition, fence, Some(campaign))
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
        acceptance: Acceptance,
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
