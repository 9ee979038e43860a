//! A tenant's journeys in the store: create, read, list, change state.
//!
//! All of a tenant's journeys live in one hash ([`keys::journey::definitions`]): the encoded
//! `JourneyView` under `d:<id>` and its state name under `s:<id>`, which a change checks
//! ([`Check::FieldIs`]) in the same atomic step as it writes both. Written with
//! [`Fence::NONE`]: a journey is not partition state.

use std::sync::Arc;

use herald_proto::TenantId;
use herald_proto::error::Error;
use herald_proto::v1::{JourneyFunnel, JourneySpec, JourneyState, JourneyStepFunnel, JourneyView};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome, keys};
use prost::Message;

use super::flow::funnel;

/// Most journeys `list` answers, and how many when the caller does not say.
pub const LIST_MAX: usize = 500;
pub const LIST_DEFAULT: usize = 50;
/// A change that keeps losing races to other changes gives up after this many tries.
const TRIES: usize = 4;

/// The name a state is stored (and checked) under.
fn state_name(state: JourneyState) -> &'static str {
    match state {
        JourneyState::Active => "active",
        JourneyState::Paused => "paused",
        JourneyState::Archived => "archived",
        JourneyState::Unspecified => "unspecified",
    }
}

fn store_error(error: herald_store::Error) -> Error {
    Error::Unavailable(format!("store: {error}"))
}

fn corrupt(id: &str, error: prost::DecodeError) -> Error {
    Error::Internal(format!(
        "journey {id}: stored view does not decode: {error}"
    ))
}

/// The ops that store `view` (its definition and state) when its state field holds
/// `expected` (`None` = when the journey does not exist yet).
fn write_ops(tenant: &TenantId, view: &JourneyView, expected: Option<&str>) -> Vec<FencedOp> {
    let key = keys::journey::definitions(tenant);
    let id = &view.journey_id;
    let check = match expected {
        None => Check::Missing {
            key: key.clone(),
            field: keys::journey::state_field(id),
        },
        Some(state) => Check::FieldIs {
            key: key.clone(),
            field: keys::journey::state_field(id),
            value: state.as_bytes().to_vec(),
        },
    };
    [
        WriteOp::Require { check, guards: 1 },
        WriteOp::SetFields {
            key,
            fields: vec![
                (keys::journey::view_field(id), view.encode_to_vec()),
                (
                    keys::journey::state_field(id),
                    state_name(view.state()).as_bytes().to_vec(),
                ),
            ],
        },
    ]
    .into_iter()
    .map(|op| FencedOp {
        fence: Fence::NONE,
        op,
    })
    .collect()
}

/// Stores a new, ACTIVE journey (`spec` already validated) and answers its view.
pub async fn create(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    journey_id: String,
    spec: JourneySpec,
    now_ms: i64,
) -> Result<JourneyView, Error> {
    let view = JourneyView {
        journey_id,
        state: JourneyState::Active as i32,
        spec: Some(spec),
        created_at_unix_ms: now_ms,
        state_changed_at_unix_ms: now_ms,
        funnel: None,
    };
    let mut ops = write_ops(tenant, &view, None);
    // The tenant joins the journeys' tenants (segment entries look there), with the journey.
    if let Some(FencedOp {
        op: WriteOp::Require { guards, .. },
        ..
    }) = ops.first_mut()
    {
        *guards += 1;
    }
    ops.push(FencedOp {
        fence: Fence::NONE,
        op: WriteOp::AddMembers {
            key: keys::journey::tenants(),
            members: vec![tenant.0.clone()],
        },
    });
    let outcomes = store.write(ops).await.map_err(store_error)?;
    match outcomes.first() {
        Some(WriteOutcome::Done) => Ok(view),
        // A fresh ULID already taken: not something a caller can cause.
        other => Err(Error::Internal(format!(
            "journey {}: not stored ({other:?})",
            view.journey_id
        ))),
    }
}

/// The journey, or NOT_FOUND.
pub async fn get(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    journey_id: &str,
) -> Result<JourneyView, Error> {
    let key = keys::journey::definitions(tenant);
    let fields = store
        .some_fields(&key, &[keys::journey::view_field(journey_id)])
        .await
        .map_err(store_error)?;
    match fields.into_iter().next().flatten() {
        Some(bytes) => {
            JourneyView::decode(bytes.as_slice()).map_err(|error| corrupt(journey_id, error))
        }
        None => Err(Error::NotFound {
            what: format!("journey {journey_id}"),
        }),
    }
}

/// The tenant's journeys, newest first (ids are ULIDs: their order is creation order),
/// at most `limit` (0 = the default), only those in `state` unless it is unspecified.
pub async fn list(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    state: JourneyState,
    limit: usize,
) -> Result<Vec<JourneyView>, Error> {
    let limit = match limit {
        0 => LIST_DEFAULT,
        n => n.min(LIST_MAX),
    };
    let fields = store
        .fields(&keys::journey::definitions(tenant))
        .await
        .map_err(store_error)?;
    let mut views = Vec::new();
    for (field, bytes) in fields {
        let Some(id) = field.strip_prefix("d:") else {
            continue;
        };
        let view = JourneyView::decode(bytes.as_slice()).map_err(|error| corrupt(id, error))?;
        if state == JourneyState::Unspecified || view.state() == state {
            views.push(view);
        }
    }
    views.sort_by(|a, b| b.journey_id.cmp(&a.journey_id));
    views.truncate(limit);
    Ok(views)
}

/// Moves the journey to `to` when it is in one of `from`; else FAILED_PRECONDITION naming its
/// state. Answers the view as stored after the change.
pub async fn change_state(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    journey_id: &str,
    from: &[JourneyState],
    to: JourneyState,
    now_ms: i64,
) -> Result<JourneyView, Error> {
    for _ in 0..TRIES {
        let mut view = get(store, tenant, journey_id).await?;
        let current = view.state();
        if !from.contains(&current) {
            return Err(Error::FailedPrecondition(format!(
                "journey_id: the journey is {}",
                state_name(current)
            )));
        }
        view.state = to as i32;
        view.state_changed_at_unix_ms = now_ms;
        let outcomes = store
            .write(write_ops(tenant, &view, Some(state_name(current))))
            .await
            .map_err(store_error)?;
        if outcomes.first() == Some(&WriteOutcome::Done) {
            return Ok(view);
        }
        // Another change landed between the read and the write: decide again on its result.
    }
    Err(Error::Unavailable(format!(
        "journey {journey_id}: its state kept changing; try again"
    )))
}

/// Every journey of the tenant in any state (what a person's journey jobs look through).
pub async fn all(store: &Arc<dyn Store>, tenant: &TenantId) -> Result<Vec<JourneyView>, Error> {
    list(store, tenant, JourneyState::Unspecified, LIST_MAX).await
}

/// Fills `view`'s funnel from its counters.
pub async fn fill_funnel(
    store: &Arc<dyn Store>,
    tenant: &TenantId,
    view: &mut JourneyView,
) -> Result<(), Error> {
    let fields = store
        .fields(&keys::journey::funnel(tenant, &view.journey_id))
        .await
        .map_err(store_error)?;
    let counters: std::collections::HashMap<String, u64> = fields
        .into_iter()
        .filter_map(|(name, bytes)| {
            let value: i64 = std::str::from_utf8(&bytes).ok()?.trim().parse().ok()?;
            Some((name, value.max(0) as u64))
        })
        .collect();
    let count = |name: &str| counters.get(name).copied().unwrap_or(0);
    let steps = view.spec.as_ref().map_or(&[][..], |s| s.steps.as_slice());
    view.funnel = Some(JourneyFunnel {
        entered: count(funnel::ENTERED),
        active: count(funnel::ACTIVE),
        in_wait: count(funnel::IN_WAIT),
        completed: count(funnel::COMPLETED),
        exited: counters
            .iter()
            .filter_map(|(name, value)| Some((name.strip_prefix("x:")?.to_owned(), *value)))
            .collect(),
        steps: steps
            .iter()
            .map(|step| JourneyStepFunnel {
                step: step.name.clone(),
                reached: count(&funnel::reached(&step.name)),
                in_wait: count(&funnel::waiting(&step.name)),
                sent: count(&funnel::sent(&step.name)),
                refused: count(&funnel::refused(&step.name)),
                delivered: count(&funnel::delivered(&step.name)),
                clicked: count(&funnel::clicked(&step.name)),
                converted: count(&funnel::converted(&step.name)),
                exited: count(&funnel::exited_at(&step.name)),
                sent_by_channel: counters
                    .iter()
                    .filter_map(|(name, value)| {
                        let rest = name.strip_prefix(funnel::SENT_ON_PREFIX)?;
                        let channel = rest.strip_prefix(step.name.as_str())?.strip_prefix(':')?;
                        Some((channel.to_owned(), *value))
                    })
                    .collect(),
                suppressed: count(&funnel::suppressed(&step.name)),
            })
            .collect(),
    });
    Ok(())
}
