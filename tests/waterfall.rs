//! Waterfalls that wait for receipts, end to end: a real `redis-server`, `herald control` and a
//! `herald node` process whose provider accounts are real adapters talking to real protocol
//! peers on loopback — a fake FCM (HTTP v1 + OAuth), aiosmtpd (SMTP) and a fake Twilio (HTTP
//! form API, signed status callbacks). Receipts come back the way they do in production: the
//! Engagement API, a SendGrid-style event webhook and Twilio status callbacks to the node's HTTP
//! listener.
//!
//! Covers: push not delivered within its timeout → email; email bounce → SMS (and the address
//! suppressed); push read → stop; missing email → skipped with its reason; a late push receipt
//! after the fallback → recorded, no new attempt; an unregistered push token → suppressed, next
//! channel; a Twilio status callback satisfying a DELIVERED step; Engagement bad input and
//! unknown/duplicate reports. Every message ends in exactly one terminal state (the chaos
//! checker judges every log at the end).

use std::time::Duration;

use herald_chaos::history::{Expectations, check};
use herald_proto::partition::partition_of;
use herald_proto::v1::delivery_client::DeliveryClient;
use herald_proto::v1::engagement_client::EngagementClient;
use herald_proto::v1::recipients_client::RecipientsClient;
use herald_proto::v1::{
    Channel, ChannelConsent, ConsentState, Content, EmailContent, EngagementKind, EngagementReport,
    EventKind, GetMessageResponse, GetRecipientRequest, MessageClass, MessageRequest,
    MessageStatus, PushContent, PushPlatform, PushToken, Recipient, ReportRequest, ReportStatus,
    SendRequest, SmsContent, SuccessCondition, UpsertRecipientRequest, WaterfallStep,
};
use herald_providers::peers::push::{FcmPeer, FcmPeerConfig, test_keys};
use herald_providers::peers::smtp::SmtpPeer;
use herald_providers::peers::twilio::{TwilioPeer, TwilioPeerConfig};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, TENANT, authed, channel};
use herald_testkit::delivery::{
    describe, get_message, is_terminal_log, last_status, send, wait_for_log,
};
use tonic::Code;
use tonic::transport::Channel as GrpcChannel;

/// A message's longest wait in these tests (receipt timeouts are 1.5 s; peers answer in ms).
const SETTLE: Duration = Duration::from_secs(20);

struct Peers {
    fcm: FcmPeer,
    smtp: SmtpPeer,
    twilio: TwilioPeer,
    /// The SMS channel's second account (failover).
    backup: TwilioPeer,
}

async fn start() -> (Cluster, Peers) {
    let fcm = FcmPeer::start(FcmPeerConfig::default())
        .await
        .expect("fcm peer");
    let smtp = SmtpPeer::start().await;
    let twilio = TwilioPeer::start(TwilioPeerConfig {
        status_callback_delay: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .await
    .expect("twilio peer");
    let backup = TwilioPeer::start(TwilioPeerConfig::default())
        .await
        .expect("backup twilio peer");
    let dir = tempfile::tempdir().expect("tempdir");
    let service_account = dir.path().join("fcm-service-account.json");
    std::fs::write(
        &service_account,
        fcm.service_account_json(test_keys::FCM_PRIVATE_KEY_PEM),
    )
    .expect("write service account");
    let tables = format!(
        r#"
[providers.fcm-main]
kind = "fcm"
service_account_path = "{sa}"
base_url = "{fcm}"
request_timeout_ms = 5000

[providers.mail]
kind = "smtp"
host = "127.0.0.1"
port = {smtp}
tls = "none"
from_address = "notify@herald.test"
command_timeout_ms = 5000

[providers.sms-http]
kind = "twilio"
base_url = "{twilio}"
account_sid = "{sid}"
auth_token = "{token}"
from = "+15550001111"
status_callback = "http://{{http}}/callbacks/sms-http/status"

[providers.sms-backup]
kind = "twilio"
base_url = "{backup}"
account_sid = "{backup_sid}"
auth_token = "{backup_token}"
from = "+15550002222"

[channels]
push = ["fcm-main"]
email = ["mail"]
sms = ["sms-http", "sms-backup"]

[failover]
tries_per_account = 2
backoff_base_ms = 10
breaker_failures = 4
breaker_open_ms = 60000
"#,
        sa = service_account.display(),
        fcm = fcm.base_url(),
        smtp = smtp.port,
        twilio = twilio.base_url(),
        sid = twilio.account_sid(),
        token = twilio.auth_token(),
        backup = backup.base_url(),
        backup_sid = backup.account_sid(),
        backup_token = backup.auth_token(),
    );
    let cluster = Cluster::start(
        1,
        NodeSpec {
            sandbox_latency_ms: 0,
            top: "default_step_timeout_ms = 20000\npublic_url = \"http://{http}\"\nlink_secret = \"test-link-secret\"".into(),
            tables,
            http: true,
            ..Default::default()
        },
    )
    .await;
    // The service account file must outlive the node's start only.
    drop(dir);
    (
        cluster,
        Peers {
            fcm,
            smtp,
            twilio,
            backup,
        },
    )
}

fn opted_in() -> Vec<ChannelConsent> {
    [Channel::Push, Channel::Email, Channel::Sms]
        .into_iter()
        .map(|channel| ChannelConsent {
            channel: channel as i32,
            state: ConsentState::OptedIn as i32,
            ..Default::default()
        })
        .collect()
}

fn recipient(id: &str, token: Option<&str>, email: Option<&str>, phone: Option<&str>) -> Recipient {
    Recipient {
        id: id.into(),
        push_tokens: token
            .map(|token| PushToken {
                token: token.into(),
                platform: PushPlatform::Fcm as i32,
            })
            .into_iter()
            .collect(),
        email: email.unwrap_or_default().into(),
        phone: phone.unwrap_or_default().into(),
        consent: opted_in(),
        ..Default::default()
    }
}

fn step(channel: Channel, success: SuccessCondition, timeout_ms: u32) -> WaterfallStep {
    WaterfallStep {
        channel: channel as i32,
        success: success as i32,
        timeout_ms,
        provider_account: String::new(),
    }
}

fn message(recipient_id: &str, key: &str, waterfall: Vec<WaterfallStep>) -> MessageRequest {
    MessageRequest {
        recipient_id: recipient_id.into(),
        idempotency_key: key.into(),
        class: MessageClass::Transactional as i32,
        content: Some(Content {
            push: Some(PushContent {
                title: "Your code".into(),
                body: "Open the app".into(),
                data: Default::default(),
            }),
            email: Some(EmailContent {
                subject: "Your code".into(),
                text_body: "It is 123456.".into(),
                html_body: String::new(),
            }),
            sms: Some(SmsContent {
                text: "Your code is 123456".into(),
            }),
        }),
        waterfall,
        ..Default::default()
    }
}

struct Clients {
    delivery: DeliveryClient<GrpcChannel>,
    recipients: RecipientsClient<GrpcChannel>,
    engagement: EngagementClient<GrpcChannel>,
}

impl Clients {
    async fn new(cluster: &Cluster) -> Self {
        let channel = channel(&cluster.node_addrs[0]).await;
        Self {
            delivery: DeliveryClient::new(channel.clone()),
            recipients: RecipientsClient::new(channel.clone()),
            engagement: EngagementClient::new(channel),
        }
    }

    async fn upsert(&mut self, recipient: Recipient) {
        self.recipients
            .upsert_recipient(authed(
                UpsertRecipientRequest {
                    recipient: Some(recipient),
                },
                API_KEY,
            ))
            .await
            .expect("upsert");
    }

    async fn send(&self, message: MessageRequest) -> String {
        send(&self.delivery, API_KEY, message)
            .await
            .expect("send")
            .message_id
    }

    async fn get(&self, id: &str) -> GetMessageResponse {
        get_message(&self.delivery, API_KEY, id)
            .await
            .expect("get message")
    }

    /// Waits until `done` holds for the log (bounded by `SETTLE`).
    async fn wait(
        &self,
        id: &str,
        what: &str,
        done: impl Fn(&GetMessageResponse) -> bool,
    ) -> GetMessageResponse {
        wait_for_log(&self.delivery, API_KEY, id, what, SETTLE, done).await
    }

    async fn report(&mut self, reports: Vec<EngagementReport>) -> Vec<ReportStatus> {
        self.engagement
            .report(authed(ReportRequest { reports }, API_KEY))
            .await
            .expect("report")
            .into_inner()
            .results
            .iter()
            .map(|r| r.status())
            .collect()
    }
}

fn kinds(log: &GetMessageResponse) -> Vec<(EventKind, Option<u32>)> {
    log.events.iter().map(|e| (e.kind(), e.step)).collect()
}

fn has(log: &GetMessageResponse, kind: EventKind, step: u32) -> bool {
    log.events
        .iter()
        .any(|e| e.kind() == kind && e.step == Some(step))
}

fn attempts(log: &GetMessageResponse) -> usize {
    log.events
        .iter()
        .filter(|e| e.kind() == EventKind::EventAttempted)
        .count()
}

/// The provider message id recorded in the `sent` event of `step`.
fn provider_message_id(log: &GetMessageResponse, step: u32) -> String {
    let sent = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventSent && e.step == Some(step))
        .unwrap_or_else(|| panic!("no sent event for step {step}: {}", describe(log)));
    sent.reason
        .strip_prefix("provider_message_id=")
        .map(|rest| rest.split(',').next().unwrap_or_default().to_owned())
        .unwrap_or_default()
}

fn report_attempt(attempt_id: String, kind: EngagementKind) -> EngagementReport {
    EngagementReport {
        attempt_id,
        kind: kind as i32,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waterfalls_wait_for_receipts_from_real_providers() {
    let (cluster, peers) = start().await;
    let mut api = Clients::new(&cluster).await;
    let http = cluster.http_addrs[0].clone();
    let web = reqwest::Client::new();
    let mut ids = Vec::new();

    // 1. Push not delivered within its timeout → email; then a late push receipt is recorded
    //    and changes nothing.
    api.upsert(recipient(
        "r-timeout",
        Some("tok-timeout"),
        Some("timeout@example.com"),
        None,
    ))
    .await;
    let id = api
        .send(message(
            "r-timeout",
            "k-timeout",
            vec![
                step(Channel::Push, SuccessCondition::Delivered, 1500),
                step(Channel::Email, SuccessCondition::Accepted, 0),
            ],
        ))
        .await;
    ids.push(id.clone());
    let log = api
        .wait(&id, "push timeout then email", is_terminal_log)
        .await;
    assert_eq!(
        last_status(&log),
        MessageStatus::Delivered,
        "{}",
        describe(&log)
    );
    assert!(has(&log, EventKind::EventWaiting, 0), "{}", describe(&log));
    let timeout = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventFailed && e.step == Some(0))
        .expect("push step failed");
    assert!(timeout.reason.starts_with("timeout{"), "{}", timeout.reason);
    let due = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventWaiting)
        .map(|e| e.due_unix_ms)
        .expect("waiting");
    let late_by = timeout.at_unix_ms - due;
    assert!(
        (0..1000).contains(&late_by),
        "timer fired {late_by} ms after its due time"
    );
    assert!(has(&log, EventKind::EventSent, 1), "{}", describe(&log));
    assert!(
        peers
            .smtp
            .mail_texts()
            .iter()
            .any(|m| m.contains("timeout@example.com")),
        "the email reached the SMTP server"
    );
    let before = attempts(&log);
    let verdict = api
        .report(vec![report_attempt(
            format!("{id}.0"),
            EngagementKind::EngagementDelivered,
        )])
        .await;
    assert_eq!(verdict, vec![ReportStatus::ReportLate]);
    let log = api.get(&id).await;
    assert!(
        has(&log, EventKind::EventLateReceipt, 0),
        "{}",
        describe(&log)
    );
    assert_eq!(attempts(&log), before, "a late receipt starts nothing");
    assert_eq!(last_status(&log), MessageStatus::Delivered);

    // 2. Email bounce (a SendGrid event webhook) → SMS; the address is suppressed.
    api.upsert(recipient(
        "r-bounce",
        None,
        Some("bounce@example.com"),
        Some("+14155550101"),
    ))
    .await;
    let id = api
        .send(message(
            "r-bounce",
            "k-bounce",
            vec![
                step(Channel::Email, SuccessCondition::Delivered, 20_000),
                step(Channel::Sms, SuccessCondition::Accepted, 0),
            ],
        ))
        .await;
    ids.push(id.clone());
    let log = api
        .wait(&id, "email waiting", |l| has(l, EventKind::EventWaiting, 0))
        .await;
    let smtp_id = provider_message_id(&log, 0);
    assert!(!smtp_id.is_empty(), "{}", describe(&log));
    let webhook = serde_json::json!([{
        "email": "bounce@example.com",
        "timestamp": 1_700_000_000,
        "smtp-id": format!("<{smtp_id}>"),
        "event": "bounce",
        "type": "bounce",
        "status": "5.1.1",
        "reason": "550 5.1.1 user unknown",
        "sg_message_id": "sg-1",
    }]);
    let answer = web
        .post(format!("http://{http}/callbacks/mail/events"))
        .json(&webhook)
        .send()
        .await
        .expect("webhook post");
    assert!(answer.status().is_success(), "{:?}", answer.status());
    let log = api.wait(&id, "bounce then sms", is_terminal_log).await;
    assert_eq!(
        last_status(&log),
        MessageStatus::Delivered,
        "{}",
        describe(&log)
    );
    assert!(has(&log, EventKind::EventBounced, 0), "{}", describe(&log));
    assert!(has(&log, EventKind::EventSent, 1), "{}", describe(&log));
    assert!(
        peers
            .twilio
            .received()
            .iter()
            .any(|m| m.to == "+14155550101"),
        "the SMS reached the Twilio peer"
    );
    let stored = api
        .recipients
        .get_recipient(authed(
            GetRecipientRequest {
                id: "r-bounce".into(),
            },
            API_KEY,
        ))
        .await
        .expect("get recipient")
        .into_inner();
    assert!(
        stored
            .suppressed
            .iter()
            .any(|s| s.channel == Channel::Email as i32 && s.reason == "bounced_hard"),
        "hard bounce suppresses the address: {:?}",
        stored.suppressed
    );
    // A client's upsert of the same record keeps the suppression (only a new opt-in ends it),
    // and a client cannot set suppressions itself.
    api.upsert(recipient(
        "r-bounce",
        None,
        Some("bounce@example.com"),
        Some("+14155550101"),
    ))
    .await;
    let stored = api
        .recipients
        .get_recipient(authed(
            GetRecipientRequest {
                id: "r-bounce".into(),
            },
            API_KEY,
        ))
        .await
        .expect("get recipient")
        .into_inner();
    assert_eq!(stored.suppressed.len(), 1, "{:?}", stored.suppressed);
    let mut forged = recipient("r-bounce", None, Some("bounce@example.com"), None);
    forged.suppressed = stored.suppressed.clone();
    let refused = api
        .recipients
        .upsert_recipient(authed(
            UpsertRecipientRequest {
                recipient: Some(forged),
            },
            API_KEY,
        ))
        .await
        .expect_err("suppressed is not for clients");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("recipient.suppressed"),
        "{}",
        refused.message()
    );

    // 3. Push read (reported through the Engagement API) → stop: no email.
    api.upsert(recipient(
        "r-read",
        Some("tok-read"),
        Some("read@example.com"),
        None,
    ))
    .await;
    let id = api
        .send(message(
            "r-read",
            "k-read",
            vec![
                step(Channel::Push, SuccessCondition::Read, 20_000),
                step(Channel::Email, SuccessCondition::Accepted, 0),
            ],
        ))
        .await;
    ids.push(id.clone());
    api.wait(&id, "push waiting", |l| has(l, EventKind::EventWaiting, 0))
        .await;
    let delivered = api
        .report(vec![EngagementReport {
            message_id: id.clone(),
            kind: EngagementKind::EngagementDelivered as i32,
            ..Default::default()
        }])
        .await;
    assert_eq!(delivered, vec![ReportStatus::ReportApplied]);
    let log = api.get(&id).await;
    assert!(
        !is_terminal_log(&log),
        "delivered is not read: {}",
        describe(&log)
    );
    let again = api
        .report(vec![report_attempt(
            format!("{id}.0"),
            EngagementKind::EngagementDelivered,
        )])
        .await;
    assert_eq!(again, vec![ReportStatus::ReportDuplicate]);
    let read = api
        .report(vec![report_attempt(
            format!("{id}.0"),
            EngagementKind::EngagementRead,
        )])
        .await;
    assert_eq!(read, vec![ReportStatus::ReportApplied]);
    let log = api.wait(&id, "push read", is_terminal_log).await;
    assert_eq!(last_status(&log), MessageStatus::Delivered);
    assert_eq!(
        attempts(&log),
        1,
        "no email after a read push: {}",
        describe(&log)
    );
    assert!(has(&log, EventKind::EventRead, 0));

    // 4. Missing email → skipped with its reason, then SMS; a DELIVERED SMS step is satisfied by
    //    the Twilio status callback (signed, posted to the node's HTTP listener).
    api.upsert(recipient("r-noemail", None, None, Some("+14155550102")))
        .await;
    let id = api
        .send(message(
            "r-noemail",
            "k-noemail",
            vec![
                step(Channel::Email, SuccessCondition::Accepted, 0),
                step(Channel::Sms, SuccessCondition::Delivered, 20_000),
            ],
        ))
        .await;
    ids.push(id.clone());
    let log = api
        .wait(&id, "sms delivered by callback", is_terminal_log)
        .await;
    assert_eq!(
        last_status(&log),
        MessageStatus::Delivered,
        "{}",
        describe(&log)
    );
    let skipped = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventSkipped)
        .expect("skipped");
    assert_eq!(skipped.step, Some(0));
    assert_eq!(skipped.reason, "no_contact_point{channel=email}");
    assert!(
        has(&log, EventKind::EventDelivered, 1),
        "{}",
        describe(&log)
    );
    assert_eq!(
        kinds(&log)
            .iter()
            .filter(|(k, _)| *k == EventKind::EventAttempted)
            .count(),
        1
    );

    // 5. Unregistered push token → the token is suppressed and the waterfall moves on.
    peers.fcm.faults().unregister("tok-dead");
    api.upsert(recipient(
        "r-dead",
        Some("tok-dead"),
        Some("dead@example.com"),
        None,
    ))
    .await;
    let id = api
        .send(message(
            "r-dead",
            "k-dead",
            vec![
                step(Channel::Push, SuccessCondition::Accepted, 0),
                step(Channel::Email, SuccessCondition::Accepted, 0),
            ],
        ))
        .await;
    ids.push(id.clone());
    let log = api
        .wait(&id, "dead token then email", is_terminal_log)
        .await;
    assert_eq!(
        last_status(&log),
        MessageStatus::Delivered,
        "{}",
        describe(&log)
    );
    let failed = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventFailed && e.step == Some(0))
        .expect("push failed");
    assert!(
        failed.reason.contains("contact_suppressed=true"),
        "{}",
        failed.reason
    );
    let stored = api
        .recipients
        .get_recipient(authed(
            GetRecipientRequest {
                id: "r-dead".into(),
            },
            API_KEY,
        ))
        .await
        .expect("get recipient")
        .into_inner();
    assert!(
        stored
            .suppressed
            .iter()
            .any(|s| s.channel == Channel::Push as i32 && s.address == "tok-dead"),
        "{:?}",
        stored.suppressed
    );
    // The next message skips the suppressed token with a reason naming it.
    let id = api
        .send(message(
            "r-dead",
            "k-dead-2",
            vec![
                step(Channel::Push, SuccessCondition::Accepted, 0),
                step(Channel::Email, SuccessCondition::Accepted, 0),
            ],
        ))
        .await;
    ids.push(id.clone());
    let log = api
        .wait(&id, "suppressed token skipped", is_terminal_log)
        .await;
    let skipped = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventSkipped)
        .expect("skipped");
    assert!(
        skipped.reason.starts_with("suppressed{channel=push"),
        "{}",
        skipped.reason
    );

    // 6. Engagement input: bad reports are INVALID_ARGUMENT naming the field and change nothing;
    //    unknown ones are answered, not errors.
    let bad = api
        .engagement
        .report(authed(
            ReportRequest {
                reports: vec![
                    report_attempt(format!("{}.0", ids[0]), EngagementKind::EngagementClicked),
                    EngagementReport {
                        attempt_id: "no-step".into(),
                        kind: EngagementKind::EngagementRead as i32,
                        ..Default::default()
                    },
                ],
            },
            API_KEY,
        ))
        .await
        .expect_err("invalid");
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(
        bad.message().contains("reports[1].attempt_id"),
        "{}",
        bad.message()
    );
    let log = api.get(&ids[0]).await;
    assert!(
        !has(&log, EventKind::EventClicked, 0),
        "a rejected request changes nothing"
    );
    let unknown = api
        .report(vec![
            EngagementReport {
                message_id: "01NOSUCHMESSAGE".into(),
                kind: EngagementKind::EngagementRead as i32,
                ..Default::default()
            },
            EngagementReport {
                provider: "sms-http".into(),
                provider_message_id: "SMnosuch".into(),
                kind: EngagementKind::EngagementDelivered as i32,
                ..Default::default()
            },
        ])
        .await;
    assert_eq!(
        unknown,
        vec![ReportStatus::ReportUnknown, ReportStatus::ReportUnknown]
    );
    let forged = web
        .post(format!("http://{http}/callbacks/sms-http/status"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("MessageSid=SMx&MessageStatus=delivered")
        .send()
        .await
        .expect("post");
    assert_eq!(
        forged.status(),
        403,
        "unsigned Twilio callbacks are refused"
    );

    // 7. Templates: recipient attributes and message variables fill the content at send; an
    //    undefined variable is INVALID_ARGUMENT at submit, naming the field, and stores nothing.
    let mut person = recipient("r-tpl", None, Some("ada@example.com"), Some("+14155550103"));
    person.attributes.insert("first_name".into(), "Ada".into());
    api.upsert(person).await;
    let mut templated = message(
        "r-tpl",
        "k-tpl",
        vec![step(Channel::Email, SuccessCondition::Accepted, 0)],
    );
    templated.variables.insert("code".into(), "424242".into());
    if let Some(email) = templated.content.as_mut().and_then(|c| c.email.as_mut()) {
        email.subject = "Hello {{ first_name }}".into();
        email.text_body = "Your code is {{ code }}.".into();
    }
    let mut broken = templated.clone();
    if let Some(email) = broken.content.as_mut().and_then(|c| c.email.as_mut()) {
        email.subject = "Hello {{ last_name }}".into();
    }
    let error = api
        .delivery
        .send(authed(
            SendRequest {
                message: Some(broken),
            },
            API_KEY,
        ))
        .await
        .expect_err("undefined variable");
    assert_eq!(error.code(), Code::InvalidArgument);
    assert!(
        error.message().contains("message.content.email.subject")
            && error.message().contains("last_name"),
        "{}",
        error.message()
    );
    let id = api.send(templated).await;
    ids.push(id.clone());
    let log = api.wait(&id, "templated email", is_terminal_log).await;
    assert_eq!(
        last_status(&log),
        MessageStatus::Delivered,
        "{}",
        describe(&log)
    );
    let mail = peers
        .smtp
        .mail_texts()
        .into_iter()
        .find(|m| m.contains("ada@example.com"))
        .expect("templated mail arrived");
    assert!(mail.contains("Hello Ada"), "{mail}");
    assert!(mail.contains("Your code is 424242."), "{mail}");
    // RFC 8058: the mail carries a signed one-click link; POSTing to it records the opt-out.
    assert!(
        mail.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click"),
        "{mail}"
    );
    let link = mail
        .lines()
        .find_map(|l| l.strip_prefix("List-Unsubscribe: <"))
        .and_then(|rest| rest.split('>').next())
        .expect("List-Unsubscribe header")
        .to_owned();
    assert!(
        link.contains(&format!("/unsubscribe/{TENANT}/{id}/")),
        "{link}"
    );
    // Another last hex digit than the real one: a wrong signature.
    let other = if link.ends_with('0') { '1' } else { '0' };
    let forged = web
        .post(format!("{}{other}", &link[..link.len() - 1]))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("post");
    assert_eq!(forged.status(), 403);
    let answer = web
        .post(&link)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .expect("one-click post");
    assert_eq!(answer.status(), 200);
    let log = api.get(&id).await;
    assert!(
        has(&log, EventKind::EventUnsubscribed, 0),
        "{}",
        describe(&log)
    );
    let sent = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventSent)
        .expect("sent");
    assert_eq!(
        sent.cost_micros, 100,
        "email costs 0.0001 in the built-in table"
    );

    // 8. Cost order: SMS then email given, email (cheaper) runs first.
    let mut ordered = message(
        "r-tpl",
        "k-cost",
        vec![
            step(Channel::Sms, SuccessCondition::Accepted, 0),
            step(Channel::Email, SuccessCondition::Accepted, 0),
        ],
    );
    ordered.cost_order = true;
    let id = api.send(ordered).await;
    ids.push(id.clone());
    let log = api.wait(&id, "cost-ordered", is_terminal_log).await;
    let order: Vec<Channel> = log
        .message
        .as_ref()
        .map(|m| m.waterfall.iter().map(|s| s.channel()).collect())
        .unwrap_or_default();
    assert_eq!(order, vec![Channel::Email, Channel::Sms]);
    let first = log
        .events
        .iter()
        .find(|e| e.kind() == EventKind::EventAttempted)
        .expect("attempted");
    assert_eq!(first.channel(), Channel::Email);

    // 9. Failover: the first SMS account answers 500 → retried, then the next account takes
    //    the message; after enough failures its circuit opens and it is skipped at once.
    peers.twilio.fail_next(4);
    for (n, key) in ["k-failover-1", "k-failover-2", "k-failover-3"]
        .iter()
        .enumerate()
    {
        let id = api
            .send(message(
                "r-noemail",
                key,
                vec![step(Channel::Sms, SuccessCondition::Accepted, 0)],
            ))
            .await;
        ids.push(id.clone());
        let log = api.wait(&id, "sms failover", is_terminal_log).await;
        assert_eq!(
            last_status(&log),
            MessageStatus::Delivered,
            "{}",
            describe(&log)
        );
        let sent = log
            .events
            .iter()
            .find(|e| e.kind() == EventKind::EventSent)
            .expect("sent");
        assert_eq!(sent.provider, "sms-backup", "{}", describe(&log));
        let expected = if n < 2 {
            "sms-http: unavailable"
        } else {
            "sms-http: circuit open"
        };
        assert!(
            sent.reason.contains(expected),
            "message {n}: {}",
            sent.reason
        );
    }
    assert_eq!(peers.backup.received().len(), 3);

    // Every log passes the invariant checker.
    let mut logs = Vec::new();
    for id in &ids {
        logs.push(api.get(id).await);
    }
    let node = "node-0".to_string();
    let summary = check(
        logs.iter(),
        &Expectations {
            partition_of: &|recipient| partition_of(TENANT, recipient, cluster.partition_count).0,
            allowed_owners: &|_| vec![node.clone()],
        },
    )
    .unwrap_or_else(|v| panic!("{v}"));
    eprintln!("waterfall scenarios: {summary:?}");
    assert_eq!(summary.messages, ids.len());
    assert_eq!(summary.late_receipts, 1);
    assert_eq!(summary.timeouts, 1);

    let metrics = web
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics.contains(
            "herald_provider_circuit_state{node=\"node-0\",account=\"fcm-main\",kind=\"fcm\"} 0"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_receipts_total{node=\"node-0\",verdict=\"late\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "herald_provider_circuit_state{node=\"node-0\",account=\"sms-http\",kind=\"twilio\"} 1"
        ),
        "the failing account's circuit is open: {metrics}"
    );
}
