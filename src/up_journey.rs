//! # up_journey: `herald up --demo-journey`, a 60-day win-back played out in half a minute
//!
//! Owns the journey demo: demo recipients enter the win-back (push, 30 days, email, 30 days,
//! SMS) on `inactive_30d`, one in ten buys right after the push (the journey ends for them at
//! once), and the funnel is shown live on the accelerated policy clock until everyone's journey
//! ended. Talks to the nodes' public API only.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::{CreateJourneyRequest, JourneyRequest, JourneyView, ReportEventRequest};
use serde_json::json;
use tonic::transport::Channel as GrpcChannel;

use crate::local::DEMO_API_KEY;
use crate::status_error;
use crate::workload::{authed, connect};

/// Days of the policy clock per real second in the demo.
pub(crate) const DAYS_PER_SECOND: u32 = 2;

/// The policy clock's rate for the demo.
pub(crate) fn rate() -> u32 {
    DAYS_PER_SECOND * 86_400
}

/// Runs the demo over `n` people; answers the final funnel as one JSON value.
pub(crate) async fn demo(addrs: &[String], n: usize) -> Result<serde_json::Value> {
    eprintln!("demo journey: creating {n} recipients");
    crate::workload::create_recipients(addrs, DEMO_API_KEY, "demo-r", n).await?;
    let address = addrs.first().context("no node")?;
    let mut journeys = JourneysClient::new(connect(address).await?);
    let view = journeys
        .create_journey(authed(
            CreateJourneyRequest {
                spec: Some(herald::demo::demo_win_back_journey()),
            },
            DEMO_API_KEY,
        )?)
        .await
        .map_err(status_error)?
        .into_inner();
    let id = view.journey_id.clone();
    eprintln!("demo journey: {id} (win-back)");
    eprintln!("  push, 30 days, email, 30 days, SMS; {DAYS_PER_SECOND} days a second");
    let started = Instant::now();
    let clients: Vec<JourneysClient<GrpcChannel>> = {
        let mut clients = Vec::new();
        for address in addrs {
            clients.push(JourneysClient::new(connect(address).await?));
        }
        clients
    };
    let entered: Vec<Result<()>> = futures::stream::iter(0..n)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            async move {
                let recipient = format!("demo-r{i}");
                report(&mut client, &recipient, "inactive_30d").await?;
                // One in ten buys after the first push: nothing more reaches them.
                if i % 10 == 0 {
                    report(&mut client, &recipient, "purchased").await?;
                }
                Ok(())
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    entered.into_iter().collect::<Result<Vec<()>>>()?;
    let view = loop {
        let view = get(&mut journeys, &id).await?;
        let funnel = view.funnel.clone().unwrap_or_default();
        let day = started.elapsed().as_secs_f64() * f64::from(DAYS_PER_SECOND);
        let sent: u64 = funnel.steps.iter().map(|s| s.sent).sum();
        eprintln!(
            "day {day:>3.0}  in wait {:>6}  exited {:>5}  completed {:>6}  messages {sent:>6}",
            funnel.in_wait,
            funnel.exited.values().sum::<u64>(),
            funnel.completed,
        );
        if funnel.entered >= n as u64 && funnel.active == 0 {
            break view;
        }
        if started.elapsed() > Duration::from_secs(600) {
            bail!("the demo journey did not end within 10 minutes");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    crate::journeys::print_view(&view);
    let funnel = view.funnel.unwrap_or_default();
    Ok(json!({
        "journey_id": id,
        "entered": funnel.entered,
        "completed": funnel.completed,
        "exited": funnel.exited,
        "sent": funnel
            .steps
            .iter()
            .filter(|s| s.sent > 0)
            .map(|s| (s.step.clone(), s.sent))
            .collect::<std::collections::BTreeMap<_, _>>(),
        "delivered": funnel
            .steps
            .iter()
            .filter(|s| s.sent > 0)
            .map(|s| (s.step.clone(), s.delivered))
            .collect::<std::collections::BTreeMap<_, _>>(),
    }))
}

async fn report(
    client: &mut JourneysClient<GrpcChannel>,
    recipient: &str,
    event: &str,
) -> Result<()> {
    client
        .report_event(authed(
            ReportEventRequest {
                recipient_id: recipient.into(),
                event: event.into(),
                properties: Default::default(),
            },
            DEMO_API_KEY,
        )?)
        .await
        .map_err(status_error)?;
    Ok(())
}

async fn get(client: &mut JourneysClient<GrpcChannel>, id: &str) -> Result<JourneyView> {
    Ok(client
        .get_journey(authed(
            JourneyRequest {
                journey_id: id.into(),
            },
            DEMO_API_KEY,
        )?)
        .await
        .map_err(status_error)?
        .into_inner())
}
