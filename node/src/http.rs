//! # http: the node's HTTP listener — provider callbacks and `/metrics`
//!
//! Owns the routes providers call back on (`POST /callbacks/<account>/...`, in each provider's
//! native format, parsed by the account's adapter) and the Prometheus text exposition of the
//! node's counters. A callback is answered once its receipts are routed (2xx), or with 4xx when
//! the body is malformed, so the provider does not retry what can never be parsed; unknown
//! receipts are counted and answered 2xx.
//!
//! Must never log callback bodies (they carry phone numbers and addresses) and never apply a
//! receipt itself: receipts go through [`crate::receipts`].

use std::net::SocketAddr;

use axum::Router as HttpRouter;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use bytes::Bytes;
use herald_providers::twilio::{self, TwilioConfig};
use herald_providers::{ProviderEvent, ReceiptKind, email_webhook};
use tokio::sync::watch;
use tracing::warn;

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_proto::NodeId;
use herald_store::Store;

use crate::actors::directory::RecipientDirectory;
use crate::auth::Authenticator;
use crate::channels::Channels;
use crate::channels::ProviderAccountConfig;
use crate::links::LinkSigner;
use crate::receipts::Receipts;
use crate::timers::Timers;

/// What the listener reads and calls.
pub struct Http {
    pub node_id: NodeId,
    pub receipts: Arc<Receipts>,
    /// The accounts' configs (callbacks are parsed, and signatures checked, per adapter).
    pub providers: BTreeMap<String, ProviderAccountConfig>,
    pub links: Option<LinkSigner>,
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
    pub channels: Channels,
    pub timers: Timers,
    pub directory: Arc<RecipientDirectory>,
}

/// The listener's state: what it reads, and the registry `/metrics` encodes.
struct Served {
    http: Http,
    metrics: prometheus_client::registry::Registry,
}

impl std::ops::Deref for Served {
    type Target = Http;
    fn deref(&self) -> &Http {
        &self.http
    }
}

type State_ = Arc<Served>;

/// Starts the listener on `addr`; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    http: Http,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let registry = crate::metrics::registry(crate::metrics::NodeMetrics {
        node_id: http.node_id.clone(),
        receipts: http.receipts.clone(),
        channels: http.channels.clone(),
        timers: http.timers.clone(),
        directory: http.directory.clone(),
    });
    let app = HttpRouter::new()
        .route("/metrics", get(metrics))
        .route("/callbacks/{account}/{hook}", post(callback))
        .route(
            "/unsubscribe/{tenant}/{message_id}/{signature}",
            post(one_click_unsubscribe),
        )
        .with_state(Arc::new(Served {
            http,
            metrics: registry,
        }));
    tokio::spawn(async move {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        if let Err(error) = axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            warn!(%error, "http listener stopped with an error");
        }
    });
    Ok(local)
}

/// The URL Twilio signed for `hook`: the configured status callback, or for incoming messages
/// the same URL with its last path segment `status` replaced by `inbound`.
fn twilio_signed_url(config: &TwilioConfig, hook: &str) -> Option<String> {
    let status = config.status_callback.as_ref()?;
    match hook {
        "status" => Some(status.clone()),
        _ => status
            .strip_suffix("/status")
            .map(|base| format!("{base}/{hook}")),
    }
}

/// Parses a callback body with the adapter of `account`; checks the provider's signature where
/// it has one configured.
fn parse_callback(
    config: Option<&ProviderAccountConfig>,
    account: &str,
    hook: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<ProviderEvent>, (StatusCode, String)> {
    let bad = |e: herald_providers::CallbackError| (StatusCode::BAD_REQUEST, e.to_string());
    match (config, hook) {
        (Some(ProviderAccountConfig::Twilio(twilio)), "status" | "inbound") => {
            if let Some(url) = twilio_signed_url(twilio, hook) {
                let signature = headers
                    .get("x-twilio-signature")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                let params = twilio::form_params(body);
                if !twilio::verify_signature(&twilio.auth_token, &url, &params, signature) {
                    return Err((
                        StatusCode::FORBIDDEN,
                        "X-Twilio-Signature missing or wrong".into(),
                    ));
                }
            }
            if hook == "inbound" {
                return Ok(vec![twilio::parse_inbound(account, body).map_err(bad)?]);
            }
            let event = twilio::parse_status_callback(account, body).map_err(bad)?;
            Ok(event
                .map(|event| match event {
                    // A dead number is a hard bounce of the SMS contact point.
                    ProviderEvent::Receipt(mut receipt)
                        if receipt.kind == ReceiptKind::Failed
                            && receipt
                                .error_code
                                .as_deref()
                                .is_some_and(twilio::error_code_kills_contact) =>
                    {
                        receipt.kind = ReceiptKind::BouncedHard;
                        ProviderEvent::Receipt(receipt)
                    }
                    other => other,
                })
                .into_iter()
                .collect())
        }
        (Some(ProviderAccountConfig::Smtp(smtp)), "events") => {
            if let Some(key) = &smtp.event_webhook_key {
                // Checked at start-up; a key that does not parse verifies nothing.
                let verified = email_webhook::EventWebhookKey::from_base64(key).is_ok_and(|key| {
                    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                    match (
                        header(email_webhook::TIMESTAMP_HEADER),
                        header(email_webhook::SIGNATURE_HEADER),
                    ) {
                        (Some(timestamp), Some(signature)) => {
                            key.verify(timestamp, body, signature)
                        }
                        _ => false,
                    }
                });
                if !verified {
                    return Err((
                        StatusCode::FORBIDDEN,
                        "event webhook signature missing or wrong".into(),
                    ));
                }
            }
            email_webhook::parse_sendgrid_events(account, body).map_err(bad)
        }
        (Some(_), _) => Err((
            StatusCode::NOT_FOUND,
            format!("account {account} has no callback `{hook}`"),
        )),
        (None, _) => Err((
            StatusCode::NOT_FOUND,
            format!("no provider account {account}"),
        )),
    }
}

async fn callback(
    State(http): State<State_>,
    Path((account, hook)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let config = http.providers.get(&account);
    let events = match parse_callback(config, &account, &hook, &headers, &body) {
        Ok(events) => events,
        Err((status, problem)) => return (status, problem),
    };
    let mut applied = 0usize;
    for event in events {
        match event {
            ProviderEvent::Receipt(receipt) => {
                http.receipts.apply_receipt(receipt).await;
                applied += 1;
            }
            ProviderEvent::Inbound(inbound) => {
                http.receipts.handle_inbound(inbound).await;
            }
        }
    }
    (StatusCode::OK, format!("{applied} receipts"))
}

/// RFC 8058 one-click unsubscribe: a mail client POSTs `List-Unsubscribe=One-Click` to the
/// signed link of a message. Recorded on the message as `unsubscribed` (the consent ledger acts
/// on it).
async fn one_click_unsubscribe(
    State(http): State<State_>,
    Path((tenant, message_id, signature)): Path<(String, String, String)>,
    body: Bytes,
) -> impl IntoResponse {
    let verified = http
        .links
        .as_ref()
        .is_some_and(|links| links.verify(&tenant, &message_id, &signature));
    if !verified {
        return (StatusCode::FORBIDDEN, "invalid unsubscribe link".to_owned());
    }
    let one_click = twilio::form_params(&body)
        .iter()
        .any(|(k, v)| k == "List-Unsubscribe" && v == "One-Click");
    if !one_click {
        return (
            StatusCode::BAD_REQUEST,
            "expected the body List-Unsubscribe=One-Click (RFC 8058)".to_owned(),
        );
    }
    let tenant = http.tenants.tenant(&tenant);
    let record = match crate::intake::load_message(&*http.store, &tenant.id, &message_id).await {
        Ok(Some(record)) => record,
        Ok(None) => return (StatusCode::NOT_FOUND, "no such message".to_owned()),
        Err(error) => return (StatusCode::SERVICE_UNAVAILABLE, error.to_string()),
    };
    let Some(request) = record.message.request else {
        return (StatusCode::NOT_FOUND, "no such message".to_owned());
    };
    let email_step = request
        .waterfall
        .iter()
        .position(|s| s.channel() == herald_proto::v1::Channel::Email)
        .and_then(|i| u32::try_from(i).ok());
    let signal = herald_proto::v1::ForwardSignal {
        recipient_id: request.recipient_id,
        message_id,
        step: email_step,
        kind: herald_proto::v1::EngagementKind::EngagementUnsubscribed as i32,
        detail: "one_click".to_owned(),
        reply_text: String::new(),
        source: "list_unsubscribe".to_owned(),
        ..Default::default()
    };
    let results = http.receipts.route_signals(&tenant, vec![signal]).await;
    match results.first().map(|r| r.status()) {
        Some(herald_proto::v1::ReportStatus::Unspecified) | None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "try again later".to_owned(),
        ),
        Some(_) => (StatusCode::OK, "unsubscribed".to_owned()),
    }
}

async fn metrics(State(http): State<State_>) -> axum::response::Response {
    match crate::metrics::exposition(&http.metrics) {
        Ok(text) => ([("content-type", crate::metrics::CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use herald_providers::smtp::SmtpConfig;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    /// DER prefix of a P-256 SubjectPublicKeyInfo.
    const SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    #[test]
    fn signed_sendgrid_events_pass_and_unsigned_ones_are_403() {
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("pair");
        let mut spki = SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let mut smtp = SmtpConfig::new("smtp.example.com", "noreply@example.com");
        smtp.event_webhook_key = Some(base64::engine::general_purpose::STANDARD.encode(spki));
        let config = ProviderAccountConfig::Smtp(smtp);
        let body = br#"[{"event":"delivered","smtp-id":"<a1.0@herald>"}]"#;
        let mut signed = b"1700000000".to_vec();
        signed.extend_from_slice(body);
        let signature = base64::engine::general_purpose::STANDARD
            .encode(pair.sign(&rng, &signed).expect("sign").as_ref());

        let mut headers = HeaderMap::new();
        headers.insert(
            "X-Twilio-Email-Event-Webhook-Timestamp",
            "1700000000".parse().expect("header"),
        );
        headers.insert(
            "X-Twilio-Email-Event-Webhook-Signature",
            signature.parse().expect("header"),
        );
        let events = parse_callback(Some(&config), "mail", "events", &headers, body)
            .expect("a signed batch is parsed");
        assert_eq!(events.len(), 1);

        let tampered = br#"[{"event":"bounce","smtp-id":"<a1.0@herald>"}]"#;
        let refused = parse_callback(Some(&config), "mail", "events", &headers, tampered)
            .expect_err("tampered");
        assert_eq!(refused.0, StatusCode::FORBIDDEN);
        let unsigned = parse_callback(Some(&config), "mail", "events", &HeaderMap::new(), body)
            .expect_err("unsigned");
        assert_eq!(unsigned.0, StatusCode::FORBIDDEN);
    }
}
