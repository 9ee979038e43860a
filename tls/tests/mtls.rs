//! Mutual TLS over real loopback gRPC: who gets through, and certificates re-loaded on change.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_tls::config::TlsFiles;
use herald_tls::identity::RequireRole;
use herald_tls::{Authority, Dialer, Identity, Role, ServerTls, TlsMaterial};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::HealthServer;

fn files(dir: &Path, ca: &Authority, role: Role, name: &str) -> TlsFiles {
    let identity = Identity::new(role, name).expect("identity");
    let issued = ca.issue(&identity, &[], 1).expect("issue");
    let written = Authority::write_issued(dir, &issued, true).expect("write");
    ca.write(dir, true).expect("ca");
    TlsFiles {
        ca: dir.join("ca.pem"),
        cert: written.cert,
        key: written.key,
    }
}

/// A health server on TLS whose callers must hold a node certificate.
async fn serve(material: Arc<TlsMaterial>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr").to_string();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let health: HealthServer<_> = health;
    let guarded =
        tonic::service::interceptor::InterceptedService::new(health, RequireRole(Role::Node));
    let incoming = herald_tls::transport::incoming(listener, ServerTls::Cluster(material));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(guarded)
            .serve_with_incoming(incoming),
    );
    address
}

async fn check(dialer: &Dialer, address: &str) -> Result<(), tonic::Status> {
    let channel = dialer
        .channel(address, Role::Node, |e| {
            e.connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
        })
        .expect("channel");
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|_| ())
}

#[tokio::test]
async fn only_node_certificates_of_the_cluster_ca_get_through() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = Authority::generate("test").expect("ca");
    let server =
        TlsMaterial::load(files(&dir.path().join("n1"), &ca, Role::Node, "n1")).expect("n1");
    let address = serve(server).await;

    let n2 = TlsMaterial::load(files(&dir.path().join("n2"), &ca, Role::Node, "n2")).expect("n2");
    check(&Dialer::Tls(n2), &address)
        .await
        .expect("a node gets through");

    let operator =
        TlsMaterial::load(files(&dir.path().join("op"), &ca, Role::Operator, "alice")).expect("op");
    let refused = check(&Dialer::Tls(operator), &address)
        .await
        .expect_err("operator");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");

    // Refused in the handshake: no RPC runs (the code is the transport's, not the server's).
    check(&Dialer::Plain, &address)
        .await
        .expect_err("plaintext");

    let other_ca = Authority::generate("other").expect("other ca");
    let stranger =
        TlsMaterial::load(files(&dir.path().join("x"), &other_ca, Role::Node, "n9")).expect("x");
    check(&Dialer::Tls(stranger), &address)
        .await
        .expect_err("another CA's certificate");
}

#[tokio::test]
async fn certificates_reload_on_change_without_a_restart() {
    let dir = tempfile::tempdir().expect("dir");
    let old_ca = Authority::generate("old").expect("ca");
    let server_files = files(&dir.path().join("n1"), &old_ca, Role::Node, "n1");
    let server = TlsMaterial::load(server_files.clone()).expect("n1");
    server.watch(Duration::from_millis(50));
    let address = serve(server.clone()).await;
    let old_client =
        TlsMaterial::load(files(&dir.path().join("old"), &old_ca, Role::Node, "n2")).expect("n2");
    check(&Dialer::Tls(old_client.clone()), &address)
        .await
        .expect("old CA works");

    // Rotate the server to a new CA, in place.
    let new_ca = Authority::generate("new").expect("new ca");
    files(&dir.path().join("n1"), &new_ca, Role::Node, "n1");
    let new_client =
        TlsMaterial::load(files(&dir.path().join("new"), &new_ca, Role::Node, "n2")).expect("n2");
    let deadline = Instant::now() + Duration::from_secs(10);
    while check(&Dialer::Tls(new_client.clone()), &address)
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the new certificates never took effect"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check(&Dialer::Tls(old_client), &address)
        .await
        .expect_err("the old CA no longer gets in");

    // A broken file is ignored: the server keeps its certificates.
    std::fs::write(&server_files.cert, "not a certificate").expect("break");
    assert!(!server.reload_if_changed());
    check(&Dialer::Tls(new_client), &address)
        .await
        .expect("still served");
}
