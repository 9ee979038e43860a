//! # service: the `herald.v1.Control` gRPC service
//!
//! Owns decoding and validating requests, calling the leader ([`crate::leader`]) and mapping
//! [`crate::Error`] to `tonic::Status`. It must never hold cluster state or decide anything
//! itself: membership and tables belong to the leader's term.
//!
//! With mutual TLS (the default), every call needs a cluster certificate: Join, Heartbeat
//! and Leave only a node certificate whose name is the node id in the request (node `n2`
//! cannot join, beat or leave as `n3`); WatchTable and ClusterStatus (read-only) any cluster
//! certificate (nodes, control replicas, operators). A caller without one is
//! `UNAUTHENTICATED`, one with the wrong name or role `PERMISSION_DENIED`; nothing changes.
//!
//! CreateApiKey, ListApiKeys and RevokeApiKey need an operator certificate ([`crate::api_keys`]),
//! and are refused outright without mutual TLS.
//!
//! Only the leader serves Join, Heartbeat, Leave and WatchTable; a follower answers
//! `UNAVAILABLE` with the message `not_leader{leader=<id>}` (`<id>` empty when it does not know
//! the leader), and the node client tries its next control address. ClusterStatus works on
//! every replica.

use std::sync::Arc;

use herald_proto::NodeId;
use herald_proto::v1::control_server::Control;
use herald_proto::v1::{
    CampaignCommandRequest, CampaignCommandResponse, ClusterStatusRequest, ClusterStatusResponse,
    CreateApiKeyRequest, CreateApiKeyResponse, CreditsView, GetTenantCreditsRequest,
    HeartbeatRequest, HeartbeatResponse, JoinRequest, JoinResponse, LeaveRequest, LeaveResponse,
    ListApiKeysRequest, ListApiKeysResponse, RevokeApiKeyRequest, RevokeApiKeyResponse,
    TopUpCreditsRequest, WatchCampaignsRequest, WatchTableRequest,
};
use herald_tls::identity::require_role;
use herald_tls::{Identity, Role};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::api_keys::{self, ApiKeys};
use crate::campaigns::credits;
use crate::leader::Controller;
use crate::membership::{self, MAX_NODE_ID_LEN};
use crate::streams::{CampaignStream, TableStream};

pub(crate) struct ControlService {
    ctrl: Arc<Controller>,
    keys: ApiKeys,
    /// Callers are authenticated by their certificate (mutual TLS).
    tls: bool,
}

impl ControlService {
    pub(crate) fn new(ctrl: Arc<Controller>, tls: bool) -> Self {
        let keys = ApiKeys::new(ctrl.store());
        Self { ctrl, keys, tls }
    }

    /// The caller must hold an operator certificate. Without mutual TLS there is no one to
    /// trust with keys: the calls are refused.
    fn require_operator<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if !self.tls {
            return Err(Status::failed_precondition(
                "API keys are managed only over mutual TLS (tls.mode = \"mtls\")",
            ));
        }
        require_role(request, Role::Operator)?;
        Ok(())
    }

    /// The caller must hold the node certificate of `node_id`.
    fn require_node<T>(&self, request: &Request<T>, node_id: &str) -> Result<(), Status> {
        if !self.tls {
            return Ok(());
        }
        let caller = require_role(request, Role::Node)?;
        if caller.name != node_id {
            return Err(Status::permission_denied(format!(
                "node {} may not act as node {node_id:?}",
                caller.name
            )));
        }
        Ok(())
    }

    /// The caller must hold some cluster certificate.
    fn require_cluster<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.tls && Identity::of_caller(request).is_none() {
            return Err(Status::unauthenticated(
                "the Control service needs a cluster certificate (mutual TLS)",
            ));
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let claimed = request
            .get_ref()
            .node
            .as_ref()
            .map(|n| n.node_id.clone())
            .unwrap_or_default();
        self.require_node(&request, &claimed)?;
        let info = membership::normalize_node_info(request.into_inner().node)?;
        let term = self.ctrl.leader_term()?;
        let table = term.join(info).await?;
        Ok(Response::new(JoinResponse {
            table: Some((*table).clone()),
            heartbeat_interval_ms: u32::try_from(self.ctrl.config.heartbeat_interval_ms)
                .unwrap_or(u32::MAX),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        self.require_node(&request, &request.get_ref().node_id)?;
        let request = request.into_inner();
        let node = node_id(request.node_id)?;
        let term = self.ctrl.leader_term()?;
        let (known, epoch) = term.heartbeat(&node, request.epoch, request.serving_partitions);
        if known {
            self.ctrl.campaigns.report(&node.0, request.campaigns);
        }
        Ok(Response::new(HeartbeatResponse { epoch, known }))
    }

    async fn leave(
        &self,
        request: Request<LeaveRequest>,
    ) -> Result<Response<LeaveResponse>, Status> {
        self.require_node(&request, &request.get_ref().node_id)?;
        let node = node_id(request.into_inner().node_id)?;
        let term = self.ctrl.leader_term()?;
        let table = term.leave(node).await?;
        Ok(Response::new(LeaveResponse { epoch: table.epoch }))
    }

    type WatchTableStream = TableStream;

    async fn watch_table(
        &self,
        request: Request<WatchTableRequest>,
    ) -> Result<Response<Self::WatchTableStream>, Status> {
        self.require_cluster(&request)?;
        // The node id in the request is informational: every watcher gets the same tables.
        let term = self.ctrl.leader_term()?;
        Ok(Response::new(self.ctrl.watch_tables(term)?))
    }

    async fn cluster_status(
        &self,
        request: Request<ClusterStatusRequest>,
    ) -> Result<Response<ClusterStatusResponse>, Status> {
        self.require_cluster(&request)?;
        Ok(Response::new(self.ctrl.cluster_status().await?))
    }

    async fn create_api_key(
        &self,
        request: Request<CreateApiKeyRequest>,
    ) -> Result<Response<CreateApiKeyResponse>, Status> {
        self.require_operator(&request)?;
        let request = request.into_inner();
        let created = self
            .keys
            .create(&request.tenant, &request.label, self.ctrl.now_unix_ms())
            .await?;
        tracing::info!(id = %created.record.id, tenant = %created.record.tenant, "API key created");
        Ok(Response::new(CreateApiKeyResponse {
            key: Some(api_keys::info(&created.record)),
            api_key: created.api_key,
        }))
    }

    async fn list_api_keys(
        &self,
        request: Request<ListApiKeysRequest>,
    ) -> Result<Response<ListApiKeysResponse>, Status> {
        self.require_operator(&request)?;
        let request = request.into_inner();
        let records = self
            .keys
            .list(&request.tenant, request.include_revoked)
            .await?;
        Ok(Response::new(ListApiKeysResponse {
            keys: records.iter().map(api_keys::info).collect(),
        }))
    }

    async fn campaign_command(
        &self,
        request: Request<CampaignCommandRequest>,
    ) -> Result<Response<CampaignCommandResponse>, Status> {
        // A node speaks for the tenant it authenticated; only nodes may.
        let caller = calling_node(&request, self.tls)?;
        let request = request.into_inner();
        api_keys::check_tenant("tenant", &request.tenant)?;
        if request.campaign_id.is_empty() || request.campaign_id.len() > 64 {
            return Err(
                herald_proto::error::Error::invalid("campaign_id", "must be 1..=64 bytes").into(),
            );
        }
        let term = self.ctrl.leader_term()?;
        let now = match request.at_unix_ms {
            0 => self.ctrl.now_unix_ms(),
            at => at,
        };
        let life = self
            .ctrl
            .campaigns
            .command(term.number(), &term.node_ids(), request, now)
            .await?;
        if let Some(node) = caller {
            tracing::debug!(%node, "campaign command served");
        }
        Ok(Response::new(CampaignCommandResponse { life: Some(life) }))
    }

    type WatchCampaignsStream = CampaignStream;

    async fn watch_campaigns(
        &self,
        request: Request<WatchCampaignsRequest>,
    ) -> Result<Response<Self::WatchCampaignsStream>, Status> {
        self.require_node(&request, &request.get_ref().node_id)?;
        let node = node_id(request.into_inner().node_id)?;
        let term = self.ctrl.leader_term()?;
        Ok(Response::new(self.ctrl.watch_campaigns(term, node.0)?))
    }

    async fn top_up_credits(
        &self,
        request: Request<TopUpCreditsRequest>,
    ) -> Result<Response<CreditsView>, Status> {
        self.require_operator(&request)?;
        let request = request.into_inner();
        api_keys::check_tenant("tenant", &request.tenant)?;
        if request.amount_micros == 0 || request.amount_micros > credits::TOP_UP_MAX_MICROS {
            return Err(herald_proto::error::Error::invalid(
                "amount_micros",
                format!("must be 1..={} (micro-units)", credits::TOP_UP_MAX_MICROS),
            )
            .into());
        }
        if request.note.len() > 200 || request.note.chars().any(char::is_control) {
            return Err(herald_proto::error::Error::invalid(
                "note",
                "at most 200 bytes, no control characters",
            )
            .into());
        }
        self.ctrl.leader_term()?;
        let tenant = herald_proto::TenantId(request.tenant);
        let store = self.ctrl.store();
        credits::top_up(
            &*store,
            &tenant,
            request.amount_micros,
            &request.note,
            self.ctrl.now_unix_ms(),
        )
        .await?;
        tracing::info!(tenant = %tenant.0, amount_micros = request.amount_micros, "credits topped up");
        Ok(Response::new(credits::view(&*store, &tenant, 0, 0).await?))
    }

    async fn get_tenant_credits(
        &self,
        request: Request<GetTenantCreditsRequest>,
    ) -> Result<Response<CreditsView>, Status> {
        self.require_operator(&request)?;
        let request = request.into_inner();
        api_keys::check_tenant("tenant", &request.tenant)?;
        let tenant = herald_proto::TenantId(request.tenant);
        let store = self.ctrl.store();
        Ok(Response::new(
            credits::view(&*store, &tenant, request.ledger_from, request.limit).await?,
        ))
    }

    async fn revoke_api_key(
        &self,
        request: Request<RevokeApiKeyRequest>,
    ) -> Result<Response<RevokeApiKeyResponse>, Status> {
        self.require_operator(&request)?;
        let record = self
            .keys
            .revoke(&request.into_inner().id, self.ctrl.now_unix_ms())
            .await?;
        tracing::info!(id = %record.id, tenant = %record.tenant, "API key revoked");
        Ok(Response::new(RevokeApiKeyResponse {
            key: Some(api_keys::info(&record)),
        }))
    }
}

/// The caller's node id under mutual TLS (its certificate's name), else what it claims.
fn calling_node<T>(request: &Request<T>, tls: bool) -> Result<Option<String>, Status> {
    if !tls {
        return Ok(None);
    }
    Ok(Some(require_role(request, Role::Node)?.name))
}

fn node_id(raw: String) -> Result<NodeId, Status> {
    if raw.is_empty() || raw.len() > MAX_NODE_ID_LEN {
        return Err(herald_proto::error::Error::invalid(
            "node_id",
            format!("must be 1..={MAX_NODE_ID_LEN} bytes"),
        )
        .into());
    }
    Ok(NodeId(raw))
}

impl From<Error> for Status {
    fn from(error: Error) -> Self {
        let error = match error {
            // Its own code: INVALID_ARGUMENT naming the field, NOT_FOUND, FAILED_PRECONDITION.
            Error::Request(inner) => return inner.into_status(),
            other => other,
        };
        match &error {
            // Exactly `not_leader{leader=<id>}`: node clients parse it.
            Error::NotLeader { .. } => Status::unavailable(error.to_string()),
            // Transient: the caller retries (the same replica or the next one).
            Error::Store(_) | Error::StoreTimeout | Error::TooManyWatchers { .. } => {
                Status::unavailable(error.to_string())
            }
            Error::PartitionCountMismatch { .. } => Status::failed_precondition(error.to_string()),

            _ => Status::internal(error.to_string()),
        }
    }
}
