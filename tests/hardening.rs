//! Hostile input, end to end: JSON nested past the limit, records the store cannot read, runaway
//! and crashing jq filters, fan-out and admission, runners' output, refused broker messages.

mod common;

use std::time::Duration;

use common::binary::MillgateProcess;
use common::{eventually, TestService};
use millgate_actors::job::{JobId, JobStatus};
use millgate_actors::store::joblog;
use millgate_actors::triggers::nats::async_nats;
use serde_json::{json, Value};

fn nested(n: usize) -> String {
    format!("{}{}", "[".repeat(n), "]".repeat(n))
}

/// The attack from the field: a body nested 127 levels deep on an unauthenticated sync route
/// used to be accepted, leave a record nobody could read, and stop the next start. Now it is
/// refused with 422, what is accepted reads back, and the service restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_past_the_depth_limit_is_refused_and_the_service_restarts() {
    let mut mg = MillgateProcess::new(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "greet"
kind = "http"
method = "post"
path = "/greet/:name"
mode = "sync"
runnable = "echo"
auth = { type = "none" }
preprocessor = { jq = '{name: .params.name, mood: .body.mood, x: .body.x}' }
"#,
    );
    let base = mg.ingress.clone();
    let client = reqwest::Client::new();
    mg.start().await;

    let post = |body: String| {
        client
            .post(format!("{base}/greet/x"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let attack = format!(r#"{{"mood":"ok","x":{}}}"#, nested(126));
    let resp = post(attack).await.unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_json_depth"),
        "{body}"
    );
    // Far past serde's own limit: the same clear refusal.
    let resp = post(format!(r#"{{"x":{}}}"#, nested(100_000)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    // The deepest accepted body (64 levels: the object and 63 arrays) runs and reads back.
    let resp = post(format!(r#"{{"mood":"ok","x":{}}}"#, nested(63)))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let result: Value = resp.json().await.unwrap();
    assert_eq!(result["mood"], "ok");
    assert_eq!(result["x"].to_string(), nested(63));

    mg.sigterm();
    assert!(
        mg.wait_exit(Duration::from_secs(15)).await.is_some(),
        "millgate did not stop on SIGTERM"
    );
    mg.start().await;
    let resp = post(r#"{"mood":"fine"}"#.into()).await.unwrap();
    assert_eq!(resp.status(), 200);
    mg.kill_9();
}

const ECHO: &str = r#"
[runnables.echo]
kind = "echo"
"#;

/// A record the store cannot decode (written by an earlier version, say) is moved to the
/// quarantine: the service starts, lists the other jobs, and shows the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_quarantined_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let good;
    let good_record: Value;
    {
        let t = TestService::start_in(
            tempfile::tempdir_in(dir.path()).unwrap(),
            &format!(
                "{}\n{ECHO}\n[[triggers]]\nname = \"hook\"\nkind = \"webhook\"\nrunnable = \"echo\"\n",
                common::header(dir.path())
            ),
        )
        .await;
        let (code, body) = t.post_json("/hooks/hook", None, &json!({"n": 1})).await;
        assert_eq!(code, 202, "{body}");
        good = body["job_id"].as_str().unwrap().to_string();
        t.wait_final(&good, Duration::from_secs(10)).await;
        good_record = serde_json::to_value(t.job(&good).unwrap()).unwrap();
        t.stop().await;
    }
    // A copy of the good record whose args nest past the reader's limit, as an older version
    // (which kept job records in sled) could write it.
    let bad = JobId::new();
    {
        let db = sled::open(&data).unwrap();
        let jobs = db.open_tree("jobs").unwrap();
        let mut record = good_record;
        record["job_id"] = json!(bad);
        record["args"] = json!("DEEP");
        let deep = record.to_string().replace(r#""DEEP""#, &nested(200));
        jobs.insert(bad.as_bytes(), deep.as_bytes()).unwrap();
        db.open_tree("queue")
            .unwrap()
            .insert(bad.as_bytes(), &[])
            .unwrap();
        db.flush().unwrap();
    }
    let t = TestService::start_in(
        tempfile::tempdir_in(dir.path()).unwrap(),
        &format!(
            "{}\n{ECHO}\n[[triggers]]\nname = \"hook\"\nkind = \"webhook\"\nrunnable = \"echo\"\n",
            common::header(dir.path())
        ),
    )
    .await;
    let (code, jobs) = t.admin_get("/api/jobs").await;
    assert_eq!(code, 200, "{jobs}");
    let ids: Vec<&str> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["job_id"].as_str())
        .collect();
    assert_eq!(ids, vec![good.as_str()]);
    let (code, q) = t.admin_get("/api/quarantine").await;
    assert_eq!(code, 200, "{q}");
    let records = q["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{q}");
    assert_eq!(records[0]["tree"], "jobs");
    assert_eq!(records[0]["key"], bad.to_string());
    assert!(records[0]["size"].as_u64().unwrap() > 400);
    assert!(records[0]["error"]
        .as_str()
        .unwrap()
        .contains("recursion limit"));
    let metrics = t
        .admin_req(reqwest::Method::GET, "/metrics")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("millgate_store_quarantined_records") && l.ends_with(" 1")),
        "{metrics}"
    );
    // The service works on.
    let (code, _) = t.post_json("/hooks/hook", None, &json!({"n": 2})).await;
    assert_eq!(code, 202);
}

/// Filters driven by hostile data run in jq worker processes with a timeout: runaway ones are
/// refused after `preprocessor.timeout`, a `fromjson` bomb is refused, and meanwhile
/// `/healthz` and other triggers answer; SIGTERM still stops the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runaway_and_crashing_filters_never_stall_the_service() {
    let mut mg = MillgateProcess::new(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "spin"
kind = "webhook"
runnable = "echo"
mode = "sync"
# The default preprocessor.timeout: 1s.
preprocessor = { jq = '{n: last(range(.body.n))}' }

[[triggers]]
name = "parse"
kind = "webhook"
runnable = "echo"
mode = "sync"
preprocessor = { jq = '.body.payload | fromjson | {got: length}' }

[[triggers]]
name = "recurse"
kind = "webhook"
runnable = "echo"
mode = "sync"
preprocessor = { jq = 'def f: if . > 0 then [(. - 1 | f)] else 0 end; .body.n | f | {r: length}' }
"#,
    );
    let base = mg.ingress.clone();
    let client = reqwest::Client::new();
    mg.start().await;

    // Eight runaway filters at once.
    let spins: Vec<_> = (0..8)
        .map(|_| {
            let c = client.clone();
            let url = format!("{base}/hooks/spin");
            tokio::spawn(async move {
                c.post(url)
                    .json(&json!({"n": 1e12}))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The listener and a cheap filter answer while they run (bounded by a client timeout;
    // without the workers the runtime's threads are all busy in jaq and this never answers).
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    // `/healthz` within a second, as the issue asks of an operator's probe.
    let health = quick
        .get(format!("{base}/healthz"))
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .expect("/healthz answered within 1 s while 8 runaway filters run");
    assert_eq!(health.status(), 200);
    let resp = quick
        .post(format!("{base}/hooks/spin"))
        .json(&json!({"n": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"n": 2}));
    for s in spins {
        assert_eq!(s.await.unwrap().unwrap(), 422);
    }
    let resp = quick
        .post(format!("{base}/hooks/spin"))
        .json(&json!({"n": 1e12}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("timed out"),
        "{body}"
    );

    // A form field holding JSON nested 5,000 levels deep, given to fromjson.
    let bomb = format!("payload={}", nested(5000));
    let resp = quick
        .post(format!("{base}/hooks/parse"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(bomb)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_json_depth"),
        "{body}"
    );
    // Recursion driven by the data, deep enough to overflow any thread's stack: the worker
    // process dies, the event is refused, the service goes on.
    let resp = quick
        .post(format!("{base}/hooks/recurse"))
        .json(&json!({"n": 10_000_000}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 422);
    let resp = quick
        .post(format!("{base}/hooks/parse"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("payload=[1,2,3]")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"got": 3}));

    // SIGTERM while runaway filters run: the process ends within its grace period.
    for _ in 0..4 {
        let c = client.clone();
        let url = format!("{base}/hooks/spin");
        tokio::spawn(async move { c.post(url).json(&json!({"n": 1e12})).send().await });
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    mg.sigterm();
    assert!(
        mg.wait_exit(Duration::from_secs(30)).await.is_some(),
        "millgate did not stop on SIGTERM"
    );
}

/// An event is stored once whatever its fan-out; more jobs than `max_fan_out` refuse it; all of
/// an event's jobs must fit under `max_in_flight`, and a burst of requests never gets more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_is_bounded_and_admission_is_atomic() {
    let t = TestService::start(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "fan"
kind = "webhook"
runnable = "echo"
preprocessor = { jq = '.body.items[] | {sku: .}' }
"#,
    )
    .await;
    // 100 jobs of a 55 KB body: accepted, one stored event.
    let pad = "p".repeat(500);
    let items: Vec<String> = (0..100).map(|i| format!("{i}-{pad}")).collect();
    let (code, body) = t
        .post_json("/hooks/fan", None, &json!({"items": items}))
        .await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["job_ids"].as_array().unwrap().len(), 100);
    let ids: Vec<String> = body["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for id in &ids {
        t.wait_final(id, Duration::from_secs(20)).await;
    }
    let record = t.job(&ids[7]).unwrap();
    assert_eq!(record.event["body"]["items"].as_array().unwrap().len(), 100);
    // 101 jobs: refused, nothing stored.
    let items: Vec<String> = (0..101).map(|i| i.to_string()).collect();
    let (code, body) = t
        .post_json("/hooks/fan", None, &json!({"items": items}))
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_fan_out"));
    // 10,000 items: refused as quickly, the filter stops at 101 outputs.
    let items: Vec<u32> = (0..10_000).collect();
    let (code, _) = t
        .post_json("/hooks/fan", None, &json!({"items": items}))
        .await;
    assert_eq!(code, 422);
    assert_eq!(t.jobs_of("fan").len(), 100);
    let dir = t.stop().await;
    let frames = millgate_actors::store::joblog::frames(&dir.path().join("data/joblog")).unwrap();
    let events = frames.iter().filter(|f| f.0 == joblog::frame::KIND_EVENT);
    assert_eq!(events.count(), 1);
    let jobs: Vec<usize> = frames
        .iter()
        .filter(|f| f.0 == joblog::frame::KIND_JOB)
        .map(|f| f.1)
        .collect();
    assert!(jobs.len() >= 100, "{} job frames", jobs.len());
    for len in jobs {
        assert!(
            len < 2048,
            "a job record carries more than its args: {len} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_jobs_must_all_fit_under_max_in_flight() {
    let t = TestService::start(
        r#"
[runnables.slow]
command = ["sh", "-c", "sleep 5; cat"]

[[triggers]]
name = "tight"
kind = "webhook"
runnable = "slow"
max_in_flight = 10
preprocessor = { jq = '.body.items[] | {sku: .}' }

[[triggers]]
name = "burst"
kind = "webhook"
runnable = "slow"
max_in_flight = 5
"#,
    )
    .await;
    // 20 jobs of one event never fit under 10.
    let items: Vec<u32> = (0..20).collect();
    let (code, body) = t
        .post_json("/hooks/tight", None, &json!({"items": items}))
        .await;
    assert_eq!(code, 429, "{body}");
    assert!(t.jobs_of("tight").is_empty());
    // 8 fit; then 3 more do not.
    let (code, _) = t
        .post_json(
            "/hooks/tight",
            None,
            &json!({"items": (0..8).collect::<Vec<_>>()}),
        )
        .await;
    assert_eq!(code, 202);
    let (code, _) = t
        .post_json("/hooks/tight", None, &json!({"items": [1, 2, 3]}))
        .await;
    assert_eq!(code, 429);
    // 100 simultaneous requests against max_in_flight = 5: exactly the first five get in.
    let sends: Vec<_> = (0..100)
        .map(|i| {
            let c = t.client.clone();
            let url = t.url("/hooks/burst");
            tokio::spawn(async move {
                c.post(url)
                    .json(&json!({ "i": i }))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut accepted = 0;
    for s in sends {
        match s.await.unwrap().unwrap() {
            202 => accepted += 1,
            429 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(accepted, 5);
    assert_eq!(t.jobs_of("burst").len(), 5);
}

/// Messages a broker hands over that cannot become jobs (a payload nested too deeply, a
/// failing preprocessor) leave a dead letter with the reason instead of vanishing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_broker_messages_become_dead_letters_with_their_reason() {
    let subject = format!("hardening_{}", uuid::Uuid::new_v4().simple());
    let t = TestService::start(&format!(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "msgs"
kind = "nats"
runnable = "echo"
servers = ["127.0.0.1:4222"]
subjects = ["{subject}.>"]
preprocessor = {{ jq = '{{n: (.data.n + 1)}}' }}
"#
    ))
    .await;
    let nc = async_nats::connect("127.0.0.1:4222").await.unwrap();
    eventually(Duration::from_secs(10), "trigger running", || {
        t.app
            .service
            .registry
            .get("msgs")
            .is_some_and(|e| e.runtime.state_name() == "running")
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nc.publish(format!("{subject}.deep"), nested(80).into())
        .await
        .unwrap();
    nc.publish(format!("{subject}.bad"), r#"{"n": "text"}"#.into())
        .await
        .unwrap();
    nc.publish(format!("{subject}.ok"), r#"{"n": 1}"#.into())
        .await
        .unwrap();
    nc.flush().await.unwrap();
    eventually(Duration::from_secs(10), "three jobs", || {
        t.jobs_of("msgs").len() == 3
    })
    .await;
    let jobs = t.jobs_of("msgs");
    let by_subject = |s: &str| {
        jobs.iter()
            .find(|j| j.event["subject"] == format!("{subject}.{s}"))
            .unwrap_or_else(|| panic!("no job for {s}: {jobs:?}"))
    };
    let deep = by_subject("deep");
    assert_eq!(deep.status, JobStatus::DeadLettered);
    assert!(
        deep.error.as_deref().unwrap().contains("max_json_depth"),
        "{deep:?}"
    );
    assert!(deep.event.get("data").is_none());
    let bad = by_subject("bad");
    assert_eq!(bad.status, JobStatus::DeadLettered);
    assert!(
        bad.error
            .as_deref()
            .unwrap()
            .contains("preprocessor failed"),
        "{bad:?}"
    );
    let ok = t
        .wait_final(
            &by_subject("ok").job_id.to_string(),
            Duration::from_secs(10),
        )
        .await;
    assert_eq!(ok.status, JobStatus::Succeeded);
    let (code, dl) = t.admin_get("/api/dead-letters").await;
    assert_eq!(code, 200);
    assert_eq!(dl["dead_letters"].as_array().unwrap().len(), 2, "{dl}");
}

/// A runnable's output is bounded: an HTTP endpoint answering 20 MB fails the job with a clear
/// error instead of filling memory and the store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_runnables_response_is_capped() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/big",
        axum::routing::post(|| async { "x".repeat(20 * 1024 * 1024) }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    let t = TestService::start(&format!(
        r#"
[runnables.big]
url = "http://{addr}/big"

[[triggers]]
name = "hook"
kind = "webhook"
runnable = "big"
retry = {{ attempts = 1 }}
"#
    ))
    .await;
    let (code, body) = t.post_json("/hooks/hook", None, &json!({})).await;
    assert_eq!(code, 202, "{body}");
    let r = t
        .wait_final(body["job_id"].as_str().unwrap(), Duration::from_secs(20))
        .await;
    assert_eq!(r.status, JobStatus::DeadLettered);
    assert!(r.error.as_deref().unwrap().contains("larger than"), "{r:?}");
}

/// A command that floods stderr (100 MB) fails with the end of it, not all of it: the service
/// keeps a bounded tail in memory and in the job's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commands_stderr_is_capped() {
    let t = TestService::start(
        r#"
[runnables.loud]
command = ["sh", "-c", "head -c 100000000 /dev/zero | tr '\\0' e >&2; echo the-end >&2; exit 4"]

[[triggers]]
name = "hook"
kind = "webhook"
runnable = "loud"
retry = { attempts = 1 }
"#,
    )
    .await;
    let (code, body) = t.post_json("/hooks/hook", None, &json!({})).await;
    assert_eq!(code, 202, "{body}");
    let r = t
        .wait_final(body["job_id"].as_str().unwrap(), Duration::from_secs(60))
        .await;
    assert_eq!(r.status, JobStatus::DeadLettered);
    let error = r.error.unwrap_or_default();
    assert!(
        error.contains("the-end"),
        "the end of stderr is kept: {error:.200}"
    );
    assert!(
        error.len() < 16 * 1024,
        "stderr kept whole: {} bytes",
        error.len()
    );
    t.stop().await;
}

/// The admin API's own bodies are held to `max_json_depth` too: a saved state or a trigger's
/// args nested past it would be stored and then fail to read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_past_the_depth_limit_are_refused() {
    let t = TestService::start(
        r#"
[runnables.echo]
kind = "echo"

[runnables.empty]
command = ["sh", "-c", "echo '{\"items\": []}'"]

[[triggers]]
name = "feed"
kind = "poll"
runnable = "echo"
poll_runnable = "empty"
cron = "0 0 1 1 *"
"#,
    )
    .await;
    let deep: Value = serde_json::from_str(&nested(70)).expect("70 levels parse");
    let resp = t
        .admin_req(reqwest::Method::PUT, "/api/triggers/feed/state")
        .json(&json!({ "cursor": deep }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 422);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "too_deep", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("max_json_depth"),
        "{body}"
    );
    assert_eq!(
        t.app.service.store.source_state("feed").ok().flatten(),
        None
    );

    let resp = t
        .admin_req(reqwest::Method::POST, "/api/triggers")
        .json(
            &json!({"name": "deep", "kind": "schedule", "runnable": "echo",
                      "cron": "0 0 1 1 *", "args": {"x": deep}}),
        )
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 422);
    let toml_body = format!(
        "name = \"deep-toml\"\nkind = \"schedule\"\nrunnable = \"echo\"\ncron = \"0 0 1 1 *\"\nargs = {{ x = {} }}\n",
        nested(70)
    );
    let resp = t
        .admin_req(reqwest::Method::POST, "/api/triggers")
        .header("content-type", "application/toml")
        .body(toml_body)
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 422);
    assert!(t.app.service.registry.get("deep").is_none());
    assert!(t.app.service.registry.get("deep-toml").is_none());
    // Within the limit, the same shapes are taken.
    let resp = t
        .admin_req(reqwest::Method::PUT, "/api/triggers/feed/state")
        .json(&json!({ "cursor": serde_json::from_str::<Value>(&nested(10)).expect("10") }))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status().as_u16(), 200);
    t.stop().await;
}
