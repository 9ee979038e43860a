//! The public `Engagement` service: receipts and engagement reports from apps and backends.
//!
//! Validates the whole request first (all or nothing, errors name the field), then resolves
//! each report to its message and routes it to the recipient's owner. Unknown and duplicate
//! reports are answered and counted, not errors.

use herald_proto::error::Error;
use herald_proto::v1::engagement_server::Engagement;
use herald_proto::v1::{
    EngagementKind, EngagementReport, ForwardSignal, ReportRequest, ReportResponse, ReportResult,
    ReportStatus,
};
use tonic::{Request, Response, Status};

use std::sync::Arc;

use herald_store::Store;

use super::Limits;
use crate::auth::Authenticator;
use crate::intake::load_message;
use crate::receipts::Receipts;
use crate::receipts::index::lookup;

/// Longest `detail` kept with a report.
const DETAIL_MAX: usize = 1024;
/// Longest `reply_text`.
const REPLY_MAX: usize = 4096;

pub struct EngagementApi {
    pub receipts: Arc<Receipts>,
    pub tenants: Authenticator,
    pub store: Arc<dyn Store>,
    pub limits: Limits,
    /// The partition count (a campaign member's outcome is kept per partition).
    pub ownership: Arc<crate::ownership::Ownership>,
}

/// What a report names, once validated.
enum Selector {
    Attempt {
        message_id: String,
        step: u32,
    },
    Message(String),
    Provider {
        provider: String,
        id: String,
    },
    /// A conversion of a campaign's member, messaged or held out.
    Member {
        campaign_id: String,
        recipient_id: String,
    },
}

/// `<message_id>.<step>` → its parts.
fn parse_attempt_id(attempt_id: &str) -> Option<(String, u32)> {
    let (message_id, step) = attempt_id.rsplit_once('.')?;
    if message_id.is_empty() {
        return None;
    }
    Some((message_id.to_owned(), step.parse().ok()?))
}

fn selector(index: usize, report: &EngagementReport) -> Result<Selector, Error> {
    let field = |name: &str| format!("reports[{index}].{name}");
    if report.kind() == EngagementKind::Unspecified {
        return Err(Error::invalid(field("kind"), "is required"));
    }
    if report.detail.len() > DETAIL_MAX {
        return Err(Error::invalid(
            field("detail"),
            format!("is {} bytes, at most {DETAIL_MAX}", report.detail.len()),
        ));
    }
    if report.reply_text.len() > REPLY_MAX {
        return Err(Error::invalid(
            field("reply_text"),
            format!("is {} bytes, at most {REPLY_MAX}", report.reply_text.len()),
        ));
    }
    let by_provider = !report.provider.is_empty() || !report.provider_message_id.is_empty();
    let by_member = !report.campaign_id.is_empty() || !report.recipient_id.is_empty();
    let given = [
        !report.attempt_id.is_empty(),
        !report.message_id.is_empty(),
        by_provider,
        by_member,
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given != 1 {
        return Err(Error::invalid(
            format!("reports[{index}]"),
            "needs exactly one of attempt_id, message_id, provider + provider_message_id, or campaign_id + recipient_id",
        ));
    }
    if by_member {
        if report.kind() != EngagementKind::EngagementConverted {
            return Err(Error::invalid(
                field("campaign_id"),
                "campaign_id + recipient_id name a member only for ENGAGEMENT_CONVERTED",
            ));
        }
        for (name, value) in [
            ("campaign_id", &report.campaign_id),
            ("recipient_id", &report.recipient_id),
        ] {
            if value.is_empty()
                || value.len() > crate::validate::ID_MAX_BYTES
                || value.chars().any(char::is_control)
            {
                return Err(Error::invalid(
                    field(name),
                    "is required with the other (at most 128 bytes, no control characters)",
                ));
            }
        }
        return Ok(Selector::Member {
            campaign_id: report.campaign_id.clone(),
            recipient_id: report.recipient_id.clone(),
        });
    }
    if !report.attempt_id.is_empty() {
        let (message_id, step) = parse_attempt_id(&report.attempt_id).ok_or_else(|| {
            Error::invalid(
                field("attempt_id"),
                "is not an attempt id (<message_id>.<step>)",
            )
        })?;
        return Ok(Selector::Attempt { message_id, step });
    }
    if !report.message_id.is_empty() {
        return Ok(Selector::Message(report.message_id.clone()));
    }
    if report.provider.is_empty() {
        return Err(Error::invalid(
            field("provider"),
            "is required with provider_message_id",
        ));
    }
    if report.provider_message_id.is_empty() {
        return Err(Error::invalid(
            field("provider_message_id"),
            "is required with provider",
        ));
    }
    Ok(Selector::Provider {
        provider: report.provider.clone(),
        id: report.provider_message_id.clone(),
    })
}

#[tonic::async_trait]
impl Engagement for EngagementApi {
    async fn report(
        &self,
        request: Request<ReportRequest>,
    ) -> Result<Response<ReportResponse>, Status> {
        let tenant = self.tenants.authenticate(request.metadata()).await?;
        let reports = request.into_inner().reports;
        if reports.is_empty() {
            return Err(Error::invalid("reports", "is empty").into());
        }
        if reports.len() > self.limits.batch_max {
            return Err(Error::invalid(
                "reports",
                format!(
                    "has {} reports, at most {}",
                    reports.len(),
                    self.limits.batch_max
                ),
            )
            .into());
        }
        let selectors = reports
            .iter()
            .enumerate()
            .map(|(i, r)| selector(i, r))
            .collect::<Result<Vec<_>, Error>>()?;

        let mut results: Vec<Option<ReportResult>> = vec![None; reports.len()];
        let mut signals = Vec::new();
        let mut positions = Vec::new();
        let unknown = |message_id: String| ReportResult {
            status: ReportStatus::ReportUnknown as i32,
            message_id,
        };
        for (index, (report, selector)) in reports.into_iter().zip(selectors).enumerate() {
            let (message_id, step) = match selector {
                Selector::Attempt { message_id, step } => (message_id, Some(step)),
                Selector::Message(message_id) => (message_id, None),
                Selector::Member {
                    campaign_id,
                    recipient_id,
                } => match self.member(&tenant.id, &campaign_id, &recipient_id).await? {
                    Member::Messaged(message_id) => (message_id, None),
                    Member::Counted(status) => {
                        results[index] = Some(ReportResult {
                            status: status as i32,
                            message_id: String::new(),
                        });
                        continue;
                    }
                },
                Selector::Provider { provider, id } => {
                    let found = lookup(&*self.store, &provider, &id)
                        .await
                        .map_err(|e| Error::Unavailable(format!("store: {e}")))?;
                    match found {
                        Some(target) if target.tenant == tenant.id => {
                            (target.message_id, Some(target.step))
                        }
                        _ => {
                            results[index] = Some(unknown(String::new()));
                            continue;
                        }
                    }
                }
            };
            let record = load_message(&*self.store, &tenant.id, &message_id).await?;
            let Some(recipient_id) = record
                .and_then(|r| r.message.request)
                .map(|r| r.recipient_id)
            else {
                results[index] = Some(unknown(message_id));
                continue;
            };
            signals.push(ForwardSignal {
                recipient_id,
                message_id,
                step,
                kind: report.kind,
                detail: report.detail,
                reply_text: report.reply_text,
                source: "api".to_owned(),
                ..Default::default()
            });
            positions.push(index);
        }
        for result in results.iter().flatten() {
            self.receipts.stats.count(result.status());
        }
        let routed = self.receipts.route_signals(&tenant, signals).await;
        for (index, result) in positions.into_iter().zip(routed) {
            results[index] = Some(result);
        }
        Ok(Response::new(ReportResponse {
            results: results.into_iter().map(Option::unwrap_or_default).collect(),
        }))
    }
}

/// What a member's conversion report resolves to.
enum Member {
    /// The member's message of the campaign: the report applies to it.
    Messaged(String),
    /// Answered here: a held-out member's conversion (applied or a duplicate), or unknown.
    Counted(ReportStatus),
}

impl EngagementApi {
    /// Resolves a conversion of `recipient_id` in `campaign_id`: their message, or — held out
    /// — the holdout's conversion, counted once (the member's outcome turns `converted` in
    /// the same step as the count).
    async fn member(
        &self,
        tenant: &herald_proto::TenantId,
        campaign_id: &str,
        recipient_id: &str,
    ) -> Result<Member, Error> {
        use herald_store::campaign::{self as layout, Outcome};
        use herald_store::{Check, Fence, FencedOp, WriteOp, WriteOutcome, keys};
        let unavailable = |e: herald_store::Error| Error::Unavailable(format!("store: {e}"));
        let count = self.ownership.partition_count();
        if count == 0 {
            return Err(Error::Unavailable("no partition table yet".into()));
        }
        let p = herald_proto::partition::partition_of(&tenant.0, recipient_id, count).0;
        let outcomes = keys::campaign::outcomes(tenant, campaign_id, p);
        let found = self
            .store
            .some_fields(&outcomes, &[recipient_id.to_owned()])
            .await
            .map_err(unavailable)?;
        match found
            .first()
            .and_then(|v| v.as_deref())
            .and_then(Outcome::decode)
        {
            Some(Outcome::Submitted { message_id, .. }) => Ok(Member::Messaged(message_id)),
            Some(Outcome::HeldOut { converted: true }) => {
                Ok(Member::Counted(ReportStatus::ReportDuplicate))
            }
            Some(Outcome::HeldOut { converted: false }) => {
                let none = |op| FencedOp {
                    fence: Fence::NONE,
                    op,
                };
                let written = self
                    .store
                    .write(vec![
                        none(WriteOp::Require {
                            check: Check::FieldIs {
                                key: outcomes.clone(),
                                field: recipient_id.to_owned(),
                                value: Outcome::HeldOut { converted: false }.encode(),
                            },
                            guards: 2,
                        }),
                        none(WriteOp::SetFields {
                            key: outcomes,
                            fields: vec![(
                                recipient_id.to_owned(),
                                Outcome::HeldOut { converted: true }.encode(),
                            )],
                        }),
                        none(WriteOp::AddFields {
                            key: keys::campaign::record(tenant, campaign_id),
                            deltas: vec![(layout::converted_field(layout::HOLDOUT), 1)],
                        }),
                    ])
                    .await
                    .map_err(unavailable)?;
                Ok(Member::Counted(match written.first() {
                    Some(WriteOutcome::Done) => ReportStatus::ReportApplied,
                    _ => ReportStatus::ReportDuplicate,
                }))
            }
            _ => Ok(Member::Counted(ReportStatus::ReportUnknown)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_ids_parse() {
        assert_eq!(parse_attempt_id("01HXYZ.2"), Some(("01HXYZ".to_owned(), 2)));
        assert_eq!(parse_attempt_id("01HXYZ"), None);
        assert_eq!(parse_attempt_id(".1"), None);
        assert_eq!(parse_attempt_id("m.x"), None);
    }

    #[test]
    fn a_report_names_exactly_one_target() {
        let report = |f: fn(&mut EngagementReport)| {
            let mut r = EngagementReport {
                kind: EngagementKind::EngagementDelivered as i32,
                ..Default::default()
            };
            f(&mut r);
            r
        };
        let field = |r: &EngagementReport| match selector(3, r) {
            Err(Error::InvalidArgument { field, .. }) => field,
            _ => String::new(),
        };
        assert_eq!(field(&report(|_| {})), "reports[3]");
        assert_eq!(
            field(&report(|r| {
                r.attempt_id = "m.0".into();
                r.message_id = "m".into();
            })),
            "reports[3]"
        );
        assert_eq!(
            field(&report(|r| r.provider = "smpp".into())),
            "reports[3].provider_message_id"
        );
        assert_eq!(
            field(&report(|r| r.attempt_id = "nodot".into())),
            "reports[3].attempt_id"
        );
        assert_eq!(
            field(&report(|r| {
                r.message_id = "m".into();
                r.kind = 0;
            })),
            "reports[3].kind"
        );
        assert!(selector(0, &report(|r| r.message_id = "m".into())).is_ok());
    }
}
