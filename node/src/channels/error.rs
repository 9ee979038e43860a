//! # error: what can go wrong reaching a ChannelActor
//!
//! Owns `channels::Error`, the one error type of the component's calls, with the retryable
//! kinds (a newer table may help) told apart from the final ones. Must never carry a contact
//! point or message text.

use std::time::Duration;

use herald_proto::{Epoch, PartitionId};

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    #[error("no partition table yet")]
    NoTable,
    #[error("partition {0} has no owner")]
    NoOwner(PartitionId),
    /// The node asked does not own the key's partition (at `epoch`).
    #[error("wrong_owner{{epoch={epoch}}}")]
    WrongOwner { epoch: Epoch },
    /// The owner is taking its lease, moving, or cannot be reached.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("peer {address}: {source}")]
    Peer {
        address: String,
        source: crate::peers::Error,
    },
    /// The key's actor did not answer (stopped, crashed, timed out).
    #[error("channel actor {key}: {reason}")]
    Actor { key: String, reason: String },
    #[error("unexpected reply to a {0} call")]
    Protocol(&'static str),
    #[error("no send slot for {account} within {timeout:?}: {reason}")]
    SlotTimeout {
        account: String,
        timeout: Duration,
        reason: String,
    },
    #[error("node shutting down")]
    Closed,
}

impl Error {
    /// Whether asking again (after a newer table, or a moment) may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::NoTable
                | Error::NoOwner(_)
                | Error::WrongOwner { .. }
                | Error::Unavailable(_)
                | Error::Peer { .. }
                | Error::Actor { .. }
        )
    }

    /// The wire form of the error (a `ForwardError`), as the Forward service answers it.
    pub fn to_wire(&self) -> herald_proto::v1::ForwardError {
        let (code, epoch) = match self {
            Error::WrongOwner { epoch } => (tonic::Code::FailedPrecondition, epoch.0),
            _ => (tonic::Code::Unavailable, 0),
        };
        herald_proto::v1::ForwardError {
            code: code as i32,
            message: self.to_string(),
            epoch,
        }
    }

    /// The error a peer answered.
    pub fn from_wire(error: herald_proto::v1::ForwardError) -> Self {
        match herald_proto::error::Error::from_parts(error.code, error.message.clone(), error.epoch)
        {
            herald_proto::error::Error::WrongOwner { epoch } => Error::WrongOwner { epoch },
            _ => Error::Unavailable(error.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_owner_travels_with_its_epoch() {
        let wire = Error::WrongOwner { epoch: Epoch(7) }.to_wire();
        assert_eq!(wire.epoch, 7);
        assert_eq!(wire.code, tonic::Code::FailedPrecondition as i32);
        assert!(matches!(
            Error::from_wire(wire),
            Error::WrongOwner { epoch: Epoch(7) }
        ));
        let wire = Error::Unavailable("moving".into()).to_wire();
        assert!(matches!(Error::from_wire(wire), Error::Unavailable(_)));
    }
}
