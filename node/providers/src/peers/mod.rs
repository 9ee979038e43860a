//! # peers: real protocol peers for tests, demos and benchmarks
//!
//! Each peer speaks the provider's real protocol on loopback (an SMSC over SMPP 3.4, HTTP
//! servers with the FCM, APNs and Twilio API shapes) and keeps a receive log that tests read.
//! Compiled only with the `peers` feature; production code must never depend on it.

pub mod push;
pub mod smsc;
pub mod smtp;
pub mod twilio;
