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

pub mod pricing;
pub mod template;
