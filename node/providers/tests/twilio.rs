//! Twilio adapter against the fake Twilio peer (`peers::twilio`), over real HTTP on loopback.
#![cfg(feature = "peers")]

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use herald_proto::v1::{Channel, Content, SmsContent};
use herald_providers::peers::twilio::{TwilioPeer, TwilioPeerConfig};
use herald_providers::twilio::{
    TwilioConfig, TwilioProvider, form_params, parse_status_callback, verify_signature,
};
use herald_providers::{Attempt, Outcome, Provider, ProviderEvent, Receipt, ReceiptKind};
use tokio::sync::mpsc;

fn sms(text: &str) -> Content {
    Content {
        sms: Some(SmsContent { text: text.into() }),
        ..Default::default()
    }
}

fn attempt<'a>(id: &'a str, to: &'a str, content: &'a Content) -> Attempt<'a> {
    Attempt {
        attempt_id: id,
        message_id: "msg-1",
        recipient_key: "rk-1",
        channel: Channel::Sms,
        to,
        content,
        list_unsubscribe: None,
    }
}

async fn peer(callback_delay: Option<Duration>) -> TwilioPeer {
    TwilioPeer::start(TwilioPeerConfig {
        status_callback_delay: callback_delay,
        ..TwilioPeerConfig::default()
    })
    .await
    .expect("peer")
}

fn config(peer: &TwilioPeer) -> TwilioConfig {
    let mut c = TwilioConfig::new(peer.account_sid(), peer.auth_token(), "+15557650000");
    c.base_url = peer.base_url();
    c.request_timeout_ms = 3_000;
    c
}

fn is_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("SM") && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn send_is_accepted_and_logged() {
    let peer = peer(None).await;
    let provider = TwilioProvider::new("tw", &config(&peer)).expect("provider");
    let c = sms("Your code is 123456");
    let o = provider.send(attempt("att-1", "+15551230001", &c)).await;
    let Outcome::Accepted {
        provider_message_id,
        ..
    } = o
    else {
        panic!("expected Accepted, got {o:?}");
    };
    assert!(is_sid(&provider_message_id), "{provider_message_id}");
    let log = peer.received();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0].sid, provider_message_id);
    assert_eq!(log[0].to, "+15551230001");
    assert_eq!(log[0].from, "+15557650000");
    assert_eq!(log[0].body, "Your code is 123456");
    assert_eq!(log[0].idempotency_token.as_deref(), Some("att-1"));
}

#[tokio::test]
async fn messaging_service_sid_is_sent_instead_of_from() {
    let peer = peer(None).await;
    let mut c = config(&peer);
    c.from = None;
    c.messaging_service_sid = Some("MG0123".into());
    let provider = TwilioProvider::new("tw", &c).expect("provider");
    let content = sms("hi");
    let o = provider
        .send(attempt("att-mg", "+15551230002", &content))
        .await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(peer.received()[0].from, "MG0123");
}

#[tokio::test]
async fn same_attempt_twice_is_one_message() {
    let peer = peer(None).await;
    let provider = TwilioProvider::new("tw", &config(&peer)).expect("provider");
    let c = sms("hello");
    let first = provider.send(attempt("att-dup", "+15551230003", &c)).await;
    let second = provider.send(attempt("att-dup", "+15551230003", &c)).await;
    assert!(matches!(first, Outcome::Accepted { .. }), "{first:?}");
    assert_eq!(first, second, "same token, same sid");
    assert_eq!(peer.requests(), 2);
    assert_eq!(peer.received().len(), 1);
    let third = provider
        .send(attempt("att-other", "+15551230003", &c))
        .await;
    assert_ne!(first, third);
    assert_eq!(peer.received().len(), 2);
}

#[tokio::test]
async fn invalid_number_is_contact_invalid() {
    let peer = peer(None).await;
    let provider = TwilioProvider::new("tw", &config(&peer)).expect("provider");
    let c = sms("x");
    for (to, code, invalid) in [
        ("+15005550001", "21211", true),
        ("+15005550009", "21614", true),
        ("+15005550004", "21610", false),
    ] {
        match provider.send(attempt("att-bad", to, &c)).await {
            Outcome::Rejected {
                reason,
                contact_invalid,
            } => {
                assert_eq!(contact_invalid, invalid, "{to}: {reason}");
                assert!(reason.contains(code), "{reason}");
                assert!(!reason.contains(to), "no phone number in reason: {reason}");
            }
            other => panic!("{to}: expected Rejected, got {other:?}"),
        }
    }
    assert!(peer.received().is_empty());
}

#[tokio::test]
async fn throttled_is_unavailable_with_retry_after() {
    let peer = peer(None).await;
    let provider = TwilioProvider::new("tw", &config(&peer)).expect("provider");
    let c = sms("x");
    peer.throttle_next(1);
    let o = provider.send(attempt("att-429", "+15551230004", &c)).await;
    assert_eq!(
        o,
        Outcome::Unavailable {
            reason: "twilio 429 code 20429".into(),
            retry_after: Some(Duration::from_secs(1)),
        }
    );
    // The throttle was for one request: the retry with the same attempt id goes through.
    let o = provider.send(attempt("att-429", "+15551230004", &c)).await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    assert_eq!(peer.received().len(), 1);
}

#[tokio::test]
async fn server_error_is_unavailable() {
    let peer = peer(None).await;
    let provider = TwilioProvider::new("tw", &config(&peer)).expect("provider");
    let c = sms("x");
    peer.fail_next(1);
    let o = provider.send(attempt("att-500", "+15551230005", &c)).await;
    assert!(
        matches!(o, Outcome::Unavailable { ref reason, retry_after: None } if reason.contains("500")),
        "{o:?}"
    );
    assert!(peer.received().is_empty());
}

#[tokio::test]
async fn wrong_credentials_are_rejected() {
    // A configuration error: retrying the same account cannot help, so Rejected (not
    // contact-invalid), and the node's failover may use another account.
    let peer = peer(None).await;
    let mut c = config(&peer);
    c.auth_token = "wrong".into();
    let provider = TwilioProvider::new("tw", &c).expect("provider");
    let content = sms("x");
    match provider
        .send(attempt("att-auth", "+15551230006", &content))
        .await
    {
        Outcome::Rejected {
            reason,
            contact_invalid,
        } => {
            assert!(!contact_invalid);
            assert!(
                reason.contains("401") && reason.contains("20003"),
                "{reason}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(peer.received().is_empty());
}

#[tokio::test]
async fn server_down_is_unavailable() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut c = TwilioConfig::new("AC1", "t", "+15557650000");
    c.base_url = format!("http://127.0.0.1:{port}");
    let provider = TwilioProvider::new("tw", &c).expect("provider");
    let content = sms("x");
    let o = tokio::time::timeout(
        Duration::from_secs(5),
        provider.send(attempt("att-down", "+15551230007", &content)),
    )
    .await
    .expect("bounded");
    assert!(matches!(o, Outcome::Unavailable { .. }), "{o:?}");
}

#[tokio::test]
async fn no_answer_after_request_is_ambiguous() {
    // A server that reads the request and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        for _ in 0..4 {
            match listener.accept().await {
                Ok((stream, _)) => held.push(stream),
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
        drop(held);
    });
    let mut c = TwilioConfig::new("AC1", "t", "+15557650000");
    c.base_url = format!("http://{addr}");
    c.request_timeout_ms = 300;
    let provider = TwilioProvider::new("tw", &c).expect("provider");
    let content = sms("x");
    let o = tokio::time::timeout(
        Duration::from_secs(5),
        provider.send(attempt("att-hang", "+15551230008", &content)),
    )
    .await
    .expect("bounded");
    assert!(matches!(o, Outcome::Ambiguous { .. }), "{o:?}");
    server.abort();
}

/// What the test's callback listener received.
struct Callback {
    url: String,
    signature: Option<String>,
    body: Bytes,
}

#[tokio::test]
async fn status_callback_becomes_delivered_receipt() {
    let (tx, mut rx) = mpsc::channel::<Callback>(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let callback_url = format!(
        "http://{}/twilio/status",
        listener.local_addr().expect("addr")
    );
    let app = axum::Router::new()
        .route(
            "/twilio/status",
            axum::routing::post(
                |State((tx, url)): State<(mpsc::Sender<Callback>, Arc<String>)>,
                 headers: HeaderMap,
                 body: Bytes| async move {
                    let signature = headers
                        .get("X-Twilio-Signature")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let _ = tx
                        .send(Callback {
                            url: url.to_string(),
                            signature,
                            body,
                        })
                        .await;
                    ""
                },
            ),
        )
        .with_state((tx, Arc::new(callback_url.clone())));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let peer = peer(Some(Duration::from_millis(50))).await;
    let mut c = config(&peer);
    c.status_callback = Some(callback_url.clone());
    let provider = TwilioProvider::new("tw-main", &c).expect("provider");
    let content = sms("x");
    let Outcome::Accepted {
        provider_message_id,
        ..
    } = provider
        .send(attempt("att-cb", "+15551230009", &content))
        .await
    else {
        panic!("not accepted");
    };
    let cb = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("callback within 5 s")
        .expect("callback");
    let signature = cb.signature.expect("signed callback");
    assert!(verify_signature(
        peer.auth_token(),
        &cb.url,
        &form_params(&cb.body),
        &signature
    ));
    assert!(!verify_signature(
        "another-token",
        &cb.url,
        &form_params(&cb.body),
        &signature
    ));
    let event = parse_status_callback("tw-main", &cb.body)
        .expect("parses")
        .expect("an event");
    assert_eq!(
        event,
        ProviderEvent::Receipt(Receipt {
            provider: "tw-main".into(),
            provider_message_id,
            kind: ReceiptKind::Delivered,
            detail: "status=delivered".into(),
            error_code: None,
        })
    );
    assert_eq!(peer.callbacks_sent(), 1);
    server.abort();
}

#[tokio::test]
async fn peer_speaks_twilio_errors() {
    let peer = peer(None).await;
    let url = format!(
        "{}/2010-04-01/Accounts/{}/Messages.json",
        peer.base_url(),
        peer.account_sid()
    );
    let client = reqwest::Client::new();
    let form = "To=%2B15551230010&From=%2B15557650000&Body=hi";

    let r = client
        .post(&url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 401);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], 20003);
    assert_eq!(body["status"], 401);

    let r = client
        .post(&url)
        .basic_auth(peer.account_sid(), Some(peer.auth_token()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("To=%2B15551230010&From=%2B15557650000")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["code"], 21602);

    let r = client
        .post(&url)
        .basic_auth(peer.account_sid(), Some(peer.auth_token()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 201);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["status"], "queued");
    assert_eq!(body["to"], "+15551230010");
    assert!(is_sid(body["sid"].as_str().expect("sid")));
    assert_eq!(peer.received().len(), 1);
    assert_eq!(peer.received()[0].idempotency_token, None);
    assert_eq!(peer.requests(), 3);
}
