//! MQTT triggers (v3.1.1 and v5) against a real Mosquitto: the shared one on 127.0.0.1:1883 for
//! most tests, private ones on free ports for the tests that stop the broker or need their own
//! settings (TLS listeners with certificates made at test time by the openssl command line,
//! refused clients, subscription ACLs). Every test uses its own topic prefix (and client ids),
//! so tests run in parallel without seeing each other's messages. Publishers and session
//! observers are rumqttc clients, the library the trigger itself uses.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::binary::MillgateProcess;
use common::brokers::BrokerProcess;
use common::{eventually, free_port, lines, TestService};
use millgate_actors::job::{JobRecord, JobStatus};
use millgate_actors::triggers::mqtt::rumqttc::v5::{self, mqttbytes::v5 as v5p};
use millgate_actors::triggers::mqtt::rumqttc::{
    self, AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS,
};
use millgate_actors::triggers::TriggerState;
use serde_json::{json, Value};

const SHARED_PORT: u16 = 1883;
const SECS_20: Duration = Duration::from_secs(20);

fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A publisher whose event loop runs in a task; `acked` counts pubacks received.
struct Publisher {
    client: AsyncClient,
    acked: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher {
    fn new(port: u16) -> Self {
        let mut opts = MqttOptions::new(unique("pub"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        let acked = Arc::new(AtomicUsize::new(0));
        let count = acked.clone();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::PubAck(_))) => {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self {
            client,
            acked,
            task,
        }
    }

    async fn publish(&self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .expect("publish queued");
    }

    /// Waits until the broker acknowledged `n` QoS 1 publishes.
    async fn wait_acked(&self, n: usize) {
        let deadline = Instant::now() + SECS_20;
        while self.acked.load(Ordering::SeqCst) < n {
            assert!(
                Instant::now() < deadline,
                "broker never acked {n} publishes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A message an observer was handed: its payload and whether it was marked as a redelivery.
#[derive(Debug)]
struct Seen {
    payload: Vec<u8>,
    dup: bool,
}

/// What an observer's event loop reports, whatever the protocol version.
enum Polled {
    ConnAck,
    SubAck,
    Publish(Seen),
    Other,
}

/// A session observer's connection: v3.1.1 (`clean_session = false`) or v5 (`clean_start =
/// false` with a session expiry, so that the session outlives it), manual acks.
enum Observer {
    V3(AsyncClient, Box<rumqttc::EventLoop>),
    V5(v5::AsyncClient, Box<v5::EventLoop>),
}

impl Observer {
    fn new(port: u16, client_id: &str, version: u8) -> Self {
        if version == 5 {
            let mut opts = v5::MqttOptions::new(client_id, "127.0.0.1", port);
            let mut props = v5p::ConnectProperties::new();
            props.session_expiry_interval = Some(300);
            opts.set_clean_start(false)
                .set_manual_acks(true)
                .set_connect_properties(props);
            let (client, eventloop) = v5::AsyncClient::new(opts, 10);
            Self::V5(client, Box::new(eventloop))
        } else {
            let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
            opts.set_clean_session(false).set_manual_acks(true);
            let (client, eventloop) = AsyncClient::new(opts, 10);
            Self::V3(client, Box::new(eventloop))
        }
    }

    async fn subscribe(&self, topic: &str) {
        let queued = match self {
            Self::V3(client, _) => client
                .subscribe(topic, QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
            Self::V5(client, _) => client
                .subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce)
                .await
                .map_err(|e| e.to_string()),
        };
        queued.expect("subscribe queued");
    }

    async fn poll(&mut self) -> Result<Polled, String> {
        Ok(match self {
            Self::V3(_, eventloop) => match eventloop.poll().await.map_err(|e| e.to_string())? {
                MqttEvent::Incoming(Packet::ConnAck(_)) => Polled::ConnAck,
                MqttEvent::Incoming(Packet::SubAck(_)) => Polled::SubAck,
                MqttEvent::Incoming(Packet::Publish(p)) => Polled::Publish(Seen {
                    payload: p.payload.to_vec(),
                    dup: p.dup,
                }),
                _ => Polled::Other,
            },
            Self::V5(_, eventloop) => match eventloop.poll().await.map_err(|e| e.to_string())? {
                v5::Event::Incoming(v5p::Packet::ConnAck(_)) => Polled::ConnAck,
                v5::Event::Incoming(v5p::Packet::SubAck(_)) => Polled::SubAck,
                v5::Event::Incoming(v5p::Packet::Publish(p)) => Polled::Publish(Seen {
                    payload: p.payload.to_vec(),
                    dup: p.dup,
                }),
                _ => Polled::Other,
            },
        })
    }

    async fn disconnect(&self) {
        let _ = match self {
            Self::V3(client, _) => client.disconnect().await.map_err(|e| e.to_string()),
            Self::V5(client, _) => client.disconnect().await.map_err(|e| e.to_string()),
        };
    }
}

/// Connects as `client_id` with a persistent session of protocol `version` (manual acks, so
/// nothing it receives is acknowledged), optionally subscribes, collects what the broker
/// delivers for `listen`, and disconnects. Used to create a session before millgate runs and
/// to look into a session after it stopped: whatever millgate left unacknowledged is
/// delivered here again.
async fn observe_session(
    port: u16,
    client_id: &str,
    subscribe: Option<&str>,
    listen: Duration,
    version: u8,
) -> Vec<Seen> {
    let mut observer = Observer::new(port, client_id, version);
    if let Some(topic) = subscribe {
        observer.subscribe(topic).await;
    }
    let mut got = Vec::new();
    let mut ready_at: Option<Instant> = None;
    let deadline = Instant::now() + SECS_20;
    loop {
        let wait = match ready_at {
            Some(t) => (t + listen).saturating_duration_since(Instant::now()),
            None => deadline.saturating_duration_since(Instant::now()),
        };
        if wait.is_zero() {
            assert!(ready_at.is_some(), "observer never connected/subscribed");
            break;
        }
        match tokio::time::timeout(wait, observer.poll()).await {
            Err(_) => continue,
            // Taken over again by millgate's reconnect: what was delivered so far counts.
            Ok(Err(_)) if ready_at.is_some() => return got,
            Ok(Err(e)) => panic!("observer connection: {e}"),
            Ok(Ok(Polled::ConnAck)) if subscribe.is_none() => ready_at = Some(Instant::now()),
            Ok(Ok(Polled::SubAck)) => ready_at = Some(Instant::now()),
            Ok(Ok(Polled::Publish(p))) => got.push(p),
            Ok(Ok(_)) => {}
        }
    }
    observer.disconnect().await;
    // Let the disconnect go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), observer.poll()).await;
    got
}

fn source_status(t: &TestService, name: &str) -> Value {
    let reg = t.app.service.registry.get(name).expect("trigger");
    let v = reg.runtime.source_status.lock().expect("status").clone();
    v
}

async fn wait_subscribed(t: &TestService, name: &str) {
    eventually(SECS_20, "mqtt trigger subscribed", || {
        source_status(t, name)["subscribed"] == true
    })
    .await;
}

fn trigger_state(t: &TestService, name: &str) -> TriggerState {
    t.trigger_state(name)
}

/// Waits until `n` jobs of `trigger` are final, returned in creation order.
async fn wait_jobs(t: &TestService, trigger: &str, n: usize) -> Vec<JobRecord> {
    t.final_jobs(trigger, n, SECS_20).await
}

/// The args a `record` runnable (`cat > {DIR}/args-$MILLGATE_JOB_ID.json`) wrote for `job`.
fn written_args(t: &TestService, job: &JobRecord) -> Value {
    let text = std::fs::read_to_string(t.path(&format!("args-{}.json", job.job_id)));
    serde_json::from_str(&text.expect("args")).expect("json args")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_messages_become_jobs_with_event_fields() {
    let base = unique("mgev");
    let t = TestService::start(&format!(
        r#"
[runnables.record]
command = ["sh", "-c", 'cat > {{DIR}}/args-$MILLGATE_JOB_ID.json; echo "{{}}"']

[[triggers]]
name = "m"
kind = "mqtt"
runnable = "record"
broker = "127.0.0.1"
port = {SHARED_PORT}
subscriptions = [{{ topic = "{base}/json", qos = 1 }}, {{ topic = "{base}/bin", qos = 0 }}]
"#
    ))
    .await;
    wait_subscribed(&t, "m").await;
    let publisher = Publisher::new(SHARED_PORT);
    publisher
        .publish(
            &format!("{base}/json"),
            QoS::AtLeastOnce,
            false,
            br#"{"n": 7}"#,
        )
        .await;
    publisher.wait_acked(1).await;
    let binary = [0xffu8, 0x00, 0xfe];
    publisher
        .publish(&format!("{base}/bin"), QoS::AtMostOnce, false, &binary)
        .await;

    let jobs = wait_jobs(&t, "m", 2).await;
    let json_job = jobs
        .iter()
        .find(|j| j.event["topic"] == format!("{base}/json"))
        .expect("json job");
    assert_eq!(json_job.status, JobStatus::Succeeded, "{json_job:?}");
    let e = &json_job.event;
    assert_eq!(e["kind"], "mqtt");
    assert_eq!(e["trigger"], "m");
    assert_eq!(e["payload"], b64(br#"{"n": 7}"#));
    assert_eq!(e["data"], json!({"n": 7}));
    assert_eq!(e["qos"], 1);
    assert_eq!(e["retain"], false);
    assert_eq!(e["dup"], false);
    assert!(e["pkid"].as_u64().expect("pkid") >= 1, "{e}");
    assert!(
        json_job.event_id.starts_with("mqtt:"),
        "{}",
        json_job.event_id
    );
    // Windmill's default mapping: the base64 payload is the argument.
    assert_eq!(json_job.args, json!({"payload": b64(br#"{"n": 7}"#)}));
    assert_eq!(written_args(&t, json_job), json_job.args);

    let bin = jobs
        .iter()
        .find(|j| j.event["topic"] == format!("{base}/bin"))
        .expect("binary job");
    assert_eq!(bin.event["payload"], b64(&binary));
    assert_eq!(bin.event["qos"], 0);
    assert_eq!(bin.event["pkid"], 0);
    assert!(bin.event.get("data").is_none(), "{}", bin.event);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jq_preprocessor_shapes_mqtt_events_and_retained_messages_arrive() {
    let base = unique("mgjq");
    // A retained message published before the trigger subscribes is delivered on subscribe.
    let publisher = Publisher::new(SHARED_PORT);
    publisher
        .publish(
            &format!("{base}/a/b"),
            QoS::AtLeastOnce,
            true,
            br#"{"n": 1, "skip": false}"#,
        )
        .await;
    publisher.wait_acked(1).await;
    let t = TestService::start(&format!(
        r#"
[runnables.record]
command = ["sh", "-c", 'cat > /dev/null; echo "{{}}"']

[[triggers]]
name = "jq"
kind = "mqtt"
runnable = "record"
broker = "127.0.0.1"
subscriptions = [{{ topic = "{base}/#", qos = 1 }}]
preprocessor = {{ jq = 'if .data.skip then empty else {{topic, n: .data.n, retain, qos, raw: .payload}} end' }}
"#
    ))
    .await;
    wait_subscribed(&t, "jq").await;
    publisher
        .publish(
            &format!("{base}/c"),
            QoS::AtLeastOnce,
            false,
            br#"{"skip": true}"#,
        )
        .await;
    publisher.wait_acked(2).await;
    let jobs = wait_jobs(&t, "jq", 1).await;
    // Clear the retained message so it does not outlive the test.
    publisher
        .publish(&format!("{base}/a/b"), QoS::AtLeastOnce, true, b"")
        .await;
    eventually(SECS_20, "skip message filtered", || {
        t.app
            .service
            .registry
            .get("jq")
            .expect("trigger")
            .runtime
            .counters
            .events_filtered
            .load(Ordering::Relaxed)
            >= 1
    })
    .await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(
        jobs[0].args,
        json!({
            "topic": format!("{base}/a/b"),
            "n": 1,
            "retain": true,
            "qos": 1,
            "raw": b64(br#"{"n": 1, "skip": false}"#),
        })
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_larger_than_rumqttcs_default_limit_arrive_in_both_versions() {
    let base = unique("mgbig");
    let t = TestService::start(&format!(
        r#"
[runnables.size]
command = ["sh", "-c", 'wc -c']

[[triggers]]
name = "big3"
kind = "mqtt"
runnable = "size"
broker = "127.0.0.1"
subscriptions = [{{ topic = "{base}/3", qos = 1 }}]
preprocessor = {{ jq = '{{len: (.payload | length)}}' }}

[[triggers]]
name = "big5"
kind = "mqtt"
version = 5
runnable = "size"
broker = "127.0.0.1"
subscriptions = [{{ topic = "{base}/5", qos = 1 }}]
preprocessor = {{ jq = '{{len: (.payload | length)}}' }}
"#
    ))
    .await;
    wait_subscribed(&t, "big3").await;
    wait_subscribed(&t, "big5").await;
    // 200 KB: twenty times rumqttc's default packet limit (10 KiB).
    let payload = vec![b'x'; 200_000];
    let publisher = Publisher::new(SHARED_PORT);
    publisher
        .publish(&format!("{base}/3"), QoS::AtLeastOnce, false, &payload)
        .await;
    publisher
        .publish(&format!("{base}/5"), QoS::AtLeastOnce, false, &payload)
        .await;
    publisher.wait_acked(2).await;
    for name in ["big3", "big5"] {
        let jobs = wait_jobs(&t, name, 1).await;
        assert_eq!(
            jobs[0].status,
            JobStatus::Succeeded,
            "{name}: {:?}",
            jobs[0]
        );
        // base64 of 200,000 bytes is 266,668 characters.
        assert_eq!(jobs[0].args, json!({"len": 266_668}), "{name}");
        assert_eq!(trigger_state(&t, name), TriggerState::Running, "{name}");
    }
    t.stop().await;
}

/// The trigger settings of a persistent session in protocol `version` (3 or 5).
fn persistent_session(version: u8) -> &'static str {
    if version == 5 {
        "version = 5\nclean_start = false\nsession_expiry = \"5m\""
    } else {
        "clean_session = false"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_twice_then_succeeding_acks_only_after_success() {
    fail_twice_then_succeed(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_failing_twice_then_succeeding_acks_only_after_success() {
    fail_twice_then_succeed(5).await;
}

async fn fail_twice_then_succeed(version: u8) {
    let base = unique("mgretry");
    let client_id = unique("mgc");
    let session = persistent_session(version);
    let t = TestService::start(&format!(
        r#"
[runnables.flaky]
command = ["sh", "-c", 'n=$(cat {{DIR}}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {{DIR}}/count; if [ $n -ge 3 ]; then echo "{{\"ok\": $n}}"; else exit 1; fi']

[[triggers]]
name = "flaky"
kind = "mqtt"
runnable = "flaky"
broker = "127.0.0.1"
client_id = "{client_id}"
{session}
subscriptions = [{{ topic = "{base}/x", qos = 1 }}]
retry = {{ attempts = 3, initial = "300ms", max = "300ms" }}
"#
    ))
    .await;
    wait_subscribed(&t, "flaky").await;
    let publisher = Publisher::new(SHARED_PORT);
    publisher
        .publish(&format!("{base}/x"), QoS::AtLeastOnce, false, b"{}")
        .await;
    eventually(SECS_20, "job retrying", || {
        t.jobs_of("flaky")
            .iter()
            .any(|j| j.status == JobStatus::Retrying)
    })
    .await;
    let jobs = wait_jobs(&t, "flaky", 1).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].status, JobStatus::Succeeded, "{:?}", jobs[0]);
    assert_eq!(jobs[0].attempts, 3);
    assert_eq!(jobs[0].result, Some(json!({"ok": 3})));
    assert_eq!(lines(&t.path("count")), ["3"]);
    // The puback goes out once the outcome is durable; give it a moment, then take the
    // session over: an unacknowledged message would be redelivered to the observer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.stop().await;
    let left = observe_session(
        SHARED_PORT,
        &client_id,
        None,
        Duration::from_millis(1500),
        version,
    )
    .await;
    assert!(left.is_empty(), "message was never acknowledged: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_messages_stay_unacknowledged_in_the_session() {
    // The counterpart of the test above: while a job has no outcome, its message is not
    // acknowledged, so the persistent session still holds it when millgate goes away.
    unsettled_stay_unacknowledged(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_unsettled_messages_stay_unacknowledged_in_the_session() {
    unsettled_stay_unacknowledged(5).await;
}

async fn unsettled_stay_unacknowledged(version: u8) {
    let session = persistent_session(version);
    let base = unique("mghold");
    let client_id = unique("mgc");
    let t = TestService::start(&format!(
        r#"
[runnables.gate]
command = ["sh", "-c", 'while [ ! -f {{DIR}}/release ]; do sleep 0.05; done; echo "{{}}"']

[[triggers]]
name = "held"
kind = "mqtt"
runnable = "gate"
broker = "127.0.0.1"
client_id = "{client_id}"
{session}
subscriptions = [{{ topic = "{base}/x", qos = 1 }}]
"#
    ))
    .await;
    wait_subscribed(&t, "held").await;
    let publisher = Publisher::new(SHARED_PORT);
    publisher
        .publish(
            &format!("{base}/x"),
            QoS::AtLeastOnce,
            false,
            br#"{"held": 1}"#,
        )
        .await;
    eventually(SECS_20, "job running", || t.jobs_of("held").len() == 1).await;
    // Take the session over while the job runs: the broker hands the unacknowledged message
    // to the observer (millgate's trigger is kicked off and backs off meanwhile).
    let left = observe_session(
        SHARED_PORT,
        &client_id,
        None,
        Duration::from_millis(1500),
        version,
    )
    .await;
    std::fs::write(t.path("release"), b"").expect("release");
    assert_eq!(left.len(), 1, "the running job's message was already acked");
    assert_eq!(left[0].payload.as_slice(), br#"{"held": 1}"#);
    assert!(left[0].dup, "a redelivery is marked dup");
    wait_jobs(&t, "held", 1).await;
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_failing_job_is_dead_lettered_then_acknowledged() {
    let base = unique("mgdead");
    let client_id = unique("mgc");
    let t = TestService::start(&format!(
        r#"
[runnables.broken]
command = ["sh", "-c", 'echo broken >&2; exit 3']

[[triggers]]
name = "dead"
kind = "mqtt"
runnable = "broken"
broker = "127.0.0.1"
client_id = "{client_id}"
clean_session = false
subscriptions = [{{ topic = "{base}/x", qos = 1 }}]
retry = {{ attempts = 2, initial = "100ms", max = "100ms" }}
"#
    ))
    .await;
    wait_subscribed(&t, "dead").await;
    let publisher = Publisher::new(SHARED_PORT);
    publisher
        .publish(&format!("{base}/x"), QoS::AtLeastOnce, false, b"{}")
        .await;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        t.jobs_of("dead").len(),
        1,
        "redelivered after dead-lettering"
    );
    t.stop().await;
    let left = observe_session(
        SHARED_PORT,
        &client_id,
        None,
        Duration::from_millis(1500),
        3,
    )
    .await;
    assert!(
        left.is_empty(),
        "dead-lettered message not acknowledged: {left:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_topic_runs_each_topics_jobs_in_publish_order() {
    let base = unique("mgorder");
    let t = TestService::start(&format!(
        r#"
[router]
runners = 4

[runnables.log]
command = ["sh", "-c", 'read -r line; sleep $(echo "$line" | sed -e "s/.*\"delay\":\"\([0-9.]*\)\".*/\1/"); echo "$line" >> {{DIR}}/order.log; echo "{{}}"']

[[triggers]]
name = "ordered"
kind = "mqtt"
runnable = "log"
broker = "127.0.0.1"
subscriptions = [{{ topic = "{base}/+", qos = 1 }}]
order_by = ".topic"
preprocessor = {{ jq = '{{topic, n: .data.n, delay: (if .data.n < 2 then "0.3" else "0" end)}}' }}
"#
    ))
    .await;
    wait_subscribed(&t, "ordered").await;
    let publisher = Publisher::new(SHARED_PORT);
    const PER_TOPIC: usize = 6;
    for n in 0..PER_TOPIC {
        for s in ["a", "b", "c"] {
            publisher
                .publish(
                    &format!("{base}/{s}"),
                    QoS::AtLeastOnce,
                    false,
                    json!({"n": n}).to_string().as_bytes(),
                )
                .await;
        }
    }
    let jobs = wait_jobs(&t, "ordered", 3 * PER_TOPIC).await;
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    let mut seen: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for line in lines(&t.path("order.log")) {
        let v: Value = serde_json::from_str(&line).expect("logged args");
        let topic = v["topic"].as_str().expect("topic").to_string();
        seen.entry(topic)
            .or_default()
            .push(v["n"].as_u64().expect("n"));
    }
    let expected: Vec<u64> = (0..PER_TOPIC as u64).collect();
    assert_eq!(seen.len(), 3, "{seen:?}");
    for (topic, ns) in &seen {
        assert_eq!(ns, &expected, "topic {topic} ran out of order");
    }
    t.stop().await;
}

// ---------------------------------------------------------------------------------------------
// Processes: millgate killed with -9, mosquitto stopped and restarted

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_persistent_session_loses_no_message() {
    kill_9_loses_no_message(3).await;
}

/// The v5 session (`clean_start = false`, `session_expiry`) keeps what millgate left
/// unacknowledged across the restart, like the v3.1.1 one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_kill_9_with_a_persistent_session_loses_no_message() {
    kill_9_loses_no_message(5).await;
}

async fn kill_9_loses_no_message(version: u8) {
    let session = persistent_session(version);
    let base = unique("mgcrash");
    let client_id = unique("mgcrash");
    let topic = format!("{base}/m");
    let broker = BrokerProcess::mosquitto().await;
    let bport = broker.port();
    // Create the session (and its subscription) first, so the broker queues every message
    // for millgate's client id before millgate ever runs.
    observe_session(bport, &client_id, Some(&topic), Duration::ZERO, version).await;
    const N: usize = 40;
    let publisher = Publisher::new(bport);
    for i in 0..N {
        publisher
            .publish(
                &topic,
                QoS::AtLeastOnce,
                false,
                json!({"i": i}).to_string().as_bytes(),
            )
            .await;
    }
    publisher.wait_acked(N).await;

    let mut mg = MillgateProcess::new(&format!(
        r#"
[router]
runners = 2

[runnables.slow]
command = ["sh", "-c", 'read -r line; sleep 0.1; echo "$line" >> {{DIR}}/done.log']

[[triggers]]
name = "crashy"
kind = "mqtt"
runnable = "slow"
broker = "127.0.0.1"
port = {bport}
client_id = "{client_id}"
{session}
subscriptions = [{{ topic = "{topic}", qos = 1 }}]
max_in_flight = 10
preprocessor = {{ jq = '{{i: .data.i}}' }}
"#
    ));
    let done = mg.path("done.log");
    mg.spawn();
    eventually(SECS_20, "millgate ran something before the kill", || {
        lines(&done).len() >= 5
    })
    .await;
    mg.kill_9();
    let before = lines(&done).len();
    assert!(before < N, "the crash came too late to test anything");

    mg.spawn();
    let ran = |path: &Path| -> Vec<u64> {
        lines(path)
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["i"].as_u64())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = ran(&done);
        let missing: Vec<u64> = (0..N as u64).filter(|i| !got.contains(i)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "messages never ran: {missing:?}; see {}",
            mg.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Redeliveries of jobs the first process had queued run again; let the runs settle (no
    // new line for 1.5 s) so the second process has acknowledged everything, then stop it.
    let mut count = lines(&done).len();
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_millis(1500) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = lines(&done).len();
        if now != count {
            count = now;
            stable_since = Instant::now();
        }
        assert!(Instant::now() < deadline, "runs never settled");
    }
    mg.kill_9();
    let total = ran(&done).len();
    eprintln!("ran before the kill: {before}/{N}; runs in all: {total} (redeliveries run again)");
    // Nothing is left unacknowledged in the session once the second process has run
    // everything: each message was acked after its job's outcome.
    let left = observe_session(
        bport,
        &client_id,
        None,
        Duration::from_millis(1500),
        version,
    )
    .await;
    let leftover: Vec<Value> = left
        .iter()
        .filter_map(|p| serde_json::from_slice(&p.payload).ok())
        .collect();
    assert!(
        leftover.is_empty(),
        "messages left unacknowledged: {leftover:?}"
    );
    eprintln!("left unacknowledged in the session: {}", left.len());
}

/// Acks follow settlement closely: 1,000 QoS 1 messages in a persistent session, millgate
/// killed with -9 mid-stream after a few hundred jobs, restarted. The broker redelivers what it
/// had not seen acknowledged; of those, the ones whose job had already run run again. That
/// must be only what was in flight at the kill (`max_in_flight` jobs) plus the acks on their
/// way at that instant ([`ACKS_ON_THE_WAY`]), not the hundreds of settled jobs whose acks
/// were still queued in the client. The broker lets 1,000 messages be in flight, so only
/// millgate's acks (v3.1.1) or its receive maximum (v5) keep the count down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_stream_repeats_only_what_was_in_flight() {
    kill_9_mid_stream(3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_kill_9_mid_stream_repeats_only_what_was_in_flight() {
    kill_9_mid_stream(5).await;
}

/// Acks written to the socket just before a `kill -9` that the broker may not have taken in
/// (README, MQTT triggers: "after a crash").
const ACKS_ON_THE_WAY: usize = 5;

async fn kill_9_mid_stream(version: u8) {
    const N: usize = 1000;
    const MAX_IN_FLIGHT: usize = 10;
    let session = persistent_session(version);
    let client_id = unique("mgstream");
    let topic = format!("{}/m", unique("mgstream"));
    let broker = BrokerProcess::mosquitto_with(&format!(
        "listener {} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages {N}\nmax_queued_messages {}\n",
        free_port(),
        2 * N
    ))
    .await;
    let bport = broker.port();
    observe_session(bport, &client_id, Some(&topic), Duration::ZERO, version).await;
    let publisher = Publisher::new(bport);
    for i in 0..N {
        publisher
            .publish(&topic, QoS::AtLeastOnce, false, i.to_string().as_bytes())
            .await;
    }
    publisher.wait_acked(N).await;

    let mut mg = MillgateProcess::new(&format!(
        r#"
[router]
runners = 2

[runnables.log]
command = ["sh", "-c", 'read -r i; echo "$i $PPID" >> {{DIR}}/done.log']

[[triggers]]
name = "stream"
kind = "mqtt"
runnable = "log"
broker = "127.0.0.1"
port = {bport}
client_id = "{client_id}"
{session}
subscriptions = [{{ topic = "{topic}", qos = 1 }}]
max_in_flight = {MAX_IN_FLIGHT}
preprocessor = {{ jq = '.data' }}
"#
    ));
    let done = mg.path("done.log");
    mg.spawn();
    let first_pid = mg.pid().to_string();
    let deadline = Instant::now() + SECS_20;
    while lines(&done).len() < 300 {
        assert!(
            Instant::now() < deadline,
            "millgate ran {} jobs before the kill",
            lines(&done).len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mg.kill_9();
    let before = lines(&done).len();
    assert!(before < N, "the crash came too late to test anything");

    mg.spawn();
    let ran = || -> std::collections::BTreeSet<u64> {
        lines(&done)
            .iter()
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while ran().len() < N {
        assert!(
            Instant::now() < deadline,
            "{} of {N} messages ran; see {}",
            ran().len(),
            mg.dir().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Redeliveries settle: no new line for a second.
    let mut count = lines(&done).len();
    let mut stable_since = Instant::now();
    while stable_since.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = lines(&done).len();
        if now != count {
            count = now;
            stable_since = Instant::now();
        }
    }
    mg.kill_9();
    // A job the killed process had queued runs again after the restart (recovered from the
    // store), and so does its message's redelivery (a new event: MQTT ids are not stable).
    let mut runs: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for l in lines(&done) {
        let (i, pid) = l.split_once(' ').expect("`<i> <pid>` line");
        // A command started just before the kill, whose args never came, read nothing.
        if let Ok(i) = i.parse() {
            runs.entry(i).or_default().push(pid.to_string());
        }
    }
    let repeated: Vec<_> = runs.iter().filter(|(_, pids)| pids.len() > 1).collect();
    let twice = repeated.len();
    eprintln!(
        "v{version}: ran before the kill: {before}/{N}; ran more than once: {twice}: {repeated:?}"
    );
    for (i, pids) in &repeated {
        assert!(pids.len() <= 3, "{i} ran {} times: {pids:?}", pids.len());
        assert!(
            pids.iter().any(|p| *p != first_pid),
            "{i} ran twice before the kill: {pids:?}"
        );
    }
    assert!(
        twice <= MAX_IN_FLIGHT + ACKS_ON_THE_WAY,
        "v{version}: {twice} messages ran twice; at most {MAX_IN_FLIGHT} were in flight"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_backs_off_then_reconnects_and_continues() {
    let mut broker = BrokerProcess::mosquitto().await;
    let port = broker.port();
    let t = TestService::start(&format!(
        r#"
[supervisor]
restart_initial = "200ms"
restart_max = "1s"

[runnables.ok]
command = ["sh", "-c", 'echo "{{}}"']

[[triggers]]
name = "resilient"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {port}
keep_alive = "5s"
subscriptions = [{{ topic = "orders/#", qos = 1 }}]
"#
    ))
    .await;
    wait_subscribed(&t, "resilient").await;
    let publisher = Publisher::new(port);
    publisher
        .publish("orders/1", QoS::AtLeastOnce, false, b"{}")
        .await;
    wait_jobs(&t, "resilient", 1).await;
    drop(publisher);

    broker.kill();
    t.wait_backing_off("resilient", SECS_20, |e| !e.is_empty())
        .await;
    assert_ne!(trigger_state(&t, "resilient"), TriggerState::Disabled);

    broker.restart().await;
    wait_subscribed(&t, "resilient").await;
    let publisher = Publisher::new(port);
    publisher
        .publish("orders/2", QoS::AtLeastOnce, false, b"{}")
        .await;
    let jobs = wait_jobs(&t, "resilient", 2).await;
    assert_eq!(jobs[1].event["topic"], "orders/2");
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
}

// ---------------------------------------------------------------------------------------------
// MQTT v5, TLS and refusals

/// A v5 publisher (rumqttc's v5 client) whose event loop runs in a task.
struct Publisher5 {
    client: v5::AsyncClient,
    task: tokio::task::JoinHandle<()>,
}

impl Publisher5 {
    fn new(port: u16) -> Self {
        let mut opts = v5::MqttOptions::new(unique("pub5"), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5))
            .set_max_packet_size(Some(1 << 20));
        let (client, mut eventloop) = v5::AsyncClient::new(opts, 100);
        let task = tokio::spawn(async move {
            loop {
                if eventloop.poll().await.is_err() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
        Self { client, task }
    }
}

impl Drop for Publisher5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Quick restarts and a runnable `ok` that succeeds, for tests that watch triggers back off.
const FAST_BACKOFF: &str = r#"
[supervisor]
restart_initial = "200ms"
restart_max = "1s"

[runnables.ok]
command = ["sh", "-c", 'cat > /dev/null; echo "{}"']
"#;

/// Waits until trigger `name` backs off with an error that satisfies `expected`; returns it.
async fn wait_backing_off(t: &TestService, name: &str, expected: impl Fn(&str) -> bool) -> String {
    t.wait_backing_off(name, SECS_20, expected).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_messages_carry_their_properties_into_job_args() {
    let base = unique("mgv5");
    let t = TestService::start(&format!(
        r#"
[runnables.record]
command = ["sh", "-c", 'cat > {{DIR}}/args-$MILLGATE_JOB_ID.json; echo "{{}}"']

[[triggers]]
name = "v5"
kind = "mqtt"
runnable = "record"
broker = "127.0.0.1"
port = {SHARED_PORT}
version = 5
subscriptions = [{{ topic = "{base}/props", qos = 1 }}, {{ topic = "{base}/plain/#", qos = 0 }}]
preprocessor = {{ jq = '{{topic, data, qos, properties}}' }}
"#
    ))
    .await;
    wait_subscribed(&t, "v5").await;
    assert_eq!(source_status(&t, "v5")["session_present"], false);
    let publisher = Publisher5::new(SHARED_PORT);
    let props = v5p::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(3600),
        response_topic: Some(format!("{base}/replies")),
        correlation_data: Some(b"\x00\x01corr".to_vec().into()),
        user_properties: vec![
            ("source".into(), "sensor-7".into()),
            ("source".into(), "relay".into()),
            ("unit".into(), "C".into()),
        ],
        content_type: Some("application/json".into()),
        ..Default::default()
    };
    publisher
        .client
        .publish_with_properties(
            format!("{base}/props"),
            v5::mqttbytes::QoS::AtLeastOnce,
            false,
            br#"{"t": 21.5}"#.to_vec(),
            props,
        )
        .await
        .expect("publish queued");
    publisher
        .client
        .publish(
            format!("{base}/plain/x"),
            v5::mqttbytes::QoS::AtMostOnce,
            false,
            b"hello".to_vec(),
        )
        .await
        .expect("publish queued");

    let jobs = wait_jobs(&t, "v5", 2).await;
    assert!(jobs.iter().all(|j| j.status == JobStatus::Succeeded));
    let job = jobs
        .iter()
        .find(|j| j.event["topic"] == format!("{base}/props"))
        .expect("job of the message with properties");
    let mut args = job.args.clone();
    // The broker hands on what is left of the expiry interval.
    let expiry = args["properties"]
        .as_object_mut()
        .and_then(|p| p.remove("message_expiry_interval"))
        .and_then(|v| v.as_u64())
        .expect("message_expiry_interval");
    assert!((3590..=3600).contains(&expiry), "{expiry}");
    assert_eq!(
        args,
        json!({
            "topic": format!("{base}/props"),
            "data": {"t": 21.5},
            "qos": 1,
            "properties": {
                "content_type": "application/json",
                "response_topic": format!("{base}/replies"),
                "correlation_data": b64(b"\x00\x01corr"),
                "payload_format_indicator": 1,
                "user_properties": [["source", "sensor-7"], ["source", "relay"], ["unit", "C"]],
                // The first `subscriptions` entry matched.
                "subscription_identifiers": [1],
            },
        })
    );
    assert_eq!(written_args(&t, job), job.args);
    assert_eq!(job.event["payload"], b64(br#"{"t": 21.5}"#));
    assert!(job.event["pkid"].as_u64().expect("pkid") >= 1);
    assert_eq!(job.event["dup"], false);

    let plain = jobs
        .iter()
        .find(|j| j.event["topic"] == format!("{base}/plain/x"))
        .expect("job of the plain message");
    assert_eq!(
        plain.args,
        json!({
            "topic": format!("{base}/plain/x"),
            "data": null,
            "qos": 0,
            "properties": {"user_properties": [], "subscription_identifiers": [2]},
        })
    );
    assert_eq!(plain.event["payload"], b64(b"hello"));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connections_and_subscriptions_name_the_reason_code() {
    // One broker refuses anonymous clients; the other lets them in but, through mosquitto's
    // dynamic security plugin, lets them subscribe to `allowed/#` only.
    let closed_broker = BrokerProcess::mosquitto_with(&format!(
        "listener {} 127.0.0.1\nallow_anonymous false\n",
        free_port()
    ))
    .await;
    let closed = closed_broker.port();
    let open_dir = tempfile::tempdir().expect("tempdir");
    let dynsec = open_dir.path().join("dynsec.json");
    std::fs::write(
        &dynsec,
        json!({
            "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true,
                "subscribe": false, "unsubscribe": true},
            "clients": [],
            "anonymousGroup": "anonymous",
            "groups": [{"groupname": "anonymous", "roles": [{"rolename": "allowed"}],
                "clients": []}],
            "roles": [{"rolename": "allowed", "acls": [
                {"acltype": "subscribePattern", "topic": "allowed/#", "allow": true}]}],
        })
        .to_string(),
    )
    .expect("dynamic security config");
    // Part of Debian's mosquitto package.
    let plugin = [
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/mosquitto_dynamic_security.so",
    ]
    .into_iter()
    .find(|p| Path::new(p).exists())
    .expect("mosquitto_dynamic_security.so (mosquitto >= 2.0)");
    let open_broker = BrokerProcess::mosquitto_with(&format!(
        "listener {} 127.0.0.1\nallow_anonymous true\n\
         plugin {plugin}\nplugin_opt_config_file {}\n",
        free_port(),
        dynsec.display()
    ))
    .await;
    let open = open_broker.port();
    let t = TestService::start(&format!(
        r#"{FAST_BACKOFF}
[[triggers]]
name = "closed3"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {closed}
subscriptions = [{{ topic = "allowed/a", qos = 1 }}]

[[triggers]]
name = "closed5"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {closed}
version = 5
subscriptions = [{{ topic = "allowed/a", qos = 1 }}]

[[triggers]]
name = "denied3"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {open}
subscriptions = [{{ topic = "allowed/a", qos = 1 }}, {{ topic = "denied/#", qos = 1 }}]

[[triggers]]
name = "denied5"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {open}
version = 5
subscriptions = [{{ topic = "allowed/a", qos = 1 }}, {{ topic = "denied/#", qos = 1 }}]
"#
    ))
    .await;
    let refused = format!("MQTT broker 127.0.0.1:{closed} refused the connection");
    let e = wait_backing_off(&t, "closed3", |e| e.contains(&refused)).await;
    assert!(e.ends_with("return code 5 (NotAuthorized)"), "{e}");
    let e = wait_backing_off(&t, "closed5", |e| e.contains(&refused)).await;
    assert!(e.ends_with("reason code 0x87 (NotAuthorized)"), "{e}");
    let e = wait_backing_off(&t, "denied3", |e| e.contains("refused the subscription")).await;
    assert!(
        e.ends_with("refused the subscription to `denied/#`: return code 0x80 (Failure)"),
        "{e}"
    );
    let e = wait_backing_off(&t, "denied5", |e| e.contains("refused the subscription")).await;
    assert!(
        e.ends_with("refused the subscription to `denied/#`: reason code 0x87 (NotAuthorized)"),
        "{e}"
    );
    t.stop().await;
}

/// A CA (`ca.pem`, `ca.key`), a server certificate for localhost / 127.0.0.1 (`server.pem`,
/// `server.key`) and a client certificate (`client.pem`, `client.key`) signed by it, and a
/// second CA that signed nothing (`other-ca.pem`): P-256 keys, made with the openssl command
/// line into `dir`.
fn make_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("the openssl command line (Debian: apt-get install openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let key = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (keyout, out, subj) = (
            format!("{ca}.key"),
            format!("{ca}.pem"),
            format!("/CN=millgate test {ca}"),
        );
        let mut args = vec!["req", "-x509", "-days", "2", "-subj", subj.as_str()];
        args.extend(key);
        args.extend(["-keyout", keyout.as_str(), "-out", out.as_str()]);
        args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
        args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
        run(&args);
    }
    for (name, usage, san) in [
        (
            "server",
            "serverAuth",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        ),
        ("client", "clientAuth", ""),
    ] {
        let (keyout, csr, out, ext, subj) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
            format!("/CN=millgate-{name}"),
        );
        std::fs::write(
            dir.join(&ext),
            format!("basicConstraints=CA:FALSE\nextendedKeyUsage={usage}\n{san}"),
        )
        .expect("extensions file");
        let mut args = vec!["req", "-subj", subj.as_str(), "-keyout", keyout.as_str()];
        args.extend(["-out", csr.as_str()]);
        args.extend(key);
        run(&args);
        run(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &out,
        ]);
    }
}

/// A broker with a plain listener (for the test's publisher) and a TLS one with the
/// certificates of `make_certs`; `require_certificate` asks clients for theirs.
async fn start_tls_broker(dir: &Path, require_certificate: bool) -> (BrokerProcess, u16, u16) {
    make_certs(dir);
    let (plain, tls) = (free_port(), free_port());
    let d = dir.display();
    let broker = BrokerProcess::mosquitto_with(&format!(
        "allow_anonymous true\nlistener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
         keyfile {d}/server.key\nrequire_certificate {require_certificate}\n"
    ))
    .await;
    (broker, plain, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_ca_receives_messages_and_without_it_backs_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, plain, tls) = start_tls_broker(dir.path(), false).await;
    let d = dir.path().display();
    let t = TestService::start(&format!(
        r#"{FAST_BACKOFF}
[[triggers]]
name = "secure3"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
tls = {{ ca_file = "{d}/ca.pem" }}
subscriptions = [{{ topic = "secure/three", qos = 1 }}]

[[triggers]]
name = "secure5"
kind = "mqtt"
runnable = "ok"
broker = "localhost"
port = {tls}
version = 5
tls = {{ ca_file = "{d}/ca.pem" }}
subscriptions = [{{ topic = "secure/five", qos = 1 }}]

[[triggers]]
name = "system_roots"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
tls = {{}}
subscriptions = [{{ topic = "secure/three", qos = 1 }}]

[[triggers]]
name = "other_ca"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
version = 5
tls = {{ ca_file = "{d}/other-ca.pem" }}
subscriptions = [{{ topic = "secure/five", qos = 1 }}]

[[triggers]]
name = "missing_ca"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
tls = {{ ca_file = "{d}/missing.pem" }}
subscriptions = [{{ topic = "secure/three", qos = 1 }}]

[[triggers]]
name = "plaintext_to_tls"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
subscriptions = [{{ topic = "secure/three", qos = 1 }}]
"#
    ))
    .await;
    wait_subscribed(&t, "secure3").await;
    wait_subscribed(&t, "secure5").await;
    let publisher = Publisher::new(plain);
    publisher
        .publish("secure/three", QoS::AtLeastOnce, false, br#"{"v": 3}"#)
        .await;
    publisher
        .publish("secure/five", QoS::AtLeastOnce, false, br#"{"v": 5}"#)
        .await;
    let three = wait_jobs(&t, "secure3", 1).await;
    assert_eq!(three[0].event["data"], json!({"v": 3}));
    assert_eq!(three[0].status, JobStatus::Succeeded);
    let five = wait_jobs(&t, "secure5", 1).await;
    assert_eq!(five[0].event["data"], json!({"v": 5}));
    assert_eq!(
        five[0].event["properties"]["subscription_identifiers"],
        json!([1])
    );

    // A broker certificate that chains to no trusted root is refused, and said so.
    for name in ["system_roots", "other_ca"] {
        let e = wait_backing_off(&t, name, |e| !e.is_empty()).await;
        assert!(e.to_lowercase().contains("certificate"), "{name}: {e}");
        assert!(t.jobs_of(name).is_empty());
    }
    let missing = format!("{d}/missing.pem");
    let e = wait_backing_off(&t, "missing_ca", |e| !e.is_empty()).await;
    assert!(e.starts_with("tls.ca_file"), "{e}");
    assert!(e.contains(&missing) && e.contains("cannot read"), "{e}");
    wait_backing_off(&t, "plaintext_to_tls", |e| !e.is_empty()).await;
    assert_ne!(trigger_state(&t, "other_ca"), TriggerState::Disabled);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_connects_with_the_client_certificate_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_broker, plain, tls) = start_tls_broker(dir.path(), true).await;
    let d = dir.path().display();
    let t = TestService::start(&format!(
        r#"{FAST_BACKOFF}
[[triggers]]
name = "mutual"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
version = 5
tls = {{ ca_file = "{d}/ca.pem", client_cert_file = "{d}/client.pem", client_key_file = "{d}/client.key" }}
subscriptions = [{{ topic = "mutual/#", qos = 1 }}]

[[triggers]]
name = "anonymous"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
tls = {{ ca_file = "{d}/ca.pem" }}
subscriptions = [{{ topic = "mutual/#", qos = 1 }}]

[[triggers]]
name = "bad_key"
kind = "mqtt"
runnable = "ok"
broker = "127.0.0.1"
port = {tls}
tls = {{ ca_file = "{d}/ca.pem", client_cert_file = "{d}/client.pem", client_key_file = "{d}/client.pem" }}
subscriptions = [{{ topic = "mutual/#", qos = 1 }}]
"#
    ))
    .await;
    wait_subscribed(&t, "mutual").await;
    let publisher = Publisher::new(plain);
    publisher
        .publish("mutual/a", QoS::AtLeastOnce, false, b"{}")
        .await;
    let jobs = wait_jobs(&t, "mutual", 1).await;
    assert_eq!(jobs[0].event["topic"], "mutual/a");
    // Without a client certificate the broker ends the handshake: `received fatal alert:
    // CertificateRequired` with mosquitto and TLS 1.3, or, when the broker's close overtakes
    // the alert, `connection reset by peer` — some attempt (they repeat every second) reads it.
    let e = wait_backing_off(&t, "anonymous", |e| {
        e.to_lowercase().contains("certificate")
    })
    .await;
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    assert!(t.jobs_of("anonymous").is_empty());
    assert_ne!(source_status(&t, "anonymous")["subscribed"], true);
    let e = wait_backing_off(&t, "bad_key", |e| !e.is_empty()).await;
    assert!(e.starts_with("tls.client_key_file"), "{e}");
    assert!(e.contains("client.pem"), "{e}");
    t.stop().await;
}
