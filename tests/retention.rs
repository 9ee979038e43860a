//! Retention on real processes: a `herald node` on a real `redis-server`, a tenant with a
//! retention of about two seconds. Ended messages' keys (the message and its event log) get
//! their expiry once the message ends and are gone from Redis after it; `GetMessage` then
//! answers `NOT_FOUND`. A tenant with the default keeps its messages.

use std::time::Duration;

use herald::demo::{demo_message, demo_recipient};
use herald_proto::v1::UpsertRecipientsRequest;
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, OTHER_API_KEY, authed};
use herald_testkit::delivery::{get_message, send, wait_all_terminal};
use herald_testkit::eventually::eventually;

/// About 2.6 s.
const SHORT_RETENTION_DAYS: &str = "0.00003";

async fn redis(cluster: &Cluster) -> redis::aio::MultiplexedConnection {
    redis::Client::open(cluster.redis.url())
        .expect("redis url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connection")
}

/// The Redis key of message `id`'s log (whatever the cluster's key prefix).
async fn events_key(
    conn: &mut redis::aio::MultiplexedConnection,
    tenant: &str,
    id: &str,
) -> Option<String> {
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*:e:{tenant}:{id}"))
        .query_async(conn)
        .await
        .expect("KEYS");
    keys.into_iter().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_messages_are_gone_from_redis_after_their_retention() {
    let cluster = Cluster::start(
        1,
        NodeSpec {
            tenant: format!("retention_days = {SHORT_RETENTION_DAYS}"),
            ..Default::default()
        },
    )
    .await;
    let client = cluster.delivery(0).await;
    let mut ids = Vec::new();
    for (key, tenant) in [(API_KEY, "acme"), (OTHER_API_KEY, "globex")] {
        cluster
            .recipients(0)
            .await
            .upsert_recipients(authed(
                UpsertRecipientsRequest {
                    recipients: (0..3)
                        .map(|i| demo_recipient(format!("r-ret-{i}"), i))
                        .collect(),
                },
                key,
            ))
            .await
            .expect("upsert");
        for i in 0..3 {
            let sent = send(
                &client,
                key,
                demo_message(format!("r-ret-{i}"), format!("k-ret-{i}")),
            )
            .await
            .expect("send");
            ids.push((key, tenant, sent.message_id));
        }
    }
    for key in [API_KEY, OTHER_API_KEY] {
        let mine: Vec<String> = ids
            .iter()
            .filter(|(k, ..)| *k == key)
            .map(|(.., id)| id.clone())
            .collect();
        wait_all_terminal(&client, key, &mine, Duration::from_secs(60)).await;
    }

    let mut conn = redis(&cluster).await;
    // Once ended, acme's logs carry an expiry of at most the retention; globex's (30 days) a
    // long one.
    for (_, tenant, id) in &ids {
        let key = events_key(&mut conn, tenant, id).await.expect("log stored");
        let ttl_ms: i64 = eventually("the ended log's expiry", Duration::from_secs(10), || {
            let mut conn = conn.clone();
            let key = key.clone();
            async move {
                let ttl: i64 = redis::cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                (ttl > 0 || ttl == -2).then_some(ttl)
            }
        })
        .await;
        if *tenant == "acme" {
            assert!(ttl_ms <= 2_600, "{key}: {ttl_ms} ms");
        } else {
            assert!(ttl_ms > 29 * 86_400_000, "{key}: {ttl_ms} ms");
        }
    }
    eventually(
        "acme's ended logs are gone",
        Duration::from_secs(15),
        || {
            let mut conn = conn.clone();
            async move {
                let left: Vec<String> = redis::cmd("KEYS")
                    .arg("*:e:acme:*")
                    .query_async(&mut conn)
                    .await
                    .ok()?;
                left.is_empty().then_some(())
            }
        },
    )
    .await;
    for (key, tenant, id) in &ids {
        let answer = get_message(&client, key, id).await;
        if *tenant == "acme" {
            let status = answer.expect_err("expired");
            assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
        } else {
            answer.expect("globex keeps its messages");
        }
    }
}
