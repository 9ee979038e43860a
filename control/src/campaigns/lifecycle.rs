//! What a command or the passing of time does to a campaign's lifecycle (pure).
//!
//! Owns the state machine DRAFT → SCHEDULED/RUNNING ⇄ PAUSED → COMPLETED | CANCELLED: which
//! command is allowed in which state, the reason each state carries, and the running time
//! that "spread over" paces by. Must never do I/O or read a clock: `now` is an input.

use herald_proto::error::Error as Invalid;
use herald_proto::v1::{CampaignLife, CampaignSpec, CampaignState};
use herald_store::campaign::Run;

/// Why a campaign is paused when its slices found the balance used up.
pub const CREDITS_EXHAUSTED: &str = "credits_exhausted";
/// Why a campaign is paused when a client paused it.
pub const PAUSED_BY_API: &str = "paused";
/// Why a campaign completed with members expired.
pub const END_BY: &str = "end_by";

/// A command a node forwards for a tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    Start,
    Pause,
    Resume,
    Cancel,
}

impl Command {
    fn verb(self) -> &'static str {
        match self {
            Command::Start => "started",
            Command::Pause => "paused",
            Command::Resume => "resumed",
            Command::Cancel => "cancelled",
        }
    }
}

/// The run token of a state.
pub fn run_of(state: CampaignState) -> Run {
    match state {
        CampaignState::Scheduled => Run::Scheduled,
        CampaignState::Running => Run::Running,
        CampaignState::Paused => Run::Paused,
        CampaignState::Completed => Run::Completed,
        CampaignState::Cancelled => Run::Cancelled,
        CampaignState::Draft | CampaignState::Unspecified => Run::Draft,
    }
}

pub fn is_ended(state: CampaignState) -> bool {
    matches!(state, CampaignState::Completed | CampaignState::Cancelled)
}

fn name(state: CampaignState) -> &'static str {
    match state {
        CampaignState::Draft => "a draft",
        CampaignState::Scheduled => "scheduled",
        CampaignState::Running => "running",
        CampaignState::Paused => "paused",
        CampaignState::Completed => "completed",
        CampaignState::Cancelled => "cancelled",
        CampaignState::Unspecified => "in no state",
    }
}

/// Stops the running clock of `life` at `now`.
fn stop_running(life: &mut CampaignLife, now_ms: i64) {
    if life.running_since_unix_ms > 0 {
        life.ran_ms += (now_ms - life.running_since_unix_ms).max(0);
        life.running_since_unix_ms = 0;
    }
}

/// Enters RUNNING or SCHEDULED (by the start time) at `now`.
fn go(life: &mut CampaignLife, spec: &CampaignSpec, now_ms: i64) {
    let start_at = spec.schedule.as_ref().map_or(0, |s| s.start_at_unix_ms);
    if start_at > now_ms {
        life.state = CampaignState::Scheduled as i32;
        life.reason = String::new();
    } else {
        life.state = CampaignState::Running as i32;
        life.reason = String::new();
        life.running_since_unix_ms = now_ms;
    }
}

/// The lifecycle after `command` at `now`, or why it is not allowed (FAILED_PRECONDITION
/// naming `campaign_id`). `None` = nothing changes (pausing a paused campaign).
pub fn apply(
    life: &CampaignLife,
    spec: &CampaignSpec,
    command: Command,
    now_ms: i64,
) -> Result<Option<CampaignLife>, Invalid> {
    let state = life.state();
    let refuse = || {
        Invalid::FailedPrecondition(format!(
            "campaign_id: the campaign is {}; it cannot be {}",
            name(state),
            command.verb()
        ))
    };
    let mut next = life.clone();
    match (command, state) {
        (_, CampaignState::Completed | CampaignState::Cancelled) => return Err(refuse()),
        (Command::Start, CampaignState::Draft) => {
            next.started_unix_ms = now_ms;
            go(&mut next, spec, now_ms);
        }
        (Command::Start, _) => return Err(refuse()),
        (Command::Pause, CampaignState::Running | CampaignState::Scheduled) => {
            stop_running(&mut next, now_ms);
            next.state = CampaignState::Paused as i32;
            next.reason = PAUSED_BY_API.to_owned();
        }
        (Command::Pause, CampaignState::Paused) => return Ok(None),
        (Command::Pause, _) => return Err(refuse()),
        (Command::Resume, CampaignState::Paused) => go(&mut next, spec, now_ms),
        (Command::Resume, CampaignState::Running | CampaignState::Scheduled) => return Ok(None),
        (Command::Resume, _) => return Err(refuse()),
        (Command::Cancel, _) => {
            stop_running(&mut next, now_ms);
            next.state = CampaignState::Cancelled as i32;
            next.reason = String::new();
            next.ended_unix_ms = now_ms;
        }
    }
    Ok(Some(next))
}

/// What time alone does: a scheduled campaign whose start time came runs.
pub fn tick(life: &CampaignLife, spec: &CampaignSpec, now_ms: i64) -> Option<CampaignLife> {
    if life.state() != CampaignState::Scheduled {
        return None;
    }
    let start_at = spec.schedule.as_ref().map_or(0, |s| s.start_at_unix_ms);
    if now_ms < start_at {
        return None;
    }
    let mut next = life.clone();
    next.state = CampaignState::Running as i32;
    next.running_since_unix_ms = now_ms;
    Some(next)
}

/// A running campaign whose every slice is planned and processed completed.
pub fn complete(life: &CampaignLife, expired: u64, now_ms: i64) -> CampaignLife {
    let mut next = life.clone();
    stop_running(&mut next, now_ms);
    next.state = CampaignState::Completed as i32;
    next.reason = if expired > 0 {
        END_BY.to_owned()
    } else {
        String::new()
    };
    next.ended_unix_ms = now_ms;
    next
}

/// A running campaign whose slices found the balance used up pauses.
pub fn exhausted(life: &CampaignLife, now_ms: i64) -> CampaignLife {
    let mut next = life.clone();
    stop_running(&mut next, now_ms);
    next.state = CampaignState::Paused as i32;
    next.reason = CREDITS_EXHAUSTED.to_owned();
    next
}

/// How long the campaign has been running (ms), at `now`.
pub fn running_ms(life: &CampaignLife, now_ms: i64) -> i64 {
    let current = if life.running_since_unix_ms > 0 {
        (now_ms - life.running_since_unix_ms).max(0)
    } else {
        0
    };
    life.ran_ms + current
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::v1::Schedule;

    fn life(state: CampaignState) -> CampaignLife {
        CampaignLife {
            state: state as i32,
            ..Default::default()
        }
    }

    fn spec(start_at: i64) -> CampaignSpec {
        CampaignSpec {
            schedule: Some(Schedule {
                start_at_unix_ms: start_at,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn start_runs_now_or_waits_for_its_time() {
        let now = 1_000;
        let started = apply(&life(CampaignState::Draft), &spec(0), Command::Start, now)
            .expect("allowed")
            .expect("changed");
        assert_eq!(started.state(), CampaignState::Running);
        assert_eq!(started.running_since_unix_ms, now);
        let later = apply(
            &life(CampaignState::Draft),
            &spec(5_000),
            Command::Start,
            now,
        )
        .expect("allowed")
        .expect("changed");
        assert_eq!(later.state(), CampaignState::Scheduled);
        assert!(tick(&later, &spec(5_000), 4_999).is_none());
        let running = tick(&later, &spec(5_000), 5_000).expect("its time came");
        assert_eq!(running.state(), CampaignState::Running);
    }

    #[test]
    fn every_command_on_an_ended_campaign_is_refused() {
        for state in [CampaignState::Completed, CampaignState::Cancelled] {
            for command in [
                Command::Start,
                Command::Pause,
                Command::Resume,
                Command::Cancel,
            ] {
                let error = apply(&life(state), &spec(0), command, 1).expect_err("refused");
                assert!(
                    matches!(&error, Invalid::FailedPrecondition(m) if m.starts_with("campaign_id:")),
                    "{error:?}"
                );
            }
        }
    }

    #[test]
    fn pause_resume_keep_the_running_time() {
        let running = apply(&life(CampaignState::Draft), &spec(0), Command::Start, 1_000)
            .expect("allowed")
            .expect("changed");
        let paused = apply(&running, &spec(0), Command::Pause, 4_000)
            .expect("allowed")
            .expect("changed");
        assert_eq!(paused.state(), CampaignState::Paused);
        assert_eq!(paused.reason, PAUSED_BY_API);
        assert_eq!(running_ms(&paused, 9_000), 3_000);
        // Pausing again changes nothing; resuming counts from the resume.
        assert!(
            apply(&paused, &spec(0), Command::Pause, 5_000)
                .expect("allowed")
                .is_none()
        );
        let resumed = apply(&paused, &spec(0), Command::Resume, 10_000)
            .expect("allowed")
            .expect("changed");
        assert_eq!(running_ms(&resumed, 12_000), 5_000);
        // A draft cannot be paused or resumed; a running one cannot start again.
        assert!(apply(&life(CampaignState::Draft), &spec(0), Command::Pause, 1).is_err());
        assert!(apply(&life(CampaignState::Draft), &spec(0), Command::Resume, 1).is_err());
        assert!(apply(&resumed, &spec(0), Command::Start, 1).is_err());
    }

    #[test]
    fn exhaustion_and_completion_say_why() {
        let running = life(CampaignState::Running);
        let paused = exhausted(&running, 5);
        assert_eq!(paused.state(), CampaignState::Paused);
        assert_eq!(paused.reason, CREDITS_EXHAUSTED);
        assert_eq!(complete(&running, 3, 9).reason, END_BY);
        assert_eq!(complete(&running, 0, 9).reason, "");
        let cancelled = apply(&paused, &spec(0), Command::Cancel, 10)
            .expect("allowed")
            .expect("changed");
        assert_eq!(cancelled.state(), CampaignState::Cancelled);
        assert_eq!(run_of(cancelled.state()), Run::Cancelled);
    }
}
