//! A whole cluster in this process: one control plane and N nodes on loopback, talking real
//! gRPC to each other, on the embedded store or a Redis. Used by `herald up` and `herald bench`.
//!
//! On Redis each node runs on a thread of its own, with its own single-threaded tokio runtime
//! and its own store connection: what it would have as a process of its own. Nodes then never
//! share a scheduler, so one node's tasks are not stolen by another's worker. Measured on the
//! waterfall bench (3 nodes, 2 cores, 100k messages): about 5% less wall time than all nodes
//! on one multi-threaded runtime and store, and faster in 13 of 16 alternating pairs. On the embedded store (one in-memory
//! instance that every node shares) the nodes stay on the caller's runtime: there the split
//! was 20% slower, the shared store's wake-ups crossing runtimes. The control plane and the
//! caller always stay on the caller's runtime.
//!
//! With `mtls` (the default) the cluster runs as a real one does: a throwaway cluster CA in a
//! temporary directory, a certificate per node and for the control plane, and one for the
//! operator (`herald cluster status --tls-dir <dir>`); all gone when the cluster is.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use herald_control::{ControlConfig, ControlHandle, ControlPlane};
use herald_node::config::{NodeConfig, SandboxConfig, StoreConfig, TenantConfig};
use herald_node::server::{Node, NodeHandle, open_store};

pub const DEMO_TENANT: &str = "demo";
pub const DEMO_API_KEY: &str = "demo-key";

pub struct LocalCluster {
    pub control: Option<ControlHandle>,
    pub nodes: Vec<NodeHandle>,
    pub partition_count: u32,
    /// The nodes' own threads (Redis only). Dropping one ends its node's runtime.
    node_threads: Vec<NodeThread>,
    /// The throwaway CA and certificates (with mTLS).
    certs: Option<tempfile::TempDir>,
}

/// The thread a node's runtime runs on. The runtime lives until `stop` is sent or dropped.
struct NodeThread {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

pub struct LocalOptions {
    pub nodes: usize,
    pub redis_url: Option<String>,
    pub key_prefix: Option<String>,
    pub sandbox: SandboxConfig,
    pub partition_count: u32,
    /// Mutual TLS between the nodes and to the control plane (off only to measure its cost).
    pub mtls: bool,
    /// The journeys' policy clock: this many times faster than real time from this instant
    /// (ms since the Unix epoch) on; `None` = real time.
    pub policy_clock: Option<(u32, i64)>,
}

/// The operator certificate's name in a local cluster's certificate directory.
pub const LOCAL_OPERATOR: &str = "local-operator";

/// A throwaway CA and certificates for the control plane, `nodes` nodes and an operator.
fn throwaway_certs(nodes: usize) -> Result<tempfile::TempDir> {
    use herald_tls::{Authority, Identity, Role};
    let dir = tempfile::Builder::new()
        .prefix("herald-up-certs-")
        .tempdir()
        .context("creating the certificate directory")?;
    let ca = Authority::generate("local")?;
    ca.write(dir.path(), false)?;
    let mut identities = vec![
        Identity::new(Role::Control, "control-local")?,
        Identity::new(Role::Operator, LOCAL_OPERATOR)?,
    ];
    for index in 1..=nodes {
        identities.push(Identity::new(Role::Node, format!("node-{index}"))?);
    }
    for identity in identities {
        let issued = ca.issue(&identity, &["127.0.0.1".into(), "localhost".into()], 30)?;
        Authority::write_issued(dir.path(), &issued, false)?;
    }
    Ok(dir)
}

/// The `[tls]` of the certificate `<role>-<name>` in `dir`.
pub fn tls_of(dir: Option<&std::path::Path>, role: &str, name: &str) -> herald_tls::ClusterTls {
    match dir {
        Some(dir) => herald_tls::ClusterTls::with_files(herald_tls::config::TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{role}-{name}.pem")),
            key: dir.join(format!("{role}-{name}.key")),
        }),
        None => herald_tls::ClusterTls::off(),
    }
}

impl LocalCluster {
    pub async fn start(options: LocalOptions) -> Result<Self> {
        if options.nodes == 0 {
            bail!("--nodes must be at least 1");
        }
        let store_config = StoreConfig {
            redis_url: options.redis_url.clone(),
            data_dir: None,
            key_prefix: options.key_prefix.clone(),
            ..StoreConfig::default()
        };
        let store = open_store(&store_config)
            .await
            .context("opening the store")?;
        let certs = if options.mtls {
            Some(throwaway_certs(options.nodes)?)
        } else {
            None
        };
        let certs_dir = certs.as_ref().map(|d| d.path().to_owned());
        let control_config = ControlConfig {
            listen_addr: "127.0.0.1:0".parse()?,
            partition_count: options.partition_count,
            control_id: "control-local".into(),
            tls: tls_of(certs_dir.as_deref(), "control", "control-local"),
            ..ControlConfig::default()
        };
        let control = ControlPlane::start(control_config, store.clone())
            .await
            .context("starting the control plane")?;
        let control_addr = control.local_addr().to_string();
        let mut nodes = Vec::with_capacity(options.nodes);
        let mut node_threads = Vec::with_capacity(options.nodes);
        // One throwaway index key for this run's nodes (its store is throwaway too).
        let contact_index_secret = format!("{:032x}", rand::random::<u128>());
        for index in 0..options.nodes {
            let node_id = format!("node-{}", index + 1);
            let config = NodeConfig {
                tls: tls_of(certs_dir.as_deref(), "node", &node_id),
                node_id: Some(node_id),
                listen_addr: "127.0.0.1:0".parse()?,
                internal_listen_addr: "127.0.0.1:0".parse()?,
                control_addrs: vec![control_addr.clone()],
                store: store_config.clone(),
                tenants: vec![TenantConfig::new(DEMO_TENANT, vec![DEMO_API_KEY.into()])],
                sandbox: options.sandbox.clone(),
                contact_index_secret: Some(contact_index_secret.clone()),
                policy_clock_rate: options.policy_clock.map_or(1, |(rate, _)| rate),
                policy_clock_anchor_unix_ms: options.policy_clock.map(|(_, anchor)| anchor),
                ..NodeConfig::default()
            };
            let node = if options.redis_url.is_some() {
                let (node, thread) = start_on_own_thread(config, index + 1).await;
                node_threads.extend(thread);
                node
            } else {
                Node::start(config, store.clone())
                    .await
                    .map_err(anyhow::Error::new)
            }
            .with_context(|| format!("starting node {}", index + 1))?;
            nodes.push(node);
        }
        Ok(Self {
            control: Some(control),
            nodes,
            partition_count: options.partition_count,
            node_threads,
            certs,
        })
    }

    /// A client of the control plane as this cluster's operator (its throwaway operator
    /// certificate; plaintext without mTLS, where operator calls are refused).
    pub async fn operator_control(
        &self,
    ) -> Result<herald_proto::v1::control_client::ControlClient<tonic::transport::Channel>> {
        let control = self.control.as_ref().context("no control plane")?;
        let dialer = match self.certs_dir() {
            Some(dir) => herald_tls::Dialer::Tls(herald_tls::TlsMaterial::load(
                herald_tls::config::TlsFiles {
                    ca: dir.join("ca.pem"),
                    cert: dir.join(format!("operator-{LOCAL_OPERATOR}.pem")),
                    key: dir.join(format!("operator-{LOCAL_OPERATOR}.key")),
                },
            )?),
            None => herald_tls::Dialer::Plain,
        };
        let channel = dialer.channel(
            &control.local_addr().to_string(),
            herald_tls::Role::Control,
            |endpoint| endpoint,
        )?;
        Ok(herald_proto::v1::control_client::ControlClient::new(
            channel,
        ))
    }

    /// The directory of the throwaway CA and certificates (with mTLS).
    pub fn certs_dir(&self) -> Option<&std::path::Path> {
        self.certs.as_ref().map(|d| d.path())
    }

    pub fn node_addrs(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| n.local_addr.to_string())
            .collect()
    }

    /// Waits until the table has settled: every node applied the same epoch and serves exactly
    /// the partitions that table gives it (so no partition moves during a timed run).
    pub async fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        loop {
            let tables: Vec<_> = self.nodes.iter().map(|n| n.ownership().table()).collect();
            let epoch = tables.first().map(|t| t.epoch);
            let settled = tables
                .iter()
                .all(|t| Some(t.epoch) == epoch && t.nodes.len() == self.nodes.len())
                && self.nodes.iter().zip(&tables).all(|(node, table)| {
                    let owned = table.partitions_of(node.node_id().as_str()).count() as u32;
                    owned == node.ownership().serving_count()
                });
            let serving: u32 = self
                .nodes
                .iter()
                .map(|n| n.ownership().serving_count())
                .sum();
            if settled && serving == self.partition_count {
                return Ok(());
            }
            if started.elapsed() > timeout {
                bail!(
                    "cluster not ready after {timeout:?}: {serving} of {} partitions served",
                    self.partition_count
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waterfall steps that timed out waiting for a receipt, over all nodes.
    pub fn step_timeouts(&self) -> u64 {
        self.nodes.iter().map(|n| n.step_timeouts()).sum()
    }

    /// Receipts applied to their attempts, over all nodes.
    pub fn receipts_applied(&self) -> u64 {
        self.nodes.iter().map(|n| n.receipts_applied()).sum()
    }

    pub fn provider_calls(&self) -> u64 {
        self.nodes.iter().map(|n| n.sandbox_calls()).sum()
    }

    pub async fn shutdown(mut self) {
        let nodes = std::mem::take(&mut self.nodes);
        futures::future::join_all(nodes.into_iter().map(NodeHandle::shutdown)).await;
        // The nodes' runtimes had to run until their shutdown finished; now they can end.
        let threads = std::mem::take(&mut self.node_threads);
        let _ = tokio::task::spawn_blocking(move || {
            for node_thread in threads {
                let _ = node_thread.stop.send(());
                let _ = node_thread.thread.join();
            }
        })
        .await;
        if let Some(control) = self.control.take() {
            let _ = control.shutdown().await;
        }
    }
}

/// Starts a node on a new thread with a current-thread runtime and a store connection of its
/// own, opened on that runtime so the store's background tasks run there too (module docs).
/// The thread is returned even when the node failed to start, to be joined with the rest.
async fn start_on_own_thread(
    config: NodeConfig,
    number: usize,
) -> (Result<NodeHandle>, Option<NodeThread>) {
    let (started_tx, started_rx) = tokio::sync::oneshot::channel::<Result<NodeHandle>>();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let spawned = std::thread::Builder::new()
        .name(format!("herald-node-{number}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    let _ = started_tx.send(Err(
                        anyhow::Error::new(error).context("building its runtime")
                    ));
                    return;
                }
            };
            runtime.block_on(async move {
                let store = match open_store(&config.store).await {
                    Ok(store) => store,
                    Err(error) => {
                        let _ = started_tx
                            .send(Err(anyhow::Error::new(error).context("opening the store")));
                        return;
                    }
                };
                let started = Node::start(config, store).await.map_err(anyhow::Error::new);
                let failed = started.is_err();
                if started_tx.send(started).is_err() || failed {
                    return;
                }
                // Sent by `shutdown`, or dropped with the cluster.
                let _ = stop_rx.await;
            });
        });
    let thread = match spawned {
        Ok(thread) => thread,
        Err(error) => {
            return (
                Err(anyhow::Error::new(error).context("spawning its thread")),
                None,
            );
        }
    };
    let node = match started_rx.await {
        Ok(started) => started,
        Err(_) => Err(anyhow::anyhow!("its thread ended before it started")),
    };
    (node, Some(NodeThread { stop, thread }))
}

/// Peak resident set size of this process, in KiB (Linux `VmHWM`).
pub fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
