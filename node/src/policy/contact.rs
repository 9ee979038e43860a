//! Contact points: the address a channel reaches a person at, if any is usable.
//!
//! Owns the rule that a suppressed address (a hard bounce, an unregistered token, a
//! complaint, a dead number) is never used, and which push token serves a platform. Pure; must
//! never log the addresses it looks at.

use herald_proto::v1::{Channel, PushPlatform, Recipient};

/// The address `channel` sends to for this recipient, skipping suppressed ones; for push, the
/// first token of `platform` (any platform when `None`).
pub fn contact_point(
    recipient: &Recipient,
    channel: Channel,
    platform: Option<PushPlatform>,
) -> Option<&str> {
    let suppressed = |address: &str| {
        recipient
            .suppressed
            .iter()
            .any(|s| s.channel == channel as i32 && s.address == address)
    };
    let address = match channel {
        Channel::Push => recipient
            .push_tokens
            .iter()
            .filter(|t| platform.is_none_or(|p| t.platform() == p))
            .map(|t| t.token.as_str())
            .find(|t| !suppressed(t))?,
        Channel::Email => {
            Some(recipient.email.as_str()).filter(|a| !a.is_empty() && !suppressed(a))?
        }
        Channel::Sms => {
            Some(recipient.phone.as_str()).filter(|a| !a.is_empty() && !suppressed(a))?
        }
        Channel::Unspecified => return None,
    };
    Some(address)
}

/// Whether the recipient has any address for `channel` at all (suppressed or not).
pub fn has_address(recipient: &Recipient, channel: Channel) -> bool {
    match channel {
        Channel::Push => !recipient.push_tokens.is_empty(),
        Channel::Email => !recipient.email.is_empty(),
        Channel::Sms => !recipient.phone.is_empty(),
        Channel::Unspecified => false,
    }
}

/// The recipient with `address` suppressed on `channel` (unchanged when it already is): a
/// suppression lasts until a new explicit opt-in (see `router::keep_suppressions`).
pub fn suppress(
    recipient: &Recipient,
    channel: Channel,
    address: &str,
    reason: &str,
    at_unix_ms: i64,
) -> Recipient {
    let mut updated = recipient.clone();
    if !updated
        .suppressed
        .iter()
        .any(|s| s.channel == channel as i32 && s.address == address)
    {
        updated
            .suppressed
            .push(herald_proto::v1::SuppressedContact {
                channel: channel as i32,
                address: address.to_owned(),
                reason: reason.to_owned(),
                at_unix_ms,
            });
    }
    updated
}
