//! Receipts and consent signals, handed to the recipient's actor; its verdict is the answer.

use std::sync::Arc;

use herald_proto::error::Error;
use herald_proto::v1::{
    ChannelConsent, ConsentState, EngagementKind, ForwardSignal, ReportResult, ReportStatus,
};
use herald_store::Fence;

use super::{Intake, load_message, reply_port};
use crate::actors::recipient::{ConsentJob, InboundJob, Job, RecipientMsg, SignalJob};
use crate::auth::Tenant;

impl Intake {
    /// Waits for an actor's verdict on a signal, within the verdict timeout.
    async fn verdict(
        &self,
        answer: ractor::concurrency::OneshotReceiver<ReportStatus>,
        message_id: String,
        what: &str,
    ) -> Result<ReportResult, Error> {
        match tokio::time::timeout(self.settings.verdict_timeout, answer).await {
            Ok(Ok(status)) if status != ReportStatus::Unspecified => Ok(ReportResult {
                status: status as i32,
                message_id,
            }),
            // The actor stopped on a fence (the partition moved) or gave up: let the caller
            // route again.
            Ok(_) => Err(Error::Unavailable(format!(
                "{what} not applied; partition moving"
            ))),
            Err(_) => Err(Error::Unavailable(format!("{what} not applied in time"))),
        }
    }

    /// Hands a signal to the actor of its recipient and waits for the verdict.
    pub(super) async fn deliver_signal(
        &self,
        tenant: &Arc<Tenant>,
        signal: ForwardSignal,
        fence: Fence,
    ) -> Result<ReportResult, Error> {
        let unknown = |message_id: String| ReportResult {
            status: ReportStatus::ReportUnknown as i32,
            message_id,
        };
        if signal.message_id.is_empty() {
            return self.deliver_consent(tenant, signal, fence).await;
        }
        let Some(record) = load_message(&*self.store, &tenant.id, &signal.message_id).await? else {
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
        let Some(permit) = self.directory.admit_signal().await else {
            return Err(Error::Unavailable("node shutting down".into()));
        };
        let (reply, answer) = reply_port();
        let message_id = signal.message_id.clone();
        let kind = signal.kind();
        let job = SignalJob {
            job: Job {
                tenant: tenant.clone(),
                message: Arc::new(record.message),
                fence,
                history: None,
                recipient: None,
                permit,
                accept: None,
            },
            signal: crate::waterfall::receipt::Signal {
                step: signal.step,
                kind,
                detail: signal.detail,
                source: signal.source,
            },
            reply,
        };
        self.directory.dispatch(
            (tenant.id.clone(), signal.recipient_id),
            fence.partition,
            RecipientMsg::Signal(Box::new(job)),
        );
        self.verdict(answer, message_id, "receipt").await
    }

    /// A recipient-level signal (an SMS keyword, a reply): a consent change or an inbound
    /// message for its actor.
    async fn deliver_consent(
        &self,
        tenant: &Arc<Tenant>,
        signal: ForwardSignal,
        fence: Fence,
    ) -> Result<ReportResult, Error> {
        let replies = &self.settings.keyword_replies;
        let (state, text) = match signal.kind() {
            EngagementKind::EngagementReplied => {
                let Some(permit) = self.directory.admit_signal().await else {
                    return Err(Error::Unavailable("node shutting down".into()));
                };
                let (reply, answer) = reply_port();
                let job = InboundJob {
                    tenant: tenant.clone(),
                    recipient_id: signal.recipient_id.clone(),
                    fence,
                    reply,
                    permit,
                };
                self.directory.dispatch(
                    (tenant.id.clone(), signal.recipient_id),
                    fence.partition,
                    RecipientMsg::Inbound(Box::new(job)),
                );
                return self.verdict(answer, String::new(), "reply").await;
            }
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
        let Some(permit) = self.directory.admit_signal().await else {
            return Err(Error::Unavailable("node shutting down".into()));
        };
        let (reply, answer) = reply_port();
        let confirm =
            (!text.is_empty() && !signal.sender.is_empty()).then(|| (signal.sender.clone(), text));
        // STOPALL leaves every sender of the channel; the confirmation still comes from the
        // number it was sent to.
        let scope = if signal.detail == "stopall" {
            String::new()
        } else {
            signal.sender.clone()
        };
        let job = ConsentJob {
            tenant: tenant.clone(),
            recipient_id: signal.recipient_id.clone(),
            fence,
            change: ChannelConsent {
                channel: signal.channel,
                state: state as i32,
                topic: String::new(),
                source: signal.source.clone(),
                at_unix_ms: self.clock.now_unix_ms(),
                sender: scope,
            },
            confirm,
            reply,
            permit,
        };
        self.directory.dispatch(
            (tenant.id.clone(), signal.recipient_id),
            fence.partition,
            RecipientMsg::Consent(Box::new(job)),
        );
        self.verdict(answer, String::new(), "consent change").await
    }
}
