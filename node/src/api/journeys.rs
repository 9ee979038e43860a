//! The public `Journeys` service.
//!
//! Decode, authenticate (the tenant comes from the API key), validate field by field, then read
//! or write the tenant's journeys in the store ([`crate::journey::book`]); any node may answer.
//! Must never store anything of a request that failed validation.

use std::sync::Arc;

use herald_proto::clock::SharedClock;
use herald_proto::error::Error;
use herald_proto::v1::journeys_server::Journeys;
use herald_proto::v1::{
    CreateJourneyRequest, JourneyRequest, JourneyState, JourneyView, ListJourneysRequest,
    ListJourneysResponse,
};
use herald_store::Store;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::journey::{book, spec};

pub struct JourneysApi {
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
    pub clock: SharedClock,
    pub max_message_bytes: usize,
}

fn check_journey_id(id: &str) -> Result<(), Status> {
    super::check_handed_out_id("journey_id", id, "the id CreateJourney answered")
}

impl JourneysApi {
    async fn change(
        &self,
        request: Request<JourneyRequest>,
        from: &[JourneyState],
        to: JourneyState,
    ) -> Result<Response<JourneyView>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let id = request.into_inner().journey_id;
        check_journey_id(&id)?;
        let now = self.clock.now_unix_ms();
        let view = book::change_state(&self.store, &tenant.id, &id, from, to, now).await?;
        Ok(Response::new(view))
    }
}

#[tonic::async_trait]
impl Journeys for JourneysApi {
    async fn create_journey(
        &self,
        request: Request<CreateJourneyRequest>,
    ) -> Result<Response<JourneyView>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let Some(mut spec) = request.into_inner().spec else {
            return Err(Error::invalid("spec", "is required").into());
        };
        spec::validate(&mut spec, self.max_message_bytes)?;
        let id = ulid::Ulid::new().to_string();
        let now = self.clock.now_unix_ms();
        let view = book::create(&self.store, &tenant.id, id, spec, now).await?;
        Ok(Response::new(view))
    }

    async fn get_journey(
        &self,
        request: Request<JourneyRequest>,
    ) -> Result<Response<JourneyView>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let id = request.into_inner().journey_id;
        check_journey_id(&id)?;
        Ok(Response::new(
            book::get(&self.store, &tenant.id, &id).await?,
        ))
    }

    async fn list_journeys(
        &self,
        request: Request<ListJourneysRequest>,
    ) -> Result<Response<ListJourneysResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        if request.limit as usize > book::LIST_MAX {
            return Err(Error::invalid(
                "limit",
                format!("is {}, at most {}", request.limit, book::LIST_MAX),
            )
            .into());
        }
        if JourneyState::try_from(request.state).is_err() {
            return Err(Error::invalid("state", "is not a JourneyState").into());
        }
        let journeys = book::list(
            &self.store,
            &tenant.id,
            request.state(),
            request.limit as usize,
        )
        .await?;
        Ok(Response::new(ListJourneysResponse { journeys }))
    }

    async fn pause_journey(
        &self,
        request: Request<JourneyRequest>,
    ) -> Result<Response<JourneyView>, Status> {
        self.change(request, &[JourneyState::Active], JourneyState::Paused)
            .await
    }

    async fn resume_journey(
        &self,
        request: Request<JourneyRequest>,
    ) -> Result<Response<JourneyView>, Status> {
        self.change(request, &[JourneyState::Paused], JourneyState::Active)
            .await
    }

    async fn archive_journey(
        &self,
        request: Request<JourneyRequest>,
    ) -> Result<Response<JourneyView>, Status> {
        self.change(
            request,
            &[JourneyState::Active, JourneyState::Paused],
            JourneyState::Archived,
        )
        .await
    }
}
