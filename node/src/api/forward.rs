//! The internal `Forward` service: batches routed here by other nodes, calls to the
//! ChannelActors this node hosts, and the local event feed.
//!
//! Items are already validated and authenticated by the sending node. This node runs the items
//! (and channel calls) it owns and answers `wrong_owner{epoch}` for the rest; it never forwards
//! them again. Channel calls go to the channels component as they are.

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use herald_proto::error::Error;
use herald_proto::v1::forward_server::Forward;
use herald_proto::v1::{
    ChannelCallBatch, ChannelReplyBatch, Event, ForwardBatch, ForwardError, ForwardReply,
    ForwardResult, WatchLocalRequest, forward_result,
};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use std::sync::Arc;

use crate::auth::Authenticator;
use crate::channels::Channels;
use crate::events::EventBus;
use crate::intake::Intake;
use crate::items::Item;
use crate::watch::watch_local;

/// Batches being executed per inbound stream before the stream waits.
const BATCHES_IN_FLIGHT_MAX: usize = 64;

/// What the Forward service uses.
pub struct ForwardShared {
    pub intake: Arc<Intake>,
    pub tenants: Authenticator,
    pub events: EventBus,
    /// Calls to the ChannelActors this node hosts.
    pub channels: Channels,
    /// How long an item of a partition whose lease is being taken waits for it.
    pub lease_wait: Duration,
}

pub struct ForwardApi {
    shared: Arc<ForwardShared>,
}

impl ForwardApi {
    pub fn new(shared: ForwardShared) -> Self {
        Self {
            shared: Arc::new(shared),
        }
    }
}

fn error_result(error: Error) -> ForwardResult {
    let epoch = match &error {
        Error::WrongOwner { epoch } => epoch.0,
        _ => 0,
    };
    let code = error.code() as i32;
    // A conflict travels as the bare id that holds the key, so the receiving node words the
    // error exactly as it would for a local owner.
    let message = match &error {
        Error::IdempotencyConflict { message_id } => message_id.clone(),
        _ => error.to_string(),
    };
    ForwardResult {
        result: Some(forward_result::Result::Error(ForwardError {
            code,
            message,
            epoch,
        })),
    }
}

async fn execute(api: Arc<ForwardShared>, batch: ForwardBatch) -> ForwardReply {
    let count = batch.items.len();
    let mut results: Vec<Option<ForwardResult>> = (0..count).map(|_| None).collect();
    // Group by tenant: each tenant's items run as one local batch (one store round trip).
    let mut by_tenant: HashMap<String, Vec<(usize, Item)>> = HashMap::new();
    for (index, item) in batch.items.into_iter().enumerate() {
        match Item::from_forward(item) {
            Some((tenant, item)) => by_tenant.entry(tenant.0).or_default().push((index, item)),
            None => results[index] = Some(error_result(Error::invalid("op", "is required"))),
        }
    }
    for (tenant, items) in by_tenant {
        let tenant = api.tenants.tenant(&tenant);
        for (index, result) in api.intake.execute(&tenant, items, api.lease_wait).await {
            results[index] = Some(match result {
                Ok(item) => ForwardResult {
                    result: Some(item.into_forward()),
                },
                Err(error) => error_result(error),
            });
        }
    }
    ForwardReply {
        batch_id: batch.batch_id,
        results: results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| error_result(Error::Internal("no result".into()))))
            .collect(),
    }
}

#[tonic::async_trait]
impl Forward for ForwardApi {
    type ForwardStream = Pin<Box<dyn Stream<Item = Result<ForwardReply, Status>> + Send + 'static>>;

    async fn forward(
        &self,
        request: Request<Streaming<ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, outbound) =
            mpsc::channel::<Result<ForwardReply, Status>>(BATCHES_IN_FLIGHT_MAX);
        let shared = self.shared.clone();
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        tokio::spawn(async move {
            while let Some(batch) = inbound.next().await {
                let Ok(batch) = batch else { break };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let shared = shared.clone();
                let replies = replies.clone();
                tokio::spawn(async move {
                    let reply = execute(shared, batch).await;
                    let _ = replies.send(Ok(reply)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    type ChannelsStream =
        Pin<Box<dyn Stream<Item = Result<ChannelReplyBatch, Status>> + Send + 'static>>;

    async fn channels(
        &self,
        request: Request<Streaming<ChannelCallBatch>>,
    ) -> Result<Response<Self::ChannelsStream>, Status> {
        let mut inbound = request.into_inner();
        let (replies, outbound) =
            mpsc::channel::<Result<ChannelReplyBatch, Status>>(BATCHES_IN_FLIGHT_MAX);
        let channels = self.shared.channels.clone();
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(BATCHES_IN_FLIGHT_MAX));
        tokio::spawn(async move {
            while let Some(batch) = inbound.next().await {
                let Ok(batch) = batch else { break };
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    break;
                };
                let channels = channels.clone();
                let replies = replies.clone();
                // Each batch on its own: a call waiting for a lease must not hold up the
                // slot requests behind it.
                tokio::spawn(async move {
                    let reply = channels.serve(batch).await;
                    let _ = replies.send(Ok(reply)).await;
                    drop(permit);
                });
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(outbound))))
    }

    type WatchLocalStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

    async fn watch_local(
        &self,
        request: Request<WatchLocalRequest>,
    ) -> Result<Response<Self::WatchLocalStream>, Status> {
        Ok(Response::new(watch_local(
            &self.shared.events,
            request.into_inner(),
        )))
    }
}
