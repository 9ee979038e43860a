//! # router: every request to the owner of its partition
//!
//! Owns the path from a validated request to the node that owns the recipient's partition:
//! local items go to this node's [`Intake`]; remote ones go in one batch per owner over the
//! Forward stream. `wrong_owner` and unreachable owners are retried against newer tables until
//! the route timeout. Callers cannot tell local from remote.
//!
//! Must never validate (the API did), execute an item itself (the owner's intake does), or
//! re-forward an item it received by Forward (the sender routes; the receiver owns or refuses).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::NodeId;
use herald_proto::error::Error;
use herald_proto::partition::partition_of;
use herald_proto::v1::ForwardItem;
use tracing::debug;

use crate::auth::Tenant;
use crate::intake::Intake;
use crate::items::{Item, ItemResult};
use crate::ownership::Ownership;
use crate::peers::Peers;

/// How long routing keeps trying, and how long a local item waits for a lease being taken.
#[derive(Clone, Copy, Debug)]
pub struct RouteTimings {
    pub route_timeout: Duration,
    pub lease_wait: Duration,
}

#[derive(Clone)]
pub struct Router {
    node_id: NodeId,
    ownership: Arc<Ownership>,
    peers: Peers,
    intake: Arc<Intake>,
    timings: RouteTimings,
}

fn retryable(error: &Error) -> bool {
    matches!(
        error,
        Error::WrongOwner { .. } | Error::Unavailable(_) | Error::Fenced { .. }
    )
}

impl Router {
    pub fn new(
        node_id: NodeId,
        ownership: Arc<Ownership>,
        peers: Peers,
        intake: Arc<Intake>,
        timings: RouteTimings,
    ) -> Self {
        Self {
            node_id,
            ownership,
            peers,
            intake,
            timings,
        }
    }

    /// The owner side of routed items (for items that arrive by Forward).
    pub fn intake(&self) -> &Arc<Intake> {
        &self.intake
    }

    /// Routes validated items to their owners; one result per item, in order.
    pub async fn route(
        &self,
        tenant: &Arc<Tenant>,
        items: Vec<Item>,
    ) -> Vec<Result<ItemResult, Error>> {
        let mut results: Vec<Option<Result<ItemResult, Error>>> =
            (0..items.len()).map(|_| None).collect();
        let deadline = tokio::time::Instant::now() + self.timings.route_timeout;
        let mut tables = self.ownership.subscribe_table();
        let mut last_error: Option<String> = None;
        loop {
            let pending: Vec<usize> = (0..items.len()).filter(|i| results[*i].is_none()).collect();
            if pending.is_empty() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                let reason = last_error
                    .clone()
                    .unwrap_or_else(|| "no owner reachable".into());
                for i in pending {
                    results[i] = Some(Err(Error::Unavailable(format!(
                        "routing timed out: {reason}"
                    ))));
                }
                break;
            }
            let table = self.ownership.table();
            let count = table.partition_count;
            let mut local: Vec<(usize, Item)> = Vec::new();
            let mut remote: HashMap<String, Vec<usize>> = HashMap::new();
            if count > 0 && !table.is_empty() {
                for i in pending {
                    let partition = partition_of(&tenant.id.0, items[i].recipient_id(), count);
                    match table.owner(partition) {
                        Some(owner) if owner.node_id == self.node_id.0 => {
                            local.push((i, items[i].clone()));
                        }
                        Some(owner) => remote.entry(owner.address.clone()).or_default().push(i),
                        None => {}
                    }
                }
            }
            let mut round = Vec::new();
            if !local.is_empty() {
                let this = self.clone();
                let tenant = tenant.clone();
                round.push(tokio::spawn(async move {
                    this.intake
                        .execute(&tenant, local, this.timings.lease_wait)
                        .await
                }));
            }
            for (address, indices) in remote {
                let peers = self.peers.clone();
                let batch: Vec<ForwardItem> = indices
                    .iter()
                    .map(|i| items[*i].clone().into_forward(&tenant.id))
                    .collect();
                let epoch = table.epoch;
                round.push(tokio::spawn(async move {
                    match peers.forward(&address, epoch, batch).await {
                        Ok(replies) => indices
                            .into_iter()
                            .zip(
                                replies
                                    .into_iter()
                                    .map(|r| ItemResult::from_forward(r.result)),
                            )
                            .collect(),
                        Err(error) => indices
                            .into_iter()
                            .map(|i| {
                                (
                                    i,
                                    Err(Error::Unavailable(format!(
                                        "forward to {address}: {error}"
                                    ))),
                                )
                            })
                            .collect::<Vec<_>>(),
                    }
                }));
            }
            let mut retry = false;
            for handle in round {
                let Ok(outcomes) = handle.await else {
                    retry = true;
                    continue;
                };
                for (i, outcome) in outcomes {
                    match outcome {
                        Err(error) if retryable(&error) => {
                            debug!(%error, "routing retry");
                            last_error = Some(error.to_string());
                            retry = true;
                        }
                        other => results[i] = Some(other),
                    }
                }
            }
            if retry || results.iter().any(Option::is_none) {
                // Wait for a newer table, or a short while (an owner may be taking its lease).
                let _ = tokio::time::timeout(Duration::from_millis(100), tables.changed()).await;
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("unrouted item".into()))))
            .collect()
    }
}
