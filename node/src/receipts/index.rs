//! # receipts::index: which attempt a provider's message id belongs to
//!
//! Owns the receipt index (provider account + provider message id → tenant, recipient,
//! message, step; an expiring value written fenced with the attempt's `sent` event) and the
//! counters of receipts by verdict. The RecipientActor writes entries; the receipt path reads
//! them. Must never hold a contact point: entries carry ids only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_proto::TenantId;
use herald_proto::v1::{EngagementKind, ReportStatus};
use herald_providers::ReceiptKind;
use herald_store::{Fence, FencedOp, Store, WriteOp, keys};

/// Field separator inside an index value (never part of ids or tenant names).
const SEP: char = '\u{1f}';

/// The attempt a provider's message id belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRef {
    pub tenant: TenantId,
    pub recipient_id: String,
    pub message_id: String,
    pub step: u32,
}

impl AttemptRef {
    /// The index entry for this attempt, written with its `sent` event.
    pub fn index_op(
        &self,
        fence: Fence,
        account: &str,
        provider_message_id: &str,
        ttl: Duration,
    ) -> FencedOp {
        let value = format!(
            "{}{SEP}{}{SEP}{}{SEP}{}",
            self.tenant.0, self.recipient_id, self.message_id, self.step
        );
        FencedOp {
            fence,
            op: WriteOp::PutValue {
                key: keys::value::receipt_index(account, provider_message_id),
                value: value.into_bytes(),
                ttl,
            },
        }
    }

    fn parse(value: &[u8]) -> Option<AttemptRef> {
        let text = String::from_utf8_lossy(value);
        let mut parts = text.split(SEP);
        let (Some(tenant), Some(recipient_id), Some(message_id), Some(step)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        Some(AttemptRef {
            tenant: TenantId(tenant.to_owned()),
            recipient_id: recipient_id.to_owned(),
            message_id: message_id.to_owned(),
            step: step.parse().ok()?,
        })
    }
}

/// The attempt `account`'s message `provider_message_id` belongs to, if indexed.
pub async fn lookup(
    store: &dyn Store,
    account: &str,
    provider_message_id: &str,
) -> Result<Option<AttemptRef>, herald_store::Error> {
    let value = store
        .get_value(&keys::value::receipt_index(account, provider_message_id))
        .await?;
    Ok(value.and_then(|v| AttemptRef::parse(&v)))
}

/// Receipts and reports by verdict.
#[derive(Default)]
pub struct ReceiptStats {
    pub applied: AtomicU64,
    pub late: AtomicU64,
    pub duplicate: AtomicU64,
    pub unknown: AtomicU64,
    /// Could not be applied (store down, partition moving for longer than the route timeout).
    pub failed: AtomicU64,
    /// Inbound messages (replies) received from providers.
    pub inbound: AtomicU64,
}

impl ReceiptStats {
    pub fn count(&self, status: ReportStatus) {
        let counter = match status {
            ReportStatus::ReportApplied => &self.applied,
            ReportStatus::ReportLate => &self.late,
            ReportStatus::ReportDuplicate => &self.duplicate,
            ReportStatus::ReportUnknown => &self.unknown,
            ReportStatus::Unspecified => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

pub fn engagement_kind(kind: ReceiptKind) -> EngagementKind {
    match kind {
        ReceiptKind::Delivered => EngagementKind::EngagementDelivered,
        ReceiptKind::Read => EngagementKind::EngagementRead,
        ReceiptKind::Clicked => EngagementKind::EngagementClicked,
        ReceiptKind::Converted => EngagementKind::EngagementConverted,
        ReceiptKind::BouncedHard => EngagementKind::EngagementBouncedHard,
        ReceiptKind::BouncedSoft => EngagementKind::EngagementBouncedSoft,
        ReceiptKind::Complained => EngagementKind::EngagementComplained,
        ReceiptKind::Blocked => EngagementKind::EngagementBlocked,
        ReceiptKind::Unsubscribed => EngagementKind::EngagementUnsubscribed,
        ReceiptKind::Failed => EngagementKind::EngagementFailed,
        ReceiptKind::Expired => EngagementKind::EngagementExpired,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip() {
        let attempt = AttemptRef {
            tenant: TenantId("acme".into()),
            recipient_id: "r:1".into(),
            message_id: "01H".into(),
            step: 2,
        };
        let op = attempt.index_op(
            Fence {
                partition: herald_proto::PartitionId(1),
                epoch: herald_proto::Epoch(1),
            },
            "fcm",
            "p-1",
            Duration::from_secs(1),
        );
        let WriteOp::PutValue { key, value, .. } = op.op else {
            panic!("a value");
        };
        assert_eq!(key, "rcpt:fcm:p-1");
        assert_eq!(AttemptRef::parse(&value), Some(attempt));
        assert_eq!(AttemptRef::parse(b"broken"), None);
    }
}
