//! # smtp: the email adapter over SMTP (RFC 5321) through a relay
//!
//! Owns: building one MIME message per [`Attempt`] (text and/or HTML, our own `Message-ID`, the
//! `X-Herald-Attempt` header, RFC 8058 one-click `List-Unsubscribe`), handing it to a relay over
//! lettre's pooled [`AsyncSmtpTransport`], and classifying the relay's answer as an [`Outcome`].
//!
//! Must never: log or put into an outcome's reason an email address, a subject or a body (reply
//! texts from the relay are redacted of anything that looks like an address); retry on its own
//! (the node's failover decides); open more connections than the pool size.
//!
//! ## Message-ID
//! The `Message-ID` is derived from the attempt id (`<{attempt_id}@{from domain}>`), not random:
//! a re-send of the same attempt (after a crash or an ambiguous outcome) carries the same id, so
//! receivers and webhook matching (`email_webhook`: the ESP echoes it as `smtp-id`) see one
//! message, and the `provider_message_id` we report on acceptance is known before the relay
//! answers.
//!
//! ## Outcome mapping, and what lettre lets us tell apart
//! * 2xx after the message body → `Accepted`, `provider_message_id` = our `Message-ID` without
//!   its angle brackets (`att-1@example.com`), the form `email_webhook` matches receipts on.
//! * 550/551/553 whose enhanced status is `5.1.x` (or absent) → `Rejected{contact_invalid}`:
//!   the mailbox does not exist or its address is bad. Other 5xx (policy `5.7.x`, content
//!   rejected at end of DATA, `535` bad credentials) → `Rejected` (not contact-invalid).
//! * 4xx (421/450/451/452…) anywhere → `Unavailable`: the relay has not taken the message.
//! * connection refused, DNS, TCP connect timeout, TLS handshake failure, a relay lacking
//!   `STARTTLS` when it is required, a client-side refusal (8BITMIME/SMTPUTF8 missing) →
//!   `Unavailable`: these all happen before `MAIL FROM`.
//! * an I/O error, no complete reply within `command_timeout_ms`, or the connection closing
//!   without a reply → `Ambiguous`.
//!   **Limit:** lettre's [`lettre::transport::smtp::Error`] does not say in which phase (greeting,
//!   `RCPT`, after `DATA`) such an error happened, so we cannot prove the body was not sent and
//!   we report `Ambiguous` for all of them. This over-reports ambiguity for a relay that drops
//!   the connection during the greeting; it never under-reports it. lettre's pool re-checks a
//!   parked connection with `NOOP` before reuse, so an idle connection the relay closed does not
//!   surface as such an error.
//! * **Timeouts:** lettre's tokio transport applies its timeout to the TCP connect only, never
//!   to reads, so this adapter bounds the whole transaction (connect, greeting, EHLO, AUTH,
//!   MAIL, RCPT, DATA, body) by `command_timeout_ms` itself. On expiry the outcome is
//!   `Ambiguous` and the pool is replaced: the abandoned connection is mid-transaction and must
//!   never be reused. Narrow race, documented: a send that checked out a parked connection of
//!   the old pool in the instant before the swap can still meet it (its `NOOP` check then reads
//!   the stale reply).
//! * an address lettre cannot parse → `Rejected{contact_invalid}` before any network I/O.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_proto::v1::Channel;
use lettre::message::header::{HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{Address, AsyncTransport, Message, Tokio1Executor};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::{Attempt, ConfigError, ListUnsubscribe, Outcome, Provider};

/// How the connection to the relay is secured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plaintext only. For a relay on loopback or a trusted private network.
    None,
    /// Plaintext, then a required `STARTTLS` upgrade (the submission port 587). The default.
    #[default]
    Starttls,
    /// TLS from the first byte ("implicit TLS", SMTPS, port 465).
    Tls,
}

impl SmtpTls {
    /// The conventional port for this mode: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

fn default_pool_max_size() -> u32 {
    10
}
fn default_pool_idle_timeout_ms() -> u64 {
    60_000
}
fn default_command_timeout_ms() -> u64 {
    30_000
}

/// An SMTP relay account. `Debug` prints the password as `***`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Relay host name (also the name its TLS certificate is checked against).
    pub host: String,
    /// Relay port. Default: from `tls` — 587 for `starttls`, 465 for `tls`, 25 for `none`.
    #[serde(default)]
    pub port: Option<u16>,
    /// `none`, `starttls` (default; the upgrade is required, never opportunistic) or `tls`.
    #[serde(default)]
    pub tls: SmtpTls,
    /// AUTH user name; with `password`, the adapter authenticates (PLAIN/LOGIN).
    #[serde(default)]
    pub username: Option<String>,
    /// AUTH password. Required when `username` is set.
    #[serde(default)]
    pub password: Option<String>,
    /// Envelope sender and `From:` address; its domain also names our `Message-ID`s.
    pub from_address: String,
    /// Optional display name for `From:` (e.g. `Acme Notifications`).
    #[serde(default)]
    pub from_name: Option<String>,
    /// Optional `Reply-To:` address.
    #[serde(default)]
    pub reply_to: Option<String>,
    /// Most connections open to the relay at once, busy or parked (default 10). Sends beyond it
    /// wait for a free connection.
    #[serde(default = "default_pool_max_size")]
    pub pool_max_size: u32,
    /// A parked connection idle this long is closed, in milliseconds (default 60 000).
    #[serde(default = "default_pool_idle_timeout_ms")]
    pub pool_idle_timeout_ms: u64,
    /// Bound on the TCP connect, and on one whole SMTP transaction (connect through the reply
    /// to the message body), in milliseconds (default 30 000). A send that runs out of it is
    /// `Ambiguous` (the body may have gone out).
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// SendGrid's event webhook verification key (base64, as SendGrid shows it). Set = event
    /// callbacks (`/callbacks/<account>/events`) must carry a valid signature, else 403.
    #[serde(default)]
    pub event_webhook_key: Option<String>,
}

impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("from_address", &self.from_address)
            .field("from_name", &self.from_name)
            .field("reply_to", &self.reply_to)
            .field("pool_max_size", &self.pool_max_size)
            .field("pool_idle_timeout_ms", &self.pool_idle_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("event_webhook_key", &self.event_webhook_key.is_some())
            .finish()
    }
}

impl SmtpConfig {
    /// A config with every optional knob at its default.
    pub fn new(host: impl Into<String>, from_address: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            tls: SmtpTls::default(),
            username: None,
            password: None,
            from_address: from_address.into(),
            from_name: None,
            reply_to: None,
            pool_max_size: default_pool_max_size(),
            pool_idle_timeout_ms: default_pool_idle_timeout_ms(),
            command_timeout_ms: default_command_timeout_ms(),
            event_webhook_key: None,
        }
    }
}

/// The SMTP email adapter. Cheap to share: the pool lives inside.
pub struct SmtpProvider {
    name: String,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    /// The right-hand side of our `Message-ID`s.
    message_id_domain: String,
    /// Swapped for a fresh one when a send times out (see [`SmtpProvider::send`]).
    transport: RwLock<Arc<AsyncSmtpTransport<Tokio1Executor>>>,
    config: SmtpConfig,
    /// Bound on one whole SMTP transaction (lettre's tokio transport has no read timeout).
    send_timeout: Duration,
    /// lettre's pool caps only *parked* connections; this caps connections in use, so a burst
    /// never opens more than `pool_max_size` sessions to the relay.
    in_flight: Arc<Semaphore>,
}

fn invalid(account: &str, field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        account: account.to_owned(),
        field,
        problem: problem.into(),
    }
}

impl SmtpProvider {
    /// Builds the adapter. No connection is opened until the first send.
    pub fn new(name: impl Into<String>, config: &SmtpConfig) -> Result<Self, ConfigError> {
        let name = name.into();
        if config.host.trim().is_empty() {
            return Err(invalid(&name, "host", "empty"));
        }
        if let Some(key) = &config.event_webhook_key {
            crate::email_webhook::EventWebhookKey::from_base64(key)
                .map_err(|problem| invalid(&name, "event_webhook_key", problem))?;
        }
        let from_address: Address = config
            .from_address
            .parse()
            .map_err(|e| invalid(&name, "from_address", format!("{e}")))?;
        let from = Mailbox::new(config.from_name.clone(), from_address.clone());
        let reply_to = match &config.reply_to {
            Some(r) => Some(Mailbox::new(
                None,
                r.parse()
                    .map_err(|e| invalid(&name, "reply_to", format!("{e}")))?,
            )),
            None => None,
        };
        if config.pool_max_size == 0 {
            return Err(invalid(&name, "pool_max_size", "must be at least 1"));
        }
        if config.command_timeout_ms == 0 {
            return Err(invalid(&name, "command_timeout_ms", "must be positive"));
        }
        let transport = build_transport(&name, config)?;
        Ok(Self {
            name,
            from,
            reply_to,
            message_id_domain: from_address.domain().to_owned(),
            transport: RwLock::new(Arc::new(transport)),
            config: config.clone(),
            send_timeout: Duration::from_millis(config.command_timeout_ms),
            in_flight: Arc::new(Semaphore::new(config.pool_max_size as usize)),
        })
    }

    /// The `Message-ID` (with angle brackets) this adapter puts on an attempt's message.
    pub fn message_id_for(&self, attempt_id: &str) -> String {
        message_id(attempt_id, &self.message_id_domain)
    }

    /// Closes the pooled connections (QUIT). Sends after this are `Unavailable`.
    pub async fn shutdown(&self) {
        self.in_flight.close();
        let transport = Arc::clone(&*self.transport.read());
        transport.shutdown().await;
    }

    /// Swaps in a fresh pool unless another send already did, then shuts the old one down.
    async fn replace_transport(&self, old: &Arc<AsyncSmtpTransport<Tokio1Executor>>) {
        let fresh = match build_transport(&self.name, &self.config) {
            Ok(t) => Arc::new(t),
            // Cannot happen: the same config built one in `new`. Keep the old pool.
            Err(_) => return,
        };
        {
            let mut current = self.transport.write();
            if !Arc::ptr_eq(&current, old) {
                return;
            }
            *current = fresh;
        }
        old.shutdown().await;
        tracing::warn!(provider = %self.name, "smtp send timed out; connection pool replaced");
    }

    fn build_message(&self, attempt: &Attempt<'_>, to: Address) -> Result<Message, String> {
        let email = attempt
            .content
            .email
            .as_ref()
            .ok_or_else(|| "no email content".to_owned())?;
        let mut builder = Message::builder()
            .from(self.from.clone())
            .to(Mailbox::new(None, to))
            .subject(email.subject.clone())
            .message_id(Some(self.message_id_for(attempt.attempt_id)))
            .raw_header(HeaderValue::new(
                HeaderName::new_from_ascii_str("X-Herald-Attempt"),
                header_safe(attempt.attempt_id)?,
            ));
        if let Some(reply_to) = &self.reply_to {
            builder = builder.reply_to(reply_to.clone());
        }
        if let Some(unsub) = attempt.list_unsubscribe {
            builder = builder
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe"),
                    list_unsubscribe_value(unsub)?,
                ))
                .raw_header(HeaderValue::new(
                    HeaderName::new_from_ascii_str("List-Unsubscribe-Post"),
                    "List-Unsubscribe=One-Click".to_owned(),
                ));
        }
        let text = (!email.text_body.is_empty()).then(|| email.text_body.clone());
        let html = (!email.html_body.is_empty()).then(|| email.html_body.clone());
        let built = match (text, html) {
            (Some(text), Some(html)) => {
                builder.multipart(MultiPart::alternative_plain_html(text, html))
            }
            (None, Some(html)) => builder.singlepart(SinglePart::html(html)),
            (Some(text), None) => builder.singlepart(SinglePart::plain(text)),
            (None, None) => return Err("email content has neither text nor html body".into()),
        };
        built.map_err(|e| format!("building the message: {e}"))
    }
}

fn build_transport(
    name: &str,
    config: &SmtpConfig,
) -> Result<AsyncSmtpTransport<Tokio1Executor>, ConfigError> {
    let tls = match config.tls {
        SmtpTls::None => Tls::None,
        SmtpTls::Starttls => Tls::Required(
            TlsParameters::new(config.host.clone())
                .map_err(|e| invalid(name, "tls", format!("{e}")))?,
        ),
        SmtpTls::Tls => Tls::Wrapper(
            TlsParameters::new(config.host.clone())
                .map_err(|e| invalid(name, "tls", format!("{e}")))?,
        ),
    };
    let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&config.host)
        .port(config.port.unwrap_or(config.tls.default_port()))
        .tls(tls)
        .timeout(Some(Duration::from_millis(config.command_timeout_ms)))
        .pool_config(
            PoolConfig::new()
                .max_size(config.pool_max_size)
                .idle_timeout(Duration::from_millis(config.pool_idle_timeout_ms)),
        );
    match (&config.username, &config.password) {
        (Some(user), Some(password)) => {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        (None, None) => {}
        (Some(_), None) => return Err(invalid(name, "password", "username set without it")),
        (None, Some(_)) => return Err(invalid(name, "username", "password set without it")),
    }
    Ok(builder.build())
}

fn message_id(attempt_id: &str, domain: &str) -> String {
    // Attempt ids are ULID-like; anything outside the RFC 5322 `dot-atom-text` set is replaced
    // so the id stays a valid msg-id (and identical on a re-send).
    let left: String = attempt_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("<{left}@{domain}>")
}

/// Refuses values that could inject header lines.
fn header_safe(value: &str) -> Result<String, String> {
    if value.chars().any(|c| c.is_control()) {
        return Err("header value with control characters".into());
    }
    Ok(value.to_owned())
}

/// `<https://...>, <mailto:...>` (RFC 2369), refusing anything that is not a plain URI.
fn list_unsubscribe_value(unsub: &ListUnsubscribe) -> Result<String, String> {
    fn uri_ok(uri: &str, scheme: &str) -> bool {
        uri.len() > scheme.len()
            && uri[..scheme.len()].eq_ignore_ascii_case(scheme)
            && !uri
                .chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '<' || c == '>')
    }
    // RFC 8058 requires HTTPS; plain HTTP only to a loopback host (tests, local demos).
    let loopback_http = [
        "http://127.0.0.1:",
        "http://127.0.0.1/",
        "http://localhost:",
        "http://localhost/",
    ]
    .iter()
    .any(|prefix| uri_ok(&unsub.url, prefix));
    if !uri_ok(&unsub.url, "https://") && !loopback_http {
        return Err("list-unsubscribe url must be a plain https:// URI".into());
    }
    let mut value = format!("<{}>", unsub.url);
    if let Some(mailto) = &unsub.mailto {
        if !uri_ok(mailto, "mailto:") {
            return Err("list-unsubscribe mailto must be a plain mailto: URI".into());
        }
        value.push_str(&format!(", <{mailto}>"));
    }
    Ok(value)
}

/// Replaces every word containing `@` (an address the relay echoed) so reasons carry none.
fn redact(text: &str) -> String {
    text.split_whitespace()
        .map(|w| if w.contains('@') { "<redacted>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The enhanced status code (`5.1.1`) at the start of a reply text, if any (RFC 3463).
fn enhanced_status(text: &str) -> Option<&str> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?;
    let ok = matches!(class, "2" | "4" | "5")
        && parts.clone().count() == 2
        && parts.all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
    ok.then_some(first)
}

/// Classifies a lettre SMTP error; see the module docs for what it can and cannot tell.
pub fn classify_error(err: &lettre::transport::smtp::Error) -> Outcome {
    use std::error::Error as _;
    let text = err.source().map(|s| s.to_string()).unwrap_or_default();
    if let Some(code) = err.status() {
        let code = u16::from(code);
        let reason = format!("smtp {code} {}", redact(&text))
            .trim_end()
            .to_owned();
        if err.is_permanent() {
            let mailbox_code = matches!(code, 550 | 551 | 553);
            let addressing = enhanced_status(&text).is_none_or(|s| s.starts_with("5.1."));
            return Outcome::Rejected {
                reason,
                contact_invalid: mailbox_code && addressing,
            };
        }
        return Outcome::Unavailable {
            reason,
            retry_after: None,
        };
    }
    let reason = redact(&err.to_string());
    if err.is_tls() || err.is_client() || err.is_transport_shutdown() {
        return Outcome::unavailable(format!("smtp: {reason}"));
    }
    if err.is_timeout() {
        return Outcome::Ambiguous {
            reason: format!("smtp timeout: {reason}"),
        };
    }
    if err.is_response() {
        return Outcome::Ambiguous {
            reason: format!("smtp: {reason}"),
        };
    }
    // What is left: `Connection` (refused, DNS, TCP connect timeout: before any SMTP byte) and
    // `Network` (an I/O error on an established session, phase unknown). lettre exposes no
    // predicate for `Connection`; its Display says "Connection error".
    if err.to_string().starts_with("Connection error") {
        Outcome::unavailable(format!("smtp: {reason}"))
    } else {
        Outcome::Ambiguous {
            reason: format!("smtp: {reason}"),
        }
    }
}

#[async_trait]
impl Provider for SmtpProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "smtp"
    }

    fn channel(&self) -> Channel {
        Channel::Email
    }

    async fn send(&self, attempt: Attempt<'_>) -> Outcome {
        let to: Address = match attempt.to.parse() {
            Ok(a) => a,
            Err(_) => {
                return Outcome::Rejected {
                    reason: "invalid email address syntax".into(),
                    contact_invalid: true,
                };
            }
        };
        let message = match self.build_message(&attempt, to) {
            Ok(m) => m,
            Err(reason) => return Outcome::rejected(reason),
        };
        // Receipts (SendGrid's `smtp-id`, brackets stripped) match on the bare id.
        let message_id = self
            .message_id_for(attempt.attempt_id)
            .trim_start_matches('<')
            .trim_end_matches('>')
            .to_owned();
        let _permit = match self.in_flight.acquire().await {
            Ok(p) => p,
            Err(_) => return Outcome::unavailable("smtp adapter shut down"),
        };
        let transport = Arc::clone(&*self.transport.read());
        let result = tokio::time::timeout(self.send_timeout, transport.send(message)).await;
        let outcome = match result {
            Ok(Ok(_response)) => Outcome::Accepted {
                provider_message_id: message_id,
                delivered: false,
                read: false,
            },
            Ok(Err(err)) => classify_error(&err),
            Err(_elapsed) => {
                // Dropping lettre's send future mid-transaction hands its connection back to
                // the pool un-marked: a late reply would then answer our next command. Retire
                // the whole pool (its parked and returning connections are closed) and start
                // a fresh one.
                self.replace_transport(&transport).await;
                Outcome::Ambiguous {
                    reason: format!(
                        "smtp: no complete reply within {} ms",
                        self.send_timeout.as_millis()
                    ),
                }
            }
        };
        tracing::debug!(
            provider = %self.name,
            attempt_id = attempt.attempt_id,
            ?outcome,
            "smtp send"
        );
        // lettre parks a used connection from a spawned task; yielding once before freeing our
        // permit lets that task run, so the next send reuses the connection instead of opening
        // another (reuse is then likely, not guaranteed).
        tokio::task::yield_now().await;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_is_stable_and_valid() {
        assert_eq!(
            message_id("01JABC", "example.com"),
            "<01JABC@example.com>".to_string()
        );
        assert_eq!(message_id("a b<c>", "x.org"), "<a_b_c_@x.org>");
    }

    #[test]
    fn enhanced_status_parsing() {
        assert_eq!(enhanced_status("5.1.1 User unknown"), Some("5.1.1"));
        assert_eq!(enhanced_status("4.3.0 Try again"), Some("4.3.0"));
        assert_eq!(enhanced_status("User unknown"), None);
        assert_eq!(enhanced_status("5.1 nope"), None);
        assert_eq!(enhanced_status(""), None);
    }

    #[test]
    fn redact_removes_addresses() {
        assert_eq!(
            redact("5.1.1 <bob@example.com>: Recipient address rejected"),
            "5.1.1 <redacted> Recipient address rejected"
        );
    }

    #[test]
    fn list_unsubscribe_values() {
        let u = ListUnsubscribe {
            url: "https://u.example/x?t=1".into(),
            mailto: Some("mailto:u@example.com?subject=unsub".into()),
        };
        assert_eq!(
            list_unsubscribe_value(&u).expect("valid"),
            "<https://u.example/x?t=1>, <mailto:u@example.com?subject=unsub>"
        );
        let bad = ListUnsubscribe {
            url: "https://u.example/\r\nBcc: x@y".into(),
            mailto: None,
        };
        assert!(list_unsubscribe_value(&bad).is_err());
        let http = ListUnsubscribe {
            url: "http://u.example/".into(),
            mailto: None,
        };
        assert!(list_unsubscribe_value(&http).is_err());
    }

    #[test]
    fn config_defaults() {
        let c: SmtpConfig =
            serde_json::from_str(r#"{"host":"smtp.example.com","from_address":"n@example.com"}"#)
                .expect("parses");
        assert_eq!(c.tls, SmtpTls::Starttls);
        assert_eq!(c.port.unwrap_or(c.tls.default_port()), 587);
        assert_eq!(c.pool_max_size, 10);
        assert_eq!(c.command_timeout_ms, 30_000);
        assert!(
            serde_json::from_str::<SmtpConfig>(
                r#"{"host":"h","from_address":"n@example.com","bogus":1}"#
            )
            .is_err()
        );
    }

    #[tokio::test]
    async fn new_validates() {
        let mut c = SmtpConfig::new("smtp.example.com", "not an address");
        assert!(SmtpProvider::new("a", &c).is_err());
        c.from_address = "n@example.com".into();
        c.username = Some("u".into());
        assert!(SmtpProvider::new("a", &c).is_err());
        c.password = Some("hunter2".into());
        assert!(!format!("{c:?}").contains("hunter2"));
        let p = SmtpProvider::new("a", &c).expect("valid");
        assert_eq!(p.message_id_for("att1"), "<att1@example.com>");
    }
}
