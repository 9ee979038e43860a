//! Unit tests of the encoding: no Redis, only the arguments and replies (the backend suite
//! runs them against a real server).

use std::sync::Arc;

use super::*;

#[test]
fn chunks_never_separate_an_accept_from_its_guarded_ops() {
    let fence = crate::Fence {
        partition: PartitionId(1),
        epoch: Epoch(1),
    };
    let counter = || FencedOp {
        fence,
        op: WriteOp::IncrCounter {
            key: "k".into(),
            delta: 1,
            ttl: Duration::from_secs(1),
        },
    };
    let accept = |guards| FencedOp {
        fence,
        op: WriteOp::AcceptMessage {
            message: Arc::new(StoredMessage::default()),
            accepted: Event::default(),
            idempotency_ttl: Duration::from_secs(1),
            guards,
        },
    };
    let lengths = |ops: &[FencedOp], max| {
        chunks(ops, max)
            .iter()
            .map(|chunk| chunk.len())
            .collect::<Vec<_>>()
    };
    let plain: Vec<FencedOp> = (0..5).map(|_| counter()).collect();
    assert_eq!(lengths(&plain, 2), vec![2, 2, 1]);
    // [c, accept+2, c, c] in chunks of 2: the guarded group of 3 stays whole.
    let ops = vec![
        counter(),
        accept(2),
        counter(),
        counter(),
        counter(),
        counter(),
    ];
    assert_eq!(lengths(&ops, 2), vec![1, 3, 2]);
    // Guards past the end of the call cover what is there.
    let ops = vec![counter(), accept(9), counter()];
    assert_eq!(lengths(&ops, 2), vec![1, 2]);
    assert_eq!(lengths(&[], 2), Vec::<usize>::new());
}

fn fence() -> crate::Fence {
    crate::Fence {
        partition: PartitionId(1),
        epoch: Epoch(1),
    }
}

fn entries(args: &Args) -> Vec<String> {
    let mut start = 0;
    args.ends
        .iter()
        .map(|&end| {
            let entry = String::from_utf8_lossy(&args.buf[start..end]).into_owned();
            start = end;
            entry
        })
        .collect()
}

fn require(guards: usize) -> FencedOp {
    FencedOp {
        fence: fence(),
        op: WriteOp::Require {
            check: Check::Take {
                key: "credits".into(),
                field: "available".into(),
                amount: -5,
            },
            guards,
        },
    }
}

fn push(record: &str) -> FencedOp {
    FencedOp {
        fence: fence(),
        op: WriteOp::PushRecord {
            key: "ledger".into(),
            record: record.as_bytes().to_vec(),
        },
    }
}

fn append_with(tallies: Vec<Tally>) -> FencedOp {
    FencedOp {
        fence: fence(),
        op: WriteOp::AppendEvents {
            tenant: TenantId("t".into()),
            message_id: MessageId("m".into()),
            events: Vec::new(),
            terminal: false,
            retention: Duration::ZERO,
            tallies,
        },
    }
}

fn keys() -> RedisKeys {
    RedisKeys { prefix: "p".into() }
}

#[test]
fn chunks_never_separate_a_require_from_its_guarded_ops() {
    let lengths = |ops: &[FencedOp], max| {
        chunks(ops, max)
            .iter()
            .map(|chunk| chunk.len())
            .collect::<Vec<_>>()
    };
    // [p, require+3 (holding a require+1), p] in chunks of 2.
    let ops = vec![
        push("a"),
        require(3),
        push("b"),
        require(1),
        push("c"),
        push("d"),
    ];
    assert_eq!(lengths(&ops, 2), vec![1, 4, 1]);
}

#[test]
fn an_append_without_tallies_costs_one_argument() {
    let (args, expect) = encode_ops(&keys(), &[append_with(Vec::new())]);
    assert_eq!(
        entries(&args),
        ["E", "1", "1", "p:e:t:m", "", "", "0", "0"],
        "code, partition, epoch, key, member, expected seq, count, tally entries"
    );
    assert_eq!(expect.len(), 1);
    let tallies = vec![
        Tally::AddFields {
            key: "f".into(),
            deltas: vec![("a".into(), 1), ("b".into(), -2)],
        },
        Tally::PushRecord {
            key: "l".into(),
            record: b"r".to_vec(),
        },
    ];
    let (args, _) = encode_ops(&keys(), &[append_with(tallies)]);
    assert_eq!(
        entries(&args)[7..],
        [
            "10", "A", "p:h:f", "2", "a", "1", "b", "-2", "P", "p:l:l", "r"
        ]
    );
}

#[test]
fn nested_requires_skip_their_own_ranges() {
    // require+3 [push a, require+1 [push b]], push c, push d: the inner require and what it
    // guards count among the outer's three.
    let ops = vec![
        require(3),
        push("a"),
        require(1),
        push("b"),
        push("c"),
        push("d"),
    ];
    let (args, expect) = encode_ops(&keys(), &ops);
    let listed = entries(&args);
    let g = |at: usize| &listed[at..at + 9];
    // Each push is 5 entries, a require 9: the outer skips 5 + 9 + 5 entries, 3 replies.
    assert_eq!(
        g(0),
        [
            "G",
            "1",
            "1",
            "T",
            "p:h:credits",
            "available",
            "-5",
            "19",
            "3"
        ]
    );
    assert_eq!(
        g(14),
        [
            "G",
            "1",
            "1",
            "T",
            "p:h:credits",
            "available",
            "-5",
            "5",
            "1"
        ]
    );
    assert_eq!(listed.len(), 9 + 5 + 9 + 5 + 5 + 5);
    assert_eq!(expect.len(), ops.len());
}

#[test]
fn an_accept_does_not_fold_an_append_with_tallies() {
    let message = StoredMessage {
        tenant: "t".into(),
        message_id: "m".into(),
        ..Default::default()
    };
    let accept = FencedOp {
        fence: fence(),
        op: WriteOp::AcceptMessage {
            message: Arc::new(message),
            accepted: Event::default(),
            idempotency_ttl: Duration::from_secs(1),
            guards: 1,
        },
    };
    let tally = Tally::PushRecord {
        key: "l".into(),
        record: b"r".to_vec(),
    };
    let (args, expect) = encode_ops(&keys(), &[accept.clone(), append_with(vec![tally])]);
    let listed = entries(&args);
    assert_eq!(listed[0], "B");
    assert_eq!(listed[9], "1", "one reply to skip");
    assert_eq!(listed[10], "0", "nothing folded");
    assert!(listed.contains(&"E".to_owned()), "the append is its own op");
    assert_eq!(expect.len(), 2);
    let (args, _) = encode_ops(&keys(), &[accept, append_with(Vec::new())]);
    assert_eq!(entries(&args)[10], "1", "folded");
}

#[test]
fn unmet_reply_decodes() {
    let outcome = decode_outcome(
        &Expect::Done,
        Value::Array(vec![Value::BulkString(b"unmet".to_vec())]),
    );
    assert_eq!(outcome.expect("decodes"), WriteOutcome::Unmet);
}

#[test]
fn skipped_reply_decodes() {
    let outcome = decode_outcome(
        &Expect::Counter,
        Value::Array(vec![Value::BulkString(b"skipped".to_vec())]),
    );
    assert_eq!(outcome.expect("decodes"), WriteOutcome::Skipped);
}

#[test]
fn fenced_reply_decodes() {
    let outcome = decode_outcome(&Expect::Done, Value::Array(vec![Value::Int(6)]));
    assert_eq!(
        outcome.expect("decodes"),
        WriteOutcome::Fenced { stored: Epoch(6) }
    );
}
