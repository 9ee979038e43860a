//! Every decoder of bytes from outside the process, under random input: SMPP PDUs (rusmpp's
//! codec as the session uses it) and delivery-receipt text, Twilio callback forms, SendGrid
//! event batches and their signatures, SMS payload encodings. The property is the same for all:
//! no panic, whatever arrives — a malformed input is an error or is skipped.
//!
//! Cases per property: `PROPTEST_CASES` (CI runs the default, 256; a long run sets it high).

use bytes::BytesMut;
use herald_providers::email_webhook::{EventWebhookKey, parse_sendgrid_events_with_stats};
use herald_providers::smpp::parse_receipt_text;
use herald_providers::sms_encoding::{decode_gsm7_unpacked, decode_ucs2_be, parse_concat_udh};
use herald_providers::twilio::{parse_inbound, parse_status_callback};
use proptest::prelude::*;
use tokio_util::codec::Decoder;

/// Text shaped like an SMPP delivery receipt, with random values and random damage.
fn receipt_like() -> impl Strategy<Value = String> {
    let field = "[ -~]{0,24}";
    (
        field, field, field, field, field, field, field, field, "[ -~\\x00-\\x1f\u{80}-\u{10ffff}]{0,8}",
    )
        .prop_map(|(id, sub, dlvrd, submit, done, stat, err, text, junk)| {
            format!(
                "id:{id} sub:{sub} dlvrd:{dlvrd} submit date:{submit} done date:{done} stat:{stat} err:{err} text:{text}{junk}"
            )
        })
}

/// A JSON value of bounded depth, for SendGrid batches.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>().prop_map(|n| serde_json::json!(n)),
        prop_oneof![
            Just("delivered".to_owned()),
            Just("bounce".to_owned()),
            Just("blocked".to_owned()),
            Just("5.1.1".to_owned()),
            Just("<a.0@herald>".to_owned()),
            ".{0,12}",
        ]
        .prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("event".to_owned()),
                    Just("smtp-id".to_owned()),
                    Just("type".to_owned()),
                    Just("status".to_owned()),
                    Just("reason".to_owned()),
                    "[a-z_-]{1,8}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A form body with Twilio's field names and random values (percent-encoded or not).
fn twilio_form() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        (
            prop_oneof![
                Just("MessageSid"),
                Just("MessageStatus"),
                Just("ErrorCode"),
                Just("From"),
                Just("To"),
                Just("Body"),
                Just("x"),
            ],
            prop_oneof![
                "[ -~]{0,16}",
                Just("%".to_owned()),
                Just("%zz".to_owned()),
                Just("%C3%28".to_owned()),
                Just("delivered".to_owned()),
                Just("undelivered".to_owned()),
                Just("30006".to_owned()),
            ],
        ),
        0..8,
    )
    .prop_map(|fields| {
        fields
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
            .into_bytes()
    })
}

/// A PDU header with a plausible length and command id, then random bytes.
fn smpp_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        0u32..512,
        prop_oneof![
            Just(0x0000_0005u32), // deliver_sm
            Just(0x8000_0004),    // submit_sm_resp
            Just(0x8000_0009),    // bind_transceiver_resp
            Just(0x0000_0015),    // enquire_link
            any::<u32>(),
        ],
        any::<u32>(),
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..512),
    )
        .prop_map(|(length, id, status, seq, body)| {
            let mut frame = Vec::with_capacity(16 + body.len());
            frame.extend_from_slice(&length.to_be_bytes());
            frame.extend_from_slice(&id.to_be_bytes());
            frame.extend_from_slice(&status.to_be_bytes());
            frame.extend_from_slice(&seq.to_be_bytes());
            frame.extend_from_slice(&body);
            frame
        })
}

proptest! {
    #[test]
    fn delivery_receipt_text_never_panics(text in prop_oneof![receipt_like(), ".{0,200}"]) {
        let _ = parse_receipt_text(&text);
    }

    #[test]
    fn sendgrid_batches_never_panic(value in json(), raw in prop::collection::vec(any::<u8>(), 0..256)) {
        let body = serde_json::to_vec(&value).expect("serialize");
        let _ = parse_sendgrid_events_with_stats("mail", &body);
        let _ = parse_sendgrid_events_with_stats("mail", &raw);
    }

    #[test]
    fn sendgrid_signatures_never_panic(
        key in ".{0,120}",
        timestamp in ".{0,20}",
        body in prop::collection::vec(any::<u8>(), 0..128),
        signature in ".{0,120}",
    ) {
        if let Ok(key) = EventWebhookKey::from_base64(&key) {
            prop_assert!(!key.verify(&timestamp, &body, &signature));
        }
    }

    #[test]
    fn twilio_forms_never_panic(form in prop_oneof![twilio_form(), prop::collection::vec(any::<u8>(), 0..256)]) {
        let _ = parse_status_callback("sms", &form);
        let _ = parse_inbound("sms", &form);
    }

    #[test]
    fn sms_payload_decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = decode_gsm7_unpacked(&bytes);
        let _ = decode_ucs2_be(&bytes);
        let _ = parse_concat_udh(&bytes);
    }

    #[test]
    fn smpp_frames_never_panic(frame in prop_oneof![smpp_frame(), prop::collection::vec(any::<u8>(), 0..64)]) {
        let mut codec = rusmpp::tokio_codec::CommandCodec::new();
        let mut buffer = BytesMut::from(frame.as_slice());
        // Decode until the codec needs more bytes or fails: a bounded loop (each Ok(Some)
        // consumes at least a header).
        for _ in 0..64 {
            match codec.decode(&mut buffer) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }
}
