//! The public `Delivery` service.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use herald_proto::error::Error;
use herald_proto::v1::delivery_server::Delivery;
use herald_proto::v1::{
    Event, GetMessageRequest, GetMessageResponse, ItemError, MessageStatus, MessageView,
    SendBatchRequest, SendBatchResponse, SendRequest, SendResponse, WatchLocalRequest,
    WatchMessagesRequest,
};
use tonic::{Request, Response, Status};

use super::item_status;
use herald_store::Store;

use super::Limits;
use crate::auth::Authenticator;
use crate::content::pricing::PriceTable;
use crate::intake::load_message;
use crate::items::{Item, ItemResult};
use crate::router::Router;
use crate::validate;
use crate::watch::Watch;

pub struct DeliveryApi {
    pub router: Router,
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    pub prices: Arc<PriceTable>,
    pub watch: Watch,
}

fn ensure_idempotency_key(request: &mut herald_proto::v1::MessageRequest) {
    // Without a client key, a key made here still makes retries across forwarding safe.
    if request.idempotency_key.is_empty() {
        request.idempotency_key = format!("auto:{}", ulid::Ulid::new());
    }
}

#[tonic::async_trait]
impl Delivery for DeliveryApi {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let mut message = request
            .into_inner()
            .message
            .ok_or_else(|| Error::invalid("message", "is required"))?;
        validate::message("message", &mut message, self.limits.max_message_bytes)?;
        require_recipients(self, &tenant.id, std::slice::from_mut(&mut message), |_| {
            "message".into()
        })
        .await?;
        ensure_idempotency_key(&mut message);
        let mut results = self.router.route(&tenant, vec![Item::Send(message)]).await;
        match results.pop() {
            Some(Ok(ItemResult::Sent(sent))) => Ok(Response::new(sent)),
            Some(Ok(_)) => Err(Status::internal("unexpected routing result")),
            Some(Err(error)) => Err(item_status("message", error)),
            None => Err(Status::internal("no routing result")),
        }
    }

    async fn send_batch(
        &self,
        request: Request<SendBatchRequest>,
    ) -> Result<Response<SendBatchResponse>, Status> {
        let units = request.get_ref().messages.len();
        let tenant = self
            .tenants
            .authenticate_units(request.metadata(), units)
            .await?;
        let mut messages = request.into_inner().messages;
        if messages.is_empty() {
            return Err(Error::invalid("messages", "must hold at least one message").into());
        }
        if messages.len() > self.limits.batch_max {
            return Err(Error::invalid(
                "messages",
                format!(
                    "batch of {} exceeds the limit of {}",
                    messages.len(),
                    self.limits.batch_max
                ),
            )
            .into());
        }
        let mut prefix = String::with_capacity(16);
        for (index, message) in messages.iter_mut().enumerate() {
            use std::fmt::Write as _;
            prefix.clear();
            let _ = write!(prefix, "messages[{index}]");
            validate::message(&prefix, message, self.limits.max_message_bytes)?;
        }
        require_recipients(self, &tenant.id, &mut messages, |i| {
            format!("messages[{i}]")
        })
        .await?;
        for message in &mut messages {
            ensure_idempotency_key(message);
        }
        let results = self
            .router
            .route(&tenant, messages.into_iter().map(Item::Send).collect())
            .await;
        let mut out = Vec::with_capacity(results.len());
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(ItemResult::Sent(sent)) => out.push(sent),
                Ok(_) => return Err(Status::internal("unexpected routing result")),
                Err(error) => {
                    // Past validation, one message's failure must not hide the others' ids.
                    let message_id = match &error {
                        Error::IdempotencyConflict { message_id } => message_id.clone(),
                        _ => String::new(),
                    };
                    let status = item_status(&format!("messages[{index}]"), error);
                    out.push(SendResponse {
                        message_id,
                        duplicate: false,
                        error: Some(ItemError {
                            code: status.code() as i32,
                            message: status.message().to_string(),
                        }),
                    });
                }
            }
        }
        Ok(Response::new(SendBatchResponse { results: out }))
    }

    async fn get_message(
        &self,
        request: Request<GetMessageRequest>,
    ) -> Result<Response<GetMessageResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let message_id = request.into_inner().message_id;
        if message_id.is_empty() {
            return Err(Error::invalid("message_id", "is required").into());
        }
        let record = load_message(&*self.store, &tenant.id, &message_id)
            .await?
            .ok_or_else(|| Error::NotFound {
                what: format!("message {message_id}"),
            })?;
        let last = record.events.last();
        let request = record.message.request.clone().unwrap_or_default();
        let status = last.map(|e| e.status()).unwrap_or(MessageStatus::Pending);
        let status_reason = record
            .events
            .iter()
            .rev()
            .find(|e| !e.reason.is_empty())
            .map(|e| e.reason.clone())
            .unwrap_or_default();
        let view = MessageView {
            message_id: record.message.message_id.clone(),
            recipient_id: request.recipient_id.clone(),
            idempotency_key: request.idempotency_key.clone(),
            class: request.class,
            status: status as i32,
            status_reason,
            waterfall: request.waterfall.clone(),
            partition: record.message.partition,
            created_unix_ms: record.message.created_unix_ms,
            campaign_id: request.campaign_id.clone(),
        };
        Ok(Response::new(GetMessageResponse {
            message: Some(view),
            events: record.events,
        }))
    }

    type WatchMessagesStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send + 'static>>;

    async fn watch_messages(
        &self,
        request: Request<WatchMessagesRequest>,
    ) -> Result<Response<Self::WatchMessagesStream>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let filter = request.into_inner();
        let local = WatchLocalRequest {
            tenant: tenant.id.0.clone(),
            message_id: filter.message_id,
            recipient_id: filter.recipient_id,
            terminal_only: filter.terminal_only,
        };
        let stream = self.watch.cluster(local).await?;
        Ok(Response::new(stream))
    }
}

/// "Missing recipient" is bad input: checked before anything is stored. Messages with templates
/// are rendered once against their recipient (an undefined variable is an error now, not an
/// empty string at send), and `cost_order` waterfalls are ordered by the recipient's prices.
async fn require_recipients(
    api: &DeliveryApi,
    tenant: &herald_proto::TenantId,
    messages: &mut [herald_proto::v1::MessageRequest],
    field: impl Fn(usize) -> String,
) -> Result<(), Status> {
    let ids: Vec<String> = messages.iter().map(|m| m.recipient_id.clone()).collect();
    let needs_recipient = |m: &herald_proto::v1::MessageRequest| {
        m.cost_order
            || m.content
                .as_ref()
                .is_some_and(crate::content::template::has_templates)
    };
    if messages.iter().any(needs_recipient) {
        let found = api
            .store
            .get_recipients(tenant, &ids)
            .await
            .map_err(|e| Error::Unavailable(format!("store: {e}")))?;
        for (index, (message, recipient)) in messages.iter_mut().zip(found).enumerate() {
            let Some(recipient) = recipient else {
                return Err(Error::invalid(
                    format!("{}.recipient_id", field(index)),
                    "no such recipient (upsert it first)",
                )
                .into());
            };
            if let Some(content) = &message.content
                && crate::content::template::has_templates(content)
            {
                let vars =
                    crate::content::template::merge_vars(&recipient.attributes, &message.variables);
                crate::content::template::check(content, &vars)
                    .map_err(|e| e.into_invalid(&field(index)))?;
            }
            if message.cost_order {
                crate::content::order_by_cost(&api.prices, message, &recipient);
            }
        }
        return Ok(());
    }
    let missing = api
        .store
        .missing_recipients(tenant, &ids)
        .await
        .map_err(|e| Error::Unavailable(format!("store: {e}")))?;
    if let Some(index) = missing.first() {
        return Err(Error::invalid(
            format!("{}.recipient_id", field(*index)),
            "no such recipient (upsert it first)",
        )
        .into());
    }
    Ok(())
}
