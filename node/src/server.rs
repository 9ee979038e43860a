//! # server: one Herald node, assembled
//!
//! The only module that sees every component: it builds each from its own part of the config
//! and the few handles it uses (the store, the clock, the ownership, the recipients' directory,
//! the channels), binds the two gRPC servers — the public API on `listen_addr` (Delivery,
//! Recipients, Engagement, Breakers, health, reflection; callers authenticate with API keys)
//! and the internal plane on `internal_listen_addr` (Forward and health, mutual TLS: only a
//! caller with a cluster node certificate gets in) — and spawns the loops (membership, leases, timers, breakers, receipts,
//! passivation, the HTTP listener). Shutdown is graceful: leave the cluster, let partitions
//! move, release leases, stop.
//!
//! Must never hold component state itself, nor hand any component more than it uses.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use herald_proto::clock::{SharedClock, SystemClock};
use herald_proto::v1::NodeInfo;
use herald_proto::v1::breakers_server::BreakersServer;
use herald_proto::v1::campaigns_server::CampaignsServer;
use herald_proto::v1::credits_server::CreditsServer;
use herald_proto::v1::delivery_server::DeliveryServer;
use herald_proto::v1::engagement_server::EngagementServer;
use herald_proto::v1::forward_server::ForwardServer;
use herald_proto::v1::journeys_server::JourneysServer;
use herald_proto::v1::recipients_server::RecipientsServer;
use herald_proto::{Epoch, NodeId, PartitionId};
use herald_store::Store;
use herald_tls::{Dialer, Role, ServerTls, TlsMaterial};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::actors::directory::{Admission, RecipientDirectory, TimerRuns};
use crate::actors::recipient::{RecipientEnv, RecipientSettings};
use crate::api::Limits;
use crate::api::{
    breakers::BreakersApi,
    campaigns::{CampaignsApi, CreditsApi},
    delivery::DeliveryApi,
    engagement::EngagementApi,
    forward::{ForwardApi, ForwardShared},
    journeys::JourneysApi,
    recipients::RecipientsApi,
};
use crate::auth::Authenticator;
use crate::campaign::{Campaigns, CampaignsContext};
use crate::channels::{Channels, ChannelsContext};
use crate::config::{NodeConfig, StoreConfig, TenantConfig};
use crate::contact_index::ContactIndex;
use crate::control_link::ControlLink;
use crate::events::{EventBus, TenantEvent};
use crate::intake::{Intake, IntakeSettings};
use crate::journey::entries::{EnterSink, EntrySettings, SegmentEntries};
use crate::journey::waits::{JourneyWaits, WaitSettings, WakeSink};
use crate::journey::walker::JourneyEnv;
use crate::links::LinkSigner;
use crate::ownership::{LeaseTimings, Ownership, PartitionLifecycle};
use crate::peers::Peers;
use crate::receipts::Receipts;
use crate::receipts::index::ReceiptStats;
use crate::router::{RouteTimings, Router};
use crate::timers::Timers;
use crate::watch::Watch;

/// Receipts and consent changes being applied at once on this node.
const SIGNALS_IN_PROGRESS: usize = 512;

/// How often a message held by a paused breaker looks again.
const BREAKER_RECHECK_MS: i64 = 2_000;

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
    #[error("tls: {0}")]
    Tls(#[from] herald_tls::Error),
    #[error("tls: {0}")]
    Identity(String),
}

/// Lets through only callers with a cluster node certificate (when the cluster runs mTLS).
#[derive(Clone, Copy)]
struct NodesOnly {
    tls: bool,
}

impl tonic::service::Interceptor for NodesOnly {
    fn call(&mut self, request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if self.tls {
            herald_tls::identity::require_role(&request, Role::Node)?;
        }
        Ok(request)
    }
}

/// This node's TLS material (watched for changes) and its id, checked against the
/// certificate: the node id is the name its certificate carries.
fn cluster_tls(config: &NodeConfig) -> Result<(Option<Arc<TlsMaterial>>, Option<String>), Error> {
    let Some(files) = config.tls.files()? else {
        warn!(
            "tls.mode = \"off\": the internal plane is plaintext and unauthenticated; anyone who reaches {} can act as a node",
            config.internal_listen_addr
        );
        return Ok((None, config.node_id.clone()));
    };
    let material = TlsMaterial::load(files)?;
    let identity = material.identity();
    if identity.role != Role::Node {
        return Err(Error::Identity(format!(
            "tls.cert is a {} certificate ({identity}); a node needs a node certificate (herald certs issue --node <id>)",
            identity.role
        )));
    }
    if let Some(configured) = &config.node_id
        && *configured != identity.name
    {
        return Err(Error::Identity(format!(
            "node_id = {configured:?} but tls.cert names node {:?}; the node id is the certificate's name",
            identity.name
        )));
    }
    material.watch(Duration::from_millis(config.tls.reload_interval_ms));
    Ok((Some(material), Some(identity.name)))
}

/// Spawns `router` on `listener` until `stop`: over TLS with `tls`, else plaintext (one body
/// for both: their connection streams have different types). Logs how it ended.
macro_rules! spawn_server {
    ($router:expr, $listener:expr, $tls:expr, $stop:expr, $what:literal) => {{
        let router = $router;
        let stop = $stop;
        match $tls {
            Some(tls) => {
                let incoming = herald_tls::transport::incoming($listener, tls);
                tokio::spawn(async move {
                    if let Err(error) = router.serve_with_incoming_shutdown(incoming, stop).await {
                        warn!(%error, server = $what, "gRPC server stopped with an error");
                    }
                })
            }
            None => {
                let incoming =
                    tonic::transport::server::TcpIncoming::from($listener).with_nodelay(Some(true));
                tokio::spawn(async move {
                    if let Err(error) = router.serve_with_incoming_shutdown(incoming, stop).await {
                        warn!(%error, server = $what, "gRPC server stopped with an error");
                    }
                })
            }
        }
    }};
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

/// Partitions starting or stopping here: resume their messages, stop their actors.
struct Lifecycle {
    intake: Arc<Intake>,
    directory: Arc<RecipientDirectory>,
    channels: Channels,
    campaigns: Campaigns,
}

impl PartitionLifecycle for Lifecycle {
    fn acquired(&self, partitions: Vec<(PartitionId, Epoch)>) {
        let intake = self.intake.clone();
        tokio::spawn(async move { intake.resume_partitions(partitions).await });
    }

    fn lost(&self, partitions: Vec<PartitionId>) -> BoxFuture<'static, ()> {
        let directory = self.directory.clone();
        let channels = self.channels.clone();
        let campaigns = self.campaigns.clone();
        Box::pin(async move {
            let set: HashSet<PartitionId> = partitions.into_iter().collect();
            // Slices first: they submit to the recipients' actors.
            campaigns.stop_partitions(&set).await;
            directory.stop_partitions(&set).await;
            channels.stop_partitions(&set).await;
        })
    }
}

/// A running node.
pub struct NodeHandle {
    /// The public API's address.
    pub local_addr: SocketAddr,
    /// The internal plane's address (node-to-node traffic).
    pub internal_addr: SocketAddr,
    /// The HTTP listener (callbacks, `/metrics`), when configured.
    pub http_addr: Option<SocketAddr>,
    node_id: NodeId,
    ownership: Arc<Ownership>,
    events: EventBus,
    timers: Timers,
    receipts: Arc<ReceiptStats>,
    channels: Channels,
    directory: Arc<RecipientDirectory>,
    shutdown: watch::Sender<bool>,
    membership: Option<JoinHandle<()>>,
    leases: Option<JoinHandle<()>>,
    servers: Vec<JoinHandle<()>>,
    server_stop: watch::Sender<bool>,
}

impl NodeHandle {
    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// The node's view of the partition table and what it serves.
    pub fn ownership(&self) -> &Arc<Ownership> {
        &self.ownership
    }

    /// The node's live feed of the events its actors record.
    pub fn subscribe_events(
        &self,
        terminal_only: bool,
    ) -> tokio::sync::broadcast::Receiver<Arc<TenantEvent>> {
        self.events.subscribe(terminal_only)
    }

    /// Waterfall steps that timed out waiting for their success condition.
    pub fn step_timeouts(&self) -> u64 {
        self.timers.stats().timeouts.load(Ordering::Relaxed)
    }

    /// Recipient actors alive on this node (idle ones passivate).
    pub fn actors_active(&self) -> usize {
        self.directory.active()
    }

    /// Durable timers that fired on this node (for tests that wait for one).
    pub fn timers_fired(&self) -> u64 {
        self.timers.stats().fired.load(Ordering::Relaxed)
    }

    /// Receipts applied to their attempts.
    pub fn receipts_applied(&self) -> u64 {
        self.receipts.applied.load(Ordering::Relaxed)
    }

    /// Calls the sandbox provider answered.
    pub fn sandbox_calls(&self) -> u64 {
        self.channels.sandbox().calls()
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
        let _ = self.server_stop.send(true);
        for task in self.servers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
        }
    }
}

/// Resolves when `stop` turns true (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

pub struct Node;

impl Node {
    /// Starts a node on the system clock.
    pub async fn start(config: NodeConfig, store: Arc<dyn Store>) -> Result<NodeHandle, Error> {
        Self::start_with_clock(config, store, SystemClock::shared()).await
    }

    /// Starts a node whose decisions read `clock` (tests pass a manual one).
    pub async fn start_with_clock(
        config: NodeConfig,
        store: Arc<dyn Store>,
        clock: SharedClock,
    ) -> Result<NodeHandle, Error> {
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
        let internal_listener = tokio::net::TcpListener::bind(config.internal_listen_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.internal_listen_addr,
                source,
            })?;
        let internal_addr = internal_listener
            .local_addr()
            .map_err(|source| Error::Bind {
                addr: config.internal_listen_addr,
                source,
            })?;
        let (tls, tls_node_id) = cluster_tls(&config)?;
        let dialer = match &tls {
            Some(material) => Dialer::Tls(material.clone()),
            None => Dialer::Plain,
        };
        let mut config = config;
        config.node_id = Some(tls_node_id.unwrap_or_else(|| format!("node-{}", local_addr.port())));
        let node_id = NodeId(config.node_id());
        let advertise = config
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());
        let internal_advertise = config
            .internal_advertise_addr
            .clone()
            .unwrap_or_else(|| internal_addr.to_string());
        let tenants = Authenticator::new(
            &load_tenants(&config)?,
            config.api_keys_in_store.then(|| store.clone()),
            clock.clone(),
            config.api_key_recheck_ms,
        );
        let ownership = Ownership::new(node_id.clone());
        let (shutdown, shutdown_rx) = watch::channel(false);

        // Provider accounts, their limits and breakers. One link pool per node: the router's
        // Forward stream and the channels' calls share each peer's connection.
        let peers = Peers::new(dialer.clone());
        let channels = config
            .channels_config()
            .build(ChannelsContext {
                node_id: node_id.clone(),
                ownership: ownership.clone(),
                peers: peers.clone(),
                clock: clock.clone(),
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

        // The recipients: their actors and what the actors use.
        let events = EventBus::new(config.watch_buffer);
        let (timers, timer_loop) = Timers::new(clock.clone());
        let receipt_stats = Arc::new(ReceiptStats::default());
        let links = LinkSigner::new(config.public_url.as_deref(), config.link_secret.as_deref());
        // Journeys: their waits and local times on the policy clock (accelerated in demos).
        let journey_clock = herald_proto::clock::ScaledClock::shared(
            clock.clone(),
            config.policy_clock_anchor_unix_ms.unwrap_or(0),
            config.policy_clock_rate,
        );
        let journey_waits = JourneyWaits::new(
            store.clone(),
            journey_clock.clone(),
            WaitSettings::default(),
        );
        let (journey_submit, journey_submit_loop) = crate::journey::submit::queue();
        let env = Arc::new(RecipientEnv {
            node_id: node_id.clone(),
            clock: clock.clone(),
            store: store.clone(),
            events: events.clone(),
            timers: timers.clone(),
            channels: channels.clone(),
            receipts: receipt_stats.clone(),
            journeys: JourneyEnv {
                store: store.clone(),
                clock: journey_clock.clone(),
                submit: Arc::new(journey_submit),
                waits: journey_waits.clone(),
            },
            settings: RecipientSettings {
                machine: crate::waterfall::Settings {
                    default_step_timeout_ms: config.default_step_timeout_ms,
                    breaker_recheck_ms: BREAKER_RECHECK_MS,
                    policy_clock_offset_ms: config.policy_clock_offset_ms,
                    prices: Arc::new(config.prices.clone()),
                },
                receipt_index_ttl: Duration::from_secs(config.receipt_index_ttl_s),
                links: links.clone(),
                session_windows: config
                    .channel_rules
                    .iter()
                    .filter(|(_, rules)| rules.session_window_h > 0)
                    .map(|(account, rules)| (account.clone(), rules.session_window_h))
                    .collect(),
            },
        });
        let directory = RecipientDirectory::new(
            env,
            Admission {
                messages: config.max_messages_in_progress,
                signals: SIGNALS_IN_PROGRESS,
            },
        );
        let lease_wait = Duration::from_millis(2 * config.lease_ttl_ms);
        let contact_index = ContactIndex::new(config.contact_index_secret.as_deref());
        if !contact_index.is_keyed() {
            warn!(
                "contact_index_secret is not set: the phone index is keyed with a well-known key (set the same secret on every node)"
            );
        }
        let intake = Arc::new(Intake {
            contact_index: contact_index.clone(),
            node_id: node_id.clone(),
            store: store.clone(),
            ownership: ownership.clone(),
            directory: directory.clone(),
            tenants: tenants.clone(),
            events: events.clone(),
            clock: clock.clone(),
            settings: IntakeSettings {
                idempotency_ttl: Duration::from_secs(config.idempotency_ttl_s),
                verdict_timeout: Duration::from_millis(config.route_timeout_ms),
                keyword_replies: config.sms_keywords.clone(),
            },
        });
        let router = Router::new(
            node_id.clone(),
            ownership.clone(),
            peers,
            intake.clone(),
            RouteTimings {
                route_timeout: Duration::from_millis(config.route_timeout_ms),
                lease_wait,
            },
        );
        let campaigns = CampaignsContext {
            store: store.clone(),
            intake: intake.clone(),
            ownership: ownership.clone(),
            tenants: tenants.clone(),
            clock: clock.clone(),
            prices: Arc::new(config.prices.clone()),
        }
        .build();
        let control_link = Arc::new(ControlLink::new(
            config.control_addrs.clone(),
            dialer.clone(),
        ));
        let receipts = Arc::new(Receipts {
            router: router.clone(),
            store: store.clone(),
            tenants: tenants.clone(),
            channels: channels.clone(),
            stats: receipt_stats.clone(),
            help_reply: config.sms_keywords.help_reply.clone(),
            contact_index: contact_index.clone(),
        });

        // The gRPC server.
        let limits = Limits {
            batch_max: config.batch_max,
            max_message_bytes: config.max_message_bytes,
        };
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        health_reporter
            .set_serving::<DeliveryServer<DeliveryApi>>()
            .await;
        health_reporter
            .set_serving::<RecipientsServer<RecipientsApi>>()
            .await;
        health_reporter
            .set_serving::<EngagementServer<EngagementApi>>()
            .await;
        health_reporter
            .set_serving::<BreakersServer<BreakersApi>>()
            .await;
        health_reporter
            .set_serving::<CampaignsServer<CampaignsApi>>()
            .await;
        health_reporter
            .set_serving::<CreditsServer<CreditsApi>>()
            .await;
        health_reporter
            .set_serving::<JourneysServer<JourneysApi>>()
            .await;
        // The internal port's own health: Forward is served there, not on the public port.
        let (internal_reporter, internal_health) = tonic_health::server::health_reporter();
        internal_reporter
            .set_serving::<ForwardServer<ForwardApi>>()
            .await;
        // Reflection v1 and v1alpha (grpcurl 1.8 and Python's stock client speak v1alpha), each
        // listing exactly the services this server answers, not every service of the protos.
        let reflection = || {
            let mut builder = tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(herald_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                );
            for name in [
                herald_proto::v1::delivery_server::SERVICE_NAME,
                herald_proto::v1::recipients_server::SERVICE_NAME,
                herald_proto::v1::engagement_server::SERVICE_NAME,
                herald_proto::v1::breakers_server::SERVICE_NAME,
                herald_proto::v1::campaigns_server::SERVICE_NAME,
                herald_proto::v1::credits_server::SERVICE_NAME,
                herald_proto::v1::journeys_server::SERVICE_NAME,
                tonic_health::pb::health_server::SERVICE_NAME,
                tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
                tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
            ] {
                builder = builder.with_service_name(name);
            }
            builder
        };
        let reflection_error = |e: tonic_reflection::server::Error| {
            Error::Store(herald_store::Error::Corrupt {
                key: "reflection".into(),
                reason: e.to_string(),
            })
        };
        let reflection_v1 = reflection().build_v1().map_err(reflection_error)?;
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_error)?;
        let (server_stop, server_stopped) = watch::channel(false);
        let api_tls = herald_tls::public::PublicTls::load(&config.api_tls)?;
        match &api_tls {
            Some(api_tls) => {
                api_tls.watch();
                info!(
                    client_certificates = api_tls.requires_client_certificates(),
                    "public API over TLS"
                );
            }
            None => info!("public API in plaintext (no [api_tls]): put it behind a TLS proxy"),
        }
        let delivery = DeliveryApi {
            router: router.clone(),
            tenants: tenants.clone(),
            store: store.clone(),
            limits,
            prices: Arc::new(config.prices.clone()),
            watch: Watch {
                node_id: node_id.clone(),
                ownership: ownership.clone(),
                events: events.clone(),
                dialer: dialer.clone(),
            },
        };
        let recipients = RecipientsApi {
            router: router.clone(),
            tenants: tenants.clone(),
            store: store.clone(),
            limits,
        };
        let engagement = EngagementApi {
            receipts: receipts.clone(),
            tenants: tenants.clone(),
            store: store.clone(),
            limits,
            ownership: ownership.clone(),
        };
        let breakers = BreakersApi {
            channels: channels.clone(),
            tenants: tenants.clone(),
        };
        let campaigns_api = CampaignsApi {
            tenants: tenants.clone(),
            store: store.clone(),
            control: control_link,
            ownership: ownership.clone(),
            prices: Arc::new(config.prices.clone()),
            clock: clock.clone(),
            max_message_bytes: config.max_message_bytes,
        };
        let journeys_api = JourneysApi {
            tenants: tenants.clone(),
            store: store.clone(),
            router: router.clone(),
            clock: clock.clone(),
            max_message_bytes: config.max_message_bytes,
        };
        let credits_api = CreditsApi {
            tenants: tenants.clone(),
            store: store.clone(),
        };
        let forward = ForwardApi::new(ForwardShared {
            intake: intake.clone(),
            tenants: tenants.clone(),
            events: events.clone(),
            channels: channels.clone(),
            lease_wait,
        });
        let public = tonic::transport::Server::builder()
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                DeliveryServer::new(delivery)
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .add_service(
                RecipientsServer::new(recipients)
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .add_service(BreakersServer::new(breakers))
            .add_service(
                CampaignsServer::new(campaigns_api)
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .add_service(CreditsServer::new(credits_api))
            .add_service(
                JourneysServer::new(journeys_api)
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            )
            .add_service(
                EngagementServer::new(engagement)
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
            );
        let mut servers = vec![spawn_server!(
            public,
            listener,
            api_tls.clone().map(ServerTls::Public),
            stopped(server_stopped.clone()),
            "public API"
        )];
        // The internal plane: only Forward (and health), behind the node-certificate check.
        let internal = tonic::transport::Server::builder()
            .add_service(internal_health)
            .add_service(tonic::service::interceptor::InterceptedService::new(
                ForwardServer::new(forward)
                    .max_decoding_message_size(GRPC_MESSAGE_MAX_BYTES)
                    .max_encoding_message_size(GRPC_MESSAGE_MAX_BYTES),
                NodesOnly { tls: tls.is_some() },
            ));
        servers.push(spawn_server!(
            internal,
            internal_listener,
            tls.clone().map(ServerTls::Cluster),
            stopped(server_stopped),
            "internal"
        ));

        // The loops.
        let lifecycle = Arc::new(Lifecycle {
            intake: intake.clone(),
            directory: directory.clone(),
            channels: channels.clone(),
            campaigns: campaigns.clone(),
        });
        tokio::spawn(campaigns.clone().run(shutdown_rx.clone()));
        tokio::spawn(journey_submit_loop.run(router.clone(), shutdown_rx.clone()));
        tokio::spawn(journey_waits.run(
            ownership.clone(),
            intake.clone() as Arc<dyn WakeSink>,
            shutdown_rx.clone(),
        ));
        tokio::spawn(
            SegmentEntries::new(
                store.clone(),
                journey_clock.clone(),
                ownership.clone(),
                intake.clone() as Arc<dyn EnterSink>,
                EntrySettings::default(),
            )
            .run(shutdown_rx.clone()),
        );
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
        tokio::spawn(timer_loop.run(
            ownership.clone(),
            Arc::new(TimerRuns(directory.clone())),
            shutdown_rx.clone(),
        ));
        if let Some(provider_events) = provider_events {
            tokio::spawn(receipts.clone().consume(provider_events));
        }
        let http_addr = match config.http_listen_addr {
            Some(addr) => Some(
                crate::http::serve(
                    addr,
                    crate::http::Http {
                        node_id: node_id.clone(),
                        receipts,
                        providers: config.providers.clone(),
                        links,
                        tenants,
                        store: store.clone(),
                        channels: channels.clone(),
                        timers: timers.clone(),
                        directory: directory.clone(),
                    },
                    shutdown_rx.clone(),
                )
                .await
                .map_err(|source| Error::Bind { addr, source })?,
            ),
            None => None,
        };
        tokio::spawn(directory.clone().run_passivation(
            Duration::from_millis(config.actor_idle_ms),
            shutdown_rx.clone(),
        ));
        let info = NodeInfo {
            node_id: node_id.0.clone(),
            address: internal_advertise,
            weight: config.weight,
            api_address: advertise,
        };
        let membership = tokio::spawn(crate::membership::run(
            ownership.clone(),
            info,
            config.control_addrs.clone(),
            dialer,
            Arc::new(campaigns),
            shutdown_rx,
        ));
        info!(node = %node_id, addr = %local_addr, internal = %internal_addr, mtls = tls.is_some(), "node started");
        Ok(NodeHandle {
            local_addr,
            internal_addr,
            http_addr,
            node_id,
            ownership,
            events,
            timers,
            receipts: receipt_stats,
            channels,
            directory,
            shutdown,
            membership: Some(membership),
            leases: Some(leases),
            servers,
            server_stop,
        })
    }
}
