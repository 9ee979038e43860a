//! # twilio: SMS over a Twilio-compatible HTTP API, its status callbacks and inbound webhook
//!
//! Owns: one `POST {base}/2010-04-01/Accounts/{sid}/Messages.json` per [`Attempt`] (HTTP Basic
//! auth, form body, the attempt id as Twilio's `I-Twilio-Idempotency-Token` so a re-send of the
//! same attempt is deduplicated by the provider), the classification of the answer as an
//! [`Outcome`], and the parsing of the HTTP callbacks Twilio sends later: status callbacks
//! ([`parse_status_callback`]), incoming messages ([`parse_inbound`]) and their
//! `X-Twilio-Signature` ([`verify_signature`]).
//!
//! Must never: log or put into a reason a phone number or a message body (Twilio's error
//! `message` often quotes the number, so only its numeric `code` is kept); retry on its own.
//!
//! ## Outcome mapping
//! * 200/201 with a `sid` → `Accepted`, `provider_message_id` = the `sid` (`SM…`).
//! * 400 with Twilio error `code` 21211 (invalid `To`) or 21614 (`To` is not a mobile number)
//!   → `Rejected{contact_invalid: true}`. 21610 (the recipient replied STOP to this sender)
//!   → `Rejected{contact_invalid: false}`: the number is valid and other senders may reach it;
//!   it is an opt-out, not a dead contact (the reason says `21610`, so the node can record the
//!   opt-out).
//! * 401/403 → `Rejected`: wrong account sid / auth token is a configuration error that no
//!   retry fixes. Other 4xx → `Rejected`.
//! * 429 → `Unavailable`, `retry_after` from `Retry-After` (delta-seconds; an HTTP-date is not
//!   parsed and gives `None`). 5xx → `Unavailable` (same hint if present).
//! * connect failure (refused, DNS, TLS, connect timeout) → `Unavailable`: nothing was sent.
//! * timeout or connection lost after the request was sent → `Ambiguous`. A later re-send with
//!   the same attempt id is deduplicated by Twilio for the idempotency token's lifetime.
//!
//! ## Status callback error codes
//! `undelivered`/`failed` become [`ReceiptKind::Failed`] with `error_code`. Of the common codes,
//! 30005 (unknown destination handset: the number does not exist) and 30006 (landline or
//! unreachable carrier: it cannot receive SMS) mean the contact point is dead; 30003
//! (unreachable handset: switched off, out of coverage) is transient and does not.
//! [`error_code_kills_contact`] encodes that for the node.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use herald_proto::v1::Channel;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha1::Sha1;

use crate::{
    Attempt, CallbackError, ConfigError, Inbound, Outcome, Provider, ProviderEvent, Receipt,
    ReceiptKind,
};

/// Twilio's idempotency header: the same token within its window returns the first result.
pub const IDEMPOTENCY_HEADER: &str = "I-Twilio-Idempotency-Token";

fn default_base_url() -> String {
    "https://api.twilio.com".to_owned()
}
fn default_request_timeout_ms() -> u64 {
    10_000
}
fn default_connect_timeout_ms() -> u64 {
    3_000
}

/// A Twilio (or Twilio-compatible) messaging account. `Debug` prints the token as `***`.
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TwilioConfig {
    /// API base URL, without a trailing path (default `https://api.twilio.com`).
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// Account SID (`AC…`): the Basic-auth user and part of the API path.
    pub account_sid: String,
    /// Auth token: the Basic-auth password, and the key of `X-Twilio-Signature`.
    pub auth_token: String,
    /// Sender number (E.164) or alphanumeric sender id. Exactly one of `from` and
    /// `messaging_service_sid` must be set.
    #[serde(default)]
    pub from: Option<String>,
    /// Messaging service SID (`MG…`) used instead of `from`.
    #[serde(default)]
    pub messaging_service_sid: Option<String>,
    /// Public URL Twilio posts status callbacks to (passed as `StatusCallback`); none if unset.
    #[serde(default)]
    pub status_callback: Option<String>,
    /// Whole-request timeout in milliseconds (default 10 000). Expiry after the request was
    /// sent gives `Ambiguous`.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// TCP + TLS connect timeout in milliseconds (default 3 000). Expiry gives `Unavailable`.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
}

impl std::fmt::Debug for TwilioConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioConfig")
            .field("base_url", &self.base_url)
            .field("account_sid", &self.account_sid)
            .field("auth_token", &"***")
            .field("from", &self.from)
            .field("messaging_service_sid", &self.messaging_service_sid)
            .field("status_callback", &self.status_callback)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

impl TwilioConfig {
    /// A config with a `from` number and every optional knob at its default.
    pub fn new(
        account_sid: impl Into<String>,
        auth_token: impl Into<String>,
        from: impl Into<String>,
    ) -> Self {
        Self {
            base_url: default_base_url(),
            account_sid: account_sid.into(),
            auth_token: auth_token.into(),
            from: Some(from.into()),
            messaging_service_sid: None,
            status_callback: None,
            request_timeout_ms: default_request_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
        }
    }
}

enum Sender {
    From(String),
    MessagingService(String),
}

/// The Twilio SMS adapter.
pub struct TwilioProvider {
    name: String,
    client: reqwest::Client,
    messages_url: String,
    account_sid: String,
    auth_token: String,
    sender: Sender,
    status_callback: Option<String>,
}

fn invalid(account: &str, field: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        account: account.to_owned(),
        field,
        problem: problem.into(),
    }
}

impl TwilioProvider {
    pub fn new(name: impl Into<String>, config: &TwilioConfig) -> Result<Self, ConfigError> {
        let name = name.into();
        let base = url::Url::parse(&config.base_url)
            .map_err(|e| invalid(&name, "base_url", e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid(&name, "base_url", "must be http or https"));
        }
        if config.account_sid.is_empty()
            || !config
                .account_sid
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        {
            return Err(invalid(
                &name,
                "account_sid",
                "must be non-empty alphanumeric",
            ));
        }
        if config.auth_token.is_empty() {
            return Err(invalid(&name, "auth_token", "empty"));
        }
        let sender = match (&config.from, &config.messaging_service_sid) {
            (Some(from), None) if !from.is_empty() => Sender::From(from.clone()),
            (None, Some(mg)) if !mg.is_empty() => Sender::MessagingService(mg.clone()),
            _ => {
                return Err(invalid(
                    &name,
                    "from",
                    "set exactly one of from and messaging_service_sid",
                ));
            }
        };
        if let Some(cb) = &config.status_callback {
            url::Url::parse(cb).map_err(|e| invalid(&name, "status_callback", e.to_string()))?;
        }
        if config.request_timeout_ms == 0 || config.connect_timeout_ms == 0 {
            return Err(invalid(
                &name,
                "request_timeout_ms",
                "timeouts must be positive",
            ));
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .build()
            .map_err(|e| invalid(&name, "base_url", format!("http client: {e}")))?;
        let messages_url = format!(
            "{}/2010-04-01/Accounts/{}/Messages.json",
            config.base_url.trim_end_matches('/'),
            config.account_sid
        );
        Ok(Self {
            name,
            client,
            messages_url,
            account_sid: config.account_sid.clone(),
            auth_token: config.auth_token.clone(),
            sender,
            status_callback: config.status_callback.clone(),
        })
    }

    fn form_body(&self, to: &str, text: &str) -> String {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        form.append_pair("To", to);
        match &self.sender {
            Sender::From(from) => form.append_pair("From", from),
            Sender::MessagingService(mg) => form.append_pair("MessagingServiceSid", mg),
        };
        form.append_pair("Body", text);
        if let Some(cb) = &self.status_callback {
            form.append_pair("StatusCallback", cb);
        }
        form.finish()
    }
}

/// Twilio's JSON error body (`{"code": 21211, "message": "...", "more_info": "...",
/// "status": 400}`). Only `code` is kept: `message` may quote the phone number.
#[derive(Deserialize)]
struct TwilioError {
    code: Option<u64>,
}

#[derive(Deserialize)]
struct TwilioMessage {
    sid: Option<String>,
}

/// `Retry-After` as delta-seconds.
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// Classifies an HTTP answer from the Messages API.
pub fn classify_response(
    status: u16,
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Outcome {
    if (200..300).contains(&status) {
        return match serde_json::from_slice::<TwilioMessage>(body) {
            Ok(TwilioMessage { sid: Some(sid) }) if !sid.is_empty() => Outcome::Accepted {
                provider_message_id: sid,
                delivered: false,
                read: false,
            },
            // Taken, but we cannot match receipts to it: only a receipt-less ambiguity.
            _ => Outcome::Ambiguous {
                reason: format!("twilio {status} without a message sid"),
            },
        };
    }
    let code = serde_json::from_slice::<TwilioError>(body)
        .ok()
        .and_then(|e| e.code);
    let reason = match code {
        Some(code) => format!("twilio {status} code {code}"),
        None => format!("twilio {status}"),
    };
    match status {
        429 => Outcome::Unavailable {
            reason,
            retry_after: retry_after(headers),
        },
        500..=599 => Outcome::Unavailable {
            reason,
            retry_after: retry_after(headers),
        },
        401 | 403 => Outcome::Rejected {
            reason: format!("{reason} (credentials: configuration error)"),
            contact_invalid: false,
        },
        _ => Outcome::Rejected {
            reason,
            contact_invalid: matches!(code, Some(21211 | 21614)),
        },
    }
}

fn classify_transport_error(err: &reqwest::Error) -> Outcome {
    // reqwest's Display includes the URL (account sid, no contact point); keep only the kind.
    if err.is_connect() {
        Outcome::unavailable("twilio: connect failed")
    } else if err.is_builder() {
        Outcome::rejected("twilio: request could not be built")
    } else if err.is_timeout() {
        Outcome::Ambiguous {
            reason: "twilio: timed out after the request was sent".into(),
        }
    } else {
        Outcome::Ambiguous {
            reason: "twilio: connection lost after the request was sent".into(),
        }
    }
}

#[async_trait]
impl Provider for TwilioProvider {
    fn name(&self) -> &str {
        &self.name
    }

    fn kind(&self) -> &'static str {
        "twilio"
    }

    fn channel(&self) -> Channel {
        Channel::Sms
    }

    async fn send(&self, attempt: Attempt<'_>) -> Outcome {
        let Some(sms) = attempt.content.sms.as_ref() else {
            return Outcome::rejected("no sms content");
        };
        if attempt.to.is_empty() {
            return Outcome::Rejected {
                reason: "empty phone number".into(),
                contact_invalid: true,
            };
        }
        let request = self
            .client
            .post(&self.messages_url)
            .basic_auth(&self.account_sid, Some(&self.auth_token))
            .header(IDEMPOTENCY_HEADER, attempt.attempt_id)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(self.form_body(attempt.to, &sms.text));
        let outcome = match request.send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                let headers = response.headers().clone();
                match response.bytes().await {
                    Ok(body) => classify_response(status, &headers, &body),
                    // The status line came back: a 2xx whose body was lost is ambiguous (no
                    // sid), anything else already tells us enough.
                    Err(_) if (200..300).contains(&status) => Outcome::Ambiguous {
                        reason: format!("twilio {status}: body lost"),
                    },
                    Err(_) => classify_response(status, &headers, b""),
                }
            }
            Err(err) => classify_transport_error(&err),
        };
        tracing::debug!(
            provider = %self.name,
            attempt_id = attempt.attempt_id,
            ?outcome,
            "twilio send"
        );
        outcome
    }
}

/// True when a status callback `ErrorCode` means the number itself is dead (see module docs).
pub fn error_code_kills_contact(code: &str) -> bool {
    matches!(code, "30005" | "30006")
}

/// The fields of a form-encoded body (later duplicates win).
fn form_map(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// All `(name, value)` pairs of a form-encoded body, for [`verify_signature`].
pub fn form_params(body: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn required<'a>(form: &'a HashMap<String, String>, name: &str) -> Result<&'a str, CallbackError> {
    form.get(name)
        .map(String::as_str)
        .ok_or_else(|| CallbackError::Malformed(format!("missing {name}")))
}

/// Parses a Twilio status callback (form-encoded `MessageSid`, `MessageStatus`, `ErrorCode`).
/// Intermediate statuses (`accepted`, `scheduled`, `queued`, `sending`, `sent`, `receiving`,
/// `received`) give `None`.
pub fn parse_status_callback(
    provider: &str,
    form_body: &[u8],
) -> Result<Option<ProviderEvent>, CallbackError> {
    let form = form_map(form_body);
    let sid = required(&form, "MessageSid")?;
    if sid.is_empty() {
        return Err(CallbackError::Malformed("empty MessageSid".into()));
    }
    // Older callbacks name it SmsStatus; Twilio sends both.
    let status = form
        .get("MessageStatus")
        .or_else(|| form.get("SmsStatus"))
        .ok_or_else(|| CallbackError::Malformed("missing MessageStatus".into()))?;
    let kind = match status.as_str() {
        "delivered" => ReceiptKind::Delivered,
        "read" => ReceiptKind::Read,
        "undelivered" | "failed" => ReceiptKind::Failed,
        "accepted" | "scheduled" | "queued" | "sending" | "sent" | "receiving" | "received"
        | "canceled" => return Ok(None),
        other => {
            return Err(CallbackError::Malformed(format!(
                "unknown MessageStatus {:?}",
                other.chars().take(32).collect::<String>()
            )));
        }
    };
    let error_code = form
        .get("ErrorCode")
        .filter(|c| !c.is_empty() && c.chars().all(|ch| ch.is_ascii_digit()))
        .cloned();
    let detail = match &error_code {
        Some(code) => format!("status={status} err={code}"),
        None => format!("status={status}"),
    };
    Ok(Some(ProviderEvent::Receipt(Receipt {
        provider: provider.to_owned(),
        provider_message_id: sid.to_owned(),
        kind,
        detail,
        error_code,
    })))
}

/// Parses Twilio's incoming-message webhook (form-encoded `From`, `To`, `Body`).
pub fn parse_inbound(provider: &str, form_body: &[u8]) -> Result<ProviderEvent, CallbackError> {
    let form = form_map(form_body);
    Ok(ProviderEvent::Inbound(Inbound {
        provider: provider.to_owned(),
        from: required(&form, "From")?.to_owned(),
        to: required(&form, "To")?.to_owned(),
        text: required(&form, "Body")?.to_owned(),
    }))
}

/// The `X-Twilio-Signature` for a request: base64(HMAC-SHA1(auth_token, url + every POST
/// parameter's name and value, sorted by name then value)).
pub fn compute_signature(auth_token: &str, url: &str, form_params: &[(String, String)]) -> String {
    let mac = signature_mac(auth_token, url, form_params);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn signature_mac(auth_token: &str, url: &str, form_params: &[(String, String)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(String, String)> = form_params.iter().collect();
    sorted.sort();
    let mut mac = <Hmac<Sha1> as hmac::digest::KeyInit>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Checks an `X-Twilio-Signature` header against the full public URL Twilio called (scheme,
/// host, path and query exactly as configured there) and the form parameters. Constant-time.
pub fn verify_signature(
    auth_token: &str,
    url: &str,
    form_params: &[(String, String)],
    header_value: &str,
) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(header_value.trim()) else {
        return false;
    };
    signature_mac(auth_token, url, form_params)
        .verify_slice(&given)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn signature_matches_twilio_documentation_example() {
        // The example from Twilio's "Validating requests" documentation.
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let p = params(&[
            ("Digits", "1234"),
            ("To", "+18005551212"),
            ("From", "+12349013030"),
            ("Caller", "+12349013030"),
            ("CallSid", "CA1234567890ABCDE"),
        ]);
        assert_eq!(
            compute_signature("12345", url, &p),
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        );
        assert!(verify_signature(
            "12345",
            url,
            &p,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify_signature(
            "12346",
            url,
            &p,
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify_signature(
            "12345",
            url,
            &p[1..],
            "0/KCTR6DLpKmkAf8muzZqo1nDgQ="
        ));
        assert!(!verify_signature("12345", url, &p, "not base64!"));
    }

    #[test]
    fn status_callbacks() {
        let ev = parse_status_callback(
            "tw",
            b"SmsSid=SM0123&SmsStatus=delivered&MessageStatus=delivered&To=%2B15551234567&MessageSid=SM0123&AccountSid=AC1&From=%2B15557654321&ApiVersion=2010-04-01",
        )
        .expect("ok")
        .expect("event");
        assert_eq!(
            ev,
            ProviderEvent::Receipt(Receipt {
                provider: "tw".into(),
                provider_message_id: "SM0123".into(),
                kind: ReceiptKind::Delivered,
                detail: "status=delivered".into(),
                error_code: None,
            })
        );
        let ev = parse_status_callback(
            "tw",
            b"MessageSid=SM9&MessageStatus=undelivered&ErrorCode=30005&To=%2B15551234567",
        )
        .expect("ok")
        .expect("event");
        match ev {
            ProviderEvent::Receipt(r) => {
                assert_eq!(r.kind, ReceiptKind::Failed);
                assert_eq!(r.error_code.as_deref(), Some("30005"));
                assert_eq!(r.detail, "status=undelivered err=30005");
                assert!(!r.detail.contains("555"));
            }
            other => panic!("{other:?}"),
        }
        let read = parse_status_callback("tw", b"MessageSid=SM9&MessageStatus=read")
            .expect("ok")
            .expect("event");
        assert!(matches!(
            read,
            ProviderEvent::Receipt(Receipt {
                kind: ReceiptKind::Read,
                ..
            })
        ));
        for s in ["queued", "sending", "sent"] {
            let body = format!("MessageSid=SM9&MessageStatus={s}");
            assert_eq!(
                parse_status_callback("tw", body.as_bytes()).expect("ok"),
                None
            );
        }
        assert!(parse_status_callback("tw", b"MessageStatus=delivered").is_err());
        assert!(parse_status_callback("tw", b"MessageSid=SM1").is_err());
        assert!(parse_status_callback("tw", b"MessageSid=SM1&MessageStatus=bogus").is_err());
        assert!(error_code_kills_contact("30005"));
        assert!(error_code_kills_contact("30006"));
        assert!(!error_code_kills_contact("30003"));
    }

    #[test]
    fn inbound() {
        let ev = parse_inbound(
            "tw",
            b"ToCountry=US&SmsMessageSid=SM1&NumMedia=0&Body=STOP+now%21&From=%2B15551234567&To=%2B15557654321&MessageSid=SM1",
        )
        .expect("ok");
        assert_eq!(
            ev,
            ProviderEvent::Inbound(Inbound {
                provider: "tw".into(),
                from: "+15551234567".into(),
                to: "+15557654321".into(),
                text: "STOP now!".into(),
            })
        );
        assert!(parse_inbound("tw", b"From=%2B1&To=%2B2").is_err());
    }

    #[test]
    fn response_classification() {
        let h = reqwest::header::HeaderMap::new();
        assert_eq!(
            classify_response(201, &h, br#"{"sid":"SMabc","status":"queued"}"#),
            Outcome::Accepted {
                provider_message_id: "SMabc".into(),
                delivered: false,
                read: false
            }
        );
        let rejected = |body: &[u8]| classify_response(400, &h, body);
        assert!(matches!(
            rejected(br#"{"code":21211,"message":"The 'To' number +1555 is not valid","status":400}"#),
            Outcome::Rejected { contact_invalid: true, ref reason } if !reason.contains("+1555")
        ));
        assert!(matches!(
            rejected(br#"{"code":21614,"status":400}"#),
            Outcome::Rejected {
                contact_invalid: true,
                ..
            }
        ));
        assert!(matches!(
            rejected(br#"{"code":21610,"status":400}"#),
            Outcome::Rejected { contact_invalid: false, ref reason } if reason.contains("21610")
        ));
        assert!(matches!(
            classify_response(500, &h, b"oops"),
            Outcome::Unavailable {
                retry_after: None,
                ..
            }
        ));
        let mut h429 = reqwest::header::HeaderMap::new();
        h429.insert(reqwest::header::RETRY_AFTER, "3".parse().expect("header"));
        assert_eq!(
            classify_response(429, &h429, br#"{"code":20429}"#),
            Outcome::Unavailable {
                reason: "twilio 429 code 20429".into(),
                retry_after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            classify_response(201, &h, b"{}"),
            Outcome::Ambiguous { .. }
        ));
    }

    #[test]
    fn config_validation() {
        let c: TwilioConfig =
            serde_json::from_str(r#"{"account_sid":"AC1","auth_token":"t","from":"+15550001111"}"#)
                .expect("parses");
        assert_eq!(c.base_url, "https://api.twilio.com");
        assert_eq!(c.request_timeout_ms, 10_000);
        assert!(!format!("{c:?}").contains("\"t\""));
        let p = TwilioProvider::new("tw", &c).expect("valid");
        assert_eq!(
            p.messages_url,
            "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages.json"
        );
        let mut both = c.clone();
        both.messaging_service_sid = Some("MG1".into());
        assert!(TwilioProvider::new("tw", &both).is_err());
        let mut neither = c;
        neither.from = None;
        assert!(TwilioProvider::new("tw", &neither).is_err());
    }
}
