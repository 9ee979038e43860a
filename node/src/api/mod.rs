//! # api: the tonic service implementations
//!
//! Decode, authenticate, validate, call the router or the store, map errors. Nothing else:
//! no policy and no routing decisions live here.

pub mod breakers;
pub mod campaigns;
pub mod delivery;
pub mod engagement;
pub mod forward;
pub mod journeys;
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

/// An id Herald handed out (a campaign's, a journey's: a ULID), at `field`; `hint` says where
/// it comes from when it is missing or malformed.
pub(crate) fn check_handed_out_id(field: &str, id: &str, hint: &str) -> Result<(), tonic::Status> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, format!("is required: {hint}")).into())
    }
}
