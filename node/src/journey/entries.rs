//! # journey::entries: journeys entered by matching a segment, evaluated on a schedule
//!
//! Owns evaluating the segment entries of active journeys over the partitions this node serves:
//! every `every_s` of the policy clock, a round walks the partition's recipient index
//! (`precip:<tenant>:<partition>`) page by page, reads the page's recipients (and their last
//! engagement when the segment asks), and hands each match to the person's actor, which enters
//! them if the re-entry rules allow ([`super::walker::JobKind::Enter`]). A round's progress is a
//! checkpoint per journey and partition (`<due ms>|<cursor>`), written after each page fenced by
//! the partition and checked against the one read: a round resumes on a new owner where it
//! stopped, and a person entered twice by a repeated page is no harm (an active person is never
//! entered again).
//!
//! Must never enter anyone itself (only the person's actor changes their state), and never keep
//! a round's progress only in memory.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use herald_proto::TenantId;
use herald_proto::clock::SharedClock;
use herald_proto::v1::{JourneyState, JourneyView};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome, keys};
use tokio::sync::{oneshot, watch};
use tracing::{debug, warn};

use crate::campaign::plan::Segment;
use crate::ownership::Ownership;

/// Where a match goes: the person's actor (the intake, in production). `done` answers
/// whether they entered.
pub trait EnterSink: Send + Sync {
    fn enter(
        &self,
        tenant: &TenantId,
        fence: Fence,
        recipient_id: String,
        journey_id: String,
        done: oneshot::Sender<bool>,
    );
}

/// How rounds run.
#[derive(Clone, Copy, Debug)]
pub struct EntrySettings {
    /// How often the runner looks for due rounds (real time).
    pub tick: Duration,
    /// Recipients read per page.
    pub page: usize,
    /// How long a page waits for its entries before it is tried again.
    pub page_timeout: Duration,
}

impl Default for EntrySettings {
    fn default() -> Self {
        EntrySettings {
            tick: Duration::from_secs(1),
            page: 200,
            page_timeout: Duration::from_secs(30),
        }
    }
}

pub struct SegmentEntries {
    store: Arc<dyn Store>,
    /// The policy clock: rounds are due on it.
    clock: SharedClock,
    ownership: Arc<Ownership>,
    sink: Arc<dyn EnterSink>,
    settings: EntrySettings,
    /// When each (journey, partition)'s next round is due, as last read or written here: a
    /// partition is not read again before then. The checkpoint stays the truth (a due time
    /// only grows, so a stale one here only costs a read).
    known_due: parking_lot::Mutex<HashMap<(String, u32), i64>>,
}

/// A round's checkpoint: when the round is (or was) due, and the last recipient id it handled
/// (empty: the round has not started).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Progress {
    due_unix_ms: i64,
    cursor: String,
}

impl Progress {
    fn encode(&self) -> Vec<u8> {
        format!("{}|{}", self.due_unix_ms, self.cursor).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Progress> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (due, cursor) = text.split_once('|')?;
        Some(Progress {
            due_unix_ms: due.parse().ok()?,
            cursor: cursor.to_owned(),
        })
    }
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
enum RoundError {
    #[error("store: {0}")]
    Store(#[from] herald_store::Error),
    #[error("the checkpoint moved (another owner, or a lost race)")]
    Moved,
    #[error("entries of a page were not answered in time")]
    Unanswered,
}

impl SegmentEntries {
    pub fn new(
        store: Arc<dyn Store>,
        clock: SharedClock,
        ownership: Arc<Ownership>,
        sink: Arc<dyn EnterSink>,
        settings: EntrySettings,
    ) -> SegmentEntries {
        SegmentEntries {
            store,
            clock,
            ownership,
            sink,
            settings,
            known_due: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    /// Runs rounds until shutdown.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut ticker = tokio::time::interval(self.settings.tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.changed() => return,
            }
            if *shutdown.borrow() {
                return;
            }
            if let Err(error) = self.look().await {
                warn!(%error, "segment entries: reading the journeys failed");
            }
        }
    }

    /// One look at every segment-entered journey and served partition.
    async fn look(&self) -> Result<(), herald_proto::error::Error> {
        let mut after: Option<String> = None;
        loop {
            let tenants = self
                .store
                .members_after(&keys::journey::tenants(), after.as_deref(), 1_000)
                .await
                .map_err(|e| herald_proto::error::Error::Unavailable(e.to_string()))?;
            for tenant in &tenants {
                let tenant = TenantId(tenant.clone());
                for view in super::book::all(&self.store, &tenant).await? {
                    if let Some(segment) = segment_entry(&view) {
                        self.journey(&tenant, &view, &segment).await;
                    }
                }
            }
            if tenants.len() < 1_000 {
                return Ok(());
            }
            after = tenants.last().cloned();
        }
    }

    async fn journey(&self, tenant: &TenantId, view: &JourneyView, segment: &(Segment, i64)) {
        let now = self.clock.now_unix_ms();
        for fence in self.ownership.served() {
            let known = (view.journey_id.clone(), fence.partition.0);
            if self
                .known_due
                .lock()
                .get(&known)
                .is_some_and(|due| now < *due)
            {
                continue;
            }
            if let Err(error) = self.round(tenant, view, segment, fence).await {
                debug!(partition = %fence.partition, %error, "segment entry round stopped; resumed at the next look");
            }
        }
    }

    /// Runs the partition's round of `view` when it is due, page by page, to its end.
    async fn round(
        &self,
        tenant: &TenantId,
        view: &JourneyView,
        (segment, every_ms): &(Segment, i64),
        fence: Fence,
    ) -> Result<(), RoundError> {
        let key = keys::journey::entry_rounds(tenant, &view.journey_id);
        let field = fence.partition.0.to_string();
        let stored = self
            .store
            .some_fields(&key, std::slice::from_ref(&field))
            .await?
            .into_iter()
            .next()
            .flatten();
        let mut progress = stored
            .as_deref()
            .and_then(Progress::decode)
            .unwrap_or(Progress {
                due_unix_ms: i64::MIN,
                cursor: String::new(),
            });
        let mut expected = stored;
        let now = self.clock.now_unix_ms();
        if progress.due_unix_ms == i64::MIN {
            progress.due_unix_ms = now;
        }
        if now < progress.due_unix_ms {
            self.remember(view, fence, progress.due_unix_ms);
            return Ok(());
        }
        let index = keys::value::partition_recipients(tenant, fence.partition.0);
        loop {
            let cursor = (!progress.cursor.is_empty()).then_some(progress.cursor.as_str());
            let ids = self
                .store
                .members_after(&index, cursor, self.settings.page)
                .await?;
            self.enter_matches(tenant, view, segment, fence, &ids)
                .await?;
            let next = match ids.last() {
                Some(last) if ids.len() == self.settings.page => Progress {
                    due_unix_ms: progress.due_unix_ms,
                    cursor: last.clone(),
                },
                // The round ended: the next one is due `every` after this one was (or from
                // now, when the rounds fell behind).
                _ => {
                    let due = progress.due_unix_ms.saturating_add(*every_ms);
                    Progress {
                        due_unix_ms: if due <= now {
                            now.saturating_add(*every_ms)
                        } else {
                            due
                        },
                        cursor: String::new(),
                    }
                }
            };
            let written = next.encode();
            self.checkpoint(&key, &field, fence, expected.as_deref(), written.clone())
                .await?;
            let ended = next.cursor.is_empty();
            expected = Some(written);
            progress = next;
            if ended {
                self.remember(view, fence, progress.due_unix_ms);
                return Ok(());
            }
        }
    }

    fn remember(&self, view: &JourneyView, fence: Fence, due_unix_ms: i64) {
        self.known_due
            .lock()
            .insert((view.journey_id.clone(), fence.partition.0), due_unix_ms);
    }

    async fn enter_matches(
        &self,
        tenant: &TenantId,
        view: &JourneyView,
        segment: &Segment,
        fence: Fence,
        ids: &[String],
    ) -> Result<(), RoundError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut recipients = self.store.get_recipients(tenant, ids).await?;
        if segment.uses_engagement() {
            crate::campaign::estimate::fill_engagement(&*self.store, tenant, &mut recipients)
                .await?;
        }
        let now = self.clock.now_unix_ms();
        let mut answers = Vec::new();
        for recipient in recipients.into_iter().flatten() {
            if segment.matches(&recipient, now) {
                let (done, answer) = oneshot::channel();
                self.sink
                    .enter(tenant, fence, recipient.id, view.journey_id.clone(), done);
                answers.push(answer);
            }
        }
        let all = futures::future::join_all(answers);
        match tokio::time::timeout(self.settings.page_timeout, all).await {
            Ok(results) if results.iter().all(Result::is_ok) => Ok(()),
            _ => Err(RoundError::Unanswered),
        }
    }

    async fn checkpoint(
        &self,
        key: &str,
        field: &str,
        fence: Fence,
        expected: Option<&[u8]>,
        value: Vec<u8>,
    ) -> Result<(), RoundError> {
        let check = match expected {
            Some(bytes) => Check::FieldIs {
                key: key.to_owned(),
                field: field.to_owned(),
                value: bytes.to_vec(),
            },
            None => Check::Missing {
                key: key.to_owned(),
                field: field.to_owned(),
            },
        };
        let outcomes = self
            .store
            .write(vec![
                FencedOp {
                    fence,
                    op: WriteOp::Require { check, guards: 1 },
                },
                FencedOp {
                    fence,
                    op: WriteOp::SetFields {
                        key: key.to_owned(),
                        fields: vec![(field.to_owned(), value)],
                    },
                },
            ])
            .await?;
        match outcomes.first() {
            Some(WriteOutcome::Done) => Ok(()),
            _ => Err(RoundError::Moved),
        }
    }
}

/// The compiled segment and period of an active journey entered by a segment.
fn segment_entry(view: &JourneyView) -> Option<(Segment, i64)> {
    if view.state() != JourneyState::Active {
        return None;
    }
    let entry = view.spec.as_ref()?.entry.as_ref()?;
    if !entry.event.is_empty() || entry.segment.is_empty() {
        return None;
    }
    let segment = Segment::compile("", &entry.segment).ok()?;
    let every_ms = i64::try_from(entry.every_s.max(1))
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000);
    Some((segment, every_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_round_trips() {
        let progress = Progress {
            due_unix_ms: 1_767_614_400_000,
            cursor: "r|with|bars".into(),
        };
        assert_eq!(Progress::decode(&progress.encode()), Some(progress));
        assert_eq!(Progress::decode(b"nonsense"), None);
    }
}
