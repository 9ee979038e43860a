//! # herald-control: the control plane
//!
//! Owns cluster membership (join, heartbeat, leave, failure detection), the partition table and
//! its epochs, and the leader lease that makes one control replica the only one deciding them.
//! Nodes learn tables through `WatchTable` and never act on an older epoch.
//!
//! It must never touch recipient or message state, and never publish a table it has not
//! persisted: the data plane fences every write with the table's epoch.
//!
//! ## Layout
//! - [`config`]: [`ControlConfig`], defaults and validation.
//! - [`partition_table`]: partition → node assignment (sticky, minimal movement, balanced).
//! - `membership`: members, heartbeat facts, and the table built from a member list (pure).
//! - `leader`: the leader lease loop, the leadership term, persisting then publishing tables,
//!   the failure detector.
//! - `service`: the `herald.v1.Control` gRPC service (decode, call the leader, map errors).
//! - `streams`: WatchTable and WatchCampaigns, bound to the term that serves them.
//! - [`campaigns`]: campaign commands, their assignment to nodes and pace, credits.
//! - this file: [`ControlPlane::start`] wires the server and the tasks; [`ControlHandle`]
//!   observes and stops them; [`Error`].
//!
//! ## Empty cluster
//! Until a node joins, the table has no nodes and no owners (`owners` is empty) at the stored
//! epoch (0 for a new cluster). Nodes must read it as "nobody owns anything yet".

pub mod api_keys;
pub mod campaigns;
pub mod config;
mod leader;
mod membership;
pub mod partition_table;
mod service;
mod streams;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1::PartitionTable;
use herald_proto::v1::control_server::ControlServer;
use herald_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::{debug, error, info, warn};

pub use config::ControlConfig;
pub use leader::{LEADER_LEASE, MAX_WATCHERS, TABLE_BLOB};

/// How long shutdown waits for in-flight RPCs before it drops the server.
const SERVER_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Concurrent RPCs per connection (a node has a handful in flight; this only bounds abuse).
const MAX_CONCURRENT_RPCS_PER_CONNECTION: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid config {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("tls: {0}")]
    Tls(#[from] herald_tls::Error),
    #[error("cannot bind {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("store: {0}")]
    Store(#[from] herald_store::Error),
    #[error("store call timed out")]
    StoreTimeout,
    /// The stored table cannot be decoded or is malformed: leading would risk reusing epochs.
    #[error("stored partition table is corrupt: {0}")]
    CorruptTable(String),
    /// P is fixed when a cluster is created.
    #[error("stored partition table has {stored} partitions but partition_count is {configured}")]
    PartitionCountMismatch { stored: u32, configured: u32 },
    #[error("partition table: {0}")]
    PartitionTable(#[from] partition_table::Error),
    #[error("inconsistent partition table: {0}")]
    InconsistentTable(String),
    /// This replica does not lead; `leader` names the one that does, when known.
    #[error("not_leader{{leader={}}}", leader.as_deref().unwrap_or_default())]
    NotLeader { leader: Option<String> },
    #[error("too many table watchers (limit {limit})")]
    TooManyWatchers { limit: usize },
    #[error("reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("grpc server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("task {task} panicked")]
    TaskPanicked { task: &'static str },
    /// A request the caller must change (names the field), or a state that does not allow it.
    #[error(transparent)]
    Request(#[from] herald_proto::error::Error),
}

impl Error {
    /// Errors after which this replica must not lead until an operator intervenes.
    fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::CorruptTable(_) | Error::PartitionCountMismatch { .. }
        )
    }
}

/// The control plane of one replica.
pub struct ControlPlane;

impl ControlPlane {
    /// Validates `config`, checks the stored table against it, binds the gRPC server (Control,
    /// `grpc.health.v1` — `herald.v1.Control` is SERVING only while this replica leads — and
    /// reflection v1 and v1alpha), and spawns the lease loop and the failure detector.
    pub async fn start(
        config: ControlConfig,
        store: Arc<dyn Store>,
    ) -> Result<ControlHandle, Error> {
        config.validate()?;
        // Fail fast on a store made for another partition count (or a corrupt table) instead
        // of serving as a follower that can never lead.
        let stored =
            leader::with_timeout(leader::load_table(&*store, config.partition_count)).await?;

        let listener = TcpListener::bind(config.listen_addr)
            .await
            .map_err(|source| Error::Bind {
                addr: config.listen_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Bind {
            addr: config.listen_addr,
            source,
        })?;

        let tls = match config.tls.files()? {
            Some(files) => {
                let material = herald_tls::TlsMaterial::load(files)?;
                let identity = material.identity();
                if identity.role != herald_tls::Role::Control {
                    return Err(Error::Config {
                        field: "tls.cert",
                        reason: format!(
                            "{identity} is not a control certificate (herald certs issue --control <id>)"
                        ),
                    });
                }
                material.watch(std::time::Duration::from_millis(
                    config.tls.reload_interval_ms,
                ));
                Some(material)
            }
            None => {
                tracing::warn!(
                    "tls.mode = \"off\": the Control service is plaintext; anyone who reaches {local_addr} can join or evict nodes"
                );
                None
            }
        };
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status(
                herald_proto::v1::control_server::SERVICE_NAME,
                tonic_health::ServingStatus::NotServing,
            )
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
                herald_proto::v1::control_server::SERVICE_NAME,
                tonic_health::pb::health_server::SERVICE_NAME,
                tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME,
                tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME,
            ] {
                builder = builder.with_service_name(name);
            }
            builder
        };
        let reflection_v1 = reflection().build_v1()?;
        let reflection_v1alpha = reflection().build_v1alpha()?;

        info!(
            control = %config.control_id,
            addr = %local_addr,
            partition_count = config.partition_count,
            stored_epoch = stored.epoch,
            "control plane starting"
        );
        let ctrl = Arc::new(leader::Controller::new(config, store, health, stored));
        let (stop_loops, loops_rx) = watch::channel(false);
        let (stop_server, mut server_rx) = watch::channel(false);

        let router = Server::builder()
            .concurrency_limit_per_connection(MAX_CONCURRENT_RPCS_PER_CONNECTION)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(ControlServer::new(service::ControlService::new(
                ctrl.clone(),
                tls.is_some(),
            )));
        let stop = async move {
            // An error means the handle is gone: stop as well.
            let _ = server_rx.wait_for(|stop| *stop).await;
        };
        let server = match tls {
            Some(material) => {
                let incoming = herald_tls::transport::incoming(
                    listener,
                    herald_tls::ServerTls::Cluster(material),
                );
                spawn_task("grpc-server", async move {
                    Ok(router.serve_with_incoming_shutdown(incoming, stop).await?)
                })
            }
            None => {
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                spawn_task("grpc-server", async move {
                    Ok(router.serve_with_incoming_shutdown(incoming, stop).await?)
                })
            }
        };
        let loops = vec![
            spawn_task(
                "lease-loop",
                leader::run_lease_loop(ctrl.clone(), loops_rx.clone()),
            ),
            spawn_task(
                "failure-detector",
                leader::run_failure_detector(ctrl.clone(), loops_rx.clone()),
            ),
            spawn_task(
                "campaign-loop",
                leader::run_campaign_loop(ctrl.clone(), loops_rx),
            ),
        ];
        Ok(ControlHandle {
            ctrl,
            local_addr,
            stop_loops,
            stop_server,
            loops,
            server: Some(server),
        })
    }
}

/// Observes and stops a running control replica. Dropping it stops the replica too, without
/// waiting; [`ControlHandle::shutdown`] waits.
pub struct ControlHandle {
    ctrl: Arc<leader::Controller>,
    local_addr: SocketAddr,
    stop_loops: watch::Sender<bool>,
    stop_server: watch::Sender<bool>,
    loops: Vec<Task>,
    server: Option<Task>,
}

impl ControlHandle {
    /// The address the gRPC server is bound to (the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn control_id(&self) -> &str {
        &self.ctrl.config.control_id
    }

    /// Whether this replica leads now (holds a lease it is sure is still valid).
    pub fn is_leader(&self) -> bool {
        self.ctrl.is_leader()
    }

    /// The leader's current table, or on a follower the newest table it has seen.
    pub fn current_table(&self) -> Arc<PartitionTable> {
        self.ctrl.current_table()
    }

    /// Graceful stop: steps down (ending WatchTable streams with UNAVAILABLE), stops the loops,
    /// then drains the gRPC server. Returns when every task has ended, with the first task
    /// error. A leader hands its lease off (lets it lapse at once) after its last table write,
    /// so a successor takes over within one renew interval rather than a whole TTL.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        info!(control = %self.ctrl.config.control_id, "control plane shutting down");
        self.stop_loops.send_replace(true);
        let mut first_error = None;
        for task in std::mem::take(&mut self.loops) {
            if let Err(e) = task.join().await {
                first_error.get_or_insert(e);
            }
        }
        // Only now: the streams have ended, so the drain cannot wait on them.
        self.stop_server.send_replace(true);
        if let Some(server) = self.server.take() {
            let abort = server.handle.abort_handle();
            match tokio::time::timeout(SERVER_DRAIN_TIMEOUT, server.join()).await {
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Ok(Ok(())) => {}
                Err(_) => {
                    warn!(
                        timeout_ms = SERVER_DRAIN_TIMEOUT.as_millis() as u64,
                        "grpc server did not drain in time; aborting it"
                    );
                    abort.abort();
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

impl Drop for ControlHandle {
    fn drop(&mut self) {
        self.stop_loops.send_replace(true);
        self.stop_server.send_replace(true);
    }
}

/// A spawned task of the control plane; its outcome is logged where it ends.
struct Task {
    name: &'static str,
    handle: JoinHandle<Result<(), Error>>,
}

/// The one place control-plane tasks are spawned: each logs how it ended.
fn spawn_task(
    name: &'static str,
    task: impl Future<Output = Result<(), Error>> + Send + 'static,
) -> Task {
    let handle = tokio::spawn(async move {
        let result = task.await;
        match &result {
            Ok(()) => debug!(task = name, "task ended"),
            Err(e) => error!(task = name, error = %e, "task failed"),
        }
        result
    });
    Task { name, handle }
}

impl Task {
    async fn join(self) -> Result<(), Error> {
        match self.handle.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => {
                error!(task = self.name, "task panicked");
                Err(Error::TaskPanicked { task: self.name })
            }
            // Cancelled: only on runtime shutdown, nothing left to report.
            Err(_) => Ok(()),
        }
    }
}
