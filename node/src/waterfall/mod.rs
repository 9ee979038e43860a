//! # waterfall: a message's life as a pure state machine
//!
//! Owns the decisions of a message's life: which step runs, what each gate says, what a
//! provider's answer, a receipt or a timer does to the message, and which events record it.
//! Input: the message, its event log ([`Progress`]), the facts the actor read (the recipient,
//! the person's recent sends, `now`), and the answers of long effects (channel rules, a send
//! slot, the provider call). Output: [`Effect`]s — events to append, state to write, a flush,
//! a durable timer — and the [`Next`] long effect the run waits for, whose answer comes back
//! as the next input. The `RecipientActor` applies effects; it decides nothing.
//!
//! Must never do I/O, read a clock or a cache of its own (the [`Accounts`] view answers
//! configuration and the breakers' cached states), or keep anything between runs that is not
//! in the log: every run starts from the log, so a new owner resumes exactly where the old one
//! stopped.
//!
//! ## Layout
//! - [`progress`]: the log's meaning (next step, open attempt, wait, terminal).
//! - [`run`]: one run of a message through its steps ([`Run`]).
//! - `outcome`: what a provider's answer to a step's call does.
//! - [`receipt`]: what a receipt or engagement report does ([`receipt::apply`]).
//! - `tests`: every (state, input) pair, in process.

mod outcome;
pub mod progress;
pub mod receipt;
pub mod run;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use herald_proto::v1::{
    Channel, EventKind, MessageRequest, MessageStatus, Recipient, StoredMessage,
};

pub use herald_proto::status::is_terminal;
pub use progress::{Progress, StepRecord, Waiting, fresh_history};
pub use run::{Run, Triage, triage};

use crate::auth::Tenant;
use crate::content::pricing::PriceTable;
use crate::policy::block_rate::Signal;
use crate::policy::caps::SentRecord;
use crate::reason::{Pause, Reason};

/// The machine's knobs (from the node config).
#[derive(Clone, Debug)]
pub struct Settings {
    /// A step's wait for its success condition when the step names no timeout.
    pub default_step_timeout_ms: u64,
    /// How often a message held by a paused breaker looks again.
    pub breaker_recheck_ms: i64,
    /// Shifts the clock quiet hours are evaluated on (tests and demos of local time only).
    pub policy_clock_offset_ms: i64,
    /// Prices for each attempt's cost.
    pub prices: Arc<PriceTable>,
}

impl Settings {
    pub fn step_timeout_ms(&self, timeout_ms: u32) -> i64 {
        let ms = if timeout_ms > 0 {
            u64::from(timeout_ms)
        } else {
            self.default_step_timeout_ms
        };
        i64::try_from(ms).unwrap_or(i64::MAX)
    }
}

/// What the machine needs to know of one provider account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountInfo {
    pub name: String,
    /// Messenger-style session window (hours; 0 = none).
    pub session_window_h: u32,
    /// A warm-up schedule limits its sends per day.
    pub warmup: bool,
    /// A unique-recipients tier limits whom it may message.
    pub tier: bool,
    /// A send may wait for a slot (a rate limit on it, or the tenant's quota on it).
    pub rate_limited: bool,
    /// Its receipts arrive later, matched by the provider's message id (index it).
    pub late_receipts: bool,
}

impl AccountInfo {
    /// Whether the account's rules must be asked before it is used.
    pub fn has_rules(&self) -> bool {
        self.session_window_h > 0 || self.warmup || self.tier
    }
}

/// The machine's read-only view of the provider accounts: configuration and the breakers'
/// cached states, no I/O.
pub trait Accounts: Sync {
    /// The accounts a step tries, in order: the step's own account first (when it names one),
    /// then the channel's others.
    fn chain(&self, channel: Channel, preferred: &str) -> Vec<AccountInfo>;
    /// The paused breaker that holds a send through `account` (the campaign's, else the
    /// account's), if any. `campaign_id` is empty without a campaign.
    fn paused(&self, campaign_id: &str, account: &str) -> Option<Pause>;
}

/// Everything a decision reads that does not change during a run.
#[derive(Clone, Copy)]
pub struct Cx<'a> {
    pub message: &'a StoredMessage,
    pub tenant: &'a Tenant,
    pub settings: &'a Settings,
    pub accounts: &'a dyn Accounts,
}

impl<'a> Cx<'a> {
    /// The message's request (`None` only for a corrupt record, see [`Triage::Corrupt`]).
    pub fn request(&self) -> Option<&'a MessageRequest> {
        self.message.request.as_ref()
    }
}

/// An event to append; the actor fills in ids, time, node, epoch and seq.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    pub kind: EventKind,
    pub step: Option<u32>,
    pub channel: Channel,
    pub attempt_id: String,
    pub reason: Option<Reason>,
    pub status: MessageStatus,
    pub provider: String,
    pub due_unix_ms: i64,
    pub cost_micros: u64,
}

impl Draft {
    pub fn new(
        kind: EventKind,
        step: Option<u32>,
        channel: Channel,
        status: MessageStatus,
    ) -> Self {
        Draft {
            kind,
            step,
            channel,
            attempt_id: String::new(),
            reason: None,
            status,
            provider: String::new(),
            due_unix_ms: 0,
            cost_micros: 0,
        }
    }

    pub fn attempt(mut self, attempt_id: &str) -> Self {
        self.attempt_id = attempt_id.to_owned();
        self
    }

    pub fn reason(mut self, reason: Reason) -> Self {
        self.reason = Some(reason);
        self
    }

    pub fn provider(mut self, provider: &str) -> Self {
        self.provider = provider.to_owned();
        self
    }

    pub fn due(mut self, due_unix_ms: i64) -> Self {
        self.due_unix_ms = due_unix_ms;
        self
    }
}

/// State beside the log, written with the next flush.
#[derive(Clone, Debug, PartialEq)]
pub enum StateWrite {
    /// Count the message for the person's day (a message's first write only).
    CountMessage,
    /// The recipient as changed (a suppressed contact point, a consent change). Boxed: rare,
    /// and large next to the other writes.
    PutRecipient(Box<Recipient>),
    /// One more marketing send on `channel` at `at_unix_ms`, after `history` (the person's
    /// recent sends as the run read them): for sliding-window caps.
    RecordSend {
        channel: Channel,
        at_unix_ms: i64,
        history: Vec<SentRecord>,
    },
    /// The person engaged (read, clicked, converted, replied) at `at_unix_ms`: what segments
    /// on engagement recency read.
    Engaged { at_unix_ms: i64 },
    /// The provider's message id → this attempt, for receipts that name only that id.
    IndexReceipt {
        account: String,
        provider_message_id: String,
        step: u32,
    },
}

/// What the actor does, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Record(Draft),
    Write(StateWrite),
    /// Write what is pending now; `terminal` takes the message out of its active set.
    Flush {
        terminal: bool,
    },
    /// Run the message again at this time (the durable part is the event just flushed).
    Schedule {
        due_unix_ms: i64,
    },
    /// Count a signal on `channel` for the message's campaign and for `account`.
    Observe {
        account: String,
        channel: Channel,
        signal: Signal,
    },
    /// A step timed out waiting for its success condition (a metric).
    CountTimeout,
    /// A send was held by a paused breaker (a metric).
    CountDeferredSend,
}

/// The long effect a run waits for; its answer is the run's next input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// The run is over for now (terminal, waiting, deferred, or skipped to the end).
    Done,
    /// Ask each account's channel rules (session window, warm-up, tier) → [`Run::on_rules`].
    AskRules {
        step: u32,
        accounts: Vec<AccountInfo>,
    },
    /// Wait for a send slot of `account` → [`Run::on_slot`].
    Slot { step: u32, account: String },
    /// Call the provider chain with the attempt id → [`Run::on_delivery`].
    Call {
        step: u32,
        attempt_id: String,
        accounts: Vec<String>,
        /// The first account's slot is already taken (the call must not wait for another).
        first_slot_taken: bool,
    },
}

/// The effects of one input, then what the run waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub effects: Vec<Effect>,
    pub next: Next,
}

impl Step {
    fn done(effects: Vec<Effect>) -> Step {
        Step {
            effects,
            next: Next::Done,
        }
    }
}
