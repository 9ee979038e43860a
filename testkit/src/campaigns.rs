//! # campaigns: driving a campaign through the public API, and auditing what it did
//!
//! Owns the `Campaigns` calls a test makes (create, upload, start, pause, resume, cancel, get),
//! the funnel identity every snapshot must keep ([`identity_holds`]), and [`audit`]: what the
//! campaign did per recipient, read back from Redis on two independent paths — the
//! campaign's own per-member outcomes, and every message log in the store scanned for the
//! campaign's messages — so a test can say "none twice, none missing" from the event logs.
//!
//! It must never assert: it returns what it read, the tests decide.

use std::collections::HashMap;

use herald_proto::TenantId;
use herald_proto::v1::campaigns_client::CampaignsClient;
use herald_proto::v1::{
    AudienceChunk, CampaignFunnel, CampaignRequest, CampaignSpec, CampaignView,
    CreateCampaignRequest, Event, EventKind, GetCampaignRequest, LedgerEntry, StoredMessage,
};
use herald_store::Store;
use herald_store::campaign::{Outcome, decode_ledger};
use herald_store::keys;
use prost::Message;
use tonic::transport::Channel;

use crate::cluster::authed;

/// Ids per upload chunk.
const CHUNK: usize = 10_000;

/// A `Campaigns` client on `channel`.
pub fn client(channel: Channel) -> CampaignsClient<Channel> {
    CampaignsClient::new(channel).max_decoding_message_size(64 * 1024 * 1024)
}

/// Creates a campaign; the answer or the status the API gave.
pub async fn create(
    client: &mut CampaignsClient<Channel>,
    key: &str,
    spec: CampaignSpec,
) -> Result<CampaignView, tonic::Status> {
    client
        .create_campaign(authed(CreateCampaignRequest { spec: Some(spec) }, key))
        .await
        .map(|r| r.into_inner())
}

/// Uploads `ids` in chunks; returns (received, added).
pub async fn upload(
    client: &mut CampaignsClient<Channel>,
    key: &str,
    campaign_id: &str,
    ids: Vec<String>,
) -> Result<(u64, u64), tonic::Status> {
    let mut chunks: Vec<AudienceChunk> = ids
        .chunks(CHUNK)
        .map(|chunk| AudienceChunk {
            campaign_id: String::new(),
            recipient_ids: chunk.to_vec(),
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(AudienceChunk::default());
    }
    chunks[0].campaign_id = campaign_id.to_owned();
    let response = client
        .add_audience(authed(futures::stream::iter(chunks), key))
        .await?
        .into_inner();
    Ok((response.received, response.added))
}

/// A state command: "start", "pause", "resume" or "cancel".
pub async fn command(
    client: &mut CampaignsClient<Channel>,
    key: &str,
    campaign_id: &str,
    verb: &str,
) -> Result<CampaignView, tonic::Status> {
    let request = authed(
        CampaignRequest {
            campaign_id: campaign_id.to_owned(),
        },
        key,
    );
    let answer = match verb {
        "start" => client.start_campaign(request).await,
        "pause" => client.pause_campaign(request).await,
        "resume" => client.resume_campaign(request).await,
        "cancel" => client.cancel_campaign(request).await,
        other => panic!("no campaign command {other:?}"),
    };
    answer.map(|r| r.into_inner())
}

pub async fn get(
    client: &mut CampaignsClient<Channel>,
    key: &str,
    campaign_id: &str,
) -> Result<CampaignView, tonic::Status> {
    client
        .get_campaign(authed(
            GetCampaignRequest {
                campaign_id: campaign_id.to_owned(),
                slices: false,
            },
            key,
        ))
        .await
        .map(|r| r.into_inner())
}

/// planned = held out + suppressed + submitted + expired + cancelled + remaining.
pub fn identity_holds(funnel: &CampaignFunnel) -> bool {
    funnel.planned
        == funnel.held_out
            + funnel.suppressed
            + funnel.submitted
            + funnel.expired
            + funnel.cancelled
            + funnel.remaining
}

/// One message of the campaign as its log says.
#[derive(Clone, Debug)]
pub struct LoggedMessage {
    pub message_id: String,
    pub stored: StoredMessage,
    pub events: Vec<Event>,
}

impl LoggedMessage {
    /// When the message was accepted (its `accepted` event).
    pub fn accepted_at(&self) -> Option<i64> {
        self.events
            .iter()
            .find(|e| e.kind() == EventKind::EventAccepted)
            .map(|e| e.at_unix_ms)
    }
}

/// What a campaign did, read back from the store.
#[derive(Debug, Default)]
pub struct Audit {
    /// recipient id → the campaign's outcome for them (its per-partition records).
    pub outcomes: HashMap<String, Outcome>,
    /// recipient id → every message of the campaign in the store (scanned, not looked up).
    pub messages: HashMap<String, Vec<LoggedMessage>>,
    /// The tenant's credit ledger.
    pub ledger: Vec<LedgerEntry>,
}

/// Reads what campaign `campaign_id` of `tenant` did: its outcomes through `store`, every
/// message log by scanning the Redis at `redis_url` (key prefix `herald`).
pub async fn audit(
    store: &dyn Store,
    redis_url: &str,
    tenant: &str,
    campaign_id: &str,
    partition_count: u32,
) -> Audit {
    let mut audit = Audit {
        outcomes: outcomes(store, tenant, campaign_id, partition_count).await,
        ledger: ledger(store, tenant).await,
        ..Audit::default()
    };
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let pattern = format!("herald:e:{tenant}:*");
    let mut keys_found: Vec<String> = Vec::new();
    {
        let mut iter: redis::AsyncIter<String> = redis::cmd("SCAN")
            .cursor_arg(0)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(2_000)
            .clone()
            .iter_async(&mut conn)
            .await
            .expect("scan");
        while let Some(key) = iter.next_item().await {
            keys_found.push(key.expect("a key"));
        }
    }
    for batch in keys_found.chunks(500) {
        let mut pipe = redis::pipe();
        for key in batch {
            pipe.cmd("LRANGE").arg(key).arg(0).arg(-1);
        }
        let logs: Vec<Vec<Vec<u8>>> = pipe.query_async(&mut conn).await.expect("read logs");
        for entries in logs {
            let Some((first, rest)) = entries.split_first() else {
                continue;
            };
            let Ok(stored) = StoredMessage::decode(first.as_slice()) else {
                continue;
            };
            if stored
                .campaign
                .as_ref()
                .is_none_or(|c| c.campaign_id != campaign_id)
            {
                continue;
            }
            let events: Vec<Event> = rest
                .iter()
                .filter_map(|e| Event::decode(e.as_slice()).ok())
                .collect();
            let recipient = stored
                .request
                .as_ref()
                .map(|r| r.recipient_id.clone())
                .unwrap_or_default();
            audit
                .messages
                .entry(recipient)
                .or_default()
                .push(LoggedMessage {
                    message_id: stored.message_id.clone(),
                    stored,
                    events,
                });
        }
    }
    audit
}

/// [`audit`] without Redis (the embedded store): the outcomes, and each submitted member's
/// message looked up by the id its outcome names.
pub async fn audit_by_outcomes(
    store: &dyn Store,
    tenant: &str,
    campaign_id: &str,
    partition_count: u32,
) -> Audit {
    let tenant_id = TenantId(tenant.to_owned());
    let mut audit = Audit {
        outcomes: outcomes(store, tenant, campaign_id, partition_count).await,
        ledger: ledger(store, tenant).await,
        ..Audit::default()
    };
    for (recipient, outcome) in &audit.outcomes {
        let Outcome::Submitted { message_id, .. } = outcome else {
            continue;
        };
        let record = store
            .get_message(&tenant_id, &herald_proto::MessageId(message_id.clone()))
            .await
            .expect("read a message")
            .expect("the message an outcome names exists");
        audit
            .messages
            .entry(recipient.clone())
            .or_default()
            .push(LoggedMessage {
                message_id: message_id.clone(),
                stored: record.message,
                events: record.events,
            });
    }
    audit
}

/// The campaign's outcome per member, from its per-partition records.
async fn outcomes(
    store: &dyn Store,
    tenant: &str,
    campaign_id: &str,
    partition_count: u32,
) -> HashMap<String, Outcome> {
    let tenant = TenantId(tenant.to_owned());
    let mut outcomes = HashMap::new();
    for p in 0..partition_count {
        let fields = store
            .fields(&keys::campaign::outcomes(&tenant, campaign_id, p))
            .await
            .expect("read outcomes");
        for (recipient, value) in fields {
            outcomes.insert(recipient, Outcome::decode(&value).expect("an outcome"));
        }
    }
    outcomes
}

/// The tenant's whole credit ledger, oldest first.
async fn ledger(store: &dyn Store, tenant: &str) -> Vec<LedgerEntry> {
    let key = keys::campaign::ledger(&TenantId(tenant.to_owned()));
    let size = store.record_count(&key).await.expect("ledger size");
    let mut entries = Vec::new();
    let mut from = 0;
    while from < size {
        let page = store
            .records(&key, from, 10_000)
            .await
            .expect("ledger page");
        if page.is_empty() {
            break;
        }
        from += page.len() as u64;
        entries.extend(page.iter().filter_map(|r| decode_ledger(r)));
    }
    entries
}

/// Messages accepted per window of `window_ms`, from the first acceptance; the last window
/// (cut short by the end) is left out.
pub fn accepted_per_window(audit: &Audit, window_ms: i64) -> Vec<u64> {
    let mut times: Vec<i64> = audit
        .messages
        .values()
        .flatten()
        .filter_map(LoggedMessage::accepted_at)
        .collect();
    times.sort_unstable();
    let (Some(first), Some(last)) = (times.first().copied(), times.last().copied()) else {
        return Vec::new();
    };
    let windows = ((last - first) / window_ms) as usize;
    let mut counts = vec![0u64; windows];
    for at in times {
        let index = ((at - first) / window_ms) as usize;
        if index < windows {
            counts[index] += 1;
        }
    }
    counts
}
