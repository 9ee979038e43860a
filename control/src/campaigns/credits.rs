//! A tenant's prepaid credits as the control plane moves them: top-ups, a campaign's
//! reservation out of the balance, its release back when the campaign ended, and the view of
//! the balance with its ledger.
//!
//! Every move is one write that changes both sides and appends its ledger entry; a move out
//! of a balance is a `Take` that never lets it go negative (a concurrent move makes it unmet,
//! and it is tried again on a fresh read). Attempts settle and refund in the nodes' writes
//! (with the events that record them), not here. Must never touch a campaign's funnel.

use std::sync::Arc;

use herald_proto::TenantId;
use herald_proto::v1::{CreditsView, LedgerEntry, LedgerKind};
use herald_store::campaign::{self, balance, credit};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome, keys};

use crate::Error;

/// Tries of a move whose balance changed under it.
const MOVE_TRIES: usize = 5;
/// Most ledger entries one view returns.
pub const LEDGER_PAGE_MAX: u32 = 1_000;
/// Largest top-up accepted at once (a typo guard): 10^12 units.
pub const TOP_UP_MAX_MICROS: u64 = 1_000_000_000_000 * 1_000_000;

fn op(op: WriteOp) -> FencedOp {
    FencedOp {
        fence: Fence::NONE,
        op,
    }
}

fn ledger(tenant: &TenantId, entry: LedgerEntry) -> FencedOp {
    op(WriteOp::PushRecord {
        key: keys::campaign::ledger(tenant),
        record: campaign::encode_ledger(&entry),
    })
}

fn amount(micros: u64) -> i64 {
    i64::try_from(micros).unwrap_or(i64::MAX)
}

async fn int_field(store: &dyn Store, key: &str, field: &str) -> Result<i64, Error> {
    let values = store.some_fields(key, &[field.to_owned()]).await?;
    Ok(campaign::int(values.first().and_then(|v| v.as_deref())))
}

/// Adds `amount_micros` to the tenant's balance, with its ledger entry.
pub async fn top_up(
    store: &dyn Store,
    tenant: &TenantId,
    amount_micros: u64,
    note: &str,
    now_ms: i64,
) -> Result<(), Error> {
    let key = keys::campaign::credits(tenant);
    let delta = amount(amount_micros);
    store
        .write(vec![
            op(WriteOp::AddFields {
                key,
                deltas: vec![
                    (balance::AVAILABLE.to_owned(), delta),
                    (balance::TOPPED_UP.to_owned(), delta),
                ],
            }),
            ledger(
                tenant,
                LedgerEntry {
                    kind: LedgerKind::LedgerTopUp as i32,
                    amount_micros,
                    at_unix_ms: now_ms,
                    note: note.to_owned(),
                    ..Default::default()
                },
            ),
        ])
        .await?;
    Ok(())
}

/// Moves up to `wanted` from the tenant's balance into the campaign's reservation (all that
/// is available when less). Returns what was reserved.
pub async fn reserve(
    store: Arc<dyn Store>,
    tenant: &TenantId,
    campaign_id: &str,
    wanted: u64,
    now_ms: i64,
) -> Result<u64, Error> {
    let credits = keys::campaign::credits(tenant);
    for _ in 0..MOVE_TRIES {
        let available = int_field(&*store, &credits, balance::AVAILABLE).await?;
        let take = wanted.min(u64::try_from(available).unwrap_or(0));
        if take == 0 {
            return Ok(0);
        }
        let outcomes = store
            .write(vec![
                op(WriteOp::Require {
                    check: Check::Take {
                        key: credits.clone(),
                        field: balance::AVAILABLE.to_owned(),
                        amount: amount(take),
                    },
                    guards: 2,
                }),
                op(WriteOp::AddFields {
                    key: keys::campaign::record(tenant, campaign_id),
                    deltas: vec![(credit::RESERVED.to_owned(), amount(take))],
                }),
                ledger(
                    tenant,
                    LedgerEntry {
                        kind: LedgerKind::LedgerReserve as i32,
                        amount_micros: take,
                        at_unix_ms: now_ms,
                        campaign_id: campaign_id.to_owned(),
                        ..Default::default()
                    },
                ),
            ])
            .await?;
        if outcomes.first() == Some(&WriteOutcome::Done) {
            return Ok(take);
        }
    }
    Ok(0)
}

/// Moves the campaign's free reservation back to the tenant's balance. Returns what moved.
pub async fn release(
    store: &dyn Store,
    tenant: &TenantId,
    campaign_id: &str,
    now_ms: i64,
) -> Result<u64, Error> {
    let record = keys::campaign::record(tenant, campaign_id);
    for _ in 0..MOVE_TRIES {
        let reserved =
            u64::try_from(int_field(store, &record, credit::RESERVED).await?).unwrap_or(0);
        if reserved == 0 {
            return Ok(0);
        }
        let outcomes = store
            .write(vec![
                op(WriteOp::Require {
                    check: Check::Take {
                        key: record.clone(),
                        field: credit::RESERVED.to_owned(),
                        amount: amount(reserved),
                    },
                    guards: 2,
                }),
                op(WriteOp::AddFields {
                    key: keys::campaign::credits(tenant),
                    deltas: vec![(balance::AVAILABLE.to_owned(), amount(reserved))],
                }),
                ledger(
                    tenant,
                    LedgerEntry {
                        kind: LedgerKind::LedgerRelease as i32,
                        amount_micros: reserved,
                        at_unix_ms: now_ms,
                        campaign_id: campaign_id.to_owned(),
                        ..Default::default()
                    },
                ),
            ])
            .await?;
        if outcomes.first() == Some(&WriteOutcome::Done) {
            return Ok(reserved);
        }
    }
    Ok(0)
}

/// The balance and a page of the ledger.
pub async fn view(
    store: &dyn Store,
    tenant: &TenantId,
    ledger_from: u64,
    limit: u32,
) -> Result<CreditsView, Error> {
    let fields = store.fields(&keys::campaign::credits(tenant)).await?;
    let get = |name: &str| {
        let value = fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, v)| v.as_slice());
        u64::try_from(campaign::int(value)).unwrap_or(0)
    };
    let key = keys::campaign::ledger(tenant);
    let limit = if limit == 0 {
        100
    } else {
        limit.min(LEDGER_PAGE_MAX)
    };
    let records = store.records(&key, ledger_from, u64::from(limit)).await?;
    Ok(CreditsView {
        tenant: tenant.0.clone(),
        available_micros: get(balance::AVAILABLE),
        topped_up_micros: get(balance::TOPPED_UP),
        spent_micros: get(balance::SPENT),
        ledger_size: store.record_count(&key).await?,
        ledger: records
            .iter()
            .filter_map(|r| campaign::decode_ledger(r))
            .collect(),
    })
}
