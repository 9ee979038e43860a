//! One batch of a slice's walk: its members, the ops of its one atomic write (the campaign's
//! `running` check and the slice's cursor check guarding everything, each sent member's
//! credit hold guarding every member after it), and what the write's outcomes say.

use herald_proto::v1::{CampaignSend, Channel, Recipient};
use herald_store::campaign::{self as layout, Outcome, count, credit, slice as fields};
use herald_store::{Check, Fence, FencedOp, WriteOp, WriteOutcome, keys};

use super::{CampaignRun, SliceState};
use crate::campaign::plan::{self, Group};
use crate::intake::CampaignAcceptance;

/// How a batch's write ended.
pub(super) enum Written {
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
pub(super) enum Member {
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
    pub(super) fn cursor(&self) -> &str {
        match self {
            Member::Submit { member, .. } | Member::Other { member, .. } => member,
        }
    }
}

/// A batch's ops, built member by member.
pub(super) struct Batch {
    ops: Vec<FencedOp>,
    /// Indices of the ops that guard everything after them (their guards are set at the end).
    open_guards: Vec<usize>,
    pub(super) members: Vec<Member>,
    fence: Fence,
}

impl Batch {
    /// A batch without checks yet.
    pub(super) fn empty(fence: Fence) -> Batch {
        Batch {
            ops: Vec::new(),
            open_guards: Vec::new(),
            members: Vec::new(),
            fence,
        }
    }

    /// A walk's batch: the campaign must be running and the slice's cursor where it was.
    pub(super) fn new(run: &CampaignRun, fence: Fence, cursor: &str) -> Batch {
        let mut batch = Batch::empty(fence);
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

    pub(super) fn push(&mut self, op: WriteOp) -> usize {
        self.ops.push(FencedOp {
            fence: self.fence,
            op,
        });
        self.ops.len() - 1
    }

    /// A check that guards every op after it in the batch.
    pub(super) fn guard(&mut self, check: Check) -> usize {
        let index = self.push(WriteOp::Require { check, guards: 0 });
        self.open_guards.push(index);
        index
    }

    /// The member's progress in the slice: one more done, the cursor after it.
    pub(super) fn advance(&mut self, run: &CampaignRun, member: &str, counts: bool) {
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

    pub(super) fn outcome(&mut self, run: &CampaignRun, id: &str, outcome: &Outcome) {
        self.push(WriteOp::SetFields {
            key: keys::campaign::outcomes(&run.tenant.id, &run.id, self.fence.partition.0),
            fields: vec![(id.to_owned(), outcome.encode())],
        });
    }

    pub(super) fn finish(mut self) -> (Vec<FencedOp>, Vec<Member>) {
        let len = self.ops.len();
        for index in self.open_guards {
            if let WriteOp::Require { guards, .. } = &mut self.ops[index].op {
                *guards = len - index - 1;
            }
        }
        (self.ops, self.members)
    }
}

pub(super) fn signed(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

impl SliceState {
    /// Builds the batch for `candidates` (due members, in order). Returns the ops, the
    /// members it covers (a prefix of the candidates) and the tokens it took.
    pub(super) async fn build(
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
            let mut request = crate::campaign::spec::message_of(&run.spec);
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
}

/// A member's due time and recipient id: `due ‖ id` in a schedule, a bare id (due at once)
/// in the uploaded list.
pub(super) fn split_member(prefixed: bool, member: &str) -> (i64, &str) {
    if prefixed && let Some((due, id)) = layout::parse_schedule_member(member) {
        return (due, id);
    }
    (0, member)
}

/// Reads a batch's outcomes: the campaign check, the cursor check, then each member's hold.
pub(super) fn read_outcomes(outcomes: &[WriteOutcome], members: &[Member]) -> Written {
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
