//! # campaigns: the leader's side of campaigns
//!
//! Owns every change of a campaign's state (create, start, pause, resume, cancel; what time,
//! completion and a used-up balance do), the credits that move with those changes
//! ([`credits`]), and the assignment of running campaigns to nodes: each node runs the slices
//! of the partitions it serves (the partition table *is* the slice assignment, so a slice
//! moves with its partition), at its share of the campaign's cluster-wide pace ([`pace`]),
//! split by the members each node reports ready and re-split on every tick.
//!
//! State of record is the campaign's record hash in the store (`herald_store::campaign`); the
//! desk keeps only what it re-reads: a new leader loads the live campaigns and goes on, so a
//! control-plane fail-over loses nothing (nodes keep their last assignment meanwhile).
//!
//! Every state write sets the record's `run` token, which every slice's submission requires
//! to be `running` in the same atomic step: once a pause or cancel is written, nothing more of
//! the campaign is submitted anywhere, whatever a node has not heard yet.
//!
//! Must never write a campaign's funnel counts other than moving what remains into
//! `cancelled`, never act without a lease it holds, and never decide prices (nodes estimate).
//!
//! ## Layout
//! - this file: [`CampaignDesk`]: commands, the tick, node reports, published assignments.
//! - [`lifecycle`]: the pure state machine. [`pace`]: the pure pace and its split.
//! - [`credits`]: top-ups, reservations, releases, the credits view.

pub mod credits;
pub mod lifecycle;
pub mod pace;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_proto::TenantId;
use herald_proto::error::Error as Invalid;
use herald_proto::v1::{
    CampaignAssignment, CampaignAssignments, CampaignCommandKind, CampaignCommandRequest,
    CampaignLife, CampaignProgress, CampaignSpec, CampaignState,
};
use herald_store::campaign::{self as layout, Record, count};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, keys};
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::Error;
use lifecycle::Command;
use pace::Measured;

/// A node's report older than this no longer counts (heartbeats come every 500 ms: two missed).
const REPORT_FRESH: Duration = Duration::from_millis(1_000);
/// How long after a state change the nodes' reports may still describe the run before it.
const REPORT_SETTLE: Duration = Duration::from_secs(1);
/// A rate change smaller than this share is not worth telling the nodes.
const RATE_EPSILON: f64 = 0.01;

type Key = (String, String);

/// One running, paused or scheduled campaign (or one that ended with credits to release).
struct Live {
    tenant: TenantId,
    id: String,
    spec: CampaignSpec,
    life: CampaignLife,
    measured: Measured,
    /// The cluster-wide rate asked now (`None` = unpaced).
    rate: Option<f64>,
    /// Reports from before this instant are about an earlier run (before a resume).
    reports_after: Instant,
}

/// What the leader tells the nodes: each live campaign's state and rate, with each node's
/// share of the rate.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Published {
    campaigns: Vec<Assigned>,
}

#[derive(Clone, Debug, PartialEq)]
struct Assigned {
    tenant: String,
    id: String,
    state: CampaignState,
    paced: bool,
    /// node id → messages per second.
    shares: BTreeMap<String, f64>,
    /// The share of a node not in `shares` (one that joined since).
    default_share: f64,
}

impl Published {
    /// What `node` is told.
    pub(crate) fn for_node(&self, node: &str) -> CampaignAssignments {
        CampaignAssignments {
            campaigns: self
                .campaigns
                .iter()
                .map(|a| CampaignAssignment {
                    tenant: a.tenant.clone(),
                    campaign_id: a.id.clone(),
                    state: a.state as i32,
                    rate_per_s: a.shares.get(node).copied().unwrap_or(a.default_share),
                    paced: a.paced,
                })
                .collect(),
        }
    }

    /// Whether `other` differs enough to be told (states, or a rate by more than 1%).
    fn differs(&self, other: &Published) -> bool {
        if self.campaigns.len() != other.campaigns.len() {
            return true;
        }
        self.campaigns.iter().zip(&other.campaigns).any(|(a, b)| {
            a.tenant != b.tenant
                || a.id != b.id
                || a.state != b.state
                || a.paced != b.paced
                || a.shares.len() != b.shares.len()
                || a.shares.iter().zip(&b.shares).any(|((na, ra), (nb, rb))| {
                    na != nb || (ra - rb).abs() > RATE_EPSILON * ra.abs().max(rb.abs()).max(1.0)
                })
        })
    }
}

struct NodeReport {
    at: Instant,
    campaigns: Vec<CampaignProgress>,
    /// Its WatchCampaigns stream ended (the node died or lost us): nothing runs there until
    /// it reports again.
    gone: bool,
}

#[derive(Default)]
struct DeskState {
    /// The leadership term the live set was loaded for (0 = not loaded).
    term: u64,
    live: BTreeMap<Key, Live>,
}

/// The leader's campaign desk (see the module docs).
pub(crate) struct CampaignDesk {
    store: Arc<dyn Store>,
    partition_count: u32,
    retention: Duration,
    state: tokio::sync::Mutex<DeskState>,
    reports: Mutex<HashMap<String, NodeReport>>,
    published: watch::Sender<Arc<Published>>,
}

fn none(op: WriteOp) -> FencedOp {
    FencedOp {
        fence: Fence::NONE,
        op,
    }
}

/// The record fields a state change writes: `life` and the `run` token.
fn state_fields(life: &CampaignLife) -> Vec<(String, Vec<u8>)> {
    vec![
        (layout::LIFE.to_owned(), life.encode_to_vec()),
        (
            layout::RUN.to_owned(),
            lifecycle::run_of(life.state()).token().to_vec(),
        ),
    ]
}

fn live_member(tenant: &TenantId, id: &str) -> String {
    format!("{}\x1f{id}", tenant.0)
}

impl CampaignDesk {
    pub(crate) fn new(store: Arc<dyn Store>, partition_count: u32, retention: Duration) -> Self {
        let (published, _) = watch::channel(Arc::new(Published::default()));
        Self {
            store,
            partition_count,
            retention,
            state: tokio::sync::Mutex::new(DeskState::default()),
            reports: Mutex::new(HashMap::new()),
            published,
        }
    }

    /// Assignments as they are published.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Arc<Published>> {
        self.published.subscribe()
    }

    /// A node's heartbeat report.
    pub(crate) fn report(&self, node: &str, campaigns: Vec<CampaignProgress>) {
        self.reports.lock().insert(
            node.to_owned(),
            NodeReport {
                at: Instant::now(),
                campaigns,
                gone: false,
            },
        );
    }

    /// A node's assignment stream ended: a killed process's connection closes at once, so its
    /// share of every pace goes to the others now rather than when its reports go stale.
    pub(crate) fn node_gone(&self, node: &str) {
        if let Some(report) = self.reports.lock().get_mut(node) {
            report.gone = true;
        }
    }

    async fn read(&self, tenant: &TenantId, id: &str) -> Result<Option<Record>, Error> {
        let fields = self
            .store
            .fields(&keys::campaign::record(tenant, id))
            .await?;
        Ok(Record::from_fields(fields))
    }

    /// Loads the live campaigns when this term has not yet.
    async fn ensure_loaded(&self, state: &mut DeskState, term: u64) -> Result<(), Error> {
        if state.term == term {
            return Ok(());
        }
        let mut live = BTreeMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .members_after(keys::campaign::LIVE, after.as_deref(), 500)
                .await?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for member in page {
                let Some((tenant, id)) = member.split_once('\x1f') else {
                    continue;
                };
                let tenant = TenantId(tenant.to_owned());
                let Some(record) = self.read(&tenant, id).await? else {
                    continue;
                };
                if settled(&record) {
                    continue;
                }
                live.insert(
                    (tenant.0.clone(), id.to_owned()),
                    Live {
                        tenant,
                        id: id.to_owned(),
                        spec: record.spec.unwrap_or_default(),
                        life: record.life,
                        measured: Measured::default(),
                        rate: None,
                        reports_after: Instant::now(),
                    },
                );
            }
            after = Some(last);
        }
        info!(term, campaigns = live.len(), "campaigns loaded");
        state.live = live;
        state.term = term;
        Ok(())
    }

    /// A node's command for a tenant. Returns the campaign's lifecycle after it.
    pub(crate) async fn command(
        &self,
        term: u64,
        nodes: &[String],
        request: CampaignCommandRequest,
        now_ms: i64,
    ) -> Result<CampaignLife, Error> {
        let tenant = TenantId(request.tenant.clone());
        let id = request.campaign_id.clone();
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state, term).await?;
        let kind = request.kind();
        if kind == CampaignCommandKind::CampaignCreate {
            return self.create(&tenant, &id, request, now_ms).await;
        }
        let command = match kind {
            CampaignCommandKind::CampaignStart => Command::Start,
            CampaignCommandKind::CampaignPause => Command::Pause,
            CampaignCommandKind::CampaignResume => Command::Resume,
            CampaignCommandKind::CampaignCancel => Command::Cancel,
            _ => return Err(Invalid::invalid("kind", "unknown campaign command").into()),
        };
        let record = self
            .read(&tenant, &id)
            .await?
            .ok_or_else(|| Invalid::NotFound {
                what: format!("campaign {id:?}"),
            })?;
        let spec = record.spec.clone().unwrap_or_default();
        let Some(mut life) = lifecycle::apply(&record.life, &spec, command, now_ms)? else {
            return Ok(record.life);
        };
        let mut ops = Vec::new();
        if command == Command::Start {
            // The estimate's worst case is reserved now; slices reserve more from the balance
            // when it falls short, and pause the campaign only when the balance is used up.
            let wanted = request.estimate.as_ref().map_or(0, |e| e.worst_micros);
            life.estimate = request.estimate.clone();
            life.reserved_total_micros +=
                credits::reserve(self.store.clone(), &tenant, &id, wanted, now_ms).await?;
            ops.push(none(WriteOp::AddMembers {
                key: keys::campaign::LIVE.to_owned(),
                members: vec![live_member(&tenant, &id)],
            }));
        }
        ops.push(none(WriteOp::SetFields {
            key: keys::campaign::record(&tenant, &id),
            fields: state_fields(&life),
        }));
        self.store.write(ops).await?;
        info!(tenant = %tenant.0, campaign = %id, state = ?life.state(), reason = %life.reason, "campaign state changed");
        if command == Command::Cancel {
            self.cancel_remaining(&tenant, &id).await?;
        }
        let entry = state
            .live
            .entry((tenant.0.clone(), id.clone()))
            .or_insert_with(|| Live {
                tenant: tenant.clone(),
                id: id.clone(),
                spec: spec.clone(),
                life: life.clone(),
                measured: Measured::default(),
                rate: None,
                reports_after: Instant::now(),
            });
        entry.life = life.clone();
        entry.measured.reset();
        entry.reports_after = Instant::now();
        self.publish(&state, nodes);
        Ok(life)
    }

    async fn create(
        &self,
        tenant: &TenantId,
        id: &str,
        request: CampaignCommandRequest,
        now_ms: i64,
    ) -> Result<CampaignLife, Error> {
        if let Some(existing) = self.read(tenant, id).await? {
            // A retried create (the node's call timed out after it landed).
            return Ok(existing.life);
        }
        let spec = request
            .spec
            .ok_or_else(|| Invalid::invalid("spec", "is required"))?;
        let life = CampaignLife {
            state: CampaignState::Draft as i32,
            created_unix_ms: now_ms,
            estimate: request.estimate,
            ..Default::default()
        };
        let mut fields = state_fields(&life);
        fields.push((layout::DEF.to_owned(), spec.encode_to_vec()));
        self.store
            .write(vec![
                none(WriteOp::SetFields {
                    key: keys::campaign::record(tenant, id),
                    fields,
                }),
                none(WriteOp::AddMembers {
                    key: keys::campaign::index(tenant),
                    members: vec![format!("{now_ms:013}:{id}")],
                }),
            ])
            .await?;
        info!(tenant = %tenant.0, campaign = %id, "campaign created");
        Ok(life)
    }

    /// Counts what a cancelled campaign had not processed as `cancelled`. After the `run`
    /// token says cancelled no slice writes, so what remains is final; the take makes a
    /// second mover (a successor leader) find nothing.
    async fn cancel_remaining(&self, tenant: &TenantId, id: &str) -> Result<(), Error> {
        let key = keys::campaign::record(tenant, id);
        let Some(record) = self.read(tenant, id).await? else {
            return Ok(());
        };
        let remaining = record.count(count::REMAINING);
        if remaining == 0 {
            return Ok(());
        }
        let amount = i64::try_from(remaining).unwrap_or(i64::MAX);
        self.store
            .write(vec![
                none(WriteOp::Require {
                    check: Check::Take {
                        key: key.clone(),
                        field: count::REMAINING.to_owned(),
                        amount,
                    },
                    guards: 1,
                }),
                none(WriteOp::AddFields {
                    key,
                    deltas: vec![(count::CANCELLED.to_owned(), amount)],
                }),
            ])
            .await?;
        Ok(())
    }

    /// One pass over the live campaigns: time, completion, used-up balances, releases, pace.
    pub(crate) async fn tick(&self, term: u64, nodes: &[String], now_ms: i64) -> Result<(), Error> {
        let mut state = self.state.lock().await;
        self.ensure_loaded(&mut state, term).await?;
        let now = Instant::now();
        let reports: Vec<(Instant, Vec<CampaignProgress>)> = self
            .reports
            .lock()
            .values()
            .filter(|r| !r.gone && now.saturating_duration_since(r.at) <= REPORT_FRESH)
            .map(|r| (r.at, r.campaigns.clone()))
            .collect();
        let mut done = Vec::new();
        for (key, live) in state.live.iter_mut() {
            let Some(record) = self.read(&live.tenant, &live.id).await? else {
                done.push(key.clone());
                continue;
            };
            live.life = record.life.clone();
            if let Some(next) = self.advance(live, &record, &reports, now_ms).await? {
                live.life = next;
                live.measured.reset();
            }
            if lifecycle::is_ended(live.life.state()) {
                live.rate = None;
                credits::release(&*self.store, &live.tenant, &live.id, now_ms).await?;
                if record.life.state() == CampaignState::Cancelled {
                    self.cancel_remaining(&live.tenant, &live.id).await?;
                }
                if let Some(after) = self.read(&live.tenant, &live.id).await?
                    && settled(&after)
                {
                    self.retire(&live.tenant, &live.id).await?;
                    done.push(key.clone());
                }
                continue;
            }
            live.rate = match live.life.state() {
                CampaignState::Running => self.rate(live, &record, now, now_ms),
                _ => {
                    live.measured.reset();
                    None
                }
            };
        }
        for key in done {
            state.live.remove(&key);
        }
        self.publish(&state, nodes);
        Ok(())
    }

    /// What time and the slices' reports do to one campaign; the new lifecycle if it changed
    /// (already written).
    async fn advance(
        &self,
        live: &Live,
        record: &Record,
        reports: &[(Instant, Vec<CampaignProgress>)],
        now_ms: i64,
    ) -> Result<Option<CampaignLife>, Error> {
        let life = &record.life;
        let end_by = live.spec.end_by_unix_ms;
        let next = match life.state() {
            // Past its end a paused or scheduled campaign runs once more: its slices record
            // everyone left as expired, nobody is sent anything.
            CampaignState::Paused | CampaignState::Scheduled if end_by > 0 && now_ms >= end_by => {
                let mut next = life.clone();
                next.state = CampaignState::Running as i32;
                next.reason = lifecycle::END_BY.to_owned();
                next.running_since_unix_ms = now_ms;
                Some(next)
            }
            CampaignState::Scheduled => lifecycle::tick(life, &live.spec, now_ms),
            CampaignState::Running => {
                let planned_all =
                    record.count(count::SLICES_PLANNED) >= u64::from(self.partition_count);
                // Only reports made after the nodes heard of this run count (a report from
                // before a resume still says what the last run found).
                let since = live.reports_after + REPORT_SETTLE;
                let exhausted = reports
                    .iter()
                    .filter(|(at, _)| *at > since)
                    .flat_map(|(_, campaigns)| campaigns)
                    .any(|p| {
                        p.credits_exhausted && p.tenant == live.tenant.0 && p.campaign_id == live.id
                    });
                if planned_all && record.count(count::REMAINING) == 0 {
                    Some(lifecycle::complete(
                        life,
                        record.count(count::EXPIRED),
                        now_ms,
                    ))
                } else if exhausted {
                    Some(lifecycle::exhausted(life, now_ms))
                } else {
                    None
                }
            }
            _ => None,
        };
        let Some(next) = next else {
            return Ok(None);
        };
        self.store
            .write(vec![none(WriteOp::SetFields {
                key: keys::campaign::record(&live.tenant, &live.id),
                fields: state_fields(&next),
            })])
            .await?;
        info!(
            tenant = %live.tenant.0,
            campaign = %live.id,
            state = ?next.state(),
            reason = %next.reason,
            "campaign state changed"
        );
        Ok(Some(next))
    }

    /// The cluster-wide rate to ask of a running campaign now.
    fn rate(&self, live: &mut Live, record: &Record, now: Instant, now_ms: i64) -> Option<f64> {
        let pace = live.spec.pace.unwrap_or_default();
        let target = pace::target_rate(
            pace.per_second,
            pace.spread_over_s,
            record.count(count::REMAINING),
            lifecycle::running_ms(&live.life, now_ms),
        )?;
        live.measured.observe(now, record.count(count::PACED));
        Some(live.measured.corrected(target))
    }

    /// An ended campaign with nothing held or reserved: what it kept per member expires after
    /// the retention (its record and funnel stay).
    async fn retire(&self, tenant: &TenantId, id: &str) -> Result<(), Error> {
        let mut names = vec![keys::campaign::slices(tenant, id)];
        for p in 0..self.partition_count {
            names.push(keys::campaign::audience(tenant, id, p));
            names.push(keys::campaign::schedule(tenant, id, p));
            names.push(keys::campaign::outcomes(tenant, id, p));
        }
        self.store.expire(&names, self.retention).await?;
        // Nothing more for a leader to look after.
        self.store
            .write(vec![none(WriteOp::RemoveMembers {
                key: keys::campaign::LIVE.to_owned(),
                members: vec![live_member(tenant, id)],
            })])
            .await?;
        info!(tenant = %tenant.0, campaign = %id, "campaign settled; its members' records expire after the retention");
        Ok(())
    }

    /// Tells the nodes what changed.
    fn publish(&self, state: &DeskState, nodes: &[String]) {
        let reports = self.reports.lock();
        let now = Instant::now();
        let mut campaigns = Vec::new();
        for live in state.live.values() {
            let state = live.life.state();
            if lifecycle::is_ended(state) {
                continue;
            }
            let mut shares = BTreeMap::new();
            let mut default_share = 0.0;
            if let Some(rate) = live.rate {
                let weights: Vec<Option<f64>> = nodes
                    .iter()
                    .map(|node| {
                        // Never reported (a new leader, a new node): it weighs the mean.
                        let report = reports.get(node)?;
                        // Gone, or silent: nothing runs there now.
                        if report.gone || now.saturating_duration_since(report.at) > REPORT_FRESH {
                            return Some(0.0);
                        }
                        Some(
                            report
                                .campaigns
                                .iter()
                                .find(|p| p.tenant == live.tenant.0 && p.campaign_id == live.id)
                                .map_or(0.0, |p| p.ready as f64),
                        )
                    })
                    .collect();
                for (node, share) in nodes.iter().zip(pace::split(rate, &weights)) {
                    shares.insert(node.clone(), share);
                }
                default_share = rate / (nodes.len().max(1) as f64);
            }
            campaigns.push(Assigned {
                tenant: live.tenant.0.clone(),
                id: live.id.clone(),
                state,
                paced: live.rate.is_some(),
                shares,
                default_share,
            });
        }
        let next = Published { campaigns };
        self.published.send_if_modified(|current| {
            if current.differs(&next) {
                *current = Arc::new(next);
                true
            } else {
                false
            }
        });
    }
}

/// An ended campaign with nothing held or reserved any more.
fn settled(record: &Record) -> bool {
    lifecycle::is_ended(record.life.state())
        && record.count(layout::credit::HELD) == 0
        && record.count(layout::credit::RESERVED) == 0
        && (record.life.state() != CampaignState::Cancelled || record.count(count::REMAINING) == 0)
}

/// Logs a desk error the tick loop goes on after.
pub(crate) fn log_tick_error(error: &Error) {
    warn!(%error, "campaign tick failed; trying again");
}
