//! SQS triggers against moto's SQS server on 127.0.0.1:4566 (`scripts/services.sh` starts it).
//! Every test makes its own queues, so tests run in parallel without seeing each other's
//! messages. moto's limits (README.md, "SQS"): its FIFO long poll does not notice a group
//! unlocking while it waits, so FIFO tests use a short `wait_time`.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::MillgateProcess;
use common::{
    assert_one_job_per_event, assert_repeats_only_across_the_kill, eventually, lines, TestService,
};
use millgate_actors::job::JobStatus;
use millgate_actors::triggers::sqs::aws_sdk_sqs;
use serde_json::{json, Value};

use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};

const SQS: &str = "http://127.0.0.1:4566";
const SECS_30: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn client() -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(SQS)
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "tests",
        ))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

async fn create_queue(
    c: &aws_sdk_sqs::Client,
    name: &str,
    attrs: &[(QueueAttributeName, &str)],
) -> String {
    let mut req = c.create_queue().queue_name(name);
    for (k, v) in attrs {
        req = req.attributes(k.clone(), *v);
    }
    req.send()
        .await
        .expect("create queue (is moto_server running? scripts/services.sh)")
        .queue_url()
        .expect("queue url")
        .to_string()
}

async fn send(c: &aws_sdk_sqs::Client, url: &str, body: &str) -> String {
    c.send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .expect("send")
        .message_id()
        .expect("message id")
        .to_string()
}

/// Messages visible and in flight.
async fn queue_counts(c: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = c
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let get = |k: QueueAttributeName| {
        out.attributes()
            .and_then(|a| a.get(&k))
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

async fn wait_empty(c: &aws_sdk_sqs::Client, url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let counts = queue_counts(c, url).await;
        if counts == (0, 0) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "queue not empty: {counts:?} (visible, in flight)"
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_become_jobs_with_event_fields_and_are_deleted() {
    let c = client();
    let url = create_queue(&c, &unique("mg-events"), &[]).await;
    let t = TestService::start(&format!(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "q"
kind = "sqs"
runnable = "echo"
queue_url = "{url}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
"#
    ))
    .await;
    let first = c
        .send_message()
        .queue_url(&url)
        .message_body(r#"{"order": 7}"#)
        .message_attributes(
            "who",
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value("ada")
                .build()
                .expect("attribute"),
        )
        .message_attributes(
            "n",
            MessageAttributeValue::builder()
                .data_type("Number")
                .string_value("42")
                .build()
                .expect("attribute"),
        )
        .message_attributes(
            "raw",
            MessageAttributeValue::builder()
                .data_type("Binary")
                .binary_value(aws_sdk_sqs::primitives::Blob::new(vec![0u8, 255]))
                .build()
                .expect("attribute"),
        )
        .send()
        .await
        .expect("send")
        .message_id()
        .expect("id")
        .to_string();
    let second = send(&c, &url, "plain text").await;

    let jobs = wait_jobs(&t, "q", 2).await;
    let by_id: HashMap<String, _> = jobs
        .iter()
        .map(|j| {
            (
                j.event["message_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                j,
            )
        })
        .collect();
    let j1 = by_id.get(&first).expect("job of the first message");
    assert_eq!(j1.status, JobStatus::Succeeded, "{j1:?}");
    let e = &j1.event;
    assert_eq!(e["kind"], "sqs");
    assert_eq!(e["trigger"], "q");
    assert_eq!(e["queue_url"], url.as_str());
    assert_eq!(e["body"], r#"{"order": 7}"#);
    assert_eq!(e["data"], json!({"order": 7}));
    assert_eq!(e["receive_count"], 1);
    assert!(e["attributes"]["SentTimestamp"].is_string(), "{e}");
    assert_eq!(
        e["message_attributes"]["who"],
        json!({"data_type": "String", "string_value": "ada"})
    );
    assert_eq!(
        e["message_attributes"]["n"],
        json!({"data_type": "Number", "string_value": "42"})
    );
    assert_eq!(e["message_attributes"]["raw"]["binary_value"], "AP8=");
    assert_eq!(j1.event_id, format!("sqs:q:{url}:{first}"));
    // Windmill's default mapping: the body as `msg`, with the ids and attributes.
    assert_eq!(j1.args["msg"], r#"{"order": 7}"#);
    assert_eq!(j1.args["message_id"], first.as_str());
    assert_eq!(j1.args["message_attributes"], e["message_attributes"]);
    let j2 = by_id.get(&second).expect("job of the second message");
    assert_eq!(j2.event["data"], Value::Null);
    assert_eq!(j2.event["body"], "plain text");

    // Both deleted once their jobs succeeded.
    wait_empty(&c, &url, SECS_30).await;
    let (code, status) = t.admin_get("/api/triggers/q").await;
    assert_eq!(code, 200, "{status}");
    assert_eq!(status["source_status"]["connected"], true, "{status}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_job_keeps_its_message_invisible_until_it_is_deleted() {
    let c = client();
    let url = create_queue(&c, &unique("mg-long"), &[]).await;
    let t = TestService::start(&format!(
        r#"
[runnables.slow]
command = ["sh", "-c", "sleep 5; echo '{{}}'"]

[[triggers]]
name = "long"
kind = "sqs"
runnable = "slow"
queue_url = "{url}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
visibility_timeout = "2s"
"#
    ))
    .await;
    send(&c, &url, r#"{"long": true}"#).await;
    let jobs = wait_jobs(&t, "long", 1).await;
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{:?}", jobs[0]);
    // The job ran 5 s with a 2 s visibility timeout: only the extensions kept the message from
    // being received again (which the dedup would count as a duplicate).
    assert_eq!(
        t.counters("long")
            .events_duplicate
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(
        t.counters("long")
            .events_received
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    wait_empty(&c, &url, SECS_30).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_lettered_jobs_delete_their_message_or_leave_it_to_the_queues_redrive() {
    let c = client();
    let dlq = create_queue(&c, &unique("mg-dlq"), &[]).await;
    let dlq_arn = c
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("arn")
        .attributes()
        .and_then(|a| a.get(&QueueAttributeName::QueueArn).cloned())
        .expect("arn");
    let redrive = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": "2"}).to_string();
    let kept = create_queue(
        &c,
        &unique("mg-keep"),
        &[(QueueAttributeName::RedrivePolicy, &redrive)],
    )
    .await;
    let deleted = create_queue(&c, &unique("mg-del"), &[]).await;
    let t = TestService::start(&format!(
        r#"
[runnables.fail]
command = ["sh", "-c", "echo no >&2; exit 1"]

[[triggers]]
name = "del"
kind = "sqs"
runnable = "fail"
retry = {{ attempts = 1 }}
queue_url = "{deleted}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"

[[triggers]]
name = "keep"
kind = "sqs"
runnable = "fail"
retry = {{ attempts = 1 }}
queue_url = "{kept}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
visibility_timeout = "2s"
on_dead_letter = "keep"
"#
    ))
    .await;
    send(&c, &deleted, "{}").await;
    let kept_id = send(&c, &kept, "{}").await;
    let jobs = wait_jobs(&t, "del", 1).await;
    assert_eq!(jobs[0].status, JobStatus::DeadLettered, "{:?}", jobs[0]);
    wait_empty(&c, &deleted, SECS_30).await;

    let jobs = wait_jobs(&t, "keep", 1).await;
    assert_eq!(jobs[0].status, JobStatus::DeadLettered, "{:?}", jobs[0]);
    // Left in the queue: received again (a duplicate, not run again) until the redrive
    // policy moves it to the dead-letter queue.
    let deadline = Instant::now() + SECS_30;
    loop {
        let got = c
            .receive_message()
            .queue_url(&dlq)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive from the DLQ");
        if let Some(m) = got.messages().first() {
            assert_eq!(m.message_id(), Some(kept_id.as_str()));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never reached the dead-letter queue"
        );
    }
    assert_eq!(t.jobs_of("keep").len(), 1, "a kept message runs once");
    wait_empty(&c, &kept, SECS_30).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_queues_groups_run_in_order() {
    let c = client();
    let name = format!("{}.fifo", unique("mg-fifo"));
    let url = create_queue(
        &c,
        &name,
        &[
            (QueueAttributeName::FifoQueue, "true"),
            (QueueAttributeName::ContentBasedDeduplication, "true"),
        ],
    )
    .await;
    let t = TestService::start(&format!(
        r#"
[router]
runners = 4

[runnables.record]
# One write per line (runners append concurrently).
command = ["sh", "-c", 'sleep 0.0$(shuf -i 1-9 -n 1); printf "%s\n" "$(cat)" >> {{DIR}}/order.log; echo "{{}}"']

[[triggers]]
name = "fifo"
kind = "sqs"
runnable = "record"
queue_url = "{url}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
preprocessor = {{ jq = '{{group: .attributes.MessageGroupId, i: .data.i}}' }}
"#
    ))
    .await;
    for i in 0..6 {
        for g in ["a", "b"] {
            c.send_message()
                .queue_url(&url)
                .message_body(json!({"i": i, "g": g}).to_string())
                .message_group_id(g)
                .send()
                .await
                .expect("send");
        }
    }
    wait_jobs(&t, "fifo", 12).await;
    let mut seen: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for l in lines(&t.path("order.log")).iter().filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_str(l).expect("args line");
        seen.entry(v["group"].as_str().unwrap_or("?").into())
            .or_default()
            .push(v["i"].as_i64().unwrap_or(-1));
    }
    let expected: Vec<i64> = (0..6).collect();
    assert_eq!(seen.get("a"), Some(&expected), "{seen:?}");
    assert_eq!(seen.get("b"), Some(&expected), "{seen:?}");
    wait_empty(&c, &url, SECS_30).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_queue_loses_no_message_and_dedups_redeliveries() {
    let c = client();
    let url = create_queue(&c, &unique("mg-crash"), &[]).await;
    const N: usize = 40;
    let mut ids = Vec::new();
    for i in 0..N {
        ids.push(send(&c, &url, &json!({"i": i}).to_string()).await);
    }
    let mut mg = MillgateProcess::new(&format!(
        r#"
[router]
runners = 2

[runnables.slow]
command = ["sh", "-c", 'sleep 0.1; echo $MILLGATE_EVENT_ID $PPID >> {{DIR}}/done.log']

[[triggers]]
name = "crashy"
kind = "sqs"
runnable = "slow"
queue_url = "{url}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
visibility_timeout = "3s"
max_in_flight = 10
"#
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
    let expected: Vec<String> = ids
        .iter()
        .map(|id| format!("sqs:crashy:{url}:{id}"))
        .collect();
    let ran = |path: &Path| -> Vec<String> {
        lines(path)
            .iter()
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = ran(&done);
        if expected.iter().all(|id| got.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages never ran: {:?}",
            expected
                .iter()
                .filter(|id| !got.contains(id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_empty(&c, &url, SECS_30).await;
    mg.kill_9();
    assert_eq!(assert_one_job_per_event(&mg.data_dir(), "crashy"), N);
    let twice = assert_repeats_only_across_the_kill(&done, &first_pid);
    eprintln!("ran before the kill: {before}/{N}; ran twice: {twice}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_queue_backs_off_with_the_reason_then_starts_once_it_exists() {
    let c = client();
    let name = unique("mg-late");
    let url = format!("{SQS}/123456789012/{name}");
    let t = TestService::start(&format!(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "late"
kind = "sqs"
runnable = "echo"
queue_url = "{url}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
"#
    ))
    .await;
    t.wait_backing_off("late", SECS_30, |e| e.contains(&name))
        .await;
    let created = create_queue(&c, &name, &[]).await;
    assert_eq!(created, url);
    send(&c, &url, "{}").await;
    wait_jobs(&t, "late", 1).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_accept_deletes_once_queued_and_receives_stop_at_max_in_flight() {
    let c = client();
    let early = create_queue(&c, &unique("mg-accept"), &[]).await;
    let bounded = create_queue(&c, &unique("mg-bounded"), &[]).await;
    let t = TestService::start(&format!(
        r#"
[router]
runners = 4

[runnables.slow]
command = ["sh", "-c", "sleep 3; echo '{{}}'"]

[[triggers]]
name = "early"
kind = "sqs"
runnable = "slow"
queue_url = "{early}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
delete = "on_accept"

[[triggers]]
name = "bounded"
kind = "sqs"
runnable = "slow"
queue_url = "{bounded}"
endpoint_url = "{SQS}"
region = "us-east-1"
auth = {{ access_key_id = "test", secret_access_key = "test" }}
wait_time = "1s"
max_in_flight = 2
"#
    ))
    .await;
    send(&c, &early, "{}").await;
    for i in 0..5 {
        send(&c, &bounded, &json!({ "i": i }).to_string()).await;
    }
    // Deleted while its job still runs (3 s).
    wait_empty(&c, &early, Duration::from_secs(2)).await;
    assert!(
        t.jobs_of("early").iter().all(|j| !j.status.is_final()),
        "the job should still be running"
    );
    // Never more than max_in_flight messages taken from the queue at once, plus the deletes of
    // those whose jobs just settled: a slot is free once the outcome is durable, and the
    // message's delete may still be on its way (batched, through moto at ~100 ms a call) when
    // the slot is taken again. Both jobs started together and settle together: up to two
    // deletes (seen once in CI with 4 messages invisible).
    let deadline = Instant::now() + Duration::from_secs(6);
    let mut most = 0;
    while Instant::now() < deadline {
        let (_, in_flight) = queue_counts(&c, &bounded).await;
        most = most.max(in_flight);
        assert!(
            in_flight <= 4,
            "{in_flight} messages taken at max_in_flight = 2"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(most >= 2, "the trigger took its two slots");
    let jobs = wait_jobs(&t, "bounded", 5).await;
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    wait_empty(&c, &bounded, SECS_30).await;
    t.stop().await;
}
