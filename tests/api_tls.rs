//! TLS on the public API, on a real `herald node` process: its own server certificate (not the
//! cluster CA's), client certificates required when `api_tls.client_ca` is set, and files
//! re-loaded on change without a restart. Clients are tonic channels with rustls.

use std::path::Path;
use std::time::Duration;

use herald_proto::v1::GetRecipientRequest;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, authed};
use herald_testkit::eventually::eventually;
use herald_tls::{Authority, Identity, Role};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A CA in `dir/<name>/` and one certificate of it, for `holder`, valid for 127.0.0.1.
fn issue(dir: &Path, name: &str, holder: &str) -> (String, String, String) {
    let ca = Authority::generate(name).expect("ca");
    let issued = ca
        .issue(
            &Identity::new(Role::Operator, holder).expect("identity"),
            &["127.0.0.1".to_owned(), "localhost".to_owned()],
            30,
        )
        .expect("issue");
    let sub = dir.join(name);
    ca.write(&sub, false).expect("write ca");
    let files = Authority::write_issued(&sub, &issued, false).expect("write");
    (
        sub.join("ca.pem").display().to_string(),
        files.cert.display().to_string(),
        files.key.display().to_string(),
    )
}

/// A channel to `address` over TLS trusting `ca`, presenting `identity` (cert, key) if given.
async fn tls_channel(
    address: &str,
    ca: &str,
    identity: Option<(&str, &str)>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(std::fs::read(ca).expect("ca")))
        .domain_name("localhost");
    if let Some((cert, key)) = identity {
        tls = tls.identity(tonic::transport::Identity::from_pem(
            std::fs::read(cert).expect("cert"),
            std::fs::read(key).expect("key"),
        ));
    }
    Endpoint::from_shared(format!("https://{address}"))
        .expect("uri")
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
}

/// What a `GetRecipient` over `channel` answers (`Ok` = the call got through to the API).
async fn call(channel: Channel) -> Result<tonic::Code, tonic::Status> {
    match RecipientsClient::new(channel)
        .get_recipient(authed(GetRecipientRequest { id: "r-tls".into() }, API_KEY))
        .await
    {
        Ok(_) => Ok(tonic::Code::Ok),
        Err(status) if status.code() == tonic::Code::NotFound => Ok(tonic::Code::NotFound),
        Err(status) => Err(status),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_public_api_speaks_tls_with_client_certificates_and_reloads() {
    let dir = tempfile::tempdir().expect("dir");
    let (api_ca, api_cert, api_key) = issue(dir.path(), "api", "api-server");
    let (clients_ca, client_cert, client_key) = issue(dir.path(), "clients", "crm");
    let (other_ca, _, _) = issue(dir.path(), "other", "nobody");
    let cluster = Cluster::start(
        1,
        NodeSpec {
            tables: format!(
                "[api_tls]\ncert = \"{api_cert}\"\nkey = \"{api_key}\"\nclient_ca = \"{clients_ca}\"\nreload_interval_ms = 200\n"
            ),
            ..Default::default()
        },
    )
    .await;
    let address = cluster.node_addrs[0].clone();

    let good = tls_channel(&address, &api_ca, Some((&client_cert, &client_key)))
        .await
        .expect("a client with a certificate connects");
    assert_eq!(
        call(good).await.expect("the API answers"),
        tonic::Code::NotFound
    );

    // Without a client certificate: the handshake (or the first call) fails.
    let no_cert = match tls_channel(&address, &api_ca, None).await {
        Ok(channel) => call(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(no_cert, "a client without a certificate is refused");
    // A client that does not trust the API's CA refuses the server.
    assert!(
        tls_channel(&address, &other_ca, Some((&client_cert, &client_key)))
            .await
            .is_err()
    );
    // Plaintext to the TLS port gets nowhere.
    let plain = Endpoint::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .connect()
        .await;
    let plain_refused = match plain {
        Ok(channel) => call(channel).await.is_err(),
        Err(_) => true,
    };
    assert!(plain_refused, "plaintext is refused");

    // A new server certificate from another CA, written over the old files: after a reload
    // (no restart) clients of the new CA connect.
    let (new_ca, new_cert, new_key) = issue(dir.path(), "api-rotated", "api-server");
    std::fs::copy(&new_cert, &api_cert).expect("replace cert");
    std::fs::copy(&new_key, &api_key).expect("replace key");
    eventually(
        "the rotated server certificate is served",
        Duration::from_secs(10),
        || async {
            let channel = tls_channel(&address, &new_ca, Some((&client_cert, &client_key)))
                .await
                .ok()?;
            call(channel).await.ok()
        },
    )
    .await;
}
