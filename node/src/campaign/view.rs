//! A campaign as the API shows it: its definition, state, funnel, variants, credits, estimate
//! and slices, read from its records in one snapshot (any node can: reads need no fence).
//! Must never write.

use herald_proto::TenantId;
use herald_proto::v1::{CampaignLife, CampaignState, CampaignView, SliceProgress};
use herald_store::campaign::{self as layout, Record, count};
use herald_store::{Store, keys};

/// The campaign's view; `None` when there is no such campaign. `slices`: each slice's
/// progress too (one read more).
pub async fn view(
    store: &dyn Store,
    tenant: &TenantId,
    campaign_id: &str,
    partition_count: u32,
    slices: bool,
) -> Result<Option<CampaignView>, herald_store::Error> {
    let fields = store
        .fields(&keys::campaign::record(tenant, campaign_id))
        .await?;
    let Some(record) = Record::from_fields(fields) else {
        return Ok(None);
    };
    let mut view = from_record(campaign_id, &record, partition_count, now_of(&record.life));
    if record.life.state() == CampaignState::Draft {
        view.audience_uploaded =
            super::estimate::uploaded(store, tenant, campaign_id, partition_count).await?;
    }
    if slices {
        let fields = store
            .fields(&keys::campaign::slices(tenant, campaign_id))
            .await?;
        view.slice_progress = slice_progress(&fields, partition_count);
    }
    Ok(Some(view))
}

/// Wall time is not needed for the view itself; the pace of "spread over" counts running time
/// up to the lifecycle's last change.
fn now_of(life: &CampaignLife) -> i64 {
    life.running_since_unix_ms.max(life.started_unix_ms)
}

/// The view of a record read already.
pub fn from_record(
    campaign_id: &str,
    record: &Record,
    partition_count: u32,
    now_ms: i64,
) -> CampaignView {
    let spec = record.spec.clone().unwrap_or_default();
    let life = &record.life;
    let pace_per_s = match (&spec.pace, life.state()) {
        (Some(pace), CampaignState::Running) if pace.per_second > 0 => f64::from(pace.per_second),
        (Some(pace), CampaignState::Running) if pace.spread_over_s > 0 => {
            let ran_s =
                (life.ran_ms + (now_ms - life.running_since_unix_ms).max(0)) as f64 / 1000.0;
            let left_s = (pace.spread_over_s as f64 - ran_s).max(1.0);
            (record.count(count::REMAINING) as f64 / left_s).max(1.0)
        }
        _ => 0.0,
    };
    CampaignView {
        campaign_id: campaign_id.to_owned(),
        state: life.state,
        state_reason: life.reason.clone(),
        created_unix_ms: life.created_unix_ms,
        started_unix_ms: life.started_unix_ms,
        ended_unix_ms: life.ended_unix_ms,
        funnel: Some(record.funnel()),
        variants: record.variant_funnels(),
        estimate: life.estimate.clone(),
        credits: Some(record.credits()),
        slices: partition_count,
        slices_planned: u32::try_from(record.count(count::SLICES_PLANNED)).unwrap_or(u32::MAX),
        slice_progress: Vec::new(),
        audience_uploaded: 0,
        pace_per_s,
        spec: Some(spec),
    }
}

/// Each planned slice with members, by partition.
fn slice_progress(fields: &[(String, Vec<u8>)], partition_count: u32) -> Vec<SliceProgress> {
    let mut slices: Vec<SliceProgress> = (0..partition_count)
        .map(|partition| SliceProgress {
            partition,
            ..Default::default()
        })
        .collect();
    for (name, value) in fields {
        let Some((kind, partition)) = name.split_once(':') else {
            continue;
        };
        let Ok(partition) = partition.parse::<u32>() else {
            continue;
        };
        let Some(slice) = slices.get_mut(partition as usize) else {
            continue;
        };
        let number = u64::try_from(layout::int(Some(value))).unwrap_or(0);
        match kind {
            "size" => slice.size = number,
            "done" => slice.done = number,
            "plan" => slice.planned = true,
            _ => {}
        }
    }
    slices.retain(|s| s.planned && s.size > 0);
    slices
}
