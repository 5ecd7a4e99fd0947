//! MQTT triggers against a real Mosquitto: the shared one on 127.0.0.1:1883 for most tests, a
//! private one on a free port for the test that stops the broker. Every test uses its own topic
//! prefix (and client ids), so tests run in parallel without seeing each other's messages.
//! Publishers and session observers are rumqttc clients, the library the trigger itself uses.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{eventually, lines, TestService};
use millgate_actors::job::{JobRecord, JobStatus};
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
        opts.set_keep_alive(Duration::from_secs(5));
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

/// Connects as `client_id` with a persistent session (manual acks, so nothing it receives is
/// acknowledged), optionally subscribes, collects what the broker delivers for `listen`, and
/// disconnects. Used to create a session before millgate runs and to look into a session
/// after it stopped: whatever millgate left unacknowledged is delivered here again.
async fn observe_session(
    port: u16,
    client_id: &str,
    subscribe: Option<&str>,
    listen: Duration,
) -> Vec<rumqttc::Publish> {
    let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
    opts.set_clean_session(false).set_manual_acks(true);
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    if let Some(topic) = subscribe {
        client
            .subscribe(topic, QoS::AtLeastOnce)
            .await
            .expect("subscribe queued");
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
        match tokio::time::timeout(wait, eventloop.poll()).await {
            Err(_) => continue,
            // Taken over again by millgate's reconnect: what was delivered so far counts.
            Ok(Err(_)) if ready_at.is_some() => return got,
            Ok(Err(e)) => panic!("observer connection: {e}"),
            Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) if subscribe.is_none() => {
                ready_at = Some(Instant::now())
            }
            Ok(Ok(MqttEvent::Incoming(Packet::SubAck(_)))) => ready_at = Some(Instant::now()),
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p)))) => got.push(p),
            Ok(Ok(_)) => {}
        }
    }
    let _ = client.disconnect().await;
    // Let the disconnect go out.
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
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
    t.app
        .service
        .registry
        .get(name)
        .expect("trigger")
        .runtime
        .state()
}

/// Waits until `n` jobs of `trigger` are final, returned in creation order.
async fn wait_jobs(t: &TestService, trigger: &str, n: usize) -> Vec<JobRecord> {
    let deadline = Instant::now() + SECS_20;
    loop {
        let mut jobs = t.jobs_of(trigger);
        if jobs.len() >= n && jobs.iter().all(|j| j.status.is_final()) {
            jobs.sort_by_key(|j| j.created_at);
            return jobs;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} final jobs of {trigger}, have {:?}",
            jobs.iter().map(|j| j.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let written: Value = serde_json::from_str(
        &std::fs::read_to_string(t.path(&format!("args-{}.json", json_job.job_id))).expect("args"),
    )
    .expect("json args");
    assert_eq!(written, json_job.args);

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
async fn failing_twice_then_succeeding_acks_only_after_success() {
    let base = unique("mgretry");
    let client_id = unique("mgc");
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
clean_session = false
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
    let left = observe_session(SHARED_PORT, &client_id, None, Duration::from_millis(1500)).await;
    assert!(left.is_empty(), "message was never acknowledged: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsettled_messages_stay_unacknowledged_in_the_session() {
    // The counterpart of the test above: while a job has no outcome, its message is not
    // acknowledged, so the persistent session still holds it when millgate goes away.
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
clean_session = false
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
    let left = observe_session(SHARED_PORT, &client_id, None, Duration::from_millis(1500)).await;
    std::fs::write(t.path("release"), b"").expect("release");
    assert_eq!(left.len(), 1, "the running job's message was already acked");
    assert_eq!(left[0].payload.as_ref(), br#"{"held": 1}"#);
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
    let left = observe_session(SHARED_PORT, &client_id, None, Duration::from_millis(1500)).await;
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn start_millgate(config: &Path, log: &Path) -> Child {
    let log = std::fs::File::create(log).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_millgate"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("millgate starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_a_persistent_session_loses_no_message() {
    let base = unique("mgcrash");
    let client_id = unique("mgcrash");
    let topic = format!("{base}/m");
    let broker_dir = tempfile::tempdir().expect("tempdir");
    let bport = free_port();
    let _broker = Mosquitto::start(bport, broker_dir.path());
    wait_port(bport).await;
    // Create the session (and its subscription) first, so the broker queues every message
    // for millgate's client id before millgate ever runs.
    observe_session(bport, &client_id, Some(&topic), Duration::ZERO).await;
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

    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let done = dir.path().join("done.log");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:{port}"

[store]
path = "{dir}/data"

[router]
runners = 2

[runnables.slow]
command = ["sh", "-c", 'read -r line; sleep 0.1; echo "$line" >> {dir}/done.log']

[[triggers]]
name = "crashy"
kind = "mqtt"
runnable = "slow"
broker = "127.0.0.1"
port = {bport}
client_id = "{client_id}"
clean_session = false
subscriptions = [{{ topic = "{topic}", qos = 1 }}]
max_in_flight = 10
preprocessor = {{ jq = '{{i: .data.i}}' }}
"#,
            dir = dir.path().display()
        ),
    )
    .expect("config");
    let mut child = start_millgate(&config, &dir.path().join("first.log"));
    let deadline = Instant::now() + SECS_20;
    while lines(&done).len() < 5 {
        assert!(
            Instant::now() < deadline,
            "millgate ran nothing before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9");
    child.wait().expect("wait");
    let before = lines(&done).len();
    assert!(before < N, "the crash came too late to test anything");

    let mut child = start_millgate(&config, &dir.path().join("second.log"));
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
            dir.path().display()
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
    child.kill().expect("kill");
    child.wait().expect("wait");
    let total = ran(&done).len();
    eprintln!("ran before the kill: {before}/{N}; runs in all: {total} (redeliveries run again)");
    // Nothing is left unacknowledged in the session once the second process has run
    // everything: each message was acked after its job's outcome.
    let left = observe_session(bport, &client_id, None, Duration::from_millis(1500)).await;
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

struct Mosquitto {
    child: Child,
}

impl Mosquitto {
    fn start(port: u16, dir: &Path) -> Self {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                 log_dest stderr\nlog_type all\n"
            ),
        )
        .expect("mosquitto config");
        let child = Command::new("/usr/sbin/mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).expect("log file"))
            .spawn()
            .expect("mosquitto starts");
        Self { child }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn wait_port(port: u16) {
    let deadline = Instant::now() + SECS_20;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "mosquitto did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_backs_off_then_reconnects_and_continues() {
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut broker = Mosquitto::start(port, conf_dir.path());
    wait_port(port).await;
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

    broker.stop();
    let deadline = Instant::now() + SECS_20;
    loop {
        let s = trigger_state(&t, "resilient");
        if let TriggerState::BackingOff { last_error, .. } = &s {
            assert!(!last_error.is_empty());
            break;
        }
        assert!(Instant::now() < deadline, "trigger never backed off: {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(trigger_state(&t, "resilient"), TriggerState::Disabled);

    let _broker = Mosquitto::start(port, conf_dir.path());
    wait_port(port).await;
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
