//! # apns: Apple Push Notification service, provider API over HTTP/2 with token auth
//!
//! Owns one APNs key (team id, key id, `.p8` signing key) for one app (topic): the ES256
//! provider token signed with it (cached and reused, re-signed after ~50 minutes), the HTTP/2
//! connection (APNs speaks only HTTP/2: h2c with prior knowledge for `http://` test peers, ALPN
//! `h2` over TLS otherwise), and the classification of APNs answers into [`Outcome`]s.
//!
//! Each attempt is one `POST /3/device/{token}`. The `apns-id` header is a UUID derived from the
//! attempt id, so a re-sent attempt carries the same `apns-id`. APNs does NOT de-duplicate by
//! it (a re-send may be shown twice); it is only for correlation in Apple's logs and ours. The
//! payload also carries the attempt id as top-level key `herald_attempt_id` so the app can
//! drop duplicates.
//!
//! This module must never log device tokens (they are in the URL path: errors are stripped of
//! their URL), payloads or key material; and never retry beyond the one re-send after an
//! expired/invalid provider token (the node's policy decides the rest).

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use herald_proto::v1::Channel;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::fcm::{
    ATTEMPT_ID_DATA_KEY, InlineSecret, check_timeouts, default_connect_timeout_ms,
    default_request_timeout_ms, parse_retry_after, transport_outcome, unix_now,
};
use crate::{Attempt, ConfigError, Outcome, Provider};

/// Apple's production endpoint.
pub const APNS_PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's development (sandbox) endpoint.
pub const APNS_SANDBOX: &str = "https://api.sandbox.push.apple.com";

/// One APNs token-auth key for one app.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// APNs base URL: production `https://api.push.apple.com`, sandbox
    /// `https://api.sandbox.push.apple.com`; `http://` means h2c (test peers only).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The Apple developer team id (the provider token's `iss`).
    pub team_id: String,
    /// The id of the APNs auth key (the provider token's `kid`).
    pub key_id: String,
    /// Path to the `.p8` auth key (PKCS#8 PEM, P-256). Exactly one of this and
    /// `private_key_pem` must be set.
    #[serde(default)]
    pub private_key_path: Option<PathBuf>,
    /// The `.p8` auth key inline. Exactly one of this and `private_key_path` must be set.
    #[serde(default)]
    pub private_key_pem: Option<InlineSecret>,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `apns-push-type`: `alert` (default) or `background`, `voip`, ... (must match the
    /// payload and topic).
    #[serde(default = "default_push_type")]
    pub push_type: String,
    /// `apns-priority`; default 10 (immediate) for `alert`, 5 otherwise (Apple requires 5 for
    /// `background`).
    #[serde(default)]
    pub priority: Option<u8>,
    /// How long APNs keeps trying an offline device, in seconds (`apns-expiration` = now +
    /// this). 0 = one delivery attempt only, stored nowhere.
    #[serde(default = "default_expiration_secs")]
    pub expiration_secs: u64,
    /// Re-sign the provider token after this many seconds. Apple rejects tokens older than one
    /// hour and re-signing more often than every 20 minutes (TooManyProviderTokenUpdates);
    /// must be within 1200..=3300.
    #[serde(default = "default_token_refresh_secs")]
    pub token_refresh_secs: u64,
    /// Whole-request deadline for one APNs call, in milliseconds. A request that went out but
    /// got no answer within it is reported `Ambiguous`.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Connect (and TLS) deadline, in milliseconds; must be below `request_timeout_ms`.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_base_url() -> String {
    APNS_PRODUCTION.to_owned()
}

fn default_push_type() -> String {
    "alert".to_owned()
}

fn default_expiration_secs() -> u64 {
    86_400
}

fn default_token_refresh_secs() -> u64 {
    3000
}

/// The cached provider token.
#[derive(Clone)]
struct ProviderToken {
    jwt: Arc<str>,
    signed_at: Instant,
}

#[derive(Serialize)]
struct ProviderClaims<'a> {
    iss: &'a str,
    iat: u64,
}

/// The APNs adapter. Cheap to share behind an `Arc`; concurrent sends multiplex on one HTTP/2
/// connection and share one provider token.
pub struct ApnsProvider {
    name: String,
    http: reqwest::Client,
    device_url: String,
    team_id: String,
    key_id: String,
    key: EncodingKey,
    topic: String,
    push_type: String,
    priority: u8,
    expiration_secs: u64,
    token_refresh: Duration,
    token: parking_lot::Mutex<Option<ProviderToken>>,
    tokens_signed: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for ApnsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApnsProvider")
            .field("name", &self.name)
            .field("device_url", &self.device_url)
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

fn invalid(account: &str, field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        account: account.to_owned(),
        field,
        problem: problem.into(),
    }
}

impl ApnsProvider {
    /// Builds the adapter: reads and checks the key and settings. Makes no network call.
    pub async fn new(name: impl Into<String>, config: &ApnsConfig) -> Result<Self, ConfigError> {
        let name = name.into();
        let pem = match (&config.private_key_path, &config.private_key_pem) {
            (Some(path), None) => tokio::fs::read_to_string(path).await.map_err(|e| {
                invalid(
                    &name,
                    "private_key_path",
                    format!("{}: {e}", path.display()),
                )
            })?,
            (None, Some(pem)) => pem.0.clone(),
            _ => {
                return Err(invalid(
                    &name,
                    "private_key_path",
                    "set exactly one of private_key_path and private_key_pem",
                ));
            }
        };
        let key = EncodingKey::from_ec_pem(pem.as_bytes()).map_err(|e| {
            invalid(
                &name,
                "private_key",
                format!("not a P-256 PKCS#8 (.p8) key: {e}"),
            )
        })?;
        for (field, value) in [
            ("team_id", &config.team_id),
            ("key_id", &config.key_id),
            ("topic", &config.topic),
            ("push_type", &config.push_type),
        ] {
            if value.is_empty() {
                return Err(invalid(&name, field, "must be set"));
            }
        }
        if !(1200..=3300).contains(&config.token_refresh_secs) {
            return Err(invalid(
                &name,
                "token_refresh_secs",
                "must be within 1200..=3300 (Apple: not more often than every 20 min, \
                 never older than 1 h)",
            ));
        }
        let priority = config
            .priority
            .unwrap_or(if config.push_type == "alert" { 10 } else { 5 });
        if ![1, 5, 10].contains(&priority) {
            return Err(invalid(&name, "priority", "must be 1, 5 or 10"));
        }
        let base = url::Url::parse(&config.base_url)
            .map_err(|e| invalid(&name, "base_url", e.to_string()))?;
        let (timeout, connect_timeout) =
            check_timeouts(&name, config.request_timeout_ms, config.connect_timeout_ms)?;
        if !matches!(base.scheme(), "https" | "http") {
            return Err(invalid(
                &name,
                "base_url",
                format!(
                    "scheme {}: want https (or http for h2c test peers)",
                    base.scheme()
                ),
            ));
        }
        // HTTP/2 only. Over cleartext (`http://`, test peers) this is h2c with prior knowledge,
        // there being no ALPN; over TLS reqwest then offers only `h2` in ALPN, so a server that
        // cannot speak HTTP/2 fails the handshake instead of silently getting HTTP/1.1.
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .http2_prior_knowledge()
            // Apple suggests HTTP/2 PINGs to check a long-lived connection's health.
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true)
            .build()
            .map_err(|e| invalid(&name, "http_client", e.to_string()))?;
        Ok(Self {
            device_url: format!("{}/3/device/", base.as_str().trim_end_matches('/')),
            name,
            http,
            team_id: config.team_id.clone(),
            key_id: config.key_id.clone(),
            key,
            topic: config.topic.clone(),
            push_type: config.push_type.clone(),
            priority,
            expiration_secs: config.expiration_secs,
            token_refresh: Duration::from_secs(config.token_refresh_secs),
            token: parking_lot::Mutex::new(None),
            tokens_signed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Provider tokens signed so far (tests, metrics).
    pub fn tokens_signed(&self) -> u64 {
        self.tokens_signed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The provider token to use: the cached one while younger than `token_refresh`, else a
    /// fresh one. `stale` names a token APNs just refused: it is replaced unless another send
    /// replaced it already (so a burst of 403s re-signs once).
    fn provider_token(&self, stale: Option<&str>) -> Result<Arc<str>, jsonwebtoken::errors::Error> {
        let mut current = self.token.lock();
        if let Some(token) = current.as_ref()
            && token.signed_at.elapsed() < self.token_refresh
            && stale.is_none_or(|s| *token.jwt != *s)
        {
            return Ok(token.jwt.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = ProviderClaims {
            iss: &self.team_id,
            iat: unix_now(),
        };
        let jwt: Arc<str> = jsonwebtoken::encode(&header, &claims, &self.key)?.into();
        self.tokens_signed
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *current = Some(ProviderToken {
            jwt: jwt.clone(),
            signed_at: Instant::now(),
        });
        Ok(jwt)
    }

    fn payload(attempt: &Attempt<'_>) -> Result<serde_json::Value, &'static str> {
        let push = attempt.content.push.as_ref().ok_or("no push content")?;
        let mut payload = serde_json::Map::new();
        // Custom keys sit beside `aps`; one named `aps` would clobber Apple's dictionary.
        for (key, value) in &push.data {
            if key != "aps" {
                payload.insert(key.clone(), serde_json::Value::String(value.clone()));
            }
        }
        payload.insert(
            ATTEMPT_ID_DATA_KEY.to_owned(),
            serde_json::Value::String(attempt.attempt_id.to_owned()),
        );
        payload.insert(
            "aps".to_owned(),
            serde_json::json!({"alert": {"title": push.title, "body": push.body}}),
        );
        Ok(serde_json::Value::Object(payload))
    }

    async fn post(
        &self,
        jwt: &str,
        device_token: &str,
        apns_id: &str,
        body: &[u8],
    ) -> Result<Reply, Outcome> {
        let expiration = if self.expiration_secs == 0 {
            0
        } else {
            unix_now() + self.expiration_secs
        };
        let response = self
            .http
            .post(format!("{}{device_token}", self.device_url))
            .header(reqwest::header::AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", &self.push_type)
            .header("apns-priority", self.priority.to_string())
            .header("apns-expiration", expiration.to_string())
            .header("apns-id", apns_id)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_vec())
            .send()
            .await
            .map_err(transport_outcome)?;
        let status = response.status().as_u16();
        let headers = response.headers();
        let retry_after = headers
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let echoed_id = headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response.bytes().await.map_err(transport_outcome)?;
        #[derive(Deserialize)]
        struct ErrorBody {
            reason: String,
        }
        let reason = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.reason)
            .unwrap_or_default();
        Ok(Reply {
            status,
            reason,
            retry_after,
            echoed_id,
        })
    }
}

struct Reply {
    status: u16,
    reason: String,
    retry_after: Option<Duration>,
    echoed_id: Option<String>,
}

/// A UUID (RFC 9562 version 8, "custom") from the attempt id: SHA-256, first 16 bytes, with the
/// version and variant bits set. The same attempt id always gives the same `apns-id`.
pub fn apns_id_for(attempt_id: &str) -> String {
    let digest = Sha256::digest(attempt_id.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&digest[..16]);
    b[6] = (b[6] & 0x0f) | 0x80;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn is_provider_token_error(reason: &str) -> bool {
    matches!(reason, "ExpiredProviderToken" | "InvalidProviderToken")
}

#[async_trait]
impl Provider for ApnsProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "apns"
    }

    fn channel(&self) -> Channel {
        Channel::Push
    }

    async fn send(&self, attempt: Attempt<'_>) -> Outcome {
        if attempt.channel != Channel::Push {
            return Outcome::rejected("apns sends push only");
        }
        // A token that is not plain hex would change the URL path; APNs calls it bad anyway.
        if attempt.to.is_empty() || !attempt.to.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Outcome::Rejected {
                reason: "apns BadDeviceToken (not hex)".to_owned(),
                contact_invalid: true,
            };
        }
        let body = match Self::payload(&attempt) {
            Ok(payload) => payload.to_string().into_bytes(),
            Err(reason) => return Outcome::rejected(reason),
        };
        let apns_id = apns_id_for(attempt.attempt_id);
        let mut stale: Option<Arc<str>> = None;
        // At most two rounds: the second only after an expired/invalid provider token.
        for round in 0..2 {
            let jwt = match self.provider_token(stale.as_deref()) {
                Ok(jwt) => jwt,
                Err(e) => return Outcome::unavailable(format!("apns signing: {e}")),
            };
            let reply = match self.post(&jwt, attempt.to, &apns_id, &body).await {
                Ok(reply) => reply,
                Err(outcome) => return outcome,
            };
            if reply.status == 403 && round == 0 && is_provider_token_error(&reply.reason) {
                tracing::debug!(provider = %self.name, attempt = attempt.attempt_id, reason = %reply.reason, "apns: re-signing the provider token once");
                stale = Some(jwt);
                continue;
            }
            let outcome = classify(&reply, &apns_id);
            if matches!(outcome, Outcome::Accepted { .. }) {
                tracing::debug!(provider = %self.name, attempt = attempt.attempt_id, apns_id = %apns_id, "apns accepted");
            }
            return outcome;
        }
        Outcome::rejected("apns provider token refused after re-signing")
    }
}

/// Classifies APNs's answer (the first provider-token 403 is handled by `send`).
fn classify(reply: &Reply, apns_id: &str) -> Outcome {
    let reason = format!("apns {} {}", reply.status, reply.reason);
    let retry_after = reply.retry_after;
    match (reply.status, reply.reason.as_str()) {
        (200, _) => Outcome::Accepted {
            provider_message_id: reply
                .echoed_id
                .clone()
                .unwrap_or_else(|| apns_id.to_owned()),
            delivered: false,
            read: false,
        },
        // The token is dead (app uninstalled, token expired) or was never valid, or belongs to
        // another app: suppress it.
        (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => Outcome::Rejected {
            reason,
            contact_invalid: true,
        },
        // Too many notifications to one device, or too many token updates; the service itself
        // is down or shutting down (503 Shutdown: reconnect).
        (429, _) | (500..=599, _) => Outcome::Unavailable {
            reason,
            retry_after,
        },
        _ => Outcome::Rejected {
            reason,
            contact_invalid: false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_id_is_a_stable_uuid() {
        let a = apns_id_for("att-1");
        assert_eq!(a, apns_id_for("att-1"));
        assert_ne!(a, apns_id_for("att-2"));
        assert_eq!(a.len(), 36);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(
            groups.iter().map(|g| g.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(groups[2].starts_with('8'), "version 8: {a}");
        assert!(
            matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'),
            "variant: {a}"
        );
    }

    fn reply(status: u16, reason: &str) -> Reply {
        Reply {
            status,
            reason: reason.to_owned(),
            retry_after: None,
            echoed_id: None,
        }
    }

    #[test]
    fn classifies_apns_reasons() {
        let dead = |status, reason| {
            matches!(
                classify(&reply(status, reason), "id"),
                Outcome::Rejected {
                    contact_invalid: true,
                    ..
                }
            )
        };
        assert!(dead(410, "Unregistered"));
        assert!(dead(410, "ExpiredToken"));
        assert!(dead(400, "BadDeviceToken"));
        assert!(!dead(400, "BadTopic"));
        assert!(!dead(413, "PayloadTooLarge"));
        assert!(matches!(
            classify(&reply(429, "TooManyRequests"), "id"),
            Outcome::Unavailable { .. }
        ));
        assert!(matches!(
            classify(&reply(503, "ServiceUnavailable"), "id"),
            Outcome::Unavailable { .. }
        ));
        assert_eq!(
            classify(&reply(200, ""), "id"),
            Outcome::Accepted {
                provider_message_id: "id".to_owned(),
                delivered: false,
                read: false
            }
        );
    }
}
