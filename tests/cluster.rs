//! Multi-process acceptance test: `redis-server`, `herald control` and 3 `herald node` processes
//! on loopback. 10,000 messages round-robin through all nodes; then `kill -9` one node mid-run.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use herald::demo::{demo_message, demo_recipient};
use herald_proto::partition::partition_of;
use herald_proto::v1::{
    Channel, EventKind, GetMessageResponse, MessageRequest, PartitionTable, SendBatchRequest,
    SuccessCondition, UpsertRecipientsRequest, WaterfallStep,
};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, TENANT, authed};
use herald_testkit::delivery::wait_all_terminal;
use herald_testkit::eventually::{eventually, eventually_ok};

const MESSAGES: usize = 10_000;
const BATCH: usize = 100;

fn owner(table: &PartitionTable, partition: u32) -> String {
    let index = table.owners[partition as usize] as usize;
    table.nodes[index].node_id.clone()
}

async fn create_recipients(cluster: &Cluster, prefix: &str, n: usize) {
    let nodes = cluster.node_addrs.len();
    for (b, start) in (0..n).step_by(1000).enumerate() {
        let recipients = (start..(start + 1000).min(n))
            .map(|i| demo_recipient(format!("{prefix}{i}"), i))
            .collect();
        cluster
            .recipients(b % nodes)
            .await
            .upsert_recipients(authed(UpsertRecipientsRequest { recipients }, API_KEY))
            .await
            .expect("upsert recipients");
    }
}

/// Submits `n` messages round-robin in batches; a batch whose node fails is retried on the next
/// node with the same idempotency keys. Returns the acked message ids.
async fn submit(
    cluster: &Cluster,
    prefix: &str,
    n: usize,
    alive: &[usize],
    on_batch: impl Fn(usize),
) -> Vec<String> {
    submit_with(cluster, n, alive, on_batch, |i| {
        demo_message(format!("{prefix}{i}"), format!("{prefix}-key-{i}"))
    })
    .await
}

/// [`submit`] with messages built by `make` (called with the message index, again for a retry:
/// it must give the same idempotency key).
async fn submit_with(
    cluster: &Cluster,
    n: usize,
    alive: &[usize],
    on_batch: impl Fn(usize),
    make: impl Fn(usize) -> MessageRequest,
) -> Vec<String> {
    let mut acked = Vec::with_capacity(n);
    let mut clients = Vec::new();
    for index in alive {
        clients.push(cluster.delivery(*index).await);
    }
    let (clients, make) = (&clients, &make);
    for (b, start) in (0..n).step_by(BATCH).enumerate() {
        on_batch(b);
        // Messages not acked yet, by index; a batch may be accepted in part (an owner died):
        // what failed is retried on the next node with the same idempotency keys.
        let pending = Mutex::new((start..(start + BATCH).min(n)).collect::<Vec<usize>>());
        let acked_now = Mutex::new(Vec::new());
        let attempt = AtomicUsize::new(b);
        let (pending, acked_now, attempt) = (&pending, &acked_now, &attempt);
        eventually_ok(
            &format!("batch {b} acked"),
            Duration::from_secs(30),
            || async move {
                let indexes = pending.lock().expect("lock").clone();
                let messages: Vec<_> = indexes.iter().map(|i| make(*i)).collect();
                let mut client =
                    clients[attempt.fetch_add(1, Ordering::Relaxed) % clients.len()].clone();
                let reply = client
                    .send_batch(authed(SendBatchRequest { messages }, API_KEY))
                    .await
                    .map_err(|status| format!("{} never acked: {status:?}", indexes.len()))?;
                let mut still = Vec::new();
                for (i, result) in indexes.iter().zip(reply.into_inner().results) {
                    match result.error {
                        None => acked_now.lock().expect("lock").push(result.message_id),
                        Some(error) => {
                            assert_eq!(error.code, tonic::Code::Unavailable as i32, "{error:?}");
                            still.push(*i);
                        }
                    }
                }
                let left = still.len();
                *pending.lock().expect("lock") = still;
                if left == 0 {
                    Ok(())
                } else {
                    Err(format!("{left} never acked"))
                }
            },
        )
        .await;
        acked.append(&mut acked_now.lock().expect("lock"));
    }
    acked
}

/// The invariants of ARCHITECTURE.md over every log, judged by the chaos crate's checker.
fn check_logs(
    logs: &HashMap<String, GetMessageResponse>,
    partition_count: u32,
    allowed_owners: impl Fn(u32) -> Vec<String>,
) -> (usize, usize) {
    let summary = judge(logs, partition_count, allowed_owners);
    (summary.attempts, summary.ambiguous)
}

fn judge(
    logs: &HashMap<String, GetMessageResponse>,
    partition_count: u32,
    allowed_owners: impl Fn(u32) -> Vec<String>,
) -> herald_chaos::history::Summary {
    let partition = |recipient: &str| partition_of(TENANT, recipient, partition_count).0;
    let summary = herald_chaos::history::check(
        logs.values(),
        &herald_chaos::history::Expectations {
            partition_of: &partition,
            allowed_owners: &allowed_owners,
        },
    )
    .unwrap_or_else(|violation| panic!("invariant violated: {violation}"));
    assert_eq!(summary.messages, logs.len());
    summary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_messages_then_kill_a_node() {
    let started = Instant::now();
    let cluster = Cluster::start(
        3,
        NodeSpec {
            sandbox_latency_ms: 2,
            ..Default::default()
        },
    )
    .await;
    eprintln!("cluster ready in {:?}", started.elapsed());
    let table = cluster.table().await;
    assert_eq!(table.owners.len(), 4096);

    // Phase 1: 10,000 messages round-robin through all 3 nodes, no failures.
    create_recipients(&cluster, "a", MESSAGES).await;
    let phase = Instant::now();
    let acked = submit(&cluster, "a", MESSAGES, &[0, 1, 2], |_| {}).await;
    assert_eq!(acked.len(), MESSAGES);
    assert_eq!(
        acked.iter().collect::<HashSet<_>>().len(),
        MESSAGES,
        "ids are unique"
    );
    let logs = wait_all_terminal(
        &cluster.delivery(0).await,
        API_KEY,
        &acked,
        Duration::from_secs(120),
    )
    .await;
    let (attempts, ambiguous) = check_logs(&logs, 4096, |p| vec![owner(&table, p)]);
    assert_eq!(ambiguous, 0);
    eprintln!(
        "phase 1: {MESSAGES} messages terminal in {:?}, {attempts} provider attempts",
        phase.elapsed()
    );

    // Phase 2: kill -9 node-2 while messages are in flight.
    create_recipients(&cluster, "b", MESSAGES).await;
    let victim = 2usize;
    let victim_id = format!("node-{victim}");
    let killed_at = Mutex::new(None::<Instant>);
    let phase = Instant::now();
    let submitting = submit(&cluster, "b", MESSAGES, &[0, 1, 2], |batch| {
        if batch == 30 {
            cluster.nodes[victim].kill_9();
            *killed_at.lock().expect("lock") = Some(Instant::now());
        }
    });
    let measuring = async {
        // Served again = the control plane dropped the dead node and the survivors serve every
        // partition at the new epoch (as they report it in their heartbeats).
        let killed = eventually("the victim killed", Duration::from_secs(120), || async {
            *killed_at.lock().expect("lock")
        })
        .await;
        cluster.wait_ready(2, Duration::from_secs(30)).await;
        killed.elapsed()
    };
    let (acked, failover) = tokio::join!(submitting, measuring);
    eprintln!(
        "FAILOVER: node {victim_id} killed with -9; its partitions were served again after {:.2} s",
        failover.as_secs_f64()
    );
    assert!(
        failover < Duration::from_secs(5),
        "dead node's partitions took {failover:?} to be served again"
    );
    assert_eq!(acked.len(), MESSAGES);
    let after = cluster.table().await;
    assert!(after.nodes.iter().all(|n| n.node_id != victim_id));
    assert!(after.epoch > table.epoch);
    let logs = wait_all_terminal(
        &cluster.delivery(0).await,
        API_KEY,
        &acked,
        Duration::from_secs(120),
    )
    .await;
    let (attempts, ambiguous) = check_logs(&logs, 4096, |p| {
        let mut owners = vec![owner(&table, p), owner(&after, p)];
        owners.dedup();
        owners
    });
    eprintln!(
        "phase 2: {MESSAGES} acked messages terminal in {:?}, {attempts} attempts, {ambiguous} ambiguous (recorded) re-sends",
        phase.elapsed()
    );
    // Partitions that did not belong to the victim did not move.
    let moved_elsewhere = (0..4096u32)
        .filter(|p| owner(&table, *p) != victim_id && owner(&table, *p) != owner(&after, *p))
        .count();
    assert_eq!(moved_elsewhere, 0, "only the dead node's partitions move");
}

/// Messages waiting for receipts on durable timers; the owner of some of them is killed with -9;
/// the new owners fire every timer within 1 s of its due time, and no step runs twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timers_fire_on_time_on_the_new_owner_after_kill_9() {
    const WAITING: usize = 5_000;
    /// The push step's receipt timeout: long enough for submission plus a takeover (~2 s).
    const PUSH_TIMEOUT_MS: u32 = 15_000;
    let started = Instant::now();
    let cluster = Cluster::start(
        3,
        NodeSpec {
            sandbox_latency_ms: 1,
            // Delivery receipts after 300 ms; 30% of push attempts never get one (their step
            // times out and the waterfall falls back to email).
            sandbox: "receipt_delay_ms = 300\npush_silent_share = 0.3".into(),
            ..Default::default()
        },
    )
    .await;
    eprintln!("cluster ready in {:?}", started.elapsed());
    let table = cluster.table().await;
    create_recipients(&cluster, "t", WAITING).await;
    let waterfall = vec![
        WaterfallStep {
            channel: Channel::Push as i32,
            success: SuccessCondition::Delivered as i32,
            timeout_ms: PUSH_TIMEOUT_MS,
            provider_account: String::new(),
        },
        WaterfallStep {
            channel: Channel::Email as i32,
            success: SuccessCondition::Accepted as i32,
            timeout_ms: 0,
            provider_account: String::new(),
        },
        WaterfallStep {
            channel: Channel::Sms as i32,
            success: SuccessCondition::Accepted as i32,
            timeout_ms: 0,
            provider_account: String::new(),
        },
    ];
    let phase = Instant::now();
    let acked = submit_with(
        &cluster,
        WAITING,
        &[0, 1, 2],
        |_| {},
        |i| {
            let mut message = demo_message(format!("t{i}"), format!("t-key-{i}"));
            message.waterfall = waterfall.clone();
            message
        },
    )
    .await;
    assert_eq!(acked.len(), WAITING);
    let submitted = phase.elapsed();
    // Kill the owner of about a third of the waiting messages while they wait.
    let victim = 2usize;
    let victim_id = format!("node-{victim}");
    cluster.nodes[victim].kill_9();
    let killed = Instant::now();
    cluster.wait_ready(2, Duration::from_secs(30)).await;
    let takeover = killed.elapsed();
    eprintln!(
        "TIMERS: {WAITING} messages submitted in {:.2} s; {victim_id} killed -9; partitions served again after {:.2} s",
        submitted.as_secs_f64(),
        takeover.as_secs_f64()
    );
    assert!(
        submitted + takeover < Duration::from_millis(u64::from(PUSH_TIMEOUT_MS)),
        "the test needs the takeover done before the first timer is due"
    );
    let after = cluster.table().await;
    let logs = wait_all_terminal(
        &cluster.delivery(0).await,
        API_KEY,
        &acked,
        Duration::from_secs(120),
    )
    .await;
    let summary = judge(&logs, 4096, |p| {
        let mut owners = vec![owner(&table, p), owner(&after, p)];
        owners.dedup();
        owners
    });
    // Timers the victim scheduled and a new owner fired.
    let mut taken_over = 0usize;
    for log in logs.values() {
        let waited_on = log
            .events
            .iter()
            .find(|e| e.kind() == EventKind::EventWaiting)
            .map(|e| e.node_id.clone());
        let fired_by = log
            .events
            .iter()
            .find(|e| e.kind() == EventKind::EventFailed && e.reason.starts_with("timeout{"))
            .map(|e| e.node_id.clone());
        if let (Some(waited_on), Some(fired_by)) = (waited_on, fired_by)
            && waited_on == victim_id
            && fired_by != victim_id
        {
            taken_over += 1;
        }
    }
    eprintln!(
        "TIMERS: {} timeouts ({taken_over} fired by a new owner after the kill), late by {}..={} ms; {} attempts, {} ambiguous, {} fallbacks, all terminal in {:.1} s",
        summary.timeouts,
        summary.min_timeout_late_ms,
        summary.max_timeout_late_ms,
        summary.attempts,
        summary.ambiguous,
        summary.fallbacks,
        phase.elapsed().as_secs_f64()
    );
    assert!(summary.timeouts > WAITING / 10, "{summary:?}");
    assert!(taken_over > 100, "only {taken_over} timers were taken over");
    assert!(
        summary.min_timeout_late_ms >= 0,
        "a timer fired {} ms early",
        -summary.min_timeout_late_ms
    );
    assert!(
        summary.max_timeout_late_ms < 1000,
        "a timer fired {} ms late",
        summary.max_timeout_late_ms
    );
}
