//! # herald-providers: the adapters that hand a message to the outside world
//!
//! One [`Provider`] trait; one module per adapter (`fcm`, `apns`, `smtp`, `smpp`, `twilio`,
//! `sandbox`). An adapter turns an [`Attempt`] into one provider call and classifies the
//! answer as an [`Outcome`]. Receipts and inbound messages that arrive later (an SMPP
//! `deliver_sm`, an HTTP status callback) become [`ProviderEvent`]s: over the adapter's own
//! connection they go to the [`ProviderEvents`] sender the adapter was built with; over HTTP the
//! node's callback listener hands the body to the adapter's `parse_*` function.
//!
//! Adapters must never decide policy, retry across accounts on their own (the node's failover
//! does that), or log contact points, bodies or tokens (attempt ids and provider ids only).

pub mod apns;
pub mod email_webhook;
pub mod fcm;
#[cfg(feature = "peers")]
pub mod peers;
pub mod sandbox;
pub mod smpp;
pub mod sms_encoding;
pub mod smtp;
pub mod twilio;

use std::time::Duration;

use async_trait::async_trait;
use herald_proto::v1::{Channel, Content};

/// One provider call. The attempt id doubles as the provider's idempotency key where the API
/// has one.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub attempt_id: &'a str,
    pub message_id: &'a str,
    /// Hashed recipient id, for logs and for deterministic sandbox verdicts.
    pub recipient_key: &'a str,
    pub channel: Channel,
    /// The contact point, already chosen by the node: a push token, an email address or an
    /// E.164 phone number. Never logged.
    pub to: &'a str,
    /// Content already rendered (templates filled in).
    pub content: &'a Content,
    /// Email only: the one-click unsubscribe target (RFC 8058).
    pub list_unsubscribe: Option<&'a ListUnsubscribe>,
}

/// `List-Unsubscribe` / `List-Unsubscribe-Post` header values for an email attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListUnsubscribe {
    /// HTTPS URL answering a POST with `List-Unsubscribe=One-Click`.
    pub url: String,
    /// Optional `mailto:` alternative.
    pub mailto: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took the message. `delivered`/`read` are set when the provider already
    /// knows at once (the sandbox can); real providers report them later by receipt.
    Accepted {
        provider_message_id: String,
        delivered: bool,
        read: bool,
    },
    /// The provider refused it for good. `contact_invalid`: the contact point itself is dead
    /// (unregistered push token, invalid number, unknown mailbox) and must be suppressed.
    Rejected {
        reason: String,
        contact_invalid: bool,
    },
    /// Definitely not sent, and a later try may work (5xx, throttled, connection refused or
    /// dropped before the request went out). `retry_after` honours the provider's hint.
    Unavailable {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The request went out but no answer came (timeout, connection lost mid-request): the
    /// provider may have accepted it. Resolved by receipt, never blindly re-sent on the same
    /// provider.
    Ambiguous { reason: String },
}

impl Outcome {
    pub fn rejected(reason: impl Into<String>) -> Self {
        Outcome::Rejected {
            reason: reason.into(),
            contact_invalid: false,
        }
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        Outcome::Unavailable {
            reason: reason.into(),
            retry_after: None,
        }
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// The account name (unique in a node's configuration): events, metrics and receipt
    /// matching use it.
    fn name(&self) -> &str;
    /// Adapter kind: `sandbox`, `fcm`, `apns`, `smtp`, `smpp`, `twilio`.
    fn kind(&self) -> &'static str;
    fn channel(&self) -> Channel;
    async fn send(&self, attempt: Attempt<'_>) -> Outcome;
    /// Whether receipts for accepted attempts may arrive later (the node then indexes the
    /// provider message id so they can be matched). The sandbox with immediate receipts says no.
    fn late_receipts(&self) -> bool {
        true
    }
}

/// What a receipt says happened to a sent message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReceiptKind {
    Delivered,
    Read,
    Clicked,
    Converted,
    BouncedHard,
    BouncedSoft,
    Complained,
    Blocked,
    Unsubscribed,
    /// Undeliverable for another reason (SMPP UNDELIV/REJECTD, Twilio `failed`/`undelivered`).
    Failed,
    /// The provider gave up waiting (SMPP EXPIRED).
    Expired,
}

impl ReceiptKind {
    /// True when this receipt ends the attempt unsuccessfully (the waterfall may fall back).
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            ReceiptKind::BouncedHard
                | ReceiptKind::BouncedSoft
                | ReceiptKind::Failed
                | ReceiptKind::Expired
                | ReceiptKind::Blocked
        )
    }

    /// True when the contact point itself is dead and must be suppressed.
    pub fn kills_contact(self) -> bool {
        matches!(self, ReceiptKind::BouncedHard)
    }
}

/// A receipt for an earlier accepted attempt, matched by `(provider, provider_message_id)`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Receipt {
    /// The account name ([`Provider::name`]) the attempt went through.
    pub provider: String,
    pub provider_message_id: String,
    pub kind: ReceiptKind,
    /// The provider's own status words, for the event's reason (e.g. `stat=UNDELIV err=001`).
    /// No contact points or bodies.
    pub detail: String,
    /// Provider-side error code where it gives one (SMPP `err:`, Twilio `ErrorCode`).
    pub error_code: Option<String>,
}

/// A message a person sent back (an SMS reply, a mobile-originated `deliver_sm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbound {
    pub provider: String,
    /// The sender's contact point (E.164 phone). Never logged.
    pub from: String,
    /// The address it was sent to (our sender id / short code).
    pub to: String,
    pub text: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderEvent {
    Receipt(Receipt),
    Inbound(Inbound),
}

/// Where adapters with their own connection (SMPP) put what arrives on it. Bounded: a slow
/// consumer slows the adapter's reading rather than growing memory.
pub type ProviderEvents = tokio::sync::mpsc::Sender<ProviderEvent>;

/// Errors building an adapter from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("provider {account}: {field}: {problem}")]
    Invalid {
        account: String,
        field: &'static str,
        problem: String,
    },
}

/// Errors parsing a provider's HTTP callback body.
#[derive(Debug, thiserror::Error)]
pub enum CallbackError {
    #[error("callback body: {0}")]
    Malformed(String),
}
