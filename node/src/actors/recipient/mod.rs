//! # RecipientActor: one per active recipient
//!
//! Serialises everything that touches one person: the runs of their messages (from the log:
//! new, resumed, woken by a timer), the receipts for them, and consent changes, one at a time,
//! so no distributed lock is ever needed. The decisions are the pure waterfall's
//! ([`crate::waterfall`]); the actor reads the facts it asks for, applies its effects in order
//! and performs its long effects (channel rules, a send slot, the provider call). State lives in
//! the store (the message's event log); the actor keeps none of it between jobs, so it can be
//! passivated or moved at any time.
//!
//! Every step's intent is durable before the provider hears of the attempt, and every append
//! carries the seq it expects, so a message's log has exactly one writer and a step exactly one
//! outcome. A write rejected by fencing means the partition moved: the actor stops working on
//! the message at once; the new owner resumes it from the log. Must never call a provider for a
//! step whose intent is not durable, and never decide from a log it did not read after its last
//! refused write.
//!
//! ## Layout
//! - this file: the actor, its messages and jobs.
//! - [`mod@env`]: what every actor of the node uses.
//! - `walk`: a job's run through the machine (reads, effects, long effects, retries).
//! - `log`: the message's log as a run writes it.
//! - `consent`: consent changes and inbound replies.
//! - journeys run in the actor too ([`crate::journey::walker`]): a person's journey state
//!   changes in turn with their messages and receipts.

mod consent;
pub mod env;
mod journeys;
mod log;
mod walk;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use herald_proto::v1::{Event, Recipient, ReportStatus, StoredMessage, WaterfallStep};
use herald_store::{Fence, FencedOp, WriteOutcome};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

pub use env::{RecipientEnv, RecipientSettings};
pub use log::SENDS_KEEP;

use crate::auth::Tenant;

/// Shared between the directory and one actor: what passivation looks at.
pub struct Activity {
    /// Jobs handed to the actor and not finished.
    pub in_flight: AtomicUsize,
    /// When the actor last finished a job, ms since `since`.
    pub last_active_ms: AtomicU64,
    pub since: Instant,
}

impl Activity {
    pub fn new(since: Instant) -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            last_active_ms: AtomicU64::new(since.elapsed().as_millis() as u64),
            since,
        }
    }

    fn finished(&self) {
        self.last_active_ms
            .store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

pub struct RecipientActor;

pub struct RecipientArgs {
    pub env: Arc<RecipientEnv>,
    pub activity: Arc<Activity>,
}

pub struct RecipientState {
    env: Arc<RecipientEnv>,
    activity: Arc<Activity>,
    /// Messages this activation already ran (hashes of their ids). A second job for one of
    /// them (a resume racing the original dispatch) must re-read the log instead of trusting
    /// the history it carries. Most actors run one message: the first few ids live inline,
    /// without an allocation; a hash collision only costs a re-read.
    seen_inline: [u64; SEEN_INLINE],
    seen_count: usize,
    seen_more: HashSet<u64>,
}

const SEEN_INLINE: usize = 4;
/// Bound on `seen`; an actor that ran this many messages forgets them (jobs then re-read).
const SEEN_MAX: usize = 4096;

impl RecipientState {
    /// Records `message_id`; false when it was already recorded.
    fn first_time(&mut self, message_id: &str) -> bool {
        let hash = herald_proto::partition::key_hash("", message_id);
        let inline = self.seen_count.min(SEEN_INLINE);
        if self.seen_inline[..inline].contains(&hash) || self.seen_more.contains(&hash) {
            return false;
        }
        if self.seen_count < SEEN_INLINE {
            self.seen_inline[self.seen_count] = hash;
        } else {
            if self.seen_more.len() >= SEEN_MAX {
                self.seen_more.clear();
            }
            self.seen_more.insert(hash);
        }
        self.seen_count += 1;
        true
    }
}

pub enum RecipientMsg {
    /// Run (or resume) a message's life from its event log.
    Run(Box<Job>),
    /// A receipt or engagement report for one of the recipient's messages.
    Signal(Box<SignalJob>),
    /// Change the recipient's consent ledger (an SMS keyword).
    Consent(Box<consent::ConsentJob>),
    /// The person wrote to the tenant: their messenger-style session window opens.
    Inbound(Box<consent::InboundJob>),
    /// The person's journeys: a reported event, a due wait, an exit, engagement.
    Journey(Box<crate::journey::walker::JourneyJob>),
}

pub use consent::{ConsentJob, InboundJob};

/// A message to run, and what the run needs to know of it.
pub struct Job {
    pub tenant: Arc<Tenant>,
    pub message: Arc<StoredMessage>,
    pub fence: Fence,
    /// The message's event log so far: `Some([accepted])` for a new message; `None` when the
    /// actor must read it from the store (resumed messages: the log may have grown since the
    /// job was queued, e.g. by a run of the same message queued before it).
    pub history: Option<Vec<Event>>,
    /// The recipient as read when the message was accepted; `None` = read it from the store.
    pub recipient: Option<Recipient>,
    /// Admission permit, released when the job is done.
    pub permit: tokio::sync::OwnedSemaphorePermit,
    /// The message's acceptance, not written yet: the actor writes it with the message's first
    /// write (one store round trip instead of two) and answers the router, which acks the
    /// client only then. `None` = already accepted. Only ever given to an idle actor (see
    /// `RecipientDirectory::dispatch_if_idle`), so the ack never waits behind another job.
    pub accept: Option<PendingAccept>,
}

impl Job {
    pub fn recipient_id(&self) -> &str {
        self.message
            .request
            .as_ref()
            .map_or("", |r| r.recipient_id.as_str())
    }

    fn campaign_id(&self) -> &str {
        self.message
            .request
            .as_ref()
            .map_or("", |r| r.campaign_id.as_str())
    }

    fn steps(&self) -> &[WaterfallStep] {
        self.message
            .request
            .as_ref()
            .map_or(&[][..], |r| r.waterfall.as_slice())
    }
}

/// A receipt for one of the recipient's messages, and where its verdict goes.
pub struct SignalJob {
    pub job: Job,
    pub signal: crate::waterfall::receipt::Signal,
    pub reply: RpcReplyPort<ReportStatus>,
}

/// Why an acceptance handed to an actor was not written.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    #[error("store: {0}")]
    Store(String),
    #[error("the message's first write did not happen")]
    NotWritten,
}

/// A new message's acceptance, carried to its actor (see [`Job::accept`]).
pub struct PendingAccept {
    /// The `AcceptMessage` op (its `guards` are set when it is written).
    pub op: FencedOp,
    pub answer: AcceptAnswer,
}

/// Where an acceptance's outcome goes, with what watchers get of it.
pub struct AcceptAnswer {
    /// Copies of the `accepted` event for watchers (usually none).
    pub watched: Vec<Event>,
    /// The accept's outcome, or why it was not written.
    pub reply: RpcReplyPort<Result<WriteOutcome, AcceptError>>,
}

impl AcceptAnswer {
    fn send(self, outcome: Result<WriteOutcome, AcceptError>) {
        // The router may have given up (its caller went away): nothing to do then.
        let _ = self.reply.send(outcome);
    }
}

impl Actor for RecipientActor {
    type Msg = RecipientMsg;
    type State = RecipientState;
    type Arguments = RecipientArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: RecipientArgs,
    ) -> Result<RecipientState, ActorProcessingErr> {
        Ok(RecipientState {
            env: args.env,
            activity: args.activity,
            seen_inline: [0; SEEN_INLINE],
            seen_count: 0,
            seen_more: HashSet::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut RecipientState,
    ) -> Result<(), ActorProcessingErr> {
        let env = state.env.clone();
        // Boxed: a run's future is several KiB; inline, every idle actor's task would keep that
        // much memory for as long as the actor lives.
        match message {
            RecipientMsg::Run(mut job) => {
                if !state.first_time(&job.message.message_id) {
                    job.history = None;
                    job.recipient = None;
                }
                Box::pin(walk::run_job(&env, *job)).await;
            }
            RecipientMsg::Signal(job) => Box::pin(walk::signal_job(&env, *job)).await,
            RecipientMsg::Consent(job) => Box::pin(consent::apply(&env, *job)).await,
            RecipientMsg::Inbound(job) => Box::pin(consent::inbound(&env, *job)).await,
            RecipientMsg::Journey(job) => {
                Box::pin(crate::journey::walker::run(&env.journeys, *job)).await
            }
        }
        state.activity.finished();
        Ok(())
    }
}
