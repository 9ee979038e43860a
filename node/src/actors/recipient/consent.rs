//! Consent changes and inbound replies, applied by the person's actor like everything else
//! that touches them.
//!
//! A keyword (STOP, START) changes the consent ledger and sends its one confirmation, only
//! when the ledger changed; a reply opens the person's messenger-style session window. Must
//! never log the number or the text.

use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1::{Channel, ChannelConsent, ConsentState, ReportStatus};
use herald_providers::Outcome;
use herald_store::{Fence, FencedOp, WriteOp, WriteOutcome, keys};
use ractor::RpcReplyPort;
use tracing::warn;

use super::RecipientEnv;
use crate::auth::Tenant;
use crate::journey::flow::ExitSignal;

/// How long an inbound reply keeps the person's session window facts.
const INBOUND_KEEP: Duration = Duration::from_secs(30 * 86_400);

/// A consent change for the recipient, with the one reply to send when it changed anything.
pub struct ConsentJob {
    pub tenant: Arc<Tenant>,
    pub recipient_id: String,
    pub fence: Fence,
    pub change: ChannelConsent,
    /// `(provider account, text)`: sent once, only when the ledger changed.
    pub confirm: Option<(String, String)>,
    pub reply: RpcReplyPort<ReportStatus>,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

/// The person wrote to the tenant (a reply that is no keyword).
pub struct InboundJob {
    pub tenant: Arc<Tenant>,
    pub recipient_id: String,
    pub fence: Fence,
    pub reply: RpcReplyPort<ReportStatus>,
    pub permit: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Debug, thiserror::Error)]
enum ConsentError {
    #[error("fenced: partition moved")]
    Fenced,
    #[error("store: {0}")]
    Store(#[from] herald_store::Error),
}

fn fenced(outcomes: &[WriteOutcome]) -> bool {
    outcomes
        .iter()
        .any(|o| matches!(o, WriteOutcome::Fenced { .. }))
}

pub async fn apply(env: &RecipientEnv, job: ConsentJob) {
    let verdict = match apply_once(env, &job).await {
        Ok(verdict) => verdict,
        Err(error) => {
            warn!(%error, "consent change failed");
            ReportStatus::Unspecified
        }
    };
    let _ = job.reply.send(verdict);
    if verdict == ReportStatus::ReportApplied && job.change.state() == ConsentState::OptedOut {
        let signal = ExitSignal::OptedOut {
            topic: job.change.topic.clone(),
        };
        super::journeys::end(env, &job.tenant, &job.recipient_id, job.fence, signal, None).await;
    }
}

async fn apply_once(env: &RecipientEnv, job: &ConsentJob) -> Result<ReportStatus, ConsentError> {
    let Some(mut updated) = env
        .store
        .get_recipient(&job.tenant.id, &job.recipient_id)
        .await?
    else {
        return Ok(ReportStatus::ReportUnknown);
    };
    let mut changed = crate::policy::consent::set(&mut updated, job.change.clone());
    // START after STOPALL: the keyword opt-out of every sender is lifted too.
    if job.change.state() == ConsentState::OptedIn {
        let stopall = updated
            .consent
            .iter()
            .find(|c| {
                c.channel == job.change.channel
                    && c.topic.is_empty()
                    && c.sender.is_empty()
                    && c.source == job.change.source
                    && c.state() == ConsentState::OptedOut
            })
            .cloned();
        if let Some(mut entry) = stopall {
            entry.state = ConsentState::OptedIn as i32;
            entry.at_unix_ms = job.change.at_unix_ms;
            changed |= crate::policy::consent::set(&mut updated, entry);
        }
    }
    if !changed {
        return Ok(ReportStatus::ReportDuplicate);
    }
    if job.change.state() == ConsentState::OptedOut
        && let Some((account, _)) = &job.confirm
    {
        super::walk::observe(
            env,
            &job.tenant.id.0,
            "",
            account,
            Channel::try_from(job.change.channel).unwrap_or_default(),
            crate::policy::block_rate::Signal::OptOut,
        );
    }
    let outcomes = env
        .store
        .write(vec![FencedOp {
            fence: job.fence,
            op: WriteOp::PutRecipient {
                tenant: job.tenant.id.clone(),
                recipient: updated.clone(),
            },
        }])
        .await?;
    if fenced(&outcomes) {
        return Err(ConsentError::Fenced);
    }
    if let Some((account, text)) = &job.confirm
        && !updated.phone.is_empty()
    {
        let attempt_id = format!("consent.{}", ulid::Ulid::new());
        let outcome = env
            .channels
            .send_text(account, &attempt_id, &updated.id, &updated.phone, text)
            .await;
        if !matches!(outcome, Some(Outcome::Accepted { .. })) {
            warn!(%attempt_id, ?outcome, "keyword confirmation not accepted");
        }
    }
    Ok(ReportStatus::ReportApplied)
}

pub async fn inbound(env: &RecipientEnv, job: InboundJob) {
    let write = env
        .store
        .write(vec![FencedOp {
            fence: job.fence,
            op: WriteOp::PutValue {
                key: keys::value::last_inbound(&job.tenant.id, &job.recipient_id),
                value: env.clock.now_unix_ms().to_string().into_bytes(),
                ttl: INBOUND_KEEP,
            },
        }])
        .await;
    let verdict = match write {
        Ok(outcomes) if !fenced(&outcomes) => ReportStatus::ReportApplied,
        Ok(_) => ReportStatus::Unspecified,
        Err(error) => {
            warn!(%error, "recording an inbound reply failed");
            ReportStatus::Unspecified
        }
    };
    let _ = job.reply.send(verdict);
    if verdict == ReportStatus::ReportApplied {
        let signal = ExitSignal::Replied;
        super::journeys::end(env, &job.tenant, &job.recipient_id, job.fence, signal, None).await;
    }
}
