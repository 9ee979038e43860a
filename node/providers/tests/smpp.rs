//! SmppProvider against the SMSC peer over real TCP on loopback.
#![cfg(feature = "peers")]

use std::time::Duration;

use herald_proto::v1::{Channel, Content, SmsContent};
use herald_providers::peers::smsc::{Smsc, SmscConfig};
use herald_providers::smpp::{SmppConfig, SmppProvider};
use herald_providers::{
    Attempt, Outcome, Provider, ProviderEvent, Receipt, ReceiptKind, sms_encoding,
};
use tokio::sync::mpsc;
use tokio::time::timeout;

const TO: &str = "+4915112345678";
const TO_DIGITS: &str = "4915112345678";

fn sms(text: &str) -> Content {
    Content {
        sms: Some(SmsContent {
            text: text.to_string(),
        }),
        ..Default::default()
    }
}

fn attempt<'a>(id: &'a str, to: &'a str, content: &'a Content) -> Attempt<'a> {
    Attempt {
        attempt_id: id,
        message_id: id,
        recipient_key: "rk",
        channel: Channel::Sms,
        to,
        content,
        list_unsubscribe: None,
    }
}

fn config(smsc: &Smsc) -> SmppConfig {
    let mut c = SmppConfig::new("127.0.0.1", smsc.port(), "herald", "secret", "HERALD");
    c.source_addr_ton = 5;
    c.source_addr_npi = 0;
    c.response_timeout_ms = 2_000;
    c.bind_timeout_ms = 2_000;
    c.reconnect_backoff_min_ms = 50;
    c.reconnect_backoff_max_ms = 400;
    c
}

async fn start() -> (Smsc, SmppProvider, mpsc::Receiver<ProviderEvent>) {
    let smsc = Smsc::start(SmscConfig::default())
        .await
        .expect("smsc starts");
    let (tx, rx) = mpsc::channel(64);
    let provider = SmppProvider::new("smpp-test", config(&smsc), tx)
        .await
        .expect("config valid");
    (smsc, provider, rx)
}

async fn next_receipt(rx: &mut mpsc::Receiver<ProviderEvent>) -> Receipt {
    match timeout(Duration::from_secs(3), rx.recv()).await {
        Ok(Some(ProviderEvent::Receipt(r))) => r,
        other => panic!("expected a receipt, got {other:?}"),
    }
}

fn accepted_id(outcome: Outcome) -> String {
    match outcome {
        Outcome::Accepted {
            provider_message_id,
            delivered,
            read,
        } => {
            assert!(!delivered && !read);
            provider_message_id
        }
        other => panic!("expected Accepted, got {other:?}"),
    }
}

#[tokio::test]
async fn submit_then_delivrd_receipt_with_same_id() {
    let (smsc, provider, mut events) = start().await;
    let content = sms("Hello from Herald {ok} €5");
    let id = accepted_id(provider.send(attempt("a1", TO, &content)).await);

    let log = smsc.log();
    assert_eq!(log.len(), 1);
    let rec = &log[0];
    assert_eq!(rec.message_id, id);
    assert_eq!(rec.destination, TO_DIGITS, "leading + stripped");
    assert_eq!(rec.source, "HERALD");
    assert_eq!(rec.data_coding, 0);
    assert_eq!(rec.esm_class & 0x40, 0, "no UDHI for one segment");
    assert_eq!(rec.registered_delivery, 1);
    assert_eq!(rec.text, "Hello from Herald {ok} €5");
    assert_eq!(
        rec.short_message,
        sms_encoding::encode_gsm7_unpacked(&rec.text)
    );

    let r = next_receipt(&mut events).await;
    assert_eq!(r.provider, "smpp-test");
    assert_eq!(r.provider_message_id, id);
    assert_eq!(r.kind, ReceiptKind::Delivered);
    assert_eq!(r.detail, "stat=DELIVRD err=000");
    assert_eq!(r.error_code.as_deref(), Some("000"));
    // The adapter acknowledged the receipt.
    let acked = timeout(Duration::from_secs(2), async {
        while smsc.deliver_sm_resps().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(acked.is_ok());
    assert_eq!(smsc.deliver_sm_resps(), vec![0]);
}

#[tokio::test]
async fn undeliv_receipt_carries_err() {
    let (smsc, provider, mut events) = start().await;
    smsc.set_receipt_stat(TO_DIGITS, "UNDELIV", "034");
    let content = sms("hi");
    let id = accepted_id(provider.send(attempt("a2", TO, &content)).await);
    let r = next_receipt(&mut events).await;
    assert_eq!(r.provider_message_id, id);
    assert_eq!(r.kind, ReceiptKind::Failed);
    assert_eq!(r.error_code.as_deref(), Some("034"));
    assert_eq!(r.detail, "stat=UNDELIV err=034");
}

#[tokio::test]
async fn receipt_tlvs_and_expired() {
    let smsc = Smsc::start(SmscConfig {
        receipt_tlvs: true,
        ..SmscConfig::default()
    })
    .await
    .expect("smsc starts");
    smsc.set_receipt_stat(TO_DIGITS, "EXPIRED", "000");
    let (tx, mut events) = mpsc::channel(8);
    let provider = SmppProvider::new("smpp-test", config(&smsc), tx)
        .await
        .expect("config");
    let content = sms("hi");
    let id = accepted_id(provider.send(attempt("a3", TO, &content)).await);
    let r = next_receipt(&mut events).await;
    assert_eq!(r.provider_message_id, id);
    assert_eq!(r.kind, ReceiptKind::Expired);
}

#[tokio::test]
async fn acceptd_receipt_is_not_forwarded() {
    let (smsc, provider, mut events) = start().await;
    let content = sms("hi");
    let id = accepted_id(provider.send(attempt("a4", TO, &content)).await);
    // The normal DELIVRD receipt first.
    assert_eq!(next_receipt(&mut events).await.kind, ReceiptKind::Delivered);
    smsc.send_receipt(&id, "ACCEPTD", "000").expect("bound");
    smsc.send_receipt(&id, "REJECTD", "011").expect("bound");
    let r = next_receipt(&mut events).await;
    assert_eq!(
        r.kind,
        ReceiptKind::Failed,
        "ACCEPTD skipped, REJECTD arrives"
    );
    assert_eq!(r.error_code.as_deref(), Some("011"));
}

#[tokio::test]
async fn long_ucs2_message_goes_as_segments_with_udh() {
    let (smsc, provider, mut events) = start().await;
    // 150 UTF-16 units: 67 + 67 + 16 → 3 segments.
    let text = format!("{}{}", "Привет! ".repeat(18), "😀😀😀");
    let analysis = sms_encoding::analyze(&text);
    assert_eq!(analysis.encoding, sms_encoding::Encoding::Ucs2);
    assert_eq!(analysis.segments, 3);
    let content = sms(&text);
    let id = accepted_id(provider.send(attempt("a5", TO, &content)).await);

    let log = smsc.log();
    assert_eq!(log.len(), 3);
    assert_eq!(log[0].message_id, id, "outcome id is the first segment's");
    let reference = log[0].concat.expect("UDH").0;
    for (i, rec) in log.iter().enumerate() {
        assert_eq!(rec.esm_class & 0x40, 0x40, "UDHI set");
        assert_eq!(rec.data_coding, 8);
        assert_eq!(rec.concat, Some((reference, 3, (i + 1) as u8)));
        assert_eq!(&rec.short_message[..3], &[0x05, 0x00, 0x03]);
        assert!(rec.short_message.len() <= 6 + 134);
    }
    let joined: String = log.iter().map(|r| r.text.as_str()).collect();
    assert_eq!(joined, text);

    // Only the first segment's DELIVRD is forwarded; the others are absorbed.
    let r = next_receipt(&mut events).await;
    assert_eq!(r.provider_message_id, id);
    assert_eq!(r.kind, ReceiptKind::Delivered);
    assert!(
        timeout(Duration::from_millis(300), events.recv())
            .await
            .is_err(),
        "later-segment DELIVRD receipts are not forwarded"
    );
}

#[tokio::test]
async fn later_segment_failure_receipt_maps_to_first_id() {
    let (smsc, provider, mut events) = start().await;
    let text = "x".repeat(200); // GSM-7, 2 segments
    let content = sms(&text);
    let id = accepted_id(provider.send(attempt("a6", TO, &content)).await);
    let log = smsc.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].data_coding, 0);
    assert_eq!(log[0].short_message.len(), 6 + 153);
    let first = next_receipt(&mut events).await;
    assert_eq!(
        (first.provider_message_id.as_str(), first.kind),
        (id.as_str(), ReceiptKind::Delivered)
    );
    smsc.send_receipt(&log[1].message_id, "UNDELIV", "001")
        .expect("bound");
    let r = next_receipt(&mut events).await;
    assert_eq!(
        r.provider_message_id, id,
        "mapped to the first segment's id"
    );
    assert_eq!(r.kind, ReceiptKind::Failed);
}

#[tokio::test]
async fn mo_message_becomes_inbound() {
    let (smsc, provider, mut events) = start().await;
    assert!(provider.wait_bound(Duration::from_secs(2)).await);
    smsc.send_mo("4917000000001", "HERALD", "STOP please")
        .expect("bound");
    smsc.send_mo("4917000000002", "12345", "Спасибо 😀")
        .expect("bound");
    for (from, to, text) in [
        ("4917000000001", "HERALD", "STOP please"),
        ("4917000000002", "12345", "Спасибо 😀"),
    ] {
        match timeout(Duration::from_secs(2), events.recv()).await {
            Ok(Some(ProviderEvent::Inbound(inbound))) => {
                assert_eq!(inbound.provider, "smpp-test");
                assert_eq!(inbound.from, from);
                assert_eq!(inbound.to, to);
                assert_eq!(inbound.text, text);
            }
            other => panic!("expected Inbound, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn wrong_password_is_unavailable_not_a_hang() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let mut c = config(&smsc);
    c.password = "wrong".into();
    let (tx, _rx) = mpsc::channel(8);
    let provider = SmppProvider::new("smpp-test", c, tx).await.expect("config");
    let content = sms("hi");
    let started = tokio::time::Instant::now();
    let outcome = timeout(
        Duration::from_secs(4),
        provider.send(attempt("a7", TO, &content)),
    )
    .await
    .expect("send returns in bounded time");
    match outcome {
        Outcome::Unavailable {
            reason,
            retry_after,
        } => {
            assert!(reason.contains("0x0000000D"), "{reason}");
            assert!(retry_after.is_some());
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(smsc.failed_binds() >= 1);
    assert!(smsc.log().is_empty());
    assert!(!provider.is_bound());
}

#[tokio::test]
async fn nothing_listening_is_unavailable() {
    // Take a free port, then close it.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut c = SmppConfig::new("127.0.0.1", port, "herald", "secret", "HERALD");
    c.bind_timeout_ms = 1_000;
    let (tx, _rx) = mpsc::channel(8);
    let provider = SmppProvider::new("smpp-test", c, tx).await.expect("config");
    let content = sms("hi");
    let outcome = timeout(
        Duration::from_secs(3),
        provider.send(attempt("a8", TO, &content)),
    )
    .await
    .expect("bounded");
    assert!(
        matches!(outcome, Outcome::Unavailable { .. }),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn throttled_is_unavailable_with_retry_after() {
    let (smsc, provider, _events) = start().await;
    smsc.throttle_next(1);
    let content = sms("hi");
    match provider.send(attempt("a9", TO, &content)).await {
        Outcome::Unavailable {
            reason,
            retry_after,
        } => {
            assert!(reason.contains("0x00000058"), "{reason}");
            assert_eq!(retry_after, Some(Duration::from_millis(1_000)));
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The throttle was for one submit only.
    accepted_id(provider.send(attempt("a9b", TO, &content)).await);
}

#[tokio::test]
async fn invalid_destination_is_rejected_contact_invalid() {
    let (smsc, provider, _events) = start().await;
    smsc.reject_destination(TO_DIGITS, 0x0B);
    let content = sms("hi");
    match provider.send(attempt("a10", TO, &content)).await {
        Outcome::Rejected {
            contact_invalid, ..
        } => assert!(contact_invalid),
        other => panic!("expected Rejected, got {other:?}"),
    }
    smsc.reject_destination("4915100000000", 0x45); // ESME_RSUBMITFAIL
    match provider
        .send(attempt("a10b", "+4915100000000", &content))
        .await
    {
        Outcome::Rejected {
            contact_invalid, ..
        } => assert!(!contact_invalid),
        other => panic!("expected Rejected, got {other:?}"),
    }
    // Not a phone number at all: rejected before the wire.
    let before = smsc.log().len();
    match provider
        .send(attempt("a10c", "not-a-number", &content))
        .await
    {
        Outcome::Rejected {
            contact_invalid, ..
        } => assert!(contact_invalid),
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(smsc.log().len(), before);
}

#[tokio::test]
async fn connection_dropped_after_submit_is_ambiguous() {
    let (smsc, provider, _events) = start().await;
    assert!(provider.wait_bound(Duration::from_secs(2)).await);
    smsc.drop_on_next_submit();
    let content = sms("hi");
    let outcome = timeout(
        Duration::from_secs(4),
        provider.send(attempt("a11", TO, &content)),
    )
    .await
    .expect("bounded");
    assert!(matches!(outcome, Outcome::Ambiguous { .. }), "{outcome:?}");
    assert_eq!(smsc.log().len(), 1, "the SMSC did get it");
    assert_eq!(smsc.log()[0].status, None);
}

#[tokio::test]
async fn no_response_within_timeout_is_ambiguous() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let mut c = config(&smsc);
    c.response_timeout_ms = 300;
    c.window_size = 1;
    let (tx, _rx) = mpsc::channel(8);
    let provider = SmppProvider::new("smpp-test", c, tx).await.expect("config");
    assert!(provider.wait_bound(Duration::from_secs(2)).await);
    smsc.set_response_delay(Duration::from_millis(1_000));
    let content = sms("hi");
    let outcome = provider.send(attempt("a12", TO, &content)).await;
    match outcome {
        Outcome::Ambiguous { reason } => assert!(reason.contains("300 ms"), "{reason}"),
        other => panic!("expected Ambiguous, got {other:?}"),
    }
    // With a window of 1, the expired submit must give its slot back: the next send goes out
    // (its late answer for the first one is ignored).
    smsc.set_response_delay(Duration::ZERO);
    let id = accepted_id(provider.send(attempt("a12b", TO, &content)).await);
    let log = smsc.log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[1].message_id, id);
}

#[tokio::test]
async fn reconnects_after_the_smsc_kills_the_connection() {
    let (smsc, provider, mut events) = start().await;
    let content = sms("first");
    accepted_id(provider.send(attempt("a13", TO, &content)).await);
    let _ = next_receipt(&mut events).await;
    assert_eq!(smsc.binds(), 1);

    smsc.kill_connections();
    // The adapter notices the close and rebinds after its (jittered) backoff on its own.
    let rebound = timeout(Duration::from_secs(3), async {
        while smsc.binds() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(rebound.is_ok(), "rebound without any send");
    let content = sms("second");
    let id = accepted_id(
        timeout(
            Duration::from_secs(4),
            provider.send(attempt("a13b", TO, &content)),
        )
        .await
        .expect("bounded"),
    );
    assert_eq!(smsc.binds(), 2);
    let log = smsc.log();
    assert_eq!(log.len(), 2);
    assert_ne!(log[0].connection, log[1].connection);
    let r = next_receipt(&mut events).await;
    assert_eq!(r.provider_message_id, id);
}

#[tokio::test]
async fn window_limits_unanswered_submits() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let mut c = config(&smsc);
    c.window_size = 2;
    let (tx, _rx) = mpsc::channel(64);
    let provider = SmppProvider::new("smpp-test", c, tx).await.expect("config");
    assert!(provider.wait_bound(Duration::from_secs(2)).await);
    smsc.set_response_delay(Duration::from_millis(100));
    let content = sms("hi");
    let ids: Vec<String> = (0..6).map(|i| format!("w{i}")).collect();
    let sends = ids
        .iter()
        .map(|id| provider.send(attempt(id, TO, &content)));
    let outcomes = timeout(Duration::from_secs(5), futures::future::join_all(sends))
        .await
        .expect("bounded");
    for o in outcomes {
        accepted_id(o);
    }
    assert_eq!(smsc.log().len(), 6);
    assert_eq!(smsc.max_in_flight(), 2);
}

#[tokio::test]
async fn enquire_link_keeps_the_session_and_shutdown_unbinds() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let mut c = config(&smsc);
    c.enquire_link_interval_ms = 50;
    let (tx, _rx) = mpsc::channel(8);
    let provider = SmppProvider::new("smpp-test", c, tx).await.expect("config");
    assert!(provider.wait_bound(Duration::from_secs(2)).await);
    let seen = timeout(Duration::from_secs(2), async {
        while smsc.enquire_links() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(seen.is_ok(), "enquire_links sent periodically");
    assert!(provider.is_bound());
    assert_eq!(
        smsc.binds(),
        1,
        "no reconnects while enquire_link is answered"
    );

    provider.shutdown().await;
    let closed = timeout(Duration::from_secs(2), async {
        while smsc.bound_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "unbound and closed");
    let content = sms("hi");
    assert!(matches!(
        provider.send(attempt("a14", TO, &content)).await,
        Outcome::Unavailable { .. }
    ));
}

#[tokio::test]
async fn events_receiver_gone_asks_smsc_to_redeliver() {
    let (smsc, provider, events) = start().await;
    assert!(provider.wait_bound(Duration::from_secs(2)).await);
    drop(events);
    smsc.send_mo("4917000000001", "HERALD", "hello")
        .expect("bound");
    let answered = timeout(Duration::from_secs(2), async {
        while smsc.deliver_sm_resps().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(answered.is_ok());
    assert_eq!(smsc.deliver_sm_resps(), vec![0x64], "ESME_RX_T_APPN");
}

#[tokio::test]
async fn too_long_text_is_rejected_before_the_wire() {
    let (smsc, provider, _events) = start().await;
    let content = sms(&"y".repeat(153 * 10 + 1)); // 11 segments > default max 10
    assert!(matches!(
        provider.send(attempt("a15", TO, &content)).await,
        Outcome::Rejected { .. }
    ));
    assert!(smsc.log().is_empty());
}

#[tokio::test]
async fn failed_binds_back_off_exponentially() {
    let smsc = Smsc::start(SmscConfig::default()).await.expect("smsc");
    let mut c = config(&smsc);
    c.password = "wrong".into();
    c.reconnect_backoff_min_ms = 50;
    c.reconnect_backoff_max_ms = 400;
    let (tx, _rx) = mpsc::channel(8);
    let _provider = SmppProvider::new("smpp-test", c, tx).await.expect("config");
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    // Delays (equal jitter) are 25–50, 50–100, 100–200, then 200–400 ms: in 1.2 s that is
    // between 4 and 9 attempts; without backoff it would be hundreds.
    let attempts = smsc.failed_binds();
    assert!((3..=10).contains(&attempts), "{attempts} bind attempts");
}
