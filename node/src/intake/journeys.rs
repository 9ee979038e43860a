//! Journey jobs to the person's actor: reported events (answered once the person's states
//! are durable), segment matches, due waits from the pager, and exits that need no answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_proto::TenantId;
use herald_proto::error::Error;
use herald_proto::v1::{ReportEventRequest, ReportEventResponse};
use herald_store::Fence;
use tokio::sync::oneshot;

use super::Intake;
use crate::actors::recipient::RecipientMsg;
use crate::auth::Tenant;
use crate::journey::entries::EnterSink;
use crate::journey::person::WaitMember;
use crate::journey::waits::{WakeSink, WakeTicket};
use crate::journey::walker::{JobKind, JourneyJob};

impl Intake {
    /// Hands a reported event to the person's actor and waits for its answer.
    pub(super) async fn deliver_journey_event(
        &self,
        tenant: &Arc<Tenant>,
        event: ReportEventRequest,
        fence: Fence,
    ) -> Result<ReportEventResponse, Error> {
        let Some(permit) = self.directory.admit_signal().await else {
            return Err(Error::Unavailable("node shutting down".into()));
        };
        let (reply, answer) = oneshot::channel();
        let properties: BTreeMap<String, String> = event.properties.into_iter().collect();
        self.journey_job(
            tenant,
            event.recipient_id,
            fence,
            Some(permit),
            JobKind::Event {
                event: event.event,
                properties,
                reply,
            },
        );
        match tokio::time::timeout(self.settings.verdict_timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Unavailable(
                "journey event not applied; partition moving".into(),
            )),
            Err(_) => Err(Error::Unavailable(
                "journey event not applied in time".into(),
            )),
        }
    }

    /// Queues a journey job on the person's actor.
    pub(crate) fn journey_job(
        &self,
        tenant: &Arc<Tenant>,
        recipient_id: String,
        fence: Fence,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
        kind: JobKind,
    ) {
        let key = (tenant.id.clone(), recipient_id.clone());
        let job = JourneyJob {
            tenant: tenant.clone(),
            recipient_id,
            fence,
            permit,
            kind,
        };
        self.directory
            .dispatch(key, fence.partition, RecipientMsg::Journey(Box::new(job)));
    }
}

impl EnterSink for Intake {
    fn enter(
        &self,
        tenant: &TenantId,
        fence: Fence,
        recipient_id: String,
        journey_id: String,
        done: oneshot::Sender<bool>,
    ) {
        let tenant = self.tenants.tenant(&tenant.0);
        self.journey_job(
            &tenant,
            recipient_id,
            fence,
            None,
            JobKind::Enter {
                journey: journey_id,
                done,
            },
        );
    }
}

impl WakeSink for Intake {
    fn wake(&self, fence: Fence, member: WaitMember, ticket: WakeTicket) {
        let tenant = self.tenants.tenant(&member.tenant.0);
        let recipient_id = member.recipient_id.clone();
        self.journey_job(
            &tenant,
            recipient_id,
            fence,
            None,
            JobKind::Wake { member, ticket },
        );
    }
}
