//! # providers: the adapters that hand a message to the outside world
//!
//! One [`Provider`] trait; one folder per adapter. An adapter turns an [`Attempt`] into a
//! provider call and classifies the answer. It must never decide policy, retry on its own
//! across accounts, or log contact points or bodies (ids only).

pub mod sandbox;

use async_trait::async_trait;
use herald_proto::v1::{Channel, Content, Recipient};

/// One provider call: the attempt id doubles as the provider's idempotency key.
#[derive(Clone, Debug)]
pub struct Attempt<'a> {
    pub attempt_id: &'a str,
    pub message_id: &'a str,
    pub channel: Channel,
    pub recipient: &'a Recipient,
    pub content: &'a Content,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The provider took the message. `delivered`/`read` are set when the provider already
    /// knows (the sandbox does); real providers report them later by receipt.
    Accepted {
        provider_message_id: String,
        delivered: bool,
        read: bool,
    },
    /// The provider refused it for good (bad token, invalid number, ...).
    Rejected { reason: String },
    /// The provider failed in a way a later try may fix (5xx, throttled, connection drop).
    Unavailable { reason: String },
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Stable name for events and metrics (`sandbox`, `fcm`, ...).
    fn name(&self) -> &str;
    async fn send(&self, attempt: Attempt<'_>) -> Outcome;
}
