//! # smpp: SMS over SMPP 3.4 (one persistent `bind_transceiver` session per account)
//!
//! Owns the ESME side of one SMSC account: the TCP connection and its bind, sequence numbers,
//! the submit window, `enquire_link` keep-alives, reconnecting with exponential backoff and
//! jitter, turning an [`Attempt`] into one `submit_sm` per segment, and turning `deliver_sm`s
//! into [`ProviderEvent`](crate::ProviderEvent)s (delivery receipts and mobile-originated messages).
//!
//! It must never: log phone numbers or message text (account name, sequence numbers, SMSC
//! message ids and command statuses only); re-send a segment on its own (a lost answer is
//! [`Outcome::Ambiguous`]; the node decides); drop a receipt or MO silently (events are awaited
//! into the bounded [`ProviderEvents`] channel, and if that channel is gone the `deliver_sm`
//! is answered with a temporary error so the SMSC delivers it again later).
//!
//! ## Shape
//! [`SmppProvider::new`] spawns one background task that owns the socket: it connects, binds,
//! then runs a `select!` over outgoing submits (from [`Provider::send`] via a channel), incoming
//! PDUs, and a housekeeping tick (enquire_link, expiring unanswered submits). Responses are
//! matched to requests by sequence number. When the session ends, every unanswered submit is
//! answered "connection lost" and the task reconnects.
//!
//! Link states, as `send` sees them: *connecting* (first bind, or a short reconnect pause —
//! `send` waits up to `bind_timeout_ms`), *bound*, *down* (the last bind failed, or the
//! reconnect pause is longer than `bind_timeout_ms` — `send` returns Unavailable at once with
//! `retry_after` = time until the next try), *stopped* (after [`SmppProvider::shutdown`]).
//!
//! Never enable rusmpp's `tracing` feature: it logs whole PDUs (numbers and texts).
//!
//! ## Outcome mapping (per segment)
//! - `submit_sm_resp` status 0 → accepted.
//! - `ESME_RTHROTTLED` (0x58), `ESME_RMSGQFUL` (0x14) → [`Outcome::Unavailable`] with
//!   `retry_after` = [`SmppConfig::throttle_retry_after_ms`]. `ESME_RSYSERR` (0x08) is also
//!   treated as Unavailable (no hint): it is the SMSC's own transient failure, not a verdict on
//!   the message.
//! - `ESME_RINVDSTADR` (0x0B) → `Rejected { contact_invalid: true }`; any other status →
//!   `Rejected`.
//! - Not bound (after waiting at most [`SmppConfig::bind_timeout_ms`]), window full, or the
//!   connection failing before the PDU was fully written → `Unavailable`.
//! - Written but no answer within [`SmppConfig::response_timeout_ms`], or the connection lost
//!   after writing → `Ambiguous`.
//!
//! ## Multi-segment messages
//! Each segment is its own `submit_sm` with a 6-octet concatenation UDH (8-bit reference,
//! `esm_class` 0x40), sent in order, each waiting for its `submit_sm_resp`. The outcome's
//! `provider_message_id` is the first segment's `message_id`. If the first segment fails, that
//! failure is the outcome (nothing went out). If a later segment fails after earlier ones were
//! accepted, the outcome is `Ambiguous` (part of the message is out; re-sending would
//! duplicate it), carrying the reason; its receipts decide.
//!
//! Receipts of the other segments: the session remembers (bounded, oldest forgotten first)
//! which SMSC ids belong to a multi-part message. A *failure* receipt (UNDELIV, EXPIRED, ...)
//! of a later segment is forwarded under the first segment's id, so the attempt fails if any
//! part fails; a DELIVRD receipt of a later segment is not forwarded (the first segment's own
//! receipt reports delivery). Receipts for ids the session does not know (e.g. after a
//! restart) are forwarded unchanged.
//!
//! ## Receipts
//! A `deliver_sm` whose `esm_class` has the receipt bit (0x04) is a delivery receipt. The id
//! comes from the `receipted_message_id` TLV when present (SMSCs disagree on hex/decimal in
//! the text), else from the text's `id:`; the state from the text's `stat:`, else from the
//! `message_state` TLV. See [`receipt::receipt_kind`] for the `stat` mapping; non-final states
//! (ACCEPTD, ENROUTE, ...) are acknowledged and not forwarded. Any other `deliver_sm` is an MO
//! message → [`ProviderEvent::Inbound`](crate::ProviderEvent::Inbound) (data_coding 0 = GSM-7 unpacked, 8 = UCS-2, 3 =
//! Latin-1, else UTF-8/ASCII; a UDH is stripped; concatenated MO parts are forwarded one by
//! one, not reassembled).

pub mod receipt;
mod session;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use herald_proto::v1::Channel;
use rusmpp::pdus::SubmitSm;
use rusmpp::types::{COctetString, OctetString};
use rusmpp::values::{DataCoding, EsmClass, Npi, RegisteredDelivery, Ton};
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::sms_encoding::{self, concat_udh};
use crate::{Attempt, ConfigError, Outcome, Provider, ProviderEvents};

pub use receipt::{ParsedReceipt, ReceiptParseError, parse_receipt_text, receipt_kind};

fn default_port() -> u16 {
    2775
}
fn default_ton() -> u8 {
    1
}
fn default_npi() -> u8 {
    1
}
fn default_window_size() -> usize {
    10
}
fn default_enquire_link_interval_ms() -> u64 {
    30_000
}
fn default_response_timeout_ms() -> u64 {
    10_000
}
fn default_bind_timeout_ms() -> u64 {
    5_000
}
fn default_backoff_min_ms() -> u64 {
    500
}
fn default_backoff_max_ms() -> u64 {
    30_000
}
fn default_throttle_retry_after_ms() -> u64 {
    1_000
}
fn default_max_segments() -> u8 {
    10
}

/// One SMSC account reached over SMPP 3.4 (`bind_transceiver`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmppConfig {
    /// SMSC host name or IP address.
    pub host: String,
    /// SMSC TCP port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// ESME system_id for the bind (at most 15 characters).
    pub system_id: String,
    /// Bind password (at most 8 characters).
    pub password: String,
    /// system_type sent in the bind (at most 12 characters; usually empty).
    #[serde(default)]
    pub system_type: String,
    /// Our sender: a short code, E.164 number (without `+`) or alphanumeric sender id (at most
    /// 20 characters).
    pub source_addr: String,
    /// Type of number of `source_addr` (1 international, 3 network specific, 5 alphanumeric).
    #[serde(default = "default_ton")]
    pub source_addr_ton: u8,
    /// Numbering plan of `source_addr` (1 ISDN/E.164, 0 unknown — use 0 with TON 5).
    #[serde(default = "default_npi")]
    pub source_addr_npi: u8,
    /// Type of number of destinations (1 international: the node hands E.164 numbers).
    #[serde(default = "default_ton")]
    pub dest_addr_ton: u8,
    /// Numbering plan of destinations (1 ISDN/E.164).
    #[serde(default = "default_npi")]
    pub dest_addr_npi: u8,
    /// Maximum `submit_sm`s written and not yet answered (the SMPP window). At least 1.
    #[serde(default = "default_window_size")]
    pub window_size: usize,
    /// Interval between `enquire_link` keep-alives, in milliseconds.
    #[serde(default = "default_enquire_link_interval_ms")]
    pub enquire_link_interval_ms: u64,
    /// How long a `submit_sm` (or `enquire_link`) may wait for its response, in milliseconds;
    /// past it the submit is Ambiguous (or the link is considered dead).
    #[serde(default = "default_response_timeout_ms")]
    pub response_timeout_ms: u64,
    /// Limit for TCP connect + `bind_transceiver_resp`, in milliseconds; also how long a send
    /// waits for a bind that is in progress.
    #[serde(default = "default_bind_timeout_ms")]
    pub bind_timeout_ms: u64,
    /// First reconnect delay after a failed connect/bind or a dropped session, in
    /// milliseconds; doubles per consecutive failure (a session that stayed bound for 10 s
    /// resets it), with "equal jitter" (between half and all of the delay).
    #[serde(default = "default_backoff_min_ms")]
    pub reconnect_backoff_min_ms: u64,
    /// Ceiling of the reconnect delay, in milliseconds.
    #[serde(default = "default_backoff_max_ms")]
    pub reconnect_backoff_max_ms: u64,
    /// `retry_after` reported when the SMSC answers ESME_RTHROTTLED or ESME_RMSGQFUL, in
    /// milliseconds.
    #[serde(default = "default_throttle_retry_after_ms")]
    pub throttle_retry_after_ms: u64,
    /// Longest message accepted, in segments (1..=255); longer texts are Rejected.
    #[serde(default = "default_max_segments")]
    pub max_segments: u8,
}

impl SmppConfig {
    /// A config with every knob at its default.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        system_id: impl Into<String>,
        password: impl Into<String>,
        source_addr: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            system_id: system_id.into(),
            password: password.into(),
            system_type: String::new(),
            source_addr: source_addr.into(),
            source_addr_ton: default_ton(),
            source_addr_npi: default_npi(),
            dest_addr_ton: default_ton(),
            dest_addr_npi: default_npi(),
            window_size: default_window_size(),
            enquire_link_interval_ms: default_enquire_link_interval_ms(),
            response_timeout_ms: default_response_timeout_ms(),
            bind_timeout_ms: default_bind_timeout_ms(),
            reconnect_backoff_min_ms: default_backoff_min_ms(),
            reconnect_backoff_max_ms: default_backoff_max_ms(),
            throttle_retry_after_ms: default_throttle_retry_after_ms(),
            max_segments: default_max_segments(),
        }
    }

    fn validate(&self, account: &str) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, problem: String| ConfigError::Invalid {
            account: account.to_string(),
            field,
            problem,
        };
        let c_string = |field: &'static str, value: &str, max: usize, required: bool| {
            if required && value.is_empty() {
                return Err(invalid(field, "must not be empty".into()));
            }
            if value.len() > max || !value.is_ascii() || value.contains('\0') {
                return Err(invalid(
                    field,
                    format!("must be at most {max} ASCII characters"),
                ));
            }
            Ok(())
        };
        if self.host.is_empty() {
            return Err(invalid("host", "must not be empty".into()));
        }
        c_string("system_id", &self.system_id, 15, true)?;
        c_string("password", &self.password, 8, false)?;
        c_string("system_type", &self.system_type, 12, false)?;
        c_string("source_addr", &self.source_addr, 20, true)?;
        if self.window_size == 0 {
            return Err(invalid("window_size", "must be at least 1".into()));
        }
        if self.max_segments == 0 {
            return Err(invalid("max_segments", "must be at least 1".into()));
        }
        for (field, v) in [
            ("enquire_link_interval_ms", self.enquire_link_interval_ms),
            ("response_timeout_ms", self.response_timeout_ms),
            ("bind_timeout_ms", self.bind_timeout_ms),
            ("reconnect_backoff_min_ms", self.reconnect_backoff_min_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0".into()));
            }
        }
        if self.reconnect_backoff_max_ms < self.reconnect_backoff_min_ms {
            return Err(invalid(
                "reconnect_backoff_max_ms",
                "must be at least reconnect_backoff_min_ms".into(),
            ));
        }
        Ok(())
    }

    fn response_timeout(&self) -> Duration {
        Duration::from_millis(self.response_timeout_ms)
    }

    fn bind_timeout(&self) -> Duration {
        Duration::from_millis(self.bind_timeout_ms)
    }
}

/// The session's state as `send` sees it.
#[derive(Clone, Debug)]
pub(crate) enum LinkState {
    /// Connecting/binding, or pausing briefly after a dropped session: sends wait.
    Connecting,
    Bound,
    /// The last connect or bind failed; the next try is at `retry_at`. Sends fail fast.
    Down {
        reason: String,
        retry_at: Instant,
    },
    /// [`SmppProvider::shutdown`] ran; the task has ended.
    Stopped,
}

/// Claim states of a submit between `send` (which may give up) and the session (which writes).
pub(crate) const CLAIM_PENDING: u8 = 0;
pub(crate) const CLAIM_CANCELLED: u8 = 1;
pub(crate) const CLAIM_WRITTEN: u8 = 2;

/// One segment handed to the session task.
pub(crate) struct SubmitRequest {
    pub(crate) submit: SubmitSm,
    /// CAS'd PENDING → WRITTEN by the session before writing, PENDING → CANCELLED by `send`
    /// when it gives up: exactly one side wins, so "not written" is never a guess.
    pub(crate) claim: Arc<AtomicU8>,
    pub(crate) reply: oneshot::Sender<SubmitReply>,
    /// Held until the response arrives (or the submit expires / the connection dies), so the
    /// window counts what the SMSC has not answered, not what `send` still waits for.
    pub(crate) permit: tokio::sync::OwnedSemaphorePermit,
    /// For a later segment of a multi-part message: the first segment's SMSC id.
    pub(crate) primary_id: Option<String>,
}

/// What the session answers for one segment.
#[derive(Debug)]
pub(crate) enum SubmitReply {
    Response {
        status: u32,
        message_id: String,
    },
    /// The session was not bound when the request reached it; nothing was written.
    NotBound(String),
    /// Writing failed before the PDU was complete.
    NotWritten(String),
    /// Written, then the connection ended before the response.
    Lost(String),
}

/// SMS through one SMSC account over SMPP 3.4. Dropping it stops the session task (without
/// an unbind; call [`SmppProvider::shutdown`] first for a clean unbind).
pub struct SmppProvider {
    name: String,
    config: Arc<SmppConfig>,
    requests: mpsc::Sender<SubmitRequest>,
    window: Arc<Semaphore>,
    link: watch::Receiver<LinkState>,
    stop: watch::Sender<bool>,
    concat_ref: AtomicU8,
    task: tokio::task::JoinHandle<()>,
}

impl SmppProvider {
    /// Validates `config` and starts the session task (connect + bind happen in the
    /// background; `send` waits for them). Receipts and MO messages go to `events`.
    pub async fn new(
        name: impl Into<String>,
        config: SmppConfig,
        events: ProviderEvents,
    ) -> Result<Self, ConfigError> {
        let name = name.into();
        config.validate(&name)?;
        let config = Arc::new(config);
        let (requests, requests_rx) = mpsc::channel(config.window_size.saturating_mul(2).max(16));
        let (link_tx, link) = watch::channel(LinkState::Connecting);
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(session::run(session::Session {
            name: name.clone(),
            config: config.clone(),
            events,
            requests: requests_rx,
            link: link_tx,
            stop: stop_rx,
        }));
        Ok(Self {
            name,
            window: Arc::new(Semaphore::new(config.window_size)),
            config,
            requests,
            link,
            stop,
            concat_ref: AtomicU8::new(rand::random()),
            task,
        })
    }

    /// True while the session is bound.
    pub fn is_bound(&self) -> bool {
        matches!(*self.link.borrow(), LinkState::Bound)
    }

    /// Waits until the session is bound, at most `limit`. True if bound.
    pub async fn wait_bound(&self, limit: Duration) -> bool {
        let mut link = self.link.clone();
        tokio::time::timeout(limit, link.wait_for(|s| matches!(s, LinkState::Bound)))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Stops the session: unbinds if bound (bounded by the response timeout) and ends the
    /// background task. Sends after this return Unavailable.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let mut link = self.link.clone();
        let limit = self.config.response_timeout();
        let _ =
            tokio::time::timeout(limit, link.wait_for(|s| matches!(s, LinkState::Stopped))).await;
        self.task.abort();
    }

    /// Waits for a usable session: Ok when bound, else the Unavailable outcome to return.
    async fn wait_link(&self) -> Result<(), Outcome> {
        let mut link = self.link.clone();
        let limit = self.config.bind_timeout();
        let waited = tokio::time::timeout(
            limit,
            link.wait_for(|s| !matches!(s, LinkState::Connecting)),
        )
        .await;
        match waited {
            Ok(Ok(state)) => match &*state {
                LinkState::Bound => Ok(()),
                LinkState::Down { reason, retry_at } => Err(Outcome::Unavailable {
                    reason: format!("smpp not bound: {reason}"),
                    retry_after: Some(retry_at.saturating_duration_since(Instant::now())),
                }),
                LinkState::Connecting => Err(Outcome::unavailable("smpp not bound yet")),
                LinkState::Stopped => Err(Outcome::unavailable("smpp provider shut down")),
            },
            Ok(Err(_)) => Err(Outcome::unavailable("smpp session task stopped")),
            Err(_) => Err(Outcome::unavailable(format!(
                "smpp not bound within {} ms",
                self.config.bind_timeout_ms
            ))),
        }
    }

    fn build_submit(
        &self,
        destination: &COctetString<1, 21>,
        data_coding: u8,
        udh: bool,
        short_message: Vec<u8>,
    ) -> Result<SubmitSm, String> {
        let config = &self.config;
        let source =
            COctetString::from_str(&config.source_addr).map_err(|e| format!("source_addr: {e}"))?;
        let short_message =
            OctetString::from_vec(short_message).map_err(|e| format!("short_message: {e}"))?;
        let esm_class = if udh {
            EsmClass::default().with_udhi_indicator()
        } else {
            EsmClass::default()
        };
        Ok(SubmitSm::builder()
            .source_addr_ton(Ton::from(config.source_addr_ton))
            .source_addr_npi(Npi::from(config.source_addr_npi))
            .source_addr(source)
            .dest_addr_ton(Ton::from(config.dest_addr_ton))
            .dest_addr_npi(Npi::from(config.dest_addr_npi))
            .destination_addr(destination.clone())
            .esm_class(esm_class)
            // 1 = SMSC delivery receipt on final outcome, success or failure.
            .registered_delivery(RegisteredDelivery::from(0x01))
            .data_coding(DataCoding::from(data_coding))
            .short_message(short_message)
            .build())
    }

    /// Sends one segment and waits for its answer; `Ok(message_id)` when accepted.
    async fn submit_one(
        &self,
        attempt_id: &str,
        submit: SubmitSm,
        primary_id: Option<String>,
    ) -> Result<String, Outcome> {
        let deadline = Instant::now() + self.config.response_timeout();
        let permit =
            match tokio::time::timeout_at(deadline, self.window.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                Ok(Err(_)) => return Err(Outcome::unavailable("smpp window closed")),
                Err(_) => {
                    return Err(Outcome::unavailable(format!(
                        "smpp window of {} stayed full for {} ms",
                        self.config.window_size, self.config.response_timeout_ms
                    )));
                }
            };
        let claim = Arc::new(AtomicU8::new(CLAIM_PENDING));
        let (reply, answer) = oneshot::channel();
        let request = SubmitRequest {
            submit,
            claim: claim.clone(),
            reply,
            permit,
            primary_id,
        };
        match tokio::time::timeout_at(deadline, self.requests.send(request)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(Outcome::unavailable("smpp session task stopped")),
            Err(_) => return Err(Outcome::unavailable("smpp session queue full")),
        }
        let answer = tokio::time::timeout_at(deadline, answer).await;
        let reply = match answer {
            Ok(Ok(reply)) => reply,
            // The session dropped the request without answering: only possible when it never
            // wrote it (claim lost) or the task died.
            Ok(Err(_)) => {
                return Err(if claim.load(Ordering::Acquire) == CLAIM_WRITTEN {
                    Outcome::Ambiguous {
                        reason: "smpp session ended after writing submit_sm".into(),
                    }
                } else {
                    Outcome::unavailable("smpp session ended before writing submit_sm")
                });
            }
            Err(_) => {
                let cancelled = claim
                    .compare_exchange(
                        CLAIM_PENDING,
                        CLAIM_CANCELLED,
                        Ordering::AcqRel,
                        Ordering::Acquire,
                    )
                    .is_ok();
                return Err(if cancelled {
                    Outcome::unavailable(format!(
                        "smpp submit_sm not written within {} ms",
                        self.config.response_timeout_ms
                    ))
                } else {
                    tracing::warn!(account = %self.name, attempt = attempt_id, "smpp submit_sm_resp timed out");
                    Outcome::Ambiguous {
                        reason: format!(
                            "no submit_sm_resp within {} ms",
                            self.config.response_timeout_ms
                        ),
                    }
                });
            }
        };
        match reply {
            // Accepted, but with nothing to match receipts against: the message is out, yet
            // its fate can only be guessed. Never report that as Unavailable (a retry would
            // send it twice).
            SubmitReply::Response {
                status: 0,
                message_id,
            } if message_id.is_empty() => Err(Outcome::Ambiguous {
                reason: "submit_sm_resp accepted without a message_id".into(),
            }),
            SubmitReply::Response {
                status: 0,
                message_id,
            } => Ok(message_id),
            SubmitReply::Response { status, .. } => Err(self.classify_status(status)),
            SubmitReply::NotBound(reason) | SubmitReply::NotWritten(reason) => {
                Err(Outcome::unavailable(reason))
            }
            SubmitReply::Lost(reason) => Err(Outcome::Ambiguous { reason }),
        }
    }

    fn classify_status(&self, status: u32) -> Outcome {
        let reason = format!("submit_sm_resp status 0x{status:08X}");
        match status {
            STATUS_THROTTLED | STATUS_MSGQFUL => Outcome::Unavailable {
                reason,
                retry_after: Some(Duration::from_millis(self.config.throttle_retry_after_ms)),
            },
            STATUS_SYSERR => Outcome::unavailable(reason),
            STATUS_INVDSTADR => Outcome::Rejected {
                reason,
                contact_invalid: true,
            },
            _ => Outcome::rejected(reason),
        }
    }
}

/// ESME_RMSGQFUL: message queue full.
pub const STATUS_MSGQFUL: u32 = 0x14;
/// ESME_RTHROTTLED: throttling error.
pub const STATUS_THROTTLED: u32 = 0x58;
/// ESME_RINVDSTADR: invalid destination address.
pub const STATUS_INVDSTADR: u32 = 0x0B;
/// ESME_RSYSERR: system error.
pub const STATUS_SYSERR: u32 = 0x08;

impl Drop for SmppProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Provider for SmppProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "smpp"
    }

    fn channel(&self) -> Channel {
        Channel::Sms
    }

    async fn send(&self, attempt: Attempt<'_>) -> Outcome {
        let Some(sms) = attempt.content.sms.as_ref() else {
            return Outcome::rejected("attempt has no SMS content");
        };
        let to = attempt.to.trim().trim_start_matches('+');
        if to.is_empty() || to.len() > 20 || !to.bytes().all(|b| b.is_ascii_digit()) {
            return Outcome::Rejected {
                reason: "destination is not an E.164 number".into(),
                contact_invalid: true,
            };
        }
        let Ok(destination) = COctetString::<1, 21>::from_str(to) else {
            return Outcome::Rejected {
                reason: "destination is not an E.164 number".into(),
                contact_invalid: true,
            };
        };
        let payload = sms_encoding::split(&sms.text);
        let total = payload.segments.len();
        if total > usize::from(self.config.max_segments) {
            return Outcome::rejected(format!(
                "text needs {total} segments, more than max_segments {}",
                self.config.max_segments
            ));
        }
        if let Err(outcome) = self.wait_link().await {
            return outcome;
        }

        let data_coding = payload.encoding.data_coding();
        let reference = self.concat_ref.fetch_add(1, Ordering::Relaxed);
        let mut first_id: Option<String> = None;
        for (i, segment) in payload.segments.into_iter().enumerate() {
            let multi = total > 1;
            let short_message = if multi {
                // total ≤ max_segments ≤ 255, so these fit in a u8.
                let mut bytes = concat_udh(reference, total as u8, (i + 1) as u8).to_vec();
                bytes.extend_from_slice(&segment);
                bytes
            } else {
                segment
            };
            let submit = match self.build_submit(&destination, data_coding, multi, short_message) {
                Ok(submit) => submit,
                Err(problem) => return Outcome::rejected(problem),
            };
            match self
                .submit_one(attempt.attempt_id, submit, first_id.clone())
                .await
            {
                Ok(message_id) => {
                    tracing::debug!(
                        account = %self.name, attempt = attempt.attempt_id,
                        segment = i + 1, segments = total, smsc_id = %message_id,
                        "smpp segment accepted"
                    );
                    first_id.get_or_insert(message_id);
                }
                Err(outcome) => {
                    let Some(first) = first_id else {
                        return outcome;
                    };
                    let detail = match &outcome {
                        Outcome::Rejected { reason, .. }
                        | Outcome::Unavailable { reason, .. }
                        | Outcome::Ambiguous { reason } => reason.clone(),
                        Outcome::Accepted { .. } => String::new(),
                    };
                    tracing::warn!(
                        account = %self.name, attempt = attempt.attempt_id, smsc_id = %first,
                        segment = i + 1, segments = total, "smpp later segment failed"
                    );
                    return Outcome::Ambiguous {
                        reason: format!(
                            "segment {}/{total} failed after earlier segments were accepted \
                             (first id {first}): {detail}",
                            i + 1
                        ),
                    };
                }
            }
        }
        match first_id {
            Some(provider_message_id) => Outcome::Accepted {
                provider_message_id,
                delivered: false,
                read: false,
            },
            // split() always yields at least one segment.
            None => Outcome::rejected("no segments to send"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_fields() {
        let c: SmppConfig = serde_json::from_str(
            r#"{"host":"smsc.example","system_id":"herald","password":"pw","source_addr":"HERALD"}"#,
        )
        .expect("minimal config parses");
        assert_eq!(c.port, 2775);
        assert_eq!(c.window_size, 10);
        assert_eq!(c.enquire_link_interval_ms, 30_000);
        assert_eq!(c.response_timeout_ms, 10_000);
        assert_eq!((c.source_addr_ton, c.source_addr_npi), (1, 1));
        assert!(c.validate("acct").is_ok());
        let unknown = serde_json::from_str::<SmppConfig>(
            r#"{"host":"h","system_id":"s","password":"p","source_addr":"a","windo":3}"#,
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn config_validation() {
        let base = SmppConfig::new("h", 1, "sys", "pw", "SRC");
        assert!(base.validate("a").is_ok());
        let mut c = base.clone();
        c.password = "123456789".into();
        assert!(c.validate("a").is_err(), "password over 8 chars");
        let mut c = base.clone();
        c.window_size = 0;
        assert!(c.validate("a").is_err());
        let mut c = base.clone();
        c.reconnect_backoff_max_ms = 1;
        assert!(c.validate("a").is_err());
        let mut c = base;
        c.system_id = String::new();
        assert!(c.validate("a").is_err());
    }
}
