//! The fake APNs provider API over h2c, verifying the ES256 provider token.

use super::*;

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
