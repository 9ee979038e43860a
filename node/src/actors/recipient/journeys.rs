//! What the actor's other jobs tell the person's journeys: engagement on a journey's message
//! (counted for its step, and an exit when the journey says so), opt-outs and replies (exits).
//! Run in the actor, after the job's own answer went out.

use std::sync::Arc;

use herald_proto::v1::EngagementKind;
use herald_store::Fence;

use super::{Job, RecipientEnv};
use crate::auth::Tenant;
use crate::journey::flow::{self, ExitSignal};
use crate::journey::walker::{self, JobKind, JourneyJob};

async fn run(
    env: &RecipientEnv,
    tenant: &Arc<Tenant>,
    recipient_id: &str,
    fence: Fence,
    kind: JobKind,
) {
    let job = JourneyJob {
        tenant: tenant.clone(),
        recipient_id: recipient_id.to_owned(),
        fence,
        permit: None,
        kind,
    };
    Box::pin(walker::run(&env.journeys, job)).await;
}

/// A receipt or engagement report was applied to `job`'s message.
pub(super) async fn engaged(env: &RecipientEnv, job: &Job, kind: EngagementKind) {
    let Some(request) = job.message.request.as_ref() else {
        return;
    };
    if kind == EngagementKind::EngagementUnsubscribed {
        let signal = ExitSignal::OptedOut {
            topic: request.topic.clone(),
        };
        end(
            env,
            &job.tenant,
            &request.recipient_id,
            job.fence,
            signal,
            None,
        )
        .await;
        return;
    }
    let Some((journey, step)) = flow::journey_of_key(&request.idempotency_key) else {
        return;
    };
    let kind = JobKind::Engaged {
        journey: journey.to_owned(),
        step: step.to_owned(),
        kind,
    };
    run(env, &job.tenant, &request.recipient_id, job.fence, kind).await;
}

/// Ends the person's journeys that `signal` exits (only `journey` when given).
pub(super) async fn end(
    env: &RecipientEnv,
    tenant: &Arc<Tenant>,
    recipient_id: &str,
    fence: Fence,
    signal: ExitSignal,
    journey: Option<String>,
) {
    run(
        env,
        tenant,
        recipient_id,
        fence,
        JobKind::Exit { signal, journey },
    )
    .await;
}
