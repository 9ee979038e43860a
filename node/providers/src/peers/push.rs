//! # peers::push: fake FCM (with its OAuth token endpoint) and APNs servers on loopback
//!
//! [`FcmPeer`] serves, on one HTTP listener, a Google-style OAuth token endpoint (`POST
//! /token`, verifying the RS256 JWT-bearer assertion with the service account's public key) and
//! the FCM HTTP v1 send endpoint (`POST /v1/projects/{project}/messages:send`) with FCM's real
//! success and error bodies. [`ApnsPeer`] serves the APNs provider API (`POST
//! /3/device/{token}`) over h2c (HTTP/2 with prior knowledge; HTTP/1 requests are refused with
//! 505, as APNs speaks only HTTP/2), verifying the ES256 provider token.
//!
//! Both keep a receive log ([`Received`]) and share the fault knobs of [`PushFaults`]
//! (unregistered and bad tokens, throttling, 503s, slow answers). They exist for tests, demos
//! and benchmarks only: the keys in [`test_keys`] are public test fixtures and must never
//! protect anything real.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::json;

/// Test-only key pairs (committed fixtures under `node/providers/tests/fixtures/`). Public
/// knowledge: never use them for anything but talking to these peers.
pub mod test_keys {
    /// RSA 2048 PKCS#8 private key of the fake FCM service account.
    pub const FCM_PRIVATE_KEY_PEM: &str =
        include_str!("../../tests/fixtures/test-only-fcm-service-account-key.pem");
    /// Its public key (SPKI PEM), with which [`super::FcmPeer`] verifies assertions.
    pub const FCM_PUBLIC_KEY_PEM: &str =
        include_str!("../../tests/fixtures/test-only-fcm-service-account-pub.pem");
    /// P-256 PKCS#8 private key in Apple's `.p8` format, for the fake APNs team.
    pub const APNS_PRIVATE_KEY_P8: &str =
        include_str!("../../tests/fixtures/test-only-apns-auth-key.p8");
    /// Its public key (SPKI PEM), with which [`super::ApnsPeer`] verifies provider tokens.
    pub const APNS_PUBLIC_KEY_PEM: &str =
        include_str!("../../tests/fixtures/test-only-apns-auth-pub.pem");
}

/// Largest request body the peers read.
const BODY_LIMIT: usize = 64 * 1024;
/// APNs refuses payloads over 4 KiB.
const APNS_PAYLOAD_LIMIT: usize = 4096;
/// APNs refuses provider tokens older than one hour.
const APNS_TOKEN_MAX_AGE: u64 = 3600;

/// Which endpoint a logged request hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PushService {
    /// The OAuth token endpoint of [`FcmPeer`].
    OAuth,
    /// FCM `messages:send`.
    Fcm,
    /// APNs `/3/device/{token}`.
    Apns,
}

/// One request as the peer saw it.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: PushService,
    pub http_version: Version,
    /// The device token (FCM `message.token`, APNs path). Test peer only: real code never logs it.
    pub device_token: Option<String>,
    /// The `herald_attempt_id` the adapter put in the payload.
    pub attempt_id: Option<String>,
    /// The request's `apns-id` header (APNs).
    pub apns_id: Option<String>,
    /// APNs request headers `apns-topic`, `apns-push-type`, `apns-priority`, `apns-expiration`.
    pub apns_headers: HashMap<String, String>,
    /// The JSON body (null for the token endpoint and unreadable bodies).
    pub body: serde_json::Value,
    /// The status the peer answered.
    pub status: u16,
    /// Milliseconds since the peer started, at arrival.
    pub since_start_ms: u64,
}

/// What a device token is registered as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TokenVerdict {
    Unregistered,
    Bad,
    SenderMismatch,
}

#[derive(Default)]
struct FaultState {
    verdicts: HashMap<String, TokenVerdict>,
    throttle_next: u32,
    throttle_retry_after: Duration,
    fail_next: u32,
    delay: Duration,
}

/// Fault knobs and the receive log shared by both peers.
pub struct PushFaults {
    started: Instant,
    state: Mutex<FaultState>,
    log: Mutex<Vec<Received>>,
}

enum Injected {
    Throttle(Duration),
    Fail,
}

impl PushFaults {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            state: Mutex::new(FaultState::default()),
            log: Mutex::new(Vec::new()),
        }
    }

    /// The app was uninstalled: FCM answers 404 UNREGISTERED, APNs 410 Unregistered.
    pub fn unregister(&self, token: &str) {
        self.state
            .lock()
            .verdicts
            .insert(token.to_owned(), TokenVerdict::Unregistered);
    }

    /// A malformed token: FCM answers 400 INVALID_ARGUMENT (on `message.token`), APNs 400
    /// BadDeviceToken.
    pub fn mark_bad_token(&self, token: &str) {
        self.state
            .lock()
            .verdicts
            .insert(token.to_owned(), TokenVerdict::Bad);
    }

    /// FCM only: the token belongs to another sender (403 SENDER_ID_MISMATCH).
    pub fn mark_sender_mismatch(&self, token: &str) {
        self.state
            .lock()
            .verdicts
            .insert(token.to_owned(), TokenVerdict::SenderMismatch);
    }

    /// The next `n` authenticated sends get 429 with `Retry-After: <retry_after secs>`.
    pub fn throttle_next(&self, n: u32, retry_after: Duration) {
        let mut state = self.state.lock();
        state.throttle_next = n;
        state.throttle_retry_after = retry_after;
    }

    /// The next `n` authenticated sends get 503.
    pub fn fail_next(&self, n: u32) {
        self.state.lock().fail_next = n;
    }

    /// Every send (and token request) is answered only after `delay`.
    pub fn set_delay(&self, delay: Duration) {
        self.state.lock().delay = delay;
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.log.lock().clone()
    }

    fn since_start_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn delay(&self) -> Duration {
        self.state.lock().delay
    }

    fn verdict(&self, token: &str) -> Option<TokenVerdict> {
        self.state.lock().verdicts.get(token).copied()
    }

    /// Consumes one injected fault, throttling first.
    fn take_injected(&self) -> Option<Injected> {
        let mut state = self.state.lock();
        if state.throttle_next > 0 {
            state.throttle_next -= 1;
            return Some(Injected::Throttle(state.throttle_retry_after));
        }
        if state.fail_next > 0 {
            state.fail_next -= 1;
            return Some(Injected::Fail);
        }
        None
    }

    fn record(&self, entry: Received) {
        self.log.lock().push(entry);
    }
}

/// Logs the request, waits out the configured delay, then answers (the log entry exists even
/// when the client gave up waiting).
async fn answer(faults: &PushFaults, entry: Received, response: Response) -> Response {
    let delay = faults.delay();
    faults.record(entry);
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    response
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Serves `router` on `listener` until the task is aborted. axum's server (hyper-util's auto
/// builder, with axum's `http2` feature) recognises the HTTP/2 connection preface, so one
/// listener serves HTTP/1.1 and h2c prior-knowledge clients alike.
fn serve(listener: tokio::net::TcpListener, router: Router) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            tracing::warn!(error = %e, "push peer stopped");
        }
    })
}

// ---------------------------------------------------------------------------------------------
// FCM
// ---------------------------------------------------------------------------------------------

/// Settings of a fake FCM project.
#[derive(Clone, Debug)]
pub struct FcmPeerConfig {
    pub project_id: String,
    /// The service account's `client_email`: the only accepted assertion issuer.
    pub client_email: String,
    /// SPKI PEM public key of the service account.
    pub public_key_pem: String,
    /// Lifetime of issued access tokens (`expires_in` is rounded up to whole seconds).
    pub token_lifetime: Duration,
}

impl Default for FcmPeerConfig {
    fn default() -> Self {
        Self {
            project_id: "herald-test".to_owned(),
            client_email: "herald-sender@herald-test.iam.gserviceaccount.com".to_owned(),
            public_key_pem: test_keys::FCM_PUBLIC_KEY_PEM.to_owned(),
            token_lifetime: Duration::from_secs(3600),
        }
    }
}

struct FcmState {
    config: FcmPeerConfig,
    key: DecodingKey,
    token_url: String,
    faults: PushFaults,
    /// Issued access tokens and when each expires.
    access_tokens: Mutex<HashMap<String, Instant>>,
    tokens_issued: AtomicU64,
    messages_sent: AtomicU64,
    /// Token requests still to fail with 503.
    token_failures: Mutex<u32>,
}

/// A fake FCM HTTP v1 API with its OAuth token endpoint, on `127.0.0.1:<port>`.
pub struct FcmPeer {
    addr: SocketAddr,
    state: Arc<FcmState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FcmPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FcmPeer {
    /// Binds an OS-assigned loopback port and serves until dropped.
    pub async fn start(config: FcmPeerConfig) -> std::io::Result<Self> {
        let key = DecodingKey::from_rsa_pem(config.public_key_pem.as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(FcmState {
            config,
            key,
            token_url: format!("http://{addr}/token"),
            faults: PushFaults::new(),
            access_tokens: Mutex::new(HashMap::new()),
            tokens_issued: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            token_failures: Mutex::new(0),
        });
        let router = Router::new()
            .route("/token", post(fcm_token))
            .route("/v1/projects/{project}/messages:send", post(fcm_send))
            .with_state(state.clone());
        let task = serve(listener, router);
        Ok(Self { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The FCM base URL (`FcmConfig::base_url`).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The token endpoint (the service account's `token_uri`).
    pub fn token_url(&self) -> String {
        self.state.token_url.clone()
    }

    /// A service-account JSON for this project whose `token_uri` points at this peer.
    pub fn service_account_json(&self, private_key_pem: &str) -> String {
        json!({
            "type": "service_account",
            "project_id": self.state.config.project_id,
            "private_key_id": "test-only-key",
            "private_key": private_key_pem,
            "client_email": self.state.config.client_email,
            "client_id": "100000000000000000000",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.state.token_url,
        })
        .to_string()
    }

    pub fn faults(&self) -> &PushFaults {
        &self.state.faults
    }

    /// Access tokens issued so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.tokens_issued.load(Ordering::Relaxed)
    }

    /// Messages answered 200 so far.
    pub fn messages_sent(&self) -> u64 {
        self.state.messages_sent.load(Ordering::Relaxed)
    }

    /// The next `n` token requests get 503 (the token endpoint is down).
    pub fn fail_next_token_requests(&self, n: u32) {
        *self.state.token_failures.lock() = n;
    }

    /// Revokes every access token issued so far: the next send with one gets 401.
    pub fn expire_access_tokens(&self) {
        self.state.access_tokens.lock().clear();
    }
}

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
}

fn oauth_error(error: &str, description: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({"error": error, "error_description": description}),
    )
}

async fn fcm_token(State(state): State<Arc<FcmState>>, request: Request) -> Response {
    let since_start_ms = state.faults.since_start_ms();
    let http_version = request.version();
    let body = axum::body::to_bytes(request.into_body(), BODY_LIMIT)
        .await
        .unwrap_or_default();
    let response = issue_token(&state, &body);
    let entry = Received {
        service: PushService::OAuth,
        http_version,
        device_token: None,
        attempt_id: None,
        apns_id: None,
        apns_headers: HashMap::new(),
        body: serde_json::Value::Null,
        status: response.status().as_u16(),
        since_start_ms,
    };
    answer(&state.faults, entry, response).await
}

fn issue_token(state: &FcmState, body: &[u8]) -> Response {
    {
        let mut failures = state.token_failures.lock();
        if *failures > 0 {
            *failures -= 1;
            return json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "internal_failure", "error_description": "Backend Error"}),
            );
        }
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    let grant = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant != "urn:ietf:params:oauth:grant-type:jwt-bearer" {
        return oauth_error(
            "unsupported_grant_type",
            &format!("Invalid grant_type: {grant}"),
        );
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error("invalid_request", "Missing required parameter: assertion");
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[&state.token_url]);
    validation.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
    validation.set_issuer(&[&state.config.client_email]);
    let claims = match jsonwebtoken::decode::<AssertionClaims>(assertion, &state.key, &validation) {
        Ok(data) => data.claims,
        Err(e) => return oauth_error("invalid_grant", &format!("Invalid JWT: {e}")),
    };
    if claims.iss != state.config.client_email {
        return oauth_error("invalid_grant", "Invalid JWT: issuer");
    }
    if !claims.scope.split(' ').any(|s| {
        s == crate::fcm::FCM_SCOPE || s == "https://www.googleapis.com/auth/cloud-platform"
    }) {
        return oauth_error(
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let n = state.tokens_issued.fetch_add(1, Ordering::Relaxed) + 1;
    let token = format!("ya29.test-only-peer-token-{n}");
    let lifetime = state.config.token_lifetime;
    state
        .access_tokens
        .lock()
        .insert(token.clone(), Instant::now() + lifetime);
    let expires_in = lifetime.as_secs() + u64::from(lifetime.subsec_nanos() > 0);
    json_response(
        StatusCode::OK,
        json!({"access_token": token, "expires_in": expires_in, "token_type": "Bearer"}),
    )
}

fn fcm_error(
    status: StatusCode,
    grpc_status: &str,
    message: &str,
    fcm_code: Option<&str>,
    token_violation: bool,
) -> Response {
    let mut details = Vec::new();
    if let Some(code) = fcm_code {
        details.push(json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        }));
    }
    if token_violation {
        details.push(json!({
            "@type": "type.googleapis.com/google.rpc.BadRequest",
            "fieldViolations": [{"field": "message.token", "description": "Invalid registration token"}],
        }));
    }
    let mut error = json!({
        "code": status.as_u16(),
        "message": message,
        "status": grpc_status,
    });
    if !details.is_empty() {
        error["details"] = serde_json::Value::Array(details);
    }
    json_response(status, json!({ "error": error }))
}

async fn fcm_send(
    State(state): State<Arc<FcmState>>,
    Path(project): Path<String>,
    request: Request,
) -> Response {
    let since_start_ms = state.faults.since_start_ms();
    let http_version = request.version();
    let bearer = bearer_token(request.headers());
    let body = axum::body::to_bytes(request.into_body(), BODY_LIMIT)
        .await
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = &json["message"];
    let device_token = message["token"].as_str().map(str::to_owned);
    let attempt_id = message["data"][crate::fcm::ATTEMPT_ID_DATA_KEY]
        .as_str()
        .map(str::to_owned);
    let response = fcm_verdict(&state, &project, bearer.as_deref(), message);
    let entry = Received {
        service: PushService::Fcm,
        http_version,
        device_token,
        attempt_id,
        apns_id: None,
        apns_headers: HashMap::new(),
        body: json,
        status: response.status().as_u16(),
        since_start_ms,
    };
    answer(&state.faults, entry, response).await
}

fn fcm_verdict(
    state: &FcmState,
    project: &str,
    bearer: Option<&str>,
    message: &serde_json::Value,
) -> Response {
    let authorised = bearer.is_some_and(|token| {
        state
            .access_tokens
            .lock()
            .get(token)
            .is_some_and(|expiry| Instant::now() < *expiry)
    });
    if !authorised {
        return fcm_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, \
             login cookie or other valid authentication credential.",
            None,
            false,
        );
    }
    if project != state.config.project_id {
        return fcm_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Permission 'cloudmessaging.messages.create' denied on resource",
            None,
            false,
        );
    }
    match state.faults.take_injected() {
        Some(Injected::Throttle(retry_after)) => {
            let mut response = fcm_error(
                StatusCode::TOO_MANY_REQUESTS,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'Send requests'",
                Some("QUOTA_EXCEEDED"),
                false,
            );
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
            return response;
        }
        Some(Injected::Fail) => {
            return fcm_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "The service is currently unavailable.",
                Some("UNAVAILABLE"),
                false,
            );
        }
        None => {}
    }
    let Some(token) = message["token"].as_str().filter(|t| !t.is_empty()) else {
        return fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Recipient of the message is not set.",
            Some("INVALID_ARGUMENT"),
            false,
        );
    };
    if !message["notification"].is_object() {
        return fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid JSON payload received. Missing notification.",
            Some("INVALID_ARGUMENT"),
            false,
        );
    }
    if let Some(data) = message.get("data")
        && !data
            .as_object()
            .is_some_and(|d| d.values().all(serde_json::Value::is_string))
    {
        return fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "Invalid value at 'message.data': data values must be strings",
            Some("INVALID_ARGUMENT"),
            false,
        );
    }
    match state.faults.verdict(token) {
        Some(TokenVerdict::Unregistered) => fcm_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Requested entity was not found.",
            Some("UNREGISTERED"),
            false,
        ),
        Some(TokenVerdict::Bad) => fcm_error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "The registration token is not a valid FCM registration token",
            Some("INVALID_ARGUMENT"),
            true,
        ),
        Some(TokenVerdict::SenderMismatch) => fcm_error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "SenderId mismatch",
            Some("SENDER_ID_MISMATCH"),
            false,
        ),
        None => {
            let n = state.messages_sent.fetch_add(1, Ordering::Relaxed) + 1;
            json_response(
                StatusCode::OK,
                json!({"name": format!("projects/{project}/messages/0:{n}%test-only")}),
            )
        }
    }
}

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

// ---------------------------------------------------------------------------------------------
// APNs
// ---------------------------------------------------------------------------------------------

/// Settings of a fake APNs team and app.
#[derive(Clone, Debug)]
pub struct ApnsPeerConfig {
    pub team_id: String,
    pub key_id: String,
    /// SPKI PEM public key of the team's signing key.
    pub public_key_pem: String,
    /// The app's bundle id: the only accepted `apns-topic`.
    pub topic: String,
}

impl Default for ApnsPeerConfig {
    fn default() -> Self {
        Self {
            team_id: "HERALDTEAM".to_owned(),
            key_id: "TESTKEY001".to_owned(),
            public_key_pem: test_keys::APNS_PUBLIC_KEY_PEM.to_owned(),
            topic: "com.example.herald".to_owned(),
        }
    }
}

struct ApnsState {
    config: ApnsPeerConfig,
    key: DecodingKey,
    faults: PushFaults,
    /// Every provider token seen, and those declared expired.
    seen_tokens: Mutex<HashSet<String>>,
    expired_tokens: Mutex<HashSet<String>>,
    delivered: AtomicU64,
}

/// A fake APNs provider API over h2c on `127.0.0.1:<port>`.
pub struct ApnsPeer {
    addr: SocketAddr,
    state: Arc<ApnsState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ApnsPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ApnsPeer {
    /// Binds an OS-assigned loopback port and serves h2c until dropped.
    pub async fn start(config: ApnsPeerConfig) -> std::io::Result<Self> {
        let key = DecodingKey::from_ec_pem(config.public_key_pem.as_bytes())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let state = Arc::new(ApnsState {
            config,
            key,
            faults: PushFaults::new(),
            seen_tokens: Mutex::new(HashSet::new()),
            expired_tokens: Mutex::new(HashSet::new()),
            delivered: AtomicU64::new(0),
        });
        let router = Router::new()
            .route("/3/device/{token}", post(apns_send))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = serve(listener, router);
        Ok(Self { addr, state, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL (`ApnsConfig::base_url`), `http://` for h2c.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn faults(&self) -> &PushFaults {
        &self.state.faults
    }

    /// Notifications answered 200 so far.
    pub fn delivered(&self) -> u64 {
        self.state.delivered.load(Ordering::Relaxed)
    }

    /// Distinct provider tokens (JWTs) seen so far.
    pub fn provider_tokens_seen(&self) -> usize {
        self.state.seen_tokens.lock().len()
    }

    /// Declares every provider token seen so far expired: requests bearing one get 403
    /// ExpiredProviderToken.
    pub fn expire_provider_tokens(&self) {
        let seen = self.state.seen_tokens.lock().clone();
        self.state.expired_tokens.lock().extend(seen);
    }
}

#[derive(Deserialize)]
struct ProviderClaims {
    iss: String,
    iat: u64,
}

fn apns_error(status: StatusCode, reason: &str, apns_id: &str) -> Response {
    let mut body = json!({ "reason": reason });
    if status == StatusCode::GONE {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        body["timestamp"] = json!(u64::try_from(now_ms).unwrap_or(u64::MAX));
    }
    let mut response = json_response(status, body);
    if let Ok(value) = HeaderValue::from_str(apns_id) {
        response.headers_mut().insert("apns-id", value);
    }
    response
}

async fn apns_send(
    State(state): State<Arc<ApnsState>>,
    Path(device_token): Path<String>,
    request: Request,
) -> Response {
    let since_start_ms = state.faults.since_start_ms();
    let http_version = request.version();
    let headers = request.headers().clone();
    let body = axum::body::to_bytes(request.into_body(), BODY_LIMIT)
        .await
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let apns_headers: HashMap<String, String> = [
        "apns-topic",
        "apns-push-type",
        "apns-priority",
        "apns-expiration",
    ]
    .into_iter()
    .filter_map(|name| {
        let value = headers.get(name)?.to_str().ok()?;
        Some((name.to_owned(), value.to_owned()))
    })
    .collect();
    let request_id = headers
        .get("apns-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = apns_verdict(
        &state,
        http_version,
        &headers,
        &device_token,
        &body,
        &json,
        request_id.as_deref(),
    );
    let entry = Received {
        service: PushService::Apns,
        http_version,
        attempt_id: json[crate::fcm::ATTEMPT_ID_DATA_KEY]
            .as_str()
            .map(str::to_owned),
        device_token: Some(device_token),
        apns_id: request_id,
        apns_headers,
        body: json,
        status: response.status().as_u16(),
        since_start_ms,
    };
    answer(&state.faults, entry, response).await
}

fn is_uuid(value: &str) -> bool {
    let groups: Vec<&str> = value.split('-').collect();
    groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn apns_verdict(
    state: &ApnsState,
    version: Version,
    headers: &HeaderMap,
    device_token: &str,
    body: &[u8],
    json: &serde_json::Value,
    request_id: Option<&str>,
) -> Response {
    if version != Version::HTTP_2 {
        // APNs is HTTP/2 only; say so loudly rather than pretend.
        return StatusCode::HTTP_VERSION_NOT_SUPPORTED.into_response();
    }
    let apns_id = match request_id {
        Some(id) if is_uuid(id) => id.to_owned(),
        Some(_) => {
            return apns_error(
                StatusCode::BAD_REQUEST,
                "BadMessageId",
                "00000000-0000-0000-0000-000000000000",
            );
        }
        // APNs makes one up (a random UUID) when the request has none.
        None => {
            let b: u128 = rand::random();
            let h = format!("{b:032x}");
            format!(
                "{}-{}-4{}-8{}-{}",
                &h[0..8],
                &h[8..12],
                &h[13..16],
                &h[17..20],
                &h[20..32]
            )
        }
    };
    let error = |status, reason| apns_error(status, reason, &apns_id);
    // Provider token.
    let Some(jwt) = bearer_token(headers) else {
        return error(StatusCode::FORBIDDEN, "MissingProviderToken");
    };
    let key_id_matches = jsonwebtoken::decode_header(&jwt)
        .ok()
        .and_then(|h| h.kid)
        .is_some_and(|kid| kid == state.config.key_id);
    if !key_id_matches {
        return error(StatusCode::FORBIDDEN, "InvalidProviderToken");
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_required_spec_claims::<&str>(&[]);
    validation.validate_exp = false;
    validation.validate_aud = false;
    let claims = match jsonwebtoken::decode::<ProviderClaims>(&jwt, &state.key, &validation) {
        Ok(data) => data.claims,
        Err(_) => return error(StatusCode::FORBIDDEN, "InvalidProviderToken"),
    };
    if claims.iss != state.config.team_id {
        return error(StatusCode::FORBIDDEN, "InvalidProviderToken");
    }
    state.seen_tokens.lock().insert(jwt.clone());
    let now = crate::fcm::unix_now();
    if state.expired_tokens.lock().contains(&jwt)
        || now.saturating_sub(claims.iat) > APNS_TOKEN_MAX_AGE
    {
        return error(StatusCode::FORBIDDEN, "ExpiredProviderToken");
    }
    match state.faults.take_injected() {
        Some(Injected::Throttle(retry_after)) => {
            let mut response = error(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests");
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs()),
            );
            return response;
        }
        Some(Injected::Fail) => {
            return error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable");
        }
        None => {}
    }
    // Headers.
    let header_str = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header_str("apns-topic") {
        None => return error(StatusCode::BAD_REQUEST, "MissingTopic"),
        Some(topic) if topic != state.config.topic => {
            return error(StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic");
        }
        Some(_) => {}
    }
    const PUSH_TYPES: [&str; 9] = [
        "alert",
        "background",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "location",
        "liveactivity",
        "pushtotalk",
    ];
    if header_str("apns-push-type").is_some_and(|t| !PUSH_TYPES.contains(&t)) {
        return error(StatusCode::BAD_REQUEST, "InvalidPushType");
    }
    if header_str("apns-priority").is_some_and(|p| !["1", "5", "10"].contains(&p)) {
        return error(StatusCode::BAD_REQUEST, "BadPriority");
    }
    if header_str("apns-expiration").is_some_and(|e| e.parse::<u64>().is_err()) {
        return error(StatusCode::BAD_REQUEST, "BadExpirationDate");
    }
    // Payload.
    if body.len() > APNS_PAYLOAD_LIMIT {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge");
    }
    // The peer's simplification: anything without an `aps` dictionary counts as empty.
    if !json["aps"].is_object() {
        return error(StatusCode::BAD_REQUEST, "PayloadEmpty");
    }
    // Device token: hex, as APNs issues them.
    if device_token.is_empty() || !device_token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(StatusCode::BAD_REQUEST, "BadDeviceToken");
    }
    match state.faults.verdict(device_token) {
        Some(TokenVerdict::Unregistered) => error(StatusCode::GONE, "Unregistered"),
        Some(TokenVerdict::Bad) => error(StatusCode::BAD_REQUEST, "BadDeviceToken"),
        Some(TokenVerdict::SenderMismatch) => {
            error(StatusCode::BAD_REQUEST, "DeviceTokenNotForTopic")
        }
        None => {
            state.delivered.fetch_add(1, Ordering::Relaxed);
            let mut response = StatusCode::OK.into_response();
            if let Ok(value) = HeaderValue::from_str(&apns_id) {
                response.headers_mut().insert("apns-id", value);
            }
            response
        }
    }
}
