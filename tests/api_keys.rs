//! API keys with a lifecycle, and per-tenant admission, on real processes: `herald keys`
//! (the CLI, with the test's operator certificate) against `herald control`, keys used on
//! every `herald node` of a three-node cluster, a revocation that reaches all of them within
//! 5 s; and one tenant's flood refused `RESOURCE_EXHAUSTED` while another tenant's calls pass.

use std::process::Command;
use std::time::{Duration, Instant};

use herald::demo::demo_recipient;
use herald_proto::v1::control_client::ControlClient;
use herald_proto::v1::{
    CreateApiKeyRequest, GetRecipientRequest, ListApiKeysRequest, UpsertRecipientRequest,
    UpsertRecipientsRequest,
};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, OTHER_API_KEY, authed, herald_bin};
use herald_testkit::eventually::eventually;
use tonic::Code;

/// `herald keys <args>` as the test's operator; its stdout (panics with stderr on failure).
fn keys_cli(cluster: &Cluster, args: &[&str]) -> String {
    let output = Command::new(herald_bin())
        .arg("keys")
        .args(["--control", &cluster.control_addr])
        .arg("--tls-dir")
        .arg(&cluster.certs)
        .args(args)
        .output()
        .expect("run herald keys");
    assert!(
        output.status.success(),
        "herald keys {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8")
}

/// What `GetRecipient` of `r-keys` with `key` on node `index` answers: its code.
async fn probe(cluster: &Cluster, index: usize, key: &str) -> Code {
    let reply = cluster
        .recipients(index)
        .await
        .get_recipient(authed(
            GetRecipientRequest {
                id: "r-keys".into(),
            },
            key,
        ))
        .await;
    match reply {
        Ok(_) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_key_is_refused_on_every_node_within_5s() {
    let cluster = Cluster::start(
        3,
        NodeSpec {
            top: "api_keys_in_store = true".into(),
            ..Default::default()
        },
    )
    .await;

    let created: serde_json::Value = serde_json::from_str(&keys_cli(
        &cluster,
        &[
            "create", "--tenant", "acme", "--label", "crm sync", "--json",
        ],
    ))
    .expect("json");
    let key = created["api_key"].as_str().expect("api_key").to_owned();
    let id = created["id"].as_str().expect("id").to_owned();
    assert!(key.starts_with(&format!("hk_{id}_")), "{key}");

    // The key works on every node, for its tenant.
    cluster
        .recipients(0)
        .await
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(demo_recipient("r-keys".into(), 7)),
            },
            &key,
        ))
        .await
        .expect("upsert with the new key");
    for index in 0..3 {
        assert_eq!(probe(&cluster, index, &key).await, Code::Ok, "node {index}");
        assert_eq!(
            probe(&cluster, index, API_KEY).await,
            Code::Ok,
            "the same tenant's configured key sees it (node {index})"
        );
        assert_eq!(
            probe(&cluster, index, OTHER_API_KEY).await,
            Code::NotFound,
            "another tenant does not (node {index})"
        );
    }
    let listed = keys_cli(&cluster, &["list", "--tenant", "acme"]);
    assert!(
        listed.contains(&id) && listed.contains("crm sync"),
        "{listed}"
    );
    assert!(!listed.contains(&key), "list never shows a key: {listed}");

    let revoked = keys_cli(&cluster, &["revoke", &id]);
    let since = Instant::now();
    assert!(revoked.contains("revoked"), "{revoked}");
    eventually(
        "every node refuses the revoked key",
        Duration::from_secs(5),
        || async {
            for index in 0..3 {
                if probe(&cluster, index, &key).await != Code::Unauthenticated {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
    eprintln!("revocation reached 3 nodes in {:?}", since.elapsed());
    assert_eq!(probe(&cluster, 1, API_KEY).await, Code::Ok);
    assert!(
        keys_cli(&cluster, &["list"])
            .lines()
            .all(|l| !l.contains(&id))
    );
    assert!(keys_cli(&cluster, &["list", "--all"]).contains(&id));

    // Only an operator certificate manages keys; bad input names its field and stores nothing.
    let node_cert = cluster.issue(herald_tls::Role::Node, "node-9");
    let node_channel =
        herald_tls::Dialer::Tls(herald_tls::TlsMaterial::load(node_cert).expect("tls"))
            .channel(&cluster.control_addr, herald_tls::Role::Control, |e| e)
            .expect("channel");
    let denied = ControlClient::new(node_channel)
        .create_api_key(CreateApiKeyRequest {
            tenant: "acme".into(),
            label: String::new(),
        })
        .await
        .expect_err("a node may not create keys");
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let plaintext = herald_tls::Dialer::Plain
        .channel(&cluster.control_addr, herald_tls::Role::Control, |e| e)
        .expect("channel");
    assert!(
        ControlClient::new(plaintext)
            .create_api_key(CreateApiKeyRequest {
                tenant: "acme".into(),
                label: String::new(),
            })
            .await
            .is_err()
    );
    let mut operator = cluster.control_client().await;
    for (tenant, label, field) in [
        ("", "", "tenant"),
        ("ac me", "", "tenant"),
        ("acme", "two\nlines", "label"),
    ] {
        let invalid = operator
            .create_api_key(CreateApiKeyRequest {
                tenant: tenant.into(),
                label: label.into(),
            })
            .await
            .expect_err("invalid");
        assert_eq!(invalid.code(), Code::InvalidArgument);
        assert!(invalid.message().contains(field), "{}", invalid.message());
    }
    let all = operator
        .list_api_keys(ListApiKeysRequest {
            tenant: String::new(),
            include_revoked: true,
        })
        .await
        .expect("list")
        .into_inner()
        .keys;
    assert_eq!(
        all.len(),
        1,
        "nothing was created by the refused calls: {all:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenants_flood_does_not_starve_another() {
    let cluster = Cluster::start(
        1,
        NodeSpec {
            // Low, so that even a slow (loaded) test loop floods it.
            tenant: "admission_per_s = 5".into(),
            ..Default::default()
        },
    )
    .await;
    let started = Instant::now();
    let (mut flood_refused, mut flood_passed, mut calm_passed) = (0, 0, 0);
    // Bounded: 300 rounds or 30 s, whichever ends first.
    for _ in 0..300 {
        if started.elapsed() > Duration::from_secs(30) {
            break;
        }
        match probe(&cluster, 0, API_KEY).await {
            Code::ResourceExhausted => flood_refused += 1,
            Code::NotFound => flood_passed += 1,
            other => panic!("acme: unexpected {other:?}"),
        }
        assert_eq!(
            probe(&cluster, 0, OTHER_API_KEY).await,
            Code::NotFound,
            "globex passes while acme floods"
        );
        calm_passed += 1;
    }
    eprintln!(
        "flood: acme {flood_passed} passed, {flood_refused} refused; globex {calm_passed} passed in {:?}",
        started.elapsed()
    );
    assert!(flood_refused > 0, "the flood was never refused");
    assert!(flood_passed >= 5, "acme got at least its burst");

    // A batch bigger than the burst is refused whole and stores nothing.
    let recipients: Vec<_> = (0..6)
        .map(|i| demo_recipient(format!("r-flood-{i}"), i))
        .collect();
    let refused = cluster
        .recipients(0)
        .await
        .upsert_recipients(authed(UpsertRecipientsRequest { recipients }, API_KEY))
        .await
        .expect_err("over the burst");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("split the batch"),
        "{}",
        refused.message()
    );
    let stored = eventually(
        "acme is admitted again",
        Duration::from_secs(10),
        || async {
            let reply = cluster
                .recipients(0)
                .await
                .get_recipient(authed(
                    GetRecipientRequest {
                        id: "r-flood-0".into(),
                    },
                    API_KEY,
                ))
                .await;
            match reply {
                Err(status) if status.code() == Code::ResourceExhausted => None,
                other => Some(other.map(|_| ()).map_err(|s| s.code())),
            }
        },
    )
    .await;
    assert_eq!(
        stored,
        Err(Code::NotFound),
        "the refused batch stored nothing"
    );
}
