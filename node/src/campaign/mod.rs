//! # campaign: campaigns on a node
//!
//! Owns running the slices of the campaigns the control plane's leader says are running: one
//! [`slice::CampaignActor`] per running campaign × partition this node serves (so a slice
//! moves with its partition: a planned hand-off stops it here before the lease is released,
//! the new owner starts it from its checkpoint), each at its share of the node's part of the
//! campaign's pace (split by the members each slice has ready). It reports each campaign's
//! progress with the heartbeat, so the leader can re-split the pace among nodes and pause a
//! campaign whose credits ran out.
//!
//! Must never change a campaign's state (the leader does), never run a slice of a partition it
//! does not serve, and never hold anything the store does not: a restarted node starts its
//! slices from their checkpoints.
//!
//! ## Layout
//! - this file: [`Campaigns`], the node's runner (assignments, slices, pace shares, reports).
//! - [`slice`]: the CampaignActor (plan, walk, the atomic write of each batch).
//! - [`plan`]: pure decisions per member (segment, group, local time, cost).
//! - [`spec`]: validating a campaign's definition. [`books`]: a campaign message's funnel and
//!   credits, written with its events. [`estimate`]: what a campaign will cost, from a sample.
//!   [`view`]: a campaign as the API shows it.

pub mod books;
pub mod estimate;
pub mod plan;
pub mod slice;
pub mod spec;
pub mod view;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use herald_proto::clock::SharedClock;
use herald_proto::v1::{CampaignAssignments, CampaignProgress, CampaignState};
use herald_proto::{PartitionId, TenantId};
use herald_store::campaign::Record;
use herald_store::{Fence, Store, keys};
use parking_lot::Mutex;
use ractor::{Actor, ActorRef};
use tokio::sync::{Notify, watch};
use tracing::{info, warn};

use crate::auth::Authenticator;
use crate::content::pricing::PriceTable;
use crate::intake::Intake;
use crate::ownership::Ownership;
use slice::{Bucket, CampaignActor, CampaignRun, SliceArgs, SliceEnv, SliceMsg, SliceStatus};

/// How often the runner looks at assignments, partitions and shares.
const TICK: Duration = Duration::from_millis(200);
/// How long a stopping slice may take to finish its write.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// A slice that stopped by itself is started again this much later at the earliest.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

type Key = (String, String);

/// What the runner is built from.
pub struct CampaignsContext {
    pub store: Arc<dyn Store>,
    pub intake: Arc<Intake>,
    pub ownership: Arc<Ownership>,
    pub tenants: Authenticator,
    pub clock: SharedClock,
    pub prices: Arc<PriceTable>,
}

struct SliceHandle {
    actor: ActorRef<SliceMsg>,
    fence: Fence,
    status: Arc<SliceStatus>,
    bucket: Arc<Bucket>,
}

/// One running campaign on this node.
struct Running {
    run: Arc<CampaignRun>,
    /// This node's share of the pace (messages per second; with `run.paced`).
    rate: f64,
    slices: HashMap<u32, SliceHandle>,
    /// Slices that finished in this run (not started again until the next run).
    finished: HashSet<u32>,
    /// Whether any slice found the balance used up.
    exhausted: bool,
    /// Slices that stopped by themselves (the campaign was not running after all, the
    /// partition moved): not started again before this instant.
    backoff: HashMap<u32, Instant>,
}

struct Inner {
    env: Arc<SliceEnv>,
    ownership: Arc<Ownership>,
    tenants: Authenticator,
    assignments: Mutex<Arc<CampaignAssignments>>,
    changed: Notify,
    running: tokio::sync::Mutex<HashMap<Key, Running>>,
    progress: Mutex<Vec<CampaignProgress>>,
}

/// The node's campaign runner (cheap to clone).
#[derive(Clone)]
pub struct Campaigns {
    inner: Arc<Inner>,
}

impl CampaignsContext {
    pub fn build(self) -> Campaigns {
        Campaigns {
            inner: Arc::new(Inner {
                env: Arc::new(SliceEnv {
                    store: self.store,
                    intake: self.intake,
                    clock: self.clock,
                    prices: self.prices,
                }),
                ownership: self.ownership,
                tenants: self.tenants,
                assignments: Mutex::new(Arc::new(CampaignAssignments::default())),
                changed: Notify::new(),
                running: tokio::sync::Mutex::new(HashMap::new()),
                progress: Mutex::new(Vec::new()),
            }),
        }
    }
}

impl crate::membership::CampaignFeed for Campaigns {
    fn progress(&self) -> Vec<CampaignProgress> {
        self.inner.progress.lock().clone()
    }

    fn assign(&self, assignments: CampaignAssignments) {
        *self.inner.assignments.lock() = Arc::new(assignments);
        self.inner.changed.notify_one();
    }
}

impl Campaigns {
    /// Runs until `shutdown`: follows assignments and partitions, then stops every slice.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut tables = self.inner.ownership.subscribe_table();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = self.inner.changed.notified() => {}
                _ = tables.changed() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
            self.tick().await;
        }
        let mut running = self.inner.running.lock().await;
        for (_, campaign) in running.drain() {
            stop_all(campaign.slices.into_values()).await;
        }
    }

    /// Stops the slices of partitions this node no longer serves, before their leases go.
    pub async fn stop_partitions(&self, partitions: &HashSet<PartitionId>) {
        let mut running = self.inner.running.lock().await;
        let mut stopping = Vec::new();
        for campaign in running.values_mut() {
            let moved: Vec<u32> = campaign
                .slices
                .keys()
                .copied()
                .filter(|p| partitions.contains(&PartitionId(*p)))
                .collect();
            for p in moved {
                if let Some(handle) = campaign.slices.remove(&p) {
                    stopping.push(handle);
                }
            }
        }
        drop(running);
        stop_all(stopping.into_iter()).await;
    }

    async fn tick(&self) {
        let assignments = self.inner.assignments.lock().clone();
        let mut running = self.inner.running.lock().await;
        let wanted: HashMap<Key, (f64, bool)> = assignments
            .campaigns
            .iter()
            .filter(|a| a.state() == CampaignState::Running)
            .map(|a| {
                (
                    (a.tenant.clone(), a.campaign_id.clone()),
                    (a.rate_per_s, a.paced),
                )
            })
            .collect();
        // Campaigns no longer running here: their slices stop.
        let gone: Vec<Key> = running
            .keys()
            .filter(|key| !wanted.contains_key(*key))
            .cloned()
            .collect();
        for key in gone {
            if let Some(campaign) = running.remove(&key) {
                info!(campaign = %key.1, slices = campaign.slices.len(), "campaign stops here");
                stop_all(campaign.slices.into_values()).await;
            }
        }
        let served = self.inner.ownership.served();
        for (key, (rate, _paced)) in wanted {
            if !running.contains_key(&key) {
                match self.load(&key).await {
                    Ok(Some(run)) => {
                        info!(campaign = %key.1, "campaign runs here");
                        running.insert(
                            key.clone(),
                            Running {
                                run: Arc::new(run),
                                rate,
                                slices: HashMap::new(),
                                finished: HashSet::new(),
                                exhausted: false,
                                backoff: HashMap::new(),
                            },
                        );
                    }
                    Ok(None) => continue,
                    Err(error) => {
                        warn!(campaign = %key.1, %error, "reading a running campaign failed; trying again");
                        continue;
                    }
                }
            }
            let Some(campaign) = running.get_mut(&key) else {
                continue;
            };
            campaign.rate = rate;
            self.follow_partitions(campaign, &served).await;
            share(campaign);
        }
        let progress = running
            .iter()
            .map(|((tenant, id), campaign)| {
                let mut remaining = 0;
                let mut ready = 0;
                for slice in campaign.slices.values() {
                    remaining += slice.status.remaining.load(Ordering::Relaxed);
                    ready += slice.status.ready.load(Ordering::Relaxed);
                }
                CampaignProgress {
                    tenant: tenant.clone(),
                    campaign_id: id.clone(),
                    remaining,
                    ready,
                    slices_running: campaign.slices.len() as u32,
                    credits_exhausted: campaign.exhausted,
                }
            })
            .collect();
        *self.inner.progress.lock() = progress;
    }

    /// Starts the slices of partitions served here, stops those of partitions that left.
    async fn follow_partitions(&self, campaign: &mut Running, served: &[Fence]) {
        let served_now: HashMap<u32, Fence> = served.iter().map(|f| (f.partition.0, *f)).collect();
        let now = Instant::now();
        let mut stopping = Vec::new();
        let mut exhausted = false;
        let ids: Vec<u32> = campaign.slices.keys().copied().collect();
        for p in ids {
            let Some(handle) = campaign.slices.get(&p) else {
                continue;
            };
            if handle.status.exhausted.load(Ordering::Relaxed) {
                exhausted = true;
            }
            let finished = handle.status.finished.load(Ordering::Relaxed);
            let still = served_now.get(&p) == Some(&handle.fence);
            let stopped = handle.actor.get_status() == ractor::ActorStatus::Stopped;
            if still && !finished && !stopped {
                continue;
            }
            if finished {
                campaign.finished.insert(p);
            } else if stopped {
                campaign.backoff.insert(p, now + RESTART_BACKOFF);
            }
            if let Some(handle) = campaign.slices.remove(&p) {
                stopping.push(handle);
            }
        }
        campaign.exhausted = exhausted;
        campaign.backoff.retain(|_, until| *until > now);
        // A partition that left and came back starts over (its slice reads its checkpoint).
        campaign.finished.retain(|p| served_now.contains_key(p));
        stop_all(stopping.into_iter()).await;
        for fence in served {
            let p = fence.partition.0;
            if campaign.slices.contains_key(&p)
                || campaign.finished.contains(&p)
                || campaign.backoff.contains_key(&p)
            {
                continue;
            }
            let status = Arc::new(SliceStatus::default());
            let bucket = Arc::new(Bucket::default());
            let args = SliceArgs {
                env: self.inner.env.clone(),
                run: campaign.run.clone(),
                fence: *fence,
                status: status.clone(),
                bucket: bucket.clone(),
            };
            match Actor::spawn(None, CampaignActor, args).await {
                Ok((actor, _)) => {
                    campaign.slices.insert(
                        p,
                        SliceHandle {
                            actor,
                            fence: *fence,
                            status,
                            bucket,
                        },
                    );
                }
                Err(error) => {
                    warn!(campaign = %campaign.run.id, partition = p, %error, "campaign slice did not start")
                }
            }
        }
    }

    /// A running campaign's definition, as this node runs it.
    async fn load(&self, key: &Key) -> Result<Option<CampaignRun>, herald_store::Error> {
        let tenant_id = TenantId(key.0.clone());
        let fields = self
            .inner
            .env
            .store
            .fields(&keys::campaign::record(&tenant_id, &key.1))
            .await?;
        let Some(record) = Record::from_fields(fields) else {
            return Ok(None);
        };
        let Some(spec) = record.spec else {
            return Ok(None);
        };
        let tenant = self.inner.tenants.tenant(&key.0);
        let default_zone = spec
            .schedule
            .as_ref()
            .and_then(|s| s.default_time_zone.parse::<Tz>().ok())
            .unwrap_or(tenant.time_zone);
        let start_at = spec.schedule.as_ref().map_or(0, |s| s.start_at_unix_ms);
        let segment = spec
            .audience
            .as_ref()
            .map(|a| plan::Segment::compile("spec.audience.segment", &a.segment))
            .transpose()
            .ok()
            .flatten()
            .unwrap_or_default();
        Ok(Some(CampaignRun {
            tenant,
            id: key.1.clone(),
            schedule: plan::LocalSchedule::of(&spec),
            segment,
            default_zone,
            from_ms: record.life.started_unix_ms.max(start_at),
            paced: spec.pace.is_some(),
            spec,
        }))
    }
}

/// The node's share of a paced campaign, split among its slices by what each has ready (a
/// slice with nothing known yet weighs one).
fn share(campaign: &Running) {
    if !campaign.run.paced {
        return;
    }
    let weights: Vec<(u64, &SliceHandle)> = campaign
        .slices
        .values()
        .map(|slice| {
            let planned = slice.status.planned.load(Ordering::Relaxed);
            let ready = slice.status.ready.load(Ordering::Relaxed);
            (if planned { ready } else { 1 }, slice)
        })
        .collect();
    let total: u64 = weights.iter().map(|(w, _)| *w).sum();
    for (weight, slice) in weights {
        let rate = if total == 0 {
            0.0
        } else {
            campaign.rate * weight as f64 / total as f64
        };
        slice.bucket.set_rate(rate);
    }
}

async fn stop_all(slices: impl Iterator<Item = SliceHandle>) {
    let waits = slices.map(|slice| async move {
        let _ = slice.actor.stop_and_wait(None, Some(STOP_WAIT)).await;
    });
    futures::future::join_all(waits).await;
}
