//! `/metrics` under hostile input: a `herald node` process (real Redis, real control plane)
//! delivers messages of campaigns whose ids hold `"` and `\`, and of more campaigns than the
//! exposition labels; the scrape must stay valid for Prometheus (`promtool check metrics`, from
//! Debian's `prometheus` package, which `.ci/run` installs) and its breaker series bounded.

use std::process::Stdio;
use std::time::Duration;

use herald::demo::{demo_message, demo_recipient};
use herald_proto::v1::UpsertRecipientsRequest;
use herald_testkit::cluster::{API_KEY, Cluster, NodeSpec, TENANT, authed};
use herald_testkit::delivery::{send, wait_all_terminal};
use herald_testkit::eventually::eventually;
use tokio::io::AsyncWriteExt;

/// Ids a client may choose (they pass validation) that break an unescaped exposition.
const HOSTILE: [&str; 3] = [r"a\b", r#"b-spring"sale"#, r#"c}{x="y",\"#];

/// More campaigns than the node labels (`herald_node::metrics::LABELLED_BREAKERS` is 20).
const ORDINARY: usize = 30;

async fn scrape(http: &str) -> Option<String> {
    let response = reqwest::get(format!("http://{http}/metrics")).await.ok()?;
    response.text().await.ok()
}

/// `promtool check metrics` on `text`: its exit status and what it printed.
async fn promtool(text: &str) -> (bool, String) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; .ci/run installs it)");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).await.expect("write");
    drop(stdin);
    let output = child.wait_with_output().await.expect("promtool runs");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

fn series<'t>(text: &'t str, name: &str) -> Vec<&'t str> {
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_campaign_ids_keep_the_scrape_valid_and_bounded() {
    let cluster = Cluster::start(
        1,
        NodeSpec {
            http: true,
            ..Default::default()
        },
    )
    .await;
    let http = cluster.http_addrs[0].clone();
    cluster
        .recipients(0)
        .await
        .upsert_recipients(authed(
            UpsertRecipientsRequest {
                recipients: vec![demo_recipient("r-metrics".into(), 1)],
            },
            API_KEY,
        ))
        .await
        .expect("upsert");

    let client = cluster.delivery(0).await;
    let campaigns: Vec<String> = HOSTILE
        .iter()
        .map(|id| (*id).to_owned())
        .chain((0..ORDINARY).map(|i| format!("ordinary-{i:02}")))
        .collect();
    let mut ids = Vec::new();
    for (i, campaign) in campaigns.iter().enumerate() {
        let mut message = demo_message("r-metrics".into(), format!("k-metrics-{i}"));
        message.campaign_id = campaign.clone();
        let sent = send(&client, API_KEY, message).await.expect("send");
        ids.push(sent.message_id);
    }
    wait_all_terminal(&client, API_KEY, &ids, Duration::from_secs(60)).await;

    // Every campaign's breaker reaches the node's report cache; the hostile ids are the
    // highest-ratio ones only by chance, so wait for the count, then for one hostile series.
    let want = campaigns.len() as u64;
    let text = eventually(
        "every campaign's breaker in /metrics",
        Duration::from_secs(30),
        || async {
            let text = scrape(&http).await?;
            let watching = text
                .lines()
                .find(|line| line.starts_with("herald_breakers{") && line.contains("watching"))?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()?;
            (watching >= want).then_some(text)
        },
    )
    .await;

    let (valid, printed) = promtool(&text).await;
    assert!(
        valid,
        "promtool check metrics failed:\n{printed}\n---\n{text}"
    );

    let labelled = series(&text, "herald_breaker_ratio");
    assert!(
        !labelled.is_empty() && labelled.len() <= 20,
        "breaker series are bounded: {labelled:#?}"
    );
    assert_eq!(labelled.len(), series(&text, "herald_breaker_paused").len());
    // Labelled are the highest ratios (all 0 here, so the first keys win): the hostile ids
    // sort before `ordinary-…`, and each must come out escaped.
    for hostile in [
        r#"key="campaign:acme:a\\b""#,
        r#"key="campaign:acme:b-spring\"sale""#,
        r#"key="campaign:acme:c}{x=\"y\",\\""#,
    ] {
        assert!(
            labelled.iter().any(|line| line.contains(hostile)),
            "{hostile} in {labelled:#?}"
        );
    }
    assert_eq!(TENANT, "acme");
}
