//! Message content: personalization templates and what an attempt costs.
//!
//! - [`template`]: content fields as templates over per-message variables and recipient
//!   attributes; [`template::check`] at submit, [`template::render`] at delivery.
//! - [`pricing`]: the price table (channel × country × SMS segments, in integer micro-units)
//!   and the waterfall's `cost order`.
//!
//! Owns the meaning of content (what a template may do, what an attempt costs); it does not
//! validate message shape (that is [`crate::validate`]), count SMS segments (the providers'
//! `sms_encoding` does) or send anything. Pure functions: no I/O, no store, no network.
//! Must never log content, variables, rendered text or phone numbers: they carry personal data.

pub mod limits;
pub mod pricing;
pub mod template;

use herald_proto::v1::{Channel, Content, MessageRequest, Recipient};
use herald_providers::sms_encoding;

use pricing::PriceTable;

/// Reorders `message`'s waterfall by the price of each channel for `recipient` (cheapest
/// first, ties keep the given order). Runs once, at submit: the stored waterfall is the ordered
/// one, so every owner runs the same steps in the same order.
pub fn order_by_cost(prices: &PriceTable, message: &mut MessageRequest, recipient: &Recipient) {
    let country = pricing::country_of_phone(&recipient.phone);
    let channels: Vec<Channel> = message.waterfall.iter().map(|s| s.channel()).collect();
    let order = prices.cost_order(&channels, country.as_deref());
    let mut steps = std::mem::take(&mut message.waterfall);
    for channel in order {
        if let Some(index) = steps.iter().position(|s| s.channel() == channel) {
            message.waterfall.push(steps.remove(index));
        }
    }
    message.waterfall.append(&mut steps);
}

/// The cost of one attempt on `channel` with `content`, in micro-units of the price table.
/// SMS: the per-segment price of the recipient's country × the text's segments.
pub fn attempt_cost(
    prices: &PriceTable,
    channel: Channel,
    content: &Content,
    recipient: &Recipient,
) -> u64 {
    match channel {
        Channel::Sms => {
            let text = content.sms.as_ref().map(|s| s.text.as_str()).unwrap_or("");
            let segments = u32::try_from(sms_encoding::analyze(text).segments).unwrap_or(u32::MAX);
            prices.sms_cost(&recipient.phone, segments)
        }
        other => prices.cost(other, None, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::{SmsContent, WaterfallStep};

    fn step(channel: Channel) -> WaterfallStep {
        WaterfallStep {
            channel: channel as i32,
            ..Default::default()
        }
    }

    #[test]
    fn cost_order_puts_the_cheapest_first() {
        let prices = PriceTable::builtin();
        let mut message = MessageRequest {
            waterfall: vec![
                step(Channel::Sms),
                step(Channel::Email),
                step(Channel::Push),
            ],
            ..Default::default()
        };
        let recipient = Recipient {
            phone: "+12125550100".into(),
            ..Default::default()
        };
        order_by_cost(&prices, &mut message, &recipient);
        let order: Vec<Channel> = message.waterfall.iter().map(|s| s.channel()).collect();
        assert_eq!(order, vec![Channel::Push, Channel::Email, Channel::Sms]);
    }

    #[test]
    fn sms_cost_counts_segments() {
        let prices = PriceTable::builtin();
        let recipient = Recipient {
            phone: "+442071838750".into(),
            ..Default::default()
        };
        let short = Content {
            sms: Some(SmsContent { text: "hi".into() }),
            ..Default::default()
        };
        let long = Content {
            sms: Some(SmsContent {
                text: "x".repeat(161),
            }),
            ..Default::default()
        };
        let one = attempt_cost(&prices, Channel::Sms, &short, &recipient);
        assert!(one > 0);
        assert_eq!(
            attempt_cost(&prices, Channel::Sms, &long, &recipient),
            2 * one
        );
    }
}
