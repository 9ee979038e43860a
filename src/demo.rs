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
