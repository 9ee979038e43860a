//! # api: the tonic service implementations
//!
//! Decode, authenticate, validate, call the router or the store, map errors. Nothing else:
//! no policy and no routing decisions live here.

pub mod breakers;
pub mod campaigns;
pub mod delivery;
pub mod engagement;
pub mod forward;
pub mod recipients;

use herald_proto::error::Error;

/// Request limits every API checks.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most items in one batch call.
    pub batch_max: usize,
    /// Largest accepted message (encoded), in bytes.
    pub max_message_bytes: usize,
}

/// Maps an error of one item of a batch to a status naming the item.
pub(crate) fn item_status(prefix: &str, error: Error) -> tonic::Status {
    match error {
        Error::InvalidArgument { field, reason } if field.is_empty() => {
            Error::invalid(prefix, reason).into_status()
        }
        Error::IdempotencyConflict { message_id } => tonic::Status::already_exists(format!(
            "{prefix}.idempotency_key: already used with a different payload (message {message_id})"
        )),
        other => other.into_status(),
    }
}
