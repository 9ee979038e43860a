//! # testsuite::records: hashes, lists and sorted sets
//!
//! Owns the cases about the store's records that are not a message's: hash fields (integers
//! as decimal text), lists of records, sorted sets read in byte order with a cursor, their
//! expiry, the partitions' recipient indexes, and [`Fence::NONE`]; and the helpers that build
//! their ops and read them back (`guards` uses them too). Must never depend on one backend's
//! internals: cases see only [`Store`].

use std::sync::Arc;
use std::time::Duration;

use herald_proto::{Epoch, PartitionId, TenantId};

use super::{LONG, eventually, fence, node, put_recipient, recipient, tenant, write};
use crate::keys::value::partition_recipients;
use crate::{Check, Fence, FencedOp, Store, WriteOp, WriteOutcome};

pub(super) const DONE: WriteOutcome = WriteOutcome::Done;
pub(super) const SKIPPED: WriteOutcome = WriteOutcome::Skipped;
pub(super) const UNMET: WriteOutcome = WriteOutcome::Unmet;

fn op(fence: Fence, op: WriteOp) -> FencedOp {
    FencedOp { fence, op }
}

pub(super) fn add_fields(fence: Fence, key: &str, deltas: &[(&str, i64)]) -> FencedOp {
    op(
        fence,
        WriteOp::AddFields {
            key: key.to_owned(),
            deltas: deltas.iter().map(|(f, d)| ((*f).to_owned(), *d)).collect(),
        },
    )
}

pub(super) fn set_fields(fence: Fence, key: &str, fields: &[(&str, &[u8])]) -> FencedOp {
    op(
        fence,
        WriteOp::SetFields {
            key: key.to_owned(),
            fields: fields
                .iter()
                .map(|(f, v)| ((*f).to_owned(), v.to_vec()))
                .collect(),
        },
    )
}

pub(super) fn push_record(fence: Fence, key: &str, record: &[u8]) -> FencedOp {
    op(
        fence,
        WriteOp::PushRecord {
            key: key.to_owned(),
            record: record.to_vec(),
        },
    )
}

pub(super) fn add_members(fence: Fence, key: &str, members: &[&str]) -> FencedOp {
    op(
        fence,
        WriteOp::AddMembers {
            key: key.to_owned(),
            members: members.iter().map(|m| (*m).to_owned()).collect(),
        },
    )
}

pub(super) fn field_is(
    fence: Fence,
    key: &str,
    field: &str,
    value: &[u8],
    guards: usize,
) -> FencedOp {
    let check = Check::FieldIs {
        key: key.to_owned(),
        field: field.to_owned(),
        value: value.to_vec(),
    };
    op(fence, WriteOp::Require { check, guards })
}

pub(super) fn missing(fence: Fence, key: &str, field: &str, guards: usize) -> FencedOp {
    let check = Check::Missing {
        key: key.to_owned(),
        field: field.to_owned(),
    };
    op(fence, WriteOp::Require { check, guards })
}

pub(super) fn take(fence: Fence, key: &str, field: &str, amount: i64, guards: usize) -> FencedOp {
    let check = Check::Take {
        key: key.to_owned(),
        field: field.to_owned(),
        amount,
    };
    op(fence, WriteOp::Require { check, guards })
}

/// Every field of a hash, sorted (the store gives them in no particular order).
pub(super) async fn sorted_fields(store: &dyn Store, key: &str) -> Vec<(String, Vec<u8>)> {
    let mut fields = store.fields(key).await.expect("fields");
    fields.sort();
    fields
}

pub(super) async fn field(store: &dyn Store, key: &str, field: &str) -> Option<Vec<u8>> {
    let mut values = store
        .some_fields(key, &[field.to_owned()])
        .await
        .expect("some fields");
    assert_eq!(values.len(), 1);
    values.pop().flatten()
}

pub(super) async fn all_records(store: &dyn Store, key: &str) -> Vec<Vec<u8>> {
    store.records(key, 0, 1000).await.expect("records")
}

pub(super) async fn all_members(store: &dyn Store, key: &str) -> Vec<String> {
    store.members_after(key, None, 1000).await.expect("members")
}

pub(super) fn owned(fields: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
    fields
        .iter()
        .map(|(f, v)| ((*f).to_owned(), v.to_vec()))
        .collect()
}

/// Integer fields are decimal text (as Redis keeps them); sets replace; a missing hash or
/// field counts as 0; a field named twice in one op adds up; `some_fields` keeps the order
/// asked, `None` for the missing; a field that is no integer fails an increment; a fenced op
/// changes nothing.
pub async fn hash_fields(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(1, 1);
    assert!(store.fields("h1").await.expect("fields").is_empty());
    let outcomes = write(
        store,
        vec![
            add_fields(f, "h1", &[("n", 40), ("m", -3)]),
            add_fields(f, "h1", &[("n", 1), ("n", 1)]),
            set_fields(f, "h1", &[("def", b"\x00spec\xff"), ("run", b"draft")]),
            set_fields(f, "h1", &[("run", b"running")]),
            add_fields(f, "h1", &[]),
            set_fields(f, "h-empty", &[]),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![DONE; 6]);
    assert_eq!(
        sorted_fields(store, "h1").await,
        owned(&[
            ("def", b"\x00spec\xff"),
            ("m", b"-3"),
            ("n", b"42"),
            ("run", b"running")
        ])
    );
    let asked = ["run", "missing", "n", "def"].map(str::to_owned);
    assert_eq!(
        store.some_fields("h1", &asked).await.expect("some fields"),
        vec![
            Some(b"running".to_vec()),
            None,
            Some(b"42".to_vec()),
            Some(b"\x00spec\xff".to_vec())
        ]
    );
    assert_eq!(
        store.some_fields("nope", &asked).await.expect("some"),
        vec![None; 4]
    );
    assert!(store.some_fields("h1", &[]).await.expect("none").is_empty());
    // Ops without fields make no hash.
    assert!(store.fields("h-empty").await.expect("fields").is_empty());

    // A field that holds no integer (as `HINCRBY` reads one: no sign but `-`, no leading
    // zero, within i64 once added) fails the call, for an increment and for a take.
    write(
        store,
        vec![set_fields(
            f,
            "h2",
            &[
                ("run", b"running"),
                ("lead", b"042"),
                ("plus", b"+1"),
                ("max", b"9223372036854775807"),
            ],
        )],
    )
    .await;
    for field in ["run", "lead", "plus", "max"] {
        let added = store.write(vec![add_fields(f, "h2", &[(field, 1)])]).await;
        assert!(added.is_err(), "{field}: {added:?}");
    }
    let taken = store.write(vec![take(f, "h2", "run", 1, 0)]).await;
    assert!(taken.is_err(), "{taken:?}");
    assert_eq!(field(store, "h2", "lead").await, Some(b"042".to_vec()));
    assert_eq!(field(store, "h2", "run").await, Some(b"running".to_vec()));

    // A stale writer changes nothing.
    store
        .acquire_leases(&node("a"), Epoch(3), &[PartitionId(1)], LONG)
        .await
        .expect("acquire");
    let stale = vec![
        add_fields(f, "h1", &[("n", 1)]),
        set_fields(f, "h1", &[("run", b"stale")]),
    ];
    let fenced = WriteOutcome::Fenced { stored: Epoch(3) };
    assert_eq!(write(store, stale).await, vec![fenced.clone(), fenced]);
    assert_eq!(field(store, "h1", "n").await, Some(b"42".to_vec()));
    assert_eq!(field(store, "h1", "run").await, Some(b"running".to_vec()));
}

/// A list keeps its records in order; pages by index and count; the count of records.
pub async fn lists_of_records(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(1, 1);
    assert_eq!(store.record_count("ledger").await.expect("count"), 0);
    assert!(all_records(store, "ledger").await.is_empty());
    let pushes = (0..5u8)
        .map(|i| push_record(f, "ledger", &[b'r', i, 0xff]))
        .collect();
    assert_eq!(write(store, pushes).await, vec![DONE; 5]);
    let record = |i: u8| vec![b'r', i, 0xff];
    assert_eq!(store.record_count("ledger").await.expect("count"), 5);
    assert_eq!(
        all_records(store, "ledger").await,
        (0..5).map(record).collect::<Vec<_>>()
    );
    assert_eq!(
        store.records("ledger", 1, 2).await.expect("page"),
        vec![record(1), record(2)]
    );
    assert_eq!(
        store.records("ledger", 4, 10).await.expect("last page"),
        vec![record(4)]
    );
    assert!(
        store
            .records("ledger", 5, 10)
            .await
            .expect("past")
            .is_empty()
    );
    assert!(
        store
            .records("ledger", 0, 0)
            .await
            .expect("none")
            .is_empty()
    );
    assert!(
        store
            .records("ledger", u64::MAX, u64::MAX)
            .await
            .expect("far")
            .is_empty()
    );
    // Another list of the same name's hash or set is another record.
    assert!(store.fields("ledger").await.expect("fields").is_empty());
}

/// Members in byte order, read with a cursor page after page; `AddMembers` counts only the
/// members that were new (one named twice counts once).
pub async fn sorted_set_members(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = fence(1, 1);
    assert_eq!(store.member_count("aud").await.expect("count"), 0);
    assert!(all_members(store, "aud").await.is_empty());
    let outcomes = write(
        store,
        vec![
            add_members(f, "aud", &["b", "a", "10", "é", "B", "9"]),
            add_members(f, "aud", &["a", "ab", "0", "ab", "r:1"]),
            add_members(f, "aud", &["b", "9"]),
            add_members(f, "aud", &[]),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            WriteOutcome::Counter(6),
            WriteOutcome::Counter(3),
            WriteOutcome::Counter(0),
            WriteOutcome::Counter(0),
        ]
    );
    // Byte order: digits, upper case, lower case, then multi-byte UTF-8.
    let ordered = ["0", "10", "9", "B", "a", "ab", "b", "r:1", "é"];
    assert_eq!(all_members(store, "aud").await, ordered);
    assert_eq!(store.member_count("aud").await.expect("count"), 9);
    // Pages of 4 with a cursor: the last member of a page starts the next.
    let mut pages = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .members_after("aud", after.as_deref(), 4)
            .await
            .expect("page");
        if page.is_empty() {
            break;
        }
        after = page.last().cloned();
        pages.push(page);
        assert!(pages.len() <= 3, "paging ends");
    }
    assert_eq!(
        pages,
        vec![
            vec!["0", "10", "9", "B"],
            vec!["a", "ab", "b", "r:1"],
            vec!["é"]
        ]
    );
    // Removing members (some not there): the rest stay in order; fenced, nothing goes.
    let outcomes = write(
        store,
        vec![FencedOp {
            fence: f,
            op: WriteOp::RemoveMembers {
                key: "aud".into(),
                members: vec!["B".into(), "nope".into(), "r:1".into()],
            },
        }],
    )
    .await;
    assert_eq!(outcomes, vec![WriteOutcome::Done]);
    assert_eq!(
        all_members(store, "aud").await,
        ["0", "10", "9", "a", "ab", "b", "é"]
    );
    store
        .acquire_leases(
            &herald_proto::NodeId("other".into()),
            Epoch(5),
            &[PartitionId(1)],
            std::time::Duration::from_secs(60),
        )
        .await
        .expect("raise the epoch");
    let outcomes = write(
        store,
        vec![FencedOp {
            fence: f,
            op: WriteOp::RemoveMembers {
                key: "aud".into(),
                members: vec!["a".into()],
            },
        }],
    )
    .await;
    assert!(
        matches!(outcomes[0], WriteOutcome::Fenced { .. }),
        "{outcomes:?}"
    );
    assert_eq!(store.member_count("aud").await.expect("count"), 7);
    // A cursor need not be a member: what follows it in byte order.
    assert_eq!(
        store
            .members_after("aud", Some("aa"), 2)
            .await
            .expect("page"),
        vec!["ab", "b"]
    );
    assert!(
        store
            .members_after("aud", None, 0)
            .await
            .expect("none")
            .is_empty()
    );
    assert!(
        store
            .members_after("other", Some("a"), 5)
            .await
            .expect("none")
            .is_empty()
    );
}

/// The recipient index of a partition (the sorted set `partition_recipients`): a put adds
/// the recipient (once), an erase takes it out, a fenced put or erase changes nothing; each
/// partition and tenant has its own.
pub async fn partition_recipient_index(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let index = |partition| partition_recipients(&tenant(), partition);
    let f = fence(3, 1);
    assert!(all_members(store, &index(3)).await.is_empty());
    let outcomes = write(
        store,
        vec![
            put_recipient(f, recipient("r2", "b@x")),
            put_recipient(f, recipient("r1", "a@x")),
            put_recipient(f, recipient("r:3", "c@x")),
            put_recipient(fence(4, 1), recipient("r4", "d@x")),
        ],
    )
    .await;
    assert_eq!(outcomes, vec![DONE; 4]);
    assert_eq!(all_members(store, &index(3)).await, ["r1", "r2", "r:3"]);
    assert_eq!(all_members(store, &index(4)).await, ["r4"]);
    // Again (an update): indexed once.
    write(store, vec![put_recipient(f, recipient("r1", "new@x"))]).await;
    assert_eq!(store.member_count(&index(3)).await.expect("count"), 3);
    let erase = |fence, id: &str| FencedOp {
        fence,
        op: WriteOp::EraseRecipient {
            tenant: tenant(),
            recipient_id: id.to_owned(),
        },
    };
    assert_eq!(
        write(store, vec![erase(f, "r1"), erase(f, "never")]).await,
        vec![DONE, DONE]
    );
    assert_eq!(all_members(store, &index(3)).await, ["r2", "r:3"]);
    // Another tenant's index is another set.
    assert!(
        all_members(store, &partition_recipients(&TenantId("globex".into()), 3))
            .await
            .is_empty()
    );
    // A stale owner neither indexes nor unindexes.
    store
        .acquire_leases(&node("b"), Epoch(2), &[PartitionId(3)], LONG)
        .await
        .expect("acquire");
    let fenced = WriteOutcome::Fenced { stored: Epoch(2) };
    assert_eq!(
        write(
            store,
            vec![put_recipient(f, recipient("r9", "z@x")), erase(f, "r2")]
        )
        .await,
        vec![fenced.clone(), fenced]
    );
    assert_eq!(all_members(store, &index(3)).await, ["r2", "r:3"]);
    assert!(
        store
            .get_recipient(&tenant(), "r9")
            .await
            .expect("get")
            .is_none()
    );
}

/// `expire` makes a name's hash, list and sorted set disappear after the ttl (a name that
/// does not exist is ignored; other names stay); a write after that starts a new record.
pub async fn expiring_records(store: Arc<dyn Store>) {
    let store = store.as_ref();
    let f = Fence::NONE;
    let fill = |name: &str| {
        vec![
            set_fields(f, name, &[("def", b"x")]),
            push_record(f, name, b"r"),
            add_members(f, name, &["m"]),
        ]
    };
    write(store, fill("gone")).await;
    write(store, fill("kept")).await;
    let names = ["gone".to_owned(), "never-written".to_owned()];
    store
        .expire(&names, Duration::from_millis(300))
        .await
        .expect("expire");
    store.expire(&[], LONG).await.expect("nothing to expire");
    let gone = |name: &'static str| async move {
        store.fields(name).await.expect("fields").is_empty()
            && store.record_count(name).await.expect("count") == 0
            && store.member_count(name).await.expect("count") == 0
            && all_members(store, name).await.is_empty()
            && all_records(store, name).await.is_empty()
    };
    eventually("an expired name's records", Duration::from_secs(10), || {
        gone("gone")
    })
    .await;
    assert!(!gone("kept").await, "not expired");
    assert_eq!(field(store, "kept", "def").await, Some(b"x".to_vec()));
    // A write after the expiry starts new records (nothing of the old ones).
    write(
        store,
        vec![
            add_fields(f, "gone", &[("n", 1)]),
            add_members(f, "gone", &["m2"]),
        ],
    )
    .await;
    assert_eq!(sorted_fields(store, "gone").await, owned(&[("n", b"1")]));
    assert_eq!(all_members(store, "gone").await, ["m2"]);
    assert_eq!(store.record_count("gone").await.expect("count"), 0);
}

/// [`Fence::NONE`] is never fenced, whatever epoch a partition reached (partition 0
/// included).
pub async fn fence_none_is_never_fenced(store: Arc<dyn Store>) {
    let store = store.as_ref();
    for partition in [0, 7] {
        let taken = store
            .acquire_leases(&node("a"), Epoch(1 << 40), &[PartitionId(partition)], LONG)
            .await
            .expect("acquire");
        assert_eq!(taken, vec![PartitionId(partition)]);
    }
    let outcomes = write(
        store,
        vec![
            set_fields(Fence::NONE, "cmp", &[("run", b"running")]),
            field_is(Fence::NONE, "cmp", "run", b"running", 1),
            add_members(Fence::NONE, "live", &["acme\x1fc1"]),
            set_fields(fence(0, 1), "cmp", &[("run", b"stale")]),
        ],
    )
    .await;
    assert_eq!(
        outcomes,
        vec![
            DONE,
            DONE,
            WriteOutcome::Counter(1),
            WriteOutcome::Fenced {
                stored: Epoch(1 << 40)
            }
        ]
    );
    assert_eq!(field(store, "cmp", "run").await, Some(b"running".to_vec()));
}
