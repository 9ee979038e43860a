//! # leader: the leader lease, the leadership term, and the tables it publishes
//!
//! Owns:
//! - the lease loop: take or renew the store singleton lease [`LEADER_LEASE`] (holder = the
//!   replica's `control_id`), become leader when it is ours, step down when it is not or when
//!   it may have expired;
//! - the [`Term`] of a leadership: the members, the current table and the watch channel that
//!   publishes it, and every change to them (join, leave, expiry of silent nodes);
//! - the failure detector loop, which expires silent members of the current term;
//! - the persisted table (blob [`TABLE_BLOB`], a prost-encoded `PartitionTable`).
//!
//! The streams a term feeds (WatchTable, WatchCampaigns) are in `streams`.
//!
//! It must never:
//! - serve or publish as leader without a lease it is sure is still valid (the local deadline
//!   is measured from *before* the lease request, minus a drift margin, so it ends before the
//!   store's);
//! - publish a table that is not persisted (a successor continues from the stored table, so a
//!   published-but-unstored epoch could be reused with other owners);
//! - reuse an epoch: a term starts from the stored table and every change is stored epoch + 1.
//!
//! Known limit: `Store::put_blob` is unconditional, so a put delayed in the network past the
//! old leader's lease could land after the successor's; the successor keeps its in-memory
//! table, but a third leader would then read the older blob. A compare-and-set blob write (or
//! an epoch-fenced one) in the store would close this.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_proto::NodeId;
use herald_proto::v1::{ClusterStatusResponse, NodeInfo, NodeStatus, PartitionTable};
use herald_store::Store;
use parking_lot::Mutex;
use prost::Message;
use tokio::sync::{Semaphore, watch};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{debug, error, info, warn};

use crate::Error;
use crate::config::ControlConfig;
use crate::membership::{self, Change, JoinKind, Membership};

/// Name of the store singleton lease whose holder is the leader.
pub const LEADER_LEASE: &str = "control-leader";
/// Name of the store blob holding the latest persisted table.
pub const TABLE_BLOB: &str = "partition_table";
/// Concurrent `WatchTable` streams a replica serves (one per node is the normal load).
pub const MAX_WATCHERS: usize = 10_000;
/// Bound on a store call made on behalf of a follower or at startup.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// This replica's part in the cluster.
#[derive(Clone)]
pub(crate) enum Role {
    /// Someone else leads (or nobody does, as far as this replica knows).
    Follower {
        leader: Option<String>,
    },
    Leader(Arc<Term>),
    /// Shut down: the lease loop has ended.
    Stopped,
}

/// State shared by the gRPC service, the lease loop and the failure detector.
pub(crate) struct Controller {
    pub(crate) config: ControlConfig,
    store: Arc<dyn Store>,
    pub(crate) role: watch::Sender<Role>,
    /// The newest table this replica knows: the one it published as leader, or the last one it
    /// read from the store as follower.
    latest: Mutex<Arc<PartitionTable>>,
    health: HealthReporter,
    terms: AtomicU64,
    /// Caps concurrent WatchTable and WatchCampaigns streams.
    pub(crate) watchers: Arc<Semaphore>,
    /// Campaigns: commands, assignments, pace (acts only while this replica leads).
    pub(crate) campaigns: Arc<crate::campaigns::CampaignDesk>,
}

impl Controller {
    /// The state of record (the API keys module writes its records there).
    pub(crate) fn store(&self) -> Arc<dyn Store> {
        self.store.clone()
    }

    /// Wall-clock time for records (key creation and revocation times; no decision reads it).
    pub(crate) fn now_unix_ms(&self) -> i64 {
        use herald_proto::clock::Clock as _;
        herald_proto::clock::SystemClock.now_unix_ms()
    }

    pub(crate) fn new(
        config: ControlConfig,
        store: Arc<dyn Store>,
        health: HealthReporter,
        latest: PartitionTable,
    ) -> Self {
        let (role, _) = watch::channel(Role::Follower { leader: None });
        let campaigns = Arc::new(crate::campaigns::CampaignDesk::new(
            store.clone(),
            config.partition_count,
            config.campaign_retention(),
        ));
        Self {
            campaigns,
            config,
            store,
            role,
            latest: Mutex::new(Arc::new(latest)),
            health,
            terms: AtomicU64::new(0),
            watchers: Arc::new(Semaphore::new(MAX_WATCHERS)),
        }
    }

    /// The current term, if this replica leads and its lease is still surely valid.
    pub(crate) fn leader_term(&self) -> Result<Arc<Term>, Error> {
        match &*self.role.borrow() {
            Role::Leader(term) if term.holds_lease() => Ok(term.clone()),
            Role::Leader(_) | Role::Stopped => Err(Error::NotLeader { leader: None }),
            Role::Follower { leader } => Err(Error::NotLeader {
                leader: leader.clone(),
            }),
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.leader_term().is_ok()
    }

    pub(crate) fn current_table(&self) -> Arc<PartitionTable> {
        match self.leader_term() {
            Ok(term) => term.table(),
            Err(_) => self.latest.lock().clone(),
        }
    }

    fn remember(&self, table: &Arc<PartitionTable>) {
        let mut latest = self.latest.lock();
        if table.epoch >= latest.epoch {
            *latest = table.clone();
        }
    }

    /// `ClusterStatus`: the leader answers from memory (its table is the persisted one, plus
    /// heartbeat facts); a follower reads the persisted table and the lease holder, and reports
    /// zero for the heartbeat facts it does not have.
    pub(crate) async fn cluster_status(&self) -> Result<ClusterStatusResponse, Error> {
        if let Ok(term) = self.leader_term() {
            return Ok(term.status());
        }
        let table =
            Arc::new(with_timeout(load_table(&*self.store, self.config.partition_count)).await?);
        self.remember(&table);
        let leader_id =
            with_timeout(async { Ok(self.store.singleton_holder(LEADER_LEASE).await?) })
                .await?
                .unwrap_or_default();
        let owned = membership::owned_counts(&table);
        let nodes = table
            .nodes
            .iter()
            .map(|node| NodeStatus {
                node: Some(node.clone()),
                owned_partitions: owned.get(node.node_id.as_str()).copied().unwrap_or(0),
                serving_partitions: 0,
                applied_epoch: 0,
                last_heartbeat_ms_ago: 0,
            })
            .collect();
        Ok(ClusterStatusResponse {
            epoch: table.epoch,
            leader_id,
            partition_count: table.partition_count,
            nodes,
        })
    }

    /// Takes leadership: loads the stored table (so epochs continue above it) and its members.
    async fn become_leader(&self, lease_until: Instant) -> Result<(), Error> {
        let table = load_table(&*self.store, self.config.partition_count).await?;
        if Instant::now() >= lease_until {
            // The load took the whole lease; the next attempt starts over.
            return Ok(());
        }
        let number = self.terms.fetch_add(1, Ordering::Relaxed) + 1;
        let table = Arc::new(table);
        let term = Arc::new(Term::new(
            number,
            &self.config,
            self.store.clone(),
            table.clone(),
            lease_until,
        ));
        self.remember(&table);
        let members = term.state.lock().membership.len();
        self.role.send_replace(Role::Leader(term));
        self.set_health(ServingStatus::Serving).await;
        info!(
            control = %self.config.control_id,
            term = number,
            epoch = table.epoch,
            members,
            "became leader"
        );
        Ok(())
    }

    /// Stops acting as leader at once: the term refuses every request from now on and its
    /// WatchTable streams end with UNAVAILABLE.
    async fn step_down(&self, reason: &str, next: Role) {
        let stopping = matches!(next, Role::Stopped);
        let previous = self.role.send_replace(next);
        if let Role::Leader(term) = previous {
            term.active.store(false, Ordering::Release);
            self.set_health(ServingStatus::NotServing).await;
            // A planned shutdown is routine; losing the lease otherwise is worth a warning.
            if stopping {
                info!(
                    control = %self.config.control_id,
                    term = term.number,
                    epoch = term.table().epoch,
                    reason,
                    "stepped down"
                );
            } else {
                warn!(
                    control = %self.config.control_id,
                    term = term.number,
                    epoch = term.table().epoch,
                    reason,
                    "stepped down"
                );
            }
        }
    }

    /// After a graceful step-down, lets the lease lapse now instead of at its TTL, so a
    /// successor takes over within one renew interval. Best effort: on any failure the lease
    /// simply expires.
    async fn hand_off(&self, term: &Term) {
        // No table write may still be in flight when a successor can start: it must read the
        // last one. Commits are bounded by the lease, so this wait is too.
        let Ok(_writer) = tokio::time::timeout(STORE_CALL_TIMEOUT, term.writer.lock()).await else {
            return;
        };
        // The store has no release call; renewing with a 1 ms TTL has the same effect, and does
        // nothing if another replica holds the lease meanwhile.
        let released = tokio::time::timeout(
            STORE_CALL_TIMEOUT,
            self.store.try_singleton_lease(
                LEADER_LEASE,
                &self.config.control_id,
                Duration::from_millis(1),
            ),
        )
        .await;
        match released {
            Ok(Ok(_)) => info!(control = %self.config.control_id, "leader lease handed off"),
            Ok(Err(e)) => {
                warn!(
                    control = %self.config.control_id,
                    error = %e,
                    "could not hand off the leader lease; it will expire"
                )
            }
            Err(_) => {
                warn!(
                    control = %self.config.control_id,
                    "handing off the leader lease timed out; it will expire"
                )
            }
        }
    }

    /// Records who leads while this replica follows (without waking watchers for nothing).
    fn follow(&self, holder: Option<String>) {
        self.role.send_if_modified(|role| match role {
            Role::Follower { leader } if *leader == holder => false,
            Role::Leader(_) | Role::Stopped => false,
            Role::Follower { leader } => {
                *leader = holder;
                true
            }
        });
    }

    fn lease_deadline(&self) -> Option<Instant> {
        match &*self.role.borrow() {
            Role::Leader(term) => Some(term.lease_until()),
            _ => None,
        }
    }

    fn term(&self) -> Option<Arc<Term>> {
        match &*self.role.borrow() {
            Role::Leader(term) => Some(term.clone()),
            _ => None,
        }
    }

    async fn set_health(&self, status: ServingStatus) {
        self.health
            .set_service_status(herald_proto::v1::control_server::SERVICE_NAME, status)
            .await;
    }
}

/// The lease loop: one attempt per renew interval; leadership follows the store's answer.
/// Returns an error only when leading is impossible (corrupt or mismatched stored table).
pub(crate) async fn run_lease_loop(
    ctrl: Arc<Controller>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let id = ctrl.config.control_id.clone();
    let ttl = ctrl.config.leader_lease_ttl();
    let renew = ctrl.config.leader_renew_interval();
    // Stop leading a little before the store can expire the lease: the successor acts on the
    // store's clock, ours may run slow.
    let drift_margin = ttl / 10;
    let result = loop {
        let started = Instant::now();
        let attempt = tokio::time::timeout(
            renew,
            ctrl.store.try_singleton_lease(LEADER_LEASE, &id, ttl),
        );
        let outcome = tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            () = sleep_until_opt(ctrl.lease_deadline()) => {
                ctrl.step_down("lease not renewed in time", Role::Follower { leader: None }).await;
                continue;
            }
            outcome = attempt => outcome,
        };
        match outcome {
            Ok(Ok(holder)) if holder == id => {
                let until = started + ttl - drift_margin;
                match ctrl.term() {
                    Some(term) => term.extend_lease(until),
                    None => match ctrl.become_leader(until).await {
                        Ok(()) => {}
                        Err(e) if e.is_fatal() => {
                            error!(
                                control = %id,
                                error = %e,
                                "cannot lead: giving up leadership for good"
                            );
                            break Err(e);
                        }
                        Err(e) => {
                            ctrl.follow(None);
                            warn!(
                                control = %id,
                                error = %e,
                                "could not load the table to lead; retrying"
                            );
                        }
                    },
                }
            }
            Ok(Ok(holder)) => {
                ctrl.step_down(
                    "lease held by another replica",
                    Role::Follower {
                        leader: Some(holder.clone()),
                    },
                )
                .await;
                ctrl.follow(Some(holder));
            }
            // Keep leading until the deadline: one failed renewal is what the TTL margin is for.
            Ok(Err(e)) => warn!(control = %id, error = %e, "leader lease request failed"),
            Err(_) => {
                warn!(
                    control = %id,
                    timeout_ms = renew.as_millis() as u64,
                    "leader lease request timed out"
                )
            }
        }
        let next = tokio::time::Instant::from_std(started + renew);
        tokio::select! {
            biased;
            _ = shutdown.changed() => break Ok(()),
            () = sleep_until_opt(ctrl.lease_deadline()) => {
                ctrl.step_down("lease not renewed in time", Role::Follower { leader: None }).await;
            }
            () = tokio::time::sleep_until(next) => {}
        }
    };
    let last_term = ctrl.term();
    ctrl.step_down("shutting down", Role::Stopped).await;
    if let Some(term) = last_term {
        ctrl.hand_off(&term).await;
    }
    result
}

/// The failure detector: every tick, the leader expires members silent for longer than
/// `failure_timeout_ms` (all of them in one new epoch).
pub(crate) async fn run_failure_detector(
    ctrl: Arc<Controller>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    // Fine enough that detection adds little to failure_timeout, coarse enough to cost nothing.
    let tick = (ctrl.config.failure_timeout() / 10)
        .clamp(Duration::from_millis(50), Duration::from_millis(200));
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let Ok(term) = ctrl.leader_term() else {
            continue;
        };
        match term.expire_silent().await {
            Ok(Some(table)) => ctrl.remember(&table),
            Ok(None) => {}
            // Not fatal: the members stay silent, so the next tick tries again.
            Err(e) => warn!(error = %e, "could not remove dead nodes"),
        }
    }
}

/// The campaign loop: every `campaign_tick_ms`, the leader's pass over its live campaigns.
pub(crate) async fn run_campaign_loop(
    ctrl: Arc<Controller>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut ticker = tokio::time::interval(ctrl.config.campaign_tick());
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.changed() => return Ok(()),
            _ = ticker.tick() => {}
        }
        let Ok(term) = ctrl.leader_term() else {
            continue;
        };
        let nodes = term.node_ids();
        let tick = ctrl
            .campaigns
            .tick(term.number(), &nodes, ctrl.now_unix_ms());
        // Bounded by the lease: a tick that outlives it would act for a term that ended.
        let deadline = tokio::time::Instant::from_std(term.lease_until());
        match tokio::time::timeout_at(deadline, tick).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => crate::campaigns::log_tick_error(&e),
            Err(_) => crate::campaigns::log_tick_error(&Error::StoreTimeout),
        }
    }
}

/// Reads the persisted table; an empty one at epoch 0 when the cluster is new.
pub(crate) async fn load_table(
    store: &dyn Store,
    partition_count: u32,
) -> Result<PartitionTable, Error> {
    let Some(bytes) = store.get_blob(TABLE_BLOB).await? else {
        return Ok(PartitionTable {
            epoch: 0,
            partition_count,
            nodes: Vec::new(),
            owners: Vec::new(),
        });
    };
    let table =
        PartitionTable::decode(bytes.as_slice()).map_err(|e| Error::CorruptTable(e.to_string()))?;
    if table.partition_count != partition_count {
        return Err(Error::PartitionCountMismatch {
            stored: table.partition_count,
            configured: partition_count,
        });
    }
    membership::check_table(&table).map_err(Error::CorruptTable)?;
    Ok(table)
}

pub(crate) async fn with_timeout<T>(
    call: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    tokio::time::timeout(STORE_CALL_TIMEOUT, call)
        .await
        .map_err(|_| Error::StoreTimeout)?
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await,
        None => std::future::pending().await,
    }
}

/// One leadership: from taking the lease to losing it. A new leadership is a new `Term`, so
/// nothing of an old one (members, streams) survives a step-down.
pub(crate) struct Term {
    pub(crate) number: u64,
    control_id: String,
    partition_count: u32,
    failure_timeout: Duration,
    store: Arc<dyn Store>,
    /// Until when the lease is surely ours.
    lease_until: Mutex<Instant>,
    /// Cleared at step-down; a change in flight then commits nothing.
    active: AtomicBool,
    /// Serialises table changes, so that compute → persist → publish happen one at a time and
    /// epochs come out strictly increasing. Heartbeats do not take it.
    writer: tokio::sync::Mutex<()>,
    state: Mutex<TermState>,
    pub(crate) tables: watch::Sender<Arc<PartitionTable>>,
}

struct TermState {
    membership: Membership,
    /// The current table, always the persisted one.
    table: Arc<PartitionTable>,
}

impl Term {
    fn new(
        number: u64,
        config: &ControlConfig,
        store: Arc<dyn Store>,
        table: Arc<PartitionTable>,
        lease_until: Instant,
    ) -> Self {
        let membership = Membership::from_table(&table, Instant::now());
        let (tables, _) = watch::channel(table.clone());
        Self {
            number,
            control_id: config.control_id.clone(),
            partition_count: config.partition_count,
            failure_timeout: config.failure_timeout(),
            store,
            lease_until: Mutex::new(lease_until),
            active: AtomicBool::new(true),
            writer: tokio::sync::Mutex::new(()),
            state: Mutex::new(TermState { membership, table }),
            tables,
        }
    }

    /// This leadership's number (a new one for every leadership of this replica).
    pub(crate) fn number(&self) -> u64 {
        self.number
    }

    /// The nodes of the current table (they own the partitions, so they run the slices).
    pub(crate) fn node_ids(&self) -> Vec<String> {
        self.table()
            .nodes
            .iter()
            .map(|n| n.node_id.clone())
            .collect()
    }

    pub(crate) fn holds_lease(&self) -> bool {
        self.active.load(Ordering::Acquire) && Instant::now() < self.lease_until()
    }

    pub(crate) fn lease_until(&self) -> Instant {
        *self.lease_until.lock()
    }

    fn extend_lease(&self, until: Instant) {
        let mut current = self.lease_until.lock();
        if until > *current {
            *current = until;
        }
    }

    fn ensure_lease(&self) -> Result<(), Error> {
        if self.holds_lease() {
            Ok(())
        } else {
            Err(Error::NotLeader { leader: None })
        }
    }

    pub(crate) fn table(&self) -> Arc<PartitionTable> {
        self.state.lock().table.clone()
    }

    /// Join: adds or updates the member; the table after it.
    pub(crate) async fn join(&self, info: NodeInfo) -> Result<Arc<PartitionTable>, Error> {
        let _writer = self.writer.lock().await;
        let kind = self.state.lock().membership.join_kind(&info);
        if kind == JoinKind::Unchanged {
            // A node rejoining as it was (its stream broke): no new epoch, just proof of life.
            let mut state = self.state.lock();
            state.membership.apply(&Change::Join(info), Instant::now());
            return Ok(state.table.clone());
        }
        let node = info.node_id.clone();
        let address = info.address.clone();
        let table = self.commit(Change::Join(info)).await?;
        match kind {
            JoinKind::New => {
                info!(node = %node, address = %address, epoch = table.epoch, "node joined")
            }
            _ => {
                info!(
                    node = %node,
                    address = %address,
                    epoch = table.epoch,
                    "node rejoined with a new address or weight"
                )
            }
        }
        Ok(table)
    }

    /// Planned leave; the epoch after it (unchanged when the node was not a member).
    pub(crate) async fn leave(&self, node: NodeId) -> Result<Arc<PartitionTable>, Error> {
        let _writer = self.writer.lock().await;
        if !self
            .state
            .lock()
            .membership
            .changes_members(&Change::Leave(node.clone()))
        {
            return Ok(self.table());
        }
        let table = self.commit(Change::Leave(node.clone())).await?;
        info!(node = %node, epoch = table.epoch, "node left");
        Ok(table)
    }

    /// Records a heartbeat: whether the node is a member, and the current epoch.
    pub(crate) fn heartbeat(&self, node: &NodeId, applied_epoch: u64, serving: u32) -> (bool, u64) {
        let mut state = self.state.lock();
        let known = state
            .membership
            .heartbeat(node, applied_epoch, serving, Instant::now());
        (known, state.table.epoch)
    }

    /// Removes every member silent for longer than the failure timeout, in one epoch.
    async fn expire_silent(&self) -> Result<Option<Arc<PartitionTable>>, Error> {
        let _writer = self.writer.lock().await;
        let silent = self
            .state
            .lock()
            .membership
            .silent_longer_than(self.failure_timeout, Instant::now());
        if silent.is_empty() {
            return Ok(None);
        }
        let dead: Vec<NodeId> = silent.iter().map(|(node, _)| node.clone()).collect();
        let table = self.commit(Change::Expire(dead)).await?;
        for (node, silence) in &silent {
            warn!(
                node = %node,
                silent_ms = silence.as_millis() as u64,
                epoch = table.epoch,
                "node declared dead; its partitions moved"
            );
        }
        Ok(Some(table))
    }

    /// Computes the table after `change`, persists it, and only then applies the change and
    /// publishes the table. The caller holds `writer`.
    async fn commit(&self, change: Change) -> Result<Arc<PartitionTable>, Error> {
        self.ensure_lease()?;
        let (nodes, previous) = {
            let state = self.state.lock();
            (state.membership.nodes_after(&change), state.table.clone())
        };
        let table = Arc::new(membership::build_table(
            self.partition_count,
            nodes,
            &previous,
            previous.epoch + 1,
        )?);
        // Bounded by the lease: a put that finishes later could not be published anyway.
        let deadline = tokio::time::Instant::from_std(self.lease_until());
        tokio::time::timeout_at(
            deadline,
            self.store.put_blob(TABLE_BLOB, table.encode_to_vec()),
        )
        .await
        .map_err(|_| Error::StoreTimeout)??;
        // The write must have landed while the lease was ours: then any successor reads it (or
        // a newer one) and continues above its epoch. Otherwise publishing it could fork the
        // epoch.
        self.ensure_lease()?;
        {
            let mut state = self.state.lock();
            state.membership.apply(&change, Instant::now());
            state.table = table.clone();
        }
        self.tables.send_replace(table.clone());
        debug!(
            control = %self.control_id,
            epoch = table.epoch,
            nodes = table.nodes.len(),
            "table persisted and published"
        );
        Ok(table)
    }

    fn status(&self) -> ClusterStatusResponse {
        let now = Instant::now();
        let state = self.state.lock();
        let owned = membership::owned_counts(&state.table);
        let nodes = state
            .membership
            .iter()
            .map(|(id, member)| NodeStatus {
                node: Some(member.info.clone()),
                owned_partitions: owned.get(id.as_str()).copied().unwrap_or(0),
                serving_partitions: member.serving_partitions,
                applied_epoch: member.applied_epoch,
                last_heartbeat_ms_ago: now
                    .saturating_duration_since(member.last_heartbeat)
                    .as_millis() as u64,
            })
            .collect();
        ClusterStatusResponse {
            epoch: state.table.epoch,
            leader_id: self.control_id.clone(),
            partition_count: state.table.partition_count,
            nodes,
        }
    }
}
