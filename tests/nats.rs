//! NATS triggers against a real nats-server: the shared one on 127.0.0.1:4222 (JetStream on)
//! for most tests, a private one on a free port for the test that stops the broker. Every test
//! uses its own stream and subjects, so tests run in parallel without seeing each other's
//! messages; streams also get a short `max_age` so a failed test's leftovers expire.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use common::binary::MillgateProcess;
use common::brokers::BrokerProcess;
use common::{
    assert_one_job_per_event, assert_repeats_only_across_the_kill, eventually, lines, TestService,
};
use millgate_actors::job::JobStatus;
use millgate_actors::triggers::nats::async_nats;
use millgate_actors::triggers::TriggerState;
use serde_json::{json, Value};

use async_nats::jetstream::{self, consumer};

const NATS: &str = "127.0.0.1:4222";
const SECS_20: Duration = Duration::from_secs(20);

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn connect(addr: &str) -> async_nats::Client {
    async_nats::connect(addr).await.expect("connect to NATS")
}

/// A stream named `name` on `<name>.>`, expiring its messages after ten minutes.
async fn create_stream(js: &jetstream::Context, name: &str) {
    js.create_stream(jetstream::stream::Config {
        name: name.to_string(),
        subjects: vec![format!("{name}.>")],
        max_age: Duration::from_secs(600),
        ..Default::default()
    })
    .await
    .expect("create stream");
}

/// The stream's creation time (seconds), part of JetStream event ids.
async fn stream_created(js: &jetstream::Context, stream: &str) -> i64 {
    let stream = js.get_stream(stream).await.expect("stream");
    stream.cached_info().created.unix_timestamp()
}

async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    let stream = js.get_stream(stream).await.expect("stream");
    stream.consumer_info(name).await.expect("consumer info")
}

/// Polls the consumer until `pred` holds.
async fn wait_consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    what: &str,
    pred: impl Fn(&consumer::Info) -> bool,
) -> consumer::Info {
    let deadline = Instant::now() + SECS_20;
    loop {
        let info = consumer_info(js, stream, name).await;
        if pred(&info) {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "consumer never reached: {what}; last: ack_floor {:?} ack_pending {} redelivered {} pending {}",
            info.ack_floor.stream_sequence,
            info.num_ack_pending,
            info.num_redelivered,
            info.num_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish(js: &jetstream::Context, subject: String, payload: Vec<u8>) {
    js.publish(subject, payload.into())
        .await
        .expect("publish")
        .await
        .expect("publish ack");
}

/// Waits until `n` jobs of `trigger` are final, returned in creation order.
async fn wait_jobs(
    t: &TestService,
    trigger: &str,
    n: usize,
) -> Vec<millgate_actors::job::JobRecord> {
    t.final_jobs(trigger, n, SECS_20).await
}

fn trigger_state(t: &TestService, name: &str) -> TriggerState {
    t.trigger_state(name)
}

async fn cleanup(js: &jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_messages_become_jobs_with_event_fields_and_are_acked() {
    let client = connect(NATS).await;
    let js = jetstream::new(client);
    let stream = unique("MGEV");
    create_stream(&js, &stream).await;
    let t = TestService::start(&format!(
        r#"
[runnables.record]
command = ["sh", "-c", 'cat > {{DIR}}/args-$MILLGATE_JOB_ID.json; echo "{{}}"']

[[triggers]]
name = "js"
kind = "nats"
runnable = "record"
servers = ["{NATS}"]
subjects = ["{stream}.*"]
jetstream = {{ stream = "{stream}", consumer = "c1", ack_wait = "5s" }}
"#
    ))
    .await;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Test", "1");
    js.publish_with_headers(
        format!("{stream}.json"),
        headers,
        br#"{"n": 7}"#.to_vec().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("publish ack");
    let binary = vec![0xff, 0x00, 0xfe];
    publish(&js, format!("{stream}.bin"), binary.clone()).await;

    let jobs = wait_jobs(&t, "js", 2).await;
    let first = &jobs[0];
    assert_eq!(first.status, JobStatus::Succeeded, "{first:?}");
    let e = &first.event;
    assert_eq!(e["kind"], "nats");
    assert_eq!(e["trigger"], "js");
    assert_eq!(e["payload"], b64(br#"{"n": 7}"#));
    assert_eq!(e["data"], json!({"n": 7}));
    assert_eq!(e["subject"], format!("{stream}.json"));
    assert_eq!(e["reply"], Value::Null);
    assert_eq!(e["headers"], json!({"X-Test": ["1"]}));
    assert_eq!(e["stream"], stream.as_str());
    assert_eq!(e["consumer"], "c1");
    assert_eq!(e["stream_sequence"], 1);
    assert_eq!(e["delivered"], 1);
    let published = e["published"].as_str().expect("published");
    chrono::DateTime::parse_from_rfc3339(published).expect("published is RFC 3339");
    let created = stream_created(&js, &stream).await;
    assert_eq!(first.event_id, format!("nats:js:{stream}:{created}:1"));
    // Windmill's default mapping: the base64 payload is the argument.
    assert_eq!(first.args, json!({"payload": b64(br#"{"n": 7}"#)}));
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(t.path(&format!("args-{}.json", first.job_id))).expect("args"),
    )
    .expect("json args");
    assert_eq!(written, first.args);

    let second = &jobs[1].event;
    assert_eq!(second["payload"], b64(&binary));
    assert!(
        second.get("data").is_none(),
        "binary payload has no data: {second}"
    );
    assert_eq!(second["stream_sequence"], 2);

    wait_consumer(&js, &stream, "c1", "both acked", |i| {
        i.ack_floor.stream_sequence == 2 && i.num_ack_pending == 0
    })
    .await;
    t.stop().await;
    cleanup(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_nats_with_jq_preprocessor_and_queue_group() {
    let client = connect(NATS).await;
    let subject = unique("mgcore");
    let t = TestService::start(&format!(
        r#"
[runnables.record]
command = ["sh", "-c", 'cat > {{DIR}}/args-$MILLGATE_JOB_ID.json; echo "{{}}"']

[[triggers]]
name = "core"
kind = "nats"
runnable = "record"
servers = ["nats://{NATS}"]
subjects = ["{subject}.>"]
queue_group = "millgate"
preprocessor = {{ jq = 'if .data.probe then empty else {{subject, reply, n: .data.n, src: .headers["X-Src"][0], raw: .payload}} end' }}
"#
    ))
    .await;
    // A core subscription only sees messages published after it exists: probe until the
    // trigger has received one (probes are filtered by the preprocessor).
    let counters = t
        .app
        .service
        .registry
        .get("core")
        .expect("trigger")
        .runtime
        .counters
        .clone();
    let deadline = Instant::now() + SECS_20;
    while counters
        .events_received
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(Instant::now() < deadline, "core subscription never came up");
        client
            .publish(
                format!("{subject}.probe"),
                br#"{"probe": true}"#.to_vec().into(),
            )
            .await
            .expect("publish probe");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("X-Src", "test");
    client
        .publish_with_reply_and_headers(
            format!("{subject}.a.b"),
            "reply.here".to_string(),
            headers,
            br#"{"n": 1}"#.to_vec().into(),
        )
        .await
        .expect("publish");
    client.flush().await.expect("flush");

    let jobs = wait_jobs(&t, "core", 1).await;
    assert_eq!(jobs.len(), 1, "probes are filtered, one real message");
    let job = &jobs[0];
    assert_eq!(job.status, JobStatus::Succeeded);
    assert_eq!(
        job.args,
        json!({
            "subject": format!("{subject}.a.b"),
            "reply": "reply.here",
            "n": 1,
            "src": "test",
            "raw": b64(br#"{"n": 1}"#),
        })
    );
    assert!(
        job.event.get("stream").is_none(),
        "core events have no JetStream fields"
    );
    assert!(
        counters
            .events_filtered
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_acks_only_after_success() {
    let client = connect(NATS).await;
    let js = jetstream::new(client);
    let stream = unique("MGRETRY");
    create_stream(&js, &stream).await;
    // Retries take ≈3 s, longer than ack_wait (2 s): only in_progress keeps the server from
    // redelivering the message meanwhile.
    let t = TestService::start(&format!(
        r#"
[runnables.flaky]
command = ["sh", "-c", 'n=$(cat {{DIR}}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {{DIR}}/count; if [ $n -ge 3 ]; then echo "{{\"ok\": $n}}"; else exit 1; fi']

[[triggers]]
name = "flaky"
kind = "nats"
runnable = "flaky"
servers = ["{NATS}"]
subjects = ["{stream}.>"]
retry = {{ attempts = 3, initial = "1500ms", max = "1500ms" }}
jetstream = {{ stream = "{stream}", consumer = "c", ack_wait = "2s" }}
"#
    ))
    .await;
    publish(&js, format!("{stream}.x"), b"{}".to_vec()).await;

    // While the job is retrying the message is delivered but not acknowledged.
    eventually(SECS_20, "job retrying", || {
        t.jobs_of("flaky")
            .iter()
            .any(|j| j.status == JobStatus::Retrying)
    })
    .await;
    let info = consumer_info(&js, &stream, "c").await;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "acked before the job settled"
    );
    assert_eq!(info.num_ack_pending, 1);

    let jobs = wait_jobs(&t, "flaky", 1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{:?}", jobs[0]);
    assert_eq!(jobs[0].attempts, 3);
    assert_eq!(jobs[0].result, Some(json!({"ok": 3})));
    let info = wait_consumer(&js, &stream, "c", "acked after success", |i| {
        i.ack_floor.stream_sequence == 1 && i.num_ack_pending == 0
    })
    .await;
    assert_eq!(
        info.num_redelivered, 0,
        "in_progress kept ack_wait from redelivering"
    );
    assert_eq!(t.jobs_of("flaky").len(), 1, "exactly one job");
    assert_eq!(lines(&t.path("count")), ["3"]);
    t.stop().await;
    cleanup(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_job_is_dead_lettered_and_the_message_terminated() {
    let client = connect(NATS).await;
    let advisories = client.clone();
    let js = jetstream::new(client);
    let stream = unique("MGDEAD");
    create_stream(&js, &stream).await;
    let t = TestService::start(&format!(
        r#"
[runnables.broken]
command = ["sh", "-c", 'echo broken >&2; exit 3']

[[triggers]]
name = "dead"
kind = "nats"
runnable = "broken"
servers = ["{NATS}"]
subjects = ["{stream}.>"]
retry = {{ attempts = 2, initial = "100ms", max = "100ms" }}
jetstream = {{ stream = "{stream}", consumer = "c", ack_wait = "1s" }}
"#
    ))
    .await;
    // The server announces a `term` (and only a term) with this advisory.
    let mut terminated = advisories
        .subscribe(format!(
            "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{stream}.c"
        ))
        .await
        .expect("subscribe to advisories");
    advisories.flush().await.expect("flush");
    publish(&js, format!("{stream}.x"), b"{}".to_vec()).await;
    let jobs = wait_jobs(&t, "dead", 1).await;
    assert_eq!(jobs[0].status, JobStatus::DeadLettered);
    assert_eq!(jobs[0].attempts, 2);
    assert_eq!(
        t.app
            .service
            .store
            .dead_letters()
            .expect("dead letters")
            .len(),
        1
    );
    // Terminated: no longer pending, and never delivered again (a redelivery would show in
    // num_redelivered and as a duplicate event after ack_wait).
    let info = wait_consumer(&js, &stream, "c", "message terminated", |i| {
        i.num_ack_pending == 0 && i.ack_floor.stream_sequence == 1
    })
    .await;
    assert_eq!(info.num_redelivered, 0);
    assert_eq!(info.delivered.stream_sequence, 1);
    let advisory = tokio::time::timeout(SECS_20, futures::StreamExt::next(&mut terminated))
        .await
        .expect("no MSG_TERMINATED advisory: the message was acked, not terminated")
        .expect("advisory subscription open");
    let advisory: Value = serde_json::from_slice(&advisory.payload).expect("advisory JSON");
    assert_eq!(advisory["stream_seq"], 1, "{advisory}");
    let counters = t
        .app
        .service
        .registry
        .get("dead")
        .expect("trigger")
        .runtime
        .counters
        .clone();
    assert_eq!(
        counters
            .events_received
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    t.stop().await;
    cleanup(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_subject_runs_each_subjects_jobs_in_publish_order() {
    let client = connect(NATS).await;
    let js = jetstream::new(client);
    let stream = unique("MGORDER");
    create_stream(&js, &stream).await;
    // Four runners and a sleep that is longest for the first messages: without ordering the
    // later messages of a subject would finish first.
    let t = TestService::start(&format!(
        r#"
[router]
runners = 4

[runnables.log]
command = ["sh", "-c", 'read -r line; sleep $(echo "$line" | sed -e "s/.*\"delay\":\"\([0-9.]*\)\".*/\1/"); echo "$line" >> {{DIR}}/order.log; echo "{{}}"']

[[triggers]]
name = "ordered"
kind = "nats"
runnable = "log"
servers = ["{NATS}"]
subjects = ["{stream}.*"]
order_by = ".subject"
preprocessor = {{ jq = '{{subject, n: .data.n, delay: (if .data.n < 2 then "0.3" else "0" end)}}' }}
jetstream = {{ stream = "{stream}" }}
"#
    ))
    .await;
    const PER_SUBJECT: usize = 8;
    for n in 0..PER_SUBJECT {
        for s in ["a", "b", "c"] {
            publish(
                &js,
                format!("{stream}.{s}"),
                json!({"n": n}).to_string().into_bytes(),
            )
            .await;
        }
    }
    let jobs = wait_jobs(&t, "ordered", 3 * PER_SUBJECT).await;
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in lines(&t.path("order.log")) {
        let v: Value = serde_json::from_str(&line).expect("logged args");
        let subject = v["subject"].as_str().expect("subject").to_string();
        seen.entry(subject)
            .or_default()
            .push(v["n"].as_u64().expect("n"));
    }
    let expected: Vec<u64> = (0..PER_SUBJECT as u64).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (subject, ns) in &seen {
        assert_eq!(ns, &expected, "subject {subject} ran out of order");
    }
    t.stop().await;
    cleanup(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_stops_fetching_until_jobs_settle() {
    let client = connect(NATS).await;
    let js = jetstream::new(client);
    let stream = unique("MGFLOW");
    create_stream(&js, &stream).await;
    let t = TestService::start(&format!(
        r#"
[runnables.gate]
command = ["sh", "-c", 'while [ ! -f {{DIR}}/release ]; do sleep 0.05; done; echo "{{}}"']

[[triggers]]
name = "bounded"
kind = "nats"
runnable = "gate"
servers = ["{NATS}"]
subjects = ["{stream}.>"]
max_in_flight = 2
jetstream = {{ stream = "{stream}", consumer = "c", batch = 50 }}
"#
    ))
    .await;
    const N: usize = 10;
    for i in 0..N {
        publish(
            &js,
            format!("{stream}.x"),
            json!({"i": i}).to_string().into_bytes(),
        )
        .await;
    }
    eventually(SECS_20, "two jobs running", || {
        t.jobs_of("bounded").len() == 2
    })
    .await;
    // Held at the limit: nothing more is fetched (checked repeatedly for a second, since a
    // fetch would show up as a delivery on the server).
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let info = consumer_info(&js, &stream, "c").await;
        assert_eq!(
            info.delivered.stream_sequence, 2,
            "fetched past max_in_flight"
        );
        assert_eq!(t.jobs_of("bounded").len(), 2);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    std::fs::write(t.path("release"), b"").expect("release");
    let jobs = wait_jobs(&t, "bounded", N).await;
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    wait_consumer(&js, &stream, "c", "all acked", |i| {
        i.ack_floor.stream_sequence == N as u64 && i.num_ack_pending == 0
    })
    .await;
    t.stop().await;
    cleanup(&js, &stream).await;
}

// ---------------------------------------------------------------------------------------------
// Processes: millgate killed with -9, nats-server stopped and restarted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_loses_no_message_and_dedups_redeliveries() {
    let client = connect(NATS).await;
    let js = jetstream::new(client);
    let stream = unique("MGCRASH");
    create_stream(&js, &stream).await;
    const N: usize = 60;
    for i in 0..N {
        publish(
            &js,
            format!("{stream}.m"),
            json!({"i": i}).to_string().into_bytes(),
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
kind = "nats"
runnable = "slow"
servers = ["{NATS}"]
subjects = ["{stream}.>"]
max_in_flight = 10
jetstream = {{ stream = "{stream}", consumer = "c", ack_wait = "2s", batch = 5 }}
"#
    ));
    let done = mg.path("done.log");
    mg.spawn();
    // Each log line is `<event id> <pid of the millgate that ran it>`: a job running at the
    // kill finishes as an orphan and still logs, under the first process's pid.
    let first_pid = mg.pid().to_string();
    let ran_ids = |path: &Path| -> Vec<String> {
        lines(path)
            .iter()
            .filter_map(|l| l.split(' ').next().map(str::to_string))
            .collect()
    };
    eventually(SECS_20, "millgate ran something before the kill", || {
        lines(&done).len() >= 5
    })
    .await;
    mg.kill_9();
    let before = lines(&done).len();
    assert!(before < N, "the crash came too late to test anything");
    let info = consumer_info(&js, &stream, "c").await;
    assert!(
        info.ack_floor.stream_sequence < N as u64,
        "everything was acked before the kill"
    );

    mg.spawn();
    let created = stream_created(&js, &stream).await;
    // Every message produces a job that runs: every event id appears in the log.
    let expected: Vec<String> = (1..=N)
        .map(|s| format!("nats:crashy:{stream}:{created}:{s}"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ran = ran_ids(&done);
        if expected.iter().all(|id| ran.contains(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages never ran: {:?}",
            expected
                .iter()
                .filter(|id| !ran.contains(id))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    wait_consumer(&js, &stream, "c", "all acked after the restart", |i| {
        i.ack_floor.stream_sequence == N as u64 && i.num_ack_pending == 0
    })
    .await;
    mg.kill_9();

    // One job per message: redeliveries of messages whose jobs were already queued were
    // deduplicated by event id. Only jobs running at the kill may have run twice. (How many
    // depends on the runners and the router's outcome flush, not on the NATS trigger.)
    assert_eq!(assert_one_job_per_event(&mg.data_dir(), "crashy"), N);
    let twice = assert_repeats_only_across_the_kill(&done, &first_pid);
    eprintln!("ran before the kill: {before}/{N}; ran twice: {twice}");
    cleanup(&js, &stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_backs_off_then_reconnects_and_continues() {
    let mut server = BrokerProcess::nats().await;
    let addr = server.addr();
    let t = TestService::start(&format!(
        r#"
[supervisor]
restart_initial = "200ms"
restart_max = "1s"

[runnables.ok]
command = ["sh", "-c", 'echo "{{}}"']

[[triggers]]
name = "resilient"
kind = "nats"
runnable = "ok"
servers = ["{addr}"]
subjects = ["orders.>"]
jetstream = {{ stream = "ORDERS", create_stream = true, ack_wait = "5s" }}
"#
    ))
    .await;
    // The trigger creates the stream; publish once it exists.
    let js = jetstream::new(connect(&addr).await);
    let deadline = Instant::now() + SECS_20;
    while js.get_stream("ORDERS").await.is_err() {
        assert!(Instant::now() < deadline, "stream never created");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    publish(&js, "orders.1".into(), b"{}".to_vec()).await;
    wait_jobs(&t, "resilient", 1).await;
    drop(js);

    server.terminate();
    t.wait_backing_off("resilient", SECS_20, |e| !e.is_empty())
        .await;
    assert_ne!(trigger_state(&t, "resilient"), TriggerState::Disabled);

    server.restart().await;
    let js = jetstream::new(connect(&addr).await);
    // JetStream may need a moment after the port opens to recover the stream.
    let deadline = Instant::now() + SECS_20;
    loop {
        if let Ok(ack) = js.publish("orders.2", b"{}".to_vec().into()).await {
            if ack.await.is_ok() {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "could not publish after the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let jobs = wait_jobs(&t, "resilient", 2).await;
    assert_eq!(jobs[1].event["subject"], "orders.2");
    assert_eq!(jobs[1].status, JobStatus::Succeeded);
    assert!(
        t.app
            .service
            .registry
            .get("resilient")
            .expect("trigger")
            .status()
            .restarts
            >= 1
    );
    eventually(SECS_20, "trigger running again", || {
        trigger_state(&t, "resilient") == TriggerState::Running
    })
    .await;
    t.stop().await;
    server.terminate();
}
