//! Journeys for tests: step builders and the calls every journey test makes.

use std::collections::BTreeMap;

use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::{
    Content, CreateJourneyRequest, JourneyPerson, JourneyPersonRequest, JourneyRequest,
    JourneySpec, JourneyStep, JourneyView, ReportEventRequest, ReportEventResponse, SendStep,
    WaitStep, journey_step::Kind,
};
use tonic::transport::Channel;

use crate::cluster::authed;

pub fn client(channel: Channel) -> JourneysClient<Channel> {
    JourneysClient::new(channel)
}

/// A send step of `content`, its waterfall the channels the content has.
pub fn send(name: &str, content: Content) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(Kind::Send(SendStep {
            content: Some(content),
            ..Default::default()
        })),
        next: String::new(),
    }
}

pub fn wait_days(name: &str, days: u64) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(Kind::Wait(WaitStep {
            duration_s: days * 86_400,
            until_local_time: String::new(),
        })),
        next: String::new(),
    }
}

pub async fn create(
    api: &mut JourneysClient<Channel>,
    key: &str,
    spec: JourneySpec,
) -> Result<JourneyView, tonic::Status> {
    api.create_journey(authed(CreateJourneyRequest { spec: Some(spec) }, key))
        .await
        .map(tonic::Response::into_inner)
}

pub async fn get(
    api: &mut JourneysClient<Channel>,
    key: &str,
    journey: &str,
) -> Result<JourneyView, tonic::Status> {
    api.get_journey(authed(
        JourneyRequest {
            journey_id: journey.into(),
        },
        key,
    ))
    .await
    .map(tonic::Response::into_inner)
}

pub async fn report(
    api: &mut JourneysClient<Channel>,
    key: &str,
    recipient: &str,
    event: &str,
    properties: BTreeMap<String, String>,
) -> Result<ReportEventResponse, tonic::Status> {
    api.report_event(authed(
        ReportEventRequest {
            recipient_id: recipient.into(),
            event: event.into(),
            properties,
        },
        key,
    ))
    .await
    .map(tonic::Response::into_inner)
}

pub async fn person(
    api: &mut JourneysClient<Channel>,
    key: &str,
    journey: &str,
    recipient: &str,
) -> Result<JourneyPerson, tonic::Status> {
    api.get_journey_person(authed(
        JourneyPersonRequest {
            journey_id: journey.into(),
            recipient_id: recipient.into(),
        },
        key,
    ))
    .await
    .map(tonic::Response::into_inner)
}

/// The steps a person was sent, in order.
pub fn sent_steps(person: &JourneyPerson) -> Vec<&str> {
    person.sent.iter().map(|s| s.step.as_str()).collect()
}
