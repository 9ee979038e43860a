//! Control plane over real gRPC on loopback, against a real Redis (and the embedded store).
//!
//! Every wait is a poll with a deadline; timings use short test settings (heartbeat 100 ms,
//! failure timeout 600 ms, leader lease 600 ms renewed every 200 ms). Measured times are
//! printed (`cargo test -- --nocapture`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_control::{ControlConfig, ControlHandle, ControlPlane};
use herald_proto::v1::control_client::ControlClient;
use herald_proto::v1::{
    ClusterStatusRequest, HeartbeatRequest, JoinRequest, LeaveRequest, NodeInfo, PartitionTable,
    Recipient, WatchTableRequest,
};
use herald_proto::{Epoch, MessageId, NodeId, PartitionId, TenantId};
use herald_store::embedded::EmbeddedStore;
use herald_store::redis::{RedisOptions, RedisStore};
use herald_store::testsuite::RedisServer;
use herald_store::{self as store, FencedOp, MessageRecord, Store, WriteOutcome};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status, Streaming};

const PARTITIONS: u32 = 1024;
const HEARTBEAT: Duration = Duration::from_millis(100);
const FAILURE_TIMEOUT: Duration = Duration::from_millis(600);
const LEASE_TTL: Duration = Duration::from_millis(600);
const LEASE_RENEW: Duration = Duration::from_millis(200);
/// Upper bound for anything that should happen "soon" (startup, a join's table).
const SOON: Duration = Duration::from_secs(5);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "herald_control=info".into()),
        )
        .try_init();
}

fn config(control_id: &str) -> ControlConfig {
    ControlConfig {
        control_id: control_id.to_owned(),
        listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        partition_count: PARTITIONS,
        heartbeat_interval_ms: HEARTBEAT.as_millis() as u64,
        failure_timeout_ms: FAILURE_TIMEOUT.as_millis() as u64,
        leader_lease_ttl_ms: LEASE_TTL.as_millis() as u64,
        leader_renew_interval_ms: LEASE_RENEW.as_millis() as u64,
        // Plaintext: these tests are about membership; `mtls_*` below is about the TLS.
        tls: herald_tls::ClusterTls::off(),
        ..ControlConfig::default()
    }
}

async fn redis_store(server: &RedisServer) -> Arc<dyn Store> {
    Arc::new(
        RedisStore::connect(&server.url(), RedisOptions::default())
            .await
            .expect("connect to test redis"),
    )
}

fn embedded_store() -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::open(None).expect("open embedded store"))
}

fn client(addr: SocketAddr) -> ControlClient<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("valid uri")
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(3))
        .connect_lazy();
    ControlClient::new(channel)
}

fn node(id: &str, port: u16) -> NodeInfo {
    NodeInfo {
        node_id: id.to_owned(),
        address: format!("127.0.0.1:{port}"),
        weight: 1,
        ..Default::default()
    }
}

/// Polls `probe` until it returns `Some`, or panics naming `what` after `timeout`.
async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_leader(handle: &ControlHandle) {
    wait_for("leadership", SOON, || async {
        handle.is_leader().then_some(())
    })
    .await;
}

async fn join(client: &mut ControlClient<Channel>, info: NodeInfo) -> PartitionTable {
    let response = client
        .join(JoinRequest { node: Some(info) })
        .await
        .expect("join")
        .into_inner();
    assert_eq!(response.heartbeat_interval_ms, HEARTBEAT.as_millis() as u32);
    response.table.expect("join returns the table")
}

async fn next_table(stream: &mut Streaming<PartitionTable>) -> Result<PartitionTable, Status> {
    match tokio::time::timeout(SOON, stream.message()).await {
        Ok(Ok(Some(table))) => Ok(table),
        Ok(Ok(None)) => Err(Status::cancelled("stream ended without status")),
        Ok(Err(status)) => Err(status),
        Err(_) => panic!("no table within {SOON:?}"),
    }
}

/// Partition → owner id.
fn owners(table: &PartitionTable) -> Vec<String> {
    table
        .owners
        .iter()
        .map(|&i| table.nodes[i as usize].node_id.clone())
        .collect()
}

fn counts(table: &PartitionTable) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for owner in owners(table) {
        *counts.entry(owner).or_insert(0) += 1;
    }
    counts
}

fn assert_covers(table: &PartitionTable, members: &[&str]) {
    assert_eq!(table.partition_count, PARTITIONS);
    assert_eq!(
        table.owners.len(),
        PARTITIONS as usize,
        "one owner per partition"
    );
    let mut ids: Vec<&str> = table.nodes.iter().map(|n| n.node_id.as_str()).collect();
    ids.sort_unstable();
    assert_eq!(ids, members);
    let counts = counts(table);
    assert_eq!(
        counts.len(),
        members.len(),
        "every member owns partitions: {counts:?}"
    );
    let fair = PARTITIONS as usize / members.len();
    for (node, &count) in &counts {
        assert!(
            count.abs_diff(fair) <= fair / 20 + 1,
            "{node} owns {count} (fair {fair})"
        );
    }
}

fn assert_not_leader(status: &Status, leader: Option<&str>) {
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    match leader {
        Some(id) => assert_eq!(status.message(), format!("not_leader{{leader={id}}}")),
        None => assert!(
            status.message().starts_with("not_leader{leader="),
            "{status:?}"
        ),
    }
}

/// A node's heartbeat loop, as the node client runs it: tries its control addresses in
/// order, moves on when one answers UNAVAILABLE, rejoins when the leader does not know it.
struct Heartbeater {
    task: JoinHandle<()>,
}

impl Heartbeater {
    fn start(info: NodeInfo, controls: Vec<SocketAddr>) -> Self {
        let task = tokio::spawn(async move {
            let mut clients: Vec<_> = controls.into_iter().map(client).collect();
            let mut current = 0;
            let mut epoch = 0;
            loop {
                let c = &mut clients[current];
                let request = HeartbeatRequest {
                    node_id: info.node_id.clone(),
                    epoch,
                    serving_partitions: 7,
                    campaigns: Vec::new(),
                };
                match c.heartbeat(request).await {
                    Ok(reply) => {
                        let reply = reply.into_inner();
                        epoch = reply.epoch;
                        if !reply.known
                            && let Ok(joined) = c
                                .join(JoinRequest {
                                    node: Some(info.clone()),
                                })
                                .await
                            && let Some(table) = joined.into_inner().table
                        {
                            epoch = table.epoch;
                        }
                    }
                    Err(_) => current = (current + 1) % clients.len(),
                }
                tokio::time::sleep(HEARTBEAT).await;
            }
        });
        Self { task }
    }
}

impl Drop for Heartbeater {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_join_and_cover_every_partition() {
    init_tracing();
    for (backend, store, _redis) in backends().await {
        let control = ControlPlane::start(config("c1"), store)
            .await
            .expect("start control");
        wait_leader(&control).await;
        let mut c = client(control.local_addr());

        // An empty cluster: no nodes, no owners.
        let status = c
            .cluster_status(ClusterStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(status.leader_id, "c1");
        assert_eq!(status.partition_count, PARTITIONS);
        assert!(status.nodes.is_empty());
        assert!(control.current_table().owners.is_empty());
        assert_health(control.local_addr(), true).await;
        assert_reflection(control.local_addr()).await;

        let mut epochs = vec![control.current_table().epoch];
        for (i, id) in ["n1", "n2", "n3"].into_iter().enumerate() {
            let table = join(&mut c, node(id, 9001 + i as u16)).await;
            epochs.push(table.epoch);
        }
        assert!(
            epochs.windows(2).all(|w| w[1] > w[0]),
            "{backend}: epochs strictly increase: {epochs:?}"
        );
        let table = control.current_table();
        assert_eq!(table.epoch, *epochs.last().expect("epochs"));
        assert_covers(&table, &["n1", "n2", "n3"]);

        // Rejoining unchanged is free; a new address is a new epoch with the same owners.
        let same = join(&mut c, node("n2", 9002)).await;
        assert_eq!(
            same.epoch, table.epoch,
            "{backend}: unchanged rejoin keeps the epoch"
        );
        let moved = join(&mut c, node("n2", 9999)).await;
        assert_eq!(moved.epoch, table.epoch + 1);
        assert_eq!(
            owners(&moved),
            owners(&table),
            "an address change moves nothing"
        );
        assert!(moved.nodes.iter().any(|n| n.address == "127.0.0.1:9999"));

        // Heartbeats: known members are recorded, strangers told to join.
        let beat = c
            .heartbeat(HeartbeatRequest {
                node_id: "n1".into(),
                epoch: moved.epoch,
                serving_partitions: 42,
                campaigns: Vec::new(),
            })
            .await
            .expect("heartbeat")
            .into_inner();
        assert!(beat.known);
        assert_eq!(beat.epoch, moved.epoch);
        let stranger = c
            .heartbeat(HeartbeatRequest {
                node_id: "ghost".into(),
                epoch: 0,
                serving_partitions: 0,
                campaigns: Vec::new(),
            })
            .await
            .expect("heartbeat")
            .into_inner();
        assert!(!stranger.known);

        let status = c
            .cluster_status(ClusterStatusRequest {})
            .await
            .expect("status")
            .into_inner();
        assert_eq!(status.epoch, moved.epoch);
        assert_eq!(status.nodes.len(), 3);
        let n1 = status
            .nodes
            .iter()
            .find(|s| s.node.as_ref().is_some_and(|n| n.node_id == "n1"))
            .expect("n1 in status");
        assert_eq!(n1.serving_partitions, 42);
        assert_eq!(n1.applied_epoch, moved.epoch);
        assert!(n1.last_heartbeat_ms_ago < 1_000);
        let owned: u32 = status.nodes.iter().map(|s| s.owned_partitions).sum();
        assert_eq!(owned, PARTITIONS);

        // Bad input names the field and changes nothing.
        let bad = c
            .join(JoinRequest {
                node: Some(NodeInfo {
                    node_id: "n4".into(),
                    address: "no-port".into(),
                    weight: 1,
                    ..Default::default()
                }),
            })
            .await
            .expect_err("bad address");
        assert_eq!(bad.code(), Code::InvalidArgument);
        assert!(bad.message().contains("node.address"), "{bad:?}");
        assert_eq!(control.current_table().epoch, moved.epoch);

        // Planned leave: n3's partitions go to the others, theirs stay.
        let before = control.current_table();
        let left = c
            .leave(LeaveRequest {
                node_id: "n3".into(),
            })
            .await
            .expect("leave")
            .into_inner();
        assert_eq!(left.epoch, before.epoch + 1);
        let after = control.current_table();
        assert_only_moved_from(&before, &after, "n3");

        control.shutdown().await.expect("clean shutdown");
        eprintln!("{backend}: epochs {epochs:?}, final {}", after.epoch);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_node_is_removed_and_only_its_partitions_move() {
    init_tracing();
    let redis = RedisServer::start();
    let control = ControlPlane::start(config("c1"), redis_store(&redis).await)
        .await
        .expect("start control");
    wait_leader(&control).await;
    let addr = control.local_addr();
    let mut c = client(addr);

    let mut watch = c
        .watch_table(WatchTableRequest {
            node_id: "n1".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    let first = next_table(&mut watch).await.expect("current table first");
    assert_eq!(first.epoch, 0);
    assert!(first.owners.is_empty() && first.nodes.is_empty());

    join(&mut c, node("n1", 9001)).await;
    join(&mut c, node("n2", 9002)).await;
    let _h1 = Heartbeater::start(node("n1", 9001), vec![addr]);
    let _h2 = Heartbeater::start(node("n2", 9002), vec![addr]);
    let with_n3 = join(&mut c, node("n3", 9003)).await;
    // n3 never heartbeats: the join is the last sign of life.
    let n3_last_seen = Instant::now();
    assert_covers(&with_n3, &["n1", "n2", "n3"]);

    // The watch delivers every newer epoch (intermediate ones may be skipped).
    let mut seen = first.epoch;
    while seen < with_n3.epoch {
        let table = next_table(&mut watch).await.expect("table");
        assert!(table.epoch > seen, "epochs only increase on the watch");
        seen = table.epoch;
    }

    let removed = next_table(&mut watch).await.expect("table without n3");
    let detected_in = n3_last_seen.elapsed();
    eprintln!(
        "dead node removed {detected_in:?} after its last sign of life \
         (failure timeout {FAILURE_TIMEOUT:?})"
    );
    assert_eq!(
        removed.epoch,
        with_n3.epoch + 1,
        "one new epoch for the removal"
    );
    assert!(
        detected_in <= FAILURE_TIMEOUT + Duration::from_secs(1),
        "removal took {detected_in:?}"
    );
    // n3's last sign of life was recorded by the server just before `n3_last_seen`.
    assert!(
        detected_in + Duration::from_millis(50) >= FAILURE_TIMEOUT,
        "removed before the timeout: {detected_in:?}"
    );
    assert_covers(&removed, &["n1", "n2"]);
    assert_only_moved_from(&with_n3, &removed, "n3");

    // The living stay; the dead one is told to join again.
    let status = c
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.nodes.len(), 2);
    let beat = c
        .heartbeat(HeartbeatRequest {
            node_id: "n3".into(),
            epoch: with_n3.epoch,
            serving_partitions: 0,
            campaigns: Vec::new(),
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(!beat.known);
    assert_eq!(
        control.current_table().epoch,
        removed.epoch,
        "no churn for the living"
    );

    control.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_one_leader_then_failover_continues_epochs() {
    init_tracing();
    let redis = RedisServer::start();
    let a = ControlPlane::start(config("ctl-a"), redis_store(&redis).await)
        .await
        .expect("start a");
    let b = ControlPlane::start(config("ctl-b"), redis_store(&redis).await)
        .await
        .expect("start b");
    let controls = vec![a.local_addr(), b.local_addr()];

    wait_for("exactly one leader", SOON, || async {
        (a.is_leader() != b.is_leader()).then_some(())
    })
    .await;
    let (leader, follower) = if a.is_leader() { (a, b) } else { (b, a) };
    let leader_id = leader.control_id().to_owned();
    // Stays exactly one for a few lease periods.
    let watch_until = Instant::now() + 3 * LEASE_TTL;
    while Instant::now() < watch_until {
        assert!(
            leader.is_leader() && !follower.is_leader(),
            "leadership must be stable and exclusive"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // The follower refuses membership calls and names the leader; status works on both.
    let mut fc = client(follower.local_addr());
    let refused = fc
        .join(JoinRequest {
            node: Some(node("n1", 9001)),
        })
        .await
        .expect_err("follower refuses joins");
    assert_not_leader(&refused, Some(&leader_id));
    let refused = fc
        .watch_table(WatchTableRequest {
            node_id: "n1".into(),
        })
        .await
        .expect_err("follower refuses watches");
    assert_not_leader(&refused, Some(&leader_id));
    assert_health(follower.local_addr(), false).await;
    assert_health(leader.local_addr(), true).await;

    let mut lc = client(leader.local_addr());
    join(&mut lc, node("n1", 9001)).await;
    let old_table = join(&mut lc, node("n2", 9002)).await;
    let _h1 = Heartbeater::start(node("n1", 9001), controls.clone());
    let _h2 = Heartbeater::start(node("n2", 9002), controls.clone());
    let status = fc
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("follower status")
        .into_inner();
    assert_eq!(status.leader_id, leader_id);
    assert_eq!(
        status.epoch, old_table.epoch,
        "follower reads the persisted table"
    );
    assert_eq!(status.nodes.len(), 2);
    assert_eq!(
        status.nodes.iter().map(|n| n.owned_partitions).sum::<u32>(),
        PARTITIONS
    );

    let mut watch = lc
        .watch_table(WatchTableRequest {
            node_id: "n1".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert_eq!(
        next_table(&mut watch).await.expect("current").epoch,
        old_table.epoch
    );

    // Kill the leader (gracefully; it does not release the lease).
    let stopped_at = Instant::now();
    leader.shutdown().await.expect("leader shutdown");
    let ended = next_table(&mut watch)
        .await
        .expect_err("the watch ends when leadership ends");
    assert_not_leader(&ended, None);

    wait_for(
        "the follower to take over",
        LEASE_TTL + LEASE_RENEW + Duration::from_secs(1),
        || async { follower.is_leader().then_some(()) },
    )
    .await;
    let failover = stopped_at.elapsed();
    eprintln!("failover took {failover:?} (lease ttl {LEASE_TTL:?}, renew {LEASE_RENEW:?})");

    // The new leader continues from the stored table: same epoch, same members, and the
    // members survive (fresh deadlines, heartbeats now reach the new leader).
    let taken = follower.current_table();
    assert_eq!(taken.epoch, old_table.epoch);
    assert_eq!(owners(&taken), owners(&old_table));
    let mut nc = client(follower.local_addr());
    let taken_epoch = taken.epoch;
    wait_for("both nodes heartbeating the new leader", SOON, || {
        let mut nc = nc.clone();
        async move {
            let status = nc
                .cluster_status(ClusterStatusRequest {})
                .await
                .ok()?
                .into_inner();
            (status.nodes.len() == 2
                && status
                    .nodes
                    .iter()
                    .all(|n| n.applied_epoch == taken_epoch && n.serving_partitions == 7))
            .then_some(())
        }
    })
    .await;
    assert_eq!(
        follower.current_table().epoch,
        taken.epoch,
        "nobody was declared dead"
    );
    assert_health(follower.local_addr(), true).await;

    let grown = join(&mut nc, node("n3", 9003)).await;
    assert_eq!(
        grown.epoch,
        old_table.epoch + 1,
        "epochs continue above the old leader's"
    );
    assert_covers(&grown, &["n1", "n2", "n3"]);

    follower.shutdown().await.expect("shutdown");
}

/// A leader cut off from the store stops serving before its lease can expire, and the other
/// replica takes over only after that.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_cut_from_the_store_steps_down_before_a_successor_leads() {
    init_tracing();
    let redis = RedisServer::start();
    let cut = Arc::new(AtomicBool::new(false));
    let flaky: Arc<dyn Store> = Arc::new(Flaky {
        inner: redis_store(&redis).await,
        cut: cut.clone(),
    });
    let a = ControlPlane::start(config("ctl-a"), flaky)
        .await
        .expect("start a");
    wait_leader(&a).await;
    let b = ControlPlane::start(config("ctl-b"), redis_store(&redis).await)
        .await
        .expect("start b");
    let mut ac = client(a.local_addr());
    join(&mut ac, node("n1", 9001)).await;
    let _h1 = Heartbeater::start(node("n1", 9001), vec![a.local_addr(), b.local_addr()]);
    let mut watch = ac
        .watch_table(WatchTableRequest {
            node_id: "n1".into(),
        })
        .await
        .expect("watch")
        .into_inner();
    next_table(&mut watch).await.expect("current table");

    cut.store(true, Ordering::SeqCst);
    let cut_at = Instant::now();
    let mut a_stopped = None;
    let deadline = cut_at + LEASE_TTL + LEASE_RENEW + Duration::from_secs(1);
    while !b.is_leader() {
        assert!(Instant::now() < deadline, "b did not take over in time");
        if a.is_leader() {
            assert!(!b.is_leader(), "two leaders at once");
        } else if a_stopped.is_none() {
            a_stopped = Some(cut_at.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let b_took = cut_at.elapsed();
    let a_stopped = a_stopped.expect("a stepped down before b led");
    eprintln!("store cut: a stepped down after {a_stopped:?}, b led after {b_took:?}");
    assert!(
        a_stopped <= LEASE_TTL,
        "a served past its lease: {a_stopped:?}"
    );
    let ended = next_table(&mut watch)
        .await
        .expect_err("watch ends with leadership");
    assert_not_leader(&ended, None);
    let refused = ac
        .heartbeat(HeartbeatRequest {
            node_id: "n1".into(),
            epoch: 1,
            serving_partitions: 0,
            campaigns: Vec::new(),
        })
        .await
        .expect_err("a no longer leads");
    assert_eq!(refused.code(), Code::Unavailable);

    // b continues from the stored table: n1 is still a member, the next epoch is above a's.
    let inherited = b.current_table();
    assert_eq!(inherited.epoch, 1);
    assert_eq!(inherited.nodes.len(), 1);
    let grown = join(&mut client(b.local_addr()), node("n2", 9002)).await;
    assert_eq!(grown.epoch, 2);
    assert_covers(&grown, &["n1", "n2"]);

    a.shutdown().await.expect("shutdown a");
    b.shutdown().await.expect("shutdown b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_rejects_bad_config_and_mismatched_partition_count() {
    init_tracing();
    let store = embedded_store();
    let bad = ControlConfig {
        failure_timeout_ms: 100,
        ..config("c1")
    };
    assert!(matches!(
        ControlPlane::start(bad, store.clone()).await,
        Err(herald_control::Error::Config {
            field: "failure_timeout_ms",
            ..
        })
    ));
    let control = ControlPlane::start(config("c1"), store.clone())
        .await
        .expect("start");
    wait_leader(&control).await;
    join(&mut client(control.local_addr()), node("n1", 9001)).await;
    control.shutdown().await.expect("shutdown");
    let other_p = ControlConfig {
        partition_count: PARTITIONS * 2,
        ..config("c2")
    };
    assert!(matches!(
        ControlPlane::start(other_p, store).await,
        Err(herald_control::Error::PartitionCountMismatch { .. })
    ));
}

/// The sorted service names reflection lists over one protocol version (`v1`, `v1alpha`), after
/// checking that each can be described (FileContainingSymbol).
macro_rules! reflection_services {
    ($version:ident, $addr:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let channel = Endpoint::from_shared(format!("http://{}", $addr))
            .expect("uri")
            .connect_lazy();
        let mut client = ServerReflectionClient::new(channel);
        let ask = |request: MessageRequest| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(request),
        };
        let mut replies = client
            .server_reflection_info(tokio_stream::once(ask(MessageRequest::ListServices(
                String::new(),
            ))))
            .await
            .expect("reflection")
            .into_inner();
        let reply = tokio::time::timeout(SOON, replies.message())
            .await
            .expect("reflection reply in time")
            .expect("reflection reply")
            .expect("one reply");
        let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
            panic!("unexpected reflection reply {reply:?}");
        };
        let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        names.sort();
        let asks: Vec<_> = names
            .iter()
            .map(|name| ask(MessageRequest::FileContainingSymbol(name.clone())))
            .collect();
        let mut replies = client
            .server_reflection_info(tokio_stream::iter(asks))
            .await
            .expect("reflection")
            .into_inner();
        for name in &names {
            let reply = tokio::time::timeout(SOON, replies.message())
                .await
                .expect("reflection reply in time")
                .expect("reflection reply")
                .expect("a reply");
            assert!(
                matches!(
                    reply.message_response,
                    Some(MessageResponse::FileDescriptorResponse(ref files))
                        if !files.file_descriptor_proto.is_empty()
                ),
                "{name} is listed but not described: {reply:?}"
            );
        }
        names
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_list_exactly_the_served_services() {
    init_tracing();
    let control = ControlPlane::start(config("c1"), embedded_store())
        .await
        .expect("start control");
    let expected: Vec<String> = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "herald.v1.Control",
    ]
    .map(String::from)
    .into();
    let v1 = reflection_services!(v1, control.local_addr());
    assert_eq!(
        v1, expected,
        "reflection v1 lists what the control plane serves"
    );
    let v1alpha = reflection_services!(v1alpha, control.local_addr());
    assert_eq!(
        v1alpha, expected,
        "reflection v1alpha lists what the control plane serves"
    );
    control.shutdown().await.expect("shutdown");
}

/// Partitions moved between `before` and `after` all belonged to `gone`.
fn assert_only_moved_from(before: &PartitionTable, after: &PartitionTable, gone: &str) {
    let before = owners(before);
    let after = owners(after);
    for (p, (b, a)) in before.iter().zip(&after).enumerate() {
        if b == gone {
            assert_ne!(a, gone, "partition {p} still on {gone}");
        } else {
            assert_eq!(b, a, "partition {p} moved from {b} to {a}");
        }
    }
}

/// Server reflection (v1) lists the Control service.
async fn assert_reflection(addr: SocketAddr) {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("reflection")
        .into_inner();
    let reply = tokio::time::timeout(SOON, replies.message())
        .await
        .expect("reflection reply in time")
        .expect("reflection reply")
        .expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "herald.v1.Control"), "{names:?}");
}

async fn assert_health(addr: SocketAddr, serving: bool) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("uri")
        .connect_lazy();
    let status = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "herald.v1.Control".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status();
    let expected = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    assert_eq!(status, expected, "health of {addr}");
}

/// The same tests on both stores when possible.
async fn backends() -> Vec<(&'static str, Arc<dyn Store>, Option<RedisServer>)> {
    let redis = RedisServer::start();
    let store = redis_store(&redis).await;
    vec![
        ("embedded", embedded_store(), None),
        ("redis", store, Some(redis)),
    ]
}

/// A store whose connection can be cut: every call fails while `cut` is set.
struct Flaky {
    inner: Arc<dyn Store>,
    cut: Arc<AtomicBool>,
}

impl Flaky {
    fn check(&self) -> store::Result<()> {
        if self.cut.load(Ordering::SeqCst) {
            Err(store::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ConnectionReset,
                "cut by test",
            )))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl Store for Flaky {
    async fn write(&self, ops: Vec<FencedOp>) -> store::Result<Vec<WriteOutcome>> {
        self.check()?;
        self.inner.write(ops).await
    }
    async fn get_recipient(
        &self,
        tenant: &TenantId,
        recipient_id: &str,
    ) -> store::Result<Option<Recipient>> {
        self.check()?;
        self.inner.get_recipient(tenant, recipient_id).await
    }
    async fn get_message(
        &self,
        tenant: &TenantId,
        message_id: &MessageId,
    ) -> store::Result<Option<MessageRecord>> {
        self.check()?;
        self.inner.get_message(tenant, message_id).await
    }
    async fn active_messages(
        &self,
        partition: PartitionId,
    ) -> store::Result<Vec<(TenantId, MessageId)>> {
        self.check()?;
        self.inner.active_messages(partition).await
    }
    async fn acquire_leases(
        &self,
        node: &NodeId,
        epoch: Epoch,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> store::Result<Vec<PartitionId>> {
        self.check()?;
        self.inner
            .acquire_leases(node, epoch, partitions, ttl)
            .await
    }
    async fn renew_leases(
        &self,
        node: &NodeId,
        partitions: &[PartitionId],
        ttl: Duration,
    ) -> store::Result<Vec<PartitionId>> {
        self.check()?;
        self.inner.renew_leases(node, partitions, ttl).await
    }
    async fn release_leases(&self, node: &NodeId, partitions: &[PartitionId]) -> store::Result<()> {
        self.check()?;
        self.inner.release_leases(node, partitions).await
    }
    async fn partition_epoch(&self, partition: PartitionId) -> store::Result<Epoch> {
        self.check()?;
        self.inner.partition_epoch(partition).await
    }
    async fn try_singleton_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> store::Result<String> {
        self.check()?;
        self.inner.try_singleton_lease(name, holder, ttl).await
    }
    async fn singleton_holder(&self, name: &str) -> store::Result<Option<String>> {
        self.check()?;
        self.inner.singleton_holder(name).await
    }
    async fn put_blob(&self, name: &str, value: Vec<u8>) -> store::Result<()> {
        self.check()?;
        self.inner.put_blob(name, value).await
    }
    async fn get_blob(&self, name: &str) -> store::Result<Option<Vec<u8>>> {
        self.check()?;
        self.inner.get_blob(name).await
    }
    async fn get_value(&self, key: &str) -> store::Result<Option<Vec<u8>>> {
        self.check()?;
        self.inner.get_value(key).await
    }
    async fn tenant_for_api_key(&self, key_sha256_hex: &str) -> store::Result<Option<TenantId>> {
        self.check()?;
        self.inner.tenant_for_api_key(key_sha256_hex).await
    }
    async fn put_api_key(&self, record: &store::ApiKeyRecord) -> store::Result<()> {
        self.check()?;
        self.inner.put_api_key(record).await
    }
    async fn api_keys(&self) -> store::Result<Vec<store::ApiKeyRecord>> {
        self.check()?;
        self.inner.api_keys().await
    }
    async fn delete_values(&self, keys: &[String]) -> store::Result<()> {
        self.check()?;
        self.inner.delete_values(keys).await
    }
    async fn redact_messages(&self, tenant: &TenantId, recipient_id: &str) -> store::Result<u64> {
        self.check()?;
        self.inner.redact_messages(tenant, recipient_id).await
    }
    async fn fields(&self, key: &str) -> store::Result<Vec<(String, Vec<u8>)>> {
        self.check()?;
        self.inner.fields(key).await
    }
    async fn some_fields(
        &self,
        key: &str,
        fields: &[String],
    ) -> store::Result<Vec<Option<Vec<u8>>>> {
        self.check()?;
        self.inner.some_fields(key, fields).await
    }
    async fn records(&self, key: &str, start: u64, count: u64) -> store::Result<Vec<Vec<u8>>> {
        self.check()?;
        self.inner.records(key, start, count).await
    }
    async fn record_count(&self, key: &str) -> store::Result<u64> {
        self.check()?;
        self.inner.record_count(key).await
    }
    async fn members_after(
        &self,
        key: &str,
        after: Option<&str>,
        count: usize,
    ) -> store::Result<Vec<String>> {
        self.check()?;
        self.inner.members_after(key, after, count).await
    }
    async fn member_count(&self, key: &str) -> store::Result<u64> {
        self.check()?;
        self.inner.member_count(key).await
    }
    async fn expire(&self, keys: &[String], ttl: Duration) -> store::Result<()> {
        self.check()?;
        self.inner.expire(keys, ttl).await
    }
}

/// With mutual TLS, the control plane takes a node's name from its certificate: no
/// certificate gets nothing, an operator may only look, and node n2 can neither join, beat
/// nor leave as n3. Each refusal changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_binds_membership_to_the_certificate() {
    use herald_tls::config::TlsFiles;
    use herald_tls::{Authority, Dialer, Identity, Role, TlsMaterial};
    init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let ca = Authority::generate("test").expect("ca");
    ca.write(dir.path(), false).expect("ca files");
    let files = |role, name: &str| {
        let issued = ca
            .issue(&Identity::new(role, name).expect("name"), &[], 1)
            .expect("issue");
        let written = Authority::write_issued(dir.path(), &issued, false).expect("write");
        TlsFiles {
            ca: dir.path().join("ca.pem"),
            cert: written.cert,
            key: written.key,
        }
    };
    let mut config = config("c1");
    config.tls = herald_tls::ClusterTls::with_files(files(Role::Control, "c1"));
    let handle = ControlPlane::start(config, embedded_store())
        .await
        .expect("start");
    wait_leader(&handle).await;
    let address = handle.local_addr().to_string();
    let client_as = |role, name: &str| {
        let material = TlsMaterial::load(files(role, name)).expect("material");
        let channel = Dialer::Tls(material)
            .channel(&address, Role::Control, |e| {
                e.connect_timeout(Duration::from_secs(1))
                    .timeout(Duration::from_secs(3))
            })
            .expect("channel");
        ControlClient::new(channel)
    };
    let mut n2 = client_as(Role::Node, "n2");
    let mut operator = client_as(Role::Operator, "alice");
    let mut plaintext = client(handle.local_addr());

    // No certificate: not even a status.
    plaintext
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect_err("plaintext status");
    plaintext
        .join(JoinRequest {
            node: Some(node("n2", 9002)),
        })
        .await
        .expect_err("plaintext join");

    // n2 joins as itself; not as n3.
    join(&mut n2, node("n2", 9002)).await;
    let refused = n2
        .join(JoinRequest {
            node: Some(node("n3", 9003)),
        })
        .await
        .expect_err("n2 joining as n3");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // An operator looks, but cannot join.
    let status = operator
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("operator status")
        .into_inner();
    assert_eq!(status.nodes.len(), 1, "only n2 joined: {status:?}");
    let refused = operator
        .join(JoinRequest {
            node: Some(node("alice", 9009)),
        })
        .await
        .expect_err("operator join");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    operator
        .watch_table(herald_proto::v1::WatchTableRequest::default())
        .await
        .expect("an operator may watch the table");
    plaintext
        .watch_table(herald_proto::v1::WatchTableRequest::default())
        .await
        .expect_err("plaintext watch");

    // n3 joins for real; n2 can neither beat nor leave for it.
    let mut n3 = client_as(Role::Node, "n3");
    join(&mut n3, node("n3", 9003)).await;
    let epoch = handle.current_table().epoch;
    let refused = n2
        .heartbeat(HeartbeatRequest {
            node_id: "n3".into(),
            epoch,
            ..Default::default()
        })
        .await
        .expect_err("n2 beating for n3");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = n2
        .leave(LeaveRequest {
            node_id: "n3".into(),
        })
        .await
        .expect_err("n2 evicting n3");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let status = operator
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    let mut ids: Vec<_> = status
        .nodes
        .iter()
        .map(|n| {
            n.node
                .as_ref()
                .map(|i| i.node_id.clone())
                .unwrap_or_default()
        })
        .collect();
    ids.sort();
    assert_eq!(ids, ["n2", "n3"], "nothing changed: {status:?}");
    assert_eq!(handle.current_table().epoch, epoch);

    // n3 leaves as itself.
    n3.leave(LeaveRequest {
        node_id: "n3".into(),
    })
    .await
    .expect("n3 leaves");
    handle.shutdown().await.expect("shutdown");
}
