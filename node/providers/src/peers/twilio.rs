//! # twilio peer: a fake Twilio Messages API on loopback
//!
//! Owns: an axum HTTP server on `127.0.0.1:0` answering
//! `POST /2010-04-01/Accounts/{sid}/Messages.json` the way Twilio does (Basic auth, form body,
//! Twilio-shaped JSON answers and error bodies, `I-Twilio-Idempotency-Token` dedup), a receive
//! log tests read, error injection knobs, and optional status callbacks (`delivered`, signed
//! with `X-Twilio-Signature`) posted to each message's `StatusCallback` after a delay.
//!
//! Built-in magic destinations, like Twilio's test credentials: `+15005550001` → 400 code
//! 21211 (invalid number), `+15005550009` → 400 code 21614 (not a mobile number),
//! `+15005550004` → 400 code 21610 (recipient unsubscribed). More via
//! [`TwilioPeer::fail_destination`].
//!
//! Test-only: never compiled without the `peers` feature, never used by production code.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use parking_lot::Mutex;
use serde_json::json;

use crate::twilio::{IDEMPOTENCY_HEADER, compute_signature};

/// One message the peer accepted (logged once per idempotency token).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedSms {
    /// Milliseconds since the peer started, when the request arrived.
    pub since_start_ms: u64,
    pub sid: String,
    pub to: String,
    /// `From`, or the `MessagingServiceSid` when that was given instead.
    pub from: String,
    pub body: String,
    pub idempotency_token: Option<String>,
}

/// How the peer is set up.
#[derive(Clone, Debug)]
pub struct TwilioPeerConfig {
    pub account_sid: String,
    pub auth_token: String,
    /// When set, a `delivered` status callback is posted to each accepted message's
    /// `StatusCallback` URL after this delay.
    pub status_callback_delay: Option<Duration>,
}

impl Default for TwilioPeerConfig {
    fn default() -> Self {
        Self {
            account_sid: "AC00000000000000000000000000000000".into(),
            auth_token: "peer-auth-token".into(),
            status_callback_delay: None,
        }
    }
}

#[derive(Default)]
struct Knobs {
    /// The next N requests get 429 with `Retry-After: 1`.
    throttle_next: u32,
    /// The next N requests get 500.
    fail_next: u32,
    /// Destination → (HTTP status, Twilio error code).
    destinations: HashMap<String, (u16, u64)>,
}

struct Shared {
    config: TwilioPeerConfig,
    started: Instant,
    log: Mutex<Vec<ReceivedSms>>,
    /// Idempotency token → the JSON body first answered for it.
    idempotent: Mutex<HashMap<String, serde_json::Value>>,
    knobs: Mutex<Knobs>,
    requests: Mutex<u64>,
    /// The idempotency token of every request, in arrival order (repeats included).
    tokens: Mutex<Vec<Option<String>>>,
    callbacks_sent: Mutex<u64>,
    http: reqwest::Client,
}

/// A running fake Twilio. Stops when dropped.
pub struct TwilioPeer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TwilioPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TwilioPeer {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(config: TwilioPeerConfig) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut magic = HashMap::new();
        magic.insert("+15005550001".to_owned(), (400, 21211));
        magic.insert("+15005550009".to_owned(), (400, 21614));
        magic.insert("+15005550004".to_owned(), (400, 21610));
        let shared = Arc::new(Shared {
            config,
            started: Instant::now(),
            log: Mutex::new(Vec::new()),
            idempotent: Mutex::new(HashMap::new()),
            knobs: Mutex::new(Knobs {
                destinations: magic,
                ..Knobs::default()
            }),
            requests: Mutex::new(0),
            tokens: Mutex::new(Vec::new()),
            callbacks_sent: Mutex::new(0),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(std::io::Error::other)?,
        });
        let app = Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(create_message),
            )
            .with_state(Arc::clone(&shared));
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "twilio peer stopped");
            }
        });
        Ok(Self { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The adapter's `base_url` for this peer.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn account_sid(&self) -> &str {
        &self.shared.config.account_sid
    }

    pub fn auth_token(&self) -> &str {
        &self.shared.config.auth_token
    }

    /// Messages accepted so far, in arrival order (one entry per idempotency token).
    pub fn received(&self) -> Vec<ReceivedSms> {
        self.shared.log.lock().clone()
    }

    /// HTTP requests to the Messages endpoint so far, whatever their answer.
    pub fn requests(&self) -> u64 {
        *self.shared.requests.lock()
    }

    /// The idempotency token (`I-Twilio-Idempotency-Token`) of every request to the Messages
    /// endpoint so far, in arrival order, whatever its answer: a repeat of a token shows up
    /// again here, while [`TwilioPeer::received`] logs it once.
    pub fn request_tokens(&self) -> Vec<Option<String>> {
        self.shared.tokens.lock().clone()
    }

    /// Status callbacks posted so far (answered or not).
    pub fn callbacks_sent(&self) -> u64 {
        *self.shared.callbacks_sent.lock()
    }

    /// The next `n` authenticated requests get `429` with `Retry-After: 1` (code 20429).
    pub fn throttle_next(&self, n: u32) {
        self.shared.knobs.lock().throttle_next = n;
    }

    /// The next `n` authenticated requests get `500` (code 20500).
    pub fn fail_next(&self, n: u32) {
        self.shared.knobs.lock().fail_next = n;
    }

    /// Requests to `to` get `status` with Twilio error `code`.
    pub fn fail_destination(&self, to: &str, status: u16, code: u64) {
        self.shared
            .knobs
            .lock()
            .destinations
            .insert(to.to_owned(), (status, code));
    }
}

fn twilio_error(status: StatusCode, code: u64, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, axum::Json(body)).into_response()
}

fn authorized(headers: &HeaderMap, config: &TwilioPeerConfig) -> bool {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(encoded) = value.strip_prefix("Basic ") else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    decoded == format!("{}:{}", config.account_sid, config.auth_token).as_bytes()
}

async fn create_message(
    State(shared): State<Arc<Shared>>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = shared.started.elapsed();
    *shared.requests.lock() += 1;
    shared.tokens.lock().push(
        headers
            .get(IDEMPOTENCY_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    );
    if !authorized(&headers, &shared.config) {
        let mut r = twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"Twilio API\""),
        );
        return r;
    }
    if account != shared.config.account_sid {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            "The requested resource was not found",
        );
    }
    let token = headers
        .get(IDEMPOTENCY_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(t) = &token
        && let Some(first) = shared.idempotent.lock().get(t)
    {
        return (StatusCode::CREATED, axum::Json(first.clone())).into_response();
    }
    {
        let mut knobs = shared.knobs.lock();
        if knobs.throttle_next > 0 {
            knobs.throttle_next -= 1;
            let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return r;
        }
        if knobs.fail_next > 0 {
            knobs.fail_next -= 1;
            return twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error",
            );
        }
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let Some(to) = form.get("To").filter(|s| !s.is_empty()) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21604,
            "A 'To' phone number is required.",
        );
    };
    let Some(from) = form
        .get("From")
        .or_else(|| form.get("MessagingServiceSid"))
        .filter(|s| !s.is_empty())
    else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21603,
            "A 'From' phone number is required.",
        );
    };
    let Some(text) = form.get("Body").filter(|s| !s.is_empty()) else {
        return twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required.");
    };
    let injected = shared.knobs.lock().destinations.get(to).copied();
    if let Some((status, code)) = injected {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
        return twilio_error(
            status,
            code,
            &format!("The 'To' number {to} is not deliverable (injected)"),
        );
    }
    let sid = format!("SM{:032x}", rand::random::<u128>());
    let account_sid = &shared.config.account_sid;
    let answer = json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": text,
        "date_created": null,
        "date_sent": null,
        "date_updated": null,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": form.get("From"),
        "messaging_service_sid": form.get("MessagingServiceSid"),
        "num_media": "0",
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": "queued",
        "subresource_uris": {
            "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json")
        },
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
    });
    {
        // Re-check under the lock: two concurrent requests with one token log once.
        let mut idem = shared.idempotent.lock();
        if let Some(t) = &token {
            if let Some(first) = idem.get(t) {
                return (StatusCode::CREATED, axum::Json(first.clone())).into_response();
            }
            idem.insert(t.clone(), answer.clone());
        }
        shared.log.lock().push(ReceivedSms {
            since_start_ms: arrived.as_millis() as u64,
            sid: sid.clone(),
            to: to.clone(),
            from: from.clone(),
            body: text.clone(),
            idempotency_token: token,
        });
    }
    if let (Some(delay), Some(url)) = (
        shared.config.status_callback_delay,
        form.get("StatusCallback").cloned(),
    ) {
        let shared = Arc::clone(&shared);
        let params = vec![
            ("AccountSid".to_owned(), shared.config.account_sid.clone()),
            ("ApiVersion".to_owned(), "2010-04-01".to_owned()),
            ("From".to_owned(), from.clone()),
            ("MessageSid".to_owned(), sid.clone()),
            ("MessageStatus".to_owned(), "delivered".to_owned()),
            ("SmsSid".to_owned(), sid.clone()),
            ("SmsStatus".to_owned(), "delivered".to_owned()),
            ("To".to_owned(), to.clone()),
        ];
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let signature = compute_signature(&shared.config.auth_token, &url, &params);
            let body = {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in &params {
                    form.append_pair(k, v);
                }
                form.finish()
            };
            *shared.callbacks_sent.lock() += 1;
            let sent = shared
                .http
                .post(&url)
                .header("X-Twilio-Signature", signature)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body)
                .send()
                .await;
            if let Err(e) = sent {
                tracing::debug!(error = %e, "twilio peer: status callback not delivered");
            }
        });
    }
    (StatusCode::CREATED, axum::Json(answer)).into_response()
}
