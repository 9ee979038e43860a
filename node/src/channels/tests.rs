//! In-process tests of the component: a ChannelActor behind a local handle (paused time), and
//! the remote path over real gRPC on loopback (two nodes in one process, each with its own
//! `Peers`, serving the `Forward.Channels` RPC on port 0).

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::Stream;
use futures::future::BoxFuture;
use herald_proto::clock::{Clock as _, SharedClock, SystemClock};
use herald_proto::v1::forward_server::{Forward, ForwardServer};
use herald_proto::v1::{
    ChannelCall, ChannelCallBatch, ChannelReplyBatch, Event, ForwardBatch, ForwardReply, NodeInfo,
    PartitionTable, SlotRequest, WatchLocalRequest, channel_call, channel_reply,
};
use herald_proto::{Epoch, NodeId, PartitionId};
use herald_store::Store;
use herald_store::embedded::EmbeddedStore;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status, Streaming};

use super::*;
use crate::ownership::{LeaseTimings, Ownership, PartitionLifecycle};
use crate::peers::Peers;

const PARTITIONS: u32 = 16;

struct NoLifecycle;

impl PartitionLifecycle for NoLifecycle {
    fn acquired(&self, _partitions: Vec<(PartitionId, Epoch)>) {}
    fn lost(&self, _partitions: Vec<PartitionId>) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }
}

/// A node's ownership with the leases of `owners` (indexes into `nodes`) taken.
async fn owning(
    node: usize,
    nodes: &[NodeInfo],
    owners: &[u32],
    store: Arc<dyn Store>,
    shutdown: watch::Receiver<bool>,
) -> Arc<Ownership> {
    let ownership = Ownership::new(NodeId(nodes[node].node_id.clone()));
    let timings = LeaseTimings {
        ttl: Duration::from_secs(5),
        renew_interval: Duration::from_secs(1),
        acquire_retry: Duration::from_millis(20),
    };
    tokio::spawn(
        ownership
            .clone()
            .run_leases(store, Arc::new(NoLifecycle), timings, shutdown),
    );
    // The lease loop acts on table changes: install newer tables until it has seen one.
    let mine = owners.iter().filter(|o| **o as usize == node).count() as u32;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut epoch = 1;
    while ownership.serving_count() < mine {
        assert!(Instant::now() < deadline, "leases not taken");
        ownership.install_table(PartitionTable {
            epoch,
            partition_count: PARTITIONS,
            nodes: nodes.to_vec(),
            owners: owners.to_vec(),
        });
        epoch += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ownership
}

fn config() -> ChannelsConfig {
    ChannelsConfig {
        rate_limits: BTreeMap::from([("sms".to_owned(), 10.0)]),
        rate_limit_margin: 0.0,
        channel_rules: BTreeMap::from([(
            "sms".to_owned(),
            ChannelRules {
                unique_recipients_per_day: 1,
                ..Default::default()
            },
        )]),
        failover: FailoverConfig {
            breaker_failures: 1,
            ..Default::default()
        },
        owner_wait: Duration::from_secs(2),
        ..Default::default()
    }
}

async fn build(
    ownership: Arc<Ownership>,
    peers: Peers,
    clock: SharedClock,
    shutdown: watch::Receiver<bool>,
) -> Channels {
    config()
        .build(ChannelsContext {
            node_id: ownership.node_id().clone(),
            ownership,
            peers,
            clock,
            shutdown,
        })
        .await
        .expect("channels built")
}

#[tokio::test(start_paused = true)]
async fn a_local_actor_grants_slots_admits_and_restarts_a_horizon_later() {
    let (_stop, shutdown) = watch::channel(false);
    let nodes = vec![NodeInfo {
        node_id: "n1".into(),
        address: "127.0.0.1:1".into(),
        weight: 1,
        ..Default::default()
    }];
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(None).expect("store"));
    let ownership = owning(
        0,
        &nodes,
        &[0; PARTITIONS as usize],
        store,
        shutdown.clone(),
    )
    .await;
    let channels = build(ownership, Peers::default(), SystemClock::shared(), shutdown).await;
    assert!(channels.hosted_keys().is_empty(), "actors spawn on demand");

    // A new owner's first slot is one horizon away; the next ones 100 ms apart.
    let started = Instant::now();
    channels.acquire_for("sms", "acme").await.expect("slot");
    assert_eq!(started.elapsed(), HORIZON);
    channels.acquire_for("sms", "acme").await.expect("slot");
    assert_eq!(started.elapsed(), HORIZON + Duration::from_millis(100));
    assert_eq!(channels.hosted_keys(), vec!["sms".to_owned()]);
    assert_eq!(channels.stats().slots_used.load(Ordering::Relaxed), 2);
    assert_eq!(channels.stats().remote_calls.load(Ordering::Relaxed), 0);
    // Not limited: at once, without an actor.
    let before = Instant::now();
    channels.acquire_for("push", "acme").await.expect("slot");
    assert_eq!(before.elapsed(), Duration::ZERO);

    // The tier (1 recipient a day) lives in the same actor.
    let first = channels
        .admit_tier("sms", "acme", "r1")
        .await
        .expect("tier");
    let again = channels
        .admit_tier("sms", "acme", "r1")
        .await
        .expect("tier");
    let second = channels
        .admit_tier("sms", "acme", "r2")
        .await
        .expect("tier");
    assert!(!first.refused && !again.refused);
    assert_eq!(
        second,
        Admission {
            refused: true,
            limit: 1,
            count: 1
        }
    );

    // The partition is lost: the actor stops; the next owner (here again) starts a horizon
    // after its start, whatever the previous one granted.
    let all: HashSet<PartitionId> = (0..PARTITIONS).map(PartitionId).collect();
    channels.stop_partitions(&all).await;
    assert!(channels.hosted_keys().is_empty());
    let restarted = Instant::now();
    channels.acquire_for("sms", "acme").await.expect("slot");
    assert_eq!(restarted.elapsed(), HORIZON);
    // The tier counts restarted with it (documented: in-memory state).
    let after = channels
        .admit_tier("sms", "acme", "r2")
        .await
        .expect("tier");
    assert!(!after.refused);
}

#[tokio::test(start_paused = true)]
async fn senders_wait_in_line_and_lease_only_what_they_wait_for() {
    let (_stop, shutdown) = watch::channel(false);
    let nodes = vec![NodeInfo {
        node_id: "n1".into(),
        address: "127.0.0.1:1".into(),
        weight: 1,
        ..Default::default()
    }];
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(None).expect("store"));
    let ownership = owning(
        0,
        &nodes,
        &[0; PARTITIONS as usize],
        store,
        shutdown.clone(),
    )
    .await;
    let mut config = config();
    config.rate_limits = BTreeMap::from([("sms".to_owned(), 100.0)]);
    let channels = config
        .build(ChannelsContext {
            node_id: ownership.node_id().clone(),
            ownership,
            peers: Peers::default(),
            clock: SystemClock::shared(),
            shutdown,
        })
        .await
        .expect("built");
    let started = Instant::now();
    let senders = (0..12).map(|_| {
        let channels = channels.clone();
        async move {
            channels.acquire_for("sms", "acme").await.expect("slot");
            started.elapsed()
        }
    });
    let mut times = futures::future::join_all(senders).await;
    times.sort();
    // One slot each, 10 ms apart from the horizon on: none lost, none bunched.
    let expected: Vec<Duration> = (0..12)
        .map(|i| HORIZON + Duration::from_millis(10 * i))
        .collect();
    assert_eq!(times, expected);
    assert_eq!(channels.stats().slots_granted.load(Ordering::Relaxed), 12);
    assert_eq!(channels.stats().slots_dropped.load(Ordering::Relaxed), 0);
}

#[tokio::test(start_paused = true)]
async fn breaker_counts_reach_the_actor_and_the_pause_comes_back_cached() {
    let (_stop, shutdown) = watch::channel(false);
    let nodes = vec![NodeInfo {
        node_id: "n1".into(),
        address: "127.0.0.1:1".into(),
        weight: 1,
        ..Default::default()
    }];
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(None).expect("store"));
    let ownership = owning(
        0,
        &nodes,
        &[0; PARTITIONS as usize],
        store,
        shutdown.clone(),
    )
    .await;
    let channels = build(ownership, Peers::default(), SystemClock::shared(), shutdown).await;
    let key = campaign_key("acme", "spring");
    // SMS defaults: pause at 2 % opt-outs from 200 deliveries.
    for _ in 0..200 {
        channels.observe(
            &key,
            herald_proto::v1::Channel::Sms,
            crate::policy::block_rate::Signal::Delivered,
        );
    }
    for _ in 0..5 {
        channels.observe(
            &key,
            herald_proto::v1::Channel::Sms,
            crate::policy::block_rate::Signal::OptOut,
        );
    }
    assert!(channels.paused(&key).is_none(), "nothing reported yet");
    tokio::time::sleep(REPORT_INTERVAL * 2).await;
    let paused = channels.paused(&key).expect("paused, from the cache");
    assert!((paused.ratio - 0.025).abs() < 1e-9, "{paused:?}");
    assert_eq!(channels.stats().pauses.load(Ordering::Relaxed), 1);
    assert_eq!(channels.hosted_keys(), vec![key.clone()]);
    let resumed = channels.breaker(&key, true).await.expect("resume");
    assert!(!resumed.paused);
    assert!(channels.paused(&key).is_none(), "the resume is cached too");
}

/// The test double of a node's Forward service: only the Channels RPC.
struct ChannelsOnly(Channels);

#[tonic::async_trait]
impl Forward for ChannelsOnly {
    type ForwardStream = Pin<Box<dyn Stream<Item = Result<ForwardReply, Status>> + Send>>;
    type WatchLocalStream = Pin<Box<dyn Stream<Item = Result<Event, Status>> + Send>>;
    type ChannelsStream = Pin<Box<dyn Stream<Item = Result<ChannelReplyBatch, Status>> + Send>>;

    async fn forward(
        &self,
        _request: Request<Streaming<ForwardBatch>>,
    ) -> Result<Response<Self::ForwardStream>, Status> {
        Err(Status::unimplemented("test double"))
    }

    async fn watch_local(
        &self,
        _request: Request<WatchLocalRequest>,
    ) -> Result<Response<Self::WatchLocalStream>, Status> {
        Err(Status::unimplemented("test double"))
    }

    async fn channels(
        &self,
        request: Request<Streaming<ChannelCallBatch>>,
    ) -> Result<Response<Self::ChannelsStream>, Status> {
        use tokio_stream::StreamExt;
        let channels = self.0.clone();
        let replies = request.into_inner().then(move |batch| {
            let channels = channels.clone();
            async move {
                match batch {
                    Ok(batch) => Ok(channels.serve(batch).await),
                    Err(status) => Err(status),
                }
            }
        });
        Ok(Response::new(Box::pin(replies)))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_calls_reach_the_owner_over_grpc() {
    let (_stop, shutdown) = watch::channel(false);
    let listeners = [
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
        tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind"),
    ];
    let addrs: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("addr"))
        .collect();
    let nodes: Vec<NodeInfo> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| NodeInfo {
            node_id: format!("n{i}"),
            address: addr.to_string(),
            weight: 1,
            ..Default::default()
        })
        .collect();
    // Node 1 owns the accounts' actors ("sms", "sandbox"); node 0 everything else.
    let mut owners = vec![0u32; PARTITIONS as usize];
    for key in ["sms", "sandbox"] {
        owners[partition(key, PARTITIONS).index()] = 1;
    }
    let foreign = (0..PARTITIONS)
        .map(|i| format!("campaign:acme:{i}"))
        .find(|key| owners[partition(key, PARTITIONS).index()] == 0)
        .expect("a key of node 0");
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(None).expect("store"));
    let mut nodes_channels = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let ownership = owning(index, &nodes, &owners, store.clone(), shutdown.clone()).await;
        let channels = build(
            ownership,
            Peers::default(),
            SystemClock::shared(),
            shutdown.clone(),
        )
        .await;
        let incoming = tonic::transport::server::TcpIncoming::from(listener);
        let service = ForwardServer::new(ChannelsOnly(channels.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        nodes_channels.push(channels);
    }
    let (a, b) = (&nodes_channels[0], &nodes_channels[1]);

    // Slots of an account owned by node 1, asked on node 0: its actor runs on node 1 only.
    let started = Instant::now();
    a.acquire_for("sms", "acme").await.expect("remote slot");
    a.acquire_for("sms", "acme").await.expect("remote slot");
    assert!(started.elapsed() >= HORIZON, "{:?}", started.elapsed());
    assert_eq!(b.hosted_keys(), vec!["sms".to_owned()]);
    assert!(a.hosted_keys().is_empty());
    assert!(a.stats().remote_calls.load(Ordering::Relaxed) >= 1);
    // (More than two granted when a busy test machine woke a sender too late for its slot.)
    assert!(b.stats().slots_granted.load(Ordering::Relaxed) >= 2);
    assert_eq!(a.stats().slots_used.load(Ordering::Relaxed), 2);

    // The tier is counted once, for both nodes.
    assert!(
        !a.admit_tier("sms", "acme", "r1")
            .await
            .expect("tier")
            .refused
    );
    assert!(
        b.admit_tier("sms", "acme", "r2")
            .await
            .expect("tier")
            .refused
    );

    // A node asked about a key it does not own answers wrong_owner with its epoch.
    let replies = Peers::default()
        .channel_calls(
            &addrs[1].to_string(),
            Epoch(1),
            vec![ChannelCall {
                key: foreign,
                op: Some(channel_call::Op::Slots(SlotRequest { count: 1 })),
            }],
        )
        .await
        .expect("reply");
    match replies.into_iter().next().and_then(|r| r.result) {
        Some(channel_reply::Result::Error(error)) => {
            assert!(error.message.starts_with("wrong_owner"), "{error:?}");
            assert!(error.epoch >= 1, "{error:?}");
        }
        other => panic!("expected wrong_owner, got {other:?}"),
    }

    // A circuit node 0 opened is skipped by node 1 within a report interval or two.
    let b_sandbox = b.account(SANDBOX_ACCOUNT).expect("sandbox");
    let now = SystemClock.now_unix_ms();
    assert!(b_sandbox.allow(now), "closed on node 1");
    let a_sandbox = a.account(SANDBOX_ACCOUNT).expect("sandbox");
    assert!(a_sandbox.allow(now));
    a_sandbox.record(false, now);
    assert_eq!(
        a.circuit_state(a_sandbox),
        CircuitState::Open,
        "open at once"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while b.circuit_state(b_sandbox) != CircuitState::Open {
        assert!(Instant::now() < deadline, "node 1 never saw the opening");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!b_sandbox.allow(SystemClock.now_unix_ms()));
}
