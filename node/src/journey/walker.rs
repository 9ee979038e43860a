//! # journey::walker: a person's journeys, run inside their RecipientActor
//!
//! Owns what a journey job does for one person: enter journeys on a reported event, walk the
//! steps (send, branch, wait) until a wait or the end, wake from a wait, end journeys on an
//! exit signal, and count engagement for the step it belongs to. Every change is one
//! transition of [`super::person`], checked against the state it was decided from and fenced
//! by the person's partition. Runs only inside the person's actor, so the jobs of one person
//! never interleave.
//!
//! Must never send a message but through the intake (policy applies to every send), and never
//! send without the step's idempotency key: a walk repeated after a crash, a lost race or a
//! wait firing twice re-submits the same key and gets the same message, never a second one.

use std::collections::BTreeMap;
use std::sync::Arc;

use herald_proto::clock::SharedClock;
use herald_proto::error::Error;
use herald_proto::v1::{
    EngagementKind, JourneyPerson, JourneyPersonStatus, JourneySent, JourneySpec, JourneyState,
    JourneyView, MessageRequest, Recipient, ReportEventResponse, SendResponse,
};
use herald_store::{Fence, Store};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::flow::{self, Action, ExitSignal, funnel};
use super::person::{self, Transition, WaitMember, Written};
use super::waits::{JourneyWaits, WakeTicket};
use crate::auth::Tenant;
use crate::campaign::plan::Segment;

/// How the intake takes a journey's message (the router, in production).
#[async_trait::async_trait]
pub trait SubmitMessage: Send + Sync {
    async fn submit(
        &self,
        tenant: &Arc<Tenant>,
        request: MessageRequest,
    ) -> Result<SendResponse, Error>;
}

/// What every journey job of a node uses.
pub struct JourneyEnv {
    pub store: Arc<dyn Store>,
    /// The policy clock (see `policy_clock_rate`): waits and local times run on it.
    pub clock: SharedClock,
    pub submit: Arc<dyn SubmitMessage>,
    pub waits: JourneyWaits,
}

/// A journey job for one person, run by their actor.
pub struct JourneyJob {
    pub tenant: Arc<Tenant>,
    pub recipient_id: String,
    pub fence: Fence,
    /// Admission, released when the job is done (`None`: admitted by its source).
    pub permit: Option<tokio::sync::OwnedSemaphorePermit>,
    pub kind: JobKind,
}

pub enum JobKind {
    /// A reported event: entries and exits; the answer goes to `reply`.
    Event {
        event: String,
        properties: BTreeMap<String, String>,
        reply: oneshot::Sender<Result<ReportEventResponse, Error>>,
    },
    /// Enter one journey (its segment matched the person); `done` answers whether they did.
    Enter {
        journey: String,
        done: oneshot::Sender<bool>,
    },
    /// A wait of the partition's wait set came due; the ticket tells the pager, when dropped
    /// with the job, that it was handled.
    Wake {
        member: WaitMember,
        ticket: WakeTicket,
    },
    /// Something that ends journeys (`journey`: only that one, e.g. the journey a converted
    /// message belongs to).
    Exit {
        signal: ExitSignal,
        journey: Option<String>,
    },
    /// Engagement reported on a journey's message (its idempotency key names journey and step).
    Engaged {
        journey: String,
        step: String,
        kind: EngagementKind,
    },
}

/// Why a walk stopped without writing.
#[derive(Debug, thiserror::Error)]
enum WalkError {
    #[error("store: {0}")]
    Store(#[from] herald_store::Error),
    #[error("{0}")]
    Intake(Error),
    #[error("the partition moved")]
    Fenced,
    #[error("the state changed under the walk")]
    Moved,
}

impl From<WalkError> for Error {
    fn from(error: WalkError) -> Error {
        match error {
            WalkError::Intake(error) => error,
            other => Error::Unavailable(format!("journey: {other}")),
        }
    }
}

/// Runs one job to its end.
pub async fn run(env: &JourneyEnv, job: JourneyJob) {
    let JourneyJob {
        tenant,
        recipient_id,
        fence,
        permit,
        kind,
    } = job;
    let _admitted = permit;
    let person = Person {
        env,
        tenant: &tenant,
        recipient_id: &recipient_id,
        fence,
    };
    match kind {
        JobKind::Event {
            event,
            properties,
            reply,
        } => {
            let _ = reply.send(person.event(&event, properties).await);
        }
        JobKind::Enter { journey, done } => {
            let entered = match person.enter_segment(&journey).await {
                Ok(entered) => entered,
                Err(error) => {
                    debug!(%error, "segment entry not applied; the round tries again");
                    return;
                }
            };
            let _ = done.send(entered);
        }
        JobKind::Wake { member, ticket } => {
            if let Err(error) = person.wake(&member).await {
                debug!(%error, "journey wait not handled; the pager fires it again");
            }
            drop(ticket);
        }
        JobKind::Exit { signal, journey } => {
            if let Err(error) = person.exit(&signal, journey.as_deref()).await {
                warn!(%error, ?signal, "ending journeys failed");
            }
        }
        JobKind::Engaged {
            journey,
            step,
            kind,
        } => {
            if let Err(error) = person.engaged(&journey, &step, kind).await {
                warn!(%error, "counting a journey's engagement failed");
            }
        }
    }
}

/// Most times a job re-reads a state that changed under it before it gives up.
const TRIES: usize = 3;

struct Person<'a> {
    env: &'a JourneyEnv,
    tenant: &'a Arc<Tenant>,
    recipient_id: &'a str,
    fence: Fence,
}

impl Person<'_> {
    fn store(&self) -> &dyn Store {
        &*self.env.store
    }

    async fn journeys(&self) -> Result<Vec<JourneyView>, Error> {
        super::book::all(&self.env.store, &self.tenant.id).await
    }

    async fn read(&self, journey_id: &str) -> Result<Option<JourneyPerson>, WalkError> {
        Ok(person::read(self.store(), &self.tenant.id, journey_id, self.recipient_id).await?)
    }

    async fn write(
        &self,
        before: Option<&JourneyPerson>,
        after: &JourneyPerson,
        funnel: Vec<(String, i64)>,
    ) -> Result<(), WalkError> {
        let written = person::write(
            self.store(),
            &self.tenant.id,
            self.fence,
            Transition {
                before,
                after,
                funnel,
            },
        )
        .await?;
        match written {
            Written::Applied => {
                if let Some(wait) = WaitMember::of(&self.tenant.id, after) {
                    self.env.waits.added(self.fence.partition, wait.due_unix_ms);
                }
                Ok(())
            }
            Written::Moved => Err(WalkError::Moved),
            Written::Fenced => Err(WalkError::Fenced),
        }
    }

    async fn event(
        &self,
        event: &str,
        properties: BTreeMap<String, String>,
    ) -> Result<ReportEventResponse, Error> {
        let journeys = self.journeys().await?;
        let mut answer = ReportEventResponse::default();
        for view in &journeys {
            let Some(spec) = &view.spec else { continue };
            let entry_event = spec.entry.as_ref().map_or("", |e| e.event.as_str());
            if view.state() == JourneyState::Active && entry_event == event {
                // Only the properties the definition declares travel with the person.
                let declared = spec.events.iter().find(|e| e.name == event);
                let kept: BTreeMap<String, String> = properties
                    .iter()
                    .filter(|(name, _)| declared.is_some_and(|e| e.properties.contains(name)))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if self.enter(view, spec, kept).await? {
                    answer.entered.push(view.journey_id.clone());
                }
            }
        }
        let signal = ExitSignal::Event(event.to_owned());
        answer.exited = self.exit_from(&journeys, &signal, None).await?;
        Ok(answer)
    }

    /// Enters the journey `journey_id` on its segment (when it is still active and entered by
    /// a segment); true when the person entered.
    async fn enter_segment(&self, journey_id: &str) -> Result<bool, WalkError> {
        let view = super::book::get(&self.env.store, &self.tenant.id, journey_id)
            .await
            .map_err(WalkError::Intake)?;
        let Some(spec) = &view.spec else {
            return Ok(false);
        };
        let by_segment = spec.entry.as_ref().is_some_and(|e| e.event.is_empty());
        if view.state() != JourneyState::Active || !by_segment {
            return Ok(false);
        }
        self.enter(&view, spec, BTreeMap::new()).await
    }

    /// Enters `view` when the rules allow; true when the person entered.
    async fn enter(
        &self,
        view: &JourneyView,
        spec: &JourneySpec,
        properties: BTreeMap<String, String>,
    ) -> Result<bool, WalkError> {
        for _ in 0..TRIES {
            let prior = self.read(&view.journey_id).await?;
            let now = self.env.clock.now_unix_ms();
            if !flow::may_enter(spec, prior.as_ref(), now) {
                return Ok(false);
            }
            let person = flow::entered(
                spec,
                &view.journey_id,
                self.recipient_id,
                prior.as_ref(),
                properties.clone(),
                now,
            );
            let mut counts = vec![
                (funnel::ENTERED.to_owned(), 1),
                (funnel::ACTIVE.to_owned(), 1),
                (funnel::reached(&person.step), 1),
            ];
            match self.walk(spec, prior.as_ref(), person, &mut counts).await {
                Ok(()) => return Ok(true),
                Err(WalkError::Moved) => continue,
                Err(error) => return Err(error),
            }
        }
        Err(WalkError::Moved)
    }

    /// Walks from `person`'s step until a wait or the end, then writes the result as one
    /// transition from `before`.
    async fn walk(
        &self,
        spec: &JourneySpec,
        before: Option<&JourneyPerson>,
        mut person: JourneyPerson,
        counts: &mut Vec<(String, i64)>,
    ) -> Result<(), WalkError> {
        let mut recipient: Option<Option<Recipient>> = None;
        // The due time of the wait this walk left, for the next send's record.
        let mut waited_until = 0;
        // A validated definition has no loop: every walk ends within its steps.
        for _ in 0..=spec.steps.len() {
            let now = self.env.clock.now_unix_ms();
            let step = person.step.clone();
            let next = match flow::action(spec, &step) {
                Action::Send(send) => {
                    let request = flow::message(spec, &step, send, &person);
                    match self.env.submit.submit(self.tenant, request).await {
                        Ok(sent) => {
                            counts.push((funnel::sent(&step), 1));
                            person.sent.push(JourneySent {
                                step: step.clone(),
                                message_id: sent.message_id,
                                refused: String::new(),
                                at_unix_ms: now,
                                waited_until_unix_ms: waited_until,
                            });
                        }
                        Err(error) if is_refusal(&error) => {
                            counts.push((funnel::refused(&step), 1));
                            person.sent.push(JourneySent {
                                step: step.clone(),
                                message_id: String::new(),
                                refused: error.to_string(),
                                at_unix_ms: now,
                                waited_until_unix_ms: waited_until,
                            });
                        }
                        Err(error) => return Err(WalkError::Intake(error)),
                    }
                    person.engaged.clear();
                    flow::next_after(spec, &step)
                }
                Action::Wait(wait) => {
                    if person.wait_due_unix_ms == 0 {
                        let zone = self.zone(&mut recipient).await?;
                        person.wait_due_unix_ms = flow::wait_due(wait, now, zone);
                        counts.push((funnel::IN_WAIT.to_owned(), 1));
                        counts.push((funnel::waiting(&step), 1));
                        break;
                    }
                    if now < person.wait_due_unix_ms {
                        break;
                    }
                    waited_until = person.wait_due_unix_ms;
                    person.wait_due_unix_ms = 0;
                    counts.push((funnel::IN_WAIT.to_owned(), -1));
                    counts.push((funnel::waiting(&step), -1));
                    flow::next_after(spec, &step)
                }
                Action::Branch {
                    conditions,
                    then,
                    otherwise,
                } => {
                    let holds = self
                        .branch_holds(conditions, &person, &mut recipient, now)
                        .await?;
                    flow::target(if holds { then } else { otherwise })
                }
                Action::Missing => None,
            };
            match next {
                Some(next) => {
                    counts.push((funnel::reached(&next), 1));
                    person.step = next;
                }
                None => {
                    person.status = JourneyPersonStatus::JourneyPersonCompleted as i32;
                    person.ended_at_unix_ms = now;
                    counts.push((funnel::COMPLETED.to_owned(), 1));
                    counts.push((funnel::ACTIVE.to_owned(), -1));
                    break;
                }
            }
        }
        self.write(before, &person, std::mem::take(counts)).await
    }

    async fn recipient<'r>(
        &self,
        cache: &'r mut Option<Option<Recipient>>,
    ) -> Result<Option<&'r Recipient>, WalkError> {
        if cache.is_none() {
            let found = self
                .store()
                .get_recipient(&self.tenant.id, self.recipient_id)
                .await?;
            *cache = Some(found);
        }
        Ok(cache.as_ref().and_then(Option::as_ref))
    }

    /// The zone the person's local times are read in (as quiet hours read them).
    async fn zone(
        &self,
        cache: &mut Option<Option<Recipient>>,
    ) -> Result<chrono_tz::Tz, WalkError> {
        let tenant_zone = self.tenant.time_zone;
        Ok(match self.recipient(cache).await? {
            Some(recipient) => crate::campaign::plan::zones_of(recipient, tenant_zone)
                .first()
                .copied()
                .unwrap_or(tenant_zone),
            None => tenant_zone,
        })
    }

    async fn branch_holds(
        &self,
        conditions: &[herald_proto::v1::SegmentCondition],
        person: &JourneyPerson,
        cache: &mut Option<Option<Recipient>>,
        now: i64,
    ) -> Result<bool, WalkError> {
        let (engagement, attributes): (Vec<_>, Vec<_>) = conditions
            .iter()
            .cloned()
            .partition(|c| c.field.trim().starts_with("engagement."));
        let mut seen_kinds: Vec<String> = person.engaged.clone();
        if !engagement.is_empty() {
            seen_kinds.extend(self.last_message_engagement(person).await?);
        }
        for condition in &engagement {
            let kind = condition.field.trim().trim_start_matches("engagement.");
            let seen = seen_kinds.iter().any(|e| e == kind);
            let wanted = condition.op() == herald_proto::v1::ConditionOp::Exists;
            if seen != wanted {
                return Ok(false);
            }
        }
        if attributes.is_empty() {
            return Ok(true);
        }
        let Ok(segment) = Segment::compile("", &attributes) else {
            // Checked at creation; a definition that no longer compiles takes the other way.
            return Ok(false);
        };
        Ok(match self.recipient(cache).await? {
            Some(recipient) => segment.matches(recipient, now),
            None => false,
        })
    }

    /// The engagement the log of the person's last message of this journey records (delivered
    /// inside the run, or by a receipt before the message ended).
    async fn last_message_engagement(
        &self,
        person: &JourneyPerson,
    ) -> Result<Vec<String>, WalkError> {
        use herald_proto::v1::EventKind;
        let Some(last) = person.sent.iter().rev().find(|s| !s.message_id.is_empty()) else {
            return Ok(Vec::new());
        };
        let id = herald_proto::MessageId(last.message_id.clone());
        let Some(record) = self.store().get_message(&self.tenant.id, &id).await? else {
            return Ok(Vec::new());
        };
        let delivered = flow::delivered(&record.events).then_some("delivered");
        Ok(record
            .events
            .iter()
            .filter_map(|event| match event.kind() {
                EventKind::EventRead => Some("read"),
                EventKind::EventClicked => Some("clicked"),
                EventKind::EventConverted => Some("converted"),
                EventKind::EventReplied => Some("replied"),
                _ => None,
            })
            .chain(delivered)
            .map(str::to_owned)
            .collect())
    }

    async fn wake(&self, member: &WaitMember) -> Result<(), WalkError> {
        let view =
            match super::book::get(&self.env.store, &self.tenant.id, &member.journey_id).await {
                Ok(view) => view,
                Err(Error::NotFound { .. }) => {
                    return Ok(person::drop_wait(self.store(), self.fence, member).await?);
                }
                Err(error) => return Err(WalkError::Intake(error)),
            };
        let Some(spec) = &view.spec else {
            return Ok(());
        };
        let Some(before) = self.read(&member.journey_id).await? else {
            return Ok(person::drop_wait(self.store(), self.fence, member).await?);
        };
        // Only the wait the state is in: a member left over by an earlier transition, or one
        // this wake already handled (it fired twice), changes nothing.
        if WaitMember::of(&self.tenant.id, &before).as_ref() != Some(member)
            || before.status() != JourneyPersonStatus::JourneyPersonActive
        {
            return Ok(person::drop_wait(self.store(), self.fence, member).await?);
        }
        match view.state() {
            JourneyState::Paused => {
                // Waits go on counting; steps do not run. Looked at again an hour later.
                let mut after = before.clone();
                after.wait_due_unix_ms = self.env.clock.now_unix_ms() + PAUSED_RECHECK_MS;
                return self.write(Some(&before), &after, Vec::new()).await;
            }
            JourneyState::Archived => {
                return self.end(&before, "archived").await;
            }
            _ => {}
        }
        self.walk(spec, Some(&before), before.clone(), &mut Vec::new())
            .await
    }

    /// Ends every active journey of the person that `signal` exits (only `only` when given);
    /// answers the ids of those it ended.
    async fn exit(&self, signal: &ExitSignal, only: Option<&str>) -> Result<Vec<String>, Error> {
        let journeys = self.journeys().await?;
        self.exit_from(&journeys, signal, only).await
    }

    /// [`Person::exit`] over definitions already read (a reported event reads them once for
    /// its entries and its exits).
    async fn exit_from(
        &self,
        journeys: &[JourneyView],
        signal: &ExitSignal,
        only: Option<&str>,
    ) -> Result<Vec<String>, Error> {
        let mut ended = Vec::new();
        for view in journeys {
            if only.is_some_and(|id| id != view.journey_id) {
                continue;
            }
            let Some(spec) = &view.spec else { continue };
            let Some(reason) = flow::exit_reason(spec, signal) else {
                continue;
            };
            for _ in 0..TRIES {
                let Some(before) = self.read(&view.journey_id).await? else {
                    break;
                };
                if before.status() != JourneyPersonStatus::JourneyPersonActive {
                    if *signal == ExitSignal::Erased && !before.properties.is_empty() {
                        // An ended journey keeps no personal data of an erased person either.
                        let mut after = before.clone();
                        after.properties.clear();
                        match self.write(Some(&before), &after, Vec::new()).await {
                            Err(WalkError::Moved) => continue,
                            Err(error) => return Err(error.into()),
                            Ok(()) => {}
                        }
                    }
                    break;
                }
                match self.end(&before, &reason).await {
                    Ok(()) => {
                        ended.push(view.journey_id.clone());
                        break;
                    }
                    Err(WalkError::Moved) => continue,
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(ended)
    }

    /// Ends an active journey with `reason`, taking its wait out of the wait set.
    async fn end(&self, before: &JourneyPerson, reason: &str) -> Result<(), WalkError> {
        let mut after = before.clone();
        let (kind, event) = flow::exit_kind(reason);
        after.status = JourneyPersonStatus::JourneyPersonExited as i32;
        after.exit_kind = kind as i32;
        after.exit_event = event;
        after.ended_at_unix_ms = self.env.clock.now_unix_ms();
        if reason == "erased" {
            // The entry event's properties may be personal data.
            after.properties.clear();
        }
        let mut counts = vec![
            (funnel::exited(reason), 1),
            (funnel::ACTIVE.to_owned(), -1),
            (funnel::exited_at(&before.step), 1),
        ];
        if before.wait_due_unix_ms > 0 {
            after.wait_due_unix_ms = 0;
            counts.push((funnel::IN_WAIT.to_owned(), -1));
            counts.push((funnel::waiting(&before.step), -1));
        }
        self.write(Some(before), &after, counts).await
    }

    /// Counts engagement on a journey's message for its step (conversions: for the last step
    /// the person received), keeps it for `engagement.<kind>` branches, and ends the journey
    /// when its exits say so.
    async fn engaged(
        &self,
        journey_id: &str,
        step: &str,
        kind: EngagementKind,
    ) -> Result<(), Error> {
        let name = match kind {
            EngagementKind::EngagementDelivered => "delivered",
            EngagementKind::EngagementRead => "read",
            EngagementKind::EngagementClicked => "clicked",
            EngagementKind::EngagementConverted => "converted",
            EngagementKind::EngagementReplied => "replied",
            _ => return Ok(()),
        };
        for _ in 0..TRIES {
            let Some(before) = self.read(journey_id).await? else {
                return Ok(());
            };
            let last = before.sent.last().map(|s| s.step.clone());
            // Deliveries are counted with the event that records them (`flow::message_tally`).
            let counter = match kind {
                EngagementKind::EngagementClicked => Some(funnel::clicked(step)),
                EngagementKind::EngagementConverted => {
                    Some(funnel::converted(last.as_deref().unwrap_or(step)))
                }
                _ => None,
            };
            let mut after = before.clone();
            if last.as_deref() == Some(step) && !after.engaged.iter().any(|e| e == name) {
                after.engaged.push(name.to_owned());
            }
            match self
                .write(
                    Some(&before),
                    &after,
                    counter.into_iter().map(|c| (c, 1)).collect(),
                )
                .await
            {
                Ok(()) => break,
                Err(WalkError::Moved) => continue,
                Err(error) => return Err(error.into()),
            }
        }
        let signal = match kind {
            EngagementKind::EngagementConverted => ExitSignal::Converted,
            EngagementKind::EngagementClicked => ExitSignal::Clicked,
            _ => return Ok(()),
        };
        self.exit(&signal, Some(journey_id)).await.map(|_| ())
    }
}

/// How long a due wait of a paused journey waits before it is looked at again (policy clock).
const PAUSED_RECHECK_MS: i64 = 3_600_000;

/// A refusal of the message itself (it would be refused again): recorded, and the walk goes
/// on. Anything else (the owner unreachable, the store failing) stops the walk to be retried.
fn is_refusal(error: &Error) -> bool {
    matches!(
        error,
        Error::InvalidArgument { .. }
            | Error::IdempotencyConflict { .. }
            | Error::FailedPrecondition(_)
    )
}
