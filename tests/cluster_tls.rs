//! The closed internal plane, on a real two-node cluster of processes (mutual TLS, as every
//! test cluster runs): the node-to-node API is not on the public port, and on the internal
//! port it takes only a cluster node's certificate; the control plane binds membership to
//! the caller's certificate. Every refusal stores nothing and changes nothing.

use std::time::Duration;

use herald_proto::v1::control_client::ControlClient;
use herald_proto::v1::forward_client::ForwardClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    ClusterStatusRequest, ForwardBatch, ForwardItem, GetRecipientRequest, LeaveRequest, Recipient,
    WatchLocalRequest, forward_item,
};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, TENANT, authed, channel};
use herald_tls::{Dialer, Role, TlsMaterial};
use tonic::transport::Channel;

const INTRUDER: &str = "intruder";

/// A batch that would store a recipient in the test tenant, with no API key anywhere.
fn intrusion() -> ForwardBatch {
    ForwardBatch {
        batch_id: 1,
        epoch: 0,
        items: vec![ForwardItem {
            tenant: TENANT.into(),
            op: Some(forward_item::Op::UpsertRecipient(Recipient {
                id: INTRUDER.into(),
                email: "intruder@example.com".into(),
                ..Default::default()
            })),
        }],
    }
}

/// Forward and WatchLocal through `channel` must fail; returns the codes seen.
async fn internal_calls_fail(channel: Channel) -> Vec<tonic::Code> {
    let mut client = ForwardClient::new(channel);
    let mut codes = Vec::new();
    let forward = client.forward(tokio_stream::iter(vec![intrusion()])).await;
    match forward {
        Err(status) => codes.push(status.code()),
        Ok(replies) => {
            // A stream may open before its first message is refused: its first reply fails.
            let mut replies = replies.into_inner();
            let first = replies.message().await;
            let status = first.expect_err("the forward stream must fail, not answer");
            codes.push(status.code());
        }
    }
    let watch = client
        .watch_local(WatchLocalRequest {
            tenant: TENANT.into(),
            ..Default::default()
        })
        .await;
    match watch {
        Err(status) => codes.push(status.code()),
        Ok(events) => {
            let first = events.into_inner().message().await;
            codes.push(first.expect_err("the watch must fail, not stream").code());
        }
    }
    codes
}

async fn nothing_stored(cluster: &Cluster) {
    let mut recipients = RecipientsClient::new(channel(&cluster.node_addrs[0]).await);
    let missing = recipients
        .get_recipient(authed(
            GetRecipientRequest {
                id: INTRUDER.into(),
            },
            API_KEY,
        ))
        .await
        .expect_err("the intruder's recipient must not exist");
    assert_eq!(missing.code(), tonic::Code::NotFound, "{missing:?}");
}

fn tls_channel(material: std::sync::Arc<TlsMaterial>, address: &str, role: Role) -> Channel {
    Dialer::Tls(material)
        .channel(address, role, |e| {
            e.connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(10))
        })
        .expect("channel")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_plane_takes_only_cluster_nodes() {
    let cluster = Cluster::start(2, NodeSpec::default()).await;

    // The public port does not serve the internal API at all.
    let codes = internal_calls_fail(channel(&cluster.node_addrs[0]).await).await;
    assert_eq!(codes, [tonic::Code::Unimplemented; 2], "public port");

    // The internal port, in plaintext: no TLS session, no call.
    let plaintext =
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.internal_addrs[0]))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
    let codes = internal_calls_fail(plaintext).await;
    assert!(
        !codes.contains(&tonic::Code::Ok) && codes.len() == 2,
        "plaintext: {codes:?}"
    );

    // The internal port with a valid cluster certificate that is not a node's: refused.
    let operator = TlsMaterial::load(cluster.issue(Role::Operator, "mallory")).expect("operator");
    let codes = internal_calls_fail(tls_channel(
        operator.clone(),
        &cluster.internal_addrs[0],
        Role::Node,
    ))
    .await;
    assert_eq!(codes, [tonic::Code::PermissionDenied; 2], "operator cert");
    nothing_stored(&cluster).await;

    // The control plane: nothing without a certificate; a node's certificate only for itself.
    let mut plaintext_control = ControlClient::new(
        tonic::transport::Endpoint::from_shared(format!("http://{}", cluster.control_addr))
            .expect("uri")
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy(),
    );
    plaintext_control
        .leave(LeaveRequest {
            node_id: "node-0".into(),
        })
        .await
        .expect_err("a plaintext Leave");
    let node1 = TlsMaterial::load(cluster.issue(Role::Node, "node-1")).expect("node-1");
    let mut as_node1 = ControlClient::new(tls_channel(node1, &cluster.control_addr, Role::Control));
    let refused = as_node1
        .leave(LeaveRequest {
            node_id: "node-0".into(),
        })
        .await
        .expect_err("node-1 evicting node-0");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let mut as_operator =
        ControlClient::new(tls_channel(operator, &cluster.control_addr, Role::Control));
    let refused = as_operator
        .leave(LeaveRequest {
            node_id: "node-0".into(),
        })
        .await
        .expect_err("an operator evicting node-0");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let status = cluster
        .control_client()
        .await
        .cluster_status(ClusterStatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!(status.nodes.len(), 2, "nobody was evicted: {status:?}");
}

/// The cluster's certificates re-load without a restart: a node certificate of a second CA is
/// refused on a node's internal port until that CA joins `ca.pem` (the documented rotation:
/// both CAs in `tls.ca`, re-issue, drop the old one); then, with no process restarted, it is
/// accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ca_in_the_bundle_is_trusted_without_a_restart() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let cluster = Cluster::start(1, NodeSpec::default()).await;
    let next_ca = herald_tls::Authority::generate("next").expect("second CA");
    let dir = tempfile::tempdir().expect("dir");
    let issued = next_ca
        .issue(
            &herald_tls::Identity::new(Role::Node, "node-7").expect("identity"),
            &[],
            30,
        )
        .expect("issue");
    let files = herald_tls::Authority::write_issued(dir.path(), &issued, false).expect("write");
    // The client trusts both CAs (it must verify the node's certificate of the first).
    let cluster_ca = std::fs::read_to_string(cluster.certs.join("ca.pem")).expect("ca");
    let both = dir.path().join("both.pem");
    std::fs::write(&both, format!("{cluster_ca}{}", next_ca.cert_pem())).expect("bundle");
    let client = TlsMaterial::load(herald_tls::config::TlsFiles {
        ca: both,
        cert: files.cert,
        key: files.key,
    })
    .expect("client identity");
    let internal = cluster.internal_addrs[0].clone();
    let check = || {
        let client = client.clone();
        let internal = internal.clone();
        async move {
            let channel = Dialer::Tls(client)
                .channel(&internal, Role::Node, |e| {
                    e.connect_timeout(Duration::from_secs(2))
                        .timeout(Duration::from_secs(2))
                })
                .ok()?;
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .ok()
        }
    };
    assert!(
        check().await.is_none(),
        "a certificate of an untrusted CA is refused"
    );

    // Rotation step one: the new CA joins the bundle every process reads.
    let bundle = cluster.certs.join("ca.pem");
    std::fs::write(&bundle, format!("{cluster_ca}{}", next_ca.cert_pem())).expect("rotate");
    herald_testkit::eventually::eventually(
        "the node trusts the new CA",
        Duration::from_secs(15),
        check,
    )
    .await;
    let status = cluster.status().await.expect("status");
    assert_eq!(status.nodes.len(), 1, "the node stayed in the cluster");
}
