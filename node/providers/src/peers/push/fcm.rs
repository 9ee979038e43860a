//! The fake FCM project: its OAuth token endpoint and the HTTP v1 send endpoint.

use super::*;

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
