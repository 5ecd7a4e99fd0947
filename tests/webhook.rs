//! Webhook triggers end to end: real HTTP into the real service, command and http runnables as
//! real processes and servers, sled on disk.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, lines, TestService};
use millgate_actors::job::JobStatus;
use serde_json::{json, Value};

const SECS_10: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_webhook_runs_command_and_records_parsed_result() {
    let t = TestService::start(
        r#"
[runnables.record]
command = ["sh", "-c", 'cat > {DIR}/args-$MILLGATE_JOB_ID.json; echo "{\"ok\": true, \"attempt\": $MILLGATE_ATTEMPT}"']

[[triggers]]
name = "orders"
kind = "webhook"
runnable = "record"
token = "t0k"
"#,
    )
    .await;
    let (status, body) = t
        .post_json(
            "/hooks/orders",
            Some("t0k"),
            &json!({"order": 7, "items": ["a"]}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["job_id"].as_str().expect("job_id").to_string();
    let record = t.wait_final(&id, SECS_10).await;
    assert_eq!(record.status, JobStatus::Succeeded, "{record:?}");
    assert_eq!(record.result, Some(json!({"ok": true, "attempt": 1})));
    assert_eq!(record.attempts, 1);
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(t.path(&format!("args-{id}.json"))).unwrap())
            .unwrap();
    assert_eq!(
        written,
        json!({"order": 7, "items": ["a"]}),
        "default mapping: body fields are the args"
    );

    // The same record through the minimal results API, with the trigger's token.
    let resp = t
        .client
        .get(t.url(&format!("/jobs/{id}?token=t0k")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let view: Value = resp.json().await.unwrap();
    assert_eq!(view["status"], "succeeded");
    assert_eq!(view["result"], json!({"ok": true, "attempt": 1}));
    assert_eq!(view["trigger"], "orders");
    let resp = t
        .client
        .get(t.url(&format!("/jobs/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_webhook_returns_the_output_and_text_stays_text() {
    let t = TestService::start(
        r#"
[runnables.upper]
command = ["sh", "-c", 'tr a-z A-Z']

[runnables.hello]
command = ["sh", "-c", 'echo hello world']

[[triggers]]
name = "up"
kind = "webhook"
mode = "sync"
runnable = "upper"

[[triggers]]
name = "hi"
kind = "webhook"
mode = "sync"
runnable = "hello"
"#,
    )
    .await;
    let (status, body) = t
        .post_json("/hooks/up", None, &json!({"name": "ada"}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"NAME": "ADA"}));
    let (status, body) = t.post_json("/hooks/hi", None, &json!({})).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!("hello world"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jq_preprocessor_filters_and_fans_out() {
    let t = TestService::start(
        r#"
[runnables.echo]
command = ["cat"]

[[triggers]]
name = "fan"
kind = "webhook"
runnable = "echo"
preprocessor = { jq = '.headers["x-source"] as $s | .body.items[] | select(.keep) | {id, source: $s}' }
"#,
    )
    .await;
    let resp = t
        .client
        .post(t.url("/hooks/fan"))
        .json(&json!({"items": [{"id": 1, "keep": false}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["filtered"], true);
    assert!(
        t.jobs_of("fan").is_empty(),
        "a filtered event creates no job"
    );

    let resp = t
        .client
        .post(t.url("/hooks/fan"))
        .header("x-source", "crm")
        .json(&json!({"items": [
            {"id": 1, "keep": true}, {"id": 2, "keep": false},
            {"id": 3, "keep": true}, {"id": 4, "keep": true}
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    let ids: Vec<String> = body["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 3);
    let mut results = Vec::new();
    for id in &ids {
        let r = t.wait_final(id, SECS_10).await;
        assert_eq!(r.status, JobStatus::Succeeded);
        results.push(r.result.unwrap());
    }
    assert_eq!(
        results,
        vec![
            json!({"id": 1, "source": "crm"}),
            json!({"id": 3, "source": "crm"}),
            json!({"id": 4, "source": "crm"})
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_is_required_by_header_or_query() {
    let t = TestService::start(
        r#"
[runnables.noop]
command = ["true"]

[[triggers]]
name = "locked"
kind = "webhook"
runnable = "noop"
token = "right"
"#,
    )
    .await;
    let (status, body) = t.post_json("/hooks/locked", None, &json!({})).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("missing token"));
    let (status, _) = t
        .post_json("/hooks/locked", Some("wrong"), &json!({}))
        .await;
    assert_eq!(status, 401);
    let (status, _) = t
        .post_json("/hooks/locked", Some("right"), &json!({}))
        .await;
    assert_eq!(status, 202);
    let resp = t
        .client
        .post(t.url("/hooks/locked?token=right"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let (status, body) = t.post_json("/hooks/nosuch", None, &json!({})).await;
    assert_eq!(status, 404);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("nosuch"));
    assert!(t
        .jobs_of("locked")
        .iter()
        .all(|r| !r.event["query"].as_object().unwrap().contains_key("token")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_over_the_limit_is_413() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
body_limit = 1024

[store]
path = "{}/data"

[runnables.noop]
command = ["true"]

[[triggers]]
name = "small"
kind = "webhook"
runnable = "noop"
"#,
        dir.path().display()
    );
    let t = TestService::start_in(dir, &text).await;
    let big = "x".repeat(2048);
    let (status, body) = t
        .post_json("/hooks/small", None, &json!({"big": big}))
        .await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "payload_too_large");
    // Chunked, without a content-length: the limit still holds.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..4).map(|_| Ok(vec![b'y'; 512])).collect();
    let resp = t
        .client
        .post(t.url("/hooks/small"))
        .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
    let (status, _) = t
        .post_json("/hooks/small", None, &json!({"small": 1}))
        .await;
    assert_eq!(status, 202);
    assert_eq!(t.jobs_of("small").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturated_trigger_answers_429_with_retry_after() {
    let t = TestService::start(
        r#"
[runnables.slow]
command = ["sh", "-c", 'sleep 1']

[[triggers]]
name = "narrow"
kind = "webhook"
runnable = "slow"
max_in_flight = 2
"#,
    )
    .await;
    for _ in 0..2 {
        let (status, _) = t.post_json("/hooks/narrow", None, &json!({})).await;
        assert_eq!(status, 202);
    }
    let resp = t
        .client
        .post(t.url("/hooks/narrow"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_in_flight = 2"));
    assert_eq!(
        t.jobs_of("narrow").len(),
        2,
        "the refused request created no job"
    );
    // Once the in-flight jobs finish, the trigger takes work again.
    let deadline = Instant::now() + SECS_10;
    loop {
        let (status, _) = t.post_json("/hooks/narrow", None, &json!({})).await;
        if status == 202 {
            break;
        }
        assert_eq!(status, 429);
        assert!(Instant::now() < deadline, "trigger never accepted again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_runnable_retries_then_dead_letters_and_flaky_one_succeeds() {
    let t = TestService::start(
        r#"
[runnables.broken]
command = ["sh", "-c", 'echo "boom: disk on fire" >&2; exit 3']

[runnables.flaky]
command = ["sh", "-c", 'n=$(cat {DIR}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {DIR}/count; [ $n -ge 3 ] && echo "{\"tries\": $n}" || exit 1']

[[triggers]]
name = "doomed"
kind = "webhook"
runnable = "broken"
retry = { attempts = 3, initial = "20ms", max = "50ms" }

[[triggers]]
name = "wobbly"
kind = "webhook"
runnable = "flaky"
mode = "sync"
retry = { attempts = 4, initial = "20ms", max = "50ms" }
"#,
    )
    .await;
    let (status, body) = t.post_json("/hooks/doomed", None, &json!({"x": 1})).await;
    assert_eq!(status, 202);
    let id = body["job_id"].as_str().unwrap();
    let r = t.wait_final(id, SECS_10).await;
    assert_eq!(r.status, JobStatus::DeadLettered);
    assert_eq!(r.attempts, 3);
    assert!(
        r.error.as_deref().unwrap().contains("boom: disk on fire"),
        "{r:?}"
    );
    let dead = t.app.service.store.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].job_id.to_string(), id);
    assert_eq!(dead[0].trigger, "doomed");

    // Fails twice, then succeeds: one success, three attempts, answered only then.
    let (status, body) = t.post_json("/hooks/wobbly", None, &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"tries": 3}));
    let jobs = t.jobs_of("wobbly");
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].attempts, 3);
    assert_eq!(jobs[0].status, JobStatus::Succeeded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_timeout_is_504_and_the_job_keeps_running() {
    let t = TestService::start(
        r#"
[runnables.slow]
command = ["sh", "-c", 'sleep 1; echo done']

[[triggers]]
name = "slowsync"
kind = "webhook"
mode = "sync"
sync_timeout = "200ms"
runnable = "slow"
"#,
    )
    .await;
    let (status, body) = t.post_json("/hooks/slowsync", None, &json!({})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "sync_timeout");
    let id = body["job_id"].as_str().unwrap();
    let r = t.wait_final(id, SECS_10).await;
    assert_eq!(r.status, JobStatus::Succeeded);
    assert_eq!(r.result, Some(json!("done")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_key_returns_the_same_job() {
    let t = TestService::start(
        r#"
[runnables.echo]
command = ["cat"]

[[triggers]]
name = "idem"
kind = "webhook"
runnable = "echo"

[[triggers]]
name = "idemsync"
kind = "webhook"
mode = "sync"
runnable = "echo"
"#,
    )
    .await;
    let send = |path: &'static str, key: &'static str| {
        t.client
            .post(t.url(path))
            .header("idempotency-key", key)
            .json(&json!({"n": 1}))
            .send()
    };
    let first: Value = send("/hooks/idem", "k-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let resp = send("/hooks/idem", "k-1").await.unwrap();
    assert_eq!(resp.status(), 200);
    let second: Value = resp.json().await.unwrap();
    assert_eq!(first["job_id"], second["job_id"]);
    assert_eq!(second["duplicate"], true);
    let other: Value = send("/hooks/idem", "k-2")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_ne!(first["job_id"], other["job_id"]);
    assert_eq!(t.jobs_of("idem").len(), 2);

    // Sync: a repeated request gets the first run's result, without a second run.
    let a = send("/hooks/idemsync", "s-1").await.unwrap();
    assert_eq!(a.status(), 200);
    let a: Value = a.json().await.unwrap();
    let b: Value = send("/hooks/idemsync", "s-1")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(a, json!({"n": 1}));
    assert_eq!(a, b);
    assert_eq!(t.jobs_of("idemsync").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedup_key_makes_one_job_per_key_even_for_simultaneous_copies() {
    let t = TestService::start(
        r#"
[runnables.echo]
kind = "echo"

[[triggers]]
name = "orders"
kind = "webhook"
runnable = "echo"
token = "t0k"
dedup_key = '.body.order_id'
# A slow preprocessor: copies arriving together are all past the dedup lookup before the first
# one's jobs are written.
preprocessor = { command = ["sh", "-c", "sleep 0.3; cat"] }

# A key that is more than a path: computed by a jq worker.
[[triggers]]
name = "folded"
kind = "webhook"
runnable = "echo"
dedup_key = '.body.order_id | ascii_downcase'
"#,
    )
    .await;
    let svc = &t;
    let post =
        |body: Value| async move { svc.post_json("/hooks/orders", Some("t0k"), &body).await };
    let (status, first) = post(json!({"order_id": "o-1", "attempt": 1})).await;
    assert_eq!(status, 202, "{first}");
    // A resend by the sender, with a different body but the same key.
    let (status, again) = post(json!({"order_id": "o-1", "attempt": 2})).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["job_ids"], first["job_ids"]);
    // Ten copies of another order at once: one job.
    let copies = futures::future::join_all((0..10).map(|_| post(json!({"order_id": "o-2"})))).await;
    assert_eq!(
        copies.iter().filter(|(s, _)| *s == 202).count(),
        1,
        "{copies:?}"
    );
    assert_eq!(t.jobs_of("orders").len(), 2);
    let (status, first) = t
        .post_json("/hooks/folded", None, &json!({"order_id": "O-3"}))
        .await;
    assert_eq!(status, 202, "{first}");
    let (status, again) = t
        .post_json("/hooks/folded", None, &json!({"order_id": "o-3"}))
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["job_ids"], first["job_ids"]);
    // Refused as a configuration error when the expression does not compile.
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{}\n[runnables.echo]\nkind = \"echo\"\n[[triggers]]\nname = \"w\"\nkind = \"webhook\"\nrunnable = \"echo\"\ndedup_key = \".body.[\"\n",
        common::header(dir.path())
    );
    let e = millgate::load_str(&text, "test.toml", |_| None).unwrap_err();
    assert!(e.to_string().contains("dedup_key"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_trigger_is_503_with_a_clear_body() {
    let t = TestService::start(
        r#"
[runnables.noop]
command = ["true"]

[[triggers]]
name = "off"
kind = "webhook"
runnable = "noop"
enabled = false
"#,
    )
    .await;
    let (status, body) = t.post_json("/hooks/off", None, &json!({})).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], "disabled");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`off` is disabled"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_runnable_posts_args_and_fails_on_non_2xx() {
    use axum::routing::post;
    let app = axum::Router::new()
        .route(
            "/ok",
            post(
                |headers: axum::http::HeaderMap, axum::Json(v): axum::Json<Value>| async move {
                    axum::Json(json!({
                        "got": v,
                        "trigger": headers["x-millgate-trigger"].to_str().unwrap(),
                    }))
                },
            ),
        )
        .route(
            "/fail",
            post(|| async { (axum::http::StatusCode::BAD_GATEWAY, "upstream sad") }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let t = TestService::start(&format!(
        r#"
[runnables.remote]
url = "http://{addr}/ok"

[runnables.remote_bad]
url = "http://{addr}/fail"

[[triggers]]
name = "callout"
kind = "webhook"
mode = "sync"
runnable = "remote"

[[triggers]]
name = "callbad"
kind = "webhook"
mode = "sync"
runnable = "remote_bad"
retry = {{ attempts = 2, initial = "10ms", max = "10ms" }}
"#
    ))
    .await;
    let (status, body) = t
        .post_json("/hooks/callout", None, &json!({"a": [1, 2]}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body, json!({"got": {"a": [1, 2]}, "trigger": "callout"}));
    let (status, body) = t.post_json("/hooks/callbad", None, &json!({})).await;
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"]["code"], "job_failed");
    assert!(body["error"]["message"].as_str().unwrap().contains("502"));
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("upstream sad"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_by_keeps_per_key_order_under_concurrency() {
    // Every third event is slow; without per-key ordering, later events of the same key would
    // overtake it on the other runners.
    let t = TestService::start(
        r#"
[router]
runners = 4

[runnables.append]
command = ["sh", "-c", 'read -r a; d=$(printf %s "$a" | sed -E "s/.*\"delay\":\"([0-9.]+)\".*/\1/"); sleep $d; printf "%s\n" "$a" >> {DIR}/order.log']

[[triggers]]
name = "ordered"
kind = "webhook"
runnable = "append"
order_by = ".body.key"
preprocessor = { jq = '{key: .body.key, seq: .body.seq, delay: (if .body.seq % 3 == 0 then "0.15" else "0" end)}' }
"#,
    )
    .await;
    for seq in 0..9 {
        for key in ["a", "b"] {
            let (status, _) = t
                .post_json("/hooks/ordered", None, &json!({"key": key, "seq": seq}))
                .await;
            assert_eq!(status, 202);
        }
    }
    let log = t.path("order.log");
    eventually(Duration::from_secs(20), "18 jobs logged", || {
        lines(&log).len() == 18
    })
    .await;
    for key in ["a", "b"] {
        let seqs: Vec<i64> = lines(&log)
            .iter()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|v| v["key"] == key)
            .map(|v| v["seq"].as_i64().unwrap())
            .collect();
        assert_eq!(seqs, (0..9).collect::<Vec<_>>(), "key {key} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runnable_concurrency_limit_is_respected() {
    let t = TestService::start(
        r#"
[router]
runners = 4

[runnables.single]
concurrency = 1
command = ["sh", "-c", 'echo start >> {DIR}/spans.log; sleep 0.1; echo end >> {DIR}/spans.log']

[[triggers]]
name = "one-at-a-time"
kind = "webhook"
runnable = "single"
"#,
    )
    .await;
    for _ in 0..5 {
        let (status, _) = t.post_json("/hooks/one-at-a-time", None, &json!({})).await;
        assert_eq!(status, 202);
    }
    let log = t.path("spans.log");
    eventually(Duration::from_secs(10), "5 runs", || {
        lines(&log).len() == 10
    })
    .await;
    let got = lines(&log);
    let expected: Vec<String> = (0..5)
        .flat_map(|_| ["start".to_string(), "end".to_string()])
        .collect();
    assert_eq!(got, expected, "runs overlapped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_of_every_shape_reach_the_event() {
    let t = TestService::start(
        r#"
[runnables.echo]
command = ["cat"]

[[triggers]]
name = "shapes"
kind = "webhook"
mode = "sync"
runnable = "echo"
preprocessor = { jq = '{body, body_format, raw_string, payload, query, ct: .content_type, ce: .cloudevent}' }
"#,
    )
    .await;
    let send = |ct: &'static str, body: Vec<u8>| {
        t.client
            .post(t.url("/hooks/shapes?x=1"))
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let v: Value = send("application/x-www-form-urlencoded", b"a=1&b=x+y".to_vec())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["body"], json!({"a": "1", "b": "x y"}));
    assert_eq!(v["query"], json!({"x": "1"}));
    let v: Value = send("text/plain", b"just text".to_vec())
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (v["body_format"].clone(), v["raw_string"].clone()),
        (json!("text"), json!("just text"))
    );
    let v: Value = send("application/octet-stream", vec![0, 159, 146, 150])
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["payload"], json!("AJ+Slg=="));
    let v: Value = send(
        "application/cloudevents+json",
        br#"{"specversion":"1.0","id":"e1","source":"/s","type":"created","data":{"n":5}}"#
            .to_vec(),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(v["body"], json!({"n": 5}));
    assert_eq!(v["ce"]["type"], json!("created"));
    let resp = send("application/json", b"{broken".to_vec()).await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = send("multipart/form-data; boundary=x", b"--x--".to_vec())
        .await
        .unwrap();
    assert_eq!(resp.status(), 415);
}
