//! What a campaign will cost, from a sample of its audience.
//!
//! Owns the estimate a campaign is created with and started by (the start reserves its worst
//! case): the audience's size (the uploaded list's, or the partitions' recipients a segment
//! keeps, extrapolated from the sample's share), and, from up to [`SAMPLE_MAX`] members read
//! across [`SAMPLE_PARTITIONS`] partitions, the expected and worst-case price per channel
//! (each member priced as its slice would: see `plan::cost`). Reads only; must never write.

use std::collections::BTreeMap;

use herald_proto::TenantId;
use herald_proto::v1::{CampaignEstimate, CampaignSpec, Channel, ChannelCost, Recipient};
use herald_store::Store;
use herald_store::keys;

use super::plan::{self, Group, Segment};
use crate::content::pricing::PriceTable;

/// Partitions sampled (spread evenly).
pub const SAMPLE_PARTITIONS: u32 = 64;
/// Members read per sampled partition at most.
const PER_PARTITION: usize = 32;
/// Members sampled at most.
pub const SAMPLE_MAX: usize = SAMPLE_PARTITIONS as usize * PER_PARTITION;

/// Fills in when each recipient last engaged (kept apart from the record, so a receipt does
/// not rewrite the record: `keys::value::last_engaged`).
pub async fn fill_engagement(
    store: &dyn Store,
    tenant: &TenantId,
    recipients: &mut [Option<Recipient>],
) -> Result<(), herald_store::Error> {
    let reads = recipients.iter().map(|r| async move {
        match r {
            Some(r) => store
                .get_value(&keys::value::last_engaged(tenant, &r.id))
                .await
                .map(|v| {
                    v.and_then(|v| String::from_utf8_lossy(&v).parse::<i64>().ok())
                        .unwrap_or(0)
                }),
            None => Ok(0),
        }
    });
    let found = futures::future::join_all(reads).await;
    for (recipient, at) in recipients.iter_mut().zip(found) {
        if let Some(recipient) = recipient {
            recipient.last_engaged_unix_ms = at?;
        }
    }
    Ok(())
}

/// Sizes of the sorted sets `names` (concurrently: one round trip's worth on Redis).
async fn sizes(store: &dyn Store, names: Vec<String>) -> Result<u64, herald_store::Error> {
    let counts = futures::future::join_all(names.iter().map(|n| store.member_count(n))).await;
    let mut total = 0;
    for count in counts {
        total += count?;
    }
    Ok(total)
}

/// The uploaded list's size.
pub async fn uploaded(
    store: &dyn Store,
    tenant: &TenantId,
    campaign_id: &str,
    partition_count: u32,
) -> Result<u64, herald_store::Error> {
    sizes(
        store,
        (0..partition_count)
            .map(|p| keys::campaign::audience(tenant, campaign_id, p))
            .collect(),
    )
    .await
}

/// The estimate of `spec` (campaign `campaign_id` of `tenant`) at `now`.
pub async fn estimate(
    store: &dyn Store,
    tenant: &TenantId,
    campaign_id: &str,
    spec: &CampaignSpec,
    prices: &PriceTable,
    partition_count: u32,
    now_ms: i64,
) -> Result<CampaignEstimate, herald_store::Error> {
    let audience = spec.audience.clone().unwrap_or_default();
    let segment = Segment::compile("spec.audience.segment", &audience.segment).unwrap_or_default();
    let source = |p: u32| {
        if audience.list {
            keys::campaign::audience(tenant, campaign_id, p)
        } else {
            keys::value::partition_recipients(tenant, p)
        }
    };
    let total = sizes(store, (0..partition_count).map(source).collect()).await?;
    let step = (partition_count / SAMPLE_PARTITIONS.min(partition_count).max(1)).max(1);
    let mut sampled: Vec<(String, Option<Recipient>)> = Vec::new();
    for p in (0..partition_count)
        .step_by(step as usize)
        .take(SAMPLE_PARTITIONS as usize)
    {
        let ids = store.members_after(&source(p), None, PER_PARTITION).await?;
        if ids.is_empty() {
            continue;
        }
        let mut recipients = store.get_recipients(tenant, &ids).await?;
        if segment.uses_engagement() {
            fill_engagement(store, tenant, &mut recipients).await?;
        }
        sampled.extend(ids.into_iter().zip(recipients));
    }
    let mut estimate = CampaignEstimate {
        sample: sampled.len() as u64,
        ..Default::default()
    };
    let mut expected: BTreeMap<i32, u64> = BTreeMap::new();
    let mut worst: BTreeMap<i32, u64> = BTreeMap::new();
    let mut members = 0u64;
    for (id, recipient) in &sampled {
        let Some(recipient) = recipient else {
            // An uploaded id without a recipient costs nothing (counted unknown).
            if segment.is_empty() {
                members += 1;
            }
            continue;
        };
        if !segment.is_empty() && !segment.matches(recipient, now_ms) {
            continue;
        }
        members += 1;
        let content = match plan::group(campaign_id, id, spec) {
            Group::HeldOut => continue,
            Group::Variant(index) => spec
                .variants
                .get(index)
                .and_then(|v| v.content.clone())
                .or_else(|| spec.content.clone())
                .unwrap_or_default(),
        };
        let vars = crate::content::template::merge_vars(&recipient.attributes, &spec.variables);
        let Ok(rendered) = crate::content::template::render(&content, &vars) else {
            continue;
        };
        let steps: Vec<Channel> = spec.waterfall.iter().map(|s| s.channel()).collect();
        let (cost, per_channel) = plan::cost(
            prices,
            spec.class(),
            &spec.topic,
            &steps,
            &rendered,
            recipient,
        );
        for (channel, price) in per_channel {
            *worst.entry(channel).or_default() += price;
        }
        if let Some(channel) = cost.expected_channel {
            *expected.entry(channel as i32).or_default() += cost.expected;
        }
    }
    // Scale the sample to the audience: its members in the sample's share of what was read.
    let read = sampled.len().max(1) as f64;
    estimate.audience = ((members as f64 / read) * total as f64).round() as u64;
    let scale = if sampled.is_empty() {
        0.0
    } else {
        total as f64 / read
    };
    for channel in [Channel::Push, Channel::Email, Channel::Sms] {
        let key = channel as i32;
        let row = ChannelCost {
            channel: key,
            expected_micros: (expected.get(&key).copied().unwrap_or(0) as f64 * scale).ceil()
                as u64,
            worst_micros: (worst.get(&key).copied().unwrap_or(0) as f64 * scale).ceil() as u64,
        };
        estimate.expected_micros += row.expected_micros;
        estimate.worst_micros += row.worst_micros;
        if spec.waterfall.iter().any(|s| s.channel == key) {
            estimate.channels.push(row);
        }
    }
    estimate.duration_s = match &spec.pace {
        Some(pace) if pace.per_second > 0 => estimate.audience as f64 / f64::from(pace.per_second),
        Some(pace) => pace.spread_over_s as f64,
        None => 0.0,
    };
    Ok(estimate)
}
