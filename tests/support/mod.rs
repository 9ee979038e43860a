//! Test harness for black-box cluster tests: a real `redis-server`, a real `herald control` and
//! real `herald node` processes on loopback, each with its own log file. Waits are bounded and
//! poll API state, never bare sleeps.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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

pub const TENANT: &str = "acme";
pub const API_KEY: &str = "test-key-acme";
pub const OTHER_API_KEY: &str = "test-key-globex";

pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

pub struct Process {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Process {
    fn spawn(name: &str, args: &[&str], config: &Path, dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).expect("create log file");
        let child = Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(args)
            .arg("--config")
            .arg(config)
            .env("HERALD_LOG", "info,herald_node=info")
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn herald");
        Process {
            name: name.to_string(),
            child: Some(child),
            log,
        }
    }

    /// kill -9.
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

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone, Default)]
pub struct NodeSpec {
    pub sandbox_latency_ms: u64,
    /// More top-level config keys (TOML lines), e.g. `default_step_timeout_ms = 2000`.
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
}

pub struct Cluster {
    pub redis: RedisServer,
    pub dir: tempfile::TempDir,
    pub control: Process,
    pub control_addr: String,
    pub nodes: Vec<Process>,
    pub node_addrs: Vec<String>,
    /// Per node, its HTTP listener address (empty when the spec has none).
    pub http_addrs: Vec<String>,
    pub partition_count: u32,
}

impl Cluster {
    pub async fn start(nodes: usize, spec: NodeSpec) -> Cluster {
        let redis = RedisServer::start();
        let dir = tempfile::tempdir().expect("temp dir");
        let control_port = free_port();
        let control_addr = format!("127.0.0.1:{control_port}");
        let control_config = dir.path().join("control.toml");
        std::fs::write(
            &control_config,
            format!(
                "control_id = \"control-a\"\nlisten_addr = \"{control_addr}\"\nredis_url = \"{}\"\n",
                redis.url()
            ),
        )
        .expect("write control config");
        let control = Process::spawn("control", &["control"], &control_config, dir.path());
        let mut cluster = Cluster {
            redis,
            dir,
            control,
            control_addr,
            nodes: Vec::new(),
            node_addrs: Vec::new(),
            http_addrs: Vec::new(),
            partition_count: 4096,
        };
        for index in 0..nodes {
            cluster.add_node(index, &spec);
        }
        cluster.wait_ready(nodes, Duration::from_secs(30)).await;
        cluster
    }

    fn add_node(&mut self, index: usize, spec: &NodeSpec) {
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let config = self.dir.path().join(format!("node-{index}.toml"));
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
control_addrs = ["{control}"]
{http_line}
{top}

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
                control = self.control_addr,
                redis = self.redis.url(),
                latency = spec.sandbox_latency_ms,
                top = spec.top.replace("{http}", &http),
                tenant = spec.tenant,
                sandbox = spec.sandbox,
                tables = spec.tables.replace("{http}", &http),
            ),
        )
        .expect("write node config");
        let process = Process::spawn(
            &format!("node-{index}"),
            &["node"],
            &config,
            self.dir.path(),
        );
        self.nodes.push(process);
        self.node_addrs.push(addr);
        self.http_addrs.push(http);
    }

    pub async fn control_client(&self) -> ControlClient<Channel> {
        ControlClient::new(channel(&self.control_addr).await)
    }

    pub async fn status(&self) -> Option<ClusterStatusResponse> {
        let mut client = ControlClient::new(try_channel(&self.control_addr).await?);
        client
            .cluster_status(ClusterStatusRequest {})
            .await
            .ok()
            .map(|r| r.into_inner())
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

    /// Waits until `nodes` nodes are members and every partition is served at the current epoch.
    pub async fn wait_ready(&self, nodes: usize, timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            if let Some(status) = self.status().await
                && status.nodes.len() == nodes
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
            {
                return started.elapsed();
            }
            if started.elapsed() > timeout {
                let logs: Vec<String> = std::iter::once(&self.control)
                    .chain(self.nodes.iter())
                    .map(|p| format!("--- {} ---\n{}", p.name, tail(&p.log_text(), 30)))
                    .collect();
                panic!(
                    "cluster not ready after {timeout:?}: {:?}\n{}",
                    self.status().await,
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn delivery(&self, index: usize) -> DeliveryClient<Channel> {
        DeliveryClient::new(channel(&self.node_addrs[index]).await)
    }

    pub async fn recipients(&self, index: usize) -> RecipientsClient<Channel> {
        RecipientsClient::new(channel(&self.node_addrs[index]).await)
    }
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

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub async fn try_channel(address: &str) -> Option<Channel> {
    tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .ok()?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .ok()
}

pub async fn channel(address: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(channel) = try_channel(address).await {
            return channel;
        }
        assert!(Instant::now() < deadline, "cannot connect to {address}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn authed<T>(message: T, key: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {key}").parse().expect("metadata"),
    );
    request
}
