//! The public `Breakers` service: the state of a campaign's or sender's block-rate breaker,
//! and the explicit resume after a pause.

use herald_proto::error::Error;
use herald_proto::v1::breakers_server::Breakers;
use herald_proto::v1::{BreakerRequest, BreakerStatus};
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::channels::{Channels, campaign_key, sender_key};

pub struct BreakersApi {
    pub channels: Channels,
    pub tenants: Authenticator,
}

impl BreakersApi {
    async fn call(
        &self,
        request: Request<BreakerRequest>,
        resume: bool,
    ) -> Result<Response<BreakerStatus>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        let key = match (request.campaign_id.is_empty(), request.sender.is_empty()) {
            (false, true) => campaign_key(&tenant.id.0, &request.campaign_id),
            (true, false) => {
                if self.channels.account(&request.sender).is_none() {
                    return Err(Error::invalid(
                        "sender",
                        "is not a provider account of this cluster",
                    )
                    .into());
                }
                sender_key(&request.sender)
            }
            _ => {
                return Err(Error::invalid(
                    "campaign_id",
                    "give exactly one of campaign_id and sender",
                )
                .into());
            }
        };
        let status = self
            .channels
            .breaker(&key, resume)
            .await
            .map_err(|e| Error::Unavailable(format!("breaker: {e}")))?;
        Ok(Response::new(status))
    }
}

#[tonic::async_trait]
impl Breakers for BreakersApi {
    async fn get(
        &self,
        request: Request<BreakerRequest>,
    ) -> Result<Response<BreakerStatus>, Status> {
        self.call(request, false).await
    }

    async fn resume(
        &self,
        request: Request<BreakerRequest>,
    ) -> Result<Response<BreakerStatus>, Status> {
        self.call(request, true).await
    }
}
