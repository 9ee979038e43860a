//! Input validation: sizes, formats, waterfall shape.
//!
//! Owns every rule that rejects a request before anything is stored. Each error names the field
//! (`messages[3].waterfall[1].channel`) so a client can fix its request without reading logs.
//! Must never touch the store or the network: validation is pure and runs on the receiving
//! node, before routing.

use herald_proto::error::Error;
use herald_proto::v1::{
    Channel, ConsentState, MessageClass, MessageRequest, PushPlatform, Recipient, SuccessCondition,
    WaterfallStep,
};

/// Longest id or key accepted (recipient ids, idempotency keys, campaign ids), in bytes.
pub const ID_MAX_BYTES: usize = 128;
/// Idempotency keys of campaigns' messages (`campaign:<id>:<recipient>`): a client's key may
/// not start with it, so no client message can take a campaign member's place.
pub const CAMPAIGN_KEY_PREFIX: &str = "campaign:";
/// Idempotency keys of journeys' messages (`journey:<id>:<recipient>:<entry>:<step>`).
pub const JOURNEY_KEY_PREFIX: &str = "journey:";
/// Longest waterfall step timeout: 7 days.
pub const STEP_TIMEOUT_MAX_MS: u32 = 7 * 24 * 3600 * 1000;
pub use crate::content::limits::{
    EMAIL_SUBJECT_MAX_BYTES, PUSH_PAYLOAD_MAX_BYTES, SMS_TEXT_MAX_CHARS,
};

/// The default waterfall: push → email → SMS, each "accepted by the provider" counts.
pub fn default_waterfall() -> Vec<WaterfallStep> {
    [Channel::Push, Channel::Email, Channel::Sms]
        .into_iter()
        .map(|channel| WaterfallStep {
            channel: channel as i32,
            success: SuccessCondition::Accepted as i32,
            timeout_ms: 0,
            provider_account: String::new(),
        })
        .collect()
}

/// `field` builds the field's name, only when there is an error to report: validation runs
/// for every message, and naming fields eagerly cost several allocations per message.
pub fn check_id(field: impl Fn() -> String, value: &str, required: bool) -> Result<(), Error> {
    if value.is_empty() {
        if required {
            return Err(Error::invalid(field(), "is required"));
        }
        return Ok(());
    }
    if value.len() > ID_MAX_BYTES {
        return Err(Error::invalid(
            field(),
            format!("is {} bytes, the limit is {ID_MAX_BYTES}", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(Error::invalid(
            field(),
            "must not contain control characters",
        ));
    }
    Ok(())
}

/// Validates a message and fills in defaults (waterfall, success condition). `prefix` is the
/// field path of the message in its request (`message` or `messages[3]`).
pub fn message(
    prefix: &str,
    request: &mut MessageRequest,
    max_message_bytes: usize,
) -> Result<(), Error> {
    check_id(
        || format!("{prefix}.recipient_id"),
        &request.recipient_id,
        true,
    )?;
    check_id(
        || format!("{prefix}.idempotency_key"),
        &request.idempotency_key,
        false,
    )?;
    if request.idempotency_key.starts_with(CAMPAIGN_KEY_PREFIX) {
        return Err(Error::invalid(
            format!("{prefix}.idempotency_key"),
            format!("the prefix {CAMPAIGN_KEY_PREFIX:?} is reserved for campaigns' messages"),
        ));
    }
    if request.idempotency_key.starts_with(JOURNEY_KEY_PREFIX) {
        return Err(Error::invalid(
            format!("{prefix}.idempotency_key"),
            format!("the prefix {JOURNEY_KEY_PREFIX:?} is reserved for journeys' messages"),
        ));
    }
    check_id(
        || format!("{prefix}.campaign_id"),
        &request.campaign_id,
        false,
    )?;
    check_topic(|| format!("{prefix}.topic"), &request.topic)?;
    if let Some(quiet) = &request.quiet_hours
        && !quiet.disabled
    {
        crate::policy::quiet_hours::Window::from_parts(&quiet.start, &quiet.end, quiet.no_weekend)
            .map_err(|e| Error::invalid(format!("{prefix}.quiet_hours"), e))?;
    }
    if request.tag.len() > 64 {
        return Err(Error::invalid(format!("{prefix}.tag"), "at most 64 bytes"));
    }
    match MessageClass::try_from(request.class) {
        Ok(MessageClass::Transactional | MessageClass::Marketing) => {}
        _ => {
            return Err(Error::invalid(
                format!("{prefix}.class"),
                "must be TRANSACTIONAL or MARKETING",
            ));
        }
    }
    if request.waterfall.is_empty() {
        request.waterfall = default_waterfall();
    }
    if request.waterfall.len() > 3 {
        return Err(Error::invalid(
            format!("{prefix}.waterfall"),
            format!(
                "has {} steps, at most 3 (one per channel)",
                request.waterfall.len()
            ),
        ));
    }
    let mut seen = Vec::with_capacity(3);
    for (index, step) in request.waterfall.iter_mut().enumerate() {
        let field = || format!("{prefix}.waterfall[{index}]");
        let channel = match Channel::try_from(step.channel) {
            Ok(c @ (Channel::Push | Channel::Email | Channel::Sms)) => c,
            _ => {
                return Err(Error::invalid(
                    format!("{}.channel", field()),
                    "must be PUSH, EMAIL or SMS",
                ));
            }
        };
        if seen.contains(&channel) {
            return Err(Error::invalid(
                format!("{}.channel", field()),
                format!(
                    "repeats {} (each channel at most once)",
                    channel.as_str_name()
                ),
            ));
        }
        seen.push(channel);
        match SuccessCondition::try_from(step.success) {
            Ok(SuccessCondition::Unspecified) => step.success = SuccessCondition::Accepted as i32,
            Ok(_) => {}
            Err(_) => {
                return Err(Error::invalid(
                    format!("{}.success", field()),
                    "must be ACCEPTED, DELIVERED or READ",
                ));
            }
        }
        if step.timeout_ms > STEP_TIMEOUT_MAX_MS {
            return Err(Error::invalid(
                format!("{}.timeout_ms", field()),
                format!("is {} ms, the limit is 7 days", step.timeout_ms),
            ));
        }
        check_id(
            || format!("{}.provider_account", field()),
            &step.provider_account,
            false,
        )?;
        check_content(prefix, index, channel, request.content.as_ref())?;
    }
    let size = prost::Message::encoded_len(request);
    if size > max_message_bytes {
        return Err(Error::invalid(
            format!("{prefix}.content"),
            format!("message is {size} bytes, the limit is {max_message_bytes}"),
        ));
    }
    Ok(())
}

fn check_content(
    prefix: &str,
    step: usize,
    channel: Channel,
    content: Option<&herald_proto::v1::Content>,
) -> Result<(), Error> {
    let missing = |name: &str| {
        Error::invalid(
            format!("{prefix}.content.{name}"),
            format!("is required by {prefix}.waterfall[{step}]"),
        )
    };
    match channel {
        Channel::Push => {
            let push = content
                .and_then(|c| c.push.as_ref())
                .ok_or_else(|| missing("push"))?;
            if push.title.is_empty() && push.body.is_empty() {
                return Err(Error::invalid(
                    format!("{prefix}.content.push.body"),
                    "title or body is required",
                ));
            }
            let size = push.title.len()
                + push.body.len()
                + push
                    .data
                    .iter()
                    .map(|(k, v)| k.len() + v.len())
                    .sum::<usize>();
            if size > PUSH_PAYLOAD_MAX_BYTES {
                return Err(Error::invalid(
                    format!("{prefix}.content.push"),
                    format!("payload is {size} bytes, the limit is {PUSH_PAYLOAD_MAX_BYTES}"),
                ));
            }
        }
        Channel::Email => {
            let email = content
                .and_then(|c| c.email.as_ref())
                .ok_or_else(|| missing("email"))?;
            if email.subject.is_empty() {
                return Err(Error::invalid(
                    format!("{prefix}.content.email.subject"),
                    "is required",
                ));
            }
            if email.subject.len() > EMAIL_SUBJECT_MAX_BYTES || email.subject.contains(['\r', '\n'])
            {
                return Err(Error::invalid(
                    format!("{prefix}.content.email.subject"),
                    "must be one line of at most 998 bytes",
                ));
            }
            if email.text_body.is_empty() && email.html_body.is_empty() {
                return Err(Error::invalid(
                    format!("{prefix}.content.email.text_body"),
                    "text_body or html_body is required",
                ));
            }
        }
        Channel::Sms => {
            let sms = content
                .and_then(|c| c.sms.as_ref())
                .ok_or_else(|| missing("sms"))?;
            let chars = sms.text.chars().count();
            if chars == 0 {
                return Err(Error::invalid(
                    format!("{prefix}.content.sms.text"),
                    "is required",
                ));
            }
            if chars > SMS_TEXT_MAX_CHARS {
                return Err(Error::invalid(
                    format!("{prefix}.content.sms.text"),
                    format!("is {chars} characters, the limit is {SMS_TEXT_MAX_CHARS}"),
                ));
            }
        }
        Channel::Unspecified => {}
    }
    Ok(())
}

/// Validates a recipient for upsert. `prefix` is its field path (`recipient`, `recipients[2]`).
/// A topic: empty (all topics) or 1..64 of `[a-z0-9_.-]`.
pub fn check_topic(field: impl Fn() -> String, topic: &str) -> Result<(), Error> {
    let ok = topic == crate::policy::consent::ALL_MARKETING
        || topic.len() <= 64
            && topic.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-')
            });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field(), "a topic is 1..64 of [a-z0-9_.-]"))
    }
}

/// Most personalization attributes per recipient.
pub const ATTRIBUTES_MAX: usize = 64;
/// Longest attribute value (the same bound a template variable has).
pub const ATTRIBUTE_VALUE_MAX: usize = crate::content::limits::VAR_MAX_BYTES;

pub fn recipient(prefix: &str, recipient: &Recipient) -> Result<(), Error> {
    check_id(|| format!("{prefix}.id"), &recipient.id, true)?;
    if recipient.push_tokens.len() > 16 {
        return Err(Error::invalid(
            format!("{prefix}.push_tokens"),
            "at most 16 push tokens per recipient",
        ));
    }
    for (index, token) in recipient.push_tokens.iter().enumerate() {
        let field = format!("{prefix}.push_tokens[{index}]");
        if token.token.is_empty()
            || token.token.len() > 4096
            || token.token.contains(char::is_whitespace)
        {
            return Err(Error::invalid(
                format!("{field}.token"),
                "must be 1..4096 bytes without whitespace",
            ));
        }
        if !matches!(
            PushPlatform::try_from(token.platform),
            Ok(PushPlatform::Fcm | PushPlatform::Apns)
        ) {
            return Err(Error::invalid(
                format!("{field}.platform"),
                "must be FCM or APNS",
            ));
        }
    }
    if !recipient.email.is_empty() && !is_email(&recipient.email) {
        return Err(Error::invalid(
            format!("{prefix}.email"),
            "is not an email address (local@domain.tld)",
        ));
    }
    if !recipient.phone.is_empty() {
        check_phone(&format!("{prefix}.phone"), &recipient.phone)?;
    }
    if !recipient.time_zone.is_empty() && recipient.time_zone.parse::<chrono_tz::Tz>().is_err() {
        return Err(Error::invalid(
            format!("{prefix}.time_zone"),
            "is not an IANA time zone (e.g. America/New_York)",
        ));
    }
    if let Some(preferences) = &recipient.preferences {
        for (index, topic) in preferences.muted_topics.iter().enumerate() {
            check_topic(
                || format!("{prefix}.preferences.muted_topics[{index}]"),
                topic,
            )?;
            if topic.is_empty() {
                return Err(Error::invalid(
                    format!("{prefix}.preferences.muted_topics[{index}]"),
                    "is empty",
                ));
            }
        }
    }
    if !recipient.consent_history.is_empty() {
        return Err(Error::invalid(
            format!("{prefix}.consent_history"),
            "is kept by Herald (every consent change); clients cannot set it",
        ));
    }
    if !recipient.suppressed.is_empty() {
        return Err(Error::invalid(
            format!("{prefix}.suppressed"),
            "is kept by Herald (from provider answers and receipts); clients cannot set it",
        ));
    }
    if recipient.attributes.len() > ATTRIBUTES_MAX {
        return Err(Error::invalid(
            format!("{prefix}.attributes"),
            format!("at most {ATTRIBUTES_MAX} attributes"),
        ));
    }
    for (name, value) in &recipient.attributes {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            && !name.as_bytes()[0].is_ascii_digit();
        if !name_ok {
            return Err(Error::invalid(
                format!("{prefix}.attributes[{name:?}]"),
                "names are 1..64 of [A-Za-z0-9_], not starting with a digit (template variables)",
            ));
        }
        if value.len() > ATTRIBUTE_VALUE_MAX {
            return Err(Error::invalid(
                format!("{prefix}.attributes[{name:?}]"),
                format!(
                    "value is {} bytes, at most {ATTRIBUTE_VALUE_MAX}",
                    value.len()
                ),
            ));
        }
    }
    let mut channels = Vec::new();
    for (index, consent) in recipient.consent.iter().enumerate() {
        let field = format!("{prefix}.consent[{index}]");
        let channel = match Channel::try_from(consent.channel) {
            Ok(c @ (Channel::Push | Channel::Email | Channel::Sms)) => c,
            _ => {
                return Err(Error::invalid(
                    format!("{field}.channel"),
                    "must be PUSH, EMAIL or SMS",
                ));
            }
        };
        check_topic(|| format!("{field}.topic"), &consent.topic)?;
        if consent.sender.len() > 128 {
            return Err(Error::invalid(
                format!("{field}.sender"),
                "at most 128 bytes (a provider account name)",
            ));
        }
        let key = (channel, consent.topic.as_str(), consent.sender.as_str());
        if channels.contains(&key) {
            return Err(Error::invalid(
                format!("{field}.channel"),
                "repeats a channel (with the same topic and sender)",
            ));
        }
        channels.push(key);
        if !matches!(
            ConsentState::try_from(consent.state),
            Ok(ConsentState::OptedIn | ConsentState::OptedOut)
        ) {
            return Err(Error::invalid(
                format!("{field}.state"),
                "must be OPTED_IN or OPTED_OUT",
            ));
        }
    }
    Ok(())
}

/// A pragmatic address check: one `@`, a non-empty local part, a dotted domain, no spaces.
/// Deliverability is the provider's job; this catches typos and injection.
pub fn is_email(address: &str) -> bool {
    if address.len() > 254 || address.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !local.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .chars()
            .all(|c| c.is_alphanumeric() || c == '-' || c == '.')
}

fn check_phone(field: &str, phone: &str) -> Result<(), Error> {
    let shape_ok = phone.len() >= 8
        && phone.len() <= 16
        && phone.starts_with('+')
        && phone[1..].chars().all(|c| c.is_ascii_digit());
    if !shape_ok {
        return Err(Error::invalid(
            field,
            "must be E.164: + then 7 to 15 digits, e.g. +12125551234",
        ));
    }
    let parsed = phonenumber::parse(None, phone)
        .map_err(|_| Error::invalid(field, "is not a dialable E.164 number"))?;
    if !phonenumber::is_valid(&parsed) {
        return Err(Error::invalid(
            field,
            "is not a valid number for its country",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::{Content, EmailContent, PushContent, SmsContent};

    fn good() -> MessageRequest {
        MessageRequest {
            recipient_id: "r1".into(),
            idempotency_key: "k1".into(),
            class: MessageClass::Transactional as i32,
            content: Some(Content {
                push: Some(PushContent {
                    title: "t".into(),
                    body: "b".into(),
                    data: Default::default(),
                }),
                email: Some(EmailContent {
                    subject: "s".into(),
                    text_body: "b".into(),
                    html_body: String::new(),
                }),
                sms: Some(SmsContent { text: "b".into() }),
            }),
            waterfall: vec![],
            ..Default::default()
        }
    }

    fn field_of(result: Result<(), Error>) -> String {
        match result {
            Err(Error::InvalidArgument { field, .. }) => field,
            other => panic!("expected invalid argument, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_in() {
        let mut m = good();
        message("message", &mut m, 65536).expect("valid");
        assert_eq!(m.waterfall.len(), 3);
    }

    #[test]
    fn errors_name_the_field() {
        let mut m = good();
        m.recipient_id.clear();
        assert_eq!(
            field_of(message("message", &mut m, 65536)),
            "message.recipient_id"
        );

        let mut m = good();
        m.waterfall = default_waterfall();
        m.waterfall[2].channel = Channel::Push as i32;
        assert_eq!(
            field_of(message("messages[4]", &mut m, 65536)),
            "messages[4].waterfall[2].channel"
        );

        let mut m = good();
        m.waterfall = default_waterfall();
        m.waterfall[1].channel = 0;
        assert_eq!(
            field_of(message("message", &mut m, 65536)),
            "message.waterfall[1].channel"
        );

        let mut m = good();
        if let Some(c) = m.content.as_mut() {
            c.email = None;
        }
        assert_eq!(
            field_of(message("message", &mut m, 65536)),
            "message.content.email"
        );

        let mut m = good();
        if let Some(c) = m.content.as_mut() {
            c.sms = Some(SmsContent {
                text: "x".repeat(1601),
            });
        }
        assert_eq!(
            field_of(message("message", &mut m, 65536)),
            "message.content.sms.text"
        );

        let mut m = good();
        if let Some(c) = m.content.as_mut()
            && let Some(e) = c.email.as_mut()
        {
            e.html_body = "x".repeat(70_000);
        }
        assert_eq!(
            field_of(message("message", &mut m, 65536)),
            "message.content"
        );
    }

    #[test]
    fn recipients() {
        let mut r = Recipient {
            id: "r".into(),
            email: "a@example.com".into(),
            phone: "+12125551234".into(),
            ..Default::default()
        };
        recipient("recipient", &r).expect("valid");
        r.phone = "2125551234".into();
        assert_eq!(field_of(recipient("recipient", &r)), "recipient.phone");
        r.phone = "+1999".into();
        assert_eq!(field_of(recipient("recipient", &r)), "recipient.phone");
        r.phone.clear();
        r.email = "not an email".into();
        assert_eq!(field_of(recipient("recipient", &r)), "recipient.email");
        r.email = "a@b".into();
        assert_eq!(field_of(recipient("recipient", &r)), "recipient.email");
        r.email.clear();
        r.time_zone = "Mars/Olympus".into();
        assert_eq!(field_of(recipient("recipient", &r)), "recipient.time_zone");
    }
}
