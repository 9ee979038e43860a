//! # ChannelActor: one per channel key, on the owner of the key's partition
//!
//! Owns, for its key (a provider account, `account@tenant`, or `campaign:<tenant>:<id>`), the
//! cluster-wide state of the design's ChannelActor: the rate-limit [`Schedule`] it lends slots
//! of, the unique-recipients [`Tier`] and the warm-up day's count, the sender's (or campaign's)
//! block-rate [`Breaker`], and the account's [`ClusterCircuit`]. Each handler is a pure step on
//! that state; the actor only serialises them (no locks), reads the injected clock, and counts.
//!
//! It is spawned by the registry on demand, only while this node holds the partition's fence,
//! and stopped when the partition is lost: its state is in memory only, and a new owner starts
//! afresh (its schedule one horizon after its start). Must never do I/O in a handler: callers
//! on the send path wait for its answers.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use herald_proto::clock::SharedClock;
use herald_proto::v1::{BreakerReport, ReportReply};
use herald_store::Fence;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::time::Instant;
use tracing::warn;

use super::breaker::Breaker;
use super::circuit::{CircuitEvent, ClusterCircuit};
use super::config::KeyRules;
use super::schedule::{Grant, SLOTS_PER_CALL_MAX, Schedule};
use super::stats::ChannelStats;
use super::tier::{Admission, Tier};
use super::warmup::WarmupCounter;

pub struct ChannelActor;

pub struct ChannelArgs {
    pub key: String,
    pub rules: KeyRules,
    /// The fence under which the actor was spawned (its schedule's epoch).
    pub fence: Fence,
    pub clock: SharedClock,
    pub stats: Arc<ChannelStats>,
}

/// The requests a ChannelActor answers (request/reply, as ractor's `call_t!`).
pub enum ChannelMsg {
    /// Up to `count` send slots, asked under `fence` (the owner's proof and epoch).
    Slots(u32, Fence, RpcReplyPort<Grant>),
    /// May the account message this recipient key within its tier?
    Tier(String, RpcReplyPort<Admission>),
    /// One more send within today's warm-up quota?
    Warmup(RpcReplyPort<Admission>),
    /// Counts (or a resume) for the key's breaker, and the reporting node's circuit change.
    Report(BreakerReport, RpcReplyPort<ReportReply>),
}

pub struct ChannelState {
    key: String,
    schedule: Option<Schedule>,
    tier: Option<Tier>,
    warmup: Option<WarmupCounter>,
    breaker: Breaker,
    circuit: ClusterCircuit,
    clock: SharedClock,
    stats: Arc<ChannelStats>,
}

impl ChannelState {
    pub fn new(args: ChannelArgs, now: Instant) -> Self {
        let epoch = args.fence.epoch;
        Self {
            schedule: args.rules.rate.map(|rate| Schedule::new(rate, epoch, now)),
            tier: args.rules.tier.map(Tier::new),
            warmup: args.rules.warmup.map(WarmupCounter::new),
            breaker: Breaker::new(args.rules.thresholds),
            circuit: ClusterCircuit::default(),
            key: args.key,
            clock: args.clock,
            stats: args.stats,
        }
    }

    pub fn slots(&mut self, count: u32, fence: Fence, now: Instant) -> Grant {
        let grant = match &mut self.schedule {
            Some(schedule) => schedule.grant(count, fence.epoch, now),
            // Not limited: every slot is now.
            None => Grant {
                delays_us: vec![0; count.min(SLOTS_PER_CALL_MAX) as usize],
                retry_after_us: 0,
            },
        };
        self.stats
            .slots_granted
            .fetch_add(grant.delays_us.len() as u64, Ordering::Relaxed);
        grant
    }

    pub fn admit_tier(&mut self, recipient: &str) -> Admission {
        let now = self.clock.now_unix_ms();
        match &mut self.tier {
            Some(tier) => tier.admit(recipient, now),
            None => Admission::default(),
        }
    }

    pub fn admit_warmup(&mut self) -> Admission {
        let now = self.clock.now_unix_ms();
        match &mut self.warmup {
            Some(warmup) => warmup.admit(now),
            None => Admission::default(),
        }
    }

    pub fn report(&mut self, report: &BreakerReport) -> ReportReply {
        let now = self.clock.now_unix_ms();
        let event = if report.circuit_open_until_unix_ms > 0 {
            Some(CircuitEvent::Opened {
                until_unix_ms: report.circuit_open_until_unix_ms,
            })
        } else if report.circuit_recovered {
            Some(CircuitEvent::Recovered)
        } else {
            None
        };
        self.circuit.apply(event);
        let applied = self.breaker.apply(report, now);
        if applied.resumed {
            warn!(key = %report.key, "block-rate breaker resumed");
        }
        if applied.paused_now {
            self.stats.pauses.fetch_add(1, Ordering::Relaxed);
            warn!(
                key = %report.key,
                ratio = applied.status.ratio,
                sample = applied.status.sample,
                "block-rate breaker paused"
            );
        }
        ReportReply {
            breaker: Some(applied.status),
            circuit_open_until_unix_ms: self.circuit.open_until(now),
        }
    }
}

impl Actor for ChannelActor {
    type Msg = ChannelMsg;
    type State = ChannelState;
    type Arguments = ChannelArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ChannelArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(ChannelState::new(args, Instant::now()))
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        message: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // A caller that gave up closed its port: nothing to answer, nothing to undo (a slot
        // it does not take is simply never used).
        match message {
            ChannelMsg::Slots(count, fence, reply) => {
                let _ = reply.send(state.slots(count, fence, Instant::now()));
            }
            ChannelMsg::Tier(recipient, reply) => {
                let _ = reply.send(state.admit_tier(&recipient));
            }
            ChannelMsg::Warmup(reply) => {
                let _ = reply.send(state.admit_warmup());
            }
            ChannelMsg::Report(report, reply) => {
                let _ = reply.send(state.report(&report));
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        tracing::debug!(key = %state.key, "channel actor stopped");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_proto::clock::ManualClock;
    use herald_proto::v1::Channel;
    use herald_proto::{Epoch, PartitionId};
    use std::collections::BTreeMap;
    use std::time::Duration;

    fn fence(epoch: u64) -> Fence {
        Fence {
            partition: PartitionId(3),
            epoch: Epoch(epoch),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_actor_answers_slots_admissions_and_reports() {
        let clock = ManualClock::new(1_700_000_000_000);
        let stats = Arc::new(ChannelStats::default());
        let args = ChannelArgs {
            key: "sms".into(),
            rules: KeyRules {
                rate: Some(10.0),
                tier: Some(1),
                warmup: None,
                thresholds: BTreeMap::new(),
            },
            fence: fence(4),
            clock: clock.shared(),
            stats: stats.clone(),
        };
        let (actor, join) = Actor::spawn(None, ChannelActor, args)
            .await
            .expect("spawned");
        let grant = ractor::call_t!(actor, ChannelMsg::Slots, 1_000, 3, fence(4)).expect("slots");
        assert_eq!(
            grant.delays_us,
            vec![1_000_000],
            "a new owner waits a horizon"
        );
        assert_eq!(grant.retry_after_us, 100_000);
        assert_eq!(stats.slots_granted.load(Ordering::Relaxed), 1);
        let first = ractor::call_t!(actor, ChannelMsg::Tier, 1_000, "r1".to_owned()).expect("tier");
        let second =
            ractor::call_t!(actor, ChannelMsg::Tier, 1_000, "r2".to_owned()).expect("tier");
        assert!(!first.refused && second.refused);
        let warmup = ractor::call_t!(actor, ChannelMsg::Warmup, 1_000).expect("warm-up");
        assert_eq!(warmup, Admission::default(), "no warm-up: admitted");
        let report = BreakerReport {
            key: "sender:sms".into(),
            channel: Channel::Sms as i32,
            delivered: 10,
            circuit_open_until_unix_ms: 1_700_000_030_000,
            ..Default::default()
        };
        let reply = ractor::call_t!(actor, ChannelMsg::Report, 1_000, report).expect("report");
        assert_eq!(reply.circuit_open_until_unix_ms, 1_700_000_030_000);
        assert_eq!(reply.breaker.map(|b| b.sample), Some(10));
        clock.advance(Duration::from_secs(31));
        let later = ractor::call_t!(
            actor,
            ChannelMsg::Report,
            1_000,
            BreakerReport {
                key: "sender:sms".into(),
                ..Default::default()
            }
        )
        .expect("report");
        assert_eq!(later.circuit_open_until_unix_ms, 0, "the opening expired");
        actor.stop(None);
        join.await.expect("stopped");
    }
}
