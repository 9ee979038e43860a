//! Journeys on a three-process cluster with Redis and an accelerated policy clock:
//!
//! - a win-back 30/60/90 over 10,000 people (`HERALD_JOURNEY_PEOPLE`): everyone gets exactly
//!   the steps the rules give, checked per person, and the people who buy after the first step
//!   get nothing more;
//! - `kill -9` of a node with thousands of people in waits: every wait fires on the new owner
//!   within 1 s of its due time, none twice.
//!
//! Each prints one JSON line of figures.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use herald::demo::demo_recipient;
use herald_proto::partition::partition_of;
use herald_proto::v1::journeys_client::JourneysClient;
use herald_proto::v1::{
    JourneyFunnel, JourneyPerson, JourneyPersonStatus, JourneySpec, UpsertRecipientsRequest,
};
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, TENANT, authed, channel};
use herald_testkit::eventually::eventually;
use herald_testkit::journeys::{self, sent_steps};
use tonic::transport::Channel;

const IN_FLIGHT: usize = 48;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Nodes whose journey clock runs `rate` times faster than real time from now on.
fn accelerated(rate: u32) -> NodeSpec {
    NodeSpec {
        top: format!(
            "policy_clock_rate = {rate}\npolicy_clock_anchor_unix_ms = {}",
            now_ms()
        ),
        sandbox: "receipt_delay_ms = 0".into(),
        ..NodeSpec::default()
    }
}

/// The win-back (`herald::demo`): on `inactive_30d` a push, 30 days later an email,
/// 30 more an SMS; a purchase or a conversion ends it. `with_last_call` false: the push, the
/// 30-day wait and the email only.
fn win_back(with_last_call: bool) -> JourneySpec {
    let mut spec = herald::demo::demo_win_back_journey();
    if !with_last_call {
        spec.steps.truncate(3);
    }
    spec
}

async fn upsert_people(cluster: &Cluster, n: usize) {
    let mut recipients = cluster.recipients(0).await;
    let people: Vec<_> = (0..n).map(|i| demo_recipient(format!("p{i}"), i)).collect();
    for chunk in people.chunks(1_000) {
        recipients
            .upsert_recipients(authed(
                UpsertRecipientsRequest {
                    recipients: chunk.to_vec(),
                },
                API_KEY,
            ))
            .await
            .expect("upsert");
    }
}

/// Reports `event` for `recipient`, retrying while the cluster is moving (bounded).
async fn report(api: &JourneysClient<Channel>, recipient: &str, event: &str) -> Vec<String> {
    for _ in 0..20 {
        match journeys::report(&mut api.clone(), API_KEY, recipient, event, BTreeMap::new()).await {
            Ok(answer) => return answer.entered.into_iter().chain(answer.exited).collect(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(status) => panic!("{event} for {recipient}: {status:?}"),
        }
    }
    panic!("{event} for {recipient}: still unavailable");
}

async fn funnel(api: &JourneysClient<Channel>, journey: &str) -> Option<JourneyFunnel> {
    journeys::get(&mut api.clone(), API_KEY, journey)
        .await
        .ok()?
        .funnel
}

/// Every person's state, read in parallel.
async fn people(api: &JourneysClient<Channel>, journey: &str, n: usize) -> Vec<JourneyPerson> {
    futures::stream::iter(0..n)
        .map(|i| {
            let mut api = api.clone();
            async move {
                journeys::person(&mut api, API_KEY, journey, &format!("p{i}"))
                    .await
                    .unwrap_or_else(|status| panic!("p{i}: {status:?}"))
            }
        })
        .buffered(IN_FLIGHT)
        .collect()
        .await
}

/// How late (real ms) each wait-following send fired, with the policy clock at `rate`.
fn lateness_ms(person: &JourneyPerson, rate: u32) -> Vec<i64> {
    person
        .sent
        .iter()
        .filter(|s| s.waited_until_unix_ms > 0)
        .map(|s| (s.at_unix_ms - s.waited_until_unix_ms) / i64::from(rate))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_win_back_over_ten_thousand_people_gives_each_exactly_their_steps() {
    let n = env_or("HERALD_JOURNEY_PEOPLE", 10_000);
    // Two days a second: a 60-day journey plays out in 30 s.
    let rate = 172_800;
    let cluster = Cluster::start(3, accelerated(rate)).await;
    upsert_people(&cluster, n).await;
    let apis: Vec<JourneysClient<Channel>> = futures::future::join_all(
        cluster
            .node_addrs
            .iter()
            .map(|a| async move { journeys::client(channel(a).await) }),
    )
    .await;
    let journey = journeys::create(&mut apis[0].clone(), API_KEY, win_back(true))
        .await
        .expect("create")
        .journey_id;
    // Everyone enters through any node; one in ten buys right after the first push.
    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let api = apis[i % apis.len()].clone();
            let journey = journey.clone();
            async move {
                let id = format!("p{i}");
                assert_eq!(
                    report(&api, &id, "inactive_30d").await,
                    vec![journey.clone()]
                );
                if i % 10 == 0 {
                    assert_eq!(report(&api, &id, "purchased").await, vec![journey]);
                }
            }
        })
        .await;
    let entered_in = started.elapsed();
    let done = eventually("everyone's journey ended", Duration::from_secs(240), || {
        let api = apis[1].clone();
        let journey = journey.clone();
        async move {
            let funnel = funnel(&api, &journey).await?;
            (funnel.completed + funnel.exited.values().sum::<u64>() == n as u64).then_some(funnel)
        }
    })
    .await;
    let played_in = started.elapsed();
    let converters = n.div_ceil(10) as u64;
    assert_eq!((done.entered, done.active, done.in_wait), (n as u64, 0, 0));
    assert_eq!(done.completed, n as u64 - converters);
    assert_eq!(done.exited.get("event:purchased"), Some(&converters));
    let sent = |step: &str| {
        done.steps
            .iter()
            .find(|s| s.step == step)
            .map_or(0, |s| s.sent)
    };
    assert_eq!(
        (sent("miss-you"), sent("offer"), sent("last-call")),
        (n as u64, n as u64 - converters, n as u64 - converters)
    );

    // Per person: exactly the rules' steps, each its own message.
    let everyone = people(&apis[2], &journey, n).await;
    let mut message_ids = HashSet::new();
    let mut late = Vec::new();
    for (i, person) in everyone.iter().enumerate() {
        if i % 10 == 0 {
            assert_eq!(
                (person.status(), sent_steps(person)),
                (JourneyPersonStatus::JourneyPersonExited, vec!["miss-you"]),
                "p{i} bought after the first step"
            );
        } else {
            assert_eq!(
                (person.status(), sent_steps(person)),
                (
                    JourneyPersonStatus::JourneyPersonCompleted,
                    vec!["miss-you", "offer", "last-call"]
                ),
                "p{i}"
            );
        }
        for sent in &person.sent {
            assert!(sent.refused.is_empty(), "p{i}: {}", sent.refused);
            assert!(
                message_ids.insert(sent.message_id.clone()),
                "p{i}: a message twice"
            );
        }
        late.extend(lateness_ms(person, rate));
    }
    late.sort_unstable();
    println!(
        "{{\"bench\":\"journey_win_back\",\"people\":{n},\"entered_s\":{:.1},\"played_s\":{:.1},\"messages\":{},\"wait_late_ms_p50\":{},\"wait_late_ms_max\":{}}}",
        entered_in.as_secs_f64(),
        played_in.as_secs_f64(),
        message_ids.len(),
        late.get(late.len() / 2).copied().unwrap_or(0),
        late.last().copied().unwrap_or(0),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waits_fire_on_the_new_owner_after_kill_9_within_a_second_and_never_twice() {
    let n = env_or("HERALD_JOURNEY_KILL_PEOPLE", 6_000);
    // A day a second: the 30-day wait ends 30 s after each entry.
    let rate = 86_400;
    let cluster = Cluster::start(3, accelerated(rate)).await;
    upsert_people(&cluster, n).await;
    let api = journeys::client(channel(&cluster.node_addrs[0]).await);
    let journey = journeys::create(&mut api.clone(), API_KEY, win_back(false))
        .await
        .expect("create")
        .journey_id;
    let started = Instant::now();
    futures::stream::iter(0..n)
        .for_each_concurrent(IN_FLIGHT, |i| {
            let api = api.clone();
            async move {
                report(&api, &format!("p{i}"), "inactive_30d").await;
            }
        })
        .await;
    let entered_in = started.elapsed();
    let in_wait = funnel(&api, &journey).await.map_or(0, |f| f.in_wait);
    assert_eq!(in_wait, n as u64, "everyone waits");
    assert!(
        entered_in < Duration::from_secs(20),
        "entries must end well before the first wait is due ({entered_in:?})"
    );
    // The people whose waits the killed node held.
    let table = cluster.table().await;
    let victim = 2;
    let victim_index = table
        .nodes
        .iter()
        .position(|node| node.address == cluster.internal_addrs[victim])
        .expect("the victim is in the table") as u32;
    let owned: HashSet<u32> = table
        .owners
        .iter()
        .enumerate()
        .filter(|(_, owner)| **owner == victim_index)
        .map(|(partition, _)| partition as u32)
        .collect();
    let moved: Vec<usize> = (0..n)
        .filter(|i| {
            owned.contains(&partition_of(TENANT, &format!("p{i}"), cluster.partition_count).0)
        })
        .collect();
    cluster.nodes[victim].kill_9();
    let killed_at = started.elapsed();

    let done = eventually("every wait fired", Duration::from_secs(120), || {
        let api = api.clone();
        let journey = journey.clone();
        async move {
            let funnel = funnel(&api, &journey).await?;
            (funnel.completed == n as u64).then_some(funnel)
        }
    })
    .await;
    assert_eq!((done.in_wait, done.active), (0, 0));
    let offers = done
        .steps
        .iter()
        .find(|s| s.step == "offer")
        .map_or(0, |s| s.sent);
    assert_eq!(offers, n as u64, "each wait's send counted once");
    let everyone = people(&api, &journey, n).await;
    let mut late_moved = Vec::new();
    for (i, person) in everyone.iter().enumerate() {
        assert_eq!(sent_steps(person), ["miss-you", "offer"], "p{i}");
        let ids: HashSet<&str> = person.sent.iter().map(|s| s.message_id.as_str()).collect();
        assert_eq!(ids.len(), 2, "p{i}: two messages");
        if moved.contains(&i) {
            late_moved.extend(lateness_ms(person, rate));
        }
    }
    late_moved.sort_unstable();
    let worst = late_moved.last().copied().unwrap_or(0);
    println!(
        "{{\"bench\":\"journey_kill_9\",\"people\":{n},\"moved\":{},\"entered_s\":{:.1},\"killed_at_s\":{:.1},\"moved_late_ms_p50\":{},\"moved_late_ms_max\":{worst}}}",
        moved.len(),
        entered_in.as_secs_f64(),
        killed_at.as_secs_f64(),
        late_moved.get(late_moved.len() / 2).copied().unwrap_or(0),
    );
    assert!(moved.len() > n / 5, "the victim held a share of the waits");
    assert!(worst <= 1_000, "a moved wait fired {worst} ms late");
}
