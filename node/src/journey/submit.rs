//! # journey::submit: a journey's messages into the intake, through the router
//!
//! Owns the one way a journey's send reaches the intake: a queue the walker puts requests on
//! and a loop, started once the router exists, that routes each like any client's `Send`
//! (consent, suppression, caps, quiet hours and the waterfall all apply). The queue breaks the
//! loop of construction (the actors' environment is built before the router that reaches
//! them) without a late-bound handle. Must never change a request: its idempotency key is
//! what makes a repeated walk harmless.

use std::sync::Arc;

use herald_proto::error::Error;
use herald_proto::v1::{MessageRequest, SendResponse};
use tokio::sync::{mpsc, oneshot, watch};

use super::walker::SubmitMessage;
use crate::auth::Tenant;
use crate::items::{Item, ItemResult};
use crate::router::Router;

type Request = (
    Arc<Tenant>,
    MessageRequest,
    oneshot::Sender<Result<SendResponse, Error>>,
);

/// The walker's side of the queue.
pub struct RoutedSubmit {
    queue: mpsc::Sender<Request>,
}

/// The router's side, to be run with [`SubmitLoop::run`].
pub struct SubmitLoop {
    requests: mpsc::Receiver<Request>,
}

/// Requests queued at most (a walker waits when the queue is full).
const QUEUE: usize = 1024;

pub fn queue() -> (RoutedSubmit, SubmitLoop) {
    let (queue, requests) = mpsc::channel(QUEUE);
    (RoutedSubmit { queue }, SubmitLoop { requests })
}

#[async_trait::async_trait]
impl SubmitMessage for RoutedSubmit {
    async fn submit(
        &self,
        tenant: &Arc<Tenant>,
        request: MessageRequest,
    ) -> Result<SendResponse, Error> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((tenant.clone(), request, reply))
            .await
            .map_err(|_| Error::Unavailable("node shutting down".into()))?;
        answer
            .await
            .map_err(|_| Error::Unavailable("node shutting down".into()))?
    }
}

impl SubmitLoop {
    /// Routes every queued request (each on its own task) until shutdown.
    pub async fn run(mut self, router: Router, mut shutdown: watch::Receiver<bool>) {
        loop {
            let next = tokio::select! {
                next = self.requests.recv() => next,
                _ = shutdown.changed() => return,
            };
            let Some((tenant, request, reply)) = next else {
                return;
            };
            let router = router.clone();
            tokio::spawn(async move {
                let result = router
                    .route(&tenant, vec![Item::Send(request)])
                    .await
                    .pop()
                    .unwrap_or_else(|| Err(Error::Internal("no routing result".into())));
                let answer = match result {
                    Ok(ItemResult::Sent(sent)) => Ok(sent),
                    Ok(_) => Err(Error::Internal("unexpected routing result".into())),
                    Err(error) => Err(error),
                };
                let _ = reply.send(answer);
            });
        }
    }
}
