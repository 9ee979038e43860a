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

mod apns;
mod fcm;

pub use apns::{ApnsPeer, ApnsPeerConfig};
pub use fcm::{FcmPeer, FcmPeerConfig};

/// Test-only key pairs (committed fixtures under `node/providers/tests/fixtures/`). Public
/// knowledge: never use them for anything but talking to these peers.
pub mod test_keys {
    /// RSA 2048 PKCS#8 private key of the fake FCM service account.
    pub const FCM_PRIVATE_KEY_PEM: &str =
        include_str!("../../../tests/fixtures/test-only-fcm-service-account-key.pem");
    /// Its public key (SPKI PEM), with which [`super::FcmPeer`] verifies assertions.
    pub const FCM_PUBLIC_KEY_PEM: &str =
        include_str!("../../../tests/fixtures/test-only-fcm-service-account-pub.pem");
    /// P-256 PKCS#8 private key in Apple's `.p8` format, for the fake APNs team.
    pub const APNS_PRIVATE_KEY_P8: &str =
        include_str!("../../../tests/fixtures/test-only-apns-auth-key.p8");
    /// Its public key (SPKI PEM), with which [`super::ApnsPeer`] verifies provider tokens.
    pub const APNS_PUBLIC_KEY_PEM: &str =
        include_str!("../../../tests/fixtures/test-only-apns-auth-pub.pem");
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

fn bearer_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}
