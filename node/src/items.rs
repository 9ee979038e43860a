//! # items: what is routed to a partition's owner
//!
//! Owns the vocabulary of routed requests — a message, a recipient upsert or erasure, a
//! receipt or consent signal — and their results, and their wire form inside `Forward`
//! batches. Every item is about one recipient and goes to the owner of that recipient's
//! partition. Must never carry anything that is not a recipient request (channel actors have
//! their own calls).

use herald_proto::TenantId;
use herald_proto::error::Error;
use herald_proto::v1::{
    ForwardItem, ForwardSignal, MessageRequest, Recipient, ReportEventRequest, ReportEventResponse,
    ReportResult, SendResponse, forward_item, forward_result,
};

#[derive(Clone, Debug)]
pub enum Item {
    Send(MessageRequest),
    Upsert(Recipient),
    Erase(String),
    /// A receipt or engagement report for one of the recipient's messages, or a consent signal.
    Signal(ForwardSignal),
    /// An event reported about the recipient, for their journeys.
    JourneyEvent(ReportEventRequest),
}

#[derive(Clone, Debug)]
pub enum ItemResult {
    Sent(SendResponse),
    /// Boxed: far larger than the other results.
    Recipient(Box<Recipient>),
    Erased(bool),
    Signal(ReportResult),
    JourneyEvent(ReportEventResponse),
}

impl Item {
    /// The key the item's partition is computed from (with the tenant).
    pub fn recipient_id(&self) -> &str {
        match self {
            Item::Send(m) => &m.recipient_id,
            Item::Upsert(r) => &r.id,
            Item::Erase(id) => id,
            Item::Signal(signal) => &signal.recipient_id,
            Item::JourneyEvent(event) => &event.recipient_id,
        }
    }

    pub fn into_forward(self, tenant: &TenantId) -> ForwardItem {
        let op = match self {
            Item::Send(m) => forward_item::Op::Send(m),
            Item::Upsert(r) => forward_item::Op::UpsertRecipient(r),
            Item::Erase(id) => forward_item::Op::EraseRecipient(id),
            Item::Signal(signal) => forward_item::Op::Signal(signal),
            Item::JourneyEvent(event) => forward_item::Op::JourneyEvent(event),
        };
        ForwardItem {
            tenant: tenant.0.clone(),
            op: Some(op),
        }
    }

    pub fn from_forward(item: ForwardItem) -> Option<(TenantId, Item)> {
        let item_op = match item.op? {
            forward_item::Op::Send(m) => Item::Send(m),
            forward_item::Op::UpsertRecipient(r) => Item::Upsert(r),
            forward_item::Op::EraseRecipient(id) => Item::Erase(id),
            forward_item::Op::Signal(signal) => Item::Signal(signal),
            forward_item::Op::JourneyEvent(event) => Item::JourneyEvent(event),
        };
        Some((TenantId(item.tenant), item_op))
    }
}

impl ItemResult {
    pub fn into_forward(self) -> forward_result::Result {
        match self {
            ItemResult::Sent(s) => forward_result::Result::Sent(s),
            ItemResult::Recipient(r) => forward_result::Result::Recipient(*r),
            ItemResult::Erased(e) => forward_result::Result::Erased(e),
            ItemResult::Signal(r) => forward_result::Result::Signal(r),
            ItemResult::JourneyEvent(r) => forward_result::Result::JourneyEvent(r),
        }
    }

    pub fn from_forward(result: Option<forward_result::Result>) -> Result<ItemResult, Error> {
        match result {
            Some(forward_result::Result::Sent(s)) => Ok(ItemResult::Sent(s)),
            Some(forward_result::Result::Recipient(r)) => Ok(ItemResult::Recipient(Box::new(r))),
            Some(forward_result::Result::Erased(e)) => Ok(ItemResult::Erased(e)),
            Some(forward_result::Result::Signal(r)) => Ok(ItemResult::Signal(r)),
            Some(forward_result::Result::JourneyEvent(r)) => Ok(ItemResult::JourneyEvent(r)),
            Some(forward_result::Result::Error(e)) => {
                Err(Error::from_parts(e.code, e.message, e.epoch))
            }
            None => Err(Error::Internal("empty forward result".into())),
        }
    }
}
