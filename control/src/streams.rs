//! # streams: what a leadership term streams to its callers
//!
//! Owns WatchTable and WatchCampaigns: one [`TermWatch`] each, bound to the term that made it
//! (it ends with `UNAVAILABLE not_leader{..}` the moment the term does, and no value goes out
//! after a step-down), capped by the replica's watcher permits. Must never decide anything:
//! the term publishes, the stream forwards.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use herald_proto::v1::PartitionTable;
use tokio::sync::{OwnedSemaphorePermit, watch};

use crate::Error;
use crate::leader::{Controller, MAX_WATCHERS, Role, Term};

impl Controller {
    /// The current table now, then every newer one (intermediate ones may be skipped: only the
    /// newest matters). Ends with `UNAVAILABLE not_leader{..}` when this term ends.
    pub(crate) fn watch_tables(&self, term: Arc<Term>) -> Result<TableStream, Error> {
        let permit =
            self.watchers
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::TooManyWatchers {
                    limit: MAX_WATCHERS,
                })?;
        let mut tables = term.tables.subscribe();
        // The first `changed()` then yields the current table at once.
        tables.mark_changed();
        let watch = TermWatch {
            source: tables,
            roles: self.role.subscribe(),
            term,
            project: Box::new(|table: &Arc<PartitionTable>| Some((**table).clone())),
            on_end: None,
            done: false,
            _permit: permit,
        };
        Ok(Box::pin(futures::stream::unfold(watch, TermWatch::next)))
    }
}

pub(crate) type TableStream =
    Pin<Box<dyn Stream<Item = Result<PartitionTable, tonic::Status>> + Send>>;

pub(crate) type CampaignStream = Pin<
    Box<dyn Stream<Item = Result<herald_proto::v1::CampaignAssignments, tonic::Status>> + Send>,
>;

impl Controller {
    /// `node`'s campaign assignments now, then whenever they change; ends with `UNAVAILABLE
    /// not_leader{..}` when this term ends.
    pub(crate) fn watch_campaigns(
        &self,
        term: Arc<Term>,
        node: String,
    ) -> Result<CampaignStream, Error> {
        let permit =
            self.watchers
                .clone()
                .try_acquire_owned()
                .map_err(|_| Error::TooManyWatchers {
                    limit: MAX_WATCHERS,
                })?;
        let mut published = self.campaigns.subscribe();
        published.mark_changed();
        let desk = self.campaigns.clone();
        let gone = node.clone();
        let mut last: Option<herald_proto::v1::CampaignAssignments> = None;
        let watch = TermWatch {
            source: published,
            roles: self.role.subscribe(),
            term,
            // Only what changed for this node.
            project: Box::new(move |published: &Arc<crate::campaigns::Published>| {
                let next = published.for_node(&node);
                if last.as_ref() == Some(&next) {
                    return None;
                }
                last = Some(next.clone());
                Some(next)
            }),
            // A killed node's connection closes at once: its share of every pace moves now.
            on_end: Some(Box::new(move || desk.node_gone(&gone))),
            done: false,
            _permit: permit,
        };
        Ok(Box::pin(futures::stream::unfold(watch, TermWatch::next)))
    }
}

/// What a [`TermWatch`] sends of each new value (`None` = nothing new for its caller).
type Projection<S, T> = Box<dyn FnMut(&S) -> Option<T> + Send>;

/// One stream of what a leadership term publishes (WatchTable, WatchCampaigns): each new value
/// of `source` as `project` maps it (`None` = nothing new for this caller), until the term
/// ends, then `UNAVAILABLE not_leader{..}`.
struct TermWatch<S, T> {
    source: watch::Receiver<S>,
    roles: watch::Receiver<Role>,
    term: Arc<Term>,
    project: Projection<S, T>,
    /// Run when the stream is dropped (the caller went away, or the term ended).
    on_end: Option<Box<dyn FnOnce() + Send>>,
    done: bool,
    /// Held for the stream's life: caps concurrent watchers.
    _permit: OwnedSemaphorePermit,
}

impl<S, T> Drop for TermWatch<S, T> {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            on_end();
        }
    }
}

impl<S: Send + Sync + 'static, T: Send + 'static> TermWatch<S, T> {
    async fn next(mut self) -> Option<(Result<T, tonic::Status>, Self)> {
        if self.done {
            return None;
        }
        loop {
            tokio::select! {
                // Leadership first: after a step-down not one more value goes out.
                biased;
                changed = self.roles.changed() => {
                    if changed.is_ok() && self.still_leading() {
                        continue;
                    }
                }
                changed = self.source.changed() => {
                    if changed.is_ok() && self.still_leading() {
                        let projected = (self.project)(&self.source.borrow_and_update());
                        match projected {
                            Some(value) => return Some((Ok(value), self)),
                            None => continue,
                        }
                    }
                }
            }
            self.done = true;
            let leader = match &*self.roles.borrow() {
                Role::Follower { leader } => leader.clone(),
                _ => None,
            };
            return Some((Err(Error::NotLeader { leader }.into()), self));
        }
    }

    fn still_leading(&self) -> bool {
        matches!(&*self.roles.borrow(), Role::Leader(term) if term.number == self.term.number)
            && self.term.holds_lease()
    }
}
