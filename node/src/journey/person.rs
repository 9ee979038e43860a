//! # journey::person: one person's journey state in the store, and its waits
//!
//! Owns the stored form of a person's state in a journey (a hash in their partition: the
//! encoded `JourneyPerson` and the token of [`super::flow::token`]), the members of a
//! partition's due-ordered wait set, and the one atomic write of a transition: checked against
//! the token it read, fenced by the person's partition, with the funnel's counters and the
//! wait set's change applied in the same step. Must never write a state without that check (a
//! stale walker or a second firing of a wait must change nothing).

use herald_proto::v1::JourneyPerson;
use herald_proto::{PartitionId, TenantId};
use herald_store::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome, keys};
use prost::Message;

use super::flow;

/// Fields of the person's hash.
const VIEW: &str = "v";
const TOKEN: &str = "t";

/// Reads a person's state in a journey (`None`: never entered).
pub async fn read(
    store: &dyn Store,
    tenant: &TenantId,
    journey_id: &str,
    recipient_id: &str,
) -> Result<Option<JourneyPerson>, herald_store::Error> {
    let key = keys::journey::person(tenant, journey_id, recipient_id);
    let found = store.some_fields(&key, &[VIEW.to_owned()]).await?;
    let Some(Some(bytes)) = found.into_iter().next() else {
        return Ok(None);
    };
    JourneyPerson::decode(bytes.as_slice())
        .map(Some)
        .map_err(|error| herald_store::Error::Corrupt {
            key,
            reason: error.to_string(),
        })
}

/// A wait in a partition's wait set: byte order is due order (16 hex digits first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitMember {
    pub due_unix_ms: i64,
    pub tenant: TenantId,
    pub journey_id: String,
    pub recipient_id: String,
}

const SEPARATOR: char = '\u{1f}';

impl WaitMember {
    pub fn encode(&self) -> String {
        format!(
            "{:016x}{SEPARATOR}{}{SEPARATOR}{}{SEPARATOR}{}",
            self.due_unix_ms.max(0),
            self.tenant.0,
            self.journey_id,
            self.recipient_id
        )
    }

    /// `None` for a member this version did not write.
    pub fn parse(member: &str) -> Option<WaitMember> {
        let mut parts = member.splitn(4, SEPARATOR);
        let due = i64::from_str_radix(parts.next()?, 16).ok()?;
        Some(WaitMember {
            due_unix_ms: due,
            tenant: TenantId(parts.next()?.to_owned()),
            journey_id: parts.next()?.to_owned(),
            recipient_id: parts.next()?.to_owned(),
        })
    }

    /// The member of `person`'s current wait (`None` when not in one).
    pub fn of(tenant: &TenantId, person: &JourneyPerson) -> Option<WaitMember> {
        (person.wait_due_unix_ms > 0).then(|| WaitMember {
            due_unix_ms: person.wait_due_unix_ms,
            tenant: tenant.clone(),
            journey_id: person.journey_id.clone(),
            recipient_id: person.recipient_id.clone(),
        })
    }
}

/// One change of a person's state, written atomically.
pub struct Transition<'a> {
    /// The state it was decided from (`None`: the person had none).
    pub before: Option<&'a JourneyPerson>,
    pub after: &'a JourneyPerson,
    /// Funnel counters to add to.
    pub funnel: Vec<(String, i64)>,
}

/// How a transition's write ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Applied,
    /// The stored state is not the one it was decided from: read it again.
    Moved,
    /// The partition moved: stop.
    Fenced,
}

/// Writes `transition` for `tenant` under `fence` (the person's partition).
pub async fn write(
    store: &dyn Store,
    tenant: &TenantId,
    fence: Fence,
    transition: Transition<'_>,
) -> Result<Written, herald_store::Error> {
    let ops = ops(tenant, fence, transition);
    let outcomes = store.write(ops).await?;
    Ok(match outcomes.first() {
        Some(WriteOutcome::Done) => Written::Applied,
        Some(WriteOutcome::Fenced { .. }) => Written::Fenced,
        _ if outcomes
            .iter()
            .any(|o| matches!(o, WriteOutcome::Fenced { .. })) =>
        {
            Written::Fenced
        }
        _ => Written::Moved,
    })
}

fn ops(tenant: &TenantId, fence: Fence, transition: Transition<'_>) -> Vec<FencedOp> {
    let after = transition.after;
    let key = keys::journey::person(tenant, &after.journey_id, &after.recipient_id);
    let check = match transition.before {
        Some(before) => Check::FieldIs {
            key: key.clone(),
            field: TOKEN.to_owned(),
            value: flow::token(before).into_bytes(),
        },
        None => Check::Missing {
            key: key.clone(),
            field: TOKEN.to_owned(),
        },
    };
    let mut guarded = vec![WriteOp::SetFields {
        key,
        fields: vec![
            (VIEW.to_owned(), after.encode_to_vec()),
            (TOKEN.to_owned(), flow::token(after).into_bytes()),
        ],
    }];
    let deltas: Vec<(String, i64)> = transition
        .funnel
        .into_iter()
        .filter(|(_, delta)| *delta != 0)
        .collect();
    if !deltas.is_empty() {
        guarded.push(WriteOp::AddFields {
            key: keys::journey::funnel(tenant, &after.journey_id),
            deltas,
        });
    }
    let old_wait = transition.before.and_then(|b| WaitMember::of(tenant, b));
    let new_wait = WaitMember::of(tenant, after);
    if old_wait != new_wait {
        let set = keys::journey::waits(fence.partition);
        if let Some(old) = old_wait {
            guarded.push(WriteOp::RemoveMembers {
                key: set.clone(),
                members: vec![old.encode()],
            });
        }
        if let Some(new) = new_wait {
            guarded.push(WriteOp::AddMembers {
                key: set,
                members: vec![new.encode()],
            });
        }
    }
    let mut ops = vec![FencedOp {
        fence,
        op: WriteOp::Require {
            check,
            guards: guarded.len(),
        },
    }];
    ops.extend(guarded.into_iter().map(|op| FencedOp { fence, op }));
    ops
}

/// Takes a member no state refers to out of a partition's wait set (a leftover of a write
/// that lost a race). Fenced like every partition write.
pub async fn drop_wait(
    store: &dyn Store,
    fence: Fence,
    member: &WaitMember,
) -> Result<(), herald_store::Error> {
    store
        .write(vec![FencedOp {
            fence,
            op: WriteOp::RemoveMembers {
                key: keys::journey::waits(fence.partition),
                members: vec![member.encode()],
            },
        }])
        .await
        .map(|_| ())
}

/// The wait set of `partition`.
pub fn waits_key(partition: PartitionId) -> String {
    keys::journey::waits(partition)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_sort_by_due_and_parse_back() {
        let member = |due: i64, recipient: &str| WaitMember {
            due_unix_ms: due,
            tenant: TenantId("acme".into()),
            journey_id: "01J".into(),
            recipient_id: recipient.into(),
        };
        let early = member(9_999, "zed");
        let late = member(10_000, "ann:with:colons");
        assert!(early.encode() < late.encode());
        assert_eq!(WaitMember::parse(&late.encode()), Some(late));
        assert_eq!(WaitMember::parse("not a member"), None);
    }

    #[test]
    fn a_transition_is_guarded_by_the_token_it_read() {
        let tenant = TenantId("acme".into());
        let before = JourneyPerson {
            journey_id: "j".into(),
            recipient_id: "r".into(),
            entry: 1,
            step: "wait".into(),
            status: 1,
            wait_due_unix_ms: 5,
            ..Default::default()
        };
        let mut after = before.clone();
        after.step = "send".into();
        after.wait_due_unix_ms = 0;
        let fence = Fence {
            partition: PartitionId(3),
            epoch: herald_proto::Epoch(2),
        };
        let ops = ops(
            &tenant,
            fence,
            Transition {
                before: Some(&before),
                after: &after,
                funnel: vec![("a".into(), 1), ("b".into(), 0)],
            },
        );
        // Require, the state, the funnel, the wait leaving the set.
        assert_eq!(ops.len(), 4);
        let WriteOp::Require { check, guards } = &ops[0].op else {
            panic!("first op is the check");
        };
        assert_eq!(*guards, 3);
        assert_eq!(
            *check,
            Check::FieldIs {
                key: keys::journey::person(&tenant, "j", "r"),
                field: TOKEN.into(),
                value: b"1:1:wait".to_vec(),
            }
        );
        assert!(matches!(&ops[3].op, WriteOp::RemoveMembers { key, .. } if key == "jq:3"));
    }
}
