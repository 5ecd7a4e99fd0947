//! Pub/Sub triggers against Google's pstest fake on 127.0.0.1:8085 (`scripts/services.sh`
//! builds and starts it). Every test makes its own topic and subscription. pstest's limits
//! (docs/pubsub-plan.md): subscriptions' ack deadlines are at least 10 s and it redelivers
//! only after them, so the tests that watch for redelivery take that long; no ordering, no
//! dead-letter policies.

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use base64::Engine;
use common::binary::MillgateProcess;
use common::{
    assert_one_job_per_event, assert_repeats_only_across_the_kill, eventually, lines, TestService,
};
use millgate_actors::job::JobStatus;
use millgate_actors::triggers::pubsub::gcloud_gax::conn::Environment;
use millgate_actors::triggers::pubsub::gcloud_googleapis::pubsub::v1::PubsubMessage;
use millgate_actors::triggers::pubsub::gcloud_pubsub::client::{Client, ClientConfig};
use millgate_actors::triggers::pubsub::gcloud_pubsub::subscription::SubscriptionConfig;
use serde_json::{json, Value};

const PSTEST: &str = "127.0.0.1:8085";
const PROJECT: &str = "millgate-test";
const SECS_30: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn client() -> Client {
    Client::new(ClientConfig {
        project_id: Some(PROJECT.into()),
        environment: Environment::Emulator(PSTEST.into()),
        ..ClientConfig::default()
    })
    .await
    .expect("connect to pstest (is it running? scripts/services.sh)")
}

/// A topic and a subscription on it (10 s ack deadline, pstest's least).
async fn topic_and_subscription(c: &Client, name: &str) {
    c.create_topic(name, None, None)
        .await
        .expect("create topic");
    let cfg = SubscriptionConfig {
        ack_deadline_seconds: 10,
        ..SubscriptionConfig::default()
    };
    c.create_subscription(name, name, cfg, None)
        .await
        .expect("create subscription");
}

async fn publish(c: &Client, topic: &str, msg: PubsubMessage) -> String {
    let mut p = c.topic(topic).new_publisher(None);
    let id = p.publish(msg).await.get().await.expect("publish");
    p.shutdown().await;
    id
}

fn message(data: &[u8]) -> PubsubMessage {
    PubsubMessage {
        data: data.to_vec(),
        ..PubsubMessage::default()
    }
}

fn trigger(name: &str, sub: &str, runnable: &str, extra: &str) -> String {
    format!(
        r#"
[[triggers]]
name = "{name}"
kind = "pubsub"
runnable = "{runnable}"
project = "{PROJECT}"
subscription = "{sub}"
endpoint = "{PSTEST}"
{extra}
"#
    )
}

/// Waits until `n` jobs of `trigger` are final, returned in creation order.
async fn wait_jobs(
    t: &TestService,
    trigger: &str,
    n: usize,
) -> Vec<millgate_actors::job::JobRecord> {
    t.final_jobs(trigger, n, SECS_30).await
}

/// `millgate_source_acks_total` for `trigger` and `action`, read from `/metrics`.
async fn acks_metric(t: &TestService, trigger: &str, action: &str) -> f64 {
    let text = t
        .admin_req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .filter(|l| l.starts_with("millgate_source_acks_total{"))
        .filter(|l| l.contains(&format!("trigger=\"{trigger}\"")))
        .filter(|l| l.contains(&format!("action=\"{action}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Waits until `millgate_source_acks_total` for `trigger` and `action` reads `n`.
async fn wait_acks_metric(t: &TestService, trigger: &str, action: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = acks_metric(t, trigger, action).await;
        if got == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{trigger}: {action} = {got}, expected {n}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn counter(t: &TestService, name: &str, which: &str) -> u64 {
    let c = t.counters(name);
    match which {
        "received" => c.events_received.load(Ordering::Relaxed),
        "duplicate" => c.events_duplicate.load(Ordering::Relaxed),
        _ => panic!("unknown counter {which}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_jobs_with_event_fields_and_are_acked_once() {
    let c = client().await;
    let name = unique("mg-events");
    topic_and_subscription(&c, &name).await;
    let created = unique("mg-created");
    c.create_topic(&created, None, None).await.expect("topic");
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}{}",
        trigger("ps", &name, "echo", ""),
        trigger(
            "made",
            &format!("projects/{PROJECT}/subscriptions/{created}"),
            "echo",
            &format!("topic = \"{created}\"\ncreate_subscription = true"),
        )
    ))
    .await;
    let mut first = message(br#"{"n": 7}"#);
    first.attributes.insert("source".into(), "shop".into());
    first.ordering_key = "customer-9".into();
    let first_id = publish(&c, &name, first).await;
    let second_id = publish(&c, &name, message(&[0xff, 0x00])).await;

    let jobs = wait_jobs(&t, "ps", 2).await;
    let j1 = jobs
        .iter()
        .find(|j| j.event["message_id"] == first_id.as_str())
        .expect("first message's job");
    assert_eq!(j1.status, JobStatus::Succeeded, "{j1:?}");
    let e = &j1.event;
    let full = format!("projects/{PROJECT}/subscriptions/{name}");
    assert_eq!(e["kind"], "pubsub");
    assert_eq!(e["trigger"], "ps");
    assert_eq!(e["subscription"], full.as_str());
    assert_eq!(e["data"], json!({"n": 7}));
    assert_eq!(
        e["payload"],
        base64::engine::general_purpose::STANDARD.encode(br#"{"n": 7}"#)
    );
    assert_eq!(e["attributes"], json!({"source": "shop"}));
    assert_eq!(e["ordering_key"], "customer-9");
    let published = e["publish_time"].as_str().expect("publish_time");
    chrono::DateTime::parse_from_rfc3339(published).expect("RFC 3339");
    assert_eq!(
        j1.event_id,
        format!("pubsub:ps:{full}:{first_id}:{published}")
    );
    // Windmill's default mapping.
    assert_eq!(j1.args["payload"], e["payload"]);
    assert_eq!(j1.args["message_id"], first_id.as_str());
    assert_eq!(j1.args["delivery_type"], "pull");
    let j2 = jobs
        .iter()
        .find(|j| j.event["message_id"] == second_id.as_str())
        .expect("second message's job");
    assert_eq!(j2.event["data"], Value::Null);
    assert_eq!(j2.event["ordering_key"], Value::Null);

    // The subscription made by the trigger delivers too.
    publish(&c, &created, message(b"{}")).await;
    wait_jobs(&t, "made", 1).await;

    // Acked: nothing comes back after the 10 s deadline.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(counter(&t, "ps", "received"), 2);
    assert_eq!(counter(&t, "ps", "duplicate"), 0);
    assert_eq!(acks_metric(&t, "ps", "acked").await, 2.0);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_keeps_its_message_from_redelivery() {
    let c = client().await;
    let name = unique("mg-long");
    topic_and_subscription(&c, &name).await;
    let t = TestService::start(&format!(
        "[runnables.slow]\ncommand = [\"sh\", \"-c\", \"sleep 14; echo '{{}}'\"]\n{}",
        trigger("long", &name, "slow", "ack_deadline = \"10s\"")
    ))
    .await;
    publish(&c, &name, message(b"{}")).await;
    let jobs = wait_jobs(&t, "long", 1).await;
    assert_eq!(jobs[0].status, JobStatus::Succeeded);
    // 14 s of work against a 10 s deadline: only modifyAckDeadline kept it from coming back.
    assert_eq!(counter(&t, "long", "duplicate"), 0);
    assert_eq!(counter(&t, "long", "received"), 1);
    assert!(acks_metric(&t, "long", "extended").await >= 1.0);
    // Acks leave in batches, up to 20 ms after the outcome.
    wait_acks_metric(&t, "long", "acked", 1.0).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_job_acks_its_message_and_nack_hands_it_back() {
    let c = client().await;
    let acked = unique("mg-dead");
    let nacked = unique("mg-nack");
    topic_and_subscription(&c, &acked).await;
    topic_and_subscription(&c, &nacked).await;
    let t = TestService::start(&format!(
        "[runnables.fail]\ncommand = [\"sh\", \"-c\", \"exit 1\"]\n{}{}",
        trigger("dead", &acked, "fail", "retry = { attempts = 1 }"),
        trigger(
            "back",
            &nacked,
            "fail",
            "retry = { attempts = 1 }\non_dead_letter = \"nack\""
        ),
    ))
    .await;
    publish(&c, &acked, message(b"{}")).await;
    publish(&c, &nacked, message(b"{}")).await;
    let jobs = wait_jobs(&t, "dead", 1).await;
    assert_eq!(jobs[0].status, JobStatus::DeadLettered);
    // Nacked: delivered again at once, recognised as the same event (not run again).
    eventually(SECS_30, "the nacked message came back", || {
        counter(&t, "back", "duplicate") >= 1
    })
    .await;
    assert_eq!(t.jobs_of("back").len(), 1);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(
        counter(&t, "dead", "duplicate"),
        0,
        "the acked one stays acked"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_message_and_dedups_redeliveries() {
    let c = client().await;
    let name = unique("mg-crash");
    topic_and_subscription(&c, &name).await;
    const N: usize = 30;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(publish(&c, &name, message(json!({ "i": i }).to_string().as_bytes())).await);
    }
    let mut mg = MillgateProcess::new(&format!(
        r#"
[router]
runners = 2

[runnables.slow]
command = ["sh", "-c", 'sleep 0.1; echo $MILLGATE_EVENT_ID $PPID >> {{DIR}}/done.log']
{}"#,
        trigger("crashy", &name, "slow", "max_in_flight = 10")
    ));
    let done = mg.path("done.log");
    mg.spawn();
    let first_pid = mg.pid().to_string();
    eventually(SECS_30, "millgate ran something before the kill", || {
        lines(&done).len() >= 5
    })
    .await;
    mg.kill_9();
    let before = lines(&done).len();
    assert!(before < N, "the crash came too late to test anything");
    mg.spawn();
    let ran = |l: &[String]| -> Vec<String> {
        l.iter()
            .filter_map(|l| l.split(' ').next())
            // pubsub:<trigger>:<subscription>:<message id>:<publish time>
            .filter_map(|id| id.split(':').nth(3).map(str::to_string))
            .collect()
    };
    // Unacked messages come back after pstest's 10 s deadline.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = ran(&lines(&done));
        if ids.iter().all(|id| got.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages never ran: {:?}",
            ids.iter()
                .filter(|id| !got.contains(id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    mg.kill_9();
    assert_eq!(assert_one_job_per_event(&mg.data_dir(), "crashy"), N);
    let twice = assert_repeats_only_across_the_kill(&done, &first_pid);
    eprintln!("ran before the kill: {before}/{N}; ran twice: {twice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_subscription_backs_off_with_the_reason() {
    let name = unique("mg-missing");
    let t = TestService::start(&format!(
        "[runnables.echo]\nkind = \"echo\"\n{}",
        trigger("missing", &name, "echo", "")
    ))
    .await;
    t.wait_backing_off("missing", SECS_30, |e| {
        e.contains(&name) && e.contains("does not exist")
    })
    .await;
    t.stop().await;
}
