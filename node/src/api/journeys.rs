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
    CreateJourneyRequest, JourneyPerson, JourneyPersonRequest, JourneyRequest, JourneyState,
    JourneyView, ListJourneysRequest, ListJourneysResponse, ReportEventRequest,
    ReportEventResponse,
};
use herald_store::Store;
use tonic::{Request, Response, Status};

use crate::auth::Authenticator;
use crate::items::{Item, ItemResult};
use crate::journey::{book, person, spec};
use crate::router::Router;

/// Most properties a reported event carries, and the longest value.
const PROPERTIES_MAX: usize = 32;
const PROPERTY_VALUE_MAX_BYTES: usize = 1024;

pub struct JourneysApi {
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
    /// Reported events go to the owner of the person's partition.
    pub router: Router,
    pub clock: SharedClock,
    pub max_message_bytes: usize,
}

fn check_journey_id(id: &str) -> Result<(), Status> {
    super::check_handed_out_id("journey_id", id, "the id CreateJourney answered")
}

/// A reported event's fields, each named on an error.
fn check_event(request: &ReportEventRequest) -> Result<(), Error> {
    crate::validate::check_id(|| "recipient_id".into(), &request.recipient_id, true)?;
    if !spec::is_event_name(&request.event) {
        return Err(Error::invalid(
            "event",
            "1..=64 of [a-z0-9_], starting with a letter (a name of a journey's events)",
        ));
    }
    if request.properties.len() > PROPERTIES_MAX {
        return Err(Error::invalid(
            "properties",
            format!(
                "has {} entries, at most {PROPERTIES_MAX}",
                request.properties.len()
            ),
        ));
    }
    let mut names: Vec<&String> = request.properties.keys().collect();
    names.sort();
    for name in names {
        if !spec::is_event_name(name) {
            return Err(Error::invalid(
                format!("properties[{name:?}]"),
                "names are 1..=64 of [a-z0-9_], starting with a letter",
            ));
        }
        let value = &request.properties[name];
        if value.len() > PROPERTY_VALUE_MAX_BYTES {
            return Err(Error::invalid(
                format!("properties[{name:?}]"),
                format!(
                    "is {} bytes, at most {PROPERTY_VALUE_MAX_BYTES}",
                    value.len()
                ),
            ));
        }
    }
    Ok(())
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
        let mut view = book::get(&self.store, &tenant.id, &id).await?;
        book::fill_funnel(&self.store, &tenant.id, &mut view).await?;
        Ok(Response::new(view))
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

    async fn report_event(
        &self,
        request: Request<ReportEventRequest>,
    ) -> Result<Response<ReportEventResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        check_event(&request)?;
        let result = self
            .router
            .route(&tenant, vec![Item::JourneyEvent(request)])
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("no routing result".into())))?;
        match result {
            ItemResult::JourneyEvent(answer) => Ok(Response::new(answer)),
            _ => Err(Error::Internal("unexpected routing result".into()).into()),
        }
    }

    async fn get_journey_person(
        &self,
        request: Request<JourneyPersonRequest>,
    ) -> Result<Response<JourneyPerson>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        check_journey_id(&request.journey_id)?;
        crate::validate::check_id(|| "recipient_id".into(), &request.recipient_id, true)?;
        let found = person::read(
            &*self.store,
            &tenant.id,
            &request.journey_id,
            &request.recipient_id,
        )
        .await
        .map_err(|error| Error::Unavailable(format!("store: {error}")))?;
        match found {
            Some(person) => Ok(Response::new(person)),
            None => Err(Error::NotFound {
                what: format!(
                    "recipient {} in journey {}",
                    request.recipient_id, request.journey_id
                ),
            }
            .into()),
        }
    }
}
