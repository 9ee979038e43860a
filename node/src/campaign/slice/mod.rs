//! # slice: the CampaignActor of one campaign × partition
//!
//! Owns one slice's walk: plan the partition's members (the uploaded list as it is, or a
//! schedule of `due ‖ id` entries when a segment filters or local time orders them), then walk
//! them in due order, at the pace the node gives the slice, and write each batch of members in
//! one atomic, fenced write that
//! - requires the campaign to be `running` (a pause or cancel stops it mid-air),
//! - requires the slice's cursor to be where this actor left it (a retried write that landed
//!   moves the cursor, so nothing is processed twice),
//! - for each member sent a message, takes the message's credit hold from the campaign's
//!   reservation, each member's take guarding every member after it (the campaign stops at an
//!   exact member when credits run out; nobody is skipped),
//! - accepts the member's message through the normal path (idempotency key `campaign:<id>:<r>`),
//!   and writes the member's outcome, the funnel counts and the new cursor with it.
//!
//! After the write, the new messages go to their recipients' actors like any other. A new
//! owner resumes the slice from its cursor; nothing the slice keeps in memory matters.
//!
//! Must never write without the partition's fence, never submit a member whose due time has
//! not come, and never read personal data it does not need (recipients only for the decision
//! and the price).
//!
//! ## Layout
//! - this file: the actor, its state, loading, planning, the walk.
//! - `batch`: one batch's members and ops, and what its write's outcomes say.
//! - `bucket`: the slice's share of the pace (a token bucket).
//! - `credits`: reserving more from the balance, giving a hold back.

mod batch;
mod bucket;
mod credits;

use batch::{Batch, Member, Written, read_outcomes, signed, split_member};
pub use bucket::Bucket;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use chrono_tz::Tz;
use herald_proto::clock::SharedClock;
use herald_proto::v1::CampaignSpec;
use herald_store::campaign::{self as layout, count, slice as fields};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome, keys};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, warn};

use super::plan::{self, Due, Group, LocalSchedule, Segment};
use crate::auth::Tenant;
use crate::content::pricing::PriceTable;
use crate::intake::Intake;

/// Members read per page while planning.
const PLAN_PAGE: usize = 500;
/// Members looked at per walk step.
const WALK_PAGE: usize = 256;
/// Members written per batch at most (one atomic write).
const BATCH_MAX: usize = 64;
/// Longest sleep before the clock is looked at again (tests move a manual clock).
const CLOCK_POLL: Duration = Duration::from_millis(250);
/// After a store error, the step is tried again this much later.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// With the balance used up, the slice looks for a top-up this often (until paused).
const CREDITS_RETRY: Duration = Duration::from_secs(2);
/// A reservation falls short: ask the balance for enough for this many more members.
const RESERVE_AHEAD: u64 = 256;

/// What every slice of this node uses.
pub struct SliceEnv {
    pub store: Arc<dyn Store>,
    pub intake: Arc<Intake>,
    pub clock: SharedClock,
    pub prices: Arc<PriceTable>,
}

/// One campaign as this node runs it (fixed for a run: a new run after a resume re-reads it).
pub struct CampaignRun {
    pub tenant: Arc<Tenant>,
    pub id: String,
    pub spec: CampaignSpec,
    pub segment: Segment,
    pub schedule: LocalSchedule,
    /// The zone of members whose own zone is unknown.
    pub default_zone: Tz,
    /// Local times are the first at or after this instant (the campaign's start).
    pub from_ms: i64,
    /// Whether the campaign is paced (the slice waits for tokens).
    pub paced: bool,
}

impl CampaignRun {
    fn record_key(&self) -> String {
        keys::campaign::record(&self.tenant.id, &self.id)
    }
    fn slices_key(&self) -> String {
        keys::campaign::slices(&self.tenant.id, &self.id)
    }
    fn walks_the_list(&self) -> bool {
        self.spec.audience.as_ref().is_some_and(|a| a.list)
            && self.segment.is_empty()
            && self.schedule.is_flat()
    }
}

/// What the node's runner sees of a slice.
#[derive(Default)]
pub struct SliceStatus {
    pub planned: AtomicBool,
    /// Members planned and not processed yet.
    pub remaining: AtomicU64,
    /// Of those, members due now.
    pub ready: AtomicU64,
    pub finished: AtomicBool,
    /// The balance could not hold credits for the next member.
    pub exhausted: AtomicBool,
}

pub struct SliceArgs {
    pub env: Arc<SliceEnv>,
    pub run: Arc<CampaignRun>,
    pub fence: Fence,
    pub status: Arc<SliceStatus>,
    pub bucket: Arc<Bucket>,
}

pub enum SliceMsg {
    Step,
}

enum Phase {
    Load,
    Plan {
        after: Option<String>,
    },
    Walk,
    /// Nothing more to do in this run (finished, or the campaign is not running).
    Idle,
}

pub struct SliceState {
    args: SliceArgs,
    phase: Phase,
    /// The schedule the slice walks.
    schedule_key: String,
    /// The last member processed ("" = none).
    cursor: String,
    size: u64,
    done: u64,
    /// Members after the cursor, read ahead.
    buffer: VecDeque<String>,
    /// The schedule's members carry their due time (`due ‖ id`); the uploaded list's are
    /// bare ids.
    prefixed: bool,
    /// Duplicates the batch being written takes out of the slice's size.
    pending_size_drop: u64,
}

/// What one step asks for next.
enum Next {
    Now,
    After(Duration),
    Stop,
}

pub struct CampaignActor;

impl Actor for CampaignActor {
    type Msg = SliceMsg;
    type State = SliceState;
    type Arguments = SliceArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<SliceMsg>,
        args: SliceArgs,
    ) -> Result<SliceState, ActorProcessingErr> {
        let _ = myself.send_message(SliceMsg::Step);
        let partition = args.fence.partition.0;
        Ok(SliceState {
            schedule_key: keys::campaign::schedule(&args.run.tenant.id, &args.run.id, partition),
            args,
            phase: Phase::Load,
            cursor: String::new(),
            size: 0,
            done: 0,
            buffer: VecDeque::new(),
            prefixed: true,
            pending_size_drop: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SliceMsg>,
        _message: SliceMsg,
        state: &mut SliceState,
    ) -> Result<(), ActorProcessingErr> {
        let next = match Box::pin(state.step()).await {
            Ok(next) => next,
            Err(error) => {
                warn!(
                    campaign = %state.args.run.id,
                    partition = state.args.fence.partition.0,
                    %error,
                    "campaign slice step failed; trying again"
                );
                // Re-read everything: the write may have landed.
                state.phase = Phase::Load;
                state.buffer.clear();
                Next::After(RETRY_AFTER)
            }
        };
        match next {
            Next::Now => {
                let _ = myself.send_message(SliceMsg::Step);
            }
            Next::After(delay) => {
                myself.send_after(delay, || SliceMsg::Step);
            }
            Next::Stop => myself.stop(None),
        }
        Ok(())
    }
}

impl SliceState {
    fn run(&self) -> &CampaignRun {
        &self.args.run
    }

    fn partition(&self) -> u32 {
        self.args.fence.partition.0
    }

    fn store(&self) -> &dyn Store {
        &*self.args.env.store
    }

    fn now_ms(&self) -> i64 {
        self.args.env.clock.now_unix_ms()
    }

    fn publish_progress(&self) {
        let remaining = self.size.saturating_sub(self.done);
        let status = &self.args.status;
        status.remaining.store(remaining, Ordering::Relaxed);
        let ready = if self.run().schedule.is_flat() {
            remaining
        } else {
            let now = self.now_ms();
            let due = self
                .buffer
                .iter()
                .take_while(|m| split_member(self.prefixed, m).0 <= now)
                .count() as u64;
            if due as usize == self.buffer.len() && !self.buffer.is_empty() {
                remaining
            } else {
                due
            }
        };
        status.ready.store(ready, Ordering::Relaxed);
    }

    async fn step(&mut self) -> Result<Next, herald_store::Error> {
        match std::mem::replace(&mut self.phase, Phase::Idle) {
            Phase::Load => self.load().await,
            Phase::Plan { after } => self.plan(after).await,
            Phase::Walk => self.walk().await,
            Phase::Idle => Ok(Next::Stop),
        }
    }

    /// Reads where the slice stands.
    async fn load(&mut self) -> Result<Next, herald_store::Error> {
        let p = self.partition();
        let names = [
            fields::plan(p),
            fields::size(p),
            fields::done(p),
            fields::cursor(p),
        ];
        let values = self
            .store()
            .some_fields(&self.run().slices_key(), &names)
            .await?;
        let get = |i: usize| values.get(i).and_then(|v| v.as_deref());
        self.buffer.clear();
        match get(0) {
            None => {
                self.phase = Phase::Plan { after: None };
            }
            Some(plan) => {
                self.prefixed = plan != fields::PLAN_LIST.as_bytes();
                if !self.prefixed {
                    self.schedule_key =
                        keys::campaign::audience(&self.run().tenant.id, &self.run().id, p);
                }
                self.size = u64::try_from(layout::int(get(1))).unwrap_or(0);
                self.done = u64::try_from(layout::int(get(2))).unwrap_or(0);
                self.cursor = String::from_utf8_lossy(get(3).unwrap_or_default()).into_owned();
                self.args.status.planned.store(true, Ordering::Relaxed);
                self.phase = Phase::Walk;
            }
        }
        self.publish_progress();
        Ok(Next::Now)
    }

    /// One page of planning; the last writes the slice's size.
    async fn plan(&mut self, after: Option<String>) -> Result<Next, herald_store::Error> {
        let p = self.partition();
        let run = self.args.run.clone();
        if run.walks_the_list() {
            let audience = keys::campaign::audience(&run.tenant.id, &run.id, p);
            let size = self.store().member_count(&audience).await?;
            return self.finish_plan(fields::PLAN_LIST, size).await;
        }
        let list = run.spec.audience.as_ref().is_some_and(|a| a.list);
        let source = if list {
            keys::campaign::audience(&run.tenant.id, &run.id, p)
        } else {
            keys::value::partition_recipients(&run.tenant.id, p)
        };
        let page = self
            .store()
            .members_after(&source, after.as_deref(), PLAN_PAGE)
            .await?;
        let Some(last) = page.last().cloned() else {
            let size = self.store().member_count(&self.schedule_key).await?;
            return self.finish_plan("schedule", size).await;
        };
        let mut recipients = self.store().get_recipients(&run.tenant.id, &page).await?;
        if run.segment.uses_engagement() {
            super::estimate::fill_engagement(self.store(), &run.tenant.id, &mut recipients).await?;
        }
        let now = self.now_ms();
        let mut members = Vec::with_capacity(page.len());
        for (id, recipient) in page.iter().zip(&recipients) {
            let due = match recipient {
                Some(recipient) => {
                    if !run.segment.is_empty() && !run.segment.matches(recipient, now) {
                        continue;
                    }
                    let zones = plan::zones_of(recipient, run.default_zone);
                    match run.schedule.due(&zones, run.from_ms) {
                        Due::At(at) => at,
                        // Decided at its turn (suppressed: no common window).
                        Due::Never => run.from_ms,
                    }
                }
                // An uploaded id without a recipient: counted at its turn (unknown).
                None if run.segment.is_empty() => run.from_ms,
                None => continue,
            };
            members.push(layout::schedule_member(due, id));
        }
        if !members.is_empty() {
            let outcomes = self
                .store()
                .write(vec![FencedOp {
                    fence: self.args.fence,
                    op: WriteOp::AddMembers {
                        key: self.schedule_key.clone(),
                        members,
                    },
                }])
                .await?;
            if matches!(outcomes.first(), Some(WriteOutcome::Fenced { .. })) {
                return Ok(Next::Stop);
            }
        }
        self.phase = Phase::Plan { after: Some(last) };
        Ok(Next::Now)
    }

    /// The slice's members are known: it joins the campaign's plan (once, even when a write
    /// landed and its answer was lost).
    async fn finish_plan(&mut self, plan: &str, size: u64) -> Result<Next, herald_store::Error> {
        let p = self.partition();
        let run = self.args.run.clone();
        let mut batch = Batch::empty(self.args.fence);
        batch.guard(Check::FieldIs {
            key: run.record_key(),
            field: layout::RUN.to_owned(),
            value: layout::Run::Running.token().to_vec(),
        });
        batch.guard(Check::Missing {
            key: run.slices_key(),
            field: fields::plan(p),
        });
        batch.push(WriteOp::SetFields {
            key: run.slices_key(),
            fields: vec![
                (fields::plan(p), plan.as_bytes().to_vec()),
                (fields::size(p), size.to_string().into_bytes()),
                (fields::done(p), b"0".to_vec()),
                (fields::cursor(p), Vec::new()),
            ],
        });
        batch.push(WriteOp::AddFields {
            key: run.record_key(),
            deltas: vec![
                (count::PLANNED.to_owned(), signed(size)),
                (count::REMAINING.to_owned(), signed(size)),
                (count::SLICES_PLANNED.to_owned(), 1),
            ],
        });
        let (ops, _) = batch.finish();
        let outcomes = self.store().write(ops).await?;
        match outcomes.first() {
            Some(WriteOutcome::Fenced { .. }) => return Ok(Next::Stop),
            Some(WriteOutcome::Unmet) => return Ok(Next::Stop),
            _ => {}
        }
        if outcomes.get(1) == Some(&WriteOutcome::Done) {
            debug!(campaign = %run.id, partition = p, size, "slice planned");
        }
        // Planned now (by this write or one that landed before): walk from what is stored.
        self.phase = Phase::Load;
        Ok(Next::Now)
    }

    /// One walk step: the next due members, as one batch.
    async fn walk(&mut self) -> Result<Next, herald_store::Error> {
        let run = self.args.run.clone();
        let now = self.now_ms();
        if self.buffer.is_empty() {
            let after = (!self.cursor.is_empty()).then_some(self.cursor.as_str());
            let page = self
                .store()
                .members_after(&self.schedule_key, after, WALK_PAGE)
                .await?;
            self.buffer = page.into();
            if self.buffer.is_empty() {
                self.args.status.finished.store(true, Ordering::Relaxed);
                self.args.status.remaining.store(0, Ordering::Relaxed);
                self.args.status.ready.store(0, Ordering::Relaxed);
                return Ok(Next::Stop);
            }
        }
        self.publish_progress();
        let end_by = run.spec.end_by_unix_ms;
        let expiring = end_by > 0 && now >= end_by;
        let prefixed = self.prefixed;
        let due_now = |member: &String| expiring || split_member(prefixed, member).0 <= now;
        let Some(front) = self.buffer.front() else {
            return Ok(Next::Now);
        };
        if !due_now(front) {
            let wait =
                (split_member(prefixed, front).0 - now).clamp(1, CLOCK_POLL.as_millis() as i64);
            self.phase = Phase::Walk;
            return Ok(Next::After(Duration::from_millis(wait as u64)));
        }
        // Paced: the tokens first, then only as many members as they allow (and the held out
        // among them, who need none): a member read is a member sent, not a read wasted.
        let paced = run.paced && !expiring;
        let tokens = if paced {
            self.args.bucket.take(BATCH_MAX)
        } else {
            usize::MAX
        };
        if tokens == 0 {
            self.phase = Phase::Walk;
            return Ok(Next::After(self.args.bucket.wait()));
        }
        let mut budget = tokens;
        let mut candidates: Vec<String> = Vec::new();
        for member in self
            .buffer
            .iter()
            .take_while(|m| due_now(m))
            .take(BATCH_MAX)
        {
            let id = split_member(prefixed, member).1;
            let held_out = plan::group(&run.id, id, &run.spec) == Group::HeldOut;
            if !held_out {
                if budget == 0 {
                    break;
                }
                budget -= 1;
            }
            candidates.push(member.clone());
        }
        let (ops, members) = self.build(&candidates, expiring, now, tokens).await?;
        let tokens = if paced { tokens } else { 0 };
        if members.is_empty() {
            self.args.bucket.give_back(tokens);
            // Every due member needs a token and none is there yet.
            self.phase = Phase::Walk;
            return Ok(Next::After(self.args.bucket.wait()));
        }
        // Room to run the batch's messages first (as a client's send waits while the node
        // is saturated): what is submitted starts at once.
        let submits = members
            .iter()
            .filter(|m| matches!(m, Member::Submit { .. }))
            .count();
        let Some(permits) = self.args.env.intake.admit_campaign_messages(submits).await else {
            self.args.bucket.give_back(tokens);
            return Ok(Next::Stop);
        };
        let mut permits = permits.into_iter();
        let outcomes = self.store().write(ops).await?;
        let written = read_outcomes(&outcomes, &members);
        let processed = match written {
            Written::All => {
                self.size = self.size.saturating_sub(self.pending_size_drop);
                members.len()
            }
            Written::ShortAt(index) => index,
            Written::NotRunning => {
                self.args.bucket.give_back(tokens);
                debug!(campaign = %run.id, partition = self.partition(), "campaign not running; slice stops");
                return Ok(Next::Stop);
            }
            Written::Moved => {
                self.args.bucket.give_back(tokens);
                self.phase = Phase::Load;
                return Ok(Next::Now);
            }
            Written::Fenced => return Ok(Next::Stop),
        };
        let mut used_tokens = 0;
        for member in members.into_iter().take(processed) {
            self.buffer.pop_front();
            self.cursor = member.cursor().to_owned();
            if let Member::Submit {
                acceptance,
                recipient,
                accept_op,
                hold,
                ..
            } = member
            {
                used_tokens += usize::from(run.paced);
                match outcomes.get(accept_op) {
                    Some(WriteOutcome::Accepted {
                        duplicate: false, ..
                    }) => {
                        self.done += 1;
                        let fence = self.args.fence;
                        if let Some(permit) = permits.next() {
                            self.args.env.intake.start_accepted(
                                &run.tenant,
                                *acceptance,
                                Some(*recipient),
                                fence,
                                permit,
                            );
                        }
                    }
                    other => {
                        // Its idempotency key was taken already: it cannot be sent twice, and
                        // it is not counted twice either.
                        warn!(campaign = %run.id, partition = self.partition(), outcome = ?other, "campaign member's message was not new; taking it out of the plan");
                        self.compensate_duplicate(hold).await?;
                    }
                }
            } else if let Member::Other { counts: true, .. } = member {
                self.done += 1;
            }
        }
        self.args
            .bucket
            .give_back(tokens.saturating_sub(used_tokens));
        if let Written::ShortAt(_) = written {
            // What landed before the short member is read back with the slice's figures.
            self.phase = Phase::Load;
            return self.reserve_more().await;
        }
        self.publish_progress();
        self.phase = Phase::Walk;
        Ok(Next::Now)
    }
}
