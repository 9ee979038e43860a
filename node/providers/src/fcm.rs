//! # fcm: Firebase Cloud Messaging, HTTP v1 API
//!
//! Owns one FCM account: the service-account credentials, the OAuth 2 access token minted from
//! them (cached, refreshed a few minutes before expiry, one refresh at a time), and the
//! classification of FCM's answers into [`Outcome`]s.
//!
//! Flow: a self-signed RS256 JWT (the service account's key) is exchanged at the token endpoint
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`) for a bearer access token; each
//! attempt is one `POST {base}/v1/projects/{project}/messages:send`.
//!
//! FCM has no idempotency header: a re-sent message may be shown twice. Every message therefore
//! carries the attempt id as data key [`ATTEMPT_ID_DATA_KEY`] so the client app can drop
//! duplicates.
//!
//! This module must never log push tokens, titles, bodies, data values or credentials (attempt
//! ids and FCM message names only), and never retry beyond the one re-send after a 401 (the
//! node's retry and failover policy decides the rest).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use herald_proto::v1::Channel;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::{Attempt, ConfigError, Outcome, Provider};

/// Data key carrying the attempt id in every FCM message (client-side de-duplication).
pub const ATTEMPT_ID_DATA_KEY: &str = "herald_attempt_id";

/// The OAuth scope FCM sends need.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Lifetime asked for in the assertion; Google accepts at most one hour.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(3600);
/// Refresh the access token this long before it expires (at most half its lifetime).
const REFRESH_MARGIN: Duration = Duration::from_secs(300);
/// Google issues one-hour tokens; never trust one for longer than a day.
const MAX_TOKEN_LIFETIME_SECS: u64 = 86_400;

/// A secret given inline in the configuration (a private key, a service-account JSON). Its
/// `Debug` output is redacted so that printing a config never leaks it.
#[derive(Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct InlineSecret(pub String);

impl fmt::Debug for InlineSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InlineSecret(<redacted>)")
    }
}

/// One FCM (HTTP v1) account.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// Path to the Google service-account JSON key file (fields used: `project_id`,
    /// `client_email`, `private_key`, `token_uri`). Exactly one of this and
    /// `service_account_json` must be set.
    #[serde(default)]
    pub service_account_path: Option<PathBuf>,
    /// The service-account JSON itself, inline (e.g. from a secret store). Exactly one of this
    /// and `service_account_path` must be set.
    #[serde(default)]
    pub service_account_json: Option<InlineSecret>,
    /// FCM API base URL, without a trailing path.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// OAuth token endpoint override. Default: the service account's `token_uri`.
    #[serde(default)]
    pub token_url: Option<String>,
    /// OAuth scope requested for the access token.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Whole-request deadline for one FCM call (and one token exchange), in milliseconds. A
    /// request that went out but got no answer within it is reported `Ambiguous`.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// TCP+TLS connect deadline, in milliseconds; must be below `request_timeout_ms` so that a
    /// connect failure (nothing sent: `Unavailable`) is never mistaken for a lost answer.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

fn default_base_url() -> String {
    "https://fcm.googleapis.com".to_owned()
}

fn default_scope() -> String {
    FCM_SCOPE.to_owned()
}

pub(crate) fn default_request_timeout_ms() -> u64 {
    10_000
}

pub(crate) fn default_connect_timeout_ms() -> u64 {
    3_000
}

/// The fields of a Google service-account key file this adapter reads (the file has more).
#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    client_email: String,
    private_key: String,
    #[serde(default)]
    private_key_id: Option<String>,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    DEFAULT_TOKEN_URI.to_owned()
}

/// A cached OAuth access token.
#[derive(Clone)]
struct AccessToken {
    value: Arc<str>,
    /// When to stop using it and fetch another (a margin before its real expiry).
    refresh_at: Instant,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
}

/// Why no access token could be had. Nothing was sent to FCM in any of these cases.
#[derive(Debug, thiserror::Error)]
enum AuthError {
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    #[error("token endpoint answered {status}: {error}")]
    Refused { status: u16, error: String },
    #[error("token endpoint answer unreadable: {0}")]
    Malformed(String),
    #[error("signing the assertion: {0}")]
    Signing(String),
    #[error("{0} (refresh failed while this send waited)")]
    JustFailed(String),
}

/// The FCM HTTP v1 adapter. Cheap to share behind an `Arc`; concurrent sends share one access
/// token and one connection pool.
pub struct FcmProvider {
    name: String,
    http: reqwest::Client,
    send_url: String,
    token_url: String,
    scope: String,
    client_email: String,
    key_id: Option<String>,
    key: EncodingKey,
    /// Fast path: the current token, read without waiting.
    current: parking_lot::Mutex<Option<AccessToken>>,
    /// Held while a refresh is in flight so that concurrent sends wait for that one refresh
    /// instead of each minting their own.
    refreshing: tokio::sync::Mutex<()>,
    /// The last failed refresh, so that sends queued behind it fail at once.
    last_failure: parking_lot::Mutex<Option<(Instant, String)>>,
    token_fetches: std::sync::atomic::AtomicU64,
}

impl fmt::Debug for FcmProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FcmProvider")
            .field("name", &self.name)
            .field("send_url", &self.send_url)
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

/// Builds the shared HTTP client settings (timeouts) and validates them.
pub(crate) fn check_timeouts(
    account: &str,
    request_timeout_ms: u64,
    connect_timeout_ms: u64,
) -> Result<(Duration, Duration), ConfigError> {
    if request_timeout_ms == 0 {
        return Err(invalid(account, "request_timeout_ms", "must be > 0"));
    }
    if connect_timeout_ms == 0 || connect_timeout_ms >= request_timeout_ms {
        return Err(invalid(
            account,
            "connect_timeout_ms",
            "must be > 0 and below request_timeout_ms",
        ));
    }
    Ok((
        Duration::from_millis(request_timeout_ms),
        Duration::from_millis(connect_timeout_ms),
    ))
}

impl FcmProvider {
    /// Builds the adapter: reads and checks the service account and the key. Makes no network
    /// call (the first send fetches the access token).
    pub async fn new(name: impl Into<String>, config: &FcmConfig) -> Result<Self, ConfigError> {
        let name = name.into();
        let raw = match (&config.service_account_path, &config.service_account_json) {
            (Some(path), None) => tokio::fs::read_to_string(path).await.map_err(|e| {
                invalid(
                    &name,
                    "service_account_path",
                    format!("{}: {e}", path.display()),
                )
            })?,
            (None, Some(json)) => json.0.clone(),
            _ => {
                return Err(invalid(
                    &name,
                    "service_account_path",
                    "set exactly one of service_account_path and service_account_json",
                ));
            }
        };
        let account: ServiceAccount = serde_json::from_str(&raw).map_err(|e| {
            // serde's "invalid type" messages quote the offending value, which could be key
            // material: only missing-field messages and positions are passed on.
            let problem = if e.to_string().starts_with("missing field") {
                e.to_string()
            } else {
                format!(
                    "not a service-account JSON ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                )
            };
            invalid(&name, "service_account", problem)
        })?;
        if account.project_id.is_empty() || account.client_email.is_empty() {
            return Err(invalid(
                &name,
                "service_account",
                "project_id and client_email must be set",
            ));
        }
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes()).map_err(|e| {
            invalid(
                &name,
                "service_account.private_key",
                format!("not an RSA PEM key: {e}"),
            )
        })?;
        let base = url::Url::parse(&config.base_url)
            .map_err(|e| invalid(&name, "base_url", e.to_string()))?;
        let token_url = config.token_url.clone().unwrap_or(account.token_uri);
        url::Url::parse(&token_url).map_err(|e| invalid(&name, "token_url", e.to_string()))?;
        let (timeout, connect_timeout) =
            check_timeouts(&name, config.request_timeout_ms, config.connect_timeout_ms)?;
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(connect_timeout)
            .build()
            .map_err(|e| invalid(&name, "http_client", e.to_string()))?;
        let send_url = format!(
            "{}/v1/projects/{}/messages:send",
            base.as_str().trim_end_matches('/'),
            account.project_id
        );
        Ok(Self {
            name,
            http,
            send_url,
            token_url,
            scope: config.scope.clone(),
            client_email: account.client_email,
            key_id: account.private_key_id,
            key,
            current: parking_lot::Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            last_failure: parking_lot::Mutex::new(None),
            token_fetches: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Access tokens fetched from the token endpoint so far (tests, metrics).
    pub fn token_fetches(&self) -> u64 {
        self.token_fetches
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    fn cached_token(&self) -> Option<Arc<str>> {
        let current = self.current.lock();
        current
            .as_ref()
            .filter(|t| Instant::now() < t.refresh_at)
            .map(|t| t.value.clone())
    }

    /// The access token to use: the cached one while fresh, else one fresh from the token
    /// endpoint. `stale` names a token FCM just refused: it is never handed out again.
    async fn access_token(&self, stale: Option<&str>) -> Result<Arc<str>, AuthError> {
        let usable = |t: &Arc<str>| stale.is_none_or(|s| &**t != s);
        if let Some(token) = self.cached_token().filter(usable) {
            return Ok(token);
        }
        let queued_at = Instant::now();
        let _single_flight = self.refreshing.lock().await;
        // Whoever held the lock before us may have refreshed already.
        if let Some(token) = self.cached_token().filter(usable) {
            return Ok(token);
        }
        // Or failed to, while we queued: a burst of sends behind a dead token endpoint must
        // not each wait out a timeout of their own, one after the other.
        if let Some((at, error)) = self.last_failure.lock().as_ref()
            && *at >= queued_at
        {
            return Err(AuthError::JustFailed(error.clone()));
        }
        match self.fetch_token().await {
            Ok(fresh) => {
                let value = fresh.value.clone();
                *self.current.lock() = Some(fresh);
                *self.last_failure.lock() = None;
                Ok(value)
            }
            Err(e) => {
                *self.last_failure.lock() = Some((Instant::now(), e.to_string()));
                Err(e)
            }
        }
    }

    fn assertion(&self) -> Result<String, AuthError> {
        let iat = unix_now();
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: &self.scope,
            aud: &self.token_url,
            iat,
            exp: iat + ASSERTION_LIFETIME.as_secs(),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| AuthError::Signing(e.to_string()))
    }

    async fn fetch_token(&self) -> Result<AccessToken, AuthError> {
        let assertion = self.assertion()?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_BEARER_GRANT)
            .append_pair("assertion", &assertion)
            .finish();
        self.token_fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let started = Instant::now();
        let response = self
            .http
            .post(&self.token_url)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form)
            .send()
            .await
            .map_err(|e| AuthError::Transport(error_chain(&e.without_url())))?;
        let status = response.status();
        let body = response
            .bytes()
            .await
            .map_err(|e| AuthError::Transport(error_chain(&e.without_url())))?;
        if !status.is_success() {
            // OAuth error bodies are `{"error":"invalid_grant","error_description":"..."}`;
            // they name the problem, not the key.
            let error = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    let code = v.get("error")?.as_str()?.to_owned();
                    let detail = v
                        .get("error_description")
                        .and_then(|d| d.as_str())
                        .unwrap_or_default();
                    Some(format!("{code} {detail}").trim().to_owned())
                })
                .unwrap_or_else(|| "unreadable error body".to_owned());
            return Err(AuthError::Refused {
                status: status.as_u16(),
                error,
            });
        }
        let token: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if token.access_token.is_empty() {
            return Err(AuthError::Malformed("empty access_token".to_owned()));
        }
        // Capped: a wild `expires_in` must neither overflow `Instant` nor pin a token forever.
        let lifetime = Duration::from_secs(token.expires_in.min(MAX_TOKEN_LIFETIME_SECS));
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        tracing::debug!(provider = %self.name, expires_in = token.expires_in, "fcm access token fetched");
        Ok(AccessToken {
            value: token.access_token.into(),
            // Count the lifetime from when we asked: the token cannot outlive that.
            refresh_at: started + lifetime - margin,
        })
    }

    fn message_body(attempt: &Attempt<'_>) -> Result<serde_json::Value, &'static str> {
        let push = attempt.content.push.as_ref().ok_or("no push content")?;
        let mut data: BTreeMap<&str, &str> = push
            .data
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        data.insert(ATTEMPT_ID_DATA_KEY, attempt.attempt_id);
        Ok(serde_json::json!({
            "message": {
                "token": attempt.to,
                "notification": { "title": push.title, "body": push.body },
                "data": data,
            }
        }))
    }

    async fn post(&self, token: &str, body: &serde_json::Value) -> Result<Reply, Outcome> {
        let response = self
            .http
            .post(&self.send_url)
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .map_err(transport_outcome)?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        // The status line is in; a body lost now still leaves the message's fate unknown
        // for a 200, so a failed body read is ambiguous.
        let body = response.bytes().await.map_err(transport_outcome)?;
        Ok(Reply {
            status,
            retry_after,
            body,
        })
    }
}

struct Reply {
    status: u16,
    retry_after: Option<Duration>,
    body: bytes::Bytes,
}

#[async_trait]
impl Provider for FcmProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "fcm"
    }

    fn channel(&self) -> Channel {
        Channel::Push
    }

    async fn send(&self, attempt: Attempt<'_>) -> Outcome {
        if attempt.channel != Channel::Push {
            return Outcome::rejected("fcm sends push only");
        }
        if attempt.to.is_empty() {
            return Outcome::Rejected {
                reason: "empty push token".to_owned(),
                contact_invalid: true,
            };
        }
        let body = match Self::message_body(&attempt) {
            Ok(body) => body,
            Err(reason) => return Outcome::rejected(reason),
        };
        let mut stale: Option<Arc<str>> = None;
        // At most two rounds: the second only after a 401 with a token we then replaced.
        for round in 0..2 {
            let token = match self.access_token(stale.as_deref()).await {
                Ok(token) => token,
                // Nothing reached FCM; another account (failover) or a later try may work.
                Err(e) => return Outcome::unavailable(format!("fcm auth: {e}")),
            };
            let reply = match self.post(&token, &body).await {
                Ok(reply) => reply,
                Err(outcome) => return outcome,
            };
            if reply.status == 401 && round == 0 {
                tracing::debug!(provider = %self.name, attempt = attempt.attempt_id, "fcm 401: refreshing the access token once");
                stale = Some(token);
                continue;
            }
            let outcome = classify(reply.status, &reply.body, reply.retry_after);
            if let Outcome::Accepted {
                provider_message_id,
                ..
            } = &outcome
            {
                tracing::debug!(provider = %self.name, attempt = attempt.attempt_id, fcm_message = %provider_message_id, "fcm accepted");
            }
            return outcome;
        }
        Outcome::unavailable("fcm: 401 after refreshing the access token")
    }
}

/// FCM's error body: `{"error":{"code":404,"message":"...","status":"NOT_FOUND",
/// "details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError",
/// "errorCode":"UNREGISTERED"}]}}`.
#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ErrorStatus,
}

#[derive(Deserialize, Default)]
struct ErrorStatus {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<ErrorDetail>,
}

#[derive(Deserialize, Default)]
struct ErrorDetail {
    #[serde(rename = "@type", default)]
    kind: String,
    #[serde(rename = "errorCode", default)]
    error_code: Option<String>,
    #[serde(rename = "fieldViolations", default)]
    field_violations: Vec<FieldViolation>,
}

#[derive(Deserialize, Default)]
struct FieldViolation {
    #[serde(default)]
    field: String,
}

impl ErrorStatus {
    /// The FCM-specific error code (`UNREGISTERED`, `SENDER_ID_MISMATCH`, ...), else the
    /// generic gRPC status (`NOT_FOUND`, ...).
    fn code(&self) -> &str {
        self.details
            .iter()
            .filter(|d| d.kind.ends_with("google.firebase.fcm.v1.FcmError"))
            .find_map(|d| d.error_code.as_deref())
            .unwrap_or(&self.status)
    }

    /// True when an INVALID_ARGUMENT is about the registration token rather than the payload:
    /// FCM then adds a `google.rpc.BadRequest` detail with a violation on `message.token`.
    fn blames_token(&self) -> bool {
        self.details
            .iter()
            .flat_map(|d| &d.field_violations)
            .any(|v| v.field == "message.token")
            || self
                .message
                .to_ascii_lowercase()
                .contains("registration token")
    }
}

/// Classifies FCM's answer to a send (never called for the first 401; see `send`).
fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Outcome {
    if status == 200 {
        #[derive(Deserialize)]
        struct Sent {
            name: String,
        }
        return match serde_json::from_slice::<Sent>(body) {
            Ok(sent) => Outcome::Accepted {
                provider_message_id: sent.name,
                delivered: false,
                read: false,
            },
            // 200 means FCM took it; only the message name is missing.
            Err(_) => Outcome::Accepted {
                provider_message_id: String::new(),
                delivered: false,
                read: false,
            },
        };
    }
    let error = serde_json::from_slice::<ErrorBody>(body)
        .unwrap_or_default()
        .error;
    let code = error.code();
    let reason = format!("fcm {status} {code}");
    match (status, code) {
        // The app was uninstalled or the token expired: suppress the token. A bare 404
        // NOT_FOUND without this code is not proof the token is dead (falls through below).
        (_, "UNREGISTERED") => Outcome::Rejected {
            reason,
            contact_invalid: true,
        },
        // The token belongs to another Firebase project's sender: it can never work for this
        // account, so it is treated as a dead contact point for us.
        (_, "SENDER_ID_MISMATCH") => Outcome::Rejected {
            reason,
            contact_invalid: true,
        },
        (_, "INVALID_ARGUMENT") | (400, _) => Outcome::Rejected {
            reason,
            contact_invalid: error.blames_token(),
        },
        (429, _) | (_, "QUOTA_EXCEEDED") => Outcome::Unavailable {
            reason,
            retry_after,
        },
        // FCM could not reach APNs/web push with the project's credentials, or our service
        // account lacks permission: an account problem, not this message's; failover may help.
        (401 | 403, _) | (_, "THIRD_PARTY_AUTH_ERROR") => Outcome::Unavailable {
            reason,
            retry_after,
        },
        (500..=599, _) => Outcome::Unavailable {
            reason,
            retry_after,
        },
        _ => Outcome::Rejected {
            reason,
            contact_invalid: false,
        },
    }
}

/// Classifies a transport error: nothing sent (connect failed) is `Unavailable`; a request that
/// went out without an answer (timeout, connection lost) is `Ambiguous`.
pub(crate) fn transport_outcome(error: reqwest::Error) -> Outcome {
    // The URL may hold a contact point (APNs puts the device token in the path).
    let error = error.without_url();
    let chain = error_chain(&error);
    if error.is_connect() {
        Outcome::unavailable(format!("connect: {chain}"))
    } else if error.is_builder() {
        Outcome::rejected(format!("request: {chain}"))
    } else if error.is_timeout() {
        Outcome::Ambiguous {
            reason: format!("timeout: {chain}"),
        }
    } else if refused_unprocessed(&chain) {
        Outcome::unavailable(format!("refused: {chain}"))
    } else {
        Outcome::Ambiguous {
            reason: format!("transport: {chain}"),
        }
    }
}

/// True when an HTTP/2 server reset the stream with REFUSED_STREAM, which by RFC 9113 §8.7
/// guarantees the request was not processed (safe to re-send: `Unavailable`, not `Ambiguous`).
/// h2 is reached only through reqwest's error chain, hence the match on its reason text.
fn refused_unprocessed(chain: &str) -> bool {
    chain.contains("refused stream before processing any application logic")
}

/// The error and its sources on one line. Callers strip the URL first (`without_url`).
pub(crate) fn error_chain(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut out = error.to_string();
    let mut source = error.source();
    // Bounded: error chains are short, but never trust that.
    for _ in 0..8 {
        let Some(s) = source else { break };
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Parses `Retry-After`: delay-seconds or an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
/// A date in the past gives zero; anything else unreadable gives `None`.
pub(crate) fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_imf_fixdate(value)?;
    let now = now.duration_since(UNIX_EPOCH).ok()?.as_secs();
    Some(Duration::from_secs(at.saturating_sub(now)))
}

/// `Sun, 06 Nov 1994 08:49:37 GMT` → seconds since the Unix epoch.
fn parse_imf_fixdate(value: &str) -> Option<u64> {
    let rest = value.split_once(", ")?.1;
    let mut parts = rest.split(' ');
    let day: u64 = parts.next()?.parse().ok()?;
    let month = match parts.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = parts.next()?.parse().ok()?;
    let mut hms = parts.next()?.split(':');
    let h: u64 = hms.next()?.parse().ok()?;
    let m: u64 = hms.next()?.parse().ok()?;
    let s: u64 = hms.next()?.parse().ok()?;
    if parts.next()? != "GMT" || !(1..=31).contains(&day) || h > 23 || m > 59 || s > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let days = u64::try_from(days).ok()?;
    Some(days * 86_400 + h * 3600 + m * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_imf_fixdate("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_imf_fixdate("Sat, 29 Feb 2020 12:00:00 GMT"),
            Some(1_582_977_600)
        );
    }

    fn fcm_error(status: &str, code: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"error": {
            "code": 0, "message": "m", "status": status,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
        }}))
        .expect("json")
    }

    #[test]
    fn classifies_real_error_bodies() {
        let unregistered = classify(404, &fcm_error("NOT_FOUND", "UNREGISTERED"), None);
        assert!(matches!(
            unregistered,
            Outcome::Rejected {
                contact_invalid: true,
                ..
            }
        ));
        let mismatch = classify(
            403,
            &fcm_error("PERMISSION_DENIED", "SENDER_ID_MISMATCH"),
            None,
        );
        assert!(matches!(
            mismatch,
            Outcome::Rejected {
                contact_invalid: true,
                ..
            }
        ));
        let quota = classify(
            429,
            &fcm_error("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"),
            Some(Duration::from_secs(7)),
        );
        assert_eq!(
            quota,
            Outcome::Unavailable {
                reason: "fcm 429 QUOTA_EXCEEDED".to_owned(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
        let bad_payload = classify(
            400,
            &fcm_error("INVALID_ARGUMENT", "INVALID_ARGUMENT"),
            None,
        );
        assert!(matches!(
            bad_payload,
            Outcome::Rejected {
                contact_invalid: false,
                ..
            }
        ));
        let bad_token = serde_json::json!({"error": {"code": 400, "message": "The registration token is not a valid FCM registration token", "status": "INVALID_ARGUMENT", "details": [
            {"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "INVALID_ARGUMENT"},
            {"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}]}
        ]}});
        let bad_token = classify(400, &serde_json::to_vec(&bad_token).expect("json"), None);
        assert!(matches!(
            bad_token,
            Outcome::Rejected {
                contact_invalid: true,
                ..
            }
        ));
        let bare_404 = br#"{"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND"}}"#;
        assert!(matches!(
            classify(404, bare_404, None),
            Outcome::Rejected {
                contact_invalid: false,
                ..
            }
        ));
        assert!(matches!(
            classify(503, b"<html>", None),
            Outcome::Unavailable { .. }
        ));
        assert_eq!(
            classify(200, br#"{"name":"projects/p/messages/1"}"#, None),
            Outcome::Accepted {
                provider_message_id: "projects/p/messages/1".to_owned(),
                delivered: false,
                read: false
            }
        );
    }

    fn inline_config(json: &str) -> FcmConfig {
        FcmConfig {
            service_account_path: None,
            service_account_json: Some(InlineSecret(json.to_owned())),
            base_url: default_base_url(),
            token_url: None,
            scope: default_scope(),
            request_timeout_ms: default_request_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }

    #[tokio::test]
    async fn config_errors_name_the_field_never_the_key() {
        let missing = FcmProvider::new("a", &inline_config(r#"{"client_email":"x"}"#))
            .await
            .expect_err("missing project_id");
        assert!(
            missing.to_string().contains("missing field `project_id`"),
            "{missing}"
        );
        let pasted_key = FcmProvider::new("a", &inline_config(r#""-----BEGIN PRIVATE KEY-----""#))
            .await
            .expect_err("a bare string");
        assert!(!pasted_key.to_string().contains("BEGIN"), "{pasted_key}");
        let mut both = inline_config("{}");
        both.service_account_path = Some("/nonexistent".into());
        assert!(FcmProvider::new("a", &both).await.is_err());
        assert!(check_timeouts("a", 1000, 1000).is_err());
        assert!(check_timeouts("a", 1000, 500).is_ok());
    }

    #[test]
    fn refused_stream_means_not_processed() {
        assert!(refused_unprocessed(
            "error sending request: http2 error: stream error received: refused stream before \
             processing any application logic"
        ));
        assert!(!refused_unprocessed(
            "error sending request: connection closed before message completed"
        ));
    }

    #[test]
    fn inline_secret_is_redacted() {
        let secret = InlineSecret("-----BEGIN PRIVATE KEY-----".to_owned());
        assert_eq!(format!("{secret:?}"), "InlineSecret(<redacted>)");
    }
}
