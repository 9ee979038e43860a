//! The public `Recipients` service.

use herald_proto::error::Error;
use herald_proto::v1::recipients_server::Recipients;
use herald_proto::v1::{
    EraseRecipientRequest, EraseRecipientResponse, GetRecipientRequest, Recipient,
    UpsertRecipientRequest, UpsertRecipientResponse, UpsertRecipientsRequest,
    UpsertRecipientsResponse,
};
use tonic::{Request, Response, Status};

use super::item_status;
use std::sync::Arc;

use herald_store::Store;

use super::Limits;
use crate::auth::Authenticator;
use crate::items::{Item, ItemResult};
use crate::router::Router;
use crate::validate;

pub struct RecipientsApi {
    pub router: Router,
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
    pub limits: Limits,
}

#[tonic::async_trait]
impl Recipients for RecipientsApi {
    async fn upsert_recipient(
        &self,
        request: Request<UpsertRecipientRequest>,
    ) -> Result<Response<UpsertRecipientResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let recipient = request
            .into_inner()
            .recipient
            .ok_or_else(|| Error::invalid("recipient", "is required"))?;
        validate::recipient("recipient", &recipient)?;
        let mut results = self
            .router
            .route(&tenant, vec![Item::Upsert(recipient)])
            .await;
        match results.pop() {
            Some(Ok(ItemResult::Recipient(recipient))) => {
                Ok(Response::new(UpsertRecipientResponse {
                    recipient: Some(*recipient),
                }))
            }
            Some(Ok(_)) | None => Err(Status::internal("unexpected routing result")),
            Some(Err(error)) => Err(item_status("recipient", error)),
        }
    }

    async fn upsert_recipients(
        &self,
        request: Request<UpsertRecipientsRequest>,
    ) -> Result<Response<UpsertRecipientsResponse>, Status> {
        let units = request.get_ref().recipients.len();
        let tenant = self
            .tenants
            .authenticate_units(request.metadata(), units)
            .await?;
        let recipients = request.into_inner().recipients;
        if recipients.is_empty() {
            return Err(Error::invalid("recipients", "must hold at least one recipient").into());
        }
        if recipients.len() > self.limits.batch_max {
            return Err(Error::invalid(
                "recipients",
                format!(
                    "batch of {} exceeds the limit of {}",
                    recipients.len(),
                    self.limits.batch_max
                ),
            )
            .into());
        }
        for (index, recipient) in recipients.iter().enumerate() {
            validate::recipient(&format!("recipients[{index}]"), recipient)?;
        }
        let results = self
            .router
            .route(&tenant, recipients.into_iter().map(Item::Upsert).collect())
            .await;
        let mut upserted = 0u32;
        for (index, result) in results.into_iter().enumerate() {
            match result {
                Ok(_) => upserted += 1,
                Err(error) => return Err(item_status(&format!("recipients[{index}]"), error)),
            }
        }
        Ok(Response::new(UpsertRecipientsResponse { upserted }))
    }

    async fn get_recipient(
        &self,
        request: Request<GetRecipientRequest>,
    ) -> Result<Response<Recipient>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        let recipient = self
            .store
            .get_recipient(&tenant.id, &id)
            .await
            .map_err(|e| Error::Unavailable(format!("store: {e}")))?
            .ok_or_else(|| Error::NotFound {
                what: format!("recipient {id}"),
            })?;
        Ok(Response::new(recipient))
    }

    async fn erase_recipient(
        &self,
        request: Request<EraseRecipientRequest>,
    ) -> Result<Response<EraseRecipientResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let id = request.into_inner().id;
        if id.is_empty() {
            return Err(Error::invalid("id", "is required").into());
        }
        let mut results = self.router.route(&tenant, vec![Item::Erase(id)]).await;
        match results.pop() {
            Some(Ok(ItemResult::Erased(erased))) => {
                Ok(Response::new(EraseRecipientResponse { erased }))
            }
            Some(Ok(_)) | None => Err(Status::internal("unexpected routing result")),
            Some(Err(error)) => Err(item_status("id", error)),
        }
    }
}
