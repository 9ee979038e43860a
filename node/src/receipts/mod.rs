//! # receipts: receipts and engagement reports to the attempts they are about
//!
//! Owns the path from a receipt (a provider callback, an SMPP `deliver_sm`, an inbound text, an
//! engagement report) to the recipient's actor: resolve it here through the receipt index
//! ([`index`]), then route it like any request to the owner of the recipient's partition, where
//! the `RecipientActor` applies it in order with everything else that touches that person.
//! Inbound texts are keywords (STOP, START, HELP) or replies (a session window opens).
//!
//! A receipt nobody can match, or one already applied, is counted and answered, never an
//! error. Must never apply a receipt itself (only the owner's actor does), and never log
//! contact points or reply texts.

pub mod index;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_proto::v1::{Channel, EngagementKind, ForwardSignal, ReportResult, ReportStatus};
use herald_providers::{Inbound, ProviderEvent, Receipt, ReceiptKind};
use herald_store::Store;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::auth::{Authenticator, Tenant};
use crate::channels::Channels;
use crate::items::{Item, ItemResult};
use crate::router::Router;
use index::{ReceiptStats, engagement_kind, lookup};

/// Receipts applied concurrently by the provider-event consumer.
const RECEIPTS_IN_FLIGHT: usize = 64;

/// The receipt path of a node.
pub struct Receipts {
    pub router: Router,
    pub store: Arc<dyn Store>,
    pub tenants: Authenticator,
    pub channels: Channels,
    pub stats: Arc<ReceiptStats>,
    /// The reply to HELP (empty = none).
    pub help_reply: String,
    /// Where the phone index keeps a number (a keyed hash).
    pub contact_index: crate::contact_index::ContactIndex,
}

impl Receipts {
    /// Routes resolved signals of one tenant to their owners; one verdict per signal, in order.
    /// Signals the owner could not apply in time count as `failed` and come back unspecified.
    pub async fn route_signals(
        &self,
        tenant: &Arc<Tenant>,
        signals: Vec<ForwardSignal>,
    ) -> Vec<ReportResult> {
        let ids: Vec<String> = signals.iter().map(|s| s.message_id.clone()).collect();
        let results = self
            .router
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
                    self.stats.count(ReportStatus::Unspecified);
                    ReportResult {
                        status: ReportStatus::Unspecified as i32,
                        message_id,
                    }
                }
            })
            .collect()
    }

    /// Resolves a provider's receipt by the index and routes it. Unknown receipts are counted.
    pub async fn apply_receipt(&self, receipt: Receipt) -> ReportStatus {
        let target = match lookup(
            &*self.store,
            &receipt.provider,
            &receipt.provider_message_id,
        )
        .await
        {
            Ok(Some(target)) => target,
            Ok(None) => {
                debug!(provider = %receipt.provider, "receipt for an unknown provider message id");
                self.stats.count(ReportStatus::ReportUnknown);
                return ReportStatus::ReportUnknown;
            }
            Err(error) => {
                warn!(%error, "receipt index lookup failed");
                self.stats.count(ReportStatus::Unspecified);
                return ReportStatus::Unspecified;
            }
        };
        let tenant = self.tenants.tenant(&target.tenant.0);
        let mut receipt = receipt;
        let dead = receipt.kind == ReceiptKind::Failed
            && receipt
                .error_code
                .as_ref()
                .is_some_and(|code| self.channels.is_dead_contact(&receipt.provider, code));
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
        self.route_signals(&tenant, vec![signal])
            .await
            .into_iter()
            .next()
            .map(|r| r.status())
            .unwrap_or(ReportStatus::Unspecified)
    }

    /// An inbound text: STOP / START change the sender's consent for every tenant's recipient with
    /// that number (each gets one confirmation); HELP is answered from the same number; anything
    /// else is only counted. Never logs the number or the text.
    pub async fn handle_inbound(&self, inbound: Inbound) {
        use crate::policy::keywords::{Keyword, parse};
        self.stats.inbound.fetch_add(1, Ordering::Relaxed);
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
            for tenant in self.tenants.tenants() {
                let key = self.contact_index.phone_key(&tenant.id, &inbound.from);
                if let Ok(Some(id)) = self.store.get_value(&key).await {
                    let signal = ForwardSignal {
                        recipient_id: String::from_utf8_lossy(&id).into_owned(),
                        kind: EngagementKind::EngagementReplied as i32,
                        source: "inbound".to_owned(),
                        channel: Channel::Sms as i32,
                        sender: inbound.provider.clone(),
                        ..Default::default()
                    };
                    self.route_signals(&tenant, vec![signal]).await;
                }
            }
        }
        let Some(keyword) = keyword else {
            return;
        };
        let (kind, detail) = match keyword {
            Keyword::Help => {
                if !self.help_reply.is_empty() {
                    let attempt_id = format!("help.{}", ulid::Ulid::new());
                    let outcome = self
                        .channels
                        .send_text(
                            &inbound.provider,
                            &attempt_id,
                            "",
                            &inbound.from,
                            &self.help_reply,
                        )
                        .await;
                    debug!(%attempt_id, accepted = matches!(outcome, Some(herald_providers::Outcome::Accepted { .. })), "help reply");
                }
                return;
            }
            Keyword::Stop { all } => (
                EngagementKind::EngagementUnsubscribed,
                if all { "stopall" } else { "stop" },
            ),
            Keyword::Start => (EngagementKind::EngagementOptedIn, "start"),
        };
        for tenant in self.tenants.tenants() {
            let key = self.contact_index.phone_key(&tenant.id, &inbound.from);
            let recipient_id = match self.store.get_value(&key).await {
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
            self.route_signals(&tenant, vec![signal]).await;
        }
    }

    /// Consumes what adapters report on their own connections (SMPP receipts, inbound texts).
    pub async fn consume(self: Arc<Self>, mut events: mpsc::Receiver<ProviderEvent>) {
        let permits = Arc::new(tokio::sync::Semaphore::new(RECEIPTS_IN_FLIGHT));
        while let Some(event) = events.recv().await {
            match event {
                ProviderEvent::Receipt(receipt) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.apply_receipt(receipt).await;
                        drop(permit);
                    });
                }
                ProviderEvent::Inbound(inbound) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        return;
                    };
                    let this = self.clone();
                    tokio::spawn(async move {
                        this.handle_inbound(inbound).await;
                        drop(permit);
                    });
                }
            }
        }
    }
}
