//! # in_process: a whole one-node cluster inside the test, on the embedded store and a manual
//! clock
//!
//! Owns [`InProcess`]: a control plane and one node of this process, on loopback ports, on the
//! embedded store, with every decision on calendar time (step timeouts, quiet hours, cap
//! windows, event times) reading a [`ManualClock`] the test advances. Time-dependent rules are
//! tested by moving the clock, not by sleeping; leases, heartbeats and gRPC keep real time.
//!
//! Must never share anything between two instances (each has its own store, ports and clock).

use std::sync::Arc;
use std::time::Duration;

use herald_control::{ControlConfig, ControlHandle, ControlPlane};
use herald_node::config::{NodeConfig, TenantConfig};
use herald_node::server::{Node, NodeHandle};
use herald_proto::clock::{Clock, ManualClock};
use herald_proto::v1::campaigns_client::CampaignsClient;
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::engagement_client::EngagementClient;
use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_store::Store;
use herald_store::embedded::EmbeddedStore;
use tonic::transport::Channel;

use crate::cluster::{API_KEY, TENANT, channel};
use crate::eventually::eventually;

/// Where the manual clock starts: 2026-01-05T12:00:00Z, a Monday noon in UTC.
pub const START_UNIX_MS: i64 = 1_767_614_400_000;

/// How long a start may take before the test fails (the node must own every partition).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A control plane and one node in this process.
pub struct InProcess {
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    pub node: NodeHandle,
    control: ControlHandle,
}

impl InProcess {
    /// Starts the cluster; `configure` adjusts the node's config (the test tenant `acme` with
    /// key [`API_KEY`] is there, quiet hours and caps at their defaults; the sandbox answers at
    /// once).
    pub async fn start(configure: impl FnOnce(&mut NodeConfig)) -> InProcess {
        let clock = ManualClock::new(START_UNIX_MS);
        let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(None).expect("embedded store"));
        let control = ControlPlane::start(
            ControlConfig {
                listen_addr: "127.0.0.1:0".parse().expect("address"),
                control_id: "control-in-process".into(),
                // One process: the internal plane never leaves it (the multi-process clusters
                // of `cluster` run mTLS).
                tls: herald_tls::ClusterTls::off(),
                ..ControlConfig::default()
            },
            store.clone(),
        )
        .await
        .expect("control plane starts");
        let mut config = NodeConfig {
            node_id: Some("node-0".into()),
            listen_addr: "127.0.0.1:0".parse().expect("address"),
            internal_listen_addr: "127.0.0.1:0".parse().expect("address"),
            tls: herald_tls::ClusterTls::off(),
            control_addrs: vec![control.local_addr().to_string()],
            tenants: vec![TenantConfig::new(TENANT, vec![API_KEY.into()])],
            ..NodeConfig::default()
        };
        config.sandbox.latency_ms = 0;
        configure(&mut config);
        let node = Node::start_with_clock(config, store.clone(), clock.shared())
            .await
            .expect("node starts");
        let cluster = InProcess {
            clock,
            store,
            node,
            control,
        };
        let ownership = cluster.node.ownership().clone();
        eventually("the node serves every partition", READY_TIMEOUT, || {
            let ownership = ownership.clone();
            async move {
                let count = ownership.partition_count();
                (count > 0 && ownership.serving_count() == count).then_some(())
            }
        })
        .await;
        cluster
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }

    pub fn now_unix_ms(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    fn address(&self) -> String {
        self.node.local_addr.to_string()
    }

    pub async fn delivery(&self) -> DeliveryClient<Channel> {
        DeliveryClient::new(channel(&self.address()).await)
    }

    pub async fn recipients(&self) -> RecipientsClient<Channel> {
        RecipientsClient::new(channel(&self.address()).await)
    }

    pub async fn engagement(&self) -> EngagementClient<Channel> {
        EngagementClient::new(channel(&self.address()).await)
    }

    pub async fn campaigns(&self) -> CampaignsClient<Channel> {
        crate::campaigns::client(channel(&self.address()).await)
    }

    pub async fn journeys(&self) -> JourneysClient<Channel> {
        JourneysClient::new(channel(&self.address()).await)
    }

    /// Adds credits to the test tenant's balance (as an operator's top-up would; in process,
    /// straight through the store: the in-process control plane runs without TLS, where the
    /// operator calls are refused).
    pub async fn top_up(&self, micros: u64) {
        herald_control::campaigns::credits::top_up(
            &*self.store,
            &herald_proto::TenantId(TENANT.into()),
            micros,
            "test",
            self.now_unix_ms(),
        )
        .await
        .expect("top up");
    }

    /// Stops the node and the control plane.
    pub async fn shutdown(self) {
        self.node.shutdown().await;
        let _ = self.control.shutdown().await;
    }
}
