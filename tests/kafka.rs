//! Kafka triggers against a real Kafka-protocol broker: tansu (README.md, "Development"), the shared one on
//! 127.0.0.1:9092 started by scripts/services.sh, and a private one on a free port for the test
//! that stops the broker. tansu does not create topics on demand, so every test creates its
//! own topics (unique names: tests run in parallel) through the admin API.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::binary::MillgateProcess;
use common::brokers::BrokerProcess;
use common::{
    assert_one_job_per_event, assert_repeats_only_across_the_kill, eventually, lines, TestService,
};
use millgate_actors::job::JobStatus;
use millgate_actors::triggers::kafka::rdkafka;
use millgate_actors::triggers::TriggerState;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{json, Value};

const KAFKA: &str = "127.0.0.1:9092";
const SECS_30: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await
        .expect("create topics");
    for r in results {
        r.expect("topic created");
    }
}

fn producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("message.timeout.ms", "10000")
        .create()
        .expect("producer")
}

/// Produces one message to an explicit partition and returns its offset.
async fn produce(
    p: &FutureProducer,
    topic: &str,
    partition: i32,
    key: Option<&str>,
    payload: &[u8],
    headers: &[(&str, &[u8])],
) -> i64 {
    let mut h = OwnedHeaders::new();
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .payload(payload)
        .partition(partition)
        .headers(h);
    if let Some(k) = key {
        record = record.key(k);
    }
    let delivery = p
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| e)
        .expect("delivered");
    delivery.offset
}

/// The group's committed offset of one partition, as the broker has it (None when nothing
/// is committed).
fn committed(brokers: &str, group: &str, topic: &str, partition: i32) -> Option<i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let got = c
        .committed_offsets(tpl, Duration::from_secs(10))
        .expect("committed offsets");
    match got.find_partition(topic, partition).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

async fn wait_committed(brokers: &str, group: &str, topic: &str, partition: i32, want: i64) {
    let deadline = Instant::now() + SECS_30;
    loop {
        let (b, g, t) = (brokers.to_string(), group.to_string(), topic.to_string());
        let got = tokio::task::spawn_blocking(move || committed(&b, &g, &t, partition))
            .await
            .expect("join");
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{topic}/{partition}: committed {got:?}, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `n` jobs of `trigger` are final, returned in creation order.
async fn wait_jobs(
    t: &TestService,
    trigger: &str,
    n: usize,
) -> Vec<millgate_actors::job::JobRecord> {
    t.final_jobs(trigger, n, SECS_30).await
}

async fn post_admin(t: &TestService, path: &str, body: &Value) -> (u16, Value) {
    let resp = t
        .admin_req(reqwest::Method::POST, path)
        .json(body)
        .send()
        .await
        .expect("admin request");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

fn trigger_state(t: &TestService, name: &str) -> TriggerState {
    t.trigger_state(name)
}

/// Waits until the trigger's consumer has been assigned partitions (reported in its status).
async fn wait_assigned(t: &TestService, name: &str) {
    let deadline = Instant::now() + SECS_30;
    loop {
        let (code, body) = t.admin_get(&format!("/api/triggers/{name}")).await;
        assert_eq!(code, 200, "{body}");
        let assigned = body["source_status"]["assigned"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or(0);
        if assigned > 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "never assigned partitions: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_jobs_with_event_fields_and_the_offset_is_committed() {
    let topic = unique("mg-fields");
    create_topic(KAFKA, &topic, 1).await;
    let p = producer(KAFKA);
    produce(
        &p,
        &topic,
        0,
        Some("order-1"),
        br#"{"n": 1}"#,
        &[("source", b"shop"), ("bin", &[0xff, 0x00])],
    )
    .await;
    produce(&p, &topic, 0, None, &[0xde, 0xad], &[]).await;
    let t = TestService::start(&format!(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "fields"
kind = "kafka"
runnable = "echo"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{topic}-g"
auto_offset_reset = "earliest"
commit_interval = "100ms"
preprocessor = {{ jq = '.' }}
"#
    ))
    .await;
    let jobs = wait_jobs(&t, "fields", 2).await;
    assert_eq!(jobs.len(), 2);
    let first = &jobs[0].args;
    assert_eq!(first["kind"], "kafka");
    assert_eq!(first["trigger"], "fields");
    assert_eq!(first["topic"], topic);
    assert_eq!(first["partition"], 0);
    assert_eq!(first["offset"], 0);
    assert_eq!(first["key"], "order-1");
    assert_eq!(first["key_encoding"], "utf8");
    assert_eq!(first["payload"], b64(br#"{"n": 1}"#));
    assert_eq!(first["data"], json!({"n": 1}));
    assert_eq!(first["headers"]["source"], json!(["shop"]));
    assert_eq!(first["headers"]["bin"], json!([b64(&[0xff, 0x00])]));
    assert_eq!(first["group_id"], format!("{topic}-g"));
    assert_eq!(first["timestamp_type"], "create_time");
    let ts = first["timestamp"].as_i64().expect("timestamp");
    let now = chrono::Utc::now().timestamp_millis();
    assert!((now - ts).abs() < 120_000, "timestamp {ts} vs now {now}");
    assert_eq!(
        jobs[0].event_id,
        format!("kafka:fields:0:{topic}:0:0:{ts}"),
        "deterministic event id"
    );
    let second = &jobs[1].args;
    assert_eq!(second["offset"], 1);
    assert_eq!(second["key"], Value::Null);
    assert_eq!(second["payload"], b64(&[0xde, 0xad]));
    assert!(second.get("data").is_none(), "binary payload has no data");
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    // Both done: the group's position is past both.
    wait_committed(KAFKA, &format!("{topic}-g"), &topic, 0, 2).await;
    // The admin API shows the assignment and positions.
    let (_, body) = t.admin_get("/api/triggers/fields").await;
    assert_eq!(body["source_status"]["group_id"], format!("{topic}-g"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jq_preprocessor_filters_and_shapes_kafka_events() {
    let topic = unique("mg-jq");
    create_topic(KAFKA, &topic, 1).await;
    let p = producer(KAFKA);
    for n in 0..4 {
        produce(
            &p,
            &topic,
            0,
            Some(&format!("k{n}")),
            json!({"n": n}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    let t = TestService::start(&format!(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "shaped"
kind = "kafka"
runnable = "echo"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
auto_offset_reset = "earliest"
commit_interval = "100ms"
preprocessor = {{ jq = 'select(.data.n % 2 == 1) | {{n: .data.n, key, at: "\(.topic):\(.offset)"}}' }}
"#
    ))
    .await;
    wait_committed(KAFKA, "millgate-shaped", &topic, 0, 4).await;
    let jobs = wait_jobs(&t, "shaped", 2).await;
    let args: Vec<Value> = jobs.iter().map(|j| j.args.clone()).collect();
    assert_eq!(
        args,
        [
            json!({"n": 1, "key": "k1", "at": format!("{topic}:1")}),
            json!({"n": 3, "key": "k3", "at": format!("{topic}:3")}),
        ]
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_commits_only_after_success() {
    let topic = unique("mg-retry");
    create_topic(KAFKA, &topic, 1).await;
    let group = format!("{topic}-g");
    let t = TestService::start(&format!(
        r#"
[runnables.flaky]
command = ["sh", "-c", 'n=$(cat {{DIR}}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {{DIR}}/count; if [ $n -ge 3 ]; then echo "{{\"ok\": $n}}"; else exit 1; fi']

[[triggers]]
name = "flaky"
kind = "kafka"
runnable = "flaky"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{group}"
auto_offset_reset = "earliest"
commit_interval = "50ms"
retry = {{ attempts = 3, initial = "700ms", max = "700ms" }}
"#
    ))
    .await;
    wait_assigned(&t, "flaky").await;
    produce(&producer(KAFKA), &topic, 0, None, b"{}", &[]).await;
    // While the job retries, the offset is not committed past the message.
    let deadline = Instant::now() + SECS_30;
    let mut saw_retrying = false;
    loop {
        let jobs = t.jobs_of("flaky");
        let done = jobs.iter().any(|j| j.status.is_final());
        saw_retrying |= jobs.iter().any(|j| j.status == JobStatus::Retrying);
        if done {
            break;
        }
        let (g, tp) = (group.clone(), topic.clone());
        let c = tokio::task::spawn_blocking(move || committed(KAFKA, &g, &tp, 0))
            .await
            .expect("join");
        // Read after the offset: a commit seen before the job is final is a violation.
        let final_now = t.jobs_of("flaky").iter().any(|j| j.status.is_final());
        assert!(
            final_now || c.is_none_or(|o| o < 1),
            "offset committed ({c:?}) before the job settled"
        );
        assert!(Instant::now() < deadline, "job never finished");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_retrying, "the job never showed as retrying");
    let jobs = wait_jobs(&t, "flaky", 1).await;
    assert_eq!(jobs.len(), 1, "exactly one job");
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{:?}", jobs[0]);
    assert_eq!(jobs[0].attempts, 3);
    assert_eq!(jobs[0].result, Some(json!({"ok": 3})));
    wait_committed(KAFKA, &group, &topic, 0, 1).await;
    assert_eq!(lines(&t.path("count")), ["3"]);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_job_is_dead_lettered_and_the_offset_moves_past_it() {
    let topic = unique("mg-dead");
    create_topic(KAFKA, &topic, 1).await;
    let group = format!("{topic}-g");
    let p = producer(KAFKA);
    produce(&p, &topic, 0, None, br#"{"fail": true}"#, &[]).await;
    produce(&p, &topic, 0, None, br#"{"fail": false}"#, &[]).await;
    let t = TestService::start(&format!(
        r#"
[runnables.picky]
command = ["sh", "-c", 'if grep -q true; then echo boom >&2; exit 3; fi; echo "{{}}"']

[[triggers]]
name = "picky"
kind = "kafka"
runnable = "picky"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{group}"
auto_offset_reset = "earliest"
commit_interval = "100ms"
retry = {{ attempts = 2, initial = "100ms", max = "100ms" }}
preprocessor = {{ jq = '{{fail: .data.fail}}' }}
"#
    ))
    .await;
    let jobs = wait_jobs(&t, "picky", 2).await;
    let statuses: Vec<JobStatus> = jobs.iter().map(|j| j.status).collect();
    assert!(statuses.contains(&JobStatus::DeadLettered), "{statuses:?}");
    assert!(statuses.contains(&JobStatus::Succeeded), "{statuses:?}");
    let dead = t.app.service.store.dead_letters().expect("dead letters");
    assert_eq!(dead.len(), 1);
    // The dead letter's outcome is durable: the group moves past both messages.
    wait_committed(KAFKA, &group, &topic, 0, 2).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_one_partition_run_in_offset_order_and_order_by_key_orders_per_key() {
    let topic = unique("mg-order");
    create_topic(KAFKA, &topic, 2).await;
    let p = producer(KAFKA);
    const N: usize = 12;
    // Early messages sleep longest: without per-partition order, later ones would overtake.
    for i in 0..N {
        for partition in 0..2 {
            produce(
                &p,
                &topic,
                partition,
                Some(&format!("k{}", i % 2)),
                json!({"i": i}).to_string().as_bytes(),
                &[],
            )
            .await;
        }
    }
    let t = TestService::start(&format!(
        r#"
[router]
runners = 4

[runnables.slowfirst]
command = ["sh", "-c", 'read line; sleep $(echo "$line" | sed -E "s/.*\"delay\": *\"([0-9.]+)\".*/\1/"); echo "$line" >> {{DIR}}/ran.log; echo "{{}}"']

[[triggers]]
name = "by-partition"
kind = "kafka"
runnable = "slowfirst"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{topic}-p"
auto_offset_reset = "earliest"
preprocessor = {{ jq = '{{p: .partition, i: .data.i, delay: (if .data.i < 3 then "0.3" else "0" end)}}' }}

[[triggers]]
name = "by-key"
kind = "kafka"
runnable = "slowfirst"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{topic}-k"
order_by = "key"
auto_offset_reset = "earliest"
preprocessor = {{ jq = '{{k: .key, p: .partition, i: .data.i, delay: (if .data.i < 3 then "0.3" else "0" end)}}' }}
"#
    ))
    .await;
    wait_jobs(&t, "by-partition", 2 * N).await;
    wait_jobs(&t, "by-key", 2 * N).await;
    let mut per_partition: HashMap<i64, Vec<i64>> = HashMap::new();
    let mut per_key: HashMap<String, Vec<i64>> = HashMap::new();
    for line in lines(&t.path("ran.log")) {
        let v: Value = serde_json::from_str(&line).expect("json line");
        let (p, i) = (v["p"].as_i64().expect("p"), v["i"].as_i64().expect("i"));
        match v["k"].as_str() {
            // Keys span both partitions: order per key holds within each partition's stream.
            Some(k) => per_key.entry(format!("{k}/{p}")).or_default().push(i),
            None => per_partition.entry(p).or_default().push(i),
        }
    }
    for (p, seq) in &per_partition {
        assert_eq!(seq, &(0..N as i64).collect::<Vec<_>>(), "partition {p}");
    }
    assert_eq!(per_partition.len(), 2);
    for (k, seq) in &per_key {
        let mut sorted = seq.clone();
        sorted.sort();
        assert_eq!(seq, &sorted, "key {k} ran out of order");
        assert_eq!(seq.len(), N / 2, "key {k}");
    }
    assert_eq!(per_key.len(), 4);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_pauses_the_partitions_instead_of_buffering() {
    let topic = unique("mg-flow");
    create_topic(KAFKA, &topic, 1).await;
    let p = producer(KAFKA);
    const N: usize = 24;
    for i in 0..N {
        produce(
            &p,
            &topic,
            0,
            None,
            json!({"i": i}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    let t = TestService::start(&format!(
        r#"
[router]
runners = 8

[runnables.slow]
command = ["sh", "-c", 'sleep 0.5; echo "{{}}"']

[[triggers]]
name = "throttled"
kind = "kafka"
runnable = "slow"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
auto_offset_reset = "earliest"
order_by = "none"
max_in_flight = 3
"#
    ))
    .await;
    let rt = t
        .app
        .service
        .registry
        .get("throttled")
        .expect("trigger")
        .runtime
        .clone();
    let deadline = Instant::now() + SECS_30;
    let mut most = 0;
    let mut saw_paused = false;
    while t
        .jobs_of("throttled")
        .iter()
        .filter(|j| j.status.is_final())
        .count()
        < N
    {
        most = most.max(rt.in_flight.load(std::sync::atomic::Ordering::Acquire));
        let (_, body) = t.admin_get("/api/triggers/throttled").await;
        saw_paused |= body["source_status"]["paused"] == json!(true);
        assert!(Instant::now() < deadline, "jobs never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most <= 3, "{most} jobs in flight with max_in_flight = 3");
    assert!(
        most >= 2,
        "never more than {most} in flight: the test saw no concurrency"
    );
    assert!(saw_paused, "the partitions were never paused");
    wait_committed(KAFKA, "millgate-throttled", &topic, 0, N as i64).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reset_replays_from_earliest_and_skips_to_latest() {
    let topic = unique("mg-reset");
    create_topic(KAFKA, &topic, 1).await;
    let group = format!("{topic}-g");
    let p = producer(KAFKA);
    for i in 0..3 {
        produce(
            &p,
            &topic,
            0,
            None,
            json!({"i": i}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    let t = TestService::start(&format!(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "replayable"
kind = "kafka"
runnable = "echo"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{group}"
auto_offset_reset = "earliest"
commit_interval = "100ms"
preprocessor = {{ jq = '{{i: .data.i}}' }}
"#
    ))
    .await;
    wait_jobs(&t, "replayable", 3).await;
    wait_committed(KAFKA, &group, &topic, 0, 3).await;

    // Reset to earliest: the three messages run again, as new jobs (a new epoch of ids).
    let (code, body) = post_admin(
        &t,
        "/api/triggers/replayable/reset",
        &json!({"to": "earliest"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["partitions"],
        json!([{"topic": topic, "partition": 0, "offset": 0}])
    );
    let jobs = wait_jobs(&t, "replayable", 6).await;
    let is: Vec<i64> = jobs
        .iter()
        .map(|j| j.args["i"].as_i64().unwrap_or(-1))
        .collect();
    assert_eq!(is, [0, 1, 2, 0, 1, 2]);
    assert!(
        jobs[3].event_id.starts_with("kafka:replayable:1:"),
        "{}",
        jobs[3].event_id
    );

    // Reset to latest while the trigger is idle, then two new messages: only they run.
    let (code, body) = post_admin(
        &t,
        "/api/triggers/replayable/reset",
        &json!({"to": "latest"}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["partitions"][0]["offset"], 3);
    produce(&p, &topic, 0, None, br#"{"i": 3}"#, &[]).await;
    let jobs = wait_jobs(&t, "replayable", 7).await;
    assert_eq!(jobs.len(), 7);
    assert_eq!(jobs[6].args["i"], 3);
    wait_committed(KAFKA, &group, &topic, 0, 4).await;

    // Bad requests name the problem.
    let (code, body) = post_admin(
        &t,
        "/api/triggers/replayable/reset",
        &json!({"to": "middle"}),
    )
    .await;
    assert_eq!(code, 400, "{body}");
    let (code, _) = post_admin(&t, "/api/triggers/nope/reset", &json!({"to": "earliest"})).await;
    assert_eq!(code, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_topic_backs_off_with_the_reason_then_recovers() {
    let topic = unique("mg-late");
    let t = TestService::start(&format!(
        r#"
[supervisor]
restart_initial = "200ms"
restart_max = "1s"

[runnables.echo]
kind = "echo"

[[triggers]]
name = "late"
kind = "kafka"
runnable = "echo"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
auto_offset_reset = "earliest"
"#
    ))
    .await;
    t.wait_backing_off("late", SECS_30, |e| {
        e.to_lowercase().contains("unknown topic")
    })
    .await;
    create_topic(KAFKA, &topic, 1).await;
    produce(&producer(KAFKA), &topic, 0, None, b"{}", &[]).await;
    wait_jobs(&t, "late", 1).await;
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Processes: millgate killed with -9, the broker stopped and restarted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_message_and_dedups_rereads() {
    let topic = unique("mg-crash");
    create_topic(KAFKA, &topic, 2).await;
    let p = producer(KAFKA);
    const N: usize = 60;
    for i in 0..N {
        produce(
            &p,
            &topic,
            (i % 2) as i32,
            None,
            json!({"i": i}).to_string().as_bytes(),
            &[],
        )
        .await;
    }
    let mut mg = MillgateProcess::new(&format!(
        r#"
[router]
runners = 2

[runnables.slow]
command = ["sh", "-c", 'sleep 0.1; echo $MILLGATE_EVENT_ID $PPID >> {{DIR}}/done.log']

[[triggers]]
name = "crashy"
kind = "kafka"
runnable = "slow"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{topic}-g"
auto_offset_reset = "earliest"
commit_interval = "200ms"
session_timeout = "6s"
max_in_flight = 10
"#
    ));
    let done = mg.path("done.log");
    mg.spawn();
    let first_pid = mg.pid().to_string();
    eventually(SECS_30, "millgate ran something before the kill", || {
        lines(&done).len() >= 8
    })
    .await;
    mg.kill_9();
    let before = lines(&done).len();
    assert!(before < N, "the crash came too late to test anything");

    mg.spawn();
    // Every message ran: each partition's offsets all appear in the log.
    let ran_offsets = |path: &Path| -> Vec<(i32, i64)> {
        lines(path)
            .iter()
            .filter_map(|l| {
                let id = l.split(' ').next()?;
                // kafka:<trigger>:<epoch>:<topic>:<partition>:<offset>:<ts>
                let parts: Vec<&str> = id.split(':').collect();
                Some((parts.get(4)?.parse().ok()?, parts.get(5)?.parse().ok()?))
            })
            .collect()
    };
    let expected: Vec<(i32, i64)> = (0..2)
        .flat_map(|p| (0..(N / 2) as i64).map(move |o| (p, o)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ran = ran_offsets(&done);
        let missing: Vec<_> = expected.iter().filter(|e| !ran.contains(e)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "messages never ran: {missing:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for partition in 0..2 {
        wait_committed(
            KAFKA,
            &format!("{topic}-g"),
            &topic,
            partition,
            (N / 2) as i64,
        )
        .await;
    }
    mg.kill_9();

    // One job per message: messages read again after the restart were deduplicated by id;
    // only jobs running at the kill may have run twice.
    assert_eq!(assert_one_job_per_event(&mg.data_dir(), "crashy"), N);
    let twice = assert_repeats_only_across_the_kill(&done, &first_pid);
    eprintln!("ran before the kill: {before}/{N}; ran twice: {twice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_backs_off_then_reconnects_and_continues() {
    let mut server = BrokerProcess::tansu().await;
    let brokers = server.addr();
    // In-memory tansu forgets its topics when it stops, so the topic is created anew after
    // the restart; the trigger's subscription is by name and picks it up again.
    create_topic(&brokers, "orders", 1).await;
    let t = TestService::start(&format!(
        r#"
[supervisor]
restart_initial = "200ms"
restart_max = "1s"

[runnables.echo]
kind = "echo"

[[triggers]]
name = "resilient"
kind = "kafka"
runnable = "echo"
brokers = ["{brokers}"]
topics = ["orders"]
auto_offset_reset = "earliest"
session_timeout = "6s"
preprocessor = {{ jq = '{{n: .data.n}}' }}
"#
    ))
    .await;
    wait_assigned(&t, "resilient").await;
    server.kill();
    t.wait_backing_off("resilient", Duration::from_secs(60), |e| !e.is_empty())
        .await;
    assert_ne!(trigger_state(&t, "resilient"), TriggerState::Disabled);

    server.restart().await;
    create_topic(&brokers, "orders", 1).await;
    produce(&producer(&brokers), "orders", 0, None, br#"{"n": 2}"#, &[]).await;
    let jobs = wait_jobs(&t, "resilient", 1).await;
    assert_eq!(jobs[0].args, json!({"n": 2}));
    eventually(SECS_30, "running again", || {
        trigger_state(&t, "resilient") == TriggerState::Running
    })
    .await;
    t.stop().await;
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_group_and_a_leaving_member_loses_nothing() {
    let topic = unique("mg-group");
    create_topic(KAFKA, &topic, 2).await;
    let group = format!("{topic}-g");
    let config = |name: &str| {
        format!(
            r#"
[runnables.record]
command = ["sh", "-c", 'sleep 0.05; cat >> {{DIR}}/{name}.log; echo >> {{DIR}}/{name}.log; echo "{{}}"']

[[triggers]]
name = "member"
kind = "kafka"
runnable = "record"
brokers = ["{KAFKA}"]
topics = ["{topic}"]
group_id = "{group}"
auto_offset_reset = "earliest"
commit_interval = "100ms"
session_timeout = "6s"
preprocessor = {{ jq = '{{p: .partition, o: .offset}}' }}
"#
        )
    };
    let a = TestService::start(&config("a")).await;
    let b = TestService::start(&config("b")).await;
    // Both members hold one partition each once the group has settled.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let count = |t: &TestService| {
            let t = t.app.service.registry.get("member").expect("trigger");
            let s = t
                .runtime
                .source_status
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default();
            s["assigned"].as_array().map(|a| a.len()).unwrap_or(0)
        };
        if count(&a) == 1 && count(&b) == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group never split the partitions: a has {}, b has {}",
            count(&a),
            count(&b)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let p = producer(KAFKA);
    const N: i64 = 20;
    for i in 0..N {
        for partition in 0..2 {
            produce(
                &p,
                &topic,
                partition,
                None,
                json!({"i": i}).to_string().as_bytes(),
                &[],
            )
            .await;
        }
    }
    // b leaves mid-stream: a takes its partition over from b's last commit.
    eventually(SECS_30, "b ran some jobs", || {
        lines(&b.path("b.log")).len() >= 3
    })
    .await;
    let b_dir = b.stop().await;
    for partition in 0..2 {
        wait_committed(KAFKA, &group, &topic, partition, N).await;
    }
    let mut ran: HashMap<(i64, i64), usize> = HashMap::new();
    for line in lines(&a.path("a.log"))
        .into_iter()
        .chain(lines(&b_dir.path().join("b.log")))
    {
        let v: Value = serde_json::from_str(&line).expect("json line");
        let key = (v["p"].as_i64().expect("p"), v["o"].as_i64().expect("o"));
        *ran.entry(key).or_default() += 1;
    }
    for partition in 0..2 {
        for offset in 0..N {
            assert!(
                ran.contains_key(&(partition, offset)),
                "{partition}/{offset} never ran; ran: {ran:?}"
            );
        }
    }
    a.stop().await;
}
