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

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono_tz::Tz;
use herald_proto::clock::SharedClock;
use herald_proto::v1::{CampaignSend, CampaignSpec, Channel, LedgerEntry, LedgerKind, Recipient};
use herald_store::campaign::{self as layout, Outcome, balance, count, credit, slice as fields};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome, keys};
use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use super::plan::{self, Due, Group, LocalSchedule, Segment};
use crate::auth::Tenant;
use crate::content::pricing::PriceTable;
use crate::intake::{CampaignAcceptance, Intake};

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

/// The slice's share of the node's pace: a token bucket the runner sets the rate of.
pub struct Bucket {
    state: Mutex<BucketState>,
}

struct BucketState {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Default for Bucket {
    fn default() -> Self {
        Self {
            state: Mutex::new(BucketState {
                rate: 0.0,
                tokens: 0.0,
                at: Instant::now(),
            }),
        }
    }
}

impl Bucket {
    fn refill(state: &mut BucketState) {
        let now = Instant::now();
        let elapsed = now.saturating_duration_since(state.at).as_secs_f64();
        state.at = now;
        // At most a second of tokens (and one): a slice that waited a moment loses little, and
        // the node's thousands of slices cannot burst together.
        let cap = state.rate.max(1.0);
        state.tokens = (state.tokens + elapsed * state.rate).min(cap);
    }

    /// Sets the rate (messages per second) from now on.
    pub fn set_rate(&self, rate: f64) {
        let mut state = self.state.lock();
        Self::refill(&mut state);
        state.rate = rate.max(0.0);
    }

    /// Takes up to `wanted` whole tokens; returns how many.
    fn take(&self, wanted: usize) -> usize {
        let mut state = self.state.lock();
        Self::refill(&mut state);
        let whole = state.tokens.floor().max(0.0) as usize;
        let taken = whole.min(wanted);
        state.tokens -= taken as f64;
        taken
    }

    /// Gives back tokens taken and not used.
    fn give_back(&self, tokens: usize) {
        self.state.lock().tokens += tokens as f64;
    }

    /// How long until a whole token is there.
    fn wait(&self) -> Duration {
        let mut state = self.state.lock();
        Self::refill(&mut state);
        if state.rate <= 0.0 {
            return CLOCK_POLL;
        }
        let missing = (1.0 - state.tokens).max(0.0);
        Duration::from_secs_f64(missing / state.rate).clamp(Duration::from_millis(1), CLOCK_POLL)
    }
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

/// How a batch's write ended.
enum Written {
    /// Every member of the batch was processed.
    All,
    /// Members up to (not including) `index` were processed; `index` found the campaign's
    /// reservation short.
    ShortAt(usize),
    /// The campaign is not running (paused, cancelled, ended): nothing was written.
    NotRunning,
    /// The cursor was not where this actor thought: read it again.
    Moved,
    /// The partition moved.
    Fenced,
}

/// One member of a batch and what the batch does for it.
enum Member {
    Submit {
        member: String,
        hold: u64,
        acceptance: Box<CampaignAcceptance>,
        recipient: Box<Recipient>,
        /// Index of its accept op in the batch.
        accept_op: usize,
        /// Index of its hold op (`None` when it costs nothing).
        take_op: Option<usize>,
    },
    /// Held out, suppressed, expired (`counts`: one more done), rescheduled or a duplicate
    /// (not done: its entry moved, or it was done already).
    Other { member: String, counts: bool },
}

impl Member {
    fn cursor(&self) -> &str {
        match self {
            Member::Submit { member, .. } | Member::Other { member, .. } => member,
        }
    }
}

/// A batch's ops, built member by member.
struct Batch {
    ops: Vec<FencedOp>,
    /// Indices of the ops that guard everything after them (their guards are set at the end).
    open_guards: Vec<usize>,
    members: Vec<Member>,
    fence: Fence,
}

impl Batch {
    fn new(run: &CampaignRun, fence: Fence, cursor: &str) -> Batch {
        let mut batch = Batch {
            ops: Vec::new(),
            open_guards: Vec::new(),
            members: Vec::new(),
            fence,
        };
        batch.guard(Check::FieldIs {
            key: run.record_key(),
            field: layout::RUN.to_owned(),
            value: layout::Run::Running.token().to_vec(),
        });
        batch.guard(Check::FieldIs {
            key: run.slices_key(),
            field: fields::cursor(fence.partition.0),
            value: cursor.as_bytes().to_vec(),
        });
        batch
    }

    fn push(&mut self, op: WriteOp) -> usize {
        self.ops.push(FencedOp {
            fence: self.fence,
            op,
        });
        self.ops.len() - 1
    }

    /// A check that guards every op after it in the batch.
    fn guard(&mut self, check: Check) -> usize {
        let index = self.push(WriteOp::Require { check, guards: 0 });
        self.open_guards.push(index);
        index
    }

    /// The member's progress in the slice: one more done, the cursor after it.
    fn advance(&mut self, run: &CampaignRun, member: &str, counts: bool) {
        let p = self.fence.partition.0;
        if counts {
            self.push(WriteOp::AddFields {
                key: run.slices_key(),
                deltas: vec![(fields::done(p), 1)],
            });
        }
        self.push(WriteOp::SetFields {
            key: run.slices_key(),
            fields: vec![(fields::cursor(p), member.as_bytes().to_vec())],
        });
    }

    fn outcome(&mut self, run: &CampaignRun, id: &str, outcome: &Outcome) {
        self.push(WriteOp::SetFields {
            key: keys::campaign::outcomes(&run.tenant.id, &run.id, self.fence.partition.0),
            fields: vec![(id.to_owned(), outcome.encode())],
        });
    }

    fn finish(mut self) -> (Vec<FencedOp>, Vec<Member>) {
        let len = self.ops.len();
        for index in self.open_guards {
            if let WriteOp::Require { guards, .. } = &mut self.ops[index].op {
                *guards = len - index - 1;
            }
        }
        (self.ops, self.members)
    }
}

fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
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
        let mut batch = Batch {
            ops: Vec::new(),
            open_guards: Vec::new(),
            members: Vec::new(),
            fence: self.args.fence,
        };
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
            Written::ShortAt(index) => {
                // Duplicates before the short member landed; after it, none did. Read it all
                // again after the reservation grew.
                self.phase = Phase::Load;
                index
            }
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
            self.phase = Phase::Walk;
            return self.reserve_more().await;
        }
        self.publish_progress();
        self.phase = Phase::Walk;
        Ok(Next::Now)
    }

    /// Builds the batch for `candidates` (due members, in order). Returns the ops, the
    /// members it covers (a prefix of the candidates) and the tokens it took.
    async fn build(
        &mut self,
        candidates: &[String],
        expiring: bool,
        now: i64,
        mut tokens: usize,
    ) -> Result<(Vec<FencedOp>, Vec<Member>), herald_store::Error> {
        let run = self.args.run.clone();
        let p = self.partition();
        let mut duplicates = 0u64;
        let ids: Vec<String> = candidates
            .iter()
            .map(|m| split_member(self.prefixed, m).1.to_owned())
            .collect();
        let seen = self
            .store()
            .some_fields(&keys::campaign::outcomes(&run.tenant.id, &run.id, p), &ids)
            .await?;
        let recipients = if expiring {
            vec![None; ids.len()]
        } else {
            self.store().get_recipients(&run.tenant.id, &ids).await?
        };
        let mut batch = Batch::new(&run, self.args.fence, &self.cursor);
        let record = run.record_key();
        for ((member, id), (seen, recipient)) in candidates
            .iter()
            .zip(&ids)
            .zip(seen.into_iter().zip(recipients))
        {
            if seen.is_some() {
                // The member is in the schedule twice (planned again after a crash with a
                // changed zone): processed already, counted once.
                batch.push(WriteOp::AddFields {
                    key: record.clone(),
                    deltas: vec![
                        (count::PLANNED.to_owned(), -1),
                        (count::REMAINING.to_owned(), -1),
                    ],
                });
                batch.push(WriteOp::AddFields {
                    key: run.slices_key(),
                    deltas: vec![(fields::size(p), -1)],
                });
                batch.advance(&run, member, false);
                batch.members.push(Member::Other {
                    member: member.clone(),
                    counts: false,
                });
                duplicates += 1;
                continue;
            }
            if expiring {
                self.other(
                    &mut batch,
                    member,
                    id,
                    Outcome::Expired,
                    &[(count::EXPIRED, 1)],
                );
                continue;
            }
            let Some(recipient) = recipient else {
                let reason = "unknown_recipient";
                self.suppress(&mut batch, member, id, reason);
                continue;
            };
            let zones = plan::zones_of(&recipient, run.default_zone);
            match run.schedule.window_opening(&zones, now) {
                None => {
                    self.suppress(&mut batch, member, id, "no_common_window");
                    continue;
                }
                Some(opening) if opening > now => {
                    // Late for its window (the pace held it back): its turn comes again at
                    // the next opening, the same member under a later due time.
                    batch.push(WriteOp::AddMembers {
                        key: self.schedule_key.clone(),
                        members: vec![layout::schedule_member(opening, id)],
                    });
                    batch.advance(&run, member, false);
                    batch.members.push(Member::Other {
                        member: member.clone(),
                        counts: false,
                    });
                    continue;
                }
                Some(_) => {}
            }
            let variant_index = match plan::group(&run.id, id, &run.spec) {
                Group::HeldOut => {
                    self.other(
                        &mut batch,
                        member,
                        id,
                        Outcome::HeldOut { converted: false },
                        &[(count::HELD_OUT, 1)],
                    );
                    batch.push(WriteOp::AddFields {
                        key: record.clone(),
                        deltas: vec![(layout::members_field(layout::HOLDOUT), 1)],
                    });
                    continue;
                }
                Group::Variant(index) => index,
            };
            let variants = layout::variant_names(Some(&run.spec));
            let variant = variants
                .get(variant_index)
                .cloned()
                .unwrap_or_else(|| layout::MAIN_VARIANT.to_owned());
            let mut request = super::spec::message_of(&run.spec);
            if let Some(content) = run
                .spec
                .variants
                .get(variant_index)
                .and_then(|v| v.content.clone())
            {
                request.content = Some(content);
            }
            request.recipient_id = id.to_owned();
            request.idempotency_key =
                format!("{}{}:{id}", crate::validate::CAMPAIGN_KEY_PREFIX, run.id);
            request.campaign_id = run.id.clone();
            if request.cost_order {
                crate::content::order_by_cost(&self.args.env.prices, &mut request, &recipient);
            }
            let vars =
                crate::content::template::merge_vars(&recipient.attributes, &request.variables);
            let content = request.content.clone().unwrap_or_default();
            let rendered = match crate::content::template::render(&content, &vars) {
                Ok(rendered) => rendered.into_owned(),
                Err(_) => {
                    self.suppress(&mut batch, member, id, "template");
                    continue;
                }
            };
            let steps: Vec<Channel> = request.waterfall.iter().map(|s| s.channel()).collect();
            let (cost, _) = plan::cost(
                &self.args.env.prices,
                request.class(),
                &request.topic,
                &steps,
                &rendered,
                &recipient,
            );
            if tokens == 0 {
                // No token for this member: the batch ends before it.
                break;
            }
            tokens -= 1;
            let hold = cost.worst;
            let take_op = (hold > 0).then(|| {
                batch.guard(Check::Take {
                    key: record.clone(),
                    field: credit::RESERVED.to_owned(),
                    amount: signed(hold),
                })
            });
            let acceptance = self.args.env.intake.campaign_acceptance(
                &run.tenant,
                request,
                CampaignSend {
                    campaign_id: run.id.clone(),
                    variant: variant.clone(),
                    hold_micros: hold,
                },
                self.args.fence,
            );
            let mut op = acceptance.op.clone();
            if let WriteOp::AcceptMessage { guards, .. } = &mut op {
                *guards = 2;
            }
            let accept_op = batch.push(op);
            let mut deltas = vec![
                (count::SUBMITTED.to_owned(), 1),
                (count::REMAINING.to_owned(), -1),
                (layout::members_field(&variant), 1),
            ];
            if run.paced {
                deltas.push((count::PACED.to_owned(), 1));
            }
            if hold > 0 {
                deltas.push((credit::HELD.to_owned(), signed(hold)));
            }
            batch.push(WriteOp::AddFields {
                key: record.clone(),
                deltas,
            });
            batch.outcome(
                &run,
                id,
                &Outcome::Submitted {
                    message_id: acceptance.stored.message_id.clone(),
                    variant: variant.clone(),
                },
            );
            batch.advance(&run, member, true);
            batch.members.push(Member::Submit {
                member: member.clone(),
                hold,
                acceptance: Box::new(acceptance),
                recipient: Box::new(recipient),
                accept_op,
                take_op,
            });
        }
        let (ops, members) = batch.finish();
        // Only when the batch lands; a batch that does not is read again from the store.
        self.pending_size_drop = duplicates;
        Ok((ops, members))
    }

    /// A member processed without a message: its outcome, its counts, the cursor.
    fn other(
        &self,
        batch: &mut Batch,
        member: &str,
        id: &str,
        outcome: Outcome,
        counts: &[(&str, i64)],
    ) {
        let run = &self.args.run;
        let mut deltas: Vec<(String, i64)> =
            counts.iter().map(|(f, d)| ((*f).to_owned(), *d)).collect();
        deltas.push((count::REMAINING.to_owned(), -1));
        batch.push(WriteOp::AddFields {
            key: run.record_key(),
            deltas,
        });
        batch.outcome(run, id, &outcome);
        batch.advance(run, member, true);
        batch.members.push(Member::Other {
            member: member.to_owned(),
            counts: true,
        });
    }

    fn suppress(&self, batch: &mut Batch, member: &str, id: &str, reason: &str) {
        let by_reason = layout::suppressed_by(reason);
        self.other(
            batch,
            member,
            id,
            Outcome::Suppressed {
                reason: reason.to_owned(),
            },
            &[(count::SUPPRESSED, 1), (by_reason.as_str(), 1)],
        );
    }

    /// A member whose accept was not new: out of the plan, its hold back.
    async fn compensate_duplicate(&mut self, hold: u64) -> Result<(), herald_store::Error> {
        let run = self.args.run.clone();
        let p = self.partition();
        let mut deltas = vec![
            (count::PLANNED.to_owned(), -1),
            (count::REMAINING.to_owned(), -1),
        ];
        if hold > 0 {
            deltas.push((credit::RESERVED.to_owned(), signed(hold)));
        }
        self.store()
            .write(vec![
                FencedOp {
                    fence: self.args.fence,
                    op: WriteOp::AddFields {
                        key: run.record_key(),
                        deltas,
                    },
                },
                FencedOp {
                    fence: self.args.fence,
                    op: WriteOp::AddFields {
                        key: run.slices_key(),
                        deltas: vec![(fields::size(p), -1), (fields::done(p), -1)],
                    },
                },
            ])
            .await?;
        self.size = self.size.saturating_sub(1);
        Ok(())
    }

    /// The campaign's reservation fell short of the next member's hold: more from the
    /// balance, or, when it is used up, the slice says so (the leader pauses the campaign).
    async fn reserve_more(&mut self) -> Result<Next, herald_store::Error> {
        let run = self.args.run.clone();
        let needed = self
            .buffer
            .front()
            .map(|_| self.next_hold_estimate())
            .unwrap_or(1)
            .max(1);
        let credits = keys::campaign::credits(&run.tenant.id);
        let values = self
            .store()
            .some_fields(&credits, &[balance::AVAILABLE.to_owned()])
            .await?;
        let available =
            u64::try_from(layout::int(values.first().and_then(|v| v.as_deref()))).unwrap_or(0);
        if available < needed {
            if !self.args.status.exhausted.swap(true, Ordering::Relaxed) {
                info!(campaign = %run.id, partition = self.partition(), available, needed, "campaign credits used up; slice waits");
            }
            return Ok(Next::After(CREDITS_RETRY));
        }
        let amount = available.min(needed.saturating_mul(RESERVE_AHEAD));
        let entry = LedgerEntry {
            kind: LedgerKind::LedgerReserve as i32,
            amount_micros: amount,
            at_unix_ms: self.now_ms(),
            campaign_id: run.id.clone(),
            ..Default::default()
        };
        // Not partition state: the balance and the campaign's reservation.
        let none = |op| FencedOp {
            fence: Fence::NONE,
            op,
        };
        self.store()
            .write(vec![
                none(WriteOp::Require {
                    check: Check::Take {
                        key: credits,
                        field: balance::AVAILABLE.to_owned(),
                        amount: signed(amount),
                    },
                    guards: 2,
                }),
                none(WriteOp::AddFields {
                    key: run.record_key(),
                    deltas: vec![(credit::RESERVED.to_owned(), signed(amount))],
                }),
                none(WriteOp::PushRecord {
                    key: keys::campaign::ledger(&run.tenant.id),
                    record: layout::encode_ledger(&entry),
                }),
            ])
            .await?;
        self.args.status.exhausted.store(false, Ordering::Relaxed);
        Ok(Next::Now)
    }

    /// A member's hold is only known once its recipient is read; ask for a generous one (the
    /// most a step of the waterfall can cost, three times).
    fn next_hold_estimate(&self) -> u64 {
        let prices = &self.args.env.prices;
        let most = [Channel::Push, Channel::Email, Channel::Sms]
            .into_iter()
            .map(|c| prices.max_price(c))
            .max()
            .unwrap_or(0);
        most.saturating_mul(3).saturating_mul(4).max(1)
    }
}

/// A member's due time and recipient id: `due ‖ id` in a schedule, a bare id (due at once)
/// in the uploaded list.
fn split_member(prefixed: bool, member: &str) -> (i64, &str) {
    if prefixed && let Some((due, id)) = layout::parse_schedule_member(member) {
        return (due, id);
    }
    (0, member)
}

/// Reads a batch's outcomes: the campaign check, the cursor check, then each member's hold.
fn read_outcomes(outcomes: &[WriteOutcome], members: &[Member]) -> Written {
    match outcomes.first() {
        Some(WriteOutcome::Fenced { .. }) => return Written::Fenced,
        Some(WriteOutcome::Unmet) | Some(WriteOutcome::Skipped) => return Written::NotRunning,
        _ => {}
    }
    if matches!(
        outcomes.get(1),
        Some(WriteOutcome::Unmet) | Some(WriteOutcome::Skipped)
    ) {
        return Written::Moved;
    }
    for (index, member) in members.iter().enumerate() {
        if let Member::Submit {
            take_op: Some(take),
            ..
        } = member
            && outcomes.get(*take) != Some(&WriteOutcome::Done)
        {
            return Written::ShortAt(index);
        }
    }
    Written::All
}
