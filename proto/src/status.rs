//! What a message's status means: the one definition of "terminal" every crate uses (the
//! actors, the event feed, the test kit, the chaos checker).

use crate::v1::MessageStatus;

/// Whether `status` ends a message's life (nothing is appended after it but late receipts).
pub fn is_terminal(status: MessageStatus) -> bool {
    !matches!(
        status,
        MessageStatus::Pending | MessageStatus::Deferred | MessageStatus::Unspecified
    )
}
