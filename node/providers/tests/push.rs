//! FCM and APNs adapters against the real-protocol peers of `peers::push` on loopback.
#![cfg(feature = "peers")]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::v1::{Channel, Content, PushContent};
use herald_providers::apns::{ApnsConfig, ApnsProvider, apns_id_for};
use herald_providers::fcm::{FcmConfig, FcmProvider, InlineSecret};
use herald_providers::peers::push::{
    ApnsPeer, ApnsPeerConfig, FcmPeer, FcmPeerConfig, PushService, test_keys,
};
use herald_providers::{Attempt, Outcome, Provider};
use tokio::time::timeout;

const DEADLINE: Duration = Duration::from_secs(8);
const FCM_TOKEN: &str = "fcm-device-token-1";
const APNS_TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn content() -> Content {
    Content {
        push: Some(PushContent {
            title: "Hello".to_owned(),
            body: "World".to_owned(),
            data: BTreeMap::from([("order".to_owned(), "42".to_owned())]),
        }),
        ..Default::default()
    }
}

fn attempt<'a>(attempt_id: &'a str, to: &'a str, content: &'a Content) -> Attempt<'a> {
    Attempt {
        attempt_id,
        message_id: "msg-1",
        recipient_key: "rk-1",
        channel: Channel::Push,
        to,
        content,
        list_unsubscribe: None,
    }
}

async fn fcm_pair(token_lifetime: Duration, request_timeout_ms: u64) -> (FcmPeer, FcmProvider) {
    let peer = FcmPeer::start(FcmPeerConfig {
        token_lifetime,
        ..Default::default()
    })
    .await
    .expect("fcm peer");
    let config = FcmConfig {
        service_account_path: None,
        service_account_json: Some(InlineSecret(
            peer.service_account_json(test_keys::FCM_PRIVATE_KEY_PEM),
        )),
        base_url: peer.base_url(),
        token_url: None,
        scope: herald_providers::fcm::FCM_SCOPE.to_owned(),
        request_timeout_ms,
        connect_timeout_ms: request_timeout_ms / 2,
    };
    let provider = FcmProvider::new("fcm-test", &config)
        .await
        .expect("fcm provider");
    (peer, provider)
}

async fn send(provider: &dyn Provider, attempt_id: &str, to: &str) -> Outcome {
    let content = content();
    timeout(DEADLINE, provider.send(attempt(attempt_id, to, &content)))
        .await
        .expect("send finished in time")
}

#[tokio::test]
async fn fcm_concurrent_sends_share_one_token_exchange() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 5_000).await;
    let provider = Arc::new(provider);
    let sends = (0..20).map(|i| {
        let provider = provider.clone();
        async move { send(provider.as_ref(), &format!("att-{i}"), FCM_TOKEN).await }
    });
    let outcomes = futures::future::join_all(sends).await;
    for outcome in &outcomes {
        match outcome {
            Outcome::Accepted {
                provider_message_id,
                delivered: false,
                read: false,
            } => assert!(
                provider_message_id.starts_with("projects/herald-test/messages/"),
                "{provider_message_id}"
            ),
            other => panic!("not accepted: {other:?}"),
        }
    }
    assert_eq!(peer.tokens_issued(), 1, "one token exchange for 20 sends");
    assert_eq!(provider.token_fetches(), 1);
    assert_eq!(peer.messages_sent(), 20);
    let log = peer.faults().received();
    assert_eq!(
        log.iter()
            .filter(|r| r.service == PushService::OAuth)
            .count(),
        1
    );
    let sent: Vec<_> = log
        .iter()
        .filter(|r| r.service == PushService::Fcm)
        .collect();
    assert_eq!(sent.len(), 20);
    let first = sent[0];
    assert_eq!(first.device_token.as_deref(), Some(FCM_TOKEN));
    assert!(
        first
            .attempt_id
            .as_deref()
            .is_some_and(|a| a.starts_with("att-"))
    );
    let message = &first.body["message"];
    assert_eq!(message["notification"]["title"], "Hello");
    assert_eq!(message["notification"]["body"], "World");
    assert_eq!(message["data"]["order"], "42");
}

#[tokio::test]
async fn fcm_unregistered_token_is_contact_invalid() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 5_000).await;
    peer.faults().unregister("dead-token");
    let outcome = send(&provider, "att-1", "dead-token").await;
    assert_eq!(
        outcome,
        Outcome::Rejected {
            reason: "fcm 404 UNREGISTERED".to_owned(),
            contact_invalid: true
        }
    );
}

#[tokio::test]
async fn fcm_invalid_token_and_sender_mismatch_are_contact_invalid() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 5_000).await;
    peer.faults().mark_bad_token("garbled");
    peer.faults().mark_sender_mismatch("other-project");
    for (token, expected) in [
        ("garbled", "fcm 400 INVALID_ARGUMENT"),
        ("other-project", "fcm 403 SENDER_ID_MISMATCH"),
    ] {
        assert_eq!(
            send(&provider, "att-1", token).await,
            Outcome::Rejected {
                reason: expected.to_owned(),
                contact_invalid: true
            }
        );
    }
}

#[tokio::test]
async fn fcm_throttled_honours_retry_after() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 5_000).await;
    peer.faults().throttle_next(1, Duration::from_secs(17));
    assert_eq!(
        send(&provider, "att-1", FCM_TOKEN).await,
        Outcome::Unavailable {
            reason: "fcm 429 QUOTA_EXCEEDED".to_owned(),
            retry_after: Some(Duration::from_secs(17)),
        }
    );
    // Only the next one was throttled.
    assert!(matches!(
        send(&provider, "att-2", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));
}

#[tokio::test]
async fn fcm_503_is_unavailable() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 5_000).await;
    peer.faults().fail_next(1);
    assert_eq!(
        send(&provider, "att-1", FCM_TOKEN).await,
        Outcome::Unavailable {
            reason: "fcm 503 UNAVAILABLE".to_owned(),
            retry_after: None,
        }
    );
}

#[tokio::test]
async fn fcm_revoked_access_token_refreshes_once_and_succeeds() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 5_000).await;
    assert!(matches!(
        send(&provider, "att-1", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    peer.expire_access_tokens();
    assert!(matches!(
        send(&provider, "att-2", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    assert_eq!(peer.tokens_issued(), 2, "exactly one refresh");
    let statuses: Vec<(PushService, u16)> = peer
        .faults()
        .received()
        .iter()
        .map(|r| (r.service, r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (PushService::OAuth, 200),
            (PushService::Fcm, 200),
            (PushService::Fcm, 401),
            (PushService::OAuth, 200),
            (PushService::Fcm, 200),
        ]
    );
}

#[tokio::test]
async fn fcm_short_lived_token_is_refreshed_before_expiry() {
    // A 2 s token is refreshed after half its life, before FCM would refuse it.
    let (peer, provider) = fcm_pair(Duration::from_secs(2), 5_000).await;
    assert!(matches!(
        send(&provider, "att-1", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert!(matches!(
        send(&provider, "att-2", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    assert_eq!(peer.tokens_issued(), 2);
    assert!(
        peer.faults().received().iter().all(|r| r.status == 200),
        "no 401 on the way"
    );
}

#[tokio::test]
async fn fcm_token_endpoint_down_fails_queued_sends_at_once() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 5_000).await;
    peer.fail_next_token_requests(1);
    let provider = Arc::new(provider);
    let sends = (0..10).map(|i| {
        let provider = provider.clone();
        async move { send(provider.as_ref(), &format!("att-{i}"), FCM_TOKEN).await }
    });
    for outcome in futures::future::join_all(sends).await {
        assert!(
            matches!(outcome, Outcome::Unavailable { ref reason, .. } if reason.starts_with("fcm auth")),
            "{outcome:?}"
        );
    }
    let log = peer.faults().received();
    assert_eq!(log.len(), 1, "one token request, no sends: {log:?}");
    assert_eq!((log[0].service, log[0].status), (PushService::OAuth, 503));
    // The endpoint is back: the next send fetches a token and goes through.
    assert!(matches!(
        send(provider.as_ref(), "att-10", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    assert_eq!(peer.tokens_issued(), 1);
}

#[tokio::test]
async fn fcm_slow_answer_is_ambiguous() {
    let (peer, provider) = fcm_pair(Duration::from_secs(3600), 600).await;
    // Fetch the access token first, so the delay hits the send itself.
    assert!(matches!(
        send(&provider, "att-0", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    peer.faults().set_delay(Duration::from_secs(3));
    let outcome = send(&provider, "att-1", FCM_TOKEN).await;
    assert!(matches!(outcome, Outcome::Ambiguous { .. }), "{outcome:?}");
    // The request did reach FCM.
    assert!(
        peer.faults()
            .received()
            .iter()
            .any(|r| r.attempt_id.as_deref() == Some("att-1"))
    );
}

#[tokio::test]
async fn fcm_unreachable_is_unavailable() {
    // Bind then drop a listener: the port is (almost surely) closed.
    let port = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let peer = FcmPeer::start(FcmPeerConfig::default())
        .await
        .expect("peer");
    let config = FcmConfig {
        service_account_path: None,
        service_account_json: Some(InlineSecret(
            peer.service_account_json(test_keys::FCM_PRIVATE_KEY_PEM),
        )),
        base_url: format!("http://127.0.0.1:{port}"),
        token_url: None,
        scope: herald_providers::fcm::FCM_SCOPE.to_owned(),
        request_timeout_ms: 2_000,
        connect_timeout_ms: 1_000,
    };
    let provider = FcmProvider::new("fcm-test", &config)
        .await
        .expect("provider");
    let outcome = send(&provider, "att-1", FCM_TOKEN).await;
    assert!(
        matches!(outcome, Outcome::Unavailable { ref reason, retry_after: None } if reason.starts_with("connect")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn fcm_config_from_file_and_bad_key_rejected() {
    let peer = FcmPeer::start(FcmPeerConfig::default())
        .await
        .expect("peer");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sa.json");
    std::fs::write(
        &path,
        peer.service_account_json(test_keys::FCM_PRIVATE_KEY_PEM),
    )
    .expect("write");
    let config: FcmConfig = serde_json::from_value(serde_json::json!({
        "service_account_path": path,
        "base_url": peer.base_url(),
    }))
    .expect("config");
    assert_eq!(config.request_timeout_ms, 10_000);
    let provider = FcmProvider::new("fcm-file", &config)
        .await
        .expect("provider");
    assert!(matches!(
        send(&provider, "att-1", FCM_TOKEN).await,
        Outcome::Accepted { .. }
    ));

    // The APNs EC key is not an RSA service-account key.
    let bad = FcmConfig {
        service_account_path: None,
        service_account_json: Some(InlineSecret(
            peer.service_account_json(test_keys::APNS_PRIVATE_KEY_P8),
        )),
        ..config
    };
    let err = FcmProvider::new("fcm-bad", &bad)
        .await
        .expect_err("EC key refused");
    assert!(err.to_string().contains("private_key"), "{err}");
    assert!(!err.to_string().contains("BEGIN"), "no key material: {err}");
}

// ------------------------------------------------------------------------------------------
// APNs
// ------------------------------------------------------------------------------------------

async fn apns_pair() -> (ApnsPeer, ApnsProvider) {
    let peer = ApnsPeer::start(ApnsPeerConfig::default())
        .await
        .expect("apns peer");
    let defaults = ApnsPeerConfig::default();
    let config: ApnsConfig = serde_json::from_value(serde_json::json!({
        "base_url": peer.base_url(),
        "team_id": defaults.team_id,
        "key_id": defaults.key_id,
        "private_key_pem": test_keys::APNS_PRIVATE_KEY_P8,
        "topic": defaults.topic,
        "request_timeout_ms": 2_000,
        "connect_timeout_ms": 1_000,
    }))
    .expect("apns config");
    let provider = ApnsProvider::new("apns-test", &config)
        .await
        .expect("apns provider");
    (peer, provider)
}

#[tokio::test]
async fn apns_success_over_http2() {
    let (peer, provider) = apns_pair().await;
    let outcome = send(&provider, "att-1", APNS_TOKEN).await;
    assert_eq!(
        outcome,
        Outcome::Accepted {
            provider_message_id: apns_id_for("att-1"),
            delivered: false,
            read: false
        }
    );
    assert!(matches!(
        send(&provider, "att-2", APNS_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    assert_eq!(provider.tokens_signed(), 1, "provider token reused");
    assert_eq!(peer.provider_tokens_seen(), 1);
    let log = peer.faults().received();
    assert_eq!(log.len(), 2);
    let first = &log[0];
    assert_eq!(first.http_version, axum::http::Version::HTTP_2);
    assert_eq!(first.status, 200);
    assert_eq!(first.device_token.as_deref(), Some(APNS_TOKEN));
    assert_eq!(
        first.apns_id.as_deref(),
        Some(apns_id_for("att-1").as_str())
    );
    assert_eq!(first.attempt_id.as_deref(), Some("att-1"));
    assert_eq!(first.apns_headers["apns-topic"], "com.example.herald");
    assert_eq!(first.apns_headers["apns-push-type"], "alert");
    assert_eq!(first.apns_headers["apns-priority"], "10");
    assert!(first.apns_headers["apns-expiration"].parse::<u64>().is_ok());
    assert_eq!(first.body["aps"]["alert"]["title"], "Hello");
    assert_eq!(first.body["aps"]["alert"]["body"], "World");
    assert_eq!(first.body["order"], "42");
}

#[tokio::test]
async fn apns_unregistered_and_bad_token_are_contact_invalid() {
    let (peer, provider) = apns_pair().await;
    let dead = "00ff00ff";
    let bad = "0badbad0";
    peer.faults().unregister(dead);
    peer.faults().mark_bad_token(bad);
    assert_eq!(
        send(&provider, "att-1", dead).await,
        Outcome::Rejected {
            reason: "apns 410 Unregistered".to_owned(),
            contact_invalid: true
        }
    );
    assert_eq!(
        send(&provider, "att-2", bad).await,
        Outcome::Rejected {
            reason: "apns 400 BadDeviceToken".to_owned(),
            contact_invalid: true
        }
    );
    let gone = &peer.faults().received()[0];
    assert_eq!(gone.status, 410);
    // A token that is not hex never leaves the process.
    assert!(matches!(
        send(&provider, "att-3", "not/hex").await,
        Outcome::Rejected {
            contact_invalid: true,
            ..
        }
    ));
    assert_eq!(peer.faults().received().len(), 2);
}

#[tokio::test]
async fn apns_throttled_and_unavailable() {
    let (peer, provider) = apns_pair().await;
    peer.faults().throttle_next(1, Duration::from_secs(5));
    assert_eq!(
        send(&provider, "att-1", APNS_TOKEN).await,
        Outcome::Unavailable {
            reason: "apns 429 TooManyRequests".to_owned(),
            retry_after: Some(Duration::from_secs(5))
        }
    );
    peer.faults().fail_next(1);
    assert_eq!(
        send(&provider, "att-2", APNS_TOKEN).await,
        Outcome::Unavailable {
            reason: "apns 503 ServiceUnavailable".to_owned(),
            retry_after: None
        }
    );
    assert!(matches!(
        send(&provider, "att-3", APNS_TOKEN).await,
        Outcome::Accepted { .. }
    ));
}

#[tokio::test]
async fn apns_expired_provider_token_is_resigned_once() {
    let (peer, provider) = apns_pair().await;
    assert!(matches!(
        send(&provider, "att-1", APNS_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    peer.expire_provider_tokens();
    assert!(matches!(
        send(&provider, "att-2", APNS_TOKEN).await,
        Outcome::Accepted { .. }
    ));
    assert_eq!(provider.tokens_signed(), 2, "re-signed exactly once");
    let statuses: Vec<u16> = peer.faults().received().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 403, 200]);
    // The re-send carried the same apns-id.
    let log = peer.faults().received();
    assert_eq!(log[1].apns_id, log[2].apns_id);
}

#[tokio::test]
async fn apns_slow_answer_is_ambiguous() {
    let (peer, provider) = apns_pair().await;
    peer.faults().set_delay(Duration::from_secs(4));
    let outcome = send(&provider, "att-1", APNS_TOKEN).await;
    assert!(matches!(outcome, Outcome::Ambiguous { .. }), "{outcome:?}");
    assert!(
        !format!("{outcome:?}").contains(APNS_TOKEN),
        "no token in reasons"
    );
    assert_eq!(peer.faults().received().len(), 1);
}

#[tokio::test]
async fn apns_wrong_key_is_rejected_after_one_resign() {
    let peer = ApnsPeer::start(ApnsPeerConfig::default())
        .await
        .expect("apns peer");
    let defaults = ApnsPeerConfig::default();
    let config: ApnsConfig = serde_json::from_value(serde_json::json!({
        "base_url": peer.base_url(),
        "team_id": defaults.team_id,
        "key_id": "OTHERKEY99",
        "private_key_pem": test_keys::APNS_PRIVATE_KEY_P8,
        "topic": defaults.topic,
    }))
    .expect("config");
    let provider = ApnsProvider::new("apns-wrong-key", &config)
        .await
        .expect("provider");
    assert_eq!(
        send(&provider, "att-1", APNS_TOKEN).await,
        Outcome::Rejected {
            reason: "apns 403 InvalidProviderToken".to_owned(),
            contact_invalid: false
        }
    );
    assert_eq!(provider.tokens_signed(), 2);
    assert_eq!(peer.faults().received().len(), 2);
}

#[tokio::test]
async fn apns_peer_refuses_http1() {
    // APNs speaks only HTTP/2; the peer must not quietly serve an HTTP/1.1 client.
    let peer = ApnsPeer::start(ApnsPeerConfig::default())
        .await
        .expect("apns peer");
    let http1 = reqwest::Client::builder()
        .http1_only()
        .build()
        .expect("client");
    let response = timeout(
        DEADLINE,
        http1
            .post(format!("{}/3/device/{APNS_TOKEN}", peer.base_url()))
            .body("{}")
            .send(),
    )
    .await
    .expect("in time")
    .expect("answered");
    assert_eq!(response.status().as_u16(), 505);
    let log = peer.faults().received();
    assert_eq!(log[0].http_version, axum::http::Version::HTTP_11);
}
