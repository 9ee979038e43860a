//! # cluster: a local Herald cluster of real processes
//!
//! Owns [`Cluster`]: a throwaway `redis-server` ([`RedisServer`]), a `herald control` and any
//! number of `herald node` processes on free loopback ports, each configured by a file in the
//! cluster's temporary directory and logging to its own file there. When a test panics the
//! directory is kept and its path printed, so the logs of every process can be read afterwards.
//! Also the ways in: gRPC channels ([`channel`], [`try_channel`]), [`authed`] requests, and the
//! test tenants ([`TENANT`] with [`API_KEY`]; `globex` with [`OTHER_API_KEY`]).
//!
//! It must never wait a fixed time: readiness is a state of the control plane (every node a
//! member, every partition served at the current epoch), awaited with [`crate::eventually`].
//! It must never outlive its test: dropping a [`Process`] kills it, dropping the [`Cluster`]
//! kills them all and removes the directory (unless the test panicked).
//!
//! The processes run the `herald` binary found by [`herald_bin`], with mutual TLS between
//! them as in production: each cluster makes its own CA and a certificate per process in
//! `<dir>/certs` (the control plane's, one per node, and the test's own operator certificate,
//! which [`Cluster::control_client`] presents).

use std::ffi::OsString;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use herald_proto::v1::control_client::ControlClient;
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    ClusterStatusRequest, ClusterStatusResponse, PartitionTable, WatchTableRequest,
};
use herald_store::testsuite::RedisServer;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

use crate::eventually::{eventually, try_eventually};

/// The test tenant every node of a [`Cluster`] knows.
pub const TENANT: &str = "acme";
/// The API key of [`TENANT`].
pub const API_KEY: &str = "test-key-acme";
/// The API key of a second tenant, `globex`: for tests of tenant isolation.
pub const OTHER_API_KEY: &str = "test-key-globex";

/// Environment variable naming the `herald` binary to run (it wins over every other way to find
/// it).
pub const HERALD_BIN_ENV: &str = "HERALD_BIN";
/// What Cargo calls the binary at compile time of the package's own tests, and what nextest sets
/// at run time.
const CARGO_BIN_ENV: &str = "CARGO_BIN_EXE_herald";

/// The `log` filter of every process (`HERALD_LOG`).
const PROCESS_LOG_FILTER: &str = "info,herald_node=info";
/// How long [`Cluster::start`] waits for the cluster to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`channel`] keeps trying to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one connection attempt may take.
const CONNECT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How many lines of each process's log a readiness panic shows.
const LOG_TAIL_LINES: usize = 30;

/// The `herald` binary the cluster runs, found once per test process: the path in
/// [`HERALD_BIN_ENV`], else `CARGO_BIN_EXE_herald` from the environment (nextest sets it), else
/// the `herald` next to the test executable's directory (`target/<profile>/deps/<test>-<hash>`
/// runs `target/<profile>/herald`, which Cargo builds for the herald package's tests).
///
/// # Panics
/// When none of them names an existing file; the message says where it looked.
pub fn herald_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("the path of the test executable");
        locate_herald(
            std::env::var_os(HERALD_BIN_ENV),
            std::env::var_os(CARGO_BIN_ENV),
            &exe,
        )
        .unwrap_or_else(|why| panic!("{why}"))
    })
    .clone()
}

/// [`herald_bin`]'s search, without the environment: the first candidate that is given wins (and
/// must exist), the sibling of `exe`'s directory is the fallback.
fn locate_herald(
    from_env: Option<OsString>,
    from_cargo: Option<OsString>,
    exe: &Path,
) -> Result<PathBuf, String> {
    if let Some(path) = from_env {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "{HERALD_BIN_ENV}={} is not a file: point it at a built `herald` binary",
                path.display()
            ))
        };
    }
    if let Some(path) = from_cargo.map(PathBuf::from)
        && path.is_file()
    {
        return Ok(path);
    }
    let sibling = exe
        .parent()
        .and_then(Path::parent)
        .map(|profile| profile.join(format!("herald{}", std::env::consts::EXE_SUFFIX)));
    match sibling {
        Some(path) if path.is_file() => Ok(path),
        _ => Err(format!(
            "cannot find the `herald` binary: {HERALD_BIN_ENV} and {CARGO_BIN_ENV} are not set \
             and {} does not exist; build it (`cargo build -p herald`) or set {HERALD_BIN_ENV}",
            sibling.map_or_else(
                || format!("no sibling of {}", exe.display()),
                |p| p.display().to_string()
            )
        )),
    }
}

/// A free TCP port on loopback (free when asked: a process binds it right after). Never the
/// same port twice in one test process: the kernel may hand a just-released port out again
/// before the process it was meant for has bound it (a node once got its control plane's).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local addr").port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// One `herald` process of a cluster, with its log file. Dropping it kills the process.
#[derive(Debug)]
pub struct Process {
    /// Names the process in panics and its log file (`<name>.log`).
    pub name: String,
    /// `None` once killed.
    pub child: Option<Child>,
    /// Where the process's stderr (its log) goes.
    pub log: PathBuf,
}

impl Process {
    /// Runs `herald <args> --config <config>`, logging to `<dir>/<name>.log`.
    pub fn spawn(name: &str, args: &[&str], config: &Path, dir: &Path) -> Process {
        Self::spawn_with_env(name, args, config, dir, &[])
    }

    /// [`Process::spawn`] with more environment variables for the process (`FAILPOINTS`, …).
    pub fn spawn_with_env(
        name: &str,
        args: &[&str],
        config: &Path,
        dir: &Path,
        env: &[(String, String)],
    ) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(herald_bin())
            .args(args)
            .arg("--config")
            .arg(config)
            .env("HERALD_LOG", PROCESS_LOG_FILTER)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", herald_bin().display()));
        Process {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// kill -9, and reap the process.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// kill -9 without needing `&mut` (the child is reaped on drop).
    pub fn kill_9(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-9", &child.id().to_string()])
                .status();
        }
    }

    /// SIGTERM: asks the process to stop the way an operator does (a node leaves the cluster).
    /// Does not wait; see [`Process::wait_exit`].
    pub fn terminate(&self) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
    }

    /// How the process ended, once it has (it is reaped then); `None` while it runs or once
    /// killed by [`Process::kill`].
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits until the process has ended on its own and returns how.
    ///
    /// # Panics
    /// After `timeout`, with the tail of the process's log.
    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let waited =
            try_eventually(timeout, || std::future::ready(self.exit_status().ok_or(()))).await;
        match waited {
            Ok(status) => status,
            Err(timed_out) => panic!(
                "{} still running after {:?}:\n{}",
                self.name,
                timed_out.elapsed,
                tail(&self.log_text(), LOG_TAIL_LINES)
            ),
        }
    }

    /// The process's log so far (empty when it cannot be read).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What a test adds to every node's config file.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {
    /// The sandbox provider's latency per call.
    pub sandbox_latency_ms: u64,
    /// More top-level config keys (TOML lines), e.g. `default_step_timeout_ms = 2000`. `{http}`
    /// is replaced by the node's HTTP listener address.
    pub top: String,
    /// More keys of the `[sandbox]` table.
    pub sandbox: String,
    /// More tables, appended at the end (`[providers.x]`, `[channels]`, ...). `{http}` is
    /// replaced by the node's HTTP listener address.
    pub tables: String,
    /// Give the node an HTTP listener (callbacks, `/metrics`) on a free port.
    pub http: bool,
    /// More keys of the test tenant's `[[tenants]]` table (e.g. `marketing_caps = [...]`).
    pub tenant: String,
    /// More environment variables of the node processes (e.g. `FAILPOINTS` for the one node
    /// that must die at a failpoint: give it a spec of its own with [`Cluster::add_node`]).
    pub env: Vec<(String, String)>,
}

/// The shape of a [`Cluster`] beyond its nodes' spec.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub spec: NodeSpec,
    /// Control replicas (one leads by a lease in Redis; the others stand by).
    pub controls: usize,
    /// More top-level keys of every control replica's config (TOML lines).
    pub control_top: String,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            spec: NodeSpec::default(),
            controls: 1,
            control_top: String::new(),
        }
    }
}

/// A running cluster: Redis, one control replica (or more), `nodes` nodes, all on loopback.
pub struct Cluster {
    pub redis: RedisServer,
    /// Config files and logs of every process; kept when the test panics.
    pub dir: tempfile::TempDir,
    /// The first control replica (`control-a`).
    pub control: Process,
    pub control_addr: String,
    /// The other control replicas (`control-b`, …), standing by.
    pub standby_controls: Vec<Process>,
    /// Every control replica's address, `control-a` first.
    pub control_addrs: Vec<String>,
    pub nodes: Vec<Process>,
    /// Per node, its public gRPC address.
    pub node_addrs: Vec<String>,
    /// Per node, its internal (node-to-node, mTLS) address.
    pub internal_addrs: Vec<String>,
    /// The cluster CA and its certificates (`ca.pem`, `<role>-<name>.pem` and `.key`).
    pub certs: PathBuf,
    /// The CA that signs every process's certificate.
    authority: std::sync::Arc<herald_tls::Authority>,
    /// The test's operator identity towards the control plane.
    operator: std::sync::Arc<herald_tls::TlsMaterial>,
    /// Per node, its HTTP listener address (empty when the spec has none).
    pub http_addrs: Vec<String>,
    pub partition_count: u32,
    /// This test's turn: one cluster of processes at a time per test binary (see [`TURN`]).
    _turn: Option<tokio::sync::MutexGuard<'static, ()>>,
}

/// Clusters of one test binary take turns: on a 2-core machine, two clusters of real processes
/// at once starve each other's heartbeats until the control plane declares live nodes dead,
/// and the tests then test the machine. `HERALD_TEST_CLUSTERS_PARALLEL=1` lets them overlap.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The environment variable that lets clusters of one test binary run at once.
pub const CLUSTERS_PARALLEL_ENV: &str = "HERALD_TEST_CLUSTERS_PARALLEL";

impl Cluster {
    /// Starts Redis, the control plane and `nodes` nodes configured by `spec`, and waits until
    /// the cluster is ready (see [`Cluster::wait_ready`]).
    pub async fn start(nodes: usize, spec: NodeSpec) -> Cluster {
        Self::start_with(ClusterOptions {
            nodes,
            spec,
            ..ClusterOptions::default()
        })
        .await
    }

    /// [`Cluster::start`] with more control replicas or control settings.
    pub async fn start_with(options: ClusterOptions) -> Cluster {
        let turn = match std::env::var(CLUSTERS_PARALLEL_ENV).as_deref() {
            Ok("1") => None,
            _ => Some(TURN.lock().await),
        };
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        let authority = herald_tls::Authority::generate("test").expect("cluster CA");
        authority.write(&certs, false).expect("write the CA");
        let operator_tls = issue(
            &authority,
            &certs,
            herald_tls::Role::Operator,
            "test-operator",
        );
        let operator = herald_tls::TlsMaterial::load(operator_tls).expect("operator certificate");
        let mut controls = Vec::new();
        let mut control_addrs = Vec::new();
        for index in 0..options.controls.max(1) {
            let id = control_id(index);
            let addr = format!("127.0.0.1:{}", free_port());
            let tls = issue(&authority, &certs, herald_tls::Role::Control, &id);
            // `control.toml` for the first: tests read it by that name.
            let file = if index == 0 {
                "control.toml".to_owned()
            } else {
                format!("{id}.toml")
            };
            let config = dir.path().join(file);
            std::fs::write(
                &config,
                format!(
                    "control_id = \"{id}\"\nlisten_addr = \"{addr}\"\nredis_url = \"{}\"\n{}\n{}",
                    redis.url(),
                    options.control_top,
                    tls_table(&tls),
                ),
            )
            .expect("write control config");
            let name = if index == 0 { "control".to_owned() } else { id };
            controls.push(Process::spawn(&name, &["control"], &config, dir.path()));
            control_addrs.push(addr);
        }
        let control = controls.remove(0);
        let control_addr = control_addrs[0].clone();
        let nodes = options.nodes;
        let spec = options.spec;
        let mut cluster = Cluster {
            redis,
            dir,
            control,
            control_addr,
            standby_controls: controls,
            control_addrs,
            nodes: Vec::new(),
            node_addrs: Vec::new(),
            internal_addrs: Vec::new(),
            http_addrs: Vec::new(),
            certs,
            authority: std::sync::Arc::new(authority),
            operator,
            partition_count: 4096,
            _turn: turn,
        };
        for _ in 0..nodes {
            cluster.add_node(&spec);
        }
        cluster.wait_ready(nodes, READY_TIMEOUT).await;
        cluster
    }

    /// The config file of node `index`.
    pub fn node_config(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("node-{index}.toml"))
    }

    /// Starts one more node, `node-<index>`, configured by `spec` (which may differ from the
    /// other nodes'), and returns its index. Does not wait: it joins in its own time (see
    /// [`Cluster::wait_ready`]).
    pub fn add_node(&mut self, spec: &NodeSpec) -> usize {
        let index = self.nodes.len();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let internal = format!("127.0.0.1:{}", free_port());
        let tls = issue(
            &self.authority,
            &self.certs,
            herald_tls::Role::Node,
            &format!("node-{index}"),
        );
        let config = self.node_config(index);
        let http = if spec.http {
            format!("127.0.0.1:{}", free_port())
        } else {
            String::new()
        };
        let http_line = if spec.http {
            format!("http_listen_addr = \"{http}\"")
        } else {
            String::new()
        };
        std::fs::write(
            &config,
            format!(
                r#"node_id = "node-{index}"
listen_addr = "{addr}"
internal_listen_addr = "{internal}"
control_addrs = [{control}]
contact_index_secret = "test-contact-index-secret"
{http_line}
{top}

{tls}
[store]
redis_url = "{redis}"

[sandbox]
latency_ms = {latency}
{sandbox}

[[tenants]]
id = "{TENANT}"
api_keys = ["{API_KEY}"]
{tenant}

[[tenants]]
id = "globex"
api_keys = ["{OTHER_API_KEY}"]

{tables}
"#,
                control = self
                    .control_addrs
                    .iter()
                    .map(|a| format!("\"{a}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                redis = self.redis.url(),
                latency = spec.sandbox_latency_ms,
                top = spec.top.replace("{http}", &http),
                tenant = spec.tenant,
                sandbox = spec.sandbox,
                tables = spec.tables.replace("{http}", &http),
                tls = tls_table(&tls),
            ),
        )
        .expect("write node config");
        let process = Process::spawn_with_env(
            &format!("node-{index}"),
            &["node"],
            &config,
            self.dir.path(),
            &spec.env,
        );
        self.nodes.push(process);
        self.node_addrs.push(addr);
        self.internal_addrs.push(internal);
        self.http_addrs.push(http);
        index
    }

    /// Kills node `index` and starts it again with the same id, addresses and store, with
    /// `extra_top` (top-level TOML lines) put in front of its config; it logs to
    /// `node-<index>-restarted.log`, without the environment of its [`NodeSpec::env`]. Does not
    /// wait: the node takes its leases in its own time.
    pub fn restart_node(&mut self, index: usize, extra_top: &str) {
        let config = self.node_config(index);
        let original = std::fs::read_to_string(&config).expect("read node config");
        self.nodes[index].kill();
        // Top-level keys must come before the first table.
        std::fs::write(&config, format!("{extra_top}\n{original}")).expect("write node config");
        self.nodes[index] = Process::spawn(
            &format!("node-{index}-restarted"),
            &["node"],
            &config,
            self.dir.path(),
        );
    }

    /// A client of the control plane that presents the test's operator certificate.
    pub async fn control_client(&self) -> ControlClient<Channel> {
        ControlClient::new(self.control_channel())
    }

    /// A lazy mTLS channel to the control plane as the test's operator.
    pub fn control_channel(&self) -> Channel {
        herald_tls::Dialer::Tls(self.operator.clone())
            .channel(&self.control_addr, herald_tls::Role::Control, |endpoint| {
                endpoint
                    .connect_timeout(CONNECT_ATTEMPT_TIMEOUT)
                    .timeout(Duration::from_secs(10))
            })
            .expect("control address")
    }

    /// Issues (and writes into [`Cluster::certs`]) a certificate of `role` named `name`: for
    /// tests of what a certificate may do.
    pub fn issue(&self, role: herald_tls::Role, name: &str) -> herald_tls::config::TlsFiles {
        issue(&self.authority, &self.certs, role, name)
    }

    /// A lazy mTLS channel to control replica `address` as the test's operator.
    pub fn control_channel_to(&self, address: &str) -> Channel {
        herald_tls::Dialer::Tls(self.operator.clone())
            .channel(address, herald_tls::Role::Control, |endpoint| {
                endpoint
                    .connect_timeout(CONNECT_ATTEMPT_TIMEOUT)
                    .timeout(Duration::from_secs(10))
            })
            .expect("control address")
    }

    /// The control plane's view of the cluster (from the leader when it answers, else from any
    /// replica that does); `None` when none can be asked right now.
    pub async fn status(&self) -> Option<ClusterStatusResponse> {
        let mut any = None;
        for address in &self.control_addrs {
            let mut client = ControlClient::new(self.control_channel_to(address));
            if let Ok(status) = client.cluster_status(ClusterStatusRequest {}).await {
                let status = status.into_inner();
                // A follower reports no heartbeat facts: the leader's answer is the one.
                if self.control_index(&status.leader_id) == Some(self.control_position(address)) {
                    return Some(status);
                }
                any.get_or_insert(status);
            }
        }
        any
    }

    /// The position of a replica's address in [`Cluster::control_addrs`].
    fn control_position(&self, address: &str) -> usize {
        self.control_addrs
            .iter()
            .position(|a| a == address)
            .unwrap_or(usize::MAX)
    }

    /// The index (in [`Cluster::control_addrs`]) of the replica named `id`.
    pub fn control_index(&self, id: &str) -> Option<usize> {
        (0..self.control_addrs.len()).find(|i| control_id(*i) == id)
    }

    /// A client of the leading control replica as the test's operator (waits for one).
    ///
    /// # Panics
    /// When no replica leads within 20 s.
    pub async fn leader_client(&self) -> ControlClient<Channel> {
        let index = eventually("a control replica leads", CONNECT_TIMEOUT, || async {
            let status = self.status().await?;
            self.control_index(&status.leader_id)
        })
        .await;
        ControlClient::new(self.control_channel_to(&self.control_addrs[index]))
    }

    /// kill -9 of the leading control replica; returns its index in
    /// [`Cluster::control_addrs`].
    ///
    /// # Panics
    /// When no replica leads within 20 s.
    pub async fn kill_leader(&mut self) -> usize {
        let index = eventually("a control replica leads", CONNECT_TIMEOUT, || async {
            let status = self.status().await?;
            self.control_index(&status.leader_id)
        })
        .await;
        match index {
            0 => self.control.kill(),
            other => self.standby_controls[other - 1].kill(),
        }
        index
    }

    /// The current partition table, from the control plane's watch stream.
    pub async fn table(&self) -> PartitionTable {
        let mut client = self.control_client().await;
        let mut stream = client
            .watch_table(WatchTableRequest {
                node_id: "test-observer".into(),
            })
            .await
            .expect("watch table")
            .into_inner();
        stream.next().await.expect("a table").expect("table ok")
    }

    /// Waits until `nodes` nodes are members and every partition is served at the current epoch
    /// (as the nodes report it in their heartbeats); returns how long that took.
    ///
    /// # Panics
    /// After `timeout`, with the last status and the tail of every process's log.
    pub async fn wait_ready(&self, nodes: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        let waited = try_eventually(timeout, || async move {
            match self.status().await {
                Some(status) if is_ready(&status, nodes) => Ok(()),
                status => Err(status),
            }
        })
        .await;
        if let Err(timed_out) = waited {
            let logs: Vec<String> = std::iter::once(&self.control)
                .chain(self.standby_controls.iter())
                .chain(self.nodes.iter())
                .map(|p| {
                    format!(
                        "--- {} ---\n{}",
                        p.name,
                        tail(&p.log_text(), LOG_TAIL_LINES)
                    )
                })
                .collect();
            panic!(
                "cluster not ready after {:?} (timeout {timeout:?}): {:?}\n{}",
                timed_out.elapsed,
                timed_out.last,
                logs.join("\n")
            );
        }
        started.elapsed()
    }

    /// A `Delivery` client of node `index`.
    pub async fn delivery(&self, index: usize) -> DeliveryClient<Channel> {
        DeliveryClient::new(channel(&self.node_addrs[index]).await)
    }

    /// A `Recipients` client of node `index`.
    pub async fn recipients(&self, index: usize) -> RecipientsClient<Channel> {
        RecipientsClient::new(channel(&self.node_addrs[index]).await)
    }
}

/// The id of control replica `index`: `control-a`, `control-b`, …
pub fn control_id(index: usize) -> String {
    format!("control-{}", (b'a' + (index % 26) as u8) as char)
}

/// A certificate for `role` `name`, signed by `authority`, written into `dir`.
fn issue(
    authority: &herald_tls::Authority,
    dir: &Path,
    role: herald_tls::Role,
    name: &str,
) -> herald_tls::config::TlsFiles {
    let identity = herald_tls::Identity::new(role, name).expect("certificate name");
    let issued = authority
        .issue(&identity, &["127.0.0.1".into()], 2)
        .expect("issue a certificate");
    let files = herald_tls::Authority::write_issued(dir, &issued, true).expect("write it");
    herald_tls::config::TlsFiles {
        ca: dir.join("ca.pem"),
        cert: files.cert,
        key: files.key,
    }
}

/// The `[tls]` table of a config file.
fn tls_table(files: &herald_tls::config::TlsFiles) -> String {
    format!(
        "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        files.ca.display(),
        files.cert.display(),
        files.key.display()
    )
}

/// Ready: `nodes` members, all at the current epoch, serving every partition they own, and every
/// partition served.
fn is_ready(status: &ClusterStatusResponse, nodes: usize) -> bool {
    status.nodes.len() == nodes
        && status.nodes.iter().all(|n| n.applied_epoch == status.epoch)
        && status
            .nodes
            .iter()
            .map(|n| n.serving_partitions)
            .sum::<u32>()
            == status.partition_count
        && status
            .nodes
            .iter()
            .all(|n| n.serving_partitions == n.owned_partitions)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("temp dir"));
            let kept = dir.keep();
            eprintln!("test failed: process logs kept in {}", kept.display());
        }
    }
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One attempt to connect to a gRPC server at `address` (`host:port`).
pub async fn try_channel(address: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .ok()?
        .connect_timeout(CONNECT_ATTEMPT_TIMEOUT)
        .connect()
        .await
        .ok()
}

/// A channel to the gRPC server at `address`, waiting until it accepts connections.
///
/// # Panics
/// When it does not within 20 s.
pub async fn channel(address: &str) -> Channel {
    eventually(&format!("connect to {address}"), CONNECT_TIMEOUT, || {
        try_channel(address)
    })
    .await
}

/// `message` as a request authenticated with `key` (`authorization: Bearer <key>`).
pub fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("metadata"),
    );
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::write(path, b"").expect("write a stand-in binary");
    }

    #[test]
    fn herald_bin_prefers_the_env_then_cargo_then_the_sibling_of_deps() {
        let dir = tempfile::tempdir().expect("temp dir");
        let profile = dir.path().join("debug");
        let deps = profile.join("deps");
        std::fs::create_dir_all(&deps).expect("mkdir");
        let exe = deps.join("api-0123456789abcdef");
        let sibling = profile.join(format!("herald{}", std::env::consts::EXE_SUFFIX));
        let from_env = dir.path().join("herald-env");
        let from_cargo = dir.path().join("herald-cargo");

        // Nothing there yet: a clear error naming where it looked.
        let error = locate_herald(None, None, &exe).expect_err("no binary");
        assert!(error.contains(&sibling.display().to_string()), "{error}");
        assert!(error.contains(HERALD_BIN_ENV), "{error}");

        touch(&sibling);
        assert_eq!(locate_herald(None, None, &exe), Ok(sibling.clone()));
        // A Cargo path that does not exist falls through to the sibling.
        assert_eq!(
            locate_herald(None, Some(from_cargo.clone().into()), &exe),
            Ok(sibling.clone())
        );
        touch(&from_cargo);
        assert_eq!(
            locate_herald(None, Some(from_cargo.clone().into()), &exe),
            Ok(from_cargo.clone())
        );
        // HERALD_BIN wins, and must exist: a wrong one is an error, not a silent fallback.
        let error = locate_herald(
            Some(from_env.clone().into()),
            Some(from_cargo.clone().into()),
            &exe,
        )
        .expect_err("HERALD_BIN names nothing");
        assert!(error.contains("is not a file"), "{error}");
        touch(&from_env);
        assert_eq!(
            locate_herald(Some(from_env.clone().into()), Some(from_cargo.into()), &exe),
            Ok(from_env)
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
