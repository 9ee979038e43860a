//! SMTP adapter against a real SMTP server: aiosmtpd, run by `tests/peers/smtp_peer.py`.
//!
//! Needs `python3` with aiosmtpd (`python3 -m pip install aiosmtpd`). Missing either is a test
//! FAILURE with that message, never a silent skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use herald_proto::v1::{Channel, Content, EmailContent};
use herald_providers::smtp::{SmtpConfig, SmtpProvider, SmtpTls};
use herald_providers::{Attempt, ListUnsubscribe, Outcome, Provider};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const INSTALL_HINT: &str =
    "the SMTP tests need python3 with aiosmtpd: run `python3 -m pip install aiosmtpd`";

/// A running `smtp_peer.py`; killed when dropped.
struct SmtpPeer {
    port: u16,
    dir: tempfile::TempDir,
    _child: Child,
}

impl SmtpPeer {
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/smtp_peer.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run python3 ({e}); {INSTALL_HINT}"));
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("smtp_peer.py did not report its port within 10 s"));
        let port = match first {
            Ok(Some(line)) if line.starts_with("PORT ") => {
                line[5..].trim().parse::<u16>().expect("port number")
            }
            other => {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        stderr.read_to_string(&mut err),
                    )
                    .await;
                }
                panic!("smtp_peer.py failed to start ({other:?}): {err}\n{INSTALL_HINT}");
            }
        };
        SmtpPeer {
            port,
            dir,
            _child: child,
        }
    }

    fn config(&self) -> SmtpConfig {
        let mut c = SmtpConfig::new("127.0.0.1", "notify@herald.test");
        c.port = Some(self.port);
        c.tls = SmtpTls::None;
        c.from_name = Some("Herald Test".into());
        c.command_timeout_ms = 2_000;
        c
    }

    fn mails(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .expect("read dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "eml"))
            .collect();
        v.sort();
        v
    }

    /// Waits (bounded) until `n` messages have been written.
    async fn wait_mails(&self, n: usize) -> Vec<PathBuf> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let mails = self.mails();
            if mails.len() >= n || tokio::time::Instant::now() > deadline {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn sessions(&self) -> u32 {
        std::fs::read_to_string(self.dir.path().join("sessions"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn content(subject: &str, text: &str, html: &str) -> Content {
    Content {
        email: Some(EmailContent {
            subject: subject.into(),
            text_body: text.into(),
            html_body: html.into(),
        }),
        ..Default::default()
    }
}

fn attempt<'a>(
    id: &'a str,
    to: &'a str,
    content: &'a Content,
    unsub: Option<&'a ListUnsubscribe>,
) -> Attempt<'a> {
    Attempt {
        attempt_id: id,
        message_id: "msg-1",
        recipient_key: "rk-1",
        channel: Channel::Email,
        to,
        content,
        list_unsubscribe: unsub,
    }
}

/// The value of a header in a raw message (first occurrence, unfolded).
fn header(raw: &str, name: &str) -> Option<String> {
    let head = raw.split("\r\n\r\n").next().unwrap_or(raw);
    let mut value: Option<String> = None;
    for line in head.split("\r\n") {
        if let Some(v) = value.as_mut() {
            if line.starts_with(' ') || line.starts_with('\t') {
                v.push(' ');
                v.push_str(line.trim());
                continue;
            }
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case(name)
        {
            value = Some(v.trim().to_owned());
        }
    }
    value
}

#[tokio::test]
async fn delivers_multipart_with_headers() {
    let peer = SmtpPeer::start().await;
    let provider = SmtpProvider::new("mail-a", &peer.config()).expect("provider");
    let c = content(
        "Your code",
        "Plain body 12345",
        "<p>Html <b>body</b> 12345</p>",
    );
    let unsub = ListUnsubscribe {
        url: "https://u.herald.test/unsub?t=abc".into(),
        mailto: Some("mailto:unsub@herald.test?subject=unsubscribe".into()),
    };
    let outcome = provider
        .send(attempt("att-01", "alice@example.com", &c, Some(&unsub)))
        .await;
    assert_eq!(
        outcome,
        Outcome::Accepted {
            provider_message_id: "att-01@herald.test".into(),
            delivered: false,
            read: false
        }
    );
    let mails = peer.wait_mails(1).await;
    assert_eq!(mails.len(), 1);
    let raw = std::fs::read_to_string(&mails[0]).expect("read mail");
    assert_eq!(
        header(&raw, "X-Envelope-To").as_deref(),
        Some("alice@example.com")
    );
    assert_eq!(header(&raw, "To").as_deref(), Some("alice@example.com"));
    assert_eq!(header(&raw, "Subject").as_deref(), Some("Your code"));
    assert_eq!(
        header(&raw, "From").as_deref(),
        Some("\"Herald Test\" <notify@herald.test>")
    );
    assert_eq!(
        header(&raw, "Message-ID").as_deref(),
        Some("<att-01@herald.test>")
    );
    assert_eq!(header(&raw, "X-Herald-Attempt").as_deref(), Some("att-01"));
    assert_eq!(
        header(&raw, "List-Unsubscribe").as_deref(),
        Some("<https://u.herald.test/unsub?t=abc>, <mailto:unsub@herald.test?subject=unsubscribe>")
    );
    assert_eq!(
        header(&raw, "List-Unsubscribe-Post").as_deref(),
        Some("List-Unsubscribe=One-Click")
    );
    assert!(
        header(&raw, "Content-Type")
            .expect("content-type")
            .starts_with("multipart/alternative"),
        "{raw}"
    );
    assert!(raw.contains("Content-Type: text/plain"), "{raw}");
    assert!(raw.contains("Content-Type: text/html"), "{raw}");
    assert!(raw.contains("Plain body 12345"), "{raw}");
    assert!(raw.contains("<p>Html <b>body</b> 12345</p>"), "{raw}");

    // An ESP's delivery webhook echoes the Message-ID as `smtp-id`: the receipt matches the
    // provider_message_id the adapter reported.
    let smtp_id = header(&raw, "Message-ID").expect("message-id");
    let body = format!(
        r#"[{{"email":"alice@example.com","timestamp":1700000000,"smtp-id":"{smtp_id}","event":"delivered","response":"250 OK","sg_message_id":"x.filter0"}}]"#
    );
    let events = herald_providers::email_webhook::parse_sendgrid_events("mail-a", body.as_bytes())
        .expect("parses");
    assert_eq!(
        events,
        vec![herald_providers::ProviderEvent::Receipt(
            herald_providers::Receipt {
                provider: "mail-a".into(),
                provider_message_id: "att-01@herald.test".into(),
                kind: herald_providers::ReceiptKind::Delivered,
                detail: "event=delivered reason=250 OK".into(),
                error_code: None,
            }
        )]
    );
}

#[tokio::test]
async fn resend_keeps_message_id_and_text_only_has_no_unsubscribe() {
    let peer = SmtpPeer::start().await;
    let provider = SmtpProvider::new("mail-a", &peer.config()).expect("provider");
    let c = content("Hi", "only text", "");
    for _ in 0..2 {
        let o = provider
            .send(attempt("att-same", "bob@example.com", &c, None))
            .await;
        assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    }
    let mails = peer.wait_mails(2).await;
    assert_eq!(mails.len(), 2);
    for m in mails {
        let raw = std::fs::read_to_string(m).expect("read");
        assert_eq!(
            header(&raw, "Message-ID").as_deref(),
            Some("<att-same@herald.test>")
        );
        assert!(header(&raw, "List-Unsubscribe").is_none());
        assert!(
            header(&raw, "Content-Type")
                .expect("ct")
                .starts_with("text/plain")
        );
    }
}

#[tokio::test]
async fn unknown_user_is_contact_invalid() {
    let peer = SmtpPeer::start().await;
    let provider = SmtpProvider::new("mail-a", &peer.config()).expect("provider");
    let c = content("s", "t", "");
    match provider
        .send(attempt("att-2", "unknown@example.com", &c, None))
        .await
    {
        Outcome::Rejected {
            reason,
            contact_invalid,
        } => {
            assert!(contact_invalid, "{reason}");
            assert!(reason.contains("550"), "{reason}");
            assert!(
                !reason.contains("unknown@"),
                "no address in reason: {reason}"
            );
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(peer.mails().is_empty());
}

#[tokio::test]
async fn content_rejection_is_not_contact_invalid() {
    let peer = SmtpPeer::start().await;
    let provider = SmtpProvider::new("mail-a", &peer.config()).expect("provider");
    let c = content("s", "t", "");
    match provider
        .send(attempt("att-3", "spam@example.com", &c, None))
        .await
    {
        Outcome::Rejected {
            reason,
            contact_invalid,
        } => {
            assert!(!contact_invalid, "{reason}");
            assert!(reason.contains("554"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
}

#[tokio::test]
async fn transient_451_is_unavailable() {
    let peer = SmtpPeer::start().await;
    let provider = SmtpProvider::new("mail-a", &peer.config()).expect("provider");
    let c = content("s", "t", "");
    let o = provider
        .send(attempt("att-4", "busy@example.com", &c, None))
        .await;
    match o {
        Outcome::Unavailable { reason, .. } => assert!(reason.contains("451"), "{reason}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The connection was aborted on the error; the next send works on a new one.
    let o = provider
        .send(attempt("att-5", "carol@example.com", &c, None))
        .await;
    assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
}

#[tokio::test]
async fn invalid_address_syntax_is_contact_invalid_without_network() {
    // Port 9 on loopback: nothing is listening, and nothing must be tried.
    let mut config = SmtpConfig::new("127.0.0.1", "notify@herald.test");
    config.port = Some(9);
    config.tls = SmtpTls::None;
    let provider = SmtpProvider::new("mail-a", &config).expect("provider");
    let c = content("s", "t", "");
    let o = provider
        .send(attempt("att-6", "not an address", &c, None))
        .await;
    assert!(
        matches!(
            o,
            Outcome::Rejected {
                contact_invalid: true,
                ..
            }
        ),
        "{o:?}"
    );
}

#[tokio::test]
async fn server_down_is_unavailable() {
    // Bind then drop a listener: the port is closed, so the connect is refused.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let mut config = SmtpConfig::new("127.0.0.1", "notify@herald.test");
    config.port = Some(port);
    config.tls = SmtpTls::None;
    config.command_timeout_ms = 2_000;
    let provider = SmtpProvider::new("mail-a", &config).expect("provider");
    let c = content("s", "t", "");
    let o = tokio::time::timeout(
        Duration::from_secs(5),
        provider.send(attempt("att-7", "dave@example.com", &c, None)),
    )
    .await
    .expect("bounded");
    assert!(
        matches!(o, Outcome::Unavailable { .. }),
        "expected Unavailable, got {o:?}"
    );
}

#[tokio::test]
async fn no_reply_after_data_is_ambiguous() {
    let peer = SmtpPeer::start().await;
    let mut config = peer.config();
    config.command_timeout_ms = 500;
    let provider = SmtpProvider::new("mail-a", &config).expect("provider");
    let c = content("s", "t", "");
    let o = tokio::time::timeout(
        Duration::from_secs(5),
        provider.send(attempt("att-8", "hang@example.com", &c, None)),
    )
    .await
    .expect("bounded");
    assert!(matches!(o, Outcome::Ambiguous { .. }), "timeout: {o:?}");
    // The pool was replaced: the next send works on a fresh connection, not the stuck one.
    let o = tokio::time::timeout(
        Duration::from_secs(5),
        provider.send(attempt("att-8b", "erin@example.com", &c, None)),
    )
    .await
    .expect("bounded");
    assert!(
        matches!(o, Outcome::Accepted { .. }),
        "after timeout: {o:?}"
    );
}

#[tokio::test]
async fn connection_closed_after_data_is_ambiguous() {
    let peer = SmtpPeer::start().await;
    let provider = SmtpProvider::new("mail-a", &peer.config()).expect("provider");
    let c = content("s", "t", "");
    let o = tokio::time::timeout(
        Duration::from_secs(5),
        provider.send(attempt("att-9", "drop@example.com", &c, None)),
    )
    .await
    .expect("bounded");
    assert!(matches!(o, Outcome::Ambiguous { .. }), "closed: {o:?}");
}

#[tokio::test]
async fn concurrent_sends_share_the_pool() {
    let peer = SmtpPeer::start().await;
    let mut config = peer.config();
    config.pool_max_size = 4;
    let provider = SmtpProvider::new("mail-a", &config).expect("provider");
    let c = content("Batch", "text", "<p>html</p>");
    let ids: Vec<String> = (0..20).map(|i| format!("att-pool-{i:02}")).collect();
    let sends = ids.iter().enumerate().map(|(i, id)| {
        let provider = &provider;
        let c = &c;
        async move {
            let to = format!("user{i}@example.com");
            provider.send(attempt(id, &to, c, None)).await
        }
    });
    let outcomes = tokio::time::timeout(Duration::from_secs(8), futures::future::join_all(sends))
        .await
        .expect("20 sends within 8 s");
    for o in &outcomes {
        assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    }
    let mails = peer.wait_mails(20).await;
    assert_eq!(mails.len(), 20);
    let mut seen: Vec<String> = mails
        .iter()
        .map(|m| {
            let raw = std::fs::read_to_string(m).expect("read");
            header(&raw, "X-Herald-Attempt").expect("attempt header")
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ids);
    // At most 4 connections are in use at once; a returning connection is parked by a task
    // lettre spawns, so reuse is likely, not guaranteed: 20 sends must need far fewer than 20
    // sessions.
    let sessions = peer.sessions();
    assert!(
        (1..=10).contains(&sessions),
        "20 messages over a pool of 4 used {sessions} SMTP sessions"
    );
    // Sequential sends after the burst reuse parked connections: no new session.
    for i in 0..5 {
        let id = format!("att-seq-{i}");
        let o = provider
            .send(attempt(&id, "seq@example.com", &c, None))
            .await;
        assert!(matches!(o, Outcome::Accepted { .. }), "{o:?}");
    }
    assert_eq!(
        peer.sessions(),
        sessions,
        "sequential sends reuse pooled connections"
    );
    assert_eq!(peer.wait_mails(25).await.len(), 25);
    provider.shutdown().await;
}

#[tokio::test]
async fn tls_failures_are_unavailable() {
    // aiosmtpd here offers no STARTTLS and speaks plaintext: a required STARTTLS upgrade and an
    // implicit-TLS handshake both fail before MAIL FROM.
    let peer = SmtpPeer::start().await;
    let c = content("s", "t", "");
    for tls in [SmtpTls::Starttls, SmtpTls::Tls] {
        let mut config = peer.config();
        config.tls = tls;
        let provider = SmtpProvider::new("mail-a", &config).expect("provider");
        let o = tokio::time::timeout(
            Duration::from_secs(5),
            provider.send(attempt("att-tls", "frank@example.com", &c, None)),
        )
        .await
        .expect("bounded");
        assert!(
            matches!(o, Outcome::Unavailable { .. }),
            "{tls:?}: expected Unavailable, got {o:?}"
        );
    }
    assert!(peer.mails().is_empty());
}
