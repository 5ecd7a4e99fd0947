//! The admin API over real HTTP: auth, trigger CRUD and lifecycle, jobs, dead letters and replay,
//! status, metrics, live events, the OpenAPI document, persistence across restarts, and hot
//! changes under traffic.

mod common;

use std::time::Duration;

use common::{eventually, TestService, ADMIN_TOKEN};
use reqwest::Method;
use serde_json::{json, Value};

const BASE: &str = r#"
[runnables.echo]
kind = "echo"

[runnables.broken]
command = ["sh", "-c", 'echo "no luck" >&2; exit 1']

[runnables.slow]
command = ["sh", "-c", 'sleep 0.3; cat']

[[triggers]]
name = "from-config"
kind = "webhook"
runnable = "echo"
"#;

async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<no error code>")
}

fn message(body: &Value) -> &str {
    body["error"]["message"]
        .as_str()
        .unwrap_or("<no error message>")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_the_token_but_health() {
    let t = TestService::start(BASE).await;
    for path in [
        "/api/triggers",
        "/api/jobs",
        "/api/status",
        "/metrics",
        "/api/openapi.json",
    ] {
        let resp = t
            .client
            .get(format!("{}{path}", t.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} without token");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(code(&body), "unauthorized");
        let resp = t
            .client
            .get(format!("{}{path}", t.admin))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{path} with a wrong token");
    }
    // `?token=` only where a browser cannot send a header: the event stream.
    let resp = t
        .client
        .get(format!("{}/api/triggers?token={ADMIN_TOKEN}", t.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "?token= is not accepted on other routes"
    );
    let body: Value = resp.json().await.unwrap();
    assert!(message(&body).contains("/api/events"), "{body}");
    let resp = t
        .client
        .post(format!(
            "{}/api/triggers/from-config/disable?token={ADMIN_TOKEN}",
            t.admin
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401, "nor on writes");
    let resp = t
        .client
        .get(format!("{}/api/events?token={ADMIN_TOKEN}", t.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "?token= opens the event stream");
    drop(resp);
    for path in ["/healthz", "/readyz"] {
        let resp = t
            .client
            .get(format!("{}{path}", t.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path} is open");
    }
    let (status, body) = t.admin_get("/api/nothing-here").await;
    assert_eq!(status, 404);
    assert_eq!(code(&body), "not_found");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_are_added_replaced_and_removed() {
    let t = TestService::start(BASE).await;
    let (status, body) = t.admin_get("/api/triggers").await;
    assert_eq!(status, 200);
    let names: Vec<&str> = body["triggers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["from-config"]);
    assert_eq!(body["triggers"][0]["source"], "config");
    assert_eq!(body["triggers"][0]["state"], "running");

    // JSON.
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "api-hook", "kind": "webhook", "runnable": "echo", "mode": "sync", "token": "s3"
    })))
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["source"], "api");
    assert_eq!(body["config"]["token"], "***", "secrets are not shown");
    let (status, out) = t
        .post_json("/hooks/api-hook", Some("s3"), &json!({"a": 1}))
        .await;
    assert_eq!((status, out), (200, json!({"a": 1})));

    // TOML, as a [[triggers]] entry.
    let toml = "[[triggers]]\nname = \"api-route\"\nkind = \"http\"\npath = \"/r/:id\"\nmode = \"sync\"\nrunnable = \"echo\"\npreprocessor = { jq = '{id: .params.id}' }\n";
    let (status, body) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .header("content-type", "application/toml")
            .body(toml),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, out) = t.post_json("/r/42", None, &json!({})).await;
    assert_eq!((status, out), (200, json!({"id": "42"})));

    // Validation, exactly as the config file: precise messages, 422.
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "bad", "kind": "webhook", "runnable": "nope"
    })))
    .await;
    assert_eq!(status, 422);
    assert_eq!(code(&body), "invalid_trigger");
    assert!(
        message(&body).contains("runnable: unknown runnable `nope`"),
        "{body}"
    );
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "bad", "kind": "kafka-ish", "runnable": "echo"
    })))
    .await;
    assert_eq!(status, 422);
    assert!(
        message(&body).contains("unknown trigger kind `kafka-ish`"),
        "{body}"
    );
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "bad", "kind": "webhook", "runnable": "echo", "mode": "whenever"
    })))
    .await;
    assert_eq!(status, 422);
    assert!(
        message(&body).starts_with("mode: unknown variant `whenever`"),
        "{body}"
    );
    let (status, body) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .header("content-type", "application/toml")
            .body("name = "),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        message(&body).len() > "body is not valid TOML: ".len() + 5,
        "{body}"
    );
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "clash", "kind": "http", "path": "/r/:other", "runnable": "echo"
    })))
    .await;
    assert_eq!(status, 422);
    assert!(message(&body).contains("conflicts"), "{body}");
    let (status, body) = send(
        t.admin_req(Method::POST, "/api/triggers")
            .header("content-type", "application/json")
            .body("{not json"),
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(code(&body), "bad_request");

    // Conflicts.
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "api-hook", "kind": "webhook", "runnable": "echo"
    })))
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "from-config", "kind": "webhook", "runnable": "echo"
    })))
    .await;
    assert_eq!(status, 409);
    assert!(message(&body).contains("config.toml"), "{body}");
    let (status, _) = send(t.admin_req(Method::DELETE, "/api/triggers/from-config")).await;
    assert_eq!(status, 409);

    // Replace: the new definition (new token) is in force at once.
    let (status, body) = send(t.admin_req(Method::PUT, "/api/triggers/api-hook").json(&json!({
        "name": "api-hook", "kind": "webhook", "runnable": "echo", "mode": "sync", "token": "new"
    })))
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = t.post_json("/hooks/api-hook", Some("s3"), &json!({})).await;
    assert_eq!(status, 401);
    let (status, _) = t
        .post_json("/hooks/api-hook", Some("new"), &json!({}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = send(
        t.admin_req(Method::PUT, "/api/triggers/api-hook")
            .json(&json!({
                "name": "other-name", "kind": "webhook", "runnable": "echo"
            })),
    )
    .await;
    assert_eq!(status, 422);
    let (status, _) = send(
        t.admin_req(Method::PUT, "/api/triggers/ghost")
            .json(&json!({
                "name": "ghost", "kind": "webhook", "runnable": "echo"
            })),
    )
    .await;
    assert_eq!(status, 404);

    // Remove.
    let (status, _) = send(t.admin_req(Method::DELETE, "/api/triggers/api-hook")).await;
    assert_eq!(status, 204);
    let (status, _) = t
        .post_json("/hooks/api-hook", Some("new"), &json!({}))
        .await;
    assert_eq!(status, 404);
    let (status, _) = t.admin_get("/api/triggers/api-hook").await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_enable_suspend_resume_and_cancel_parked() {
    let t = TestService::start(BASE).await;
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers/from-config/disable")).await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "disabled");
    let (status, _) = t.post_json("/hooks/from-config", None, &json!({})).await;
    assert_eq!(status, 503);
    let (status, body) = send(t.admin_req(Method::POST, "/api/triggers/from-config/enable")).await;
    assert_eq!(status, 200);
    assert_eq!(body["state"], "running", "{body}");
    let (status, _) = t.post_json("/hooks/from-config", None, &json!({})).await;
    assert_eq!(status, 202);

    // Suspended: accepted and acknowledged, parked, not run.
    let (_, body) = send(t.admin_req(Method::POST, "/api/triggers/from-config/suspend")).await;
    assert_eq!(body["state"], "suspended");
    let mut parked = Vec::new();
    for i in 0..3 {
        let (status, body) = t
            .post_json("/hooks/from-config", None, &json!({"i": i}))
            .await;
        assert_eq!(status, 202);
        assert_eq!(body["parked"], true);
        parked.push(body["job_id"].as_str().unwrap().to_string());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for id in &parked {
        let (_, job) = t.admin_get(&format!("/api/jobs/{id}")).await;
        assert_eq!(job["status"], "parked");
    }
    let (_, view) = t.admin_get("/api/triggers/from-config").await;
    assert_eq!(view["parked"], 3);
    let (_, body) = send(t.admin_req(Method::POST, "/api/triggers/from-config/resume")).await;
    assert_eq!(body["released"], 3);
    assert_eq!(body["state"], "running");
    for id in &parked {
        let r = t.wait_final(id, Duration::from_secs(10)).await;
        assert_eq!(
            r.result,
            Some(json!({"i": parked.iter().position(|p| p == id).unwrap()}))
        );
        assert!(r.timeline.iter().any(|s| s.step == "released"));
    }

    // Parked then cancelled: never run.
    send(t.admin_req(Method::POST, "/api/triggers/from-config/suspend")).await;
    let (_, body) = t
        .post_json("/hooks/from-config", None, &json!({"x": 1}))
        .await;
    let id = body["job_id"].as_str().unwrap().to_string();
    let (status, body) =
        send(t.admin_req(Method::POST, "/api/triggers/from-config/parked/cancel")).await;
    assert_eq!((status, body), (200, json!({"cancelled": 1})));
    let (_, job) = t.admin_get(&format!("/api/jobs/{id}")).await;
    assert_eq!(job["status"], "cancelled");
    let (_, body) = send(t.admin_req(Method::POST, "/api/triggers/from-config/resume")).await;
    assert_eq!(body["released"], 0);
    let (status, _) = send(t.admin_req(Method::POST, "/api/triggers/ghost/disable")).await;
    assert_eq!(status, 404);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_dead_letters_and_replay() {
    let t = TestService::start(&format!(
        "{BASE}\n[[triggers]]\nname = \"doomed\"\nkind = \"webhook\"\nrunnable = \"broken\"\nretry = {{ attempts = 2, initial = \"10ms\", max = \"10ms\" }}\n"
    ))
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let (_, body) = t
            .post_json("/hooks/from-config", None, &json!({"i": i}))
            .await;
        ids.push(body["job_id"].as_str().unwrap().to_string());
    }
    for id in &ids {
        t.wait_final(id, Duration::from_secs(10)).await;
    }
    let (_, body) = t.post_json("/hooks/doomed", None, &json!({"d": 1})).await;
    let dead_id = body["job_id"].as_str().unwrap().to_string();
    t.wait_final(&dead_id, Duration::from_secs(10)).await;

    // Newest first, filtered, paginated.
    let (status, page) = t.admin_get("/api/jobs?trigger=from-config&limit=2").await;
    assert_eq!(status, 200);
    let got: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, vec![ids[4].as_str(), ids[3].as_str()]);
    let next = page["next_before"].as_str().unwrap();
    let (_, page2) = t
        .admin_get(&format!(
            "/api/jobs?trigger=from-config&limit=2&before={next}"
        ))
        .await;
    let got2: Vec<&str> = page2["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["job_id"].as_str().unwrap())
        .collect();
    assert_eq!(got2, vec![ids[2].as_str(), ids[1].as_str()]);
    let (_, failed) = t.admin_get("/api/jobs?status=dead_lettered").await;
    assert_eq!(failed["jobs"].as_array().unwrap().len(), 1);
    assert!(
        failed["jobs"][0].get("event").is_none(),
        "lists omit the event"
    );
    for bad in [
        "/api/jobs?status=bogus",
        "/api/jobs?limit=0",
        "/api/jobs?limit=501",
        "/api/jobs?before=zzz",
    ] {
        let (status, body) = t.admin_get(bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }

    // Detail: event and timeline through the actors.
    let (_, job) = t.admin_get(&format!("/api/jobs/{dead_id}")).await;
    assert_eq!(job["status"], "dead_lettered");
    assert_eq!(job["attempts"], 2);
    assert_eq!(job["event"]["kind"], "webhook");
    let steps: Vec<&str> = job["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        vec![
            "queued",
            "started",
            "failed",
            "retry_scheduled",
            "started",
            "dead_lettered"
        ]
    );
    let (status, _) = t
        .admin_get("/api/jobs/01a2a2a2-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, 404);
    let (status, _) = t.admin_get("/api/jobs/not-an-id").await;
    assert_eq!(status, 400);

    // Dead letters and replay.
    let (_, dl) = t.admin_get("/api/dead-letters").await;
    assert_eq!(dl["dead_letters"][0]["job_id"], dead_id.as_str());
    assert!(dl["dead_letters"][0]["error"]
        .as_str()
        .unwrap()
        .contains("no luck"));
    let (status, body) =
        send(t.admin_req(Method::POST, &format!("/api/jobs/{dead_id}/replay"))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["replay_of"], dead_id.as_str());
    let new_id = body["job_id"].as_str().unwrap().to_string();
    let r = t.wait_final(&new_id, Duration::from_secs(10)).await;
    assert_eq!(r.replay_of.map(|j| j.to_string()), Some(dead_id.clone()));
    assert_eq!(r.args, json!({"d": 1}));
    let (_, dl) = t.admin_get("/api/dead-letters").await;
    let listed: Vec<&str> = dl["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["job_id"].as_str().unwrap())
        .collect();
    assert!(
        !listed.contains(&dead_id.as_str()),
        "a replayed dead letter leaves the list"
    );
    assert!(
        listed.contains(&new_id.as_str()),
        "the replay failed again and is a dead letter itself"
    );
    let (status, _) =
        send(t.admin_req(Method::DELETE, &format!("/api/dead-letters/{new_id}"))).await;
    assert_eq!(status, 204);
    let (status, _) =
        send(t.admin_req(Method::DELETE, &format!("/api/dead-letters/{new_id}"))).await;
    assert_eq!(status, 404);
    // A succeeded job can be replayed too.
    let (status, body) =
        send(t.admin_req(Method::POST, &format!("/api/jobs/{}/replay", ids[0]))).await;
    assert_eq!(status, 201);
    let r = t
        .wait_final(body["job_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;
    assert_eq!(r.result, Some(json!({"i": 0})));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_runnables_metrics_and_readiness() {
    let t = TestService::start(BASE).await;
    let (_, body) = t.post_json("/hooks/from-config", None, &json!({})).await;
    t.wait_final(body["job_id"].as_str().unwrap(), Duration::from_secs(10))
        .await;

    let (status, st) = t.admin_get("/api/status").await;
    assert_eq!(status, 200);
    assert_eq!(st["version"], env!("CARGO_PKG_VERSION"));
    assert!(st["store"]["size_bytes"].as_u64().unwrap() > 0);
    assert!(st["queues"]["runner_pool"]["queued"].is_u64(), "{st}");
    assert!(st["queues"]["preprocessor_pool"]["active"].is_u64(), "{st}");
    let root = &st["actors"];
    assert!(root["name"].as_str().unwrap().starts_with("root@"));
    let children: Vec<&str> = root["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for core in [
        "job-router@",
        "runner-pool@",
        "preprocessor-pool@",
        "trigger-supervisor@",
    ] {
        assert!(
            children.iter().any(|c| c.starts_with(core)),
            "{core} missing from {children:?}"
        );
    }
    let sup = root["children"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| {
            c["name"]
                .as_str()
                .unwrap()
                .starts_with("trigger-supervisor@")
        })
        .unwrap();
    assert_eq!(sup["children"][0]["name"], "trigger:from-config");

    let (_, r) = t.admin_get("/api/runnables").await;
    let names: Vec<&str> = r["runnables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["broken", "echo", "slow"]);

    let resp = t.admin_req(Method::GET, "/metrics").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    for metric in [
        "millgate_events_received_total{trigger=\"from-config\",kind=\"webhook\"}",
        "millgate_jobs_total{trigger=\"from-config\",outcome=\"succeeded\"}",
        "millgate_job_duration_seconds_bucket",
        "millgate_queue_depth",
        "millgate_trigger_in_flight{trigger=\"from-config\"}",
        "millgate_trigger_up{trigger=\"from-config\"} 1",
        "millgate_store_size_bytes",
    ] {
        assert!(
            text.contains(metric),
            "{metric} missing from /metrics:\n{text}"
        );
    }

    let resp = t
        .client
        .get(format!("{}/readyz", t.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_events_stream_over_sse() {
    let t = TestService::start(BASE).await;
    let mut resp = t
        .client
        .get(format!("{}/api/events?token={ADMIN_TOKEN}", t.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let (_, body) = t
        .post_json("/hooks/from-config", None, &json!({"hello": 1}))
        .await;
    let job_id = body["job_id"].as_str().unwrap().to_string();
    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains("event: job_succeeded") {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("events arrive in time")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let order: Vec<&str> = seen
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(
        order,
        vec![
            "event_received",
            "job_queued",
            "job_started",
            "job_succeeded"
        ],
        "{seen}"
    );
    assert!(seen.contains(&job_id));
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_matches_the_routes() {
    let t = TestService::start(BASE).await;
    let (status, doc) = t.admin_get("/api/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let mut documented: Vec<(String, String)> = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.push((method.to_uppercase(), path.clone()));
        }
    }
    documented.sort();
    let mut expected: Vec<(String, String)> = [
        ("GET", "/api/triggers"),
        ("POST", "/api/triggers"),
        ("GET", "/api/triggers/{name}"),
        ("PUT", "/api/triggers/{name}"),
        ("DELETE", "/api/triggers/{name}"),
        ("POST", "/api/triggers/{name}/enable"),
        ("POST", "/api/triggers/{name}/disable"),
        ("POST", "/api/triggers/{name}/suspend"),
        ("POST", "/api/triggers/{name}/resume"),
        ("POST", "/api/triggers/{name}/parked/cancel"),
        ("GET", "/api/triggers/{name}/state"),
        ("PUT", "/api/triggers/{name}/state"),
        ("POST", "/api/triggers/{name}/reset"),
        ("GET", "/api/runnables"),
        ("GET", "/api/jobs"),
        ("GET", "/api/jobs/{id}"),
        ("POST", "/api/jobs/{id}/replay"),
        ("GET", "/api/dead-letters"),
        ("DELETE", "/api/dead-letters/{id}"),
        ("GET", "/api/status"),
        ("GET", "/api/events"),
        ("GET", "/api/quarantine"),
        ("DELETE", "/api/quarantine/{id}"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    expected.sort();
    assert_eq!(
        documented, expected,
        "the documented routes are the API's routes"
    );
    // Every documented route exists: with placeholder values it never answers the router's
    // own 404/405 (a 404 from a handler names the missing thing instead).
    for (method, path) in &documented {
        if path == "/api/events" {
            continue; // a stream; covered by its own test
        }
        let concrete = path
            .replace("{name}", "nosuch")
            .replace("{id}", "01a2a2a2-0000-7000-8000-000000000000");
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let resp = t
            .admin_req(m, &concrete)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_ne!(resp.status(), 405, "{method} {path}");
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if body["error"]["code"] == "not_found" {
            assert!(
                !message(&body).starts_with("no admin route"),
                "{method} {path} is not routed"
            );
        }
    }
    t.stop().await;
}

/// Whether `schema` describes a body: a named component (or an inline object) with properties,
/// an array of such, or an `allOf` of such. A bare `{"type": "object"}` says nothing.
fn described(schema: &Value, components: &serde_json::Map<String, Value>) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let name = reference
            .strip_prefix("#/components/schemas/")
            .ok_or_else(|| format!("`{reference}` is not a component schema"))?;
        let target = components
            .get(name)
            .ok_or_else(|| format!("`{name}` is not among the components"))?;
        return described(target, components).map_err(|e| format!("{name}: {e}"));
    }
    if let Some(parts) = schema["allOf"].as_array() {
        if parts.is_empty() {
            return Err("an empty allOf".into());
        }
        return parts.iter().try_for_each(|p| described(p, components));
    }
    if schema["type"] == "array" {
        return described(&schema["items"], components).map_err(|e| format!("items: {e}"));
    }
    match schema["properties"].as_object() {
        Some(p) if !p.is_empty() => Ok(()),
        _ => Err(format!("untyped schema {schema}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_every_answer() {
    let t = TestService::start(BASE).await;
    let (status, doc) = t.admin_get("/api/openapi.json").await;
    assert_eq!(status, 200);
    let components = doc["components"]["schemas"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut problems = Vec::new();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            let route = format!("{} {path}", method.to_uppercase());
            let responses = op["responses"].as_object().cloned().unwrap_or_default();
            if !responses.keys().any(|c| c.starts_with('2')) {
                problems.push(format!("{route}: no success response"));
            }
            for (code, response) in responses.iter().filter(|(c, _)| c.starts_with('2')) {
                if code == "204" {
                    continue; // no body
                }
                let content = response["content"].as_object().cloned().unwrap_or_default();
                if content.is_empty() {
                    problems.push(format!("{route} {code}: no content schema"));
                }
                for (media, c) in &content {
                    checked += 1;
                    let schema = &c["schema"];
                    let outcome = if media == "application/json" {
                        described(schema, &components)
                    } else if schema["type"].is_string() || schema["$ref"].is_string() {
                        Ok(())
                    } else {
                        Err(format!("untyped schema {schema}"))
                    };
                    if let Err(e) = outcome {
                        problems.push(format!("{route} {code} {media}: {e}"));
                    }
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "answers the OpenAPI document does not describe:\n{}",
        problems.join("\n")
    );
    assert!(
        checked >= 15,
        "only {checked} answers with a body were found"
    );
    // A few by name, with the fields their clients (the dashboard, the CLI) read.
    for (name, fields) in [
        (
            "TriggerView",
            &[
                "name",
                "kind",
                "state",
                "enabled",
                "suspended",
                "counters",
                "config",
            ][..],
        ),
        (
            "JobView",
            &["job_id", "trigger", "status", "args", "created_at"][..],
        ),
        (
            "StatusView",
            &["version", "queues", "store", "triggers", "actors"][..],
        ),
        ("ErrorBody", &["error"][..]),
    ] {
        let schema = components
            .get(name)
            .unwrap_or_else(|| panic!("no `{name}` schema"));
        for field in fields {
            assert!(
                schema["properties"].get(field).is_some(),
                "`{name}` does not document `{field}`: {schema}"
            );
        }
    }
    let list = &doc["paths"]["/api/triggers"]["get"]["responses"]["200"]["content"]
        ["application/json"]["schema"];
    assert_eq!(list["$ref"], "#/components/schemas/TriggerList", "{list}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_triggers_and_flags_survive_a_restart() {
    let t = TestService::start(BASE).await;
    let (status, _) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
        "name": "kept", "kind": "webhook", "runnable": "echo", "token": "k"
    })))
    .await;
    assert_eq!(status, 201);
    send(t.admin_req(Method::POST, "/api/triggers/from-config/disable")).await;
    let dir = t.stop().await;
    let text = format!("{}\n{BASE}", common::header(dir.path()));
    let t = TestService::start_in(dir, &text).await;
    let (status, view) = t.admin_get("/api/triggers/kept").await;
    assert_eq!(status, 200);
    assert_eq!(view["source"], "api");
    assert_eq!(view["state"], "running");
    let (status, _) = t.post_json("/hooks/kept", Some("k"), &json!({})).await;
    assert_eq!(status, 202);
    let (_, view) = t.admin_get("/api/triggers/from-config").await;
    assert_eq!(
        view["state"], "disabled",
        "an operator's disable outlives a restart"
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_changes_under_traffic_lose_no_accepted_request() {
    let t = TestService::start(BASE).await;
    let client = t.client.clone();
    let url = t.url("/hooks/from-config");
    let traffic = tokio::spawn(async move {
        let mut accepted = Vec::new();
        let mut refused = Vec::new();
        for i in 0..300 {
            let resp = client
                .post(&url)
                .json(&json!({"i": i}))
                .send()
                .await
                .unwrap();
            match resp.status().as_u16() {
                202 => {
                    let body: Value = resp.json().await.unwrap();
                    accepted.push(body["job_id"].as_str().unwrap().to_string());
                }
                other => refused.push(other),
            }
        }
        (accepted, refused)
    });
    for round in 0..10 {
        let name = format!("hot-{round}");
        let (status, body) = send(t.admin_req(Method::POST, "/api/triggers").json(&json!({
            "name": name, "kind": "webhook", "runnable": "echo"
        })))
        .await;
        assert_eq!(status, 201, "{body}");
        let (status, _) = t
            .post_json(&format!("/hooks/{name}"), None, &json!({}))
            .await;
        assert_eq!(status, 202);
        let (status, _) = send(
            t.admin_req(Method::PUT, &format!("/api/triggers/{name}"))
                .json(&json!({
                    "name": name, "kind": "webhook", "runnable": "echo", "mode": "sync"
                })),
        )
        .await;
        assert_eq!(status, 200);
        let (status, _) = send(t.admin_req(Method::DELETE, &format!("/api/triggers/{name}"))).await;
        assert_eq!(status, 204);
    }
    let (accepted, refused) = traffic.await.unwrap();
    assert!(
        refused.is_empty(),
        "the steady trigger refused requests during hot changes: {refused:?}"
    );
    assert_eq!(accepted.len(), 300);
    for id in &accepted {
        let r = t.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(r.status, millgate_actors::job::JobStatus::Succeeded);
    }
    eventually(Duration::from_secs(5), "no hot trigger left", || {
        t.app.service.registry.all().len() == 1
    })
    .await;
    t.stop().await;
}
