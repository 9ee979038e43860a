//! Demo and benchmark data: recipients with every channel opted in, and a message with content
//! for every channel. Shared by `herald up`, `herald bench` and the black-box tests, so they all
//! exercise the same shapes. Contact points are synthetic (example.com, a fictional number range).

use herald_proto::v1::{
    Channel, ChannelConsent, ConsentState, Content, EmailContent, MessageClass, MessageRequest,
    PushContent, PushPlatform, PushToken, Recipient, SmsContent,
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
