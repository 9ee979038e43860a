//! # email_webhook: email event webhooks (SendGrid's Event Webhook) → receipts
//!
//! Owns: parsing the JSON body an email service posts about messages we relayed through it
//! (delivered, opened, clicked, bounced, blocked, dropped, spam report, unsubscribe) into
//! [`ProviderEvent::Receipt`]s, matched on the `Message-ID` the `smtp` adapter set: SendGrid
//! echoes it as `smtp-id`, and we strip its angle brackets, which is exactly the
//! `provider_message_id` the SMTP adapter reported on acceptance.
//!
//! Must never: put an email address (the `email` field, addresses quoted in `reason`) into a
//! receipt's `detail`, or log one; fail a whole batch for one odd entry (SendGrid would re-post
//! the whole batch): unknown kinds, entries without an `smtp-id` and non-object entries are
//! skipped and counted in [`WebhookStats`]. Only a body that is not a JSON array is an error.
//!
//! SendGrid's Signed Event Webhook ([`EventWebhookKey`]): with the account's verification key
//! configured, a body is parsed only when its ECDSA P-256 signature (over the timestamp header
//! followed by the raw body) verifies; the listener answers 403 otherwise.
//!
//! Mapping (`event` → [`ReceiptKind`]): `delivered` → Delivered; `open` → Read; `click` →
//! Clicked; `bounce` with `type` `bounce` → BouncedHard when `status` is `5.x.x` (or absent:
//! SendGrid's `bounce` is a permanent failure by definition), BouncedSoft when `4.x.x`;
//! `bounce` with `type` `blocked` → Blocked; `dropped` → Failed; `spamreport` → Complained;
//! `unsubscribe`/`group_unsubscribe` → Unsubscribed; `processed`/`deferred` → ignored (not a
//! final state).
//!
//! Limit: SendGrid's `open`/`click` events may lack `smtp-id` (they carry only
//! `sg_message_id`, SendGrid's own id); those cannot be matched and count as `unmatched`.

use base64::Engine as _;
use serde_json::Value;

use crate::{CallbackError, ProviderEvent, Receipt, ReceiptKind};

/// The header carrying the signature (base64 of an ASN.1 DER ECDSA signature).
pub const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
/// The header carrying the timestamp that is signed with the body.
pub const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// DER prefix of a P-256 SubjectPublicKeyInfo (the form SendGrid shows the key in), before
/// the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// A SendGrid event webhook verification key (ECDSA P-256).
#[derive(Clone, PartialEq, Eq)]
pub struct EventWebhookKey {
    /// The uncompressed point (`04 || X || Y`).
    point: Vec<u8>,
}

impl std::fmt::Debug for EventWebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventWebhookKey(P-256)")
    }
}

impl EventWebhookKey {
    /// The key as SendGrid shows it: base64 of its SubjectPublicKeyInfo (`MFkwEwYHKoZIzj0C…`),
    /// with or without PEM armour.
    pub fn from_base64(text: &str) -> Result<Self, String> {
        let body: String = text
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect::<String>()
            .split_whitespace()
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| format!("not base64: {e}"))?;
        let point = match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) => point,
            None if der.len() == 65 => &der[..],
            None => return Err("not an ECDSA P-256 public key".to_owned()),
        };
        if point.len() != 65 || point[0] != 0x04 {
            return Err("not an uncompressed P-256 point".to_owned());
        }
        Ok(Self {
            point: point.to_vec(),
        })
    }

    /// Whether `signature_base64` signs `timestamp` followed by `body` under this key.
    pub fn verify(&self, timestamp: &str, body: &[u8], signature_base64: &str) -> bool {
        let Ok(signature) =
            base64::engine::general_purpose::STANDARD.decode(signature_base64.trim().as_bytes())
        else {
            return false;
        };
        let mut signed = Vec::with_capacity(timestamp.len() + body.len());
        signed.extend_from_slice(timestamp.as_bytes());
        signed.extend_from_slice(body);
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::ECDSA_P256_SHA256_ASN1,
            &self.point,
        )
        .verify(&signed, &signature)
        .is_ok()
    }
}

/// What a batch held besides the receipts returned.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WebhookStats {
    /// Known events that are not final (`processed`, `deferred`).
    pub ignored: usize,
    /// Entries with an unknown `event`, or that are not objects with a string `event`.
    pub unknown: usize,
    /// Known final events without a usable `smtp-id` to match on.
    pub unmatched: usize,
}

/// Parses a SendGrid Event Webhook body into receipts for account `provider`. Skipped entries
/// are counted by [`parse_sendgrid_events_with_stats`].
pub fn parse_sendgrid_events(
    provider: &str,
    body: &[u8],
) -> Result<Vec<ProviderEvent>, CallbackError> {
    parse_sendgrid_events_with_stats(provider, body).map(|(events, _)| events)
}

/// As [`parse_sendgrid_events`], also returning what was skipped.
pub fn parse_sendgrid_events_with_stats(
    provider: &str,
    body: &[u8],
) -> Result<(Vec<ProviderEvent>, WebhookStats), CallbackError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| CallbackError::Malformed(format!("sendgrid events: {e}")))?;
    let Value::Array(entries) = value else {
        return Err(CallbackError::Malformed(
            "sendgrid events: expected a JSON array".into(),
        ));
    };
    let mut stats = WebhookStats::default();
    let mut events = Vec::with_capacity(entries.len());
    for entry in &entries {
        let Some(event) = entry.get("event").and_then(Value::as_str) else {
            stats.unknown += 1;
            continue;
        };
        let status = entry.get("status").and_then(Value::as_str).map(str::trim);
        let kind = match event {
            "processed" | "deferred" => {
                stats.ignored += 1;
                continue;
            }
            "delivered" => ReceiptKind::Delivered,
            "open" => ReceiptKind::Read,
            "click" => ReceiptKind::Clicked,
            "bounce" => match entry.get("type").and_then(Value::as_str) {
                Some("blocked") => ReceiptKind::Blocked,
                _ if status.is_some_and(|s| s.starts_with('4')) => ReceiptKind::BouncedSoft,
                _ => ReceiptKind::BouncedHard,
            },
            "dropped" => ReceiptKind::Failed,
            "spamreport" => ReceiptKind::Complained,
            "unsubscribe" | "group_unsubscribe" => ReceiptKind::Unsubscribed,
            _ => {
                stats.unknown += 1;
                continue;
            }
        };
        let Some(message_id) = entry
            .get("smtp-id")
            .and_then(Value::as_str)
            .map(bare_message_id)
            .filter(|id| !id.is_empty())
        else {
            stats.unmatched += 1;
            continue;
        };
        events.push(ProviderEvent::Receipt(Receipt {
            provider: provider.to_owned(),
            provider_message_id: message_id,
            kind,
            detail: detail(event, entry),
            error_code: status.filter(|s| !s.is_empty()).map(str::to_owned),
        }));
    }
    if stats != WebhookStats::default() {
        tracing::debug!(
            provider,
            ignored = stats.ignored,
            unknown = stats.unknown,
            unmatched = stats.unmatched,
            "sendgrid events skipped"
        );
    }
    Ok((events, stats))
}

/// `<id@host>` → `id@host` (whitespace and angle brackets removed).
fn bare_message_id(smtp_id: &str) -> String {
    smtp_id
        .trim()
        .trim_start_matches('<')
        .trim_end_matches('>')
        .trim()
        .to_owned()
}

/// `event=bounce type=bounce status=5.1.1 reason=...`: the provider's words, addresses removed,
/// bounded in length.
fn detail(event: &str, entry: &Value) -> String {
    let mut d = format!("event={event}");
    for key in ["type", "status"] {
        if let Some(v) = entry.get(key).and_then(Value::as_str) {
            d.push_str(&format!(" {key}={}", redact(v)));
        }
    }
    if let Some(reason) = entry
        .get("reason")
        .or_else(|| entry.get("response"))
        .and_then(Value::as_str)
    {
        let reason: String = redact(reason).chars().take(200).collect();
        d.push_str(&format!(" reason={reason}"));
    }
    d
}

/// Replaces every whitespace-separated word containing `@` (an email address) with
/// `<redacted>`.
fn redact(text: &str) -> String {
    text.split_whitespace()
        .map(|w| if w.contains('@') { "<redacted>" } else { w })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A P-256 key pair as SendGrid would hold it, and its public key as SendGrid shows it.
    fn signing_key() -> (ring::signature::EcdsaKeyPair, String) {
        use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
        let rng = ring::rand::SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).expect("generate");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
            .expect("pair");
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(pair.public_key().as_ref());
        let shown = base64::engine::general_purpose::STANDARD.encode(spki);
        (pair, shown)
    }

    fn sign(pair: &ring::signature::EcdsaKeyPair, timestamp: &str, body: &[u8]) -> String {
        let rng = ring::rand::SystemRandom::new();
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let signature = pair.sign(&rng, &signed).expect("sign");
        base64::engine::general_purpose::STANDARD.encode(signature.as_ref())
    }

    #[test]
    fn signed_event_webhooks_verify_and_tampering_does_not() {
        let (pair, shown) = signing_key();
        let key = EventWebhookKey::from_base64(&shown).expect("key");
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{shown}\n-----END PUBLIC KEY-----\n");
        assert_eq!(EventWebhookKey::from_base64(&pem).expect("pem"), key);
        let body = br#"[{"event":"delivered","smtp-id":"<m1@herald>"}]"#;
        let signature = sign(&pair, "1700000000", body);
        assert!(key.verify("1700000000", body, &signature));
        assert!(
            !key.verify("1700000001", body, &signature),
            "timestamp is signed"
        );
        assert!(
            !key.verify(
                "1700000000",
                br#"[{"event":"bounce","smtp-id":"<m1@herald>"}]"#,
                &signature
            ),
            "body is signed"
        );
        assert!(!key.verify("1700000000", body, "not base64 !"));
        assert!(!key.verify("1700000000", body, ""));
        let (_, other) = signing_key();
        let other = EventWebhookKey::from_base64(&other).expect("other key");
        assert!(!other.verify("1700000000", body, &signature), "another key");
        for bad in ["", "!!!", "AAAA", &shown[..40]] {
            assert!(EventWebhookKey::from_base64(bad).is_err(), "{bad:?}");
        }
    }

    /// A batch shaped like SendGrid's documented Event Webhook example.
    const BATCH: &str = r#"[
      {"email":"alice@example.com","timestamp":1700000000,"smtp-id":"<att-1@herald.test>",
       "event":"processed","category":["otp"],"sg_event_id":"rbtnWrG1DVDGGGFHFyun0A==",
       "sg_message_id":"14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000"},
      {"email":"alice@example.com","timestamp":1700000001,"smtp-id":"<att-1@herald.test>",
       "event":"deferred","response":"400 try again later","attempt":"5",
       "sg_event_id":"x1","sg_message_id":"14c5d75ce93.dfd.64b469.filter0001"},
      {"email":"alice@example.com","timestamp":1700000002,"smtp-id":"<att-1@herald.test>",
       "event":"delivered","response":"250 OK","sg_event_id":"x2",
       "sg_message_id":"14c5d75ce93.dfd.64b469.filter0001"},
      {"email":"alice@example.com","timestamp":1700000003,"smtp-id":"<att-1@herald.test>",
       "event":"open","useragent":"Mozilla/4.0","ip":"255.255.255.255","sg_event_id":"x3",
       "sg_message_id":"14c5d75ce93.dfd.64b469.filter0001"},
      {"email":"alice@example.com","timestamp":1700000004,"smtp-id":"<att-1@herald.test>",
       "event":"click","url":"https://herald.test/x","sg_event_id":"x4",
       "sg_message_id":"14c5d75ce93.dfd.64b469.filter0001"},
      {"email":"bob@example.com","timestamp":1700000005,"smtp-id":"<att-2@herald.test>",
       "event":"bounce","reason":"550 5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
       "status":"5.1.1","type":"bounce","sg_event_id":"x5","sg_message_id":"a.filter1"},
      {"email":"carol@example.com","timestamp":1700000006,"smtp-id":"<att-3@herald.test>",
       "event":"bounce","reason":"452 4.2.2 Mailbox full","status":"4.2.2","type":"bounce",
       "sg_event_id":"x6","sg_message_id":"b.filter1"},
      {"email":"dan@example.com","timestamp":1700000007,"smtp-id":"<att-4@herald.test>",
       "event":"bounce","reason":"554 5.7.1 Blocked by policy","status":"5.7.1","type":"blocked",
       "sg_event_id":"x7","sg_message_id":"c.filter1"},
      {"email":"erin@example.com","timestamp":1700000008,"smtp-id":"<att-5@herald.test>",
       "event":"dropped","reason":"Bounced Address","status":"5.0.0",
       "sg_event_id":"x8","sg_message_id":"d.filter1"},
      {"email":"fay@example.com","timestamp":1700000009,"smtp-id":"<att-6@herald.test>",
       "event":"spamreport","sg_event_id":"x9","sg_message_id":"e.filter1"},
      {"email":"gus@example.com","timestamp":1700000010,"smtp-id":"<att-7@herald.test>",
       "event":"unsubscribe","sg_event_id":"x10","sg_message_id":"f.filter1"},
      {"email":"hal@example.com","timestamp":1700000011,"smtp-id":" <att-8@herald.test> ",
       "event":"group_unsubscribe","asm_group_id":10,"sg_event_id":"x11",
       "sg_message_id":"g.filter1"},
      {"email":"ivy@example.com","timestamp":1700000012,"event":"open",
       "sg_event_id":"x12","sg_message_id":"h.filter1"},
      {"email":"jo@example.com","timestamp":1700000013,"smtp-id":"<att-9@herald.test>",
       "event":"machine_opened","sg_event_id":"x13"},
      "not an object",
      {"no_event": true}
    ]"#;

    fn receipt(ev: &ProviderEvent) -> &Receipt {
        match ev {
            ProviderEvent::Receipt(r) => r,
            other => panic!("not a receipt: {other:?}"),
        }
    }

    #[test]
    fn maps_a_realistic_batch() {
        let (events, stats) =
            parse_sendgrid_events_with_stats("sg", BATCH.as_bytes()).expect("parses");
        let got: Vec<(String, ReceiptKind)> = events
            .iter()
            .map(|e| {
                let r = receipt(e);
                assert_eq!(r.provider, "sg");
                (r.provider_message_id.clone(), r.kind)
            })
            .collect();
        let want: Vec<(String, ReceiptKind)> = [
            ("att-1@herald.test", ReceiptKind::Delivered),
            ("att-1@herald.test", ReceiptKind::Read),
            ("att-1@herald.test", ReceiptKind::Clicked),
            ("att-2@herald.test", ReceiptKind::BouncedHard),
            ("att-3@herald.test", ReceiptKind::BouncedSoft),
            ("att-4@herald.test", ReceiptKind::Blocked),
            ("att-5@herald.test", ReceiptKind::Failed),
            ("att-6@herald.test", ReceiptKind::Complained),
            ("att-7@herald.test", ReceiptKind::Unsubscribed),
            ("att-8@herald.test", ReceiptKind::Unsubscribed),
        ]
        .into_iter()
        .map(|(id, k)| (id.to_owned(), k))
        .collect();
        assert_eq!(got, want);
        assert_eq!(
            stats,
            WebhookStats {
                ignored: 2,
                unknown: 3,
                unmatched: 1
            }
        );
        assert_eq!(
            parse_sendgrid_events("sg", BATCH.as_bytes())
                .expect("parses")
                .len(),
            10
        );
    }

    #[test]
    fn details_carry_codes_but_no_addresses() {
        let events = parse_sendgrid_events("sg", BATCH.as_bytes()).expect("parses");
        for e in &events {
            assert!(
                !receipt(e).detail.contains('@'),
                "address in detail: {}",
                receipt(e).detail
            );
        }
        let hard = receipt(&events[3]);
        assert_eq!(hard.error_code.as_deref(), Some("5.1.1"));
        assert!(
            hard.detail
                .starts_with("event=bounce type=bounce status=5.1.1 reason=550")
        );
        assert!(hard.kind.kills_contact());
        assert!(!receipt(&events[4]).kind.kills_contact());
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(parse_sendgrid_events("sg", b"{not json").is_err());
        assert!(parse_sendgrid_events("sg", br#"{"event":"delivered"}"#).is_err());
        assert!(parse_sendgrid_events("sg", b"").is_err());
        assert_eq!(
            parse_sendgrid_events("sg", b"[]").expect("empty batch"),
            vec![]
        );
    }
}
