//! # receipts: matching receipts and engagement reports to the attempts they are about
//!
//! Owns the receipt index (provider account + provider message id → tenant, recipient,
//! message, step; an expiring value written fenced with the `sent` event), the counters of
//! receipts by verdict, and the path from a receipt to the recipient's actor: resolve it here,
//! then route it like any request to the owner of the recipient's partition, where the
//! `RecipientActor` applies it in order with everything else that touches that person.
//!
//! A receipt nobody can match, or one already applied, is counted and answered, never an
//! error. Must never apply a receipt itself (only the owner's actor does), and never log
//! contact points or reply texts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use herald_proto::TenantId;
use herald_proto::error::Error;
use herald_proto::v1::{Channel, Content, SmsContent};
use herald_proto::v1::{EngagementKind, ForwardSignal, ReportResult, ReportStatus};
use herald_providers::{Attempt, Inbound, ProviderEvent, Receipt, ReceiptKind};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::actors::recipient::Job;
use crate::auth::Tenant;
use crate::context::NodeContext;
use crate::router::{Item, ItemResult, Router};
use herald_store::{FencedOp, WriteOp};

/// Field separator inside an index value (never part of ids or tenant names).
const SEP: char = '\u{1f}';

/// The index entry for an accepted attempt, written with its `sent` event.
pub fn index_op(
    context: &NodeContext,
    job: &Job,
    account: &str,
    provider_message_id: &str,
    step: u32,
) -> FencedOp {
    let recipient_id = job
        .message
        .request
        .as_ref()
        .map(|r| r.recipient_id.as_str())
        .unwrap_or_default();
    let value = format!(
        "{}{SEP}{recipient_id}{SEP}{}{SEP}{step}",
        job.tenant.id.0, job.message.message_id
    );
    FencedOp {
        fence: job.fence,
        op: WriteOp::PutValue {
            key: herald_store::keys::value::receipt_index(account, provider_message_id),
            value: value.into_bytes(),
            ttl: Duration::from_secs(context.config.receipt_index_ttl_s),
        },
    }
}

/// The attempt a provider's message id belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptRef {
    pub tenant: TenantId,
    pub recipient_id: String,
    pub message_id: String,
    pub step: u32,
}

pub async fn lookup(
    context: &NodeContext,
    account: &str,
    provider_message_id: &str,
) -> Result<Option<AttemptRef>, Error> {
    let value = context
        .store
        .get_value(&herald_store::keys::value::receipt_index(
            account,
            provider_message_id,
        ))
        .await
        .map_err(|e| Error::Unavailable(format!("store: {e}")))?;
    let Some(value) = value else { return Ok(None) };
    let text = String::from_utf8_lossy(&value);
    let mut parts = text.split(SEP);
    let (Some(tenant), Some(recipient_id), Some(message_id), Some(step)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(None);
    };
    let Ok(step) = step.parse() else {
        return Ok(None);
    };
    Ok(Some(AttemptRef {
        tenant: TenantId(tenant.to_owned()),
        recipient_id: recipient_id.to_owned(),
        message_id: message_id.to_owned(),
        step,
    }))
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

/// Routes resolved signals of one tenant to their owners; one verdict per signal, in order.
/// Signals the owner could not apply in time count as `failed` and come back unspecified.
pub async fn route_signals(
    router: &Router,
    tenant: &Arc<Tenant>,
    signals: Vec<ForwardSignal>,
) -> Vec<ReportResult> {
    let ids: Vec<String> = signals.iter().map(|s| s.message_id.clone()).collect();
    let results = router
        .route(tenant, signals.into_iter().map(Item::Signal).collect())
        .await;
    results
        .into_iter()
        .zip(ids)
        .map(|(result, message_id)| match result {
            Ok(ItemResult::Signal(result)) => result,
            Ok(_) | Err(_) => {
                if let Err(error) = &result {
                    warn!(%error, "receipt could not be applied");
                }
                router
                    .context()
                    .receipts_stats
                    .count(ReportStatus::Unspecified);
                ReportResult {
                    status: ReportStatus::Unspecified as i32,
                    message_id,
                }
            }
        })
        .collect()
}

/// Resolves a provider's receipt by the index and routes it. Unknown receipts are counted.
pub async fn apply_receipt(router: &Router, receipt: Receipt) -> ReportStatus {
    let context = router.context();
    let target = match lookup(context, &receipt.provider, &receipt.provider_message_id).await {
        Ok(Some(target)) => target,
        Ok(None) => {
            debug!(provider = %receipt.provider, "receipt for an unknown provider message id");
            context.receipts_stats.count(ReportStatus::ReportUnknown);
            return ReportStatus::ReportUnknown;
        }
        Err(error) => {
            warn!(%error, "receipt index lookup failed");
            context.receipts_stats.count(ReportStatus::Unspecified);
            return ReportStatus::Unspecified;
        }
    };
    let tenant = context.auth.tenant(&target.tenant.0);
    let mut receipt = receipt;
    let dead = receipt.kind == ReceiptKind::Failed
        && receipt
            .error_code
            .as_ref()
            .is_some_and(|code| context.channels.is_dead_contact(&receipt.provider, code));
    if dead {
        // A dead number: suppressed like a hard bounce.
        receipt.kind = ReceiptKind::BouncedHard;
    }
    let mut detail = receipt.detail;
    if let Some(code) = &receipt.error_code {
        detail = format!("{detail} err={code}");
    }
    let signal = ForwardSignal {
        recipient_id: target.recipient_id,
        message_id: target.message_id,
        step: Some(target.step),
        kind: engagement_kind(receipt.kind) as i32,
        detail,
        reply_text: String::new(),
        source: receipt.provider,
        ..Default::default()
    };
    route_signals(router, &tenant, vec![signal])
        .await
        .into_iter()
        .next()
        .map(|r| r.status())
        .unwrap_or(ReportStatus::Unspecified)
}

/// An inbound text: STOP / START change the sender's consent for every tenant's recipient with
/// that number (each gets one confirmation); HELP is answered from the same number; anything
/// else is only counted. Never logs the number or the text.
pub async fn handle_inbound(router: &Router, inbound: Inbound) {
    use crate::policy::keywords::{Keyword, parse};
    let context = router.context();
    context
        .receipts_stats
        .inbound
        .fetch_add(1, Ordering::Relaxed);
    // SMSCs often give the sender's number without its `+` (TON international): recipients'
    // numbers are E.164 with it.
    let mut inbound = inbound;
    if !inbound.from.starts_with('+')
        && !inbound.from.is_empty()
        && inbound.from.bytes().all(|b| b.is_ascii_digit())
    {
        inbound.from = format!("+{}", inbound.from);
    }
    let keyword = parse(&inbound.text);
    if keyword.is_none() {
        // A reply: it opens messenger-style session windows for the person.
        for tenant in context.auth.tenants() {
            let key = herald_store::keys::value::phone_index(&tenant.id, &inbound.from);
            if let Ok(Some(id)) = context.store.get_value(&key).await {
                let signal = ForwardSignal {
                    recipient_id: String::from_utf8_lossy(&id).into_owned(),
                    kind: EngagementKind::EngagementReplied as i32,
                    source: "inbound".to_owned(),
                    channel: Channel::Sms as i32,
                    sender: inbound.provider.clone(),
                    ..Default::default()
                };
                route_signals(router, &tenant, vec![signal]).await;
            }
        }
    }
    let Some(keyword) = keyword else {
        return;
    };
    let (kind, detail) = match keyword {
        Keyword::Help => {
            let text = &context.config.sms_keywords.help_reply;
            if let Some(account) = context.channels.account(&inbound.provider)
                && !text.is_empty()
            {
                let content = Content {
                    sms: Some(SmsContent { text: text.clone() }),
                    ..Default::default()
                };
                let attempt_id = format!("help.{}", ulid::Ulid::new());
                let outcome = account
                    .provider
                    .send(Attempt {
                        attempt_id: &attempt_id,
                        message_id: "",
                        recipient_key: "",
                        channel: Channel::Sms,
                        to: &inbound.from,
                        content: &content,
                        list_unsubscribe: None,
                    })
                    .await;
                debug!(%attempt_id, accepted = matches!(outcome, herald_providers::Outcome::Accepted { .. }), "help reply");
            }
            return;
        }
        Keyword::Stop { all } => (
            EngagementKind::EngagementUnsubscribed,
            if all { "stopall" } else { "stop" },
        ),
        Keyword::Start => (EngagementKind::EngagementOptedIn, "start"),
    };
    for tenant in context.auth.tenants() {
        let key = herald_store::keys::value::phone_index(&tenant.id, &inbound.from);
        let recipient_id = match context.store.get_value(&key).await {
            Ok(Some(id)) => String::from_utf8_lossy(&id).into_owned(),
            Ok(None) => continue,
            Err(error) => {
                warn!(%error, "phone index lookup failed");
                continue;
            }
        };
        let signal = ForwardSignal {
            recipient_id,
            kind: kind as i32,
            detail: detail.to_owned(),
            source: "sms_keyword".to_owned(),
            channel: Channel::Sms as i32,
            sender: inbound.provider.clone(),
            ..Default::default()
        };
        route_signals(router, &tenant, vec![signal]).await;
    }
}

/// Receipts applied concurrently by the provider-event consumer.
const RECEIPTS_IN_FLIGHT: usize = 64;

/// Consumes what adapters report on their own connections (SMPP receipts, inbound texts).
pub async fn consume(router: Router, mut events: mpsc::Receiver<ProviderEvent>) {
    let permits = Arc::new(tokio::sync::Semaphore::new(RECEIPTS_IN_FLIGHT));
    while let Some(event) = events.recv().await {
        match event {
            ProviderEvent::Receipt(receipt) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let router = router.clone();
                tokio::spawn(async move {
                    apply_receipt(&router, receipt).await;
                    drop(permit);
                });
            }
            ProviderEvent::Inbound(inbound) => {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    return;
                };
                let router = router.clone();
                tokio::spawn(async move {
                    handle_inbound(&router, inbound).await;
                    drop(permit);
                });
            }
        }
    }
}
