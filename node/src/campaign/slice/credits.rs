//! A slice and the campaign's credits: more reservation from the balance when the next
//! member's hold does not fit (or, the balance used up, the slice says so and waits), and the
//! hold of a member whose message was not new given back.

use herald_proto::v1::{Channel, LedgerEntry, LedgerKind};
use herald_store::campaign::{self as layout, balance, count, credit, slice as fields};
use herald_store::{Check, Fence, FencedOp, WriteOp, keys};
use std::sync::atomic::Ordering;
use tracing::info;

use super::batch::signed;
use super::{CREDITS_RETRY, Next, RESERVE_AHEAD, SliceState};

impl SliceState {
    /// A member whose accept was not new: out of the plan, its hold back.
    pub(super) async fn compensate_duplicate(
        &mut self,
        hold: u64,
    ) -> Result<(), herald_store::Error> {
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
    pub(super) async fn reserve_more(&mut self) -> Result<Next, herald_store::Error> {
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
