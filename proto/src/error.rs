//! Service errors and their gRPC codes. Every error that crosses the API boundary goes through
//! [`Error::into_status`], so clients see the same code for the same cause on every node.

use crate::ids::Epoch;

/// Metadata key carrying the receiver's epoch on `wrong_owner` errors.
pub const EPOCH_METADATA: &str = "herald-epoch";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: names the field, e.g. `messages[3].waterfall[1].channel`.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    #[error("{what} not found")]
    NotFound { what: String },
    /// The idempotency key was used before with a different payload.
    #[error("idempotency_key already used with a different payload (message {message_id})")]
    IdempotencyConflict { message_id: String },
    /// This node does not own the partition at its epoch; the sender refreshes and retries.
    #[error("wrong_owner{{epoch={epoch}}}")]
    WrongOwner { epoch: Epoch },
    /// A fenced write was rejected: a newer epoch owns the partition.
    #[error("fenced: partition {partition} is owned at epoch {stored} (writer at {writer})")]
    Fenced {
        partition: u32,
        stored: u64,
        writer: u64,
    },
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The caller is over a limit (per-tenant admission); retrying later may pass.
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The request is valid but the state it acts on does not allow it (a cancelled
    /// campaign); the message names the field, e.g. `campaign_id: the campaign is cancelled`.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            Error::InvalidArgument { .. } => tonic::Code::InvalidArgument,
            Error::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Error::NotFound { .. } => tonic::Code::NotFound,
            Error::IdempotencyConflict { .. } => tonic::Code::AlreadyExists,
            Error::WrongOwner { .. } | Error::Fenced { .. } | Error::FailedPrecondition(_) => {
                tonic::Code::FailedPrecondition
            }
            Error::Unavailable(_) => tonic::Code::Unavailable,
            Error::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Error::Internal(_) => tonic::Code::Internal,
        }
    }

    pub fn into_status(self) -> tonic::Status {
        let mut status = tonic::Status::new(self.code(), self.to_string());
        if let Error::WrongOwner { epoch } = &self
            && let Ok(value) = epoch.0.to_string().parse()
        {
            status.metadata_mut().insert(EPOCH_METADATA, value);
        }
        status
    }

    /// Rebuilds an error from a forwarded `(code, message, epoch)` triple.
    pub fn from_parts(code: i32, message: String, epoch: u64) -> Self {
        match tonic::Code::from_i32(code) {
            tonic::Code::InvalidArgument => Error::InvalidArgument {
                field: String::new(),
                reason: message,
            },
            tonic::Code::FailedPrecondition if message.starts_with("wrong_owner") => {
                Error::WrongOwner {
                    epoch: Epoch(epoch),
                }
            }
            tonic::Code::AlreadyExists => Error::IdempotencyConflict {
                message_id: message,
            },
            tonic::Code::Unauthenticated => Error::Unauthenticated(message),
            tonic::Code::ResourceExhausted => Error::ResourceExhausted(message),
            tonic::Code::NotFound => Error::NotFound { what: message },
            tonic::Code::Unavailable | tonic::Code::FailedPrecondition => {
                Error::Unavailable(message)
            }
            _ => Error::Internal(message),
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(error: Error) -> Self {
        error.into_status()
    }
}
