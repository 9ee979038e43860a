//! The public `Campaigns` and `Credits` services.
//!
//! Decode, authenticate (the tenant comes from the API key), validate field by field, then:
//! state changes go to the control plane's leader ([`ControlLink`]), audience uploads and every
//! read go to the store directly (any node may; reads need no fence). Must never change a
//! campaign's state itself, and never store anything of a request that failed validation.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use herald_proto::TenantId;
use herald_proto::clock::SharedClock;
use herald_proto::error::Error;
use herald_proto::partition::partition_of;
use herald_proto::v1::campaigns_server::Campaigns;
use herald_proto::v1::credits_server::Credits;
use herald_proto::v1::{
    AddAudienceResponse, AudienceChunk, CampaignCommandKind, CampaignCommandRequest,
    CampaignMember, CampaignRequest, CampaignState, CampaignView, CreateCampaignRequest,
    CreditsView, GetCampaignMemberRequest, GetCampaignRequest, GetCreditsRequest,
    ListCampaignsRequest, ListCampaignsResponse, WatchCampaignRequest,
};
use herald_store::campaign::{self as layout, Outcome, Run, balance};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome, keys};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Authenticator, Tenant};
use crate::campaign::{estimate, spec, view};
use crate::content::pricing::PriceTable;
use crate::control_link::ControlLink;
use crate::ownership::Ownership;

/// Most recipient ids in one audience chunk.
pub const CHUNK_MAX: usize = 10_000;
/// Most campaigns one ListCampaigns returns.
pub const LIST_MAX: u32 = 500;
/// Campaigns a tenant's list is read through at most (oldest beyond it are not listed).
const LIST_SCAN_MAX: usize = 100_000;
/// Ledger entries scanned at most for one campaign's entries.
const LEDGER_SCAN_MAX: u64 = 1_000_000;

pub struct CampaignsApi {
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
    pub control: Arc<ControlLink>,
    pub ownership: Arc<Ownership>,
    pub prices: Arc<PriceTable>,
    pub clock: SharedClock,
    pub max_message_bytes: usize,
}

fn store_error(error: herald_store::Error) -> Status {
    Error::Unavailable(format!("store: {error}")).into_status()
}

fn check_campaign_id(id: &str) -> Result<(), Status> {
    super::check_handed_out_id("campaign_id", id, "the id CreateCampaign answered")
}

fn not_found(id: &str) -> Status {
    Error::NotFound {
        what: format!("campaign {id:?}"),
    }
    .into_status()
}

impl CampaignsApi {
    fn partition_count(&self) -> Result<u32, Status> {
        match self.ownership.partition_count() {
            0 => Err(Error::Unavailable("no partition table yet".into()).into()),
            count => Ok(count),
        }
    }

    async fn view(
        &self,
        tenant: &TenantId,
        id: &str,
        slices: bool,
    ) -> Result<CampaignView, Status> {
        view::view(&*self.store, tenant, id, self.partition_count()?, slices)
            .await
            .map_err(store_error)?
            .ok_or_else(|| not_found(id))
    }

    /// A state command through the leader, answered with the campaign after it.
    async fn command(
        &self,
        request: Request<CampaignRequest>,
        kind: CampaignCommandKind,
    ) -> Result<Response<CampaignView>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let id = request.into_inner().campaign_id;
        check_campaign_id(&id)?;
        let current = self.view(&tenant.id, &id, false).await?;
        let mut estimate = None;
        if kind == CampaignCommandKind::CampaignStart
            && current.state() == CampaignState::Draft
            && let Some(spec) = &current.spec
        {
            let audience = spec.audience.clone().unwrap_or_default();
            if audience.list && audience.segment.is_empty() && current.audience_uploaded == 0 {
                return Err(Error::FailedPrecondition(
                    "campaign_id: the campaign's audience is empty (its list has no member: AddAudience first)".into(),
                )
                .into());
            }
            estimate = Some(
                estimate::estimate(
                    &*self.store,
                    &tenant.id,
                    &id,
                    spec,
                    &self.prices,
                    self.partition_count()?,
                    self.clock.now_unix_ms(),
                )
                .await
                .map_err(store_error)?,
            );
        }
        self.control
            .campaign_command(CampaignCommandRequest {
                tenant: tenant.id.0.clone(),
                campaign_id: id.clone(),
                kind: kind as i32,
                spec: None,
                estimate,
                at_unix_ms: self.clock.now_unix_ms(),
            })
            .await?;
        Ok(Response::new(self.view(&tenant.id, &id, false).await?))
    }

    /// One chunk into the uploaded list; the number of ids that were new.
    async fn add_chunk(
        &self,
        tenant: &Tenant,
        campaign_id: &str,
        ids: Vec<String>,
        partition_count: u32,
    ) -> Result<u64, Status> {
        let mut by_partition: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
        for id in ids {
            let p = partition_of(&tenant.id.0, &id, partition_count).0;
            by_partition.entry(p).or_default().push(id);
        }
        let none = |op| FencedOp {
            fence: Fence::NONE,
            op,
        };
        let mut ops = vec![none(WriteOp::Require {
            check: Check::FieldIs {
                key: keys::campaign::record(&tenant.id, campaign_id),
                field: layout::RUN.to_owned(),
                value: Run::Draft.token().to_vec(),
            },
            guards: by_partition.len(),
        })];
        for (p, members) in by_partition {
            ops.push(none(WriteOp::AddMembers {
                key: keys::campaign::audience(&tenant.id, campaign_id, p),
                members,
            }));
        }
        let outcomes = self.store.write(ops).await.map_err(store_error)?;
        if outcomes.first() != Some(&WriteOutcome::Done) {
            return Err(Error::FailedPrecondition(
                "campaign_id: the campaign has started; its audience is fixed (create a new campaign)".into(),
            )
            .into());
        }
        Ok(outcomes[1..]
            .iter()
            .map(|o| match o {
                WriteOutcome::Counter(n) => u64::try_from(*n).unwrap_or(0),
                _ => 0,
            })
            .sum())
    }
}

type ViewStream = Pin<Box<dyn Stream<Item = Result<CampaignView, Status>> + Send>>;

#[tonic::async_trait]
impl Campaigns for CampaignsApi {
    async fn create_campaign(
        &self,
        request: Request<CreateCampaignRequest>,
    ) -> Result<Response<CampaignView>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let Some(mut spec) = request.into_inner().spec else {
            return Err(Error::invalid("spec", "is required").into());
        };
        let now = self.clock.now_unix_ms();
        spec::validate(&mut spec, self.max_message_bytes, now)?;
        let id = ulid::Ulid::new().to_string();
        let estimate = estimate::estimate(
            &*self.store,
            &tenant.id,
            &id,
            &spec,
            &self.prices,
            self.partition_count()?,
            now,
        )
        .await
        .map_err(store_error)?;
        self.control
            .campaign_command(CampaignCommandRequest {
                tenant: tenant.id.0.clone(),
                campaign_id: id.clone(),
                kind: CampaignCommandKind::CampaignCreate as i32,
                spec: Some(spec),
                estimate: Some(estimate),
                at_unix_ms: now,
            })
            .await?;
        Ok(Response::new(self.view(&tenant.id, &id, false).await?))
    }

    async fn add_audience(
        &self,
        request: Request<Streaming<AudienceChunk>>,
    ) -> Result<Response<AddAudienceResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let partition_count = self.partition_count()?;
        let mut chunks = request.into_inner();
        let mut campaign_id = String::new();
        let mut received = 0u64;
        let mut added = 0u64;
        let mut index = 0usize;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            let at = |field: &str| format!("chunks[{index}].{field}");
            if !chunk.campaign_id.is_empty() && chunk.campaign_id != campaign_id {
                if !campaign_id.is_empty() {
                    return Err(Error::invalid(
                        at("campaign_id"),
                        "one stream adds to one campaign",
                    )
                    .into());
                }
                check_campaign_id(&chunk.campaign_id)
                    .map_err(|_| Error::invalid(at("campaign_id"), "is not a campaign id"))?;
                campaign_id = chunk.campaign_id.clone();
                let current = self.view(&tenant.id, &campaign_id, false).await?;
                if current.state() != CampaignState::Draft {
                    return Err(Error::FailedPrecondition(format!(
                        "campaign_id: the campaign is {}; its audience is fixed once started",
                        current.state().as_str_name()
                    ))
                    .into());
                }
                if !current
                    .spec
                    .as_ref()
                    .and_then(|s| s.audience.as_ref())
                    .is_some_and(|a| a.list)
                {
                    return Err(Error::FailedPrecondition(
                        "campaign_id: the campaign's audience is a segment only (spec.audience.list is false)".into(),
                    )
                    .into());
                }
            }
            if campaign_id.is_empty() {
                return Err(
                    Error::invalid(at("campaign_id"), "is required in the first chunk").into(),
                );
            }
            if chunk.recipient_ids.len() > CHUNK_MAX {
                return Err(Error::invalid(
                    at("recipient_ids"),
                    format!(
                        "has {} ids, at most {CHUNK_MAX} per chunk",
                        chunk.recipient_ids.len()
                    ),
                )
                .into());
            }
            for (i, id) in chunk.recipient_ids.iter().enumerate() {
                if id.is_empty()
                    || id.len() > crate::validate::ID_MAX_BYTES
                    || id.chars().any(char::is_control)
                {
                    return Err(Error::invalid(
                        format!("chunks[{index}].recipient_ids[{i}]"),
                        format!(
                            "a recipient id is 1..={} bytes without control characters",
                            crate::validate::ID_MAX_BYTES
                        ),
                    )
                    .into());
                }
            }
            received += chunk.recipient_ids.len() as u64;
            if !chunk.recipient_ids.is_empty() {
                added += self
                    .add_chunk(&tenant, &campaign_id, chunk.recipient_ids, partition_count)
                    .await?;
            }
            index += 1;
        }
        if campaign_id.is_empty() {
            return Err(Error::invalid("chunks", "the stream had no chunk").into());
        }
        let audience_size =
            estimate::uploaded(&*self.store, &tenant.id, &campaign_id, partition_count)
                .await
                .map_err(store_error)?;
        Ok(Response::new(AddAudienceResponse {
            received,
            added,
            audience_size,
        }))
    }

    async fn start_campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignView>, Status> {
        self.command(request, CampaignCommandKind::CampaignStart)
            .await
    }

    async fn pause_campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignView>, Status> {
        self.command(request, CampaignCommandKind::CampaignPause)
            .await
    }

    async fn resume_campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignView>, Status> {
        self.command(request, CampaignCommandKind::CampaignResume)
            .await
    }

    async fn cancel_campaign(
        &self,
        request: Request<CampaignRequest>,
    ) -> Result<Response<CampaignView>, Status> {
        self.command(request, CampaignCommandKind::CampaignCancel)
            .await
    }

    async fn get_campaign(
        &self,
        request: Request<GetCampaignRequest>,
    ) -> Result<Response<CampaignView>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        check_campaign_id(&request.campaign_id)?;
        Ok(Response::new(
            self.view(&tenant.id, &request.campaign_id, request.slices)
                .await?,
        ))
    }

    async fn list_campaigns(
        &self,
        request: Request<ListCampaignsRequest>,
    ) -> Result<Response<ListCampaignsResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        if request.limit > LIST_MAX {
            return Err(Error::invalid("limit", format!("at most {LIST_MAX}")).into());
        }
        let limit = if request.limit == 0 {
            50
        } else {
            request.limit
        } as usize;
        let state = CampaignState::try_from(request.state).unwrap_or(CampaignState::Unspecified);
        let index = keys::campaign::index(&tenant.id);
        let mut all: Vec<String> = Vec::new();
        let mut after: Option<String> = None;
        while all.len() < LIST_SCAN_MAX {
            let page = self
                .store
                .members_after(&index, after.as_deref(), 1_000)
                .await
                .map_err(store_error)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            all.extend(page);
            after = Some(last);
        }
        let mut campaigns = Vec::new();
        for member in all.iter().rev() {
            if campaigns.len() >= limit {
                break;
            }
            let Some((_, id)) = member.split_once(':') else {
                continue;
            };
            let Ok(view) = self.view(&tenant.id, id, false).await else {
                continue;
            };
            if state == CampaignState::Unspecified || view.state() == state {
                campaigns.push(view);
            }
        }
        Ok(Response::new(ListCampaignsResponse { campaigns }))
    }

    type WatchCampaignStream = ViewStream;

    async fn watch_campaign(
        &self,
        request: Request<WatchCampaignRequest>,
    ) -> Result<Response<Self::WatchCampaignStream>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        check_campaign_id(&request.campaign_id)?;
        let interval = match request.interval_ms {
            0 => 500,
            ms if ms < 100 => {
                return Err(Error::invalid("interval_ms", "at least 100").into());
            }
            ms => ms,
        };
        let first = self.view(&tenant.id, &request.campaign_id, false).await?;
        let store = self.store.clone();
        let partition_count = self.partition_count()?;
        let id = request.campaign_id;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            loop {
                if matches!(
                    last.state(),
                    CampaignState::Completed | CampaignState::Cancelled
                ) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(u64::from(interval))).await;
                let next = match view::view(&*store, &tenant.id, &id, partition_count, false).await
                {
                    Ok(Some(next)) => next,
                    Ok(None) => return,
                    // A store hiccup: the next tick tries again.
                    Err(_) => continue,
                };
                if next != last {
                    if tx.send(Ok(next.clone())).await.is_err() {
                        return;
                    }
                    last = next;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_campaign_member(
        &self,
        request: Request<GetCampaignMemberRequest>,
    ) -> Result<Response<CampaignMember>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        check_campaign_id(&request.campaign_id)?;
        let id = request.recipient_id;
        if id.is_empty() || id.len() > crate::validate::ID_MAX_BYTES {
            return Err(Error::invalid("recipient_id", "is required (at most 128 bytes)").into());
        }
        let view = self.view(&tenant.id, &request.campaign_id, false).await?;
        let p = partition_of(&tenant.id.0, &id, self.partition_count()?).0;
        let found = self
            .store
            .some_fields(
                &keys::campaign::outcomes(&tenant.id, &request.campaign_id, p),
                std::slice::from_ref(&id),
            )
            .await
            .map_err(store_error)?;
        let mut member = CampaignMember {
            recipient_id: id,
            ..Default::default()
        };
        match found
            .first()
            .and_then(|v| v.as_deref())
            .and_then(Outcome::decode)
        {
            Some(Outcome::Submitted {
                message_id,
                variant,
            }) => {
                member.outcome = "submitted".into();
                member.message_id = message_id;
                member.variant = variant;
            }
            Some(Outcome::HeldOut { .. }) => {
                member.outcome = "held_out".into();
                member.variant = layout::HOLDOUT.into();
            }
            Some(Outcome::Suppressed { reason }) => {
                member.outcome = "suppressed".into();
                member.reason = reason;
            }
            Some(Outcome::Expired) => member.outcome = "expired".into(),
            None => {
                member.outcome = match view.state() {
                    CampaignState::Cancelled => "cancelled",
                    CampaignState::Completed => "not_in_audience",
                    _ => "pending",
                }
                .into();
            }
        }
        Ok(Response::new(member))
    }
}

pub struct CreditsApi {
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
}

#[tonic::async_trait]
impl Credits for CreditsApi {
    async fn get_credits(
        &self,
        request: Request<GetCreditsRequest>,
    ) -> Result<Response<CreditsView>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let request = request.into_inner();
        if request.limit > 1_000 {
            return Err(Error::invalid("limit", "at most 1000").into());
        }
        let limit = if request.limit == 0 {
            100
        } else {
            request.limit
        };
        let fields = self
            .store
            .fields(&keys::campaign::credits(&tenant.id))
            .await
            .map_err(store_error)?;
        let get = |name: &str| {
            let value = fields
                .iter()
                .find(|(field, _)| field == name)
                .map(|(_, v)| v.as_slice());
            u64::try_from(layout::int(value)).unwrap_or(0)
        };
        let ledger_key = keys::campaign::ledger(&tenant.id);
        let size = self
            .store
            .record_count(&ledger_key)
            .await
            .map_err(store_error)?;
        let mut entries = Vec::new();
        let mut from = request.ledger_from;
        while entries.len() < limit as usize
            && from < size
            && from - request.ledger_from < LEDGER_SCAN_MAX
        {
            let page = self
                .store
                .records(&ledger_key, from, 1_000)
                .await
                .map_err(store_error)?;
            if page.is_empty() {
                break;
            }
            from += page.len() as u64;
            for record in page {
                let Some(entry) = layout::decode_ledger(&record) else {
                    continue;
                };
                if request.campaign_id.is_empty() || entry.campaign_id == request.campaign_id {
                    entries.push(entry);
                    if entries.len() >= limit as usize {
                        break;
                    }
                }
            }
            if request.campaign_id.is_empty() {
                break;
            }
        }
        Ok(Response::new(CreditsView {
            tenant: tenant.id.0.clone(),
            available_micros: get(balance::AVAILABLE),
            topped_up_micros: get(balance::TOPPED_UP),
            spent_micros: get(balance::SPENT),
            ledger_size: size,
            ledger: entries,
        }))
    }
}
