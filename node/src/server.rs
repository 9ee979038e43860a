//! # server: one Herald node, assembled
//!
//! Owns start-up and shutdown of a node: opens the store, binds the gRPC server (Delivery,
//! Recipients, Forward, health, reflection), and spawns the membership, lease and passivation
//! loops. Shutdown is graceful: leave the cluster, let partitions move, release leases, stop.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures::future::BoxFuture;
use herald_proto::clock::SystemClock;
use herald_proto::v1::NodeInfo;
use herald_proto::v1::breakers_server::BreakersServer;
use herald_proto::v1::delivery_server::DeliveryServer;
use herald_proto::v1::engagement_server::EngagementServer;
use herald_proto::v1::forward_server::ForwardServer;
use herald_proto::v1::recipients_server::RecipientsServer;
use herald_proto::{Epoch, MessageId, NodeId, PartitionId};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actors::directory::RecipientDirectory;
use crate::api::{
    breakers::BreakersApi, delivery::DeliveryApi, engagement::EngagementApi, forward::ForwardApi,
    recipients::RecipientsApi,
};
use crate::auth::Authenticator;
use crate::channels::ChannelsContext;
use crate::config::{NodeConfig, StoreConfig, TenantConfig};
use crate::context::NodeContext;
use crate::events::EventBus;
use crate::ownership::{LeaseTimings, Ownership, PartitionLifecycle};
use crate::peers::Peers;
use crate::router::{self, Router};
use herald_store::{Fence, Store};

/// Receipts and consent changes being applied at once on this node.
const SIGNALS_IN_PROGRESS: usize = 512;

/// gRPC message size limit: a full batch of maximum-size messages fits.
pub const GRPC_MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("config: {0}")]
    Config(#[from] crate::config::Error),
    #[error("store: {0}")]
    Store(#[from] herald_store::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Opens the store the config names: Redis when `redis_url` is set, else embedded.
pub async fn open_store(config: &StoreConfig) -> Result<Arc<dyn Store>, Error> {
    Ok(herald_store::open(config).await?)
}

fn load_tenants(config: &NodeConfig) -> Result<Vec<TenantConfig>, Error> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct TenantsFile {
        #[serde(default)]
        tenants: Vec<TenantConfig>,
    }
    let mut tenants = config.tenants.clone();
    if let Some(path) = &config.tenants_file {
        let file: TenantsFile = crate::config::load(Some(path), Vec::new())?;
        tenants.extend(file.tenants);
    }
    for tenant in &tenants {
        tenant.validate()?;
    }
    Ok(tenants)
}

struct Lifecycle {
    context: Weak<NodeContext>,
}

impl PartitionLifecycle for Lifecycle {
    fn acquired(&self, partitions: Vec<(PartitionId, Epoch)>) {
        let Some(context) = self.context.upgrade() else {
            return;
        };
        tokio::spawn(resume_partitions(context, partitions));
    }

    fn lost(&self, partitions: Vec<PartitionId>) -> BoxFuture<'static, ()> {
        let context = self.context.upgrade();
        Box::pin(async move {
            if let Some(context) = context {
                let set: HashSet<PartitionId> = partitions.into_iter().collect();
                futures::join!(
                    context.directory.stop_partitions(&set),
                    context.channels.stop_partitions(&set)
                );
            }
        })
    }
}

/// Messages read concurrently while resuming a taken-over partition.
const RESUME_READS_IN_FLIGHT: usize = 32;

/// Resumes the active messages of newly acquired partitions from their event logs.
async fn resume_partitions(context: Arc<NodeContext>, partitions: Vec<(PartitionId, Epoch)>) {
    use futures::StreamExt;
    let mut pending = Vec::new();
    for (partition, epoch) in partitions {
        match context.store.active_messages(partition).await {
            Ok(active) => {
                let fence = Fence { partition, epoch };
                pending.extend(active.into_iter().map(|(tenant, id)| (tenant, id, fence)));
            }
            Err(error) => warn!(%partition, %error, "listing active messages failed"),
        }
    }
    if pending.is_empty() {
        return;
    }
    let count = pending.len();
    // Message ids are ULIDs: sorted, they are in acceptance order, and `buffered` keeps that
    // order for dispatch while the reads run in parallel (a takeover can bring thousands).
    pending.sort_by(|a, b| a.1.cmp(&b.1));
    let reads = futures::stream::iter(pending.into_iter().map(|(tenant, id, fence)| {
        let context = context.clone();
        async move {
            let record = context.store.get_message(&tenant, &id).await;
            (tenant, id, fence, record)
        }
    }))
    .buffered(RESUME_READS_IN_FLIGHT);
    futures::pin_mut!(reads);
    let mut resumed = 0usize;
    while let Some((tenant, id, fence, record)) = reads.next().await {
        match record {
            Ok(Some(record)) => {
                let tenant = context.auth.tenant(&tenant.0);
                let Ok(permit) = context.admission.clone().acquire_owned().await else {
                    return;
                };
                // The actor re-reads the log when it gets to the job.
                router::dispatch(
                    &context,
                    tenant,
                    Arc::new(record.message),
                    fence,
                    None,
                    None,
                    permit,
                    None,
                );
                resumed += 1;
            }
            Ok(None) => warn!(
                partition = %fence.partition,
                message_id = %MessageId::as_str(&id),
                "active message without record"
            ),
            Err(error) => {
                warn!(partition = %fence.partition, %error, "loading active message failed")
            }
        }
    }
    info!(node = %context.node_id, resumed, listed = count, "resumed active messages");
}

/// A running node.
pub struct NodeHandle {
    pub local_addr: SocketAddr,
    /// The HTTP listener (callbacks, `/metrics`), when configured.
    pub http_addr: Option<SocketAddr>,
    pub context: Arc<NodeContext>,
    shutdown: watch::Sender<bool>,
    membership: Option<JoinHandle<()>>,
    leases: Option<JoinHandle<()>>,
    server: Option<JoinHandle<()>>,
    server_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl NodeHandle {
    pub fn node_id(&self) -> &NodeId {
        &self.context.node_id
    }

    /// Leaves the cluster (partitions move away), releases leases and stops serving.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.membership.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        if let Some(task) = self.leases.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
        }
        if let Some(stop) = self.server_stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

pub struct Node;

impl Node {
    pub async fn start(config: NodeConfig, store: Arc<dyn Store>) -> Result<NodeHandle, Error> {
        config.validate()?;
        let listener = tokio::net::TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen_addr,
            source,
        })?;
        let mut config = config;
        if config.node_id.is_none() {
            config.node_id = Some(format!("node-{}", local_addr.port()));
        }
        let node_id = NodeId(config.node_id());
        let advertise = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let tenants = load_tenants(&config)?;
        let auth = Authenticator::new(&tenants, config.api_keys_in_store.then(|| store.clone()));
        let (timers, timer_queue) = crate::timers::Timers::new();
        let timer_stats = timers.stats.clone();
        let ownership = Ownership::new(node_id.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);
        // One link pool per node: the router's Forward stream and the channels' calls share
        // each peer's connection.
        let peers = Peers::default();
        let channels = config
            .channels_config()
            .build(ChannelsContext {
                node_id: node_id.clone(),
                ownership: ownership.clone(),
                peers: peers.clone(),
                clock: SystemClock::shared(),
                shutdown: shutdown_rx.clone(),
            })
            .await
            .map_err(|e| {
                Error::Config(crate::config::Error::Invalid {
                    origin: "node config".into(),
                    message: e.to_string(),
                })
            })?;
        let provider_events = channels.take_provider_events();
        let context = Arc::new(NodeContext {
            node_id: node_id.clone(),
            store: store.clone(),
            ownership: ownership.clone(),
            events: EventBus::new(config.watch_buffer),
            auth,
            directory: RecipientDirectory::default(),
            channels,
            timers,
            receipts_stats: Default::default(),
            signal_admission: Arc::new(tokio::sync::Semaphore::new(SIGNALS_IN_PROGRESS)),
            admission: Arc::new(tokio::sync::Semaphore::new(
                config.max_messages_in_progress.max(1),
            )),
            config: config.clone(),
        });
        let router = Router::new(context.clone(), peers);

        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<DeliveryServer<DeliveryApi>>()
            .await;
        health_reporter
            .set_serving::<RecipientsServer<RecipientsApi>>()
            .await;
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| {
                Error::Store(herald_store::Error::Corrupt {
                    key: "reflection".into(),
                    reason: e.to_string(),
                })
            })?;
        let (server_stop, server_stopped) = tokio::sync::oneshot::channel::<()>();
        let incoming =
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        let server = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection)
            .add_service(
                DeliveryServer::new(DeliveryApi::new(router.clone()))
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .add_service(
                RecipientsServer::new(RecipientsApi::new(router.clone()))
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .add_service(BreakersServer::new(BreakersApi::new(router.clone())))
            .add_service(
                EngagementServer::new(EngagementApi::new(router.clone()))
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .add_service(
                ForwardServer::new(ForwardApi::new(router.clone()))
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .serve_with_incoming_shutdown(incoming, async {
                let _ = server_stopped.await;
            });
        let server = tokio::spawn(async move {
            if let Err(error) = server.await {
                warn!(%error, "node server stopped with an error");
            }
        });

        let lifecycle = Arc::new(Lifecycle {
            context: Arc::downgrade(&context),
        });
        let timings = LeaseTimings {
            ttl: Duration::from_millis(config.lease_ttl_ms),
            renew_interval: Duration::from_millis(config.lease_renew_interval_ms),
            acquire_retry: Duration::from_millis(config.lease_acquire_retry_ms),
        };
        let leases = tokio::spawn(ownership.clone().run_leases(
            store.clone(),
            lifecycle,
            timings,
            shutdown_rx.clone(),
        ));
        tokio::spawn(crate::timers::run(
            Arc::downgrade(&context),
            timer_queue,
            timer_stats,
            shutdown_rx.clone(),
        ));
        if let Some(events) = provider_events {
            tokio::spawn(crate::receipts::consume(router.clone(), events));
        }
        let http_addr = match config.http_listen_addr {
            Some(addr) => Some(
                crate::http::serve(addr, router.clone(), shutdown_rx.clone())
                    .await
                    .map_err(|source| Error::Bind { addr, source })?,
            ),
            None => None,
        };
        tokio::spawn(RecipientDirectory::run_passivation(
            Arc::downgrade(&context),
            Duration::from_millis(config.actor_idle_ms),
        ));
        let info = NodeInfo {
            node_id: node_id.0.clone(),
            address: advertise,
            weight: config.weight,
        };
        let membership = tokio::spawn(crate::membership::run(
            ownership,
            info,
            config.control_addrs.clone(),
            shutdown_rx,
        ));
        info!(node = %node_id, addr = %local_addr, "node started");
        Ok(NodeHandle {
            local_addr,
            http_addr,
            context,
            shutdown,
            membership: Some(membership),
            leases: Some(leases),
            server: Some(server),
            server_stop: Some(server_stop),
        })
    }
}
