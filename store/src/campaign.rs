//! # campaign: how a campaign's records are laid out in the store
//!
//! Owns the field names of a campaign's record hash ([`crate::keys::campaign::record`]) and
//! slice hash, the run-state tokens that guard every submission, the encoding of a member's
//! outcome, of a schedule entry and of a ledger entry, and reading a record hash back into
//! values ([`Record`]). The control plane (which changes a campaign's state) and the nodes
//! (whose slices and actors write its funnel) agree through this module only.
//!
//! Pure: no I/O, no decisions. It must never hold personal data (ids only) and never name a
//! field by hand outside this module.
//!
//! ## The record hash
//! | field | value |
//! |---|---|
//! | `def` | the `CampaignSpec` (prost), immutable after creation |
//! | `life` | the `CampaignLife` (prost): state, reason, times, estimate |
//! | `run` | the run state ([`Run`]): a slice's submission requires `running`, an upload `draft` |
//! | `n:<count>` | the funnel identity's counts ([`count`]): planned = held_out + suppressed + submitted + expired + cancelled + remaining |
//! | `s:<reason>` | suppressed, by reason |
//! | `f:<stage>:<variant>:<channel>` | sent, delivered, read, clicked, converted per channel and variant |
//! | `f:failed:<variant>` | messages that failed |
//! | `v:<variant>` | members assigned to a variant; `v:holdout` the held out |
//! | `v:converted:<variant>` | converted members per variant (and `holdout`) |
//! | `c:reserved`, `c:held`, `c:spent` | credits: reserved and free, held by messages in flight, settled |
//!
//! ## The slice hash
//! `size:<p>`, `done:<p>` (members planned and processed), `cursor:<p>` (the last schedule
//! member processed), `plan:<p>` (which schedule the slice walks: `list` = the uploaded list
//! itself, else the epoch of the owner that wrote the schedule).

use std::collections::HashMap;

use herald_proto::v1::{
    CampaignCredits, CampaignFunnel, CampaignLife, CampaignSpec, Channel, ChannelFunnel,
    LedgerEntry, VariantFunnel,
};
use prost::Message;

/// Field: the definition.
pub const DEF: &str = "def";
/// Field: the lifecycle.
pub const LIFE: &str = "life";
/// Field: the run state.
pub const RUN: &str = "run";

/// Credit fields of the record hash.
pub mod credit {
    /// Reserved for the campaign and not held by a message.
    pub const RESERVED: &str = "c:reserved";
    /// Held by messages in flight (each its worst case until it ends).
    pub const HELD: &str = "c:held";
    /// Settled for attempts, net of refunds.
    pub const SPENT: &str = "c:spent";
}

/// Fields of a tenant's credits hash ([`crate::keys::campaign::credits`]).
pub mod balance {
    /// Free to reserve.
    pub const AVAILABLE: &str = "available";
    /// Every top-up so far.
    pub const TOPPED_UP: &str = "topped_up";
    /// Settled for attempts, net of refunds (all campaigns).
    pub const SPENT: &str = "spent";
}

/// The funnel identity's counts: `n:<name>`.
pub mod count {
    pub const PLANNED: &str = "n:planned";
    pub const HELD_OUT: &str = "n:held_out";
    pub const SUPPRESSED: &str = "n:suppressed";
    pub const SUBMITTED: &str = "n:submitted";
    pub const EXPIRED: &str = "n:expired";
    pub const CANCELLED: &str = "n:cancelled";
    pub const REMAINING: &str = "n:remaining";
    /// Submissions that took a pace token (what the pace is measured on).
    pub const PACED: &str = "n:paced";
    /// Slices that have planned their members.
    pub const SLICES_PLANNED: &str = "n:slices_planned";
}

/// `s:<reason>`: suppressed for `reason`.
pub fn suppressed_by(reason: &str) -> String {
    format!("s:{reason}")
}

/// The stages counted per channel and variant after submission.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    Sent,
    Delivered,
    Read,
    Clicked,
    Converted,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Sent,
        Stage::Delivered,
        Stage::Read,
        Stage::Clicked,
        Stage::Converted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Sent => "sent",
            Stage::Delivered => "delivered",
            Stage::Read => "read",
            Stage::Clicked => "clicked",
            Stage::Converted => "converted",
        }
    }
}

/// `f:<stage>:<variant>:<channel>`.
pub fn stage_field(stage: Stage, variant: &str, channel: Channel) -> String {
    format!("f:{}:{variant}:{}", stage.name(), channel as i32)
}

/// `f:failed:<variant>`: messages of the variant that failed.
pub fn failed_field(variant: &str) -> String {
    format!("f:failed:{variant}")
}

/// The name of the held-out group among the variants.
pub const HOLDOUT: &str = "holdout";

/// `v:<variant>`: members assigned to a variant (or [`HOLDOUT`]).
pub fn members_field(variant: &str) -> String {
    format!("v:{variant}")
}

/// `v:converted:<variant>`: members of a variant (or [`HOLDOUT`]) who converted.
pub fn converted_field(variant: &str) -> String {
    format!("v:converted:{variant}")
}

/// Slice hash fields of partition `p`.
pub mod slice {
    pub fn size(p: u32) -> String {
        format!("size:{p}")
    }
    pub fn done(p: u32) -> String {
        format!("done:{p}")
    }
    pub fn cursor(p: u32) -> String {
        format!("cursor:{p}")
    }
    pub fn plan(p: u32) -> String {
        format!("plan:{p}")
    }
    /// `plan:<p>` of a slice that walks the uploaded list itself.
    pub const PLAN_LIST: &str = "list";
}

/// The run state in field [`RUN`]: what every write of a slice or an upload checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Run {
    Draft,
    Scheduled,
    Running,
    Paused,
    Completed,
    Cancelled,
}

impl Run {
    pub fn token(self) -> &'static [u8] {
        match self {
            Run::Draft => b"draft",
            Run::Scheduled => b"scheduled",
            Run::Running => b"running",
            Run::Paused => b"paused",
            Run::Completed => b"completed",
            Run::Cancelled => b"cancelled",
        }
    }

    pub fn parse(bytes: &[u8]) -> Option<Run> {
        Some(match bytes {
            b"draft" => Run::Draft,
            b"scheduled" => Run::Scheduled,
            b"running" => Run::Running,
            b"paused" => Run::Paused,
            b"completed" => Run::Completed,
            b"cancelled" => Run::Cancelled,
            _ => return None,
        })
    }
}

/// What a campaign did for one member (the outcomes hash of its partition).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Submitted {
        message_id: String,
        variant: String,
    },
    /// Held out (`converted`: a conversion was reported for them since).
    HeldOut {
        converted: bool,
    },
    Suppressed {
        reason: String,
    },
    Expired,
}

impl Outcome {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Outcome::Submitted {
                message_id,
                variant,
            } => format!("m:{message_id}:{variant}").into_bytes(),
            Outcome::HeldOut { converted: false } => b"h".to_vec(),
            Outcome::HeldOut { converted: true } => b"hc".to_vec(),
            Outcome::Suppressed { reason } => format!("s:{reason}").into_bytes(),
            Outcome::Expired => b"x".to_vec(),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Outcome> {
        let text = std::str::from_utf8(bytes).ok()?;
        Some(match text {
            "h" => Outcome::HeldOut { converted: false },
            "hc" => Outcome::HeldOut { converted: true },
            "x" => Outcome::Expired,
            _ => {
                if let Some(rest) = text.strip_prefix("m:") {
                    let (message_id, variant) = rest.split_once(':')?;
                    Outcome::Submitted {
                        message_id: message_id.to_owned(),
                        variant: variant.to_owned(),
                    }
                } else {
                    Outcome::Suppressed {
                        reason: text.strip_prefix("s:")?.to_owned(),
                    }
                }
            }
        })
    }
}

/// A schedule member: the due time (16 hex digits, so byte order is due order) and the id.
pub fn schedule_member(due_unix_ms: i64, recipient_id: &str) -> String {
    format!("{:016x}{recipient_id}", due_unix_ms.max(0))
}

/// The due time and recipient id of a schedule member (`None` when it is not one).
pub fn parse_schedule_member(member: &str) -> Option<(i64, &str)> {
    let hex = member.get(..16)?;
    let due = u64::from_str_radix(hex, 16).ok()?;
    Some((i64::try_from(due).ok()?, member.get(16..)?))
}

/// A ledger entry as the ledger list stores it.
pub fn encode_ledger(entry: &LedgerEntry) -> Vec<u8> {
    entry.encode_to_vec()
}

pub fn decode_ledger(bytes: &[u8]) -> Option<LedgerEntry> {
    LedgerEntry::decode(bytes).ok()
}

/// An integer field as stored (decimal text; missing or unreadable = 0).
pub fn int(value: Option<&[u8]>) -> i64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A campaign's record hash, read back.
#[derive(Clone, Debug, Default)]
pub struct Record {
    pub spec: Option<CampaignSpec>,
    pub life: CampaignLife,
    pub run: Option<Run>,
    /// Every integer field (counts, funnel, credits), by name.
    pub counts: HashMap<String, i64>,
}

impl Record {
    /// From the hash's fields; `None` when the campaign does not exist (no `def`).
    pub fn from_fields(fields: Vec<(String, Vec<u8>)>) -> Option<Record> {
        let mut record = Record::default();
        for (name, value) in fields {
            match name.as_str() {
                DEF => record.spec = CampaignSpec::decode(value.as_slice()).ok(),
                LIFE => record.life = CampaignLife::decode(value.as_slice()).unwrap_or_default(),
                RUN => record.run = Run::parse(&value),
                _ => {
                    record.counts.insert(name, int(Some(&value)));
                }
            }
        }
        record.spec.as_ref()?;
        Some(record)
    }

    /// A count (0 when missing; never negative in the view).
    pub fn count(&self, field: &str) -> u64 {
        u64::try_from(self.counts.get(field).copied().unwrap_or(0)).unwrap_or(0)
    }

    pub fn credits(&self) -> CampaignCredits {
        CampaignCredits {
            reserved_micros: self.count(credit::RESERVED),
            held_micros: self.count(credit::HELD),
            spent_micros: self.count(credit::SPENT),
        }
    }

    /// The variants' names, in definition order ("main" when it has none).
    pub fn variant_names(&self) -> Vec<String> {
        variant_names(self.spec.as_ref())
    }

    /// The funnel: the identity's counts, suppressions by reason, stages per channel.
    pub fn funnel(&self) -> CampaignFunnel {
        let mut funnel = CampaignFunnel {
            planned: self.count(count::PLANNED),
            held_out: self.count(count::HELD_OUT),
            suppressed: self.count(count::SUPPRESSED),
            submitted: self.count(count::SUBMITTED),
            expired: self.count(count::EXPIRED),
            cancelled: self.count(count::CANCELLED),
            remaining: self.count(count::REMAINING),
            ..Default::default()
        };
        for (name, value) in &self.counts {
            if let Some(reason) = name.strip_prefix("s:")
                && *value > 0
            {
                funnel
                    .suppressed_by_reason
                    .insert(reason.to_owned(), *value as u64);
            }
        }
        let variants = self.variant_names();
        for channel in [Channel::Push, Channel::Email, Channel::Sms] {
            let mut row = ChannelFunnel {
                channel: channel as i32,
                ..Default::default()
            };
            for variant in &variants {
                row.sent += self.count(&stage_field(Stage::Sent, variant, channel));
                row.delivered += self.count(&stage_field(Stage::Delivered, variant, channel));
                row.read += self.count(&stage_field(Stage::Read, variant, channel));
                row.clicked += self.count(&stage_field(Stage::Clicked, variant, channel));
                row.converted += self.count(&stage_field(Stage::Converted, variant, channel));
            }
            funnel.sent += row.sent;
            funnel.delivered += row.delivered;
            funnel.read += row.read;
            funnel.clicked += row.clicked;
            funnel.converted += row.converted;
            funnel.channels.push(row);
        }
        for variant in &variants {
            funnel.failed += self.count(&failed_field(variant));
        }
        funnel
    }

    /// Each variant's funnel and its conversion lift over the holdout.
    pub fn variant_funnels(&self) -> Vec<VariantFunnel> {
        let rate = |converted: u64, members: u64| {
            if members == 0 {
                0.0
            } else {
                converted as f64 / members as f64
            }
        };
        let holdout_members = self.count(&members_field(HOLDOUT));
        let holdout_converted = self.count(&converted_field(HOLDOUT));
        let holdout_rate = rate(holdout_converted, holdout_members);
        let mut out = Vec::new();
        for variant in self.variant_names() {
            let members = self.count(&members_field(&variant));
            let converted = self.count(&converted_field(&variant));
            let mut channels = Vec::new();
            let mut delivered = 0;
            for channel in [Channel::Push, Channel::Email, Channel::Sms] {
                let row = ChannelFunnel {
                    channel: channel as i32,
                    sent: self.count(&stage_field(Stage::Sent, &variant, channel)),
                    delivered: self.count(&stage_field(Stage::Delivered, &variant, channel)),
                    read: self.count(&stage_field(Stage::Read, &variant, channel)),
                    clicked: self.count(&stage_field(Stage::Clicked, &variant, channel)),
                    converted: self.count(&stage_field(Stage::Converted, &variant, channel)),
                };
                delivered += row.delivered;
                channels.push(row);
            }
            let conversion_rate = rate(converted, members);
            let lift = if holdout_rate > 0.0 {
                (conversion_rate - holdout_rate) / holdout_rate
            } else {
                0.0
            };
            out.push(VariantFunnel {
                variant,
                members,
                delivered,
                converted,
                conversion_rate,
                lift,
                channels,
            });
        }
        if holdout_members > 0 || self.spec.as_ref().is_some_and(|s| s.holdout_percent > 0.0) {
            out.push(VariantFunnel {
                variant: HOLDOUT.to_owned(),
                members: holdout_members,
                delivered: 0,
                converted: holdout_converted,
                conversion_rate: holdout_rate,
                lift: 0.0,
                channels: Vec::new(),
            });
        }
        out
    }
}

/// The name of the one variant of a campaign that defines none.
pub const MAIN_VARIANT: &str = "main";

/// A campaign's variant names, in definition order ([`MAIN_VARIANT`] when it has none).
pub fn variant_names(spec: Option<&CampaignSpec>) -> Vec<String> {
    match spec {
        Some(spec) if !spec.variants.is_empty() => {
            spec.variants.iter().map(|v| v.name.clone()).collect()
        }
        _ => vec![MAIN_VARIANT.to_owned()],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        for outcome in [
            Outcome::Submitted {
                message_id: "01J".into(),
                variant: "a".into(),
            },
            Outcome::HeldOut { converted: false },
            Outcome::HeldOut { converted: true },
            Outcome::Suppressed {
                reason: "unknown_recipient".into(),
            },
            Outcome::Expired,
        ] {
            assert_eq!(Outcome::decode(&outcome.encode()), Some(outcome));
        }
        assert_eq!(Outcome::decode(b"zz"), None);
    }

    #[test]
    fn schedule_members_sort_by_due_time() {
        let early = schedule_member(9, "zz");
        let late = schedule_member(10, "aa");
        assert!(early < late);
        assert_eq!(parse_schedule_member(&late), Some((10, "aa")));
        assert_eq!(parse_schedule_member("short"), None);
        // Ids may hold anything after the due time, `:` included.
        assert_eq!(
            parse_schedule_member(&schedule_member(0, "a:b")),
            Some((0, "a:b"))
        );
    }

    #[test]
    fn a_record_without_definition_is_no_campaign() {
        assert!(Record::from_fields(vec![(RUN.into(), b"running".to_vec())]).is_none());
        let spec = CampaignSpec {
            name: "x".into(),
            ..Default::default()
        };
        let record = Record::from_fields(vec![
            (DEF.into(), spec.encode_to_vec()),
            (RUN.into(), b"running".to_vec()),
            (count::PLANNED.into(), b"10".to_vec()),
            (count::REMAINING.into(), b"4".to_vec()),
            (suppressed_by("consent"), b"2".to_vec()),
            (count::SUPPRESSED.into(), b"2".to_vec()),
            (count::SUBMITTED.into(), b"4".to_vec()),
        ])
        .expect("a campaign");
        assert_eq!(record.run, Some(Run::Running));
        let funnel = record.funnel();
        assert_eq!(funnel.planned, 10);
        assert_eq!(funnel.suppressed_by_reason.get("consent"), Some(&2));
        assert_eq!(
            funnel.planned,
            funnel.held_out
                + funnel.suppressed
                + funnel.submitted
                + funnel.expired
                + funnel.cancelled
                + funnel.remaining
        );
    }
}
