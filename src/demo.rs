//! Demo and benchmark data: recipients with every channel opted in, and a message with content
//! for every channel. Shared by `herald up`, `herald bench` and the black-box tests, so they all
//! exercise the same shapes. Contact points are synthetic (example.com, a fictional number range).

use herald_proto::v1::{
    Channel, ChannelConsent, ConsentState, Content, EmailContent, ExitKind, JourneyEntry,
    JourneyEvent, JourneyExit, JourneySpec, JourneyStep, MessageClass, MessageRequest, PushContent,
    PushPlatform, PushToken, Recipient, SendStep, SmsContent, WaitStep, journey_step,
};

pub fn demo_recipient(id: String, index: usize) -> Recipient {
    let consent = [Channel::Push, Channel::Email, Channel::Sms]
        .into_iter()
        .map(|channel| ChannelConsent {
            channel: channel as i32,
            state: ConsentState::OptedIn as i32,
            ..Default::default()
        })
        .collect();
    Recipient {
        push_tokens: vec![PushToken {
            token: format!("sandbox-token-{index}"),
            platform: PushPlatform::Fcm as i32,
        }],
        email: format!("user{index}@example.com"),
        phone: format!("+1212{:07}", 2_000_000 + (index % 7_000_000)),
        time_zone: String::new(),
        consent,
        id,
        ..Default::default()
    }
}

pub fn demo_message(recipient_id: String, key: String) -> MessageRequest {
    MessageRequest {
        recipient_id,
        idempotency_key: key,
        class: MessageClass::Transactional as i32,
        content: Some(Content {
            push: Some(PushContent {
                title: "Your order shipped".into(),
                body: "It arrives tomorrow.".into(),
                data: Default::default(),
            }),
            email: Some(EmailContent {
                subject: "Your order shipped".into(),
                text_body: "It arrives tomorrow.".into(),
                html_body: String::new(),
            }),
            sms: Some(SmsContent {
                text: "Your order shipped; it arrives tomorrow.".into(),
            }),
        }),
        waterfall: Vec::new(),
        ..Default::default()
    }
}

/// The demo's waterfall: push until delivered (within `push_timeout_ms`), then email, then SMS
/// (each counted once the provider accepts it).
pub fn demo_waterfall(push_timeout_ms: u32) -> Vec<herald_proto::v1::WaterfallStep> {
    use herald_proto::v1::{SuccessCondition, WaterfallStep};
    [
        (Channel::Push, SuccessCondition::Delivered, push_timeout_ms),
        (Channel::Email, SuccessCondition::Accepted, 0),
        (Channel::Sms, SuccessCondition::Accepted, 0),
    ]
    .into_iter()
    .map(|(channel, success, timeout_ms)| WaterfallStep {
        channel: channel as i32,
        success: success as i32,
        timeout_ms,
        provider_account: String::new(),
    })
    .collect()
}

/// A campaign of the demo message to an uploaded list, `per_second` paced (`None` = unpaced).
pub fn demo_campaign(
    name: &str,
    waterfall: Vec<herald_proto::v1::WaterfallStep>,
    per_second: Option<u32>,
) -> herald_proto::v1::CampaignSpec {
    use herald_proto::v1::{Audience, CampaignSpec, Pace};
    let message = demo_message(String::new(), String::new());
    CampaignSpec {
        name: name.to_owned(),
        class: message.class,
        content: message.content,
        waterfall,
        audience: Some(Audience {
            list: true,
            segment: Vec::new(),
        }),
        pace: per_second.map(|per_second| Pace {
            per_second,
            spread_over_s: 0,
        }),
        ..Default::default()
    }
}

fn journey_send(name: &str, content: Content) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(journey_step::Kind::Send(SendStep {
            content: Some(content),
            ..Default::default()
        })),
        next: String::new(),
    }
}

fn journey_wait(name: &str, days: u64) -> JourneyStep {
    JourneyStep {
        name: name.into(),
        kind: Some(journey_step::Kind::Wait(WaitStep {
            duration_s: days * 86_400,
            until_local_time: String::new(),
        })),
        next: String::new(),
    }
}

/// The demo win-back: on `inactive_30d` a push, 30 days later an email, 30 more an SMS; a
/// purchase or a conversion ends it. `first_wait_days` > 0 puts a wait before the push (what
/// the journey-waits benchmark measures).
fn win_back(first_wait_days: u64) -> JourneySpec {
    let push = Content {
        push: Some(PushContent {
            title: "We miss you".into(),
            body: "See what is new this month.".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let email = Content {
        email: Some(EmailContent {
            subject: "20% off, just for you".into(),
            text_body: "Come back this week: 20% off everything.".into(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let sms = Content {
        sms: Some(SmsContent {
            text: "Last chance: 20% off ends Sunday. Reply STOP to opt out.".into(),
        }),
        ..Default::default()
    };
    let mut steps = Vec::new();
    if first_wait_days > 0 {
        steps.push(journey_wait("wait-first", first_wait_days));
        steps.push(journey_send("miss-you", push));
    } else {
        steps.extend([
            journey_send("miss-you", push),
            journey_wait("wait-30", 30),
            journey_send("offer", email),
            journey_wait("wait-60", 30),
            journey_send("last-call", sms),
        ]);
    }
    let entry_event = if first_wait_days > 0 {
        "inactive_90d"
    } else {
        "inactive_30d"
    };
    JourneySpec {
        name: "win-back".into(),
        class: MessageClass::Marketing as i32,
        topic: "offers".into(),
        events: vec![
            JourneyEvent {
                name: entry_event.into(),
                properties: vec![],
            },
            JourneyEvent {
                name: "purchased".into(),
                properties: vec![],
            },
        ],
        entry: Some(JourneyEntry {
            event: entry_event.into(),
            ..Default::default()
        }),
        steps,
        exits: vec![
            JourneyExit {
                kind: ExitKind::ExitConverted as i32,
                event: String::new(),
            },
            JourneyExit {
                kind: ExitKind::ExitEvent as i32,
                event: "purchased".into(),
            },
        ],
        reentry_cooldown_s: 0,
    }
}

/// The demo's win-back journey (push, 30 days, email, 30 days, SMS), entered on
/// `inactive_30d`.
pub fn demo_win_back_journey() -> JourneySpec {
    win_back(0)
}

/// A journey that starts with a `days`-day wait (then a push), entered on `inactive_90d`.
pub fn demo_wait_journey(days: u64) -> JourneySpec {
    win_back(days.max(1))
}
